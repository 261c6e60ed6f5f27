// Package maintenance keeps a jetjob deployment healthy: it detects hung jobs
// and fails their attempts, terminates cancels that no worker acknowledged,
// cancels pending jobs in bulk by filter, and purges finished jobs past their
// retention.
//
// The long-running services (Detector, Purger) share one shape: a Config with
// documented defaults, a constructor, and Start/Stop that are safe to call
// twice; each pass is one function, which this package's tests call
// directly. Where only one server may act
// at a time they hold a Leadership; every write they make is still a state
// transition appended with the expected sequence, so a job that moved on in
// the meantime is left alone even if two of them act at once.
package maintenance
