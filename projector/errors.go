package projector

import "errors"

// ErrNoViews: the job views bucket does not exist (no server provisioned it yet).
var ErrNoViews = errors.New("no job views bucket: is a jetjob server running against this NATS?")
