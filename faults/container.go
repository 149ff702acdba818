package faults

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/spiral-chaos/spiral/fixtures"
)

var _ Fault = (*Container)(nil)

// ContainerAction is what a Container fault does to its backend.
type ContainerAction int

const (
	// ContainerPause freezes the container's processes (cgroup freezer):
	// connections stay open and the kernel still accepts new ones, but
	// nothing answers, as with a hung backend. Clients time out.
	ContainerPause ContainerAction = iota
	// ContainerStop stops the container gracefully (SIGTERM, then SIGKILL
	// after 10 s). Clients get connection refused.
	ContainerStop
	// ContainerKill sends SIGKILL: open connections are reset, nothing is
	// flushed, memcached loses its items.
	ContainerKill
	// ContainerRestart stops the container and starts it again; Inject
	// returns once the backend answers. Pooled connections are broken and
	// memcached comes back empty, as after a crash and a restart.
	ContainerRestart
)

// String returns "pause", "stop", "kill" or "restart".
func (a ContainerAction) String() string {
	switch a {
	case ContainerPause:
		return "pause"
	case ContainerStop:
		return "stop"
	case ContainerKill:
		return "kill"
	case ContainerRestart:
		return "restart"
	default:
		return "ContainerAction(" + strconv.Itoa(int(a)) + ")"
	}
}

// Container timings.
const (
	// DefaultReadyTimeout bounds how long Recover waits for the backend to
	// answer: Cassandra 5.0 takes 10-25 s to its first CQL query on 2
	// cores, memcached well under a second.
	DefaultReadyTimeout = 2 * time.Minute
	// containerPoll is how often state and readiness are polled.
	containerPoll = 200 * time.Millisecond
	// containerExitWait bounds how long a kill waits for the engine to
	// report the container not running.
	containerExitWait = 15 * time.Second
)

// Container is a Fault that pauses, stops, kills or restarts a backend's
// container through the Docker engine. Recover brings the backend back
// (unpause, or start) and returns once it answers its protocol's handshake;
// it works whatever state the fault left the container in.
type Container struct {
	// Service is the backend, e.g. Env.Memcached or Env.CQL. Required; an
	// external service (not started by Spiral) gives fixtures.ErrExternal.
	Service *fixtures.Service
	// Action is what Inject does.
	Action ContainerAction
	// ReadyTimeout bounds how long Recover (and Inject for a restart)
	// waits for the backend to answer again. Defaults to
	// DefaultReadyTimeout if zero.
	ReadyTimeout time.Duration

	mu sync.Mutex
	on bool
}

// NewContainerFault returns the fault doing a to s.
func NewContainerFault(s *fixtures.Service, a ContainerAction) *Container {
	return &Container{Service: s, Action: a}
}

// Name returns e.g. "pause memcached".
func (c *Container) Name() string {
	name := "<nil service>"
	if c.Service != nil {
		name = c.Service.Name
	}
	return c.Action.String() + " " + name
}

// Inject applies the action and returns once it is in effect: paused,
// stopped, not running after a kill, answering again after a restart. A
// stop takes up to 10 s, a restart of a CQL store tens of seconds.
func (c *Container) Inject(ctx context.Context) error {
	if c.Service == nil {
		return errors.New("inject container fault: no service")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on {
		return ErrInjected
	}
	var err error
	switch c.Action {
	case ContainerPause:
		err = c.Service.Pause(ctx)
	case ContainerStop:
		err = c.Service.Stop(ctx)
	case ContainerKill:
		if err = c.Service.Kill(ctx); err == nil {
			err = c.waitStopped(ctx)
		}
	case ContainerRestart:
		if err = c.Service.Stop(ctx); err == nil {
			err = c.start(ctx)
		}
	default:
		err = fmt.Errorf("unknown action %v", c.Action)
	}
	if err != nil {
		return fmt.Errorf("inject %s: %w", c.Name(), err)
	}
	c.on = true
	return nil
}

// Recover thaws or starts the container as its state requires and waits
// until the backend answers, at most ReadyTimeout. It is a no-op if the
// fault is not injected. If it fails the fault stays injected, so Recover
// can be called again.
func (c *Container) Recover(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on {
		return nil
	}
	if err := c.start(ctx); err != nil {
		return fmt.Errorf("recover %s: %w", c.Name(), err)
	}
	c.on = false
	return nil
}

// start brings the container to running and ready, from paused, stopped,
// killed or already running.
func (c *Container) start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.readyTimeout())
	defer cancel()
	running, err := c.Service.Running(ctx)
	if err != nil {
		return err
	}
	if !running {
		// Paused or stopped: Running can't tell. Unpause fails on a
		// container that isn't paused; then it needs a start.
		uerr := c.Service.Unpause(ctx)
		if running, err = c.Service.Running(ctx); err != nil {
			return err
		}
		if !running {
			if err := c.Service.Start(ctx); err != nil {
				if uerr != nil {
					return fmt.Errorf("%w (unpause: %w)", err, uerr)
				}
				return err
			}
		}
	}
	return c.waitReady(ctx)
}

func (c *Container) readyTimeout() time.Duration {
	if c.ReadyTimeout > 0 {
		return c.ReadyTimeout
	}
	return DefaultReadyTimeout
}

// waitReady polls the backend's handshake until it answers or ctx ends.
func (c *Container) waitReady(ctx context.Context) error {
	tick := time.NewTicker(containerPoll)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.Service.Ready(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready on %s: %w (last check: %w)", c.Service.Name, c.Service.Addr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// waitStopped polls until the engine reports the container not running.
func (c *Container) waitStopped(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, containerExitWait)
	defer cancel()
	tick := time.NewTicker(containerPoll)
	defer tick.Stop()
	for {
		running, err := c.Service.Running(ctx)
		if err == nil && !running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still running after SIGKILL: %w", c.Service.Name, ctx.Err())
		case <-tick.C:
		}
	}
}
