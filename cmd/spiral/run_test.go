package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Bad arguments to spiral run are usage errors that name what is wrong and
// run nothing.
func TestRunRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "want at least one suite: batchflood, cacheoutage"},
		{[]string{"run", "nonesuch"}, `no suite "nonesuch"`},
		{[]string{"run", "internal"}, `no suite "internal"`},
		{[]string{"run", "-target", "ftp:x", "batchflood"}, `unknown kind "ftp"`},
		{[]string{"run", "-target", "exec:/nonexistent/bin", "batchflood"}, "/nonexistent/bin"},
		{[]string{"run", "-mode", "long", "batchflood"}, `-mode "long"`},
		{[]string{"run", "-seed", "-3", "batchflood"}, `-seed "-3"`},
		{[]string{"run", "-progress", "1ms", "batchflood"}, "-progress 1ms"},
	} {
		dir := t.TempDir()
		code, out, errOut := spiral(t, append(append([]string{}, tc.args[0], "-report", dir), tc.args[1:]...)...)
		assert.Equal(t, exitUsage, code, "%q: %s%s", tc.args, out, errOut)
		assert.Contains(t, errOut, tc.want, "%q", tc.args)
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		assert.Empty(t, entries, "%q: nothing written", tc.args)
	}
}

func TestParseRunArgsPatterns(t *testing.T) {
	root, err := spiralRoot()
	require.NoError(t, err)
	runs, err := parseRunArgs(root, []string{"batchflood", "batchflood/fixed", "cacheoutage/hung/fixed"})
	require.NoError(t, err)
	assert.Equal(t, []suiteRun{
		{arg: "batchflood", pkg: "./suites/batchflood"},
		{arg: "batchflood/fixed", pkg: "./suites/batchflood", pattern: "/^fixed$"},
		{arg: "cacheoutage/hung/fixed", pkg: "./suites/cacheoutage", pattern: "/^hung$/^fixed$"},
	}, runs)
}

// spiral run drives one arm of a suite against a child-process target: the
// terminal shows its phases and live figures, the report and index are
// written, and the exit status is the test's.
func TestRunOneArmAgainstAChild(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the batchflood suite's fixed arm (containers, about a minute)")
	}
	root, err := spiralRoot()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "dataplane")
	code, out, errOut := goBuild(t, root, bin)
	require.Equal(t, 0, code, "build: %s%s", out, errOut)

	dir := t.TempDir()
	code, out, errOut = spiral(t, "run", "-target", "exec:"+bin, "-report", dir, "-progress", "2s", "batchflood/fixed")
	log, err := os.ReadFile(filepath.Join(dir, "go-test.log"))
	require.NoError(t, err, "the whole output is kept: %s%s", out, errOut)
	assert.Contains(t, string(log), "=== RUN   TestBatchFlood/fixed")
	assert.Contains(t, out, "spiral run: target exec:"+bin)
	assert.Contains(t, out, "spiral: batch-flood/fixed: inject")
	assert.Regexp(t, `spiral: batch-flood/fixed: \w+ \+\d+\.\ds threads=\d+`, out, "live figures")
	assert.NotContains(t, out, "regression-pool", "the other arms did not run")
	for _, f := range []string{"index.html", "batch-flood_fixed/summary.json", "batch-flood_fixed/report.html"} {
		_, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err, "%s written", f)
	}
	// The exit status is the test's, whichever it was: this test is about
	// spiral run, not the arm's verdict (the suites judge that).
	if code == 0 {
		assert.Contains(t, out, "--- PASS: TestBatchFlood/fixed")
		assert.Contains(t, out, "1 of 1 run(s) passed")
	} else {
		assert.Equal(t, exitFailure, code, "%s", errOut)
		assert.Contains(t, out, "--- FAIL: TestBatchFlood/fixed")
		assert.Contains(t, errOut, "failed: batchflood/fixed")
		assert.Contains(t, out, "replay: SPIRAL_SEED=", "a failed arm's replay command is shown")
	}
}

// goBuild builds cmd/dataplane into bin.
func goBuild(t *testing.T, root, bin string) (int, string, string) {
	t.Helper()
	cmd := execCommand(t, root, "go", "build", "-o", bin, "./cmd/dataplane")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return 1, string(b), err.Error()
	}
	return 0, string(b), ""
}

func execCommand(t *testing.T, dir, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	cmd.Dir = dir
	return cmd
}
