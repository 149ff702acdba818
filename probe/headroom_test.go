package probe_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// Headroom toward a destination: the ephemeral range less the local ports
// of established and TIME_WAIT sockets toward it, in both census methods.
func TestHeadroomCountsPortsHeldTowardDestination(t *testing.T) {
	const established, timeWait = 4, 6
	srv := startServer(t, "tcp4", "127.0.0.1")
	srv.dialEstablished(t, established)
	require.NoError(t, srv.makeTimeWait(t.Context(), timeWait))
	waitCounts(t, probe.Census{}, probe.Filter{RemotePort: srv.port()},
		map[probe.State]int{probe.Established: established, probe.TimeWait: timeWait})

	r, err := probe.EphemeralRange()
	require.NoError(t, err)
	require.Positive(t, r.Size())

	anyAddr := netip.AddrPortFrom(netip.IPv4Unspecified(), srv.port())
	for _, m := range methods {
		c := probe.Census{Method: m}
		for _, dest := range []netip.AddrPort{srv.addr, anyAddr} {
			h, err := c.Headroom(t.Context(), dest)
			require.NoError(t, err)
			assert.Equal(t, r, h.Range, m)
			assert.Equal(t, established+timeWait, h.Held, "%s toward %s", m, dest)
			assert.Equal(t, timeWait, h.HeldTimeWait, "%s toward %s", m, dest)
			assert.Equal(t, r.Size()-h.Reserved-h.Held, h.Free, m)
			assert.Contains(t, h.String(), "10 held toward")
		}

		h, err := c.Headroom(t.Context(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), srv.port()))
		require.NoError(t, err)
		assert.Zero(t, h.Held, "%s: nothing toward another address", m)
		assert.Equal(t, r.Size()-h.Reserved, h.Free, m)
	}
}

func TestPortRange(t *testing.T) {
	r := probe.PortRange{Low: 32768, High: 60999}
	assert.Equal(t, 28232, r.Size())
	assert.True(t, r.Contains(32768))
	assert.True(t, r.Contains(60999))
	assert.False(t, r.Contains(61000))
	assert.Equal(t, "32768-60999", r.String())
	assert.Zero(t, probe.PortRange{Low: 2, High: 1}.Size())
}
