package probe

import (
	"bufio"
	"context"
)

// SetOpenDiagSocket replaces how the census opens its netlink socket and
// returns a function that restores it.
func SetOpenDiagSocket(open func() (int, error)) (restore func()) {
	old := openDiagSocket
	openDiagSocket = open
	return func() { openDiagSocket = old }
}

// ParseProcNetTCP parses a /proc/net/tcp table and lists the sockets that
// match f.
func ParseProcNetTCP(ctx context.Context, r *bufio.Reader, fam Family, f Filter) ([]Socket, error) {
	var out []Socket
	err := parseProcNetTCP(ctx, r, fam, f, nil, func(s Socket) { out = append(out, s) })
	return out, err
}

// SetLegacyDump turns the one-walk TCPDIAG_GETSOCK dump on or off and returns
// a function that restores it.
func SetLegacyDump(on bool) (restore func()) {
	old := legacyDump
	legacyDump = on
	return func() { legacyDump = old }
}

// FDsByListing is FDs' fallback for kernels that report no size on
// /proc/PID/fd.
func FDsByListing(dir string, self bool) (int, error) { return fdsByListing(dir, self) }

// Fill is Timeline.fill: the rows of the observer that is source src, its
// columns from off, put into t.
func Fill(t *Timeline, src, off int, rows []ObserverRow) { t.fill(src, off, rows) }
