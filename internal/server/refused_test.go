package server

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
)

// startTLSNATS starts a stock NATS serving TLS with a certificate for
// 127.0.0.1 of its own, and returns it and the file a client trusts it by.
func startTLSNATS(t *testing.T, adjust func(*nserver.Options)) (*natstest.Env, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	env := natstest.StartStock(t, func(o *nserver.Options) {
		// A loaded machine under -race takes more than the default half
		// second for a handshake.
		o.TLSConfig, o.TLS, o.TLSTimeout = cfg, true, 10
		if adjust != nil {
			adjust(o)
		}
	}, connect(ca, adjust)...)
	return env, ca
}

// connect is how the test's own client connects to a NATS adjust set up:
// with the handshake first, where it asks for that.
func connect(ca string, adjust func(*nserver.Options)) []nats.Option {
	var o nserver.Options
	if adjust != nil {
		adjust(&o)
	}
	if o.TLSHandshakeFirst {
		return []nats.Option{nats.RootCAs(ca), nats.TLSHandshakeFirst()}
	}
	return []nats.Option{nats.RootCAs(ca)}
}

// flakyFront stands before the NATS at target as a cluster's node in a
// rolling restart does: its first connection gets the NATS's INFO (TLS
// required) and then, during the TLS handshake, is dropped (cut) or never
// answered (stalled); every later one is relayed to the NATS.
func flakyFront(t *testing.T, target string, stall bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for first := true; ; first = false {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			track(up)
			if first {
				info, err := bufio.NewReader(up).ReadString('\n')
				_ = up.Close()
				if err == nil {
					_, _ = io.WriteString(c, info)
				}
				if !stall {
					// What the client sent unread: the close resets it.
					_ = c.(*net.TCPConn).SetLinger(0)
					_ = c.Close()
				}
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
	return "tls://" + ln.Addr().String()
}

// A TLS handshake cut short by the network (a node of the cluster going
// down mid-connect, or too loaded to answer within nats.go's timeout) is
// no refusal: the start tries again and starts. Every failed handshake is
// nats.ErrTLS, so Refused took these for refusals, and the start ended at
// once with "connect to NATS at ...: nats: tls error: read tcp ...:
// connection reset by peer" (or "i/o timeout").
func TestAStartRidesOutATLSHandshakeCutShort(t *testing.T) {
	env, ca := startTLSNATS(t, nil)
	target := strings.TrimPrefix(strings.TrimPrefix(env.URL, "nats://"), "tls://")
	for name, stall := range map[string]bool{"reset": false, "timed out": true} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			s, err := Start(ctx, Options{NATSURL: flakyFront(t, target, stall), NoMaintenance: true, NATSOptions: []nats.Option{nats.RootCAs(ca)}})
			require.NoError(t, err)
			s.Stop()
		})
	}
}

// A start without nats.TLSHandshakeFirst on a NATS set to handshake_first
// ends at once with ErrHandshakeFirst: the NATS says nothing until it
// gives up on a handshake, and the start tried again for 30 s to say that
// it was not reachable.
func TestAStartOnAHandshakeFirstNATSSaysSo(t *testing.T) {
	env, ca := startTLSNATS(t, func(o *nserver.Options) { o.TLSHandshakeFirst = true })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := Start(ctx, Options{NATSURL: env.URL, NoMaintenance: true, NATSOptions: []nats.Option{nats.RootCAs(ca)}})
	require.ErrorIs(t, err, ErrHandshakeFirst)
	require.NotContains(t, err.Error(), "not reachable")

	s, err := Start(ctx, Options{NATSURL: env.URL, NoMaintenance: true, NATSOptions: []nats.Option{nats.RootCAs(ca), nats.TLSHandshakeFirst()}})
	require.NoError(t, err)
	s.Stop()
}

// Only a NATS that answers a TLS handshake sent first is told as set to
// handshake_first: one that sends its INFO first (in plain text, TLS or
// not), or something that says nothing at all, is not.
func TestHandshakeFirstIsLookedFor(t *testing.T) {
	first, _ := startTLSNATS(t, func(o *nserver.Options) { o.TLSHandshakeFirst = true })
	tlsNATS, _ := startTLSNATS(t, nil)
	plain := natstest.StartStock(t, nil)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	require.True(t, handshakeFirst([]string{first.URL}, 5*time.Second), first.URL)
	require.True(t, handshakeFirst([]string{"nats://" + silent.Addr().String(), first.URL}, 5*time.Second), "any of several")
	for name, url := range map[string]string{"TLS": tlsNATS.URL, "plain": plain.URL, "silent": "nats://" + silent.Addr().String(), "a websocket": "ws://" + silent.Addr().String()} {
		require.False(t, handshakeFirst([]string{url}, time.Second), name)
	}
}

// dialCounter is a dialer that says when its first dial was tried.
type dialCounter struct {
	once  sync.Once
	tried chan struct{}
}

func (d *dialCounter) Dial(network, address string) (net.Conn, error) {
	d.once.Do(func() { close(d.tried) })
	return (&net.Dialer{Timeout: 2 * time.Second}).Dial(network, address)
}

// A NATS set to handshake_first that comes up after a start's first try
// (started together, the NATS the slower) is told as such too: only the
// first try's failure was looked at, and a later one, the NATS saying
// nothing, is no error nats.go reports, so the start tried for 30 s to say
// that the NATS was not reachable.
func TestAStartOnAHandshakeFirstNATSUpLaterSaysSo(t *testing.T) {
	addr := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		return l.Addr().String()
	}()
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	dialer := &dialCounter{tried: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	started := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := Start(ctx, Options{NATSURL: "nats://" + addr, NoMaintenance: true, NATSOptions: []nats.Option{nats.SetCustomDialer(dialer)}})
		done <- err
	}()
	<-dialer.tried
	startTLSNATS(t, func(o *nserver.Options) {
		o.TLSHandshakeFirst = true
		o.Host = host
		o.Port, err = strconv.Atoi(port)
	})
	require.NoError(t, err)
	err = <-done
	require.ErrorIs(t, err, ErrHandshakeFirst)
	require.Less(t, time.Since(started), 25*time.Second, "told before the start's 30 s")
}
