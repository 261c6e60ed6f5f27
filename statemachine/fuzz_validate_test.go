package statemachine

import (
	"strings"
	"testing"
)

// FuzzValidators: the validators of user text never panic, what they accept
// fits the rules they state, and an error is one short line whatever the
// input (a value is echoed shortened, never whole).
func FuzzValidators(f *testing.F) {
	f.Add("k", "v", "w-1", "reason")
	f.Add("a.b", "x,y", "a\nb", strings.Repeat("x", 2000))
	f.Add("", "\xff", "", "")
	f.Add(strings.Repeat("\xff", 300), strings.Repeat("é", 100), strings.Repeat("\x00", 5000), "")
	f.Fuzz(func(t *testing.T, k, v, id, reason string) {
		check := func(what string, err error) {
			if err == nil {
				return
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("%s: error of more than one line: %q", what, msg)
			}
			if len(msg) > 250 {
				t.Fatalf("%s: error of %d bytes: %q", what, len(msg), msg)
			}
		}
		if err := ValidateToken("type", k); err == nil {
			if k == "" || len(k) > maxTagLen || strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
				t.Fatalf("token %q accepted", k)
			}
		} else {
			check("token", err)
		}
		for _, what := range []string{"tag", "meta"} {
			err := ValidateLabels(what, map[string]string{k: v})
			if err == nil && (ValidateToken("k", k) != nil || strings.ContainsAny(v, "\n\r\x00") || (what == "tag" && strings.Contains(v, ","))) {
				t.Fatalf("%s %q=%q accepted", what, k, v)
			}
			check(what, err)
		}
		check("worker", ValidateWorkerID(id))
		check("reason", ValidateCancelReason(reason))
		if _, err := ParseState(k); err != nil {
			check("state", err)
		}
		p := SubmitParams{Type: k, Key: id, Tags: map[string]string{"k": v}}
		check("submit", p.Validate())
	})
}
