package probe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiral-chaos/spiral/proc"
)

// Observer is a process of its own that reads a process's operating-system
// figures (threads, fds, rss_bytes, threads_busy, and optionally the
// sockets toward one remote port) at a fixed interval, for a process that
// is itself under test: a data plane served in this process, whose flood
// can keep the Go scheduler from running a sampler goroutine for half a
// second (a batch-flood incident, 13,000 goroutines finishing on 2 cores:
// no sample for 5.5 intervals). The kernel schedules the observer, at a
// higher priority where it may set one (nice -10 as root), so its rows
// keep time however the process it reads is loaded, and the reads cost
// that process nothing.
//
// An Observer is a Source: a Read takes its newest row, without a system
// call. A Sampler given one also fills the stretches where its own samples
// were late with the observer's rows (Sample.ObserverOnly), so the figures
// the observer reads have no blind spot even where those the process reads
// of itself (goroutines, heap, its own counters) have one.
//
// The observer is this binary run again (os.Executable) with the spec in
// its environment: the binary must call ServeObserver before anything else
// in main or TestMain (fixtures.Main does), or StartObserver fails with
// ErrNoObserver. It exits when its standard input closes: at Stop, or when
// this process dies however it dies.
type Observer struct {
	spec    ObserverSpec
	metrics []string
	cmd     *exec.Cmd
	stdin   io.Closer
	stderr  *proc.Tail
	done    chan struct{} // closed once the rows are read to their end

	mu      sync.Mutex
	rows    []ObserverRow
	readErr error
	stopped bool
}

// ObserverSpec says what an Observer reads.
type ObserverSpec struct {
	// PID is the process read; 0 is the process that starts the observer.
	PID int `json:"pid"`
	// Interval is the time between rows.
	Interval time.Duration `json:"interval_ns"`
	// Ports, if set, counts the sockets toward a remote port as well, in
	// the observer's network namespace: the starter's.
	Ports *PortSocketsSpec `json:"ports,omitempty"`
}

// PortSocketsSpec is a census of the sockets toward one remote port
// (NewPortSocketsSource), read at most Share of the time and at least
// Every (Throttle), each read waiting at most Wait (NewBounded).
type PortSocketsSpec struct {
	// Names of the three figures: TIME_WAIT sockets, those of them that
	// entered TIME_WAIT after Since, and ESTABLISHED ones.
	Names [3]string     `json:"names"`
	Port  uint16        `json:"port"`
	Since time.Time     `json:"since"`
	Share float64       `json:"share"`
	Every time.Duration `json:"every_ns"`
	Wait  time.Duration `json:"wait_ns"`
}

// ObserverRow is one reading of an Observer's figures.
type ObserverRow struct {
	At time.Time
	// Cost is what the reading took, in the observer's process.
	Cost time.Duration
	// Values has one value per metric of the Observer; NaN where missing.
	Values []float64
	// Late says a bounded read (the port census) was not in within its
	// wait: its figures are missing from this row.
	Late bool
}

// ErrNoObserver is StartObserver's error when this binary does not serve
// observers (ServeObserver was not called): a caller falls back to
// sampling in its own process.
var ErrNoObserver = errors.New("this binary does not serve observers (probe.ServeObserver is not called first in its main or TestMain)")

// observerEnv carries an observer's spec to the binary run as one.
const observerEnv = "SPIRAL_PROBE_OBSERVER"

// observerNice is the observer's scheduling priority where it may raise
// its own (as root): the kernel then runs it ahead of the threads of the
// process it reads, which a flood keeps busy.
const observerNice = -10

// observerStartWait bounds an observer's start: its first line.
const observerStartWait = 10 * time.Second

var servesObserver atomic.Bool

// ServeObserver makes this binary one that can be run as an Observer: when
// the environment asks for one, it runs as the observer and exits;
// otherwise it returns at once. Call it first in main or TestMain.
func ServeObserver() {
	servesObserver.Store(true)
	spec, ok := os.LookupEnv(observerEnv)
	if !ok {
		return
	}
	if err := serveObserver(spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "observer: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// StartObserver starts an observer process reading what spec asks and
// returns once its first row is due. It fails with ErrNoObserver when this
// binary does not serve observers, and on a spec that is not valid.
func StartObserver(spec ObserverSpec) (*Observer, error) {
	if !servesObserver.Load() {
		return nil, fmt.Errorf("start observer: %w", ErrNoObserver)
	}
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	if spec.PID == 0 {
		spec.PID = os.Getpid()
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	o := &Observer{spec: spec, metrics: spec.metrics(), stderr: &proc.Tail{Max: 4 << 10}, done: make(chan struct{})}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), observerEnv+"="+string(b))
	cmd.Stderr = o.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	o.cmd, o.stdin = cmd, stdin
	// Where Yama lets a process read only its descendants' system calls
	// (ptrace_scope 1), let the observer read ours: its threads_busy walk.
	_ = unix.Prctl(unix.PR_SET_PTRACER, uintptr(cmd.Process.Pid), 0, 0, 0)
	r := bufio.NewReader(stdout)
	ready := make(chan error, 1)
	go func() { ready <- o.readHeader(r) }()
	t := time.NewTimer(observerStartWait)
	defer t.Stop()
	select {
	case err = <-ready:
	case <-t.C:
		err = fmt.Errorf("no answer within %s", observerStartWait)
	}
	if err != nil {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("start observer: %w%s", err, o.stderr.Said())
	}
	go o.readRows(r)
	return o, nil
}

func (s ObserverSpec) validate() error {
	if s.PID < 0 {
		return fmt.Errorf("pid %d is negative", s.PID)
	}
	if s.Interval <= 0 {
		return fmt.Errorf("interval %s is not positive", s.Interval)
	}
	if p := s.Ports; p != nil {
		for _, n := range p.Names {
			if n == "" {
				return errors.New("ports: a figure without a name")
			}
		}
		if p.Port == 0 {
			return errors.New("ports: port 0")
		}
		if !(p.Share > 0 && p.Share <= 1) || p.Every <= 0 || p.Wait <= 0 {
			return fmt.Errorf("ports: share %v, every %s, wait %s: want a share in (0, 1] and positive times", p.Share, p.Every, p.Wait)
		}
	}
	return nil
}

func (s ObserverSpec) metrics() []string {
	out := []string{MetricThreads, MetricFDs, MetricRSS, MetricThreadsBusy}
	if s.Ports != nil {
		out = append(out, s.Ports.Names[:]...)
	}
	return out
}

// Metrics names the observer's figures: threads, fds, rss_bytes,
// threads_busy, then the port census's, if it counts one.
func (o *Observer) Metrics() []string { return slices.Clone(o.metrics) }

// Read takes the observer's newest row. It returns ErrLate, dst NaN, when
// no row is in from the last two intervals (the observer is not keeping
// time, or this process has not read its rows), and an error once the
// observer has stopped on its own.
func (o *Observer) Read(_ context.Context, dst []float64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.readErr != nil && !o.stopped {
		return fmt.Errorf("observer: %w", o.readErr)
	}
	n := len(o.rows)
	if n == 0 || time.Since(o.rows[n-1].At) > 2*o.spec.Interval {
		for i := range dst {
			dst[i] = math.NaN()
		}
		return ErrLate
	}
	copy(dst, o.rows[n-1].Values)
	return nil
}

// PID is the observer's process id.
func (o *Observer) PID() int { return o.cmd.Process.Pid }

// Rows returns a copy of the rows read so far, in time order.
func (o *Observer) Rows() []ObserverRow {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.rows)
}

// Cost states what the observer's reads cost, in its own process: a read
// per row, late where a row's port census was; its Median is the median
// row's.
func (o *Observer) Cost() SourceCost {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := SourceCost{Metrics: slices.Clone(o.metrics), Reads: len(o.rows), Where: fmt.Sprintf("observer process %d", o.PID())}
	costs := make([]time.Duration, 0, len(o.rows))
	for _, r := range o.rows {
		c.Total += r.Cost
		c.Max = max(c.Max, r.Cost)
		if r.Late {
			c.Late++
		}
		costs = append(costs, r.Cost)
	}
	if len(costs) > 0 {
		slices.Sort(costs)
		c.Median = costs[(len(costs)-1)/2]
	}
	return c
}

// Stop ends the observer and waits for it, its rows read to their end.
// Calling it again does nothing more.
func (o *Observer) Stop() {
	o.mu.Lock()
	stopped := o.stopped
	o.stopped = true
	o.mu.Unlock()
	if stopped {
		return
	}
	_ = o.stdin.Close()
	t := time.AfterFunc(5*time.Second, func() { _ = o.cmd.Process.Kill() })
	<-o.done
	_ = o.cmd.Wait()
	t.Stop()
}

func (o *Observer) readHeader(r *bufio.Reader) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("first line: %w", err)
	}
	var h observerHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return fmt.Errorf("first line %q: %w", bytes.TrimSpace(line), err)
	}
	if !slices.Equal(h.Metrics, o.metrics) {
		return fmt.Errorf("it reads %q, not %q", h.Metrics, o.metrics)
	}
	return nil
}

// readRows reads rows until the observer's output ends.
func (o *Observer) readRows(r *bufio.Reader) {
	defer close(o.done)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			row, perr := parseRow(line, len(o.metrics))
			o.mu.Lock()
			if perr != nil && o.readErr == nil {
				o.readErr = perr
			} else if perr == nil {
				o.rows = append(o.rows, row)
			}
			o.mu.Unlock()
		}
		if err != nil {
			o.mu.Lock()
			if o.readErr == nil && !o.stopped {
				o.readErr = fmt.Errorf("stopped on its own%s", o.stderr.Said())
			}
			o.mu.Unlock()
			return
		}
	}
}

type observerHeader struct {
	Metrics []string `json:"metrics"`
}

// A row is a line of space-separated numbers: its time in Unix
// nanoseconds, its cost in nanoseconds, 1 if late else 0, then one value
// per metric ("NaN" where missing).
func formatRow(b []byte, row ObserverRow) []byte {
	b = strconv.AppendInt(b, row.At.UnixNano(), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(row.Cost), 10)
	late := byte('0')
	if row.Late {
		late = '1'
	}
	b = append(b, ' ', late)
	for _, v := range row.Values {
		b = append(b, ' ')
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	return append(b, '\n')
}

func parseRow(line []byte, metrics int) (ObserverRow, error) {
	f := bytes.Fields(line)
	if len(f) != 3+metrics {
		return ObserverRow{}, fmt.Errorf("row %q: %d fields, want %d", bytes.TrimSpace(line), len(f), 3+metrics)
	}
	at, err1 := strconv.ParseInt(string(f[0]), 10, 64)
	cost, err2 := strconv.ParseInt(string(f[1]), 10, 64)
	row := ObserverRow{At: time.Unix(0, at), Cost: time.Duration(cost), Late: string(f[2]) == "1", Values: make([]float64, metrics)}
	errs := []error{err1, err2}
	for i := range row.Values {
		v, err := strconv.ParseFloat(string(f[3+i]), 64)
		row.Values[i] = v
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return ObserverRow{}, fmt.Errorf("row %q: %w", bytes.TrimSpace(line), err)
	}
	return row, nil
}

// serveObserver is the observer's process: it reads spec's figures every
// interval and writes a row for each on out, until in ends.
func serveObserver(specJSON string, in io.Reader, out io.Writer) error {
	var spec ObserverSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	if err := spec.validate(); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	raisePriority()
	proc := NewProcessSource(spec.PID).(*processSource)
	defer proc.Stop()
	sources := []Source{proc}
	var ports *Bounded
	if p := spec.Ports; p != nil {
		th, err := Throttle(NewPortSocketsSource(p.Names, Census{}, p.Port, p.Since), p.Share, p.Every)
		if err != nil {
			return err
		}
		if ports, err = NewBounded(th, p.Wait); err != nil {
			return err
		}
		defer ports.Stop()
		sources = append(sources, ports)
	}
	w := bufio.NewWriter(out)
	h, _ := json.Marshal(observerHeader{Metrics: spec.metrics()})
	if _, err := w.Write(append(h, '\n')); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	ended := make(chan struct{})
	go func() { // the starter closes our input at Stop, or by dying
		_, _ = io.Copy(io.Discard, in)
		close(ended)
	}()
	t := time.NewTicker(spec.Interval)
	defer t.Stop()
	var line []byte
	for {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), sampleStartKey{}, start), sourceTimeout)
		row := ObserverRow{At: start, Values: make([]float64, 0, len(spec.metrics()))}
		for _, src := range sources {
			vals := make([]float64, len(src.Metrics()))
			err := src.Read(ctx, vals)
			if err != nil {
				for i := range vals {
					vals[i] = math.NaN()
				}
				row.Late = row.Late || errors.Is(err, ErrLate)
				if pid := spec.PID; !errors.Is(err, ErrLate) && unix.Kill(pid, 0) != nil {
					cancel()
					return fmt.Errorf("process %d is gone: %w", pid, err)
				}
			}
			row.Values = append(row.Values, vals...)
		}
		cancel()
		row.Cost = time.Since(start)
		line = formatRow(line[:0], row)
		if _, err := w.Write(line); err != nil {
			return nil // the starter is gone
		}
		if err := w.Flush(); err != nil {
			return nil
		}
		select {
		case <-ended:
			return nil
		case <-t.C:
		}
	}
}

// raisePriority sets observerNice on every thread of this process, where
// it may (as root); new threads take their creator's.
func raisePriority() {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, observerNice)
		}
	}
}
