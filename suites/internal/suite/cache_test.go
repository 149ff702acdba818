package suite

import (
	"fmt"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/fixtures"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// ForgetKeys deletes the keys it is given from a real memcached, a missing
// one included, and leaves every other item alone.
func TestForgetKeys(t *testing.T) {
	env := fixtures.Shared(t)
	mc := memcache.New(env.MemcachedAddrs...)
	t.Cleanup(func() { _ = mc.Close() })
	keys := []string{"spiral:forget:a", "spiral:forget:b", "spiral:forget:c"}
	for _, k := range append(keys, "spiral:forget:kept") {
		require.NoError(t, mc.Set(&memcache.Item{Key: k, Value: []byte("v")}))
	}
	require.NoError(t, ForgetKeys(t.Context(), env.MemcachedAddrs, append(keys, "spiral:forget:never-set")))
	for _, k := range keys {
		_, err := mc.Get(k)
		require.ErrorIs(t, err, memcache.ErrCacheMiss, "%s forgotten", k)
	}
	_, err := mc.Get("spiral:forget:kept")
	require.NoError(t, err, "a key not named is kept")

	require.Error(t, ForgetKeys(t.Context(), []string{"127.0.0.1:1"}, keys), "a server that can't be reached is an error")
	require.ErrorContains(t, ForgetKeys(t.Context(), env.MemcachedAddrs, []string{"spiral:forget:a b"}), "not a memcached key")

	// A sweep's worth of keys, pipelined on one connection: every one is
	// answered and forgotten.
	many := make([]string, 5_000)
	for i := range many {
		many[i] = fmt.Sprintf("spiral:forget:many:%d", i)
		if i%2 == 0 { // half set, half already missing
			require.NoError(t, mc.Set(&memcache.Item{Key: many[i], Value: []byte("v")}))
		}
	}
	require.NoError(t, ForgetKeys(t.Context(), env.MemcachedAddrs, many))
	for i := 0; i < len(many); i += 250 {
		_, err := mc.Get(many[i])
		require.ErrorIs(t, err, memcache.ErrCacheMiss, "%s forgotten", many[i])
	}
	_, err = mc.Get("spiral:forget:kept")
	require.NoError(t, err, "a key not named is still kept")
}
