package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
)

var _ Fault = (*MemoryPressure)(nil)

// MaxBallastBytes caps a ballast at 4 GiB: memory pressure on the data
// plane is a matter of hundreds of MiB against a tight limit, and a larger
// ballast mostly threatens the machine running the tests.
const MaxBallastBytes = 4 << 30

// ballastPage is the stride at which a ballast is touched: one write per
// 4 KiB page makes the kernel back every page, so RSS rises by the ballast.
const ballastPage = 4096

// TightMemory is the aggressive kind of tuning the postmortem describes
// (its values aren't published): GC off (GOGC=off), so that the collector
// runs only when the heap nears GOMEMLIMIT, with the limit 32 MiB above what
// the runtime holds once a 256 MiB ballast stands in for the data plane's
// caches. Allocation then drives a GC cycle every 32 MiB or so.
var TightMemory = MemoryConfig{BallastBytes: 256 << 20, LimitHeadroom: 32 << 20, GCPercent: -1}

// MemoryConfig configures a MemoryPressure fault. The zero value changes
// nothing.
type MemoryConfig struct {
	// BallastBytes is allocated and touched on Inject, so both the Go heap
	// and RSS rise by this much, and freed on Recover. At most
	// MaxBallastBytes and half of the machine's available memory. Defaults
	// to 0 (no ballast).
	BallastBytes int64
	// MemoryLimit is the GOMEMLIMIT (debug.SetMemoryLimit) in bytes set on
	// Inject. Defaults to 0: the limit is left alone unless LimitHeadroom is
	// set.
	MemoryLimit int64
	// LimitHeadroom, when MemoryLimit is 0, sets GOMEMLIMIT to what the
	// runtime holds just after the ballast is allocated (the memory the
	// limit counts: /memory/classes/total:bytes minus
	// /memory/classes/heap/released:bytes) plus this many bytes: a limit
	// tight by construction, whatever the process already holds. Defaults
	// to 0 (unused).
	LimitHeadroom int64
	// GCPercent is the GOGC (debug.SetGCPercent) set on Inject; negative
	// turns the collector off but for the memory limit (GOGC=off). Defaults
	// to 0: GOGC is left alone (GOGC=0 itself can't be asked for).
	GCPercent int
}

// memoryInjected guards the process-wide settings: one MemoryPressure at a
// time, so Recover always restores the settings from before the fault.
var memoryInjected atomic.Bool

// MemoryPressure is a Fault that holds a ballast and sets GOMEMLIMIT and
// GOGC, as a data plane's tight memory tuning would. They are process-wide:
// only one MemoryPressure can be injected at a time in a process, and tests
// that inject one must not run in parallel with tests that measure memory
// or GC.
type MemoryPressure struct {
	cfg MemoryConfig

	mu        sync.Mutex
	on        bool
	ballast   []byte
	prevLimit int64
	prevGC    int
	limit     int64 // the limit set on Inject, or -1 if left alone
}

// NewMemoryPressure returns the fault for cfg. It checks cfg now; nothing
// is allocated or set before Inject.
func NewMemoryPressure(cfg MemoryConfig) (*MemoryPressure, error) {
	switch {
	case cfg.BallastBytes < 0:
		return nil, fmt.Errorf("memory pressure: BallastBytes %d < 0", cfg.BallastBytes)
	case cfg.BallastBytes > MaxBallastBytes:
		return nil, fmt.Errorf("memory pressure: ballast of %d MiB over the cap of %d MiB (MaxBallastBytes)", cfg.BallastBytes>>20, MaxBallastBytes>>20)
	case cfg.MemoryLimit < 0:
		return nil, fmt.Errorf("memory pressure: MemoryLimit %d < 0", cfg.MemoryLimit)
	case cfg.LimitHeadroom < 0:
		return nil, fmt.Errorf("memory pressure: LimitHeadroom %d < 0", cfg.LimitHeadroom)
	}
	return &MemoryPressure{cfg: cfg, limit: -1}, nil
}

// Name describes the fault, e.g. "memory pressure: ballast 256 MiB,
// GOMEMLIMIT +32 MiB, GOGC off".
func (m *MemoryPressure) Name() string {
	s := fmt.Sprintf("memory pressure: ballast %d MiB", m.cfg.BallastBytes>>20)
	switch {
	case m.cfg.MemoryLimit > 0:
		s += fmt.Sprintf(", GOMEMLIMIT %d MiB", m.cfg.MemoryLimit>>20)
	case m.cfg.LimitHeadroom > 0:
		s += fmt.Sprintf(", GOMEMLIMIT +%d MiB", m.cfg.LimitHeadroom>>20)
	}
	switch {
	case m.cfg.GCPercent < 0:
		s += ", GOGC off"
	case m.cfg.GCPercent > 0:
		s += ", GOGC " + strconv.Itoa(m.cfg.GCPercent)
	}
	return s
}

// Limit returns the GOMEMLIMIT Inject set, or -1 if the fault is not
// injected or leaves the limit alone.
func (m *MemoryPressure) Limit() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.limit
}

// Inject allocates and touches the ballast (one page fault per 4 KiB: about
// 50 ms per 256 MiB), then sets GOMEMLIMIT and GOGC. It fails if another
// MemoryPressure is injected, or if the ballast exceeds half the memory
// available on the machine.
func (m *MemoryPressure) Inject(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.on {
		return ErrInjected
	}
	if m.cfg.BallastBytes > 0 {
		avail, err := memAvailable()
		if err != nil {
			return fmt.Errorf("inject %s: %w", m.Name(), err)
		}
		if m.cfg.BallastBytes > avail/2 {
			return fmt.Errorf("inject %s: ballast over half the %d MiB available", m.Name(), avail>>20)
		}
	}
	if !memoryInjected.CompareAndSwap(false, true) {
		return fmt.Errorf("inject %s: another memory pressure fault is injected in this process", m.Name())
	}
	if m.cfg.BallastBytes > 0 {
		b := make([]byte, m.cfg.BallastBytes)
		for i := 0; i < len(b); i += ballastPage {
			b[i] = 1
		}
		m.ballast = b
	}
	m.prevLimit = debug.SetMemoryLimit(-1) // -1 reads without changing
	m.limit = -1
	switch {
	case m.cfg.MemoryLimit > 0:
		m.limit = m.cfg.MemoryLimit
	case m.cfg.LimitHeadroom > 0:
		m.limit = int64(runtimeHeld()) + m.cfg.LimitHeadroom
	}
	if m.limit > 0 {
		debug.SetMemoryLimit(m.limit)
	}
	if m.cfg.GCPercent != 0 {
		m.prevGC = debug.SetGCPercent(m.cfg.GCPercent)
	}
	m.on = true
	return nil
}

// Recover restores GOMEMLIMIT and GOGC as they were before Inject, drops
// the ballast and returns its memory to the operating system
// (debug.FreeOSMemory: a forced GC, which blocks for a GC cycle).
func (m *MemoryPressure) Recover(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.on {
		return nil
	}
	if m.cfg.GCPercent != 0 {
		debug.SetGCPercent(m.prevGC)
	}
	if m.limit > 0 {
		debug.SetMemoryLimit(m.prevLimit)
	}
	m.ballast = nil
	m.limit = -1
	debug.FreeOSMemory()
	m.on = false
	memoryInjected.Store(false)
	return nil
}

// runtimeHeld returns the memory GOMEMLIMIT counts: everything the runtime
// has mapped minus heap memory returned to the OS.
func runtimeHeld() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

// memAvailable returns MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read available memory: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "MemAvailable:" {
			kb, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read available memory: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("read available memory: no MemAvailable in /proc/meminfo")
}
