package probe_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// blockedThreads is how many goroutines the thread tests park in read(2):
// the shape of step 3 of the postmortem (goroutines stuck in a blocking
// syscall, one OS thread each), scaled down.
const blockedThreads = 24

// blockInRead starts n goroutines that each block an OS thread in a raw
// read(2) on a blocking pipe; with lock, each first locks its thread and
// exits still locked, which ends the thread. The returned release makes
// every read return and waits for the goroutines.
func blockInRead(tb testing.TB, n int, lock bool) (release func()) {
	tb.Helper()
	var wg sync.WaitGroup
	writers := make([]int, 0, n)
	for range n {
		var p [2]int
		require.NoError(tb, syscall.Pipe2(p[:], syscall.O_CLOEXEC))
		r, w := p[0], p[1]
		writers = append(writers, w)
		wg.Go(func() {
			if lock {
				runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			}
			var b [1]byte
			for {
				_, err := syscall.Read(r, b[:])
				if err != syscall.EINTR {
					break
				}
			}
			_ = syscall.Close(r)
		})
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			for _, w := range writers {
				_, _ = syscall.Write(w, []byte{1})
				_ = syscall.Close(w)
			}
			wg.Wait()
		})
	}
	tb.Cleanup(release)
	return release
}

// pollThreads polls probe.Threads in the test goroutine until ok accepts the
// count, and returns the last count.
func pollThreads(t *testing.T, ok func(int) bool) (int, bool) {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		n, err := probe.Threads(0)
		require.NoError(t, err)
		if ok(n) || time.Now().After(deadline) {
			return n, ok(n)
		}
		time.Sleep(time.Millisecond)
	}
}

// While n goroutines block in read(2), each holds an OS thread of its own,
// besides sysmon and the thread running the test; when locked ones return
// and exit, their threads end and the count falls. It falls by less than n:
// waking n goroutines at once makes the runtime start a few Ms (6 of 24 seen
// under -race on 2 busy cores), which then stay idle.
func TestThreadsFollowBlockedSyscalls(t *testing.T) {
	release := blockInRead(t, blockedThreads, true)
	during, ok := pollThreads(t, func(n int) bool { return n >= blockedThreads+2 })
	require.True(t, ok, "threads %d while %d block in read(2), want >= %d", during, blockedThreads, blockedThreads+2)
	time.Sleep(50 * time.Millisecond) // let the runtime start any spare M it wants
	during, err := probe.Threads(0)
	require.NoError(t, err)

	release()
	after, ok := pollThreads(t, func(n int) bool { return n <= during-blockedThreads/2 })
	assert.True(t, ok, "threads %d while blocked, %d after %d locked threads ended, want <= %d",
		during, after, blockedThreads, during-blockedThreads/2)
}

// The postmortem's shape: goroutines blocked in write(2)-like syscalls
// without locking their threads. The runtime starts Ms to replace the blocked
// ones and keeps them idle afterwards, so the thread count's high-water mark
// stays after the syscalls return.
func TestThreadsStayAfterUnlockedSyscalls(t *testing.T) {
	release := blockInRead(t, blockedThreads, false)
	during, ok := pollThreads(t, func(n int) bool { return n >= blockedThreads+2 })
	require.True(t, ok, "threads %d while %d block in read(2), want >= %d", during, blockedThreads, blockedThreads+2)

	busy, err := probe.ThreadsBusy(0)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, busy, blockedThreads, "every thread blocked in read(2) is busy")

	release()
	time.Sleep(50 * time.Millisecond)
	after, err := probe.Threads(0)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, after, blockedThreads+2, "idle Ms are kept")
	// Once they return, the kept threads park in futex(2) and are no longer
	// busy: what makes a run's busy threads its own.
	idle := pollBusy(t, func(n int) bool { return n < blockedThreads/2 })
	assert.Less(t, idle, blockedThreads/2, "busy threads after the reads returned (live: %d)", after)
}

// pollBusy reads ThreadsBusy until ok accepts it or settleTimeout passes,
// and returns the last reading.
func pollBusy(t *testing.T, ok func(int) bool) int {
	t.Helper()
	var n int
	for deadline := time.Now().Add(settleTimeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var err error
		n, err = probe.ThreadsBusy(0)
		require.NoError(t, err)
		if ok(n) {
			break
		}
	}
	return n
}

// Goroutine and fd counts follow known changes exactly.
func TestGoroutinesAndFDsFollowChanges(t *testing.T) {
	const extra = 25
	var rr probe.RuntimeReader
	g0 := settledGoroutines(t, &rr)
	st0, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range extra {
		wg.Go(func() { <-stop })
	}
	files := make([]*os.File, 0, extra)
	t.Cleanup(func() {
		for _, f := range files {
			_ = f.Close()
		}
	})
	for range extra {
		f, err := os.Open(os.DevNull)
		require.NoError(t, err)
		files = append(files, f)
	}

	assert.Equal(t, g0+extra, rr.Read().Goroutines)
	st1, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)
	assert.Equal(t, st0.FDs+extra, st1.FDs)

	close(stop)
	wg.Wait()
	for _, f := range files {
		require.NoError(t, f.Close())
	}
	files = nil
	// A goroutine outlives its wg.Done by a moment: poll.
	g2 := rr.Read().Goroutines
	for deadline := time.Now().Add(settleTimeout); g2 != g0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		g2 = rr.Read().Goroutines
	}
	assert.Equal(t, g0, g2)
	st2, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)
	assert.Equal(t, st0.FDs, st2.FDs)
}

// settledGoroutines waits until the goroutine count holds still for a few
// milliseconds (goroutines of earlier tests outlive their wg.Done by a
// moment) and returns it.
func settledGoroutines(t *testing.T, rr *probe.RuntimeReader) int {
	t.Helper()
	const still = 10 * time.Millisecond
	last, since := rr.Read().Goroutines, time.Now()
	for deadline := time.Now().Add(settleTimeout); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		n := rr.Read().Goroutines
		if n != last {
			last, since = n, time.Now()
			continue
		}
		if time.Since(since) >= still {
			return n
		}
	}
	t.Fatalf("goroutine count never held still for %s", still)
	return 0
}

// Heap and RSS follow a live allocation; GC pauses and cycles are counted
// over the interval between reads only.
func TestRuntimeFiguresFollowAllocationAndGC(t *testing.T) {
	const size = 64 << 20
	var rr probe.RuntimeReader
	debug.FreeOSMemory() // so the ballast needs fresh pages, which RSS shows
	base := rr.Read()
	st0, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)

	ballast := make([]byte, size)
	for i := 0; i < len(ballast); i += os.Getpagesize() {
		ballast[i] = 1
	}
	grown := rr.Read()
	st1, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)
	// Sweeping may free some of base's dead objects meanwhile: allow 1/16.
	assert.GreaterOrEqual(t, grown.HeapBytes, base.HeapBytes+size-size/16)
	assert.GreaterOrEqual(t, st1.RSSBytes, st0.RSSBytes+size*3/4, "rss %d -> %d", st0.RSSBytes, st1.RSSBytes)

	runtime.GC()
	runtime.GC()
	afterGC := rr.Read()
	// Two forced cycles, and maybe one the allocation triggered.
	assert.GreaterOrEqual(t, afterGC.GCCycles, base.GCCycles+2)
	// Each cycle stops the world twice (sweep termination, mark termination).
	assert.GreaterOrEqual(t, afterGC.GCPauses.Count, uint64(4))
	assert.Positive(t, afterGC.GCPauses.Max)
	assert.LessOrEqual(t, afterGC.GCPauses.P50, afterGC.GCPauses.P99)
	assert.LessOrEqual(t, afterGC.GCPauses.P99, afterGC.GCPauses.Max)
	assert.Positive(t, afterGC.GCCPUFraction)
	assert.LessOrEqual(t, afterGC.GCCPUFraction, 1.0)

	quiet := rr.Read()
	assert.Zero(t, quiet.GCPauses.Count, "no pause since the previous read")
	assert.Zero(t, quiet.GCCPUFraction, "no cycle ended since the previous read")
	runtime.KeepAlive(ballast)
}

func TestReadProcessOfAnotherPID(t *testing.T) {
	st, err := probe.ReadProcess(t.Context(), 1)
	require.NoError(t, err)
	assert.Positive(t, st.Threads)
	assert.Positive(t, st.RSSBytes)
	// Whether this process may read init's system calls depends on the
	// machine (yama, capabilities): unknown reads -1, never an error.
	assert.GreaterOrEqual(t, st.ThreadsBusy, -1)

	// Its own child it may: one thread, blocked in a sleep.
	child := exec.Command("sleep", "30")
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	var cst probe.ProcessStats
	for deadline := time.Now().Add(settleTimeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		cst, err = probe.ReadProcess(t.Context(), child.Process.Pid)
		require.NoError(t, err)
		if cst.ThreadsBusy == 1 {
			break
		}
	}
	assert.Equal(t, 1, cst.Threads)
	assert.Equal(t, 1, cst.ThreadsBusy, "a child's one thread, blocked in nanosleep(2), is busy")

	_, err = probe.ReadProcess(t.Context(), 1<<30)
	require.Error(t, err)
}

// openDevNull opens n descriptors on /dev/null, closed when tb ends.
func openDevNull(tb testing.TB, n int) {
	tb.Helper()
	files := make([]*os.File, 0, n)
	tb.Cleanup(func() {
		for _, f := range files {
			_ = f.Close()
		}
	})
	for range n {
		f, err := os.Open(os.DevNull)
		require.NoError(tb, err)
		files = append(files, f)
	}
}

// FDs counts exactly what gopsutil's listing counts, for this process
// with a few thousand descriptors more and for a child.
func TestFDsAgreesWithAListing(t *testing.T) {
	before, err := probe.FDs(0)
	require.NoError(t, err)
	openDevNull(t, 3000)
	after, err := probe.FDs(0)
	require.NoError(t, err)
	assert.Equal(t, before+3000, after)
	st, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)
	assert.Equal(t, after, st.FDs, "ReadProcess counts the same")
	listed, err := probe.FDsByListing("/proc/self/fd", true)
	require.NoError(t, err)
	assert.Equal(t, after, listed, "the fallback for kernels before 6.2 counts the same")

	child := exec.Command("sleep", "30")
	require.NoError(t, child.Start())
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	// Until it has exec'd the child holds the pipe os/exec reports exec
	// errors on, and sleep opens its locale files as it starts: the three
	// counts agree once it sleeps.
	dir := fmt.Sprintf("/proc/%d/fd", child.Process.Pid)
	var n, names int
	require.Eventually(t, func() bool {
		var err1, err2, err3 error
		n, err1 = probe.FDs(child.Process.Pid)
		listed, err2 = probe.FDsByListing(dir, false)
		var ents []os.DirEntry
		ents, err3 = os.ReadDir(dir)
		names = len(ents)
		return err1 == nil && err2 == nil && err3 == nil && n == listed && n == names
	}, settleTimeout, time.Millisecond, "a child's descriptors: stat %d, getdents %d, names %d", n, listed, names)
	assert.Positive(t, n)
}
