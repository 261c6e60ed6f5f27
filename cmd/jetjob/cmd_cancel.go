package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/jetjob/jetjob/projector"
	"github.com/jetjob/jetjob/statemachine"
)

func runCancel(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("cancel", "ID [--reason R] | --pending (--all | [--type T] [--tag k=v]... [--meta k=v]... [--meta-not k=v]...) [--limit N] [--reason R] [--dry-run]", true)
	reason := fs.String("reason", "", "why the job is canceled")
	pending := fs.Bool("pending", false, "cancel every pending or scheduled job that matches the filters")
	dryRun := fs.Bool("dry-run", false, "with --pending: list what would be canceled, change nothing")
	all := fs.Bool("all", false, "with --pending and no --type, --tag, --meta or --meta-not: cancel every pending job")
	filter := filterFlags(fs, false, 0)
	fs.emptyOK = map[string]bool{"reason": true} // no reason given
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	if strings.ContainsFunc(*reason, unicode.IsControl) || !utf8.ValidString(*reason) {
		return usageErr("--reason %s has a control character or is not UTF-8, expected one line of text", quoteShort(*reason))
	}
	// Before connecting: bad input is said as such (exit 2) even when the
	// job is missing or no server answers.
	if err := statemachine.ValidateCancelReason(*reason); err != nil {
		return err
	}
	var filters []string
	selects := false
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "type", "tag", "meta", "meta-not":
			selects = true
			fallthrough
		case "limit":
			filters = append(filters, "--"+f.Name)
		}
	})
	if *all && !*pending {
		return usageErr("--all needs --pending")
	}
	if *pending {
		if len(pos) > 0 {
			return usageErr("--pending cancels by filter; do not give a job ID")
		}
		// A forgotten filter must not cancel the whole queue (kubectl's
		// delete asks for --all the same way); a dry run changes nothing.
		switch {
		case *all && selects:
			return usageErr("--all cancels every pending job; give it without --type, --tag, --meta and --meta-not, or drop it")
		case !*all && !selects && !*dryRun:
			return usageErr("--pending with no --type, --tag, --meta or --meta-not would cancel every pending job; add --all to do that, or a filter")
		}
		f, err := filter()
		if err != nil {
			return err
		}
		// As with an empty --type: `--meta-not k=$V` with V unset
		// would cancel every pending job that has k.
		for k, v := range f.MetaNot {
			if v == "" && !*dryRun {
				return usageErr("--meta-not %s= has an empty value, which would cancel every pending job with meta %s; give the value (see them with --dry-run)", k, k)
			}
		}
		return bulkCancel(ctx, fs, f, *reason, *dryRun, out)
	}
	if *dryRun {
		return usageErr("--dry-run needs --pending")
	}
	if len(filters) > 0 {
		return usageErr("filters (%s) select jobs for --pending; a cancel by ID takes none", strings.Join(filters, ", "))
	}
	id, err := oneID(pos)
	if err != nil {
		return err
	}
	c, err := dial(ctx, fs)
	if err != nil {
		return err
	}
	defer c.close()
	job, err := c.m.Cancel(ctx, id, *reason)
	if err != nil {
		return err
	}
	if fs.json() {
		return writeJSON(out, projector.ViewOf(job, nil))
	}
	_, err = fmt.Fprintf(out, "%s %s\n", job.ID, job.State)
	return err
}
