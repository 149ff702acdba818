package suite

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/spiral-chaos/spiral/scenario"
)

func TestGrowth(t *testing.T) {
	res := &scenario.Result{Peaks: map[string]map[string]float64{
		"threads_busy": {scenario.PhaseBaseline: 4, scenario.PhaseInject: 30, scenario.PhaseObserve: 41, scenario.PhaseRecover: 12, scenario.PhaseValidate: 99},
		"flat":         {scenario.PhaseBaseline: 4, scenario.PhaseInject: 4},
		"no_baseline":  {scenario.PhaseInject: 4},
	}}
	during, base, ok := Growth(res, "threads_busy")
	assert.True(t, ok)
	assert.InDelta(t, 41.0, during, 0, "the highest of inject, observe and recover; validate is not the faults' doing")
	assert.InDelta(t, 4.0, base, 0)

	_, _, ok = Growth(res, "no_baseline")
	assert.False(t, ok)
	_, _, ok = Growth(res, "absent")
	assert.False(t, ok)

	assert.True(t, AssertGrowth(t, res, "threads_busy", 10))
	for _, tc := range []struct {
		metric string
		factor float64
	}{{"threads_busy", 11}, {"flat", 2}, {"no_baseline", 1}} {
		var r recorder
		assert.False(t, AssertGrowth(&r, res, tc.metric, tc.factor), tc.metric)
		assert.Equal(t, 1, r.errors, "%s: a failed check is reported", tc.metric)
	}
}

// recorder is a Reporter that counts errors.
type recorder struct{ errors int }

func (*recorder) Helper()                 {}
func (r *recorder) Errorf(string, ...any) { r.errors++ }
func (*recorder) Logf(string, ...any)     {}
