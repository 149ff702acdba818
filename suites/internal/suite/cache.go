package suite

import (
	"context"
	"errors"
	"fmt"

	"github.com/bradfitz/gomemcache/memcache"
	"golang.org/x/sync/errgroup"
)

// forgetConcurrency is how many deletes ForgetKeys has in flight at once.
const forgetConcurrency = 8

// ForgetKeys deletes keys from the memcached servers at addrs (in the
// order the data plane was given them, so that each key is deleted from
// the server that holds it): a cache that no longer has a run's own items,
// as after a restart, without touching anyone else's, as flush_all would
// on a server Spiral does not own. A key already missing is not an error.
func ForgetKeys(ctx context.Context, addrs, keys []string) error {
	mc := memcache.New(addrs...)
	defer func() { _ = mc.Close() }()
	// gctx ends with the first failed delete, and once Wait returns.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(forgetConcurrency)
	for _, k := range keys {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if err := mc.Delete(k); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
				return fmt.Errorf("forget %s: %w", k, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
