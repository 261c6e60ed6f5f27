package maintenance

import "errors"

// ErrInvalidConfig reports a config a service cannot run with.
var ErrInvalidConfig = errors.New("invalid maintenance config")
