// Package workers moves jobs to the workers that can run them: it enqueues
// every job that becomes pending, arms timers for scheduled jobs and retries,
// lets pools of workers acquire the jobs whose type and tags they serve,
// keeps their leases alive with heartbeats, tells them when a job is
// canceled, streams their log lines, and reports their results.
//
// # Queue layout
//
// Every job that becomes pending gets one message in a work-queue stream on
// the subject
//
//	jj.wq.<shard>.<type>.<tagset>.<priority>.<job-id>
//
// where <tagset> is a short stable hash of the job's sorted tags ("none" for
// no tags) and <shard> a hash of type and tag set that picks one of the
// QueueShards streams JJ_QUEUE_<shard>: the server's cost of an ack grows
// with the consumers of the stream. Each (type, tagset, priority) has one
// durable pull consumer, its state in memory, filtered on
// jj.wq.<shard>.<type>.<tagset>.<priority>.*. Those filters never
// overlap, so the work-queue stream accepts them however many tag sets and
// workers there are, and all workers that can serve a tag set share its
// consumer: JetStream hands each message to one of them. The tag sets in use
// are registered in the KV bucket jj_tagsets; a worker watches it and pulls
// from every consumer whose tags are a subset of its own (seed 004: a job
// goes only to a worker that has every one of its tags). A queue that holds
// no job and has not been used for a while is removed
// (Leftovers.ForgetIdleQueues): tag sets can be many and short-lived, and
// every consumer makes acks on its stream dearer. The next job for it makes
// it again.
//
// A queue message is only a hint. Acquiring is a state transition appended
// with the job's expected sequence: a message whose job is no longer pending
// (canceled, finished, taken) is dropped, and JetStream's redelivery never
// decides a job's fate.
//
// # Waking, not polling
//
// The enqueuer publishes a core NATS wake-up on jj.wake.<type>.<tagset>.<prio>
// after each enqueue. It reaches one connection with pools serving the type,
// whose pools share their subscriptions; one pool with a slot free claims
// it, or it is passed on to every pool. A Pool is one domain (seed 004): it
// fetches only when it has free slots, and when every consumer it serves
// came back empty it waits for a wake-up or a slow backup pass, so an idle
// pool sends no requests and a lost wake-up never strands a job. A
// wake-up sent to a process that stopped reading is sent to every pool a
// second later, if its job is still queued (rewake.go).
//
// # Commands
//
// ExecHandler runs a command per job in a process group of its own. A
// process that runs commands starts its own binary again as their
// watchdog (watchdog.go), which kills the commands' groups when the process
// dies, SIGKILL included; a binary that imports this package runs as the
// watchdog when started so, from its init, before its main.
//
// # Heartbeats and fencing
//
// A running attempt beats at least six times per the server's hang-after,
// which the server publishes (events.Heartbeats.FollowHangAfter) and the
// pool follows. Each beat is stored after the attempt's previous one, so a
// beat sent late by a worker that lost the job cannot hide the beats of the
// attempt that now runs it. A handler none of whose beats was acknowledged
// for half the hang-after is canceled with ErrLostContact, before the hang
// detector fails its attempt and a retry starts elsewhere: a worker cut off
// from the server does not run its job beside the retry.
//
// # Crash safety
//
// The enqueuer is a durable consumer over the event log that acks an event
// only after its queue message is stored (deduplicated by event), so a crash
// between a submit and its enqueue is repaired by redelivery; Reconcile
// re-enqueues pending jobs whose queue message was lost.
package workers
