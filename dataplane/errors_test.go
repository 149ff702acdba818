package dataplane_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// logLine is the part of a data plane log line the tests read.
type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
	Cache string `json:"cache"`
	Kind  string `json:"kind"`
	URI   string `json:"uri"`
	DID   string `json:"did"`
	Error string `json:"error"`
}

// parseLog decodes every line of buf, failing tb on one that isn't JSON.
func parseLog(tb testing.TB, buf *bytes.Buffer) []logLine {
	tb.Helper()
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	for sc.Scan() {
		var l logLine
		require.NoError(tb, json.Unmarshal(sc.Bytes(), &l), "log line %q", sc.Text())
		out = append(out, l)
	}
	require.NoError(tb, sc.Err())
	return out
}

// TestCacheErrorsIncident: memcached refuses every connection. The
// incident configuration logs every error, naming the cache and the
// mechanism, and fails the batch; the metrics count the same errors.
func TestCacheErrorsIncident(t *testing.T) {
	env := seededEnv(t)
	noLeaks(t)
	var buf bytes.Buffer
	cfg := dataplane.IncidentConfig()
	cfg.LogSink = dataplane.SyncWriter(&buf)
	dp := newDataPlaneOn(t, cfg, []string{closedPort(t)}, env)

	uris := fixtures.PostURIs(postsLogs, 100)
	_, err := dp.GetPostRecords(t.Context(), "internal", uris)
	require.ErrorIs(t, err, dataplane.ErrCache)
	_, err = dp.GetProfiles(t.Context(), "appview", fixtures.DIDs(postsLogs, 10))
	require.ErrorIs(t, err, dataplane.ErrCache)

	s := snapshot(t, dp)
	assert.InDelta(t, 100, s.Sum("cache_errors_total", "cache", "post", "op", "get", "kind", "conn_refused"), 0,
		"every key tried, as with the postmortem's context-free errgroup")
	assert.InDelta(t, 10, s.Sum("cache_errors_total", "cache", "profile", "op", "get", "kind", "conn_refused"), 0)
	assert.InDelta(t, 110, s.Sum("log_lines_written_total"), 0, "one line per error")
	assert.InDelta(t, 0, s.Sum("log_lines_dropped_total"), 0)
	assert.InDelta(t, 110, s.Sum("memcached_dials_total", "result", "conn_refused"), 0)
	assert.InDelta(t, 1, s.Sum("requests_total", "client", "internal", "code", "cache_error"), 0)
	assert.InDelta(t, 0, s.Sum("lookups_total", "source", "store"), 0, "a failed batch reads nothing from the store")
	assertTotals(t, dp)

	lines := parseLog(t, &buf)
	require.Len(t, lines, 110)
	byCache := map[string]int{}
	for _, l := range lines {
		byCache[l.Cache]++
		assert.Equal(t, "ERROR", l.Level)
		assert.Equal(t, "failed to get "+l.Cache+" cache item", l.Msg)
		assert.Equal(t, "conn_refused", l.Kind)
		assert.Contains(t, l.Error, "connection refused")
	}
	assert.Equal(t, map[string]int{"post": 100, "profile": 10}, byCache)
}

// TestCacheErrorsDefault: the same outage with the fixed configuration.
// Lookups fall back to the store and answer without trying to fill the
// failed cache; a few lines are written and the rest counted as dropped;
// metrics still name each cache.
func TestCacheErrorsDefault(t *testing.T) {
	env := seededEnv(t)
	noLeaks(t)
	var buf bytes.Buffer
	cfg := dataplane.DefaultConfig()
	cfg.LogSink = dataplane.SyncWriter(&buf)
	dp := newDataPlaneOn(t, cfg, []string{closedPort(t)}, env)
	start := time.Now()

	uris := fixtures.PostURIs(postsLogs+100, 100)
	posts, err := dp.GetPostRecords(t.Context(), "internal", uris)
	require.NoError(t, err)
	for i, p := range posts {
		if assert.NotNil(t, p) {
			assert.Equal(t, fixtures.SeededPost(postsLogs+100+i), p.Text)
		}
	}
	counts, err := dp.GetInteractionCounts(t.Context(), "appview", uris[:10])
	require.NoError(t, err)
	assert.Len(t, counts, 10)

	// More failing reads than the rate limit's burst, so that lines drop.
	const reads = 100
	for i := range reads {
		_, err := dp.GetPostRecords(t.Context(), "internal", uris[i%10:i%10+1])
		require.NoError(t, err)
	}

	s := snapshot(t, dp)
	// One GetMulti per chunk fails; the store's answers are not filled into
	// a cache that just failed.
	assert.InDelta(t, 1+reads, s.Sum("cache_errors_total", "cache", "post", "op", "get"), 0)
	assert.InDelta(t, 0, s.Sum("cache_errors_total", "cache", "post", "op", "set"), 0)
	assert.InDelta(t, 1, s.Sum("cache_errors_total", "cache", "counts", "op", "get"), 0)
	assert.InDelta(t, 0, s.Sum("cache_errors_total", "cache", "counts", "op", "set"), 0)
	assert.InDelta(t, 110+reads, s.Sum("lookups_total", "source", "store"), 0)
	errs := s.Sum("cache_errors_total")
	written, dropped := s.Sum("log_lines_written_total"), s.Sum("log_lines_dropped_total", "reason", "rate_limit")
	assert.InDelta(t, errs, written+dropped, 0, "every error is written or counted as dropped")
	elapsed := time.Since(start).Seconds()
	assert.LessOrEqual(t, written, float64(cfg.LogPolicy.PerSecond+cfg.LogPolicy.Burst)+float64(cfg.LogPolicy.PerSecond)*elapsed,
		"at most a burst plus the steady rate over the %.1f s the test took", elapsed)
	assert.Positive(t, dropped)
	assertTotals(t, dp)

	lines := parseLog(t, &buf)
	require.Len(t, lines, int(written))
	for _, l := range lines {
		assert.Contains(t, []string{"post", "counts"}, l.Cache)
		assert.Contains(t, l.Msg, l.Cache+" cache item")
		assert.Equal(t, "conn_refused", l.Kind)
	}
}

func TestHealth(t *testing.T) {
	env := seededEnv(t)
	noLeaks(t)
	dp := newDataPlane(t, dataplane.DefaultConfig())
	require.NoError(t, dp.Health(t.Context()))

	down := newDataPlaneOn(t, dataplane.DefaultConfig(), []string{closedPort(t)}, env)
	err := down.Health(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "memcached")
	assert.NotContains(t, err.Error(), "cql store")
}
