package main

import (
	"errors"
	"testing"
	"time"
)

// FuzzParseJobLine checks that parseJobLine, which reads one line of
// submit --file, never panics on any line, and that a line it accepts has
// a type.
func FuzzParseJobLine(f *testing.F) {
	for _, s := range []string{
		`{"type":"late"}`,
		`{"type":"import","meta":{"n":"7"}}`,
		`{"type":"a"}{"type":"b"}`,
		`{"type":"a","delay":"5x"}`,
		`{"type":"a","delay":"-1s"}`,
		`{"type":"a","tags":{"os":1}}`,
		`{"type":"k","key":"a"}`,
		`{"type":"ok","priority":"3"}`,
		`{"type":"a","payload":{"x":[1,2]},"max_attempts":0,"run_at":"2026-01-02T15:04:05Z","backoff_base":"1s","backoff_cap":"99999999999h"}`,
		`{"type":"a","payload":null,"max_attempts":5,"priority":9,"tags":{"os":"linux"},"backoff_base":"-1s"}`,
		`{"type":"a","run_at":"x","delay":"1s"}`,
		`[1]`, `"x"`, `{"type":"a","nope":1}`, `{"type":`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		p, err := parseJobLine(line)
		if err == nil && p.Type == "" {
			t.Fatalf("accepted %q without a type", line)
		}
	})
}

// FuzzDurationProblem checks that durationProblem never panics, neither on
// the errors time.ParseDuration gives for any text nor on other errors.
func FuzzDurationProblem(f *testing.F) {
	for _, s := range []string{"5x", "10", "-1s", "99999999999h", "1.5.5s", "+", "-", "", ".s", "9223372036854775808ns", "1h2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if _, err := time.ParseDuration(v); err != nil {
			if durationProblem(v, err, "30s or 5m") == "" {
				t.Fatal("no problem said")
			}
		}
		_ = durationProblem(v, errors.New(v), "1s")
	})
}
