package target

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/dataplane"
)

// Endpoint is a service already running at a URL, which Spiral neither
// starts nor stops; its backends are whatever it was configured with (point
// it at the ones Spiral's environment names, so that the suites' container
// faults reach them). With a pid, probes read that process's /proc.
type Endpoint struct {
	base   string
	pid    int
	client *http.Client
	shape  dataplane.RequestShape
}

// endpointStart bounds Endpoint.Start's wait for a healthy service.
const endpointStart = 10 * time.Second

// NewEndpoint checks base ("http://host:port", no path) and pid (NoProcess
// for none) and returns the target.
func NewEndpoint(base string, pid int) (*Endpoint, error) {
	u, err := url.Parse(base)
	switch {
	case !strings.Contains(base, "://"):
		return nil, fmt.Errorf("endpoint target %q: want an http:// or https:// URL", base)
	case err != nil:
		return nil, fmt.Errorf("endpoint target %q: %w", base, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("endpoint target %q: want an http:// or https:// URL", base)
	case u.Host == "":
		return nil, fmt.Errorf("endpoint target %q: no host", base)
	case strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("endpoint target %q: want the base URL only (scheme and host), no path or query", base)
	}
	if pid != NoProcess && pid <= 0 {
		return nil, fmt.Errorf("endpoint target %q: pid %d: want a positive pid", base, pid)
	}
	return &Endpoint{base: u.Scheme + "://" + u.Host, pid: pid, client: newHTTPClient()}, nil
}

// Name is "url:" and the base URL, with the pid if given.
func (t *Endpoint) Name() string {
	if t.pid > 0 {
		return "url:" + t.base + ",pid=" + strconv.Itoa(t.pid)
	}
	return "url:" + t.base
}

// Start waits until the service answers its health check; b is not used
// (the service has its own backends).
func (t *Endpoint) Start(ctx context.Context, _ Backends) error {
	if t.pid > 0 {
		if _, err := os.Stat("/proc/" + strconv.Itoa(t.pid)); err != nil {
			return fmt.Errorf("start %s: process %d: %w", t.Name(), t.pid, errors.Unwrap(err))
		}
	}
	if err := waitHealthy(ctx, endpointStart, t.Health); err != nil {
		return fmt.Errorf("start %s: %w", t.Name(), err)
	}
	return nil
}

// URL is the base URL.
func (t *Endpoint) URL() string { return t.base }

// PID is the pid given, or NoProcess.
func (t *Endpoint) PID() int { return t.pid }

// Metrics scrapes its /metrics.
func (t *Endpoint) Metrics(ctx context.Context) (dataplane.Snapshot, error) {
	return scrape(ctx, t.client, t.base)
}

// Health checks its /healthz.
func (t *Endpoint) Health(ctx context.Context) error { return health(ctx, t.client, t.base) }

// Restarts is 0: Spiral can't see a service's restarts it does not run.
func (*Endpoint) Restarts() int { return 0 }

// Stop closes idle connections; the service goes on.
func (t *Endpoint) Stop(context.Context) error {
	t.client.CloseIdleConnections()
	return nil
}
