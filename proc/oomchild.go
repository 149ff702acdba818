package proc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The OOM child is the process a Supervisor runs in a MemoryCgroup: it
// serves /healthz on loopback and allocates memory on request until the
// kernel kills it. It is not a separate binary. Any Go program becomes the
// child when started with OOMChildEnv=1, provided it calls MaybeRunOOMChild
// before doing anything else:
//
//   - a test binary, from an init function in a _test.go file (init runs
//     before TestMain, so the child never starts the package's fixtures):
//
//     func init() { proc.MaybeRunOOMChild() }
//
//     and OOMChild{Args: []string{"-test.run=^$"}}.Command as the factory
//     (os.Executable is the test binary; the -test.run guard makes a binary
//     without the hook run no tests instead of recursing);
//   - cmd/spiral, first thing in main, re-running itself.
//
// Re-running one's own binary needs no build step and carries whatever the
// binary links; the data plane will be served by the child through
// OOMChildConfig.Handler.
//
// Protocol, parent side (Supervisor does all of it):
//  1. start the child with stdin a pipe, stdout read line by line;
//  2. put it in the cgroup, then write one byte to its stdin: the child
//     allocates nothing and doesn't listen before that byte (on cgroup v1 a
//     process joins its cgroup only after it has started);
//  3. read "LISTEN 127.0.0.1:PORT" from its stdout, then GET /healthz;
//  4. keep stdin open: the child exits when stdin reaches EOF, so it dies
//     with its parent even if nobody kills it.
//
// Endpoints: GET /healthz ("ok"); GET /debug/alloc?mb=N (allocate and keep
// N MiB, every page touched so the kernel charges it; answers the total
// kept); GET /debug/mem (JSON: pid, kept bytes, GOMEMLIMIT and GOGC in
// effect, heap); GET /debug/exit?code=N (exit with status N after
// answering).

// OOMChildEnv set to "1" in a process's environment makes MaybeRunOOMChild
// run the child and exit.
const OOMChildEnv = "SPIRAL_OOM_CHILD"

// OOMChildListenEnv optionally sets the child's listen address; it must be
// a loopback address. Defaults to "127.0.0.1:0" (a free port).
const OOMChildListenEnv = "SPIRAL_OOM_CHILD_LISTEN"

// oomListenPrefix starts the line the child prints on stdout with its
// address.
const oomListenPrefix = "LISTEN "

const (
	// OOMChildMaxAllocMiB bounds one /debug/alloc request: 4 GiB, far
	// above the 64-128 MiB limits tests use, small enough not to take a
	// 24 GiB machine down if the child runs outside a cgroup by mistake.
	OOMChildMaxAllocMiB = 4096

	// oomPageSize is the stride at which allocated memory is touched; the
	// kernel charges a page to the cgroup when it is first written.
	oomPageSize = 4096
)

// OOMChild describes how to start the OOM child; its Command method is a
// Supervisor command factory.
type OOMChild struct {
	// Path is the executable. Defaults to os.Executable(): this binary,
	// which must call MaybeRunOOMChild first thing.
	Path string
	// Args are passed to the executable; the child ignores them. For a test
	// binary pass "-test.run=^$" (see MaybeRunOOMChild).
	Args []string
	// GOMEMLIMIT and GOGC, when set, are given to the child's Go runtime
	// through the environment, e.g. "48MiB" and "50" (the postmortem ran
	// the data plane with aggressive values of both). Empty inherits this
	// process's environment.
	GOMEMLIMIT, GOGC string
	// Listen is the child's listen address (loopback only). Defaults to
	// "127.0.0.1:0".
	Listen string
	// Env is appended to the child's environment.
	Env []string
}

// Command returns the command that starts the child. The Supervisor sets
// its stdin, stdout and stderr. If Path is empty and os.Executable fails,
// the command fails to start with that error.
func (c OOMChild) Command(ctx context.Context) *exec.Cmd {
	path := c.Path
	var pathErr error
	if path == "" {
		path, pathErr = os.Executable()
	}
	cmd := exec.CommandContext(ctx, path, c.Args...)
	if pathErr != nil {
		cmd.Err = pathErr
	}
	cmd.Env = append(os.Environ(), OOMChildEnv+"=1")
	if c.GOMEMLIMIT != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+c.GOMEMLIMIT)
	}
	if c.GOGC != "" {
		cmd.Env = append(cmd.Env, "GOGC="+c.GOGC)
	}
	if c.Listen != "" {
		cmd.Env = append(cmd.Env, OOMChildListenEnv+"="+c.Listen)
	}
	cmd.Env = append(cmd.Env, c.Env...)
	return cmd
}

// MaybeRunOOMChild returns at once unless OOMChildEnv is "1". If it is, it
// runs the OOM child on stdin and stdout and exits the process with the
// child's status; it never returns. Call it before anything else in main,
// or from an init function of a test binary.
func MaybeRunOOMChild() {
	if os.Getenv(OOMChildEnv) != "1" {
		return
	}
	code, err := RunOOMChild(context.Background(), OOMChildConfig{
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Listen: os.Getenv(OOMChildListenEnv),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "oom child: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// OOMChildConfig is the OOM child's input.
type OOMChildConfig struct {
	// Stdin carries the start byte, then EOF when the parent is gone.
	Stdin io.Reader
	// Stdout receives the "LISTEN addr" line.
	Stdout io.Writer
	// Listen is the loopback address to listen on. Defaults to
	// "127.0.0.1:0".
	Listen string
	// Handler, if set, serves every path the child doesn't (the data plane
	// later).
	Handler http.Handler
}

// RunOOMChild is the child's body: it waits for the start byte on Stdin,
// listens, announces, and serves until Stdin reaches EOF, ctx is done or
// /debug/exit is called. It returns the exit status the process should
// use. It blocks for the child's whole life.
func RunOOMChild(ctx context.Context, cfg OOMChildConfig) (int, error) {
	in := bufio.NewReader(cfg.Stdin)
	if _, err := in.ReadByte(); err != nil {
		return 1, fmt.Errorf("wait for start byte: %w", err)
	}
	addr := cfg.Listen
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	if err := oomCheckLoopback(addr); err != nil {
		return 1, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return 1, fmt.Errorf("listen: %w", err)
	}
	defer func() { _ = ln.Close() }() // Shutdown closes it first; this covers early returns

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var exitCode atomic.Int32
	ch := &oomChildHandler{next: cfg.Handler, exit: func(code int) {
		exitCode.Store(int32(code))
		cancel()
	}}
	srv := &http.Server{Handler: ch, ReadHeaderTimeout: 5 * time.Second}

	if _, err := fmt.Fprintf(cfg.Stdout, "%s%s\n", oomListenPrefix, ln.Addr()); err != nil {
		return 1, fmt.Errorf("announce: %w", err)
	}
	go func() {
		_, _ = io.Copy(io.Discard, in) // returns at EOF: the parent is gone
		cancel()
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return 1, fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		return 1, fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return 1, fmt.Errorf("serve: %w", err)
	}
	return int(exitCode.Load()), nil
}

func oomCheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q: not loopback", addr)
	}
	return nil
}

type oomChildHandler struct {
	next http.Handler
	exit func(code int)

	mu   sync.Mutex
	kept [][]byte
}

func (h *oomChildHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		_, _ = io.WriteString(w, "ok\n")
	case "/debug/alloc":
		h.alloc(w, r)
	case "/debug/mem":
		h.mem(w)
	case "/debug/exit":
		code, err := strconv.Atoi(r.URL.Query().Get("code"))
		if err != nil || code < 0 || code > 255 {
			http.Error(w, "code must be 0-255", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "exiting\n")
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		h.exit(code)
	default:
		if h.next != nil {
			h.next.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}
}

func (h *oomChildHandler) alloc(w http.ResponseWriter, r *http.Request) {
	mb, err := strconv.Atoi(r.URL.Query().Get("mb"))
	if err != nil || mb < 1 || mb > OOMChildMaxAllocMiB {
		http.Error(w, fmt.Sprintf("mb must be 1-%d", OOMChildMaxAllocMiB), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for range mb {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += oomPageSize {
			b[i] = 1
		}
		h.kept = append(h.kept, b)
	}
	_, _ = fmt.Fprintf(w, "kept %d MiB\n", len(h.kept))
}

// OOMChildMem is the child's /debug/mem answer.
type OOMChildMem struct {
	Pid        int    `json:"pid"`
	KeptBytes  int64  `json:"kept_bytes"`
	GOMEMLIMIT int64  `json:"gomemlimit"`
	GOGC       string `json:"gogc"`
	HeapBytes  uint64 `json:"heap_bytes"`
}

func (h *oomChildHandler) mem(w http.ResponseWriter) {
	h.mu.Lock()
	kept := int64(len(h.kept)) << 20
	h.mu.Unlock()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	var heap uint64
	if s[0].Value.Kind() == metrics.KindUint64 {
		heap = s[0].Value.Uint64()
	}
	gogc := os.Getenv("GOGC")
	if gogc == "" {
		gogc = "100"
	}
	b, err := json.Marshal(OOMChildMem{
		Pid:        os.Getpid(),
		KeptBytes:  kept,
		GOMEMLIMIT: debug.SetMemoryLimit(-1),
		GOGC:       gogc,
		HeapBytes:  heap,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}
