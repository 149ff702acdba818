package faults_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/probe"
)

// sinkWriters is how many writers the sink tests block (beyond the threads
// the process has, in direct mode): enough that the thread growth stands
// out.
const sinkWriters = 50

// sinkThreadsCap bounds the writers a sink test adds for threads the
// process already has.
const sinkThreadsCap = 200

// sinkLine is one log line, about the size of the postmortem's error line.
var sinkLine = append(bytes.Repeat([]byte("x"), 255), '\n')

// sinkWait bounds every wait of the sink tests.
const sinkWait = 10 * time.Second

// newSink returns a sink closed when t ends.
func newSink(tb testing.TB, cfg faults.SinkConfig) *faults.Sink {
	tb.Helper()
	s, err := faults.NewSink(cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, s.Close()) })
	return s
}

// fillPipe writes exactly the pipe's capacity, which completes without
// blocking on a pipe nobody drains.
func fillPipe(tb testing.TB, s *faults.Sink) {
	tb.Helper()
	n, err := s.Write(make([]byte, s.PipeBytes()))
	require.NoError(tb, err)
	require.Equal(tb, s.PipeBytes(), n)
}

// blockedWriters starts n writers of one line each on a stalled, full sink
// and waits until all n are in Write. Their errors come back from the
// returned group, which t's cleanup waits for after the sink is closed.
func blockedWriters(tb testing.TB, s *faults.Sink, n int) *errgroup.Group {
	tb.Helper()
	var g errgroup.Group
	tb.Cleanup(func() {
		_ = s.Close() // releases the writers if the test stopped early
		_ = g.Wait()
	})
	for range n {
		g.Go(func() error {
			_, err := s.Write(sinkLine)
			return err
		})
	}
	require.EventuallyWithT(tb, func(c *assert.CollectT) {
		assert.Equal(c, int64(n), s.Stats().InFlight, "stats %+v", s.Stats())
	}, sinkWait, 10*time.Millisecond, "all %d writers inside Write", n)
	return &g
}

// threads returns this process's live OS thread count.
func threads(tb testing.TB) int {
	tb.Helper()
	n, err := probe.Threads(0)
	require.NoError(tb, err)
	return n
}

// TestSinkStallBlocksWritersOneThreadEach: writers that don't share a lock
// each hold an OS thread while the sink is stalled.
func TestSinkStallBlocksWritersOneThreadEach(t *testing.T) {
	noLeaks(t)
	s := newSink(t, faults.SinkConfig{Stall: true, PipeBytes: 4096, Mode: faults.SinkDirect})
	ctx := t.Context()
	require.NoError(t, s.Inject(ctx))
	require.ErrorIs(t, s.Inject(ctx), faults.ErrInjected)
	fillPipe(t, s)
	before := threads(t)
	// The runtime keeps the threads it started earlier (by earlier tests
	// too) and lends idle ones to blocked writers first; with more writers
	// than threads, at least sinkWriters of them need a new thread. Past
	// sinkThreadsCap threads (reruns with -count) growth is not checked.
	writers := sinkWriters + min(before, sinkThreadsCap)

	g := blockedWriters(t, s, writers)
	var inWrite int
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := s.ThreadsInWrite()
		require.NoError(c, err)
		inWrite = n
		assert.Equal(c, writers, n)
	}, sinkWait, 10*time.Millisecond, "every writer blocked in write(2) on its own thread")
	during := threads(t)
	time.Sleep(200 * time.Millisecond) // the stall holds: nothing completes
	st := s.Stats()
	assert.Equal(t, int64(1), st.Writes, "only the write that filled the pipe completed")
	assert.Equal(t, int64(writers), st.InFlight)
	t.Logf("direct mode, %d writers blocked: threads %d -> %d (+%d), %d in write(2) on the pipe",
		writers, before, during, during-before, inWrite)
	if before <= sinkThreadsCap {
		assert.GreaterOrEqual(t, during, before+sinkWriters*4/5, "OS threads grow with blocked writers")
	}
	assert.Greater(t, during, writers, "one thread per blocked writer, and more to run Go code")

	require.NoError(t, s.Recover(ctx))
	require.NoError(t, g.Wait(), "every write completes after Recover")
	require.NoError(t, s.Recover(ctx), "Recover is idempotent")
	st = s.Stats()
	assert.Equal(t, int64(writers+1), st.Writes)
	assert.Zero(t, st.InFlight, "nothing blocked after Recover")
	require.Eventually(t, func() bool { return s.Stats().BytesDrained == s.Stats().BytesWritten },
		sinkWait, 10*time.Millisecond, "the drain catches up")
	n, err := s.ThreadsInWrite()
	require.NoError(t, err)
	assert.Zero(t, n)
	t.Logf("after Recover: threads %d (the runtime keeps idle threads)", threads(t))
}

// TestSinkStallFileModeSerialisesWriters: through one *os.File, Go's file
// lock lets one writer into write(2); the others wait as goroutines.
func TestSinkStallFileModeSerialisesWriters(t *testing.T) {
	noLeaks(t)
	s := newSink(t, faults.SinkConfig{Stall: true, PipeBytes: 4096, Mode: faults.SinkFile})
	ctx := t.Context()
	require.NoError(t, s.Inject(ctx))
	fillPipe(t, s)
	before := threads(t)

	g := blockedWriters(t, s, sinkWriters)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := s.ThreadsInWrite()
		require.NoError(c, err)
		assert.Equal(c, 1, n)
	}, sinkWait, 10*time.Millisecond, "one writer in write(2)")
	time.Sleep(200 * time.Millisecond)
	inWrite, err := s.ThreadsInWrite()
	require.NoError(t, err)
	during := threads(t)
	st := s.Stats()
	t.Logf("file mode, %d writers blocked: threads %d -> %d (+%d), %d in write(2) on the pipe",
		sinkWriters, before, during, during-before, inWrite)
	assert.Equal(t, 1, inWrite, "the file's lock lets one writer into the kernel")
	assert.Equal(t, int64(1), st.Writes, "only the write that filled the pipe completed")
	assert.Equal(t, int64(sinkWriters), st.InFlight)
	assert.Less(t, during-before, sinkWriters/2, "waiting for the lock costs no thread")

	require.NoError(t, s.Recover(ctx))
	require.NoError(t, g.Wait())
	assert.Equal(t, int64(sinkWriters+1), s.Stats().Writes)
	assert.Zero(t, s.Stats().InFlight)
}

// TestSinkDrainRateThrottlesWriters: a throttled sink lets writers through
// at about its drain rate, and freely after Recover.
func TestSinkDrainRateThrottlesWriters(t *testing.T) {
	noLeaks(t)
	const rate = 64 << 10 // B/s
	s := newSink(t, faults.SinkConfig{DrainBytesPerSec: rate, PipeBytes: 4096})
	require.Equal(t, "sink drain 65536 B/s", s.Name())
	ctx := t.Context()
	require.NoError(t, s.Inject(ctx))

	// 32 KiB through a 4 KiB pipe at 64 KiB/s: at least (32-4)/64 s.
	const total = 32 << 10
	line := make([]byte, 1024)
	began := time.Now()
	for range total / len(line) {
		_, err := s.Write(line)
		require.NoError(t, err)
	}
	throttled := time.Since(began)
	t.Logf("%d KiB at %d KiB/s through a %d B pipe: %v", total>>10, rate>>10, s.PipeBytes(), throttled.Round(time.Millisecond))
	assert.GreaterOrEqual(t, throttled, time.Duration(float64(total-s.PipeBytes())/rate*float64(time.Second))*4/5,
		"writers wait for the drain")

	require.NoError(t, s.Recover(ctx))
	began = time.Now()
	for range 10 * total / len(line) {
		_, err := s.Write(line)
		require.NoError(t, err)
	}
	free := time.Since(began)
	t.Logf("after Recover, %d KiB: %v", 10*total>>10, free.Round(time.Millisecond))
	assert.Less(t, free, throttled, "after Recover ten times the bytes pass sooner")
}

// TestSinkCloseReleasesBlockedWriters: Close lets blocked writers finish,
// refuses later writes and leaves no descriptor or goroutine.
func TestSinkCloseReleasesBlockedWriters(t *testing.T) {
	noLeaks(t)
	fds := openFDs(t)
	for _, mode := range []faults.SinkMode{faults.SinkDirect, faults.SinkFile} {
		s, err := faults.NewSink(faults.SinkConfig{Stall: true, PipeBytes: 4096, Mode: mode})
		require.NoError(t, err)
		require.NoError(t, s.Inject(t.Context()))
		fillPipe(t, s)
		g := blockedWriters(t, s, 8)

		require.NoError(t, s.Close(), "mode %v", mode)
		require.NoError(t, g.Wait(), "mode %v: blocked writes complete on Close", mode)
		require.NoError(t, s.Close(), "Close twice")
		_, err = s.Write(sinkLine)
		require.ErrorIs(t, err, os.ErrClosed)
		require.ErrorIs(t, s.Inject(context.Background()), os.ErrClosed)
		assert.Zero(t, s.Stats().InFlight)
	}
	assert.Equal(t, fds, openFDs(t), "no descriptor left")
}

func TestSinkRejectsBadConfig(t *testing.T) {
	for _, cfg := range []faults.SinkConfig{
		{},                     // neither a rate nor a stall
		{DrainBytesPerSec: -1}, // negative rate
		{Stall: true, Mode: 7}, // unknown mode
		{Stall: true, PipeBytes: -1},
		{Stall: true, PipeBytes: 1 << 30}, // past pipe-max-size
	} {
		s, err := faults.NewSink(cfg)
		if err == nil {
			_ = s.Close()
		}
		require.Error(t, err, "%+v", cfg)
	}
}

// openFDs counts this process's open descriptors.
func openFDs(tb testing.TB) int {
	tb.Helper()
	st, err := probe.ReadProcess(tb.Context(), 0)
	require.NoError(tb, err)
	return st.FDs
}

// TestSinkWriteEndBlocksAChildsStderr: a child whose stderr is the sink's
// write end blocks in write(2) on fd 2 while the sink stalls, which
// ThreadsInWriteOf sees in the child's /proc and Buffered in the pipe;
// Recover lets it finish.
func TestSinkWriteEndBlocksAChildsStderr(t *testing.T) {
	noLeaks(t)
	s := newSink(t, faults.SinkConfig{Stall: true, PipeBytes: 4096, Mode: faults.SinkDirect})
	ctx := t.Context()
	require.NoError(t, s.Inject(ctx))
	w, err := s.WriteEnd()
	require.NoError(t, err)
	const total = 64 << 10 // sixteen times the pipe
	cmd := exec.CommandContext(ctx, "head", "-c", strconv.Itoa(total), "/dev/zero")
	cmd.Stdout = w // head writes to stdout; fd 1 here
	require.NoError(t, cmd.Start())
	require.NoError(t, w.Close(), "the child has its copy")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := faults.ThreadsInWriteOf(cmd.Process.Pid, 1)
		require.NoError(c, err)
		assert.Equal(c, 1, n, "the child blocked in write(2) on the pipe")
	}, sinkWait, 10*time.Millisecond)
	b, err := s.Buffered()
	require.NoError(t, err)
	assert.Equal(t, s.PipeBytes(), b, "the pipe is full")
	assert.Zero(t, s.Stats().InFlight, "the child's writes are not this process's")
	n, err := faults.ThreadsInWriteOf(cmd.Process.Pid, 2)
	require.NoError(t, err)
	assert.Zero(t, n, "no thread writes to another descriptor")

	require.NoError(t, s.Recover(ctx))
	select {
	case err := <-done:
		require.NoError(t, err, "the child finishes once the sink drains")
	case <-time.After(sinkWait):
		_ = cmd.Process.Kill()
		t.Fatalf("the child still blocked after Recover (killed: %v)", <-done)
	}
	require.Eventually(t, func() bool { return s.Stats().BytesDrained == total }, sinkWait, 10*time.Millisecond, "every byte the child wrote is drained")
	b, err = s.Buffered()
	require.NoError(t, err)
	assert.Zero(t, b)

	_, err = faults.ThreadsInWriteOf(0, 2)
	require.Error(t, err)
}

// TestSinkTeeSeesWhatIsDrained: Tee gets every byte written, in order,
// as the drain reads it, freely and throttled alike.
func TestSinkTeeSeesWhatIsDrained(t *testing.T) {
	noLeaks(t)
	var mu sync.Mutex
	var got bytes.Buffer
	tee := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return got.Write(p)
	})
	s := newSink(t, faults.SinkConfig{DrainBytesPerSec: 256 << 10, PipeBytes: 4096, Tee: tee})
	var want bytes.Buffer
	write := func(from, to int) {
		for i := from; i < to; i++ {
			line := fmt.Appendf(nil, "line %d %s\n", i, strings.Repeat("x", i%200))
			want.Write(line)
			_, err := s.Write(line)
			require.NoError(t, err)
		}
	}
	write(0, 500)
	require.NoError(t, s.Inject(t.Context()))
	write(500, 1000) // throttled
	require.NoError(t, s.Recover(t.Context()))
	write(1000, 1500)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got.Len() == want.Len()
	}, 10*time.Second, 10*time.Millisecond, "the drain reads every byte written")
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, want.String(), got.String())
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
