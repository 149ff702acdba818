package deathspiral

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/suites/internal/suite"
)

// spiral reads each link at the first sample that shows it, and a chain
// that stops short reads no further: a restart that dials finds no
// "can't dial" link. No engine is needed.
func TestSpiralReadsTheChain(t *testing.T) {
	rows := []row{
		{0, 0, 40, 8, 0.002, 0, 1},           // baseline
		{0, 0, 20_000, 60, 0.09, 0, 1},       // inject: threads up, GC up
		{900, 900, 28_000, 3_000, 0.1, 0, 1}, // ports exhausted
		{0, 0, 28_100, 0, 0, 1, 1},           // killed
		{0, 0, 28_100, 9, 0.001, 1, 2},       // restarted
		{0, 14, 28_100, 9, 0.001, 1, 2},      // its dials find no port
		{0, 14, 1_000, 9, 0.001, 1, 2},       // TIME_WAIT expired
	}
	res := timeline(t, rows[:1], rows[1:])
	chain := res.Events
	var names []string
	for _, e := range chain {
		names = append(names, e.Name)
	}
	assert.Equal(t, []string{linkThreads, linkGC, linkPorts, linkOOM, linkRestart, linkRedial}, sortedByTime(chain, names))
	e, _ := find(chain, linkRedial)
	assert.Contains(t, e.Detail, "child 2's 14 memcached dials found no free port; 28100 TIME_WAIT")
	e, _ = find(chain, linkThreads)
	assert.Contains(t, e.Detail, "60 OS threads, 7.5x the baseline's 8")

	// The restarted child dials: the chain ends at the restart.
	rows[5].dialErrs = 0
	rows[6].dialErrs = 0
	res = timeline(t, rows[:1], rows[1:])
	_, ok := find(res.Events, linkRedial)
	assert.False(t, ok, "no failed dial after the restart: %v", res.Events)
}

// row is one sample's figures.
type row struct{ portErrs, dialErrs, tw, threads, gc, kills, starts float64 }

// timeline samples rows, baseline then inject, into a Result as the runner
// leaves it, Events read by spiral.
func timeline(t *testing.T, baseline, inject []row) *scenario.Result {
	t.Helper()
	var cur row
	src := func(name string, v *float64) probe.Source { return probe.Func(name, func() float64 { return *v }) }
	s, err := probe.NewSampler(time.Second,
		src(scenario.MetricPortErrors, &cur.portErrs), src(scenario.MetricDialPortErrors, &cur.dialErrs),
		src(metricTimeWait, &cur.tw), src(probe.MetricThreads, &cur.threads), src(probe.MetricGCCPUFraction, &cur.gc),
		src(suite.MetricOOMKills, &cur.kills), src(metricStarts, &cur.starts))
	require.NoError(t, err)
	for _, ph := range []struct {
		name string
		rows []row
	}{{scenario.PhaseBaseline, baseline}, {scenario.PhaseInject, inject}} {
		s.Mark(ph.name)
		for _, r := range ph.rows {
			cur = r
			require.NoError(t, s.Sample(context.Background()))
		}
	}
	tl := s.Timeline()
	res := &scenario.Result{Started: tl.Start, Timeline: tl, Peaks: scenario.Peaks(tl)}
	res.Events = spiral(res)
	return res
}

// sortedByTime returns names in the order of their events' times (ties
// in the order found).
func sortedByTime(events []scenario.Event, names []string) []string {
	for i := 1; i < len(events); i++ {
		for j := i; j > 0 && events[j].At.Before(events[j-1].At); j-- {
			events[j], events[j-1] = events[j-1], events[j]
			names[j], names[j-1] = names[j-1], names[j]
		}
	}
	return names
}
