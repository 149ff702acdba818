package report_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
)

// result builds a Result from a real sampler over made-up figures: the
// goroutine count is 10 in baseline and 5000 during inject.
func result(t *testing.T, name string) *scenario.Result {
	t.Helper()
	g := 10.0
	s, err := probe.NewSampler(1e6, probe.Func(probe.MetricGoroutines, func() float64 { return g }))
	require.NoError(t, err)
	ctx := context.Background()
	s.Mark(scenario.PhaseBaseline)
	require.NoError(t, s.Sample(ctx))
	s.Mark(scenario.PhaseInject)
	g = 5000
	require.NoError(t, s.Sample(ctx))
	s.Mark(scenario.PhaseRecover)
	g = 12
	require.NoError(t, s.Sample(ctx))
	tl := s.Timeline()
	budgets := []probe.Budget{probe.Limit(probe.MetricGoroutines, 2000, scenario.PhaseInject)}
	return &scenario.Result{Scenario: name, Seed: 3, Timeline: tl, Budgets: budgets, Violations: tl.Check(budgets...), Validated: true, Replay: "go test"}
}

func TestWriteAndIndex(t *testing.T) {
	dir := t.TempDir()
	res := result(t, "flood/incident")
	page, err := report.Write(filepath.Join(dir, "flood_incident"), res)
	require.NoError(t, err)

	html, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Contains(t, string(html), "1 budget violation(s)")
	assert.Contains(t, string(html), "<polyline", "charts are drawn")
	assert.Contains(t, string(html), "goroutines: peak 5000")

	var sum map[string]any
	b, err := os.ReadFile(filepath.Join(dir, "flood_incident", "summary.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &sum))
	assert.Equal(t, false, sum["held"])
	assert.Len(t, sum["violations"], 1)

	var tl probe.Timeline
	b, err = os.ReadFile(filepath.Join(dir, "flood_incident", "timeline.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &tl))
	assert.Len(t, tl.Samples, 3)

	entries, err := report.WriteIndex(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, "flood/incident", entries[0].Scenario)
	assert.False(t, entries[0].Held)
	assert.Equal(t, "flood_incident/report.html", entries[0].Page)
	assert.FileExists(t, filepath.Join(dir, "index.html"))
}

func TestIndexOfMissingFolder(t *testing.T) {
	_, err := report.WriteIndex(filepath.Join(t.TempDir(), "absent"))
	require.Error(t, err)
}

// A load that did not finish is in summary.json and on the page as failed;
// the failures chart draws everyday and batch apart.
func TestWriteShowsAFailedLoad(t *testing.T) {
	dir := t.TempDir()
	res := result(t, "flood/fixed")
	res.LoadSummary = []scenario.LoadSummary{
		scenario.NewLoadSummary(faults.LoadReport{Profile: faults.Background, Stats: faults.LoadStats{Sent: 9, OK: 9}}, nil),
		scenario.NewLoadSummary(faults.LoadReport{Profile: faults.InternalBatch, Stats: faults.LoadStats{Sent: 2, OK: 1, InFlight: 1}},
			errors.New("wait flood internal-batch: context canceled")),
	}
	page, err := report.Write(dir, res)
	require.NoError(t, err)

	html, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Contains(t, string(html), "failed: wait flood internal-batch: context canceled")
	assert.Contains(t, string(html), "Load failed (cumulative)")
	assert.Contains(t, string(html), scenario.MetricEverydayErrors)
	assert.Contains(t, string(html), scenario.MetricBatchErrors)

	var sum struct {
		Loads []struct {
			Client  string `json:"client"`
			Traffic string `json:"traffic"`
			Failed  bool   `json:"failed"`
			Error   string `json:"error"`
		} `json:"loads"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &sum))
	require.Len(t, sum.Loads, 2)
	assert.Equal(t, "everyday", sum.Loads[0].Traffic)
	assert.False(t, sum.Loads[0].Failed)
	assert.Equal(t, faults.InternalBatch.Client, sum.Loads[1].Client)
	assert.Equal(t, "batch", sum.Loads[1].Traffic)
	assert.True(t, sum.Loads[1].Failed)
	assert.Equal(t, "wait flood internal-batch: context canceled", sum.Loads[1].Error)
}

// The goroutines chart draws the high-water mark between samples beside the
// plain count.
func TestGoroutinesChartShowsThePeak(t *testing.T) {
	g, peak := 10.0, 10.0
	s, err := probe.NewSampler(1e6,
		probe.Func(probe.MetricGoroutines, func() float64 { return g }),
		probe.Func(probe.MetricGoroutinesPeak, func() float64 { return peak }))
	require.NoError(t, err)
	s.Mark(scenario.PhaseInject)
	require.NoError(t, s.Sample(t.Context()))
	peak = 4000 // a burst between samples
	require.NoError(t, s.Sample(t.Context()))
	res := &scenario.Result{Scenario: "burst", Timeline: s.Timeline(), Validated: true}
	page, err := report.Write(filepath.Join(t.TempDir(), "burst"), res)
	require.NoError(t, err)
	html, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Regexp(t, `Goroutines</text>.*<polyline[^>]*>.*>goroutines</text><polyline[^>]*>.*>goroutines_peak</text>`, string(html))
}
