package netfault

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/netns"
)

var _ faults.Fault = (*NetnsPortBudget)(nil)

// sysctlPortRange is the ephemeral port range, per network namespace.
const sysctlPortRange = "net/ipv4/ip_local_port_range"

// NetnsPortBudget confines every new outgoing connection made in a network
// namespace to a PortBudget while injected, by setting the namespace's own
// ephemeral port range (net.ipv4.ip_local_port_range): the kernel's own
// limit, for a service under test in a namespace of its own (target.Exec
// with Netns) whose dials no hook reaches. Nothing outside the namespace
// changes. Connections made before keep their ports; Recover restores the
// range Inject found.
type NetnsPortBudget struct {
	// NS is the namespace. Required.
	NS *netns.NS
	// Budget is the range. Required; in a namespace of its own every port
	// is free, so any range of the size wanted serves (NetnsBudget).
	Budget PortBudget

	mu   sync.Mutex
	on   bool
	prev string
}

// NetnsBudget is a budget of size ports at the start of Linux's default
// ephemeral range (32768-60999), whose ports are all free in a network
// namespace made for one run.
func NetnsBudget(size int) PortBudget {
	const low = 32768
	return PortBudget{Low: low, High: uint16(low + size - 1)}
}

// Name returns "netns port budget Low-High".
func (f *NetnsPortBudget) Name() string { return "netns port budget " + f.Budget.String() }

// Inject sets the namespace's ephemeral range to the budget.
func (f *NetnsPortBudget) Inject(context.Context) error {
	if f.NS == nil {
		return errors.New("inject netns port budget: no namespace")
	}
	if f.Budget.Size() == 0 || f.Budget.Low < 1024 {
		return fmt.Errorf("inject netns port budget %s: want a range of unprivileged ports (1024-65535), low to high", f.Budget)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.on {
		return faults.ErrInjected
	}
	prev, err := f.NS.Sysctl(sysctlPortRange)
	if err != nil {
		return fmt.Errorf("inject netns port budget: %w", err)
	}
	if err := f.NS.SetSysctl(sysctlPortRange, strconv.Itoa(int(f.Budget.Low))+" "+strconv.Itoa(int(f.Budget.High))); err != nil {
		return fmt.Errorf("inject netns port budget: %w", err)
	}
	f.prev, f.on = prev, true
	return nil
}

// Recover restores the range Inject found. It is a no-op if the fault is
// not injected.
func (f *NetnsPortBudget) Recover(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.on {
		return nil
	}
	if err := f.NS.SetSysctl(sysctlPortRange, f.prev); err != nil {
		return fmt.Errorf("recover netns port budget: %w", err)
	}
	f.on = false
	return nil
}
