package server

import (
	"crypto/tls"
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

// ErrHandshakeFirst: the NATS took the connection and said nothing, and
// answers a TLS handshake sent first: it is set to handshake_first, and the
// connection was not (nats.TLSHandshakeFirst).
var ErrHandshakeFirst = errors.New("the NATS said nothing after taking the connection, and answers a TLS handshake sent first: it is set to handshake_first")

// SaidNothing says whether a connection failed because the NATS took it
// and then said nothing (no INFO): the read timed out, or the NATS closed
// the connection, as one set to handshake_first does when no TLS
// handshake comes (at its TLS timeout). A NATS too loaded to answer, or a
// proxy with no NATS behind it, fails so too.
func SaidNothing(err error) bool {
	var read *net.OpError
	return errors.Is(err, io.EOF) || errors.As(err, &read) && read.Op == "read"
}

// Refusal is the kind of a NATS's refusal of a connection: what the CLI
// words its hint by. Here alone is it told which errors are refusals, so
// that a kind added reaches both the starting server's stop and the CLI's
// message.
type Refusal int

const (
	// NotRefused: any other failure (a NATS down, a handshake cut short),
	// which trying again may mend.
	NotRefused Refusal = iota
	// RefusedUser: the user's credentials (nats.ErrAuthorization).
	RefusedUser
	// RefusedExpired: the user's credentials expired (nats.ErrAuthExpired).
	RefusedExpired
	// RefusedRevoked: the user's credentials were revoked
	// (nats.ErrAuthRevoked).
	RefusedRevoked
	// RefusedAccountExpired: the JWT of the user's account expired
	// (nats.ErrAccountAuthExpired), said by an operator-mode NATS to the
	// account's connections when it does; their reconnects are then
	// refused as RefusedUser.
	RefusedAccountExpired
	// RefusedUnknownCA: the NATS's certificate is signed by a CA not
	// trusted here.
	RefusedUnknownCA
	// RefusedHostname: the NATS's certificate is another host's.
	RefusedHostname
	// RefusedCertificate: the NATS's certificate is not valid (expired,
	// not for a server).
	RefusedCertificate
	// RefusedNoTLS: TLS was asked for of a NATS that offers none
	// (nats.ErrSecureConnWanted).
	RefusedNoTLS
	// RefusedPlainText: our handshake came first and the NATS answered in
	// plain text (its INFO): it is not set to handshake_first.
	RefusedPlainText
	// RefusedTLS: the NATS's TLS refused ours (a TLS alert, or the
	// connection closed after the handshake): most often no client
	// certificate, or one its CA did not sign.
	RefusedTLS
)

// Refusals lists every kind of refusal, NotRefused left out.
var Refusals = []Refusal{RefusedUser, RefusedExpired, RefusedRevoked, RefusedAccountExpired, RefusedUnknownCA, RefusedHostname,
	RefusedCertificate, RefusedNoTLS, RefusedPlainText, RefusedTLS}

// RefusalOf tells whether err is a NATS's refusal of a connection, which
// trying again does not change, and of what kind: of its user's
// credentials, or of TLS on either side (a certificate not trusted, or
// none shown where one is asked for). An error of several kinds is of the
// first listed.
func RefusalOf(err error) Refusal {
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	var invalid x509.CertificateInvalidError
	var remote *net.OpError
	var notTLS tls.RecordHeaderError
	switch {
	case errors.Is(err, nats.ErrAuthorization):
		return RefusedUser
	case errors.Is(err, nats.ErrAuthExpired):
		return RefusedExpired
	case errors.Is(err, nats.ErrAuthRevoked):
		return RefusedRevoked
	case errors.Is(err, nats.ErrAccountAuthExpired):
		return RefusedAccountExpired
	case errors.As(err, &unknownCA):
		return RefusedUnknownCA
	case errors.As(err, &badHost):
		return RefusedHostname
	case errors.As(err, &invalid):
		return RefusedCertificate
	case errors.Is(err, nats.ErrSecureConnWanted):
		return RefusedNoTLS
	case !(errors.As(err, &remote) && remote.Op == "remote error") && !tlsRefused(err): // a TLS alert, or a handshake refused
		return NotRefused
	case errors.As(err, &notTLS):
		return RefusedPlainText
	}
	return RefusedTLS
}

// Refused says whether err is a NATS's refusal of a connection (see
// RefusalOf).
func Refused(err error) bool { return RefusalOf(err) != NotRefused }

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
