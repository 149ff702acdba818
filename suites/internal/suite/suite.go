// Package suite holds what Spiral's suites share: running a scenario from a
// test, writing its report, and saying how to replay it.
package suite

import (
	"cmp"
	"errors"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
	"github.com/spiral-chaos/spiral/target"
)

// Run prepares sc (scenario.Prepare), runs it and writes its report: under
// $SPIRAL_REPORT_DIR when set (make chaos), else into a temporary folder
// kept only if t fails. It fails t at once if the run could not happen or
// its abort tripped ("aborted: everyday error rate 12% > 5% ..."); judging
// the result is the caller's. Budgets the target could not be judged on
// are logged as such. A scenario whose floods would reach backends Spiral
// does not own is failed, naming scenario.EnvAllowExternalFlood, unless
// that says 0, which skips t instead.
func Run(t *testing.T, env *fixtures.Env, sc scenario.Scenario) *scenario.Result {
	t.Helper()
	res, _ := run(t, env, sc, false)
	return res
}

// RunControl is Run for an arm that must be caught (an incident, a
// regression: a suite's positive control), which abort limits may stop
// (scenario.AbortLimitsFor; by default against services Spiral does not
// own): a run they aborted is reported as caught by them (its everyday
// traffic degraded past a limit while its floods ran, which the fixed arm
// must never do) and RunControl returns nil, the arm's budgets not judged
// on the part of the run that happened. An aborted arm under test fails
// in Run.
func RunControl(t *testing.T, env *fixtures.Env, sc scenario.Scenario) *scenario.Result {
	t.Helper()
	res, aborted := run(t, env, sc, true)
	if aborted {
		t.Logf("%s: caught by the abort limits: %s; the floods were stopped to spare the services, so its budgets are not judged", sc.Name, res.Aborted)
		return nil
	}
	return res
}

func run(t *testing.T, env *fixtures.Env, sc scenario.Scenario, control bool) (*scenario.Result, bool) {
	t.Helper()
	if err := scenario.CheckEnv(); err != nil {
		t.Fatal(err)
	}
	if err := scenario.Prepare(t.Context(), env, sc); err != nil {
		t.Fatal(err)
	}
	res, err := scenario.Run(t.Context(), env, sc)
	if fe, ok := errors.AsType[*scenario.ExternalFloodError](err); ok && fe.Declined {
		t.Skip(err)
	}
	if res != nil {
		res.Replay = replayCommand(t, sc.Seed)
	}
	if res != nil && res.Timeline != nil {
		WriteReport(t, res)
	}
	if control && errors.Is(err, scenario.ErrAborted) && res != nil && res.Aborted != nil {
		return res, true
	}
	if err != nil {
		t.Fatalf("%v\nreplay: %s", err, replay(res))
	}
	t.Logf("%s: target %s; faults %v; %d violation(s); validated=%v", sc.Name, res.Target, res.Faults, len(res.Violations), res.Validated)
	for _, v := range res.Violations {
		t.Logf("  %v", v)
	}
	for _, v := range res.NotJudged {
		t.Logf("  not judged: %v", v)
	}
	for _, u := range res.Unreliable {
		if control {
			t.Logf("  observer unreliable: %s", u)
		} else {
			// A pass on figures the observer distorted or missed is no
			// pass: the arm under test fails as unreliable.
			t.Errorf("observer unreliable: %s (limits: scenario.ObserverShare, ObserverMaxGap, ObserverLateShare)", u)
		}
	}
	for _, l := range res.LoadSummary {
		t.Logf("  load %s: sent %d ok %d errors %d skipped %d p99 %v", l.Client, l.Stats.Sent, l.Stats.OK, l.Stats.Errors, l.Stats.Skipped, l.P99)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay: %s", res.Replay)
		}
	})
	return res, false
}

// RunUnderTest is Run with sc's target set by UnderTest: the arm that
// judges the service under test.
func RunUnderTest(t *testing.T, env *fixtures.Env, sc scenario.Scenario) *scenario.Result {
	t.Helper()
	sc.Target = UnderTest(t, sc.Config)
	return Run(t, env, sc)
}

// UnderTest returns the target of an arm that judges the service under
// test (the fixed arms): $SPIRAL_TARGET's when it names one, else nil,
// which a scenario reads as the bundled data plane with its Config
// in-process. A malformed $SPIRAL_TARGET fails t. Arms that replay the
// incident or a regression of the bundled data plane are its positive
// controls and keep running it in-process, whatever the target.
func UnderTest(t *testing.T, cfg dataplane.Config) target.Target {
	t.Helper()
	spec := Spec(t)
	if spec.Kind == target.KindInProcess {
		return nil
	}
	if spec.Kind == target.KindExec {
		return ExecUnderTest(t, spec, func(*target.ExecConfig) {})
	}
	tgt, err := spec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// SinkStderr returns a new descriptor on sink's write end, for a child
// target's stderr (target.ExecConfig.Stderr), closed when t ends, after the
// run has stopped every child.
func SinkStderr(t *testing.T, sink *faults.Sink) *os.File {
	t.Helper()
	w, err := sink.WriteEnd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// ExecUnderTest builds the child-process target spec names (KindExec),
// after edit has added to its configuration. Run as root, the child gets a
// network namespace of its own (ExecConfig.Netns), fresh for each arm, so
// that the socket census counts its sockets alone, none an earlier arm or
// another process left; otherwise the census counts the machine's sockets
// toward memcached, which t's log says.
func ExecUnderTest(t *testing.T, spec target.Spec, edit func(*target.ExecConfig)) *target.Exec {
	t.Helper()
	ec := spec.ExecConfig()
	ec.Netns = os.Geteuid() == 0
	if !ec.Netns {
		t.Logf("%s: not root, so no network namespace of its own: the socket census counts the machine's sockets toward memcached, not the child's alone", spec)
	}
	edit(&ec)
	tgt, err := target.NewExec(ec)
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// Spec returns the service under test as $SPIRAL_TARGET and the request
// shape's variables name it (target.FromEnv), for an arm that wires it up
// itself; a malformed one fails t.
func Spec(t *testing.T) target.Spec {
	t.Helper()
	spec, err := target.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// replayCommand is the go test command that runs t again with seed, from
// the module's root.
func replayCommand(t *testing.T, seed uint64) string {
	t.Helper()
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	pkg := "./suites/..."
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				if rel, err := filepath.Rel(dir, wd); err == nil {
					pkg = "./" + filepath.ToSlash(rel)
				}
				break
			}
		}
	}
	return scenario.ReplayCommand(seed, strings.Join(parts, "/"), pkg)
}

func replay(res *scenario.Result) string {
	if res == nil {
		return "(no result)"
	}
	return res.Replay
}

// WriteReport writes res's report: under $SPIRAL_REPORT_DIR when set
// (make chaos), else into a temporary folder kept only if t fails. Suites
// with a run loop of their own call it directly.
func WriteReport(t *testing.T, res *scenario.Result) {
	t.Helper()
	name := res.Scenario
	dir := report.Dir(name)
	keep := dir != ""
	if !keep {
		d, err := os.MkdirTemp("", "spiral-report-")
		if err != nil {
			t.Logf("report: %v", err)
			return
		}
		dir = filepath.Join(d, strings.ReplaceAll(name, "/", "_"))
		t.Cleanup(func() {
			if !t.Failed() {
				_ = os.RemoveAll(d)
			}
		})
	}
	page, err := report.Write(dir, res)
	if err != nil {
		t.Logf("report: %v", err)
		return
	}
	if keep {
		t.Logf("report: %s", page)
	} else {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("report kept: %s\nreplay: %s", page, res.Replay)
			}
		})
	}
}

// AssertTopClient fails t unless client is the first of res.Clients, the
// client whose requests asked for the most keys each while the faults
// acted (counted by the data plane, or sent by its load), and, where the data plane counted
// any cache error then, also the client whose requests met the most: the
// postmortem's lesson that per-client figures would have named the new
// internal client at once, checked on the report's own table. It logs the
// table's first rows either way.
func AssertTopClient(t Reporter, res *scenario.Result, client string) bool {
	t.Helper()
	if len(res.Clients) == 0 {
		t.Errorf("%s: the report names no client while the faults acted; want %s first", res.Scenario, client)
		return false
	}
	for i, c := range res.Clients[:min(3, len(res.Clients))] {
		t.Logf("  client %d: %s keys per request %.1f, keys sent %.0f, counted %.0f (failed %.0f, from the store %.0f), cache errors %.0f, requests %.0f sent, %.0f counted (failed %.0f)", i+1, c.Client, c.PerRequest(), c.KeysSent, c.Keys, c.KeysFailed, c.KeysFromStore, c.CacheErrors, c.RequestsSent, c.Requests, c.FailedRequests)
	}
	ok := true
	if res.Clients[0].Client != client {
		t.Errorf("%s: the report names %s as the client of the largest requests while the faults acted, not the flooding client %s", res.Scenario, res.Clients[0].Client, client)
		ok = false
	}
	top := slices.MaxFunc(res.Clients, func(a, b scenario.ClientFigures) int { return cmp.Compare(a.CacheErrors, b.CacheErrors) })
	if top.CacheErrors > 0 && top.Client != client {
		t.Errorf("%s: the report names %s as the top source of cache errors while the faults acted (%.0f), not the flooding client %s", res.Scenario, top.Client, top.CacheErrors, client)
		ok = false
	}
	return ok
}

// Reporter is the part of *testing.T the assertions here use.
type Reporter interface {
	Helper()
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
}

// Growth returns metric's highest value while the faults act (inject,
// observe and recover) and its highest value in the baseline, from
// res.Peaks: how far the faults moved it. ok is false when either phase
// has no value of it.
func Growth(res *scenario.Result, metric string) (during, baseline float64, ok bool) {
	per := res.Peaks[metric]
	base, okBase := per[scenario.PhaseBaseline]
	found := false
	for _, ph := range []string{scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover} {
		if v, ok := per[ph]; ok && (!found || v > during) {
			during, found = v, true
		}
	}
	return during, base, okBase && found
}

// AssertGrowth fails t unless metric's peak while the faults act is at
// least factor times its baseline peak (and above 0): the postmortem's
// magnitudes ("150 vs 1500" threads) as a ratio of the run's own baseline,
// which no other run in the process shifts when metric is one of the
// run's own (threads_busy, not threads).
func AssertGrowth(t Reporter, res *scenario.Result, metric string, factor float64) bool {
	t.Helper()
	during, base, ok := Growth(res, metric)
	if !ok {
		t.Errorf("%s: no value in the baseline or while the faults act; peaks %v", metric, res.Peaks[metric])
		return false
	}
	if during <= 0 || during < factor*base {
		t.Errorf("%s peaked at %g while the faults acted, %.1f× its baseline peak %g: want at least %g×",
			metric, during, during/max(base, 1e-9), base, factor)
		return false
	}
	t.Logf("%s: %g while the faults acted, %.1f× its baseline peak %g (want %g×)", metric, during, during/max(base, 1e-9), base, factor)
	return true
}

// ThreadsBusyBudget bounds probe.MetricThreadsBusy, the OS threads at
// work, in every fixed arm. With nothing blocked in a system call a Go
// process has at most GOMAXPROCS threads running (2 here), sysmon and the
// netpoller each in a sleep, and the sampler's own read: 5, the highest
// peak of every fixed arm of every suite over 5 quick runs (2026-12-02;
// most peaked at 4). Twice that. The incident's log storm reached 622-686.
const ThreadsBusyBudget = 10

// Rise returns how much cumulative metric grew over phase in res's
// timeline: its last value in phase less its last value before it; 0 when
// the phase has no value of it.
func Rise(res *scenario.Result, metric, phase string) float64 {
	i := res.Timeline.Index(metric)
	if i < 0 {
		return 0
	}
	var before, last float64
	seen := false
	for _, s := range res.Timeline.Samples {
		v := s.Values[i]
		if math.IsNaN(v) {
			continue
		}
		switch {
		case s.Phase == phase:
			last, seen = v, true
		case !seen:
			before = v
		}
	}
	if !seen {
		return 0
	}
	return last - before
}
