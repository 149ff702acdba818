// Package dataplane is the service under test: batch lookups of posts,
// profiles and interaction counts through memcached, falling back to a CQL
// store on a miss and filling the cache, with every knob the postmortem's
// outage turned on (README, "Where it comes from") in one Config value.
//
// A DataPlane is called directly from Go (GetPostRecords, GetProfiles,
// GetInteractionCounts) or over HTTP/JSON through a Server on a loopback
// listener, so load crosses a real socket:
//
//	dp, err := dataplane.New(dataplane.DefaultConfig(), dataplane.Backends{
//		MemcachedAddrs: []string{"127.0.0.1:11211"},
//		Session:        session,
//		Keyspace:       "spiral",
//	})
//	...
//	defer dp.Close()
//	posts, err := dp.GetPostRecords(ctx, "feedgen", uris)
//
// Metrics live in a registry per DataPlane (Registry, Metrics); nothing is
// global, so several data planes with different configurations can run in
// one process.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/gocql/gocql"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// Backends are the stores a DataPlane reads.
type Backends struct {
	// MemcachedAddrs are memcached servers as host:port; keys are spread
	// over them by gomemcache's ServerList. Required.
	MemcachedAddrs []string
	// Session is an open CQL session. The DataPlane uses it and leaves it
	// open at Close.
	Session *gocql.Session
	// Cluster, used when Session is nil, is the configuration of a session
	// New creates and Close closes.
	Cluster *gocql.ClusterConfig
	// Keyspace holds the posts, profiles and interaction_counts tables.
	// Required.
	Keyspace string
}

// Errors a lookup can fail with besides an *InputError and the context's.
var (
	// ErrCache wraps a memcached failure that failed a request (only under
	// the FailRequest policy).
	ErrCache = errors.New("cache unavailable")
	// ErrStore wraps a CQL store failure.
	ErrStore = errors.New("store unavailable")
)

// DataPlane answers batch lookups. It is safe for concurrent use. Create
// one with New; Close it when done.
type DataPlane struct {
	cfg         Config
	mc          *memcache.Client
	session     *gocql.Session
	ownsSession bool
	keyspace    string
	m           *metrics
	log         *slog.Logger // error lines under LogPolicy
	opsLog      *slog.Logger // rare lines, never dropped
	clients     map[string]bool
	memSem      *semaphore.Weighted // nil: unbounded
	storeSem    *semaphore.Weighted // nil: unbounded
	// storeNow is the store queries in flight; storePeak their highest
	// count since StoreInFlightPeak last read it.
	storeNow, storePeak atomic.Int64
	posts               *kind[Post]
	profiles            *kind[Profile]
	counts              *kind[InteractionCounts]
}

// New validates cfg and returns a DataPlane reading backends. It dials
// nothing up front except, when backends.Session is nil, the CQL session it
// creates from backends.Cluster.
func New(cfg Config, backends Backends) (*DataPlane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(backends.MemcachedAddrs) == 0 {
		return nil, errors.New("new dataplane: no memcached address")
	}
	if err := checkKeyspace(backends.Keyspace); err != nil {
		return nil, fmt.Errorf("new dataplane: %w", err)
	}
	d := &DataPlane{cfg: cfg, keyspace: backends.Keyspace, m: newMetrics()}
	cfg.Clients = slices.Clone(cfg.Clients)
	if len(cfg.Clients) > 0 {
		d.clients = make(map[string]bool, len(cfg.Clients))
		for _, c := range cfg.Clients {
			d.clients[c] = true
		}
	}

	shared := &logShared{sink: cfg.LogSink, m: d.m}
	if cfg.LogPolicy.Mode == LogRateLimited {
		shared.limit = newLimiter(cfg.LogPolicy.PerSecond, cfg.LogPolicy.Burst)
	}
	d.log = slog.New(newLogHandler(shared, true, nil))
	d.opsLog = slog.New(newLogHandler(shared, false, nil))

	ss := new(memcache.ServerList)
	if err := ss.SetServers(backends.MemcachedAddrs...); err != nil {
		return nil, fmt.Errorf("new dataplane: memcached addresses: %w", err)
	}
	d.mc = memcache.NewFromSelector(ss)
	d.mc.MaxIdleConns = cfg.MemcacheMaxIdleConns
	d.mc.Timeout = cfg.MemcacheTimeout
	d.mc.DialContext = countingDial(memcachedDial(cfg), d.m)
	if cfg.MemcacheConcurrency > 0 {
		d.memSem = semaphore.NewWeighted(int64(cfg.MemcacheConcurrency))
	}
	if cfg.StoreConcurrency > 0 {
		d.storeSem = semaphore.NewWeighted(int64(cfg.StoreConcurrency))
	}

	switch {
	case backends.Session != nil:
		d.session = backends.Session
	case backends.Cluster != nil:
		s, err := backends.Cluster.CreateSession()
		if err != nil {
			return nil, fmt.Errorf("new dataplane: create CQL session: %w", err)
		}
		d.session, d.ownsSession = s, true
	default:
		return nil, errors.New("new dataplane: no CQL Session or Cluster")
	}
	d.posts = postKind(d.keyspace)
	d.profiles = profileKind(d.keyspace)
	d.counts = countsKind(d.keyspace)
	return d, nil
}

// memcachedDial returns the function that dials cfg's memcached
// connections: cfg.DialContext, else the band-aid seeded by cfg.Seed if
// cfg.BandAidDialer is set, else a net.Dialer; the last two time out after
// cfg.MemcacheTimeout.
func memcachedDial(cfg Config) DialFunc {
	switch {
	case cfg.DialContext != nil:
		return cfg.DialContext
	case cfg.BandAidDialer:
		return BandAidDialFunc(&net.Dialer{Timeout: cfg.MemcacheTimeout}, cfg.Seed)
	default:
		return (&net.Dialer{Timeout: cfg.MemcacheTimeout}).DialContext
	}
}

// checkKeyspace accepts unquoted CQL identifiers: the keyspace is written
// into query text.
func checkKeyspace(ks string) error {
	if ks == "" || len(ks) > 48 {
		return fmt.Errorf("keyspace %q: want 1 to 48 characters", ks)
	}
	for i := 0; i < len(ks); i++ {
		if c := ks[i]; !isAlnum(c) && c != '_' {
			return fmt.Errorf("keyspace %q: want letters, digits and '_'", ks)
		}
	}
	return nil
}

// Config returns the configuration d was created with.
func (d *DataPlane) Config() Config {
	c := d.cfg
	c.Clients = slices.Clone(c.Clients)
	return c
}

// Registry returns d's Prometheus registry, the one /metrics serves.
func (d *DataPlane) Registry() *prometheus.Registry { return d.m.reg }

// Metrics gathers d's registry into a Snapshot. It costs one Gather: a few
// microseconds per series.
func (d *DataPlane) Metrics() (Snapshot, error) { return snapshot(d.m.reg) }

// Totals reads d's figures a sampler takes every interval, without a
// Gather: see Totals.
func (d *DataPlane) Totals() Totals { return d.m.tot.read() }

// Health checks that every memcached server answers a version command and
// the CQL store a query on system.local. It reports every failure. The
// memcached check is bounded by Config.MemcacheTimeout, the CQL one by ctx
// and Config.StoreTimeout.
func (d *DataPlane) Health(ctx context.Context) error {
	var errs []error
	if err := d.mc.Ping(); err != nil {
		errs = append(errs, fmt.Errorf("memcached: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StoreTimeout)
	defer cancel()
	var v string
	if err := d.session.Query("SELECT release_version FROM system.local").WithContext(ctx).Scan(&v); err != nil {
		errs = append(errs, fmt.Errorf("cql store: %w", err))
	}
	return errors.Join(errs...)
}

// Close closes the idle memcached connections (each leaves a TIME_WAIT
// socket on this host) and the CQL session if New created it. It does not
// wait for lookups in flight; close a Server first.
func (d *DataPlane) Close() error {
	err := d.mc.Close()
	if d.ownsSession {
		d.session.Close()
	}
	if err != nil {
		return fmt.Errorf("close memcached client: %w", err)
	}
	return nil
}

// GetPostRecords returns the post at each AT-URI of uris, in order, nil
// where there is none. client names the caller for metrics and must be
// accepted by Config.Clients. Bad input fails with an *InputError before
// any lookup. It blocks until every key is answered, ctx is done, or
// Config.Deadline passes.
func (d *DataPlane) GetPostRecords(ctx context.Context, client string, uris []string) ([]*Post, error) {
	return lookup(ctx, d, d.posts, client, uris)
}

// GetProfiles returns the profile of each DID of dids, in order, nil where
// there is none. Otherwise as GetPostRecords.
func (d *DataPlane) GetProfiles(ctx context.Context, client string, dids []string) ([]*Profile, error) {
	return lookup(ctx, d, d.profiles, client, dids)
}

// GetInteractionCounts returns the counters of each post AT-URI of uris,
// in order, nil where there are none. Otherwise as GetPostRecords.
func (d *DataPlane) GetInteractionCounts(ctx context.Context, client string, uris []string) ([]*InteractionCounts, error) {
	return lookup(ctx, d, d.counts, client, uris)
}

// deadline applies Config.Deadline to ctx.
func (d *DataPlane) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if d.cfg.Deadline > 0 {
		return context.WithTimeout(ctx, d.cfg.Deadline)
	}
	return context.WithCancel(ctx)
}

// cacheTTL is Config.CacheTTL in memcached's seconds.
func (d *DataPlane) cacheTTL() int32 { return int32(d.cfg.CacheTTL / time.Second) }

// Evict deletes the items of keys (AT-URIs or DIDs, as the RPCs take them)
// from cache (CachePost, CacheProfile or CacheCounts), so their next lookup
// reads the store: a cold cache for these keys without flushing memcached.
// Missing items are not an error. It costs one memcached round trip per
// key, within Config.MemcacheConcurrency.
func (d *DataPlane) Evict(ctx context.Context, cache string, keys []string) error {
	var prefix string
	switch cache {
	case CachePost:
		prefix = d.posts.prefix
	case CacheProfile:
		prefix = d.profiles.prefix
	case CacheCounts:
		prefix = d.counts.prefix
	default:
		return fmt.Errorf("evict: unknown cache %q", cache)
	}
	for _, k := range keys {
		if err := d.acquireMem(ctx); err != nil {
			return fmt.Errorf("evict: %w", err)
		}
		err := d.mc.Delete(cacheKey(prefix, k))
		d.releaseMem()
		if err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			return fmt.Errorf("evict %s %s: %w", cache, k, err)
		}
	}
	return nil
}
