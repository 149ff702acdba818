package dataplane_test

import (
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// Seeded rows, shared by every test and benchmark of the package. Tests
// use disjoint key ranges so that the cache state one leaves does not
// change another's outcome.
const (
	seedPosts    = 20_000 // the benchmarks' 20k-key batches (the postmortem's largest)
	seedProfiles = 2_000
	seedCounts   = 2_000
	// absent is the first key index never seeded: keys from there on are
	// not found.
	absent = 1_000_000
)

// Key ranges of posts, each used by one test or benchmark.
const (
	postsLookup   = 100    // TestLookups, 100 keys
	postsClients  = 300    // TestPerClientMetrics, 200 keys
	postsHTTP     = 600    // TestHTTP*, 100 keys
	postsLogs     = 800    // TestCacheErrors*, 200 keys
	postsTimeWait = 5_000  // TestTimeWait, 15,000 keys
	postsBench    = 0      // benchmarks, 20,000 keys (all seeded posts)
	timeWaitBatch = 15_000 // the postmortem's 15-20k URIs
)

var seed struct {
	once sync.Once
	err  error
}

// seededEnv returns the shared environment with the package's rows
// seeded (once per test binary: a few seconds).
func seededEnv(tb testing.TB) *fixtures.Env {
	tb.Helper()
	env := fixtures.Shared(tb)
	seed.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		s, err := env.NewCluster().CreateSession()
		if err != nil {
			seed.err = err
			return
		}
		defer s.Close()
		// Seed is idempotent: retry when a busy single node times out.
		for attempt := range 3 {
			seed.err = fixtures.Seed(ctx, s, env.Keyspace, fixtures.SeedSpec{
				Posts: seedPosts, Profiles: seedProfiles, Counts: seedCounts, Concurrency: 8,
			})
			if seed.err == nil || ctx.Err() != nil {
				return
			}
			time.Sleep(time.Duration(attempt+1) * time.Second)
		}
	})
	require.NoError(tb, seed.err, "seed the store")
	return env
}

// newDataPlane returns a DataPlane with cfg on the seeded environment,
// closed (with its CQL session) when tb ends.
func newDataPlane(tb testing.TB, cfg dataplane.Config) *dataplane.DataPlane {
	tb.Helper()
	env := seededEnv(tb)
	return newDataPlaneOn(tb, cfg, env.MemcachedAddrs, env)
}

// newDataPlaneOn is newDataPlane with other memcached addresses.
func newDataPlaneOn(tb testing.TB, cfg dataplane.Config, memcached []string, env *fixtures.Env) *dataplane.DataPlane {
	tb.Helper()
	dp, err := dataplane.New(cfg, dataplane.Backends{
		MemcachedAddrs: memcached,
		Session:        env.Session(tb),
		Keyspace:       env.Keyspace,
	})
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = dp.Close() })
	return dp
}

// noLeaks fails tb if goroutines started after this call outlive it. Call
// it before acquiring anything the test closes, after fixtures.Shared.
//
// A gocql session closed while it is still filling its connection pool
// leaves the filling goroutines asleep in a one-second retry; they end by
// themselves and are not counted.
func noLeaks(tb testing.TB) {
	tb.Helper()
	opts := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/gocql/gocql.(*hostConnPool).connectMany"),
		goleak.IgnoreAnyFunction("github.com/gocql/gocql.(*hostConnPool).connectMany.func1"),
	}
	tb.Cleanup(func() { goleak.VerifyNone(tb, opts...) })
}

// closedPort returns a loopback address nothing listens on: dials are
// refused at once.
func closedPort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	addr := ln.Addr().String()
	require.NoError(tb, ln.Close())
	return addr
}

// sourceDial returns a dialer bound to a fresh random 127.0.x.y source
// address (x > 0: never 127.0.0.1, nor one BandAidDialFunc picks), and that
// address: sockets of one data plane can then be told from every other in
// a socket census.
func sourceDial() (dataplane.DialFunc, net.IP) {
	ip := net.IPv4(127, 0, byte(1+rand.IntN(254)), byte(1+rand.IntN(254)))
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: time.Second}
	return d.DialContext, ip
}

// slowStoreConfig is DefaultConfig without a request deadline and with a
// 5 s memcached timeout, for batches of thousands of store reads (warming
// the cache) on a single store node and a busy machine that other tests
// and the race detector slow down.
func slowStoreConfig() dataplane.Config {
	cfg := dataplane.DefaultConfig()
	cfg.Deadline = 0
	cfg.MemcacheTimeout = 5 * time.Second
	return cfg
}

// snapshot gathers dp's metrics.
func snapshot(tb testing.TB, dp *dataplane.DataPlane) dataplane.Snapshot {
	tb.Helper()
	s, err := dp.Metrics()
	require.NoError(tb, err)
	return s
}

// assertTotals checks that dp's Totals are its metrics summed, as a
// sampler would otherwise read them from a Gather.
func assertTotals(tb testing.TB, dp *dataplane.DataPlane) {
	tb.Helper()
	s, got := snapshot(tb, dp), dp.Totals()
	want := dataplane.Totals{
		LookupsInFlight: int64(s.Sum("lookups_in_flight")),
		CacheErrors:     int64(s.Sum("cache_errors_total")),
		PortErrors:      int64(s.Sum("cache_errors_total", "kind", "addr_not_avail") + s.Sum("cache_errors_total", "kind", "addr_in_use")),
		LogWritten:      int64(s.Sum("log_lines_written_total")),
		LogDropped:      int64(s.Sum("log_lines_dropped_total")),
		StoreInFlight:   int64(s.Sum("store_queries_in_flight")),
		ConnsOpen:       int64(s.Sum("memcached_conns_open")),
		CacheHits:       int64(s.Sum("lookups_total", "source", "cache")),
		StoreReads:      int64(s.Sum("lookups_total", "source", "store")),
		DialPortErrors:  int64(s.Sum("memcached_dials_total", "result", "addr_not_avail") + s.Sum("memcached_dials_total", "result", "addr_in_use")),
	}
	assert.Equal(tb, want, got, "Totals against the metrics summed")
}
