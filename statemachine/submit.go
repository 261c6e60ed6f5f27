package statemachine

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Submit limits and defaults.
const (
	MaxPayloadDefault  = 1 << 20
	MaxAttemptsDefault = 3
	// MaxAttemptsLimit is the most attempts a job may be given.
	MaxAttemptsLimit   = 1000
	PriorityMin        = 0
	PriorityMax        = 9
	PriorityDefault    = 0
	BackoffBaseDefault = time.Second
	BackoffCapDefault  = 10 * time.Minute
	// BackoffLimit is the longest backoff base or cap a job may be given.
	BackoffLimit = 365 * 24 * time.Hour
	maxTagLen    = 128
	maxTags      = 32
)

// delayTooLong refuses a delay that ends past RunAtLimit.
func delayTooLong(d time.Duration) error {
	return fmt.Errorf("%w: delay %s runs the job after %s, expected a shorter delay: NATS timers hold no later time",
		ErrInvalid, d, RunAtLimit.Format("2006-01-02"))
}

// RunAtLimit is the latest run-at a job may be given: NATS timers, like
// Go's nanosecond clock, cannot represent a time past 2262-04-11.
var RunAtLimit = time.Date(2262, time.January, 1, 0, 0, 0, 0, time.UTC)

// idempotencyNamespace derives job IDs from idempotency keys, so that the
// key's job ID is taken by the first submit forever, with no dedupe window.
var idempotencyNamespace = uuid.MustParse("6f1c1f2e-8a3b-4b4e-9a57-6c1a5e0f2d10")

// JobIDForKey is the job ID that a submit with the idempotency key gets.
func JobIDForKey(key string) string {
	return uuid.NewSHA1(idempotencyNamespace, []byte(key)).String()
}

// SubmitParams describes a job to submit.
type SubmitParams struct {
	// Type is the job type workers serve: letters, digits, '-' or '_'. Required.
	Type string
	// Tags: the job runs only on a worker that has every one of them.
	Tags map[string]string
	// Meta is free-form metadata for filtering (for example a template version).
	Meta map[string]string
	// Payload is handed to the worker; at most Config.MaxPayload bytes,
	// and its event must fit in one NATS message (Machine.Validate).
	Payload []byte
	// Priority: PriorityMin-PriorityMax, higher runs first. Default
	// PriorityDefault.
	Priority int
	// MaxAttempts: how many times the job may run; 0 means MaxAttemptsDefault.
	MaxAttempts int
	// RunAt: not before this time; nil or past means now.
	RunAt *time.Time
	// Delay: not before this long after the submit (by the submitting
	// machine's clock); instead of RunAt, not with it.
	Delay time.Duration
	// Key: with it, every submit with the same key returns the first job,
	// until that job is purged.
	Key string
	// Backoff before a retry; zero fields take the Machine's
	// (Config.Backoff).
	Backoff BackoffConfig
}

// BackoffConfig sets the retry delay: Base doubled per attempt, at most Cap,
// with jitter.
type BackoffConfig struct {
	// Base is the delay after a job's first failed attempt, before jitter.
	// Zero takes the default: in SubmitParams, the Machine's
	// Config.Backoff.Base; in the Config, BackoffBaseDefault.
	Base time.Duration
	// Cap bounds the delay. Zero takes the default: in SubmitParams, the
	// Machine's Config.Backoff.Cap; in the Config, BackoffCapDefault.
	Cap time.Duration
}

// ValidateToken checks a name that becomes part of a subject.
func ValidateToken(what, s string) error {
	if s == "" || len(s) > maxTagLen {
		return fmt.Errorf("%w: %s %s, expected 1-%d letters, digits, '-' or '_'", ErrInvalid, what, QuoteShort(s), maxTagLen)
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')) {
			return fmt.Errorf("%w: %s %s, expected 1-%d letters, digits, '-' or '_'", ErrInvalid, what, QuoteShort(s), maxTagLen)
		}
	}
	return nil
}

// QuoteShort quotes s for an error line, at most its first 64 bytes (fewer
// where quoting makes them longer: a byte of invalid UTF-8 is four) and its
// length when cut: a line that echoed a 10,000-byte name was no longer a
// line.
func QuoteShort(s string) string {
	const shown = 64
	if len(s) <= shown {
		if q := strconv.Quote(s); len(q) <= shown+2 {
			return q
		}
	}
	cut := min(len(s), shown)
	for {
		for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) {
			cut--
		}
		if q := strconv.Quote(s[:cut]); len(q) <= shown+2 || cut == 0 {
			return fmt.Sprintf("%s… (%d bytes)", q, len(s))
		}
		cut--
	}
}

// ValidateLabels checks tags or metadata: keys are tokens; values are at most
// 128 bytes of UTF-8 with no control characters ('=' is allowed: a k=v flag
// splits at the first one). A tag value has no ',' either: tag sets are
// written k=v,k=v, and a worker matches values exactly.
func ValidateLabels(what string, m map[string]string) error {
	if len(m) > maxTags {
		return fmt.Errorf("%w: %d %s entries, expected at most %d", ErrInvalid, len(m), what, maxTags)
	}
	for k, v := range m {
		if err := ValidateToken(what+" key", k); err != nil {
			return err
		}
		if len(v) > maxTagLen {
			return fmt.Errorf("%w: %s %s value is %d bytes, expected at most %d", ErrInvalid, what, k, len(v), maxTagLen)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: %s %s value is not valid UTF-8, expected UTF-8 text", ErrInvalid, what, k)
		}
		if strings.ContainsFunc(v, unicode.IsControl) {
			return fmt.Errorf("%w: %s %s value has a control character, expected one line of text", ErrInvalid, what, k)
		}
		if what == "tag" && strings.ContainsRune(v, ',') {
			return fmt.Errorf("%w: tag %s value %s has a ',', expected one value per tag (each tag its own k=v)", ErrInvalid, k, QuoteShort(v))
		}
	}
	return nil
}

// Validate checks the parameters as a Machine with the default Config would
// (Machine.Validate checks them against its own), filling in defaults: for
// tools that check input before they connect.
func (p *SubmitParams) Validate() error {
	return p.validate(MaxPayloadDefault, BackoffConfig{Base: BackoffBaseDefault, Cap: BackoffCapDefault})
}

// validate checks p against a payload limit and the backoff that its zero
// backoff fields take.
func (p *SubmitParams) validate(maxPayload int, backoff BackoffConfig) error {
	if p == nil {
		return fmt.Errorf("%w: no submit parameters", ErrInvalid)
	}
	if err := ValidateToken("type", p.Type); err != nil {
		return err
	}
	if err := ValidateLabels("tag", p.Tags); err != nil {
		return err
	}
	if err := ValidateLabels("meta", p.Meta); err != nil {
		return err
	}
	if len(p.Payload) > maxPayload {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrPayloadTooLarge, len(p.Payload), maxPayload)
	}
	if p.Priority < PriorityMin || p.Priority > PriorityMax {
		return fmt.Errorf("%w: priority %d, expected %d-%d", ErrInvalid, p.Priority, PriorityMin, PriorityMax)
	}
	if p.MaxAttempts < 0 || p.MaxAttempts > MaxAttemptsLimit {
		return fmt.Errorf("%w: max attempts %d, expected 0 (the default, %d) to %d", ErrInvalid, p.MaxAttempts, MaxAttemptsDefault, MaxAttemptsLimit)
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = MaxAttemptsDefault
	}
	if p.Backoff.Base < 0 {
		return fmt.Errorf("%w: backoff base %s, expected 0 (the default) or more", ErrInvalid, p.Backoff.Base)
	}
	if p.Backoff.Cap < 0 {
		return fmt.Errorf("%w: backoff cap %s, expected 0 (the default) or more", ErrInvalid, p.Backoff.Cap)
	}
	if p.Backoff.Base > BackoffLimit || p.Backoff.Cap > BackoffLimit {
		return fmt.Errorf("%w: backoff of %s, expected at most %s", ErrInvalid, max(p.Backoff.Base, p.Backoff.Cap), BackoffLimit)
	}
	if p.Delay < 0 {
		return fmt.Errorf("%w: delay %s, expected 0 or more", ErrInvalid, p.Delay)
	}
	if p.Delay > 0 && p.RunAt != nil {
		return fmt.Errorf("%w: both a run-at and a delay, expected one of them", ErrInvalid)
	}
	if p.Delay > 0 && p.Delay >= time.Until(RunAtLimit) {
		return delayTooLong(p.Delay)
	}
	if p.RunAt != nil && !p.RunAt.Before(RunAtLimit) {
		return fmt.Errorf("%w: run-at %s, expected a time before %s", ErrInvalid, p.RunAt.UTC().Format(time.RFC3339), RunAtLimit.Format(time.RFC3339))
	}
	base, limit := cmp.Or(p.Backoff.Base, backoff.Base), cmp.Or(p.Backoff.Cap, backoff.Cap)
	if base > limit {
		// Said as the default when not given: the caller set the other.
		baseSaid, capSaid, hint := base.String(), limit.String(), ""
		switch {
		case p.Backoff.Base == 0:
			baseSaid, hint = baseSaid+" (the default)", ": give a base too"
		case p.Backoff.Cap == 0:
			capSaid, hint = capSaid+" (the default)", ": give a cap too"
		}
		return fmt.Errorf("%w: backoff base %s is above its cap %s, expected base <= cap%s", ErrInvalid, baseSaid, capSaid, hint)
	}
	if p.Key != "" && len(p.Key) > 256 {
		return fmt.Errorf("%w: idempotency key is %d bytes, expected at most 256", ErrInvalid, len(p.Key))
	}
	if !utf8.ValidString(p.Key) {
		return fmt.Errorf("%w: idempotency key is not valid UTF-8, expected UTF-8 text", ErrInvalid)
	}
	if strings.ContainsFunc(p.Key, unicode.IsControl) {
		return fmt.Errorf("%w: idempotency key %s has a control character, expected one line of text", ErrInvalid, QuoteShort(p.Key))
	}
	return nil
}
