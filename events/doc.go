// Package events is jetjob's append-only event log: the event envelope and its
// codec, the subject of each job's history, and a Log that appends an event
// only if the job's history has not moved since the writer read it.
//
// Every job has its own subject in one JetStream stream (limits retention,
// file storage). Append sets Nats-Expected-Last-Subject-Sequence to the last
// sequence the writer saw for the job, so of several writers that read the
// same history exactly one appends and the others get a *ConflictError.
// When MinBatch or more appends to different jobs wait at once, they are
// coalesced into a JetStream atomic batch, which the server commits with
// one fsync instead of one each; fewer are pipelined one by one. Where the
// server does not fsync each append, a batch only adds its staging, and
// each append is published as it comes: the server that provisioned the
// stream records which (Config.RecordAppends) and other logs Follow it. A
// worker's log that batches relays its appends to a server's log
// (Config.Relay, ServeRelay), so that the appends of many processes meet in
// one server's batches.
//
// NATS tells a publish or a subscription that the connection's user may
// not make only to the connection's error handler (nats.ErrorHandler): a
// request it refused goes unanswered, and looks like one lost. An append
// so refused ends, once its tries are over (PublishRetries times
// PublishTimeout), in ErrPermission, wrapping the violation; nothing was
// stored. Its history is read first, since an earlier try may have been
// stored before the user lost the subject: found there, the append
// succeeded; not readable, it ends in ErrOutcomeUnknown. To hear a refusal at once, give the connection an error handler
// that ends the caller's context with the violation as its cause
// (context.WithCancelCause, on errors.Is(err, nats.ErrPermissionViolation)),
// and read context.Cause(ctx) when a call ends: jetjob's commands do so.
package events
