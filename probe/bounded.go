package probe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// ErrLate is what a Bounded source's Read returns when its reading did not
// come within its wait: the sample records the source's metrics as
// missing, and the Sampler counts the read late (SourceCost.Late), not
// failed.
var ErrLate = errors.New("reading not in within its wait")

// Bounded is a Source whose Read waits at most a set time for src. A read
// of src runs in a goroutine of its own; if it has not finished when the
// wait is over, Read returns ErrLate and the read goes on, and the next
// Read takes its reading once it is in (the figure a read that began one
// or more samples earlier saw) instead of starting another. So a source
// that a saturated machine slows (a metrics gather whose allocations wait
// on the GC, a scrape of a child near its OOM kill, a socket census while
// a flood churns the kernel's tables) costs a sample at most the wait: the
// sample is on time with that source's figures missing, rather than late
// with all of them.
//
// A source that is fast when the machine is not saturated never waits:
// Read then costs src's read plus a goroutine's start; a Throttle's Read
// between its reads is made in place. Stop cancels a read in progress and
// waits for it; Read and Stop are safe for concurrent use.
type Bounded struct {
	src  Source
	wait time.Duration

	mu      sync.Mutex
	pending *boundedRead // a read not yet taken, finished or not
	stopped bool
}

type boundedRead struct {
	done   chan struct{}
	cancel context.CancelFunc
	vals   []float64
	err    error
}

// sampleStartKey keys a sample's start in the context of its reads.
type sampleStartKey struct{}

// minWait is the least a Read waits, whatever is left of its sample's.
const minWait = 2 * time.Millisecond

// NewBounded returns src read with at most wait for a reading. It fails if
// src is nil or wait is not positive.
func NewBounded(src Source, wait time.Duration) (*Bounded, error) {
	if src == nil {
		return nil, errors.New("bounded source: nil source")
	}
	if wait <= 0 {
		return nil, fmt.Errorf("bounded source %s: wait %v: want more than 0", describe(src), wait)
	}
	return &Bounded{src: src, wait: wait}, nil
}

// Metrics are src's.
func (b *Bounded) Metrics() []string { return b.src.Metrics() }

// Read takes the reading of a read in progress or, with none, starts one,
// and waits for it at most b's wait (in a Sampler, from the start of the
// sample, but never less than minWait) or until ctx ends. It returns
// ErrLate, dst's columns NaN, when the reading is not in by then.
func (b *Bounded) Read(ctx context.Context, dst []float64) error {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return errors.New("bounded source: stopped")
	}
	r := b.pending
	if c, ok := b.src.(cached); ok && r == nil && c.cached() {
		// A reading src holds (a Throttle between its reads): no
		// goroutine, no wait, no chance for the scheduler to park Read.
		b.mu.Unlock()
		return b.src.Read(ctx, dst)
	}
	if r == nil {
		// The read must outlive this Read if it is late: its context
		// ends with Stop or after sourceTimeout, not with the sample's.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sourceTimeout)
		r = &boundedRead{done: make(chan struct{}), cancel: cancel, vals: make([]float64, len(dst))}
		b.pending = r
		go func() {
			defer close(r.done)
			defer cancel()
			r.err = b.src.Read(rctx, r.vals)
		}()
	}
	b.mu.Unlock()

	// In a Sampler's sample the wait runs from the sample's start, so
	// that the sample's bounded sources together wait at most b.wait.
	until := time.Now().Add(b.wait)
	if start, ok := ctx.Value(sampleStartKey{}).(time.Time); ok {
		until = start.Add(b.wait)
	}
	// At least minWait each, so that a fast source read after a slow one
	// has used the sample's wait up is not called late before its
	// goroutine could run.
	t := time.NewTimer(max(time.Until(until), minWait))
	select {
	case <-r.done:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	select {
	case <-r.done:
	default:
		for i := range dst {
			dst[i] = math.NaN()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return ErrLate
	}
	b.mu.Lock()
	if b.pending == r {
		b.pending = nil
	}
	b.mu.Unlock()
	copy(dst, r.vals)
	return r.err
}

// Stop cancels a read in progress, waits for it, and makes every later
// Read fail. Calling it again does nothing more.
func (b *Bounded) Stop() {
	b.mu.Lock()
	b.stopped = true
	r := b.pending
	b.pending = nil
	b.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}
