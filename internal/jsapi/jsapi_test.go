package jsapi

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetjob/jetjob/internal/natstest"
)

// The prefixes are nats.go's own, for each way of making a handle, and a
// handle made like another reaches the same JetStream.
func TestPrefixesAreThoseOfTheHandle(t *testing.T) {
	env := natstest.Start(t)
	domain, err := jetstream.NewWithDomain(env.NC, "hub")
	require.NoError(t, err)
	prefixed, err := jetstream.NewWithAPIPrefix(env.NC, "$JS.other.API")
	require.NoError(t, err)
	for _, c := range []struct {
		name        string
		js          jetstream.JetStream
		prefix, put string
	}{
		{"plain", env.JS, "$JS.API.", "$KV.b."},
		{"domain", domain, "$JS.hub.API.", "$JS.hub.API.$KV.b."},
		{"api prefix", prefixed, "$JS.other.API.", "$JS.other.API.$KV.b."},
	} {
		require.Equal(t, c.prefix, Prefix(c.js), c.name)
		require.Equal(t, c.put, KVPut(c.js, "b"), c.name)
		like, err := New(env.NC, c.js)
		require.NoError(t, err, c.name)
		require.Equal(t, c.prefix, Prefix(like), c.name)
	}
}
