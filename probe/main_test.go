package probe_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/spiral-chaos/spiral/probe"
)

func TestMain(m *testing.M) {
	probe.ServeObserver()
	goleak.VerifyTestMain(m)
}
