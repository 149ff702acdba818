package probe_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"

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
// (local port).
func TestCensusCountsPopulation(t *testing.T) {
	const established, timeWait = 5, 7
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, fam.network, fam.host)
			srv.dialEstablished(t, established)
			require.NoError(t, srv.makeTimeWait(t.Context(), timeWait))

			clientSide := probe.Filter{RemotePort: srv.port()}
			serverSide := probe.Filter{LocalPort: srv.port()}
			wantClient := map[probe.State]int{probe.Established: established, probe.TimeWait: timeWait}
			wantServer := map[probe.State]int{probe.Listen: 1, probe.Established: established}
			waitCounts(t, probe.Census{Method: probe.Netlink}, clientSide, wantClient)
			waitCounts(t, probe.Census{Method: probe.Netlink}, serverSide, wantServer)

			for _, m := range methods {
				c := probe.Census{Method: m}
				got, err := c.Count(t.Context(), clientSide)
				require.NoError(t, err)
				assert.Equal(t, m, got.Method)
				assert.Equal(t, wantClient, countsMap(got), "%s, client side", m)
				assert.Equal(t, established+timeWait, got.Total())

				got, err = c.Count(t.Context(), serverSide)
				require.NoError(t, err)
				assert.Equal(t, wantServer, countsMap(got), "%s, server side", m)

				got, err = c.Count(t.Context(), probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}})
				require.NoError(t, err)
				assert.Equal(t, map[probe.State]int{probe.TimeWait: timeWait}, countsMap(got), "%s, TIME-WAIT only", m)

				got, err = c.Count(t.Context(), probe.Filter{RemotePort: srv.port(), Family: fam.family})
				require.NoError(t, err)
				assert.Equal(t, wantClient, countsMap(got), "%s, own family", m)

				got, err = c.Count(t.Context(), probe.Filter{RemotePort: srv.port(), Family: fam.other})
				require.NoError(t, err)
				assert.Zero(t, got.Total(), "%s, other family", m)

				got, err = c.Count(t.Context(), probe.Filter{RemotePort: srv.port(), RemoteAddr: srv.addr.Addr()})
				require.NoError(t, err)
				assert.Equal(t, wantClient, countsMap(got), "%s, peer address", m)

				got, err = c.Count(t.Context(), probe.Filter{LocalPort: srv.port(), RemotePort: srv.port()})
				require.NoError(t, err)
				assert.Zero(t, got.Total(), "%s, both ports", m)
			}
		})
	}
}

// A census of both families answers the same from one legacy dump as from
// one SOCK_DIAG_BY_FAMILY dump per family.
func TestCensusDumpKindsAgree(t *testing.T) {
	var filters []probe.Filter
	for _, fam := range families {
		srv := startServer(t, fam.network, fam.host)
		srv.dialEstablished(t, 2)
		require.NoError(t, srv.makeTimeWait(t.Context(), 3))
		f := probe.Filter{RemotePort: srv.port()}
		waitCounts(t, probe.Census{}, f, map[probe.State]int{probe.Established: 2, probe.TimeWait: 3})
		filters = append(filters, f, probe.Filter{LocalPort: srv.port()})
	}
	var legacy []map[probe.State]int
	for _, f := range filters {
		c, err := probe.Census{Method: probe.Netlink}.Count(t.Context(), f)
		require.NoError(t, err)
		legacy = append(legacy, countsMap(c))
	}
	t.Cleanup(probe.SetLegacyDump(false))
	for i, f := range filters {
		c, err := probe.Census{Method: probe.Netlink}.Count(t.Context(), f)
		require.NoError(t, err)
		assert.Equal(t, legacy[i], countsMap(c), "%+v", f)
	}
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
				socks, err := probe.Census{Method: m}.List(t.Context(), f)
				require.NoError(t, err)
				require.Len(t, socks, 2, m)
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
		socks, err := c.List(t.Context(), f)
		require.NoError(t, err)
		require.Len(t, socks, 1, m)
		assert.Equal(t, probe.IPv6, socks[0].Family, m)
		assert.Equal(t, netip.MustParseAddr("::ffff:127.0.0.1"), socks[0].Remote.Addr(), m)

		got, err := c.Count(t.Context(), probe.Filter{RemotePort: srv.port(), Family: probe.IPv4})
		require.NoError(t, err)
		assert.Zero(t, got.Total(), m)

		got, err = c.Count(t.Context(), probe.Filter{RemotePort: srv.port(), RemoteAddr: netip.MustParseAddr("127.0.0.2")})
		require.NoError(t, err)
		assert.Zero(t, got.Total(), m)
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

	got, err := probe.Census{}.Count(t.Context(), f)
	require.NoError(t, err)
	assert.Equal(t, probe.Procfs, got.Method)
	assert.Equal(t, want, countsMap(got))

	_, err = probe.Census{Method: probe.Netlink}.Count(t.Context(), f)
	require.ErrorIs(t, err, probe.ErrNetlinkRefused)
	require.ErrorIs(t, err, unix.EPERM)
}

func TestCensusRejectsBadFilter(t *testing.T) {
	_, err := probe.Census{}.Count(t.Context(), probe.Filter{States: []probe.State{42}})
	require.ErrorContains(t, err, "unknown tcp state 42")
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
		{Family: probe.IPv4, State: probe.TimeWait, Local: netip.MustParseAddrPort("127.0.1.46:40686"), Remote: netip.MustParseAddrPort("127.0.0.1:11467")},
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
