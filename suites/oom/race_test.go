//go:build race

package oom

// raceEnabled: the race detector is on (go test -race).
const raceEnabled = true
