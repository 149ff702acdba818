package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// CgroupPrefix starts the name of every cgroup this package creates:
// "spiral-oom-<creator pid>-<n>". A group left behind by a crashed run is
// easy to spot with `find /sys/fs/cgroup -name 'spiral-oom-*'` and is removed
// by CleanupStaleMemoryCgroups once its creator is gone and it is empty.
const CgroupPrefix = "spiral-oom-"

// ErrCgroupUnavailable is wrapped by NewMemoryCgroup when this process can't
// get a memory-limited cgroup at all: no memory controller, no root or
// delegation, read-only cgroupfs. Tests skip on it; any other error is a
// failure.
var ErrCgroupUnavailable = errors.New("memory cgroup unavailable")

const (
	// cgCloseTimeout bounds how long Close kills and waits for the processes
	// left in a group before rmdir gives up; an OOM-killed Go process is
	// gone in milliseconds, so seconds mean something is stuck.
	cgCloseTimeout = 5 * time.Second

	// cgMinLimit is the smallest limit NewMemoryCgroup accepts: a Go
	// program needs a few MiB to start at all, and below this the kernel
	// kills the child before it can say anything useful.
	cgMinLimit = 8 << 20
)

// Paths of the kernel's records; variables so that parsing tests can point
// them at fixtures.
var (
	cgProcSelfCgroup    = "/proc/self/cgroup"
	cgProcSelfMountinfo = "/proc/self/mountinfo"
)

// cgSeq numbers the groups this process creates.
var cgSeq atomic.Uint64

// MemoryCgroup is a memory-limited cgroup, a child of this process's own
// memory cgroup (cgroup v1 memory hierarchy or cgroup v2), for running a
// child process that the kernel OOM-kills at the limit. OOM kills are read
// from the kernel's own counter: the "oom_kill" line of memory.oom_control
// (v1) or memory.events (v2).
//
// Create it with NewMemoryCgroup and Close it when done; Close kills what is
// still inside and removes the directory.
type MemoryCgroup struct {
	dir     string
	version int
	limit   int64

	closeOnce sync.Once
	closeErr  error
}

// NewMemoryCgroup creates an empty cgroup named spiral-oom-<pid>-<n> with a
// memory limit of limit bytes (swap included where the kernel accounts it
// separately: memory.memsw.limit_in_bytes on v1, memory.swap.max=0 on v2).
//
// It is created under this process's own memory cgroup. On cgroup v2, if
// that group can't delegate the memory controller to children because it
// holds processes itself (the "no internal processes" rule), the new group
// is created beside it, under the same parent, instead.
//
// Before creating, it removes stale spiral-oom-* groups next to it: empty
// ones whose creator process is gone. Needs root (or a delegated cgroup); the
// error wraps ErrCgroupUnavailable and says what is missing when that is the
// cause.
func NewMemoryCgroup(limit int64) (*MemoryCgroup, error) {
	if limit < cgMinLimit {
		return nil, fmt.Errorf("new memory cgroup: limit %d bytes below the minimum %d", limit, cgMinLimit)
	}
	loc, err := cgLocate()
	if err != nil {
		return nil, fmt.Errorf("new memory cgroup: %w", err)
	}
	parent := loc.dir
	if loc.version == 2 {
		if parent, err = cgV2Parent(loc); err != nil {
			return nil, fmt.Errorf("new memory cgroup: %w", err)
		}
	}
	if _, err := cgCleanupStale(parent); err != nil {
		return nil, fmt.Errorf("new memory cgroup: %w", err)
	}
	dir, err := cgMkdir(parent)
	if err != nil {
		return nil, fmt.Errorf("new memory cgroup: %w", err)
	}
	c := &MemoryCgroup{dir: dir, version: loc.version, limit: limit}
	if err := c.setLimit(); err != nil {
		return nil, errors.Join(fmt.Errorf("new memory cgroup: %w", err), c.Close())
	}
	// Fail now, not at the first exit, if the kernel keeps no OOM record.
	if _, err := c.OOMKills(); err != nil {
		return nil, errors.Join(fmt.Errorf("new memory cgroup: %w", err), c.Close())
	}
	return c, nil
}

// Dir is the group's directory in cgroupfs.
func (c *MemoryCgroup) Dir() string { return c.dir }

// Version is 1 for the cgroup v1 memory hierarchy, 2 for cgroup v2.
func (c *MemoryCgroup) Version() int { return c.version }

// Limit is the memory limit in bytes.
func (c *MemoryCgroup) Limit() int64 { return c.limit }

func (c *MemoryCgroup) setLimit() error {
	v := strconv.FormatInt(c.limit, 10)
	if c.version == 1 {
		if err := cgWrite(c.dir, "memory.limit_in_bytes", v); err != nil {
			return err
		}
		// memsw is memory+swap; present only with swap accounting. It must
		// stay >= limit_in_bytes, hence the order.
		if cgExists(c.dir, "memory.memsw.limit_in_bytes") {
			return cgWrite(c.dir, "memory.memsw.limit_in_bytes", v)
		}
		return nil
	}
	if err := cgWrite(c.dir, "memory.max", v); err != nil {
		return err
	}
	if cgExists(c.dir, "memory.swap.max") {
		return cgWrite(c.dir, "memory.swap.max", "0")
	}
	return nil
}

// OOMKills is the kernel's count of processes OOM-killed in this group
// (and below it) since it was created: "oom_kill" in memory.oom_control (v1)
// or memory.events (v2). The kernel raises it before it sends SIGKILL, so
// once the victim has been reaped the count already includes it.
func (c *MemoryCgroup) OOMKills() (uint64, error) {
	file := "memory.events"
	if c.version == 1 {
		file = "memory.oom_control"
	}
	b, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return 0, fmt.Errorf("read oom kills: %w", err)
	}
	n, err := cgParseKeyed(b, "oom_kill")
	if err != nil {
		return 0, fmt.Errorf("read oom kills: %s: %w", filepath.Join(c.dir, file), err)
	}
	return n, nil
}

// Usage is the memory charged to the group now, in bytes
// (memory.usage_in_bytes on v1, memory.current on v2).
func (c *MemoryCgroup) Usage() (int64, error) {
	if c.version == 1 {
		return c.readBytes("memory usage", "memory.usage_in_bytes")
	}
	return c.readBytes("memory usage", "memory.current")
}

// Peak is the most memory ever charged to the group, in bytes, as the
// kernel keeps it at every charge (memory.max_usage_in_bytes on v1,
// memory.peak on v2, Linux 5.19 and later): a peak no sampling interval
// can miss, such as the one just before an OOM kill.
func (c *MemoryCgroup) Peak() (int64, error) {
	if c.version == 1 {
		return c.readBytes("memory peak", "memory.max_usage_in_bytes")
	}
	return c.readBytes("memory peak", "memory.peak")
}

func (c *MemoryCgroup) readBytes(what, file string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", what, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %s: %w", what, filepath.Join(c.dir, file), err)
	}
	return n, nil
}

// Procs lists the pids in the group (cgroup.procs).
func (c *MemoryCgroup) Procs() ([]int, error) {
	pids, err := cgReadProcs(c.dir)
	if err != nil {
		return nil, fmt.Errorf("list cgroup procs: %w", err)
	}
	return pids, nil
}

// Add moves the process pid (all its threads) into the group. Memory the
// process allocates from then on is charged to the group; what it had
// before stays charged where it was.
func (c *MemoryCgroup) Add(pid int) error {
	if err := cgWrite(c.dir, "cgroup.procs", strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("add pid %d to cgroup: %w", pid, err)
	}
	return nil
}

// prepare arranges for cmd to be born inside the group when the kernel can
// do that (cgroup v2: clone3 with CLONE_INTO_CGROUP through
// SysProcAttr.UseCgroupFD). It returns whether it did, and a function that
// releases the directory descriptor once cmd has started. When it returns
// false the caller must Add the pid after Start.
func (c *MemoryCgroup) prepare(cmd *exec.Cmd) (bool, func(), error) {
	if c.version != 2 {
		return false, func() {}, nil
	}
	fd, err := syscall.Open(c.dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false, nil, fmt.Errorf("open cgroup dir: %w", err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	return true, func() { _ = syscall.Close(fd) }, nil
}

// Kill sends SIGKILL to every process in the group and waits, up to
// timeout, until the group is empty. Processes that are children of this
// process must still be reaped by their owner (exec.Cmd.Wait) before the
// group counts as empty.
func (c *MemoryCgroup) Kill(timeout time.Duration) error {
	if c.version == 2 && cgExists(c.dir, "cgroup.kill") {
		if err := cgWrite(c.dir, "cgroup.kill", "1"); err != nil {
			return fmt.Errorf("kill cgroup: %w", err)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		pids, err := cgReadProcs(c.dir)
		if err != nil {
			return fmt.Errorf("kill cgroup: %w", err)
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill cgroup: pid %d: %w", pid, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill cgroup: %s still holds pids %v after %v", c.dir, pids, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close kills whatever is still in the group, waits for it to be empty and
// removes the directory. Stop the Supervisor that runs in the group first,
// so that nothing restarts into it. Close blocks up to about 5 s; calling it
// again returns the first result.
func (c *MemoryCgroup) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.close()
	})
	return c.closeErr
}

func (c *MemoryCgroup) close() error {
	if _, err := os.Stat(c.dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	killErr := c.Kill(cgCloseTimeout)
	deadline := time.Now().Add(cgCloseTimeout)
	for {
		err := syscall.Rmdir(c.dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			pids, _ := cgReadProcs(c.dir)
			return errors.Join(killErr, fmt.Errorf("close cgroup: rmdir %s: %w (pids inside: %v; remove by hand once empty: rmdir %s)", c.dir, err, pids, c.dir))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ListMemoryCgroups returns the directories of the spiral-oom-* groups that
// this process created and has not removed yet, where NewMemoryCgroup would
// create them. Tests assert it is empty at the end.
func ListMemoryCgroups() ([]string, error) {
	parent, err := cgDefaultParent()
	if err != nil {
		return nil, fmt.Errorf("list memory cgroups: %w", err)
	}
	all, err := cgList(parent)
	if err != nil {
		return nil, fmt.Errorf("list memory cgroups: %w", err)
	}
	var own []string
	for _, g := range all {
		if g.creator == os.Getpid() {
			own = append(own, g.dir)
		}
	}
	return own, nil
}

// CleanupStaleMemoryCgroups removes spiral-oom-* groups, where
// NewMemoryCgroup creates them, that are empty and whose creator process no
// longer runs, and returns their directories. NewMemoryCgroup calls it
// first; call it directly to sweep up after a crashed run.
func CleanupStaleMemoryCgroups() ([]string, error) {
	parent, err := cgDefaultParent()
	if err != nil {
		return nil, fmt.Errorf("cleanup stale memory cgroups: %w", err)
	}
	removed, err := cgCleanupStale(parent)
	if err != nil {
		return removed, fmt.Errorf("cleanup stale memory cgroups: %w", err)
	}
	return removed, nil
}

type cgGroup struct {
	dir     string
	creator int
}

func cgList(parent string) ([]cgGroup, error) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return nil, err
	}
	var groups []cgGroup
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), CgroupPrefix) {
			continue
		}
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(e.Name(), CgroupPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil {
			pid = 0 // not ours by this naming; never stale by creator
		}
		groups = append(groups, cgGroup{dir: filepath.Join(parent, e.Name()), creator: pid})
	}
	return groups, nil
}

func cgCleanupStale(parent string) ([]string, error) {
	groups, err := cgList(parent)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", parent, err)
	}
	var removed []string
	var errs []error
	for _, g := range groups {
		if g.creator <= 0 || cgAlive(g.creator) {
			continue
		}
		pids, err := cgReadProcs(g.dir)
		if err != nil || len(pids) > 0 {
			continue // vanished meanwhile, or still in use: not stale
		}
		if err := syscall.Rmdir(g.dir); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove stale cgroup %s: %w (remove by hand: rmdir %s)", g.dir, err, g.dir))
			continue
		}
		removed = append(removed, g.dir)
	}
	return removed, errors.Join(errs...)
}

func cgAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func cgMkdir(parent string) (string, error) {
	for range 100 {
		dir := filepath.Join(parent, fmt.Sprintf("%s%d-%d", CgroupPrefix, os.Getpid(), cgSeq.Add(1)))
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
			return "", fmt.Errorf("%w: mkdir %s: %w (needs root, or a cgroup delegated to this user, on a writable cgroupfs)", ErrCgroupUnavailable, dir, err)
		}
		return "", fmt.Errorf("mkdir %s: %w", dir, err)
	}
	return "", fmt.Errorf("mkdir under %s: no free name", parent)
}

// cgLocation is where this process sits in the hierarchy that carries the
// memory controller.
type cgLocation struct {
	version int    // 1 or 2
	mount   string // mount point of that hierarchy
	dir     string // this process's own group, a directory under mount
}

// cgLocate finds this process's memory cgroup directory. A mounted v1
// memory hierarchy wins: the memory controller can live in only one
// hierarchy, so on a hybrid machine the cgroup2 mount has no memory.
func cgLocate() (cgLocation, error) {
	self, err := os.ReadFile(cgProcSelfCgroup)
	if err != nil {
		return cgLocation{}, fmt.Errorf("%w: %w", ErrCgroupUnavailable, err)
	}
	mi, err := os.ReadFile(cgProcSelfMountinfo)
	if err != nil {
		return cgLocation{}, fmt.Errorf("%w: %w", ErrCgroupUnavailable, err)
	}
	return cgLocateIn(self, mi)
}

func cgLocateIn(selfCgroup, mountinfo []byte) (cgLocation, error) {
	v1Path, v2Path, haveV1, haveV2 := cgParseSelf(selfCgroup)
	mounts := cgParseMountinfo(mountinfo)
	if haveV1 {
		for _, m := range mounts {
			if m.fstype == "cgroup" && cgHasOption(m.superOpts, "memory") {
				dir, err := cgJoin(m, v1Path)
				if err != nil {
					return cgLocation{}, err
				}
				return cgLocation{version: 1, mount: m.point, dir: dir}, nil
			}
		}
	}
	if haveV2 {
		for _, m := range mounts {
			if m.fstype != "cgroup2" {
				continue
			}
			dir, err := cgJoin(m, v2Path)
			if err != nil {
				return cgLocation{}, err
			}
			return cgLocation{version: 2, mount: m.point, dir: dir}, nil
		}
	}
	return cgLocation{}, fmt.Errorf("%w: no cgroup v1 memory hierarchy or cgroup2 mount for this process (see /proc/self/cgroup and /proc/self/mountinfo)", ErrCgroupUnavailable)
}

// cgParseSelf reads /proc/self/cgroup: "ID:controllers:path" per line; the
// v1 memory line names "memory" among its controllers, the v2 line is
// "0::path".
func cgParseSelf(b []byte) (v1, v2 string, haveV1, haveV2 bool) {
	for line := range strings.Lines(string(b)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2, haveV2 = parts[2], true
			continue
		}
		if cgHasOption(parts[1], "memory") {
			v1, haveV1 = parts[2], true
		}
	}
	return v1, v2, haveV1, haveV2
}

type cgMount struct {
	root, point, fstype, superOpts string
}

// cgParseMountinfo reads the fields it needs from /proc/self/mountinfo:
// "id parent maj:min root point opts [optional...] - fstype source superopts".
func cgParseMountinfo(b []byte) []cgMount {
	var mounts []cgMount
	for line := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(strings.TrimSpace(line), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		mounts = append(mounts, cgMount{
			root:      cgUnescape(f[3]),
			point:     cgUnescape(f[4]),
			fstype:    g[0],
			superOpts: g[2],
		})
	}
	return mounts
}

// cgUnescape undoes mountinfo's octal escapes (\040 for space and so on).
func cgUnescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

func cgHasOption(list, opt string) bool {
	for o := range strings.SplitSeq(list, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// cgJoin maps a cgroup path from /proc/self/cgroup onto the mount: the
// mount shows the hierarchy from m.root down (containers mount a subtree).
func cgJoin(m cgMount, path string) (string, error) {
	rel, ok := strings.CutPrefix(path, m.root)
	if !ok || (rel != "" && !strings.HasPrefix(rel, "/") && m.root != "/") {
		return "", fmt.Errorf("%w: own cgroup %q is outside the hierarchy mounted at %s (root %q)", ErrCgroupUnavailable, path, m.point, m.root)
	}
	return filepath.Join(m.point, rel), nil
}

// cgV2Parent returns the directory under which a v2 group with the memory
// controller can be made: this process's own group if it can delegate
// memory to children, else its parent.
func cgV2Parent(loc cgLocation) (string, error) {
	ctrl, err := os.ReadFile(filepath.Join(loc.dir, "cgroup.controllers"))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCgroupUnavailable, err)
	}
	if !slices.Contains(strings.Fields(string(ctrl)), "memory") {
		return "", fmt.Errorf("%w: cgroup v2 group %s has no memory controller (enable it with +memory in the parent's cgroup.subtree_control)", ErrCgroupUnavailable, loc.dir)
	}
	err = cgEnableMemory(loc.dir)
	if err == nil {
		return loc.dir, nil
	}
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return "", fmt.Errorf("%w: %w (needs root, or a cgroup delegated to this user)", ErrCgroupUnavailable, err)
	}
	// EBUSY: the group holds processes (this one), so under the
	// no-internal-processes rule it can't hand memory to children. Its
	// parent already does (that is why the group has memory at all).
	if loc.dir == loc.mount {
		return "", fmt.Errorf("%w: %w (this process sits in the root of its cgroup namespace, which holds processes; run it in a leaf group, e.g. systemd-run --scope -p Delegate=yes)", ErrCgroupUnavailable, err)
	}
	return filepath.Dir(loc.dir), nil
}

func cgEnableMemory(dir string) error {
	cur, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	if slices.Contains(strings.Fields(string(cur)), "memory") {
		return nil
	}
	return cgWrite(dir, "cgroup.subtree_control", "+memory")
}

func cgDefaultParent() (string, error) {
	loc, err := cgLocate()
	if err != nil {
		return "", err
	}
	if loc.version == 1 {
		return loc.dir, nil
	}
	// Where NewMemoryCgroup would put it, without changing subtree_control.
	cur, err := os.ReadFile(filepath.Join(loc.dir, "cgroup.subtree_control"))
	if err == nil && slices.Contains(strings.Fields(string(cur)), "memory") {
		return loc.dir, nil
	}
	procs, err := cgReadProcs(loc.dir)
	if err == nil && len(procs) > 0 && loc.dir != loc.mount {
		return filepath.Dir(loc.dir), nil
	}
	return loc.dir, nil
}

// cgParseKeyed finds "key N" in a flat keyed file such as memory.events or
// memory.oom_control.
func cgParseKeyed(b []byte, key string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %q: %w", sc.Text(), err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no %q line (kernel older than 4.13 keeps no OOM kill counter per cgroup)", key)
}

func cgReadProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for f := range strings.FieldsSeq(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %s/cgroup.procs: %w", dir, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func cgWrite(dir, file, value string) error {
	path := filepath.Join(dir, file)
	// cgroupfs files take one value per write(2), without O_CREATE/O_TRUNC
	// semantics mattering; os.WriteFile would do, but be explicit.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, werr)
	}
	if cerr != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, cerr)
	}
	return nil
}

func cgExists(dir, file string) bool {
	_, err := os.Stat(filepath.Join(dir, file))
	return err == nil
}
