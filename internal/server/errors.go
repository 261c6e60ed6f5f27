package server

import "errors"

// ErrInvalidOptions: Options a server cannot start with.
var ErrInvalidOptions = errors.New("invalid server options")
