package probe

import (
	"math"
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// Columns of the runtime/metrics samples RuntimeReader reads.
const (
	rmNotInGo = iota
	rmRuntimeThreads
	rmHeapObjects
	rmHeapGoal
	rmMappedTotal
	rmGCCycles
	rmGCPauses
	rmCPUGCTotal
	rmCPUTotal
	runtimeMetricsLen
)

// runtimeMetricNames are the runtime/metrics names read, by column (see the
// runtime/metrics package documentation for each one's meaning).
var runtimeMetricNames = [runtimeMetricsLen]string{
	rmNotInGo:        "/sched/goroutines/not-in-go:goroutines",
	rmRuntimeThreads: "/sched/threads/total:threads",
	rmHeapObjects:    "/memory/classes/heap/objects:bytes",
	rmHeapGoal:       "/gc/heap/goal:bytes",
	rmMappedTotal:    "/memory/classes/total:bytes",
	rmGCCycles:       "/gc/cycles/total:gc-cycles",
	rmGCPauses:       "/sched/pauses/total/gc:seconds",
	rmCPUGCTotal:     "/cpu/classes/gc/total:cpu-seconds",
	rmCPUTotal:       "/cpu/classes/total:cpu-seconds",
}

// PauseSummary describes the GC stop-the-world pauses that ended within an
// interval. Quantiles are the upper bounds of runtime/metrics histogram
// buckets, so they err high by at most one bucket: 4 buckets per power of
// two (runtime/histogram.go, timeHistSubBucketBits), at most 25%.
type PauseSummary struct {
	Count uint64        `json:"count"`
	P50   time.Duration `json:"p50"`
	P99   time.Duration `json:"p99"`
	Max   time.Duration `json:"max"`
}

// RuntimeStats are the Go runtime's figures for the calling process.
type RuntimeStats struct {
	// Goroutines is the number of live goroutines, as runtime.NumGoroutine
	// counts them (the runtime's own system goroutines excluded).
	Goroutines int `json:"goroutines"`
	// GoroutinesNotInGo approximates the goroutines in a system call or cgo
	// call, such as those blocked in write(2) to a stalled log sink.
	GoroutinesNotInGo int `json:"goroutines_not_in_go"`
	// RuntimeThreads is the runtime's own count of live threads it owns.
	RuntimeThreads int `json:"runtime_threads"`
	// HeapBytes is the memory occupied by heap objects, live or not yet swept.
	HeapBytes uint64 `json:"heap_bytes"`
	// HeapGoalBytes is the heap size the GC aims to finish the cycle under.
	HeapGoalBytes uint64 `json:"heap_goal_bytes"`
	// MappedBytes is all memory the runtime has mapped read-write.
	MappedBytes uint64 `json:"mapped_bytes"`
	// GCCycles counts completed GC cycles since the process started.
	GCCycles uint64 `json:"gc_cycles"`
	// GCPauses summarises the pauses since the previous Read.
	GCPauses PauseSummary `json:"gc_pauses"`
	// GCCPUFraction is the share of available CPU (GOMAXPROCS x wall time)
	// spent on GC, between the last two GC cycle ends observed since the
	// previous Read. The runtime accounts GC CPU time only when a cycle
	// ends, so an interval in which no cycle ended reports 0.
	GCCPUFraction float64 `json:"gc_cpu_fraction"`
	// Interval is the time since the previous Read (since the process
	// started, for the first one).
	Interval time.Duration `json:"interval"`
}

// RuntimeReader reads RuntimeStats, keeping what it needs to report GC pauses
// and GC CPU over the interval between two reads. The zero value is ready;
// the first Read covers the time since the process started. A RuntimeReader
// is safe for concurrent use.
type RuntimeReader struct {
	mu         sync.Mutex
	samples    []metrics.Sample
	prevPauses []uint64
	prevGC     float64
	prevTotal  float64
	prevAt     time.Time
}

var processStart = time.Now()

// Read returns the current figures. It costs one metrics.Read of nine metrics
// plus a pass over the pause histogram's buckets, 1-4 µs here
// (BenchmarkRuntimeRead); it does not stop the world.
func (r *RuntimeReader) Read() RuntimeStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.samples == nil {
		r.samples = make([]metrics.Sample, runtimeMetricsLen)
		for i, n := range runtimeMetricNames {
			r.samples[i].Name = n
		}
		r.prevAt = processStart
	}
	metrics.Read(r.samples)
	now := time.Now()
	st := RuntimeStats{
		Goroutines:        runtime.NumGoroutine(),
		GoroutinesNotInGo: int(uint64Of(r.samples[rmNotInGo])),
		RuntimeThreads:    int(uint64Of(r.samples[rmRuntimeThreads])),
		HeapBytes:         uint64Of(r.samples[rmHeapObjects]),
		HeapGoalBytes:     uint64Of(r.samples[rmHeapGoal]),
		MappedBytes:       uint64Of(r.samples[rmMappedTotal]),
		GCCycles:          uint64Of(r.samples[rmGCCycles]),
		Interval:          now.Sub(r.prevAt),
	}
	r.prevAt = now
	if r.samples[rmGCPauses].Value.Kind() == metrics.KindFloat64Histogram {
		h := r.samples[rmGCPauses].Value.Float64Histogram()
		st.GCPauses = summarise(h, r.prevPauses)
		if len(r.prevPauses) != len(h.Counts) {
			r.prevPauses = make([]uint64, len(h.Counts))
		}
		copy(r.prevPauses, h.Counts)
	}
	gc, total := float64Of(r.samples[rmCPUGCTotal]), float64Of(r.samples[rmCPUTotal])
	if dt := total - r.prevTotal; dt > 0 {
		st.GCCPUFraction = (gc - r.prevGC) / dt
	}
	r.prevGC, r.prevTotal = gc, total
	return st
}

func uint64Of(s metrics.Sample) uint64 {
	if s.Value.Kind() == metrics.KindUint64 {
		return s.Value.Uint64()
	}
	return 0
}

func float64Of(s metrics.Sample) float64 {
	if s.Value.Kind() == metrics.KindFloat64 {
		return s.Value.Float64()
	}
	return 0
}

// summarise turns the growth of a pause histogram since prev into quantiles.
func summarise(h *metrics.Float64Histogram, prev []uint64) PauseSummary {
	var total uint64
	delta := func(i int) uint64 {
		if i < len(prev) && prev[i] <= h.Counts[i] {
			return h.Counts[i] - prev[i]
		}
		return h.Counts[i]
	}
	for i := range h.Counts {
		total += delta(i)
	}
	ps := PauseSummary{Count: total}
	if total == 0 {
		return ps
	}
	upper := func(i int) time.Duration {
		b := h.Buckets[i+1]
		if math.IsInf(b, 1) {
			b = h.Buckets[i]
		}
		return time.Duration(b * float64(time.Second))
	}
	p50, p99 := (total+1)/2, uint64(math.Ceil(0.99*float64(total)))
	var cum uint64
	for i := range h.Counts {
		d := delta(i)
		if d == 0 {
			continue
		}
		cum += d
		if ps.P50 == 0 && cum >= p50 {
			ps.P50 = upper(i)
		}
		if ps.P99 == 0 && cum >= p99 {
			ps.P99 = upper(i)
		}
		ps.Max = upper(i)
	}
	return ps
}
