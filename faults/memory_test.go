package faults_test

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/probe"
)

// memoryBallast is the tests' ballast: large against a test binary's few
// MiB of heap, small against the machine.
const memoryBallast = 256 << 20

// memoryChurn is how much garbage the GC comparison allocates, in 64 KiB
// objects: a data plane decoding responses.
const (
	memoryChurn      = 512 << 20
	memoryChurnChunk = 64 << 10
)

// keep holds the last few churn objects so the compiler can't drop them.
var keep [16][]byte

// churn allocates memoryChurn bytes of short-lived objects.
func churn() {
	for i := range memoryChurn / memoryChurnChunk {
		b := make([]byte, memoryChurnChunk)
		b[0] = byte(i)
		keep[i%len(keep)] = b
	}
}

// injectMemory injects cfg and recovers it when t ends.
func injectMemory(tb testing.TB, cfg faults.MemoryConfig) *faults.MemoryPressure {
	tb.Helper()
	f, err := faults.NewMemoryPressure(cfg)
	require.NoError(tb, err)
	require.NoError(tb, f.Inject(tb.Context()))
	tb.Cleanup(func() { require.NoError(tb, f.Recover(context.Background())) })
	return f
}

func rss(tb testing.TB) uint64 {
	tb.Helper()
	st, err := probe.ReadProcess(tb.Context(), 0)
	require.NoError(tb, err)
	return st.RSSBytes
}

func TestMemoryBallastRaisesHeapAndRSS(t *testing.T) {
	noLeaks(t)
	var rt probe.RuntimeReader
	debug.FreeOSMemory()
	heap0, rss0 := rt.Read().HeapBytes, rss(t)

	f := injectMemory(t, faults.MemoryConfig{BallastBytes: memoryBallast})
	require.ErrorIs(t, f.Inject(t.Context()), faults.ErrInjected)
	heap1, rss1 := rt.Read().HeapBytes, rss(t)
	t.Logf("ballast %d MiB: heap %d -> %d MiB, RSS %d -> %d MiB", memoryBallast>>20, heap0>>20, heap1>>20, rss0>>20, rss1>>20)
	assert.GreaterOrEqual(t, heap1, heap0+memoryBallast*9/10, "heap holds the ballast")
	assert.GreaterOrEqual(t, rss1, rss0+memoryBallast*9/10, "the ballast is touched: RSS rises")

	require.NoError(t, f.Recover(t.Context()))
	require.NoError(t, f.Recover(t.Context()), "Recover is idempotent")
	heap2, rss2 := rt.Read().HeapBytes, rss(t)
	t.Logf("after Recover: heap %d MiB, RSS %d MiB", heap2>>20, rss2>>20)
	assert.Less(t, heap2, heap0+memoryBallast/4, "the ballast is freed")
	if !raceEnabled {
		assert.Less(t, rss2, rss0+memoryBallast/4, "and returned to the OS")
	}
}

// TestMemoryTightLimitMultipliesGCWork: the same ballast and allocation
// cost many more GC cycles under a tight GOMEMLIMIT with GOGC off than with
// the default GOGC (where a ballast even spaces cycles out).
func TestMemoryTightLimitMultipliesGCWork(t *testing.T) {
	noLeaks(t)
	prevLimit := debug.SetMemoryLimit(-1)
	prevGC := debug.SetGCPercent(100)
	debug.SetGCPercent(prevGC)

	measure := func(cfg faults.MemoryConfig) uint64 {
		var rt probe.RuntimeReader
		f := injectMemory(t, cfg)
		limit := f.Limit()
		runtime.GC()
		before, cpu0 := rt.Read(), gcCPUSeconds()
		churn()
		after, cpu1 := rt.Read(), gcCPUSeconds()
		require.NoError(t, f.Recover(t.Context()))
		cycles := after.GCCycles - before.GCCycles
		t.Logf("%s (limit %d MiB): %d GC cycles, %.0f ms of GC CPU while allocating %d MiB",
			f.Name(), limit>>20, cycles, 1000*(cpu1-cpu0), memoryChurn>>20)
		return cycles
	}
	loose := measure(faults.MemoryConfig{BallastBytes: memoryBallast, GCPercent: 100})
	tight := measure(faults.TightMemory)

	assert.GreaterOrEqual(t, tight, 4*max(loose, 1), "a tight limit multiplies GC cycles")
	assert.Equal(t, prevLimit, debug.SetMemoryLimit(-1), "Recover restores GOMEMLIMIT")
	assert.Equal(t, prevGC, debug.SetGCPercent(prevGC), "Recover restores GOGC")
}

// gcCPUSeconds is the CPU time spent on GC so far, as of the last GC cycle
// (the runtime accounts it when a cycle ends).
func gcCPUSeconds() float64 {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64()
}

func TestMemoryLimitSetAndRestored(t *testing.T) {
	noLeaks(t)
	prevLimit := debug.SetMemoryLimit(-1)
	const limit = 1 << 30
	f := injectMemory(t, faults.MemoryConfig{MemoryLimit: limit, GCPercent: 50})
	assert.Equal(t, int64(limit), debug.SetMemoryLimit(-1))
	assert.Equal(t, int64(limit), f.Limit())
	assert.Equal(t, 50, debug.SetGCPercent(50))

	other, err := faults.NewMemoryPressure(faults.MemoryConfig{GCPercent: 10})
	require.NoError(t, err)
	require.Error(t, other.Inject(t.Context()), "one memory pressure fault at a time")

	require.NoError(t, f.Recover(t.Context()))
	assert.Equal(t, prevLimit, debug.SetMemoryLimit(-1))
	assert.Equal(t, int64(-1), f.Limit())
}

func TestMemoryRejectsOversizedBallast(t *testing.T) {
	for _, cfg := range []faults.MemoryConfig{
		{BallastBytes: faults.MaxBallastBytes + 1},
		{BallastBytes: -1},
		{MemoryLimit: -1},
		{LimitHeadroom: -1},
	} {
		_, err := faults.NewMemoryPressure(cfg)
		require.Error(t, err, "%+v", cfg)
	}
	_, err := faults.NewMemoryPressure(faults.MemoryConfig{BallastBytes: faults.MaxBallastBytes + 1})
	require.ErrorContains(t, err, "cap")
}
