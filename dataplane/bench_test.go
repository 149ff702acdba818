package dataplane_test

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// benchBatch is the postmortem's largest batch ("15-20 thousand URIs").
const benchBatch = dataplane.PostmortemBatchSize

// benchConfig is DefaultConfig with a 5 s memcached timeout: on a busy
// 2-core machine a read now and then stalls past the default 500 ms, which
// would fail the raw baseline and turn the data plane's hits into store
// reads. Nothing else changes.
func benchConfig() dataplane.Config {
	cfg := dataplane.DefaultConfig()
	cfg.MemcacheTimeout = 5 * time.Second
	return cfg
}

// BenchmarkRawGetMulti is the baseline of BenchmarkGetPostRecords/hits:
// gomemcache's GetMulti of the same keys, with the same chunking,
// concurrency, idle pool and timeout as benchConfig, and no data plane.
func BenchmarkRawGetMulti(b *testing.B) {
	env := seededEnv(b)
	uris := fixtures.PostURIs(postsBench, benchBatch)
	cfg := benchConfig()

	b.Run(fmt.Sprintf("hits-%d", benchBatch), func(b *testing.B) {
		warmBench(b, newDataPlane(b, slowStoreConfig()), uris)
		mc := memcache.New(env.MemcachedAddrs...)
		mc.MaxIdleConns = cfg.MemcacheMaxIdleConns
		mc.Timeout = cfg.MemcacheTimeout
		b.Cleanup(func() { _ = mc.Close() })
		keys := make([]string, len(uris))
		for i, u := range uris {
			keys[i] = "post:" + u // the data plane's post key space
		}
		getAll := func() (int, error) {
			var g errgroup.Group
			g.SetLimit(cfg.BatchConcurrency)
			found := make([]int, (len(keys)+cfg.ChunkSize-1)/cfg.ChunkSize)
			for c := range found {
				lo, hi := c*cfg.ChunkSize, min((c+1)*cfg.ChunkSize, len(keys))
				g.Go(func() error {
					items, err := mc.GetMulti(keys[lo:hi])
					found[c] = len(items)
					return err
				})
			}
			err := g.Wait()
			n := 0
			for _, f := range found {
				n += f
			}
			return n, err
		}
		n, err := getAll()
		require.NoError(b, err)
		require.Equal(b, len(keys), n, "every key is a hit, so the baseline reads what the data plane reads")
		b.ReportAllocs()
		cpu := startCPU(b)
		for b.Loop() {
			if _, err := getAll(); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b)
	})
}

// BenchmarkGetPostRecords measures DefaultConfig on the postmortem's
// largest batch, all hits and all misses (the cache emptied before each
// iteration). Run it beside its baseline, BenchmarkRawGetMulti, which is
// declared first so that it runs right before the hits:
//
//	go test -run '^$' -bench . -benchtime 20x ./dataplane/
//
// The goal is hits within 1.5x of the raw baseline: the data plane's own
// work (validation, keys, decoding, metrics) must not dominate memcached's.
func BenchmarkGetPostRecords(b *testing.B) {
	env := seededEnv(b)
	uris := fixtures.PostURIs(postsBench, benchBatch)

	b.Run(fmt.Sprintf("hits-%d", benchBatch), func(b *testing.B) {
		dp := newDataPlane(b, benchConfig())
		warmBench(b, newDataPlane(b, slowStoreConfig()), uris)
		b.ReportAllocs()
		cpu := startCPU(b)
		for b.Loop() {
			if _, err := dp.GetPostRecords(b.Context(), "bench", uris); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b)
		s := snapshot(b, dp)
		require.InDelta(b, s.Sum("lookups_total", "client", "bench"), s.Sum("lookups_total", "client", "bench", "source", "cache"), 0, "all hits")
	})

	b.Run(fmt.Sprintf("misses-%d", benchBatch), func(b *testing.B) {
		// 20,000 store reads take seconds on a busy single node: no
		// deadline, so that the figure is a duration, not a timeout.
		dp := newDataPlane(b, slowStoreConfig())
		mc := memcache.New(env.MemcachedAddrs...)
		b.Cleanup(func() { _ = mc.Close() })
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			require.NoError(b, mc.FlushAll(), "empty the cache")
			b.StartTimer()
			if _, err := dp.GetPostRecords(b.Context(), "bench", uris); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		s := snapshot(b, dp)
		require.InDelta(b, s.Sum("lookups_total", "client", "bench"), s.Sum("lookups_total", "client", "bench", "source", "store"), 0, "all misses")
	})
}

// warmBench fills the cache with uris through dp and checks they are all
// seeded.
func warmBench(b *testing.B, dp *dataplane.DataPlane, uris []string) {
	b.Helper()
	posts, err := dp.GetPostRecords(b.Context(), "warm", uris)
	require.NoError(b, err)
	for i, p := range posts {
		require.NotNil(b, p, "post %d is seeded", i)
	}
}

// cpuClock measures this process's CPU time (user and system) over a
// benchmark's loop: a figure less swayed than wall time by other processes
// on a busy machine. memcached's own work is in another process and not
// counted.
type cpuClock struct{ start time.Duration }

func startCPU(b *testing.B) cpuClock {
	b.Helper()
	return cpuClock{start: processCPU(b)}
}

// report adds cpu-ns/op to b's results.
func (c cpuClock) report(b *testing.B) {
	b.Helper()
	b.ReportMetric(float64(processCPU(b)-c.start)/float64(b.N), "cpu-ns/op")
}

func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMetrics states what one reading of the data plane's figures
// costs the sampler, once a flood has left every client's label sets in
// the registry (requests, lookups by source, batch sizes, latencies):
// Metrics (a Gather of the registry), Totals (the sampler's reading of an
// in-process data plane: atomic loads), a scrape of
// /metrics with ParseSnapshot (child-process and endpoint targets), and,
// as the baseline, the registry's Gather alone.
func BenchmarkMetrics(b *testing.B) {
	seededEnv(b)
	dp := newDataPlane(b, benchConfig())
	for _, c := range []string{"appview", "feedgen", "internal-batch", "notifications"} {
		_, err := dp.GetPostRecords(b.Context(), c, fixtures.PostURIs(postsBench, 2_000))
		require.NoError(b, err)
	}
	srv, err := dataplane.NewServer(dp)
	require.NoError(b, err)
	b.Cleanup(srv.Close)
	hc := &http.Client{}
	b.Cleanup(hc.CloseIdleConnections)

	b.Run("gather-baseline", func(b *testing.B) {
		for b.Loop() {
			if _, err := dp.Registry().Gather(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Metrics", func(b *testing.B) {
		var n int
		for b.Loop() {
			s, err := dp.Metrics()
			if err != nil {
				b.Fatal(err)
			}
			n = len(s)
		}
		b.ReportMetric(float64(n), "samples")
	})
	b.Run("Totals", func(b *testing.B) {
		var t dataplane.Totals
		for b.Loop() {
			t = dp.Totals()
		}
		if t.CacheHits == 0 {
			b.Fatal("Totals: no cache hit counted after the warm-up's batches")
		}
	})
	b.Run("scrape-and-parse", func(b *testing.B) {
		for b.Loop() {
			resp, err := hc.Get(srv.URL + dataplane.MetricsPath)
			if err != nil {
				b.Fatal(err)
			}
			_, err = dataplane.ParseSnapshot(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
