package netfault_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/netfault"
)

// toxicLatency is the latency the toxic tests add: far above a loopback
// round trip (tens of µs), far below the client's timeout.
const toxicLatency = 200 * time.Millisecond

// memcachedProxy starts a proxy to the shared memcached, closed when t
// ends, and returns it with a client of its own pointed at it.
func memcachedProxy(tb testing.TB) (*netfault.Proxy, *memcache.Client) {
	tb.Helper()
	env := fixtures.Shared(tb)
	p, err := netfault.NewProxy("memcached", env.MemcachedAddr)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, p.Close()) })
	mc := memcache.New(p.Addr())
	mc.Timeout = 2 * time.Second
	tb.Cleanup(func() { _ = mc.Close() })
	return p, mc
}

// injectToxic injects f and recovers it when t ends.
func injectToxic(tb testing.TB, f *netfault.Toxic) {
	tb.Helper()
	require.NoError(tb, f.Inject(tb.Context()))
	tb.Cleanup(func() { require.NoError(tb, f.Recover(context.Background())) })
}

// timedGet returns how long a Get of key took, failing t on an error.
func timedGet(tb testing.TB, mc *memcache.Client, key string) time.Duration {
	tb.Helper()
	began := time.Now()
	_, err := mc.Get(key)
	require.NoError(tb, err)
	return time.Since(began)
}

func TestToxicLatencyDelaysGets(t *testing.T) {
	fixtures.Shared(t)
	noLeaks(t)
	p, mc := memcachedProxy(t)
	require.NoError(t, mc.Set(&memcache.Item{Key: "spiral:toxic", Value: []byte("v")}))
	before := timedGet(t, mc, "spiral:toxic") // opens the pooled connection

	lat := p.Latency(toxicLatency, 0)
	require.Contains(t, lat.Name(), "latency=200")
	injectToxic(t, lat)
	require.ErrorIs(t, lat.Inject(t.Context()), faults.ErrInjected)
	during := timedGet(t, mc, "spiral:toxic")
	assert.GreaterOrEqual(t, during, toxicLatency, "the toxic adds its latency to a Get")

	require.NoError(t, lat.Recover(t.Context()))
	require.NoError(t, lat.Recover(t.Context()), "Recover is idempotent")
	after := timedGet(t, mc, "spiral:toxic")
	t.Logf("Get through the proxy: %v, with %v latency: %v, after Recover: %v",
		before.Round(time.Microsecond), toxicLatency, during.Round(time.Millisecond), after.Round(time.Microsecond))
	assert.Less(t, after, toxicLatency, "the latency is gone after Recover")
}

func TestToxicResetFailsRequests(t *testing.T) {
	fixtures.Shared(t)
	noLeaks(t)
	p, mc := memcachedProxy(t)
	require.NoError(t, mc.Set(&memcache.Item{Key: "spiral:toxic", Value: []byte("v")}))

	reset := p.ResetPeer(0)
	injectToxic(t, reset)
	// A pooled connection, then new ones: every request fails.
	for i := range 3 {
		_, err := mc.Get("spiral:toxic")
		require.Error(t, err, "Get %d through a resetting proxy", i)
		t.Logf("Get %d with the reset toxic: %v", i, err)
	}

	require.NoError(t, reset.Recover(t.Context()))
	_ = mc.Close() // drop connections the toxic broke
	it, err := mc.Get("spiral:toxic")
	require.NoError(t, err, "requests succeed after Recover")
	assert.Equal(t, "v", string(it.Value))
}

func TestToxicBandwidthCapsTransfer(t *testing.T) {
	fixtures.Shared(t)
	noLeaks(t)
	p, mc := memcachedProxy(t)
	const size, rate = 200_000, 500 // bytes, KB/s: 0.4 s for the value
	require.NoError(t, mc.Set(&memcache.Item{Key: "spiral:toxic-big", Value: bytes.Repeat([]byte("b"), size)}))

	bw := p.Bandwidth(rate)
	injectToxic(t, bw)
	capped := timedGet(t, mc, "spiral:toxic-big")
	require.NoError(t, bw.Recover(t.Context()))
	free := timedGet(t, mc, "spiral:toxic-big")
	t.Logf("Get of %d KB at %d KB/s: %v; after Recover: %v", size/1000, rate, capped.Round(time.Millisecond), free.Round(time.Millisecond))
	assert.GreaterOrEqual(t, capped, time.Duration(size/rate)*time.Millisecond*4/5, "the cap slows the transfer")
	assert.Less(t, free, capped/2)
}

func TestToxicProxyCloseLeavesNoListener(t *testing.T) {
	noLeaks(t)
	upstream := newAcceptor(t)
	p, err := netfault.NewProxy("plain", upstream.addr())
	require.NoError(t, err)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err, "the proxy accepts")
	t.Cleanup(func() { _ = c.Close() })

	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close twice")
	_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
	require.Error(t, err, "nothing listens after Close")
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err, "proxied connections are closed")
	require.Error(t, p.Latency(time.Second, 0).Inject(t.Context()), "no toxic on a closed proxy")
}
