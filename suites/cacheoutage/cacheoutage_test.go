// Package cacheoutage takes memcached away from the data plane under
// everyday traffic and a moderate batch load: paused (a hung cache: the
// kernel still accepts connections, nothing answers, every operation times
// out) or killed and started again (a dead cache: connections refused, then
// an empty cache).
//
// The fixed data plane must keep answering from the CQL store within its
// store concurrency, write error lines within its rate limit, and serve
// from the cache again once memcached returns. The incident data plane
// must be caught: FailRequest fails every request that meets the outage,
// every error is logged, and, with no store bound, a restarted memcached's
// empty cache sends one CQL query per key of a batch, all at once.
package cacheoutage

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/suites/internal/suite"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// Metrics this suite judges and charts besides the runner's: the runner's
// keys by source (cumulative, from the data plane's lookups_total), and
// the store's in-flight high-water mark, which the runner records.
const (
	// metricCacheHits is keys answered from memcached.
	metricCacheHits = scenario.MetricCacheHits
	// metricStoreReads is keys that missed (or could not reach) memcached
	// and were answered from the CQL store.
	metricStoreReads = scenario.MetricStoreReads
	// metricStorePeak is the highest dp_store_queries_in_flight between two
	// samples, as the data plane keeps it: the incident's store queries
	// come in bursts of a batch's keys that last 200-400 ms (measured) and
	// mostly fall between the runner's samples.
	metricStorePeak = scenario.MetricStorePeak
)

// posts is how many posts are seeded and cached before the run: every
// lookup is a cache hit until the outage, so the store's load is the
// outage's doing.
const posts = 5_000

// The moderate batch load: batches of batchKeys, a fortieth of the
// postmortem's 20,000 yet large enough that the incident's one CQL query
// per key, unbounded, dwarfs the fixed data plane's store concurrency;
// batchRate of them a second, so that several meet the cold cache of a
// restarted memcached within the recover phase.
const (
	batchKeys = 500
	batchRate = 2
)

// outage is one way for memcached to be down, and the fixed data plane's
// envelope through it in quick and full mode.
type outage struct {
	name        string
	action      faults.ContainerAction
	quick, full envelope
}

// envelope is the fixed data plane's budgets through one outage in one
// mode: about twice the highest peak of 5 quick or 3 full runs
// (2026-12-02, 2 cores, `make envelope PKG=./suites/...`).
type envelope struct {
	// logLines bounds the error lines written in the run. The rate
	// limit's own bound (PerSecond+Burst lines, then PerSecond for every
	// second errors can occur: 430 in quick mode with 30 s of slack for
	// stopping and restarting memcached) would let a limiter three times
	// too permissive pass.
	logLines float64
	// p99 bounds each second's everyday p99 latency during inject and
	// observe, in seconds.
	p99 float64
	// gcShare bounds GC's share of CPU per interval during inject and
	// observe.
	gcShare float64
	// goroutines bounds probe.MetricGoroutinesPeak from inject to recover:
	// requests waiting on the store hold goroutines.
	goroutines float64
}

var outages = []outage{
	// A hung cache: every operation times out. Fixed arm, quick: 85-86
	// lines, p99 0.53-0.99 s (each lookup waits out memcached's 500 ms
	// timeout, then reads the store), GC share 0.059-0.113, 425-662
	// goroutines (the incident: 2,350); full: 276-278 lines, p99
	// 0.61-2.37 s, GC share 0.077-0.14, 479-1,800 goroutines (the
	// incident: 2,960-2,990; its failed requests and log lines catch it).
	{"hung", faults.ContainerPause,
		envelope{logLines: 172, p99: 2.0, gcShare: 0.23, goroutines: 1_330},
		envelope{logLines: 556, p99: 4.8, gcShare: 0.28, goroutines: 3_600}},
	// A dead cache, started again (empty) by Recover. Fixed arm, quick:
	// 92-93 lines, p99 35-279 ms, GC share 0.086-0.227, 213-264 goroutines
	// (the incident: 674-1,040); full: 282-289 lines, p99 0.05-1.32 s, GC
	// share 0.076-0.12, 216-1,160 goroutines (one run of three, when the
	// store slowed and requests queued on its bound of 64).
	{"dead", faults.ContainerKill,
		envelope{logLines: 186, p99: 0.56, gcShare: 0.46, goroutines: 530},
		envelope{logLines: 578, p99: 2.64, gcShare: 0.24, goroutines: 2_320}},
}

// budgets returns the budgets of a run through o in the current mode; the
// fixed data plane must hold them all.
func budgets(o outage) []probe.Budget {
	e := o.quick
	if scenario.Mode() != "quick" {
		e = o.full
	}
	return []probe.Budget{
		// The fixed data plane's store semaphore: an outage of the cache
		// must not become one of the store.
		probe.Limit(scenario.MetricStoreInFlight, dataplane.DefaultStoreConcurrency),
		probe.Limit(metricStorePeak, dataplane.DefaultStoreConcurrency),
		// Every request is answered, from the store while memcached is
		// away.
		probe.Limit(scenario.MetricLoadErrors, 0),
		// Error lines within the rate limit: the postmortem's "millions of
		// logs per second" must not happen.
		probe.Limit(scenario.MetricLogLines, e.logLines),
		// Everyday requests answered from the store keep their latency,
		// the process does not spend its CPU in GC, and requests waiting
		// on the store don't pile up.
		probe.Limit(scenario.MetricEverydayLatencyP99, e.p99, scenario.PhaseInject, scenario.PhaseObserve),
		probe.Limit(probe.MetricGCCPUFraction, e.gcShare, scenario.PhaseInject, scenario.PhaseObserve),
		probe.Limit(probe.MetricGoroutinesPeak, e.goroutines, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover),
		// OS threads at work: 4-5 in every fixed run.
		probe.Limit(probe.MetricThreadsBusy, suite.ThreadsBusyBudget),
	}
}

// outageScenario returns the run of cfg through outage o. Its probes poll
// the data plane while the run samples.
func outageScenario(t *testing.T, o outage, name string, cfg dataplane.Config) scenario.Scenario {
	t.Helper()
	bg := load.Background
	bg.Rate, bg.KeySpace = 50, posts
	batch := load.InternalBatch
	batch.BatchMin, batch.BatchMax, batch.KeySpace = batchKeys, batchKeys, posts
	batch.Rate, batch.MaxInFlight = batchRate, 4
	phases := scenario.Phases{Baseline: 2 * time.Second, Inject: 4 * time.Second, Observe: 2 * time.Second, Recover: 4 * time.Second}
	if scenario.Mode() != "quick" {
		// Longer, not heavier. With memcached down every key is a CQL
		// read: these loads ask for about 2,300 a second, and the store,
		// 64 queries at a time, answered 3,000-6,000 a second here
		// depending on the machine's other load. At twice the everyday
		// rate it fell behind and latency climbed toward the timeout.
		phases = scenario.Phases{Baseline: 5 * time.Second, Inject: 20 * time.Second, Observe: 5 * time.Second, Recover: 15 * time.Second}
	}
	// The loads run from baseline to the end of recover; their caps, twice
	// what their rates send in that time, only bound a run gone wrong.
	run := phases.Baseline + phases.Inject + phases.Observe + phases.Recover
	bg.MaxRequests = int(2 * bg.Rate * run.Seconds())
	batch.MaxRequests = int(2 * batch.Rate * run.Seconds())
	return scenario.Scenario{
		Name:       "cache-outage/" + o.name + "/" + name,
		Config:     cfg,
		Seed:       scenario.SeedFromEnv(1),
		Data:       fixtures.SeedSpec{Posts: posts},
		WarmPosts:  posts,
		Background: []load.Profile{bg, batch},
		Faults: []scenario.FaultFunc{func(h scenario.Harness) (faults.Fault, error) {
			f := faults.NewContainerFault(h.Env.Memcached, o.action)
			if o.action == faults.ContainerKill && h.Env.MemcachedUpstreams != nil {
				return &coldRestart{Fault: f, upstreams: h.Env.MemcachedUpstreams, keys: dataplane.PostCacheKeys(fixtures.PostURIs(0, posts))}, nil
			}
			return f, nil
		}},
		Phases:  phases,
		Budgets: budgets(o),
	}
}

func logFigures(t *testing.T, res *scenario.Result) {
	t.Helper()
	for _, m := range []string{
		scenario.MetricStoreInFlight, metricStorePeak, scenario.MetricLoadErrors, scenario.MetricEverydayErrors, scenario.MetricBatchErrors,
		scenario.MetricLogLines, scenario.MetricLogDropped,
		scenario.MetricCacheErrors, probe.MetricGoroutines, probe.MetricGoroutinesPeak, probe.MetricThreads,
	} {
		t.Logf("  peak %s: %v", m, res.Peaks[m])
	}
	for _, m := range []string{metricCacheHits, metricStoreReads} {
		t.Logf("  %s by phase: inject %g observe %g recover %g validate %g", m,
			suite.Rise(res, m, scenario.PhaseInject), suite.Rise(res, m, scenario.PhaseObserve),
			suite.Rise(res, m, scenario.PhaseRecover), suite.Rise(res, m, scenario.PhaseValidate))
	}
}

// coldRestart is the dead outage for a memcached Spiral does not own
// (external mode): Inject kills it through Spiral's proxy (connections
// reset, new ones refused) while the server keeps its items, so Recover
// first deletes the keys of the posts this run warmed, Spiral's own, from
// the servers themselves, then lets the proxy serve again: the data plane
// meets the cold cache a restarted memcached would have, and nothing else
// in the cache changes.
type coldRestart struct {
	faults.Fault
	upstreams []string
	keys      []string
}

func (f *coldRestart) Name() string { return f.Fault.Name() + ", its warmed keys forgotten" }

func (f *coldRestart) Recover(ctx context.Context) error {
	// The data plane's key-to-server mapping: the same list, in order. The
	// proxies serve again whatever became of the keys.
	if err := suite.ForgetKeys(ctx, f.upstreams, f.keys); err != nil {
		return errors.Join(fmt.Errorf("recover %s: %w", f.Name(), err), f.Fault.Recover(ctx))
	}
	return f.Fault.Recover(ctx)
}

// Every run seeds and warms its own posts, so a dead cache emptied by one
// run is full again for the next, and the arms run in any order.
func TestCacheOutage(t *testing.T) {
	env := fixtures.Shared(t)
	for _, o := range outages {
		t.Run(o.name, func(t *testing.T) {
			t.Run("fixed", func(t *testing.T) {
				res := suite.RunUnderTest(t, env, outageScenario(t, o, "fixed", suite.FixedConfig(t)))
				logFigures(t, res)
				assert.Empty(t, res.Violations, "the fixed data plane must hold every budget with memcached %s", o.name)
				require.NotEmpty(t, res.LoadSummary)
				for _, l := range res.LoadSummary {
					assert.Positive(t, l.Stats.OK, "load %s was answered: a run without load proves nothing", l.Client)
					assert.False(t, l.Failed, "load %s finished: %s", l.Client, l.Error)
				}
				// The mechanisms behind the budgets held: the outage was
				// felt (errors beyond the rate limit, dropped), requests
				// were answered from the store meanwhile, and the cache
				// served again once memcached was back.
				assert.Positive(t, peak(res, scenario.MetricLogDropped),
					"the outage must cause more cache errors than the rate limit lets through; peaks %v", res.Peaks[scenario.MetricLogDropped])
				assert.Positive(t, suite.Rise(res, metricStoreReads, scenario.PhaseInject),
					"the fixed data plane answers from the store while memcached is %s", o.name)
				assert.Positive(t, suite.Rise(res, metricCacheHits, scenario.PhaseRecover),
					"cache hits must resume once memcached is back")
				assert.True(t, res.Validated, res.ValidateError)
			})
			if o.action == faults.ContainerPause {
				// A regression far smaller than the incident: the fixed
				// data plane with a rate limit three times too permissive
				// (30 lines a second, a burst of 60). Everything else
				// holds; its log lines must not.
				t.Run("regression-limiter", func(t *testing.T) {
					cfg := dataplane.DefaultConfig()
					cfg.LogPolicy.PerSecond, cfg.LogPolicy.Burst = 3*dataplane.DefaultLogPerSecond, 3*dataplane.DefaultLogBurst
					res := suite.RunControl(t, env, outageScenario(t, o, "regression-limiter", cfg))
					if res == nil {
						return // caught by the abort limits
					}
					logFigures(t, res)
					assert.True(t, res.Violated(scenario.MetricLogLines),
						"a limiter three times too permissive must be caught; peaks %v", res.Peaks[scenario.MetricLogLines])
					assert.True(t, res.Validated, res.ValidateError)
				})
			}
			t.Run("incident", func(t *testing.T) {
				res := suite.RunControl(t, env, outageScenario(t, o, "incident", dataplane.IncidentConfig()))
				if res == nil {
					return // caught by the abort limits
				}
				logFigures(t, res)
				assert.True(t, res.Violated(scenario.MetricLoadErrors),
					"FailRequest must be caught failing requests while memcached is %s; peaks %v", o.name, res.Peaks[scenario.MetricLoadErrors])
				assert.True(t, res.Violated(scenario.MetricLogLines),
					"logging every cache error must be caught beyond the rate limit; peaks %v", res.Peaks[scenario.MetricLogLines])
				// Every error logged: nothing dropped, a line per error.
				assert.Zero(t, peak(res, scenario.MetricLogDropped), "the incident drops no log line")
				assert.GreaterOrEqual(t, peak(res, scenario.MetricLogLines), peak(res, scenario.MetricCacheErrors),
					"the incident writes a line for every cache error")
				switch o.action {
				case faults.ContainerKill:
					// memcached comes back empty: one CQL query per key of
					// a batch, all at once.
					assert.True(t, res.Violated(metricStorePeak),
						"the incident's unbounded store queries must be caught when the cache comes back cold; peaks %v", res.Peaks[metricStorePeak])
				case faults.ContainerPause:
					// A hung cache fails the incident's requests before
					// they reach the store, and comes back warm.
					assert.False(t, res.Violated(metricStorePeak),
						"the incident does not reach the store through a hung cache; peaks %v", res.Peaks[metricStorePeak])
				}
				assert.Positive(t, suite.Rise(res, metricCacheHits, scenario.PhaseRecover),
					"cache hits must resume once memcached is back")
				assert.True(t, res.Validated, "the incident data plane answers again once memcached is back: %s", res.ValidateError)
			})
		})
	}
}

// peak returns metric's high-water mark over the whole run.
func peak(res *scenario.Result, metric string) float64 {
	var p float64
	for _, v := range res.Peaks[metric] {
		p = max(p, v)
	}
	return p
}
