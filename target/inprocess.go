package target

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// InProcess is Spiral's bundled data plane served inside the calling
// process, on 127.0.0.1 and a free port: the reference target.
type InProcess struct {
	cfg dataplane.Config

	mu  sync.Mutex
	dp  *dataplane.DataPlane
	srv *dataplane.Server
}

// NewInProcess returns a target that serves the bundled data plane with cfg.
// cfg is checked at Start.
func NewInProcess(cfg dataplane.Config) *InProcess { return &InProcess{cfg: cfg} }

// Name is "in-process".
func (*InProcess) Name() string { return "in-process" }

// Config is the data plane's configuration.
func (t *InProcess) Config() dataplane.Config { return t.cfg }

// Start builds the data plane (its own CQL session) and serves it.
func (t *InProcess) Start(ctx context.Context, b Backends) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dp != nil {
		return errors.New("start in-process target: already started")
	}
	if err := b.Validate(); err != nil {
		return fmt.Errorf("start in-process target: %w", err)
	}
	env := fixtures.Env{MemcachedAddrs: b.MemcachedAddrs, CQLHosts: b.CQLHosts, Keyspace: b.Keyspace}
	dp, err := dataplane.New(t.cfg, dataplane.Backends{MemcachedAddrs: b.MemcachedAddrs, Cluster: env.NewCluster(), Keyspace: b.Keyspace})
	if err != nil {
		return fmt.Errorf("start in-process target: %w", err)
	}
	srv, err := dataplane.NewServer(dp)
	if err != nil {
		_ = dp.Close()
		return fmt.Errorf("start in-process target: %w", err)
	}
	t.dp, t.srv = dp, srv
	return nil
}

// DataPlane is the running data plane, or nil before Start and after Stop.
func (t *InProcess) DataPlane() *dataplane.DataPlane {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dp
}

// Server is the data plane's HTTP server, or nil before Start and after
// Stop.
func (t *InProcess) Server() *dataplane.Server {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.srv
}

// URL is the server's base URL.
func (t *InProcess) URL() string {
	if srv := t.Server(); srv != nil {
		return srv.URL
	}
	return ""
}

// PID is Self.
func (*InProcess) PID() int { return Self }

// Metrics gathers the data plane's registry.
func (t *InProcess) Metrics(context.Context) (dataplane.Snapshot, error) {
	dp := t.DataPlane()
	if dp == nil {
		return nil, errors.New("in-process target: not running")
	}
	return dp.Metrics()
}

// Health is the data plane's own health check (memcached and the store
// answer).
func (t *InProcess) Health(ctx context.Context) error {
	dp := t.DataPlane()
	if dp == nil {
		return errors.New("in-process target: not running")
	}
	return dp.Health(ctx)
}

// Restarts is 0: an in-process data plane is never restarted.
func (*InProcess) Restarts() int { return 0 }

// Stop closes the server, then the data plane and its session.
func (t *InProcess) Stop(context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dp == nil {
		return nil
	}
	t.srv.Close()
	err := t.dp.Close()
	t.dp, t.srv = nil, nil
	return err
}

// DataPlaneOf returns t's bundled data plane when t serves one in this
// process, for figures only an in-process data plane gives (a gauge
// polled every few milliseconds); nil otherwise.
func DataPlaneOf(t Target) *dataplane.DataPlane {
	if ip, ok := t.(*InProcess); ok {
		return ip.DataPlane()
	}
	return nil
}
