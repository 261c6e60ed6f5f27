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
	if id == "" || len(id) > maxJobIDLen {
		return fmt.Errorf("%w %q: expected 1-%d letters, digits, '-' or '_'", ErrInvalidJobID, id, maxJobIDLen)
	}
	for _, r := range id {
		ok := r == '-' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !ok {
			return fmt.Errorf("%w %q: expected 1-%d letters, digits, '-' or '_'", ErrInvalidJobID, id, maxJobIDLen)
		}
	}
	return nil
}
