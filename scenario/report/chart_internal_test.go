package report

import (
	"encoding/json"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// A budget's line covers its phases in every arm: the union of the arms'
// spans, overlapping and touching ones joined.
func TestUnionSpans(t *testing.T) {
	fixed := []span{{Name: "inject", Start: 0, End: 4}, {Name: "recover", Start: 6, End: 9}}
	incident := []span{{Name: "inject", Start: 0, End: 4}, {Name: "recover", Start: 6, End: 13.8}}
	assert.Equal(t, []span{{Name: "inject", Start: 0, End: 4}, {Name: "recover", Start: 6, End: 13.8}}, unionSpans(fixed, incident))
	assert.Equal(t, []span{{Name: "a", Start: 0, End: 5}}, unionSpans([]span{{Name: "a", Start: 0, End: 2}}, []span{{Name: "b", Start: 2, End: 5}}), "touching spans join")
	assert.Equal(t, incident, unionSpans(nil, incident))
	assert.Nil(t, unionSpans(nil, nil))
}

// A sample between two gaps is drawn as a dot: a polyline of one point
// draws nothing, and a peak sampled alone would vanish beside its mark.
func TestLoneSampleIsDrawn(t *testing.T) {
	nan := math.NaN()
	c := chart{Title: "m", Series: []series{{Name: "incident", Color: "#c00", X: []float64{0, 1, 2, 3, 4, 5}, Y: []float64{1, nan, 631, nan, 3, 4}}}}
	svg := string(c.svg())
	assert.Equal(t, 1, strings.Count(svg, "<polyline"), "the run of two samples")
	assert.Equal(t, 2, strings.Count(svg, `<circle class="point"`), "the two lone samples: %s", svg)
}

// Two budgets at about the same height, over the same phases, have their
// labels on rows of their own; the verdict table's head gives a bound in
// its chart's unit.
func TestBudgetLabelsDoNotOverlap(t *testing.T) {
	c := chart{Title: "m", Series: []series{{Name: "a", Color: "#c00", X: []float64{0, 10}, Y: []float64{0, 100}}},
		Budgets: []threshold{
			{Label: "budget ≤ 30", Color: "#333", Value: 30, Spans: []span{{Name: "inject", Start: 0, End: 10}}},
			{Label: "budget ≤ 29", Color: "#333", Value: 29, Spans: []span{{Name: "inject", Start: 0, End: 10}}},
		}}
	var ys []float64
	for _, m := range regexp.MustCompile(`class="budget-label" x="[0-9.]+" y="([0-9.]+)"`).FindAllStringSubmatch(string(c.svg()), -1) {
		y, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		ys = append(ys, y)
	}
	require.Len(t, ys, 2)
	assert.GreaterOrEqual(t, math.Abs(ys[0]-ys[1]), float64(labelRowH), "labels at y %v", ys)

	// At the plot's foot they move up, not under the x axis; the same
	// label at the same place is written once.
	c.Budgets = []threshold{
		{Label: "budget ≤ 0", Color: "#333", Value: 0, Spans: []span{{Name: "inject", Start: 0, End: 10}}},
		{Label: "budget ≤ 0 (incident)", Color: "#333", Value: 0, Spans: []span{{Name: "inject", Start: 0, End: 10}}},
		{Label: "budget ≤ 0", Color: "#333", Value: 0, Spans: []span{{Name: "inject", Start: 0, End: 10}}},
	}
	svg := string(c.svg())
	tick := regexp.MustCompile(`class="xtick" x="[0-9.]+" y="([0-9.]+)"`).FindStringSubmatch(svg)
	require.NotNil(t, tick, "an x tick")
	tickY, err := strconv.ParseFloat(tick[1], 64)
	require.NoError(t, err)
	ys = nil
	for _, m := range regexp.MustCompile(`class="budget-label" x="[0-9.]+" y="([0-9.]+)"`).FindAllStringSubmatch(svg, -1) {
		y, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		assert.LessOrEqual(t, y, tickY-15, "label inside the plot, above the x axis")
		ys = append(ys, y)
	}
	require.Len(t, ys, 2, "the repeated label is written once: %v", ys)
	assert.GreaterOrEqual(t, math.Abs(ys[0]-ys[1]), float64(labelRowH), "labels at y %v", ys)

	assert.Equal(t, "cgroup_peak_bytes ≤ 64 MiB over the whole run", budgetHead(probe.Limit("cgroup_peak_bytes", 64<<20)))
}

// labelBoxes returns the boxes of an SVG's labels of class, as svg()
// places them (text-anchor end: the box ends at x).
func labelBoxes(t *testing.T, svg, class string) []labelBox {
	t.Helper()
	var out []labelBox
	re := regexp.MustCompile(`<text class="` + class + `" x="([0-9.]+)" y="([0-9.]+)"[^>]*text-anchor="(start|end)">([^<]*)<`)
	for _, m := range re.FindAllStringSubmatch(svg, -1) {
		x, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		y, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err)
		w := labelCharWidth * float64(utf8.RuneCountInString(m[4]))
		b := labelBox{text: m[4], x1: x, x2: x + w, y: y}
		if m[3] == "end" {
			b.x1, b.x2 = x-w, x
		}
		out = append(out, b)
	}
	return out
}

// A budget over three spans (each arm's validate apart, say) is drawn
// three times and labelled once, at the end of its last span.
func TestBudgetLabelledOnce(t *testing.T) {
	c := chart{Title: "m", Series: []series{{Name: "a", Color: "#c00", X: []float64{0, 30}, Y: []float64{0, 10}}},
		Budgets: []threshold{{Label: "budget ≤ 0", Color: "#333", Value: 0, Spans: []span{
			{Name: "validate", Start: 2, End: 5}, {Name: "validate", Start: 12, End: 15}, {Name: "validate", Start: 22, End: 25}}}}}
	svg := string(c.svg())
	lines := regexp.MustCompile(`<line class="budget" x1="[0-9.]+" y1="[0-9.]+" x2="([0-9.]+)"`).FindAllStringSubmatch(svg, -1)
	require.Len(t, lines, 3, "one line per span")
	labels := labelBoxes(t, svg, "budget-label")
	require.Len(t, labels, 1, "one label: %s", svg)
	end, err := strconv.ParseFloat(lines[2][1], 64)
	require.NoError(t, err)
	assert.InDelta(t, end-2, labels[0].x2, 0.11, "at the end of the last span")
}

// A violation's label does not cover a budget's label: the incident's
// peak near the end of the plot, just above the bound whose label ends
// there.
func TestMarkLabelAvoidsBudgetLabel(t *testing.T) {
	c := chart{Title: "m", Series: []series{{Name: "incident", Color: "#c00", X: []float64{0, 9, 10}, Y: []float64{0, 105, 0}}},
		Budgets: []threshold{{Label: "budget ≤ 100", Color: "#333", Value: 100, Spans: []span{{Name: "inject", Start: 0, End: 10}}}},
		Marks:   []mark{{X: 9, Y: 105, Label: "incident 105", Color: "#c00"}}}
	svg := string(c.svg())
	budget := labelBoxes(t, svg, "budget-label")
	marks := labelBoxes(t, svg, "mark-label")
	require.Len(t, budget, 1)
	require.Len(t, marks, 1)
	b, m := budget[0], marks[0]
	overlap := math.Abs(b.y-m.y) < labelRowH && m.x1 < b.x2 && b.x1 < m.x2
	assert.False(t, overlap, "budget label %+v, mark label %+v", b, m)
}

// Two arms with the same figures (fixed and regression both 0) are both
// seen: the one drawn first is wider, its colour showing at both edges of
// the one over it.
func TestIdenticalSeriesBothShow(t *testing.T) {
	xs, ys := []float64{0, 1, 2}, []float64{0, 0, 0}
	c := chart{Title: "m", Series: []series{{Name: "fixed", Color: "#00c", X: xs, Y: ys}, {Name: "regression", Color: "#f80", X: xs, Y: ys}}}
	svg := string(c.svg())
	ws := regexp.MustCompile(`<polyline fill="none" stroke="(#[0-9a-f]+)" stroke-width="([0-9.]+)"`).FindAllStringSubmatch(svg, -1)
	require.Len(t, ws, 2)
	assert.Equal(t, "#00c", ws[0][1], "fixed drawn first")
	w0, err := strconv.ParseFloat(ws[0][2], 64)
	require.NoError(t, err)
	w1, err := strconv.ParseFloat(ws[1][2], 64)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, w0-w1, 1.0, "the first at least a pixel wider than the one over it")
}

func TestReadableDurations(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1658676844 * time.Nanosecond: "1.66s",
		571967299 * time.Nanosecond:  "572ms",
		5843347 * time.Nanosecond:    "5.84ms",
		776 * time.Nanosecond:        "776ns",
		0:                            "0s",
		2 * time.Hour:                "2h0m0s",
	} {
		assert.Equal(t, want, readable(d), "%d ns", int64(d))
	}
}

// A budget whose figure is missing in every sample of its phases has no
// peak: 0 and not judged, never -Inf, which index.json can't hold.
func TestPeakOverAllMissing(t *testing.T) {
	t0 := time.Unix(0, 0)
	tl := &probe.Timeline{Start: t0, Metrics: []string{"x"}, Samples: []probe.Sample{
		{At: t0, Phase: "inject", Values: []float64{math.NaN()}},
		{At: t0.Add(time.Second), Phase: "recover", Values: []float64{7}},
	}}
	peak, judged := peakOver(tl, probe.Limit("x", 1, "inject"))
	assert.False(t, judged)
	assert.Zero(t, peak)
	_, err := json.Marshal(BudgetResult{Peak: peak})
	require.NoError(t, err)
	peak, judged = peakOver(tl, probe.Limit("x", 1))
	assert.True(t, judged)
	assert.InDelta(t, 7.0, peak, 0)
}
