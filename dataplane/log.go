package dataplane

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// logShared is the state every handler derived from one data plane shares.
type logShared struct {
	sink    io.Writer
	limit   *limiter // nil: write every line
	m       *metrics
	dropped atomic.Int64 // lines dropped since the last one written
}

// logHandler is a slog.Handler writing JSON lines to the sink with one
// Write call per line and no lock held around it (see Config.LogSink).
// Lines are formatted into pooled buffers by pooled slog.JSONHandlers.
type logHandler struct {
	shared  *logShared
	limited bool                              // apply shared.limit
	derive  []func(slog.Handler) slog.Handler // WithAttrs/WithGroup, in order
	pool    *sync.Pool                        // of *logBuffer built with derive
}

type logBuffer struct {
	buf bytes.Buffer
	h   slog.Handler
}

func newLogHandler(shared *logShared, limited bool, derive []func(slog.Handler) slog.Handler) *logHandler {
	h := &logHandler{shared: shared, limited: limited, derive: derive}
	h.pool = &sync.Pool{New: func() any {
		lb := &logBuffer{}
		var inner slog.Handler = slog.NewJSONHandler(&lb.buf, nil)
		for _, d := range derive {
			inner = d(inner)
		}
		lb.h = inner
		return lb
	}}
	return h
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	s := h.shared
	if h.limited && s.limit != nil && !s.limit.allow() {
		s.dropped.Add(1)
		s.m.logDropped.WithLabelValues("rate_limit").Inc()
		s.m.tot.logDropped.Add(1)
		return nil
	}
	if s.sink == nil {
		s.m.logWritten.Inc()
		s.m.tot.logWritten.Add(1)
		return nil
	}
	if n := s.dropped.Swap(0); n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int64("dropped_since_last", n))
	}
	lb := h.pool.Get().(*logBuffer)
	defer h.pool.Put(lb)
	lb.buf.Reset()
	if err := lb.h.Handle(ctx, r); err != nil {
		s.m.logDropped.WithLabelValues("write_error").Inc()
		s.m.tot.logDropped.Add(1)
		return err
	}
	if _, err := s.sink.Write(lb.buf.Bytes()); err != nil {
		s.m.logDropped.WithLabelValues("write_error").Inc()
		s.m.tot.logDropped.Add(1)
		return err
	}
	s.m.logWritten.Inc()
	s.m.tot.logWritten.Add(1)
	return nil
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	d := append(h.derive[:len(h.derive):len(h.derive)], func(in slog.Handler) slog.Handler { return in.WithAttrs(attrs) })
	return newLogHandler(h.shared, h.limited, d)
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	d := append(h.derive[:len(h.derive):len(h.derive)], func(in slog.Handler) slog.Handler { return in.WithGroup(name) })
	return newLogHandler(h.shared, h.limited, d)
}

// limiter is a token bucket: perSecond tokens a second, holding at most
// perSecond+burst.
type limiter struct {
	mu     sync.Mutex
	rate   float64
	max    float64
	tokens float64
	last   time.Time
}

func newLimiter(perSecond, burst int) *limiter {
	max := float64(perSecond + burst)
	return &limiter{rate: float64(perSecond), max: max, tokens: max, last: time.Now()}
}

func (l *limiter) allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.tokens = min(l.max, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// FDWriter returns a writer that makes each Write its own write(2) calls on
// the raw descriptor fd, with no lock (an *os.File would serialise writers
// on its own): writers each make their own system call, as they do with
// many loggers each owning a handle, so while fd is a full pipe in
// blocking mode every writer blocks an OS thread of its own, as the
// postmortem's did. A pipe writes a line of up to 4 KiB (PIPE_BUF) whole,
// so lines do not interleave. Errors are *os.PathError naming fd.
func FDWriter(fd int) io.Writer { return fdWriter(fd) }

type fdWriter int

func (fd fdWriter) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		n, err := unix.Write(int(fd), p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n > 0 {
			total += n
			p = p[n:]
		}
		if err != nil {
			return total, &os.PathError{Op: "write", Path: "fd " + strconv.Itoa(int(fd)), Err: err}
		}
	}
	return total, nil
}

// SyncWriter returns a writer that serialises Write calls to w with a
// mutex, for sinks not safe for concurrent use (a bytes.Buffer in a test).
// Writers queue on the mutex as parked goroutines, not blocked threads.
func SyncWriter(w io.Writer) io.Writer { return &syncWriter{w: w} }

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

const slogError = slog.LevelError

func attrStr(key, value string) slog.Attr { return slog.String(key, value) }
func attrErr(err error) slog.Attr         { return slog.String("error", err.Error()) }
