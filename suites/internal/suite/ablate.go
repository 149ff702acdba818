package suite

import (
	"os"
	"testing"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/scenario/report"
	"github.com/spiral-chaos/spiral/target"
)

// EnvAblate names the defence every suite's fixed arm turns back, for an
// ablation run (scripts/ablation.sh): a knob of the bundled data plane's
// fixed configuration (dataplane.Knobs), set as in the incident, or
// "setlimit", the postmortem's own fix alone (dataplane.PostmortemFixConfig).
// Unset: the fixed configuration as it is.
const EnvAblate = "SPIRAL_ABLATE"

// FixedConfig is the configuration a suite's fixed arm runs: the bundled
// data plane's DefaultConfig, or its ablation ($SPIRAL_ABLATE). An
// ablation tests the bundled data plane, so it fails t with another
// service under test ($SPIRAL_TARGET), and with an unknown name.
func FixedConfig(t *testing.T) dataplane.Config {
	t.Helper()
	name := os.Getenv(EnvAblate)
	if name == "" {
		return dataplane.DefaultConfig()
	}
	if spec := Spec(t); spec.Kind != target.KindInProcess {
		t.Fatalf("%s=%s turns back a defence of the bundled data plane; %s=%s names another service: unset one", EnvAblate, name, target.EnvTarget, spec)
	}
	if name == report.AblationSetLimit {
		t.Logf("%s=%s: the fixed arm runs the postmortem's fix alone (dataplane.PostmortemFixConfig)", EnvAblate, name)
		return dataplane.PostmortemFixConfig()
	}
	cfg, err := dataplane.Ablate(dataplane.DefaultConfig(), name)
	if err != nil {
		t.Fatalf("%s: %v", EnvAblate, err)
	}
	t.Logf("%s=%s: the fixed arm runs the fixed configuration with %s as the incident's", EnvAblate, name, name)
	return cfg
}

// FixedArgs are the bundled binary's arguments (cmd/dataplane) for the
// configuration FixedConfig returns.
func FixedArgs(t *testing.T) []string {
	t.Helper()
	FixedConfig(t) // checks the name
	switch name := os.Getenv(EnvAblate); name {
	case "":
		return []string{"-config", "fixed"}
	case report.AblationSetLimit:
		return []string{"-config", "setlimit"}
	default:
		return []string{"-config", "fixed", "-ablate", name}
	}
}
