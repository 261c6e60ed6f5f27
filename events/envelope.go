package events

import (
	"bytes"
	"encoding/json"
)

// decodeWritten reads an envelope laid out exactly as Encode writes it, its
// strings plain ASCII and its data an object, without the reflection of
// encoding/json, which every reader of the log paid on every event: about
// 3 µs an envelope, several times per job. Anything else (another field
// order or spacing, escapes, another version, data that is not an object)
// returns false, for Decode to read it with encoding/json; what it accepts,
// it reads as encoding/json does (FuzzDecodeWrittenAgrees).
func decodeWritten(b []byte) (envelope, bool) {
	var env envelope
	rest, ok := bytes.CutPrefix(b, []byte(`{"v":1`))
	if !ok {
		return env, false
	}
	var quoted []byte
	for _, f := range []struct {
		key string
		to  *string
	}{{`,"id":`, &env.ID}, {`,"job":`, &env.JobID}, {`,"type":`, &env.Type}} {
		if rest, ok = bytes.CutPrefix(rest, []byte(f.key)); !ok {
			return env, false
		}
		if quoted, rest, ok = plainString(rest); !ok {
			return env, false
		}
		*f.to = string(quoted[1 : len(quoted)-1])
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"time":`)); !ok {
		return env, false
	}
	if quoted, rest, ok = plainString(rest); !ok {
		return env, false
	}
	// time.Time's own UnmarshalJSON, as encoding/json calls it.
	if env.Time.UnmarshalJSON(quoted) != nil {
		return env, false
	}
	env.V = EnvelopeVersion
	if len(rest) == 1 && rest[0] == '}' {
		return env, true
	}
	data, ok := bytes.CutPrefix(rest, []byte(`,"data":`))
	if !ok || len(data) < 3 || data[0] != '{' || data[len(data)-1] != '}' {
		return env, false
	}
	// The envelope's closing brace cut off, data ends with its own: no
	// space after it, which encoding/json would leave out of a RawMessage.
	data = data[:len(data)-1]
	if data[len(data)-1] != '}' || mayNestTooDeep(data) || !json.Valid(data) {
		return env, false
	}
	// Copied, as encoding/json copies a RawMessage: b is the caller's.
	env.Data = bytes.Clone(data)
	return env, true
}

// nestingMax is encoding/json's bound on nesting, which it applies to the
// whole envelope: data one level inside it, checked alone by json.Valid,
// could be one level too deep for it.
const nestingMax = 10_000

// mayNestTooDeep reports data that might nest past nestingMax inside the
// envelope: it counts every bracket that opens, in strings too, so it may
// refuse what encoding/json reads, never the other way round.
func mayNestTooDeep(data []byte) bool {
	return bytes.Count(data, []byte("{"))+bytes.Count(data, []byte("[")) >= nestingMax-1
}

// plainString cuts the JSON string at the start of b, quotes included, when
// it needs no unescaping: printable ASCII without a backslash.
func plainString(b []byte) (quoted, rest []byte, ok bool) {
	if len(b) == 0 || b[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return b[:i+1], b[i+1:], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, nil, false
		}
	}
	return nil, nil, false
}
