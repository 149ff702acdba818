package netfault_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/netfault"
	"github.com/spiral-chaos/spiral/probe"
)

// portBudgetSize is the budget the port tests exhaust: small enough to
// exhaust in milliseconds, large enough to show the range is honoured.
const portBudgetSize = 16

// acceptor accepts connections on a loopback listener, closes each when
// its client does, and closes the rest on closeAll or when the test ends.
type acceptor struct {
	ln    net.Listener
	g     errgroup.Group
	mu    sync.Mutex
	conns []net.Conn
}

// newAcceptor listens on 127.0.0.1 and accepts until t ends; accepted
// connections are closed then.
func newAcceptor(tb testing.TB) *acceptor {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	a := &acceptor{ln: ln}
	tb.Cleanup(func() {
		_ = ln.Close()
		_ = a.g.Wait()
		a.closeAll()
	})
	a.g.Go(func() error {
		for {
			c, err := ln.Accept()
			if err != nil {
				return nil // closed by cleanup
			}
			a.mu.Lock()
			a.conns = append(a.conns, c)
			a.mu.Unlock()
			// Close when the client does, as memcached does: the client,
			// which closed first, then holds TIME_WAIT (not FIN_WAIT2).
			a.g.Go(func() error {
				_, _ = io.Copy(io.Discard, c)
				return c.Close()
			})
		}
	})
	return a
}

func (a *acceptor) addr() string { return a.ln.Addr().String() }

// closeAll closes every accepted connection: the server closes first, so
// the TIME_WAIT sockets are on the server side.
func (a *acceptor) closeAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.conns {
		_ = c.Close()
	}
	a.conns = nil
}

// portTestSeed seeds the port tests' budgets. Each test's budget is
// still its own: FreePortBudget never hands out one that overlaps another
// this process holds.
const portTestSeed = 1

// freeBudget returns a budget with n usable ports now. Its range is wider
// than n when other sockets on the machine hold bound ports (see
// FreePortBudget); they may rejoin it during the test.
func freeBudget(tb testing.TB, n int) netfault.PortBudget {
	tb.Helper()
	b, err := netfault.FreePortBudget(n, portTestSeed)
	require.NoError(tb, err)
	require.NoError(tb, b.Validate())
	if b.Size() > n {
		tb.Logf("budget %s: %d usable ports among %d (the others are bound elsewhere)", b, n, b.Size())
	}
	return b
}

// exhaust dials n connections, which must succeed, then dials on until a
// dial fails, at most up to the budget's range; it returns the connections
// (closed when tb ends) and the error of the dial that failed.
func exhaust(tb testing.TB, dial dataplane.DialFunc, addr string, b netfault.PortBudget, n int) ([]net.Conn, error) {
	tb.Helper()
	conns := fillBudget(tb, dial, addr, n)
	for range b.Size() - n + 1 {
		c, err := dial(tb.Context(), "tcp", addr)
		if err != nil {
			return conns, err
		}
		conns = append(conns, c)
		tb.Cleanup(func() { _ = c.Close() })
	}
	require.FailNow(tb, "more connections than ports", "%d connections from the budget %s", len(conns), b)
	return nil, nil
}

// fillBudget dials n connections and returns them, closed when tb ends. It
// fails tb if a dial fails.
func fillBudget(tb testing.TB, dial dataplane.DialFunc, addr string, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, 0, n)
	tb.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for i := range n {
		c, err := dial(tb.Context(), "tcp", addr)
		require.NoError(tb, err, "dial %d of a budget of %d", i+1, n)
		conns = append(conns, c)
	}
	return conns
}

func localPort(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }

func TestPortBudgetExhaustsAfterNConnections(t *testing.T) {
	noLeaks(t)
	srv := newAcceptor(t) // before the budget, so its port is not in it
	b := freeBudget(t, portBudgetSize)

	conns, err := exhaust(t, b.Dial, srv.addr(), b, portBudgetSize)
	seen := map[int]bool{}
	for _, c := range conns {
		p := localPort(c)
		assert.True(t, b.Contains(p), "source port %d outside the budget %s", p, b)
		seen[p] = true
	}
	assert.Len(t, seen, len(conns), "every port used once")
	if b.Size() == portBudgetSize {
		assert.Len(t, conns, portBudgetSize, "dial %d on a budget of %d fails", portBudgetSize+1, portBudgetSize)
	}
	require.ErrorIs(t, err, syscall.EADDRNOTAVAIL)
	assert.True(t, netfault.IsPortExhausted(err))
	assert.Contains(t, err.Error(), "cannot assign requested address")
	t.Logf("dial past the budget %s: %v", b, err)

	// Another destination has its own budget: connect(2) reuses a source
	// port for a different 4-tuple.
	other := newAcceptor(t)
	c, err := b.Dial(t.Context(), "tcp", other.addr())
	require.NoError(t, err, "the budget counts per destination")
	assert.True(t, b.Contains(localPort(c)))
	require.NoError(t, c.Close())
}

// TestPortBudgetServerCloseFreesPorts: when the server closes first, the
// server holds TIME_WAIT and the client's port is free again at once.
func TestPortBudgetServerCloseFreesPorts(t *testing.T) {
	noLeaks(t)
	srv := newAcceptor(t)
	b := freeBudget(t, portBudgetSize)
	conns, err := exhaust(t, b.Dial, srv.addr(), b, portBudgetSize)
	require.ErrorIs(t, err, syscall.EADDRNOTAVAIL)

	require.Eventually(t, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == len(conns)
	}, 5*time.Second, 10*time.Millisecond, "server accepted every connection")
	srv.closeAll()
	buf := make([]byte, 1)
	for _, c := range conns {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err := c.Read(buf)
		require.ErrorIs(t, err, io.EOF, "the server closed first")
		require.NoError(t, c.Close())
	}
	again := fillBudget(t, b.Dial, srv.addr(), len(conns))
	assert.Len(t, again, len(conns), "every port of the budget is free again at once")
}

// TestPortBudgetTimeWait measures what TIME_WAIT does to the budget when
// the client closes first, as the postmortem's data plane did: the ports
// stay taken until the kernel may reuse them.
func TestPortBudgetTimeWait(t *testing.T) {
	noLeaks(t)
	srv := newAcceptor(t)
	b := freeBudget(t, portBudgetSize)
	conns, err := exhaust(t, b.Dial, srv.addr(), b, portBudgetSize)
	require.ErrorIs(t, err, syscall.EADDRNOTAVAIL)
	for _, c := range conns {
		require.NoError(t, c.Close())
	}
	closed := time.Now()

	_, err = b.Dial(t.Context(), "tcp", srv.addr())
	t.Logf("dial right after the client closed %d connections: %v", len(conns), err)
	require.ErrorIs(t, err, syscall.EADDRNOTAVAIL, "TIME_WAIT holds every port of the budget")

	reuse := sysctl(t, "net/ipv4/tcp_tw_reuse")
	delay := sysctl(t, "net/ipv4/tcp_tw_reuse_delay")
	t.Logf("net.ipv4.tcp_tw_reuse=%s tcp_tw_reuse_delay=%s ms", reuse, delay)
	if reuse == "0" {
		t.Skip("tcp_tw_reuse=0: TIME_WAIT ports come back only after 60 s")
	}
	// tcp_tw_reuse 1 or 2 (2 = loopback only): a TIME_WAIT port may be
	// reused once its last timestamp is older than tcp_tw_reuse_delay.
	var c net.Conn
	require.Eventually(t, func() bool {
		c, err = b.Dial(t.Context(), "tcp", srv.addr())
		return err == nil
	}, 5*time.Second, 50*time.Millisecond, "a TIME_WAIT port is reused on loopback: last error %v", err)
	t.Cleanup(func() { _ = c.Close() })
	t.Logf("a port of the budget came back %v after the close (TIME_WAIT reused)", time.Since(closed).Round(10*time.Millisecond))
	assert.True(t, b.Contains(localPort(c)))
	assert.GreaterOrEqual(t, time.Since(closed), 500*time.Millisecond, "reuse waits for tcp_tw_reuse_delay")

	// Every TIME_WAIT port of the budget comes back, each once its own last
	// timestamp is older than the delay: the closes above are spread over
	// some milliseconds, so a port may lag the first by that much.
	var more []net.Conn
	t.Cleanup(func() {
		for _, c := range more {
			_ = c.Close()
		}
	})
	deadline := time.Now().Add(2 * time.Second)
	for len(more) < len(conns)-1 {
		c, err := b.Dial(t.Context(), "tcp", srv.addr())
		if errors.Is(err, syscall.EADDRNOTAVAIL) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		require.NoError(t, err, "dial %d of the %d ports left in TIME_WAIT", len(more)+1, len(conns)-1)
		more = append(more, c)
	}
	t.Logf("every port of the budget came back %v after the close", time.Since(closed).Round(10*time.Millisecond))
}

func sysctl(tb testing.TB, name string) string {
	tb.Helper()
	v, err := os.ReadFile("/proc/sys/" + name)
	if errors.Is(err, os.ErrNotExist) {
		return "absent"
	}
	require.NoError(tb, err)
	return strings.TrimSpace(string(v))
}

func TestPortBudgetFaultSwapsDialHook(t *testing.T) {
	noLeaks(t)
	srv := newAcceptor(t)
	hook := netfault.NewDialHook(nil)
	f := netfault.NewPortBudgetFault(hook, freeBudget(t, portBudgetSize))
	require.Contains(t, f.Name(), "port budget")
	ctx := t.Context()

	require.NoError(t, f.Recover(ctx), "Recover before Inject is a no-op")
	require.NoError(t, f.Inject(ctx))
	t.Cleanup(func() { _ = f.Recover(context.Background()) })
	require.ErrorIs(t, f.Inject(ctx), faults.ErrInjected)

	conns, err := exhaust(t, hook.Dial, srv.addr(), f.Budget, portBudgetSize)
	require.ErrorIs(t, err, syscall.EADDRNOTAVAIL)
	for _, c := range conns {
		assert.True(t, f.Budget.Contains(localPort(c)))
	}

	require.NoError(t, f.Recover(ctx))
	require.NoError(t, f.Recover(ctx), "Recover is idempotent")
	c, err := hook.Dial(ctx, "tcp", srv.addr())
	require.NoError(t, err, "after Recover the hook dials from the whole ephemeral range")
	t.Cleanup(func() { _ = c.Close() })
}

func TestPortBudgetRejectsBadRanges(t *testing.T) {
	eph, err := probe.EphemeralRange()
	require.NoError(t, err)
	lo, hi := int(eph.Low), int(eph.High)
	for _, b := range []netfault.PortBudget{
		{},
		{Low: uint16(lo + 10), High: uint16(lo + 5)},
		{Low: uint16(lo - 10), High: uint16(lo + 5)},
		{Low: uint16(hi - 5), High: uint16(hi + 1)},
	} {
		require.Error(t, b.Validate(), "budget %s", b)
	}
	_, err = netfault.PortBudget{}.Dial(t.Context(), "tcp", "127.0.0.1:1")
	require.Error(t, err)
	_, err = netfault.FreePortBudget(0, portTestSeed)
	require.Error(t, err)
	_, err = netfault.FreePortBudget(hi-lo, portTestSeed)
	require.Error(t, err)
}

// TestPortBudgetMemcachedFlood reproduces the postmortem's mechanism with
// gomemcache: concurrent Gets through a client whose idle pool can't hold
// the connections, dialed within a small budget, fail with the kernel's
// port exhaustion error.
func TestPortBudgetMemcachedFlood(t *testing.T) {
	env := fixtures.Shared(t)
	noLeaks(t)
	b := freeBudget(t, portBudgetSize)
	mc := memcache.New(env.MemcachedAddr)
	mc.DialContext = b.Dial
	mc.MaxIdleConns = 2
	mc.Timeout = 2 * time.Second
	t.Cleanup(func() { _ = mc.Close() })

	// More concurrent Gets than the budget holds: each takes a connection
	// for the length of its round trip.
	const workers, perWorker = 64, 20
	errs := make([]error, workers*perWorker)
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			for i := range perWorker {
				_, err := mc.Get("spiral:port-flood")
				if errors.Is(err, memcache.ErrCacheMiss) {
					err = nil
				}
				errs[w*perWorker+i] = err
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	exhausted, other := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
		case netfault.IsPortExhausted(err):
			exhausted++
		default:
			other++
			t.Logf("other error: %v", err)
		}
	}
	t.Logf("%d Gets, %d concurrent, budget %d ports, 2 idle: %d failed for want of a port, %d other errors",
		len(errs), workers, b.Size(), exhausted, other)
	assert.Positive(t, exhausted, "a flood past the budget runs out of source ports")
	assert.Zero(t, other)
}
