package deathspiral

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/proc"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/suites/internal/suite"
)

// spiral reads each link at the first sample that shows it, and a chain
// that stops short reads no further: a restart that dials finds no
// "can't dial" link. No engine is needed.
func TestSpiralReadsTheChain(t *testing.T) {
	rows := []row{
		{0, 0, 40, 28_000, 8, 0.002, 0, 1},      // baseline
		{0, 0, 20_000, 5_000, 60, 0.09, 0, 1},   // inject: threads up, GC up
		{900, 900, 28_000, 0, 3_000, 0.1, 0, 1}, // ports exhausted
		{0, 0, 28_100, 0, 0, 0, 1, 1},           // killed
		{0, 0, 28_100, 0, 9, 0.001, 1, 2},       // restarted
		{0, 14, 28_100, 0, 9, 0.001, 1, 2},      // its dials find no port
		{0, 14, 1_000, 27_000, 9, 0.001, 1, 2},  // TIME_WAIT expired
	}
	res := timeline(t, rows[:1], rows[1:], nil)
	chain := res.Events
	var names []string
	for _, e := range chain {
		names = append(names, e.Name)
	}
	assert.Equal(t, []string{linkThreads, linkGC, linkPorts, linkOOM, linkRestart, linkRedial}, names, "listed as they happened")
	e, _ := find(chain, linkRedial)
	assert.Contains(t, e.Detail, "child 2's 14 memcached dials found no free port; 28100 ports held by TIME_WAIT sockets, 0 free")
	e, _ = find(chain, linkThreads)
	assert.Contains(t, e.Detail, "60 OS threads, 7.5x the baseline's 8")
	e, _ = find(chain, linkPorts)
	assert.Contains(t, e.Detail, "0 ports free toward memcached, 28000 held by TIME_WAIT sockets; 900 lookups failed")

	// The restarted child dials: the chain ends at the restart.
	rows[5].dialErrs = 0
	rows[6].dialErrs = 0
	res = timeline(t, rows[:1], rows[1:], nil)
	_, ok := find(res.Events, linkRedial)
	assert.False(t, ok, "no failed dial after the restart: %v", res.Events)
}

// The kernel's record alone shows exhaustion (the starved child's counter
// never read), and the supervisor's record alone shows the restart that
// can't dial (its health check's answer): a chain is read whole from them.
func TestSpiralReadsTheKernelAndTheSupervisor(t *testing.T) {
	nan := math.NaN()
	rows := []row{
		{0, 0, 40, 28_000, 8, 0.002, 0, 1},        // baseline
		{nan, nan, 20_000, 3_000, 60, 0.09, 0, 1}, // inject, the child starved
		{nan, nan, 26_000, 0, 3_000, nan, 0, 1},   // no port free: exhausted
		{nan, nan, 28_100, 0, nan, nan, 1, 1},     // killed
		{nan, nan, 28_100, 0, 9, nan, 1, 2},       // restarted, starved too
		{nan, nan, nan, nan, 9, nan, 1, 2},        // its health check fails, the census late
		{nan, nan, 28_100, 0, 9, nan, 1, 3},       // killed as unhealthy, restarted
	}
	res := timeline(t, rows[:1], rows[1:], nil)
	_, ok := find(res.Events, linkRedial)
	require.False(t, ok, "no record of a failed dial yet: %v", res.Events)
	e, ok := find(res.Events, linkPorts)
	require.True(t, ok, "exhaustion read from the free ports: %v", res.Events)
	assert.Contains(t, e.Detail, "0 ports free toward memcached, 26000 held by TIME_WAIT sockets; ? lookups failed")

	failed := res.Timeline.Samples[6].At
	exits := []proc.ChildExit{
		{Start: 1, OOMKilled: true, LastHealthAt: res.Timeline.Samples[1].At, LastHealth: "503: memcached: dial tcp 127.0.0.1:11211: connect: " + noPort}, // before the kill: not the restart's
		{Start: 2, Unhealthy: true, LastHealthAt: failed, LastHealth: "503: memcached: dial tcp 127.0.0.1:11211: connect: " + noPort},
	}
	res.Events = spiral(res, records{exits: exits, lines: &portLines{}})
	e, ok = find(res.Events, linkRedial)
	require.True(t, ok, "the failed restart read from the supervisor: %v", res.Events)
	assert.Equal(t, failed, e.At)
	assert.Contains(t, e.Detail, "child 2's health check could not dial memcached")
	assert.Contains(t, e.Detail, "28100 ports held by TIME_WAIT sockets, 0 free")

	// A health check that failed for another reason is no failed dial.
	exits[1].LastHealth = "503: cql store: timeout"
	res.Events = spiral(res, records{exits: exits, lines: &portLines{}})
	_, ok = find(res.Events, linkRedial)
	assert.False(t, ok, "a store failure is not a failed dial: %v", res.Events)
}

// row is one sample's figures.
type row struct{ portErrs, dialErrs, tw, free, threads, gc, kills, starts float64 }

// timeline samples rows, baseline then inject, into a Result as the runner
// leaves it, Events read by spiral with exits.
func timeline(t *testing.T, baseline, inject []row, exits []proc.ChildExit) *scenario.Result {
	t.Helper()
	var cur row
	src := func(name string, v *float64) probe.Source { return probe.Func(name, func() float64 { return *v }) }
	s, err := probe.NewSampler(time.Second,
		src(scenario.MetricPortErrors, &cur.portErrs), src(scenario.MetricDialPortErrors, &cur.dialErrs),
		src(metricTimeWait, &cur.tw), src(metricPortsFree, &cur.free), src(probe.MetricThreads, &cur.threads), src(probe.MetricGCCPUFraction, &cur.gc),
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
	res.Events = spiral(res, records{exits: exits, lines: &portLines{}})
	return res
}

// The service's own log lines, as the sink's reader got them, show both
// exhaustion and the restart that can't dial, at the times they were
// logged, when nothing else read them.
func TestSpiralReadsTheServicesLogLines(t *testing.T) {
	nan := math.NaN()
	rows := []row{
		{0, 0, 40, 28_000, 8, 0.002, 0, 1},        // baseline
		{nan, nan, 20_000, 3_000, 60, 0.09, 0, 1}, // inject, the child starved
		{nan, nan, 26_000, 100, 3_000, nan, 0, 1}, // the census a little behind
		{nan, nan, 28_100, 0, nan, nan, 1, 1},     // killed
		{nan, nan, 28_100, 0, 9, nan, 1, 2},       // restarted
		{nan, nan, 28_100, 0, 9, nan, 1, 2},       // its dials fail, unread
		{nan, nan, 20_000, 8_000, 9, nan, 1, 2},   // TIME_WAIT expired
	}
	res := timeline(t, rows[:1], rows[1:], nil)
	s := res.Timeline.Samples
	lines := &portLines{}
	logLine := func(at time.Time, kind, err string) string {
		return fmt.Sprintf(`{"time":%q,"level":"ERROR","msg":"failed to get post cache item","kind":%q,"error":%q}`+"\n", at.Format(time.RFC3339Nano), kind, err)
	}
	exhausted := s[2].At.Add(-time.Nanosecond) // before the census saw it
	redialled := s[5].At
	text := logLine(s[1].At, "connect_timeout", "memcache: connect timeout to 127.0.0.1:11211") +
		logLine(exhausted, "addr_not_avail", "dial tcp 127.0.0.1:11211: connect: "+noPort) +
		logLine(redialled, "addr_not_avail", "dial tcp 127.0.0.1:11211: connect: "+noPort)
	for len(text) > 0 { // in pieces, lines split across writes
		n := min(37, len(text))
		_, err := lines.Write([]byte(text[:n]))
		require.NoError(t, err)
		text = text[n:]
	}
	assert.Equal(t, 2, lines.Count(), "the time-out is no port error")

	res.Events = spiral(res, records{lines: lines})
	e, ok := find(res.Events, linkPorts)
	require.True(t, ok, "%v", res.Events)
	assert.True(t, exhausted.Equal(e.At), "the logged time %v, before the census's sample; got %v", exhausted, e.At)
	assert.Contains(t, e.Detail, "the service logged its first dial that found no port (2 such lines in the run)")
	e, ok = find(res.Events, linkRedial)
	require.True(t, ok, "%v", res.Events)
	assert.True(t, redialled.Equal(e.At), "the logged time %v; got %v", redialled, e.At)
	assert.Contains(t, e.Detail, "the restarted service logged a dial that found no port (1 such lines after the restart); 28100 ports held by TIME_WAIT sockets, 0 free")
}

// The sink is overwhelmed once no port is free; an arm whose ports are not
// running out meets it at latest; one nearly out waits for exhaustion
// until last. No engine is needed: the ports are set by hand.
func TestStallOnExhaustion(t *testing.T) {
	const latest, last = 400 * time.Millisecond, 1200 * time.Millisecond
	for _, tc := range []struct {
		name     string
		free     []int // set in turn, 100 ms apart
		min, max time.Duration
	}{
		{"exhausted early", []int{5_000, 0}, 90 * time.Millisecond, latest},
		{"not running out", []int{28_000}, latest, latest + 250*time.Millisecond},
		{"nearly out waits", []int{28_000, 5_000, 1_000}, last, last + 250*time.Millisecond},
		{"nearly out, then exhausted", []int{28_000, 5_000, 1_000, 1_000, 1_000, 1_000, 1_000, 0}, latest + 250*time.Millisecond, last},
		{"no reading", nil, latest, latest + 250*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink, err := faults.NewSink(faults.SinkConfig{DrainBytesPerSec: 1 << 10, PipeBytes: 4096})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, sink.Close()) })
			ports := &portsSource{}
			f := &stallOnExhaustion{sink: sink, ports: ports, latest: latest, last: last, nearlyOut: 1_411}
			began := time.Now()
			require.NoError(t, f.Inject(t.Context()))
			var at time.Duration
			for i := 0; at == 0 && time.Since(began) < 2*last; i++ {
				if i%10 == 0 && i/10 < len(tc.free) {
					ports.free.Store(int64(tc.free[i/10]) + 1)
				}
				if f.Overwhelmed() {
					at = time.Since(began)
				}
				time.Sleep(10 * time.Millisecond)
			}
			require.NotZero(t, at, "the sink was overwhelmed")
			assert.GreaterOrEqual(t, at, tc.min)
			assert.LessOrEqual(t, at, tc.max)
			require.NoError(t, f.Recover(t.Context()))
		})
	}
}
