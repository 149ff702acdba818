package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Wire constants of netlink sock_diag, from include/uapi/linux/sock_diag.h,
// inet_diag.h and netlink.h. golang.org/x/sys/unix has the netlink ones but
// not the inet_diag structures, so they are encoded here.
const (
	sockDiagByFamily    = 20 // SOCK_DIAG_BY_FAMILY
	tcpDiagGetSock      = 18 // TCPDIAG_GETSOCK, the inet_diag request before SOCK_DIAG_BY_FAMILY
	inetDiagReqBytecode = 1  // INET_DIAG_REQ_BYTECODE attribute
	inetDiagBCSCond     = 7  // INET_DIAG_BC_S_COND: local address/port condition
	inetDiagBCDCond     = 8  // INET_DIAG_BC_D_COND: remote address/port condition

	sizeofNlmsghdr      = 16 // struct nlmsghdr
	sizeofInetDiagReqV2 = 56 // struct inet_diag_req_v2, with its 48-byte inet_diag_sockid
	sizeofInetDiagReq   = 60 // struct inet_diag_req (TCPDIAG_GETSOCK): family, lengths, ext, sockid, states, dbs
	sizeofInetDiagMsg   = 72 // struct inet_diag_msg
	sizeofRtattr        = 4  // struct rtattr
	sizeofBCOp          = 4  // struct inet_diag_bc_op {u8 code; u8 yes; u16 no}
	sizeofHostcond      = 8  // struct inet_diag_hostcond {u8 family; u8 prefix_len; int port}, address follows

	// Offsets inside struct inet_diag_msg (and inet_diag_sockid at offset 4).
	msgOffFamily  = 0
	msgOffState   = 1
	msgOffSport   = 4
	msgOffDport   = 6
	msgOffSrc     = 8
	msgOffDst     = 24
	msgOffExpires = 52 // idiag_expires, in ms (jiffies_delta_to_msecs)
	msgOffUID     = 64
	msgOffInode   = 68

	// diagRecvBuffer is the receive buffer for dump answers. The kernel packs
	// a dump into datagrams of at most SKB_WITH_OVERHEAD(32768) bytes
	// (net/netlink/af_netlink.c, netlink_recvmsg), about 370 sockets each;
	// twice that leaves room for any kernel that packs more.
	diagRecvBuffer = 64 << 10

	// diagTimeout bounds one dump when ctx has no deadline: ss answers 20,000
	// sockets in milliseconds, so a dump still silent after this is stuck.
	diagTimeout = 10 * time.Second
)

var diagBuffers = sync.Pool{New: func() any { b := make([]byte, diagRecvBuffer); return &b }}

// legacyDump lets a census of both families use one TCPDIAG_GETSOCK dump;
// tests turn it off to compare with per-family dumps.
var legacyDump = true

// openDiagSocket opens a NETLINK_SOCK_DIAG socket; tests replace it to play
// a kernel that refuses netlink.
var openDiagSocket = func() (int, error) {
	return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
}

// netlinkRefusal reports whether errno means the kernel won't serve sock_diag
// to this process at all, as opposed to a failure of one dump.
func netlinkRefusal(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) ||
		errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP)
}

// netlinkWalk dumps TCP sockets on one NETLINK_SOCK_DIAG socket: one legacy
// dump for both families, or one dump per family. It reports
// ErrNetlinkRefused only when no socket was visited, so a fallback never
// counts twice.
func netlinkWalk(ctx context.Context, in func(func() error) error, f Filter, count func(State, time.Duration), list func(Socket)) error {
	var fd int
	var err error
	if in != nil {
		// A sock_diag socket answers for the namespace it was made in.
		if ierr := in(func() error { fd, err = openDiagSocket(); return nil }); ierr != nil {
			return fmt.Errorf("open sock_diag socket: %w", ierr)
		}
	} else {
		fd, err = openDiagSocket()
	}
	if err != nil {
		if netlinkRefusal(err) {
			return fmt.Errorf("open sock_diag socket: %w: %w", ErrNetlinkRefused, err)
		}
		return fmt.Errorf("open sock_diag socket: %w", err)
	}
	defer func() { _ = unix.Close(fd) }() // a netlink socket has nothing to flush

	timeout := diagTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set sock_diag timeout: %w", err)
	}

	bp := diagBuffers.Get().(*[]byte)
	defer diagBuffers.Put(bp)

	if f.Family == AnyFamily && legacyDump {
		// One TCPDIAG_GETSOCK dump covers both families in one walk of the
		// kernel's socket tables (inet_diag_dump_compat asks for AF_UNSPEC);
		// SOCK_DIAG_BY_FAMILY needs a walk per family, as ss does. Each walk
		// visits every bucket of the established hash (262,144 here), so
		// one walk instead of two halves the census's kernel time.
		n, err := dump(ctx, fd, 1, true, AnyFamily, f, *bp, count, list)
		if err == nil {
			return nil
		}
		if n > 0 || !netlinkRefusal(err) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("dump: %w", err)
		}
		// A kernel without the old request: ask per family.
	}

	visited := 0
	for i, fam := range f.families() {
		n, err := dump(ctx, fd, uint32(i+2), false, fam, f, *bp, count, list)
		visited += n
		if err == nil {
			continue
		}
		if fam == IPv6 && f.Family == AnyFamily && errors.Is(err, unix.ENOENT) {
			// No inet6_diag: a kernel without IPv6 has no IPv6 sockets.
			continue
		}
		if visited == 0 && netlinkRefusal(err) {
			return fmt.Errorf("dump %s: %w: %w", fam, ErrNetlinkRefused, err)
		}
		return fmt.Errorf("dump %s: %w", fam, err)
	}
	return nil
}

// dump sends one dump request, legacy TCPDIAG_GETSOCK for both families or
// SOCK_DIAG_BY_FAMILY for fam, and reads the answers until NLMSG_DONE. It
// returns how many sockets it visited.
func dump(ctx context.Context, fd int, seq uint32, legacy bool, fam Family, f Filter, buf []byte, count func(State, time.Duration), list func(Socket)) (int, error) {
	req := diagRequest(seq, legacy, fam, f)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("send dump request: %w", err)
	}
	visited := 0
	for {
		if err := ctx.Err(); err != nil {
			return visited, err
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return visited, fmt.Errorf("read dump: no answer within the timeout: %w", err)
		}
		if err != nil {
			return visited, fmt.Errorf("read dump: %w", err)
		}
		b := buf[:n]
		for len(b) >= sizeofNlmsghdr {
			l := binary.NativeEndian.Uint32(b[0:4])
			typ := binary.NativeEndian.Uint16(b[4:6])
			mseq := binary.NativeEndian.Uint32(b[8:12])
			if l < sizeofNlmsghdr || int(l) > len(b) {
				return visited, fmt.Errorf("read dump: malformed netlink message of %d bytes", l)
			}
			payload := b[sizeofNlmsghdr:l]
			b = b[min(nlmAlign(int(l)), len(b)):]
			if mseq != seq {
				continue
			}
			switch typ {
			case unix.NLMSG_DONE:
				if len(payload) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(payload)); e < 0 {
						return visited, fmt.Errorf("kernel answered: %w", unix.Errno(-e))
					}
				}
				return visited, nil
			case unix.NLMSG_ERROR:
				if len(payload) < 4 {
					return visited, errors.New("read dump: short netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(payload)); e < 0 {
					return visited, fmt.Errorf("kernel answered: %w", unix.Errno(-e))
				}
			case sockDiagByFamily, tcpDiagGetSock:
				if len(payload) < sizeofInetDiagMsg {
					return visited, fmt.Errorf("read dump: short inet_diag_msg of %d bytes", len(payload))
				}
				visited++
				if f.MinTimer > 0 && diagTimer(payload) <= f.MinTimer {
					continue
				}
				st := State(payload[msgOffState])
				if count != nil {
					count(st, diagTimer(payload))
				}
				if list != nil {
					list(decodeDiagMsg(payload, st))
				}
			}
		}
	}
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// diagTimer is an inet_diag_msg's idiag_expires: what the socket's timer
// has left.
func diagTimer(p []byte) time.Duration {
	return time.Duration(binary.NativeEndian.Uint32(p[msgOffExpires:])) * time.Millisecond
}

func decodeDiagMsg(p []byte, st State) Socket {
	if st == tcpNewSynRecv {
		st = SynRecv
	}
	s := Socket{
		State: st,
		UID:   binary.NativeEndian.Uint32(p[msgOffUID:]),
		Inode: binary.NativeEndian.Uint32(p[msgOffInode:]),
		Timer: diagTimer(p),
	}
	sport := binary.BigEndian.Uint16(p[msgOffSport:])
	dport := binary.BigEndian.Uint16(p[msgOffDport:])
	var src, dst netip.Addr
	if p[msgOffFamily] == unix.AF_INET {
		s.Family = IPv4
		src = netip.AddrFrom4([4]byte(p[msgOffSrc : msgOffSrc+4]))
		dst = netip.AddrFrom4([4]byte(p[msgOffDst : msgOffDst+4]))
	} else {
		s.Family = IPv6
		src = netip.AddrFrom16([16]byte(p[msgOffSrc : msgOffSrc+16]))
		dst = netip.AddrFrom16([16]byte(p[msgOffDst : msgOffDst+16]))
	}
	s.Local = netip.AddrPortFrom(src, sport)
	s.Remote = netip.AddrPortFrom(dst, dport)
	return s
}

// diagRequest encodes a dump request: nlmsghdr, then inet_diag_req_v2 (or
// the legacy inet_diag_req) carrying the state mask, then an
// INET_DIAG_REQ_BYTECODE program for the ports and remote address, so the
// kernel only answers with matching sockets.
func diagRequest(seq uint32, legacy bool, fam Family, f Filter) []byte {
	bc := diagBytecode(f)
	attrLen := 0
	if len(bc) > 0 {
		attrLen = sizeofRtattr + len(bc)
	}
	reqLen, typ, statesOff := sizeofInetDiagReqV2, uint16(sockDiagByFamily), 4
	if legacy {
		reqLen, typ, statesOff = sizeofInetDiagReq, tcpDiagGetSock, 52
	}
	total := sizeofNlmsghdr + reqLen + attrLen
	b := make([]byte, total)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(total))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[8:], seq)
	r := b[sizeofNlmsghdr:]
	if !legacy {
		r[0] = familyAF(fam)
		r[1] = unix.IPPROTO_TCP // the legacy request names TCP by its type
	}
	mask := maskOf(f.States)
	if mask.has(SynRecv) {
		mask |= 1 << tcpNewSynRecv
	}
	ne.PutUint32(r[statesOff:], uint32(mask))
	// inet_diag_sockid stays zero: a dump takes its filters from the bytecode.
	if attrLen > 0 {
		a := b[sizeofNlmsghdr+reqLen:]
		ne.PutUint16(a[0:], uint16(attrLen))
		ne.PutUint16(a[2:], inetDiagReqBytecode)
		copy(a[sizeofRtattr:], bc)
	}
	return b
}

func familyAF(f Family) uint8 {
	if f == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// diagBytecode compiles the port and remote-address filters into an inet_diag
// bytecode program (net/ipv4/inet_diag.c, inet_diag_bc_run): a chain of
// conditions, each jumping to the next on a match and past the end on a
// mismatch, so a socket passes only if every condition holds.
func diagBytecode(f Filter) []byte {
	type cond struct {
		code   uint8
		family uint8
		prefix uint8
		port   int32
		addr   []byte
	}
	var conds []cond
	if f.RemotePort != 0 || f.RemoteAddr.IsValid() {
		c := cond{code: inetDiagBCDCond, family: unix.AF_UNSPEC, port: -1}
		if f.RemotePort != 0 {
			c.port = int32(f.RemotePort)
		}
		if a := f.RemoteAddr.Unmap(); a.IsValid() {
			if a.Is4() {
				// An AF_INET condition also matches v4-mapped peers of
				// AF_INET6 sockets (inet_diag_bc_run).
				c.family, c.prefix = unix.AF_INET, 32
				b := a.As4()
				c.addr = b[:]
			} else {
				c.family, c.prefix = unix.AF_INET6, 128
				b := a.As16()
				c.addr = b[:]
			}
		}
		conds = append(conds, c)
	}
	if f.LocalPort != 0 {
		conds = append(conds, cond{code: inetDiagBCSCond, family: unix.AF_UNSPEC, port: int32(f.LocalPort)})
	}
	if len(conds) == 0 {
		return nil
	}
	size := 0
	for _, c := range conds {
		size += sizeofBCOp + sizeofHostcond + len(c.addr)
	}
	b := make([]byte, size)
	off := 0
	for _, c := range conds {
		opLen := sizeofBCOp + sizeofHostcond + len(c.addr)
		remaining := size - off
		b[off] = c.code
		b[off+1] = uint8(opLen)                                       // yes: next condition, or the end
		binary.NativeEndian.PutUint16(b[off+2:], uint16(remaining+4)) // no: past the end, reject
		h := b[off+sizeofBCOp:]
		h[0] = c.family
		h[1] = c.prefix
		binary.NativeEndian.PutUint32(h[4:], uint32(c.port))
		copy(h[sizeofHostcond:], c.addr)
		off += opLen
	}
	return b
}
