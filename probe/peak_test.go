package probe_test

import (
	"context"
	"errors"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/probe"
)

// gauge is a reading the test sets, counting how often it is read; with
// fail set every reading fails, with block set every reading waits for its
// context to end (blocked counts those).
type gauge struct {
	v       atomic.Int64
	reads   atomic.Int64
	fail    atomic.Bool
	block   atomic.Bool
	blocked atomic.Int64
}

var errGaugeGone = errors.New("gauge gone")

func (g *gauge) read(ctx context.Context) (float64, error) {
	defer g.reads.Add(1)
	if g.block.Load() {
		g.blocked.Add(1)
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if g.fail.Load() {
		return 0, errGaugeGone
	}
	return float64(g.v.Load()), nil
}

func (g *gauge) plain() float64 { return float64(g.v.Load()) }

// waitReads returns once g has been read n more times than when it was
// called, or fails t after settleTimeout.
func (g *gauge) waitReads(t *testing.T, n int64) {
	t.Helper()
	want := g.reads.Load() + n
	deadline := time.Now().Add(settleTimeout)
	for g.reads.Load() < want {
		require.False(t, time.Now().After(deadline), "gauge read %d times, want %d", g.reads.Load(), want)
		time.Sleep(time.Millisecond)
	}
}

// startPeak returns a started Peak of g, stopped when t ends.
func startPeak(t *testing.T, g *gauge, interval time.Duration) *probe.Peak {
	t.Helper()
	p, err := probe.NewPeak("peak", interval, g.read)
	require.NoError(t, err)
	require.NoError(t, p.Start(t.Context()))
	t.Cleanup(p.Stop)
	return p
}

func readPeak(t *testing.T, p *probe.Peak) float64 {
	t.Helper()
	dst := []float64{math.NaN()}
	require.NoError(t, p.Read(t.Context(), dst))
	return dst[0]
}

// A burst that begins and ends between two samples taken 100 ms apart, as
// the scenario runner takes them (the burst lasts until the poller has read
// it twice, a few ms), is in the Peak's column of the second sample and in
// no sample of a plain read of the same gauge. The third sample shows the
// window started afresh.
func TestPeakCatchesBurstBetweenSamples(t *testing.T) {
	const interval = 100 * time.Millisecond
	g := &gauge{}
	p := startPeak(t, g, time.Millisecond)
	s, err := probe.NewSampler(interval, probe.Func("plain", g.plain), p)
	require.NoError(t, err)

	require.NoError(t, s.Sample(t.Context()))
	first := time.Now()
	time.Sleep(interval / 4)
	began := time.Now()
	g.v.Store(1_000)
	g.waitReads(t, 2) // no sample reads meanwhile: these are polls
	g.v.Store(0)
	lasted := time.Since(began)
	time.Sleep(time.Until(first.Add(interval)))
	require.NoError(t, s.Sample(t.Context()))
	require.NoError(t, s.Sample(t.Context()))

	tl := s.Timeline()
	t.Logf("burst lasted %v; samples %v apart", lasted, tl.Samples[1].At.Sub(tl.Samples[0].At))
	assert.Equal(t, []float64{0, 0, 0}, tl.Series("plain"), "a plain read misses the burst")
	assert.Equal(t, []float64{0, 1_000, 0}, tl.Series("peak"), "the poller catches it, then starts afresh")
}

// Read reports the reading it takes when that is the highest, polled or not,
// and starts each window empty.
func TestPeakReadIncludesTheCurrentReading(t *testing.T) {
	g := &gauge{}
	idle, err := probe.NewPeak("idle", time.Hour, g.read)
	require.NoError(t, err)
	g.v.Store(5)
	assert.InDelta(t, 5.0, readPeak(t, idle), 0, "not started: a plain read")
	g.v.Store(3)
	assert.InDelta(t, 3.0, readPeak(t, idle), 0, "the previous reading is not carried over")

	g.v.Store(7)
	before := g.reads.Load()
	p := startPeak(t, g, time.Hour) // polls once at Start, then not for an hour
	for g.reads.Load() == before {
		time.Sleep(time.Millisecond)
	}
	g.v.Store(2)
	assert.InDelta(t, 7.0, readPeak(t, p), 0, "the poll at Start")
	assert.InDelta(t, 2.0, readPeak(t, p), 0, "a new window")
	g.v.Store(4)
	assert.InDelta(t, 4.0, readPeak(t, p), 0, "the reading at Read")
}

// A failed poll makes the next Read fail, saying so with the poll's error;
// the window's peak is kept for the Read after.
func TestPeakSurfacesPollErrorsOnTheNextRead(t *testing.T) {
	g := &gauge{}
	p := startPeak(t, g, time.Millisecond)
	g.v.Store(9)
	g.waitReads(t, 2)
	g.v.Store(1)
	g.fail.Store(true)
	g.waitReads(t, 2)
	p.Stop() // no poll after this: the window is what the test made it
	g.fail.Store(false)

	dst := []float64{math.NaN()}
	err := p.Read(t.Context(), dst)
	require.ErrorIs(t, err, errGaugeGone)
	require.ErrorContains(t, err, "poll(s) failed since the previous read")
	assert.True(t, math.IsNaN(dst[0]), "a failed Read stores nothing")
	assert.InDelta(t, 9.0, readPeak(t, p), 0, "the peak before the failures is not lost")
	assert.InDelta(t, 1.0, readPeak(t, p), 0)

	g.fail.Store(true)
	require.ErrorIs(t, p.Read(t.Context(), dst), errGaugeGone, "the Read's own reading failing")
	g.fail.Store(false)

	nan, err := probe.NewPeak("nan", time.Hour, func(context.Context) (float64, error) { return math.NaN(), nil })
	require.NoError(t, err)
	require.ErrorContains(t, nan.Read(t.Context(), dst), "NaN")
}

// A Sampler records a Peak whose polls failed as missing for that sample
// only.
func TestSamplerRecordsPeakPollErrorAsMissing(t *testing.T) {
	g := &gauge{}
	p := startPeak(t, g, time.Millisecond)
	s, err := probe.NewSampler(time.Hour, p)
	require.NoError(t, err)
	g.fail.Store(true)
	g.waitReads(t, 1)
	p.Stop()
	g.fail.Store(false)
	g.v.Store(6)
	require.ErrorIs(t, s.Sample(t.Context()), errGaugeGone)
	require.NoError(t, s.Sample(t.Context()))
	series := s.Timeline().Series("peak")
	require.Len(t, series, 2)
	assert.True(t, math.IsNaN(series[0]))
	assert.InDelta(t, 6.0, series[1], 0)
}

// Start once, Stop any number of times (before Start too), and no
// goroutine is left, also when a reading was blocked at Stop or the
// context ended the polling first.
func TestPeakLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	g := &gauge{}

	never, err := probe.NewPeak("never", time.Millisecond, g.read)
	require.NoError(t, err)
	never.Stop()
	never.Stop()
	require.ErrorContains(t, never.Start(t.Context()), "stopped")

	ignore := goleak.IgnoreCurrent()
	p, err := probe.NewPeak("peak", time.Millisecond, g.read)
	require.NoError(t, err)
	require.NoError(t, p.Start(t.Context()))
	require.ErrorContains(t, p.Start(t.Context()), "already started")
	g.waitReads(t, 2)
	g.block.Store(true)
	for deadline := time.Now().Add(settleTimeout); g.blocked.Load() == 0; time.Sleep(time.Millisecond) {
		require.False(t, time.Now().After(deadline), "no poll blocked in the reading")
	}
	before := g.reads.Load() // the blocked reading counts when it returns
	p.Stop()
	assert.Equal(t, before+1, g.reads.Load(), "Stop cut the blocked reading short and waited for it")
	p.Stop()
	require.NoError(t, goleak.Find(ignore), "no poller left")
	g.block.Store(false)
	require.ErrorContains(t, p.Start(t.Context()), "stopped")

	ctx, cancel := context.WithCancel(t.Context())
	q, err := probe.NewPeak("ctx", time.Millisecond, g.read)
	require.NoError(t, err)
	ignore = goleak.IgnoreCurrent()
	require.NoError(t, q.Start(ctx))
	cancel()
	require.NoError(t, goleak.Find(ignore), "the context ended the polling")
	q.Stop()
}

func TestNewPeakRejectsBadSetup(t *testing.T) {
	read := func(context.Context) (float64, error) { return 0, nil }
	_, err := probe.NewPeak("", time.Millisecond, read)
	require.ErrorContains(t, err, "empty metric name")
	_, err = probe.NewPeak("x", 0, read)
	require.ErrorContains(t, err, "not positive")
	_, err = probe.NewPeak("x", time.Millisecond, nil)
	require.ErrorContains(t, err, "nil read")
}

// NewGoroutinesPeak catches goroutines that come and go between two Reads.
// The burst lasts 200 polls: only a stall of the whole process that long
// could hide it.
func TestGoroutinesPeakCatchesShortLivedGoroutines(t *testing.T) {
	const burst = 500
	p, err := probe.NewGoroutinesPeak(time.Millisecond)
	require.NoError(t, err)
	assert.Equal(t, []string{probe.MetricGoroutinesPeak}, p.Metrics())
	require.NoError(t, p.Start(t.Context()))
	t.Cleanup(p.Stop)
	readPeak(t, p) // the window starts now

	release := make(chan struct{})
	var wg sync.WaitGroup
	for range burst {
		wg.Go(func() { <-release })
	}
	time.Sleep(200 * time.Millisecond)
	close(release)
	wg.Wait()

	assert.Less(t, runtime.NumGoroutine(), burst, "the burst is over for a plain read")
	assert.GreaterOrEqual(t, readPeak(t, p), float64(burst+1), "the peak saw it, and this test's goroutine")
}
