package readme

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README shows the snippet as this package compiles it.
func TestTheReadmeShowsTheSnippetThatCompiles(t *testing.T) {
	code, err := os.ReadFile("goapi.go")
	require.NoError(t, err)
	snippet := string(code)
	snippet = strings.TrimSpace(snippet[strings.Index(snippet, "// run submits"):])

	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	text := string(readme)
	section := strings.Index(text, "## Go API")
	require.GreaterOrEqual(t, section, 0, "the README has a Go API section")
	start := strings.Index(text[section:], "```go\n")
	require.GreaterOrEqual(t, start, 0, "the Go API section has a Go block")
	block := text[section+start+len("```go\n"):]
	block = block[:strings.Index(block, "\n```")]
	require.Equal(t, snippet, strings.TrimSpace(block), "README.md's Go API block differs from internal/readme/goapi.go")
}
