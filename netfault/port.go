package netfault

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/probe"
)

var _ faults.Fault = (*PortBudgetFault)(nil)

// PortBudget confines the source ports the kernel picks for outgoing TCP
// connections to [Low, High], with the Linux IP_LOCAL_PORT_RANGE socket
// option (kernel 6.3 or later) set on each socket before connect. It needs no
// root and no sysctl, and touches no other socket of the machine, so port
// exhaustion happens after Size connections instead of after the whole
// ephemeral range.
//
// The budget counts per destination: connect(2) may reuse a source port
// for another destination address and port, so Size connections fit to each
// destination (all the data plane's memcached connections go to one). The
// kernel skips ports that any socket on the machine bound explicitly
// (listeners, bind(2), and for 60 s the TIME_WAIT of a connection that
// bound its source address, as the postmortem's band-aid does), so those
// shrink every budget that holds them; FreePortBudget picks ranges free of
// them. A dial
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
//   - now and then a close of the client's leaves FIN_WAIT with a RST
//     instead of entering TIME_WAIT, and its port is back at once (none of
//     16 closes in most runs, up to 11 in about one run in twelve, see
//     TestPortBudgetTimeWait): a budget holds at most its size, sometimes
//     less;
//   - the client closed first and the server never closes: the client
//     sits in FIN_WAIT2, which is never reused, for net.ipv4.tcp_fin_timeout
//     (60 s).
//
// A PortBudget is a probe.PortRange: Low and High are the first and last
// source port, inclusive. Both must lie in the system's ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default): the kernel
// silently ignores a bound outside it, so Validate refuses one. The zero
// value is not a budget: Dial refuses it.
type PortBudget probe.PortRange

// ipLocalPortRangeMinKernel is the first kernel with IP_LOCAL_PORT_RANGE
// (Linux 6.3).
const ipLocalPortRangeMinKernel = "6.3"

// errEmptyBudget is returned for a budget whose range is empty or zero.
var errEmptyBudget = errors.New("port budget: empty range")

// Size returns how many source ports the budget holds: the range's size,
// or 0 for a range that starts at port 0 (the zero value among them).
func (b PortBudget) Size() int {
	if b.Low == 0 {
		return 0
	}
	return probe.PortRange(b).Size()
}

// Contains reports whether port lies in the budget.
func (b PortBudget) Contains(port int) bool {
	return b.Size() > 0 && port >= 0 && port <= math.MaxUint16 && probe.PortRange(b).Contains(uint16(port))
}

// String returns "Low-High".
func (b PortBudget) String() string { return probe.PortRange(b).String() }

// Validate returns an error if the budget is empty or reaches outside the
// system's ephemeral port range. It reads one procfs file.
func (b PortBudget) Validate() error {
	if b.Size() == 0 {
		return fmt.Errorf("%w: %s", errEmptyBudget, b)
	}
	eph, err := probe.EphemeralRange()
	if err != nil {
		return fmt.Errorf("port budget: %w", err)
	}
	if !eph.Contains(b.Low) || !eph.Contains(b.High) {
		return fmt.Errorf("port budget %s: outside the ephemeral range %s, where the kernel would ignore it", b, eph)
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

// budgets remembers the ranges FreePortBudget handed out in this process,
// so that concurrent tests get disjoint budgets. The oldest are forgotten
// once they cover more than half the ephemeral range.
var budgets struct {
	mu     sync.Mutex
	ranges []PortBudget
	ports  int
}

// Bounds of FreePortBudget's scans: it examines windows of 4 x size ports,
// at least 1024 and at most 2048 (one descriptor per port for a moment),
// but never fewer than size.
const (
	scanWindowMin = 1024
	scanWindowMax = 2048
)

// FreePortBudget returns a budget in which a new destination can have size
// connections right now, inside the ephemeral range and disjoint from the
// budgets it returned earlier in this process.
//
// It asks the kernel which ports are usable: it connects sockets confined
// to a window of the range to a listener of its own (bound outside the
// window) until the kernel has no port left in the window, then resets
// them all (SO_LINGER 0, so no TIME_WAIT is left). A port bound by a
// listener or an explicit bind(2) anywhere on the machine is unusable for
// every destination: the postmortem's band-aid binds every source address,
// and each of its TIME_WAIT sockets keeps its port bound for 60 s. Ports
// that other sockets only connect(2) from, TIME_WAIT included, stay
// usable: the kernel shares them among destinations.
//
// It returns size consecutive usable ports if it finds them (then Size()
// == size). On a machine where many sockets bound their source port lately
// (up to half the range while other suites ran here) such runs may not
// exist; it then returns the narrowest range holding exactly size usable
// ports, whose other ports rejoin the budget as their holders let go
// (within 60 s for TIME_WAIT), so Size() > size and the budget may grow.
//
// Every random choice comes from seed: the windows examined, in order, and
// the budget picked among those a window offers. The same seed picks the
// same budget as long as the same ports are usable and this process handed
// out the same budgets before it (a replay of one test of several finds
// none of the earlier tests' budgets reserved, and may pick another).
// Callers that try again after an error should change the seed, or they
// examine the same windows again.
//
// A window costs one loopback handshake (about 40 µs) and, for a moment,
// one descriptor per port: 4 x size ports, at least 1024 and at most 2048.
// A search scans up to twice the range (about 1 s). size is at most a
// quarter of the ephemeral range and net.core.somaxconn (4096 by default),
// the probe listener's queue.
func FreePortBudget(size int, seed uint64) (PortBudget, error) {
	eph, err := probe.EphemeralRange()
	if err != nil {
		return PortBudget{}, fmt.Errorf("free port budget: %w", err)
	}
	lo, hi := int(eph.Low), int(eph.High)
	span := hi - lo + 1
	limit := min(span/4, somaxconn())
	if size < 1 || size > limit {
		return PortBudget{}, fmt.Errorf("free port budget: size %d outside 1-%d (a quarter of the ephemeral range %d-%d, and net.core.somaxconn)", size, limit, lo, hi)
	}
	window := max(min(max(4*size, scanWindowMin), scanWindowMax, limit), size)
	budgets.mu.Lock()
	defer budgets.mu.Unlock()
	rng := rand.New(rand.NewPCG(seed, portBudgetStream))
	usable := func(w PortBudget) ([]bool, error) { return usablePorts(w, lo, hi) }
	b, err := pickBudget(size, window, lo, hi, rng, usable, overlapsReserved)
	if err != nil {
		return PortBudget{}, fmt.Errorf("free port budget: %w", err)
	}
	return reserve(b, span), nil
}

// portBudgetStream is the second word of FreePortBudget's PCG: it keeps
// the windows' sequence apart from other sequences drawn from the same
// seed (a load's schedule, the band-aid's addresses).
const portBudgetStream = 0x90b7

// pickBudget is FreePortBudget's search over the ephemeral range lo-hi:
// it examines windows of window ports drawn from rng, asks usable which
// ports of each the kernel gives out, and returns a run of size usable
// ports that reserved does not refuse, drawn from rng among those of the
// first window holding one; failing that, the narrowest range holding
// size usable ports that it saw. Given the same rng state and the same
// answers from usable and reserved, it returns the same budget.
func pickBudget(size, window, lo, hi int, rng *rand.Rand, usable func(PortBudget) ([]bool, error), reserved func(PortBudget) bool) (PortBudget, error) {
	span := hi - lo + 1
	tries := 2 * span / window // windows are random: about twice the range
	var fallback PortBudget    // narrowest range with size usable ports
	for range tries {
		start := lo + rng.IntN(span-window+1)
		w := PortBudget{Low: uint16(start), High: uint16(start + window - 1)}
		ok, err := usable(w)
		if err != nil {
			return PortBudget{}, err
		}
		var ports []int // usable ports of w, ascending
		for i, u := range ok {
			if u {
				ports = append(ports, start+i)
			}
		}
		var clean []PortBudget
		for i := 0; i+size <= len(ports); i++ {
			b := PortBudget{Low: uint16(ports[i]), High: uint16(ports[i+size-1])}
			if reserved(b) {
				continue
			}
			if b.Size() == size {
				clean = append(clean, b)
			} else if fallback.Size() == 0 || b.Size() < fallback.Size() {
				fallback = b
			}
		}
		if len(clean) > 0 {
			return clean[rng.IntN(len(clean))], nil
		}
	}
	if fallback.Size() > 0 {
		return fallback, nil
	}
	return PortBudget{}, fmt.Errorf("fewer than %d usable ports in each of %d windows of %d ports in %d-%d (ports bound elsewhere, e.g. held in TIME_WAIT by connections that bound their source address, stay unusable for up to 60 s)", size, tries, window, lo, hi)
}

// reserve records b as handed out and returns it. budgets.mu must be held.
func reserve(b PortBudget, span int) PortBudget {
	budgets.ranges = append(budgets.ranges, b)
	budgets.ports += b.Size()
	for budgets.ports > span/2 {
		budgets.ports -= budgets.ranges[0].Size()
		budgets.ranges = budgets.ranges[1:]
	}
	return b
}

func overlapsReserved(b PortBudget) bool {
	for _, r := range budgets.ranges {
		if b.Low <= r.High && r.Low <= b.High {
			return true
		}
	}
	return false
}

// somaxconn returns net.core.somaxconn, or 4096 (its default since Linux
// 5.4) if it can't be read.
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 4096
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 1 {
		return 4096
	}
	return n
}

// usablePorts reports, for each port of w, whether the kernel gives it to
// a socket confined to w connecting to a fresh loopback listener. It
// connects until the kernel has no port left in w, without accepting, then
// resets every socket, leaving no TIME_WAIT behind. Connect on loopback
// completes in the kernel, so the blocking calls return at once. The
// listener's own port is drawn from the larger part of the ephemeral range
// lo-hi beside w, so that it never takes a port of w: otherwise each probe
// would find a different port of w unusable, and the same seed would pick
// different budgets.
func usablePorts(w PortBudget, lo, hi int) ([]bool, error) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("probe listener: %w", err)
	}
	defer func() { _ = unix.Close(ln) }()
	lnRange := PortBudget{Low: uint16(lo), High: w.Low - 1}
	if int(w.Low)-lo < hi-int(w.High) {
		lnRange = PortBudget{Low: w.High + 1, High: uint16(hi)}
	}
	if lnRange.Size() > 0 {
		val := int(uint32(lnRange.Low) | uint32(lnRange.High)<<16)
		if err := unix.SetsockoptInt(ln, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, val); err != nil {
			return nil, fmt.Errorf("probe listener: set IP_LOCAL_PORT_RANGE %s: %w", lnRange, err)
		}
	}
	loopback := [4]byte{127, 0, 0, 1}
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		return nil, fmt.Errorf("probe listener: %w", err)
	}
	if err := unix.Listen(ln, w.Size()); err != nil {
		return nil, fmt.Errorf("probe listener: %w", err)
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		return nil, fmt.Errorf("probe listener: %w", err)
	}
	dst := &unix.SockaddrInet4{Addr: loopback, Port: sa.(*unix.SockaddrInet4).Port}

	fds := make([]int, 0, w.Size())
	defer func() {
		for _, fd := range fds {
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			_ = unix.Close(fd)
		}
	}()
	usable := make([]bool, w.Size())
	val := int(uint32(w.Low) | uint32(w.High)<<16)
	for range w.Size() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("probe socket: %w", err)
		}
		fds = append(fds, fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, val); err != nil {
			return nil, fmt.Errorf("probe socket: set IP_LOCAL_PORT_RANGE %s: %w", w, err)
		}
		for {
			err = unix.Connect(fd, dst)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			break // every usable port of w is taken by the probe
		}
		if err != nil {
			return nil, fmt.Errorf("probe connect: %w", err)
		}
		local, err := unix.Getsockname(fd)
		if err != nil {
			return nil, fmt.Errorf("probe socket: %w", err)
		}
		if p := local.(*unix.SockaddrInet4).Port; w.Contains(p) {
			usable[p-int(w.Low)] = true
		}
	}
	return usable, nil
}

// DialHook is a dial function that can be switched while connections are
// being dialed: the data plane is given hook.Dial once, and faults swap what
// it does. Swapping is one atomic store; dials in progress finish with the
// function they started with. The zero value dials with a zero net.Dialer.
type DialHook struct {
	fn atomic.Pointer[dataplane.DialFunc]
}

// NewDialHook returns a hook that dials with base (nil means a zero
// net.Dialer).
func NewDialHook(base dataplane.DialFunc) *DialHook {
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
func (h *DialHook) Swap(fn dataplane.DialFunc) dataplane.DialFunc {
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
	prev dataplane.DialFunc
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
		return faults.ErrInjected
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
