package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/server"
)

// Each kind of refusal server.RefusalOf tells, the starting server's stop
// and the CLI's one line agree on, and the CLI words it with what to check;
// every other failure is left as it is. Both kept a list of refusals of
// their own, which a kind added to one had to be added to.
func TestEveryRefusalIsWorded(t *testing.T) {
	covered := map[server.Refusal]bool{}
	handshake := func(err error) error { return fmt.Errorf("%w: %w", nats.ErrTLS, err) }
	verify := func(err error) error { return handshake(&tls.CertificateVerificationError{Err: err}) }
	for _, c := range []struct {
		name string
		err  error
		kind server.Refusal
		says string
	}{
		{"user", fmt.Errorf("connect to NATS at x: %w", nats.ErrAuthorization), server.RefusedUser, "refused this user (nats: authorization violation): check --creds"},
		{"expired", nats.ErrAuthExpired, server.RefusedExpired, "its credentials expired"},
		{"revoked", nats.ErrAuthRevoked, server.RefusedRevoked, "its credentials were revoked"},
		{"account expired", nats.ErrAccountAuthExpired, server.RefusedAccountExpired, "its account expired"},
		{"unknown CA", verify(x509.UnknownAuthorityError{}), server.RefusedUnknownCA, "does not trust"},
		{"another host", verify(x509.HostnameError{Certificate: &x509.Certificate{}, Host: "h"}), server.RefusedHostname, "for another host"},
		{"invalid", verify(x509.CertificateInvalidError{Cert: &x509.Certificate{}, Reason: x509.Expired}), server.RefusedCertificate, "not valid"},
		{"no TLS", nats.ErrSecureConnWanted, server.RefusedNoTLS, "offers no TLS"},
		{"plain text", handshake(tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), server.RefusedPlainText, "leave out --tls-first"},
		{"a TLS alert", &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, server.RefusedTLS, "refused the TLS connection"},
		{"closed after the handshake", handshake(fmt.Errorf("connection closed after TLS handshake: %w", io.EOF)), server.RefusedTLS, "refused the TLS connection"},
		{"a handshake refused", handshake(errors.New("tls: handshake failure")), server.RefusedTLS, "refused the TLS connection"},
		// Several kinds: the first listed.
		{"user and unknown CA", fmt.Errorf("%w: %w", nats.ErrAuthorization, x509.UnknownAuthorityError{}), server.RefusedUser, "refused this user"},

		{"a handshake cut short", handshake(io.EOF), server.NotRefused, ""},
		{"a handshake reset", handshake(&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), server.NotRefused, ""},
		{"a handshake timed out", handshake(&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}), server.NotRefused, ""},
		{"plain text outside a handshake", tls.RecordHeaderError{}, server.NotRefused, ""},
		{"no servers", nats.ErrNoServers, server.NotRefused, ""},
		{"a deadline", context.DeadlineExceeded, server.NotRefused, ""},
		{"a permission", nats.ErrPermissionViolation, server.NotRefused, ""},
	} {
		covered[c.kind] = true
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.kind, server.RefusalOf(c.err))
			require.Equal(t, c.kind != server.NotRefused, server.Refused(c.err))
			err, ok := refusedConnect("nats://u:secret@127.0.0.1:4222", c.err)
			if c.kind == server.NotRefused {
				require.False(t, ok, "%v", err)
				require.Equal(t, c.err, err)
				return
			}
			require.True(t, ok, "%v", c.err)
			require.Contains(t, err.Error(), c.says)
			require.True(t, strings.HasPrefix(err.Error(), "the NATS at nats://REDACTED@127.0.0.1:4222 "), err.Error())
		})
	}
	for _, kind := range server.Refusals {
		require.True(t, covered[kind], "refusal kind %d has a case here", kind)
		require.NotEmpty(t, refusalSays[kind], "refusal kind %d is worded", kind)
	}
	require.Len(t, refusalSays, len(server.Refusals), "a kind worded is a kind told")
}
