package dataplane_test

import (
	"testing"

	"github.com/spiral-chaos/spiral/fixtures"
)

// TestMain shares one memcached and one CQL store between the package's
// tests, started by the first test that asks, and removes them at exit.
func TestMain(m *testing.M) { fixtures.Main(m) }
