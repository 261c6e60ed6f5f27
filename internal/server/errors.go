package server

import (
	"crypto/x509"
	"errors"
	"net"

	"github.com/nats-io/nats.go"
)

// ErrInvalidOptions: Options a server cannot start with.
var ErrInvalidOptions = errors.New("invalid server options")

// ErrNotClustered: replicas were asked of a NATS that is one server.
var ErrNotClustered = errors.New("replicas need a NATS cluster")

// Refused says whether err is a NATS's refusal of a connection, which
// trying again does not change: of its user's credentials, or of TLS on
// either side (a certificate not trusted, or none shown where one is
// asked for).
func Refused(err error) bool {
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	var invalid x509.CertificateInvalidError
	var remote *net.OpError
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) ||
		errors.Is(err, nats.ErrTLS) || errors.Is(err, nats.ErrSecureConnWanted) ||
		errors.As(err, &unknownCA) || errors.As(err, &badHost) || errors.As(err, &invalid) ||
		errors.As(err, &remote) && remote.Op == "remote error" // a TLS alert
}
