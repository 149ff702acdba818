package dataplane

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With BandAidDialer, the data plane's memcached dials draw their source
// addresses from Config.Seed: the same seed, the same addresses.
func TestMemcachedDialBandAidFollowsConfigSeed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	sources := func(seed uint64) []string {
		cfg := IncidentConfig()
		cfg.BandAidDialer, cfg.Seed = true, seed
		dial := memcachedDial(cfg)
		var out []string
		for range 4 {
			c, err := dial(t.Context(), "tcp", ln.Addr().String())
			require.NoError(t, err)
			out = append(out, c.LocalAddr().(*net.TCPAddr).IP.String())
			require.NoError(t, c.(*net.TCPConn).SetLinger(0)) // no TIME_WAIT left
			require.NoError(t, c.Close())
		}
		return out
	}
	first := sources(3)
	assert.Equal(t, first, sources(3), "the same Config.Seed dials from the same addresses")
	assert.NotEqual(t, first, sources(4), "another Config.Seed dials from others")
}
