package probe

import (
	"fmt"
	"strings"
)

// State is a TCP state as the kernel numbers it (include/net/tcp_states.h).
type State uint8

// TCP states, numbered as in include/net/tcp_states.h. Request sockets (the
// kernel's TCP_NEW_SYN_RECV) are reported as SynRecv, as ss and
// /proc/net/tcp do.
const (
	Established State = 1
	SynSent     State = 2
	SynRecv     State = 3
	FinWait1    State = 4
	FinWait2    State = 5
	TimeWait    State = 6
	Close       State = 7
	CloseWait   State = 8
	LastAck     State = 9
	Listen      State = 10
	Closing     State = 11
)

// stateLimit bounds the State values this package counts: TCP_MAX_STATES
// without the kernel-internal TCP_NEW_SYN_RECV (12) and TCP_BOUND_INACTIVE (13).
const stateLimit = 12

// tcpNewSynRecv is the kernel's state for request sockets
// (include/net/tcp_states.h); sock_diag reports them as SYN_RECV.
const tcpNewSynRecv = 12

// stateNames are the names ss prints (misc/ss.c, sstate_name).
var stateNames = [stateLimit]string{
	"UNKNOWN", "ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2",
	"TIME-WAIT", "UNCONN", "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING",
}

// stateAliases are the names ss accepts after "state" (misc/ss.c, sstate_namel),
// plus the kernel's own spelling in lower case.
var stateAliases = map[string]State{
	"established": Established, "estab": Established,
	"syn-sent": SynSent, "syn-recv": SynRecv, "syn-received": SynRecv,
	"fin-wait-1": FinWait1, "fin-wait1": FinWait1,
	"fin-wait-2": FinWait2, "fin-wait2": FinWait2,
	"time-wait": TimeWait, "timewait": TimeWait,
	"closed": Close, "close": Close, "unconn": Close,
	"close-wait": CloseWait, "last-ack": LastAck,
	"listening": Listen, "listen": Listen, "closing": Closing,
}

// States returns every state a census reports, in kernel order.
func States() []State {
	out := make([]State, 0, stateLimit-1)
	for s := Established; s < stateLimit; s++ {
		out = append(out, s)
	}
	return out
}

// String returns the name ss prints for s, such as "TIME-WAIT".
func (s State) String() string {
	if s == 0 || s >= stateLimit {
		return fmt.Sprintf("STATE(%d)", uint8(s))
	}
	return stateNames[s]
}

// MarshalText encodes s as its ss name.
func (s State) MarshalText() ([]byte, error) {
	if s == 0 || s >= stateLimit {
		return nil, fmt.Errorf("marshal tcp state: unknown state %d", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes any name ParseState accepts.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseState parses a state name as ss accepts it ("time-wait",
// "established", "listening"), as ss prints it ("TIME-WAIT", "ESTAB") or as
// the kernel spells it ("TIME_WAIT"). Case does not matter.
func ParseState(name string) (State, error) {
	key := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(name)), "_", "-")
	if s, ok := stateAliases[key]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("parse tcp state %q: unknown (want one of %s)", name, strings.Join(stateNamesLower(), ", "))
}

func stateNamesLower() []string {
	out := make([]string, 0, stateLimit-1)
	for _, s := range States() {
		out = append(out, strings.ToLower(s.String()))
	}
	return out
}

// stateMask is the kernel's idiag_states bit set (1 << state).
type stateMask uint32

func maskOf(states []State) stateMask {
	if len(states) == 0 {
		var m stateMask
		for s := Established; s < stateLimit; s++ {
			m |= 1 << s
		}
		return m
	}
	var m stateMask
	for _, s := range states {
		m |= 1 << s
	}
	return m
}

func (m stateMask) has(s State) bool { return m&(1<<s) != 0 }
