package netfault_test

import (
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/netfault"
	"github.com/spiral-chaos/spiral/netns"
	"github.com/spiral-chaos/spiral/probe"
)

// A namespace's port budget confines the namespace's dials to it while
// injected, and leaves the machine's range alone.
func TestNetnsPortBudget(t *testing.T) {
	noLeaks(t)
	if os.Geteuid() != 0 {
		t.Skip("making a network namespace needs root")
	}
	ns, err := netns.New()
	require.NoError(t, err)
	t.Cleanup(func() { _ = ns.Close() })
	hostEph, err := probe.EphemeralRange()
	require.NoError(t, err)
	before, err := ns.Sysctl("net/ipv4/ip_local_port_range")
	require.NoError(t, err)

	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = ln.Close() }()
	dialPort := func() int {
		c, err := ns.DialContext(t.Context(), "tcp", ln.Addr().String())
		require.NoError(t, err)
		defer func() { _ = c.Close() }()
		s, err := ln.Accept()
		require.NoError(t, err)
		_ = s.Close()
		return c.LocalAddr().(*net.TCPAddr).Port
	}

	b := netfault.NetnsBudget(4)
	assert.Equal(t, netfault.PortBudget{Low: 32768, High: 32771}, b)
	f := &netfault.NetnsPortBudget{NS: ns, Budget: b}
	require.NoError(t, f.Inject(t.Context()))
	require.ErrorIs(t, f.Inject(t.Context()), faults.ErrInjected)
	for range 3 {
		assert.True(t, b.Contains(dialPort()), "a dial inside takes its port from the budget")
	}
	eph, err := probe.EphemeralRange()
	require.NoError(t, err)
	assert.Equal(t, hostEph, eph, "the machine's range is untouched")

	require.NoError(t, f.Recover(t.Context()))
	require.NoError(t, f.Recover(t.Context()), "Recover is idempotent")
	after, err := ns.Sysctl("net/ipv4/ip_local_port_range")
	require.NoError(t, err)
	assert.Equal(t, before, after, "Recover restores the range")

	bad := &netfault.NetnsPortBudget{NS: ns, Budget: netfault.PortBudget{Low: 80, High: 90}}
	require.Error(t, bad.Inject(t.Context()))
	require.Error(t, (&netfault.NetnsPortBudget{Budget: b}).Inject(t.Context()))
}
