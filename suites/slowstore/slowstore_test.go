// Package slowstore slows the CQL store down under everyday traffic and a
// moderate batch load while memcached is kept cold, so that every lookup goes
// to the store. The data plane reaches the store through a toxiproxy proxy
// (netfault.Proxy) and nothing else, and the store is made slow in three
// stages, one after another (faults.Sequence): every response delayed
// (latency), then every connection throttled (bandwidth), then every
// connection reset (reset_peer).
//
// The fixed data plane must keep its store queries within its bound, its
// goroutines within its envelope and its everyday requests within their
// deadline: a slow store makes requests slow or fail, not pile up. The
// incident data plane must be caught: one goroutine and one store query per
// key with no bound, held for as long as the store takes to answer, pile up
// past the fixed arm's envelope. A regression far smaller than the incident
// (the fixed data plane with its store bound alone removed) must be caught
// too.
package slowstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/netfault"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/suites/internal/suite"
	"github.com/spiral-chaos/spiral/target"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// posts is how many posts are seeded; the loads read them all, from the
// store, since the cache is kept cold.
const posts = 5_000

// The slow store's stages, each a toxic on the proxy between the data
// plane and the store.
const (
	// storeLatency delays every response of the store: hundreds of ms, a
	// node in a long GC pause or compacting.
	storeLatency = 300 * time.Millisecond
	// storeBandwidth caps each connection's responses, in KB/s: a
	// saturated link.
	storeBandwidth = 20
)

// The loads: everyday traffic (many small requests) and a batch load of
// a tenth of the postmortem's batches, at most batchInFlight of them at
// once. With a cold cache every key is a store query: the incident makes
// a batch's all at once, in a goroutine each; the fixed data plane, 16
// chunks at a time and 64 queries in all.
const (
	everydayRate  = 20
	everydayKeys  = 10
	batchKeys     = 2_000
	batchRate     = 0.5
	batchInFlight = 2
	// loadTimeout is past the fixed data plane's request deadline, so that
	// the deadline, not the load generator, is what ends a request stuck
	// on the store.
	loadTimeout = dataplane.DefaultDeadline + 5*time.Second
)

// Budgets of the fixed data plane, set from 3 quick runs in-process and 3
// against cmd/dataplane as a child at about twice their highest peak, and
// held by 3 more of each (2026-12-03, 2 cores). The figures are of all 6.
const (
	// fixedP99 bounds each second's everyday p99 latency during inject and
	// observe, in seconds: the fixed arm peaked at 2.16-3.18 s in-process
	// and 1.21-2.75 s as a child (waiting for the store's 64 slots behind
	// a batch while each query takes storeLatency longer), well inside its
	// 15 s deadline. The incident reached 2.12-2.87 s: this budget is not
	// what catches it.
	fixedP99 = 6.0
	// fixedGoroutines bounds probe.MetricGoroutinesPeak from inject to
	// recover: the fixed arm peaked at 1,071-1,327 in-process and 640-937
	// as a child; the incident at 3,164-4,187, the regression with no
	// store bound at 631-874.
	fixedGoroutines = 2_500
)

// phases returns the run's phases and the stages' offsets in inject. Full
// mode runs these quick phases too: a longer run has not been measured,
// and a budget needs a measured envelope.
func phases() (scenario.Phases, [3]time.Duration) {
	return scenario.Phases{Baseline: 2 * time.Second, Inject: 6 * time.Second, Observe: 1 * time.Second, Recover: 4 * time.Second},
		[3]time.Duration{0, 2 * time.Second, 4 * time.Second}
}

// budgets returns the budgets the fixed data plane must hold.
func budgets() []probe.Budget {
	return []probe.Budget{
		// The store semaphore: a slow store gets no more queries at once
		// from a data plane than it got from a fast one.
		probe.Limit(scenario.MetricStoreInFlight, dataplane.DefaultStoreConcurrency),
		probe.Limit(scenario.MetricStorePeak, dataplane.DefaultStoreConcurrency),
		// Everyday requests end (answered or failed) within their
		// envelope, far inside the deadline.
		probe.Limit(scenario.MetricEverydayLatencyP99, fixedP99, scenario.PhaseInject, scenario.PhaseObserve),
		// Requests waiting on the store don't pile up.
		probe.Limit(probe.MetricGoroutinesPeak, fixedGoroutines, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover),
		// OS threads at work: 3-4 in every fixed run.
		probe.Limit(probe.MetricThreadsBusy, suite.ThreadsBusyBudget),
	}
}

// proxied returns env with the CQL store replaced by a proxy in front of
// it, closed when t ends: a data plane started in the returned Env reaches
// the store only through the proxy. A proxy stands in front of one node:
// an external store of more than one node is skipped, since the data plane
// would reach the others around it.
func proxied(t *testing.T, env *fixtures.Env) (*fixtures.Env, *netfault.Proxy) {
	t.Helper()
	require.NotEmpty(t, env.CQLHosts)
	if env.External() {
		var peers int64
		require.NoError(t, env.Session(t).Query("SELECT count(*) FROM system.peers").WithContext(t.Context()).Scan(&peers),
			"count the external store's peers")
		if n := len(env.CQLHosts); n > 1 || peers > 0 {
			t.Skipf("slowstore proxies one CQL node, and the external store has %d hosts given and %d peers: the data plane would reach the others around the proxy", n, peers)
		}
	}
	px, err := netfault.NewProxy("cql", env.CQLHosts[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	penv := *env
	penv.CQLHosts = []string{px.Addr()}
	return &penv, px
}

// slowStore returns the stages on px: latency, then bandwidth, then
// resets, the last marked in time by resets.
func slowStore(px *netfault.Proxy, at [3]time.Duration, resets *resetStage) (*faults.Sequence, error) {
	resets.Fault = px.ResetPeer(0)
	return faults.NewSequence("slow store",
		faults.Stage{At: at[0], Fault: px.Latency(storeLatency, 0)},
		faults.Stage{At: at[1], Fault: px.Bandwidth(storeBandwidth)},
		faults.Stage{At: at[2], Fault: resets},
	)
}

// resetStage is the slow store's last stage, the proxy resetting every
// connection to the store, with the time it was in: with the cache cold,
// every everyday request that meets it fails, by design, whatever the
// floods do. From its Inject to resetTail past its Recover it excuses
// them from the abort limits (load.AbortLimits.Excuse).
type resetStage struct {
	faults.Fault
	mu          sync.Mutex
	from, until time.Time // until is zero while the resets are in
}

// resetTail is how long after the resets end the data plane still fails
// requests: its CQL session reconnects once a second (fixtures'
// NewCluster), and the last failed everyday request ended 0.99 s after
// the resets ended in each of 3 arms with Spiral's own containers, 0.88 s
// in one against external backends (2026-12-06, quick); two reconnects.
const resetTail = 2 * time.Second

func (r *resetStage) Inject(ctx context.Context) error {
	r.mu.Lock()
	r.from, r.until = time.Now(), time.Time{}
	r.mu.Unlock()
	return r.Fault.Inject(ctx)
}

func (r *resetStage) Recover(ctx context.Context) error {
	err := r.Fault.Recover(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil && !r.from.IsZero() && r.until.IsZero() {
		r.until = time.Now().Add(resetTail)
	}
	return err
}

// excuses reports whether a request that ended at ended met the resets.
func (r *resetStage) excuses(ended time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.from.IsZero() && !ended.Before(r.from) && (r.until.IsZero() || ended.Before(r.until))
}

// abortLimits returns the limits a run's floods (the batch load) are held
// to. The everyday requests that meet the resets fail by design (96% of
// those that ended in a 5 s window of the fixed arm, with Spiral's own
// containers), so against services Spiral does not own the default 5%
// stopped every fixed arm there (21.9-45.5% when it tripped, 0.1 s into
// the resets): the resets' failures are left out instead, and the error
// rate is judged on the rest of the run as load.ExternalAbort judges it.
// The p99 limit is the fixed arm's own budget, fixedP99: the store is
// slowed by Spiral's proxy, not by the floods, and the fixed arm's
// everyday p99 reached 3.18 s (above load.ExternalAbort's 3 s), within
// the requests' loadTimeout. Against Spiral's own containers no limit
// applies, as for every scenario, but the $SPIRAL_ABORT_* variables that
// arm one there leave the resets' failures out too.
func abortLimits(external bool, resets *resetStage) *load.AbortLimits {
	l := load.AbortLimits{}
	if external {
		l = load.ExternalAbort
		l.P99 = time.Duration(fixedP99 * float64(time.Second))
	}
	l.Excuse, l.Excused = resets.excuses, "ended while the store's connections were reset or within "+resetTail.String()+" after"
	return &l
}

// keepCold keeps memcached cold until t ends, so that the keys the data
// plane fills from the store are gone before the loads ask for them again,
// as with a cache far smaller than the keys asked for. On Spiral's own
// memcached it flushes every item now and again every coldCacheInterval.
// On servers Spiral does not own (external mode) it deletes the run's own
// posts' keys instead, sweep after sweep with coldCacheInterval between
// them, and leaves everything else in the cache alone. It is a run's
// environment, not one of its faults: a batch sent before the store slows
// down finds the cache as cold as one sent after, and counts its lookups at
// its end.
func keepCold(t *testing.T, env *fixtures.Env) {
	t.Helper()
	mc := memcache.New(env.MemcachedAddrs...)
	t.Cleanup(func() { _ = mc.Close() })
	forget := func(context.Context) error { return mc.FlushAll() }
	if env.External() {
		keys := dataplane.PostCacheKeys(fixtures.PostURIs(0, posts))
		forget = func(ctx context.Context) error { return suite.ForgetKeys(ctx, env.MemcachedUpstreams, keys) }
	}
	require.NoError(t, forget(t.Context()))
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	var sweeps, failed int
	var took time.Duration
	var last error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(coldCacheInterval):
			}
			// A sweep that times out (the incident's one memcached Get per
			// key swamps the server) is tried again at the next; assertFelt
			// judges how cold the cache stayed.
			start := time.Now()
			err := forget(ctx)
			if ctx.Err() != nil {
				return
			}
			sweeps, took = sweeps+1, took+time.Since(start)
			if err != nil {
				failed, last = failed+1, err
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if sweeps > 0 {
			t.Logf("keep memcached cold: %d sweeps, %v each on average", sweeps, took/time.Duration(sweeps))
		}
		if failed > 0 {
			t.Logf("keep memcached cold: %d of %d sweeps failed, the last: %v", failed, sweeps, last)
		}
	})
}

// coldCacheInterval is the pause between keepCold's sweeps: the loads ask
// for about 1,100 keys a second out of 5,000, so about one key in 90 is
// asked for again within it.
const coldCacheInterval = 50 * time.Millisecond

// slowScenario returns the run of cfg through a slow store behind px, with
// memcached cold; external says the backends are not Spiral's own.
func slowScenario(name string, cfg dataplane.Config, px *netfault.Proxy, external bool) scenario.Scenario {
	ph, at := phases()
	every := load.Background
	every.Rate, every.BatchMin, every.BatchMax, every.KeySpace, every.Timeout = everydayRate, 1, everydayKeys, posts, loadTimeout
	batch := load.InternalBatch
	batch.BatchMin, batch.BatchMax, batch.KeySpace, batch.Timeout = batchKeys, batchKeys, posts, loadTimeout
	batch.Rate, batch.MaxInFlight = batchRate, batchInFlight
	// The loads run from baseline to the end of recover; their caps, twice
	// what their rates send in that time, only bound a run gone wrong.
	run := ph.Baseline + ph.Inject + ph.Observe + ph.Recover
	every.MaxRequests = int(2 * every.Rate * run.Seconds())
	batch.MaxRequests = int(2 * batch.Rate * run.Seconds())
	resets := &resetStage{}
	return scenario.Scenario{
		Name:       "slow-store/" + name,
		Config:     cfg,
		Seed:       scenario.SeedFromEnv(1),
		Data:       fixtures.SeedSpec{Posts: posts},
		Background: []load.Profile{every, batch},
		Faults:     []scenario.FaultFunc{func(scenario.Harness) (faults.Fault, error) { return slowStore(px, at, resets) }},
		Phases:     ph,
		Budgets:    budgets(),
		Abort:      abortLimits(external, resets),
	}
}

func logFigures(t *testing.T, res *scenario.Result) {
	t.Helper()
	for _, m := range []string{
		scenario.MetricStoreInFlight, scenario.MetricStorePeak, scenario.MetricEverydayLatencyP99,
		scenario.MetricLoadErrors, scenario.MetricEverydayErrors, scenario.MetricBatchErrors,
		probe.MetricGoroutines, probe.MetricGoroutinesPeak, probe.MetricThreads, probe.MetricThreadsBusy,
		scenario.MetricLogLines,
	} {
		t.Logf("  peak %s: %v", m, res.Peaks[m])
	}
	for _, m := range []string{scenario.MetricCacheHits, scenario.MetricStoreReads, scenario.MetricLoadErrors, scenario.MetricLoadOK} {
		t.Logf("  %s by phase: baseline %g inject %g observe %g recover %g", m,
			suite.Rise(res, m, scenario.PhaseBaseline), suite.Rise(res, m, scenario.PhaseInject),
			suite.Rise(res, m, scenario.PhaseObserve), suite.Rise(res, m, scenario.PhaseRecover))
	}
	for _, l := range res.Loads {
		var worst time.Duration
		for _, r := range l.Requests {
			worst = max(worst, r.Latency)
		}
		t.Logf("  load %s: slowest request %v", l.Profile.Client, worst)
	}
}

// assertFelt checks that the slow store reached the data plane: its
// latency shows in the everyday requests, its resets fail requests, and
// the cache stayed cold.
func assertFelt(t *testing.T, res *scenario.Result) {
	t.Helper()
	assert.GreaterOrEqual(t, res.Peaks[scenario.MetricEverydayLatencyP99][scenario.PhaseInject], storeLatency.Seconds(),
		"the store's latency must reach the data plane (through the proxy alone)")
	assert.Positive(t, suite.Rise(res, scenario.MetricLoadErrors, scenario.PhaseInject)+suite.Rise(res, scenario.MetricLoadErrors, scenario.PhaseObserve),
		"the proxy's resets must fail requests: a data plane that reached the store around the proxy would not see them")
	var hits, reads float64
	for _, ph := range []string{scenario.PhaseBaseline, scenario.PhaseInject} {
		hits, reads = hits+suite.Rise(res, scenario.MetricCacheHits, ph), reads+suite.Rise(res, scenario.MetricStoreReads, ph)
	}
	assert.Positive(t, reads, "keys are read from the store while the cache is cold")
	assert.Less(t, hits, 0.1*reads, "the cache stays cold: %g hits, %g store reads in baseline and inject", hits, reads)
}

func TestSlowStore(t *testing.T) {
	env := fixtures.Shared(t)
	t.Run("fixed", func(t *testing.T) {
		penv, px := proxied(t, env)
		keepCold(t, env)
		res := suite.RunUnderTest(t, penv, slowScenario("fixed", suite.FixedConfig(t), px, env.External()))
		logFigures(t, res)
		assert.Empty(t, res.Violations, "the fixed data plane must hold every budget while the store is slow")
		for _, l := range res.LoadSummary {
			// A batch of 2,000 keys takes longer than a stage while the
			// store is slow, and the resets fail those in flight: in the
			// first run after the store started, none was answered.
			if l.Traffic == load.TrafficEveryday {
				assert.Positive(t, l.Stats.OK, "load %s was answered: a run without load proves nothing", l.Client)
			} else {
				assert.Positive(t, l.Stats.Sent, "load %s was sent: a run without load proves nothing", l.Client)
			}
			assert.False(t, l.Failed, "load %s finished: %s", l.Client, l.Error)
			// Requests fail fast: none outlives the data plane's deadline
			// (the load generator would wait longer).
			assert.LessOrEqual(t, l.Max, dataplane.DefaultDeadline+time.Second, "load %s: slowest request", l.Client)
		}
		assertFelt(t, res)
		assert.True(t, res.Validated, res.ValidateError)
	})
	// A regression far smaller than the incident: the fixed data plane
	// with its store bound removed, every other knob as fixed.
	t.Run("regression-unbounded-store", func(t *testing.T) {
		penv, px := proxied(t, env)
		keepCold(t, env)
		cfg := dataplane.DefaultConfig()
		cfg.StoreConcurrency = 0
		res := suite.RunControl(t, penv, slowScenario("regression-unbounded-store", cfg, px, env.External()))
		if res == nil {
			return // caught by the abort limits
		}
		logFigures(t, res)
		assert.True(t, res.Violated(scenario.MetricStorePeak),
			"a store bound removed must be caught; peaks %v", res.Peaks[scenario.MetricStorePeak])
		assertFelt(t, res)
		assert.True(t, res.Validated, res.ValidateError)
	})
	t.Run("incident", func(t *testing.T) {
		penv, px := proxied(t, env)
		keepCold(t, env)
		res := suite.RunControl(t, penv, slowScenario("incident", dataplane.IncidentConfig(), px, env.External()))
		if res == nil {
			return // caught by the abort limits
		}
		logFigures(t, res)
		assert.True(t, res.Violated(scenario.MetricStorePeak),
			"the incident's unbounded store queries must be caught; peaks %v", res.Peaks[scenario.MetricStorePeak])
		assert.True(t, res.Violated(probe.MetricGoroutinesPeak),
			"the incident's goroutines, one per key held while the store is slow, must be caught; peaks %v", res.Peaks[probe.MetricGoroutinesPeak])
		assertFelt(t, res)
		suite.AssertTopClient(t, res, load.InternalBatch.Client)
		assert.True(t, res.Validated, "the incident data plane answers again once the store is fast: %s", res.ValidateError)
	})
}

// TestStoreThroughProxy proves that the data plane under test reaches the
// store through the proxy and nothing else: with the proxy closed, its
// store reads fail. A data plane that dialed the address the store
// advertises (system.local, system.peers, Scylla's shard-aware port) would
// still answer, and the suite's faults would miss it.
func TestStoreThroughProxy(t *testing.T) {
	env := fixtures.Shared(t)
	penv, px := proxied(t, env)
	sc := scenario.Scenario{Name: "slow-store/through-proxy", Data: fixtures.SeedSpec{Posts: 200}}
	require.NoError(t, scenario.Prepare(t.Context(), penv, sc))
	keepCold(t, env)

	tgt := suite.UnderTest(t, dataplane.DefaultConfig())
	if tgt == nil {
		tgt = target.NewInProcess(dataplane.DefaultConfig())
	}
	require.NoError(t, tgt.Start(t.Context(), target.BackendsOf(penv)))
	t.Cleanup(func() { _ = tgt.Stop(context.WithoutCancel(t.Context())) })
	c := &dataplane.Client{URL: tgt.URL(), Name: "through-proxy", Shape: target.ShapeOf(tgt)}

	got, err := c.GetPostRecords(t.Context(), fixtures.PostURIs(0, 100))
	require.NoError(t, err, "through the proxy the store answers")
	require.Len(t, got, 100)
	for i, p := range got {
		require.NotNil(t, p, "post %d read from the store", i)
	}

	require.NoError(t, px.Close())
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err = c.GetPostRecords(ctx, fixtures.PostURIs(100, 100))
	require.Error(t, err, "with the proxy closed the store must be out of reach: the data plane reached it another way")
	t.Logf("with the proxy closed: %v", err)
}
