package scenario

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
)

// Environment variables for floods against backends Spiral does not own
// (fixtures.Env.External), and the limits that stop them.
const (
	// EnvAllowExternalFlood is the user's answer to whether a run may
	// flood backends Spiral does not own: 1 (or true) floods them, held to
	// the abort limits; 0 (or false) refuses, and the suites skip the arms
	// that flood; unset refuses, and those arms fail, naming it. Any other
	// value is an error. Spiral's own containers are flooded whatever it
	// says.
	EnvAllowExternalFlood = "SPIRAL_ALLOW_EXTERNAL_FLOOD"
	// EnvAbortErrorRate sets the abort's everyday error-rate limit
	// (load.AbortLimits.ErrorRate): a share above 0 and below 1, as 5%
	// or 0.05, or off.
	EnvAbortErrorRate = "SPIRAL_ABORT_ERROR_RATE"
	// EnvAbortP99 sets the abort's everyday p99 latency limit
	// (load.AbortLimits.P99): a duration such as 3s, or off.
	EnvAbortP99 = "SPIRAL_ABORT_P99"
	// EnvAbortWindow sets how far back the abort looks
	// (load.AbortLimits.Window): a duration of at least
	// load.AbortCheckInterval, such as 5s.
	EnvAbortWindow = "SPIRAL_ABORT_WINDOW"
)

// ErrAborted is wrapped by Run's error when the run's abort tripped
// (Result.Aborted): its floods were stopped part-way, so the run proves
// nothing about them and fails, as a k6 test whose abortOnFail threshold
// failed does.
var ErrAborted = errors.New("aborted")

// errTripped ends a phase cut short by the abort.
var errTripped = errors.New("abort tripped")

// newRunAbort returns the abort of a run of sc in env: its floods stopped
// past AbortLimitsFor's limits on the everyday loads among bg; nil when the
// limits check nothing or there is no flood. Armed limits with floods and
// no everyday load to watch are an error: the floods would run unguarded.
func newRunAbort(env *fixtures.Env, sc Scenario, bg, floods []*load.Load) (*load.Abort, error) {
	limits, err := AbortLimitsFor(env, sc)
	if err != nil || !limits.Armed() || len(floods) == 0 {
		return nil, err
	}
	var everyday []*load.Load
	for _, l := range bg {
		if l.Profile().Traffic == load.TrafficEveryday {
			everyday = append(everyday, l)
		}
	}
	if len(everyday) == 0 {
		return nil, fmt.Errorf("abort limits (%v) apply but no everyday load is there to watch, so the floods would run unguarded: add a Background load of traffic %q, or turn the abort off (Scenario.Abort, or %s and %s set to off)",
			limits, load.TrafficEveryday, EnvAbortErrorRate, EnvAbortP99)
	}
	return load.NewAbort(limits, everyday, floods)
}

// ExternalFloodError is Run's error for a scenario whose floods would reach
// backends Spiral does not own while EnvAllowExternalFlood is not 1. It is
// returned before any load starts: nothing was sent.
type ExternalFloodError struct {
	// Floods describes the scenario's floods: client, batch sizes, rate.
	Floods []string
	// Backends describes the backends Spiral does not own.
	Backends []string
	// Declined says the refusal is the user's own answer,
	// EnvAllowExternalFlood=0: the suites skip the arm instead of failing
	// it.
	Declined bool
}

// Error says what was refused, why, and which variable decides.
func (e *ExternalFloodError) Error() string {
	floods, backends := strings.Join(e.Floods, ", "), strings.Join(e.Backends, ", ")
	if e.Declined {
		return fmt.Sprintf("floods not run (%s=0): %s would reach backends Spiral does not own (%s)", EnvAllowExternalFlood, floods, backends)
	}
	return fmt.Sprintf("floods refused: %s would reach backends Spiral does not own (%s); set %s=1 to flood them, held to the abort limits (%s, %s, %s), or %s=0 to skip the arms that flood",
		floods, backends, EnvAllowExternalFlood, EnvAbortErrorRate, EnvAbortP99, EnvAbortWindow, EnvAllowExternalFlood)
}

// Aborted is an abort that tripped during a run: why (load.Trip), when
// and in which phase.
type Aborted struct {
	load.Trip
	// After is when it tripped, from the start of the timeline (the t of
	// the report's charts).
	After time.Duration `json:"after_ns"`
	// Phase is the phase it tripped in.
	Phase string `json:"phase"`
}

// String reads "everyday error rate 12% > 5% (30 of 250 requests in the
// last 5s) at t=7.3s (inject); stopped internal-batch".
func (a Aborted) String() string {
	s := fmt.Sprintf("%s at t=%v (%s)", a.Trip, a.After.Round(100*time.Millisecond), a.Phase)
	if len(a.Stopped) > 0 {
		s += "; stopped " + strings.Join(a.Stopped, ", ")
	}
	return s
}

// newAborted places trip on tl: its time from tl's start and its phase.
func newAborted(trip load.Trip, tl *probe.Timeline) *Aborted {
	a := &Aborted{Trip: trip, After: trip.At.Sub(tl.Start), Phase: "set-up"}
	for _, p := range tl.Phases {
		if !trip.At.Before(p.Start) {
			a.Phase = p.Name
		}
	}
	return a
}

// AbortLimitsFor returns the limits a run of sc in env holds its floods
// to: sc.Abort when set; else load.ExternalAbort when a backend of env is
// not Spiral's own (fixtures.Env.External), and none for Spiral's own
// containers, where the incident arms must be free to melt down. Then each
// of EnvAbortErrorRate, EnvAbortP99 and EnvAbortWindow that is set
// overrides its field, so the user running the suites has the last word,
// as k6's environment variables override a script's options. A malformed
// variable is an error.
func AbortLimitsFor(env *fixtures.Env, sc Scenario) (load.AbortLimits, error) {
	var l load.AbortLimits
	switch {
	case sc.Abort != nil:
		l = *sc.Abort
	case env.External():
		l = load.ExternalAbort
	}
	l, err := abortFromEnv(l)
	if err != nil {
		return l, err
	}
	if err := l.Validate(); err != nil {
		return l, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	return l, nil
}

// abortFromEnv returns l with the fields the abort variables set replaced,
// and every malformed variable.
func abortFromEnv(l load.AbortLimits) (load.AbortLimits, error) {
	var errs []error
	if v, ok := os.LookupEnv(EnvAbortErrorRate); ok {
		r, err := parseShare(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want a share of requests above 0 and below 1, as 5%% or 0.05, or off", EnvAbortErrorRate, v))
		}
		l.ErrorRate = r
	}
	if v, ok := os.LookupEnv(EnvAbortP99); ok {
		d, err := parseDuration(v, true)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want a latency such as 3s or 500ms, or off", EnvAbortP99, v))
		}
		l.P99 = d
	}
	if v, ok := os.LookupEnv(EnvAbortWindow); ok {
		d, err := parseDuration(v, false)
		if err != nil || d < load.AbortCheckInterval {
			errs = append(errs, fmt.Errorf("%s=%q: want a duration of at least %v, such as 5s", EnvAbortWindow, v, load.AbortCheckInterval))
		}
		l.Window = d
	}
	return l, errors.Join(errs...)
}

// parseShare reads "5%", "0.05" or "off" (0).
func parseShare(v string) (float64, error) {
	v = strings.TrimSpace(v)
	if strings.EqualFold(v, "off") {
		return 0, nil
	}
	scale := 1.0
	if s, ok := strings.CutSuffix(v, "%"); ok {
		v, scale = strings.TrimSpace(s), 100
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, err
	}
	if f /= scale; !(f > 0 && f < 1) { // also NaN
		return 0, fmt.Errorf("%g is not above 0 and below 1", f)
	}
	return f, nil
}

// parseDuration reads a positive Go duration, or "off" (0) where off is
// allowed.
func parseDuration(v string, off bool) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if off && strings.EqualFold(v, "off") {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%v is not positive", d)
	}
	return d, nil
}

// externalFloodConsent reads EnvAllowExternalFlood: allowed, and whether
// it was answered at all (set is false when unset or empty).
func externalFloodConsent() (allowed, set bool, err error) {
	v := strings.TrimSpace(os.Getenv(EnvAllowExternalFlood))
	if v == "" {
		return false, false, nil
	}
	b, perr := strconv.ParseBool(v)
	if perr != nil {
		return false, false, fmt.Errorf("%s=%q: want 1 (flood backends Spiral does not own, held to the abort limits) or 0 (don't; the arms that flood skip)", EnvAllowExternalFlood, v)
	}
	return b, true, nil
}

// checkFloods refuses floods against env's backends Spiral does not own
// unless EnvAllowExternalFlood allows them. floods are the loads the run
// would flood with.
func checkFloods(env *fixtures.Env, floods []*load.Load) error {
	if len(floods) == 0 || !env.External() {
		return nil
	}
	allowed, set, err := externalFloodConsent()
	if err != nil {
		return err
	}
	if allowed {
		return nil
	}
	e := &ExternalFloodError{Declined: set}
	for _, l := range floods {
		p := l.Profile()
		e.Floods = append(e.Floods, fmt.Sprintf("%s (%d-%d keys a batch, %g a second)", p.Client, p.BatchMin, p.BatchMax, p.Rate))
	}
	if len(env.MemcachedUpstreams) > 0 {
		e.Backends = append(e.Backends, "memcached "+strings.Join(env.MemcachedUpstreams, " "))
	}
	if env.Flavor == fixtures.FlavorExternal {
		e.Backends = append(e.Backends, "CQL "+strings.Join(env.CQLHosts, " "))
	}
	return e
}
