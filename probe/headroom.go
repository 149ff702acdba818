package probe

import (
	"context"
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Sysctl files that decide which ports connect(2) may pick
// (Documentation/networking/ip-sysctl.rst). The IPv4 settings apply to IPv6
// too.
const (
	sysctlPortRange     = "/proc/sys/net/ipv4/ip_local_port_range"
	sysctlReservedPorts = "/proc/sys/net/ipv4/ip_local_reserved_ports"
	sysctlTWReuse       = "/proc/sys/net/ipv4/tcp_tw_reuse"
)

// PortRange is an inclusive range of ports.
type PortRange struct {
	Low  uint16 `json:"low"`
	High uint16 `json:"high"`
}

// Size returns the number of ports in r.
func (r PortRange) Size() int {
	if r.High < r.Low {
		return 0
	}
	return int(r.High) - int(r.Low) + 1
}

// Contains reports whether p lies in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.Low && p <= r.High }

// String returns "low-high".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Low, r.High) }

// EphemeralRange reads net.ipv4.ip_local_port_range, the ports connect(2)
// picks from when the caller did not bind one. It costs one small file read.
func EphemeralRange() (PortRange, error) {
	b, err := os.ReadFile(sysctlPortRange)
	if err != nil {
		return PortRange{}, fmt.Errorf("read ephemeral port range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return PortRange{}, fmt.Errorf("read ephemeral port range: malformed %q", b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("read ephemeral port range: malformed %q", b)
	}
	return PortRange{Low: uint16(lo), High: uint16(hi)}, nil
}

// portSet is a bit set of the 65536 ports.
type portSet [1 << 16 / 64]uint64

func (s *portSet) add(p uint16)            { s[p/64] |= 1 << (p % 64) }
func (s *portSet) has(p uint16) bool       { return s[p/64]&(1<<(p%64)) != 0 }
func (s *portSet) countIn(r PortRange) int { return s.countWhere(r, nil) }

// countWhere counts the ports of r in s and not in minus.
func (s *portSet) countWhere(r PortRange, minus *portSet) int {
	n := 0
	for i := range s {
		w := s[i]
		if minus != nil {
			w &^= minus[i]
		}
		if w == 0 {
			continue
		}
		lo, hi := uint32(i*64), uint32(i*64+63)
		if hi < uint32(r.Low) || lo > uint32(r.High) {
			continue
		}
		if lo < uint32(r.Low) {
			w &= ^uint64(0) << (uint32(r.Low) - lo)
		}
		if hi > uint32(r.High) {
			w &= ^uint64(0) >> (hi - uint32(r.High))
		}
		n += bits.OnesCount64(w)
	}
	return n
}

// reservedPorts reads net.ipv4.ip_local_reserved_ports ("8080,9000-9010").
func reservedPorts() (*portSet, error) {
	var s portSet
	b, err := os.ReadFile(sysctlReservedPorts)
	if err != nil {
		return nil, fmt.Errorf("read reserved ports: %w", err)
	}
	for part := range strings.SplitSeq(strings.TrimSpace(string(b)), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.ParseUint(lo, 10, 16)
		h, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil || h < l {
			return nil, fmt.Errorf("read reserved ports: malformed %q", part)
		}
		for p := l; p <= h; p++ {
			s.add(uint16(p))
		}
	}
	return &s, nil
}

// Headroom is how many more connections connect(2) can open toward one
// destination before it fails with EADDRNOTAVAIL ("cannot assign requested
// address", step 2 of the postmortem).
type Headroom struct {
	// Dest is the destination; an unspecified address means any address on
	// Dest's port.
	Dest netip.AddrPort `json:"dest"`
	// Range is net.ipv4.ip_local_port_range.
	Range PortRange `json:"range"`
	// Reserved counts the ports of Range listed in net.ipv4.ip_local_reserved_ports.
	Reserved int `json:"reserved"`
	// Held counts the distinct local ports of Range used by sockets toward
	// Dest, in any state but LISTEN.
	Held int `json:"held"`
	// HeldTimeWait counts the ports of Held whose sockets toward Dest are all
	// in TIME_WAIT. connect(2) may take these over when tcp_tw_reuse allows
	// it (1, or 2 for loopback peers) and the TIME_WAIT socket is older than
	// one second; otherwise they stay held for 60 s.
	HeldTimeWait int `json:"held_time_wait"`
	// TWReuse is net.ipv4.tcp_tw_reuse (0 off, 1 on, 2 loopback only); -1 if unreadable.
	TWReuse int `json:"tw_reuse"`
	// Free is Range.Size() - Reserved - Held: the ports left, counting
	// TIME_WAIT ones as held.
	Free int `json:"free"`
}

// String summarises h on one line.
func (h Headroom) String() string {
	return fmt.Sprintf("ephemeral ports %s (%d, %d reserved): %d held toward %s (%d only in TIME-WAIT), %d free",
		h.Range, h.Range.Size(), h.Reserved, h.Held, h.Dest, h.HeldTimeWait, h.Free)
}

// Headroom counts the ephemeral ports left toward dest: the size of
// ip_local_port_range, less reserved ports, less the local ports held by
// sockets toward dest. It counts ports across all local addresses, which is
// exact for a client that dials from one address (the usual case, and the
// postmortem's 127.0.0.1 -> 127.0.0.1:11211) and conservative for one that
// spreads over several (the postmortem's band-aid). It costs one census of the
// sockets toward dest's port plus three sysctl reads.
func (c Census) Headroom(ctx context.Context, dest netip.AddrPort) (Headroom, error) {
	h := Headroom{Dest: dest, TWReuse: -1}
	r, err := EphemeralRange()
	if err != nil {
		return h, fmt.Errorf("headroom: %w", err)
	}
	h.Range = r
	reserved, err := reservedPorts()
	if err != nil {
		return h, fmt.Errorf("headroom: %w", err)
	}
	h.Reserved = reserved.countIn(r)
	if b, err := os.ReadFile(sysctlTWReuse); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			h.TWReuse = v
		}
	}

	f := Filter{RemotePort: dest.Port()}
	for _, s := range States() {
		if s != Listen {
			f.States = append(f.States, s)
		}
	}
	if a := dest.Addr(); a.IsValid() && !a.IsUnspecified() {
		f.RemoteAddr = a
	}
	var any, live portSet
	_, err = c.walk(ctx, f, nil, func(s Socket) {
		p := s.Local.Port()
		if !r.Contains(p) || reserved.has(p) {
			return
		}
		any.add(p)
		if s.State != TimeWait {
			live.add(p)
		}
	})
	if err != nil {
		return h, fmt.Errorf("headroom toward %s: %w", dest, err)
	}
	h.Held = any.countIn(r)
	h.HeldTimeWait = any.countWhere(r, &live)
	h.Free = r.Size() - h.Reserved - h.Held
	return h, nil
}
