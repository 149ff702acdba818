package scenario

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/target"
)

// heldServer is an HTTP server standing in for the data plane: it answers
// every request with an empty JSON object once release is called, and
// release is called when the test ends.
func heldServer(t *testing.T) (url string, release func()) {
	t.Helper()
	held := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-held:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte("{}"))
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(release) // runs before srv.Close, which waits for handlers
	return srv.URL, release
}

// oneRequestFlood is a batch flood of a single small request.
func oneRequestFlood(t *testing.T, url, client string) *load.Flood {
	t.Helper()
	p := load.InternalBatch
	p.Client, p.BatchMin, p.BatchMax = client, 1, 1
	p.Rate, p.MaxRequests, p.Duration, p.Timeout = 1, 1, time.Second, 10*time.Second
	f, err := load.NewFlood(url, p)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Recover(context.Background()) })
	return f
}

// A flood whose Wait fails is in the summary, marked failed with its
// client, its traffic and what it had done; background loads and floods
// that finished are there beside it, not failed.
func TestCollectLoadsKeepsAFailedFlood(t *testing.T) {
	url, release := heldServer(t)

	finished := oneRequestFlood(t, url, "batch-finished")
	never := oneRequestFlood(t, url, "batch-never-injected")

	require.NoError(t, finished.Inject(t.Context()))
	release()
	_, err := finished.Wait(t.Context())
	require.NoError(t, err)

	// A fresh server for the stuck one, which nothing releases until the
	// test ends.
	stuckURL, releaseStuck := heldServer(t)
	stuck := oneRequestFlood(t, stuckURL, "batch-stuck")
	t.Cleanup(releaseStuck) // before the flood's Recover, which waits for its request
	require.NoError(t, stuck.Inject(t.Context()))
	require.Eventually(t, func() bool { return stuck.Load().Stats().InFlight == 1 }, 5*time.Second, 10*time.Millisecond,
		"the stuck flood's request is out")

	bgRep := load.Report{Profile: load.Background, Stats: load.Stats{Sent: 5, OK: 5}}
	ended, cancel := context.WithCancel(t.Context())
	cancel() // the run's context has ended: the stuck flood's Wait fails
	reports, sums := collectLoads(ended, []load.Report{bgRep}, []error{nil}, []*load.Flood{finished, stuck, never})

	require.Len(t, reports, 4, "every load, failed or not, is reported")
	require.Len(t, sums, 4, "every load, failed or not, is summarized")
	byClient := map[string]LoadSummary{}
	for _, s := range sums {
		byClient[s.Client] = s
	}

	bg := byClient[load.Background.Client]
	assert.False(t, bg.Failed, bg.Error)
	assert.Equal(t, load.TrafficEveryday, bg.Traffic)
	assert.Equal(t, int64(5), bg.Stats.OK)

	fin := byClient["batch-finished"]
	assert.False(t, fin.Failed, fin.Error)
	assert.Equal(t, int64(1), fin.Stats.OK)

	st, ok := byClient["batch-stuck"]
	require.True(t, ok, "the stuck flood is in the summary: %+v", sums)
	assert.True(t, st.Failed)
	assert.Contains(t, st.Error, "context canceled")
	assert.Equal(t, load.TrafficBatch, st.Traffic)
	assert.Equal(t, int64(1), st.Stats.Sent, "what it had done so far")
	assert.Equal(t, int64(1), st.Stats.InFlight)
	assert.Zero(t, st.Stats.OK, "a flood that was not answered reads as such to a check on OK")

	nv, ok := byClient["batch-never-injected"]
	require.True(t, ok, "the flood never injected is in the summary: %+v", sums)
	assert.True(t, nv.Failed)
	assert.Contains(t, nv.Error, "not injected")
	assert.Equal(t, load.TrafficBatch, nv.Traffic)
}

// A background load ended by its context is reported failed too.
func TestCollectLoadsMarksABackgroundLoadEndedByItsContext(t *testing.T) {
	rep := load.Report{Profile: load.Background, Stats: load.Stats{Sent: 2, OK: 1}}
	reports, sums := collectLoads(t.Context(), []load.Report{rep}, []error{context.Canceled}, nil)
	require.Len(t, reports, 1)
	require.Len(t, sums, 1)
	assert.True(t, sums[0].Failed)
	assert.Equal(t, context.Canceled.Error(), sums[0].Error)
}

// Each sample's everyday p99 covers the everyday requests that left in the
// second before it, answered or failed; batch requests don't count, and a
// second without everyday requests is missing, not 0.
func TestAddEverydayLatency(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	tl := &probe.Timeline{Start: t0, Metrics: []string{"x"}}
	for i := 1; i <= 3; i++ {
		tl.Samples = append(tl.Samples, probe.Sample{At: t0.Add(time.Duration(i) * time.Second), Values: []float64{0}})
	}
	ms := time.Millisecond
	everyday := load.Report{
		Profile: load.Profile{Traffic: load.TrafficEveryday},
		Began:   t0.Add(100 * ms),
		Requests: []load.Request{
			{Start: 400 * ms, Latency: 10 * ms, Outcome: load.OutcomeOK},
			{Start: 1400 * ms, Latency: 20 * ms, Outcome: load.OutcomeOK},
			{Start: 1500 * ms, Latency: 2 * time.Second, Outcome: load.OutcomeTimeout},
		},
	}
	batch := load.Report{
		Profile:  load.Profile{Traffic: load.TrafficBatch},
		Began:    t0,
		Requests: []load.Request{{Start: 2500 * ms, Latency: 5 * time.Second, Outcome: load.OutcomeOK}},
	}
	require.NoError(t, addEverydayLatency(tl, []load.Report{batch, everyday}))
	got := tl.Series(MetricEverydayLatencyP99)
	require.Len(t, got, 3)
	assert.InDelta(t, 0.010, got[0], 1e-9)
	assert.InDelta(t, 2.0, got[1], 1e-9, "the stalled request is the window's p99")
	assert.True(t, math.IsNaN(got[2]), "no everyday request left in the last second: %v", got[2])
	assert.Equal(t, []float64{0, 0, 0}, tl.Series("x"), "the other columns are untouched")

	require.Error(t, addEverydayLatency(tl, nil), "a second column of the same name is refused")
}

// Who caused it: each client's requests, keys and cache errors between two snapshots,
// the flooding client first.
func TestClientsBetween(t *testing.T) {
	sample := func(name string, v float64, labels ...string) dataplane.Sample {
		l := map[string]string{}
		for i := 0; i < len(labels); i += 2 {
			l[labels[i]] = labels[i+1]
		}
		return dataplane.Sample{Name: "spiral_dataplane_" + name, Labels: l, Value: v}
	}
	before := dataplane.Snapshot{
		sample("requests_total", 100, "client", "appview", "code", "ok"),
		sample("lookups_total", 1000, "client", "appview", "source", "cache"),
		sample("requests_total", 1, "client", "internal-batch", "code", "ok"),
		sample("lookups_total", 15000, "client", "internal-batch", "source", "cache"),
		sample("lookups_in_flight", 3),
		sample("cache_errors_total", 10, "client", "internal-batch", "cache", "post", "op", "get", "kind", "timeout"),
	}
	after := dataplane.Snapshot{
		sample("requests_total", 150, "client", "appview", "code", "ok"),
		sample("requests_total", 5, "client", "appview", "code", "cache_error"),
		sample("lookups_total", 1500, "client", "appview", "source", "cache"),
		sample("lookups_total", 40, "client", "appview", "source", "error"),
		sample("requests_total", 1, "client", "internal-batch", "code", "ok"),
		sample("requests_total", 3, "client", "internal-batch", "code", "cache_error"),
		sample("lookups_total", 30000, "client", "internal-batch", "source", "cache"),
		sample("lookups_total", 45000, "client", "internal-batch", "source", "error"),
		sample("lookups_total", 20, "client", "internal-batch", "source", "store"),
		sample("requests_total", 7, "client", "idle", "code", "ok"),
		sample("lookups_in_flight", 9),
		sample("cache_errors_total", 44_010, "client", "internal-batch", "cache", "post", "op", "get", "kind", "timeout"),
		sample("cache_errors_total", 40, "client", "appview", "cache", "post", "op", "get", "kind", "timeout"),
		sample("cache_errors_total", 2, "client", "appview", "cache", "post", "op", "set", "kind", "timeout"),
	}
	before = append(before, sample("requests_total", 7, "client", "idle", "code", "ok"))
	got := ClientsBetween(before, after)
	require.Len(t, got, 2, "a client with nothing in the window is left out: %+v", got)
	assert.Equal(t, ClientFigures{Client: "internal-batch", Requests: 3, FailedRequests: 3, Keys: 60020, KeysFailed: 45000, KeysFromStore: 20, CacheErrors: 44_000}, got[0])
	assert.Equal(t, ClientFigures{Client: "appview", Requests: 55, FailedRequests: 5, Keys: 540, KeysFailed: 40, CacheErrors: 42}, got[1])
}

// The observer is reported unreliable where, in inject or observe, its
// median sample took more than its share of the interval or it went
// blind for more than two intervals; baseline and recover are not judged.
func TestUnreliableObserver(t *testing.T) {
	t0 := time.Unix(0, 0)
	tl := &probe.Timeline{Start: t0, Interval: 100 * time.Millisecond}
	at := t0
	add := func(phase string, gap, cost time.Duration) {
		at = at.Add(gap)
		tl.Samples = append(tl.Samples, probe.Sample{At: at, Phase: phase, Cost: cost})
	}
	tl.Phases = []probe.Phase{{Name: PhaseBaseline, Start: t0}}
	for range 5 {
		add(PhaseBaseline, 100*time.Millisecond, 50*time.Millisecond) // costly, but not judged
	}
	tl.Phases[0].End = at
	tl.Phases = append(tl.Phases, probe.Phase{Name: PhaseInject, Start: at})
	for range 5 {
		add(PhaseInject, 100*time.Millisecond, time.Millisecond)
	}
	assert.Empty(t, unreliable(tl, true), "1%% of the interval, on time")

	add(PhaseInject, 500*time.Millisecond, time.Millisecond)
	got := unreliable(tl, true)
	require.Len(t, got, 1)
	assert.Contains(t, got[0], "inject: blind for 5.0 intervals")

	for range 10 {
		add(PhaseInject, 100*time.Millisecond, 5*time.Millisecond)
	}
	got = unreliable(tl, true)
	require.Len(t, got, 2)
	assert.Contains(t, got[0], "inject: the median sample took 5.0% of the interval")
	got = unreliable(tl, false)
	require.Len(t, got, 1, "another process's samples: the share not judged, the gap is")
	assert.Contains(t, got[0], "blind for")

	// A bounded source's late readings are figures missing, counted in
	// inject and observe only (16 samples there): a's 2 late there are
	// over 5%; d, late in every baseline sample, is not judged.
	tl.Sources = []probe.SourceCost{{Metrics: []string{"a", "b", "c"}}, {Metrics: []string{"d"}}}
	for i := range tl.Samples {
		switch {
		case tl.Samples[i].Phase == PhaseBaseline:
			tl.Samples[i].Late = []int{0, 1}
		case i == 7 || i == 9:
			tl.Samples[i].Late = []int{0}
		}
	}
	got = unreliable(tl, true)
	require.Len(t, got, 3, "%q", got)
	assert.Equal(t, "a and 2 more: reading late in 2 of 16 samples of inject and observe, its figures missing there", got[2])

	// An observer process's median read is judged as a sample is; the
	// observer's rows in a gap make the gap no blind spot.
	tl.Sources[1].Where, tl.Sources[1].Median = "observer process 7", 3*time.Millisecond
	got = unreliable(tl, false)
	require.Len(t, got, 3, "%q", got)
	assert.Equal(t, "observer process 7: the median read took 3.0% of the interval (limit 2%)", got[1])
	tl.Sources[1].Median = time.Millisecond
	gapEnd := tl.Samples[10].At // the sample 5 intervals after the one before
	for k := 1; k <= 4; k++ {
		tl.Samples = append(tl.Samples, probe.Sample{At: gapEnd.Add(time.Duration(-k) * 100 * time.Millisecond), Phase: PhaseInject, ObserverOnly: true})
	}
	slices.SortFunc(tl.Samples, func(a, b probe.Sample) int { return a.At.Compare(b.At) })
	got = unreliable(tl, false)
	require.Len(t, got, 1, "%q", got)
	assert.Contains(t, got[0], "a and 2 more: reading late")
}

// For a target out of this process only a figure it never gave is not
// judged; a budget that can't be judged for another reason (no sample in
// its phases) stays a violation, and one over its bound is violated.
func TestJudgeNotJudgedOnlyForFiguresNeverGiven(t *testing.T) {
	t0 := time.Unix(0, 0)
	tl := &probe.Timeline{Start: t0, Interval: 100 * time.Millisecond, Metrics: []string{"given", "never"}}
	tl.Phases = []probe.Phase{{Name: PhaseBaseline, Start: t0}}
	tl.Samples = []probe.Sample{{At: t0.Add(100 * time.Millisecond), Phase: PhaseBaseline, Values: []float64{5, math.NaN()}}}
	ep, err := target.NewEndpoint("http://127.0.0.1:1", target.NoProcess)
	require.NoError(t, err)
	violations, notJudged := judge(tl, ep, []probe.Budget{
		probe.Limit("given", 1),               // over
		probe.Limit("given", 10, PhaseInject), // no sample in inject
		probe.Limit("never", 1),               // all missing
		probe.Limit("not-recorded", 1),        // no column
	})
	require.Len(t, violations, 2, "%v", violations)
	assert.Empty(t, violations[0].Problem)
	assert.Contains(t, violations[1].Problem, "no sample in phases")
	require.Len(t, notJudged, 2, "%v", notJudged)
	assert.Equal(t, "never", notJudged[0].Budget.Metric)
	assert.Equal(t, "not-recorded", notJudged[1].Budget.Metric)
}

// The in-process data plane a scenario builds draws its random choices
// (the band-aid's source addresses) from the scenario's seed; a target the
// scenario is handed is left as it is.
func TestTargetSeedsTheInProcessDataPlane(t *testing.T) {
	cfg := dataplane.IncidentConfig()
	cfg.BandAidDialer, cfg.Seed = true, 99
	sc := Scenario{Config: cfg, Seed: 7}
	ip, ok := sc.target().(*target.InProcess)
	require.True(t, ok, "no Target: the bundled data plane in-process")
	assert.Equal(t, uint64(7), ip.Config().Seed, "Config.Seed is the scenario's")

	given := target.NewInProcess(cfg)
	sc.Target = given
	assert.Same(t, given, sc.target())
	assert.Equal(t, uint64(99), given.Config().Seed)
}

// The client table adds the keys each load sent between the first inject
// and the first recover, from the load generator's own records, and names
// a client the data plane never counted (a child killed while serving its
// batch) when it sent the most.
func TestWithKeysSent(t *testing.T) {
	t0 := time.Now()
	tl := &probe.Timeline{Phases: []probe.Phase{
		{Name: PhaseBaseline, Start: t0},
		{Name: PhaseInject, Start: t0.Add(2 * time.Second)},
		{Name: PhaseObserve, Start: t0.Add(6 * time.Second)},
		{Name: PhaseRecover, Start: t0.Add(8 * time.Second)},
	}}
	flood := load.Report{Profile: load.Profile{Client: "internal-batch"}, Began: t0.Add(time.Second), Requests: []load.Request{
		{Start: 500 * time.Millisecond, Batch: 15_000}, // before inject
		{Start: 2 * time.Second, Batch: 15_000},
		{Start: 4 * time.Second, Batch: 15_000},
		{Start: 7 * time.Second, Batch: 15_000}, // at recover: after the window
	}}
	everyday := load.Report{Profile: load.Profile{Client: "appview"}, Began: t0, Requests: []load.Request{
		{Start: 3 * time.Second, Batch: 20}, {Start: 5 * time.Second, Batch: 5},
	}}
	counted := []ClientFigures{{Client: "appview", Keys: 25, Requests: 2}}
	got := withKeysSent(counted, []load.Report{everyday, flood}, tl)
	require.Len(t, got, 2)
	assert.Equal(t, ClientFigures{Client: "internal-batch", KeysSent: 30_000, RequestsSent: 2}, got[0], "the largest requests, though never counted")
	assert.Equal(t, ClientFigures{Client: "appview", Keys: 25, Requests: 2, KeysSent: 25, RequestsSent: 2}, got[1])

	// A busy everyday client that asked for more keys in all than the
	// flood still comes after it: the flood's requests are the large ones.
	busy := load.Report{Profile: load.Profile{Client: "appview"}, Began: t0}
	for i := range 2000 {
		busy.Requests = append(busy.Requests, load.Request{Start: 2*time.Second + time.Duration(i)*time.Millisecond, Batch: 20})
	}
	got = withKeysSent(nil, []load.Report{busy, flood}, tl)
	require.Len(t, got, 2)
	assert.Equal(t, "internal-batch", got[0].Client, "15,000 keys a request before 20: %+v", got)
	assert.InDelta(t, 40_000, got[1].KeysSent, 0, "though appview sent more keys")

	assert.Equal(t, counted, withKeysSent(counted, []load.Report{flood}, &probe.Timeline{}), "no fault window: nothing added")
}
