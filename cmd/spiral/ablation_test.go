package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// Bad ablation command lines are refused before anything runs, each
// with what is wrong.
func TestAblationRefuses(t *testing.T) {
	t.Setenv("SPIRAL_TARGET", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ablation"}, "want one report folder, got 0"},
		{[]string{"ablation", "-rows", "turbo", t.TempDir()}, `-rows: no row "turbo": want some of setlimit, batch-concurrency`},
		{[]string{"ablation", "-rows", ",", t.TempDir()}, "-rows: no row given"},
	} {
		code, _, errOut := spiral(t, tc.args...)
		assert.Equal(t, exitUsage, code, "%q", tc.args)
		assert.Contains(t, errOut, tc.want, "%q", tc.args)
	}
	t.Setenv("SPIRAL_TARGET", "exec:/bin/true")
	code, _, errOut := spiral(t, "ablation", "-rows", "lookup", t.TempDir())
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "SPIRAL_TARGET=exec:/bin/true: the ablation turns back defences of the bundled data plane")
}
