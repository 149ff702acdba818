package target_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/target"
)

// foreignSummary is what this test reads of a run's summary.json.
type foreignSummary struct {
	Scenario   string                        `json:"scenario"`
	Target     string                        `json:"target"`
	Held       bool                          `json:"held"`
	Violations []probe.Violation             `json:"violations"`
	NotJudged  []probe.Violation             `json:"not_judged"`
	Peaks      map[string]map[string]float64 `json:"peaks"`
}

// A service written outside this module (testdata/foreignsvc: its own
// module, the standard library only, POST /v2/fetch {"ids": [...]} with the
// caller in X-Caller) runs through the batchflood suite's arm under test by
// configuration alone, as a user would run it: `go test ./suites/batchflood`
// with SPIRAL_TARGET and SPIRAL_REQUEST_*. Bounded (a pool of 8 memcached
// connections, chunks of 100 keys), it holds every budget; built without a
// bound (a goroutine and a fresh connection per 10 keys) it is caught by
// the goroutine and TIME_WAIT budgets. The suite's test process is the same
// in both runs: the figures that tell them apart are the service's own.
func TestForeignServiceThroughBatchflood(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the batchflood suite twice (about a minute each)")
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "foreignsvc")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(root, "target", "testdata", "foreignsvc")
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the foreign service: %s", out)

	run := func(t *testing.T, extraEnv ...string) (foreignSummary, string, error) {
		t.Helper()
		reports := t.TempDir()
		cmd := exec.CommandContext(t.Context(), "go", "test", "-count=1", "-v", "-run", "^TestBatchFlood$/^fixed$", "./suites/batchflood")
		cmd.Dir = root
		cmd.Env = append(os.Environ(),
			target.EnvTarget+"=exec:"+bin,
			target.EnvRequestPath+"=/v2/fetch",
			target.EnvRequestKeysField+"=ids",
			target.EnvRequestClientField+"=-",
			target.EnvRequestClientHeader+"=X-Caller",
			"SPIRAL_MODE=quick",
			"SPIRAL_REPORT_DIR="+reports,
		)
		cmd.Env = append(cmd.Env, extraEnv...)
		start := time.Now()
		out, runErr := cmd.CombinedOutput()
		t.Logf("go test ./suites/batchflood against the foreign service (%s): %v in %v", strings.Join(extraEnv, " "), runErr, time.Since(start).Round(time.Second))
		b, err := os.ReadFile(filepath.Join(reports, "batch-flood_fixed", "summary.json"))
		require.NoError(t, err, "the run wrote its report; its output:\n%s", out)
		var s foreignSummary
		require.NoError(t, json.Unmarshal(b, &s))
		_, err = os.Stat(filepath.Join(reports, "batch-flood_fixed", "report.html"))
		require.NoError(t, err, "and its page")
		return s, string(out), runErr
	}
	peak := func(s foreignSummary, metric string) (float64, bool) {
		m, ok := 0.0, false
		for _, v := range s.Peaks[metric] {
			m, ok = max(m, v), true
		}
		return m, ok
	}

	t.Run("bounded", func(t *testing.T) {
		s, out, err := run(t)
		require.NoError(t, err, "the bounded service holds every budget of the arm; output:\n%s", out)
		assert.Equal(t, "exec:"+bin, s.Target)
		assert.True(t, s.Held)
		assert.Empty(t, s.NotJudged, "the service exports every figure the budgets need")
		for _, m := range []string{probe.MetricThreads, probe.MetricGoroutines, probe.MetricGoroutinesPeak, probe.MetricGCCPUFraction, scenario.MetricMemcachedEstablished} {
			v, ok := peak(s, m)
			assert.True(t, ok, "the report has the service's %s", m)
			t.Logf("bounded: %s peaked at %g", m, v)
		}
		conns, _ := peak(s, scenario.MetricMemcachedEstablished)
		assert.Positive(t, conns, "its connections to memcached are counted")
	})

	t.Run("unbounded", func(t *testing.T) {
		s, out, err := run(t, "FOREIGNSVC_UNBOUNDED=1")
		require.Error(t, err, "the unbounded service must fail the arm; output:\n%s", out)
		caught := map[string]bool{}
		for _, v := range s.Violations {
			caught[v.Budget.Metric] = true
		}
		assert.True(t, caught[probe.MetricGoroutinesPeak], "a goroutine per 10 keys is caught on the service's goroutines; violations %v", s.Violations)
		assert.True(t, caught[scenario.MetricMemcachedTimeWaitAdded], "a connection closed per 10 keys is caught in TIME_WAIT; violations %v", s.Violations)
		g, _ := peak(s, probe.MetricGoroutinesPeak)
		tw, _ := peak(s, scenario.MetricMemcachedTimeWaitAdded)
		t.Logf("unbounded: goroutines peak %g, TIME_WAIT added %g", g, tw)
	})
}
