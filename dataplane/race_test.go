//go:build race

package dataplane_test

// raceEnabled: the race detector allows at most 8128 live goroutines, fewer
// than the incident configuration starts for one 15,000-URI batch.
const raceEnabled = true
