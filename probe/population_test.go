package probe_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/spiral-chaos/spiral/probe"
)

// settleTimeout bounds how long a population takes to reach its states on
// loopback, where every transition is a local packet.
const settleTimeout = 10 * time.Second

// server accepts on a loopback listener and closes each connection only after
// its client has: the client is the active closer and ends in TIME_WAIT.
type server struct {
	ln       net.Listener
	network  string
	addr     netip.AddrPort
	accepted atomic.Int64
	closed   atomic.Int64
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startServer listens with network tcp4 or tcp6 on a port number that
// nothing else uses: outside the ephemeral range, so no client socket of any
// process holds it as its local port (other tests on the machine may fill
// that range with TIME_WAIT sockets from many source addresses), and with no
// socket of either family naming it as local or peer port yet (old TIME_WAIT
// sockets may still point at a port recently used). It skips the test if the
// family has no loopback here.
func startServer(tb testing.TB, network, host string) *server {
	tb.Helper()
	eph, err := probe.EphemeralRange()
	require.NoError(tb, err)
	for range freshPortAttempts {
		port := nonEphemeralPort(eph)
		ln, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err != nil && network == "tcp6" && !errors.Is(err, syscall.EADDRINUSE) {
			tb.Skipf("IPv6 loopback unavailable here, skipping the IPv6 census: %v", err)
		}
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		require.NoError(tb, err)
		addr := ln.Addr().(*net.TCPAddr).AddrPort()
		peers, err := probe.Census{}.Count(tb.Context(), probe.Filter{RemotePort: port})
		require.NoError(tb, err)
		locals, err := probe.Census{}.Count(tb.Context(), probe.Filter{LocalPort: port})
		require.NoError(tb, err)
		if peers.Total() > 0 || locals.Total() != 1 {
			require.NoError(tb, ln.Close())
			continue
		}
		s := &server{ln: ln, network: network, addr: addr, conns: map[net.Conn]struct{}{}}
		s.wg.Go(s.acceptLoop)
		tb.Cleanup(s.stop)
		return s
	}
	tb.Fatalf("no free %s port outside the ephemeral range %s after %d tries", network, eph, freshPortAttempts)
	return nil
}

// Test servers listen on ports above this, below the privileged ones' end.
const firstTestPort = 1024

// nonEphemeralPort picks a random port outside eph and the privileged range.
func nonEphemeralPort(eph probe.PortRange) uint16 {
	below := max(int(eph.Low)-firstTestPort, 0)
	above := 65535 - int(eph.High)
	i := rand.N(below + above)
	if i < below {
		return uint16(firstTestPort + i)
	}
	return uint16(int(eph.High) + 1 + i - below)
}

// freshPortAttempts bounds the ports startServer tries; each try costs a
// listen and two censuses.
const freshPortAttempts = 50

func (s *server) port() uint16 { return s.addr.Port() }

func (s *server) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // listener closed
		}
		s.accepted.Add(1)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			_, _ = io.Copy(io.Discard, c) // until the client closes
			_ = c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			s.closed.Add(1)
		})
	}
}

// stop closes the listener and every connection still open, and waits for
// the server's goroutines.
func (s *server) stop() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// waitFor polls until counter reaches want.
func waitFor(ctx context.Context, counter *atomic.Int64, want int64, what string) error {
	deadline := time.Now().Add(settleTimeout)
	for counter.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d of %d after %s", what, counter.Load(), want, settleTimeout)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// dialEstablished opens n connections to s and keeps them open until the
// test ends.
func (s *server) dialEstablished(tb testing.TB, n int) []net.Conn {
	tb.Helper()
	want := s.accepted.Load() + int64(n)
	conns := make([]net.Conn, 0, n)
	tb.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	var d net.Dialer
	for range n {
		c, err := d.DialContext(tb.Context(), s.network, s.addr.String())
		require.NoError(tb, err)
		conns = append(conns, c)
	}
	require.NoError(tb, waitFor(tb.Context(), &s.accepted, want, "accepted"))
	return conns
}

// timeWaitSources spreads large IPv4 populations over this many loopback
// source addresses (127.0.1.1-127.0.1.64), each used for one block of
// consecutive connects. With tcp_tw_reuse=2, connect(2) takes over a loopback
// TIME_WAIT socket of the same 4-tuple once it is older than
// tcp_tw_reuse_delay (1 s): 20,000 connects from one address lose a few
// thousand sockets that way, and even 64 addresses used in turn lose dozens
// (measured here). In blocks, each address dials for a few tens of
// milliseconds and never again, so none of its sockets is old enough.
const timeWaitSources = 64

// timeWaitPerSource is how many TIME_WAIT sockets makeTimeWait leaves from
// the default source address before it spreads: a few milliseconds of dials.
const timeWaitPerSource = 300

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h):
// bind(2) takes the address only and connect(2) picks the port per 4-tuple.
const ipBindAddressNoPort = 24

// sourceDialer returns the dialer for connect i of n: source address
// 127.0.1.k for the k-th block of n/timeWaitSources connects.
func sourceDialer(i, n int) *net.Dialer {
	return &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i*timeWaitSources/n))},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, ipBindAddressNoPort, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
}

// makeTimeWait leaves n client sockets in TIME_WAIT toward s: connect, close
// at once (the client closes first), and wait for the server to close its
// end. Each client fd is freed right away, so n is not bound by the open
// files limit. Beyond timeWaitPerSource, IPv4 clients come from
// timeWaitSources addresses.
func (s *server) makeTimeWait(ctx context.Context, n int) error {
	want := s.closed.Load() + int64(n)
	var plain net.Dialer
	for i := range n {
		d := &plain
		if s.network == "tcp4" && n > timeWaitPerSource {
			d = sourceDialer(i, n)
		}
		c, err := d.DialContext(ctx, s.network, s.addr.String())
		if err != nil {
			return fmt.Errorf("dial %d of %d: %w", i+1, n, err)
		}
		if err := c.Close(); err != nil {
			return fmt.Errorf("close %d of %d: %w", i+1, n, err)
		}
	}
	return waitFor(ctx, &s.closed, want, "server closes")
}

// waitCounts polls the census until it reports exactly want (states not in
// want count zero) and returns the last counts.
func waitCounts(tb testing.TB, c probe.Census, f probe.Filter, want map[probe.State]int) probe.Counts {
	tb.Helper()
	var last probe.Counts
	var lastErr error
	deadline := time.Now().Add(settleTimeout)
	for time.Now().Before(deadline) {
		last, lastErr = c.Count(tb.Context(), f)
		if lastErr == nil && equalCounts(last, want) {
			return last
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.NoError(tb, lastErr)
	require.Equal(tb, want, countsMap(last), "census %s of %+v never settled", c.Method, f)
	return last
}

func countsMap(c probe.Counts) map[probe.State]int {
	m := map[probe.State]int{}
	for _, s := range probe.States() {
		if n := c.Get(s); n > 0 {
			m[s] = n
		}
	}
	return m
}

func equalCounts(c probe.Counts, want map[probe.State]int) bool {
	for _, s := range probe.States() {
		if c.Get(s) != want[s] {
			return false
		}
	}
	return true
}
