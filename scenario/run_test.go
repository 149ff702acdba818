package scenario_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
	"github.com/spiral-chaos/spiral/target"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// fakeTarget stands in for a service under test where what is tested is
// the runner itself (phase order, recovery, clean-up), which no real
// service could make fail on demand: an HTTP server on loopback that
// answers every batch with an empty answer, /healthz with 200 and
// /metrics with one data plane gauge. pid is what PID returns: target.Self
// (the runner then samples this process) or target.NoProcess (an endpoint
// with nothing to probe). requests, if set, records the body of every
// batch request; xrpc, when set, answers the batches instead.
type fakeTarget struct {
	pid      int
	startErr error
	log      *events
	requests *events
	xrpc     http.HandlerFunc

	srv     *httptest.Server
	started atomic.Int32
	stopped atomic.Int32
}

func (f *fakeTarget) Name() string { return "fake" }

func (f *fakeTarget) Start(context.Context, target.Backends) error {
	f.started.Add(1)
	f.log.add("target start")
	if f.startErr != nil {
		return f.startErr
	}
	mux := http.NewServeMux()
	xrpc := f.xrpc
	if xrpc == nil {
		xrpc = func(w http.ResponseWriter, r *http.Request) {
			if f.requests != nil {
				body, err := io.ReadAll(r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				f.requests.add(string(body))
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"posts":[],"profiles":[],"counts":[]}`))
		}
	}
	mux.HandleFunc(dataplane.XRPCPrefix, xrpc)
	mux.HandleFunc(dataplane.HealthPath, func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc(dataplane.MetricsPath, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("# TYPE spiral_dataplane_lookups_in_flight gauge\nspiral_dataplane_lookups_in_flight 3\n"))
	})
	f.srv = httptest.NewServer(mux)
	return nil
}

func (f *fakeTarget) URL() string { return f.srv.URL }
func (f *fakeTarget) PID() int    { return f.pid }

func (f *fakeTarget) Metrics(ctx context.Context) (dataplane.Snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+dataplane.MetricsPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	return dataplane.ParseSnapshot(resp.Body)
}

func (f *fakeTarget) Health(context.Context) error { return nil }
func (f *fakeTarget) Restarts() int                { return 0 }

func (f *fakeTarget) Stop(context.Context) error {
	f.stopped.Add(1)
	f.log.add("target stop")
	if f.srv != nil {
		f.srv.Close()
	}
	return nil
}

// events records what happened, in order, from several goroutines.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

// stubFault is a fault that acts on nothing and counts its calls; it stands
// in for a real one where what is tested is the runner's handling of a
// fault's errors. injectErr and recoverErr are returned by every call.
type stubFault struct {
	name                  string
	injectErr, recoverErr error
	injects, recovers     atomic.Int32
	log                   *events
}

func (f *stubFault) Name() string { return f.name }

func (f *stubFault) Inject(context.Context) error {
	f.injects.Add(1)
	f.log.add("inject " + f.name)
	return f.injectErr
}

func (f *stubFault) Recover(context.Context) error {
	f.recovers.Add(1)
	f.log.add("recover " + f.name)
	return f.recoverErr
}

// bareEnv is an environment without containers: addresses only, memcached's
// a loopback port nothing listens on (the runner counts sockets toward it).
func bareEnv() *fixtures.Env {
	return &fixtures.Env{
		MemcachedAddr: "127.0.0.1:1", MemcachedAddrs: []string{"127.0.0.1:1"},
		CQLHosts: []string{"127.0.0.1:2"}, Keyspace: "spiral_fake", Flavor: fixtures.FlavorExternal,
	}
}

func stubScenario(name string, tgt target.Target, fs ...*stubFault) scenario.Scenario {
	sc := scenario.Scenario{
		Name:       name,
		Config:     dataplane.DefaultConfig(),
		Target:     tgt,
		Background: []load.Profile{load.Background},
		Phases:     scenario.Phases{Baseline: 300 * time.Millisecond, Inject: 300 * time.Millisecond, Observe: 200 * time.Millisecond, Recover: 300 * time.Millisecond},
	}
	for _, f := range fs {
		sc.Faults = append(sc.Faults, func(scenario.Harness) (faults.Fault, error) { return f, nil })
	}
	return sc
}

// noLeaks fails t if a goroutine started during the test outlives it.
func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// A clean run marks the phases in order, injects before the inject phase
// and recovers at the start of recover, stops the target last, and leaves
// no goroutine behind.
func TestRunPhasesInOrderAndLeavesNothingBehind(t *testing.T) {
	noLeaks(t)
	log := &events{}
	tgt := &fakeTarget{pid: target.Self, log: log}
	f := &stubFault{name: "f", log: log}
	res, err := scenario.Run(t.Context(), bareEnv(), stubScenario("clean", tgt, f))
	require.NoError(t, err)
	assert.Empty(t, res.Error)
	assert.True(t, res.Validated, res.ValidateError)
	assert.Equal(t, "fake", res.Target)
	// Recover again after the run: clean-up, which an idempotent fault
	// shrugs off.
	assert.Equal(t, []string{"target start", "inject f", "recover f", "recover f", "target stop"}, log.all())
	assert.EqualValues(t, 1, tgt.stopped.Load())

	var phases []string
	for _, s := range res.Timeline.Samples {
		if len(phases) == 0 || phases[len(phases)-1] != s.Phase {
			phases = append(phases, s.Phase)
		}
	}
	assert.Equal(t, []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover, scenario.PhaseValidate}, phases,
		"every phase sampled, once each, in order")
	var marked []string
	for _, ph := range res.Timeline.Phases {
		marked = append(marked, ph.Name)
	}
	assert.Equal(t, []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover, scenario.PhaseValidate}, marked,
		"every phase marked once, in order")
	assert.InDelta(t, 3.0, res.Peaks[scenario.MetricLookupsInFlight][scenario.PhaseInject], 0, "the target's metrics are sampled")
	require.NotEmpty(t, res.LoadSummary)
	assert.Positive(t, res.LoadSummary[0].Stats.OK, "the background load reached the target")
}

// A fault that fails to recover fails the run, names itself, and does not
// stop the other faults from being recovered or the target from being
// stopped; the result still carries the timeline, and its report is
// written.
func TestRunRecoversEveryFaultAndReportsTheOneThatFailed(t *testing.T) {
	noLeaks(t)
	tgt := &fakeTarget{pid: target.Self, log: &events{}}
	first := &stubFault{name: "first", log: tgt.log}
	stuck := &stubFault{name: "stuck", recoverErr: errors.New("backend still paused"), log: tgt.log}
	res, err := scenario.Run(t.Context(), bareEnv(), stubScenario("recover-fails", tgt, first, stuck))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "recover stuck")
	assert.Contains(t, err.Error(), "backend still paused")
	assert.Positive(t, first.recovers.Load(), "the fault injected before the stuck one is recovered too")
	assert.EqualValues(t, 1, tgt.stopped.Load(), "the target is stopped")
	require.NotNil(t, res)
	assert.NotNil(t, res.Timeline, "a failed run keeps its timeline for the report")
	assert.Contains(t, res.Error, "recover stuck")

	page, err := report.Write(filepath.Join(t.TempDir(), "recover-fails"), res)
	require.NoError(t, err, "a failed run's report is written")
	b, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Contains(t, string(b), "backend still paused", "the report says why the run failed")
}

// A run that stops part-way (a fault that can't be injected) recovers the
// faults already in place and returns what it saw.
func TestRunStoppedPartWayRecoversAndKeepsTheResult(t *testing.T) {
	noLeaks(t)
	tgt := &fakeTarget{pid: target.Self, log: &events{}}
	ok := &stubFault{name: "ok", log: tgt.log}
	bad := &stubFault{name: "bad", injectErr: errors.New("no such backend"), log: tgt.log}
	res, err := scenario.Run(t.Context(), bareEnv(), stubScenario("inject-fails", tgt, ok, bad))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "inject bad")
	assert.EqualValues(t, 1, ok.injects.Load())
	assert.Positive(t, ok.recovers.Load(), "the injected fault is recovered")
	assert.EqualValues(t, 1, tgt.stopped.Load())
	require.NotNil(t, res)
	assert.NotNil(t, res.Timeline)
	assert.NotEmpty(t, res.LoadSummary, "the everyday load is in the result")
	assert.Contains(t, res.Error, "inject bad")
}

// A target that can't start fails the run before any fault is built.
func TestRunTargetThatFailsToStart(t *testing.T) {
	noLeaks(t)
	tgt := &fakeTarget{pid: target.Self, log: &events{}, startErr: errors.New("no such binary")}
	f := &stubFault{name: "f", log: tgt.log}
	_, err := scenario.Run(t.Context(), bareEnv(), stubScenario("no-start", tgt, f))
	require.ErrorContains(t, err, "no such binary")
	assert.Zero(t, f.injects.Load()+f.recovers.Load(), "no fault touched")
}

// A clean run recovers each fault and returns no error. Its pollers, the
// built-in goroutines_peak and a probe.Peak among the scenario's probes,
// poll while it runs and are stopped when it returns.
func TestRunStartsAndStopsPollers(t *testing.T) {
	noLeaks(t)
	tgt := &fakeTarget{pid: target.Self, log: &events{}}
	f := &stubFault{name: "f", log: tgt.log}
	var polls atomic.Int64
	extra, err := probe.NewPeak("polls", time.Millisecond, func(context.Context) (float64, error) {
		return float64(polls.Add(1)), nil
	})
	require.NoError(t, err)
	sc := stubScenario("clean", tgt, f)
	sc.Probes = func(scenario.Harness) []probe.Source { return []probe.Source{extra} }
	res, err := scenario.Run(t.Context(), bareEnv(), sc)
	require.NoError(t, err)

	assert.NotContains(t, goroutineStacks(), "probe.(*Peak).poll", "no poller outlives Run")
	assert.Greater(t, polls.Load(), int64(2*len(res.Timeline.Samples)), "Run started the scenario's Peak: it polled between samples")
	require.ErrorContains(t, extra.Start(t.Context()), "stopped", "Run stopped it")
	// The plain count is read a few µs before the peak's own reading; a
	// goroutine or two may end in between.
	const slack = 10
	for _, ph := range []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseRecover} {
		assert.GreaterOrEqual(t, res.Peaks[probe.MetricGoroutinesPeak][ph], res.Peaks[probe.MetricGoroutines][ph]-slack,
			"goroutines_peak in %s is at least the plain count's peak", ph)
	}
}

// A target out of this process without a pid (an endpoint) has no process
// figures and no goroutine high-water mark: budgets on them are not
// judged, apart from the violations and never among the held; a budget on
// a figure its metrics give is judged as usual.
func TestRunBudgetsATargetDoesNotExposeAreNotJudged(t *testing.T) {
	noLeaks(t)
	tgt := &fakeTarget{pid: target.NoProcess, log: &events{}}
	sc := stubScenario("endpoint", tgt)
	sc.Budgets = []probe.Budget{
		probe.Limit(probe.MetricThreads, 100),
		probe.Limit(probe.MetricGoroutinesPeak, 100),
		probe.Limit(scenario.MetricLookupsInFlight, 1), // the fake exports 3
	}
	res, err := scenario.Run(t.Context(), bareEnv(), sc)
	require.NoError(t, err)
	require.Len(t, res.Violations, 1, "%v", res.Violations)
	assert.Equal(t, scenario.MetricLookupsInFlight, res.Violations[0].Budget.Metric)
	require.Len(t, res.NotJudged, 2, "%v", res.NotJudged)
	for _, v := range res.NotJudged {
		assert.Contains(t, v.Problem, "target fake does not expose it")
	}
	assert.False(t, res.Held())
	assert.NotContains(t, strings.Join(res.Timeline.Metrics, " "), probe.MetricThreads+" ", "no process figures for a target without a process")
}

// seededFault stands in for a fault that makes random choices, such as
// the port exhaustion suite's band-aid: its factory seeds a band-aid dial
// function from the Harness, and Inject dials a loopback listener through
// it, recording the source addresses.
type seededFault struct {
	seed    uint64
	dial    dataplane.DialFunc
	addr    string
	sources []string
}

func (*seededFault) Name() string { return "seeded" }

func (f *seededFault) Inject(ctx context.Context) error {
	for range 4 {
		c, err := f.dial(ctx, "tcp", f.addr)
		if err != nil {
			return err
		}
		f.sources = append(f.sources, c.LocalAddr().(*net.TCPAddr).IP.String())
		// Reset, so that no TIME_WAIT holds the bound port.
		if err := c.(*net.TCPConn).SetLinger(0); err != nil {
			_ = c.Close()
			return err
		}
		if err := c.Close(); err != nil {
			return err
		}
	}
	return nil
}

func (*seededFault) Recover(context.Context) error { return nil }

// choices is what a run drew from its seed: the seed its fault factory
// was handed, the fault's source addresses and the background load's
// requests (sorted: concurrent requests may reach the target in any
// order).
type choices struct {
	factorySeed uint64
	sources     []string
	requests    []string
}

// seededRun runs a stub scenario with seed against a fake target and
// returns what it drew from the seed.
func seededRun(t *testing.T, seed uint64) choices {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })

	tgt := &fakeTarget{pid: target.Self, log: &events{}, requests: &events{}}
	sc := stubScenario("seeded", tgt)
	sc.Seed = seed
	// 50 a second, a quarter of Background's rate: about 55 requests over
	// the stub's 1.1 s, none of them skipped.
	sc.Background[0].Rate = 50
	var f *seededFault
	sc.Faults = []scenario.FaultFunc{func(h scenario.Harness) (faults.Fault, error) {
		f = &seededFault{seed: h.Seed, dial: dataplane.BandAidDialFunc(nil, h.Seed), addr: ln.Addr().String()}
		return f, nil
	}}
	res, err := scenario.Run(t.Context(), bareEnv(), sc)
	require.NoError(t, err)
	require.Len(t, res.LoadSummary, 1)
	st := res.LoadSummary[0].Stats
	require.Zero(t, st.Skipped, "no request skipped: the requests sent are those drawn")
	require.Positive(t, st.Sent)
	reqs := tgt.requests.all()
	slices.Sort(reqs)
	return choices{factorySeed: f.seed, sources: f.sources, requests: reqs}
}

// Replaying a seed repeats the run's choices: the background load's
// schedule, batches and keys, and those of its faults, drawn from the seed
// the runner hands their factory. Another seed draws others.
func TestRunReplaysItsSeed(t *testing.T) {
	noLeaks(t)
	first := seededRun(t, 7)
	again := seededRun(t, 7)
	other := seededRun(t, 8)
	assert.Equal(t, uint64(7), first.factorySeed, "the fault factory is handed the scenario's seed")
	assert.Equal(t, first.sources, again.sources, "the same seed: the fault dials from the same addresses")
	assert.Equal(t, first.requests, again.requests, "the same seed: the same requests")
	assert.NotEqual(t, first.sources, other.sources, "another seed: other addresses")
	assert.NotEqual(t, first.requests, other.requests, "another seed: other requests")
}

// goroutineStacks returns every goroutine's stack.
func goroutineStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// With SPIRAL_PROGRESS, a run prints its phase, time and live figures that
// often, from the latest sample; without it, only the phases.
func TestRunPrintsLiveProgress(t *testing.T) {
	lines := func(t *testing.T) []string {
		t.Helper()
		r, w, err := os.Pipe()
		require.NoError(t, err)
		stderr := os.Stderr
		os.Stderr = w
		tgt := &fakeTarget{pid: target.Self, log: &events{}}
		_, runErr := scenario.Run(t.Context(), bareEnv(), stubScenario("progress", tgt))
		os.Stderr = stderr
		require.NoError(t, w.Close())
		out, err := io.ReadAll(r)
		require.NoError(t, err)
		require.NoError(t, runErr)
		var live []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, " +") && strings.Contains(l, "threads=") {
				live = append(live, l)
			}
		}
		return live
	}
	assert.Empty(t, lines(t), "no live figures unless asked for")

	t.Setenv(scenario.EnvProgress, "200ms")
	live := lines(t)
	require.GreaterOrEqual(t, len(live), 3, "a line every 200ms of a run over a second long")
	assert.Regexp(t, `^spiral: progress: (baseline|inject|observe|recover|validate) \+\d+\.\ds threads=\d+ threads_busy=\d+ goroutines=\d+ rss=\d+MiB`, live[0])

	t.Setenv(scenario.EnvProgress, "fast")
	require.ErrorContains(t, scenario.CheckEnv(), "SPIRAL_PROGRESS")
}
