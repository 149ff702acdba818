package load

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// AbortLimits are the conditions on the traffic an Abort watches (a run's
// everyday loads) past which it stops the loads it guards (the run's
// floods), as k6's thresholds with abortOnFail stop a test: the share of
// the requests that failed, or their 99th percentile latency, over the
// last Window. The zero value checks nothing.
type AbortLimits struct {
	// ErrorRate is the share of the watched requests that ended in the
	// Window that may fail (0.05: 5%); above it, the abort trips. 0: not
	// checked.
	ErrorRate float64 `json:"error_rate,omitempty"`
	// P99 is the 99th percentile latency the watched requests of the
	// Window may reach, answered or failed; above it, the abort trips. A
	// request still in flight counts with its age once that is past P99,
	// so a backend that stops answering trips it before the requests time
	// out. 0: not checked.
	P99 time.Duration `json:"p99_ns,omitempty"`
	// Window is how far back each check looks. Defaults to
	// DefaultAbortWindow.
	Window time.Duration `json:"window_ns,omitempty"`
	// MinRequests is the fewest requests the Window must hold for a check
	// to count, so that one failure among a load's first requests does not
	// trip it. Defaults to DefaultAbortMinRequests.
	MinRequests int `json:"min_requests,omitempty"`
	// Excuse, when set, reports whether a watched request that ended at
	// the given time failed by a fault's design rather than through the
	// floods: a stage that resets every connection to the store fails
	// every request it meets, whatever the floods do. Such a request is
	// left out of the Window, for the error rate and the p99 alike; a
	// request still in flight is judged by its age as ever. Nil: none.
	Excuse func(ended time.Time) bool `json:"-"`
	// Excused says which requests Excuse leaves out, for reports and
	// summary.json ("ended while the store's connections were reset").
	Excused string `json:"excused,omitempty"`
}

// Defaults of AbortLimits.
const (
	// DefaultAbortWindow: at the quick suites' 50 everyday requests a
	// second, a check covers 250, enough for a p99; once every everyday
	// request fails, the 5% of ExternalAbort is passed at the 14th failure,
	// 0.28 s later at that rate.
	DefaultAbortWindow = 5 * time.Second
	// DefaultAbortMinRequests: with 20, a 5% error rate takes two failed
	// requests to pass, not one.
	DefaultAbortMinRequests = 20
)

// AbortCheckInterval is how often an Abort checks its limits: a limit
// passed is acted on within it. A check reads the requests that ended since
// the previous one and sorts the Window's latencies (a few hundred at the
// suites' everyday rates).
const AbortCheckInterval = 100 * time.Millisecond

// ExternalAbort are the limits a run's floods are held to when its backends
// are not Spiral's own (external mode), unless the scenario or the user
// says otherwise:
//
//   - everyday error rate above 5%: no fixed arm's budgets in the suites
//     allow a failed everyday request (load_errors_everyday or load_errors
//     at 0), so only a service in trouble fails one request in 20;
//   - everyday p99 above 3 s: above the highest everyday p99 over a second
//     in any fixed arm's measured envelope (cacheoutage's hung cache in
//     full mode, each lookup waiting out memcached's 500 ms timeout before
//     reading the store; the figure is beside that suite's budgets and in
//     the README), and below the 5 s at which the everyday requests
//     (Background) time out and count as failed.
var ExternalAbort = AbortLimits{ErrorRate: 0.05, P99: 3 * time.Second, Window: DefaultAbortWindow, MinRequests: DefaultAbortMinRequests}

// Armed reports whether l checks anything.
func (l AbortLimits) Armed() bool { return l.ErrorRate > 0 || l.P99 > 0 }

// Validate reports every problem with l, or nil.
func (l AbortLimits) Validate() error {
	var errs []error
	if l.ErrorRate < 0 || l.ErrorRate >= 1 {
		errs = append(errs, fmt.Errorf("abort: ErrorRate is %g: want a share at least 0 and below 1 (0: not checked)", l.ErrorRate))
	}
	if l.P99 < 0 {
		errs = append(errs, fmt.Errorf("abort: P99 is %v: want 0 (not checked) or more", l.P99))
	}
	if l.Window < 0 || (l.Window > 0 && l.Window < AbortCheckInterval) {
		errs = append(errs, fmt.Errorf("abort: Window is %v: want at least %v (checked that often)", l.Window, AbortCheckInterval))
	}
	if l.MinRequests < 0 {
		errs = append(errs, fmt.Errorf("abort: MinRequests is %d: can't be negative", l.MinRequests))
	}
	if l.Excuse != nil && l.Excused == "" {
		errs = append(errs, errors.New("abort: an Excuse must say which requests it leaves out (Excused)"))
	}
	return errors.Join(errs...)
}

func (l AbortLimits) withDefaults() AbortLimits {
	if l.Window == 0 {
		l.Window = DefaultAbortWindow
	}
	if l.MinRequests == 0 {
		l.MinRequests = DefaultAbortMinRequests
	}
	return l
}

// String says what l checks: "error rate > 5%, p99 > 3s over 5s (at least
// 20 requests)", or "off".
func (l AbortLimits) String() string {
	if !l.Armed() {
		return "off"
	}
	l = l.withDefaults()
	var conds []string
	if l.ErrorRate > 0 {
		conds = append(conds, "error rate > "+percent(l.ErrorRate))
	}
	if l.P99 > 0 {
		conds = append(conds, "p99 > "+l.P99.String())
	}
	str := fmt.Sprintf("%s over %v (at least %d requests)", strings.Join(conds, ", "), l.Window, l.MinRequests)
	if l.Excuse != nil && l.Excused != "" {
		str += ", not counting requests that " + l.Excused
	}
	return str
}

// Abort conditions, as Trip.Condition names them.
const (
	AbortErrorRate = "error rate"
	AbortP99       = "p99"
)

// Trip is why an Abort tripped.
type Trip struct {
	// At is when it tripped: every load it stopped had stopped sending by
	// then.
	At time.Time `json:"at"`
	// Traffic is whose requests were watched ("everyday"), or "" for loads
	// of several kinds.
	Traffic Traffic `json:"traffic"`
	// Condition is AbortErrorRate or AbortP99; Observed is the share of
	// requests that failed (0-1) or the p99 in seconds, Limit the limit
	// it passed, in the same unit.
	Condition string  `json:"condition"`
	Observed  float64 `json:"observed"`
	Limit     float64 `json:"limit"`
	// Requests is how many requests the Window held, Failed how many of
	// them failed and InFlight how many were counted while still in flight
	// (past P99).
	Requests int           `json:"requests"`
	Failed   int           `json:"failed"`
	InFlight int           `json:"in_flight,omitempty"`
	Window   time.Duration `json:"window_ns"`
	// Stopped names the loads it stopped (their clients).
	Stopped []string `json:"stopped"`
}

// String reads "everyday error rate 12% > 5% (30 of 250 requests in the
// last 5s)".
func (t Trip) String() string {
	who := string(t.Traffic)
	if who == "" {
		who = "watched"
	}
	if t.Condition == AbortErrorRate {
		return fmt.Sprintf("%s error rate %s > %s (%d of %d requests in the last %v)", who, percent(t.Observed), percent(t.Limit), t.Failed, t.Requests, t.Window)
	}
	s := fmt.Sprintf("%s p99 %v > %v (%d requests in the last %v", who, seconds(t.Observed), seconds(t.Limit), t.Requests, t.Window)
	if t.InFlight > 0 {
		s += fmt.Sprintf(", %d of them still in flight", t.InFlight)
	}
	return s + ")"
}

func percent(f float64) string { return fmt.Sprintf("%.3g%%", 100*f) }

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond)
}

// Abort watches the requests of some loads and, when one of its limits is
// passed, stops others at once (Load.Stop): a run's floods, stopped by the
// everyday traffic they degrade. It trips once, and only while a guarded
// load is still sending (or yet to start); the loads it stopped stay
// stopped.
//
//	a, err := load.NewAbort(load.ExternalAbort, []*load.Load{everyday}, []*load.Load{flood.Load()})
//	go a.Run(ctx) // until ctx ends or it trips
//	<-a.Tripped()
type Abort struct {
	limits      AbortLimits
	watch, stop []*Load
	traffic     Traffic

	tripped chan struct{}
	mu      sync.Mutex
	trip    *Trip

	// Run's state: how far into each watched load's requests it has read,
	// and the requests that ended within the Window.
	cursors []int
	ended   []endedRequest
}

// endedRequest is a watched request that has ended.
type endedRequest struct {
	at      time.Time
	latency time.Duration
	failed  bool
}

// NewAbort returns an abort that watches the requests of watch and, past
// limits, stops every load of stop. The loads may be running already or
// not yet started; a load started after the abort tripped sends nothing.
// It refuses limits that check nothing or are malformed, and an empty watch.
func NewAbort(limits AbortLimits, watch, stop []*Load) (*Abort, error) {
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	if !limits.Armed() {
		return nil, errors.New("abort: no limit set: want ErrorRate or P99")
	}
	if len(watch) == 0 {
		return nil, errors.New("abort: no load to watch")
	}
	a := &Abort{
		limits: limits.withDefaults(), watch: slices.Clone(watch), stop: slices.Clone(stop),
		traffic: watch[0].profile.Traffic, tripped: make(chan struct{}), cursors: make([]int, len(watch)),
	}
	for _, l := range watch {
		if l.profile.Traffic != a.traffic {
			a.traffic = ""
		}
	}
	return a, nil
}

// Limits returns the limits a checks, defaults applied.
func (a *Abort) Limits() AbortLimits { return a.limits }

// Run checks the limits every AbortCheckInterval until one is passed,
// which stops the guarded loads and closes Tripped, every guarded load has
// stopped sending by itself (nothing is left to guard), or ctx ends. It
// blocks until then. Call it once.
func (a *Abort) Run(ctx context.Context) {
	t := time.NewTicker(AbortCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if !slices.ContainsFunc(a.stop, (*Load).sending) {
				return
			}
			if trip, ok := a.check(now); ok && a.fire(trip) {
				return
			}
		}
	}
}

// Tripped is closed when the abort trips.
func (a *Abort) Tripped() <-chan struct{} { return a.tripped }

// Trip returns why the abort tripped, and whether it did.
func (a *Abort) Trip() (Trip, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.trip == nil {
		return Trip{}, false
	}
	t := *a.trip
	t.Stopped = slices.Clone(t.Stopped)
	return t, true
}

// fire stops the guarded loads still sending, then records trip and
// closes Tripped; it reports whether it stopped any (none: they had all
// stopped by themselves, and nothing trips).
func (a *Abort) fire(trip Trip) bool {
	for _, l := range a.stop {
		if l.Stop("aborted: " + trip.String()) {
			trip.Stopped = append(trip.Stopped, l.profile.Client)
		}
	}
	if len(trip.Stopped) == 0 {
		return false
	}
	trip.At = time.Now()
	a.mu.Lock()
	a.trip = &trip
	a.mu.Unlock()
	close(a.tripped)
	return true
}

// check reads what the watched loads did up to now and returns the limit
// passed, if any: the error rate first, then the p99.
func (a *Abort) check(now time.Time) (Trip, bool) {
	var stalled []time.Duration
	for i, l := range a.watch {
		ended, next, inFlight := l.since(a.cursors[i], now)
		a.cursors[i] = next
		if a.limits.Excuse != nil {
			ended = slices.DeleteFunc(ended, func(r endedRequest) bool { return a.limits.Excuse(r.at) })
		}
		a.ended = append(a.ended, ended...)
		for _, age := range inFlight {
			if a.limits.P99 > 0 && age > a.limits.P99 {
				stalled = append(stalled, age)
			}
		}
	}
	from := now.Add(-a.limits.Window)
	a.ended = slices.DeleteFunc(a.ended, func(r endedRequest) bool { return !r.at.After(from) })

	trip := Trip{Traffic: a.traffic, Window: a.limits.Window}
	failed := 0
	for _, r := range a.ended {
		if r.failed {
			failed++
		}
	}
	n := len(a.ended)
	if a.limits.ErrorRate > 0 && n >= a.limits.MinRequests {
		if rate := float64(failed) / float64(n); rate > a.limits.ErrorRate {
			trip.Condition, trip.Observed, trip.Limit = AbortErrorRate, rate, a.limits.ErrorRate
			trip.Requests, trip.Failed = n, failed
			return trip, true
		}
	}
	if a.limits.P99 > 0 && n+len(stalled) >= a.limits.MinRequests {
		lat := make([]time.Duration, 0, n+len(stalled))
		for _, r := range a.ended {
			lat = append(lat, r.latency)
		}
		lat = append(lat, stalled...)
		slices.Sort(lat)
		if p99 := lat[int(math.Ceil(0.99*float64(len(lat))))-1]; p99 > a.limits.P99 {
			trip.Condition, trip.Observed, trip.Limit = AbortP99, p99.Seconds(), a.limits.P99.Seconds()
			trip.Requests, trip.Failed, trip.InFlight = len(lat), failed, len(stalled)
			return trip, true
		}
	}
	return Trip{}, false
}
