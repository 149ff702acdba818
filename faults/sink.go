package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiral-chaos/spiral/dataplane"
)

var _ Fault = (*Sink)(nil)

// SinkMode chooses how writers reach the sink's pipe.
type SinkMode int

const (
	// SinkDirect makes every Write its own write(2) on the pipe's raw,
	// blocking descriptor, with no lock: writers that don't share a lock, as
	// with many loggers each owning a handle on one pipe. While the pipe is
	// full each blocked writer holds one OS thread in the kernel, and the Go
	// runtime starts another thread to keep running goroutines: N blocked
	// writers cost N OS threads.
	SinkDirect SinkMode = iota
	// SinkFile makes every Write go through one *os.File over the blocking
	// descriptor, as os.Stderr does when stderr is a pipe: the file's lock
	// serialises writers, so while the pipe is full one writer blocks in
	// write(2) and the others wait for the lock as parked goroutines.
	SinkFile
)

// String returns "direct" or "file".
func (m SinkMode) String() string {
	switch m {
	case SinkDirect:
		return "direct"
	case SinkFile:
		return "file"
	default:
		return "SinkMode(" + strconv.Itoa(int(m)) + ")"
	}
}

// Sink limits, and where the numbers come from.
const (
	// DefaultSinkPipeBytes is Linux's default pipe capacity (16 pages).
	DefaultSinkPipeBytes = 64 << 10
	// sinkDrainChunks is how many reads per second a throttled drain makes
	// at most: small enough to cost nothing, large enough that the rate is
	// smooth at the scale of a test's 100 ms checks.
	sinkDrainChunks = 50
	// sinkReadBuf is the drain's read size when it drains freely.
	sinkReadBuf = 64 << 10
	// sinkCloseWait bounds how long Close waits for blocked writers to finish
	// once it drains freely; past it, Close breaks their writes (EPIPE).
	sinkCloseWait = 10 * time.Second
)

// SinkConfig configures a Sink.
type SinkConfig struct {
	// DrainBytesPerSec is how fast the pipe is drained while the fault is
	// injected. Required (> 0) unless Stall is set.
	DrainBytesPerSec int64
	// PipeBytes is the pipe's capacity (F_SETPIPE_SZ): how much writers can
	// write before they block. The kernel rounds it up to a power-of-two
	// number of pages (4096 at least), and an unprivileged process can't go
	// past /proc/sys/fs/pipe-max-size (1 MiB by default). Defaults to
	// DefaultSinkPipeBytes (64 KiB) if zero.
	PipeBytes int
	// Stall stops draining altogether while injected; DrainBytesPerSec is
	// then ignored. Defaults to false.
	Stall bool
	// Mode is how writers reach the pipe. Defaults to SinkDirect.
	Mode SinkMode
	// Tee, if set, is given every byte the drain reads out of the pipe, in
	// order, on the drain's goroutine: what the sink's reader would see
	// (a log shipper's view of the lines). It must not block; its error is
	// ignored. Defaults to nil: drained bytes are discarded.
	Tee io.Writer
}

// SinkStats are a Sink's counters since NewSink.
type SinkStats struct {
	// Writes and BytesWritten count completed Writes and their bytes.
	Writes, BytesWritten int64
	// BytesDrained counts bytes the drain read out of the pipe.
	BytesDrained int64
	// InFlight counts Writes that have started and not returned. While the
	// pipe is full they are blocked: in write(2) (SinkDirect), or one in
	// write(2) and the rest waiting for the file's lock (SinkFile).
	InFlight int64
}

// drain states.
const (
	drainFree = iota
	drainThrottle
	drainStall
)

// Sink is a log sink whose Write is a real write(2) into a pipe in blocking
// mode, so a writer blocks in the kernel when the pipe is full, not in a Go
// channel. A goroutine drains the pipe: freely until Inject, then at
// DrainBytesPerSec or not at all (Stall), and freely again after Recover.
//
// A Sink is an io.Writer safe for concurrent use and a Fault. Close releases
// every writer, the drain goroutine and both descriptors.
type Sink struct {
	cfg      SinkConfig
	pipeSize int
	wfd      int      // write end, blocking
	wfile    *os.File // SinkFile mode: owns wfd
	r        *os.File // read end, non-blocking, in the runtime poller

	writes, bytesWritten, bytesDrained, inFlight atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	drainDone chan struct{}
	drainErr  error // set by the drain before drainDone closes

	mu    sync.Mutex // guards state, gen, seen, exited and the read deadline
	state int
	gen   uint64        // counts state changes
	seen  uint64        // the last gen the drain acted on
	ack   *sync.Cond    // on mu: the drain saw a state change, or exited
	wake  chan struct{} // capacity 1: state changed
	// exited is set when the drain has returned.
	exited bool
}

// NewSink creates the pipe and starts draining it freely. The caller must
// Close it. It costs two descriptors and one goroutine, which does not hold
// an OS thread (the read end is in the runtime's poller).
func NewSink(cfg SinkConfig) (*Sink, error) {
	if cfg.Mode != SinkDirect && cfg.Mode != SinkFile {
		return nil, fmt.Errorf("new sink: unknown mode %v", cfg.Mode)
	}
	if !cfg.Stall && cfg.DrainBytesPerSec <= 0 {
		return nil, fmt.Errorf("new sink: DrainBytesPerSec %d: need > 0 unless Stall", cfg.DrainBytesPerSec)
	}
	if cfg.PipeBytes < 0 {
		return nil, fmt.Errorf("new sink: PipeBytes %d < 0", cfg.PipeBytes)
	}
	if cfg.PipeBytes == 0 {
		cfg.PipeBytes = DefaultSinkPipeBytes
	}
	var fds [2]int
	// No O_NONBLOCK: both ends start blocking.
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("new sink: pipe: %w", err)
	}
	rfd, wfd := fds[0], fds[1]
	fail := func(err error) (*Sink, error) {
		_ = unix.Close(rfd)
		_ = unix.Close(wfd)
		return nil, fmt.Errorf("new sink: %w", err)
	}
	size, err := unix.FcntlInt(uintptr(wfd), unix.F_SETPIPE_SZ, cfg.PipeBytes)
	if err != nil {
		return fail(fmt.Errorf("set pipe size %d: %w", cfg.PipeBytes, err))
	}
	// The read end alone goes non-blocking (each end of a pipe is its own
	// open file description), so the drain waits in the poller and can be
	// interrupted by a read deadline.
	if err := unix.SetNonblock(rfd, true); err != nil {
		return fail(fmt.Errorf("read end non-blocking: %w", err))
	}
	if err := unix.SetNonblock(wfd, false); err != nil {
		return fail(fmt.Errorf("write end blocking: %w", err))
	}
	s := &Sink{
		cfg:       cfg,
		pipeSize:  size,
		wfd:       wfd,
		r:         os.NewFile(uintptr(rfd), "sink pipe (read)"),
		drainDone: make(chan struct{}),
		wake:      make(chan struct{}, 1),
	}
	s.ack = sync.NewCond(&s.mu)
	if cfg.Mode == SinkFile {
		// os.NewFile keeps a blocking descriptor out of the poller: writes
		// are blocking write(2) calls under the file's lock.
		s.wfile = os.NewFile(uintptr(wfd), "sink pipe (write)")
	}
	go s.drain()
	return s, nil
}

// PipeBytes returns the pipe's capacity as the kernel set it.
func (s *Sink) PipeBytes() int { return s.pipeSize }

// Mode returns how writers reach the pipe.
func (s *Sink) Mode() SinkMode { return s.cfg.Mode }

// Write writes p to the pipe. It blocks in write(2) while the pipe is full
// and returns once all of p is in the pipe. After Close it returns
// os.ErrClosed.
func (s *Sink) Write(p []byte) (int, error) {
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	if s.closed.Load() {
		return 0, fmt.Errorf("sink write: %w", os.ErrClosed)
	}
	var n int
	var err error
	if s.wfile != nil {
		n, err = s.wfile.Write(p)
	} else {
		n, err = s.writeDirect(p)
	}
	s.bytesWritten.Add(int64(n))
	if err != nil {
		return n, fmt.Errorf("sink write: %w", err)
	}
	s.writes.Add(1)
	return n, nil
}

// writeDirect writes p with write(2) on the raw descriptor, no lock taken.
func (s *Sink) writeDirect(p []byte) (int, error) {
	n, err := dataplane.FDWriter(s.wfd).Write(p)
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		pe.Path = "sink pipe"
	}
	return n, err
}

// Stats returns the sink's counters.
func (s *Sink) Stats() SinkStats {
	return SinkStats{
		Writes:       s.writes.Load(),
		BytesWritten: s.bytesWritten.Load(),
		BytesDrained: s.bytesDrained.Load(),
		InFlight:     s.inFlight.Load(),
	}
}

// ThreadsInWrite returns how many OS threads of this process are in a
// write(2) on the sink's pipe right now, from /proc/self/task/*/syscall. It
// costs one small procfs read per thread of the process.
func (s *Sink) ThreadsInWrite() (int, error) {
	return threadsInSyscall("self", unix.SYS_WRITE, s.wfd)
}

// WriteEnd returns a new descriptor on the pipe's write end, blocking, for
// another process to write to: give it to a child as its stderr
// (exec.Cmd.Stderr, target.ExecConfig.Stderr), so that the child's log
// lines are real write(2) calls that block while the sink is slow. The
// caller closes it once the child has its copy (after exec.Cmd.Start; a
// supervisor that restarts the child keeps it until the last child is
// gone). The child's writes are not in Stats' Writes, BytesWritten and
// InFlight, which count this process's Write calls: read the child's
// blocked writers with ThreadsInWriteOf and the backlog with Buffered.
func (s *Sink) WriteEnd() (*os.File, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("sink write end: %w", os.ErrClosed)
	}
	fd, err := unix.FcntlInt(uintptr(s.wfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sink write end: %w", err)
	}
	return os.NewFile(uintptr(fd), "sink pipe (write, shared)"), nil
}

// ThreadsInWriteOf returns how many OS threads of process pid are in a
// write(2) on descriptor fd right now (its stderr, 2, for a child given
// WriteEnd as stderr), from /proc/PID/task/*/syscall: while the sink is
// slow, the child's writers blocked on the pipe. Reading another process's
// syscall files takes the rights ptrace would (same user, or root). It
// costs one small procfs read per thread of pid.
func ThreadsInWriteOf(pid, fd int) (int, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("threads in write: pid %d: want a process", pid)
	}
	return threadsInSyscall(strconv.Itoa(pid), unix.SYS_WRITE, fd)
}

// Buffered returns the bytes in the pipe, written and not yet drained, by
// this process or any other holding a WriteEnd (FIONREAD, alias TIOCINQ, on the read end).
func (s *Sink) Buffered() (int, error) {
	rc, err := s.r.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("sink buffered: %w", err)
	}
	var n int
	var ioErr error
	if err := rc.Control(func(fd uintptr) { n, ioErr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return 0, fmt.Errorf("sink buffered: %w", err)
	}
	if ioErr != nil {
		return 0, fmt.Errorf("sink buffered: %w", ioErr)
	}
	return n, nil
}

// threadsInSyscall counts the threads of process proc ("self" or a pid) in
// syscall nr with first argument arg0.
func threadsInSyscall(proc string, nr, arg0 int) (int, error) {
	tasks, err := filepath.Glob("/proc/" + proc + "/task/*/syscall")
	if err != nil {
		return 0, fmt.Errorf("threads in syscall: %w", err)
	}
	want := strconv.Itoa(nr) + " 0x" + strconv.FormatInt(int64(arg0), 16) + " "
	n := 0
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // the thread exited
		}
		if err != nil {
			return 0, fmt.Errorf("threads in syscall: %w", err)
		}
		if strings.HasPrefix(string(b), want) {
			n++
		}
	}
	return n, nil
}

// Name returns "sink stall" or "sink drain N B/s".
func (s *Sink) Name() string {
	if s.cfg.Stall {
		return "sink stall"
	}
	return fmt.Sprintf("sink drain %d B/s", s.cfg.DrainBytesPerSec)
}

// Inject stops the drain (Stall) or slows it to DrainBytesPerSec, and
// returns once the drain has taken the change: nothing written after it is
// drained faster than the fault allows. Writers block once the pipe fills,
// which takes PipeBytes of writes.
func (s *Sink) Inject(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("inject %s: %w", s.Name(), os.ErrClosed)
	}
	want := drainThrottle
	if s.cfg.Stall {
		want = drainStall
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != drainFree {
		return ErrInjected
	}
	s.setStateLocked(want)
	return nil
}

// Recover makes the drain read as fast as it can again, which releases
// blocked writers. It returns once the drain has taken the change, without
// waiting for the writers.
func (s *Sink) Recover(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != drainFree {
		s.setStateLocked(drainFree)
	}
	return nil
}

// setStateLocked changes the drain state, interrupts the drain's read or
// wait, and waits until the drain has seen the change: a read that began
// before it has returned, so no byte written after it is drained against
// the new state.
func (s *Sink) setStateLocked(st int) {
	s.state = st
	s.gen++
	_ = s.r.SetReadDeadline(time.Now())
	select {
	case s.wake <- struct{}{}:
	default:
	}
	for s.seen < s.gen && !s.exited {
		s.ack.Wait()
	}
}

// Close drains freely, waits for in-flight writes to finish (at most 10 s,
// after which it breaks them with EPIPE), closes the write end, waits for
// the drain to read to end of file and closes the read end. Later Writes
// return os.ErrClosed. It is safe to call more than once.
func (s *Sink) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Sink) close() error {
	s.closed.Store(true)
	s.mu.Lock()
	s.setStateLocked(drainFree)
	s.mu.Unlock()

	var errs []error
	deadline := time.Now().Add(sinkCloseWait)
	for s.inFlight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := s.inFlight.Load(); n > 0 {
		// The drain is not reading: break the writers with EPIPE.
		errs = append(errs, fmt.Errorf("close sink: %d writes still blocked after %v; breaking the pipe", n, sinkCloseWait))
		_ = s.r.Close()
		for s.inFlight.Load() > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if s.wfile != nil {
		errs = append(errs, s.wfile.Close())
	} else {
		errs = append(errs, unix.Close(s.wfd))
	}
	select {
	case <-s.drainDone:
	case <-time.After(sinkCloseWait):
		// Another holder of the write end (a WriteEnd not closed, a child
		// still alive) keeps end of file from coming.
		errs = append(errs, fmt.Errorf("close sink: the pipe's write end is still open elsewhere after %v (a WriteEnd not closed, or a process still holding it); breaking the pipe", sinkCloseWait))
		_ = s.r.Close()
		<-s.drainDone
	}
	if s.drainErr != nil {
		errs = append(errs, fmt.Errorf("sink drain: %w", s.drainErr))
	}
	if err := s.r.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// drain reads the pipe according to the state until end of file (the write
// end closed) or an error.
func (s *Sink) drain() {
	defer close(s.drainDone)
	defer func() {
		s.mu.Lock()
		s.exited = true
		s.ack.Broadcast()
		s.mu.Unlock()
	}()
	buf := make([]byte, sinkReadBuf)
	for {
		s.mu.Lock()
		st := s.state
		_ = s.r.SetReadDeadline(time.Time{})
		select {
		case <-s.wake:
		default:
		}
		if s.seen != s.gen {
			s.seen = s.gen
			s.ack.Broadcast()
		}
		s.mu.Unlock()

		chunk := len(buf)
		switch st {
		case drainStall:
			<-s.wake
			continue
		case drainThrottle:
			chunk = int(min(max(s.cfg.DrainBytesPerSec/sinkDrainChunks, 1), int64(len(buf))))
		}
		n, err := s.r.Read(buf[:chunk])
		s.bytesDrained.Add(int64(n))
		if n > 0 && s.cfg.Tee != nil {
			_, _ = s.cfg.Tee.Write(buf[:n])
		}
		if st == drainThrottle && n > 0 {
			pause := time.Duration(float64(n) / float64(s.cfg.DrainBytesPerSec) * float64(time.Second))
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-s.wake: // the state changed: the loop's top reads it
				t.Stop()
			}
		}
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, io.EOF):
			return
		case errors.Is(err, os.ErrClosed):
			return // Close broke the pipe
		default:
			s.drainErr = err
			return
		}
	}
}
