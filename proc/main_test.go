package proc_test

import (
	"testing"

	"go.uber.org/goleak"
)

// noLeaks fails t if goroutines started during t are still running once t
// and its cleanups are done. Call it first in a test. opts add goleak
// options.
func noLeaks(tb testing.TB, opts ...goleak.Option) {
	tb.Helper()
	opts = append(opts, goleak.IgnoreCurrent())
	tb.Cleanup(func() { goleak.VerifyNone(tb, opts...) })
}
