package probe_test

import (
	"context"
	"encoding/json"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// gated is a source whose reads block until a value is sent on gate (or
// their context ends), counting the reads begun.
type gated struct {
	gate   chan float64
	begun  atomic.Int32
	ctxErr atomic.Value
}

func (g *gated) Metrics() []string { return []string{"gated"} }

func (g *gated) Read(ctx context.Context, dst []float64) error {
	g.begun.Add(1)
	select {
	case v := <-g.gate:
		dst[0] = v
		return nil
	case <-ctx.Done():
		g.ctxErr.Store(ctx.Err())
		return ctx.Err()
	}
}

func TestNewBoundedRefusesBadInput(t *testing.T) {
	_, err := probe.NewBounded(nil, time.Second)
	require.Error(t, err)
	_, err = probe.NewBounded(&gated{}, 0)
	require.ErrorContains(t, err, "wait 0s")
}

// A read slower than the wait leaves the sample on time with the figure
// missing; the next read takes that reading once it is in, without
// starting another.
func TestBoundedLateReadIsTakenNextTime(t *testing.T) {
	g := &gated{gate: make(chan float64)}
	b, err := probe.NewBounded(g, 20*time.Millisecond)
	require.NoError(t, err)
	defer b.Stop()

	dst := []float64{0}
	t0 := time.Now()
	err = b.Read(t.Context(), dst)
	took := time.Since(t0)
	require.ErrorIs(t, err, probe.ErrLate)
	assert.True(t, math.IsNaN(dst[0]), "missing, not 0")
	assert.Less(t, took, time.Second, "returned at its wait, not with the read")

	g.gate <- 42 // the read in progress finishes
	require.NoError(t, b.Read(t.Context(), dst))
	assert.InDelta(t, 42.0, dst[0], 0)
	assert.Equal(t, int32(1), g.begun.Load(), "the late read's reading, not a second read")

	// A read in time is a plain read.
	go func() { g.gate <- 7 }()
	require.NoError(t, b.Read(t.Context(), dst))
	assert.InDelta(t, 7.0, dst[0], 0)
	assert.Equal(t, int32(2), g.begun.Load())
}

// A late read is counted late, not failed: the sampler goes on without
// an error and the timeline says how many samples missed the figure.
func TestSamplerCountsLateReads(t *testing.T) {
	g := &gated{gate: make(chan float64)}
	b, err := probe.NewBounded(g, 10*time.Millisecond)
	require.NoError(t, err)
	defer b.Stop()
	s, err := probe.NewSampler(time.Hour, probe.Func("plain", func() float64 { return 1 }), b)
	require.NoError(t, err)
	require.NoError(t, s.Sample(t.Context()), "late is not a failure")
	g.gate <- 3
	require.NoError(t, s.Sample(t.Context()))

	tl := s.Timeline()
	require.Len(t, tl.Samples, 2)
	assert.True(t, math.IsNaN(tl.Samples[0].Values[1]), "first sample: the figure missing")
	assert.InDelta(t, 1.0, tl.Samples[0].Values[0], 0, "the other sources read")
	assert.InDelta(t, 3.0, tl.Samples[1].Values[1], 0)
	assert.Equal(t, 1, tl.Sources[1].Late)
	assert.Equal(t, 0, tl.Sources[0].Late)
	assert.Equal(t, []int{1}, tl.Samples[0].Late, "the sample names its late source")
	assert.Empty(t, tl.Samples[1].Late)

	// timeline.json keeps it.
	raw, err := json.Marshal(tl)
	require.NoError(t, err)
	var back probe.Timeline
	require.NoError(t, json.Unmarshal(raw, &back))
	assert.Equal(t, []int{1}, back.Samples[0].Late)
	assert.Equal(t, 1, back.Sources[1].Late)
}

// Stop cancels a read in progress and waits for it; later reads fail.
func TestBoundedStop(t *testing.T) {
	g := &gated{gate: make(chan float64)}
	b, err := probe.NewBounded(g, time.Millisecond)
	require.NoError(t, err)
	dst := []float64{0}
	require.ErrorIs(t, b.Read(t.Context(), dst), probe.ErrLate)
	b.Stop()
	got, _ := g.ctxErr.Load().(error)
	require.ErrorIs(t, got, context.Canceled, "the read in progress saw its context end")
	require.ErrorContains(t, b.Read(t.Context(), dst), "stopped")
	b.Stop() // again: nothing more
}

// A sample's own context ending does not cut a late read short: it goes
// on for the next sample.
func TestBoundedReadOutlivesItsSample(t *testing.T) {
	g := &gated{gate: make(chan float64)}
	b, err := probe.NewBounded(g, time.Hour)
	require.NoError(t, err)
	defer b.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	dst := []float64{0}
	require.ErrorIs(t, b.Read(ctx, dst), context.DeadlineExceeded)
	g.gate <- 5
	require.NoError(t, b.Read(t.Context(), dst))
	assert.InDelta(t, 5.0, dst[0], 0)
	assert.Nil(t, g.ctxErr.Load(), "the read was not canceled")
}

// In a sample, the bounded sources' waits run from the sample's start:
// two late sources cost the sample one wait, not two.
func TestBoundedWaitsEndTogetherInASample(t *testing.T) {
	const wait = 150 * time.Millisecond
	var sources []probe.Source
	for _, name := range []string{"a", "b"} {
		b, err := probe.NewBounded(probe.Func(name, func() float64 { time.Sleep(2 * wait); return 1 }), wait)
		require.NoError(t, err)
		defer b.Stop()
		sources = append(sources, b)
	}
	s, err := probe.NewSampler(time.Hour, sources...)
	require.NoError(t, err)
	require.NoError(t, s.Sample(t.Context()))
	tl := s.Timeline()
	assert.Less(t, tl.Samples[0].Cost, 2*wait-10*time.Millisecond, "one wait for both: %v", tl.Samples[0].Cost)
	assert.GreaterOrEqual(t, tl.Samples[0].Cost, wait-time.Millisecond)
	assert.Equal(t, 1, tl.Sources[0].Late)
	assert.Equal(t, 1, tl.Sources[1].Late)
}

// A fast source read after a slow one has used the sample's wait up is
// not called late: each read waits at least a little for its goroutine.
func TestBoundedFastAfterSlowIsNotLate(t *testing.T) {
	const wait = 30 * time.Millisecond
	slow, err := probe.NewBounded(probe.Func("slow", func() float64 { time.Sleep(3 * wait); return 1 }), wait)
	require.NoError(t, err)
	defer slow.Stop()
	fast, err := probe.NewBounded(probe.Func("fast", func() float64 { return 2 }), wait)
	require.NoError(t, err)
	defer fast.Stop()
	s, err := probe.NewSampler(time.Hour, slow, fast)
	require.NoError(t, err)
	for range 5 {
		require.NoError(t, s.Sample(t.Context()))
	}
	tl := s.Timeline()
	assert.Equal(t, 0, tl.Sources[1].Late, "the fast source: never late")
	assert.Positive(t, tl.Sources[0].Late)
	for _, smp := range tl.Samples {
		assert.NotContains(t, smp.Late, 1)
	}
}
