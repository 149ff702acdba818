package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/gocql/gocql"
	"golang.org/x/sync/errgroup"
)

// batch is one request in flight: its answers and its tallies by source.
type batch[T any] struct {
	d      *DataPlane
	k      *kind[T]
	client string
	keys   []string
	out    []*T
	cache  atomic.Int64
	store  atomic.Int64
	miss   atomic.Int64
}

// lookup is every RPC: check, then look each key up in memcached, then the
// store on a miss, and account for it.
func lookup[T any](ctx context.Context, d *DataPlane, k *kind[T], client string, keys []string) ([]*T, error) {
	start := time.Now()
	if err := d.checkClient(client); err != nil {
		d.m.requests.WithLabelValues(clientLabel(client), k.method, codeBadRequest).Inc()
		return nil, err
	}
	d.m.batchSize.WithLabelValues(client, k.method).Observe(float64(len(keys)))
	if err := checkKeys(d.cfg.MaxBatch, k.field, k.what, k.check, keys); err != nil {
		d.m.requests.WithLabelValues(client, k.method, codeBadRequest).Inc()
		return nil, err
	}
	b := &batch[T]{d: d, k: k, client: client, keys: keys, out: make([]*T, len(keys))}
	err := b.run(ctx)

	code := codeOK
	if err != nil {
		code = resultCode(err)
	}
	cache, store, miss := b.cache.Load(), b.store.Load(), b.miss.Load()
	add := func(source string, n int64) {
		if n > 0 {
			d.m.lookups.WithLabelValues(client, k.method, source).Add(float64(n))
		}
	}
	add(sourceCache, cache)
	add(sourceStore, store)
	d.m.tot.cacheHits.Add(cache)
	d.m.tot.storeReads.Add(store)
	add(sourceMiss, miss)
	add(sourceError, int64(len(keys))-cache-store-miss)
	d.m.requests.WithLabelValues(client, k.method, code).Inc()
	d.m.requestSeconds.WithLabelValues(client, k.method).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", k.method, err)
	}
	return b.out, nil
}

// checkClient is checkClientIn with a map lookup for allowed names.
func (d *DataPlane) checkClient(client string) error {
	if d.clients[client] {
		return nil
	}
	return checkClientIn(d.cfg.Clients, client)
}

// clientLabel is the client label of a request rejected for its client:
// the name itself would let any caller mint label values.
func clientLabel(client string) string {
	if client == "" {
		return "none"
	}
	return "rejected"
}

func resultCode(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codeDeadline
	case errors.Is(err, context.Canceled):
		return codeCanceled
	case errors.Is(err, ErrCache):
		return codeCacheError
	case errors.Is(err, ErrStore):
		return codeStoreError
	default:
		return codeUnavailable
	}
}

func (b *batch[T]) run(ctx context.Context) error {
	n := len(b.keys)
	if n == 0 {
		return nil
	}
	d := b.d
	d.m.lookupsInFlight.Add(float64(n))
	defer d.m.lookupsInFlight.Sub(float64(n))
	d.m.tot.lookupsInFlight.Add(int64(n))
	defer d.m.tot.lookupsInFlight.Add(-int64(n))
	ctx, cancel := d.deadline(ctx)
	defer cancel()
	var g *errgroup.Group
	gctx := ctx
	if d.cfg.OnCacheError == FailRequest {
		// The postmortem's errgroup.Group had no context: every key is
		// tried (and every failure logged) before the first error returns.
		g = new(errgroup.Group)
	} else {
		g, gctx = errgroup.WithContext(ctx)
	}
	if d.cfg.BatchConcurrency > 0 {
		g.SetLimit(d.cfg.BatchConcurrency)
	}
	launched, tasks := 0, 0
	switch d.cfg.Lookup {
	case PerKeyGet:
		tasks = n
		for i := range b.keys {
			if gctx.Err() != nil {
				break
			}
			g.Go(func() error { return b.perKey(gctx, i) })
			launched++
		}
	default:
		size := d.cfg.ChunkSize
		tasks = (n + size - 1) / size
		for lo := 0; lo < n; lo += size {
			if gctx.Err() != nil {
				break
			}
			hi := min(lo+size, n)
			g.Go(func() error { return b.chunk(gctx, lo, hi) })
			launched++
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if launched < tasks {
		// The deadline passed or the caller gave up while launching: keys
		// are unanswered though no goroutine failed.
		return fmt.Errorf("%d of %d keys not looked up: %w", n-int(b.cache.Load()+b.store.Load()+b.miss.Load()), n, context.Cause(ctx))
	}
	return nil
}

// perKey is the postmortem's goroutine body: one Get, then the store on a
// miss.
func (b *batch[T]) perKey(ctx context.Context, i int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key := b.keys[i]
	ck := cacheKey(b.k.prefix, key)
	if err := b.d.acquireMem(ctx); err != nil {
		return err
	}
	item, err := b.d.mc.Get(ck)
	b.d.releaseMem()
	cacheUp := true
	switch {
	case err == nil:
		v := new(T)
		derr := b.k.decode(v, key, item.Value)
		if derr == nil {
			b.out[i] = v
			b.cache.Add(1)
			return nil
		}
		b.cacheError(ctx, "get", key, derr) // a corrupt value is a miss
	case errors.Is(err, memcache.ErrCacheMiss):
	default:
		b.cacheError(ctx, "get", key, err)
		if b.d.cfg.OnCacheError == FailRequest {
			return fmt.Errorf("%w: get %s %s: %w", ErrCache, b.k.keyAttr, key, err)
		}
		cacheUp = false
	}
	return b.fromStore(ctx, i, cacheUp)
}

// chunk reads keys[lo:hi] with one GetMulti, then each miss from the store.
func (b *batch[T]) chunk(ctx context.Context, lo, hi int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cks := cacheKeys(b.k.prefix, b.keys[lo:hi])
	if err := b.d.acquireMem(ctx); err != nil {
		return err
	}
	items, err := b.d.mc.GetMulti(cks)
	b.d.releaseMem()
	cacheUp := err == nil
	if err != nil {
		// GetMulti may return the items of the servers that answered.
		b.cacheError(ctx, "get", b.keys[lo], err)
		if b.d.cfg.OnCacheError == FailRequest {
			return fmt.Errorf("%w: get %d keys from %s %s: %w", ErrCache, hi-lo, b.k.keyAttr, b.keys[lo], err)
		}
	}
	var misses []int
	vals := make([]T, hi-lo) // one allocation for the chunk's answers
	for j, ck := range cks {
		i := lo + j
		if item, ok := items[ck]; ok {
			derr := b.k.decode(&vals[j], b.keys[i], item.Value)
			if derr == nil {
				b.out[i] = &vals[j]
				continue
			}
			b.cacheError(ctx, "get", b.keys[i], derr)
		}
		misses = append(misses, i)
	}
	b.cache.Add(int64(hi - lo - len(misses)))
	switch len(misses) {
	case 0:
		return nil
	case 1:
		return b.fromStore(ctx, misses[0], cacheUp)
	}
	// The chunk's misses go to the store as concurrently as the request's
	// own bound allows: when memcached is down every key of every chunk is a
	// miss, and one goroutine per key is what the bound exists to prevent.
	sg, sctx := errgroup.WithContext(ctx)
	if n := b.d.cfg.BatchConcurrency; n > 0 {
		sg.SetLimit(n)
	}
	for _, i := range misses {
		sg.Go(func() error { return b.fromStore(sctx, i, cacheUp) })
	}
	return sg.Wait()
}

// fromStore reads keys[i] from the CQL store and, if found and fill is
// set, fills the cache. Callers clear fill when memcached just failed the
// read: a fill would only wait out the same failure (a full MemcacheTimeout
// per key while memcached hangs) and hold a memcached slot doing it.
func (b *batch[T]) fromStore(ctx context.Context, i int, fill bool) error {
	d, key := b.d, b.keys[i]
	v, err := storeGet(ctx, d, b.k, key)
	if err != nil {
		if ctx.Err() == nil {
			d.m.storeErrors.WithLabelValues(b.k.table, errorKind(err)).Inc()
			d.log.LogAttrs(ctx, slogError, "failed to read "+b.k.cache+" from store",
				attrStr(b.k.keyAttr, key), attrStr("table", b.k.table), attrStr("client", b.client),
				attrStr("kind", errorKind(err)), attrErr(err))
		}
		return err
	}
	if v == nil {
		b.miss.Add(1)
		return nil
	}
	b.out[i] = v
	b.store.Add(1)
	if !fill {
		return nil
	}
	item := &memcache.Item{Key: cacheKey(b.k.prefix, key), Value: b.k.encode(v), Expiration: d.cacheTTL()}
	if err := d.acquireMem(ctx); err != nil {
		return nil // answered; the fill is skipped past the deadline
	}
	err = d.mc.Set(item)
	d.releaseMem()
	if err != nil {
		b.cacheError(ctx, "set", key, err)
	}
	return nil
}

// StoreInFlightPeak returns the highest number of CQL queries in flight at
// once since the previous call (or New), and starts the next window at the
// number in flight now: the high-water mark of store_queries_in_flight,
// which no sampling interval can fall between. A runner reads it once a
// sample.
func (d *DataPlane) StoreInFlightPeak() int64 {
	now := d.storeNow.Load()
	return max(d.storePeak.Swap(now), now)
}

// storeGet reads one row within Config.StoreConcurrency and
// Config.StoreTimeout; nil, nil is not found.
func storeGet[T any](ctx context.Context, d *DataPlane, k *kind[T], key string) (*T, error) {
	if d.storeSem != nil {
		if err := d.storeSem.Acquire(ctx, 1); err != nil {
			return nil, err
		}
		defer d.storeSem.Release(1)
	}
	d.m.storeInFlight.Inc()
	defer d.m.storeInFlight.Dec()
	d.m.tot.storeInFlight.Add(1)
	defer d.m.tot.storeInFlight.Add(-1)
	for n := d.storeNow.Add(1); ; {
		p := d.storePeak.Load()
		if n <= p || d.storePeak.CompareAndSwap(p, n) {
			break
		}
	}
	defer d.storeNow.Add(-1)
	qctx, cancel := context.WithTimeout(ctx, d.cfg.StoreTimeout)
	defer cancel()
	v, err := k.scan(d.session.Query(k.query, key).WithContext(qctx).Idempotent(true), key)
	switch {
	case err == nil:
		return v, nil
	case errors.Is(err, gocql.ErrNotFound):
		return nil, nil
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		// The request's deadline or cancellation, not the store's fault.
		return nil, fmt.Errorf("read %s %s: %w: %w", k.table, key, ctx.Err(), err)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("read %s %s: %w", k.table, key, err)
	default:
		return nil, fmt.Errorf("%w: read %s %s: %w", ErrStore, k.table, key, err)
	}
}

// cacheError counts and logs one memcached failure in the postmortem's
// words ("failed to set post cache item").
func (b *batch[T]) cacheError(ctx context.Context, op, key string, err error) {
	kindName := errorKind(err)
	b.d.m.cacheErrors.WithLabelValues(b.k.cache, op, kindName, b.client).Inc()
	b.d.m.tot.cacheErrors.Add(1)
	if portKind(kindName) {
		b.d.m.tot.portErrors.Add(1)
	}
	b.d.log.LogAttrs(ctx, slogError, "failed to "+op+" "+b.k.cache+" cache item",
		attrStr("cache", b.k.cache), attrStr(b.k.keyAttr, key), attrStr("client", b.client),
		attrStr("kind", kindName), attrErr(err))
}

func (d *DataPlane) acquireMem(ctx context.Context) error {
	if d.memSem != nil {
		if err := d.memSem.Acquire(ctx, 1); err != nil {
			return err
		}
	}
	d.m.memcacheInFlight.Inc()
	return nil
}

func (d *DataPlane) releaseMem() {
	d.m.memcacheInFlight.Dec()
	if d.memSem != nil {
		d.memSem.Release(1)
	}
}
