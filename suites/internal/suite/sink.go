package suite

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/target"
)

// The figures of a slow log sink (faults.Sink), for the suites that give
// one to the service under test (SinkProbes).
const (
	// MetricSinkBlocked is the writers blocked in the sink: in-process,
	// its writes started and not returned (faults.SinkStats.InFlight);
	// for a child, its threads in write(2) on its stderr, the sink.
	MetricSinkBlocked = "sink_blocked_writers"
	// MetricSinkThreads is the OS threads in write(2) on the sink's pipe,
	// from /proc/PID/task/*/syscall: the kernel's own evidence that each
	// blocked writer holds a thread.
	MetricSinkThreads = "sink_threads_in_write"
	// MetricSinkBacklog is the bytes in the pipe not yet drained.
	MetricSinkBacklog = "sink_backlog_bytes"
)

// SinkProbes reads the sink's figures into the timeline: for the bundled
// data plane in-process, its writers inside the sink; for a child target,
// whose stderr is the sink, its threads in write(2) on fd 2, which are its
// blocked writers (every line its own write(2), no lock).
func SinkProbes(sink *faults.Sink) func(scenario.Harness) []probe.Source {
	return func(h scenario.Harness) []probe.Source {
		backlog := probe.Func(MetricSinkBacklog, func() float64 {
			n, err := sink.Buffered()
			if err != nil {
				return math.NaN()
			}
			return float64(n)
		})
		if h.Target != nil && h.Target.PID() != target.Self {
			return []probe.Source{&threadsInWriteSource{sink: sink, child: h.Target}, backlog}
		}
		return []probe.Source{
			probe.Func(MetricSinkBlocked, func() float64 { return float64(sink.Stats().InFlight) }),
			&threadsInWriteSource{sink: sink},
			backlog,
		}
	}
}

// threadsInWriteEvery is how often threadsInWriteSource walks the
// process's threads while writers may be blocked: the walk reads one
// procfs file per thread, 0.2-0.6 ms each on this busy 2-core machine
// (100-400 ms with 600 threads), too much for every 100 ms sample.
const threadsInWriteEvery = time.Second

// pipeRoomForALine is how far below its capacity the pipe's contents must
// stay for no writer to be blocked: Linux keeps a pipe in 4 KiB pages,
// appends a line to the last page while it fits and else takes a free page,
// and the drain frees a page once it has read all of it. With at most two
// pages' worth of room left, the first and last page may be partly used
// and every page taken: a writer may block.
const pipeRoomForALine = 2 * 4096

// threadsInWriteSource reads MetricSinkThreads (and, for a child,
// MetricSinkBlocked, the same walk): 0 at no cost while no writer can be
// blocked (none inside the sink in-process; the pipe with room for a whole
// line for a child), else the kernel's count at most once per
// threadsInWriteEvery, and missing (NaN, which budgets skip) in between.
type threadsInWriteSource struct {
	sink  *faults.Sink
	child target.Target // nil: this process's writers

	mu   sync.Mutex // Sampler.Sample may run beside Sampler.Run
	last time.Time  // of the last walk
}

func (s *threadsInWriteSource) Metrics() []string {
	if s.child != nil {
		return []string{MetricSinkThreads, MetricSinkBlocked}
	}
	return []string{MetricSinkThreads}
}

func (s *threadsInWriteSource) Read(_ context.Context, dst []float64) error {
	idle, err := s.idle()
	if err != nil {
		return err
	}
	if idle {
		clear(dst)
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.last) < threadsInWriteEvery {
		for i := range dst {
			dst[i] = math.NaN()
		}
		return nil
	}
	s.last = time.Now()
	var n int
	if s.child == nil {
		n, err = s.sink.ThreadsInWrite()
	} else if pid := s.child.PID(); pid > 0 {
		n, err = faults.ThreadsInWriteOf(pid, 2)
	}
	if err != nil {
		return err
	}
	for i := range dst {
		dst[i] = float64(n)
	}
	return nil
}

// idle tells that no writer can be blocked on the pipe right now.
func (s *threadsInWriteSource) idle() (bool, error) {
	if s.child == nil {
		return s.sink.Stats().InFlight == 0, nil
	}
	n, err := s.sink.Buffered()
	return n <= s.sink.PipeBytes()-pipeRoomForALine, err
}
