package proc_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/proc"
)

// The OOM child is this test binary run again with proc.OOMChildEnv=1,
// from init, before any test. The tests drive the Supervisor with the
// OOM fault built on it (faults.OOM).
func init() { proc.MaybeRunOOMChild() }

const (
	// oomTestLimit is the child's cgroup limit: inside the 64-128 MiB a
	// small data plane replica would get, well above the ~10 MiB an idle
	// Go child uses.
	oomTestLimit = 96 << 20
	// oomTestGOMEMLIMIT and oomTestGOGC are tight like the postmortem's:
	// the Go runtime collects hard before the limit, and still can't save a
	// child whose live memory outgrows it.
	oomTestGOMEMLIMIT = "64MiB"
	oomTestGOGC       = "50"
	// oomRecoveryBound is the longest a restart may take from the kill to
	// a healthy child: the backoff (100ms) plus a Go process start, with
	// room for a loaded 2-core CI machine.
	oomRecoveryBound = 10 * time.Second
)

// oomChild is the command factory for the OOM child: this test binary,
// running no tests if the init hook above were ever missing.
var oomChild = proc.OOMChild{
	Args:       []string{"-test.run=^$"},
	GOMEMLIMIT: oomTestGOMEMLIMIT,
	GOGC:       oomTestGOGC,
}

// newOOMCgroup creates a memory cgroup with the given limit, removed at the
// end of t. It skips t, saying what is missing, on a machine that can't give
// one (not root, no memory controller, read-only cgroupfs).
func newOOMCgroup(t *testing.T, limit int64) *proc.MemoryCgroup {
	t.Helper()
	cg, err := proc.NewMemoryCgroup(limit)
	if errors.Is(err, proc.ErrCgroupUnavailable) {
		t.Skipf("needs a memory cgroup: %v", err)
	}
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, cg.Close()) })
	t.Logf("cgroup v%d %s, limit %d MiB", cg.Version(), cg.Dir(), cg.Limit()>>20)
	return cg
}

// startOOMSupervisor starts a Supervisor with cfg (Command defaults to
// oomChild) and waits for its first healthy child; Stop is registered.
func startOOMSupervisor(t *testing.T, cfg proc.SupervisorConfig) *proc.Supervisor {
	t.Helper()
	if cfg.Command == nil {
		cfg.Command = oomChild.Command
	}
	sup, err := proc.NewSupervisor(cfg)
	require.NoError(t, err)
	t.Cleanup(sup.Stop)
	require.NoError(t, sup.Start(t.Context()))
	return sup
}

// oomGet fetches http://addr+path and returns status and body.
func oomGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+path, nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, errors.Join(err, resp.Body.Close()))
	return resp.StatusCode, string(body)
}

// oomChildPid is the pid of the one process in cg.
func oomChildPid(t *testing.T, cg *proc.MemoryCgroup) int {
	t.Helper()
	pids, err := cg.Procs()
	require.NoError(t, err)
	require.Len(t, pids, 1, "one child in %s", cg.Dir())
	return pids[0]
}

// requireOOMNothingLeft stops sup, closes cg and checks that no child
// process, listener or spiral-oom-* cgroup of this process is left.
func requireOOMNothingLeft(t *testing.T, sup *proc.Supervisor, cg *proc.MemoryCgroup, pids []int, addrs []string) {
	t.Helper()
	sup.Stop()
	procs, err := cg.Procs()
	require.NoError(t, err)
	assert.Empty(t, procs, "processes left in %s", cg.Dir())
	for _, pid := range pids {
		require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "child pid %d still exists", pid)
	}
	for _, addr := range addrs {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.Close()
		}
		require.Error(t, err, "%s still accepts connections", addr)
	}
	require.NoError(t, cg.Close())
	_, err = os.Stat(cg.Dir())
	require.ErrorIs(t, err, fs.ErrNotExist, "cgroup dir left")
	left, err := proc.ListMemoryCgroups()
	require.NoError(t, err)
	assert.Empty(t, left, "spiral-oom-* cgroups left")
}

// TestOOMKillCountedRestartedHealthy: the child allocates past its cgroup
// limit, the kernel OOM-kills it and counts the kill, the supervisor
// restarts it and the new child answers /healthz; twice, as the
// postmortem's data plane OOM'd "every so often".
func TestOOMKillCountedRestartedHealthy(t *testing.T) {
	noLeaks(t)
	cg := newOOMCgroup(t, oomTestLimit)
	sup := startOOMSupervisor(t, proc.SupervisorConfig{Cgroup: cg, MaxRestarts: 3})

	// The child runs under the tight runtime settings it was given.
	status, body := oomGet(t, sup.Addr(), "/debug/mem")
	require.Equal(t, http.StatusOK, status)
	var mem proc.OOMChildMem
	require.NoError(t, json.Unmarshal([]byte(body), &mem))
	assert.Equal(t, int64(64<<20), mem.GOMEMLIMIT)
	assert.Equal(t, oomTestGOGC, mem.GOGC)
	assert.Equal(t, oomChildPid(t, cg), mem.Pid, "the child is in the cgroup")

	oom, err := faults.NewOOM(sup, faults.OOMOptions{})
	require.NoError(t, err)
	assert.Equal(t, "oom kill", oom.Name())
	require.NoError(t, oom.Recover(t.Context()), "recover before inject is a no-op")

	pids := []int{mem.Pid}
	addrs := []string{sup.Addr()}
	const rounds = 2
	for round := 1; round <= rounds; round++ {
		usage, err := cg.Usage()
		require.NoError(t, err)

		require.NoError(t, oom.Inject(t.Context()), "round %d", round)
		require.ErrorIs(t, oom.Inject(t.Context()), faults.ErrInjected)
		kill, ok := oom.LastKill()
		require.True(t, ok)
		assert.True(t, kill.OOMKilled, "round %d: %s", round, kill)
		assert.Equal(t, syscall.SIGKILL, kill.Signal, "the kernel's OOM killer sends SIGKILL")
		kernel, err := cg.OOMKills()
		require.NoError(t, err)
		assert.Equal(t, uint64(round), kernel, "kernel oom_kill counter")
		assert.Equal(t, uint64(round), sup.Stats().OOMKills)
		peak, err := cg.Peak()
		require.NoError(t, err)
		assert.GreaterOrEqual(t, peak, cg.Limit()*9/10, "the kernel's high-water mark saw the group reach its limit before the kill (usage now %.1f MiB)", float64(usage)/(1<<20))

		require.NoError(t, oom.Recover(t.Context()), "round %d", round)
		require.NoError(t, oom.Recover(t.Context()), "second recover is a no-op")
		kill, _ = oom.LastKill()
		st := sup.Stats()
		require.True(t, st.Healthy)
		status, _ := oomGet(t, st.Addr, "/healthz")
		assert.Equal(t, http.StatusOK, status, "restarted child answers /healthz")
		assert.Positive(t, kill.Recovery)
		assert.Less(t, kill.Recovery, oomRecoveryBound, "kill to healthy")
		assert.Equal(t, kill.Recovery, st.LastRecovery)
		t.Logf("round %d: limit %d MiB, usage before %.1f MiB, asked %d MiB; %s; kernel oom_kill=%d; kill to healthy %v; starts=%d exits=%d",
			round, cg.Limit()>>20, float64(usage)/(1<<20), 2*oomTestLimit>>20, kill, kernel,
			kill.Recovery.Round(time.Millisecond), st.Starts, st.Exits)

		pids = append(pids, oomChildPid(t, cg))
		addrs = append(addrs, st.Addr)
	}
	st := sup.Stats()
	assert.Equal(t, rounds+1, st.Starts)
	assert.Equal(t, rounds, st.Exits)
	requireOOMNothingLeft(t, sup, cg, pids, addrs)
	assert.NoError(t, sup.Err())
}

// TestOOMNotCountedForOtherExits: a child that exits by itself, or is
// SIGKILLed by someone other than the OOM killer, is restarted but not
// counted as an OOM kill: the count comes from the kernel, not from the
// signal.
func TestOOMNotCountedForOtherExits(t *testing.T) {
	noLeaks(t)
	cg := newOOMCgroup(t, oomTestLimit)
	sup := startOOMSupervisor(t, proc.SupervisorConfig{Cgroup: cg, MaxRestarts: 3})
	pids := []int{oomChildPid(t, cg)}
	addrs := []string{sup.Addr()}

	// A normal exit.
	status, _ := oomGet(t, sup.Addr(), "/debug/exit?code=0")
	require.Equal(t, http.StatusOK, status)
	addr, err := sup.WaitHealthy(t.Context(), 1)
	require.NoError(t, err)
	pids, addrs = append(pids, oomChildPid(t, cg)), append(addrs, addr)

	// A SIGKILL that is not the kernel's OOM kill.
	require.NoError(t, syscall.Kill(pids[1], syscall.SIGKILL))
	addr, err = sup.WaitHealthy(t.Context(), 2)
	require.NoError(t, err)
	pids, addrs = append(pids, oomChildPid(t, cg)), append(addrs, addr)

	exits := sup.Exits()
	require.Len(t, exits, 2)
	assert.Equal(t, 0, exits[0].ExitCode, exits[0].String())
	assert.Zero(t, exits[0].Signal)
	assert.False(t, exits[0].OOMKilled, exits[0].String())
	assert.Equal(t, syscall.SIGKILL, exits[1].Signal, exits[1].String())
	assert.False(t, exits[1].OOMKilled, exits[1].String())
	for _, e := range exits {
		assert.Positive(t, e.Recovery, e.String())
		t.Logf("%s; kill to healthy %v", e, e.Recovery.Round(time.Millisecond))
	}
	kernel, err := cg.OOMKills()
	require.NoError(t, err)
	assert.Zero(t, kernel, "kernel oom_kill counter")
	assert.Zero(t, sup.Stats().OOMKills)
	assert.Equal(t, 3, sup.Stats().Starts)

	requireOOMNothingLeft(t, sup, cg, pids, addrs)
	exits = sup.Exits()
	require.Len(t, exits, 3)
	assert.True(t, exits[2].Stopped, exits[2].String())
	assert.False(t, exits[2].OOMKilled)
}

// TestOOMSupervisorRestartBudget: once MaxRestarts is spent the next exit
// ends supervision with an error that names the budget and the last exit,
// and nothing is left running.
func TestOOMSupervisorRestartBudget(t *testing.T) {
	noLeaks(t)
	cg := newOOMCgroup(t, oomTestLimit)
	sup := startOOMSupervisor(t, proc.SupervisorConfig{Cgroup: cg, MaxRestarts: 1})
	pid := oomChildPid(t, cg)

	status, _ := oomGet(t, sup.Addr(), "/debug/exit?code=3")
	require.Equal(t, http.StatusOK, status)
	addr, err := sup.WaitHealthy(t.Context(), 1)
	require.NoError(t, err)
	pids := []int{pid, oomChildPid(t, cg)}

	status, _ = oomGet(t, addr, "/debug/exit?code=3")
	require.Equal(t, http.StatusOK, status)
	select {
	case <-sup.Done():
	case <-time.After(10 * time.Second):
		require.FailNow(t, "supervision did not end after the restart budget was spent")
	}
	require.Error(t, sup.Err())
	assert.Contains(t, sup.Err().Error(), "restart budget of 1 spent")
	assert.Contains(t, sup.Err().Error(), "exited with status 3")
	_, err = sup.WaitHealthy(t.Context(), 0)
	require.ErrorContains(t, err, "restart budget")
	st := sup.Stats()
	assert.Equal(t, 2, st.Starts)
	assert.Equal(t, 2, st.Exits)
	assert.False(t, st.Healthy)
	requireOOMNothingLeft(t, sup, cg, pids, []string{addr})
}

// TestOOMSupervisorWithoutChildProtocol: a command that never announces an
// address is killed at StartTimeout, and Start fails saying so without
// leaving the process behind.
func TestOOMSupervisorWithoutChildProtocol(t *testing.T) {
	noLeaks(t)
	cg := newOOMCgroup(t, oomTestLimit)
	sup, err := proc.NewSupervisor(proc.SupervisorConfig{
		Cgroup:       cg,
		Command:      proc.OOMChild{Path: "/bin/sleep", Args: []string{"60"}}.Command,
		MaxRestarts:  -1,
		StartTimeout: 500 * time.Millisecond,
	})
	require.NoError(t, err)
	t.Cleanup(sup.Stop)
	err = sup.Start(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not healthy in time")
	exits := sup.Exits()
	require.Len(t, exits, 1)
	assert.True(t, exits[0].Unhealthy)
	assert.False(t, exits[0].OOMKilled)
	requireOOMNothingLeft(t, sup, cg, []int{exits[0].Pid}, nil)
	t.Log(fmt.Sprint(exits[0]))
}

// TestSupervisorKeepsTheFailedHealthAnswer: a child that answers its
// health path with an error is killed at StartTimeout, and its exit keeps
// the answer (status and body), which says why it was not healthy.
func TestSupervisorKeepsTheFailedHealthAnswer(t *testing.T) {
	noLeaks(t)
	cg := newOOMCgroup(t, oomTestLimit)
	sup, err := proc.NewSupervisor(proc.SupervisorConfig{
		Cgroup:       cg,
		Command:      oomChild.Command,
		HealthPath:   "/no-such-path", // the child's mux answers 404
		MaxRestarts:  -1,
		StartTimeout: time.Second,
	})
	require.NoError(t, err)
	t.Cleanup(sup.Stop)
	require.Error(t, sup.Start(t.Context()))
	exits := sup.Exits()
	require.Len(t, exits, 1)
	e := exits[0]
	assert.True(t, e.Unhealthy)
	assert.Equal(t, "404: 404 page not found", e.LastHealth)
	assert.False(t, e.LastHealthAt.Before(e.StartedAt), "the answer came after the start")
	assert.False(t, e.LastHealthAt.After(e.ExitedAt), "the answer came before the exit")
	assert.Contains(t, e.String(), "its last health check: 404: 404 page not found")
	requireOOMNothingLeft(t, sup, cg, []int{e.Pid}, nil)
}
