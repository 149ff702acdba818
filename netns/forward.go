package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Forwarder relays each connection accepted on a listener to a connection
// it dials: a bridge between the machine's loopback and a namespace's (a
// listener inside and a dial outside, or the other way round). Bytes are
// relayed as they come, half-closes passed on; a connection whose dial
// fails is reset at once (its client sees ECONNRESET where a direct dial
// would have been refused).
type Forwarder struct {
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Forward starts relaying connections accepted on ln to dial's. It owns ln.
func Forward(ln net.Listener, dial func(ctx context.Context) (net.Conn, error)) *Forwarder {
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{ln: ln, dial: dial, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	f.wg.Go(f.accept)
	return f
}

// Addr is the listener's address.
func (f *Forwarder) Addr() net.Addr { return f.ln.Addr() }

func (f *Forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return // closed
		}
		f.wg.Go(func() { f.relay(c) })
	}
}

func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	_ = c.Close()
}

func (f *Forwarder) relay(c net.Conn) {
	if !f.track(c) {
		_ = c.Close()
		return
	}
	defer f.untrack(c)
	up, err := f.dial(f.ctx)
	if err != nil {
		// Reset rather than close: the client's next read or write fails
		// (ECONNRESET) as a refused dial would have.
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		return
	}
	if !f.track(up) {
		_ = up.Close()
		return
	}
	defer f.untrack(up)
	var wg sync.WaitGroup
	wg.Go(func() { pipe(up, c) })
	pipe(c, up)
	wg.Wait()
}

// pipe copies src to dst, then half-closes dst for writing (or closes both
// when it can't).
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	_ = dst.Close()
	_ = src.Close()
}

// Close stops accepting, closes every relayed connection and waits for the
// relays to end.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.cancel()
	for c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("close forwarder: %w", err)
	}
	return nil
}
