// Package projector is jetjob's read side: it projects the event log into one
// JSON view per job in a KV bucket, and reads those views back (Get, List,
// Watch).
//
// The view of a job is a pure function of the fold of its events and of its
// last heartbeat (ViewOf), so it can be deleted and rebuilt from the log with
// a byte-identical result (Rebuild, or Start on a missing bucket).
//
// The Projector is a durable consumer over the events stream. It takes the
// messages in batches, groups them by job, applies each job's records in
// order to its stored view when they follow the view's version (each
// event's expected-sequence header says which sequence its writer saw),
// skips those the view already has (a redelivery), and otherwise folds the
// job's whole history again. Each changed view is written once per batch,
// all writes in flight at once, each expecting the revision it was decided
// on, so two projectors (two servers on one NATS) never write an older view
// over a newer one: a refused write is decided again on the stored view. A
// second consumer carries heartbeats into the views of running jobs.
//
// Views trail the log: a command returns once its event is stored, and its
// job's view is written after, usually within a millisecond (up to
// Config.Linger more under load). So a Get right after a Submit may find
// no view yet (events.ErrNotFound), and one after any command the view
// before it. To read a write of one's own, wait until the view's Version
// reaches the Version of the statemachine.Job the command returned (Watch
// sends it), or call CaughtUp, or read the job's history
// (statemachine.Machine.Load) instead.
//
// A message on an event subject that is not a valid event of its job
// (malformed, of an unknown type, or an illegal transition) is logged,
// copied to the quarantine stream and skipped; the view's version still
// moves past it, and the projection never stalls on it.
package projector
