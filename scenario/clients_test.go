package scenario_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/scenario"
)

func keys(client string, v float64) dataplane.Sample {
	return dataplane.Sample{Name: "spiral_dataplane_lookups_total", Labels: map[string]string{"client": client, "source": "cache"}, Value: v}
}

// The client table's counts survive a counter reset: a child killed and
// restarted counts from 0, and what it counted before the kill (up to the
// last read) still belongs to the window.
func TestIncreaseAcrossAReset(t *testing.T) {
	var inc scenario.Increase
	inc.Add(dataplane.Snapshot{keys("internal-batch", 100), keys("appview", 10)}) // where counting starts
	inc.Add(dataplane.Snapshot{keys("internal-batch", 15_100), keys("appview", 50)})
	// OOM-killed; the successor has counted 40 of the everyday client's keys
	// and none of the flood's yet.
	inc.Add(dataplane.Snapshot{keys("appview", 40)})
	inc.Add(dataplane.Snapshot{keys("internal-batch", 3_000), keys("appview", 90)})

	got := scenario.ClientsBetween(nil, inc.Snapshot())
	require.Len(t, got, 2)
	assert.Equal(t, "internal-batch", got[0].Client)
	assert.InDelta(t, 15_000.0+3_000, got[0].Keys, 0, "the flood's keys before the kill and after")
	assert.InDelta(t, 40.0+40+50, got[1].Keys, 0)

	// Without a reset, the increase is the difference, as ClientsBetween
	// of the two ends.
	var plain scenario.Increase
	a := dataplane.Snapshot{keys("x", 5)}
	b := dataplane.Snapshot{keys("x", 9)}
	plain.Add(a)
	plain.Add(b)
	assert.Equal(t, scenario.ClientsBetween(a, b), scenario.ClientsBetween(nil, plain.Snapshot()))
}
