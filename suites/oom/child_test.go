package oom

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
)

// The data plane under test runs in a child process: this test binary run
// again with faults.OOMChildEnv=1 by a faults.Supervisor, inside a
// memory-limited cgroup. init runs before TestMain, so the child never
// starts the package's fixtures; it reads its backends and its arm from the
// environment the parent sets (childEnv).
func init() {
	if os.Getenv(faults.OOMChildEnv) != "1" {
		return
	}
	code, err := runChild(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "oom child: %v\n", err)
	}
	os.Exit(code)
}

// Environment of the child, beside faults.OOMChildEnv, GOMEMLIMIT and GOGC.
// The backends come in fixtures' external-mode variables
// (fixtures.EnvMemcachedAddrs, EnvCQLHosts, EnvKeyspace).
const (
	// envArm names the data plane configuration: armIncident or armFixed.
	envArm = "SPIRAL_OOM_ARM"
)

// Arms of the suite, the values of envArm.
const (
	armIncident = "incident"
	armFixed    = "fixed"
)

// dpHealthPath is the child's health check for the Supervisor: 200 once the
// data plane is built and both memcached and the CQL store answer it
// (dataplane.DataPlane.Health). The child's own /healthz only says the
// process listens; a restarted data plane that can't reach memcached is not
// healthy.
const dpHealthPath = "/dp/healthz"

// childEnv is the environment the parent gives the child for arm.
func childEnv(env *fixtures.Env, arm string) []string {
	return []string{
		envArm + "=" + arm,
		fixtures.EnvMemcachedAddrs + "=" + strings.Join(env.MemcachedAddrs, ","),
		fixtures.EnvCQLHosts + "=" + strings.Join(env.CQLHosts, ","),
		fixtures.EnvKeyspace + "=" + env.Keyspace,
	}
}

// armConfig returns the data plane configuration of arm. Lines are counted
// and discarded (no LogSink): this suite is about memory, the log storm
// has its own.
func armConfig(arm string) (dataplane.Config, error) {
	switch arm {
	case armIncident:
		return dataplane.IncidentConfig(), nil
	case armFixed:
		return dataplane.DefaultConfig(), nil
	default:
		return dataplane.Config{}, fmt.Errorf("%s=%q: want %q or %q", envArm, arm, armIncident, armFixed)
	}
}

// runChild is the child's body. It waits for the Supervisor's start byte
// first (the child joins its cgroup only once started, on cgroup v1), so
// that every byte the data plane allocates is charged to the cgroup, then
// builds the data plane and serves it through faults.RunOOMChild until the
// parent goes away. It returns the process's exit status.
func runChild(ctx context.Context) (int, error) {
	var start [1]byte
	if _, err := io.ReadFull(os.Stdin, start[:]); err != nil {
		return 1, fmt.Errorf("wait for start byte: %w", err)
	}
	cfg, err := armConfig(os.Getenv(envArm))
	if err != nil {
		return 1, err
	}
	env := fixtures.Env{
		MemcachedAddrs: fixtures.SplitList(os.Getenv(fixtures.EnvMemcachedAddrs)),
		CQLHosts:       fixtures.SplitList(os.Getenv(fixtures.EnvCQLHosts)),
		Keyspace:       os.Getenv(fixtures.EnvKeyspace),
	}
	if len(env.MemcachedAddrs) == 0 || len(env.CQLHosts) == 0 || env.Keyspace == "" {
		return 1, fmt.Errorf("backends: %s, %s and %s must all be set", fixtures.EnvMemcachedAddrs, fixtures.EnvCQLHosts, fixtures.EnvKeyspace)
	}
	dp, err := dataplane.New(cfg, dataplane.Backends{MemcachedAddrs: env.MemcachedAddrs, Cluster: env.NewCluster(), Keyspace: env.Keyspace})
	if err != nil {
		return 1, fmt.Errorf("data plane: %w", err)
	}
	code, err := faults.RunOOMChild(ctx, faults.OOMChildConfig{
		// The start byte was read above: hand it on.
		Stdin:   io.MultiReader(bytes.NewReader(start[:]), os.Stdin),
		Stdout:  os.Stdout,
		Listen:  os.Getenv(faults.OOMChildListenEnv),
		Handler: childHandler(dp),
	})
	if err != nil {
		err = fmt.Errorf("serve: %w", err)
	}
	if cerr := dp.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close data plane: %w", cerr))
	}
	return code, err
}

// childHandler serves the data plane's RPCs and metrics, and dpHealthPath.
func childHandler(dp *dataplane.DataPlane) http.Handler {
	h := dp.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != dpHealthPath {
			h.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := dp.Health(ctx); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
}
