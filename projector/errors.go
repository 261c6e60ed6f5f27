package projector

import "errors"

var (
	// ErrNoViews: the job views bucket does not exist (no server provisioned it yet).
	ErrNoViews = errors.New("no job views bucket: is a jetjob server running against this NATS? (a running one makes it again within seconds when it was deleted)")
	// ErrNoProjector: the event log has no projector's consumer
	// (DurableDefault): no jetjob server has projected it into views yet.
	ErrNoProjector = errors.New("no projector reads this event log: is a jetjob server running against this NATS?")
	// ErrInvalidConfig: a Config that cannot run a projector.
	ErrInvalidConfig = errors.New("invalid projector config")
	// ErrViewTooLarge: a job's view does not fit in a NATS message even
	// truncated: the server's max_payload, less events.MessageRoom, is
	// smaller than a few KiB.
	ErrViewTooLarge = errors.New("job view too large for a NATS message")
	// ErrNotAView: the value stored under a job's key is not a view a
	// projector wrote (it names another job, or no version); the projector
	// writes the job's view again on its next event, and a rebuild at once.
	ErrNotAView = errors.New("the stored value is not a job view (written by something else; jetjob admin rebuild writes it again)")
	// errStale: another writer moved the view since it was read; the write
	// is decided again on the new view.
	errStale = errors.New("view changed concurrently")
	// errHistoryBehind: a job's history was read from a replica that has
	// not caught up with the events being projected.
	errHistoryBehind = errors.New("history read behind the events being projected")
)
