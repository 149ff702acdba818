package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
)

// fakeRun is one run of one scenario: the value each metric reads in each
// phase, sampled once per phase in phaseOrder. A metric missing from
// values is not recorded at all in that run.
type fakeRun struct {
	name   string
	values map[string]map[string]float64 // metric -> phase -> value
}

var phaseOrder = []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover}

// envelopeBudgets are the fake scenarios' budgets: goroutines over inject
// and observe only, threads over the whole run.
var envelopeBudgets = []probe.Budget{
	probe.Limit(probe.MetricGoroutines, 2000, scenario.PhaseInject, scenario.PhaseObserve),
	probe.Limit(probe.MetricThreads, 150),
}

// writeRun writes r's report where the suites put it when
// SPIRAL_REPORT_DIR is runDir, from a real sampler's timeline judged by
// probe's Check, and returns the result.
func writeRun(tb testing.TB, runDir string, r fakeRun) *scenario.Result {
	tb.Helper()
	var phase string
	var sources []probe.Source
	metrics := make([]string, 0, len(r.values))
	for m := range r.values {
		metrics = append(metrics, m)
	}
	slices.Sort(metrics)
	for _, m := range metrics {
		per := r.values[m]
		sources = append(sources, probe.Func(m, func() float64 { return per[phase] }))
	}
	s, err := probe.NewSampler(time.Second, sources...)
	require.NoError(tb, err)
	for _, phase = range phaseOrder {
		s.Mark(phase)
		require.NoError(tb, s.Sample(context.Background()))
	}
	tl := s.Timeline()
	res := &scenario.Result{
		Scenario: r.name, Seed: 1, Started: time.Now(), Timeline: tl,
		Budgets: envelopeBudgets, Violations: tl.Check(envelopeBudgets...),
		Validated: true, Peaks: scenario.Peaks(tl),
	}
	tb.Setenv("SPIRAL_REPORT_DIR", runDir)
	_, err = report.Write(report.Dir(r.name), res)
	require.NoError(tb, err)
	return res
}

// phased returns a metric's values per phase: baseline, inject, and rest
// in observe and recover.
func phased(baseline, inject, rest float64) map[string]float64 {
	return map[string]float64{
		scenario.PhaseBaseline: baseline, scenario.PhaseInject: inject,
		scenario.PhaseObserve: rest, scenario.PhaseRecover: rest,
	}
}

// tableRows parses the envelope table: each row's fields by column name,
// keyed by scenario and metric.
func envelopeTable(tb testing.TB, out string) map[string]map[string]string {
	tb.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.NotEmpty(tb, lines)
	header := strings.Fields(lines[0])
	rows := map[string]map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		require.Len(tb, f, len(header), "row %q", l)
		row := map[string]string{}
		for i, h := range header {
			row[h] = f[i]
		}
		rows[row["SCENARIO"]+" "+row["METRIC"]] = row
	}
	return rows
}

// fmtRatio is budget/peak to 3 significant digits, as the table shows it.
func fmtRatio(budget, peak float64) string { return strconv.FormatFloat(budget/peak, 'g', 3, 64) }

func TestEnvelope(t *testing.T) {
	root := t.TempDir()
	// Goroutines in baseline (outside the budget's phases) are higher than
	// any inject peak of the fixed arm: the envelope must take the
	// budget's phases, not the whole run.
	fixedGoroutines := []float64{900, 1300, 1100}
	incidentGoroutines := []float64{15_200, 9_000}
	threads := []float64{41, 38, 47}
	var dirs []string
	var incident []*scenario.Result
	for i := range 3 {
		dir := filepath.Join(root, "run-"+strconv.Itoa(i+1))
		dirs = append(dirs, dir)
		fixed := fakeRun{name: "suite/fixed", values: map[string]map[string]float64{
			probe.MetricGoroutines: phased(1900, fixedGoroutines[i], 50),
			probe.MetricThreads:    phased(20, threads[i], 20),
			probe.MetricHeap:       phased(1<<20, float64(int64(i+2)<<20), 1<<20),
		}}
		if i == 2 {
			// A run whose threads were not recorded: unmeasured, and
			// reported as a budget that could not be judged.
			delete(fixed.values, probe.MetricThreads)
		}
		res := writeRun(t, dir, fixed)
		assert.Equal(t, i == 2, !res.Held(), "run %d of the fixed arm", i+1)
		if i < len(incidentGoroutines) {
			res := writeRun(t, dir, fakeRun{name: "suite/incident", values: map[string]map[string]float64{
				probe.MetricGoroutines: phased(30, incidentGoroutines[i], 30),
				probe.MetricThreads:    phased(20, 0, 0),
			}})
			require.False(t, res.Held(), "the incident arm violates its goroutine budget")
			incident = append(incident, res)
		}
	}

	code, out, errOut := spiral(t, append([]string{"envelope"}, dirs...)...)
	require.Equal(t, 0, code, errOut)
	rows := envelopeTable(t, out)
	assert.Len(t, rows, 4, "two budgets of two scenarios, no unbudgeted metric without -all:\n%s", out)

	g := rows["suite/fixed goroutines"]
	require.NotNil(t, g, out)
	assert.Equal(t, "3", g["RUNS"])
	assert.Equal(t, "2", g["HELD"], "the run without threads did not hold")
	assert.Equal(t, "inject,observe", g["PHASES"])
	assert.Equal(t, number(ptr(slices.Min(fixedGoroutines))), g["MIN"])
	assert.Equal(t, number(ptr(slices.Max(fixedGoroutines))), g["MAX"])
	assert.Equal(t, "2000", g["BUDGET"])
	assert.Equal(t, fmtRatio(2000, slices.Max(fixedGoroutines)), g["BUDGET/MAX"])
	assert.Equal(t, "0", g["OVER"])

	th := rows["suite/fixed threads"]
	require.NotNil(t, th, out)
	assert.Equal(t, "2/3", th["RUNS"], "one run has no thread samples")
	assert.Equal(t, "all", th["PHASES"])
	assert.Equal(t, number(ptr(slices.Min(threads[:2]))), th["MIN"])
	assert.Equal(t, number(ptr(slices.Max(threads[:2]))), th["MAX"])
	assert.Equal(t, fmtRatio(150, slices.Max(threads[:2])), th["BUDGET/MAX"])
	assert.Equal(t, "1", th["OVER"], "the run without threads could not judge the budget")

	ig := rows["suite/incident goroutines"]
	require.NotNil(t, ig, out)
	assert.Equal(t, "2", ig["RUNS"])
	assert.Equal(t, "0", ig["HELD"])
	assert.Equal(t, "2", ig["OVER"])
	// The envelope's peak is the one probe's Check reported violated.
	var judged []float64
	for _, res := range incident {
		require.Len(t, res.Violations, 1)
		judged = append(judged, res.Violations[0].Peak)
	}
	assert.Equal(t, number(ptr(slices.Min(judged))), ig["MIN"])
	assert.Equal(t, number(ptr(slices.Max(judged))), ig["MAX"])
	assert.Equal(t, fmtRatio(2000, slices.Max(incidentGoroutines)), ig["BUDGET/MAX"])
	ratio, err := strconv.ParseFloat(ig["BUDGET/MAX"], 64)
	require.NoError(t, err)
	assert.Less(t, ratio, 1.0, "an exceeded budget's ratio is below 1")

	it := rows["suite/incident threads"]
	require.NotNil(t, it, out)
	assert.Equal(t, "20", it["MAX"])

	// -all adds the unbudgeted heap, over the whole run.
	code, out, errOut = spiral(t, append([]string{"envelope", "-all"}, dirs...)...)
	require.Equal(t, 0, code, errOut)
	rows = envelopeTable(t, out)
	h := rows["suite/fixed heap_bytes"]
	require.NotNil(t, h, "-all shows the heap:\n%s", out)
	assert.Equal(t, "all", h["PHASES"])
	assert.Equal(t, number(ptr(2<<20)), h["MIN"])
	assert.Equal(t, number(ptr(4<<20)), h["MAX"])
	assert.Equal(t, "-", h["BUDGET"])
	assert.Equal(t, "-", h["BUDGET/MAX"])
	_, ok := rows["suite/incident heap_bytes"]
	assert.False(t, ok, "the incident arm recorded no heap")
}

func TestEnvelopeJSON(t *testing.T) {
	root := t.TempDir()
	peaks := []float64{700, 0, 1250}
	for i, p := range peaks {
		writeRun(t, filepath.Join(root, "run-"+strconv.Itoa(i+1)), fakeRun{name: "suite/fixed", values: map[string]map[string]float64{
			probe.MetricGoroutines: phased(5000, p, 10),
			probe.MetricThreads:    phased(0, 0, 0),
		}})
	}
	// One folder holding every run, given twice: each summary counts once.
	code, out, errOut := spiral(t, "envelope", "-json", root, filepath.Join(root, "run-2"))
	require.Equal(t, 0, code, errOut)
	var envs []scenarioEnvelope
	require.NoError(t, json.Unmarshal([]byte(out), &envs), out)
	require.Len(t, envs, 1)
	e := envs[0]
	assert.Equal(t, "suite/fixed", e.Scenario)
	assert.Equal(t, len(peaks), e.Runs)
	assert.Equal(t, len(peaks), e.Held)
	require.Len(t, e.Summaries, len(peaks))
	require.Len(t, e.Rows, len(envelopeBudgets))

	g := e.Rows[0]
	assert.Equal(t, probe.MetricGoroutines, g.Metric)
	assert.Equal(t, []string{scenario.PhaseInject, scenario.PhaseObserve}, g.Phases)
	require.Len(t, g.Peaks, len(peaks))
	for i, p := range peaks {
		// The summaries are read in lexical order: run-1, run-2, run-3.
		assert.Contains(t, e.Summaries[i], "run-"+strconv.Itoa(i+1))
		// Baseline's 5000 is outside the budget's phases; observe reads
		// 10, the peak when inject reads 0.
		want := max(p, 10)
		require.NotNil(t, g.Peaks[i])
		assert.InDelta(t, want, *g.Peaks[i], 0, "run %d", i+1)
	}
	require.NotNil(t, g.Min)
	require.NotNil(t, g.Max)
	assert.InDelta(t, 10.0, *g.Min, 0)
	assert.InDelta(t, slices.Max(peaks), *g.Max, 0)
	require.NotNil(t, g.Ratio)
	assert.InDelta(t, 2000/slices.Max(peaks), *g.Ratio, 1e-12)

	th := e.Rows[1]
	assert.Equal(t, probe.MetricThreads, th.Metric)
	assert.Empty(t, th.Phases)
	require.NotNil(t, th.Max)
	assert.Zero(t, *th.Max)
	assert.Nil(t, th.Ratio, "no ratio over a peak of 0")

	code, out, errOut = spiral(t, "envelope", root)
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "inf", envelopeTable(t, out)["suite/fixed threads"]["BUDGET/MAX"], "a bound over peaks of 0")
}

func TestEnvelopeErrors(t *testing.T) {
	empty := t.TempDir()
	bad := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(bad, "x"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(bad, "x", "summary.json"), []byte("{"), 0o644))
	notScenario := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(notScenario, "summary.json"), []byte(`{"peaks":{}}`), 0o644))
	file := filepath.Join(empty, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"envelope"}, exitUsage, "at least one folder"},
		{[]string{"envelope", "-nonesuch", empty}, exitUsage, "nonesuch"},
		{[]string{"envelope", empty}, exitFailure, "no summary.json"},
		{[]string{"envelope", filepath.Join(empty, "missing")}, exitFailure, "missing"},
		{[]string{"envelope", file}, exitFailure, "not a folder"},
		{[]string{"envelope", bad}, exitFailure, filepath.Join(bad, "x", "summary.json")},
		{[]string{"envelope", notScenario}, exitFailure, "no scenario name"},
	} {
		code, _, errOut := spiral(t, tc.args...)
		assert.Equal(t, tc.code, code, "%q: %s", tc.args, errOut)
		assert.Contains(t, errOut, tc.msg, "%q", tc.args)
	}
}

func TestRatioString(t *testing.T) {
	for r, want := range map[float64]string{
		200.0 / 13096: "0.0153", // an incident 65 times over its bound
		2000.0 / 71:   "28.2",
		150.0 / 12:    "12.5",
		1:             "1",
		0:             "0",
		150.0 / 0.5:   "300",
	} {
		assert.Equal(t, want, ratioString(r), "%v", r)
	}
}
