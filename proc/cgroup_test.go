package proc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Mountinfo and /proc/self/cgroup as seen on the layouts the cgroup code
// must handle.
const (
	// This machine's kind: v1 hierarchies plus an empty cgroup2 at
	// /sys/fs/cgroup/unified (hybrid); memory is v1.
	cgHybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	cgHybridSelf = `8:pids:/
4:memory:/process_api/ac371beced2918ef7afdf7c060c15b86
0::/
`
	// A systemd machine on pure cgroup v2.
	cgV2Mountinfo = `25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
28 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	cgV2Self = "0::/user.slice/user-1000.slice/session-2.scope\n"
	// Docker on cgroup v1 without a cgroup namespace: the container sees
	// its own subtree mounted at /sys/fs/cgroup/memory.
	cgDockerV1Mountinfo = `700 690 0:32 /docker/abc123 /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
`
	cgDockerV1Self = "9:memory:/docker/abc123\n"
	// A combined v1 hierarchy (cpu,memory) and a mount point with a space.
	cgCombinedMountinfo = `36 31 0:32 / /sys/fs/cgroup/cpu\040mem rw - cgroup cgroup rw,cpu,memory
`
	cgCombinedSelf = "3:cpu,memory:/a/b\n"
)

func TestOOMCgroupLocate(t *testing.T) {
	tests := []struct {
		name            string
		mountinfo, self string
		version         int
		mount, dir      string
		wantUnavailable bool
	}{
		{"hybrid uses v1 memory", cgHybridMountinfo, cgHybridSelf, 1,
			"/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/process_api/ac371beced2918ef7afdf7c060c15b86", false},
		{"pure v2", cgV2Mountinfo, cgV2Self, 2,
			"/sys/fs/cgroup", "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope", false},
		{"docker v1 subtree", cgDockerV1Mountinfo, cgDockerV1Self, 1,
			"/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory", false},
		{"combined hierarchy, escaped mount point", cgCombinedMountinfo, cgCombinedSelf, 1,
			"/sys/fs/cgroup/cpu mem", "/sys/fs/cgroup/cpu mem/a/b", false},
		{"v1 memory path outside the mounted subtree", cgDockerV1Mountinfo, "9:memory:/docker/abc1234\n", 0, "", "", true},
		{"no cgroup mounts", "25 30 0:23 / /sys rw - sysfs sysfs rw\n", cgV2Self, 0, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc, err := cgLocateIn([]byte(tt.self), []byte(tt.mountinfo))
			if tt.wantUnavailable {
				require.ErrorIs(t, err, ErrCgroupUnavailable)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, cgLocation{version: tt.version, mount: tt.mount, dir: tt.dir}, loc)
		})
	}
}

func TestOOMCgroupParseKeyed(t *testing.T) {
	v1 := "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
	n, err := cgParseKeyed([]byte(v1), "oom_kill")
	require.NoError(t, err)
	assert.Equal(t, uint64(3), n, "v1 memory.oom_control")

	v2 := "low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n"
	n, err = cgParseKeyed([]byte(v2), "oom_kill")
	require.NoError(t, err)
	assert.Equal(t, uint64(2), n, "v2 memory.events: oom_kill, not oom or oom_group_kill")

	_, err = cgParseKeyed([]byte("oom_kill_disable 0\nunder_oom 0\n"), "oom_kill")
	require.ErrorContains(t, err, "4.13", "an old kernel's oom_control says why")
	_, err = cgParseKeyed([]byte("oom_kill x\n"), "oom_kill")
	assert.Error(t, err)
}

func TestOOMCgroupMinimumLimit(t *testing.T) {
	_, err := NewMemoryCgroup(1 << 20)
	assert.ErrorContains(t, err, "below the minimum")
}

// TestOOMCgroupStaleCleanup: on the real memory hierarchy, an empty
// spiral-oom-* group whose creator is gone is removed; one of a live
// creator, or one still holding a process, stays.
func TestOOMCgroupStaleCleanup(t *testing.T) {
	parent, err := cgDefaultParent()
	if errors.Is(err, ErrCgroupUnavailable) {
		t.Skipf("needs a memory cgroup: %v", err)
	}
	require.NoError(t, err)
	dead := cgDeadPid(t)
	mk := func(name string) string {
		t.Helper()
		dir := filepath.Join(parent, name)
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
			t.Skipf("needs a writable memory cgroup: %v", err)
		}
		require.NoError(t, err)
		t.Cleanup(func() {
			if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
				t.Errorf("rmdir %s: %v", dir, err)
			}
		})
		return dir
	}
	stale := mk(fmt.Sprintf("%s%d-1", CgroupPrefix, dead))
	busy := mk(fmt.Sprintf("%s%d-2", CgroupPrefix, dead))
	live := mk(fmt.Sprintf("%s%d-999999", CgroupPrefix, os.Getpid()))
	handmade := mk(CgroupPrefix + "handmade")

	sleeper := exec.Command("/bin/sleep", "60")
	require.NoError(t, sleeper.Start())
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = sleeper.Process.Kill()
			_ = sleeper.Wait()
		}
	}
	t.Cleanup(stop) // before busy's rmdir: cleanups run last in, first out
	require.NoError(t, cgWrite(busy, "cgroup.procs", fmt.Sprint(sleeper.Process.Pid)))

	removed, err := CleanupStaleMemoryCgroups()
	require.NoError(t, err)
	assert.Contains(t, removed, stale)
	assert.NoDirExists(t, stale)
	for _, d := range []string{busy, live, handmade} {
		assert.NotContains(t, removed, d)
		assert.DirExists(t, d)
	}
	own, err := ListMemoryCgroups()
	require.NoError(t, err)
	assert.Equal(t, []string{live}, own, "ListMemoryCgroups lists this process's groups only")

	// Once empty, the busy group is stale too.
	stop()
	removed, err = CleanupStaleMemoryCgroups()
	require.NoError(t, err)
	assert.Equal(t, []string{busy}, removed)
}

// cgDeadPid returns a pid that no process has: a child that has been
// reaped.
func cgDeadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("/bin/true")
	require.NoError(t, cmd.Run())
	pid := cmd.Process.Pid
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH)
	return pid
}

// TestOOMCgroupV2Placement checks the cgroup v2 mechanics on a real cgroup2
// hierarchy even where it has no memory controller (a hybrid machine's
// /sys/fs/cgroup/unified): a child born in the group through
// SysProcAttr.UseCgroupFD, a pid moved in through cgroup.procs,
// cgroup.kill, and rmdir on Close.
func TestOOMCgroupV2Placement(t *testing.T) {
	self, err := os.ReadFile(cgProcSelfCgroup)
	require.NoError(t, err)
	mi, err := os.ReadFile(cgProcSelfMountinfo)
	require.NoError(t, err)
	var mount cgMount
	for _, m := range cgParseMountinfo(mi) {
		if m.fstype == "cgroup2" {
			mount = m
		}
	}
	_, v2Path, _, haveV2 := cgParseSelf(self)
	if mount.point == "" || !haveV2 {
		t.Skip("needs a cgroup2 mount")
	}
	parent, err := cgJoin(mount, v2Path)
	require.NoError(t, err)
	dir, err := cgMkdir(parent)
	if errors.Is(err, ErrCgroupUnavailable) {
		t.Skipf("needs a writable cgroup2: %v", err)
	}
	require.NoError(t, err)
	c := &MemoryCgroup{dir: dir, version: 2}
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	rel := strings.TrimPrefix(dir, mount.point)

	// Born in the group.
	born := exec.Command("/bin/sleep", "60")
	placed, release, err := c.prepare(born)
	require.NoError(t, err)
	require.True(t, placed)
	err = born.Start()
	release()
	require.NoError(t, err)
	t.Cleanup(func() { _ = born.Process.Kill(); _ = born.Wait() })
	assert.Contains(t, cgProcLine(t, born.Process.Pid), "0::"+rel)

	// Moved in after start.
	moved := exec.Command("/bin/sleep", "60")
	require.NoError(t, moved.Start())
	t.Cleanup(func() { _ = moved.Process.Kill(); _ = moved.Wait() })
	require.NoError(t, c.Add(moved.Process.Pid))
	assert.Contains(t, cgProcLine(t, moved.Process.Pid), "0::"+rel)

	procs, err := c.Procs()
	require.NoError(t, err)
	assert.ElementsMatch(t, []int{born.Process.Pid, moved.Process.Pid}, procs)

	// cgroup.kill: both die; reaping empties the group.
	killed := make(chan error, 1)
	go func() { killed <- c.Kill(5 * time.Second) }()
	for _, cmd := range []*exec.Cmd{born, moved} {
		err := cmd.Wait()
		var exitErr *exec.ExitError
		require.ErrorAs(t, err, &exitErr)
		assert.Equal(t, syscall.SIGKILL, exitErr.Sys().(syscall.WaitStatus).Signal())
	}
	require.NoError(t, <-killed)

	require.NoError(t, c.Close())
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, fs.ErrNotExist)
	t.Logf("cgroup v2 placement verified in %s (CgroupFD, cgroup.procs, cgroup.kill, rmdir)", dir)
}

// cgProcLine is the v2 line of /proc/pid/cgroup.
func cgProcLine(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	require.NoError(t, err)
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "0::") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
