// Package statemachine decides every job state change: the job states and the
// transition table (declared once, on looplab/fsm), the pure fold of a job's
// events into its current state, and the commands that load a job, decide
// with the table and append the resulting event with the expected sequence.
//
// A command that loses a race (its append is refused because the history
// moved) reloads the job and decides again, a bounded number of times; after
// that, or when the fresh state no longer allows the transition, it returns
// a *ConflictError carrying the job as it now is.
//
// Results from workers are fenced: each acquisition gives the job a lease
// (the stream sequence of its acquired event) and every later report must
// carry it, so a worker that lost the job cannot record anything for it. Such
// a report gets a *LeaseLostError (ErrLeaseLost) carrying the job as it now
// is, also when it lost a race to the change that fenced it: it does not
// match ErrConflict, since no retry can record it.
package statemachine
