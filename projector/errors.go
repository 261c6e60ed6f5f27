package projector

import "errors"

var (
	// ErrNoViews: the job views bucket does not exist (no server provisioned it yet).
	ErrNoViews = errors.New("no job views bucket: is a jetjob server running against this NATS? (a running one makes it again within seconds when it was deleted)")
	// ErrInvalidConfig: a Config that cannot run a projector.
	ErrInvalidConfig = errors.New("invalid projector config")
	// ErrViewTooLarge: a job's view does not fit in a NATS message even
	// truncated: the server's max_payload, less events.MessageRoom, is
	// smaller than a few KiB.
	ErrViewTooLarge = errors.New("job view too large for a NATS message")
	// errStale: another writer moved the view since it was read; the write
	// is decided again on the new view.
	errStale = errors.New("view changed concurrently")
	// errHistoryBehind: a job's history was read from a replica that has
	// not caught up with the events being projected.
	errHistoryBehind = errors.New("history read behind the events being projected")
)
