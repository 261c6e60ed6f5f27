package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetjob/jetjob/events"
	"github.com/jetjob/jetjob/internal/logging"
	"github.com/jetjob/jetjob/internal/provision"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/statemachine"
	"github.com/jetjob/jetjob/workers"
)

// client is a short-lived connection to a jetjob server.
type client struct {
	nc *nats.Conn
	js jetstream.JetStream
	lg *events.Log
	m  *statemachine.Machine
}

func dial(ctx context.Context, fs *flagSet) (*client, error) { return dialAs(ctx, fs, "") }

// followTries is how many reconnects in a row a following command (watch,
// logs -f) tries on a NATS gone, at nats.go's 2 s apart, before it ends
// saying so.
const followTries = 5

// dialFollowing dials for a command that follows something until stopped
// (watch, logs -f), named command in what it says on stderr. It rides out
// a refusal of its user on a reconnect, as a server and a worker do, each
// said on stderr: nats.go gave up at the second refusal, and the command
// ended as if its server were gone. A server gone still ends it, after
// followTries reconnects none of which the NATS refused.
func dialFollowing(ctx context.Context, fs *flagSet, command string) (*client, error) {
	return dialAs(ctx, fs, command)
}

func dialAs(ctx context.Context, fs *flagSet, following string) (*client, error) {
	url := fs.server
	if err := checkServerURL(url); err != nil {
		return nil, err
	}
	// A slow consumer under watch, say, is worth a line on stderr.
	errs := natsErrorHandler(ctx, logging.New(false))
	opts := []nats.Option{nats.Name("jetjob-cli"), nats.Timeout(3 * time.Second),
		nats.RetryOnFailedConnect(false), nats.MaxReconnects(5)}
	var conn atomic.Pointer[nats.Conn]
	if following != "" {
		say := func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "jetjob "+following+": "+format+"\n", args...)
		}
		logged := errs
		errs = func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if refused, ok := refusedConnect(url, err); ok && sub == nil {
				say("%v; trying again", refused)
				return
			}
			logged(nc, sub, err)
		}
		opts = append(opts, nats.MaxReconnects(-1), nats.ErrorHandler(errs),
			// After the error handler, which it wraps.
			server.KeepReconnecting(nil, url, server.GiveUpAfter(followTries, func() {
				if nc := conn.Load(); nc != nil {
					nc.Close()
				}
			})),
			// After KeepReconnecting, whose own is for a logger.
			nats.ReconnectHandler(func(*nats.Conn) { say("reconnected to %s", clip(server.RedactURL(url))) }))
	} else {
		opts = append(opts, nats.ErrorHandler(errs))
	}
	nc, err := nats.Connect(url, append(opts, fs.natsOpts...)...)
	conn.Store(nc)
	if refused, ok := refusedConnect(url, err); ok {
		return nil, refused
	}
	if silent, ok := silentNATS(fs.auth, url, err); ok {
		return nil, silent
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach the jetjob server at %s (start one with 'jetjob server' or 'jetjob dev', or set --server): %v", clip(server.RedactURL(url)), err)
	}
	js, err := fs.auth.jetStream(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := findLog(ctx, js); err != nil {
		nc.Close()
		if provision.NoJetStream(err) {
			return nil, fmt.Errorf("no JetStream answered at %s, which jetjob needs: %w", clip(server.RedactURL(url)), err)
		}
		if !provision.Transient(err) {
			return nil, fmt.Errorf("no jetjob event log at %s (is a 'jetjob server' running there?): %v", clip(server.RedactURL(url)), err)
		}
		return nil, fmt.Errorf("the jetjob event log at %s did not answer within %s (a NATS cluster electing a leader takes seconds; try again): %v", clip(server.RedactURL(url)), findLogFor, err)
	}
	lg, err := events.Attach(js, events.Config{Relay: true})
	if err != nil {
		nc.Close()
		return nil, err
	}
	// The log was just found; should this look fail, batched appends are
	// right for every server.
	_ = lg.Follow(ctx)
	m, err := statemachine.New(lg, statemachine.Config{})
	if err != nil {
		lg.Close()
		nc.Close()
		return nil, err
	}
	return &client{nc: nc, js: js, lg: lg, m: m}, nil
}

// checkServerURL refuses a --server that is no NATS URL before connecting,
// so that bad input is told apart from a server that does not answer.
func checkServerURL(servers string) error { return checkNATSURL("--server", servers) }

// checkNATSURL checks the NATS URL a flag gives.
func checkNATSURL(flag, servers string) error {
	const expected = "expected a NATS URL such as nats://127.0.0.1:4222 (several: comma-separated)"
	if strings.TrimSpace(servers) == "" {
		return usageErr("%s is empty, %s", flag, expected)
	}
	for _, s := range strings.Split(servers, ",") {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		// An IPv6 address goes in brackets: "::::" is no host.
		if err != nil || u.Hostname() == "" || strings.Contains(u.Hostname(), ":") && !strings.HasPrefix(u.Host, "[") {
			return usageErr("%s %s is not a URL, %s", flag, quoteShort(server.RedactURL(servers)), expected)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return usageErr("%s %s has scheme %s, %s", flag, quoteShort(server.RedactURL(servers)), quoteShort(u.Scheme), expected)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return usageErr("%s %s has port %s, expected a port of 1-65535", flag, quoteShort(server.RedactURL(servers)), clip(p))
			}
		}
	}
	return nil
}

func (c *client) close() {
	c.lg.Close()
	c.nc.Close()
}

// writeJSON writes v as indented JSON, as it is (past textOut): a
// program reads it, and its strings hold what was stored.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(rawOut(w))
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine writes v as one line of JSON, as writeJSON does.
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(rawOut(w)).Encode(v)
}

// findLogFor bounds how long a command waits for the event log to answer:
// a NATS cluster that lost the log's leader elects another in seconds.
const findLogFor = 15 * time.Second

// findLog checks that the event log exists, asking again while the request
// times out (a NATS without JetStream, or without the log, answers at once).
func findLog(ctx context.Context, js jetstream.JetStream) error {
	return provision.UntilAnswered(ctx, findLogFor, 5*time.Second, func(ctx context.Context) error {
		_, err := js.Stream(ctx, events.StreamDefault)
		return err
	})
}

// attachLogs binds to the job logs stream, waiting for it as dial waits
// for the event log: a stream electing a leader does not answer, and
// jetjob logs failed at once with "bind job logs: context deadline
// exceeded" alone (the event log's leader elsewhere, so dial found it).
func attachLogs(ctx context.Context, c *client) (*workers.Logs, error) {
	var logs *workers.Logs
	err := provision.UntilAnswered(ctx, findLogFor, 5*time.Second, func(ctx context.Context) (err error) {
		logs, err = workers.AttachLogs(ctx, c.js)
		return err
	})
	if err != nil && provision.Transient(err) {
		return nil, fmt.Errorf("the job logs stream did not answer within %s (a NATS cluster electing a leader takes seconds; try again): %w", findLogFor, err)
	}
	return logs, err
}
