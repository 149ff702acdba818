package proc_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/proc"
)

// A Tail keeps the last Max bytes, whatever the sizes of the writes.
func TestTailKeepsTheLastBytes(t *testing.T) {
	tl := &proc.Tail{Max: 8}
	assert.Empty(t, tl.Said(), "nothing written, nothing said")
	for _, w := range []string{"abc", "defgh", "ijklmnopq\n"} {
		n, err := tl.Write([]byte(w))
		require.NoError(t, err)
		assert.Equal(t, len(w), n)
	}
	assert.Equal(t, "klmnopq\n", tl.String())
	assert.Equal(t, ": klmnopq", tl.Said())
}
