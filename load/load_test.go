package load_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
)

// loadSeedPosts is how many posts the flood tests seed; keys past it miss.
const loadSeedPosts = 2_000

var loadSeed struct {
	once sync.Once
	err  error
}

// serveDataPlane starts a data plane with cfg over HTTP on the shared,
// seeded environment; everything is closed when tb ends.
func serveDataPlane(tb testing.TB, cfg dataplane.Config) (*dataplane.DataPlane, *dataplane.Server) {
	tb.Helper()
	env := fixtures.Shared(tb)
	s := env.Session(tb)
	loadSeed.once.Do(func() {
		loadSeed.err = fixtures.Seed(context.Background(), s, env.Keyspace, fixtures.SeedSpec{Posts: loadSeedPosts})
	})
	require.NoError(tb, loadSeed.err)
	dp, err := dataplane.New(cfg, dataplane.Backends{MemcachedAddrs: env.MemcachedAddrs, Session: s, Keyspace: env.Keyspace})
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = dp.Close() })
	// Fill the cache, so the loads below read memcached only: these tests are
	// about the load generator, not the store's throughput.
	_, err = dp.GetPostRecords(tb.Context(), "warmup", fixtures.PostURIs(0, loadSeedPosts))
	require.NoError(tb, err)
	srv, err := dataplane.NewServer(dp)
	require.NoError(tb, err)
	tb.Cleanup(srv.Close)
	return dp, srv
}

func TestFloodProfileValidation(t *testing.T) {
	bad := load.Profile{Rate: -1, BatchMin: 10, BatchMax: 5}
	_, err := load.New("http://127.0.0.1:1", bad)
	require.Error(t, err)
	for _, want := range []string{"Client is empty", `Traffic is ""`, "Rate is -1", "batch 10-5", "Duration", "MaxRequests"} {
		assert.Contains(t, err.Error(), want)
	}
	for _, p := range []load.Profile{load.Background, load.InternalBatch} {
		assert.NoError(t, p.Validate(), p.Client)
	}
}

// An open-loop flood sends at its rate whatever the answers, stops at its
// hard cap, and after Recover nothing more reaches the data plane.
func TestFloodOpenLoopAndRecover(t *testing.T) {
	fixtures.Shared(t)
	noLeaks(t)
	dp, srv := serveDataPlane(t, dataplane.DefaultConfig())

	p := load.Background
	p.Rate, p.Duration, p.MaxRequests, p.KeySpace, p.Seed = 100, time.Minute, 1_000, loadSeedPosts, 7
	f, err := load.NewFlood(srv.URL, p)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Recover(context.Background()) })

	require.NoError(t, f.Inject(t.Context()))
	require.ErrorIs(t, f.Inject(t.Context()), faults.ErrInjected)
	time.Sleep(2 * time.Second)
	require.NoError(t, f.Recover(t.Context()))
	require.NoError(t, f.Recover(t.Context()), "Recover is idempotent")
	rep, err := f.Wait(t.Context())
	require.NoError(t, err)

	// A Poisson process of rate 100/s over 2 s: 200 requests, sd ~14.
	assert.InDelta(t, 200, float64(rep.Stats.Sent), 80, "sent at the profile's rate")
	if !assert.Equal(t, int(rep.Stats.Sent), rep.Outcomes[load.OutcomeOK], "every request answered: %v", rep.Outcomes) {
		for _, r := range rep.Requests[:min(5, len(rep.Requests))] {
			t.Logf("%+v", r)
		}
	}
	assert.Positive(t, rep.P99)

	m1, err := dp.Metrics()
	require.NoError(t, err)
	served := m1.Sum("requests_total", "client", p.Client)
	assert.InDelta(t, float64(rep.Stats.Sent), served, 0, "the data plane counted every request under the load's client name")
	time.Sleep(500 * time.Millisecond)
	m2, err := dp.Metrics()
	require.NoError(t, err)
	assert.InDelta(t, served, m2.Sum("requests_total", "client", p.Client), 0, "no request after Recover")
	assert.Zero(t, m2.Sum("lookups_in_flight"), "no lookup in flight after Recover")
}

// The hard cap holds however high the rate.
func TestFloodHardCap(t *testing.T) {
	fixtures.Shared(t)
	noLeaks(t)
	_, srv := serveDataPlane(t, dataplane.DefaultConfig())
	p := load.Background
	p.Rate, p.Duration, p.MaxRequests, p.KeySpace, p.Seed = 2_000, 10*time.Second, 50, loadSeedPosts, 1
	l, err := load.New(srv.URL, p)
	require.NoError(t, err)
	began := time.Now()
	rep, err := l.Run(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(50), rep.Stats.Sent+rep.Stats.Skipped)
	assert.Less(t, time.Since(began), 5*time.Second, "stopped at the cap, not the duration")
}
