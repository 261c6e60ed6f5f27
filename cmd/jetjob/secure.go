package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/jetjob/jetjob/internal/server"
)

// natsAuth holds how a command proves who it is to a NATS, which TLS
// certificates it trusts and shows, and the JetStream domain it reaches
// JetStream by: the flags every command that connects to a NATS takes,
// each with a JETJOB_ variable as its default, as --server has
// JETJOB_SERVER.
type natsAuth struct {
	fs                                  *flagSet
	creds, nkey, tlsCA, tlsCert, tlsKey string
	tlsFirst                            bool
	// jsDomain: JetStream is reached by $JS.<jsDomain>.API., as through a
	// leaf node, rather than by $JS.API.; empty for the plain API.
	jsDomain string
	// tlsFirstEnv is JETJOB_TLS_FIRST as given, read in options: a bad
	// value is a usage error, which a flag's default cannot return.
	tlsFirstEnv string
}

// authEnv names the variable that gives each flag its default.
var authEnv = map[string]string{
	"creds":     "JETJOB_CREDS",
	"nkey":      "JETJOB_NKEY",
	"tls-ca":    "JETJOB_TLS_CA",
	"tls-cert":  "JETJOB_TLS_CERT",
	"tls-key":   "JETJOB_TLS_KEY",
	"tls-first": "JETJOB_TLS_FIRST",
	"js-domain": "JETJOB_JS_DOMAIN",
}

// authFlags defines the flags on fs; what says which NATS they are for.
func authFlags(fs *flagSet, what string) *natsAuth {
	a := &natsAuth{fs: fs, tlsFirstEnv: os.Getenv(authEnv["tls-first"])}
	fs.StringVar(&a.creds, "creds", os.Getenv(authEnv["creds"]), "user credentials file (JWT and NKey seed, as NGS and operator mode issue them) for "+what+" (env JETJOB_CREDS)")
	fs.StringVar(&a.nkey, "nkey", os.Getenv(authEnv["nkey"]), "file holding the user's NKey seed, for "+what+" (env JETJOB_NKEY)")
	fs.StringVar(&a.tlsCA, "tls-ca", os.Getenv(authEnv["tls-ca"]), "PEM file of the CA certificate(s) to trust, instead of the system's, in TLS with "+what+" (env JETJOB_TLS_CA)")
	fs.StringVar(&a.tlsCert, "tls-cert", os.Getenv(authEnv["tls-cert"]), "PEM client certificate shown to "+what+" (mutual TLS), with --tls-key (env JETJOB_TLS_CERT)")
	fs.StringVar(&a.tlsKey, "tls-key", os.Getenv(authEnv["tls-key"]), "PEM private key of --tls-cert (env JETJOB_TLS_KEY)")
	fs.BoolVar(&a.tlsFirst, "tls-first", false, "start the connection to "+what+" with the TLS handshake, as a NATS set to handshake_first asks (env JETJOB_TLS_FIRST)")
	fs.StringVar(&a.jsDomain, "js-domain", os.Getenv(authEnv["js-domain"]), "JetStream domain of the jetjob server's JetStream, reached through "+what+" as through a leaf node (env JETJOB_JS_DOMAIN)")
	return a
}

// onCommandLine lists the flags given on the command line.
func (a *natsAuth) onCommandLine() []string {
	var out []string
	a.fs.Visit(func(f *flag.Flag) {
		if _, ok := authEnv[f.Name]; ok {
			out = append(out, flagName(f.Name))
		}
	})
	return out
}

// source names where a flag's value came from: the flag, or its variable.
func (a *natsAuth) source(name string) string {
	given := false
	a.fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	if given {
		return flagName(name)
	}
	return authEnv[name]
}

// options checks the files given before any connection is tried, so that
// bad input is told as such (exit 2) rather than as a NATS that refused the
// connection, and returns the nats.go options that apply them. nats.go
// reads the files again at each connect, so that credentials renewed in
// place are taken at the next reconnect.
func (a *natsAuth) options() ([]nats.Option, error) {
	if !a.sourceIsFlag("tls-first") && a.tlsFirstEnv != "" {
		v, err := strconv.ParseBool(a.tlsFirstEnv)
		if err != nil {
			return nil, usageErr("JETJOB_TLS_FIRST=%s, expected true or false", quoteShort(a.tlsFirstEnv))
		}
		a.tlsFirst = v
	}
	if a.jsDomain != "" && strings.ContainsFunc(a.jsDomain, func(r rune) bool {
		return r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || !unicode.IsPrint(r)
	}) {
		return nil, usageErr("%s %s is no JetStream domain, expected the name the hub's jetstream block gives (domain: hub), without ., *, > or spaces", a.source("js-domain"), quoteShort(a.jsDomain))
	}
	var opts []nats.Option
	if a.creds != "" && a.nkey != "" {
		return nil, usageErr("%s and %s both given, expected one: a creds file holds its user's NKey seed", a.source("creds"), a.source("nkey"))
	}
	if a.creds != "" {
		if err := checkCreds(a.source("creds"), a.creds); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(a.creds))
	}
	if a.nkey != "" {
		if _, err := readAuthFile(a.source("nkey"), a.nkey); err != nil {
			return nil, err
		}
		opt, err := nats.NkeyOptionFromSeed(a.nkey)
		if err != nil {
			return nil, usageErr("%s %s holds no user NKey seed (a line starting SU), expected the file nsc or nk -gen user wrote", a.source("nkey"), clipPath(a.nkey))
		}
		opts = append(opts, opt)
	}
	if a.tlsCA != "" {
		pem, err := readAuthFile(a.source("tls-ca"), a.tlsCA)
		if err != nil {
			return nil, err
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, usageErr("%s %s holds no PEM certificate, expected the CA's certificate(s) in PEM (-----BEGIN CERTIFICATE-----)", a.source("tls-ca"), clipPath(a.tlsCA))
		}
		opts = append(opts, nats.RootCAs(a.tlsCA))
	}
	switch {
	case a.tlsCert != "" && a.tlsKey == "":
		return nil, usageErr("%s given without --tls-key, expected both: the client certificate and its private key", a.source("tls-cert"))
	case a.tlsKey != "" && a.tlsCert == "":
		return nil, usageErr("%s given without --tls-cert, expected both: the client certificate and its private key", a.source("tls-key"))
	case a.tlsCert != "":
		for _, f := range []struct{ name, path string }{{"tls-cert", a.tlsCert}, {"tls-key", a.tlsKey}} {
			if _, err := readAuthFile(a.source(f.name), f.path); err != nil {
				return nil, err
			}
		}
		if _, err := tls.LoadX509KeyPair(a.tlsCert, a.tlsKey); err != nil {
			return nil, usageErr("%s %s and %s %s: %v, expected a PEM certificate and its PEM private key", a.source("tls-cert"), clipPath(a.tlsCert), a.source("tls-key"), clipPath(a.tlsKey), err)
		}
		opts = append(opts, nats.ClientCert(a.tlsCert, a.tlsKey))
	}
	if a.tlsFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	return opts, nil
}

func (a *natsAuth) sourceIsFlag(name string) bool { return a.source(name) == flagName(name) }

// jetStream makes the JetStream handle of a connection made with options'
// options: by the domain's API prefix when --js-domain gives one, and
// everything jetjob builds on the handle goes that way.
func (a *natsAuth) jetStream(nc *nats.Conn, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	if a != nil && a.jsDomain != "" {
		return jetstream.NewWithDomain(nc, a.jsDomain, opts...)
	}
	return jetstream.New(nc, opts...)
}

// readAuthFile reads a file a flag names, or says why it cannot.
func readAuthFile(from, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErr("%s %s: cannot read it: %v", from, clipPath(path), pathless(err))
	}
	return b, nil
}

// checkCreds checks a creds file as the server would read it: a user JWT,
// not expired, and the seed of the user it names.
func checkCreds(from, path string) error {
	b, err := readAuthFile(from, path)
	if err != nil {
		return err
	}
	expected := "expected a creds file as nsc or the NATS account's issuer wrote it (a user JWT and its NKey seed)"
	token, err := nkeys.ParseDecoratedJWT(b)
	if err != nil {
		return usageErr("%s %s holds no user JWT, %s", from, clipPath(path), expected)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return usageErr("%s %s holds no user JWT (%v), %s", from, clipPath(path), err, expected)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return usageErr("%s %s holds no NKey seed, %s", from, clipPath(path), expected)
	}
	defer kp.Wipe()
	if pub, err := kp.PublicKey(); err != nil || pub != claims.Subject {
		return usageErr("%s %s: its seed is not the key of the user its JWT names, %s", from, clipPath(path), expected)
	}
	if claims.Expires > 0 && time.Unix(claims.Expires, 0).Before(time.Now()) {
		return usageErr("%s %s: its user JWT expired at %s, expected credentials in date: ask the account's issuer for new ones",
			from, clipPath(path), time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// refusedConnect tells why a connection to the NATS at url failed when the
// NATS refused it (its credentials, or TLS on either side), in one line
// that says what to check; ok is false for any other failure.
func refusedConnect(url string, err error) (_ error, ok bool) {
	kind := server.RefusalOf(err)
	if kind == server.NotRefused {
		return err, false
	}
	// Said in NATS's or Go's words alone: what wraps it (a server's
	// "connect to", bench's "is it running?") is said here in other words.
	cause := err
	for inner := errors.Unwrap(cause); inner != nil && server.Refused(inner); inner = errors.Unwrap(cause) {
		cause = inner
	}
	return fmt.Errorf(refusalSays[kind], clip(server.RedactURL(url)), cause), true
}

// refusalSays words each kind of refusal (server.RefusalOf), given the
// NATS's URL and the refusal, with what to check.
var refusalSays = map[server.Refusal]string{
	server.RefusedUser:    "the NATS at %s refused this user (%v): check --creds, --nkey, or the user and password or token in the URL",
	server.RefusedExpired: "the NATS at %s refused this user: its credentials expired (%v): ask the account's issuer for new ones",
	server.RefusedRevoked: "the NATS at %s refused this user: its credentials were revoked (%v)",
	// The account's JWT, which its operator issues: the user's own
	// credentials may be in date.
	server.RefusedAccountExpired: "the NATS at %s refused this user: its account expired (%v): ask the NATS's operator to renew the account's JWT",
	server.RefusedUnknownCA:      "the NATS at %s shows a TLS certificate this machine does not trust (%v): give the CA that signed it with --tls-ca",
	server.RefusedHostname:       "the NATS at %s shows a TLS certificate for another host (%v): connect by a name the certificate holds",
	server.RefusedCertificate:    "the NATS at %s shows a TLS certificate that is not valid (%v)",
	server.RefusedNoTLS:          "the NATS at %s offers no TLS, which --tls-ca, --tls-cert, --tls-first or a tls:// URL ask for (%v)",
	// Our handshake came first and the NATS answered in plain text (its
	// INFO): only --tls-first starts a handshake before reading that.
	server.RefusedPlainText: "the NATS at %s answered the TLS handshake in plain text (%v): it is not set to handshake_first: leave out --tls-first (or JETJOB_TLS_FIRST)",
	// Most often, no client certificate or one its CA did not sign. Over
	// TLS 1.3 the client hears it only as the connection closed after the
	// handshake.
	server.RefusedTLS: "the NATS at %s refused the TLS connection (%v): it may ask for a client certificate its CA signed: check --tls-cert and --tls-key",
}

// silentNATS tells a connection that the NATS took and then said nothing
// on (its INFO), to a command not given --tls-first: a NATS set to
// handshake_first waits for a TLS handshake first, and closes the
// connection at its TLS timeout, which said "EOF" or "i/o timeout" and
// sent the user to start a jetjob server. ok is false for any other
// failure.
func silentNATS(a *natsAuth, url string, err error) (_ error, ok bool) {
	if a == nil || a.tlsFirst || !server.SaidNothing(err) {
		return err, false
	}
	return fmt.Errorf("the NATS at %s said nothing after taking the connection (%v): if it is set to handshake_first, give --tls-first (or JETJOB_TLS_FIRST=true)",
		clip(server.RedactURL(url)), err), true
}

// exports gives the settings in use as the variables that set them, for
// jetjob dev's lines to run in another terminal: the commands it suggests
// need them as much as the URL. Paths are made absolute, so that they
// hold from another directory.
func (a *natsAuth) exports() []string {
	var out []string
	for _, v := range []struct{ name, value string }{
		{"creds", a.creds}, {"nkey", a.nkey}, {"tls-ca", a.tlsCA}, {"tls-cert", a.tlsCert}, {"tls-key", a.tlsKey},
	} {
		if v.value == "" {
			continue
		}
		path, err := filepath.Abs(v.value)
		if err != nil {
			path = v.value
		}
		out = append(out, authEnv[v.name]+"="+shellWord(path))
	}
	if a.tlsFirst {
		out = append(out, authEnv["tls-first"]+"=true")
	}
	if a.jsDomain != "" {
		out = append(out, authEnv["js-domain"]+"="+shellWord(a.jsDomain))
	}
	return out
}

// shellWord quotes s for a POSIX shell when it holds more than letters,
// digits and the punctuation of paths and URLs.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:@%+,=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
