package faults_test

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/gocql/gocql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
)

// memcacheTimeout is the lookups' timeout in the container tests: short,
// so a hung memcached shows within the test, long enough for loopback.
const memcacheTimeout = 300 * time.Millisecond

// containerEnv returns the shared environment, skipping t in external mode
// where the containers aren't Spiral's to break.
func containerEnv(tb testing.TB) *fixtures.Env {
	tb.Helper()
	env := fixtures.Shared(tb)
	if env.Memcached == nil || env.CQL == nil {
		tb.Skip("external mode: the backends are not ours to pause, stop or kill")
	}
	return env
}

// injectContainer injects a on s and makes sure it is recovered when t
// ends, so later tests find the backend running.
func injectContainer(tb testing.TB, s *fixtures.Service, a faults.ContainerAction) *faults.Container {
	tb.Helper()
	f := faults.NewContainerFault(s, a)
	require.NoError(tb, f.Inject(tb.Context()))
	tb.Cleanup(func() { require.NoError(tb, f.Recover(context.Background())) })
	return f
}

// newMemcache returns a gomemcache client closed when t ends.
func newMemcache(tb testing.TB, addr string) *memcache.Client {
	tb.Helper()
	mc := memcache.New(addr)
	mc.Timeout = memcacheTimeout
	tb.Cleanup(func() { _ = mc.Close() })
	return mc
}

// isTimeout reports whether err is gomemcache's connect timeout or an I/O
// timeout.
func isTimeout(err error) bool {
	var cte *memcache.ConnectTimeoutError
	var ne net.Error
	return errors.As(err, &cte) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func TestPauseMemcachedTimesOutLookups(t *testing.T) {
	env := containerEnv(t)
	noLeaks(t)
	mc := newMemcache(t, env.MemcachedAddr)
	require.NoError(t, mc.Set(&memcache.Item{Key: "spiral:pause", Value: []byte("v")}))

	f := injectContainer(t, env.Memcached, faults.ContainerPause)
	require.Equal(t, "pause memcached", f.Name())
	require.ErrorIs(t, f.Inject(t.Context()), faults.ErrInjected)
	for _, c := range []*memcache.Client{mc, newMemcache(t, env.MemcachedAddr)} { // pooled, then fresh
		began := time.Now()
		_, err := c.Get("spiral:pause")
		require.Error(t, err, "a paused memcached must not answer")
		assert.True(t, isTimeout(err), "want a timeout, got %v", err)
		t.Logf("Get on a paused memcached: %v after %v", err, time.Since(began).Round(time.Millisecond))
	}

	require.NoError(t, f.Recover(t.Context()))
	require.NoError(t, f.Recover(t.Context()), "Recover is idempotent")
	it, err := newMemcache(t, env.MemcachedAddr).Get("spiral:pause")
	require.NoError(t, err, "memcached answers after Recover")
	assert.Equal(t, "v", string(it.Value))
}

func TestKillMemcachedRecoversEmpty(t *testing.T) {
	env := containerEnv(t)
	noLeaks(t)
	mc := newMemcache(t, env.MemcachedAddr)
	require.NoError(t, mc.Set(&memcache.Item{Key: "spiral:kill", Value: []byte("v")}))

	f := injectContainer(t, env.Memcached, faults.ContainerKill)
	running, err := env.Memcached.Running(t.Context())
	require.NoError(t, err)
	assert.False(t, running)
	_, err = mc.Get("spiral:kill")
	require.Error(t, err, "a killed memcached must not answer")
	t.Logf("Get on a killed memcached: %v", err)
	_, err = newMemcache(t, env.MemcachedAddr).Get("spiral:kill")
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "nothing listens")

	began := time.Now()
	require.NoError(t, f.Recover(t.Context()))
	t.Logf("memcached back in %v", time.Since(began).Round(time.Millisecond))
	fresh := newMemcache(t, env.MemcachedAddr)
	_, err = fresh.Get("spiral:kill")
	require.ErrorIs(t, err, memcache.ErrCacheMiss, "a killed memcached comes back empty")
	require.NoError(t, fresh.Set(&memcache.Item{Key: "spiral:kill", Value: []byte("w")}))
}

func TestRestartMemcachedAnswersAtOnce(t *testing.T) {
	env := containerEnv(t)
	noLeaks(t)
	f := injectContainer(t, env.Memcached, faults.ContainerRestart)
	// Inject returned: memcached answers already.
	require.NoError(t, newMemcache(t, env.MemcachedAddr).Set(&memcache.Item{Key: "spiral:restart", Value: []byte("v")}))
	require.NoError(t, f.Recover(t.Context()))
}

// gocqlReconnects ignores the reader goroutines of connections a gocql
// session opened to a restarted node: in our runs (scylladb/gocql v1.19.0)
// some outlived Session.Close, a leak of the driver, not of the fault.
var gocqlReconnects = goleak.IgnoreAnyFunction("github.com/gocql/gocql.(*Conn).serve")

// cqlQuery is a query any CQL store answers.
const cqlQuery = "SELECT release_version FROM system.local"

// TestStopCQLRecovers is the one CQL stop/start of the default run (a
// Cassandra start takes 15-25 s).
func TestStopCQLRecovers(t *testing.T) {
	env := containerEnv(t)
	noLeaks(t, gocqlReconnects)
	s := env.Session(t)
	ctx := t.Context()
	var v string
	require.NoError(t, s.Query(cqlQuery).WithContext(ctx).Scan(&v))

	f := injectContainer(t, env.CQL, faults.ContainerStop)
	require.Error(t, s.Query(cqlQuery).WithContext(ctx).Scan(&v), "a stopped CQL store must not answer")

	began := time.Now()
	require.NoError(t, f.Recover(ctx))
	t.Logf("%s answers its handshake %v after Recover began", env.Flavor, time.Since(began).Round(100*time.Millisecond))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, s.Query(cqlQuery).WithContext(ctx).Consistency(gocql.One).Scan(&v))
	}, time.Minute, 500*time.Millisecond, "the session reconnects")
}

// TestKillCQLRecovers: a CQL store killed outright (no flush) comes back
// with Recover and the session reconnects. A second Cassandra restart in
// this package adds 15-25 s to make test.
func TestKillCQLRecovers(t *testing.T) {
	env := containerEnv(t)
	noLeaks(t, gocqlReconnects)
	s := env.Session(t)
	ctx := t.Context()
	f := injectContainer(t, env.CQL, faults.ContainerKill)
	var v string
	require.Error(t, s.Query(cqlQuery).WithContext(ctx).Scan(&v))
	require.NoError(t, f.Recover(ctx))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, s.Query(cqlQuery).WithContext(ctx).Scan(&v))
	}, time.Minute, 500*time.Millisecond, "the session reconnects")
}
