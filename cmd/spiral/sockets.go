package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spiral-chaos/spiral/probe"
)

func init() {
	register(command{
		name:    "sockets",
		summary: "count TCP sockets by state toward a port, like a small ss",
		usage: `Usage: spiral sockets [--port P] [--sport P] [--state S]... [--dst ADDR] [--family 4|6] [--list] [--headroom] [--json]

Counts this network namespace's TCP sockets, IPv4 and IPv6, by state, from
netlink sock_diag with the filters applied in the kernel (or /proc/net/tcp
where netlink is refused). --port is the peer's port, as in
ss '( dport = :P )'; --sport is the local port. With no --state every
state's count is printed. For example, TIME_WAIT toward memcached:

	spiral sockets --port 11211 --state time-wait

gives the count of ss -tan state time-wait '( dport = :11211 )'.`,
		run: runSockets,
	})
}

// stateList is a repeatable --state flag that also takes commas.
type stateList []probe.State

func (s *stateList) String() string {
	names := make([]string, len(*s))
	for i, st := range *s {
		names[i] = strings.ToLower(st.String())
	}
	return strings.Join(names, ",")
}

func (s *stateList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		st, err := probe.ParseState(part)
		if err != nil {
			return err
		}
		*s = append(*s, st)
	}
	return nil
}

// portFlag parses a TCP port, 1-65535.
type portFlag uint16

func (p *portFlag) String() string { return strconv.Itoa(int(*p)) }

func (p *portFlag) Set(v string) error {
	n, err := strconv.ParseUint(strings.TrimPrefix(v, ":"), 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1-65535", v)
	}
	*p = portFlag(n)
	return nil
}

// socketsReport is the JSON form of spiral sockets.
type socketsReport struct {
	Filter   probe.Filter    `json:"filter"`
	Method   probe.Method    `json:"method"`
	States   map[string]int  `json:"states"`
	Total    int             `json:"total"`
	Sockets  []probe.Socket  `json:"sockets,omitempty"`
	Headroom *probe.Headroom `json:"headroom,omitempty"`
}

func runSockets(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("sockets", out)
	var (
		port, sport portFlag
		states      stateList
		dst         = fs.String("dst", "", "peer address (IPv4 also matches v4-mapped IPv6 peers)")
		family      = fs.String("family", "any", "address family: any, 4 or 6")
		method      = fs.String("method", "auto", "where to read sockets: auto, netlink or procfs")
		list        = fs.Bool("list", false, "also list every matching socket")
		headroom    = fs.Bool("headroom", false, "also print the ephemeral ports left toward --dst:--port")
		asJSON      = fs.Bool("json", false, "print JSON instead of text")
	)
	fs.Var(&port, "port", "peer (remote) port, as ss dport")
	fs.Var(&sport, "sport", "local port, as ss sport")
	fs.Var(&states, "state", "state to count (time-wait, established, listening, ...); repeatable or comma-separated; default all")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	f := probe.Filter{States: states, RemotePort: uint16(port), LocalPort: uint16(sport)}
	switch *family {
	case "any", "":
	case "4", "ipv4", "inet":
		f.Family = probe.IPv4
	case "6", "ipv6", "inet6":
		f.Family = probe.IPv6
	default:
		return usagef("--family %q: want any, 4 or 6", *family)
	}
	if *dst != "" {
		a, err := netip.ParseAddr(*dst)
		if err != nil {
			return usagef("--dst: %v", err)
		}
		f.RemoteAddr = a
	}
	m, err := probe.ParseMethod(*method)
	if err != nil {
		return usagef("--method: %v", err)
	}
	if *headroom && port == 0 {
		return usagef("--headroom needs --port")
	}
	census := probe.Census{Method: m}

	counts, err := census.Count(ctx, f)
	if err != nil {
		return err
	}
	shown := []probe.State(states)
	if len(shown) == 0 {
		shown = probe.States()
	}
	rep := socketsReport{Filter: f, Method: counts.Method, States: map[string]int{}, Total: counts.Total()}
	for _, s := range shown {
		rep.States[s.String()] = counts.Get(s)
	}
	if *list {
		if rep.Sockets, err = census.List(ctx, f); err != nil {
			return err
		}
		if rep.Sockets == nil {
			rep.Sockets = []probe.Socket{} // listed, none matched
		}
	}
	if *headroom {
		dest := netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port))
		if f.RemoteAddr.IsValid() {
			dest = netip.AddrPortFrom(f.RemoteAddr, uint16(port))
		}
		h, err := census.Headroom(ctx, dest)
		if err != nil {
			return err
		}
		rep.Headroom = &h
	}

	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("write json: %w", err)
		}
		return nil
	}
	return writeSocketsText(out, f, shown, counts, rep)
}

func describeFilter(f probe.Filter) string {
	var parts []string
	if f.RemoteAddr.IsValid() || f.RemotePort != 0 {
		addr := "*"
		if f.RemoteAddr.IsValid() {
			addr = f.RemoteAddr.String()
		}
		port := "*"
		if f.RemotePort != 0 {
			port = strconv.Itoa(int(f.RemotePort))
		}
		parts = append(parts, "peer "+addr+":"+port)
	}
	if f.LocalPort != 0 {
		parts = append(parts, "local port "+strconv.Itoa(int(f.LocalPort)))
	}
	if f.Family != probe.AnyFamily {
		parts = append(parts, f.Family.String()+" only")
	}
	if len(parts) == 0 {
		return "all TCP sockets"
	}
	return "TCP sockets, " + strings.Join(parts, ", ")
}

func writeSocketsText(out io.Writer, f probe.Filter, shown []probe.State, counts probe.Counts, rep socketsReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s)\n", describeFilter(f), counts.Method)
	fmt.Fprintf(&b, "%-12s %8s\n", "State", "Count")
	for _, s := range shown {
		fmt.Fprintf(&b, "%-12s %8d\n", s, counts.Get(s))
	}
	fmt.Fprintf(&b, "%-12s %8d\n", "Total", rep.Total)
	if rep.Sockets != nil {
		width := len("Local Address:Port")
		for _, s := range rep.Sockets {
			width = max(width, len(s.Local.String()))
		}
		fmt.Fprintf(&b, "\n%-12s %-*s  %s\n", "State", width, "Local Address:Port", "Peer Address:Port")
		for _, s := range rep.Sockets {
			fmt.Fprintf(&b, "%-12s %-*s  %s\n", s.State, width, s.Local, s.Remote)
		}
	}
	if rep.Headroom != nil {
		fmt.Fprintf(&b, "\n%s\n", rep.Headroom)
	}
	if _, err := io.WriteString(out, b.String()); err != nil {
		return fmt.Errorf("write counts: %w", err)
	}
	return nil
}
