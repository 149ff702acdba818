package probe_test

import (
	"net/netip"
	"testing"
	"time"

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
	otherAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), srv.port())
	for _, m := range methods {
		c := probe.Census{Method: m}
		for _, dest := range []netip.AddrPort{srv.addr, anyAddr} {
			h := headroomSettled(t, c, dest, established+timeWait)
			assert.Equal(t, r, h.Range, m)
			assert.Equal(t, timeWait, h.HeldTimeWait, "%s toward %s", m, dest)
			assert.Equal(t, r.Size()-h.Reserved-h.Held, h.Free, m)
			assert.Contains(t, h.String(), "10 held toward")
		}
		h := headroomSettled(t, c, otherAddr, 0)
		assert.Equal(t, r.Size()-h.Reserved, h.Free, "%s: nothing toward another address", m)
	}
}

// headroomSettled polls Headroom until it counts held ports (a census is no
// atomic snapshot while other sockets come and go).
func headroomSettled(t *testing.T, c probe.Census, dest netip.AddrPort, held int) probe.Headroom {
	t.Helper()
	var h probe.Headroom
	var err error
	for deadline := time.Now().Add(settleTimeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		h, err = c.Headroom(t.Context(), dest)
		if err == nil && h.Held == held {
			return h
		}
	}
	require.NoError(t, err)
	require.Equal(t, held, h.Held, "%s headroom toward %s never settled", c.Method, dest)
	return h
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
