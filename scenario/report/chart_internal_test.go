package report

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"

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
