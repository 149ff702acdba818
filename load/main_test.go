package load_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/fixtures"
)

// TestMain shares one memcached and CQL store among the package's tests and
// removes them at the end. Leaks are checked per test with noLeaks, not here:
// the fixtures keep background goroutines (Docker client, signal handler)
// alive for the whole binary.
func TestMain(m *testing.M) { fixtures.Main(m) }

// noLeaks fails t if goroutines started during t are still running once t
// and its cleanups are done. Call it first in a test, after fixtures.Shared
// if the test uses the shared environment (its first call starts
// goroutines that outlive the test by design). opts add goleak options.
func noLeaks(tb testing.TB, opts ...goleak.Option) {
	tb.Helper()
	opts = append(opts, goleak.IgnoreCurrent())
	tb.Cleanup(func() { goleak.VerifyNone(tb, opts...) })
}
