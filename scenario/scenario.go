// Package scenario runs Spiral's scenarios: a service under test (a
// target.Target: the bundled data plane in-process, a child process, a
// running endpoint) in a backend environment, load and faults applied in
// phases (baseline, inject, observe, recover, validate), the target's
// process and the kernel sampled into a timeline, and budgets judged
// against it.
//
// A scenario is data (Scenario); Run executes it and returns a Result that
// the report package renders. Every random choice comes from Scenario.Seed.
package scenario

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/netns"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/target"
)

// Phase names, in the order Run marks them.
const (
	PhaseBaseline = "baseline"
	PhaseInject   = "inject"
	PhaseObserve  = "observe"
	PhaseRecover  = "recover"
	PhaseValidate = "validate"
)

// Metrics Run samples besides probe's process and runtime figures and
// probe.MetricGoroutinesPeak, the goroutines' high-water mark between two
// samples (polled every 5 ms).
const (
	// MetricMemcachedTimeWait counts this host's TIME_WAIT sockets (those of
	// the target's network namespace, for a target with one) toward the
	// memcached port: the postmortem's exhausted resource.
	MetricMemcachedTimeWait = "memcached_time_wait"
	// MetricMemcachedTimeWaitAdded counts the sockets of
	// MetricMemcachedTimeWait that entered TIME_WAIT since the run began
	// (told by their kernel timer): the sockets this run left, whatever
	// earlier runs left beside them.
	MetricMemcachedTimeWaitAdded = "memcached_time_wait_added"
	// MetricMemcachedEstablished counts ESTABLISHED sockets toward memcached.
	MetricMemcachedEstablished = "memcached_established"
	// MetricLookupsInFlight is the data plane's keys being looked up.
	MetricLookupsInFlight = "dp_lookups_in_flight"
	// MetricCacheErrors is the data plane's memcached errors, cumulative.
	MetricCacheErrors = "dp_cache_errors"
	// MetricLogLines is log lines written to the sink, cumulative.
	MetricLogLines = "dp_log_lines_written"
	// MetricPortErrors is the data plane's memcached errors that say no
	// source port was free (kinds addr_not_avail and addr_in_use),
	// cumulative: the postmortem's "cannot assign requested address" and
	// "bind: address already in use".
	MetricPortErrors = "dp_cache_errors_port_exhausted"
	// MetricDialPortErrors is the data plane's memcached dials that found
	// no free source port, cumulative: those of its lookups and of its
	// health checks alike (a restarted service that can't dial memcached
	// fails its health check before it serves a lookup).
	MetricDialPortErrors = "dp_memcached_dials_port_exhausted"
	// MetricLogDropped is log lines not written (rate limit), cumulative.
	MetricLogDropped = "dp_log_lines_dropped"
	// MetricStoreInFlight is the data plane's CQL queries in flight.
	MetricStoreInFlight = "dp_store_queries_in_flight"
	// MetricStorePeak is their high-water mark between two samples, kept by
	// the data plane itself (dataplane.DataPlane.StoreInFlightPeak; for a
	// child, target.PeakStoreMetric): a burst of queries between samples
	// is still seen.
	MetricStorePeak = "dp_store_queries_in_flight_peak"
	// MetricMemcachedConns is the data plane's open memcached connections.
	MetricMemcachedConns = "dp_memcached_conns_open"
	// MetricCacheHits is the data plane's keys answered from memcached,
	// and MetricStoreReads those that missed (or could not reach) it and
	// were read from the store, cumulative.
	MetricCacheHits  = "dp_lookups_cache"
	MetricStoreReads = "dp_lookups_store"
	// MetricTargetRestarts counts the target's restarts since it started
	// (target.Target.Restarts): a child process that died and was started
	// again. Recorded for targets out of the test's process.
	MetricTargetRestarts = "target_restarts"
	// MetricLoadErrors is failed requests of every load, everyday and
	// batch, cumulative: MetricEverydayErrors plus MetricBatchErrors.
	MetricLoadErrors = "load_errors"
	// MetricEverydayErrors is failed requests of the loads whose profile's
	// Traffic is load.TrafficEveryday, cumulative: everyday requests
	// failing, the outage users see.
	MetricEverydayErrors = "load_errors_everyday"
	// MetricBatchErrors is failed requests of the loads whose profile's
	// Traffic is load.TrafficBatch (a flood or a batch load beside the
	// everyday traffic), cumulative.
	MetricBatchErrors = "load_errors_batch"
	// MetricLoadOK is answered requests of every load, cumulative.
	MetricLoadOK = "load_ok"
	// MetricEverydayLatencyP99 is, at each sample, the 99th percentile
	// latency of the everyday requests (Traffic load.TrafficEveryday)
	// that left in the LatencyWindow before it, answered or failed, in
	// seconds; missing where none left. It is computed from the loads'
	// records after the run, so it costs the sampler nothing and a request
	// that stalls counts at the moment it was sent.
	MetricEverydayLatencyP99 = "everyday_latency_p99_seconds"
)

// LatencyWindow is the span of requests each MetricEverydayLatencyP99
// value covers: 50 everyday requests at the quick mode's 50 a second.
const LatencyWindow = time.Second

// Phases are the durations of a run's phases. Inject lasts while the faults
// are in, observe watches them act, recover removes them and watches the
// system return; validate checks the data plane answers again.
type Phases struct {
	Baseline, Inject, Observe, Recover time.Duration
}

// Harness is what a fault factory may act on.
type Harness struct {
	Env *fixtures.Env
	// Target is the service under test, started; URL its base URL.
	Target target.Target
	URL    string
	// DataPlane is the bundled data plane when the target serves it in
	// this process (target.DataPlaneOf), else nil: a figure only it gives
	// is then not recorded, and a budget on it not judged.
	DataPlane *dataplane.DataPlane
	// Shape is how the target takes a batch RPC (target.ShapeOf).
	Shape dataplane.RequestShape
	// Seed is the scenario's Seed: a factory draws its fault's random
	// choices from it (a port budget's windows, the band-aid's addresses),
	// so that replaying the seed repeats them.
	Seed uint64
}

// Flood returns a flood of p aimed at the target, in its request shape.
func (h Harness) Flood(p load.Profile) (*load.Flood, error) {
	p.Shape = h.Shape
	return load.NewFlood(h.URL, p)
}

// FaultFunc builds a fault for a run, once the target is up.
type FaultFunc func(h Harness) (faults.Fault, error)

// Scenario is one run: who, what load, what faults, what must hold.
type Scenario struct {
	// Name is short and file-name safe ("batch-flood/incident").
	Name string
	// Config is the bundled data plane's configuration this run serves
	// in-process when Target is nil, with its Seed replaced by the
	// scenario's Seed.
	Config dataplane.Config
	// Target is the service under test, if not the bundled data plane
	// with Config (target.NewInProcess(Config)). Run starts it and stops
	// it; a Target is started once, so a Scenario with one runs once.
	Target target.Target
	// Seed drives every random choice: the background loads' schedules,
	// batches and keys (load i is seeded Seed+i), the in-process data
	// plane's (Config.Seed) and the fault factories' (Harness.Seed).
	Seed uint64
	// Data is the rows seeded in the store before the run, and WarmPosts
	// posts (0..WarmPosts-1) are read once so that they are in the cache:
	// the work of Prepare, which the caller runs before Run.
	Data      fixtures.SeedSpec
	WarmPosts int
	// Background loads run from baseline to the end of recover. Each
	// profile's Traffic says whose requests they are, and so which of
	// MetricEverydayErrors and MetricBatchErrors counts their failures (a
	// load.Flood among Faults is counted by its profile's Traffic too).
	Background []load.Profile
	// Faults are injected at the start of inject and recovered at the start
	// of recover, in order (recovered in reverse order).
	Faults []FaultFunc
	// Probes adds figures to the timeline beside the built-in ones (a sink's
	// blocked writers, a supervisor's OOM kills); budgets may name them. A
	// *probe.Peak among them is started by Run when sampling starts and
	// stopped when it ends: Probes must not start it.
	Probes func(h Harness) []probe.Source
	// Events, if set, reads what happened, in order, from the finished
	// run (its timeline, peaks and loads, and whatever records the
	// scenario kept beside them): the links of a chain of failures, each
	// with its time. Result.Events holds them, and the report lists them.
	Events func(res *Result) []Event
	// Phases are the phase durations.
	Phases Phases
	// Budgets must hold; every violation is reported.
	Budgets []probe.Budget
	// Interval is the sampling interval. Defaults to 100 ms.
	Interval time.Duration
	// ValidateTimeout bounds how long the data plane may take to answer a
	// small batch after recover. Defaults to 10 s.
	ValidateTimeout time.Duration
	// Abort, when set, are the limits on the everyday loads' failures and
	// latency past which the run's floods stop by themselves (see Run).
	// Nil: load.ExternalAbort when a backend is not Spiral's own
	// (fixtures.Env.External), none for Spiral's own containers;
	// &load.AbortLimits{} turns the abort off everywhere. The
	// $SPIRAL_ABORT_* variables override it field by field
	// (AbortLimitsFor).
	Abort *load.AbortLimits
}

// Result is what a run saw.
type Result struct {
	Scenario string           `json:"scenario"`
	Seed     uint64           `json:"seed"`
	Config   dataplane.Config `json:"-"`
	// Target names the service under test (target.Target.Name).
	Target     string           `json:"target"`
	Started    time.Time        `json:"started"`
	Timeline   *probe.Timeline  `json:"-"`
	Budgets    []probe.Budget   `json:"budgets"`
	Violations probe.Violations `json:"violations"`
	// NotJudged are the budgets on figures the target does not expose (a
	// child process's goroutine high-water mark, an endpoint's threads
	// without a pid to probe): neither held nor violated, and never
	// counted as held.
	NotJudged probe.Violations `json:"not_judged,omitempty"`
	Loads     []load.Report    `json:"-"`
	// LoadSummary is Loads without per-request records.
	LoadSummary []LoadSummary `json:"loads"`
	// Faults names the faults injected.
	Faults []string `json:"faults"`
	// Validated says whether the data plane answered after recover, and
	// ValidateError why not.
	Validated     bool   `json:"validated"`
	ValidateError string `json:"validate_error,omitempty"`
	// Error is why the run stopped part-way or a fault failed to recover,
	// as Run returned it; the timeline and loads are then what was seen up
	// to that point.
	Error string `json:"error,omitempty"`
	// Peaks is each metric's high-water mark per phase.
	Peaks map[string]map[string]float64 `json:"peaks"`
	// Clients is what each client asked of the data plane while the faults
	// were in (from the start of inject to the start of recover), from its
	// own per-client metrics, most keys first: who caused it.
	Clients []ClientFigures `json:"clients,omitempty"`
	// Replay is the command that runs this scenario again.
	Replay string `json:"replay"`
	// Unreliable says where the observer itself may have distorted or
	// missed what it judged (ObserverLimits); empty when it kept within
	// them. Reported beside the verdict, not yet failing the run: the
	// incident arms' samplers still go blind on this 2-core machine.
	Unreliable []string `json:"unreliable,omitempty"`
	// Events are what Scenario.Events read from the run, in order.
	Events []Event `json:"events,omitempty"`
	// AbortLimits are the limits the run's floods were held to
	// (AbortLimitsFor); zero when none were, or the run had no flood.
	AbortLimits load.AbortLimits `json:"abort_limits,omitzero"`
	// Aborted says why and when the abort tripped, or is nil: the floods
	// were stopped at once, the run went on to recover and validate, and
	// Run returned an error wrapping ErrAborted.
	Aborted *Aborted `json:"aborted,omitempty"`
}

// Event is one thing that happened in a run, when it did, and the
// figures that show it.
type Event struct {
	Name   string    `json:"name"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail"`
}

// String is "name: detail".
func (e Event) String() string { return e.Name + ": " + e.Detail }

// Observer limits during inject and observe, what the faults are judged
// on: a sample's median cost may take ObserverShare of the interval (where
// the target is this process, whose time the sampler takes), and so may
// an observer process's median read (it takes the machine's time); no
// sample may come more than ObserverMaxGap intervals after the one
// before (an observer process's rows count: its figures were seen), and
// no bounded source's reading may be late (missing) in more than
// ObserverLateShare of the samples of inject and observe.
const (
	ObserverShare     = 0.02
	ObserverMaxGap    = 2.0
	ObserverLateShare = 0.05
)

// unreliable lists where tl's observer exceeded its limits in inject and
// observe. The share of the interval is judged only where the target is
// this process (inProcess): there the sampler's time is the judged
// process's time. A sample of another process is mostly the wait for its
// /metrics answer (exec fixed arms, quick, 2026-12-04: median samples of
// 1.7-2.7 ms, 1.5-2.8 ms of it the scrape, against the child's 0.1 ms of
// Gather), which costs the child little; its lateness is judged as for any
// target.
func unreliable(tl *probe.Timeline, inProcess bool) []string {
	var out []string
	for _, c := range tl.CostByPhase() {
		if c.Phase != PhaseInject && c.Phase != PhaseObserve {
			continue
		}
		if inProcess && c.Share > ObserverShare {
			out = append(out, fmt.Sprintf("%s: the median sample took %.1f%% of the interval (limit %.0f%%)", c.Phase, 100*c.Share, 100*ObserverShare))
		}
		if c.MaxGap > ObserverMaxGap {
			out = append(out, fmt.Sprintf("%s: blind for %.1f intervals between two samples (limit %.0f)", c.Phase, c.MaxGap, ObserverMaxGap))
		}
	}
	for _, src := range tl.Sources {
		if src.Where != "" && tl.Interval > 0 && float64(src.Median) > ObserverShare*float64(tl.Interval) {
			out = append(out, fmt.Sprintf("%s: the median read took %.1f%% of the interval (limit %.0f%%)", src.Where, 100*float64(src.Median)/float64(tl.Interval), 100*ObserverShare))
		}
	}
	// Late readings, counted over the samples of inject and observe.
	judged, late := 0, make([]int, len(tl.Sources))
	for _, s := range tl.Samples {
		if s.Phase != PhaseInject && s.Phase != PhaseObserve {
			continue
		}
		judged++
		for _, i := range s.Late {
			if i >= 0 && i < len(late) {
				late[i]++
			}
		}
	}
	for i, n := range late {
		if judged > 0 && float64(n) > ObserverLateShare*float64(judged) {
			src := tl.Sources[i]
			name := src.Metrics[0]
			if k := len(src.Metrics); k > 1 {
				name = fmt.Sprintf("%s and %d more", name, k-1)
			}
			out = append(out, fmt.Sprintf("%s: reading late in %d of %d samples of inject and observe, its figures missing there", name, n, judged))
		}
	}
	return out
}

// LoadSummary is a load's report without per-request records.
type LoadSummary struct {
	Client   string         `json:"client"`
	Traffic  load.Traffic   `json:"traffic"`
	Stats    load.Stats     `json:"stats"`
	Outcomes map[string]int `json:"outcomes"`
	P50      time.Duration  `json:"p50_ns"`
	P99      time.Duration  `json:"p99_ns"`
	Max      time.Duration  `json:"max_ns"`
	// Failed says the load did not finish (a flood whose Wait failed, a
	// load ended by its context), and Error why; Stats and Outcomes are
	// then what it had done so far.
	Failed bool   `json:"failed"`
	Error  string `json:"error,omitempty"`
	// Stopped is why the load was stopped part-way (an abort that
	// tripped, load.Report.Stopped), or empty.
	Stopped string `json:"stopped,omitempty"`
}

// NewLoadSummary returns rep without its per-request records; err is what
// ended the load (Load.Run's or Flood.Wait's error), nil if it finished.
func NewLoadSummary(rep load.Report, err error) LoadSummary {
	s := LoadSummary{
		Client: rep.Profile.Client, Traffic: rep.Profile.Traffic, Stats: rep.Stats, Outcomes: rep.Outcomes,
		P50: rep.P50, P99: rep.P99, Max: rep.Max, Stopped: rep.Stopped,
	}
	if err != nil {
		s.Failed, s.Error = true, err.Error()
	}
	return s
}

// Held reports whether every budget held and the data plane answered after
// recover. A budget not judged is not held: a run with one is not Held;
// nor is an aborted run, whose floods were cut short.
func (r *Result) Held() bool {
	return len(r.Violations) == 0 && len(r.NotJudged) == 0 && r.Validated && r.Aborted == nil
}

// Violated reports whether budget metric was violated.
func (r *Result) Violated(metric string) bool {
	for _, v := range r.Violations {
		if v.Budget.Metric == metric && v.Problem == "" {
			return true
		}
	}
	return false
}

func (sc Scenario) withDefaults() Scenario {
	if sc.Interval == 0 {
		sc.Interval = 100 * time.Millisecond
	}
	if sc.ValidateTimeout == 0 {
		sc.ValidateTimeout = 10 * time.Second
	}
	return sc
}

// target returns sc.Target, or the bundled data plane in-process with
// sc.Config seeded by sc.Seed.
func (sc Scenario) target() target.Target {
	if sc.Target != nil {
		return sc.Target
	}
	cfg := sc.Config
	cfg.Seed = sc.Seed
	return target.NewInProcess(cfg)
}

// Validate reports every problem with sc, or nil.
func (sc Scenario) Validate() error {
	var errs []error
	if sc.Name == "" {
		errs = append(errs, errors.New("scenario: Name is empty"))
	}
	if sc.Target == nil {
		if err := sc.Config.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("scenario %s: config: %w", sc.Name, err))
		}
	}
	p := sc.Phases
	if p.Baseline <= 0 || p.Inject <= 0 || p.Observe < 0 || p.Recover <= 0 {
		errs = append(errs, fmt.Errorf("scenario %s: phases %+v: baseline, inject and recover must be positive", sc.Name, p))
	}
	for _, l := range sc.Background {
		if err := l.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("scenario %s: background: %w", sc.Name, err))
		}
	}
	if sc.Abort != nil {
		if err := sc.Abort.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("scenario %s: %w", sc.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Prepare seeds sc.Data in env's store and warms sc.WarmPosts posts into
// its cache, through a fixed data plane of its own: the set-up a run of sc
// expects, done before Run (and before the run's own sockets are counted).
func Prepare(ctx context.Context, env *fixtures.Env, sc Scenario) error {
	if sc.Data == (fixtures.SeedSpec{}) && sc.WarmPosts == 0 {
		return nil
	}
	session, err := env.NewCluster().CreateSession()
	if err != nil {
		return fmt.Errorf("scenario %s: cql session: %w", sc.Name, err)
	}
	defer session.Close()
	if sc.Data != (fixtures.SeedSpec{}) {
		if err := fixtures.Seed(ctx, session, env.Keyspace, sc.Data); err != nil {
			return fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
	}
	if sc.WarmPosts == 0 {
		return nil
	}
	// Warming through the configuration under test would itself be a
	// flood.
	dp, err := dataplane.New(dataplane.DefaultConfig(), dataplane.Backends{MemcachedAddrs: env.MemcachedAddrs, Session: session, Keyspace: env.Keyspace})
	if err != nil {
		return fmt.Errorf("scenario %s: warm cache: %w", sc.Name, err)
	}
	defer func() { _ = dp.Close() }()
	const chunk = 5_000
	for lo := 0; lo < sc.WarmPosts; lo += chunk {
		if _, err := dp.GetPostRecords(ctx, "warmup", fixtures.PostURIs(lo, min(chunk, sc.WarmPosts-lo))); err != nil {
			return fmt.Errorf("scenario %s: warm cache: %w", sc.Name, err)
		}
	}
	return nil
}

// Run executes sc against its target in env and returns what it saw; the
// caller has run Prepare. It fails only when the run itself could not
// happen (bad scenario, a target or fault that can't start or recover);
// budgets that don't hold are in Result.Violations. Every fault is
// recovered, even when another fails to, every load stopped and the
// target stopped before Run returns; a fault that fails to recover is an
// error (a backend left paused would break whatever runs next). A run that
// stops part-way still returns its Result, with the timeline and loads
// seen so far and Result.Error set, so that its report can be written. It
// blocks for the sum of the phases plus set-up (seconds).
//
// The run's floods are its loads of load.TrafficBatch among Background
// and every load.Flood among Faults. Where a backend is not Spiral's
// own (fixtures.Env.External), Run refuses them, before any load starts,
// with an *ExternalFloodError unless EnvAllowExternalFlood is 1. Where
// abort limits apply (AbortLimitsFor), a load.Abort watches the
// everyday loads from the start of baseline: once their error rate or p99
// passes a limit, it stops every flood at once, the run skips what is
// left of baseline, inject and observe and goes on to recover (the
// background loads stop at its end) and validate, and Run returns the
// Result (Result.Aborted) with an error wrapping ErrAborted.
func Run(ctx context.Context, env *fixtures.Env, sc Scenario) (res *Result, err error) {
	sc = sc.withDefaults()
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	tgt := sc.target()
	res = &Result{Scenario: sc.Name, Seed: sc.Seed, Config: sc.Config, Target: tgt.Name(), Started: time.Now(), Budgets: sc.Budgets, Replay: replayCommand(sc)}
	progress("%s: seed %d; target %s; set-up", sc.Name, sc.Seed, tgt.Name())

	if err := tgt.Start(ctx, target.BackendsOf(env)); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	// Registered first, so run last: the target outlives the faults'
	// recovery.
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if serr := tgt.Stop(sctx); serr != nil {
			err = errors.Join(err, fmt.Errorf("scenario %s: stop %s: %w", sc.Name, tgt.Name(), serr))
			if res != nil {
				res.Error = err.Error()
			}
		}
	}()

	h := Harness{Env: env, Target: tgt, URL: tgt.URL(), DataPlane: target.DataPlaneOf(tgt), Shape: target.ShapeOf(tgt), Seed: sc.Seed}
	var injected []faults.Fault
	for _, mk := range sc.Faults {
		f, err := mk(h)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: build fault: %w", sc.Name, err)
		}
		injected = append(injected, f)
		res.Faults = append(res.Faults, f.Name())
	}
	// recoverAll recovers every fault, last injected first, even when one
	// fails, and returns every failure. Recover is idempotent: a fault
	// already recovered returns nil.
	recoverAll := func(ctx context.Context, when string) error {
		var errs []error
		for i := len(injected) - 1; i >= 0; i-- {
			if when == "" { // the recover phase; the others are clean-up
				progress("%s: recover %s", sc.Name, injected[i].Name())
			}
			if err := injected[i].Recover(ctx); err != nil {
				errs = append(errs, fmt.Errorf("recover %s%s: %w", injected[i].Name(), when, err))
			}
		}
		return errors.Join(errs...)
	}
	// Whatever happens below (a panic, a set-up error), no fault outlives
	// the run.
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := recoverAll(rctx, " after the run"); rerr != nil {
			err = errors.Join(err, fmt.Errorf("scenario %s: %w", sc.Name, rerr))
			if res != nil {
				res.Error = err.Error()
			}
		}
	}()

	var bgLoads []*load.Load
	for i, p := range sc.Background {
		p.Seed, p.Shape = sc.Seed+uint64(i), h.Shape
		p.Duration = sc.Phases.Baseline + sc.Phases.Inject + sc.Phases.Observe + sc.Phases.Recover
		l, err := load.New(h.URL, p)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		bgLoads = append(bgLoads, l)
	}
	// Every load is sampled: the background loads, then the floods. The
	// run's floods are its batch loads among both.
	var floods []*load.Flood
	var loads []LoadCounters
	var floodLoads []*load.Load
	for _, l := range bgLoads {
		loads = append(loads, l)
		if l.Profile().Traffic == load.TrafficBatch {
			floodLoads = append(floodLoads, l)
		}
	}
	for _, f := range injected {
		if fl, ok := f.(*load.Flood); ok {
			floods = append(floods, fl)
			loads = append(loads, fl.Load())
			floodLoads = append(floodLoads, fl.Load())
		}
	}
	if err := checkFloods(env, floodLoads); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	abort, err := newRunAbort(env, sc, bgLoads, floodLoads)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	var tripped <-chan struct{} // nil, never ready, without an abort
	if abort != nil {
		res.AbortLimits, tripped = abort.Limits(), abort.Tripped()
		progress("%s: floods stop past everyday %v", sc.Name, abort.Limits())
	}

	var extra []probe.Source
	if sc.Probes != nil {
		extra = sc.Probes(h)
	}
	// Every poller polls while the sampler runs, and none outlives Run.
	var pollers []*probe.Peak
	var goroutinesPeak *probe.Peak
	if tgt.PID() == target.Self {
		// Only the process's own goroutines can be polled this often.
		if goroutinesPeak, err = probe.NewGoroutinesPeak(goroutinesPeakInterval); err != nil {
			return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		pollers = append(pollers, goroutinesPeak)
	}
	sampler, stoppers, err := newSampler(env, tgt, loads, sc.Interval, goroutinesPeak, extra...)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	defer func() { // no read of theirs outlives Run
		for _, s := range stoppers {
			s.Stop()
		}
	}()
	for _, src := range extra {
		if p, ok := src.(*probe.Peak); ok {
			pollers = append(pollers, p)
		}
	}
	stopPollers := func() {
		for _, p := range pollers {
			p.Stop()
		}
	}
	defer stopPollers()
	for _, p := range pollers {
		if err := p.Start(ctx); err != nil {
			return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
	}

	runCtx, stopSampler := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(runCtx)
	// Baseline is marked before the first sample, so every sample has a phase.
	sampler.Mark(PhaseBaseline)
	g.Go(func() error { return sampler.Run(gctx) })
	if every := progressEvery(); every > 0 {
		g.Go(func() error { liveProgress(gctx, sc.Name, sampler, res.Started, every); return nil })
	}
	bgDone := make(chan struct{})
	reports := make([]load.Report, len(sc.Background))
	reportErrs := make([]error, len(sc.Background))
	loadCtx, stopLoads := context.WithCancel(ctx)
	defer stopLoads()
	lg, lctx := errgroup.WithContext(loadCtx)
	for i, l := range bgLoads {
		lg.Go(func() error {
			rep, err := l.Run(lctx)
			reports[i], reportErrs[i] = rep, err
			return err
		})
	}
	go func() { _ = lg.Wait(); close(bgDone) }()
	// The abort watches from the first everyday request on, and is
	// stopped once the loads are done (or Run returns early).
	abortCtx, stopAbort := context.WithCancel(ctx)
	abortDone := make(chan struct{})
	if abort != nil {
		go func() { defer close(abortDone); abort.Run(abortCtx) }()
	} else {
		close(abortDone)
	}
	endAbort := func() { stopAbort(); <-abortDone }
	defer endAbort()

	// phase waits out a phase, marked by the caller; with cut, it returns
	// errTripped as soon as the abort trips.
	phase := func(name string, d time.Duration, cut <-chan struct{}) error {
		progress("%s: %s for %v", sc.Name, name, d)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-cut:
			return errTripped
		case <-t.C:
			return nil
		}
	}
	runErr := func() error {
		// The client table counts across the target's restarts: the
		// per-client counters are read from inject to recover, each read's
		// increase kept even when a killed child's successor counts anew.
		var clients Increase
		var watching sync.WaitGroup
		clientsCtx, stopClients := context.WithCancel(ctx)
		defer func() { stopClients(); watching.Wait() }()
		watched := false
		err := func() error {
			if err := phase(PhaseBaseline, sc.Phases.Baseline, tripped); err != nil {
				return err
			}
			sampler.Mark(PhaseInject)
			if atInject, err := tgt.Metrics(target.WithFamilies(ctx, clientFamilies...)); err == nil {
				clients.Add(atInject)
				watched = true
				watching.Go(func() { watchClients(clientsCtx, tgt, &clients) })
			}
			for _, f := range injected {
				progress("%s: inject %s", sc.Name, f.Name())
				if err := f.Inject(ctx); err != nil {
					return fmt.Errorf("inject %s: %w", f.Name(), err)
				}
			}
			if err := phase(PhaseInject, sc.Phases.Inject, tripped); err != nil {
				return err
			}
			sampler.Mark(PhaseObserve)
			return phase(PhaseObserve, sc.Phases.Observe, tripped)
		}()
		if errors.Is(err, errTripped) {
			trip, _ := abort.Trip()
			progress("%s: aborted: %v; floods stopped, on to recover", sc.Name, trip)
		} else if err != nil {
			return err
		}
		sampler.Mark(PhaseRecover)
		if watched {
			stopClients()
			watching.Wait()
			if atRecover, err := tgt.Metrics(target.WithFamilies(ctx, clientFamilies...)); err == nil {
				clients.Add(atRecover)
			}
			res.Clients = ClientsBetween(nil, clients.Snapshot())
		}
		if err := recoverAll(ctx, ""); err != nil {
			return err
		}
		if err := phase(PhaseRecover, sc.Phases.Recover, nil); err != nil {
			return err
		}
		if abort != nil {
			if _, ok := abort.Trip(); ok {
				// The background loads would run on for the phases the
				// abort cut; recover has been watched.
				for _, l := range bgLoads {
					l.Stop("the run was aborted: stopped at the end of recover")
				}
			}
		}
		sampler.Mark(PhaseValidate)
		<-bgDone
		vctx, cancel := context.WithTimeout(ctx, sc.ValidateTimeout)
		defer cancel()
		if err := validate(vctx, h.URL, h.Shape); err != nil {
			res.ValidateError = err.Error()
		} else {
			res.Validated = true
		}
		return sampler.Sample(ctx)
	}()
	if runErr != nil {
		stopLoads()
		// Stop the faults (floods among them) now, so that the loads can
		// be collected below.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		runErr = errors.Join(runErr, recoverAll(rctx, " after the run stopped"))
		cancel()
	}
	<-bgDone
	endAbort()
	stopSampler()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		progress("%s: sampler: %v", sc.Name, err)
	}
	stopPollers()
	for _, s := range stoppers { // an observer's rows read to their end
		s.Stop()
	}

	// A run that stopped part-way keeps what it saw, for its report.
	res.Loads, res.LoadSummary = collectLoads(ctx, reports, reportErrs, floods)
	res.Timeline = sampler.Timeline()
	res.Clients = withKeysSent(res.Clients, res.Loads, res.Timeline)
	if abort != nil {
		if trip, ok := abort.Trip(); ok {
			res.Aborted = newAborted(trip, res.Timeline)
			runErr = errors.Join(runErr, fmt.Errorf("%w: %s", ErrAborted, res.Aborted))
		}
	}
	if err := addEverydayLatency(res.Timeline, res.Loads); err != nil {
		progress("%s: %v", sc.Name, err)
	}
	res.Violations, res.NotJudged = judge(res.Timeline, tgt, sc.Budgets)
	res.Peaks = Peaks(res.Timeline)
	res.Unreliable = unreliable(res.Timeline, tgt.PID() == target.Self)
	if sc.Events != nil {
		res.Events = sc.Events(res)
	}
	if runErr != nil {
		err = fmt.Errorf("scenario %s: %w", sc.Name, runErr)
		res.Error = err.Error()
		progress("%s: stopped: %v", sc.Name, err)
		return res, err
	}
	progress("%s: done: %d violation(s), validated=%v", sc.Name, len(res.Violations), res.Validated)
	return res, nil
}

// collectLoads returns the reports and summaries of every load of a run:
// the background loads' (reports, each ended by errs[i]), then each flood's
// as Flood.Wait returns it. A flood whose Wait fails is kept, marked failed
// with what it had done so far: a flood missing from the summary would read
// as one that never ran.
func collectLoads(ctx context.Context, reports []load.Report, errs []error, floods []*load.Flood) ([]load.Report, []LoadSummary) {
	all := append([]load.Report(nil), reports...)
	allErrs := append([]error(nil), errs...)
	for _, fl := range floods {
		rep, err := fl.Wait(ctx)
		all, allErrs = append(all, rep), append(allErrs, err)
	}
	sums := make([]LoadSummary, len(all))
	for i, rep := range all {
		sums[i] = NewLoadSummary(rep, allErrs[i])
	}
	return all, sums
}

// ClientFigures is one client's use of the data plane over a window, from
// the data plane's per-client metrics (the label "client").
type ClientFigures struct {
	Client string `json:"client"`
	// Requests and FailedRequests count its requests (requests_total) and
	// those not answered with code "ok".
	Requests       float64 `json:"requests"`
	FailedRequests float64 `json:"failed_requests"`
	// Keys counts the keys it asked for (lookups_total, every source);
	// KeysFailed those not answered (source "error"), KeysFromStore those
	// that missed or could not reach memcached and were read from the
	// store.
	Keys          float64 `json:"keys"`
	KeysFailed    float64 `json:"keys_failed"`
	KeysFromStore float64 `json:"keys_from_store"`
	// KeysSent counts the keys this client's load sent in the same window,
	// as Spiral's load generator recorded them: known even where the data
	// plane never counted them (a child killed while it served them).
	KeysSent float64 `json:"keys_sent"`
	// RequestsSent counts the requests its load sent in that window.
	RequestsSent float64 `json:"requests_sent"`
	// CacheErrors counts the memcached errors its requests met
	// (cache_errors_total): the errors that flood a log sink.
	CacheErrors float64 `json:"cache_errors"`
}

// asked is the most a client is known to have asked for: the keys the data
// plane counted, or those its load sent.
func (f ClientFigures) asked() float64 { return max(f.Keys, f.KeysSent) }

// PerRequest is the keys a client asked for per request: its keys asked
// over the most requests known (counted by the data plane, or sent by its
// load); 0 with no request.
func (f ClientFigures) PerRequest() float64 {
	if n := max(f.Requests, f.RequestsSent); n > 0 {
		return f.asked() / n
	}
	return 0
}

// ClientsBetween returns each client's figures between two snapshots of a
// data plane's metrics, in sortClients' order; clients with nothing in the
// window are left out.
func ClientsBetween(before, after dataplane.Snapshot) []ClientFigures {
	per := map[string]*ClientFigures{}
	add := func(snap dataplane.Snapshot, sign float64) {
		for _, s := range snap {
			c := s.Labels["client"]
			if c == "" {
				continue
			}
			f := per[c]
			if f == nil {
				f = &ClientFigures{Client: c}
				per[c] = f
			}
			switch strings.TrimPrefix(s.Name, "spiral_dataplane_") {
			case "requests_total":
				f.Requests += sign * s.Value
				if s.Labels["code"] != "ok" {
					f.FailedRequests += sign * s.Value
				}
			case "lookups_total":
				f.Keys += sign * s.Value
				switch s.Labels["source"] {
				case "error":
					f.KeysFailed += sign * s.Value
				case "store":
					f.KeysFromStore += sign * s.Value
				}
			case "cache_errors_total":
				f.CacheErrors += sign * s.Value
			}
		}
	}
	add(before, -1)
	add(after, 1)
	var out []ClientFigures
	for _, f := range per {
		if f.Requests > 0 || f.Keys > 0 || f.CacheErrors > 0 {
			out = append(out, *f)
		}
	}
	sortClients(out)
	return out
}

// sortClients orders the client table: the largest requests first (keys
// per request), then most keys asked, then most failed requests, then by
// name. The postmortem's lesson is to see "when clients send small
// numbers of large requests": by keys alone, a busy everyday client can
// outweigh the flood that does the harm (full-mode batch-flood, 2026-12-04:
// appview 122,578 keys in 4,756 requests, internal-batch 60,000 in 4).
func sortClients(out []ClientFigures) {
	slices.SortFunc(out, func(a, b ClientFigures) int {
		switch {
		case a.PerRequest() != b.PerRequest():
			return cmp.Compare(b.PerRequest(), a.PerRequest())
		case a.asked() != b.asked():
			return cmp.Compare(b.asked(), a.asked())
		case a.FailedRequests != b.FailedRequests:
			return cmp.Compare(b.FailedRequests, a.FailedRequests)
		}
		return strings.Compare(a.Client, b.Client)
	})
}

// withKeysSent adds to clients each load's keys sent between the first
// inject and the first recover mark of tl, adding clients the data plane
// did not count, and sorts the table again.
func withKeysSent(clients []ClientFigures, reports []load.Report, tl *probe.Timeline) []ClientFigures {
	var from, to time.Time
	for _, ph := range tl.Phases {
		switch {
		case ph.Name == PhaseInject && from.IsZero():
			from = ph.Start
		case ph.Name == PhaseRecover && to.IsZero():
			to = ph.Start
		}
	}
	if from.IsZero() || to.IsZero() {
		return clients
	}
	type counts struct{ keys, requests float64 }
	sent := map[string]counts{}
	for _, rep := range reports {
		for _, r := range rep.Requests {
			if at := rep.Began.Add(r.Start); !at.Before(from) && at.Before(to) {
				c := sent[rep.Profile.Client]
				c.keys += float64(r.Batch)
				c.requests++
				sent[rep.Profile.Client] = c
			}
		}
	}
	for i := range clients {
		c := sent[clients[i].Client]
		clients[i].KeysSent, clients[i].RequestsSent = c.keys, c.requests
		delete(sent, clients[i].Client)
	}
	for name, c := range sent {
		if c.keys > 0 {
			clients = append(clients, ClientFigures{Client: name, KeysSent: c.keys, RequestsSent: c.requests})
		}
	}
	sortClients(clients)
	return clients
}

// addEverydayLatency adds MetricEverydayLatencyP99 to tl from the everyday
// loads' request records.
func addEverydayLatency(tl *probe.Timeline, reports []load.Report) error {
	type req struct {
		at      time.Time
		latency time.Duration
	}
	var reqs []req
	for _, rep := range reports {
		if rep.Profile.Traffic != load.TrafficEveryday {
			continue
		}
		for _, r := range rep.Requests {
			reqs = append(reqs, req{rep.Began.Add(r.Start), r.Latency})
		}
	}
	slices.SortFunc(reqs, func(a, b req) int { return a.at.Compare(b.at) })
	firstAfter := func(t time.Time) int {
		i, _ := slices.BinarySearchFunc(reqs, t, func(r req, t time.Time) int {
			if r.at.After(t) {
				return 1
			}
			return -1
		})
		return i
	}
	var window []time.Duration
	return tl.AddMetric(MetricEverydayLatencyP99, func(s probe.Sample) float64 {
		// Requests that left in (s.At-LatencyWindow, s.At].
		lo, hi := firstAfter(s.At.Add(-LatencyWindow)), firstAfter(s.At)
		if lo >= hi {
			return math.NaN()
		}
		window = window[:0]
		for _, r := range reqs[lo:hi] {
			window = append(window, r.latency)
		}
		slices.Sort(window)
		return window[int(math.Ceil(0.99*float64(len(window))))-1].Seconds()
	})
}

// validate asks the data plane for a small batch over HTTP.
func validate(ctx context.Context, url string, shape dataplane.RequestShape) error {
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	c := &dataplane.Client{URL: url, Name: "validate", HTTP: hc, Shape: shape}
	var last error
	for {
		_, err := c.GetPostRecords(ctx, fixtures.PostURIs(0, 10))
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("data plane did not answer after recover: %w", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// goroutinesPeakInterval is how often Run polls runtime.NumGoroutine for
// probe.MetricGoroutinesPeak. An incident flood's goroutines, one per key,
// come and go within a few hundred ms, often between two of the 100 ms
// samples; every 5 ms sees each flood request near its top. Measured with
// probe's BenchmarkPeak on this 2-core machine: a reading costs 3 ns, the
// poller's wake-ups add 11-12.5 ms of CPU a second to an idle process
// (1.1-1.3% of one core; the idle baseline 0.6-0.8 ms a second), 22-24 ms
// a second under other builds' load; polling every 20 ms adds about half.
const goroutinesPeakInterval = 5 * time.Millisecond

// CensusOf is the socket census of tgt's sockets, for the runner's socket
// figures and a suite's own: its network namespace's when it has one of its
// own (target.Exec with Netns), where every socket is the target's, else
// the machine's.
func CensusOf(tgt target.Target) probe.Census {
	if n, ok := tgt.(interface{ Netns() *netns.NS }); ok {
		if ns := n.Netns(); ns != nil {
			return probe.Census{In: ns.Do}
		}
	}
	return probe.Census{}
}

// newSampler returns the sampler of a run: the built-in sources, then
// extra. For a target in this process they are its process and runtime
// figures, goroutinesPeak (which the caller starts and stops), the
// memcached sockets, the data plane's metrics and the loads'; for another
// process, its process figures (if it has one to probe) and its runtime
// figures from its metrics, one scrape a sample (goroutinesPeak is nil).
func newSampler(env *fixtures.Env, tgt target.Target, loads []LoadCounters, interval time.Duration, goroutinesPeak *probe.Peak, extra ...probe.Source) (*probe.Sampler, []stopper, error) {
	ap, err := netip.ParseAddrPort(env.MemcachedAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("memcached address %q: %w", env.MemcachedAddr, err)
	}
	census := CensusOf(tgt)
	since, err := settleClosing(context.Background(), census, ap.Port())
	if err != nil {
		return nil, nil, fmt.Errorf("socket census: %w", err)
	}
	// A socket that entered TIME_WAIT as set-up ended can read as entering
	// a tick after the moment settleClosing returned (the kernel's clock
	// ticks every 1-10 ms, its timer is reported to the ms): only sockets
	// past timeWaitMargin count as the run's own.
	since = since.Add(timeWaitMargin)
	names := [3]string{MetricMemcachedTimeWait, MetricMemcachedTimeWaitAdded, MetricMemcachedEstablished}
	// The census, another process's metrics and a scenario's own probes
	// are the sources a saturated machine slows by hundreds of ms: a
	// sample waits for them together at most boundedWait of the interval.
	wait := time.Duration(boundedWait * float64(interval))
	var stoppers []stopper
	var sources []probe.Source
	if tgt.PID() == target.Self && census.In == nil {
		// The process's own figures and the census (of this namespace,
		// the observer's too), read by an observer process that a flood
		// in this one can't keep from its reads.
		obs, err := probe.StartObserver(probe.ObserverSpec{Interval: interval, Ports: &probe.PortSocketsSpec{
			Names: names, Port: ap.Port(), Since: since, Share: socketsShare, Every: socketsEvery, Wait: wait,
		}})
		switch {
		case err == nil:
			// The data plane's totals are atomic loads: nothing to bound.
			sources = append(sources, obs, probe.NewRuntimeSource(), goroutinesPeak, &targetSource{t: tgt})
			stoppers = append(stoppers, obs)
		case !errors.Is(err, probe.ErrNoObserver):
			return nil, nil, err
		}
	}
	if sources == nil {
		throttled, err := probe.Throttle(probe.NewPortSocketsSource(names, census, ap.Port(), since), socketsShare, socketsEvery)
		if err != nil {
			return nil, nil, err
		}
		sockets, err := probe.NewBounded(throttled, wait)
		if err != nil {
			return nil, nil, err
		}
		stoppers = append(stoppers, sockets)
		switch tgt.PID() {
		case target.Self:
			// A binary that serves no observer (its TestMain does not call
			// fixtures.Main): this process reads its own figures.
			proc := probe.NewProcessSource(0)
			stoppers = append(stoppers, proc.(stopper)) // its threads_busy walk
			sources = append(sources, proc, probe.NewRuntimeSource(), goroutinesPeak, sockets, &targetSource{t: tgt})
		default:
			// Another process: its scrape waits on its scheduler.
			metrics, err := probe.NewBounded(&targetSource{t: tgt, runtime: true}, wait)
			if err != nil {
				return nil, nil, stopAll(stoppers, err)
			}
			stoppers = append(stoppers, metrics)
			if tgt.PID() == target.NoProcess {
				// An endpoint without a pid: nothing to probe but its
				// metrics. (A child target has its pid once started; one that
				// died in between has its process figures not judged.)
				sources = append(sources, sockets, metrics)
			} else {
				proc := probe.NewProcessSourceOf(tgt.PID)
				stoppers = append(stoppers, proc.(stopper))
				sources = append(sources, proc, sockets, metrics)
			}
		}
	}
	sources = append(sources, LoadSource(loads...))
	// A scenario's own probes (a census of its budget's sockets, a sink's
	// blocked writers) are bounded too; a Peak polls on its own.
	for _, src := range extra {
		if _, ok := src.(*probe.Peak); !ok {
			b, err := probe.NewBounded(src, wait)
			if err != nil {
				return nil, nil, stopAll(stoppers, err)
			}
			stoppers, src = append(stoppers, b), b
		}
		sources = append(sources, src)
	}
	s, err := probe.NewSampler(interval, sources...)
	if err != nil {
		return nil, nil, stopAll(stoppers, err)
	}
	return s, stoppers, nil
}

// stopper is a source with reads of its own to end once sampling is done:
// a probe.Bounded, a process source's threads_busy walk, an observer.
type stopper interface{ Stop() }

// stopAll stops every one of stoppers and returns err: a sampler not built
// leaves no observer or read behind.
func stopAll(stoppers []stopper, err error) error {
	for _, s := range stoppers {
		s.Stop()
	}
	return err
}

// boundedWait is the share of the interval a sample waits, from its start,
// for its bounded sources (probe.Bounded: the socket census, another
// process's metrics, a scenario's own probes): in a quick run's fixed arms
// the census and a gather of the data plane's metrics took at most 37 ms
// and 31 ms, and in the incidents, which saturate both cores, 428 ms and
// 455-811 ms (batch-flood, port-exhaustion, the OOM child near its kill).
const boundedWait = 0.4

// LoadCounters is what LoadSource reads of a load: its profile (for its
// Traffic) and its live counters. *load.Load is one.
type LoadCounters interface {
	Profile() load.Profile
	Stats() load.Stats
}

// LoadSource returns a source of the loads' figures: MetricLoadOK,
// MetricLoadErrors, and the errors by traffic, MetricEverydayErrors and
// MetricBatchErrors, each load counted by its profile's Traffic. A Read
// takes each load's counters once, so the total is always the sum of the
// two; it fails (the sample's load figures missing) if a load's Traffic is
// neither, which load.New refuses.
func LoadSource(loads ...LoadCounters) probe.Source { return loadSource(loads) }

type loadSource []LoadCounters

func (loadSource) Metrics() []string {
	return []string{MetricLoadOK, MetricLoadErrors, MetricEverydayErrors, MetricBatchErrors}
}

func (s loadSource) Read(_ context.Context, dst []float64) error {
	var ok, everyday, batch int64
	for _, l := range s {
		st := l.Stats()
		ok += st.OK
		switch p := l.Profile(); p.Traffic {
		case load.TrafficEveryday:
			everyday += st.Errors
		case load.TrafficBatch:
			batch += st.Errors
		default:
			return fmt.Errorf("load %s: traffic %q is neither %q nor %q", p.Client, p.Traffic, load.TrafficEveryday, load.TrafficBatch)
		}
	}
	dst[0], dst[1], dst[2], dst[3] = float64(ok), float64(everyday+batch), float64(everyday), float64(batch)
	return nil
}

// socketsShare is the share of the time the memcached socket census may
// take (probe.Throttle), and socketsEvery the longest wait between two
// reads: its walk of the kernel's established hash cost 0.75 ms on an idle
// machine and 3-5 ms while a suite loaded it, so it is read every sample
// when cheap and every few hundred milliseconds when not; a walk while an
// incident's flood opens thousands of connections took 395 ms, and is
// read again half a second later, not 40 s. TIME_WAIT sockets live 60 s,
// so no peak of them is missed. At 1% a walk of 0.8 ms (most fixed arms,
// full mode) was taken every sample, and with the scrape of a child
// (1.1 ms) put the OOM suite's fixed arm's median sample at 2.2% of the
// interval, past the observer's 2% (2026-12-04); at 0.4% it is walked
// about every third sample.
const (
	socketsShare = 0.004
	socketsEvery = 500 * time.Millisecond
)

// timeWaitMargin: see newSampler. 14 sockets the warming data plane
// closed flapped between counted and not without it (quick batchflood,
// 2026-12-02).
const timeWaitMargin = 100 * time.Millisecond

// settleClosing waits, for at most closingSettle, until no socket toward
// port is on its way to TIME_WAIT (FIN_WAIT1, FIN_WAIT2): the connections
// set-up just closed (the warming data plane's) then stand in TIME_WAIT
// before the moment it returns, which starts the run's own count.
func settleClosing(ctx context.Context, census probe.Census, port uint16) (time.Time, error) {
	closing := probe.Filter{States: []probe.State{probe.FinWait1, probe.FinWait2}, RemotePort: port}
	deadline := time.Now().Add(closingSettle)
	for {
		c, err := census.Count(ctx, closing)
		if err != nil {
			return time.Time{}, err
		}
		now := time.Now()
		if c.Total() == 0 || now.After(deadline) {
			return now, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closingSettle bounds settleClosing: on loopback, a closed connection
// reaches TIME_WAIT within a millisecond once memcached answers its FIN.
const closingSettle = time.Second

// targetSource reads the target's metrics, one gather or scrape a sample:
// the data plane's figures (spiral_dataplane_*; missing from a service
// that does not export them) and, with runtime, the Go runtime's figures
// another process exports (go_goroutines and the runtime/metrics that
// cmd/dataplane exports, runtimeFromMetrics) and its restarts.
type targetSource struct {
	t       target.Target
	runtime bool
	gc      gcShare
}

// dataPlaneMetrics are the data plane's figures targetSource fills first.
var dataPlaneMetrics = []string{MetricLookupsInFlight, MetricCacheErrors, MetricLogLines, MetricLogDropped, MetricStoreInFlight, MetricMemcachedConns, MetricPortErrors, MetricCacheHits, MetricStoreReads, MetricStorePeak, MetricDialPortErrors}

// runtimeFromMetrics are the runtime figures targetSource fills after them,
// for another process, and the exported metric each comes from.
var runtimeFromMetrics = []struct{ metric, exported string }{
	{probe.MetricGoroutines, "go_goroutines"},
	{probe.MetricHeap, "go_memory_classes_heap_objects_bytes"},
	{probe.MetricHeapGoal, "go_gc_heap_goal_bytes"},
	{probe.MetricGCCycles, "go_gc_cycles_total_gc_cycles_total"},
	{probe.MetricGoroutinesPeak, target.PeakGoroutinesMetric},
}

// Exported runtime/metrics counters the GC share of another process is
// computed from: /cpu/classes/gc/total:cpu-seconds and
// /cpu/classes/total:cpu-seconds.
const (
	exportedGCCPU    = "go_cpu_classes_gc_total_cpu_seconds_total"
	exportedTotalCPU = "go_cpu_classes_total_cpu_seconds_total"
)

func (s *targetSource) Metrics() []string {
	names := slices.Clone(dataPlaneMetrics)
	if s.runtime {
		for _, r := range runtimeFromMetrics {
			names = append(names, r.metric)
		}
		names = append(names, probe.MetricGCCPUFraction, MetricTargetRestarts)
	}
	return names
}

func (s *targetSource) Read(ctx context.Context, dst []float64) error {
	if dp := target.DataPlaneOf(s.t); dp != nil && !s.runtime {
		// The bundled data plane in this process: its totals, read
		// without a Gather's allocations.
		t := dp.Totals()
		dst[0], dst[1], dst[2], dst[3] = float64(t.LookupsInFlight), float64(t.CacheErrors), float64(t.LogWritten), float64(t.LogDropped)
		dst[4], dst[5], dst[6] = float64(t.StoreInFlight), float64(t.ConnsOpen), float64(t.PortErrors)
		dst[7], dst[8], dst[9], dst[10] = float64(t.CacheHits), float64(t.StoreReads), float64(dp.StoreInFlightPeak()), float64(t.DialPortErrors)
		return nil
	}
	if s.runtime {
		dst[len(dst)-1] = float64(s.t.Restarts()) // known even while the scrape fails
	}
	mctx := ctx
	if s.runtime {
		mctx = target.WithPeakWindow(target.WithFamilies(ctx, TargetFamilies...)) // the goroutine high-water mark's window, if the service keeps one
	}
	m, err := s.t.Metrics(mctx)
	if err != nil {
		if s.runtime {
			for i := range dst[:len(dst)-1] {
				dst[i] = math.NaN()
			}
			return nil // a child between two lives: its figures missing, its restarts kept
		}
		return err
	}
	// A service that does not export the data plane's metrics (its gauge
	// of lookups in flight, always there) has those figures missing, not
	// 0; one that does leaves a counter out until it first counts.
	if _, ok := m.Total(dataPlaneMarker); ok {
		dst[0], dst[1], dst[2] = m.Sum("lookups_in_flight"), m.Sum("cache_errors_total"), m.Sum("log_lines_written_total")
		dst[3], dst[4], dst[5] = m.Sum("log_lines_dropped_total"), m.Sum("store_queries_in_flight"), m.Sum("memcached_conns_open")
		dst[6] = m.Sum("cache_errors_total", "kind", "addr_not_avail") + m.Sum("cache_errors_total", "kind", "addr_in_use")
		dst[7], dst[8] = m.Sum("lookups_total", "source", "cache"), m.Sum("lookups_total", "source", "store")
		dst[10] = m.Sum("memcached_dials_total", "result", "addr_not_avail") + m.Sum("memcached_dials_total", "result", "addr_in_use")
		dst[9] = math.NaN()
		if dp := target.DataPlaneOf(s.t); dp != nil {
			dst[9] = float64(dp.StoreInFlightPeak())
		} else if v, ok := m.Total(target.PeakStoreMetric); ok {
			dst[9] = v
		}
	} else {
		for i := range dataPlaneMetrics {
			dst[i] = math.NaN()
		}
	}
	if !s.runtime {
		return nil
	}
	off := len(dataPlaneMetrics)
	for i, r := range runtimeFromMetrics {
		dst[off+i] = math.NaN()
		if v, ok := m.Total(r.exported); ok {
			dst[off+i] = v
		}
	}
	gc, okGC := m.Total(exportedGCCPU)
	total, okTotal := m.Total(exportedTotalCPU)
	dst[off+len(runtimeFromMetrics)] = math.NaN()
	if okGC && okTotal {
		dst[off+len(runtimeFromMetrics)] = s.gc.next(gc, total)
	}
	return nil
}

// neverGiven says tl has no value of metric at all.
func neverGiven(tl *probe.Timeline, metric string) bool {
	col := tl.Index(metric)
	if col < 0 {
		return true
	}
	for _, s := range tl.Samples {
		if !math.IsNaN(s.Values[col]) {
			return false
		}
	}
	return true
}

// TargetFamilies are the metric families the runner reads of a target in
// another process (one scrape a sample, filtered to them with
// target.WithFamilies): the data plane's and the runtime's it records. The goroutine
// high-water mark (target.PeakGoroutinesMetric) comes with a peak-window
// scrape whatever the filter.
var TargetFamilies = func() []string {
	names := []string{
		dataPlaneMarker,
		"spiral_dataplane_cache_errors_total",
		"spiral_dataplane_log_lines_written_total",
		"spiral_dataplane_log_lines_dropped_total",
		"spiral_dataplane_store_queries_in_flight",
		"spiral_dataplane_memcached_conns_open",
		"spiral_dataplane_lookups_total",
		"spiral_dataplane_memcached_dials_total",
		exportedGCCPU, exportedTotalCPU,
	}
	for _, r := range runtimeFromMetrics {
		names = append(names, r.exported)
	}
	return names
}()

// dataPlaneMarker is a metric every data plane exporting Spiral's metric
// names has from its start (a gauge).
const dataPlaneMarker = "spiral_dataplane_lookups_in_flight"

// gcShare turns two cumulative CPU counters (GC's and everything's) into
// the share of CPU spent in GC since the previous reading, as
// probe.RuntimeReader does in-process: 0 where the total did not move
// (the runtime accounts GC CPU at a cycle's end), NaN on the first reading
// and after a counter went back (a restarted process).
type gcShare struct {
	prevGC, prevTotal float64
	primed            bool
}

func (g *gcShare) next(gc, total float64) float64 {
	prevGC, prevTotal, primed := g.prevGC, g.prevTotal, g.primed
	g.prevGC, g.prevTotal, g.primed = gc, total, true
	switch dt := total - prevTotal; {
	case !primed || dt < 0 || gc < prevGC:
		return math.NaN()
	case dt == 0:
		return 0
	default:
		return (gc - prevGC) / dt
	}
}

// judge checks budgets against tl. For a target in this process every
// problem is a violation (a figure missing is Spiral's bug); for another,
// a budget on a figure it never gave (one it does not export, or no process
// to probe: the metric not recorded, or missing in every sample) is
// returned apart, as not judged. Any other problem (no sample in the
// budget's phases, a NaN bound) stays a violation.
func judge(tl *probe.Timeline, tgt target.Target, budgets []probe.Budget) (violations, notJudged probe.Violations) {
	for _, v := range tl.Check(budgets...) {
		if v.Problem != "" && tgt.PID() != target.Self && neverGiven(tl, v.Budget.Metric) {
			v.Problem = fmt.Sprintf("target %s does not expose it: %s", tgt.Name(), v.Problem)
			notJudged = append(notJudged, v)
			continue
		}
		violations = append(violations, v)
	}
	return violations, notJudged
}

// Peaks returns each metric's high-water mark per phase of tl, missing
// values skipped.
func Peaks(tl *probe.Timeline) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for i, m := range tl.Metrics {
		per := map[string]float64{}
		for _, s := range tl.Samples {
			v := s.Values[i]
			if v != v { // NaN: missing
				continue
			}
			if cur, ok := per[s.Phase]; !ok || v > cur {
				per[s.Phase] = v
			}
		}
		out[m] = per
	}
	return out
}

// replayCommand is the command that runs sc again with the same seed.
func replayCommand(sc Scenario) string {
	return ReplayCommand(sc.Seed, testPattern(sc.Name), "./suites/...")
}

func testPattern(name string) string {
	return strings.ReplaceAll(name, " ", "_")
}

// EnvProgress, set to an interval ("5s"), makes Run print a line of live
// figures that often while it runs (spiral run sets it); unset or 0, only
// the phases are printed.
const EnvProgress = "SPIRAL_PROGRESS"

// progressFigures are the live figures of a progress line, those the
// sampler records.
var progressFigures = []string{probe.MetricThreads, probe.MetricThreadsBusy, probe.MetricGoroutines, probe.MetricRSS,
	MetricMemcachedTimeWaitAdded, MetricLoadOK, MetricLoadErrors, MetricTargetRestarts}

// progressEvery is $SPIRAL_PROGRESS, 0 when unset or malformed (CheckEnv
// reports that).
func progressEvery() time.Duration {
	d, err := parseProgress(os.Getenv(EnvProgress))
	if err != nil {
		return 0
	}
	return d
}

func parseProgress(v string) (time.Duration, error) {
	if v == "" || v == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 100*time.Millisecond {
		return 0, fmt.Errorf("%s=%q: want an interval of at least 100ms (\"5s\"), or 0 for none", EnvProgress, v)
	}
	return d, nil
}

// liveProgress prints the phase, the time since start and the latest
// sample's figures every interval until ctx ends.
func liveProgress(ctx context.Context, name string, s *probe.Sampler, start time.Time, every time.Duration) {
	metrics := s.Metrics()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		smp, ok := s.Last()
		if !ok {
			continue
		}
		progress("%s: %s +%.1fs %s", name, smp.Phase, time.Since(start).Seconds(), formatFigures(metrics, smp.Values))
	}
}

// formatFigures writes the progress figures present in values.
func formatFigures(metrics []string, values []float64) string {
	var b strings.Builder
	for _, m := range progressFigures {
		i := slices.Index(metrics, m)
		if i < 0 || math.IsNaN(values[i]) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if m == probe.MetricRSS {
			fmt.Fprintf(&b, "rss=%.0fMiB", values[i]/(1<<20))
			continue
		}
		fmt.Fprintf(&b, "%s=%g", m, values[i])
	}
	return b.String()
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "spiral: "+format+"\n", args...)
}
