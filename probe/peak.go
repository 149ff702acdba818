package probe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
)

// MetricGoroutinesPeak is the highest goroutine count polled between two
// samples (NewGoroutinesPeak): the high-water mark of bursts that the plain
// MetricGoroutines, read once a sample, falls between.
const MetricGoroutinesPeak = "goroutines_peak"

// Peak is a Source of one metric: the highest value of a reading polled at a
// short interval in a goroutine of its own. Each Read reports the highest
// value polled since the previous Read, the reading it takes itself
// included, and starts the next window empty. A Sampler reading
// a Peak every 100 ms thus records bursts that begin and end between two of
// its samples, which a plain Func of the same reading misses.
//
// Lifecycle: NewPeak, Start, then Stop, which ends the polling and waits for
// its goroutine; Stop is idempotent and may be called before Start. A Peak
// polls once: Start after Start or Stop fails. Read works in any state: not
// polling, it reports the reading at the Read and what was polled before.
//
// A poll that fails is not lost: the next Read returns an error saying how
// many polls failed since the previous Read and the first one's error (a
// Sampler then records the metric as missing for that sample), and keeps
// the window's peak for the Read after.
//
// Cost: one call of the reading per interval plus the goroutine's timer
// wake-up, and one more call per Read. Choose a reading that costs little
// beside the interval (runtime.NumGoroutine, an atomic counter);
// BenchmarkPeak states what polling runtime.NumGoroutine costs. Start,
// Stop and Read are safe for concurrent use.
type Peak struct {
	name     string
	interval time.Duration
	read     func(context.Context) (float64, error)

	mu       sync.Mutex
	started  bool
	stopped  bool
	cancel   context.CancelFunc
	done     chan struct{}
	peak     float64 // highest value polled in the window
	seen     bool    // peak holds a value
	failed   int     // polls failed since the previous Read
	firstErr error   // the first of them
}

// NewPeak returns a Peak of metric name polling read every interval once
// started. read gets a context that ends when the Peak stops (or, in Read,
// the Read's context); it must return promptly, and a NaN counts as a
// failed reading. NewPeak fails if name is empty, interval is not positive
// or read is nil.
func NewPeak(name string, interval time.Duration, read func(context.Context) (float64, error)) (*Peak, error) {
	switch {
	case name == "":
		return nil, errors.New("new peak: empty metric name")
	case interval <= 0:
		return nil, fmt.Errorf("new peak %s: interval %s is not positive", name, interval)
	case read == nil:
		return nil, fmt.Errorf("new peak %s: nil read", name)
	}
	return &Peak{name: name, interval: interval, read: read}, nil
}

// NewGoroutinesPeak returns a Peak of MetricGoroutinesPeak polling
// runtime.NumGoroutine every interval. runtime.NumGoroutine takes no lock
// and costs in proportion to GOMAXPROCS, not to the goroutines counted.
func NewGoroutinesPeak(interval time.Duration) (*Peak, error) {
	return NewPeak(MetricGoroutinesPeak, interval, func(context.Context) (float64, error) {
		return float64(runtime.NumGoroutine()), nil
	})
}

// Start polls at once, then every interval, in a goroutine of its own until
// Stop is called or ctx ends. It fails if the Peak was started or stopped
// before.
func (p *Peak) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.stopped:
		return fmt.Errorf("start peak %s: stopped", p.name)
	case p.started:
		return fmt.Errorf("start peak %s: already started", p.name)
	}
	ctx, p.cancel = context.WithCancel(ctx)
	p.done = make(chan struct{})
	p.started = true
	go p.poll(ctx, p.done)
	return nil
}

// Stop ends the polling and returns once its goroutine has; it blocks for
// at most one reading in progress. Calling Stop again, or before Start,
// does nothing more.
func (p *Peak) Stop() {
	p.mu.Lock()
	p.stopped = true
	if !p.started {
		p.mu.Unlock()
		return
	}
	p.cancel()
	done := p.done
	p.mu.Unlock()
	<-done
}

func (p *Peak) poll(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		v, err := p.read(ctx)
		if ctx.Err() != nil {
			return // a reading cut short by Stop is no failure
		}
		p.record(v, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Peak) record(v float64, err error) {
	if err == nil && math.IsNaN(v) {
		err = errors.New("reading is NaN")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if p.failed == 0 {
			p.firstErr = err
		}
		p.failed++
		return
	}
	if !p.seen || v > p.peak {
		p.peak, p.seen = v, true
	}
}

// Metrics names the Peak's one metric.
func (p *Peak) Metrics() []string { return []string{p.name} }

// Read stores the highest value polled since the previous Read and the
// reading it takes now, and starts the next window empty. It fails, keeping
// the window open, if that reading fails or a poll failed since the
// previous Read.
func (p *Peak) Read(ctx context.Context, dst []float64) error {
	now, err := p.read(ctx)
	if err == nil && math.IsNaN(now) {
		err = errors.New("reading is NaN")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.failed > 0 {
		errs = append(errs, fmt.Errorf("%d poll(s) failed since the previous read, first: %w", p.failed, p.firstErr))
		p.failed, p.firstErr = 0, nil
	}
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		if err == nil && (!p.seen || now > p.peak) {
			p.peak, p.seen = now, true // the reading joins the open window
		}
		return errors.Join(errs...)
	}
	v := now
	if p.seen {
		v = max(p.peak, now)
	}
	dst[0] = v
	p.peak, p.seen = 0, false
	return nil
}
