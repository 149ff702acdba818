package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Lookup is how a batch is read from memcached.
type Lookup int

const (
	// PerKeyGet issues one memcached Get per key, each in its own goroutine,
	// as the postmortem's GetPostRecords did. Every concurrent Get holds its
	// own connection, so the number of connections follows the number of
	// goroutines.
	PerKeyGet Lookup = iota + 1
	// ChunkedGetMulti splits the batch into chunks of Config.ChunkSize keys
	// and reads each chunk with one GetMulti: one connection and one round
	// trip per chunk and server.
	ChunkedGetMulti
)

// String returns the strategy's name as used in metrics and logs.
func (l Lookup) String() string {
	switch l {
	case PerKeyGet:
		return "per_key_get"
	case ChunkedGetMulti:
		return "chunked_get_multi"
	default:
		return fmt.Sprintf("Lookup(%d)", int(l))
	}
}

// CacheErrorPolicy is what a lookup does when memcached fails with
// something other than a miss.
type CacheErrorPolicy int

const (
	// FailRequest returns the error: the whole batch fails, as the
	// postmortem's code did (`if err != nil { return err }`). As there, a
	// failure does not cancel the other keys' lookups (errgroup.Group
	// without a context): every key is tried, and every failure logged,
	// before the request answers.
	FailRequest CacheErrorPolicy = iota + 1
	// FallBackToStore treats the key as a miss and reads the CQL store,
	// within Config.StoreConcurrency.
	FallBackToStore
)

// LogMode selects how error lines reach Config.LogSink.
type LogMode int

const (
	// LogEvery writes one line per error, as the postmortem's data plane did
	// ("whenever we get an error from memcache, we log it").
	LogEvery LogMode = iota + 1
	// LogRateLimited writes at most LogPolicy.PerSecond lines per second
	// (plus LogPolicy.Burst) and counts the rest in the
	// spiral_dataplane_log_lines_dropped_total metric. The first line written
	// after drops carries the number dropped since the previous line.
	LogRateLimited
)

// LogPolicy says how many error lines the data plane writes.
type LogPolicy struct {
	Mode LogMode
	// PerSecond is the steady rate of lines allowed by LogRateLimited.
	// Ignored by LogEvery.
	PerSecond int
	// Burst is how many lines above PerSecond one second may carry.
	// Ignored by LogEvery.
	Burst int
}

// DialFunc dials a backend: memcached, in Config.DialContext. It has the
// signature of gomemcache's Client.DialContext and net.Dialer.DialContext,
// so a method value such as netfault.PortBudget.Dial or
// (*netfault.DialHook).Dial can be given to either.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Config is every knob of the data plane that the incident turns on, so
// one value expresses one configuration. Start from IncidentConfig or
// DefaultConfig and change fields; the zero value is not valid.
type Config struct {
	// BatchConcurrency bounds the goroutines working on one request
	// (errgroup.SetLimit): per key with PerKeyGet, per chunk with
	// ChunkedGetMulti. 0 means unbounded: one goroutine per key or chunk, the
	// postmortem's missing limit.
	BatchConcurrency int
	// Lookup is the memcached read strategy.
	Lookup Lookup
	// ChunkSize is the number of keys per GetMulti with ChunkedGetMulti.
	// Ignored by PerKeyGet.
	ChunkSize int
	// MemcacheConcurrency bounds memcached operations in flight across the
	// whole instance (every request and cache fill). While it is at most
	// MemcacheMaxIdleConns, the idle pool can take back every connection,
	// so none is closed into TIME_WAIT. 0 means unbounded.
	MemcacheConcurrency int
	// MemcacheMaxIdleConns is gomemcache's Client.MaxIdleConns: idle
	// connections kept per memcached address. Connections returned beyond
	// it are closed by the data plane, which leaves them in TIME_WAIT on its
	// side for 60 seconds.
	MemcacheMaxIdleConns int
	// MemcacheTimeout is gomemcache's Client.Timeout: dial, read and write
	// timeout of one memcached operation.
	MemcacheTimeout time.Duration
	// CacheTTL is the expiration of items the data plane fills into
	// memcached. It is truncated to whole seconds; 0 means no expiration.
	CacheTTL time.Duration
	// OnCacheError is what a lookup does when memcached fails.
	OnCacheError CacheErrorPolicy
	// StoreTimeout bounds one CQL query (on top of the request deadline).
	StoreTimeout time.Duration
	// StoreConcurrency bounds CQL queries in flight across the whole
	// instance. 0 means unbounded.
	StoreConcurrency int
	// MaxBatch is the most keys one request may carry; a larger batch is
	// rejected before any lookup. 0 means no limit.
	MaxBatch int
	// MaxBodyBytes is the largest HTTP request body accepted; a larger one is
	// rejected with 413. 0 means no limit.
	MaxBodyBytes int64
	// Deadline bounds one request, from decoding to answer. 0 means none.
	Deadline time.Duration
	// Clients lists the client names accepted. Empty means any well-formed
	// name; each distinct name is a label value in every per-client metric.
	Clients []string
	// LogPolicy says how many error lines are written.
	LogPolicy LogPolicy
	// LogSink receives the JSON log lines, one Write call per line. The data
	// plane holds no lock around Write: concurrent lines reach the sink
	// concurrently, so the sink decides whether writers queue (an *os.File
	// serialises its writers) or each block an OS thread (raw write(2) on a
	// blocking descriptor). It must be safe for concurrent use (see
	// SyncWriter). nil discards lines (they are still counted).
	LogSink io.Writer
	// DialContext, if set, dials every memcached connection (the fault
	// package confines source ports through it). nil dials with a
	// net.Dialer, or with BandAidDialFunc if BandAidDialer is set.
	DialContext DialFunc
	// BandAidDialer dials memcached from 127.x.y.z source addresses drawn
	// from Seed, the postmortem's band-aid: it multiplies the loopback
	// address and port space, so TIME_WAIT no longer exhausts it. Use
	// BandAidDialFunc to combine it with a custom dialer in DialContext.
	BandAidDialer bool
	// Seed drives the data plane's random choices: BandAidDialer's source
	// addresses, and nothing without it. 0 is a seed like any other: the
	// zero value dials from the same addresses, in the same order, every
	// run. A scenario sets it from its own seed.
	Seed uint64
}

// Figures from the postmortem of the outage Spiral replays (README, "Where
// it comes from").
const (
	// PostmortemMaxIdleConns is the postmortem's memcached idle pool size
	// ("our max idle conn pool size was 1000").
	PostmortemMaxIdleConns = 1000
	// PostmortemBatchSize is the largest batch the new internal client sent
	// ("batches of 15-20 thousand URIs at a time").
	PostmortemBatchSize = 20000
)

// Defaults of the fixed service.
const (
	// DefaultBatchConcurrency bounds the goroutines of one request. With
	// ChunkedGetMulti it is the chunks read at once: 16 chunks of 100 keys
	// keep 2 cores busy while a batch of 20,000 keys needs 16 connections.
	DefaultBatchConcurrency = 16
	// DefaultChunkSize is the keys per GetMulti: a 20,000-key batch is 200
	// round trips of about 10 kB each.
	DefaultChunkSize = 100
	// DefaultMemcacheConcurrency is below PostmortemMaxIdleConns, so every
	// connection fits back into the idle pool and none is closed.
	DefaultMemcacheConcurrency = 256
	// DefaultStoreConcurrency bounds CQL queries per instance: enough to
	// keep a single Cassandra or Scylla node busy, small enough that a
	// memcached outage does not become a store outage.
	DefaultStoreConcurrency = 64
	// DefaultMaxBatch lets the postmortem's 15-20k URI batches through
	// (bounded concurrency makes them safe) and rejects anything larger
	// than a quarter above them.
	DefaultMaxBatch = 25000
	// DefaultMaxBodyBytes fits DefaultMaxBatch URIs of up to 300 bytes.
	DefaultMaxBodyBytes = 8 << 20
	// DefaultDeadline bounds one request; a 20,000-key batch of cache
	// misses read from a single store node takes a few seconds.
	DefaultDeadline = 15 * time.Second
	// DefaultLogPerSecond and DefaultLogBurst bound error lines: a few per
	// second name the failure; the rest are counted, not written.
	DefaultLogPerSecond = 10
	DefaultLogBurst     = 20
)

// IncidentConfig returns the data plane as the postmortem describes it:
// one goroutine and one memcached Get per key with no bound ("this endpoint
// did not [bound concurrency]"), an idle pool of 1000 connections, every
// cache error logged, a cache error failing the batch, no batch limit and no
// request deadline.
func IncidentConfig() Config {
	return Config{
		BatchConcurrency:     0,
		Lookup:               PerKeyGet,
		ChunkSize:            DefaultChunkSize,
		MemcacheConcurrency:  0,
		MemcacheMaxIdleConns: PostmortemMaxIdleConns,
		MemcacheTimeout:      500 * time.Millisecond, // gomemcache's DefaultTimeout
		CacheTTL:             time.Hour,
		OnCacheError:         FailRequest,
		StoreTimeout:         5 * time.Second,
		StoreConcurrency:     0,
		MaxBatch:             0,
		MaxBodyBytes:         0,
		Deadline:             0,
		LogPolicy:            LogPolicy{Mode: LogEvery},
	}
}

// PostmortemFixConfig returns the postmortem's own fix alone: the incident
// configuration with each batch's lookups bounded (errgroup.SetLimit,
// DefaultBatchConcurrency) and nothing else changed.
func PostmortemFixConfig() Config {
	c := IncidentConfig()
	c.BatchConcurrency = DefaultBatchConcurrency
	return c
}

// DefaultConfig returns the fixed data plane: the postmortem's fix (bounded
// concurrency per request, errgroup.SetLimit) plus chunked GetMulti, a cap
// on memcached operations below the idle pool size, a bounded CQL fallback,
// rate-limited error logs counted in metrics ("I'd prefer to do prometheus
// metrics"), a batch limit and a request deadline.
func DefaultConfig() Config {
	return Config{
		BatchConcurrency:     DefaultBatchConcurrency,
		Lookup:               ChunkedGetMulti,
		ChunkSize:            DefaultChunkSize,
		MemcacheConcurrency:  DefaultMemcacheConcurrency,
		MemcacheMaxIdleConns: PostmortemMaxIdleConns,
		MemcacheTimeout:      500 * time.Millisecond,
		CacheTTL:             time.Hour,
		OnCacheError:         FallBackToStore,
		StoreTimeout:         5 * time.Second,
		StoreConcurrency:     DefaultStoreConcurrency,
		MaxBatch:             DefaultMaxBatch,
		MaxBodyBytes:         DefaultMaxBodyBytes,
		Deadline:             DefaultDeadline,
		LogPolicy:            LogPolicy{Mode: LogRateLimited, PerSecond: DefaultLogPerSecond, Burst: DefaultLogBurst},
	}
}

// Validate reports every problem with c, one per line, or nil.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.BatchConcurrency < 0 {
		bad("BatchConcurrency is %d: want 0 (unbounded) or more", c.BatchConcurrency)
	}
	switch c.Lookup {
	case PerKeyGet:
	case ChunkedGetMulti:
		if c.ChunkSize < 1 {
			bad("ChunkSize is %d: ChunkedGetMulti needs 1 or more", c.ChunkSize)
		}
	default:
		bad("Lookup is %v: want PerKeyGet or ChunkedGetMulti", c.Lookup)
	}
	if c.MemcacheConcurrency < 0 {
		bad("MemcacheConcurrency is %d: want 0 (unbounded) or more", c.MemcacheConcurrency)
	}
	if c.MemcacheMaxIdleConns < 1 {
		bad("MemcacheMaxIdleConns is %d: want 1 or more", c.MemcacheMaxIdleConns)
	}
	if c.MemcacheTimeout <= 0 {
		bad("MemcacheTimeout is %v: want more than 0", c.MemcacheTimeout)
	}
	if c.CacheTTL < 0 || c.CacheTTL > 30*24*time.Hour {
		bad("CacheTTL is %v: want 0 (no expiration) to 30 days (memcached reads more as a Unix time)", c.CacheTTL)
	}
	switch c.OnCacheError {
	case FailRequest, FallBackToStore:
	default:
		bad("OnCacheError is %d: want FailRequest or FallBackToStore", int(c.OnCacheError))
	}
	if c.StoreTimeout <= 0 {
		bad("StoreTimeout is %v: want more than 0", c.StoreTimeout)
	}
	if c.StoreConcurrency < 0 {
		bad("StoreConcurrency is %d: want 0 (unbounded) or more", c.StoreConcurrency)
	}
	if c.MaxBatch < 0 {
		bad("MaxBatch is %d: want 0 (no limit) or more", c.MaxBatch)
	}
	if c.MaxBodyBytes < 0 {
		bad("MaxBodyBytes is %d: want 0 (no limit) or more", c.MaxBodyBytes)
	}
	if c.Deadline < 0 {
		bad("Deadline is %v: want 0 (none) or more", c.Deadline)
	}
	for i, name := range c.Clients {
		if err := checkClient(name); err != nil {
			bad("Clients[%d]: %w", i, err)
		}
	}
	switch c.LogPolicy.Mode {
	case LogEvery:
	case LogRateLimited:
		if c.LogPolicy.PerSecond < 1 {
			bad("LogPolicy.PerSecond is %d: LogRateLimited needs 1 or more", c.LogPolicy.PerSecond)
		}
		if c.LogPolicy.Burst < 0 {
			bad("LogPolicy.Burst is %d: want 0 or more", c.LogPolicy.Burst)
		}
	default:
		bad("LogPolicy.Mode is %d: want LogEvery or LogRateLimited", int(c.LogPolicy.Mode))
	}
	if c.DialContext != nil && c.BandAidDialer {
		bad("DialContext and BandAidDialer are both set: set DialContext to BandAidDialFunc(yourDialer) to combine them")
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("invalid dataplane config:\n%w", errors.Join(errs...))
}
