// Package target is the service under test as Spiral's runner sees it: a
// data plane in front of memcached and a CQL store, started against the
// backends a suite brought up, loaded over HTTP, probed as a process, read
// through its metrics, and stopped.
//
// Three kinds of Target:
//
//   - InProcess: Spiral's bundled data plane (package dataplane) inside the
//     test binary; the reference target, and the one every incident arm
//     runs as its positive control.
//   - Exec: any binary, run as a child process, supervised (restarted on
//     exit with backoff), optionally in a memory cgroup; probes read its
//     /proc, its figures come from its /metrics.
//   - Endpoint: a service already running at a URL, optionally with a pid
//     to probe; Spiral neither starts nor stops it.
//
// Users pick one without writing Go with SPIRAL_TARGET (see Parse):
//
//	SPIRAL_TARGET=exec:./bin/dataplane go test ./suites/...
//	SPIRAL_TARGET=url:http://127.0.0.1:8080,pid=4242 go test ./suites/...
package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// Target is what the runner needs of a service under test, and nothing
// more. A Target is started once and stopped once; its methods other than
// Start and Stop are safe to call from several goroutines while it runs.
type Target interface {
	// Name says what it is in reports and logs: "in-process",
	// "exec:/path/to/binary -flag", "url:http://host:port".
	Name() string
	// Start brings the service up against b and returns once it answers
	// its health check (or fails, leaving nothing behind).
	Start(ctx context.Context, b Backends) error
	// URL is the base URL load is sent to ("http://127.0.0.1:PORT"), valid
	// once Start returned.
	URL() string
	// PID is the process that serves, for probes: Self for the calling
	// process, NoProcess when there is none to probe (an endpoint without
	// a pid, a child between two lives). It may change when a child is
	// restarted.
	PID() int
	// Metrics returns the service's metrics now (its /metrics, or its
	// registry in-process).
	Metrics(ctx context.Context) (dataplane.Snapshot, error)
	// Health returns nil when the service says it can serve (its
	// /healthz answers 200), else why not.
	Health(ctx context.Context) error
	// Restarts counts the times the service was started again since
	// Start (0 where Spiral does not start it).
	Restarts() int
	// Stop stops what Start started and waits until it is gone; it is
	// idempotent, and a no-op for a service Spiral did not start.
	Stop(ctx context.Context) error
}

// ShapeOf is how t takes a batch RPC: what its spec gave (Spec.Shape), or
// the bundled data plane's (the zero value).
func ShapeOf(t Target) dataplane.RequestShape {
	switch t := t.(type) {
	case *Exec:
		return t.cfg.Shape
	case *Endpoint:
		return t.shape
	}
	return dataplane.RequestShape{}
}

// PID values that are not a process id.
const (
	// Self is the calling process: the target serves in-process.
	Self = 0
	// NoProcess says there is no process to probe.
	NoProcess = -1
)

// Backends are the services a target talks to, as its environment has them.
type Backends struct {
	MemcachedAddrs []string
	CQLHosts       []string
	Keyspace       string
}

// BackendsOf returns env's backends.
func BackendsOf(env *fixtures.Env) Backends {
	return Backends{MemcachedAddrs: env.MemcachedAddrs, CQLHosts: env.CQLHosts, Keyspace: env.Keyspace}
}

// Validate reports what is missing from b.
func (b Backends) Validate() error {
	var errs []error
	if len(b.MemcachedAddrs) == 0 {
		errs = append(errs, errors.New("no memcached address"))
	}
	if len(b.CQLHosts) == 0 {
		errs = append(errs, errors.New("no CQL contact point"))
	}
	if b.Keyspace == "" {
		errs = append(errs, errors.New("no keyspace"))
	}
	return errors.Join(errs...)
}

// EnvListen is the variable an Exec target's child finds its address in
// ("127.0.0.1:PORT"), beside fixtures.EnvMemcachedAddrs,
// fixtures.EnvCQLHosts and fixtures.EnvKeyspace for its backends.
const EnvListen = "SPIRAL_LISTEN"

// Goroutine high-water mark of a service out of process: a scrape of
// /metrics that carries PeakWindowHeader asks the service for the highest
// goroutine count it polled since the previous such scrape, as the gauge
// PeakGoroutinesMetric, and starts the next window. The runner's sampler
// is the only one to ask, once a sample (WithPeakWindow); cmd/dataplane
// answers it, polling every 5 ms as the runner does in-process. A service
// that does not leaves goroutines_peak not judged. The same scrape asks for
// PeakStoreMetric, the highest number of store queries in flight at once
// in the window (dataplane.DataPlane.StoreInFlightPeak).
const (
	PeakWindowHeader     = "X-Spiral-Peak-Window"
	PeakGoroutinesMetric = "spiral_goroutines_peak"
	PeakStoreMetric      = "spiral_store_queries_in_flight_peak"
)

type peakWindowKey struct{}

// WithPeakWindow marks ctx so that a Metrics call with it asks for the
// goroutine high-water mark's window (PeakWindowHeader).
func WithPeakWindow(ctx context.Context) context.Context {
	return context.WithValue(ctx, peakWindowKey{}, true)
}

// WithFamilies marks ctx so that a Metrics call of another process's target
// asks for these metric families alone (name[]=... on /metrics, which
// client_golang's promhttp handlers honour and other services may ignore):
// a runner that reads a dozen figures a sample then neither makes the
// service encode its whole registry nor parses it.
func WithFamilies(ctx context.Context, names ...string) context.Context {
	return context.WithValue(ctx, familiesKey{}, names)
}

type familiesKey struct{}

// httpTimeout bounds one metrics scrape or health check of another process.
const httpTimeout = 5 * time.Second

// newHTTPClient returns the client targets read /metrics and /healthz with:
// one kept-alive connection, so that a scrape per sample does not leave a
// TIME_WAIT socket per sample.
func newHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute},
		Timeout:   httpTimeout,
	}
}

// scrape reads base's /metrics.
func scrape(ctx context.Context, c *http.Client, base string) (dataplane.Snapshot, error) {
	u := base + dataplane.MetricsPath
	if names, _ := ctx.Value(familiesKey{}).([]string); len(names) > 0 {
		q := url.Values{"name[]": names}
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if ctx.Value(peakWindowKey{}) != nil {
		req.Header.Set(PeakWindowHeader, "1")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s%s: %s", base, dataplane.MetricsPath, resp.Status)
	}
	return dataplane.ParseSnapshot(resp.Body)
}

// health checks base's /healthz.
func health(ctx context.Context, c *http.Client, base string) error {
	resp, err := get(ctx, c, base+dataplane.HealthPath)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512)) // a reason, if it gives one
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: %s: %s", base, dataplane.HealthPath, resp.Status, body)
	}
	return nil
}

func get(ctx context.Context, c *http.Client, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// waitHealthy polls check until it returns nil, for at most timeout; its
// error is the last reason check gave.
func waitHealthy(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err // a check cut short by the deadline says less than the one before
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not healthy after %v: %w", time.Since(began).Round(time.Millisecond), last)
		case <-tick.C:
		}
	}
}
