package scenario_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/scenario"
)

func TestValidateReportsEveryProblem(t *testing.T) {
	bad := load.Background
	bad.Rate = 0
	sc := scenario.Scenario{Config: dataplane.Config{}, Background: []load.Profile{bad}}
	err := sc.Validate()
	require.Error(t, err)
	for _, want := range []string{"Name is empty", "config:", "phases", "background: load: Rate is 0"} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestValidateAcceptsAWellFormedScenario(t *testing.T) {
	sc := scenario.Scenario{
		Name:       "ok",
		Config:     dataplane.DefaultConfig(),
		Background: []load.Profile{load.Background},
		Phases:     scenario.Phases{Baseline: time.Second, Inject: time.Second, Recover: time.Second},
	}
	assert.NoError(t, sc.Validate())
}

func TestRunRefusesBadScenarioBeforeTouchingAnything(t *testing.T) {
	// A nil environment would crash any step that used it: the scenario is
	// refused first.
	_, err := scenario.Run(t.Context(), nil, scenario.Scenario{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Name is empty")
}

func TestSeedFromEnv(t *testing.T) {
	t.Setenv("SPIRAL_SEED", "42")
	assert.Equal(t, uint64(42), scenario.SeedFromEnv(1))
	t.Setenv("SPIRAL_SEED", "")
	assert.Equal(t, uint64(1), scenario.SeedFromEnv(1))
}

func TestCheckEnv(t *testing.T) {
	t.Setenv("SPIRAL_MODE", "fast")
	t.Setenv("SPIRAL_SEED", "-1")
	err := scenario.CheckEnv()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `SPIRAL_MODE="fast"`)
	assert.Contains(t, err.Error(), `SPIRAL_SEED="-1"`)
	t.Setenv("SPIRAL_MODE", "full")
	t.Setenv("SPIRAL_SEED", "7")
	assert.NoError(t, scenario.CheckEnv())
}
