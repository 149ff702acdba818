package probe

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingSource reads 1, 2, 3, ... and takes cost on the fake clock.
type countingSource struct {
	clock *time.Time
	cost  time.Duration
	reads int
	fail  bool
}

func (*countingSource) Metrics() []string { return []string{"n"} }

func (c *countingSource) Read(_ context.Context, dst []float64) error {
	*c.clock = c.clock.Add(c.cost)
	if c.fail {
		return errors.New("unreadable")
	}
	c.reads++
	dst[0] = float64(c.reads)
	return nil
}

// A read that took 10 ms at a share of 0.1 waits 100 ms for the next: the
// samples in between carry the last reading; a failure is retried at once.
func TestThrottle(t *testing.T) {
	clock := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	src := &countingSource{clock: &clock, cost: 10 * time.Millisecond}
	s, err := Throttle(src, 0.1, 150*time.Millisecond)
	require.NoError(t, err)
	th := s.(*throttled)
	th.now = func() time.Time { return clock }
	read := func() float64 {
		t.Helper()
		dst := []float64{-1}
		require.NoError(t, s.Read(t.Context(), dst))
		return dst[0]
	}

	assert.InDelta(t, 1.0, read(), 0, "the first sample reads")
	for range 4 { // 4 samples 20 ms apart: within 100 ms of the read
		clock = clock.Add(20 * time.Millisecond)
		assert.InDelta(t, 1.0, read(), 0, "carried")
	}
	clock = clock.Add(20 * time.Millisecond) // 110 ms after the read began
	assert.InDelta(t, 2.0, read(), 0)
	assert.Equal(t, 2, src.reads)

	// A slow read waits at most `every` after it ends: 200 ms at 0.1
	// would be 1.8 s.
	src.cost = 200 * time.Millisecond
	clock = clock.Add(200 * time.Millisecond)
	assert.InDelta(t, 3.0, read(), 0)
	src.cost = 10 * time.Millisecond
	clock = clock.Add(100 * time.Millisecond) // 100 ms after that read ended
	assert.InDelta(t, 3.0, read(), 0, "carried within every of the slow read's end")
	clock = clock.Add(100 * time.Millisecond) // 200 ms after it ended
	assert.InDelta(t, 4.0, read(), 0, "read again once every has passed, not 1.8 s later")

	src.fail = true
	clock = clock.Add(200 * time.Millisecond)
	require.Error(t, s.Read(t.Context(), []float64{0}))
	src.fail = false
	assert.InDelta(t, 5.0, read(), 0, "after a failure the next sample reads again")

	for _, share := range []float64{0, -1, 1.5} {
		_, err := Throttle(src, share, time.Second)
		require.Error(t, err, "share %v", share)
	}
	_, err = Throttle(src, 0.5, 0)
	require.Error(t, err)
	_, err = Throttle(nil, 0.5, time.Second)
	require.Error(t, err)
}
