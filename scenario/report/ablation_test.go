package report_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
)

// The ablation's rows land in a table of their own, named in the index,
// and stay out of the run's own scenarios.
func TestWriteAblation(t *testing.T) {
	dir := t.TempDir()
	_, err := report.Write(filepath.Join(dir, "flood_fixed"), held(t, "flood/fixed"))
	require.NoError(t, err)
	// setlimit: the flood's goroutines past their budget; lookup: held.
	_, err = report.Write(filepath.Join(dir, report.AblationDir, "setlimit", "flood_fixed"), result(t, "flood/fixed"))
	require.NoError(t, err)
	_, err = report.Write(filepath.Join(dir, report.AblationDir, "lookup", "flood_fixed"), held(t, "flood/fixed"))
	require.NoError(t, err)

	entries, err := report.WriteIndex(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "the ablation's scenarios are not the run's")
	assert.True(t, entries[0].Held)

	md, err := os.ReadFile(filepath.Join(dir, "ablation.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| setlimit (the postmortem's fix alone")
	assert.Contains(t, string(md), "flood/fixed: goroutines 5,000/2,000")
	assert.Contains(t, string(md), "| lookup (without chunked GetMulti instead of one Get per key (Lookup as the incident's)) | none: every fixed arm held |")
	page, err := os.ReadFile(filepath.Join(dir, "ablation.html"))
	require.NoError(t, err)
	assert.Contains(t, string(page), `<a href="ablation/setlimit/flood_fixed/report.html">failed</a>`)
	assert.Contains(t, string(page), `<td class="held"><a href="ablation/lookup/flood_fixed/report.html">held</a>`)
	index, err := os.ReadFile(filepath.Join(dir, "index.html"))
	require.NoError(t, err)
	assert.Contains(t, string(index), "<h2>Which defence holds which budget</h2>")
	assert.Regexp(t, `<b>setlimit</b>.*flood/fixed</a>: goroutines`, string(index))
}

// held is result with a budget the run held.
func held(t *testing.T, name string) *scenario.Result {
	t.Helper()
	res := result(t, name)
	res.Budgets = []probe.Budget{probe.Limit(probe.MetricGoroutines, 10_000)}
	res.Violations = res.Timeline.Check(res.Budgets...)
	require.Empty(t, res.Violations)
	return res
}
