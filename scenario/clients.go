package scenario

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/target"
)

// clientFamilies are the per-client counters the client table is made of.
var clientFamilies = []string{"spiral_dataplane_requests_total", "spiral_dataplane_lookups_total", "spiral_dataplane_cache_errors_total"}

// clientsEvery is how often a run reads the per-client counters while the
// faults act: what a child's counters held since the last read is lost
// when it is killed (an OOM kill: its successor counts from 0).
const clientsEvery = time.Second

// Increase accumulates how much each counter of a series of snapshots grew,
// across counter resets, as Prometheus's increase() does: a counter lower
// than in the previous snapshot (a service restarted, counting from 0
// again) adds its whole value. The zero value is ready; the first snapshot
// only sets where counting starts.
type Increase struct {
	mu   sync.Mutex
	prev map[string]float64
	inc  map[string]dataplane.Sample
}

// seriesKey names one sample: its metric and labels, sorted.
func seriesKey(s dataplane.Sample) string {
	var b strings.Builder
	b.WriteString(s.Name)
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		b.WriteString("\xff" + k + "=" + s.Labels[k])
	}
	return b.String()
}

// Add takes one snapshot.
func (c *Increase) Add(snap dataplane.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	first := c.prev == nil
	if first {
		c.prev, c.inc = map[string]float64{}, map[string]dataplane.Sample{}
	}
	for _, s := range snap {
		k := seriesKey(s)
		prev, seen := c.prev[k]
		c.prev[k] = s.Value
		if first {
			continue
		}
		grew := s.Value - prev
		if !seen || s.Value < prev {
			grew = s.Value // new since the start, or reset: all of it is new
		}
		acc := c.inc[k]
		acc.Name, acc.Labels = s.Name, s.Labels
		acc.Value += grew
		c.inc[k] = acc
	}
}

// Snapshot returns each series' increase, as samples.
func (c *Increase) Snapshot() dataplane.Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.inc))
}

// watchClients reads tgt's per-client counters every clientsEvery into inc
// until ctx ends. A read that fails (a child between two lives) is skipped.
func watchClients(ctx context.Context, tgt target.Target, inc *Increase) {
	t := time.NewTicker(clientsEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if m, err := tgt.Metrics(target.WithFamilies(ctx, clientFamilies...)); err == nil {
			inc.Add(m)
		}
	}
}
