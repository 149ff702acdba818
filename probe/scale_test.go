package probe_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// scaleEnv opts in to TestCensusAtScale and sets its population; the issue's
// figure is 20000 (the postmortem's batches were 15-20k URIs).
const scaleEnv = "SPIRAL_CENSUS_SCALE"

// scaleRuns is how many times TestCensusAtScale runs ss and spiral each,
// interleaved, to log their wall times.
const scaleRuns = 15

// TestCensusAtScale leaves a large TIME_WAIT population toward one port and
// checks that netlink, procfs, ss and the spiral binary count it alike. It
// logs the wall time of ss and of spiral as whole processes (run it with -v);
// it asserts no timing. Opt in with SPIRAL_CENSUS_SCALE=20000: the
// population takes seconds to build and holds the TIME_WAIT table for 60 s.
func TestCensusAtScale(t *testing.T) {
	v := os.Getenv(scaleEnv)
	if v == "" {
		t.Skipf("set %s=20000 to census a large TIME_WAIT population and compare with ss", scaleEnv)
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, scaleEnv)
	ss, err := exec.LookPath("ss")
	if err != nil {
		t.Skip("no ss here to compare with")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool here to build cmd/spiral")
	}
	bin := filepath.Join(t.TempDir(), "spiral")
	build := exec.CommandContext(t.Context(), goTool, "build", "-o", bin, "github.com/spiral-chaos/spiral/cmd/spiral")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build cmd/spiral: %s", out)

	start := time.Now()
	srv := timeWaitPopulation(t, t.Context(), n)
	t.Logf("%d TIME_WAIT sockets toward 127.0.0.1:%d in %s", n, srv.port(), time.Since(start).Round(time.Millisecond))
	port := strconv.Itoa(int(srv.port()))
	ssArgs := []string{"-Htan", "state", "time-wait", fmt.Sprintf("( dport = :%s )", port)}
	spiralArgs := []string{"sockets", "--port", port, "--state", "time-wait"}

	out, err = exec.CommandContext(t.Context(), ss, ssArgs...).Output()
	require.NoError(t, err)
	assert.Equal(t, n, strings.Count(string(out), "\n"), "ss count")

	out, err = exec.CommandContext(t.Context(), bin, append(spiralArgs, "--json")...).Output()
	require.NoError(t, err)
	var rep struct {
		Method string         `json:"method"`
		States map[string]int `json:"states"`
	}
	require.NoError(t, json.Unmarshal(out, &rep), "%s", out)
	assert.Equal(t, n, rep.States["TIME-WAIT"], "spiral count")
	assert.Equal(t, "netlink", rep.Method)

	f := probe.Filter{RemotePort: srv.port(), States: []probe.State{probe.TimeWait}}
	for _, m := range methods {
		start := time.Now()
		c, err := probe.Census{Method: m}.Count(t.Context(), f)
		took := time.Since(start)
		require.NoError(t, err)
		assert.Equal(t, n, c.Get(probe.TimeWait), "%s count", m)
		t.Logf("in-process %s census: %s", m, took.Round(time.Microsecond))
	}

	var ssTimes, spiralTimes []time.Duration
	for range scaleRuns {
		for _, run := range []struct {
			bin   string
			args  []string
			times *[]time.Duration
		}{{ss, ssArgs, &ssTimes}, {bin, spiralArgs, &spiralTimes}} {
			cmd := exec.CommandContext(t.Context(), run.bin, run.args...)
			start := time.Now()
			require.NoError(t, cmd.Run())
			*run.times = append(*run.times, time.Since(start))
		}
	}
	t.Logf("whole process over %d interleaved runs: ss median %s min %s; spiral median %s min %s",
		scaleRuns, median(ssTimes), slices.Min(ssTimes), median(spiralTimes), slices.Min(spiralTimes))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2].Round(time.Microsecond)
}
