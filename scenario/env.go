package scenario

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/spiral-chaos/spiral/load"
)

// The environment a run reads its mode and seed from; ReplayCommand sets
// both.
const (
	// EnvMode selects the strength of a run: see Mode.
	EnvMode = "SPIRAL_MODE"
	// EnvSeed replaces a scenario's default seed: see SeedFromEnv.
	EnvSeed = "SPIRAL_SEED"
)

// Mode is $SPIRAL_MODE: "quick" (default, make test), "full" (make chaos) or
// "soak" (make soak).
func Mode() string {
	switch m := os.Getenv(EnvMode); m {
	case "full", "soak":
		return m
	default:
		return "quick"
	}
}

// CheckEnv reports a malformed SPIRAL_MODE or SPIRAL_SEED, which Mode and
// SeedFromEnv would otherwise quietly replace by their defaults, and a
// malformed EnvAllowExternalFlood, $SPIRAL_ABORT_* or EnvProgress, which
// Run would refuse or ignore.
func CheckEnv() error {
	var errs []error
	switch m := os.Getenv(EnvMode); m {
	case "", "quick", "full", "soak":
	default:
		errs = append(errs, fmt.Errorf("SPIRAL_MODE=%q: want quick, full or soak", m))
	}
	if s := os.Getenv(EnvSeed); s != "" {
		if _, err := strconv.ParseUint(s, 10, 64); err != nil {
			errs = append(errs, fmt.Errorf("SPIRAL_SEED=%q: want an unsigned integer", s))
		}
	}
	if _, _, err := externalFloodConsent(); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseProgress(os.Getenv(EnvProgress)); err != nil {
		errs = append(errs, err)
	}
	if _, err := abortFromEnv(load.AbortLimits{}); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SeedFromEnv returns $SPIRAL_SEED if set, else def: a failure prints the
// seed so the run can be replayed.
func SeedFromEnv(def uint64) uint64 {
	if s := os.Getenv(EnvSeed); s != "" {
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			return n
		}
	}
	return def
}

// ReplayCommand is the go test command, run from the module's root, that
// runs the tests matching runPattern in pkg again with seed and the mode in
// effect: "SPIRAL_SEED=5 SPIRAL_MODE=quick go test -count=1 -v -run
// 'pattern' ./suites/oom".
func ReplayCommand(seed uint64, runPattern, pkg string) string {
	return fmt.Sprintf("%s=%d %s=%s go test -count=1 -v -run '%s' %s", EnvSeed, seed, EnvMode, Mode(), runPattern, pkg)
}
