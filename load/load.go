package load

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
)

// LoadProfile is an open-loop load shape: requests leave on a seeded Poisson
// schedule whether or not earlier ones have answered, as real clients do.
type Profile struct {
	// Client is the client name every request carries.
	Client string
	// Traffic is whose requests these are: the data plane's everyday
	// clients or a batch client. Required: a scenario counts the failures
	// of each apart.
	Traffic Traffic
	// Method is the RPC called. Defaults to dataplane.MethodGetPostRecords.
	Method string
	// Rate is the mean number of requests started per second.
	Rate float64
	// BatchMin and BatchMax bound the keys per request, drawn uniformly.
	BatchMin, BatchMax int
	// KeySpace is how many distinct keys batches are drawn from: post i is
	// fixtures.PostURI(i) (or fixtures.DID(i) for GetProfiles). Keys at or
	// past the seeded row count are misses in both cache and store.
	// Defaults to 100,000.
	KeySpace int
	// Duration bounds the run. Required.
	Duration time.Duration
	// MaxRequests is a hard cap on requests started. Required.
	MaxRequests int
	// MaxInFlight bounds requests outstanding at once; a request due while
	// the bound is reached is not sent and is counted as skipped (the load
	// generator fell behind). Defaults to 256.
	MaxInFlight int
	// Timeout bounds one request. Defaults to 10 s.
	Timeout time.Duration
	// Seed makes the schedule, batch sizes and keys repeatable.
	Seed uint64
	// Shape is how each request is sent; the zero value is the bundled
	// data plane's. A scenario sets it from its target.
	Shape dataplane.RequestShape `json:"shape,omitzero"`
}

// Traffic is whose requests a load stands for. The postmortem tells them
// apart: everyday requests failing is the outage users saw; a batch
// client's requests are what set it off.
type Traffic string

// Kinds of traffic.
const (
	// TrafficEveryday is the data plane's everyday clients (Background).
	TrafficEveryday Traffic = "everyday"
	// TrafficBatch is a batch client such as the postmortem's internal
	// service (InternalBatch), whether it runs throughout or as a Flood.
	TrafficBatch Traffic = "batch"
)

// Named load profiles.
var (
	// Background is the data plane's everyday traffic: hundreds of requests a
	// second of 1-50 URIs ("typically ... between 1-50 post lookups per
	// request").
	Background = Profile{
		Client: "appview", Traffic: TrafficEveryday, Rate: 200, BatchMin: 1, BatchMax: 50,
		Duration: 30 * time.Second, MaxRequests: 20_000, MaxInFlight: 256, Timeout: 5 * time.Second,
	}
	// InternalBatch is the postmortem's new internal service: "less than
	// three GetPostRecords requests per second, but ... batches of 15-20
	// thousand URIs at a time".
	InternalBatch = Profile{
		Client: "internal-batch", Traffic: TrafficBatch, Rate: 2, BatchMin: 15_000, BatchMax: 20_000,
		Duration: 30 * time.Second, MaxRequests: 100, MaxInFlight: 8, Timeout: 30 * time.Second,
	}
)

// loadMaxRate and loadMaxBatch keep a profile within what one machine can
// take on loopback and within the open-files limit (20000).
const (
	loadMaxRate  = 10_000
	loadMaxBatch = 50_000
)

func (p Profile) withDefaults() Profile {
	if p.Method == "" {
		p.Method = dataplane.MethodGetPostRecords
	}
	if p.KeySpace == 0 {
		p.KeySpace = 100_000
	}
	if p.MaxInFlight == 0 {
		p.MaxInFlight = 256
	}
	if p.Timeout == 0 {
		p.Timeout = 10 * time.Second
	}
	return p
}

// Validate reports every problem with p, or nil.
func (p Profile) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if p.Client == "" {
		bad("load: Client is empty: every request names its client")
	}
	switch p.Traffic {
	case TrafficEveryday, TrafficBatch:
	default:
		bad("load: Traffic is %q: want %q or %q, so that its failures are counted as such", p.Traffic, TrafficEveryday, TrafficBatch)
	}
	if p.Rate <= 0 || p.Rate > loadMaxRate {
		bad("load: Rate is %g: want more than 0 and at most %d per second", p.Rate, loadMaxRate)
	}
	if p.BatchMin < 1 || p.BatchMax < p.BatchMin || p.BatchMax > loadMaxBatch {
		bad("load: batch %d-%d: want 1 <= BatchMin <= BatchMax <= %d", p.BatchMin, p.BatchMax, loadMaxBatch)
	}
	if p.Duration <= 0 {
		bad("load: Duration is %v: a load must stop by itself", p.Duration)
	}
	if p.MaxRequests <= 0 {
		bad("load: MaxRequests is %d: a load needs a hard cap", p.MaxRequests)
	}
	if p.MaxInFlight < 0 || p.KeySpace < 0 || p.Timeout < 0 {
		bad("load: MaxInFlight, KeySpace and Timeout can't be negative")
	}
	switch p.Method {
	case "", dataplane.MethodGetPostRecords, dataplane.MethodGetProfiles, dataplane.MethodGetInteractionCounts:
	default:
		bad("load: unknown method %q", p.Method)
	}
	if err := p.Shape.Validate(); err != nil {
		bad("load: %v", err)
	}
	return errors.Join(errs...)
}

// Outcome classes of one request.
const (
	OutcomeOK        = "ok"
	OutcomeTimeout   = "timeout"
	OutcomeRejected  = "rejected"  // 4xx: bad input, batch over the limit
	OutcomeFailed    = "failed"    // 5xx: the data plane answered with an error
	OutcomeTransport = "transport" // no answer: refused, reset, dial failed
)

// Request is the record of one request the load sent.
type Request struct {
	// Start is when it left, relative to the start of the run.
	Start time.Duration `json:"start_ns"`
	// Latency is from send to the end of the answer (or the error).
	Latency time.Duration `json:"latency_ns"`
	Batch   int           `json:"batch"`
	Outcome string        `json:"outcome"`
	// Error is the error text for outcomes other than ok.
	Error string `json:"error,omitempty"`
}

// LoadStats are a load's live counters.
type Stats struct {
	Sent     int64 `json:"sent"`
	OK       int64 `json:"ok"`
	Errors   int64 `json:"errors"`
	Skipped  int64 `json:"skipped"`
	InFlight int64 `json:"in_flight"`
}

// LoadReport is what a finished load saw.
type Report struct {
	Profile Profile `json:"profile"`
	// Began is when the load started: each Request's Start counts from it.
	Began    time.Time      `json:"began"`
	Stats    Stats          `json:"stats"`
	Outcomes map[string]int `json:"outcomes"`
	// P50, P99 and Max are latency quantiles of every answered request.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
	// Stopped is why the load was stopped before its Duration or
	// MaxRequests ran out (Load.Stop: an Abort that tripped); empty if it
	// was not.
	Stopped  string    `json:"stopped,omitempty"`
	Requests []Request `json:"requests"`
}

// Load is an open-loop load generator against a data plane's HTTP
// endpoint. Its counters can be read while it runs.
type Load struct {
	profile Profile
	client  *dataplane.Client

	sent, ok, errs, skipped, inflight atomic.Int64

	// stopMu orders Stop against a request leaving: none leaves once Stop
	// has returned.
	stopMu  sync.Mutex
	stopped string
	stop    chan struct{} // closed by the first Stop
	over    bool          // Run sends no more: it ran out, or was stopped

	mu       sync.Mutex
	began    time.Time
	requests []Request         // in the order they ended
	pending  map[int]time.Time // requests in flight, by number, and when each left
}

// NewLoad returns a load of profile p against the data plane at baseURL
// (dataplane.Server.URL). Bad profiles are refused with every problem named.
func New(baseURL string, p Profile) (*Load, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p = p.withDefaults()
	tr := &http.Transport{
		MaxIdleConnsPerHost: p.MaxInFlight,
		IdleConnTimeout:     5 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	}
	return &Load{
		profile: p,
		client:  &dataplane.Client{URL: baseURL, Name: p.Client, HTTP: &http.Client{Transport: tr, Timeout: p.Timeout}, Shape: p.Shape},
		stop:    make(chan struct{}),
		pending: map[int]time.Time{},
	}, nil
}

// Profile returns the profile the load runs, defaults applied.
func (l *Load) Profile() Profile { return l.profile }

// Stats returns the live counters. Safe to call from any goroutine; it does
// not block.
func (l *Load) Stats() Stats {
	return Stats{
		Sent: l.sent.Load(), OK: l.ok.Load(), Errors: l.errs.Load(),
		Skipped: l.skipped.Load(), InFlight: l.inflight.Load(),
	}
}

// Stop stops the load sending, at once: no request leaves after Stop
// returns, and a Run not yet begun sends nothing. Requests already in
// flight are answered or time out (each bounded by Timeout) and are
// recorded; Run then returns its report, Stopped set to reason, and no
// error. It reports whether it stopped the load: false once the load has
// stopped sending (its Duration or MaxRequests ran out, its context ended,
// an earlier Stop), which then keeps its report as it was. Safe from any
// goroutine; it does not block on the requests in flight.
func (l *Load) Stop(reason string) bool {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if l.over || l.stopped != "" {
		return false
	}
	l.stopped = cmp.Or(reason, "stopped")
	close(l.stop)
	return true
}

// sending reports whether the load may still send: it has not stopped,
// whether or not its Run has begun.
func (l *Load) sending() bool {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	return !l.over && l.stopped == ""
}

// stoppedBy returns Stop's reason, or "".
func (l *Load) stoppedBy() string {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	return l.stopped
}

// Run sends requests until Duration has passed, MaxRequests have left,
// Stop is called or ctx is done, then waits for outstanding requests (each
// bounded by Timeout) and returns the report. It returns ctx's error only
// if ctx ended the run; request failures are outcomes, not errors.
func (l *Load) Run(ctx context.Context) (Report, error) {
	p := l.profile
	rng := rand.New(rand.NewPCG(p.Seed, 0x5a1a1))
	began := time.Now()
	l.mu.Lock()
	l.began = began
	l.mu.Unlock()
	deadline := began.Add(p.Duration)
	sem := make(chan struct{}, p.MaxInFlight)
	var wg sync.WaitGroup
	defer l.client.HTTP.CloseIdleConnections()

	next := began
	var runErr error
loop:
	for started := 0; started < p.MaxRequests; started++ {
		// The first request leaves at once, so that even a short run of a
		// slow profile (the internal client's 2 a second) sends one; the
		// gaps after it are exponential.
		if started > 0 {
			next = next.Add(time.Duration(rng.ExpFloat64() / p.Rate * float64(time.Second)))
		}
		if next.After(deadline) {
			break
		}
		if wait := time.Until(next); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				runErr = ctx.Err()
				break loop
			case <-l.stop:
				t.Stop()
				break loop
			case <-t.C:
			}
		}
		select {
		case <-l.stop: // due at once, or stopped as the timer fired
			break loop
		default:
		}
		keys := l.keys(rng)
		select {
		case sem <- struct{}{}:
		default:
			l.skipped.Add(1)
			continue
		}
		if !l.send(ctx, &wg, sem, started, began, keys) {
			<-sem
			break
		}
	}
	l.stopMu.Lock()
	l.over = true
	l.stopMu.Unlock()
	wg.Wait()
	return l.report(), runErr
}

// send starts request number n of keys unless the load was stopped, and
// says whether it did. It holds stopMu while it counts the request and
// starts its goroutine, so that Stop is ordered before or after it.
func (l *Load) send(ctx context.Context, wg *sync.WaitGroup, sem chan struct{}, n int, began time.Time, keys []string) bool {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if l.stopped != "" {
		return false
	}
	start := time.Now()
	l.mu.Lock()
	l.pending[n] = start
	l.mu.Unlock()
	l.sent.Add(1)
	l.inflight.Add(1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { <-sem; l.inflight.Add(-1) }()
		l.record(ctx, n, start.Sub(began), keys)
	}()
	return true
}

func (l *Load) keys(rng *rand.Rand) []string {
	p := l.profile
	n := p.BatchMin + rng.IntN(p.BatchMax-p.BatchMin+1)
	keys := make([]string, n)
	for k := range keys {
		i := rng.IntN(p.KeySpace)
		if p.Method == dataplane.MethodGetProfiles {
			keys[k] = fixtures.DID(i)
		} else {
			keys[k] = fixtures.PostURI(i)
		}
	}
	return keys
}

func (l *Load) record(ctx context.Context, n int, start time.Duration, keys []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.profile.Timeout)
	defer cancel()
	t0 := time.Now()
	var resp struct{}
	err := l.client.Call(ctx, l.profile.Method, keys, &resp)
	r := Request{Start: start, Latency: time.Since(t0), Batch: len(keys), Outcome: classify(err)}
	if err != nil {
		r.Error = err.Error()
		l.errs.Add(1)
	} else {
		l.ok.Add(1)
	}
	l.mu.Lock()
	l.requests = append(l.requests, r)
	delete(l.pending, n)
	l.mu.Unlock()
}

// since returns the requests that ended after the first from (an index
// into the load's requests in the order they ended) with the time each
// ended, the index to pass next time, and how long each request still in
// flight has been out at now: what an Abort watches, read under one lock
// so that no request is in both or neither.
func (l *Load) since(from int, now time.Time) (ended []endedRequest, next int, inFlight []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.requests[min(from, len(l.requests)):] {
		ended = append(ended, endedRequest{at: l.began.Add(r.Start + r.Latency), latency: r.Latency, failed: r.Outcome != OutcomeOK})
	}
	for _, start := range l.pending {
		inFlight = append(inFlight, now.Sub(start))
	}
	return ended, len(l.requests), inFlight
}

func classify(err error) string {
	var ce *dataplane.CallError
	var ne net.Error
	switch {
	case err == nil:
		return OutcomeOK
	case errors.As(err, &ce) && ce.Status < 500:
		return OutcomeRejected
	case errors.As(err, &ce):
		return OutcomeFailed
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return OutcomeTimeout
	default:
		return OutcomeTransport
	}
}

func (l *Load) report() Report {
	l.mu.Lock()
	reqs, began := append([]Request(nil), l.requests...), l.began
	l.mu.Unlock()
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].Start < reqs[j].Start })
	rep := Report{Profile: l.profile, Began: began, Stats: l.Stats(), Outcomes: map[string]int{}, Stopped: l.stoppedBy(), Requests: reqs}
	lat := make([]time.Duration, 0, len(reqs))
	for _, r := range reqs {
		rep.Outcomes[r.Outcome]++
		if r.Outcome == OutcomeOK {
			lat = append(lat, r.Latency)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(f float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(math.Ceil(f*float64(len(lat))))-1]
	}
	rep.P50, rep.P99, rep.Max = q(0.5), q(0.99), q(1)
	return rep
}

// Flood is a Load run as a Fault: Inject starts it in the background,
// Recover stops it and waits for its outstanding requests.
type Flood struct {
	load *Load

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	report Report
	err    error
}

// NewFlood returns a flood of profile p against the data plane at baseURL.
func NewFlood(baseURL string, p Profile) (*Flood, error) {
	l, err := New(baseURL, p)
	if err != nil {
		return nil, err
	}
	return &Flood{load: l}, nil
}

// Name implements Fault.
func (f *Flood) Name() string { return "flood " + f.load.profile.Client }

// Load returns the flood's load generator, for its live counters.
func (f *Flood) Load() *Load { return f.load }

// Inject starts the load and returns at once. The load stops by itself
// after its Duration or MaxRequests.
func (f *Flood) Inject(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done != nil {
		return faults.ErrInjected
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go func() {
		defer close(f.done)
		rep, err := f.load.Run(ctx)
		f.mu.Lock()
		f.report, f.err = rep, err
		f.mu.Unlock()
	}()
	return nil
}

// Recover stops sending and waits for outstanding requests (each bounded by
// the profile's Timeout) or ctx. Idempotent.
func (f *Flood) Recover(ctx context.Context) error {
	f.mu.Lock()
	cancel, done := f.cancel, f.done
	f.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("recover %s: %w", f.Name(), ctx.Err())
	}
}

// Wait blocks until the load has stopped by itself (or ctx ends) and returns
// its report. When it fails (the flood was never injected, or ctx ended
// first) the report is still the flood's: its profile, its counters and the
// requests answered so far, so that a caller can report the flood as failed
// rather than lose it. A flood that has stopped returns its report even
// once ctx has ended.
func (f *Flood) Wait(ctx context.Context) (Report, error) {
	f.mu.Lock()
	done := f.done
	f.mu.Unlock()
	if done == nil {
		return f.load.report(), fmt.Errorf("wait %s: not injected", f.Name())
	}
	select {
	case <-done:
	default:
		select {
		case <-done:
		case <-ctx.Done():
			return f.load.report(), fmt.Errorf("wait %s: %w", f.Name(), ctx.Err())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if errors.Is(f.err, context.Canceled) {
		return f.report, nil // stopped by Recover
	}
	return f.report, f.err
}
