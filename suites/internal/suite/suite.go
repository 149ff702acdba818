// Package suite holds what Spiral's suites share: running a scenario from a
// test, writing its report, and saying how to replay it.
package suite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
)

// Run runs sc and writes its report: under $SPIRAL_REPORT_DIR when set
// (make chaos), else into a temporary folder kept only if t fails. It fails
// t at once if the run could not happen; judging the result is the caller's.
func Run(t *testing.T, env *fixtures.Env, sc scenario.Scenario) *scenario.Result {
	t.Helper()
	if err := scenario.CheckEnv(); err != nil {
		t.Fatal(err)
	}
	res, err := scenario.Run(t.Context(), env, sc)
	if res != nil && res.Timeline != nil {
		writeReport(t, sc.Name, res)
	}
	if err != nil {
		t.Fatalf("%v\nreplay: %s", err, replay(res))
	}
	t.Logf("%s: faults %v; %d violation(s); validated=%v", sc.Name, res.Faults, len(res.Violations), res.Validated)
	for _, v := range res.Violations {
		t.Logf("  %v", v)
	}
	for _, l := range res.LoadSummary {
		t.Logf("  load %s: sent %d ok %d errors %d skipped %d p99 %v", l.Client, l.Stats.Sent, l.Stats.OK, l.Stats.Errors, l.Stats.Skipped, l.P99)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay: %s", res.Replay)
		}
	})
	return res
}

func replay(res *scenario.Result) string {
	if res == nil {
		return "(no result)"
	}
	return res.Replay
}

func writeReport(t *testing.T, name string, res *scenario.Result) {
	t.Helper()
	dir := report.Dir(name)
	keep := dir != ""
	if !keep {
		d, err := os.MkdirTemp("", "spiral-report-")
		if err != nil {
			t.Logf("report: %v", err)
			return
		}
		dir = filepath.Join(d, strings.ReplaceAll(name, "/", "_"))
		t.Cleanup(func() {
			if !t.Failed() {
				_ = os.RemoveAll(d)
			}
		})
	}
	page, err := report.Write(dir, res)
	if err != nil {
		t.Logf("report: %v", err)
		return
	}
	if keep {
		t.Logf("report: %s", page)
	} else {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("report kept: %s", page)
			}
		})
	}
}
