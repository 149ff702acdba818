package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// Bad command lines exit 2, say what is wrong, and start nothing (no
// backend is dialled: none of these addresses answers).
func TestBadFlags(t *testing.T) {
	t.Setenv(fixtures.EnvMemcachedAddrs, "")
	t.Setenv(fixtures.EnvCQLHosts, "")
	backends := []string{"-memcached", "127.0.0.1:1", "-cql", "127.0.0.1:2"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"no backends", nil, []string{"no memcached server", "no CQL contact point"}},
		{"bad config", append([]string{"-config", "fast"}, backends...), []string{`-config "fast": want fixed, incident or setlimit`}},
		{"unknown knob", append([]string{"-ablate", "turbo"}, backends...), []string{`-ablate: no knob "turbo": want one of batch-concurrency`}},
		{"knob of the incident", append([]string{"-config", "incident", "-ablate", "lookup"}, backends...), []string{`-ablate "lookup": only with -config fixed`}},
		{"bad address", []string{"-memcached", "localhost", "-cql", "127.0.0.1:2"}, []string{`address "localhost"`}},
		{"extra argument", append(backends, "serve"), []string{"unexpected arguments"}},
		{"bad timeout", append([]string{"-shutdown-timeout", "0s"}, backends...), []string{"-shutdown-timeout 0s"}},
		{"bad idle pool", append([]string{"-memcache-max-idle-conns", "-4"}, backends...), []string{"-memcache-max-idle-conns -4: want 1 or more"}},
		{"unknown flag", []string{"-port", "80"}, []string{"flag provided but not defined: -port"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr)
			assert.Equal(t, 2, code)
			for _, w := range tc.want {
				assert.Contains(t, stderr.String(), w)
			}
			assert.Empty(t, stdout.String(), "nothing listened")
		})
	}

	var stdout, stderr bytes.Buffer
	assert.Equal(t, 0, run(t.Context(), []string{"-h"}, &stdout, &stderr), "help is no error")
	assert.Contains(t, stderr.String(), "-listen")
}

// -memcache-max-idle-conns replaces the configuration's idle pool and
// nothing else; 0 keeps it.
func TestIdlePoolFlag(t *testing.T) {
	backends := []string{"-memcached", "127.0.0.1:1", "-cql", "127.0.0.1:2"}
	o, err := parseFlags(append([]string{"-config", "fixed", "-memcache-max-idle-conns", "4"}, backends...), io.Discard)
	require.NoError(t, err)
	want := dataplane.DefaultConfig()
	want.MemcacheMaxIdleConns = 4
	assert.Equal(t, want, o.dataplaneConfig())

	o, err = parseFlags(append([]string{"-config", "incident"}, backends...), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, dataplane.IncidentConfig(), o.dataplaneConfig())
}

// The binary, started as a suite would start a child target, serves the
// data plane against real backends on the port it prints, answers a batch,
// exports its metrics, and exits 0 on SIGTERM.
func TestServesAsAChildProcess(t *testing.T) {
	env := fixtures.Shared(t)
	require.NoError(t, fixtures.Seed(t.Context(), env.Session(t), env.Keyspace, fixtures.SeedSpec{Posts: 20}))

	bin := filepath.Join(t.TempDir(), "dataplane")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	cmd := exec.Command(bin, "-config", "fixed", "-log", "discard")
	cmd.Env = append(os.Environ(),
		fixtures.EnvMemcachedAddrs+"="+strings.Join(env.MemcachedAddrs, ","),
		fixtures.EnvCQLHosts+"="+strings.Join(env.CQLHosts, ","),
		fixtures.EnvKeyspace+"="+env.Keyspace)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			t.Logf("killed at the end of the test: %v", <-exited)
		}
	})

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var url string
	select {
	case line := <-lines:
		var ok bool
		url, ok = strings.CutPrefix(line, "dataplane: listening on ")
		require.True(t, ok, "first line %q", line)
	case err := <-exited:
		t.Fatalf("exited before listening: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no listening line within 30 s\n%s", stderr.String())
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c := &dataplane.Client{URL: url, Name: "cmd-test"}
	posts, err := c.GetPostRecords(ctx, fixtures.PostURIs(0, 20))
	require.NoError(t, err)
	assert.Len(t, posts, 20)

	for path, want := range map[string]string{dataplane.HealthPath: `"ok"`, dataplane.MetricsPath: "spiral_dataplane_"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
	}

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "SIGTERM is a clean exit: %s", stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15 s after SIGTERM")
	}
}
