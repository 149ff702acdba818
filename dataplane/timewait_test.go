package dataplane_test

import (
	"net"
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/probe"
)

// Budgets of TestTimeWaitAfterOneLargeBatch, from the issue: the incident
// must leave more than 1,000 sockets in TIME_WAIT to memcached after one
// 15,000-URI batch (a prototype here left about 4,300), the fixed data
// plane fewer than 50 (the prototype left none).
const (
	incidentMinTimeWait = 1000
	fixedMaxTimeWait    = 50
)

// TestTimeWaitAfterOneLargeBatch is the postmortem's mechanism, made
// real: one GetPostRecords of 15,000 URIs, all cache hits, with the
// incident configuration dials thousands of memcached connections and
// closes every one the 1000-connection idle pool can't keep, leaving them
// in TIME_WAIT on this host; with the fixed configuration the same batch
// leaves (almost) none.
//
// Each data plane dials from its own random 127.0.x.y source address, so
// the census counts its sockets only, whatever earlier tests left behind.
func TestTimeWaitAfterOneLargeBatch(t *testing.T) {
	env := seededEnv(t)
	uris := fixtures.PostURIs(postsTimeWait, timeWaitBatch)
	port := memcachedPort(t, env)

	// Warm the cache, so that only memcached sees the batch in both runs.
	warm := newDataPlane(t, slowStoreConfig())
	posts, err := warm.GetPostRecords(t.Context(), "warm", uris)
	require.NoError(t, err)
	for i, p := range posts {
		require.NotNil(t, p, "post %d is seeded", postsTimeWait+i)
	}

	for _, tc := range []struct {
		name string
		cfg  dataplane.Config
	}{
		{"incident", dataplane.IncidentConfig()},
		{"fixed", dataplane.DefaultConfig()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "incident" && raceEnabled {
				t.Skip("the race detector allows 8128 live goroutines; the incident starts one per URI")
			}
			noLeaks(t)
			dial, src := sourceDial()
			cfg := tc.cfg
			cfg.DialContext = dial
			dp := newDataPlane(t, cfg)

			posts, err := dp.GetPostRecords(t.Context(), "internal", uris)
			timeWait := countTimeWait(t, port, src)

			s := snapshot(t, dp)
			t.Logf("%s: TIME_WAIT to memcached port %d from %v: %d; dials %v, closed by the data plane %v, request error: %v",
				tc.name, port, src, timeWait, s.Sum("memcached_dials_total"), s.Sum("memcached_conns_closed_total"), err)
			if tc.name == "incident" {
				assert.Greater(t, timeWait, incidentMinTimeWait,
					"one goroutine per key with no bound must churn connections through the idle pool")
				return
			}
			require.NoError(t, err)
			assert.Len(t, posts, timeWaitBatch)
			assert.InDelta(t, timeWaitBatch, s.Sum("lookups_total", "source", "cache"), 0, "all hits")
			assert.Less(t, timeWait, fixedMaxTimeWait)
			assert.InDelta(t, 0, s.Sum("memcached_conns_closed_total"), 0, "every connection fits back in the idle pool")
		})
	}
}

// memcachedPort is the port of the environment's first memcached.
func memcachedPort(tb testing.TB, env *fixtures.Env) uint16 {
	tb.Helper()
	_, p, err := net.SplitHostPort(env.MemcachedAddr)
	require.NoError(tb, err)
	port, err := strconv.ParseUint(p, 10, 16)
	require.NoError(tb, err)
	return uint16(port)
}

// countTimeWait counts TIME_WAIT sockets from src to port on this host.
func countTimeWait(tb testing.TB, port uint16, src net.IP) int {
	tb.Helper()
	socks, err := probe.Census{}.List(tb.Context(), probe.Filter{States: []probe.State{probe.TimeWait}, RemotePort: port})
	require.NoError(tb, err)
	want, ok := netip.AddrFromSlice(src.To4())
	require.True(tb, ok)
	n := 0
	for _, s := range socks {
		if s.Local.Addr().Unmap() == want {
			n++
		}
	}
	return n
}
