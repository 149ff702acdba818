// Package logstorm is the postmortem's second step as a suite: "whenever we
// get an error from memcache, we log it", into a log sink whose write(2)
// blocks, and "this huge number of blocking syscalls ... caused the go
// runtime to spawn many more OS threads (M's in go parlance) ... roughly 10x
// more Ms' than compared to the healthy baseline (150 vs 1500)".
//
// Both arms run under the same faults and load: memcached is killed (every
// cache operation fails at once with "connection refused"), the data plane's
// log sink (faults.Sink in its lock-free raw-fd mode, where writers that
// don't share a lock block one OS thread each) drains slowly, and everyday
// traffic keeps coming.
//
//   - incident (dataplane.IncidentConfig): one line per cache error. The
//     pipe fills in a fraction of a second, every later line blocks its
//     goroutine in write(2) on an OS thread of its own, and the process's
//     threads climb far past the postmortem's healthy 150. It must be
//     caught by the thread budget and the sink's blocked-writer budgets.
//   - fixed (dataplane.DefaultConfig): rate-limited lines, the rest counted
//     in dp_log_lines_dropped. Its output stays below the drain rate, no
//     writer blocks, and every budget holds.
//
// In both arms, once the faults are recovered the sink drains, every
// blocked writer returns and no thread is left in write(2).
package logstorm

import (
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
	"github.com/spiral-chaos/spiral/target"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// Metrics this suite adds to the timeline (Scenario.Probes).
const (
	// The sink's figures (suite.SinkProbes): writers blocked in it, OS
	// threads in write(2) on its pipe, bytes not yet drained.
	metricSinkBlocked = suite.MetricSinkBlocked
	metricSinkThreads = suite.MetricSinkThreads
	metricSinkBacklog = suite.MetricSinkBacklog
)

// posts is how many posts are seeded and cached; everyday traffic reads
// them, so the baseline is all cache hits and the fixed arm's fallback to
// the store finds every row.
const posts = 2_000

// Figures from the postmortem and the runtime.
const (
	// healthyThreads is the postmortem's healthy baseline of OS threads
	// ("150 vs 1500"): the magnitude the incident arm must pass, not the
	// fixed arm's budget.
	healthyThreads = 150
	// fixedThreadsBusy is the fixed arm's budget of OS threads at work
	// (probe.MetricThreadsBusy, not parked idle): it peaked at 4 over 5
	// quick runs (2026-12-02, `make envelope PKG=./suites/...`; the
	// sampler's own read, sysmon, the netpoller and a running goroutine),
	// a little over twice that. The incident reached 622-686. The live
	// thread count (8-9 in the fixed arm when it runs first) is charted,
	// not judged: the runtime keeps every thread an earlier arm started.
	fixedThreadsBusy = suite.ThreadsBusyBudget
	// stormGrowth is how many times its baseline the incident's threads
	// at work must reach while the faults act: the postmortem's "roughly
	// 10x more Ms' than compared to the healthy baseline".
	stormGrowth = 10
	// runtimeMaxThreads is the Go runtime's default thread limit
	// (runtime/debug.SetMaxThreads): one more thread and the process
	// crashes. The incident arm's storm must stay well clear of it.
	runtimeMaxThreads = 10_000
)

// sinkDrainBytesPerSec is how fast the slow sink drains while injected:
// 8 KiB/s, more than twice what the fixed data plane's rate limit lets
// through (dataplane.DefaultLogPerSecond lines of about 300 bytes, 3 kB/s;
// measured 291-302 bytes a line), and a tenth of what the incident's one
// line per error offers (the quick load below fails some 260 keys a second,
// 78 kB/s).
const sinkDrainBytesPerSec = 8 << 10

// blockedWritersBudget bounds the sink's writers in flight at once: the
// rate limiter lets at most a burst plus a second's lines through at once
// (dataplane.DefaultLogBurst + DefaultLogPerSecond), so no more writers
// than that could be inside Write even if the sink stalled outright.
const blockedWritersBudget = dataplane.DefaultLogPerSecond + dataplane.DefaultLogBurst

// profile is one mode's load and phases.
type profile struct {
	phases scenario.Phases
	load   load.Profile
}

// newProfile returns the mode's everyday load. The load bounds the storm:
// with FailRequest an incident request answers only once every key's line
// is written, so while the sink is slow at most MaxInFlight requests of at
// most BatchMax keys are stuck, and no more than MaxInFlight*BatchMax
// writers can block (new requests due meanwhile are skipped). The request
// timeout outlasts the fault window, so that no stuck request is abandoned
// by its client and replaced while its writers still block.
func newProfile(mode string) profile {
	p := profile{
		phases: scenario.Phases{Baseline: 2 * time.Second, Inject: 4 * time.Second, Observe: 2 * time.Second, Recover: 3 * time.Second},
		load:   load.Background,
	}
	p.load.Rate, p.load.BatchMin, p.load.BatchMax, p.load.KeySpace = 25, 1, 20, posts
	p.load.MaxInFlight, p.load.MaxRequests = 64, 5_000
	if mode != "quick" {
		p.phases = scenario.Phases{Baseline: 5 * time.Second, Inject: 20 * time.Second, Observe: 5 * time.Second, Recover: 10 * time.Second}
		p.load.Rate, p.load.MaxInFlight = 40, 128
	}
	ph := p.phases
	p.load.Timeout = ph.Baseline + ph.Inject + ph.Observe + ph.Recover + 30*time.Second
	return p
}

// stormWorstCase is the most writers the profile's load can block at once
// (see newProfile), plus the validation request's keys.
func (p profile) stormWorstCase() int { return p.load.MaxInFlight*p.load.BatchMax + 10 }

// drained must hold in both arms: once the faults are recovered the sink
// drains, no writer is left blocked and no thread is left in write(2).
var drained = []probe.Budget{
	probe.Limit(metricSinkBlocked, 0, scenario.PhaseValidate),
	probe.Limit(metricSinkThreads, 0, scenario.PhaseValidate),
}

// budgets must all hold for the fixed data plane.
var budgets = append([]probe.Budget{
	// OS threads at work over the whole run, from the fixed arm's envelope.
	probe.Limit(probe.MetricThreadsBusy, fixedThreadsBusy),
	// Everyday requests keep their latency: the p99 of each second's
	// everyday requests peaked at 14-18 ms in the fixed arm over 5 quick
	// runs, 23-55 ms over 3 full ones and at 90 ms in a later quick one,
	// the second memcached was killed (the first fallback reads of the
	// store); twice that. The incident, its requests stuck behind their
	// log lines: 5.3-5.6 s (quick), 24.6-24.9 s (full).
	probe.Limit(scenario.MetricEverydayLatencyP99, 0.18, scenario.PhaseInject, scenario.PhaseObserve),
	// GC: the fixed arm's share of CPU peaked at 0.0045-0.0054 an
	// interval in quick mode and 0.0086-0.040 in full mode (3 runs);
	// twice the highest.
	probe.Limit(probe.MetricGCCPUFraction, 0.08, scenario.PhaseInject, scenario.PhaseObserve),
	// No more writers inside the sink than the rate limit lets through.
	probe.Limit(metricSinkBlocked, blockedWritersBudget, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover),
	probe.Limit(metricSinkThreads, blockedWritersBudget, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover),
	// Everyday traffic keeps being answered (the fixed data plane reads
	// the store when memcached is down).
	probe.Limit(scenario.MetricEverydayErrors, 0),
}, drained...)

// newSink returns the slow sink of one arm, closed when t ends. Close
// waits for every writer to return.
func newSink(t *testing.T) *faults.Sink {
	t.Helper()
	sink, err := faults.NewSink(faults.SinkConfig{DrainBytesPerSec: sinkDrainBytesPerSec, Mode: faults.SinkDirect})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, sink.Close(), "close the sink") })
	return sink
}

// stormScenario is one arm: cfg logging into sink, memcached killed while
// the sink drains slowly, everyday traffic throughout.
func stormScenario(name string, cfg dataplane.Config, sink *faults.Sink, p profile) scenario.Scenario {
	cfg.LogSink = sink
	return scenario.Scenario{
		Name:       "log-storm/" + name,
		Config:     cfg,
		Seed:       scenario.SeedFromEnv(3),
		Data:       fixtures.SeedSpec{Posts: posts},
		WarmPosts:  posts,
		Background: []load.Profile{p.load},
		// Injected in order, recovered in reverse: memcached comes back,
		// then the sink drains freely.
		Faults: []scenario.FaultFunc{
			func(scenario.Harness) (faults.Fault, error) { return sink, nil },
			func(h scenario.Harness) (faults.Fault, error) {
				return faults.NewContainerFault(h.Env.Memcached, faults.ContainerKill), nil
			},
		},
		Probes:  suite.SinkProbes(sink),
		Phases:  p.phases,
		Budgets: budgets,
	}
}

// underTest makes sc the fixed arm on the service under test ($SPIRAL_TARGET):
// the bundled data plane in-process logs into sink through Config.LogSink,
// as sc has it; a child process (exec:) gets sink's write end as its
// stderr, where services write their log lines. A running endpoint's log
// can't be wired to the sink: the arm skips.
func underTest(t *testing.T, sc scenario.Scenario, sink *faults.Sink) scenario.Scenario {
	t.Helper()
	spec := suite.Spec(t)
	switch spec.Kind {
	case target.KindInProcess:
		return sc
	case target.KindExec:
		w := suite.SinkStderr(t, sink)
		sc.Target = suite.ExecUnderTest(t, spec, func(ec *target.ExecConfig) { ec.Stderr = w })
		return sc
	}
	t.Skipf("%s=%s: a running service's log lines can't be sent into the slow sink; give the binary (exec:) to judge it", target.EnvTarget, spec)
	return sc
}

// requireDrained checks that the sink has nothing left: no writer inside
// Write, no thread in write(2) on its pipe, nothing in the pipe. (A child's
// writers are gone with the child, which the run has stopped.)
func requireDrained(t *testing.T, sink *faults.Sink) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st := sink.Stats()
		assert.Zero(c, st.InFlight, "writers still inside the sink: %+v", st)
		n, err := sink.Buffered()
		require.NoError(c, err)
		assert.Zero(c, n, "bytes not drained: %+v", st)
		n, err = sink.ThreadsInWrite()
		require.NoError(c, err)
		assert.Zero(c, n, "threads still in write(2) on the sink")
	}, 10*time.Second, 50*time.Millisecond, "the sink drains after recover")
}

func peak(res *scenario.Result, metric string) float64 {
	m := 0.0
	for _, v := range res.Peaks[metric] {
		m = max(m, v)
	}
	return m
}

// The arms run in any order: the threads judged are those at work, not the
// idle ones the runtime keeps from an earlier arm's storm.
func TestLogStorm(t *testing.T) {
	env := fixtures.Shared(t)
	p := newProfile(scenario.Mode())
	require.Less(t, p.stormWorstCase()+healthyThreads, runtimeMaxThreads/2,
		"the load must bound the incident's storm well below the runtime's thread limit")

	t.Run("fixed", func(t *testing.T) {
		sink := newSink(t)
		res := suite.Run(t, env, underTest(t, stormScenario("fixed", suite.FixedConfig(t), sink, p), sink))
		assert.Empty(t, res.Violations, "the fixed data plane must hold every budget while memcached is down and the sink is slow")
		assert.True(t, res.Validated, res.ValidateError)
		assert.Positive(t, peak(res, scenario.MetricCacheErrors), "memcached must fail: a run without cache errors proves nothing")
		assert.Positive(t, peak(res, scenario.MetricLogDropped), "lines over the rate limit are counted in %s", scenario.MetricLogDropped)
		for _, l := range res.LoadSummary {
			assert.Positive(t, l.Stats.OK, "load %s was answered: a run without load proves nothing", l.Client)
			assert.False(t, l.Failed, "load %s finished: %s", l.Client, l.Error)
		}
		requireDrained(t, sink)
		logFigures(t, res, sink)
	})

	// A regression far smaller than the incident: the fixed data plane
	// failing a request on a cache error (the incident's FailRequest)
	// instead of reading the store, and nothing else changed: no storm
	// (its lines stay rate-limited, its lookups chunked), but everyday
	// requests fail while memcached is down. A looser rate limit is no
	// such regression here: chunked lookups fail once per chunk, some 30
	// errors a second, which a limit five times too permissive passed
	// whole without one writer blocking (2 quick runs, 2026-12-02).
	t.Run("regression-failrequest", func(t *testing.T) {
		sink := newSink(t)
		cfg := dataplane.DefaultConfig()
		cfg.OnCacheError = dataplane.FailRequest
		res := suite.RunControl(t, env, stormScenario("regression-failrequest", cfg, sink, p))
		if res == nil {
			return // caught by the abort limits
		}
		assert.True(t, res.Violated(scenario.MetricEverydayErrors),
			"failing requests on cache errors must be caught; peaks %v", res.Peaks[scenario.MetricEverydayErrors])
		assert.False(t, res.Violated(probe.MetricThreadsBusy),
			"without the storm no thread blocks; peaks %v", res.Peaks[probe.MetricThreadsBusy])
		assert.Empty(t, res.Timeline.Check(drained...), "after recover the sink drains and its writers return")
		requireDrained(t, sink)
		logFigures(t, res, sink)
	})

	t.Run("incident", func(t *testing.T) {
		sink := newSink(t)
		res := suite.RunControl(t, env, stormScenario("incident", dataplane.IncidentConfig(), sink, p))
		if res == nil {
			return // caught by the abort limits
		}
		assert.True(t, res.Violated(probe.MetricThreadsBusy),
			"the incident data plane must be caught past the fixed arm's %d OS threads at work; peaks %v", fixedThreadsBusy, res.Peaks[probe.MetricThreadsBusy])
		suite.AssertGrowth(t, res, probe.MetricThreadsBusy, stormGrowth)
		assert.Greater(t, peak(res, probe.MetricThreadsBusy), float64(healthyThreads),
			"the storm must reach the postmortem's magnitude: OS threads at work past its healthy %d", healthyThreads)
		assert.True(t, res.Violated(metricSinkBlocked),
			"the incident data plane must be caught with writers blocked in the sink; peaks %v", res.Peaks[metricSinkBlocked])
		assert.True(t, res.Violated(metricSinkThreads),
			"each blocked writer holds an OS thread in write(2); peaks %v", res.Peaks[metricSinkThreads])
		assert.Empty(t, res.Timeline.Check(drained...), "after recover the sink drains and its writers return")
		assert.Zero(t, peak(res, scenario.MetricLogDropped), "the incident logs every error")
		assert.True(t, res.Validated, "the incident data plane answers again once the faults are gone: %s", res.ValidateError)
		requireDrained(t, sink)
		logFigures(t, res, sink)
	})
}

func logFigures(t *testing.T, res *scenario.Result, sink *faults.Sink) {
	t.Helper()
	st := sink.Stats()
	perLine := 0.0
	if st.Writes > 0 {
		perLine = float64(st.BytesWritten) / float64(st.Writes)
	}
	t.Logf("%s: peak threads %v, at work %v, blocked writers %v, threads in write %v, backlog %v; cache errors %.0f, lines written %.0f (%.0f B each), dropped %.0f",
		res.Scenario, res.Peaks[probe.MetricThreads], res.Peaks[probe.MetricThreadsBusy], res.Peaks[metricSinkBlocked], res.Peaks[metricSinkThreads], res.Peaks[metricSinkBacklog],
		peak(res, scenario.MetricCacheErrors), peak(res, scenario.MetricLogLines), perLine, peak(res, scenario.MetricLogDropped))
}
