package probe_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	psnet "github.com/shirou/gopsutil/v4/net"
	"github.com/shirou/gopsutil/v4/process"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// benchPopulationEnv sets how many TIME_WAIT sockets BenchmarkCensus creates
// toward its port; the default keeps a plain -bench run quick, the issue's
// figure is 20000.
const (
	benchPopulationEnv     = "SPIRAL_BENCH_TIMEWAIT"
	defaultBenchPopulation = 2000
)

func benchPopulation(b *testing.B) int {
	b.Helper()
	v := os.Getenv(benchPopulationEnv)
	if v == "" {
		return defaultBenchPopulation
	}
	n, err := strconv.Atoi(v)
	require.NoError(b, err, benchPopulationEnv)
	return n
}

// timeWaitPopulation leaves n TIME_WAIT sockets toward a fresh loopback port
// and returns the server. A few sockets may vanish while the population
// builds (another process's RST or connect on this busy machine); it tops
// them up until the census shows exactly n. They last 60 s
// (TCP_TIMEWAIT_LEN), so benchmarks that use them must finish within that.
func timeWaitPopulation(tb testing.TB, ctx context.Context, n int) *server {
	tb.Helper()
	requireTimeWaitRoom(tb, n)
	srv := startServer(tb, "tcp4", "127.0.0.1")
	f := probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}}
	missing := n
	for range topUpRounds {
		require.NoError(tb, srv.makeTimeWait(ctx, missing))
		time.Sleep(10 * time.Millisecond) // the last server closes reach the clients
		c, err := probe.Census{}.Count(ctx, f)
		require.NoError(tb, err)
		if missing = n - c.Total(); missing <= 0 {
			break
		}
		tb.Logf("%d of %d TIME_WAIT sockets vanished while building; topping up", missing, n)
	}
	waitCounts(tb, probe.Census{}, f, map[probe.State]int{probe.TimeWait: n})
	return srv
}

// topUpRounds bounds timeWaitPopulation's rounds of dials.
const topUpRounds = 5

// requireTimeWaitRoom skips when the namespace's TIME_WAIT table
// (net.ipv4.tcp_max_tw_buckets, shared with every other test on the machine)
// can't take n more: the kernel would close the overflow at once and the
// counts would be short.
func requireTimeWaitRoom(tb testing.TB, n int) {
	tb.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_max_tw_buckets")
	require.NoError(tb, err)
	limit, err := strconv.Atoi(string(b[:len(b)-1]))
	require.NoError(tb, err)
	c, err := probe.Census{}.Count(context.Background(), probe.Filter{States: []probe.State{probe.TimeWait}})
	require.NoError(tb, err)
	if have := c.Get(probe.TimeWait); have+n > limit {
		tb.Skipf("TIME_WAIT table holds %d of %d; no room for %d more now (retry in a minute)", have, limit, n)
	}
}

// BenchmarkCensus states what one census of the TIME_WAIT sockets toward one
// port costs in-process, beside baselines in the same run: reading the procfs
// tables raw, the procfs census, gopsutil's connection listing, and ss as a
// whole process. Run with SPIRAL_BENCH_TIMEWAIT=20000 for the figure.
func BenchmarkCensus(b *testing.B) {
	n := benchPopulation(b)
	srv := timeWaitPopulation(b, b.Context(), n)
	f := probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}}
	check := func(b *testing.B, got int) {
		b.Helper()
		if got != n {
			b.Fatalf("counted %d TIME_WAIT sockets, want %d", got, n)
		}
	}

	for _, m := range []probe.Method{probe.Netlink, probe.Procfs} {
		b.Run(m.String(), func(b *testing.B) {
			c := probe.Census{Method: m}
			var got probe.Counts
			for b.Loop() {
				var err error
				got, err = c.Count(b.Context(), f)
				if err != nil {
					b.Fatal(err)
				}
			}
			check(b, got.Get(probe.TimeWait))
			b.ReportMetric(float64(n), "sockets")
		})
	}
	b.Run("proc-net-sockstat", func(b *testing.B) {
		// The cheapest TIME_WAIT figure: the namespace's total ("tw N"),
		// every port and every process together.
		for b.Loop() {
			if _, err := os.ReadFile("/proc/net/sockstat"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read-proc-net-tcp-raw", func(b *testing.B) {
		for b.Loop() {
			for _, p := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
				if _, err := os.ReadFile(p); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("gopsutil-connections", func(b *testing.B) {
		got := 0
		for b.Loop() {
			conns, err := psnet.ConnectionsWithContext(b.Context(), "tcp")
			if err != nil {
				b.Fatal(err)
			}
			got = 0
			for _, c := range conns {
				if c.Raddr.Port == uint32(srv.port()) && c.Status == "TIME_WAIT" {
					got++
				}
			}
		}
		check(b, got)
	})
	b.Run("ss-process", func(b *testing.B) {
		ss, err := exec.LookPath("ss")
		if err != nil {
			b.Skip("no ss here")
		}
		filter := fmt.Sprintf("( dport = :%d )", srv.port())
		for b.Loop() {
			if err := exec.CommandContext(b.Context(), ss, "-Htan", "state", "time-wait", filter).Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSample states what one Sampler sample costs with the sources a
// scenario typically registers: process, runtime, and a TIME_WAIT count
// toward a port holding the benchmark population.
func BenchmarkSample(b *testing.B) {
	n := benchPopulation(b)
	srv := timeWaitPopulation(b, b.Context(), n)
	census := probe.Census{}
	for _, tc := range []struct {
		name    string
		sources []probe.Source
	}{
		{"process+runtime", []probe.Source{probe.NewProcessSource(0), probe.NewRuntimeSource()}},
		{"process+runtime+timewait", []probe.Source{probe.NewProcessSource(0), probe.NewRuntimeSource(),
			probe.NewSocketSource("timewait", census, probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}})}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := probe.NewSampler(time.Second, tc.sources...)
			require.NoError(b, err)
			for b.Loop() {
				if err := s.Sample(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFDs counts this process's open descriptors with FDs (a stat of
// /proc/self/fd, its fallback a getdents count) beside gopsutil's NumFDs
// (a listing of names), with the test binary's own few and with 11,000
// more (the incident floods' sockets).
func BenchmarkFDs(b *testing.B) {
	for _, extra := range []int{0, 11_000} {
		if extra > 0 {
			openDevNull(b, extra)
		}
		p := &process.Process{Pid: int32(os.Getpid())}
		b.Run(fmt.Sprintf("fds=+%d/baseline=gopsutil", extra), func(b *testing.B) {
			for b.Loop() {
				if _, err := p.NumFDsWithContext(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("fds=+%d/stat", extra), func(b *testing.B) {
			for b.Loop() {
				if _, err := probe.FDs(0); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("fds=+%d/getdents", extra), func(b *testing.B) {
			for b.Loop() {
				if _, err := probe.FDsByListing("/proc/self/fd", true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadProcess(b *testing.B) {
	for b.Loop() {
		if _, err := probe.ReadProcess(b.Context(), 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkThreads(b *testing.B) {
	for b.Loop() {
		if _, err := probe.Threads(0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkThreadsBusy reads every thread's system call, beside Threads'
// one status read, with the process's own few threads and with 500 more
// blocked in read(2) (an incident's log storm holds 600-1,200).
func BenchmarkThreadsBusy(b *testing.B) {
	bench := func(b *testing.B) {
		b.Helper()
		for b.Loop() {
			if _, err := probe.ThreadsBusy(0); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("baseline=Threads", func(b *testing.B) {
		for b.Loop() {
			if _, err := probe.Threads(0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("threads=own", bench)
	b.Run("threads=+500", func(b *testing.B) {
		release := blockInRead(b, 500, false)
		defer release()
		for n, err := probe.ThreadsBusy(0); n < 500; n, err = probe.ThreadsBusy(0) {
			if err != nil {
				b.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		bench(b)
	})
}

func BenchmarkRuntimeRead(b *testing.B) {
	var r probe.RuntimeReader
	for b.Loop() {
		r.Read()
	}
}

// BenchmarkGoroutineFigures states what the goroutine figures cost with
// 20,000 goroutines parked, as an incident flood leaves them (one per key
// of a batch): runtime.NumGoroutine (the Peak poller's reading), a
// RuntimeReader.Read (the sampler's runtime source), and, as the costly
// baseline, a goroutine profile's count (what counting them by label or
// state would take), which stops the world.
func BenchmarkGoroutineFigures(b *testing.B) {
	const parked = 20_000
	release := make(chan struct{})
	for range parked {
		go func() { <-release }()
	}
	defer close(release)
	b.Run("NumGoroutine", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n = runtime.NumGoroutine()
		}
		if n < parked {
			b.Fatalf("%d goroutines, want at least %d", n, parked)
		}
	})
	b.Run("RuntimeReader.Read", func(b *testing.B) {
		var r probe.RuntimeReader
		for b.Loop() {
			r.Read()
		}
	})
	b.Run("goroutine-profile", func(b *testing.B) {
		recs := make([]runtime.StackRecord, parked+1000)
		for b.Loop() {
			if _, ok := runtime.GoroutineProfile(recs); !ok {
				b.Fatal("profile buffer too small")
			}
		}
	})
}

// BenchmarkPeak states what a Peak of runtime.NumGoroutine costs. Read:
// one Peak.Read beside the plain runtime.NumGoroutine it wraps. Polling: the
// process's CPU time (getrusage, every thread) per second of wall time
// while the benchmark sleeps, idle as the baseline, then with a
// NewGoroutinesPeak polling at 5 ms (the scenario runner's) and 20 ms;
// what a poller adds is its figure less the baseline's.
func BenchmarkPeak(b *testing.B) {
	b.Run("read/NumGoroutine", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n += runtime.NumGoroutine()
		}
		_ = n
	})
	b.Run("read/Peak.Read", func(b *testing.B) {
		p, err := probe.NewGoroutinesPeak(time.Hour)
		require.NoError(b, err)
		dst := make([]float64, 1)
		for b.Loop() {
			if err := p.Read(b.Context(), dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	const window = 200 * time.Millisecond
	for _, tc := range []struct {
		name     string
		interval time.Duration // 0: no poller
	}{
		{"poll/baseline-idle", 0},
		{"poll/every-5ms", 5 * time.Millisecond},
		{"poll/every-20ms", 20 * time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.interval > 0 {
				p, err := probe.NewGoroutinesPeak(tc.interval)
				require.NoError(b, err)
				require.NoError(b, p.Start(b.Context()))
				b.Cleanup(p.Stop)
			}
			var cpu, wall time.Duration
			for b.Loop() {
				c0, w0 := cpuTime(b), time.Now()
				time.Sleep(window)
				cpu += cpuTime(b) - c0
				wall += time.Since(w0)
			}
			b.ReportMetric(float64(cpu.Microseconds())/wall.Seconds(), "cpu-µs/s")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkProcessFigures: what a sample costs this process to have its own
// threads, fds, rss and threads_busy, read in-process (the process source)
// against taken from an observer process (a copy of its newest row; the
// observer's own reads cost another process, Observer.Cost).
func BenchmarkProcessFigures(b *testing.B) {
	ctx := context.Background()
	b.Run("in-process", func(b *testing.B) {
		src := probe.NewProcessSource(0)
		defer src.(interface{ Stop() }).Stop()
		dst := make([]float64, len(src.Metrics()))
		for b.Loop() {
			if err := src.Read(ctx, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("observer", func(b *testing.B) {
		o, err := probe.StartObserver(probe.ObserverSpec{Interval: 10 * time.Millisecond})
		require.NoError(b, err)
		defer o.Stop()
		dst := make([]float64, len(o.Metrics()))
		require.Eventually(b, func() bool { return o.Read(ctx, dst) == nil }, 10*time.Second, time.Millisecond)
		for b.Loop() {
			if err := o.Read(ctx, dst); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(o.Cost().Mean().Nanoseconds()), "observer-ns/row")
	})
}
