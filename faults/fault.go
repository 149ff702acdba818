// Package faults holds Spiral's Fault interface and the fault injectors that
// act on containers, memory, a supervised child (proc.Supervisor) and log
// sinks; network faults are in package netfault, load generators and
// floods in package load.
// Each acts through the kernel, the Go runtime or the container engine,
// never a mock; each is bounded in count and time and aims at loopback only.
//
// faults never imports testing: injectors take a context and return errors
// and values; only suites and _test.go files fail tests.
package faults

import (
	"context"
	"errors"
)

// Fault is one injectable fault.
//
// Lifecycle contract:
//   - Inject applies the fault and returns once it is in effect. Calling it
//     on a fault already injected returns ErrInjected and changes nothing.
//   - Recover undoes the fault and returns once it is gone. It is idempotent:
//     calling it on a fault never injected, or twice, is a no-op that returns
//     nil. Recover must succeed even if ctx of Inject was cancelled.
//   - Name is stable and short ("pause memcached", "sink stall"); reports
//     and timelines use it to label the fault window.
type Fault interface {
	Name() string
	Inject(ctx context.Context) error
	Recover(ctx context.Context) error
}

// ErrInjected is returned by Inject on a fault that is already in effect.
var ErrInjected = errors.New("fault already injected")
