package dataplane_test

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/probe"
)

// TestBandAidDialer: with the postmortem's band-aid, memcached connections
// come from 127.1-254.x.x source addresses, not 127.0.0.1.
func TestBandAidDialer(t *testing.T) {
	env := seededEnv(t)
	noLeaks(t)
	cfg := dataplane.IncidentConfig()
	cfg.BandAidDialer = true
	dp := newDataPlane(t, cfg)
	_, err := dp.GetPostRecords(t.Context(), "test", fixtures.PostURIs(postsLookup, 50))
	require.NoError(t, err)

	// The idle pool holds the connections the batch dialed.
	socks, err := probe.Census{}.List(t.Context(), probe.Filter{
		States: []probe.State{probe.Established}, RemotePort: memcachedPort(t, env),
	})
	require.NoError(t, err)
	bandAid := 0
	for _, s := range socks {
		if ip := s.Local.Addr().Unmap().As4(); ip[0] == 127 && ip[1] != 0 {
			bandAid++
		}
	}
	dials := snapshot(t, dp).Sum("memcached_dials_total", "result", "ok")
	assert.Positive(t, dials)
	assert.GreaterOrEqual(t, float64(bandAid), dials-snapshot(t, dp).Sum("memcached_conns_closed_total"),
		"every open connection of this data plane comes from a band-aid address")
}

// TestDeadline: memcached dials take longer than the request deadline; the
// request fails as a timeout (504 over HTTP) instead of waiting.
func TestDeadline(t *testing.T) {
	seededEnv(t)
	noLeaks(t)
	cfg := dataplane.DefaultConfig()
	cfg.Deadline = 100 * time.Millisecond
	cfg.MemcacheTimeout = 5 * time.Second
	cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		time.Sleep(300 * time.Millisecond) // a slow dial that ignores ctx
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	dp := newDataPlane(t, cfg)
	uris := fixtures.PostURIs(postsLookup, 250)

	start := time.Now()
	_, err := dp.GetPostRecords(t.Context(), "test", uris)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 2*time.Second, "answers about one dial after the deadline")
	assert.InDelta(t, 1, snapshot(t, dp).Sum("requests_total", "code", "deadline"), 0)

	// Over HTTP, from a data plane of its own (no idle connection is left
	// from the request above), a post never seeded, so never cached: the
	// dial outlasts the deadline, and the store read after the miss finds
	// it passed. (A key memcached holds would be answered when the slow dial
	// returns: gomemcache's calls don't take a context.)
	srv := newServer(t, newDataPlane(t, cfg))
	uncached := fixtures.PostURI(absent)
	status, eb := post(t, srv, "/xrpc/GetPostRecords", "test", `{"uris":["`+uncached+`"]}`)
	assert.Equal(t, http.StatusGatewayTimeout, status)
	assert.Equal(t, "Timeout", eb.Error)
}
