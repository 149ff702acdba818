package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// DialFunc dials a backend. It has the signature of gomemcache's
// Client.DialContext and of net.Dialer.DialContext, so a method value such
// as PortBudget.Dial or (*DialHook).Dial can be given to either.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// PortBudget confines the source ports the kernel picks for outgoing TCP
// connections to [Low, High], with the Linux IP_LOCAL_PORT_RANGE socket
// option (kernel 6.3 or later) set on each socket before connect. It needs no
// root and no sysctl, and touches no other socket of the machine, so port
// exhaustion happens after Size connections instead of after the whole
// ephemeral range.
//
// The budget counts per destination: connect(2) may reuse a source port
// for another destination address and port, so Size connections fit to each
// destination (all the data plane's memcached connections go to one). A dial
// past the budget fails with the kernel's own error: EADDRNOTAVAIL
// ("connect: cannot assign requested address") for a plain dial,
// EADDRINUSE ("bind: address already in use", the postmortem's log line)
// when the dialer binds a source address first; IsPortExhausted recognises
// both.
//
// Closed connections and the budget (measured on Linux 6.18, see
// TestPortBudgetTimeWait):
//   - the server closed first: the server holds TIME_WAIT and the client's
//     port is back in the budget at once;
//   - the client closed first and the server closed in turn (memcached
//     does): the client holds TIME_WAIT, and the port stays out of the
//     budget until the kernel may reuse it. With net.ipv4.tcp_tw_reuse = 2
//     (the default, loopback only) or 1, that is once the TIME_WAIT is older
//     than net.ipv4.tcp_tw_reuse_delay (1 s by default); with 0, after
//     TIME_WAIT's 60 s. So on loopback a budget of N ports sustains about N
//     new connections per second to one destination;
//   - the client closed first and the server never closes: the client
//     sits in FIN_WAIT2, which is never reused, for net.ipv4.tcp_fin_timeout
//     (60 s).
//
// The zero value is not a budget: Dial refuses it.
type PortBudget struct {
	// Low and High are the first and last source port, inclusive. Both must
	// lie in the system's ephemeral range (net.ipv4.ip_local_port_range,
	// 32768-60999 by default): the kernel silently ignores a bound outside
	// it, so Validate refuses one.
	Low, High uint16
}

// ipLocalPortRangeMinKernel is the first kernel with IP_LOCAL_PORT_RANGE
// (Linux 6.3).
const ipLocalPortRangeMinKernel = "6.3"

// errEmptyBudget is returned for a budget whose range is empty or zero.
var errEmptyBudget = errors.New("port budget: empty range")

// Size returns how many source ports the budget holds.
func (b PortBudget) Size() int {
	if b.Low == 0 || b.High < b.Low {
		return 0
	}
	return int(b.High) - int(b.Low) + 1
}

// Contains reports whether port lies in the budget.
func (b PortBudget) Contains(port int) bool {
	return b.Size() > 0 && port >= int(b.Low) && port <= int(b.High)
}

// String returns "Low-High".
func (b PortBudget) String() string { return fmt.Sprintf("%d-%d", b.Low, b.High) }

// Validate returns an error if the budget is empty or reaches outside the
// system's ephemeral port range. It reads one procfs file.
func (b PortBudget) Validate() error {
	if b.Size() == 0 {
		return fmt.Errorf("%w: %s", errEmptyBudget, b)
	}
	lo, hi, err := EphemeralPortRange()
	if err != nil {
		return fmt.Errorf("port budget: %w", err)
	}
	if int(b.Low) < lo || int(b.High) > hi {
		return fmt.Errorf("port budget %s: outside the ephemeral range %d-%d, where the kernel would ignore it", b, lo, hi)
	}
	return nil
}

// Control sets IP_LOCAL_PORT_RANGE on a socket about to connect. It has the
// signature of net.Dialer.Control; Dialer wires it in for you. On a kernel
// older than 6.3 it fails with ENOPROTOOPT.
func (b PortBudget) Control(network, address string, c syscall.RawConn) error {
	if b.Size() == 0 {
		return fmt.Errorf("%w: %s", errEmptyBudget, b)
	}
	val := int(uint32(b.Low) | uint32(b.High)<<16)
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, val)
	}); err != nil {
		return err
	}
	if serr != nil {
		if errors.Is(serr, unix.ENOPROTOOPT) {
			return fmt.Errorf("set IP_LOCAL_PORT_RANGE %s (needs Linux %s or later): %w", b, ipLocalPortRangeMinKernel, serr)
		}
		return fmt.Errorf("set IP_LOCAL_PORT_RANGE %s: %w", b, serr)
	}
	return nil
}

// Dialer returns a copy of base (nil means a zero net.Dialer) whose sockets
// are confined to the budget; base's own Control or ControlContext runs
// first. Use it to combine the budget with other dialer settings, such as
// the postmortem's band-aid of a random 127.x.y.z source address.
func (b PortBudget) Dialer(base *net.Dialer) *net.Dialer {
	var d net.Dialer
	if base != nil {
		d = *base
	}
	switch {
	case d.ControlContext != nil:
		prev := d.ControlContext
		d.ControlContext = func(ctx context.Context, network, address string, c syscall.RawConn) error {
			if err := prev(ctx, network, address, c); err != nil {
				return err
			}
			return b.Control(network, address, c)
		}
	case d.Control != nil:
		prev := d.Control
		d.Control = func(network, address string, c syscall.RawConn) error {
			if err := prev(network, address, c); err != nil {
				return err
			}
			return b.Control(network, address, c)
		}
	default:
		d.Control = b.Control
	}
	return &d
}

// Dial dials address with its source port confined to the budget. It has
// the signature of gomemcache's Client.DialContext. Past the budget it
// returns the kernel's error unchanged inside the usual *net.OpError, so
// errors.Is(err, syscall.EADDRNOTAVAIL) holds.
func (b PortBudget) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	if b.Size() == 0 {
		return nil, fmt.Errorf("%w: %s", errEmptyBudget, b)
	}
	d := net.Dialer{Control: b.Control}
	return d.DialContext(ctx, network, address)
}

// IsPortExhausted reports whether err says that no source port was free:
// EADDRNOTAVAIL from connect(2), or EADDRINUSE from bind(2) when the dialer
// binds a source address first (the postmortem's "bind: address already in
// use").
func IsPortExhausted(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EADDRINUSE)
}

// EphemeralPortRange returns the system's ephemeral port range
// (net.ipv4.ip_local_port_range).
func EphemeralPortRange() (lo, hi int, err error) {
	const path = "/proc/sys/net/ipv4/ip_local_port_range"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("read ephemeral range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("read ephemeral range: unexpected %s: %q", path, b)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("read ephemeral range: %w", err)
	}
	return lo, hi, nil
}

// freeBudgetTries bounds how many random ranges FreePortBudget examines.
const freeBudgetTries = 200

// budgets remembers the ranges FreePortBudget handed out in this process,
// so that concurrent tests get disjoint budgets. The oldest are forgotten
// once they cover more than half the ephemeral range.
var budgets struct {
	mu     sync.Mutex
	ranges []PortBudget
	ports  int
}

// FreePortBudget returns a budget of size consecutive ports inside the
// ephemeral range, disjoint from the budgets it returned earlier in this
// process, and with every port free on 127.0.0.1 right now (a port bound by
// a listener or held by any socket, TIME_WAIT included, would silently
// shrink the budget). It tries bind(2) on each port, so it costs size
// sockets per range examined; choose sizes of tens to a few thousand.
//
// Another process can still take a port of the range afterwards; a random
// start keeps that unlikely.
func FreePortBudget(size int) (PortBudget, error) {
	lo, hi, err := EphemeralPortRange()
	if err != nil {
		return PortBudget{}, fmt.Errorf("free port budget: %w", err)
	}
	span := hi - lo + 1
	if size < 1 || size > span/4 {
		return PortBudget{}, fmt.Errorf("free port budget: size %d outside 1-%d (a quarter of the ephemeral range %d-%d)", size, span/4, lo, hi)
	}
	budgets.mu.Lock()
	defer budgets.mu.Unlock()
	for range freeBudgetTries {
		start := lo + rand.IntN(span-size+1)
		b := PortBudget{Low: uint16(start), High: uint16(start + size - 1)}
		if overlapsReserved(b) || !allBindable(b) {
			continue
		}
		budgets.ranges = append(budgets.ranges, b)
		budgets.ports += size
		for budgets.ports > span/2 {
			budgets.ports -= budgets.ranges[0].Size()
			budgets.ranges = budgets.ranges[1:]
		}
		return b, nil
	}
	return PortBudget{}, fmt.Errorf("free port budget: no %d free consecutive ports in %d-%d after %d tries", size, lo, hi, freeBudgetTries)
}

func overlapsReserved(b PortBudget) bool {
	for _, r := range budgets.ranges {
		if b.Low <= r.High && r.Low <= b.High {
			return true
		}
	}
	return false
}

// allBindable reports whether each port of b can be bound on 127.0.0.1
// without SO_REUSEADDR, which fails for any port a socket holds, TIME_WAIT
// included. Nothing is left behind: the sockets never listen or connect.
func allBindable(b PortBudget) bool {
	for p := int(b.Low); p <= int(b.High); p++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return false
		}
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: p, Addr: [4]byte{127, 0, 0, 1}})
		_ = unix.Close(fd)
		if err != nil {
			return false
		}
	}
	return true
}

// DialHook is a dial function that can be switched while connections are
// being dialed: the data plane is given hook.Dial once, and faults swap what
// it does. Swapping is one atomic store; dials in progress finish with the
// function they started with. The zero value dials with a zero net.Dialer.
type DialHook struct {
	fn atomic.Pointer[DialFunc]
}

// NewDialHook returns a hook that dials with base (nil means a zero
// net.Dialer).
func NewDialHook(base DialFunc) *DialHook {
	h := &DialHook{}
	h.Swap(base)
	return h
}

// Dial dials with the current function. Give h.Dial to the data plane as
// its memcached DialContext.
func (h *DialHook) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	if fn := h.fn.Load(); fn != nil && *fn != nil {
		return (*fn)(ctx, network, address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// Swap makes fn the dial function (nil means a zero net.Dialer) and returns
// the previous one.
func (h *DialHook) Swap(fn DialFunc) DialFunc {
	prev := h.fn.Swap(&fn)
	if prev == nil {
		return nil
	}
	return *prev
}

// PortBudgetFault confines a DialHook's dials to a PortBudget while
// injected: Inject swaps the hook to the budget's dialer, Recover swaps the
// previous dial function back. Connections dialed during the fault keep
// their ports after Recover; it is the TIME_WAIT they leave that the
// postmortem is about.
type PortBudgetFault struct {
	// Hook is the data plane's dial hook. Required.
	Hook *DialHook
	// Budget is the port range. Required; FreePortBudget picks one.
	Budget PortBudget
	// Base is the dialer the budget is applied to, e.g. one with the
	// band-aid's LocalAddr. Defaults to a zero net.Dialer if nil.
	Base *net.Dialer

	mu   sync.Mutex
	on   bool
	prev DialFunc
}

// NewPortBudgetFault returns a fault confining hook's dials to budget.
func NewPortBudgetFault(hook *DialHook, budget PortBudget) *PortBudgetFault {
	return &PortBudgetFault{Hook: hook, Budget: budget}
}

// Name returns "port budget Low-High".
func (f *PortBudgetFault) Name() string { return "port budget " + f.Budget.String() }

// Inject validates the budget and switches the hook to it.
func (f *PortBudgetFault) Inject(ctx context.Context) error {
	if f.Hook == nil {
		return errors.New("inject port budget: no dial hook")
	}
	if err := f.Budget.Validate(); err != nil {
		return fmt.Errorf("inject port budget: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.on {
		return ErrInjected
	}
	f.prev = f.Hook.Swap(f.Budget.Dialer(f.Base).DialContext)
	f.on = true
	return nil
}

// Recover switches the hook back to the dial function it had before
// Inject. It is a no-op if the fault is not injected.
func (f *PortBudgetFault) Recover(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.on {
		return nil
	}
	f.Hook.Swap(f.prev)
	f.prev, f.on = nil, false
	return nil
}
