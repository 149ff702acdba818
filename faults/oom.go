package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/spiral-chaos/spiral/proc"
)

// OOMOptions configures an OOM fault.
type OOMOptions struct {
	// AllocMiB is how much the child is asked to allocate and keep.
	// Defaults to twice the cgroup's limit, so the kernel must kill it
	// whatever GOMEMLIMIT and GOGC say: memory that is kept live can't be
	// collected.
	AllocMiB int
	// KillTimeout bounds Inject's wait for the kernel's kill. Defaults to
	// 10s.
	KillTimeout time.Duration
	// RecoverTimeout bounds Recover's wait for the restarted child to be
	// healthy. Defaults to 30s.
	RecoverTimeout time.Duration
}

const (
	oomDefaultKillTimeout    = 10 * time.Second
	oomDefaultRecoverTimeout = 30 * time.Second
)

// OOM is the fault "the data plane runs out of memory": it makes a
// proc.Supervisor's child (the OOM child, proc.OOMChild) allocate past its
// cgroup's limit so that the kernel OOM-kills it, as the postmortem's data
// plane was under tight GOMEMLIMIT, GOGC and a memory limit.
//
// Lifecycle: Inject asks the healthy child to allocate AllocMiB (GET
// /debug/alloc) and returns once the Supervisor has reaped it and the
// kernel's OOM kill counter for the cgroup has gone up; it fails if the
// child survives or dies any other way. Recover waits until the Supervisor
// has a restarted child answering its health check; it is idempotent. The
// Supervisor's Stats and Exits carry the counts and the time from kill to
// healthy.
type OOM struct {
	sup    *proc.Supervisor
	opts   OOMOptions
	client *http.Client

	mu       sync.Mutex
	injected bool
	kill     proc.ChildExit
	killIdx  int // index of kill in the Supervisor's exits; -1 before one
}

// NewOOM returns the OOM fault for sup, which must run its child in a
// proc.MemoryCgroup (the kernel's counter is the only evidence of an OOM kill
// this fault accepts).
func NewOOM(sup *proc.Supervisor, opts OOMOptions) (*OOM, error) {
	if sup == nil || sup.Cgroup() == nil {
		return nil, errors.New("new oom fault: the supervisor needs a MemoryCgroup")
	}
	if opts.AllocMiB <= 0 {
		opts.AllocMiB = int(2 * sup.Cgroup().Limit() >> 20)
	}
	if opts.AllocMiB > proc.OOMChildMaxAllocMiB {
		return nil, fmt.Errorf("new oom fault: AllocMiB %d above the child's cap of %d", opts.AllocMiB, proc.OOMChildMaxAllocMiB)
	}
	if opts.KillTimeout <= 0 {
		opts.KillTimeout = oomDefaultKillTimeout
	}
	if opts.RecoverTimeout <= 0 {
		opts.RecoverTimeout = oomDefaultRecoverTimeout
	}
	return &OOM{
		sup:     sup,
		opts:    opts,
		killIdx: -1,
		client: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			Timeout:   opts.KillTimeout,
		},
	}, nil
}

// Name is "oom kill".
func (o *OOM) Name() string { return "oom kill" }

// Inject makes the child allocate past its limit and blocks, up to
// KillTimeout, until the kernel has OOM-killed it and the Supervisor has
// recorded the kill. It returns ErrInjected if the fault is in effect.
func (o *OOM) Inject(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.injected {
		return ErrInjected
	}
	st := o.sup.Stats()
	addr, exits := st.Addr, st.Exits
	if addr == "" {
		return errors.New("inject oom: no healthy child")
	}
	ctx, cancel := context.WithTimeout(ctx, o.opts.KillTimeout)
	defer cancel()

	url := fmt.Sprintf("http://%s/debug/alloc?mb=%d", addr, o.opts.AllocMiB)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("inject oom: %w", err)
	}
	// The kill cuts this request off; an error is the expected outcome.
	if resp, err := o.client.Do(req); err == nil {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("inject oom: %s: %s: %s", url, resp.Status, body)
		}
		// The answer can beat the kill; the exit below decides.
	}
	e, err := o.sup.WaitExit(ctx, exits)
	if err != nil {
		return fmt.Errorf("inject oom: child not killed after allocating %d MiB in a %d MiB cgroup: %w",
			o.opts.AllocMiB, o.sup.Cgroup().Limit()>>20, err)
	}
	if !e.OOMKilled {
		return fmt.Errorf("inject oom: child ended but the kernel counted no OOM kill: %s", e)
	}
	o.injected, o.kill, o.killIdx = true, e, exits
	return nil
}

// Recover blocks, up to RecoverTimeout, until a child started after the
// killed one is healthy. It is a no-op returning nil if the fault is not in
// effect.
func (o *OOM) Recover(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.injected {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, o.opts.RecoverTimeout)
	defer cancel()
	if _, err := o.sup.WaitHealthy(ctx, o.kill.Start); err != nil {
		return fmt.Errorf("recover oom: %w", err)
	}
	o.injected = false
	return nil
}

// LastKill is the Supervisor's record of the exit the last successful
// Inject caused, with its Recovery once a restarted child is healthy; ok is
// false before any.
func (o *OOM) LastKill() (e proc.ChildExit, ok bool) {
	o.mu.Lock()
	idx := o.killIdx
	o.mu.Unlock()
	if idx < 0 {
		return proc.ChildExit{}, false
	}
	return o.sup.Exits()[idx], true
}
