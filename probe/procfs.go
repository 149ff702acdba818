package probe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// procNetTCP names the procfs tables of TCP sockets
// (net/ipv4/tcp_ipv4.c tcp4_seq_show, net/ipv6/tcp_ipv6.c tcp6_seq_show).
var procNetTCP = map[Family]string{IPv4: "/proc/net/tcp", IPv6: "/proc/net/tcp6"}

// procReadBuffer is the read size for /proc/net/tcp: each read(2) of a
// seq_file walks the socket tables from where the last one stopped, so large
// reads mean fewer walks. 20,000 sockets are about 3 MB of text.
const procReadBuffer = 256 << 10

var procBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, procReadBuffer) }}

// procfsWalk reads /proc/net/tcp and tcp6 and filters every line in Go.
// With in, the tables are those of the namespace in runs in (opened there
// as /proc/thread-self/net/tcp: a table is the namespace's it was opened
// in).
func procfsWalk(ctx context.Context, in func(func() error) error, f Filter, count func(State, time.Duration), list func(Socket)) error {
	for _, fam := range f.families() {
		path := procNetTCP[fam]
		var file *os.File
		var err error
		if in != nil {
			if ierr := in(func() error {
				file, err = os.Open(strings.Replace(path, "/proc/net/", "/proc/thread-self/net/", 1))
				return nil
			}); ierr != nil {
				return fmt.Errorf("open socket table: %w", ierr)
			}
		} else {
			file, err = os.Open(path)
		}
		if errors.Is(err, fs.ErrNotExist) && fam == IPv6 {
			continue // no IPv6 in this kernel: no IPv6 sockets
		}
		if err != nil {
			return fmt.Errorf("open socket table: %w", err)
		}
		r := procBuffers.Get().(*bufio.Reader)
		r.Reset(file)
		err = parseProcNetTCP(ctx, r, fam, f, count, list)
		r.Reset(nil)
		procBuffers.Put(r)
		if cerr := file.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	}
	return nil
}

// procCtxCheckEvery is how many lines go by between context checks.
const procCtxCheckEvery = 4096

// parseProcNetTCP parses the table format of tcp4_seq_show:
//
//	sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//	 0: 0100007F:2CCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 12345 ...
//
// Addresses are the kernel's __be32 words printed as host-order hex; ports
// and the state are plain hex.
func parseProcNetTCP(ctx context.Context, r *bufio.Reader, fam Family, f Filter, count func(State, time.Duration), list func(Socket)) error {
	mask := maskOf(f.States)
	header := true
	for n := 0; ; n++ {
		if n%procCtxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, err := r.ReadSlice('\n')
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if header {
			header = false
			continue
		}
		var fields [10][]byte
		if nf := splitFields(line, fields[:]); nf < len(fields) {
			return fmt.Errorf("malformed line %q", bytes.TrimSpace(line))
		}
		st, ok := parseHex(fields[3])
		if !ok || st > 0xff {
			return fmt.Errorf("malformed state in line %q", bytes.TrimSpace(line))
		}
		state := State(st)
		if state == tcpNewSynRecv {
			state = SynRecv
		}
		if !mask.has(state) {
			continue
		}
		local, ok1 := parseProcAddr(fields[1], fam)
		remote, ok2 := parseProcAddr(fields[2], fam)
		if !ok1 || !ok2 {
			return fmt.Errorf("malformed address in line %q", bytes.TrimSpace(line))
		}
		if f.LocalPort != 0 && local.Port() != f.LocalPort {
			continue
		}
		if f.RemotePort != 0 && remote.Port() != f.RemotePort {
			continue
		}
		if !f.remoteAddrMatches(remote.Addr()) {
			continue
		}
		timer, ok := parseProcTimer(fields[5])
		if !ok {
			return fmt.Errorf("malformed timer in line %q", bytes.TrimSpace(line))
		}
		if f.MinTimer > 0 && timer <= f.MinTimer {
			continue
		}
		if count != nil {
			count(state, timer)
		}
		if list != nil {
			uid, _ := parseDec(fields[7])
			inode, _ := parseDec(fields[9])
			list(Socket{Family: fam, State: state, Local: local, Remote: remote, UID: uint32(uid), Inode: uint32(inode), Timer: timer})
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
	}
}

// splitFields fills out with the space-separated fields of line and returns
// how many it found, stopping when out is full.
func splitFields(line []byte, out [][]byte) int {
	n := 0
	i := 0
	for n < len(out) {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\n') {
			i++
		}
		if i >= len(line) {
			break
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' && line[j] != '\n' {
			j++
		}
		out[n] = line[i:j]
		n++
		i = j
	}
	return n
}

// parseProcTimer parses the "tr:tm->when" field, such as "03:00001770":
// the timer that runs (0 for none) and what it has left in clock ticks
// (USER_HZ, 100 a second on Linux; jiffies_delta_to_clock_t).
func parseProcTimer(b []byte) (time.Duration, bool) {
	colon := bytes.IndexByte(b, ':')
	if colon < 0 {
		return 0, false
	}
	tr, ok1 := parseHex(b[:colon])
	ticks, ok2 := parseHex(b[colon+1:])
	if !ok1 || !ok2 {
		return 0, false
	}
	if tr == 0 {
		return 0, true
	}
	return time.Duration(ticks) * 10 * time.Millisecond, true
}

func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | uint64(c-'A'+10)
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

func parseDec(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// parseProcAddr parses "0100007F:2CCB" (IPv4) or 32 hex digits and a port
// (IPv6). Each 8-digit group is one __be32 word printed in host order, so its
// bytes come out reversed on little-endian machines.
func parseProcAddr(b []byte, fam Family) (netip.AddrPort, bool) {
	colon := bytes.IndexByte(b, ':')
	if colon < 0 {
		return netip.AddrPort{}, false
	}
	port, ok := parseHex(b[colon+1:])
	if !ok || port > 0xffff {
		return netip.AddrPort{}, false
	}
	hexAddr := b[:colon]
	words := 1
	if fam == IPv6 {
		words = 4
	}
	if len(hexAddr) != 8*words {
		return netip.AddrPort{}, false
	}
	var raw [16]byte
	for w := range words {
		v, ok := parseHex(hexAddr[8*w : 8*w+8])
		if !ok {
			return netip.AddrPort{}, false
		}
		// The kernel printed the word as a host-order u32: store it back that way.
		binary.NativeEndian.PutUint32(raw[4*w:], uint32(v))
	}
	var a netip.Addr
	if fam == IPv4 {
		a = netip.AddrFrom4([4]byte(raw[:4]))
	} else {
		a = netip.AddrFrom16(raw)
	}
	return netip.AddrPortFrom(a, uint16(port)), true
}
