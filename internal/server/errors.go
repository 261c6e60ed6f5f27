package server

import "errors"

// ErrInvalidOptions: Options a server cannot start with.
var ErrInvalidOptions = errors.New("invalid server options")

// ErrNotClustered: replicas were asked of a NATS that is one server.
var ErrNotClustered = errors.New("replicas need a NATS cluster")
