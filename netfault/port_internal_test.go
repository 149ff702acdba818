package netfault

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// pickTrace is what one pickBudget search did: the windows it examined, in
// order, and the budget it returned.
type pickTrace struct {
	windows []PortBudget
	budget  PortBudget
}

// tracePick runs pickBudget over the default ephemeral range 32768-60999
// with windows of 1024 ports, the kernel's answers stood in for by
// usable(port), no budget reserved, and rng seeded by seed.
func tracePick(t *testing.T, seed uint64, size int, usable func(port int) bool) pickTrace {
	t.Helper()
	var tr pickTrace
	probe := func(w PortBudget) ([]bool, error) {
		tr.windows = append(tr.windows, w)
		ok := make([]bool, w.Size())
		for i := range ok {
			ok[i] = usable(int(w.Low) + i)
		}
		return ok, nil
	}
	rng := rand.New(rand.NewPCG(seed, portBudgetStream))
	b, err := pickBudget(size, 1024, 32768, 60999, rng, probe, func(PortBudget) bool { return false })
	require.NoError(t, err)
	tr.budget = b
	return tr
}

// The window search draws every choice from its seed: the same seed
// examines the same windows and picks the same budget, another seed
// others; both when a window holds a clean run of ports and when only the
// fallback (the narrowest range with enough usable ports) is left.
func TestPickBudgetRepeatsItsChoicesForASeed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		usable func(port int) bool
		clean  bool // a run of size consecutive usable ports exists
	}{
		{"clean runs", func(p int) bool { return p%97 != 0 }, true},
		// Every fourth port bound elsewhere: no 16 consecutive ports.
		{"fallback", func(p int) bool { return p%4 != 0 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 16
			first := tracePick(t, 7, size, tc.usable)
			again := tracePick(t, 7, size, tc.usable)
			other := tracePick(t, 8, size, tc.usable)
			assert.Equal(t, first, again, "the same seed examines the same windows and picks the same budget")
			assert.NotEqual(t, first.windows[0], other.windows[0], "another seed starts from another window")
			assert.NotEqual(t, first.budget, other.budget, "another seed picks another budget")

			for _, tr := range []pickTrace{first, other} {
				b := tr.budget
				var n int
				for p := int(b.Low); p <= int(b.High); p++ {
					if tc.usable(p) {
						n++
					}
				}
				assert.Equal(t, size, n, "budget %s holds %d usable ports", b, size)
				if tc.clean {
					assert.Equal(t, size, b.Size(), "budget %s is a clean run", b)
					assert.Len(t, tr.windows, 1, "the first window holding a clean run is the last examined")
				} else {
					assert.Greater(t, b.Size(), size, "budget %s is a fallback, wider than its usable ports", b)
				}
			}
		})
	}
}

// releaseBudget forgets that FreePortBudget handed out b, as if it never
// had.
func releaseBudget(tb testing.TB, b PortBudget) {
	tb.Helper()
	budgets.mu.Lock()
	defer budgets.mu.Unlock()
	i := slices.Index(budgets.ranges, b)
	require.GreaterOrEqual(tb, i, 0, "budget %s was handed out", b)
	budgets.ranges = slices.Delete(budgets.ranges, i, i+1)
	budgets.ports -= b.Size()
}

// Against the kernel: FreePortBudget called again with the same seed,
// once the first budget is released, picks the same budget; another seed
// another. Ports other processes bind or release in between change what
// is usable, and may change the pick: the check is tried a few times
// before it fails.
func TestFreePortBudgetRepeatsItsChoiceForASeed(t *testing.T) {
	const size, seed, attempts = 16, 42, 3
	draw := func(seed uint64) PortBudget {
		b, err := FreePortBudget(size, seed)
		require.NoError(t, err)
		releaseBudget(t, b)
		return b
	}
	var pairs [][2]PortBudget
	for range attempts {
		first, again := draw(seed), draw(seed)
		if first == again {
			assert.NotEqual(t, first, draw(seed+1), "another seed picks another budget")
			return
		}
		pairs = append(pairs, [2]PortBudget{first, again})
	}
	t.Fatalf("seed %d picked different budgets %d times in a row: %v", seed, attempts, pairs)
}

// The probe works at both ends of the ephemeral range, where its listener
// takes its port from the one side of the window there is.
func TestUsablePortsAtEitherEndOfTheRange(t *testing.T) {
	eph, err := probe.EphemeralRange()
	require.NoError(t, err)
	lo, hi := int(eph.Low), int(eph.High)
	for _, w := range []PortBudget{
		{Low: uint16(lo), High: uint16(lo + 1023)},
		{Low: uint16(hi - 1023), High: uint16(hi)},
	} {
		ok, err := usablePorts(w, lo, hi)
		require.NoError(t, err, "window %s", w)
		assert.Contains(t, ok, true, "window %s has a usable port", w)
	}
}
