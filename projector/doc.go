// Package projector is jetjob's read side: it projects the event log into one
// JSON view per job in a KV bucket, and reads those views back (Get, List,
// Watch).
//
// The view of a job is a pure function of the fold of its events and of its
// last heartbeat (ViewOf), so it can be deleted and rebuilt from the log with
// an identical result. The projector is a durable consumer over the events
// stream: it applies an event to the stored view when the event follows the
// view's version (the event's expected-sequence header says which sequence it
// followed), skips it when the view is already past it (redelivery), and
// otherwise folds the job's whole history again. Views are written with the
// bucket's compare-and-set, so two projectors (two servers) never write an
// older view over a newer one. A message that is not a valid event is copied
// to the quarantine stream and skipped; it never stalls the projection.
package projector
