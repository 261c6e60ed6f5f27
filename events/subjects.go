package events

import (
	"fmt"
	"strings"
	"unicode"
)

// Stream and subject names, stable across versions.
const (
	StreamDefault        = "JJ_EVENTS"
	SubjectPrefixDefault = "jj.ev."
	// TypeHeader carries each event's type beside its body; see TypeOf.
	TypeHeader  = "Jj-Event-Type"
	maxJobIDLen = 64
)

// ValidateJobID checks that id can name a job's subject: 1-64 letters,
// digits, '-' or '_'.
func ValidateJobID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty, expected 1-%d letters, digits, '-' or '_'", ErrInvalidJobID, maxJobIDLen)
	}
	if len(id) > maxJobIDLen {
		// Not echoed whole: an ID pasted wrong may be a whole file.
		return fmt.Errorf("%w %q… (%d bytes): expected 1-%d letters, digits, '-' or '_'", ErrInvalidJobID, id[:maxJobIDLen], len(id), maxJobIDLen)
	}
	for _, r := range id {
		ok := r == '-' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !ok {
			return fmt.Errorf("%w %q: expected 1-%d letters, digits, '-' or '_'", ErrInvalidJobID, id, maxJobIDLen)
		}
	}
	return nil
}

// validateStreamName refuses what NATS refuses in a stream's name, before
// the first request would: the name is a token of the JetStream API's
// subjects and a directory of the server's store.
func validateStreamName(name string) error {
	if strings.ContainsAny(name, ".*>/\\") || strings.ContainsFunc(name, unicode.IsSpace) || strings.ContainsFunc(name, unicode.IsControl) {
		return fmt.Errorf("%w: stream %q, expected a name without '.', '*', '>', '/', '\\' or spaces, such as %s", ErrInvalidConfig, name, StreamDefault)
	}
	return nil
}

// validateSubjectPrefix refuses a prefix that would not make each job's
// subject a literal one of its own: one without its closing dot made
// subjects that the stream's "prefix>" never matched, and one with a
// wildcard, an empty token or a space was refused by NATS only at the
// stream's creation, in its own words. Any other character NATS takes in a
// subject is taken (a ':' of a naming scheme, a letter not in ASCII):
// such prefixes made working logs before this check. A leading '$' is
// the namespace of NATS's own subjects ($JS, $KV).
func validateSubjectPrefix(prefix string) error {
	const expected = "expected dot-separated tokens without spaces, '*' or '>', ending in '.', such as " + SubjectPrefixDefault
	if !strings.HasSuffix(prefix, ".") {
		return fmt.Errorf("%w: subject prefix %q does not end in '.', %s", ErrInvalidConfig, prefix, expected)
	}
	if strings.HasPrefix(prefix, "$") {
		return fmt.Errorf("%w: subject prefix %q starts with '$', which NATS keeps for its own subjects, %s", ErrInvalidConfig, prefix, expected)
	}
	for _, token := range strings.Split(strings.TrimSuffix(prefix, "."), ".") {
		if strings.ContainsAny(token, "*>") || strings.ContainsFunc(token, unicode.IsSpace) || strings.ContainsFunc(token, unicode.IsControl) {
			return fmt.Errorf("%w: subject prefix %q, %s", ErrInvalidConfig, prefix, expected)
		}
		if token == "" {
			return fmt.Errorf("%w: subject prefix %q has an empty token, %s", ErrInvalidConfig, prefix, expected)
		}
	}
	return nil
}
