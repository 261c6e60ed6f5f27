package events

import "fmt"

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
