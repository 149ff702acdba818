package probe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Source is a named set of figures a Sampler reads at every tick. Sources let
// a scenario add its own figures (a TIME_WAIT count toward memcached,
// load-generator latency) beside the built-in ones.
type Source interface {
	// Metrics names the figures Read fills, in order. The Sampler calls it
	// once, when it is built; names must be unique across its sources.
	Metrics() []string
	// Read stores the current figures into dst, which has one element per
	// metric. On error the Sampler records every metric of the source as
	// missing (NaN) for this sample. Read must return promptly: a slow
	// source delays the whole sample.
	Read(ctx context.Context, dst []float64) error
}

// Names of the built-in metrics.
const (
	MetricThreads           = "threads"              // live OS threads, /proc/PID/status
	MetricThreadsBusy       = "threads_busy"         // OS threads not parked idle (ThreadsBusy)
	MetricFDs               = "fds"                  // open file descriptors
	MetricRSS               = "rss_bytes"            // resident set size
	MetricGoroutines        = "goroutines"           // live goroutines
	MetricGoroutinesNotInGo = "goroutines_not_in_go" // goroutines in syscalls or cgo, approximate
	MetricHeap              = "heap_bytes"           // heap objects, live or unswept
	MetricHeapGoal          = "heap_goal_bytes"      // GC heap goal
	MetricGCCycles          = "gc_cycles"            // completed GC cycles, cumulative
	MetricGCPauseP50        = "gc_pause_p50_seconds" // median GC pause in the interval
	MetricGCPauseP99        = "gc_pause_p99_seconds" // 99th percentile GC pause in the interval
	MetricGCPauseMax        = "gc_pause_max_seconds" // longest GC pause in the interval
	MetricGCCPUFraction     = "gc_cpu_fraction"      // share of available CPU spent in GC
)

type funcSource struct {
	name string
	read func(context.Context) (float64, error)
}

func (s funcSource) Metrics() []string { return []string{s.name} }

func (s funcSource) Read(ctx context.Context, dst []float64) error {
	v, err := s.read(ctx)
	if err != nil {
		return err
	}
	dst[0] = v
	return nil
}

// Func returns a Source of one metric read by calling f, such as a load
// generator's request count. f must be safe to call from the sampler's
// goroutine and must not block.
func Func(name string, f func() float64) Source {
	return funcSource{name: name, read: func(context.Context) (float64, error) { return f(), nil }}
}

// FuncErr is Func for a reading that can fail or needs the context.
func FuncErr(name string, f func(context.Context) (float64, error)) Source {
	return funcSource{name: name, read: f}
}

type prefixed struct {
	prefix string
	Source
}

func (p prefixed) Metrics() []string {
	names := p.Source.Metrics()
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = p.prefix + n
	}
	return out
}

// Prefix renames every metric of s by prefixing it, so two sources of the
// same kind can share a sampler: Prefix("child_", NewProcessSource(pid)).
func Prefix(prefix string, s Source) Source { return prefixed{prefix: prefix, Source: s} }

type processSource struct {
	pid  func() int
	busy *Bounded // threads_busy, throttled and bounded

	mu       sync.Mutex
	lastBusy float64 // the last threads_busy read, carried over a late walk
}

// Pacing of threads_busy (probe.Throttle): a walk reads a procfs file per
// thread, tens of µs for a healthy process's dozen threads (every sample)
// but milliseconds for an incident's thousand, and more on a saturated
// machine. It takes at most busyWalkShare of the time, and is read again
// at most busyWalkEvery after a walk ends, carried in between.
const (
	busyWalkShare = 0.05
	busyWalkEvery = 500 * time.Millisecond
	busyWalkWait  = 30 * time.Millisecond
)

// NewProcessSource returns a Source of threads, fds, rss_bytes and
// threads_busy for process pid (0 means the calling process). Each read
// costs ReadProcess without its walk of the threads; threads_busy is
// walked as busyWalkShare and busyWalkEvery allow, and is missing where
// this process may not read the other's threads (another user's process).
// Its walk runs bounded (NewBounded): the Source has a Stop method, to call
// once sampling is done, which waits for a walk in progress.
func NewProcessSource(pid int) Source { return NewProcessSourceOf(func() int { return pid }) }

// NewProcessSourceOf is NewProcessSource for a process whose pid changes (a
// child restarted after it died): pid is called at every read, and a
// negative pid (no process at the moment) reads as missing figures, not as
// an error.
func NewProcessSourceOf(pid func() int) Source {
	throttled, err := Throttle(threadsBusySource(pid), busyWalkShare, busyWalkEvery)
	if err != nil {
		panic(err) // constant arguments in range are never refused
	}
	// A walk on a saturated machine took 300 ms once (a batch-flood
	// incident, quick run): it costs a read at most busyWalkWait, and
	// the sample carries the last walk's figure meanwhile.
	busy, err := NewBounded(throttled, busyWalkWait)
	if err != nil {
		panic(err)
	}
	return &processSource{pid: pid, busy: busy, lastBusy: math.NaN()}
}

func (*processSource) Metrics() []string {
	return []string{MetricThreads, MetricFDs, MetricRSS, MetricThreadsBusy}
}

func (s *processSource) Read(ctx context.Context, dst []float64) error {
	pid := s.pid()
	if pid < 0 {
		for i := range dst {
			dst[i] = math.NaN()
		}
		return nil
	}
	st, err := readProcess(ctx, pid, false)
	if err != nil {
		return err
	}
	dst[0], dst[1], dst[2] = float64(st.Threads), float64(st.FDs), float64(st.RSSBytes)
	err = s.busy.Read(ctx, dst[3:4])
	s.mu.Lock()
	defer s.mu.Unlock()
	if errors.Is(err, ErrLate) {
		// A walk not in yet: its last reading carried, as Throttle does
		// between walks; threads, fds and rss are read.
		dst[3] = s.lastBusy
		return nil
	}
	if err == nil {
		s.lastBusy = dst[3]
	}
	return err
}

// Stop ends a threads_busy walk in progress and waits for it: a process
// source must be stopped once its sampler is done.
func (s *processSource) Stop() { s.busy.Stop() }

// threadsBusySource reads ThreadsBusy of a pid (0: the calling process);
// NaN when the threads are not ours to read or there is no process.
type threadsBusySource func() int

func (threadsBusySource) Metrics() []string { return []string{MetricThreadsBusy} }

func (p threadsBusySource) Read(_ context.Context, dst []float64) error {
	pid := p()
	if pid < 0 {
		dst[0] = math.NaN()
		return nil
	}
	n, err := ThreadsBusy(pid)
	switch {
	case err == nil:
		dst[0] = float64(n)
	case notOurs(err):
		dst[0] = math.NaN()
	default:
		return err
	}
	return nil
}

type runtimeSource struct{ r *RuntimeReader }

// NewRuntimeSource returns a Source of the calling process's Go runtime
// figures: goroutines, goroutines_not_in_go, heap_bytes, heap_goal_bytes,
// gc_cycles, and the GC pause quantiles and GC CPU fraction over each
// sampling interval. Each read costs RuntimeReader.Read.
func NewRuntimeSource() Source { return runtimeSource{r: &RuntimeReader{}} }

func (runtimeSource) Metrics() []string {
	return []string{MetricGoroutines, MetricGoroutinesNotInGo, MetricHeap, MetricHeapGoal, MetricGCCycles,
		MetricGCPauseP50, MetricGCPauseP99, MetricGCPauseMax, MetricGCCPUFraction}
}

func (s runtimeSource) Read(_ context.Context, dst []float64) error {
	st := s.r.Read()
	dst[0] = float64(st.Goroutines)
	dst[1] = float64(st.GoroutinesNotInGo)
	dst[2] = float64(st.HeapBytes)
	dst[3] = float64(st.HeapGoalBytes)
	dst[4] = float64(st.GCCycles)
	dst[5] = st.GCPauses.P50.Seconds()
	dst[6] = st.GCPauses.P99.Seconds()
	dst[7] = st.GCPauses.Max.Seconds()
	dst[8] = st.GCCPUFraction
	return nil
}

// NewSocketSource returns a Source of one metric: the number of sockets that
// match f (every state in f.States, or all states). Each read costs one
// Census.Count, for example:
//
//	probe.NewSocketSource("timewait_memcached", probe.Census{},
//		probe.Filter{RemotePort: 11211, States: []probe.State{probe.TimeWait}})
func NewSocketSource(name string, c Census, f Filter) Source {
	return FuncErr(name, func(ctx context.Context) (float64, error) {
		n, err := c.Count(ctx, f)
		if err != nil {
			return math.NaN(), err
		}
		return float64(n.Total()), nil
	})
}

type socketStates struct {
	prefix string
	c      Census
	f      Filter
	states []State
}

// NewSocketStatesSource returns a Source of one metric per TCP state, named
// prefix + "_" + the state in lower case with underscores
// ("sockets_time_wait"), counting the sockets that match f in that state. A
// nil or empty f.States means every state. Each read costs one Census.Count.
func NewSocketStatesSource(prefix string, c Census, f Filter) Source {
	states := f.States
	if len(states) == 0 {
		states = States()
	}
	return socketStates{prefix: prefix, c: c, f: f, states: states}
}

// StateMetric returns the metric name NewSocketStatesSource uses for s.
func StateMetric(prefix string, s State) string {
	return prefix + "_" + strings.ReplaceAll(strings.ToLower(s.String()), "-", "_")
}

func (s socketStates) Metrics() []string {
	out := make([]string, len(s.states))
	for i, st := range s.states {
		out[i] = StateMetric(s.prefix, st)
	}
	return out
}

func (s socketStates) Read(ctx context.Context, dst []float64) error {
	n, err := s.c.Count(ctx, s.f)
	if err != nil {
		return err
	}
	for i, st := range s.states {
		dst[i] = float64(n.Get(st))
	}
	return nil
}

// NewHeadroomSource returns a Source of one metric: the free ephemeral ports
// toward dest (Headroom.Free). Each read costs one Census.Headroom.
func NewHeadroomSource(name string, c Census, dest netip.AddrPort) Source {
	return FuncErr(name, func(ctx context.Context) (float64, error) {
		h, err := c.Headroom(ctx, dest)
		if err != nil {
			return math.NaN(), err
		}
		return float64(h.Free), nil
	})
}

// sourceTimeout bounds one read of all sources when the context has no
// deadline of its own; a census of 20,000 sockets takes milliseconds.
const sourceTimeout = 10 * time.Second

func describe(s Source) string {
	names := s.Metrics()
	if len(names) == 1 {
		return names[0]
	}
	return fmt.Sprintf("%s..%s", names[0], names[len(names)-1])
}

// throttled is a Source read at most a share of the time.
type throttled struct {
	src   Source
	share float64
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex // Sampler.Sample may run beside Sampler.Run
	next time.Time  // when src may be read again
	last []float64  // its last reading; nil before the first or after a failure
}

// Throttle returns src read at most share of the time, and with at most
// `every` between the end of a read and the next: after a read that took
// d, src is read again once the lesser of d/share-d and every has passed
// since it ended, and the samples in between carry its last reading. It is for figures that cost milliseconds to read and change
// slowly against the interval, such as a census of TIME_WAIT sockets,
// which live 60 s: a count read every few hundred milliseconds misses no
// peak of them, and the sampler stays cheap when the kernel's socket
// tables are large or the machine is loaded. The bound on the wait keeps
// one slow read (a walk while a flood opens thousands of sockets) from
// blinding the figure for a hundred times its length. A failed read fails
// the sample and is retried at the next one. share must be in (0, 1] and
// every positive.
func Throttle(src Source, share float64, every time.Duration) (Source, error) {
	if src == nil {
		return nil, errors.New("throttle: nil source")
	}
	if !(share > 0 && share <= 1) {
		return nil, fmt.Errorf("throttle %s: share %v: want more than 0, at most 1", describe(src), share)
	}
	if every <= 0 {
		return nil, fmt.Errorf("throttle %s: every %v: want more than 0", describe(src), every)
	}
	return &throttled{src: src, share: share, every: every, now: time.Now}, nil
}

func (t *throttled) Metrics() []string { return t.src.Metrics() }

// cached is a Source that can tell that its next Read returns a reading it
// holds, without reading anything.
type cached interface{ cached() bool }

func (t *throttled) cached() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last != nil && t.now().Before(t.next)
}

func (t *throttled) Read(ctx context.Context, dst []float64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t0 := t.now()
	if t.last != nil && t0.Before(t.next) {
		copy(dst, t.last)
		return nil
	}
	err := t.src.Read(ctx, dst)
	if err != nil {
		t.last = nil
		return err
	}
	end := t.now()
	d := end.Sub(t0)
	t.next = end.Add(min(time.Duration(float64(d)/t.share)-d, t.every))
	t.last = append(t.last[:0], dst...)
	return nil
}

// portSockets is NewPortSocketsSource's Source.
type portSockets struct {
	names  [3]string
	census Census
	port   uint16
	since  time.Time
}

// NewPortSocketsSource returns a Source of three figures of the sockets
// toward remote port, counted in one census walk and named by names: the
// TIME_WAIT sockets, those of them that entered TIME_WAIT after since
// (told apart by their kernel timer, TimeWaitSince), and the ESTABLISHED
// ones. Set-up (seeding, warming a cache) and earlier runs leave TIME_WAIT
// sockets that live on for 60 s and are not a run's doing; subtracting a
// count taken at the start would let an earlier run's sockets, expiring
// during this one, hide this run's. One walk instead of one per figure:
// each walk visits the kernel's whole established hash, milliseconds on a
// loaded machine.
func NewPortSocketsSource(names [3]string, c Census, port uint16, since time.Time) Source {
	return &portSockets{names: names, census: c, port: port, since: since}
}

func (s *portSockets) Metrics() []string { return s.names[:] }

func (s *portSockets) Read(ctx context.Context, dst []float64) error {
	f := Filter{States: []State{TimeWait, Established}, RemotePort: s.port}
	own := TimeWaitSince(s.since, time.Now())
	var tw, added, est int
	_, err := s.census.Visit(ctx, f, func(st State, timer time.Duration) {
		switch st {
		case TimeWait:
			tw++
			if timer > own {
				added++
			}
		case Established:
			est++
		}
	})
	if err != nil {
		return err
	}
	dst[0], dst[1], dst[2] = float64(tw), float64(added), float64(est)
	return nil
}
