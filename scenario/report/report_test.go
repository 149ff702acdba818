package report_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/load"
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
		scenario.NewLoadSummary(load.Report{Profile: load.Background, Stats: load.Stats{Sent: 9, OK: 9}}, nil),
		scenario.NewLoadSummary(load.Report{Profile: load.InternalBatch, Stats: load.Stats{Sent: 2, OK: 1, InFlight: 1}},
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
	assert.Equal(t, load.InternalBatch.Client, sum.Loads[1].Client)
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
	c := chartTitled(t, readSVGs(t, page), "Goroutines")
	assert.Equal(t, []string{probe.MetricGoroutines, probe.MetricGoroutinesPeak}, seriesNames(c))
}

// A run's page draws each budget as a line over the phases it covers, in
// its metric's chart, and marks the violation at its peak with its value;
// the y axis has 4-6 ticks and the legend sits between the title and the
// plot.
func TestRunChartDrawsBudgetsAndViolations(t *testing.T) {
	res := result(t, "flood/incident")
	page, err := report.Write(filepath.Join(t.TempDir(), "flood_incident"), res)
	require.NoError(t, err)
	c := chartTitled(t, readSVGs(t, page), "Goroutines")

	budgets := c.all("line", "budget")
	require.Len(t, budgets, 1, "one budget on goroutines")
	inject := c.phaseX(t, scenario.PhaseInject)
	recover := c.phaseX(t, scenario.PhaseRecover)
	assert.InDelta(t, inject, budgets[0].num(t, "x1"), 0.11, "the budget starts with inject")
	assert.InDelta(t, recover, budgets[0].num(t, "x2"), 0.11, "and ends where inject does: it covers inject only")

	marks := c.all("g", "violation")
	require.Len(t, marks, 1)
	assert.Equal(t, "5,000", marks[0].text())
	circle := marks[0].all("circle", "")[0]
	assert.Less(t, circle.num(t, "cy"), budgets[0].num(t, "y1"), "the peak is drawn above its bound")

	ticks := c.all("text", "ytick")
	assert.GreaterOrEqual(t, len(ticks), 4)
	assert.LessOrEqual(t, len(ticks), 6)
	c.assertLegendClear(t)
}

// A budget's label reads in its axis' unit: a 500 ms bound on an axis in
// seconds (the incident's 2.5 s pause sets it) says "≤ 0.5 s".
func TestBudgetLabelInTheAxisUnit(t *testing.T) {
	p99 := 0.002
	s, err := probe.NewSampler(1e6, probe.Func(probe.MetricGCPauseP99, func() float64 { return p99 }))
	require.NoError(t, err)
	s.Mark(scenario.PhaseBaseline)
	require.NoError(t, s.Sample(t.Context()))
	s.Mark(scenario.PhaseInject)
	p99 = 2.5
	require.NoError(t, s.Sample(t.Context()))
	tl := s.Timeline()
	budgets := []probe.Budget{probe.Limit(probe.MetricGCPauseP99, 0.5, scenario.PhaseInject)}
	res := &scenario.Result{Scenario: "pause/incident", Seed: 1, Timeline: tl, Budgets: budgets, Violations: tl.Check(budgets...), Validated: true}
	page, err := report.Write(filepath.Join(t.TempDir(), "pause_incident"), res)
	require.NoError(t, err)
	c := chartTitled(t, readSVGs(t, page), "GC pause p99")
	labels := c.all("text", "budget-label")
	require.Len(t, labels, 1)
	assert.Equal(t, "≤ 0.5 s", labels[0].text())
	for _, tk := range c.all("text", "ytick") {
		assert.True(t, strings.HasSuffix(tk.text(), " s"), "y tick %q in seconds", tk.text())
	}
}

func TestTicksAndUnits(t *testing.T) {
	for _, tc := range []struct {
		metric string
		values []float64
		want   []string
	}{
		{probe.MetricGoroutines, []float64{10, 5000}, []string{"0", "1,000", "2,000", "3,000", "4,000", "5,000"}},
		{probe.MetricHeap, []float64{0, 80 << 20}, []string{"0 MiB", "20 MiB", "40 MiB", "60 MiB", "80 MiB"}},
		{scenario.MetricEverydayLatencyP99, []float64{0.004, 0.053}, []string{"0 ms", "20 ms", "40 ms", "60 ms"}},
		{probe.MetricGCCPUFraction, []float64{0, 0.17}, []string{"0%", "5%", "10%", "15%", "20%"}},
		{probe.MetricThreads, []float64{3, 3}, []string{"0", "1", "2", "3"}},
	} {
		ys := append([]string(nil), report.AxisTicks(tc.metric, tc.values)...)
		assert.Equal(t, tc.want, ys, tc.metric)
	}
}

// svgNode is an element of a chart, parsed back from the page.
type svgNode struct {
	Name     string
	Attr     map[string]string
	Text     string
	Children []*svgNode
}

// readSVGs parses every <svg> of the page at path as XML: a chart that
// is not well-formed fails here.
func readSVGs(t *testing.T, path string) []*svgNode {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []*svgNode
	rest := string(b)
	for {
		i := strings.Index(rest, "<svg")
		if i < 0 {
			return out
		}
		j := strings.Index(rest[i:], "</svg>")
		require.Positive(t, j, "an unclosed svg")
		out = append(out, parseSVG(t, rest[i:i+j+len("</svg>")]))
		rest = rest[i+j:]
	}
}

func parseSVG(t *testing.T, s string) *svgNode {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	root := &svgNode{}
	stack := []*svgNode{root}
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "chart SVG is well-formed:\n%s", s)
		switch tk := tok.(type) {
		case xml.StartElement:
			n := &svgNode{Name: tk.Name.Local, Attr: map[string]string{}}
			for _, a := range tk.Attr {
				n.Attr[a.Name.Local] = a.Value
			}
			top := stack[len(stack)-1]
			top.Children = append(top.Children, n)
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			stack[len(stack)-1].Text += string(tk)
		}
	}
	require.Len(t, root.Children, 1)
	return root.Children[0]
}

// all returns the elements under n named name with class class ("" for
// any), n itself excepted.
func (n *svgNode) all(name, class string) []*svgNode {
	var out []*svgNode
	for _, c := range n.Children {
		if c.Name == name && (class == "" || c.Attr["class"] == class) {
			out = append(out, c)
		}
		out = append(out, c.all(name, class)...)
	}
	return out
}

// text is the text of n and every element under it.
func (n *svgNode) text() string {
	s := n.Text
	for _, c := range n.Children {
		s += c.text()
	}
	return strings.TrimSpace(s)
}

func (n *svgNode) num(t *testing.T, attr string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(n.Attr[attr], 64)
	require.NoError(t, err, "%s=%q of %s", attr, n.Attr[attr], n.Name)
	return v
}

// phaseX is the x of the boundary where phase starts.
func (n *svgNode) phaseX(t *testing.T, phase string) float64 {
	t.Helper()
	for _, l := range n.all("line", "phase") {
		if l.Attr["data-phase"] == phase {
			return l.num(t, "x1")
		}
	}
	require.Failf(t, "no phase boundary", "%s", phase)
	return 0
}

// assertLegendClear checks every legend entry sits below the title and
// above the plot's top grid line: the legend covers neither.
func (n *svgNode) assertLegendClear(t *testing.T) {
	t.Helper()
	title := n.all("text", "title")[0].num(t, "y")
	plotTop := math.Inf(1)
	for _, l := range n.all("text", "ytick") {
		plotTop = math.Min(plotTop, l.num(t, "y"))
	}
	for _, l := range n.all("text", "phase-label") {
		plotTop = math.Min(plotTop, l.num(t, "y")-10)
	}
	legend := n.all("g", "legend")
	require.Len(t, legend, 1)
	for _, e := range legend[0].all("text", "") {
		y := e.num(t, "y")
		assert.Greater(t, y-11, title, "legend %q below the title", e.text())
		assert.Less(t, y, plotTop, "legend %q above the plot", e.text())
	}
}

// chartTitled returns the chart whose title is title.
func chartTitled(t *testing.T, svgs []*svgNode, title string) *svgNode {
	t.Helper()
	var titles []string
	for _, s := range svgs {
		for _, tl := range s.all("text", "title") {
			if tl.text() == title {
				return s
			}
			titles = append(titles, tl.text())
		}
	}
	require.Failf(t, "no chart", "%q among %q", title, titles)
	return nil
}

// seriesNames are the names of a chart's series, in drawing order.
func seriesNames(c *svgNode) []string {
	var out []string
	for _, s := range c.all("g", "series") {
		out = append(out, s.Attr["data-name"])
	}
	return out
}

// armResult is result's run for one arm of suite "flood": the incident's
// goroutines reach 5000 during inject, the fixed arm's 10. The incident's
// inject lasts 40 ms longer.
func armResult(t *testing.T, arm string, g float64) *scenario.Result {
	t.Helper()
	cur := 10.0
	sources := []probe.Source{probe.Func(probe.MetricGoroutines, func() float64 { return cur })}
	if arm == "fixed" { // a metric of one arm only: its chart still spans both arms' time
		sources = append(sources, probe.Func(probe.MetricThreads, func() float64 { return 7 }))
	}
	s, err := probe.NewSampler(1e6, sources...)
	require.NoError(t, err)
	ctx := t.Context()
	s.Mark(scenario.PhaseBaseline)
	require.NoError(t, s.Sample(ctx))
	s.Mark(scenario.PhaseInject)
	cur = g
	require.NoError(t, s.Sample(ctx))
	if arm == "incident" {
		time.Sleep(40 * time.Millisecond)
	}
	s.Mark(scenario.PhaseRecover)
	cur = 10
	require.NoError(t, s.Sample(ctx))
	tl := s.Timeline()
	budgets := []probe.Budget{probe.Limit(probe.MetricGoroutines, 2000, scenario.PhaseInject)}
	return &scenario.Result{Scenario: "flood/" + arm, Seed: 3, Timeline: tl, Budgets: budgets, Violations: tl.Check(budgets...), Validated: true,
		Replay: "SPIRAL_SEED=3 go test -count=1 -v -run '^TestFlood$/^" + arm + "$' ./suites/flood"}
}

// writeRun writes the fixed and incident arms of suite "flood" into dir,
// as make chaos does, and returns dir.
func writeRun(t *testing.T, dir string) string {
	t.Helper()
	for arm, g := range map[string]float64{"fixed": 12, "incident": 5000} {
		_, err := report.Write(filepath.Join(dir, "flood_"+arm), armResult(t, arm, g))
		require.NoError(t, err)
	}
	return dir
}

// The A/B page draws both arms on each chart in their colours, the budget
// once, the incident's violation in the incident's colour, and opens on a
// verdict table.
func TestSuitePage(t *testing.T) {
	dir := writeRun(t, t.TempDir())
	entries, err := report.WriteIndex(dir)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	for _, e := range entries {
		assert.Equal(t, "suite-flood.html", e.SuitePage, e.Scenario)
	}
	page := filepath.Join(dir, "suite-flood.html")
	c := chartTitled(t, readSVGs(t, page), probe.MetricGoroutines)
	assert.Equal(t, []string{"fixed", "incident"}, seriesNames(c), "both arms, fixed first")
	colors := map[string]string{}
	for _, s := range c.all("g", "series") {
		colors[s.Attr["data-name"]] = s.all("polyline", "")[0].Attr["stroke"]
	}
	assert.NotEqual(t, colors["fixed"], colors["incident"])

	budgets := c.all("line", "budget")
	require.Len(t, budgets, 1, "the budget both arms carry is drawn once")
	assert.InDelta(t, c.phaseX(t, scenario.PhaseInject), budgets[0].num(t, "x1"), 0.11)
	// It covers inject in both arms: to the incident's recover, its last
	// sample, though the phases drawn are the fixed arm's.
	var incident *svgNode
	for _, s := range c.all("g", "series") {
		if s.Attr["data-name"] == "incident" {
			incident = s.all("polyline", "")[0]
		}
	}
	require.NotNil(t, incident)
	pts := strings.Fields(incident.Attr["points"])
	lastX, _, _ := strings.Cut(pts[len(pts)-1], ",")
	assert.Greater(t, budgets[0].num(t, "x2"), c.phaseX(t, scenario.PhaseRecover)+50, "past the fixed arm's inject")
	assert.InDelta(t, mustFloat(t, lastX), budgets[0].num(t, "x2"), 2, "to the incident's recover")

	marks := c.all("g", "violation")
	require.Len(t, marks, 1, "only the incident violated")
	assert.Equal(t, "incident 5,000", marks[0].text())
	assert.Equal(t, colors["incident"], marks[0].all("circle", "")[0].Attr["stroke"])
	c.assertLegendClear(t)

	// Time zero is the start of inject in every arm.
	var zero *svgNode
	for _, tk := range c.all("text", "xtick") {
		if tk.text() == "0s" {
			zero = tk
		}
	}
	require.NotNil(t, zero, "a 0s tick")
	assert.InDelta(t, c.phaseX(t, scenario.PhaseInject), zero.num(t, "x"), 0.11)

	// Every chart of the page spans the same time: the threads chart, of
	// the shorter fixed arm alone, has the goroutines chart's x ticks.
	xticks := func(c *svgNode) (out []string) {
		for _, tk := range c.all("text", "xtick") {
			out = append(out, tk.text()+"@"+tk.Attr["x"])
		}
		return out
	}
	threads := chartTitled(t, readSVGs(t, page), probe.MetricThreads)
	assert.Equal(t, []string{"fixed"}, seriesNames(threads))
	assert.Equal(t, xticks(c), xticks(threads), "the same x ticks at the same places")

	html, err := os.ReadFile(page)
	require.NoError(t, err)
	_, table, ok := strings.Cut(string(html), "<h2>Verdicts</h2>")
	require.True(t, ok)
	table, _, _ = strings.Cut(table, "</table>")
	assert.Regexp(t, `(?s)>fixed</a>.*class="held">held: peak 12<br><small>1% of the bound`, table)
	assert.Regexp(t, `(?s)>incident</a>.*class="violated"><b>violated</b>: peak 5,000<br><small>2.5× the bound`, table)
}

// The index shows each arm's test verdict and the failed assertion's
// message from the run's junit.xml, so an arm whose test failed does not
// read like one that passed.
func TestIndexShowsTestVerdicts(t *testing.T) {
	dir := writeRun(t, t.TempDir())
	junit := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="3" failures="2" errors="0">
	<testsuite tests="3" failures="2" time="30.5" name="github.com/spiral-chaos/spiral/suites/flood">
		<testcase classname="github.com/spiral-chaos/spiral/suites/flood" name="TestFlood" time="30"><failure message="Failed" type="">--- FAIL: TestFlood</failure></testcase>
		<testcase classname="github.com/spiral-chaos/spiral/suites/flood" name="TestFlood/fixed" time="10"></testcase>
		<testcase classname="github.com/spiral-chaos/spiral/suites/flood" name="TestFlood/incident" time="10"><failure message="Failed" type="">=== RUN   TestFlood/incident
    suite.go:38: flood/incident: faults [flood]; 1 violation(s); validated=true
    flood_test.go:130: 
        	Error Trace:	/src/suites/flood/flood_test.go:130
        	Error:      	Should be true
        	Test:       	TestFlood/incident
        	Messages:   	the incident must be caught leaving sockets in TIME_WAIT;
        	            	peaks map[inject:0]
    suite.go:48: replay: SPIRAL_SEED=3 go test ./suites/flood
--- FAIL: TestFlood/incident (10.00s)
</failure></testcase>
	</testsuite>
</testsuites>`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "junit.xml"), []byte(junit), 0o644))
	entries, err := report.WriteIndex(dir)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	fixed, incident := entries[0], entries[1]
	assert.Equal(t, report.Passed, fixed.Test.Verdict)
	assert.Equal(t, report.Failed, incident.Test.Verdict)
	assert.Equal(t, "Should be true: the incident must be caught leaving sockets in TIME_WAIT; peaks map[inject:0]", incident.Test.Message)
	assert.Equal(t, report.TestVerdict{Name: "TestFlood", Verdict: report.Failed}, incident.Suite)

	html, err := os.ReadFile(filepath.Join(dir, "index.html"))
	require.NoError(t, err)
	_, matrix, ok := strings.Cut(string(html), "<th>other arms</th></tr>")
	require.True(t, ok)
	matrix, _, _ = strings.Cut(matrix, "</table>")
	assert.Regexp(t, `(?s)<a href="suite-flood.html">flood</a>.*<td class="failed"><span class="v">failed</span><br><small>TestFlood</small>`, matrix)
	assert.Regexp(t, `(?s)<td class="passed"><a href="flood_fixed/report.html"><span class="v">passed</span></a>\s*&middot; budgets held`, matrix)
	assert.Regexp(t, `(?s)<td class="failed"><a href="flood_incident/report.html"><span class="v">failed</span></a>\s*&middot; 1 of 1 budget\(s\) violated\s*<span class="msg">Should be true: the incident must be caught`, matrix)
}

func TestCompare(t *testing.T) {
	base := []report.Entry{
		{Scenario: "a/fixed", Held: true, Test: report.TestVerdict{Verdict: report.Passed},
			Budgets: []report.BudgetResult{{Budget: "threads <= 20 over the whole run", Metric: "threads", Max: 20, Held: true, Peak: 9, Judged: true}}},
		{Scenario: "a/incident", Held: false, Test: report.TestVerdict{Verdict: report.Passed}},
		{Scenario: "a/gone", Held: true},
	}
	cur := []report.Entry{
		{Scenario: "a/fixed", Held: true, Test: report.TestVerdict{Verdict: report.Passed},
			Budgets: []report.BudgetResult{{Budget: "threads <= 20 over the whole run", Metric: "threads", Max: 20, Held: true, Peak: 19, Judged: true}}},
		{Scenario: "a/incident", Held: false, Test: report.TestVerdict{Verdict: report.Failed}},
		{Scenario: "a/new", Held: true},
	}
	gone, err := report.Compare(base, cur, 2)
	require.NoError(t, err)
	assert.Equal(t, []string{"a/gone"}, gone)
	assert.Equal(t, []string{
		"a/fixed: peak threads <= 20 over the whole run: 9 → 19",
		"a/incident: test: passed → failed",
		"a/new: new",
	}, report.ChangeLines(cur))

	_, err = report.Compare(base, cur, 1)
	require.Error(t, err, "a ratio of 1 marks every peak")
	gone, err = report.Compare(base, cur, 2.2)
	require.NoError(t, err)
	assert.Len(t, gone, 1)
	assert.NotContains(t, strings.Join(report.ChangeLines(cur), "\n"), "peak", "19/9 is under 2.2×")
}

// The machine.txt scripts/chaos.sh writes is shown in the index, the run's
// own and each shard's.
func TestIndexShowsTheMachine(t *testing.T) {
	dir := writeRun(t, t.TempDir())
	require.NoError(t, os.WriteFile(filepath.Join(dir, report.MachineFile), []byte("cores: 2\nkernel: Linux 6.18.44\n\nengine: 20.10.24\n"), 0o644))
	shard := filepath.Join(dir, "shard-oom")
	require.NoError(t, os.MkdirAll(shard, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(shard, report.MachineFile), []byte("cores: 4\n"), 0o644))
	_, err := report.WriteIndex(dir)
	require.NoError(t, err)
	html, err := os.ReadFile(filepath.Join(dir, "index.html"))
	require.NoError(t, err)
	assert.Contains(t, string(html), "machine: cores: 2; kernel: Linux 6.18.44; engine: 20.10.24</small>")
	assert.Contains(t, string(html), "machine (shard-oom): cores: 4</small>")
	assert.NotContains(t, string(html), "is not recorded", "the machine is recorded")

	bare := writeRun(t, t.TempDir())
	_, err = report.WriteIndex(bare)
	require.NoError(t, err)
	html, err = os.ReadFile(filepath.Join(bare, "index.html"))
	require.NoError(t, err)
	assert.Contains(t, string(html), "No machine.txt here", "a run without machine.txt says so")
}

// The page names who asked for what during the faults, the flooding client
// first, and summary.json carries it.
func TestWriteShowsWho(t *testing.T) {
	dir := t.TempDir()
	res := result(t, "flood/incident")
	res.Clients = []scenario.ClientFigures{
		{Client: "internal-batch", Requests: 3, FailedRequests: 3, Keys: 60000, KeysFailed: 45000, KeysSent: 60000},
		{Client: "appview", Requests: 55, FailedRequests: 5, Keys: 540, KeysFailed: 40, KeysSent: 545},
	}
	page, err := report.Write(dir, res)
	require.NoError(t, err)
	html, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Regexp(t, `(?s)<h2>Who</h2>.*<th>keys per request</th>.*<td>internal-batch</td><td>20000.0</td><td>60000</td><td>60000</td><td>45000</td>.*<td>appview</td><td>9.9</td><td>545</td><td>540</td>`, string(html))

	var sum struct {
		Clients []scenario.ClientFigures `json:"clients"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &sum))
	assert.Equal(t, res.Clients, sum.Clients)
}

// The page lists what happened in order, each with its time from the
// run's start and its phase, and summary.json carries it.
func TestWriteShowsEvents(t *testing.T) {
	dir := t.TempDir()
	res := result(t, "death-spiral/incident")
	at := func(s float64) time.Time { return res.Started.Add(time.Duration(s * float64(time.Second))) }
	res.Events = []scenario.Event{
		{Name: "ports exhausted", At: at(1.5), Detail: "12 dials found no free port"},
		{Name: "OOM kill", At: at(2.5), Detail: "1 OOM kill(s)"},
	}
	page, err := report.Write(dir, res)
	require.NoError(t, err)
	html, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Regexp(t, `(?s)<h2>What happened</h2>.*<td>1</td><td>ports exhausted</td><td>1.5 s</td><td>[a-z]*</td><td>12 dials found no free port</td>.*<td>2</td><td>OOM kill</td><td>2.5 s</td>`, string(html))

	var sum struct {
		Events []scenario.Event `json:"events"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &sum))
	require.Len(t, sum.Events, 2)
	assert.Equal(t, "OOM kill", sum.Events[1].Name)
	assert.True(t, sum.Events[1].At.Equal(at(2.5)))
}

// The page states what the observer cost, per phase and per source.
func TestWriteShowsTheObserver(t *testing.T) {
	dir := t.TempDir()
	res := result(t, "flood/fixed")
	page, err := report.Write(dir, res)
	require.NoError(t, err)
	html, err := os.ReadFile(page)
	require.NoError(t, err)
	require.NotEmpty(t, res.Timeline.CostByPhase(), "the fixture has phased samples")
	assert.Regexp(t, `(?s)<h2>Observer</h2>.*<th>longest gap \(intervals\)</th>.*<td>`+res.Timeline.CostByPhase()[0].Phase+`</td>`, string(html))
	assert.NotContains(t, string(html), "late in", "no source was late")

	// A bounded source whose reading was late says so.
	res.Timeline.Sources[0].Late = 2
	page, err = report.Write(filepath.Join(dir, "late"), res)
	require.NoError(t, err)
	html, err = os.ReadFile(page)
	require.NoError(t, err)
	assert.Contains(t, string(html), "<b>late in 2 of 3 reads</b>")
}

// A budget the target could not be judged on is shown as not judged, on
// the arm's page, in the A/B table and in the index, and never as held.
func TestNotJudgedIsNeverShownAsHeld(t *testing.T) {
	dir := t.TempDir()
	res := armResult(t, "fixed", 12)
	nj := probe.Limit(probe.MetricGoroutinesPeak, 200, scenario.PhaseInject)
	res.Budgets = append(res.Budgets, nj)
	res.Target = "exec:/bin/svc"
	judged := res.Timeline.Check(nj)
	require.Len(t, judged, 1)
	judged[0].Problem = "target exec:/bin/svc does not expose it: " + judged[0].Problem
	res.NotJudged = judged
	page, err := report.Write(filepath.Join(dir, "flood_fixed"), res)
	require.NoError(t, err)
	b, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Contains(t, string(b), "1 not judged")
	assert.NotContains(t, string(b), "every budget held")

	entries, err := report.WriteIndex(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	e := entries[0]
	assert.False(t, e.Held)
	assert.Equal(t, 1, e.NotJudged)
	assert.Equal(t, "exec:/bin/svc", e.Target)
	var found bool
	for _, br := range e.Budgets {
		if br.Metric == probe.MetricGoroutinesPeak {
			found = true
			assert.True(t, br.NotJudged)
			assert.False(t, br.Held)
		}
	}
	assert.True(t, found)
	suite, err := os.ReadFile(filepath.Join(dir, "suite-flood.html"))
	require.NoError(t, err)
	assert.Contains(t, string(suite), "not judged: target exec:/bin/svc does not expose it")
	index, err := os.ReadFile(filepath.Join(dir, "index.html"))
	require.NoError(t, err)
	assert.Contains(t, string(index), "1 not judged")
}

func mustFloat(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err, s)
	return f
}
