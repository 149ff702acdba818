package load_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/load"
)

// backend is an HTTP server standing in for a data plane in front of a
// backend that can go wrong on demand: it answers every batch with an
// empty answer, the everyday client's (load.Background's) with a 500
// while failing is set and not at all while hanging is set (until
// release, called when the test ends at the latest), and counts the
// requests of each client.
type backend struct {
	url              string
	failing, hanging atomic.Bool
	// failEvery, when above 0, fails every failEvery-th everyday request
	// (the first among them).
	failEvery int64
	release   func()

	everyday, other atomic.Int64
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	b := &backend{}
	release := make(chan struct{})
	var once sync.Once
	b.release = func() { once.Do(func() { close(release) }) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(dataplane.ClientHeader) != load.Background.Client {
			b.other.Add(1)
			_, _ = w.Write([]byte("{}"))
			return
		}
		n := b.everyday.Add(1)
		switch {
		case b.hanging.Load():
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		case b.failing.Load(), b.failEvery > 0 && (n-1)%b.failEvery == 0:
			http.Error(w, `{"error":"backend down"}`, http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("{}"))
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(b.release) // before srv.Close, which waits for handlers
	b.url = srv.URL
	return b
}

// everydayLoad and floodLoad are small loads against b that run for long
// enough to be stopped: the everyday one at 200 a second, the flood at 100
// a second of tiny batches, so that a request sent after the abort would
// show at once.
func everydayLoad(t *testing.T, b *backend) *load.Load {
	t.Helper()
	p := load.Background
	p.Rate, p.BatchMax, p.Duration, p.MaxRequests, p.Timeout, p.Seed = 200, 5, 30*time.Second, 100_000, 5*time.Second, 1
	l, err := load.New(b.url, p)
	require.NoError(t, err)
	return l
}

func floodLoad(t *testing.T, b *backend) *load.Load {
	t.Helper()
	p := load.InternalBatch
	p.Rate, p.BatchMin, p.BatchMax, p.MaxInFlight, p.Duration, p.MaxRequests, p.Seed = 100, 5, 5, 16, 30*time.Second, 100_000, 2
	l, err := load.New(b.url, p)
	require.NoError(t, err)
	return l
}

// running is a load's Run in the background.
type running struct {
	done chan struct{}
	rep  load.Report
	err  error
}

// start runs l in the background until ctx ends or it stops by itself;
// the test waits for it before it ends.
func start(t *testing.T, ctx context.Context, l *load.Load) *running {
	t.Helper()
	r := &running{done: make(chan struct{})}
	go func() { defer close(r.done); r.rep, r.err = l.Run(ctx) }()
	t.Cleanup(func() { <-r.done })
	return r
}

// wait returns the load's report and Run's error, failing t at once if
// Run has not returned within d.
func (r *running) wait(t *testing.T, d time.Duration) (load.Report, error) {
	t.Helper()
	select {
	case <-r.done:
		return r.rep, r.err
	case <-time.After(d):
		t.Fatalf("the load still runs %v later", d)
		return load.Report{}, nil
	}
}

// tripWithin bounds how long after the everyday traffic goes wrong an
// abort may take to trip: a few checks (AbortCheckInterval), on a machine
// busy with other builds.
const tripWithin = 5 * time.Second

// Once everyday requests start failing, the abort trips within a bounded
// time, on the error rate, and stops the flood at once: no flood request
// leaves after the trip, the flood's Run returns by itself with its
// report saying why, and the everyday load keeps running.
func TestAbortStopsTheFloodWhenEverydayRequestsFail(t *testing.T) {
	noLeaks(t)
	b := newBackend(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	everyday, flood := everydayLoad(t, b), floodLoad(t, b)
	limits := load.AbortLimits{ErrorRate: 0.05, Window: time.Second, MinRequests: 20}
	a, err := load.NewAbort(limits, []*load.Load{everyday}, []*load.Load{flood})
	require.NoError(t, err)
	runEveryday, runFlood := start(t, ctx, everyday), start(t, ctx, flood)
	abortDone := make(chan struct{})
	go func() { defer close(abortDone); a.Run(ctx) }()
	defer func() { cancel(); <-abortDone }()

	time.Sleep(500 * time.Millisecond)
	select {
	case <-a.Tripped():
		t.Fatal("the abort tripped while every request was answered")
	default:
	}
	require.Positive(t, b.other.Load(), "the flood is sending")
	b.failing.Store(true)
	failedAt := time.Now()
	select {
	case <-a.Tripped():
	case <-time.After(tripWithin):
		t.Fatalf("no abort %v after everyday requests started failing", tripWithin)
	}
	trip, ok := a.Trip()
	require.True(t, ok)
	assert.Equal(t, load.AbortErrorRate, trip.Condition)
	assert.Greater(t, trip.Observed, 0.05)
	assert.InDelta(t, 0.05, trip.Limit, 0)
	assert.GreaterOrEqual(t, trip.Requests, 20)
	assert.Equal(t, load.TrafficEveryday, trip.Traffic)
	assert.Equal(t, []string{load.InternalBatch.Client}, trip.Stopped)
	assert.False(t, trip.At.Before(failedAt))
	assert.Contains(t, trip.String(), "everyday error rate ")
	assert.Contains(t, trip.String(), "% > 5% (")
	t.Logf("tripped %v after the failures began: %v", trip.At.Sub(failedAt), trip)

	// Its requests in flight are answered at once: it returns well
	// within their Timeout.
	rep, err := runFlood.wait(t, tripWithin)
	require.NoError(t, err, "a stopped load is not an error")
	assert.Contains(t, rep.Stopped, "aborted: everyday error rate")
	late := 0
	for _, r := range rep.Requests {
		if rep.Began.Add(r.Start).After(trip.At) {
			late++
		}
	}
	assert.Zero(t, late, "flood requests that left after the trip, of %d", len(rep.Requests))
	assert.Len(t, rep.Requests, int(rep.Stats.Sent), "every request sent is recorded")
	atTrip := b.other.Load()
	assert.LessOrEqual(t, atTrip, rep.Stats.Sent)
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, atTrip, b.other.Load(), "no flood request reached the backend after the flood stopped")

	select {
	case <-abortDone:
	case <-time.After(time.Second):
		t.Error("Abort.Run did not return once it tripped")
	}
	before := b.everyday.Load()
	time.Sleep(200 * time.Millisecond)
	assert.Greater(t, b.everyday.Load(), before, "the everyday load is not stopped")
	cancel()
	_, err = runEveryday.wait(t, tripWithin)
	require.ErrorIs(t, err, context.Canceled)
}

// A backend that stops answering trips the p99 limit from the requests
// still in flight, before any of them times out.
func TestAbortTripsOnP99FromRequestsInFlight(t *testing.T) {
	noLeaks(t)
	b := newBackend(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	everyday, flood := everydayLoad(t, b), floodLoad(t, b)
	limits := load.AbortLimits{P99: 300 * time.Millisecond, Window: time.Second, MinRequests: 20}
	a, err := load.NewAbort(limits, []*load.Load{everyday}, []*load.Load{flood})
	require.NoError(t, err)
	start(t, ctx, everyday)
	runFlood := start(t, ctx, flood)
	abortDone := make(chan struct{})
	go func() { defer close(abortDone); a.Run(ctx) }()
	defer func() { cancel(); <-abortDone }()
	defer b.release() // first: the loads then end without waiting out their timeouts

	time.Sleep(500 * time.Millisecond)
	b.hanging.Store(true)
	select {
	case <-a.Tripped():
	case <-time.After(tripWithin):
		t.Fatalf("no abort %v after the backend stopped answering", tripWithin)
	}
	trip, _ := a.Trip()
	assert.Equal(t, load.AbortP99, trip.Condition)
	assert.Greater(t, trip.Observed, 0.3)
	assert.Positive(t, trip.InFlight, "counted from requests still in flight")
	assert.Zero(t, everyday.Stats().Errors, "no everyday request had timed out yet (5 s)")
	assert.Contains(t, trip.String(), "everyday p99 ")
	assert.Contains(t, trip.String(), "still in flight")
	b.release() // the flood's requests were answered; the everyday ones may now end
	rep, err := runFlood.wait(t, tripWithin)
	require.NoError(t, err)
	assert.NotEmpty(t, rep.Stopped)
}

// Requests that end while the Excuse holds (a fault failing them by
// design) are left out: failures then trip nothing, and the same failures
// trip the abort once the excuse has ended.
func TestAbortLeavesOutExcusedRequests(t *testing.T) {
	noLeaks(t)
	b := newBackend(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	everyday, flood := everydayLoad(t, b), floodLoad(t, b)
	var mu sync.Mutex
	var from, until time.Time // the excuse: requests that ended in [from, until), until zero: open
	limits := load.AbortLimits{ErrorRate: 0.05, Window: time.Second, MinRequests: 20, Excused: "ended while the test failed them",
		Excuse: func(ended time.Time) bool {
			mu.Lock()
			defer mu.Unlock()
			return !from.IsZero() && !ended.Before(from) && (until.IsZero() || ended.Before(until))
		}}
	assert.Equal(t, "error rate > 5% over 1s (at least 20 requests), not counting requests that ended while the test failed them", limits.String())
	a, err := load.NewAbort(limits, []*load.Load{everyday}, []*load.Load{flood})
	require.NoError(t, err)
	start(t, ctx, everyday)
	start(t, ctx, flood)
	abortDone := make(chan struct{})
	go func() { defer close(abortDone); a.Run(ctx) }()
	defer func() { cancel(); <-abortDone }()

	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	from = time.Now()
	mu.Unlock()
	b.failing.Store(true)
	time.Sleep(1500 * time.Millisecond) // past the Window: every request in it failed, excused
	select {
	case <-a.Tripped():
		t.Fatal("the abort tripped on excused failures")
	default:
	}
	require.Positive(t, everyday.Stats().Errors, "everyday requests failed meanwhile")
	mu.Lock()
	until = time.Now()
	mu.Unlock()
	select {
	case <-a.Tripped():
	case <-time.After(tripWithin):
		t.Fatalf("no abort %v after the excuse ended while requests kept failing", tripWithin)
	}
	trip, _ := a.Trip()
	assert.Equal(t, load.AbortErrorRate, trip.Condition)
	assert.False(t, trip.At.Before(until))
}

// An Excuse must say what it excuses.
func TestAbortExcuseIsNamed(t *testing.T) {
	err := load.AbortLimits{ErrorRate: 0.05, Excuse: func(time.Time) bool { return false }}.Validate()
	require.ErrorContains(t, err, "Excused")
}

// Failures below the limit, or too few requests to judge, trip nothing;
// the flood keeps sending.
func TestAbortHoldsWithinItsLimits(t *testing.T) {
	noLeaks(t)
	b := newBackend(t)
	b.failEvery = 50 // 2%, the first request among them: 100% of one
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	everyday, flood := everydayLoad(t, b), floodLoad(t, b)
	limits := load.AbortLimits{ErrorRate: 0.05, P99: 2 * time.Second, Window: time.Second}
	a, err := load.NewAbort(limits, []*load.Load{everyday}, []*load.Load{flood})
	require.NoError(t, err)
	start(t, ctx, everyday)
	runFlood := start(t, ctx, flood)
	abortDone := make(chan struct{})
	go func() { defer close(abortDone); a.Run(ctx) }()

	time.Sleep(1500 * time.Millisecond)
	cancel()
	<-abortDone
	_, tripped := a.Trip()
	assert.False(t, tripped)
	assert.Positive(t, everyday.Stats().Errors, "some everyday requests failed")
	rep, err := runFlood.wait(t, tripWithin)
	require.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, rep.Stopped)
}

// An abort whose guarded loads have all stopped by themselves has nothing
// left to guard: Run returns without tripping, whatever the everyday
// traffic does next.
func TestAbortEndsWhenTheFloodsAreDone(t *testing.T) {
	noLeaks(t)
	b := newBackend(t)
	b.failing.Store(true)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	everyday := everydayLoad(t, b)
	p := load.InternalBatch
	p.BatchMin, p.BatchMax, p.MaxRequests = 1, 1, 1
	flood, err := load.New(b.url, p)
	require.NoError(t, err)
	rep, err := flood.Run(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, rep.Stats.Sent)
	a, err := load.NewAbort(load.AbortLimits{ErrorRate: 0.05, Window: time.Second}, []*load.Load{everyday}, []*load.Load{flood})
	require.NoError(t, err)
	start(t, ctx, everyday)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(tripWithin):
		cancel()
		<-done
		t.Fatal("Abort.Run kept watching with nothing to guard")
	}
	_, tripped := a.Trip()
	assert.False(t, tripped)
	assert.False(t, flood.Stop("late"), "a load that ran out is not stopped")
}

// A load stopped before it runs sends nothing; Stop keeps its first
// reason and reports whether it stopped anything.
func TestLoadStopBeforeRun(t *testing.T) {
	noLeaks(t)
	b := newBackend(t)
	l := floodLoad(t, b)
	assert.True(t, l.Stop("aborted: first"))
	assert.False(t, l.Stop("second"))
	rep, err := l.Run(t.Context())
	require.NoError(t, err)
	assert.Zero(t, rep.Stats.Sent)
	assert.Zero(t, b.other.Load())
	assert.Equal(t, "aborted: first", rep.Stopped)
}

func TestNewAbortRefusesWhatCanNotGuard(t *testing.T) {
	b := newBackend(t)
	l := everydayLoad(t, b)
	_, err := load.NewAbort(load.AbortLimits{}, []*load.Load{l}, nil)
	require.ErrorContains(t, err, "no limit set")
	_, err = load.NewAbort(load.ExternalAbort, nil, []*load.Load{l})
	require.ErrorContains(t, err, "no load to watch")
	err = load.AbortLimits{ErrorRate: 1.5, P99: -time.Second, Window: time.Millisecond, MinRequests: -1}.Validate()
	require.Error(t, err)
	for _, want := range []string{"ErrorRate is 1.5", "P99 is -1s", "Window is 1ms", "MinRequests is -1"} {
		assert.Contains(t, err.Error(), want)
	}
	require.NoError(t, load.ExternalAbort.Validate())
	assert.True(t, load.ExternalAbort.Armed())
	assert.False(t, load.AbortLimits{}.Armed())
	assert.Equal(t, "error rate > 5%, p99 > 3s over 5s (at least 20 requests)", load.ExternalAbort.String())
	assert.Equal(t, "off", load.AbortLimits{}.String())
}
