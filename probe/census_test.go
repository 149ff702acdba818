package probe_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/spiral-chaos/spiral/probe"
)

var methods = []probe.Method{probe.Netlink, probe.Procfs}

type family struct {
	name    string
	network string
	host    string
	family  probe.Family
	other   probe.Family
}

var families = []family{
	{name: "ipv4", network: "tcp4", host: "127.0.0.1", family: probe.IPv4, other: probe.IPv6},
	{name: "ipv6", network: "tcp6", host: "::1", family: probe.IPv6, other: probe.IPv4},
}

// A known population on one port: a listener, established pairs, and client
// sockets that closed first and sit in TIME_WAIT. Netlink and procfs must
// count it exactly, from the client side (peer port) and the server side
// (local port). A census is no atomic snapshot (a dump resumes bucket by
// bucket, and procfs every 4 KB page), so while other tests on the machine
// open and close sockets a reading can be off for a moment: each one is
// polled until it settles on the exact count, and fails if it never does.
func TestCensusCountsPopulation(t *testing.T) {
	const established, timeWait = 5, 7
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, fam.network, fam.host)
			srv.dialEstablished(t, established)
			require.NoError(t, srv.makeTimeWait(t.Context(), timeWait))

			p := srv.port()
			client := map[probe.State]int{probe.Established: established, probe.TimeWait: timeWait}
			none := map[probe.State]int{}
			cases := []struct {
				name string
				f    probe.Filter
				want map[probe.State]int
			}{
				{"client side", probe.Filter{RemotePort: p}, client},
				{"server side", probe.Filter{LocalPort: p}, map[probe.State]int{probe.Listen: 1, probe.Established: established}},
				{"TIME-WAIT only", probe.Filter{RemotePort: p, States: []probe.State{probe.TimeWait}}, map[probe.State]int{probe.TimeWait: timeWait}},
				{"listeners only", probe.Filter{LocalPort: p, States: []probe.State{probe.Listen}}, map[probe.State]int{probe.Listen: 1}},
				{"own family", probe.Filter{RemotePort: p, Family: fam.family}, client},
				{"other family", probe.Filter{RemotePort: p, Family: fam.other}, none},
				{"peer address", probe.Filter{RemotePort: p, RemoteAddr: srv.addr.Addr()}, client},
				{"both ports", probe.Filter{LocalPort: p, RemotePort: p}, none},
			}
			for _, m := range methods {
				for _, tc := range cases {
					got := waitCounts(t, probe.Census{Method: m}, tc.f, tc.want)
					assert.Equal(t, m, got.Method, tc.name)
					assert.Equal(t, total(tc.want), got.Total(), "%s: %s", m, tc.name)
				}
			}
		})
	}
}

func total(m map[probe.State]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// A census of both families answers the same from one legacy dump as from
// one SOCK_DIAG_BY_FAMILY dump per family.
func TestCensusDumpKindsAgree(t *testing.T) {
	type check struct {
		f    probe.Filter
		want map[probe.State]int
	}
	var checks []check
	for _, fam := range families {
		srv := startServer(t, fam.network, fam.host)
		srv.dialEstablished(t, 2)
		require.NoError(t, srv.makeTimeWait(t.Context(), 3))
		checks = append(checks,
			check{probe.Filter{RemotePort: srv.port()}, map[probe.State]int{probe.Established: 2, probe.TimeWait: 3}},
			check{probe.Filter{LocalPort: srv.port()}, map[probe.State]int{probe.Established: 2, probe.Listen: 1}})
	}
	for _, legacy := range []bool{true, false} {
		restore := probe.SetLegacyDump(legacy)
		for _, c := range checks {
			waitCounts(t, probe.Census{Method: probe.Netlink}, c.f, c.want)
		}
		restore()
	}
}

// listSettled polls List until it returns n sockets.
func listSettled(t *testing.T, c probe.Census, f probe.Filter, n int) []probe.Socket {
	t.Helper()
	var socks []probe.Socket
	var err error
	for deadline := time.Now().Add(settleTimeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		socks, err = c.List(t.Context(), f)
		if err == nil && len(socks) == n {
			return socks
		}
	}
	require.NoError(t, err)
	require.Len(t, socks, n, "%s list of %+v never settled", c.Method, f)
	return socks
}

// List decodes addresses, ports and families; netlink and procfs agree.
func TestCensusListsSockets(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, fam.network, fam.host)
			conns := srv.dialEstablished(t, 2)
			f := probe.Filter{RemotePort: srv.port()}
			waitCounts(t, probe.Census{}, f, map[probe.State]int{probe.Established: 2})

			want := map[netip.AddrPort]bool{}
			for _, c := range conns {
				want[c.LocalAddr().(*net.TCPAddr).AddrPort()] = true
			}
			for _, m := range methods {
				socks := listSettled(t, probe.Census{Method: m}, f, 2)
				for _, s := range socks {
					assert.Equal(t, probe.Established, s.State, m)
					assert.Equal(t, fam.family, s.Family, m)
					assert.Equal(t, srv.addr, s.Remote, m)
					assert.True(t, want[s.Local], "%s: unexpected local %s", m, s.Local)
					assert.NotZero(t, s.Inode, m)
				}
			}
		})
	}
}

// An AF_INET6 socket talking to an IPv4 peer through a v4-mapped address
// counts as IPv6 and matches an IPv4 peer filter, in netlink as in procfs.
func TestCensusV4MappedPeer(t *testing.T) {
	srv := startServer(t, "tcp4", "127.0.0.1")
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no AF_INET6 sockets here: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	sa := &unix.SockaddrInet6{Port: int(srv.port()), Addr: netip.AddrFrom4([4]byte{127, 0, 0, 1}).As16()}
	sa.Addr[10], sa.Addr[11] = 0xff, 0xff
	require.NoError(t, unix.Connect(fd, sa))

	f := probe.Filter{RemotePort: srv.port(), RemoteAddr: netip.MustParseAddr("127.0.0.1")}
	waitCounts(t, probe.Census{Method: probe.Netlink}, f, map[probe.State]int{probe.Established: 1})
	for _, m := range methods {
		c := probe.Census{Method: m}
		socks := listSettled(t, c, f, 1)
		assert.Equal(t, probe.IPv6, socks[0].Family, m)
		assert.Equal(t, netip.MustParseAddr("::ffff:127.0.0.1"), socks[0].Remote.Addr(), m)

		waitCounts(t, c, probe.Filter{RemotePort: srv.port(), Family: probe.IPv4}, map[probe.State]int{})
		waitCounts(t, c, probe.Filter{RemotePort: srv.port(), RemoteAddr: netip.MustParseAddr("127.0.0.2")}, map[probe.State]int{})
	}
}

// Auto falls back to procfs when the kernel refuses netlink; Netlink reports
// the refusal.
func TestCensusFallsBackWhenNetlinkRefused(t *testing.T) {
	srv := startServer(t, "tcp4", "127.0.0.1")
	srv.dialEstablished(t, 3)
	f := probe.Filter{RemotePort: srv.port()}
	want := map[probe.State]int{probe.Established: 3}
	waitCounts(t, probe.Census{}, f, want)

	restore := probe.SetOpenDiagSocket(func() (int, error) { return -1, unix.EPERM })
	t.Cleanup(restore)

	got := waitCounts(t, probe.Census{}, f, want)
	assert.Equal(t, probe.Procfs, got.Method)

	_, err := probe.Census{Method: probe.Netlink}.Count(t.Context(), f)
	require.ErrorIs(t, err, probe.ErrNetlinkRefused)
	require.ErrorIs(t, err, unix.EPERM)
}

func TestCensusRejectsBadFilter(t *testing.T) {
	_, err := probe.Census{}.Count(t.Context(), probe.Filter{States: []probe.State{42}})
	require.ErrorContains(t, err, "unknown tcp state 42")
	_, err = probe.Census{}.Count(t.Context(), probe.Filter{MinTimer: -time.Second})
	require.ErrorContains(t, err, "MinTimer")
}

// TIME_WAIT sockets that entered the state after a moment are told from
// those that were there before by their kernel timer, in netlink and in
// procfs: what makes a run's TIME_WAIT figure its own whatever an earlier
// run in the same network namespace left.
func TestCensusTimeWaitSince(t *testing.T) {
	const before, after = 3, 4
	srv := startServer(t, "tcp4", "127.0.0.1")
	require.NoError(t, srv.makeTimeWait(t.Context(), before))
	tw := probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}}
	waitCounts(t, probe.Census{}, tw, map[probe.State]int{probe.TimeWait: before})
	// procfs reports the timer to 10 ms, and the kernel's clock ticks
	// every 1-10 ms: a quarter second apart is unambiguous.
	time.Sleep(250 * time.Millisecond)
	mark := time.Now()
	time.Sleep(250 * time.Millisecond)
	require.NoError(t, srv.makeTimeWait(t.Context(), after))

	for _, m := range methods {
		c := probe.Census{Method: m}
		all := waitCounts(t, c, tw, map[probe.State]int{probe.TimeWait: before + after})
		assert.Equal(t, before+after, all.Total(), m)
		since := tw
		since.MinTimer = probe.TimeWaitSince(mark, time.Now())
		got, err := c.Count(t.Context(), since)
		require.NoError(t, err)
		assert.Equal(t, after, got.Total(), "%s: only the sockets that entered TIME_WAIT after the mark", m)
		for _, s := range listSettled(t, c, tw, before+after) {
			assert.Greater(t, s.Timer, probe.TimeWaitLen-10*time.Second, "%s: a fresh TIME_WAIT timer is near 60 s: %+v", m, s)
			assert.LessOrEqual(t, s.Timer, probe.TimeWaitLen, m)
		}
	}
	assert.Equal(t, time.Nanosecond, probe.TimeWaitSince(mark, mark.Add(2*probe.TimeWaitLen)), "long after, every TIME_WAIT socket is the run's own")

	// One Visit tells the same apart, with ESTABLISHED sockets beside.
	srv.dialEstablished(t, 2)
	both := probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait, probe.Established}}
	for _, m := range methods {
		waitCounts(t, probe.Census{Method: m}, both, map[probe.State]int{probe.TimeWait: before + after, probe.Established: 2})
		threshold := probe.TimeWaitSince(mark, time.Now())
		var tw, own, est int
		got, err := probe.Census{Method: m}.Visit(t.Context(), both, func(st probe.State, timer time.Duration) {
			switch st {
			case probe.TimeWait:
				tw++
				if timer > threshold {
					own++
				}
			case probe.Established:
				est++
			}
		})
		require.NoError(t, err)
		assert.Equal(t, m, got)
		assert.Equal(t, []int{before + after, after, 2}, []int{tw, own, est}, "%s: TIME_WAIT, of it since the mark, ESTABLISHED", m)
	}
}

// The procfs parser reads the kernel's host-order hex words: checked against
// lines as tcp4_seq_show and tcp6_seq_show print them.
func TestParseProcNetTCP(t *testing.T) {
	v4 := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2CCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0
   1: 2E01007F:9EEE 0100007F:2CCB 06 00000000:00000000 03:00000213 00000000     0        0 0 3 0000000000000000
12345: 0100007F:A000 0100007F:2CCB 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 20 4 30 10 -1
`
	v6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:B49B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 522447 1 0000000079722682 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:C000 0000000000000000FFFF00000100007F:2CCB 08 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000079722682 100 0 0 10 0
`
	socks, err := probe.ParseProcNetTCP(t.Context(), bufio.NewReader(strings.NewReader(v4)), probe.IPv4, probe.Filter{})
	require.NoError(t, err)
	assert.Equal(t, []probe.Socket{
		{Family: probe.IPv4, State: probe.Listen, Local: netip.MustParseAddrPort("127.0.0.1:11467"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), UID: 1000, Inode: 12345},
		{Family: probe.IPv4, State: probe.TimeWait, Local: netip.MustParseAddrPort("127.0.1.46:40686"), Remote: netip.MustParseAddrPort("127.0.0.1:11467"), Timer: 5310 * time.Millisecond},
		{Family: probe.IPv4, State: probe.Established, Local: netip.MustParseAddrPort("127.0.0.1:40960"), Remote: netip.MustParseAddrPort("127.0.0.1:11467"), UID: 1000, Inode: 777},
	}, socks)

	socks, err = probe.ParseProcNetTCP(t.Context(), bufio.NewReader(strings.NewReader(v6)), probe.IPv6,
		probe.Filter{RemoteAddr: netip.MustParseAddr("127.0.0.1"), States: []probe.State{probe.CloseWait}})
	require.NoError(t, err)
	assert.Equal(t, []probe.Socket{
		{Family: probe.IPv6, State: probe.CloseWait, Local: netip.MustParseAddrPort("[::ffff:127.0.0.1]:49152"), Remote: netip.MustParseAddrPort("[::ffff:127.0.0.1]:11467"), Inode: 99},
	}, socks)

	socks, err = probe.ParseProcNetTCP(t.Context(), bufio.NewReader(strings.NewReader(v6)), probe.IPv6, probe.Filter{LocalPort: 0xB49B})
	require.NoError(t, err)
	require.Len(t, socks, 1)
	assert.Equal(t, netip.MustParseAddrPort("[::1]:46235"), socks[0].Local)

	_, err = probe.ParseProcNetTCP(t.Context(), bufio.NewReader(strings.NewReader("header\n 0: zz\n")), probe.IPv4, probe.Filter{})
	require.ErrorContains(t, err, "malformed")
}

// A Filter is data: it survives JSON, as a scenario file would hold it.
func TestFilterJSONRoundTrip(t *testing.T) {
	f := probe.Filter{
		States:     []probe.State{probe.TimeWait, probe.Established},
		RemotePort: 11211,
		RemoteAddr: netip.MustParseAddr("127.0.0.1"),
		Family:     probe.IPv4,
	}
	b, err := json.Marshal(f)
	require.NoError(t, err)
	assert.JSONEq(t, `{"states":["TIME-WAIT","ESTAB"],"remote_port":11211,"remote_addr":"127.0.0.1","family":"ipv4"}`, string(b))
	var back probe.Filter
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, f, back)
	require.Error(t, json.Unmarshal([]byte(`{"family":"ipx"}`), &back))
}

func TestParseState(t *testing.T) {
	for name, want := range map[string]probe.State{
		"time-wait": probe.TimeWait, "TIME-WAIT": probe.TimeWait, "TIME_WAIT": probe.TimeWait,
		"established": probe.Established, "ESTAB": probe.Established, "listening": probe.Listen,
		"LISTEN": probe.Listen, "syn-recv": probe.SynRecv, "fin-wait-2": probe.FinWait2, "closed": probe.Close,
	} {
		got, err := probe.ParseState(name)
		require.NoError(t, err, name)
		assert.Equal(t, want, got, name)
	}
	for _, s := range probe.States() {
		got, err := probe.ParseState(s.String())
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	_, err := probe.ParseState("sleeping")
	require.ErrorContains(t, err, `unknown`)
}
