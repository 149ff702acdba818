//go:build !race

package faults_test

// raceEnabled: see memory_race_test.go.
const raceEnabled = false
