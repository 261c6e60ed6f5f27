package server

import (
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

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
		errors.Is(err, nats.ErrSecureConnWanted) ||
		errors.As(err, &unknownCA) || errors.As(err, &badHost) || errors.As(err, &invalid) ||
		errors.As(err, &remote) && remote.Op == "remote error" || // a TLS alert
		tlsRefused(err)
}

// tlsRefused tells, of the errors nats.go gives as nats.ErrTLS (every
// handshake that failed), those that say the NATS refused ours: not a
// handshake that timed out (a server too loaded to answer in time, as
// when a cluster's clients all reconnect to the nodes a rolling restart
// left up) or that the connection was cut short during (a node going
// down). A connection closed once the handshake was done is how a NATS
// asking for a client certificate refuses one over TLS 1.3, when its alert
// is not read first; nats.go says so only in its message.
func tlsRefused(err error) bool {
	if !errors.Is(err, nats.ErrTLS) {
		return false
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return false
	}
	cut := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	return !cut || strings.Contains(err.Error(), "after TLS handshake")
}
