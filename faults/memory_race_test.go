//go:build race

package faults_test

// raceEnabled: the race detector shadows heap memory and does not return
// the shadow to the OS, so RSS stays up after the heap is freed.
const raceEnabled = true
