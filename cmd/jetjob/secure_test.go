package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	nserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
	"github.com/jetjob/jetjob/internal/server"
	"github.com/jetjob/jetjob/projector"
)

// pki is a private CA made for one test, and the certificates it signed,
// as PEM files in the test's temporary directory.
type pki struct {
	pool                      *x509.CertPool
	ca                        string // the CA's certificate
	serverCert, serverKey     string // for 127.0.0.1 and localhost
	clientCert, clientKey     string // a client's, for mutual TLS
	strangerCert, strangerKey string // a client's signed by another CA
	server                    tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, b, 0o600))
		return path
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		require.NoError(t, err)
		cert, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	serial := int64(1)
	issue := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		require.NoError(t, err)
		keyDER, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	}
	ca, caKey, caPEM := newCA("jetjob test CA")
	other, otherKey, _ := newCA("another CA")
	p := &pki{pool: x509.NewCertPool(), ca: write("ca.pem", caPEM)}
	p.pool.AddCert(ca)
	cert, key := issue(ca, caKey, "nats", x509.ExtKeyUsageServerAuth)
	p.serverCert, p.serverKey = write("server.pem", cert), write("server-key.pem", key)
	var err error
	p.server, err = tls.X509KeyPair(cert, key)
	require.NoError(t, err)
	cert, key = issue(ca, caKey, "jetjob", x509.ExtKeyUsageClientAuth)
	p.clientCert, p.clientKey = write("client.pem", cert), write("client-key.pem", key)
	cert, key = issue(other, otherKey, "stranger", x509.ExtKeyUsageClientAuth)
	p.strangerCert, p.strangerKey = write("stranger.pem", cert), write("stranger-key.pem", key)
	return p
}

// startTLSNATS starts a stock NATS serving TLS with p's server
// certificate, and with mutual, asking every client for a certificate its
// CA signed.
func startTLSNATS(t *testing.T, p *pki, mutual bool) *natstest.Env {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12}
	connect := []nats.Option{nats.RootCAs(p.ca)}
	if mutual {
		cfg.ClientCAs, cfg.ClientAuth = p.pool, tls.RequireAndVerifyClientCert
		connect = append(connect, nats.ClientCert(p.clientCert, p.clientKey))
	}
	return natstest.StartStock(t, func(o *nserver.Options) {
		// A loaded machine under -race takes more than the default half
		// second for a handshake.
		o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = cfg, true, mutual, 10
	}, connect...)
}

// runsAJob runs a jetjob server on the NATS of n, a worker and the CLI's
// commands, each with args (the credential and TLS flags) and env: a job
// submitted is run by the worker, and its view and logs read back.
func runsAJob(t *testing.T, n *natstest.Env, env []string, args ...string) {
	t.Helper()
	env = append([]string{"JETJOB_SERVER=" + n.URL}, env...)
	_, serverOut := startProcEnv(t, env, append([]string{"server", "--nats", n.URL}, args...)...)
	natstest.Eventually(t, 30*time.Second, func() bool {
		_, err := projector.NewReader(context.Background(), n.JS)
		return err == nil
	}, "server up: %s", serverOut)
	_, workerOut := startProcEnv(t, env, append(append([]string{"worker"}, args...), "--type", "sec", "--", "echo", "from the worker")...)
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(workerOut.String(), "worker serving") }, "worker started: %s", workerOut)
	id := runCLIEnv(t, env, append([]string{"submit", "--type", "sec"}, args...)...).ok(t)
	natstest.Eventually(t, 30*time.Second, func() bool {
		var v projector.View
		r := runCLIEnv(t, env, append([]string{"get", id, "-o", "json"}, args...)...)
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "succeeded"
	}, "job %s run: worker: %s", id, workerOut)
	require.Contains(t, runCLIEnv(t, env, append([]string{"logs", id}, args...)...).ok(t), "from the worker")
}

// refusedInOneLine: a client command (ls, worker) refused by the NATS
// exits 1 with one line that says so; a server's refusal is its last line,
// after what its log said.
func refusedInOneLine(t *testing.T, r result, want ...string) {
	t.Helper()
	require.Equal(t, exitFailure, r.code, "stderr: %s", r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	require.Len(t, lines, 1, "one line: %s", r.stderr)
	for _, w := range want {
		require.Contains(t, lines[0], w)
	}
}

// serverRefused: a jetjob server refused by the NATS of --nats exits 1
// at once, its last line saying so, where it tried again for 30 s (TLS) to
// say that the NATS was not reachable.
func serverRefused(t *testing.T, env []string, url string, args []string, want ...string) {
	t.Helper()
	r := runCLIEnv(t, env, append([]string{"server", "--nats", url}, args...)...)
	require.Equal(t, exitFailure, r.code, "stderr: %s", r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	for _, w := range want {
		require.Contains(t, lines[len(lines)-1], w)
	}
	require.NotContains(t, r.stderr, "not reachable", "told as what it is")
}

func TestTLSWithAPrivateCA(t *testing.T) {
	p := newPKI(t)
	n := startTLSNATS(t, p, false)
	// Given by its variable to the server and worker, by its flag to the
	// CLI's commands.
	runsAJob(t, n, []string{"JETJOB_TLS_CA=" + p.ca})

	env := []string{"JETJOB_SERVER=" + n.URL}
	for _, args := range [][]string{{"ls"}, {"worker", "--type", "sec", "--", "true"}} {
		t.Run(args[0], func(t *testing.T) {
			refusedInOneLine(t, runCLIEnv(t, env, args...), "does not trust", "--tls-ca")
		})
	}
	serverRefused(t, env, n.URL, nil, "does not trust", "--tls-ca")

	// --tls-first to a NATS that sends its INFO before TLS: what to drop
	// is --tls-first, not a client certificate to add.
	first := []string{"--tls-ca", p.ca, "--tls-first"}
	for _, args := range [][]string{append([]string{"ls"}, first...), append(append([]string{"worker"}, first...), "--type", "sec", "--", "true")} {
		t.Run(args[0]+" --tls-first", func(t *testing.T) {
			r := runCLIEnv(t, env, args...)
			refusedInOneLine(t, r, "handshake_first", "--tls-first")
			require.NotContains(t, r.stderr, "--tls-cert")
		})
	}
	serverRefused(t, env, n.URL, first, "handshake_first", "--tls-first")
}

// A NATS set to handshake_first: the variable serves every command.
func TestTLSHandshakeFirst(t *testing.T) {
	t.Parallel() // waits out connects the NATS does not answer
	p := newPKI(t)
	n := natstest.StartStock(t, func(o *nserver.Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{p.server}, MinVersion: tls.VersionTLS12}
		o.TLS, o.TLSTimeout, o.TLSHandshakeFirst = true, 10, true
	}, nats.RootCAs(p.ca), nats.TLSHandshakeFirst())
	runsAJob(t, n, []string{"JETJOB_TLS_FIRST=true"}, "--tls-ca", p.ca)

	// Without --tls-first such a NATS says nothing until it gives up on a
	// handshake: told as that, not as no jetjob server to start.
	env := []string{"JETJOB_SERVER=" + n.URL, "JETJOB_TLS_CA=" + p.ca}
	for _, args := range [][]string{{"ls"}, {"worker", "--type", "sec", "--", "true"}} {
		t.Run(args[0]+" without --tls-first", func(t *testing.T) {
			r := runCLIEnv(t, env, args...)
			refusedInOneLine(t, r, "said nothing", "handshake_first", "--tls-first")
			require.NotContains(t, r.stderr, "start one")
		})
	}
	// A starting server heard the silence as a NATS not reachable, and
	// said so after trying for 30 s.
	serverRefused(t, env, n.URL, nil, "said nothing", "handshake_first", "--tls-first")
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	n := startTLSNATS(t, p, true)
	auth := []string{"--tls-ca", p.ca, "--tls-cert", p.clientCert, "--tls-key", p.clientKey}
	runsAJob(t, n, nil, auth...)
	// bench's every connection: its check, its servers', its worker
	// processes' and its clean-up's.
	r := runCLIEnv(t, nil, append([]string{"bench", "--server", n.URL, "--smoke", "--scenario", "e2e", "--n", "20", "--processes", "2"}, auth...)...)
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)

	env := []string{"JETJOB_SERVER=" + n.URL, "JETJOB_TLS_CA=" + p.ca}
	for name, args := range map[string][]string{
		"no client certificate":           {"ls"},
		"a certificate another CA signed": {"ls", "--tls-cert", p.strangerCert, "--tls-key", p.strangerKey},
		"worker":                          {"worker", "--type", "sec", "--", "true"},
	} {
		t.Run(name, func(t *testing.T) {
			refusedInOneLine(t, runCLIEnv(t, env, args...), "refused the TLS connection", "--tls-cert")
		})
	}
	serverRefused(t, env, n.URL, nil, "refused the TLS connection", "--tls-cert")
}

// writeSeed writes a new user's NKey seed to a file and returns it and the
// user's public key.
func writeSeed(t *testing.T, kp nkeys.KeyPair) (file, public string) {
	t.Helper()
	seed, err := kp.Seed()
	require.NoError(t, err)
	public, err = kp.PublicKey()
	require.NoError(t, err)
	file = filepath.Join(t.TempDir(), "user.nk")
	require.NoError(t, os.WriteFile(file, seed, 0o600))
	return file, public
}

func TestNKeyUser(t *testing.T) {
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, public := writeSeed(t, kp)
	opt, err := nats.NkeyOptionFromSeed(seed)
	require.NoError(t, err)
	n := natstest.StartStock(t, func(o *nserver.Options) {
		o.Nkeys = []*nserver.NkeyUser{{Nkey: public}}
	}, opt)
	runsAJob(t, n, nil, "--nkey", seed)

	stranger, err := nkeys.CreateUser()
	require.NoError(t, err)
	strangerSeed, _ := writeSeed(t, stranger)
	env := []string{"JETJOB_SERVER=" + n.URL}
	serverRefused(t, env, n.URL, []string{"--nkey", strangerSeed}, "refused this user", "--creds, --nkey")
	for name, args := range map[string][]string{
		"no nkey":             {"ls"},
		"another user's nkey": {"ls", "--nkey", strangerSeed},
		"worker":              {"worker", "--nkey", strangerSeed, "--type", "sec", "--", "true"},
	} {
		t.Run(name, func(t *testing.T) {
			refusedInOneLine(t, runCLIEnv(t, env, args...), "refused this user", "--creds, --nkey")
		})
	}
}

// operator is an operator-mode NATS's keys: the operator's, its system
// account's, and one account with JetStream.
type operator struct {
	op, sys, account nkeys.KeyPair
	// accountExpires, when set, is when the account's JWT expires.
	accountExpires time.Time
}

func newOperator(t *testing.T) operator {
	t.Helper()
	var o operator
	var err error
	o.op, err = nkeys.CreateOperator()
	require.NoError(t, err)
	o.sys, err = nkeys.CreateAccount()
	require.NoError(t, err)
	o.account, err = nkeys.CreateAccount()
	require.NoError(t, err)
	return o
}

// conf is the server's configuration: the operator, and its accounts
// preloaded into a resolver held in memory.
func (o operator) conf(t *testing.T) string {
	t.Helper()
	encode := func(c interface {
		Encode(nkeys.KeyPair) (string, error)
	}, kp nkeys.KeyPair) string {
		s, err := c.Encode(kp)
		require.NoError(t, err)
		return s
	}
	pub := func(kp nkeys.KeyPair) string {
		p, err := kp.PublicKey()
		require.NoError(t, err)
		return p
	}
	op := jwt.NewOperatorClaims(pub(o.op))
	op.SystemAccount = pub(o.sys)
	sys := jwt.NewAccountClaims(pub(o.sys))
	acc := jwt.NewAccountClaims(pub(o.account))
	acc.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	if !o.accountExpires.IsZero() {
		acc.Expires = o.accountExpires.Unix()
	}
	return fmt.Sprintf("operator: %s\nsystem_account: %s\nresolver: MEM\nresolver_preload: {\n  %s: %s\n  %s: %s\n}\n",
		encode(op, o.op), pub(o.sys), pub(o.sys), encode(sys, o.op), pub(o.account), encode(acc, o.op))
}

// creds writes a creds file of a new user of account, its JWT expiring at
// expires (zero: never).
func creds(t *testing.T, account nkeys.KeyPair, expires time.Time) string {
	t.Helper()
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	public, err := user.PublicKey()
	require.NoError(t, err)
	claims := jwt.NewUserClaims(public)
	if !expires.IsZero() {
		claims.Expires = expires.Unix()
	}
	token, err := claims.Encode(account)
	require.NoError(t, err)
	seed, err := user.Seed()
	require.NoError(t, err)
	b, err := jwt.FormatUserConfig(token, seed)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "user.creds")
	require.NoError(t, os.WriteFile(file, b, 0o600))
	return file
}

// start runs a NATS in the operator's mode, its env's client connecting
// with connect.
func (o *operator) start(t *testing.T, connect ...nats.Option) *natstest.Env {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(conf, []byte(o.conf(t)), 0o600))
	loaded, err := nserver.ProcessConfigFile(conf)
	require.NoError(t, err)
	return natstest.StartStock(t, func(opts *nserver.Options) {
		// The configuration's, resolver preloads included, which only a
		// configuration file sets.
		loaded.Host, loaded.Port, loaded.JetStream, loaded.StoreDir, loaded.NoSigs, loaded.NoLog = opts.Host, opts.Port, true, opts.StoreDir, true, true
		*opts = *loaded
	}, connect...)
}

func TestCredsUserInOperatorMode(t *testing.T) {
	o := newOperator(t)
	file := creds(t, o.account, time.Time{})
	n := o.start(t, nats.UserCredentials(file))
	runsAJob(t, n, []string{"JETJOB_CREDS=" + file})

	unknown, err := nkeys.CreateAccount()
	require.NoError(t, err)
	env := []string{"JETJOB_SERVER=" + n.URL}
	serverRefused(t, env, n.URL, nil, "refused this user", "--creds, --nkey")
	for name, args := range map[string][]string{
		"no creds":                     {"ls"},
		"a user of an unknown account": {"ls", "--creds", creds(t, unknown, time.Time{})},
		"worker":                       {"worker", "--type", "sec", "--", "true"},
	} {
		t.Run(name, func(t *testing.T) {
			refusedInOneLine(t, runCLIEnv(t, env, args...), "refused this user", "--creds, --nkey")
		})
	}
}

// Credential and TLS files that cannot serve are bad input, told in one
// line (exit 2) before any connection is tried: nothing listens at the URL,
// and a command that tried would say so, exit 1.
func TestBadCredentialsAndTLSFilesAreUsageErrors(t *testing.T) {
	p := newPKI(t)
	o := newOperator(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	require.NoError(t, os.WriteFile(garbage, []byte("not a key\n"), 0o600))
	account, err := o.account.Seed()
	require.NoError(t, err)
	accountSeed := filepath.Join(dir, "account.nk")
	require.NoError(t, os.WriteFile(accountSeed, account, 0o600))
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, _ := writeSeed(t, user)
	good := creds(t, o.account, time.Time{})
	expired := creds(t, o.account, time.Now().Add(-time.Minute))
	// A JWT of one user with the seed of another, which
	// jwt.FormatUserConfig would refuse to write.
	b, err := os.ReadFile(good)
	require.NoError(t, err)
	kp, err := nkeys.ParseDecoratedNKey(b)
	require.NoError(t, err)
	goodSeed, err := kp.Seed()
	require.NoError(t, err)
	other, err := nkeys.CreateUser()
	require.NoError(t, err)
	otherSeed, err := other.Seed()
	require.NoError(t, err)
	mismatched := filepath.Join(dir, "mixed.creds")
	require.NoError(t, os.WriteFile(mismatched, bytes.Replace(b, goodSeed, otherSeed, 1), 0o600))

	url := "nats://127.0.0.1:1"
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"a creds file missing", nil, []string{"ls", "--creds", filepath.Join(dir, "none.creds")}, []string{"--creds", "none.creds: cannot read it: no such file"}},
		{"a creds file that is a directory", nil, []string{"ls", "--creds", dir}, []string{"--creds", "cannot read it: is a directory"}},
		{"a creds file of garbage", nil, []string{"ls", "--creds", garbage}, []string{"holds no user JWT", "expected a creds file"}},
		{"a creds file's seed of another user", nil, []string{"ls", "--creds", mismatched}, []string{"its seed is not the key of the user its JWT names"}},
		{"an expired creds file", nil, []string{"ls", "--creds", expired}, []string{"its user JWT expired at"}},
		{"a creds file by its variable", []string{"JETJOB_CREDS=" + filepath.Join(dir, "none.creds")}, []string{"ls"}, []string{"JETJOB_CREDS", "cannot read it"}},
		{"creds and nkey", nil, []string{"ls", "--creds", good, "--nkey", seed}, []string{"--creds and --nkey both given, expected one"}},
		{"an nkey file of garbage", nil, []string{"get", "01a237f4-0202-7e62-acce-2921dd421814", "--nkey", garbage}, []string{"--nkey", "holds no user NKey seed"}},
		{"an account's seed as nkey", nil, []string{"ls", "--nkey", accountSeed}, []string{"--nkey", "holds no user NKey seed"}},
		{"a CA file of no certificate", nil, []string{"ls", "--tls-ca", p.clientKey}, []string{"--tls-ca", "holds no PEM certificate"}},
		{"a certificate without its key", nil, []string{"submit", "--type", "t", "--tls-cert", p.clientCert}, []string{"--tls-cert given without --tls-key"}},
		{"a key without its certificate", []string{"JETJOB_TLS_KEY=" + p.clientKey}, []string{"ls"}, []string{"JETJOB_TLS_KEY given without --tls-cert"}},
		{"a key not the certificate's", nil, []string{"ls", "--tls-cert", p.clientCert, "--tls-key", p.serverKey}, []string{"private key does not match public key"}},
		{"a bad JETJOB_TLS_FIRST", []string{"JETJOB_TLS_FIRST=maybe"}, []string{"ls"}, []string{"JETJOB_TLS_FIRST=", "expected true or false"}},
		{"an empty --creds", nil, []string{"ls", "--creds", ""}, []string{"--creds is empty"}},
		{"a worker's", nil, []string{"worker", "--creds", garbage, "--type", "t", "--", "true"}, []string{"holds no user JWT"}},
		{"a server's", nil, []string{"server", "--nats", url, "--nkey", garbage}, []string{"--nkey", "holds no user NKey seed"}},
		{"a bench's", nil, []string{"bench", "--server", url, "--smoke", "--tls-ca", garbage}, []string{"--tls-ca", "holds no PEM certificate"}},
		{"an embedded server's", nil, []string{"server", "--listen", "127.0.0.1:0", "--creds", good}, []string{"--creds: for the NATS of --nats only"}},
		{"a bench on embedded servers'", nil, []string{"bench", "--smoke", "--tls-ca", p.ca}, []string{"--tls-ca: for the NATS of --server only"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runCLIEnv(t, append([]string{"JETJOB_SERVER=" + url}, c.env...), c.args...)
			require.Equal(t, exitUsage, r.code, "stderr: %s", r.stderr)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			require.Len(t, lines, 1, "one line: %s", r.stderr)
			for _, w := range c.want {
				require.Contains(t, lines[0], w)
			}
		})
	}
}

// The variables, set for the CLI's commands, apply to a server or bench
// only with --nats or --server: one on its embedded server is not refused
// for them.
func TestAuthVariablesAreNotTheEmbeddedServers(t *testing.T) {
	t.Setenv("JETJOB_CREDS", filepath.Join(t.TempDir(), "none.creds"))
	fs := newFlags("server", "", false)
	var o server.Options
	finish, _ := serverFlags(fs, &o, t.TempDir())
	require.NoError(t, fs.parseFlagsOnly([]string{"--listen", "127.0.0.1:0"}))
	require.NoError(t, finish())
	require.Empty(t, o.NATSOptions)

	fs = newFlags("server", "", false)
	finish, _ = serverFlags(fs, &o, t.TempDir())
	require.NoError(t, fs.parseFlagsOnly([]string{"--nats", "nats://127.0.0.1:1"}))
	err := finish()
	require.ErrorIs(t, err, errUsage)
	require.Contains(t, err.Error(), "JETJOB_CREDS")
}

// jetjob dev on a NATS of --nats says what to export in another terminal:
// its credential and TLS settings as well as the URL, so that the
// commands it suggests reach that NATS as it does.
func TestDevOnASecuredNATSSaysWhatToExport(t *testing.T) {
	p := newPKI(t)
	n := startTLSNATS(t, p, true)
	_, out := startProcEnv(t, nil, "dev", "--nats", n.URL, "--tls-ca", p.ca, "--tls-cert", p.clientCert, "--tls-key", p.clientKey)
	natstest.Eventually(t, 60*time.Second, func() bool { return strings.Contains(out.String(), "Changes to demo jobs follow") }, "dev started: %s", out)
	var env []string
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "  export "); ok {
			env = append(env, v)
		}
	}
	r := runCLIEnv(t, env, "ls", "--type", "demo")
	require.Equal(t, 0, r.code, "with %q: %s", env, r.stderr)
}

// A NATS that refuses a running server's and worker's user for a while (its
// configuration reloaded with the password changed, then changed back):
// both log each refusal and keep trying, and serve again once it takes
// them. nats.go gives up after the same refusal twice, by default, and
// closes the connection for good.
func TestServerAndWorkerOutlastARefusalOfTheirUser(t *testing.T) {
	t.Parallel() // waits out refusals and a reconnect
	n := startRotatingNATS(t)
	url, env := n.url, n.env
	_, serverOut := startProcEnv(t, env, "server", "--nats", url)
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(serverOut.String(), "jetjob server ready") }, "server up: %s", serverOut)
	_, workerOut := startProcEnv(t, env, "worker", "--type", "rotated", "--", "echo", "from the worker")
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(workerOut.String(), "worker serving") }, "worker started: %s", workerOut)

	n.setPassword("rotated")
	// Three refusals each: nats.go's default gave up at the second.
	natstest.Eventually(t, 60*time.Second, func() bool { return refusals(serverOut) >= 3 && refusals(workerOut) >= 3 },
		"each refusal logged, and tried again: server: %s\nworker: %s", serverOut, workerOut)
	n.setPassword("pw")

	id := runCLIEnv(t, env, "submit", "--type", "rotated").ok(t)
	natstest.Eventually(t, 60*time.Second, func() bool {
		var v projector.View
		r := runCLIEnv(t, env, "get", id, "-o", "json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "succeeded"
	}, "job %s run after the refusal: server: %s\nworker: %s", id, serverOut, workerOut)
	require.Contains(t, runCLIEnv(t, env, "logs", id).ok(t), "from the worker")
	for _, out := range []*syncBuffer{serverOut, workerOut} {
		require.Contains(t, out.String(), "NATS refused this connection's user")
		require.Contains(t, out.String(), "reconnected to NATS")
	}
}

// rotatingNATS is a nats-server with one user, jj, whose password a test
// changes by reloading its configuration, as an operator rotating it does.
// It runs in a process of its own (this test binary, see TestMain): a
// reload in this process raced, under -race, with nats-server's own
// direct gets (server.setOpts against stream.getDirectRequest reading
// s.opts.MaxPending unlocked, in v2.15.3), and failed the test for a
// race that is not jetjob's.
type rotatingNATS struct {
	url string   // with the password the NATS started with
	env []string // JETJOB_SERVER=url
	// setPassword writes the configuration with password and reloads it,
	// returning once the NATS takes the new password.
	setPassword func(password string)
}

// natsConfigEnv names the configuration file with which TestMain runs a
// nats-server instead of the tests.
const natsConfigEnv = "JETJOB_TEST_NATS_CONFIG"

// runNATS serves the nats-server configuration in file until the process
// is killed; SIGHUP reloads it, as it does a nats-server.
func runNATS(file string) {
	opts, err := nserver.ProcessConfigFile(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats config:", err)
		os.Exit(2)
	}
	opts.NoLog, opts.NoSigs = true, false
	s, err := nserver.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats server:", err)
		os.Exit(2)
	}
	s.Start()
	s.WaitForShutdown()
	os.Exit(0)
}

func startRotatingNATS(t *testing.T) *rotatingNATS {
	t.Helper()
	dir := t.TempDir()
	conf, addr := filepath.Join(dir, "nats.conf"), freeAddr(t)
	write := func(password string) {
		t.Helper()
		require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf("listen: %q\njetstream: {store_dir: %q}\nauthorization: {user: jj, password: %s}\n",
			addr, filepath.Join(dir, "js"), password)), 0o600))
	}
	write("pw")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), natsConfigEnv+"="+conf)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// takes reports whether the NATS takes password now.
	takes := func(password string) bool {
		nc, err := nats.Connect("nats://"+addr, nats.UserInfo("jj", password), nats.Timeout(time.Second))
		if err != nil {
			return false
		}
		nc.Close()
		return true
	}
	natstest.Eventually(t, 30*time.Second, func() bool { return takes("pw") }, "the NATS up: %s", out)
	url := "nats://jj:pw@" + addr
	return &rotatingNATS{url: url, env: []string{"JETJOB_SERVER=" + url}, setPassword: func(password string) {
		t.Helper()
		write(password)
		require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
		natstest.Eventually(t, 30*time.Second, func() bool { return takes(password) }, "the NATS reloaded with the new password: %s", out)
	}}
}

// refusals counts the refusals of a user said in out.
func refusals(out *syncBuffer) int {
	return strings.Count(strings.ToLower(out.String()), "authorization violation")
}

// A watch and a log followed outlast a refusal of their user, as a server
// and a worker do: each refusal said on stderr, and what changed meanwhile
// shown once the NATS takes them again. nats.go's default gave up at the
// second refusal, and ended both. A first connect refused still ends them
// at once, saying so.
func TestWatchAndFollowOutlastARefusalOfTheirUser(t *testing.T) {
	t.Parallel() // waits out refusals and a reconnect
	n := startRotatingNATS(t)
	_, serverOut := startProcEnv(t, n.env, "server", "--nats", n.url)
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(serverOut.String(), "jetjob server ready") }, "server up: %s", serverOut)
	gate := filepath.Join(t.TempDir(), "gate")
	_, workerOut := startProcEnv(t, n.env, "worker", "--type", "rotated", "--", "sh", "-c",
		"echo before; while [ ! -f "+gate+" ]; do sleep 0.1; done; echo after")
	id := runCLIEnv(t, n.env, "submit", "--type", "rotated").ok(t)
	_, watchOut := startProcEnv(t, n.env, "watch", "--type", "rotated")
	follow, followOut := startProcEnv(t, n.env, "logs", "-f", id)
	natstest.Eventually(t, 60*time.Second, func() bool {
		return strings.Contains(watchOut.String(), id+" running") && strings.Contains(followOut.String(), "before")
	}, "the watch and the follow under way: watch: %s\nlogs -f: %s\nworker: %s", watchOut, followOut, workerOut)

	n.setPassword("rotated")
	natstest.Eventually(t, 60*time.Second, func() bool { return refusals(watchOut) >= 3 && refusals(followOut) >= 3 },
		"each refusal said, and tried again: watch: %s\nlogs -f: %s", watchOut, followOut)
	n.setPassword("pw")
	require.NoError(t, os.WriteFile(gate, nil, 0o600))

	followed := make(chan error, 1)
	go func() { followed <- follow.Wait() }()
	select {
	case err := <-followed:
		require.NoError(t, err, "logs -f: %s", followOut)
	case <-time.After(2 * time.Minute):
		t.Fatalf("logs -f still running 2 minutes after the job could end: %s\nworker: %s", followOut, workerOut)
	}
	require.Contains(t, followOut.String(), "after", "the line written after the refusal")
	natstest.Eventually(t, 60*time.Second, func() bool { return strings.Contains(watchOut.String(), id+" succeeded") },
		"the watch shows the job's end: %s", watchOut)
	for _, out := range []*syncBuffer{watchOut, followOut} {
		require.Contains(t, out.String(), "refused this user", "said as a refusal: %s", out)
		require.NotContains(t, out.String(), "ended", "%s", out)
	}

	// Refused at the first connect: one line, at once.
	bad := []string{"JETJOB_SERVER=" + strings.Replace(n.url, ":pw@", ":wrong@", 1)}
	for _, args := range [][]string{{"watch"}, {"logs", "-f", id}} {
		r := runCLIEnv(t, bad, args...)
		require.Equal(t, 1, r.code, "%v: %s", args, r.stderr)
		require.Equal(t, 1, strings.Count(strings.TrimSpace(r.stderr), "\n")+1, "%v: one line: %s", args, r.stderr)
		require.Contains(t, r.stderr, "refused this user", "%v", args)
	}
}

// A worker refused for good backs off: it tried every 250 ms and logged
// each refusal, four lines a second into its logs for as long as it ran
// misconfigured. Fixed credentials are still taken within a bound.
func TestARefusedWorkerBacksOff(t *testing.T) {
	t.Parallel() // waits out the backoff between refusals
	n := startRotatingNATS(t)
	_, serverOut := startProcEnv(t, n.env, "server", "--nats", n.url)
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(serverOut.String(), "jetjob server ready") }, "server up: %s", serverOut)
	_, workerOut := startProcEnv(t, n.env, "worker", "--type", "backoff", "--", "true")
	natstest.Eventually(t, 30*time.Second, func() bool { return strings.Contains(workerOut.String(), "worker serving") }, "worker started: %s", workerOut)

	n.setPassword("rotated")
	natstest.Eventually(t, 90*time.Second, func() bool { return refusals(workerOut) >= 6 }, "six refusals logged: %s", workerOut)
	// By the times the worker logged them: a loaded machine slows the
	// tries, it cannot hasten them.
	var at []time.Time
	for _, line := range strings.Split(workerOut.String(), "\n") {
		if !strings.Contains(strings.ToLower(line), "authorization violation") {
			continue
		}
		stamp, _, _ := strings.Cut(line, "\t")
		when, err := time.Parse("15:04:05.000", stamp)
		require.NoError(t, err, "the time of %q", line)
		at = append(at, when)
	}
	require.GreaterOrEqual(t, at[5].Sub(at[0]), 5*time.Second, "the first six refusals, each tried 250 ms after the last: %s", workerOut)

	n.setPassword("pw")
	natstest.Eventually(t, 15*time.Second, func() bool { return strings.Contains(workerOut.String(), "reconnected to NATS") },
		"the worker takes the fixed password: %s", workerOut)
	id := runCLIEnv(t, n.env, "submit", "--type", "backoff").ok(t)
	natstest.Eventually(t, 60*time.Second, func() bool {
		var v projector.View
		r := runCLIEnv(t, n.env, "get", id, "-o", "json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "succeeded"
	}, "job %s run after the refusal: worker: %s", id, workerOut)
}

// The account of a running watch's user expires: the NATS says "Account
// Authentication Expired" to its connections, which the watch says as the
// refusal it is, in its own words, and tries again. It was no refusal to
// jetjob (server.RefusalOf), and came as a log line of nats.go's error.
func TestAWatchSaysItsAccountExpired(t *testing.T) {
	t.Parallel() // waits for the account to expire
	o := newOperator(t)
	// Long enough for the server and the watch to start on a loaded
	// machine; checked below.
	o.accountExpires = time.Now().Add(30 * time.Second)
	file := creds(t, o.account, time.Time{})
	n := o.start(t, nats.UserCredentials(file), nats.IgnoreAuthErrorAbort(), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	env := []string{"JETJOB_SERVER=" + n.URL, "JETJOB_CREDS=" + file}
	_, serverOut := startProcEnv(t, env, "server", "--nats", n.URL)
	natstest.Eventually(t, 25*time.Second, func() bool { return strings.Contains(serverOut.String(), "jetjob server ready") }, "server up: %s", serverOut)
	id := runCLIEnv(t, env, "submit", "--type", "expiring").ok(t)
	_, watchOut := startProcEnv(t, env, "watch", "--type", "expiring")
	natstest.Eventually(t, 25*time.Second, func() bool { return strings.Contains(watchOut.String(), id+" pending") }, "the watch under way: %s", watchOut)
	require.True(t, time.Now().Before(o.accountExpires), "the watch started before the account expired: %s", watchOut)

	natstest.Eventually(t, time.Until(o.accountExpires)+30*time.Second, func() bool {
		return strings.Contains(watchOut.String(), "its account expired")
	}, "the expiry said as such: %s", watchOut)
	require.Contains(t, watchOut.String(), "jetjob watch: the NATS at "+n.URL+" refused this user: its account expired (nats: account authentication expired)")
}
