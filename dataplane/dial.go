package dataplane

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/bradfitz/gomemcache/memcache"
)

// BandAidDialFunc returns a DialFunc that dials from a 127.x.y.z source
// address (x in 1-254, y in 0-255, z in 1-254), the postmortem's band-aid
// ("it expands the client ip+port space. Crazy, but effective!"). Each
// source address has its own ephemeral port range, so TIME_WAIT sockets
// spread over about 16 million addresses. It only makes sense for a
// memcached on loopback. It dials with a copy of base (nil means a zero
// net.Dialer) whose LocalAddr is set, so the band-aid combines with other
// dialer settings such as a Control function confining source ports.
//
// The addresses are drawn from seed, one per dial in the order dials
// reach it: two dial functions with the same seed dial from the same
// sequence of addresses, one with another seed from another. It is safe
// for concurrent use; concurrent dials take the next address under a
// mutex, held only for the draw, so which of them gets which address
// follows the order they arrive in.
func BandAidDialFunc(base *net.Dialer, seed uint64) DialFunc {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, bandAidStream))
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var d net.Dialer
		if base != nil {
			d = *base
		}
		mu.Lock()
		ip := net.IPv4(127, byte(1+rng.IntN(254)), byte(rng.IntN(256)), byte(1+rng.IntN(254)))
		mu.Unlock()
		d.LocalAddr = &net.TCPAddr{IP: ip}
		return d.DialContext(ctx, network, address)
	}
}

// bandAidStream is the second word of BandAidDialFunc's PCG: it keeps the
// addresses apart from other sequences drawn from the same seed (a load's
// schedule, a port budget's windows).
const bandAidStream = 0xba1d

// countingDial wraps dial so that every dial and every close of a
// memcached connection is counted: closes by the data plane are the
// sockets that go to TIME_WAIT.
func countingDial(dial DialFunc, m *metrics) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		nc, err := dial(ctx, network, address)
		if err != nil {
			kind := errorKind(err)
			m.dials.WithLabelValues(kind).Inc()
			if portKind(kind) {
				m.tot.dialPortErrors.Add(1)
			}
			return nil, err
		}
		m.dials.WithLabelValues("ok").Inc()
		m.connsOpen.Inc()
		m.tot.connsOpen.Add(1)
		return &countedConn{Conn: nc, m: m}, nil
	}
}

type countedConn struct {
	net.Conn
	m      *metrics
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.m.connsOpen.Dec()
		c.m.tot.connsOpen.Add(-1)
		c.m.connsClosed.Inc()
	}
	return c.Conn.Close()
}

// errorKind names the mechanism behind a memcached or store error: the
// "kind" label of error metrics and the "kind" field of error logs.
func errorKind(err error) string {
	var cte *memcache.ConnectTimeoutError
	var ne net.Error
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, syscall.EADDRINUSE):
		return "addr_in_use" // bind: no free source port (postmortem's log line)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "addr_not_avail" // connect: ephemeral ports exhausted
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "conn_reset"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.As(err, &cte):
		return "connect_timeout"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "eof"
	case errors.Is(err, errCorrupt):
		return "corrupt"
	case errors.Is(err, memcache.ErrNoServers):
		return "no_servers"
	case errors.Is(err, memcache.ErrServerError):
		return "server_error"
	default:
		return "other"
	}
}
