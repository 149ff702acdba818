package probe_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/probe"
)

const testInterval = 5 * time.Millisecond

// runSampler runs s in an errgroup until stop is called, which returns Run's
// error.
func runSampler(t *testing.T, s *probe.Sampler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var g errgroup.Group
	g.Go(func() error { return s.Run(ctx) })
	stop = func() error {
		cancel()
		return g.Wait()
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// waitSamples polls until the sampler has at least n samples.
func waitSamples(t *testing.T, s *probe.Sampler, n int) {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for len(s.Timeline().Samples) < n {
		require.False(t, time.Now().After(deadline), "sampler took fewer than %d samples", n)
		time.Sleep(testInterval)
	}
}

// A custom source (a load generator's counter) and a phase per step: every
// sample carries its phase, and the values follow the source.
func TestSamplerRecordsSourcesAndPhases(t *testing.T) {
	var level atomic.Int64
	s, err := probe.NewSampler(testInterval, probe.Func("load", func() float64 { return float64(level.Load()) }))
	require.NoError(t, err)
	stop := runSampler(t, s)

	for i, phase := range []string{"baseline", "inject", "recover"} {
		level.Store(int64(10 * (i + 1))) // before the mark: every sample of the phase sees it
		s.Mark(phase)
		require.NoError(t, s.Sample(t.Context()))
		waitSamples(t, s, 3*(i+1)+1)
	}
	require.NoError(t, stop())

	tl := s.Timeline()
	assert.Equal(t, []string{"load"}, tl.Metrics)
	require.Len(t, tl.Phases, 3)
	assert.Equal(t, tl.Phases[0].End, tl.Phases[1].Start)
	assert.True(t, tl.Phases[2].End.IsZero(), "last phase still open")
	seen := map[string]bool{}
	for i, smp := range tl.Samples {
		if i > 0 {
			assert.False(t, smp.At.Before(tl.Samples[i-1].At), "samples in time order")
		}
		seen[smp.Phase] = true
		if smp.Phase == "recover" {
			assert.InDelta(t, 30.0, smp.Values[0], 0)
		}
	}
	assert.True(t, seen["baseline"] && seen["inject"] && seen["recover"], "phases seen: %v", seen)
	cost := tl.Cost()
	assert.Equal(t, len(tl.Samples), cost.Samples)
	assert.Positive(t, cost.Max)
}

// A failing source leaves NaN in its own columns only, and Run names it.
func TestSamplerReportsFailingSource(t *testing.T) {
	boom := errors.New("load generator gone")
	s, err := probe.NewSampler(testInterval,
		probe.Func("ok", func() float64 { return 1 }),
		probe.FuncErr("flaky", func(context.Context) (float64, error) { return 0, boom }),
	)
	require.NoError(t, err)
	stop := runSampler(t, s)
	waitSamples(t, s, 3)
	err = stop()
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, "source flaky failed")

	tl := s.Timeline()
	for _, smp := range tl.Samples {
		assert.InDelta(t, 1.0, smp.Values[0], 0)
		assert.True(t, math.IsNaN(smp.Values[1]))
	}
	assert.Len(t, tl.Check(probe.Limit("flaky", 10)), 1, "a budget on a dead source can't pass")
}

func TestNewSamplerRejectsBadSetup(t *testing.T) {
	one := func() float64 { return 1 }
	_, err := probe.NewSampler(testInterval, probe.Func("x", one), probe.Func("x", one))
	require.ErrorContains(t, err, `metric "x" named twice`)
	_, err = probe.NewSampler(0, probe.Func("x", one))
	require.ErrorContains(t, err, "not positive")
	_, err = probe.NewSampler(testInterval, probe.NewProcessSource(0), probe.Prefix("child_", probe.NewProcessSource(0)))
	require.NoError(t, err, "Prefix separates two sources of a kind")

	s, err := probe.NewSampler(testInterval, probe.Func("x", one))
	require.NoError(t, err)
	stop := runSampler(t, s)
	waitSamples(t, s, 1)
	require.ErrorContains(t, s.Run(t.Context()), "already run")
	require.NoError(t, stop())
}

// The built-in sources together: process, runtime, sockets by state and a
// custom TIME_WAIT count toward one port, as a scenario would register them.
func TestSamplerBuiltInSources(t *testing.T) {
	srv := startServer(t, "tcp4", "127.0.0.1")
	require.NoError(t, srv.makeTimeWait(t.Context(), 3))
	waitCounts(t, probe.Census{}, probe.Filter{RemotePort: srv.port()}, map[probe.State]int{probe.TimeWait: 3})

	census := probe.Census{}
	s, err := probe.NewSampler(testInterval,
		probe.NewProcessSource(0),
		probe.NewRuntimeSource(),
		probe.NewSocketSource("timewait_test", census,
			probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}}),
		probe.NewSocketStatesSource("sockets", census, probe.Filter{RemotePort: srv.port()}),
		probe.NewHeadroomSource("headroom_test", census, srv.addr),
	)
	require.NoError(t, err)
	require.NoError(t, s.Sample(t.Context()))
	tl := s.Timeline()
	require.Len(t, tl.Samples, 1)
	v := func(m string) float64 {
		t.Helper()
		i := tl.Index(m)
		require.GreaterOrEqual(t, i, 0, "metric %s", m)
		return tl.Samples[0].Values[i]
	}
	assert.GreaterOrEqual(t, v(probe.MetricThreads), 2.0)
	assert.Positive(t, v(probe.MetricFDs))
	assert.Positive(t, v(probe.MetricRSS))
	assert.Positive(t, v(probe.MetricGoroutines))
	assert.Positive(t, v(probe.MetricHeap))
	assert.InDelta(t, 3.0, v("timewait_test"), 0)
	assert.InDelta(t, 3.0, v(probe.StateMetric("sockets", probe.TimeWait)), 0)
	assert.InDelta(t, 0.0, v("sockets_estab"), 0)
	r, err := probe.EphemeralRange()
	require.NoError(t, err)
	assert.LessOrEqual(t, v("headroom_test"), float64(r.Size()-3))
	assert.Positive(t, tl.Samples[0].Cost)
}

func TestTimelineJSONRoundTrip(t *testing.T) {
	start := time.Date(2026, 4, 6, 12, 0, 0, 0, time.UTC)
	tl := &probe.Timeline{
		Start:    start,
		Interval: 100 * time.Millisecond,
		Metrics:  []string{"threads", "timewait_memcached"},
		Phases: []probe.Phase{
			{Name: "baseline", Start: start, End: start.Add(time.Second)},
			{Name: "inject", Start: start.Add(time.Second)},
		},
		Samples: []probe.Sample{
			{At: start.Add(100 * time.Millisecond), Phase: "baseline", Cost: 80 * time.Microsecond, Values: []float64{150, 3}},
			{At: start.Add(1500 * time.Millisecond), Phase: "inject", Cost: 1200 * time.Microsecond, Values: []float64{1500, math.NaN()}},
		},
	}
	b, err := json.Marshal(tl)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"values":[1500,null]`)
	assert.Contains(t, string(b), `"end_seconds":null`)
	assert.Contains(t, string(b), `"metrics":["threads","timewait_memcached"]`)

	var back probe.Timeline
	require.NoError(t, json.Unmarshal(b, &back))
	assert.True(t, back.Start.Equal(start))
	assert.Equal(t, tl.Interval, back.Interval)
	assert.Equal(t, tl.Metrics, back.Metrics)
	require.Len(t, back.Phases, 2)
	assert.True(t, back.Phases[0].End.Equal(start.Add(time.Second)))
	assert.True(t, back.Phases[1].End.IsZero())
	require.Len(t, back.Samples, 2)
	assert.True(t, back.Samples[1].At.Equal(start.Add(1500*time.Millisecond)))
	assert.Equal(t, "inject", back.Samples[1].Phase)
	assert.Equal(t, 1200*time.Microsecond, back.Samples[1].Cost)
	assert.InDelta(t, 1500.0, back.Samples[1].Values[0], 0)
	assert.True(t, math.IsNaN(back.Samples[1].Values[1]))

	require.ErrorContains(t, json.Unmarshal([]byte(`{"metrics":["a"],"samples":[{"t":0,"values":[]}]}`), &back),
		"sample 0 has 0 values for 1 metrics")
}

// Each source's reads are timed apart: a slow source is named as where a
// sample's cost went, and the per-source costs survive JSON.
func TestSamplerCostsPerSource(t *testing.T) {
	const slow = 3 * time.Millisecond
	s, err := probe.NewSampler(testInterval,
		probe.Func("quick", func() float64 { return 1 }),
		probe.Func("slow", func() float64 { time.Sleep(slow); return 2 }))
	require.NoError(t, err)
	for range 4 {
		require.NoError(t, s.Sample(t.Context()))
	}
	tl := s.Timeline()
	require.Len(t, tl.Sources, 2)
	q, w := tl.Sources[0], tl.Sources[1]
	assert.Equal(t, []string{"quick"}, q.Metrics)
	assert.Equal(t, []string{"slow"}, w.Metrics)
	assert.Equal(t, 4, q.Reads)
	assert.Equal(t, 4, w.Reads)
	assert.GreaterOrEqual(t, w.Mean(), slow)
	assert.GreaterOrEqual(t, w.Max, w.Mean())
	assert.Less(t, q.Mean(), slow, "the quick source is not charged the slow one's time")
	for _, smp := range tl.Samples {
		assert.GreaterOrEqual(t, smp.Cost, slow, "a sample costs its sources' sum")
	}

	b, err := json.Marshal(tl)
	require.NoError(t, err)
	var back probe.Timeline
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, tl.Sources, back.Sources)
}

// Each phase's sampling cost and the longest wait between samples, in
// intervals: a sampler blind for 5 intervals in inject says so.
func TestTimelineCostByPhase(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	iv := 100 * time.Millisecond
	tl := &probe.Timeline{Start: t0, Interval: iv, Metrics: []string{"x"},
		Phases: []probe.Phase{{Name: "baseline", Start: t0}, {Name: "inject", Start: t0.Add(300 * time.Millisecond)}}}
	add := func(at time.Duration, phase string, cost time.Duration) {
		tl.Samples = append(tl.Samples, probe.Sample{At: t0.Add(at), Phase: phase, Cost: cost, Values: []float64{0}})
	}
	add(0, "baseline", time.Millisecond)
	add(100*time.Millisecond, "baseline", 2*time.Millisecond)
	add(200*time.Millisecond, "baseline", 3*time.Millisecond)
	add(300*time.Millisecond, "inject", 10*time.Millisecond)
	add(800*time.Millisecond, "inject", 40*time.Millisecond) // 5 intervals late
	got := tl.CostByPhase()
	require.Len(t, got, 2)
	assert.Equal(t, probe.PhaseCost{Phase: "baseline", Samples: 3, Median: 2 * time.Millisecond, P99: 3 * time.Millisecond, Max: 3 * time.Millisecond, Share: 0.02, MaxGap: 1, SamplerGap: 1}, got[0])
	assert.Equal(t, "inject", got[1].Phase)
	assert.InDelta(t, 5.0, got[1].MaxGap, 1e-9)
	assert.Equal(t, 10*time.Millisecond, got[1].Median)
	assert.Equal(t, 40*time.Millisecond, got[1].Max)
}
