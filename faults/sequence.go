package faults

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

var _ Fault = (*Sequence)(nil)

// Stage is one step of a Sequence: its Fault is put in At after the
// sequence's Inject, in place of the stage before it.
type Stage struct {
	// At is the offset from the sequence's Inject. The first stage's is 0;
	// each later stage's is past the one before.
	At    time.Duration
	Fault Fault
}

// Sequence is a Fault made of stages that follow each other while it is
// injected: a slow backend, then a throttled one, then one that resets
// every connection. One stage acts at a time: at each stage's offset the
// stage before is recovered, then the stage is injected.
//
// Inject puts the first stage in and returns once it is in effect; a
// goroutine of the sequence's own steps through the rest and stops at the
// last, which stays until Recover. Recover stops the stepping, waits for
// it, and recovers every stage (each stage's Recover is idempotent), so no
// stage outlives it whenever it is called; it returns every error met,
// a later stage's failed Inject among them. It is idempotent, and the
// sequence can be injected again after it.
type Sequence struct {
	name   string
	stages []Stage

	mu     sync.Mutex
	on     bool
	cancel context.CancelFunc
	done   chan struct{}
	errs   []error // what the stepping goroutine met, reported by Recover
}

// NewSequence returns the sequence of stages, named name in reports. The
// stages must be in order of At, the first at 0.
func NewSequence(name string, stages ...Stage) (*Sequence, error) {
	if len(stages) == 0 {
		return nil, fmt.Errorf("sequence %s: no stage", name)
	}
	for i, s := range stages {
		switch {
		case s.Fault == nil:
			return nil, fmt.Errorf("sequence %s: stage %d has no fault", name, i)
		case i == 0 && s.At != 0:
			return nil, fmt.Errorf("sequence %s: the first stage is at %v: want 0", name, s.At)
		case i > 0 && s.At <= stages[i-1].At:
			return nil, fmt.Errorf("sequence %s: stage %d at %v is not after stage %d at %v", name, i, s.At, i-1, stages[i-1].At)
		}
	}
	return &Sequence{name: name, stages: stages}, nil
}

// Name returns e.g. "slow store: toxic latency ... at 0s, then toxic
// bandwidth ... at 2s".
func (s *Sequence) Name() string {
	parts := make([]string, len(s.stages))
	for i, st := range s.stages {
		parts[i] = fmt.Sprintf("%s at %v", st.Fault.Name(), st.At)
	}
	return s.name + ": " + strings.Join(parts, ", then ")
}

// Inject puts the first stage in and starts stepping through the others.
func (s *Sequence) Inject(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.on {
		return ErrInjected
	}
	start := time.Now()
	if err := s.stages[0].Fault.Inject(ctx); err != nil {
		return errors.Join(fmt.Errorf("inject %s: %w", s.name, err), s.stages[0].Fault.Recover(context.WithoutCancel(ctx)))
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.on, s.cancel, s.done, s.errs = true, cancel, make(chan struct{}), nil
	go s.step(sctx, start, s.done)
	return nil
}

// step injects each stage after the first at its offset from start, the
// one before recovered first, until ctx ends.
func (s *Sequence) step(ctx context.Context, start time.Time, done chan<- struct{}) {
	defer close(done)
	for i := 1; i < len(s.stages); i++ {
		t := time.NewTimer(time.Until(start.Add(s.stages[i].At)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		prev, next := s.stages[i-1].Fault, s.stages[i].Fault
		if err := prev.Recover(ctx); err != nil {
			s.fail(fmt.Errorf("%s: recover %s: %w", s.name, prev.Name(), err))
			return
		}
		if err := next.Inject(ctx); err != nil {
			s.fail(fmt.Errorf("%s: inject %s at %v: %w", s.name, next.Name(), s.stages[i].At, err))
			return
		}
	}
}

func (s *Sequence) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err)
}

// Recover stops the stepping and recovers every stage, last first.
func (s *Sequence) Recover(ctx context.Context) error {
	s.mu.Lock()
	if !s.on {
		s.mu.Unlock()
		return nil
	}
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	cancel()
	<-done // the stepping takes s.mu to record a failure
	s.mu.Lock()
	defer s.mu.Unlock()
	errs := s.errs
	for i := len(s.stages) - 1; i >= 0; i-- {
		if err := s.stages[i].Fault.Recover(ctx); err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", s.stages[i].Fault.Name(), err))
		}
	}
	if len(errs) > len(s.errs) {
		// A stage still in: Recover may be called again.
		s.errs = nil
		return errors.Join(errs...)
	}
	s.on, s.errs = false, nil
	return errors.Join(errs...)
}
