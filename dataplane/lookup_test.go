package dataplane_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// rpc is one of the three RPCs, seen generically by the tests.
type rpc[T any] struct {
	method, cache string
	key           func(i int) string
	call          func(dp *dataplane.DataPlane, ctx context.Context, client string, keys []string) ([]*T, error)
	// check fails t unless v is seeded row i.
	check func(t *testing.T, i int, v *T)
}

var (
	postsRPC = rpc[dataplane.Post]{
		method: dataplane.MethodGetPostRecords, cache: dataplane.CachePost, key: fixtures.PostURI,
		call: (*dataplane.DataPlane).GetPostRecords,
		check: func(t *testing.T, i int, p *dataplane.Post) {
			t.Helper()
			assert.Equal(t, fixtures.PostURI(i), p.URI)
			assert.Equal(t, fixtures.SeededPost(i), p.Text)
			assert.Equal(t, fixtures.DID(i%fixtures.AuthorsPerSeed), p.AuthorDID)
			assert.Equal(t, fmt.Sprintf("bafyrei%08d", i), p.CID)
			assert.False(t, p.CreatedAt.IsZero())
		},
	}
	profilesRPC = rpc[dataplane.Profile]{
		method: dataplane.MethodGetProfiles, cache: dataplane.CacheProfile, key: fixtures.DID,
		call: (*dataplane.DataPlane).GetProfiles,
		check: func(t *testing.T, i int, p *dataplane.Profile) {
			t.Helper()
			assert.Equal(t, fixtures.DID(i), p.DID)
			assert.Equal(t, fixtures.SeededHandle(i), p.Handle)
			assert.Equal(t, fmt.Sprintf("User %d", i), p.DisplayName)
			assert.False(t, p.CreatedAt.IsZero())
		},
	}
	countsRPC = rpc[dataplane.InteractionCounts]{
		method: dataplane.MethodGetInteractionCounts, cache: dataplane.CacheCounts, key: fixtures.PostURI,
		call: (*dataplane.DataPlane).GetInteractionCounts,
		check: func(t *testing.T, i int, c *dataplane.InteractionCounts) {
			t.Helper()
			assert.Equal(t, fixtures.PostURI(i), c.URI)
			assert.Equal(t, fixtures.SeededLikes(i), c.Likes)
			assert.Equal(t, int64(i%100), c.Reposts)
			assert.Equal(t, int64(i%10), c.Replies)
			assert.Equal(t, int64(i%7), c.Quotes)
		},
	}
)

func TestLookups(t *testing.T) {
	seededEnv(t)
	for _, cfg := range []struct {
		name string
		cfg  dataplane.Config
	}{{"default", dataplane.DefaultConfig()}, {"incident", dataplane.IncidentConfig()}} {
		t.Run(cfg.name, func(t *testing.T) {
			t.Run("posts", lookupTest(cfg.cfg, postsRPC))
			t.Run("profiles", lookupTest(cfg.cfg, profilesRPC))
			t.Run("counts", lookupTest(cfg.cfg, countsRPC))
		})
	}
}

// lookupTest asks for 30 seeded keys and 10 absent ones, interleaved, on a
// cold cache, then again: first from the store (filling the cache), then
// from the cache; absent keys are nil both times.
func lookupTest[T any](cfg dataplane.Config, r rpc[T]) func(t *testing.T) {
	return func(t *testing.T) {
		noLeaks(t)
		dp := newDataPlane(t, cfg)
		var keys []string
		var rows []int // seeded row of each key, -1 if absent
		for j := range 40 {
			if j%4 == 3 {
				keys, rows = append(keys, r.key(absent+postsLookup+j)), append(rows, -1)
				continue
			}
			keys, rows = append(keys, r.key(postsLookup+j)), append(rows, postsLookup+j)
		}
		require.NoError(t, dp.Evict(t.Context(), r.cache, keys))

		checkAll := func(got []*T) {
			t.Helper()
			require.Len(t, got, len(keys))
			for j, v := range got {
				if rows[j] < 0 {
					assert.Nil(t, v, "key %d %s is not in the store", j, keys[j])
					continue
				}
				if assert.NotNil(t, v, "key %d %s", j, keys[j]) {
					r.check(t, rows[j], v)
				}
			}
		}
		lookups := func(source string) float64 {
			return snapshot(t, dp).Sum("lookups_total", "client", "test", "method", r.method, "source", source)
		}

		got, err := r.call(dp, t.Context(), "test", keys)
		require.NoError(t, err)
		checkAll(got)
		assert.InDelta(t, 30, lookups("store"), 0, "cold cache: every seeded key from the store")
		assert.InDelta(t, 10, lookups("miss"), 0)
		assert.InDelta(t, 0, lookups("cache"), 0)

		got, err = r.call(dp, t.Context(), "test", keys)
		require.NoError(t, err)
		checkAll(got)
		assert.InDelta(t, 30, lookups("cache"), 0, "the first call filled the cache")
		assert.InDelta(t, 30, lookups("store"), 0, "no store reads the second time")
		assert.InDelta(t, 20, lookups("miss"), 0, "not-found is not cached")
		assert.InDelta(t, 0, lookups("error"), 0)

		got, err = r.call(dp, t.Context(), "test", nil)
		require.NoError(t, err)
		assert.Empty(t, got)
		assert.InDelta(t, 3, snapshot(t, dp).Sum("requests_total", "client", "test", "method", r.method, "code", "ok"), 0)
	}
}

func TestPerClientMetrics(t *testing.T) {
	noLeaks(t)
	dp := newDataPlane(t, dataplane.DefaultConfig())
	ctx := t.Context()
	feed := fixtures.PostURIs(postsClients, 150)
	small := fixtures.PostURIs(postsClients+150, 5)
	require.NoError(t, dp.Evict(ctx, dataplane.CachePost, append(feed, small...)))

	// "internal" sends one large batch; "appview" ten small ones.
	_, err := dp.GetPostRecords(ctx, "internal", feed)
	require.NoError(t, err)
	for range 10 {
		_, err := dp.GetPostRecords(ctx, "appview", small)
		require.NoError(t, err)
	}
	_, err = dp.GetProfiles(ctx, "appview", fixtures.DIDs(postsClients, 3))
	require.NoError(t, err)

	s := snapshot(t, dp)
	posts := dataplane.MethodGetPostRecords
	assert.InDelta(t, 1, s.Sum("requests_total", "client", "internal", "method", posts), 0)
	assert.InDelta(t, 10, s.Sum("requests_total", "client", "appview", "method", posts), 0)
	assert.InDelta(t, 1, s.Sum("requests_total", "client", "appview", "method", dataplane.MethodGetProfiles), 0)
	assert.InDelta(t, 1, s.Sum("batch_size_count", "client", "internal"), 0)
	assert.InDelta(t, 150, s.Sum("batch_size_sum", "client", "internal"), 0)
	assert.InDelta(t, 11, s.Sum("batch_size_count", "client", "appview"), 0)
	assert.InDelta(t, 53, s.Sum("batch_size_sum", "client", "appview"), 0)
	assert.InDelta(t, 150, s.Sum("lookups_total", "client", "internal", "source", "store"), 0)
	assertTotals(t, dp) // hits and store reads
	assert.InDelta(t, 5, s.Sum("lookups_total", "client", "appview", "method", posts, "source", "store"), 0)
	assert.InDelta(t, 45, s.Sum("lookups_total", "client", "appview", "method", posts, "source", "cache"), 0)
	assert.InDelta(t, 0, s.Sum("lookups_in_flight"), 0)
}

func TestBadInputLooksNothingUp(t *testing.T) {
	noLeaks(t)
	cfg := dataplane.DefaultConfig()
	cfg.MaxBatch = 50
	cfg.Clients = []string{"appview"}
	dp := newDataPlane(t, cfg)
	ctx := t.Context()
	uris := fixtures.PostURIs(postsLookup+50, 10)
	require.NoError(t, dp.Evict(ctx, dataplane.CachePost, uris))
	dials := snapshot(t, dp).Sum("memcached_dials_total")

	bad := append(append([]string{}, uris[:9]...), "at://did:plc:x/app.bsky.feed.post/")
	_, err := dp.GetPostRecords(ctx, "appview", bad)
	ie := requireInputError(t, err, 400)
	assert.Equal(t, 9, ie.Index)
	_, err = dp.GetPostRecords(ctx, "appview", fixtures.PostURIs(0, 51))
	ie = requireInputError(t, err, 400)
	assert.Contains(t, ie.Msg, "limit of 50")
	_, err = dp.GetPostRecords(ctx, "crawler", uris)
	_ = requireInputError(t, err, 403)
	_, err = dp.GetPostRecords(ctx, "", uris)
	_ = requireInputError(t, err, 400)

	s := snapshot(t, dp)
	assert.InDelta(t, 0, s.Sum("lookups_total"), 0, "nothing looked up")
	assert.InDelta(t, dials, s.Sum("memcached_dials_total"), 0, "memcached not even dialed")
	assert.InDelta(t, 4, s.Sum("requests_total", "code", "bad_request"), 0)
	assert.InDelta(t, 1, s.Sum("requests_total", "client", "rejected"), 0, "an unknown client's name is not a label value")

	// Nothing was cached: the good keys of the rejected batch come from the store.
	_, err = dp.GetPostRecords(ctx, "appview", uris)
	require.NoError(t, err)
	assert.InDelta(t, 10, snapshot(t, dp).Sum("lookups_total", "source", "store"), 0)
}

func TestNewRejectsBadBackends(t *testing.T) {
	_, err := dataplane.New(dataplane.DefaultConfig(), dataplane.Backends{Keyspace: "ks"})
	require.ErrorContains(t, err, "no memcached address")
	_, err = dataplane.New(dataplane.DefaultConfig(), dataplane.Backends{MemcachedAddrs: []string{"127.0.0.1:1"}, Keyspace: "ks; DROP"})
	require.ErrorContains(t, err, "keyspace")
	_, err = dataplane.New(dataplane.DefaultConfig(), dataplane.Backends{MemcachedAddrs: []string{"127.0.0.1:1"}, Keyspace: "ks"})
	require.ErrorContains(t, err, "no CQL Session or Cluster")
	cfg := dataplane.DefaultConfig()
	cfg.ChunkSize = 0
	_, err = dataplane.New(cfg, dataplane.Backends{})
	require.ErrorContains(t, err, "ChunkSize")
}

func TestOwnedSessionFromCluster(t *testing.T) {
	env := seededEnv(t)
	noLeaks(t)
	dp, err := dataplane.New(dataplane.DefaultConfig(), dataplane.Backends{
		MemcachedAddrs: env.MemcachedAddrs, Cluster: env.NewCluster(), Keyspace: env.Keyspace,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = dp.Close() })
	require.NoError(t, dp.Health(t.Context()))
	got, err := dp.GetProfiles(t.Context(), "test", fixtures.DIDs(7, 1))
	require.NoError(t, err)
	require.NotNil(t, got[0])
	assert.Equal(t, fixtures.SeededHandle(7), got[0].Handle)
}
