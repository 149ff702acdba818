// Package proc runs and watches the child processes a run puts under test:
// memory-limited cgroups whose OOM kills are read from the kernel's own
// counter (MemoryCgroup), a Supervisor that keeps one child running,
// restarts it when it dies and records every exit (ChildExit), and the OOM
// child, a small server any Go binary becomes on request, that allocates
// until the kernel kills it (OOMChild, MaybeRunOOMChild).
//
// proc never imports testing and no other Spiral package; faults.OOM is
// the fault built on a Supervisor.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SupervisorConfig configures a Supervisor. Zero fields take the defaults
// written beside them.
type SupervisorConfig struct {
	// Command makes the child's command; it is called once per start, with
	// a context that is cancelled by Stop. The Supervisor sets Stdin, Stdout
	// and Stderr (and SysProcAttr.UseCgroupFD on cgroup v2); the child must
	// follow the protocol described at OOMChild: wait for a byte on stdin,
	// print "LISTEN addr" on stdout, serve HealthPath. Required.
	Command func(ctx context.Context) *exec.Cmd
	// Cgroup, if set, holds every child; OOM kills are counted from its
	// kernel counter. Without it nothing is counted as an OOM kill.
	Cgroup *MemoryCgroup
	// MaxRestarts caps restarts over the Supervisor's life; once spent, the
	// next exit ends supervision with an error (see Err). Defaults to 5;
	// negative means never restart.
	MaxRestarts int
	// Backoff is the pause before a restart, doubled after each child that
	// died before it was healthy, up to MaxBackoff, and reset once one is
	// healthy. Defaults to 100ms.
	Backoff time.Duration
	// MaxBackoff caps Backoff. Defaults to 2s.
	MaxBackoff time.Duration
	// StartTimeout bounds the time from start to healthy; a child slower
	// than that is killed and counts as an exit. Defaults to 10s.
	StartTimeout time.Duration
	// HealthPath is fetched from the announced address; a 200 means
	// healthy. Defaults to "/healthz".
	HealthPath string
	// Addr, if set, is where every child serves ("127.0.0.1:PORT"), for a
	// child that does not follow OOMChild's protocol (any service binary,
	// told its address by its arguments or environment): the Supervisor
	// then polls HealthPath there from the start instead of waiting for a
	// "LISTEN addr" line, and the start byte on stdin is the child's to
	// ignore. Such a child starts work before it is in Cgroup on cgroup v1
	// (there, a process joins its cgroup after it starts), for the first
	// milliseconds of its life.
	Addr string
	// Start, if set, starts each child's command instead of
	// exec.Cmd.Start: a child started inside a network namespace of its
	// own (netns.NS.Do(cmd.Start)).
	Start func(*exec.Cmd) error
	// Stderr, if set, is every child's stderr (a log sink: Sink.WriteEnd),
	// instead of the pipe whose last lines ChildExit.Output keeps: that
	// output then holds the child's stdout alone. The Supervisor does not
	// close it.
	Stderr *os.File
}

const (
	supDefaultMaxRestarts  = 5
	supDefaultBackoff      = 100 * time.Millisecond
	supDefaultMaxBackoff   = 2 * time.Second
	supDefaultStartTimeout = 10 * time.Second
	// supHealthBody bounds how much of a failed health answer a ChildExit
	// keeps: the error a data plane names there fits.
	supHealthBody = 300
	// supHealthPoll is the pause between health checks of a starting
	// child; a Go child listens within milliseconds of its start byte.
	supHealthPoll = 20 * time.Millisecond
	// supOutputTail is how much of a child's output an exit record keeps.
	supOutputTail = 4 << 10
	// supPipeDrain bounds the wait for a dead child's output to be read; a
	// grandchild holding the pipe open must not stall the supervisor.
	supPipeDrain = time.Second
)

// ChildExit records one end of a child: an exit, a kill, or a start that
// failed.
type ChildExit struct {
	// Start numbers the child, from 1, in start order.
	Start int
	// Pid is the child's pid; 0 if it failed to start.
	Pid int
	// StartedAt, HealthyAt and ExitedAt are when the Supervisor started the
	// child, saw its first 200 from HealthPath (zero if never) and reaped
	// it.
	StartedAt, HealthyAt, ExitedAt time.Time
	// ExitCode is the exit status, or -1 if a signal killed the child.
	ExitCode int
	// Signal is the signal that killed the child, or 0.
	Signal syscall.Signal
	// OOMKilled says the kernel's OOM kill counter for the cgroup went up
	// across this exit: the kernel killed it, whatever the signal says.
	OOMKilled bool
	// Stopped says Stop killed the child.
	Stopped bool
	// Unhealthy says the Supervisor killed the child because it was not
	// healthy within StartTimeout.
	Unhealthy bool
	// LastHealth is the child's last answer to a health check that failed
	// before it was first healthy ("503: memcached: dial tcp ...: connect:
	// cannot assign requested address", or the request's error), at most
	// supHealthBody bytes; empty if none failed. LastHealthAt is its time.
	LastHealth   string
	LastHealthAt time.Time
	// Recovery is the time from this exit to the next healthy child when
	// this exit ended a healthy spell (zero until then, and for exits
	// during an outage or from Stop). It includes the backoff.
	Recovery time.Duration
	// Output is the tail of the child's stdout and stderr.
	Output string
	// Err is why the child failed to start or its end was not a plain
	// exit (e.g. the OOM counter could not be read); nil otherwise.
	Err error
}

// String describes the exit in one line.
func (e ChildExit) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "child %d (pid %d): ", e.Start, e.Pid)
	switch {
	case e.Pid == 0:
		b.WriteString("failed to start")
	case e.Signal != 0:
		fmt.Fprintf(&b, "killed by signal %d (%v)", int(e.Signal), e.Signal)
	default:
		fmt.Fprintf(&b, "exited with status %d", e.ExitCode)
	}
	switch {
	case e.OOMKilled:
		b.WriteString(" (OOM kill by the kernel)")
	case e.Stopped:
		b.WriteString(" (stopped)")
	case e.Unhealthy:
		b.WriteString(" (not healthy in time)")
		if e.LastHealth != "" {
			fmt.Fprintf(&b, " (its last health check: %s)", e.LastHealth)
		}
	}
	if !e.ExitedAt.IsZero() && !e.StartedAt.IsZero() {
		fmt.Fprintf(&b, " after %v", e.ExitedAt.Sub(e.StartedAt).Round(time.Millisecond))
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// SupervisorStats is a snapshot of a Supervisor's counts.
type SupervisorStats struct {
	// Starts counts children started (processes that ran).
	Starts int
	// Exits counts ended children, failed starts included.
	Exits int
	// OOMKills is the rise of the cgroup's kernel OOM kill counter since
	// Start, as of the last exit.
	OOMKills uint64
	// Healthy says the current child has answered its health check and
	// has not exited.
	Healthy bool
	// Addr is the healthy child's address, or "".
	Addr string
	// LastRecovery is the latest time from an exit of a healthy child to
	// the next healthy child; zero if none yet.
	LastRecovery time.Duration
}

// Supervisor runs one child process at a time, in a MemoryCgroup if given,
// restarts it when it dies (bounded by MaxRestarts, with backoff), records
// every exit, and measures the time from a death to the next healthy child.
//
// Use NewSupervisor, Start, and Stop; Stop leaves no child behind.
type Supervisor struct {
	cfg    SupervisorConfig
	client *http.Client

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every state change
	started  bool
	cancel   context.CancelFunc
	done     chan struct{}
	err      error // why supervision ended, if not Stop
	baseOOM  uint64
	lastOOM  uint64
	starts   int
	exits    []ChildExit
	healthy  bool
	curStart int
	curPid   int
	addr     string
	lastRec  time.Duration
	down     int // index in exits of the exit that began the outage, or -1
	stopOnce sync.Once
}

// NewSupervisor checks cfg and returns a Supervisor that has not started
// anything yet.
func NewSupervisor(cfg SupervisorConfig) (*Supervisor, error) {
	if cfg.Command == nil {
		return nil, errors.New("new supervisor: Command is required")
	}
	if cfg.MaxRestarts == 0 {
		cfg.MaxRestarts = supDefaultMaxRestarts
	}
	if cfg.MaxRestarts < 0 {
		cfg.MaxRestarts = 0
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = supDefaultBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = supDefaultMaxBackoff
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = supDefaultStartTimeout
	}
	if cfg.HealthPath == "" {
		cfg.HealthPath = "/healthz"
	}
	return &Supervisor{
		cfg: cfg,
		client: &http.Client{
			// No keep-alive: a health check leaves no connection behind.
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			Timeout:   time.Second,
		},
		changed: make(chan struct{}),
		done:    make(chan struct{}),
		down:    -1,
	}, nil
}

// Start starts the first child and blocks until it is healthy, ctx is done
// or supervision ends (restart budget spent). On error it stops everything
// it started. Supervision then goes on in the background, independent of
// ctx, until Stop.
func (s *Supervisor) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("start supervisor: already started")
	}
	if s.cfg.Cgroup != nil {
		n, err := s.cfg.Cgroup.OOMKills()
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("start supervisor: %w", err)
		}
		s.baseOOM, s.lastOOM = n, n
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.started, s.cancel = true, cancel
	s.mu.Unlock()

	go s.run(runCtx)
	if _, err := s.WaitHealthy(ctx, 0); err != nil {
		s.Stop()
		return fmt.Errorf("start supervisor: %w", err)
	}
	return nil
}

// Stop kills the current child, waits until it is reaped and supervision
// has ended, and returns. Idempotent; safe to call without Start.
func (s *Supervisor) Stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		started, cancel := s.started, s.cancel
		s.mu.Unlock()
		if !started {
			return
		}
		cancel()
		<-s.done
		s.client.CloseIdleConnections()
	})
}

// Done is closed when supervision has ended: after Stop, or when the
// restart budget is spent (then Err says why).
func (s *Supervisor) Done() <-chan struct{} { return s.done }

// Err is why supervision ended on its own (restart budget spent), or nil.
func (s *Supervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Addr is the healthy child's address ("127.0.0.1:PORT"), or "" while
// there is no healthy child.
func (s *Supervisor) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Cgroup is the cgroup that holds every child (SupervisorConfig.Cgroup), or
// nil.
func (s *Supervisor) Cgroup() *MemoryCgroup { return s.cfg.Cgroup }

// Pid is the running child's pid, or 0 between two children.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.curPid
}

// Stats returns the counts so far.
func (s *Supervisor) Stats() SupervisorStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SupervisorStats{
		Starts:       s.starts,
		Exits:        len(s.exits),
		OOMKills:     s.lastOOM - s.baseOOM,
		Healthy:      s.healthy,
		Addr:         s.addr,
		LastRecovery: s.lastRec,
	}
}

// Exits returns a copy of every exit recorded so far, oldest first.
func (s *Supervisor) Exits() []ChildExit {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ChildExit(nil), s.exits...)
}

// WaitHealthy blocks until a child numbered above afterStart is healthy and
// returns its address. It fails when ctx is done or supervision has ended.
// Pass 0 for any healthy child; pass Stats().Starts to wait for the next
// one. It only observes and may be called any number of times.
func (s *Supervisor) WaitHealthy(ctx context.Context, afterStart int) (string, error) {
	return s.waitFor(ctx, func() (string, bool) {
		return s.addr, s.healthy && s.curStart > afterStart
	})
}

// WaitExit blocks until more than n exits are recorded and returns the
// first one after n: pass Stats().Exits to wait for the next exit. It fails
// when ctx is done or supervision has ended without that exit. It only
// observes and may be called any number of times.
func (s *Supervisor) WaitExit(ctx context.Context, n int) (ChildExit, error) {
	var e ChildExit
	_, err := s.waitFor(ctx, func() (string, bool) {
		if len(s.exits) > n {
			e = s.exits[n]
			return "", true
		}
		return "", false
	})
	return e, err
}

func (s *Supervisor) waitFor(ctx context.Context, cond func() (string, bool)) (string, error) {
	for {
		s.mu.Lock()
		v, ok := cond()
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for child: %w (last exit: %s)", context.Cause(ctx), s.lastExit())
		case <-s.done:
			s.mu.Lock()
			v, ok = cond()
			err := s.err
			s.mu.Unlock()
			if ok {
				return v, nil
			}
			if err == nil {
				err = errors.New("supervisor stopped")
			}
			return "", fmt.Errorf("wait for child: %w", err)
		case <-changed:
		}
	}
}

func (s *Supervisor) lastExit() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.exits) == 0 {
		return "none"
	}
	return s.exits[len(s.exits)-1].String()
}

// notify wakes waiters; call with s.mu held.
func (s *Supervisor) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Supervisor) run(ctx context.Context) {
	defer close(s.done)
	backoff := s.cfg.Backoff
	restarts := 0
	useCgroupFD := true
	for {
		ch, err := s.spawn(ctx, useCgroupFD)
		if err != nil && ch == nil && useCgroupFD && s.cfg.Cgroup != nil && s.cfg.Cgroup.Version() == 2 && ctx.Err() == nil {
			// clone3 into a cgroup may be refused (older kernel, seccomp);
			// join after start instead.
			useCgroupFD = false
			ch, err = s.spawn(ctx, false)
		}
		if ch == nil && ctx.Err() != nil {
			return // Stop came while starting
		}
		var e ChildExit
		if ch == nil {
			s.mu.Lock()
			e = ChildExit{Start: s.starts + 1, ExitedAt: time.Now(), ExitCode: -1, Err: err}
			s.mu.Unlock()
		} else {
			e = s.watch(ctx, ch)
		}
		wasHealthy := !e.HealthyAt.IsZero()

		s.mu.Lock()
		s.healthy, s.addr, s.curPid = false, "", 0
		if s.cfg.Cgroup != nil && ch != nil {
			n, err := s.cfg.Cgroup.OOMKills()
			if err != nil {
				e.Err = errors.Join(e.Err, err)
			} else {
				e.OOMKilled = n > s.lastOOM
				s.lastOOM = n
			}
		}
		s.exits = append(s.exits, e)
		if !e.Stopped && s.down < 0 && wasHealthy {
			s.down = len(s.exits) - 1
		}
		stopping := ctx.Err() != nil
		if !stopping && restarts >= s.cfg.MaxRestarts {
			s.err = fmt.Errorf("restart budget of %d spent; last exit: %s", s.cfg.MaxRestarts, e)
		}
		s.notify()
		giveUp := stopping || s.err != nil
		s.mu.Unlock()
		if giveUp {
			return
		}

		if wasHealthy {
			backoff = s.cfg.Backoff
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
		restarts++
	}
}

// supChild is one running child.
type supChild struct {
	cmd     *exec.Cmd
	start   int
	started time.Time
	stdin   *os.File // write end; closing it tells the child to exit
	addr    chan string
	exited  chan struct{} // closed once reaped and output drained
	waitErr error
	out     *Tail
}

// spawn starts one child, places it in the cgroup and sends the start byte.
// On error it returns a nil child and leaves no process behind.
func (s *Supervisor) spawn(ctx context.Context, useCgroupFD bool) (*supChild, error) {
	cmd := s.cfg.Command(ctx)
	if cmd == nil {
		return nil, errors.New("spawn child: Command returned nil")
	}
	var closers []*os.File
	closeAll := func() {
		for _, f := range closers {
			_ = f.Close()
		}
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("spawn child: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		_ = inR.Close()
		_ = inW.Close()
		return nil, fmt.Errorf("spawn child: %w", err)
	}
	closers = append(closers, inR, inW, outR, outW)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, outW
	if s.cfg.Stderr != nil {
		cmd.Stderr = s.cfg.Stderr
	}

	placed, release := false, func() {}
	if s.cfg.Cgroup != nil && useCgroupFD {
		if placed, release, err = s.cfg.Cgroup.prepare(cmd); err != nil {
			closeAll()
			return nil, fmt.Errorf("spawn child: %w", err)
		}
	}
	if s.cfg.Start != nil {
		err = s.cfg.Start(cmd)
	} else {
		err = cmd.Start()
	}
	release()
	_ = inR.Close() // the child has its copies
	_ = outW.Close()
	if err != nil {
		_ = inW.Close()
		_ = outR.Close()
		return nil, fmt.Errorf("spawn child: %w", err)
	}
	kill := func(cause error) (*supChild, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = inW.Close()
		_ = outR.Close()
		return nil, fmt.Errorf("spawn child: %w", cause)
	}
	if s.cfg.Cgroup != nil && !placed {
		if err := s.cfg.Cgroup.Add(cmd.Process.Pid); err != nil {
			return kill(err)
		}
	}
	// The child is in its cgroup: let it start work. One byte into an
	// empty pipe never blocks.
	if _, err := inW.Write([]byte{'\n'}); err != nil {
		// A child that does not follow the protocol (Addr mode) may have
		// exited, or closed its stdin, before the byte: its exit is
		// recorded below, with its output.
		if s.cfg.Addr == "" || !errors.Is(err, syscall.EPIPE) {
			return kill(fmt.Errorf("send start byte: %w", err))
		}
	}

	s.mu.Lock()
	s.starts++
	ch := &supChild{
		cmd:     cmd,
		start:   s.starts,
		started: time.Now(),
		stdin:   inW,
		addr:    make(chan string, 1),
		exited:  make(chan struct{}),
		out:     &Tail{Max: supOutputTail},
	}
	s.curStart, s.curPid = ch.start, cmd.Process.Pid
	s.notify()
	s.mu.Unlock()

	if s.cfg.Addr != "" {
		ch.addr <- s.cfg.Addr
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		defer func() { _ = outR.Close() }()
		sc := bufio.NewScanner(outR)
		announced := s.cfg.Addr != ""
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, oomListenPrefix); ok && !announced {
				announced = true
				ch.addr <- strings.TrimSpace(a)
				continue
			}
			_, _ = ch.out.Write([]byte(line + "\n"))
		}
	}()
	go func() {
		ch.waitErr = cmd.Wait()
		_ = inW.Close()
		select {
		case <-drained:
		case <-time.After(supPipeDrain):
			_ = outR.Close()
		}
		close(ch.exited)
	}()
	return ch, nil
}

// watch follows one child from start to exit: health check, then wait.
func (s *Supervisor) watch(ctx context.Context, ch *supChild) ChildExit {
	e := ChildExit{Start: ch.start, Pid: ch.cmd.Process.Pid, StartedAt: ch.started}
	healthyAt, unhealthy := s.awaitHealthy(ctx, ch, &e)
	if unhealthy {
		e.Unhealthy = true
		_ = ch.cmd.Process.Kill()
	}
	if !healthyAt.IsZero() {
		e.HealthyAt = healthyAt
		select {
		case <-ctx.Done():
		case <-ch.exited:
		}
	}
	if ctx.Err() != nil {
		select {
		case <-ch.exited:
		default:
			e.Stopped = true
			_ = ch.cmd.Process.Kill()
		}
	}
	<-ch.exited
	e.ExitedAt = time.Now()
	e.ExitCode = -1
	e.Output = ch.out.String()
	if ps := ch.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				e.Signal = ws.Signal()
			case ws.Exited():
				e.ExitCode = ws.ExitStatus()
			}
		}
	}
	var exitErr *exec.ExitError
	if ch.waitErr != nil && !errors.As(ch.waitErr, &exitErr) {
		e.Err = ch.waitErr
	}
	return e
}

// awaitHealthy waits for the child's address, then polls its health path.
// It returns when the child is healthy (its time), has exited, ctx is done,
// or StartTimeout passed (unhealthy).
func (s *Supervisor) awaitHealthy(ctx context.Context, ch *supChild, e *ChildExit) (time.Time, bool) {
	timeout := time.NewTimer(s.cfg.StartTimeout)
	defer timeout.Stop()
	var addr string
	select {
	case addr = <-ch.addr:
	case <-ch.exited:
		return time.Time{}, false
	case <-ctx.Done():
		return time.Time{}, false
	case <-timeout.C:
		return time.Time{}, true
	}
	url := "http://" + addr + s.cfg.HealthPath
	tick := time.NewTicker(supHealthPoll)
	defer tick.Stop()
	for {
		ok, answer := s.healthCheck(ctx, url)
		if !ok && ctx.Err() == nil {
			e.LastHealth, e.LastHealthAt = answer, time.Now()
		}
		if ok {
			now := time.Now()
			s.mu.Lock()
			s.healthy, s.addr = true, addr
			if s.down >= 0 {
				rec := now.Sub(s.exits[s.down].ExitedAt)
				s.exits[s.down].Recovery = rec
				s.lastRec = rec
				s.down = -1
			}
			s.notify()
			s.mu.Unlock()
			return now, false
		}
		select {
		case <-ch.exited:
			return time.Time{}, false
		case <-ctx.Done():
			return time.Time{}, false
		case <-timeout.C:
			return time.Time{}, true
		case <-tick.C:
		}
	}
}

// healthCheck asks url once: whether the answer was 200 and, when it was
// not, what it was (status and the body's start, or the request's error).
func (s *Supervisor) healthCheck(ctx context.Context, url string) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return false, truncate(err.Error(), supHealthBody)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, supHealthBody))
	return false, truncate(fmt.Sprintf("%d: %s", resp.StatusCode, strings.TrimSpace(string(body))), supHealthBody)
}

// truncate cuts s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
