package netns_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/netns"
	"github.com/spiral-chaos/spiral/probe"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newNS(t *testing.T) *netns.NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making a network namespace needs root")
	}
	ns, err := netns.New()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ns.Close()) })
	return ns
}

func hostSysctl(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + name)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// A namespace's sysctls are its own: setting its ephemeral range leaves the
// machine's as it was, and a dial inside takes its source port from it.
func TestSysctlIsTheNamespacesOwn(t *testing.T) {
	ns := newNS(t)
	const rng = "net/ipv4/ip_local_port_range"
	host := hostSysctl(t, rng)
	require.NoError(t, ns.SetSysctl(rng, "40000 40009"))
	got, err := ns.Sysctl(rng)
	require.NoError(t, err)
	assert.Equal(t, "40000\t40009", got)
	assert.Equal(t, host, hostSysctl(t, rng), "the machine's range is untouched")

	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	for range 3 {
		c, err := ns.DialContext(t.Context(), "tcp", ln.Addr().String())
		require.NoError(t, err)
		port := c.LocalAddr().(*net.TCPAddr).Port
		assert.GreaterOrEqual(t, port, 40000)
		assert.LessOrEqual(t, port, 40009)
		s, err := ln.Accept()
		require.NoError(t, err)
		_ = s.Close()
		_ = c.Close()
	}

	_, err = net.Dial("tcp", ln.Addr().String())
	require.Error(t, err, "a listener inside is not on the machine's loopback")

	require.Error(t, ns.SetSysctl("kernel/pid_max", "1"), "only network sysctls")
	require.Error(t, ns.SetSysctl("net/../kernel/pid_max", "1"))
}

// Forwarders join the namespace's loopback to the machine's both ways.
func TestForwarderBothWays(t *testing.T) {
	ns := newNS(t)
	// An echo server on the machine's loopback...
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	defer func() { _ = echo.Close() }()

	// ...reached from inside at the same address...
	in, err := ns.Listen("tcp", echo.Addr().String())
	require.NoError(t, err)
	out := netns.Forward(in, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", echo.Addr().String())
	})
	// ...and that inside address reached from the machine again.
	host, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	back := netns.Forward(host, func(ctx context.Context) (net.Conn, error) {
		return ns.DialContext(ctx, "tcp", echo.Addr().String())
	})

	c, err := net.Dial("tcp", back.Addr().String())
	require.NoError(t, err)
	_, err = c.Write([]byte("ping\n"))
	require.NoError(t, err)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "ping\n", line)
	_ = c.Close()

	require.NoError(t, back.Close())
	require.NoError(t, out.Close())
}

// A process started by Do lives in the namespace: its loopback is the
// namespace's.
func TestChildStartedInside(t *testing.T) {
	ns := newNS(t)
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	port := ln.Addr().(*net.TCPAddr).Port
	// bash's /dev/tcp connects from the shell's own namespace.
	cmd := exec.CommandContext(t.Context(), "bash", "-c", "echo hi >/dev/tcp/127.0.0.1/"+strconv.Itoa(port))
	require.NoError(t, ns.Do(cmd.Start))
	c, err := ln.Accept()
	require.NoError(t, err)
	b, _ := io.ReadAll(c)
	_ = c.Close()
	require.NoError(t, cmd.Wait())
	assert.Equal(t, "hi\n", string(b))
}

func TestClosed(t *testing.T) {
	ns := newNS(t)
	require.NoError(t, ns.Close())
	require.ErrorIs(t, ns.Do(func() error { return nil }), netns.ErrClosed)
	_, err := ns.Listen("tcp", "127.0.0.1:0")
	require.ErrorIs(t, err, netns.ErrClosed)
}

// A census run inside counts the namespace's sockets, by either method,
// and a census of the machine's does not see them.
func TestCensusInside(t *testing.T) {
	ns := newNS(t)
	// An address of the loopback's /8 that nothing on the machine uses, so
	// that no socket of the machine's can match the filter by chance.
	ln, err := ns.Listen("tcp", "127.0.0.77:0")
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	const n = 5
	for range n {
		c, err := ns.DialContext(t.Context(), "tcp", ln.Addr().String())
		require.NoError(t, err)
		s, err := ln.Accept()
		require.NoError(t, err)
		_ = c.Close() // the dialer closes first: its socket goes to TIME_WAIT
		_, _ = s.Read(make([]byte, 1))
		_ = s.Close()
	}
	f := probe.Filter{RemotePort: uint16(ln.Addr().(*net.TCPAddr).Port), RemoteAddr: netip.MustParseAddr("127.0.0.77"), States: []probe.State{probe.TimeWait}}
	for _, m := range []probe.Method{probe.Netlink, probe.Procfs} {
		got, err := probe.Census{Method: m, In: ns.Do}.Count(t.Context(), f)
		require.NoError(t, err)
		assert.Equal(t, n, got.Get(probe.TimeWait), "%v inside", m)
		host, err := probe.Census{Method: m}.Count(t.Context(), f)
		require.NoError(t, err)
		assert.Zero(t, host.Get(probe.TimeWait), "%v of the machine", m)
	}
}

// A connection whose upstream can't be dialed is reset, as close to a
// refused dial as a connection already accepted can be.
func TestForwarderResetsWhenTheDialFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := netns.Forward(ln, func(context.Context) (net.Conn, error) { return nil, syscall.ECONNREFUSED })
	defer func() { require.NoError(t, f.Close()) }()
	c, err := net.Dial("tcp", f.Addr().String())
	if err == nil { // the reset came after the handshake, not during it
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		_ = c.Close()
	}
	require.ErrorIs(t, err, syscall.ECONNRESET)
}

// Join enters a namespace that already exists: a listener made in it
// through one NS is dialled through the other, and not from the machine.
func TestJoin(t *testing.T) {
	ns := newNS(t)
	joined, err := netns.Join(ns.Path())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, joined.Close()) })

	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	c, err := joined.DialContext(t.Context(), "tcp", ln.Addr().String())
	require.NoError(t, err, "the joined namespace is the same")
	require.NoError(t, c.Close())
	_, err = net.Dial("tcp", ln.Addr().String())
	require.Error(t, err, "not the machine's loopback")

	_, err = netns.Join(filepath.Join(t.TempDir(), "none"))
	require.ErrorContains(t, err, "join network namespace: open")
	_, err = netns.Join("/proc/self/ns/mnt")
	require.ErrorContains(t, err, "join network namespace: enter", "a namespace of another kind is refused")
}
