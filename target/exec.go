package target

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/netns"
	"github.com/spiral-chaos/spiral/proc"
)

// AddrArg, in an Exec target's arguments, is replaced by the address the
// child must serve on ("127.0.0.1:PORT"); the child also finds it in
// $SPIRAL_LISTEN.
const AddrArg = "{addr}"

// ExecConfig describes a child-process target.
type ExecConfig struct {
	// Path is the binary. Required; it must exist and be executable.
	Path string
	// Args are its arguments; each AddrArg in them becomes the address.
	Args []string
	// Env is added to the child's environment, after the test's own and
	// the backends' (fixtures.EnvMemcachedAddrs, fixtures.EnvCQLHosts,
	// fixtures.EnvKeyspace, EnvListen), so it may override them:
	// "GOMEMLIMIT=48MiB", "GOGC=off".
	Env []string
	// Cgroup, if set, holds every child (a memory limit); OOM kills are
	// then counted from the kernel's record. The caller creates and
	// removes it. The binary is exec'd by /bin/sh once the shell is in the
	// cgroup, so that none of its memory is charged elsewhere (on cgroup
	// v1 a process joins its cgroup after it starts).
	Cgroup *proc.MemoryCgroup
	// Addr is the address every child serves on; defaults to 127.0.0.1
	// and a port free when Start runs. Give one outside the ephemeral
	// range when the service under test may open thousands of client
	// sockets: a restarted child must bind it again while they hold their
	// local ports.
	Addr string
	// MaxRestarts caps restarts over the target's life (defaults to 5;
	// negative: never restart). StartTimeout bounds a start, from exec to
	// healthy (defaults to 20 s: a CQL session's handshake on a loaded
	// machine).
	MaxRestarts  int
	StartTimeout time.Duration
	// Shape is how the service takes a batch RPC; the zero value is the
	// bundled data plane's.
	Shape dataplane.RequestShape
	// Netns runs the children in a network namespace of the target's own
	// (netns), made at Start and removed at Stop: a loopback, ephemeral
	// port range, TIME_WAIT table and TCP sysctls no other process shares.
	// Each backend's loopback address is forwarded into it at the same
	// address, and the child's address out of it, so the child and its
	// callers see the usual addresses; the census then counts the
	// namespace's sockets, which are the child's alone (Exec.Netns).
	// Backends must be on loopback.
	Netns bool
	// NS, with Netns, is the namespace the children run in instead of one
	// made for them: one that holds a backend already, such as memcached
	// in a container of its own (fixtures.StartIsolatedMemcached), with
	// the kernel settings its test chose. The target neither makes nor
	// closes it.
	NS *netns.NS
	// Memcached, if set, are the memcached servers the children use
	// instead of the backends': addresses inside NS, reached there as
	// they are, not forwarded.
	Memcached []string
	// Stderr, if set, is every child's stderr, where services write their
	// log lines: a slow log sink (faults.Sink.WriteEnd) makes them block
	// in write(2). The child's stdout alone is then kept for the message
	// of a child that died. The target does not close it.
	Stderr *os.File
}

// Exec is a service binary run as a supervised child process, serving on
// 127.0.0.1 and a port Spiral picks, the same across restarts.
type Exec struct {
	cfg    ExecConfig
	client *http.Client

	mu   sync.Mutex
	sup  *proc.Supervisor
	base string
	ns   *netns.NS
	fwd  []*netns.Forwarder
}

// NewExec checks cfg and returns a target that has not started anything.
func NewExec(cfg ExecConfig) (*Exec, error) {
	if cfg.Path == "" {
		return nil, errors.New("exec target: no binary given")
	}
	if err := checkExecutable(cfg.Path); err != nil {
		return nil, fmt.Errorf("exec target: %w", err)
	}
	for _, kv := range cfg.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("exec target: environment entry %q: want NAME=value", kv)
		}
	}
	if cfg.Addr != "" {
		if _, err := netip.ParseAddrPort(cfg.Addr); err != nil {
			return nil, fmt.Errorf("exec target: address %q: %w", cfg.Addr, err)
		}
	}
	if err := cfg.Shape.Validate(); err != nil {
		return nil, fmt.Errorf("exec target: %w", err)
	}
	if (cfg.NS != nil || len(cfg.Memcached) > 0) && !cfg.Netns {
		return nil, errors.New("exec target: NS and Memcached need Netns")
	}
	if len(cfg.Memcached) > 0 && cfg.NS == nil {
		return nil, errors.New("exec target: Memcached names servers inside NS: give NS")
	}
	for _, a := range cfg.Memcached {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return nil, fmt.Errorf("exec target: memcached address %q: %w", a, err)
		}
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 20 * time.Second
	}
	return &Exec{cfg: cfg, client: newHTTPClient()}, nil
}

// Name is "exec:" and the command line.
func (t *Exec) Name() string {
	return "exec:" + strings.Join(append([]string{t.cfg.Path}, t.cfg.Args...), " ")
}

// Start picks a free loopback port, starts the child on it and waits until
// it is healthy.
func (t *Exec) Start(ctx context.Context, b Backends) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sup != nil {
		return errors.New("start exec target: already started")
	}
	if err := b.Validate(); err != nil {
		return fmt.Errorf("start exec target: %w", err)
	}
	addr := t.cfg.Addr
	var start func(*exec.Cmd) error
	if t.cfg.Netns {
		var err error
		if addr, err = t.startNetns(addr, b); err != nil {
			t.closeNetns()
			return fmt.Errorf("start exec target: %w", err)
		}
		start = func(c *exec.Cmd) error { return t.ns.Do(c.Start) }
	} else if addr == "" {
		var err error
		if addr, err = freeLoopbackAddr(); err != nil {
			return fmt.Errorf("start exec target: %w", err)
		}
	}
	args := make([]string, len(t.cfg.Args))
	for i, a := range t.cfg.Args {
		args[i] = strings.ReplaceAll(a, AddrArg, addr)
	}
	mc := b.MemcachedAddrs
	if len(t.cfg.Memcached) > 0 {
		mc = t.cfg.Memcached
	}
	env := append(os.Environ(),
		EnvListen+"="+addr,
		fixtures.EnvMemcachedAddrs+"="+strings.Join(mc, ","),
		fixtures.EnvCQLHosts+"="+strings.Join(b.CQLHosts, ","),
		fixtures.EnvKeyspace+"="+b.Keyspace,
	)
	env = append(env, t.cfg.Env...)
	sup, err := proc.NewSupervisor(proc.SupervisorConfig{
		Command: func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, t.cfg.Path, args...)
			if t.cfg.Cgroup != nil {
				// The shell waits for the supervisor's start byte, sent
				// once it is in the cgroup, then becomes the binary.
				cmd = exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", `read -r _ && exec "$0" "$@"`, t.cfg.Path}, args...)...)
			}
			cmd.Env = env
			return cmd
		},
		Cgroup:       t.cfg.Cgroup,
		MaxRestarts:  t.cfg.MaxRestarts,
		StartTimeout: t.cfg.StartTimeout,
		HealthPath:   dataplane.HealthPath,
		Addr:         addr,
		Start:        start,
		Stderr:       t.cfg.Stderr,
	})
	if err != nil {
		t.closeNetns()
		return fmt.Errorf("start exec target: %w", err)
	}
	if err := sup.Start(ctx); err != nil {
		t.closeNetns()
		return fmt.Errorf("start %s: %w%s", t.Name(), err, lastOutput(sup))
	}
	t.sup, t.base = sup, "http://"+addr
	return nil
}

// startNetns makes the children's network namespace (or takes
// ExecConfig.NS), forwards each backend into it at its own address (but
// ExecConfig.Memcached's, inside already), and the child's address out of it:
// addr on the machine's loopback (a free port if ""), where the child
// listens inside too. t.mu must be held.
func (t *Exec) startNetns(addr string, b Backends) (string, error) {
	ns := t.cfg.NS
	if ns == nil {
		var err error
		if ns, err = netns.New(); err != nil {
			return "", err
		}
	}
	t.ns = ns
	forward := b.CQLHosts
	if len(t.cfg.Memcached) == 0 {
		forward = append(slices.Clone(b.MemcachedAddrs), forward...)
	}
	for _, a := range forward {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || !ap.Addr().IsLoopback() {
			return "", fmt.Errorf("backend %s: a child in a network namespace of its own reaches backends on loopback only", a)
		}
		ln, err := ns.Listen("tcp", a)
		if err != nil {
			return "", fmt.Errorf("forward backend %s into the namespace: %w", a, err)
		}
		t.fwd = append(t.fwd, netns.Forward(ln, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", a)
		}))
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("the child's address: %w", err)
	}
	addr = ln.Addr().String()
	t.fwd = append(t.fwd, netns.Forward(ln, func(ctx context.Context) (net.Conn, error) {
		return ns.DialContext(ctx, "tcp", addr)
	}))
	return addr, nil
}

// closeNetns closes the forwarders and lets the namespace go. t.mu must be
// held.
func (t *Exec) closeNetns() {
	for _, f := range t.fwd {
		_ = f.Close()
	}
	t.fwd = nil
	if t.ns != nil && t.ns != t.cfg.NS {
		_ = t.ns.Close()
	}
	t.ns = nil
}

// Netns is the children's network namespace (ExecConfig.Netns) once
// started, else nil: its sysctls are the target's alone (a port budget as
// its ephemeral range), and a census run in it (probe.Census.In) counts
// the child's sockets.
func (t *Exec) Netns() *netns.NS {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ns
}

// lastOutput is the last exit's output, for an error message.
func lastOutput(sup *proc.Supervisor) string {
	exits := sup.Exits()
	if len(exits) == 0 || exits[len(exits)-1].Output == "" {
		return ""
	}
	return "\nits output:\n" + exits[len(exits)-1].Output
}

// freeLoopbackAddr returns 127.0.0.1 and a port free at the moment: the
// child binds it a moment later (the window is the one every "port 0 then
// tell the child" scheme has; a port taken in between fails the start,
// with the child's own message).
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// Supervisor is the child's supervisor (its exits, OOM kills, recovery
// times), or nil before Start.
func (t *Exec) Supervisor() *proc.Supervisor {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sup
}

// URL is the child's base URL.
func (t *Exec) URL() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.base
}

// PID is the running child's pid, or NoProcess between two children.
func (t *Exec) PID() int {
	if sup := t.Supervisor(); sup != nil {
		if pid := sup.Pid(); pid > 0 {
			return pid
		}
	}
	return NoProcess
}

// Metrics scrapes the child's /metrics.
func (t *Exec) Metrics(ctx context.Context) (dataplane.Snapshot, error) {
	base := t.URL()
	if base == "" {
		return nil, errors.New("exec target: not running")
	}
	return scrape(ctx, t.client, base)
}

// Health checks the child's /healthz.
func (t *Exec) Health(ctx context.Context) error {
	base := t.URL()
	if base == "" {
		return errors.New("exec target: not running")
	}
	return health(ctx, t.client, base)
}

// Restarts counts the children started after the first.
func (t *Exec) Restarts() int {
	sup := t.Supervisor()
	if sup == nil {
		return 0
	}
	return max(sup.Stats().Starts-1, 0)
}

// Stop kills the child and waits until it is reaped.
func (t *Exec) Stop(context.Context) error {
	t.mu.Lock()
	sup := t.sup
	t.mu.Unlock()
	if sup == nil {
		return nil
	}
	sup.Stop()
	t.client.CloseIdleConnections()
	t.mu.Lock()
	t.closeNetns()
	t.mu.Unlock()
	return nil
}

// BuildDataPlane builds the bundled data plane's binary (cmd/dataplane)
// into dir and returns its path, for an Exec target of it; it runs the go
// command, which must be on PATH, from the module's root.
func BuildDataPlane(ctx context.Context, dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "dataplane")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/dataplane")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cmd/dataplane: %w\n%s", err, b)
	}
	return out, nil
}

// ModuleRoot is the nearest folder at or above the working directory with
// a go.mod: where `go test ./suites/...` was run from.
func ModuleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("no go.mod at or above %s", wd)
		}
	}
}
