package natsserver

import "errors"

// ErrInvalidConfig reports a Config that cannot start a server.
var ErrInvalidConfig = errors.New("invalid embedded server config")

// ErrDataDirInUse: another embedded server holds the data directory; two
// servers writing one JetStream store would corrupt it.
var ErrDataDirInUse = errors.New("data directory in use by another jetjob server")

// ErrStagedOnDisk: a stream's atomic batches stay staged on disk; the
// error says why.
var ErrStagedOnDisk = errors.New("atomic batches staged on disk")

// ErrStagedInMemoryLater: a batch is being staged on disk (a client
// appended before the server could move the staging), where it stays; the
// next ones are staged in memory once it is done, within restageEvery.
var ErrStagedInMemoryLater = errors.New("a batch is being staged on disk; the next ones are staged in memory once it is done")
