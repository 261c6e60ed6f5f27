// Package jsapi names the JetStream API subjects that jetjob sends to
// itself, on the connection rather than through nats.go's JetStream
// methods, under the API prefix of the jetstream.JetStream it was given: a
// handle made with jetstream.NewWithDomain reaches JetStream through a leaf
// node by $JS.<domain>.API., the plain $JS.API. (and $KV.>) being denied
// across the leaf connection, and jetjob's own requests must go the same
// way as nats.go's.
package jsapi

import (
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Prefix is the API prefix js sends its requests under, with its trailing
// dot, as nats.go builds it: $JS.<domain>.API. for a handle made with
// jetstream.NewWithDomain, the prefix given to jetstream.NewWithAPIPrefix,
// and $JS.API. otherwise. Its callers compute it once, when they are made.
func Prefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "" && !strings.HasSuffix(o.APIPrefix, "."):
		return o.APIPrefix + "."
	case o.APIPrefix != "":
		return o.APIPrefix
	}
	return jetstream.DefaultAPIPrefix
}

// KVPut is the subject prefix a write to bucket's keys is published to, as
// nats.go's KeyValue writes them: $KV.<bucket>. on the plain API, and
// under the API prefix otherwise, which the domain's server maps back to
// $KV.<bucket>.; the stream stores the key's own subject either way.
func KVPut(js jetstream.JetStream, bucket string) string {
	kv := "$KV." + bucket + "."
	if p := Prefix(js); p != jetstream.DefaultAPIPrefix {
		return p + kv
	}
	return kv
}

// New makes a JetStream handle on nc with js's API prefix, and opts: a part
// of jetjob that needs options of its own (an async publish timeout) on
// the user's connection must still reach the user's JetStream.
func New(nc *nats.Conn, js jetstream.JetStream, opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	o := js.Options()
	switch {
	case o.Domain != "":
		return jetstream.NewWithDomain(nc, o.Domain, opts...)
	case o.APIPrefix != "":
		return jetstream.NewWithAPIPrefix(nc, o.APIPrefix, opts...)
	}
	return jetstream.New(nc, opts...)
}
