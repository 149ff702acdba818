package suite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"golang.org/x/sync/errgroup"
)

// forgetTimeout bounds one ForgetKeys call on a server when ctx has no
// earlier deadline.
const forgetTimeout = 10 * time.Second

// ForgetKeys deletes keys from the memcached servers at addrs (in the
// order the data plane was given them, so that each key is deleted from
// the server that holds it, as gomemcache's ServerList picks it): a cache
// that no longer has a run's own items, as after a restart, without
// touching anyone else's, as flush_all would on a server Spiral does not
// own. A key already missing is not an error.
//
// The deletes to each server are pipelined on one connection: one at a
// time (8 in flight, a round trip each) slowstore's sweeps of 5,000 keys
// took 163-336 ms on average in an arm (14-49 sweeps), memcached a third
// of a core, where Spiral's own memcached is flushed in about 1 ms (255
// sweeps); pipelined, 12-24 ms (174-211 sweeps; 2026-12-06, quick).
func ForgetKeys(ctx context.Context, addrs, keys []string) error {
	var ss memcache.ServerList
	if err := ss.SetServers(addrs...); err != nil {
		return fmt.Errorf("forget keys: %w", err)
	}
	byServer := map[string][]string{}
	var order []net.Addr
	for _, k := range keys {
		if !legalKey(k) {
			return fmt.Errorf("forget %q: not a memcached key", k)
		}
		a, err := ss.PickServer(k)
		if err != nil {
			return fmt.Errorf("forget %s: %w", k, err)
		}
		if _, ok := byServer[a.String()]; !ok {
			order = append(order, a)
		}
		byServer[a.String()] = append(byServer[a.String()], k)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, a := range order {
		g.Go(func() error { return forgetOn(gctx, a, byServer[a.String()]) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// forgetOn deletes keys from the server at addr, pipelined: one goroutine
// writes every delete while this one reads the answers, so that neither
// side's socket buffer fills and stalls the other.
func forgetOn(ctx context.Context, addr net.Addr, keys []string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, addr.Network(), addr.String())
	if err != nil {
		return fmt.Errorf("forget keys on %s: %w", addr, err)
	}
	defer func() { _ = c.Close() }()
	deadline, ok := ctx.Deadline()
	if !ok || time.Until(deadline) > forgetTimeout {
		deadline = time.Now().Add(forgetTimeout)
	}
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) }) // unblocks both sides at once
	defer stop()

	wrote := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(c, 64<<10)
		for _, k := range keys {
			if _, err := w.WriteString("delete " + k + "\r\n"); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- w.Flush()
	}()
	r := bufio.NewReader(c)
	var rerr error
	for i := 0; i < len(keys) && rerr == nil; i++ {
		line, err := r.ReadString('\n')
		switch reply := strings.TrimRight(line, "\r\n"); {
		case err != nil:
			rerr = fmt.Errorf("forget %s on %s: %w", keys[i], addr, err)
		case reply != "DELETED" && reply != "NOT_FOUND":
			rerr = fmt.Errorf("forget %s on %s: server says %q", keys[i], addr, reply)
		}
	}
	if rerr != nil {
		_ = c.SetDeadline(time.Unix(1, 0)) // the writer may be blocked on a server that stopped reading
		return errors.Join(rerr, ctx.Err())
	}
	if err := <-wrote; err != nil {
		return fmt.Errorf("forget keys on %s: %w", addr, err)
	}
	return nil
}

// legalKey is gomemcache's test of a key: at most 250 bytes, no spaces or
// control characters.
func legalKey(k string) bool {
	if k == "" || len(k) > 250 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] == 0x7f {
			return false
		}
	}
	return true
}
