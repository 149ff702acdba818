package faults_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
)

// recorder is a fault that records its Inject and Recover calls in a shared
// log, in order.
type recorder struct {
	name      string
	log       *eventLog
	on        bool
	injectErr error
}

type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

func (r *recorder) Name() string { return r.name }

func (r *recorder) Inject(context.Context) error {
	if r.injectErr != nil {
		return r.injectErr
	}
	r.on = true
	r.log.add("+" + r.name)
	return nil
}

func (r *recorder) Recover(context.Context) error {
	if r.on {
		r.on = false
		r.log.add("-" + r.name)
	}
	return nil
}

func TestSequenceSteps(t *testing.T) {
	noLeaks(t)
	log := &eventLog{}
	a, b, c := &recorder{name: "a", log: log}, &recorder{name: "b", log: log}, &recorder{name: "c", log: log}
	s, err := faults.NewSequence("s", faults.Stage{Fault: a}, faults.Stage{At: 20 * time.Millisecond, Fault: b}, faults.Stage{At: 40 * time.Millisecond, Fault: c})
	require.NoError(t, err)
	assert.Equal(t, "s: a at 0s, then b at 20ms, then c at 40ms", s.Name())
	require.NoError(t, s.Recover(t.Context()), "Recover before Inject is a no-op")

	require.NoError(t, s.Inject(t.Context()))
	assert.Equal(t, []string{"+a"}, log.get(), "Inject returns with the first stage in")
	require.ErrorIs(t, s.Inject(t.Context()), faults.ErrInjected)
	require.Eventually(t, func() bool { return len(log.get()) == 5 }, 2*time.Second, 5*time.Millisecond)
	time.Sleep(30 * time.Millisecond) // the last stage stays
	assert.Equal(t, []string{"+a", "-a", "+b", "-b", "+c"}, log.get())
	require.NoError(t, s.Recover(t.Context()))
	require.NoError(t, s.Recover(t.Context()), "Recover is idempotent")
	assert.Equal(t, []string{"+a", "-a", "+b", "-b", "+c", "-c"}, log.get())

	// Recovered before the later stages are due: they never come.
	require.NoError(t, s.Inject(t.Context()), "a recovered sequence can be injected again")
	require.NoError(t, s.Recover(t.Context()))
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, []string{"+a", "-a", "+b", "-b", "+c", "-c", "+a", "-a"}, log.get())
}

func TestSequenceStageFailure(t *testing.T) {
	noLeaks(t)
	log := &eventLog{}
	boom := errors.New("boom")
	a, b := &recorder{name: "a", log: log}, &recorder{name: "b", log: log, injectErr: boom}
	s, err := faults.NewSequence("s", faults.Stage{Fault: a}, faults.Stage{At: 10 * time.Millisecond, Fault: b})
	require.NoError(t, err)
	require.NoError(t, s.Inject(t.Context()))
	time.Sleep(40 * time.Millisecond)
	err = s.Recover(t.Context())
	require.ErrorIs(t, err, boom, "a later stage's failed Inject is reported by Recover")
	require.NoError(t, s.Recover(t.Context()))
	assert.Equal(t, []string{"+a", "-a"}, log.get())
}

func TestNewSequenceRejects(t *testing.T) {
	a := &recorder{name: "a", log: &eventLog{}}
	for name, stages := range map[string][]faults.Stage{
		"none":       nil,
		"no fault":   {{}},
		"late first": {{At: time.Second, Fault: a}},
		"out of order": {
			{Fault: a}, {At: 2 * time.Second, Fault: a}, {At: time.Second, Fault: a},
		},
	} {
		_, err := faults.NewSequence(name, stages...)
		assert.Error(t, err, name)
	}
}
