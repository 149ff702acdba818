//go:build !race

package dataplane_test

// raceEnabled: see race_test.go.
const raceEnabled = false
