package target_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/target"
)

func TestParse(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "svc")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	for _, tc := range []struct {
		in   string
		want target.Spec
	}{
		{"", target.Spec{Kind: target.KindInProcess}},
		{"in-process", target.Spec{Kind: target.KindInProcess}},
		{"exec:" + bin, target.Spec{Kind: target.KindExec, Path: bin, Args: []string{}}},
		{"exec:" + bin + " -listen {addr}  -config fixed", target.Spec{Kind: target.KindExec, Path: bin, Args: []string{"-listen", "{addr}", "-config", "fixed"}}},
		{"url:http://127.0.0.1:8080", target.Spec{Kind: target.KindURL, URL: "http://127.0.0.1:8080", PID: target.NoProcess}},
		{"url:http://127.0.0.1:8080,pid=42", target.Spec{Kind: target.KindURL, URL: "http://127.0.0.1:8080", PID: 42}},
	} {
		got, err := target.Parse(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
		again, err := target.Parse(got.String())
		require.NoError(t, err, "String reads back: %s", got)
		assert.Equal(t, got, again)
	}
}

func TestParseRefusesBadSpecsWithTheReason(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(plain, nil, 0o644))
	for in, want := range map[string]string{
		"in-process:x":                 "takes no argument",
		"exec:":                        "names no binary",
		"exec:" + dir + "/missing":     "no such file",
		"exec:" + plain:                "not an executable file",
		"exec:" + dir:                  "not an executable file",
		"exec:no-such-binary-anywhere": "executable file not found",
		"url:127.0.0.1:8080":           "want an http:// or https:// URL",
		"url:http://127.0.0.1:8080/x":  "no path or query",
		"url:http://127.0.0.1:1,pid=0": "positive pid",
		"url:http://127.0.0.1:1,pid=x": "positive pid",
		"url:http://127.0.0.1:1,port=": "positive pid",
		"docker:spiral":                "unknown kind",
	} {
		_, err := target.Parse(in)
		require.ErrorContains(t, err, want, in)
		assert.ErrorContains(t, err, target.EnvTarget, "%s: the error names the variable", in)
	}
}

func TestSpecNewInProcessServesTheConfigGiven(t *testing.T) {
	cfg := dataplane.IncidentConfig()
	tgt, err := target.Spec{Kind: target.KindInProcess}.New(cfg)
	require.NoError(t, err)
	ip, ok := tgt.(*target.InProcess)
	require.True(t, ok)
	assert.Equal(t, cfg.BatchConcurrency, ip.Config().BatchConcurrency)
	assert.Equal(t, target.Self, tgt.PID())
	assert.Nil(t, target.DataPlaneOf(tgt), "not started")
}

func TestNewExecRefusesBadEnvironment(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "svc")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	_, err := target.NewExec(target.ExecConfig{Path: bin, Env: []string{"GOGC"}})
	require.ErrorContains(t, err, `"GOGC": want NAME=value`)
	_, err = target.NewExec(target.ExecConfig{})
	require.ErrorContains(t, err, "no binary")
	_, err = target.NewExec(target.ExecConfig{Path: bin, Memcached: []string{"127.0.0.1:11211"}})
	require.ErrorContains(t, err, "NS and Memcached need Netns")
	_, err = target.NewExec(target.ExecConfig{Path: bin, Netns: true, Memcached: []string{"127.0.0.1:11211"}})
	assert.ErrorContains(t, err, "Memcached names servers inside NS: give NS")
}

func TestFromEnvReadsTheRequestShape(t *testing.T) {
	t.Setenv(target.EnvTarget, "url:http://127.0.0.1:8080")
	t.Setenv(target.EnvRequestPath, "/v1/lookup")
	t.Setenv(target.EnvRequestKeysField, "ids")
	t.Setenv(target.EnvRequestClientHeader, "X-Caller")
	spec, err := target.FromEnv()
	require.NoError(t, err)
	assert.Equal(t, dataplane.RequestShape{Path: "/v1/lookup", KeysField: "ids", ClientHeader: "X-Caller"}, spec.Shape)
	tgt, err := spec.New(dataplane.Config{})
	require.NoError(t, err)
	assert.Equal(t, spec.Shape, target.ShapeOf(tgt))

	t.Setenv(target.EnvRequestPath, "v1")
	_, err = target.FromEnv()
	require.ErrorContains(t, err, "absolute path")

	t.Setenv(target.EnvTarget, "")
	t.Setenv(target.EnvRequestPath, "/v1/lookup")
	_, err = target.FromEnv()
	assert.ErrorContains(t, err, "need SPIRAL_TARGET=exec:... or url:...", "the bundled data plane takes its own shape")
}
