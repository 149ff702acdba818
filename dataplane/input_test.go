package dataplane_test

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

func TestConfigsValid(t *testing.T) {
	require.NoError(t, dataplane.IncidentConfig().Validate())
	require.NoError(t, dataplane.DefaultConfig().Validate())
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	cfg := dataplane.DefaultConfig()
	cfg.BatchConcurrency = -1
	cfg.ChunkSize = 0
	cfg.MemcacheMaxIdleConns = 0
	cfg.LogPolicy.PerSecond = 0
	cfg.Clients = []string{"ok", "bad name"}
	cfg.DialContext = dataplane.BandAidDialFunc(nil, 1)
	cfg.BandAidDialer = true
	err := cfg.Validate()
	require.Error(t, err)
	for _, want := range []string{"BatchConcurrency is -1", "ChunkSize is 0", "MemcacheMaxIdleConns is 0",
		"LogPolicy.PerSecond is 0", "Clients[1]", "DialContext and BandAidDialer"} {
		assert.Contains(t, err.Error(), want)
	}

	var zero dataplane.Config
	err = zero.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Lookup is")
	assert.Contains(t, err.Error(), "LogPolicy.Mode is")
}

func TestIncidentAndDefaultDiffer(t *testing.T) {
	inc, def := dataplane.IncidentConfig(), dataplane.DefaultConfig()
	assert.Equal(t, 0, inc.BatchConcurrency, "the postmortem's endpoint had no bound")
	assert.Equal(t, dataplane.PerKeyGet, inc.Lookup)
	assert.Equal(t, dataplane.PostmortemMaxIdleConns, inc.MemcacheMaxIdleConns)
	assert.Equal(t, dataplane.LogEvery, inc.LogPolicy.Mode)
	assert.Positive(t, def.BatchConcurrency)
	assert.Equal(t, dataplane.ChunkedGetMulti, def.Lookup)
	assert.Equal(t, dataplane.LogRateLimited, def.LogPolicy.Mode)
	assert.LessOrEqual(t, def.MemcacheConcurrency, def.MemcacheMaxIdleConns,
		"every connection in use must fit back in the idle pool")
	assert.GreaterOrEqual(t, def.MaxBatch, dataplane.PostmortemBatchSize, "the fixed service serves the internal client's batches")
}

func TestCheckATURI(t *testing.T) {
	for _, ok := range []string{
		fixtures.PostURI(0), fixtures.PostURI(123456),
		"at://did:plc:44ybard66vv44zksje25o7dz/app.bsky.feed.post/3jwdwj2ctlk26",
		"at://alice.bsky.social/app.bsky.feed.like/self",
		"at://did:web:example.com%3A8080/com.example.thing/a_b-c:d~e.f",
	} {
		require.NoError(t, dataplane.CheckATURI(ok), ok)
	}
	for _, tc := range []struct{ in, want string }{
		{"", `does not start with "at://"`},
		{"https://bsky.app/profile/x", `does not start with "at://"`},
		{"at://did:plc:abc", "names no record"},
		{"at://did:plc:abc/app.bsky.feed.post", "names no record key"},
		{"at://did:plc:abc/app.bsky.feed.post/", "record key"},
		{"at://did:plc:abc/app.bsky.feed.post/a b", "record key"},
		{"at://did:plc:abc/app.bsky.feed.post/..", "reserved"},
		{"at://did:plc:abc/post/3jwd", "fewer than 3 segments"},
		{"at://did:plc:abc/app.bsky.feed.9post/3jwd", "does not start with a letter"},
		{"at://DID:plc:abc/app.bsky.feed.post/3jwd", "handle label has ':'"},
		{"at://did:PLC:abc/app.bsky.feed.post/3jwd", "method"},
		{"at://did:plc:ab:/app.bsky.feed.post/3jwd", "ends with"},
		{"at://localhost/app.bsky.feed.post/3jwd", "single label"},
		{"at://bsky.123/app.bsky.feed.post/3jwd", "starts with a digit"},
		{"at://did:plc:abc/app.bsky.feed.post/3jwd\n", "record key"},
		{"at://did:plc:" + strings.Repeat("a", 9000) + "/a.b.c/d", "over the 8192 limit"},
	} {
		err := dataplane.CheckATURI(tc.in)
		if assert.Error(t, err, "%q", tc.in) {
			assert.Contains(t, err.Error(), tc.want, "%q", tc.in)
		}
	}
}

func TestCheckDID(t *testing.T) {
	for _, ok := range []string{fixtures.DID(0), fixtures.DID(999), "did:web:example.com", "did:key:z6Mk.a_b%20c"} {
		require.NoError(t, dataplane.CheckDID(ok), ok)
	}
	for _, bad := range []string{"", "did:", "did:plc", "did::abc", "did:plc:", "did:plc:a b", "did:plc:abc%", "plc:abc", "did:Plc:abc"} {
		assert.Error(t, dataplane.CheckDID(bad), "%q", bad)
	}
}

func TestDecodeRequest(t *testing.T) {
	uri := fixtures.PostURI(1)
	for _, tc := range []struct {
		name, method, header, body string
		want                       dataplane.Request
		status                     int
		msg                        string
	}{
		{name: "uris", method: "GetPostRecords", body: `{"client":"a","uris":["` + uri + `"]}`,
			want: dataplane.Request{Method: "GetPostRecords", Client: "a", Keys: []string{uri}}},
		{name: "header client", method: "GetInteractionCounts", header: "b", body: `{"uris":[]}`,
			want: dataplane.Request{Method: "GetInteractionCounts", Client: "b", Keys: []string{}}},
		{name: "same client twice", method: "GetProfiles", header: "a", body: `{"client":"a","dids":["did:plc:x"]}`,
			want: dataplane.Request{Method: "GetProfiles", Client: "a", Keys: []string{"did:plc:x"}}},
		{name: "no keys", method: "GetPostRecords", body: `{"client":"a"}`,
			want: dataplane.Request{Method: "GetPostRecords", Client: "a"}},
		{name: "two clients", method: "GetPostRecords", header: "b", body: `{"client":"a","uris":[]}`, status: 400, msg: "header X-Spiral-Client names"},
		{name: "unknown method", method: "GetEverything", body: `{}`, status: 404, msg: `unknown method "GetEverything"`},
		{name: "wrong field", method: "GetProfiles", body: `{"client":"a","uris":[]}`, status: 400, msg: `takes "dids", not "uris"`},
		{name: "wrong field 2", method: "GetPostRecords", body: `{"client":"a","dids":[]}`, status: 400, msg: `takes "uris", not "dids"`},
		{name: "unknown field", method: "GetPostRecords", body: `{"client":"a","limit":3}`, status: 400, msg: "unknown field"},
		{name: "trailing data", method: "GetPostRecords", body: `{"client":"a"} {}`, status: 400, msg: "data after the JSON object"},
		{name: "empty", method: "GetPostRecords", body: ``, status: 400, msg: "empty"},
		{name: "not json", method: "GetPostRecords", body: `uris=a`, status: 400, msg: "malformed body"},
		{name: "wrong type", method: "GetPostRecords", body: `{"client":"a","uris":"x"}`, status: 400, msg: "malformed body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dataplane.DecodeRequest(tc.method, tc.header, strings.NewReader(tc.body))
			if tc.status == 0 {
				require.NoError(t, err)
				assert.Equal(t, tc.want, got)
				return
			}
			ie := requireInputError(t, err, tc.status)
			assert.Contains(t, ie.Msg, tc.msg)
		})
	}
}

func TestDecodeRequestOversized(t *testing.T) {
	rec := httptest.NewRecorder()
	body := `{"client":"a","uris":["` + strings.Repeat("x", 200) + `"]}`
	r := http.MaxBytesReader(rec, nopCloser{strings.NewReader(body)}, 100)
	_, err := dataplane.DecodeRequest("GetPostRecords", "", r)
	ie := requireInputError(t, err, http.StatusRequestEntityTooLarge)
	assert.Contains(t, ie.Msg, "100-byte limit")
}

func TestCheckRequest(t *testing.T) {
	cfg := dataplane.DefaultConfig()
	cfg.MaxBatch = 3
	cfg.Clients = []string{"feedgen", "appview"}
	uris := fixtures.PostURIs(0, 3)
	req := func(client string, keys ...string) dataplane.Request {
		return dataplane.Request{Method: "GetPostRecords", Client: client, Keys: keys}
	}
	require.NoError(t, dataplane.CheckRequest(cfg, req("feedgen", uris...)))
	require.NoError(t, dataplane.CheckRequest(cfg, req("feedgen")))

	ie := requireInputError(t, dataplane.CheckRequest(cfg, req("", uris...)), 400)
	assert.Equal(t, dataplane.CodeMissingClient, ie.Code)
	ie = requireInputError(t, dataplane.CheckRequest(cfg, req("crawler", uris...)), 403)
	assert.Equal(t, dataplane.CodeUnknownClient, ie.Code)
	assert.Contains(t, ie.Msg, `"crawler"`)
	ie = requireInputError(t, dataplane.CheckRequest(cfg, req("feedgen", fixtures.PostURIs(0, 4)...)), 400)
	assert.Equal(t, dataplane.CodeBatchTooLarge, ie.Code)
	assert.Contains(t, ie.Msg, "batch of 4 keys is over the limit of 3")
	ie = requireInputError(t, dataplane.CheckRequest(cfg, req("feedgen", uris[0], "at://nope", uris[2])), 400)
	assert.Equal(t, 1, ie.Index)
	assert.Contains(t, ie.Msg, `uris[1]: malformed AT-URI "at://nope"`)
	ie = requireInputError(t, dataplane.CheckRequest(cfg, dataplane.Request{Method: "GetProfiles", Client: "appview", Keys: []string{"did:plc:a", uris[0]}}), 400)
	assert.Contains(t, ie.Msg, "dids[1]: malformed DID")
}

func TestEncodeRequestRoundTrip(t *testing.T) {
	for _, req := range []dataplane.Request{
		{Method: "GetPostRecords", Client: "a", Keys: fixtures.PostURIs(5, 3)},
		{Method: "GetProfiles", Client: "b", Keys: fixtures.DIDs(5, 3)},
		{Method: "GetInteractionCounts", Client: "c", Keys: []string{}},
	} {
		b, err := dataplane.EncodeRequest(req)
		require.NoError(t, err)
		got, err := dataplane.DecodeRequest(req.Method, "", bytes.NewReader(b))
		require.NoError(t, err)
		assert.Equal(t, req, got)
	}
}

// The band-aid dials from 127.1-254.x.1-254 addresses, as many as it
// dials (about 16 million to draw from), and keeps its base dialer's
// settings.
func TestBandAidDialFuncUsesLoopbackSources(t *testing.T) {
	ln := listenLoopback(t)
	got := bandAidSources(t, dataplane.BandAidDialFunc(nil, 1), ln, 8)
	seen := map[string]bool{}
	for _, ip := range got {
		assert.Equal(t, byte(127), ip[0], "%s", ip)
		assert.NotEqual(t, byte(0), ip[1], "%s: not 127.0.x.x: the band-aid picks 127.1-254.x.x", ip)
		assert.NotContains(t, []byte{0, 255}, ip[3], "%s: the band-aid picks 127.x.y.1-254", ip)
		seen[ip.String()] = true
	}
	assert.Len(t, seen, len(got), "every dial has a source address of its own: %v", got)

	// The base dialer's settings are kept: a Control function still runs.
	var controls int
	dial := dataplane.BandAidDialFunc(&net.Dialer{Control: func(string, string, syscall.RawConn) error {
		controls++
		return nil
	}}, 1)
	bandAidSources(t, dial, ln, 1)
	assert.Equal(t, 1, controls)
}

// Replaying a seed replays the band-aid's source addresses, as the
// kernel saw them (each connection's local address); another seed draws
// others.
func TestBandAidDialFuncDrawsSourcesFromItsSeed(t *testing.T) {
	ln := listenLoopback(t)
	const dials = 8
	first := bandAidSources(t, dataplane.BandAidDialFunc(nil, 7), ln, dials)
	again := bandAidSources(t, dataplane.BandAidDialFunc(nil, 7), ln, dials)
	other := bandAidSources(t, dataplane.BandAidDialFunc(nil, 8), ln, dials)
	assert.Equal(t, first, again, "the same seed dials from the same addresses, in the same order")
	assert.NotEqual(t, first, other, "another seed dials from other addresses")
}

// Concurrent dials through one band-aid share its sequence: together they
// dial from the addresses that as many dials one after another would,
// each address once. Run with -race, it also shows the draws are guarded.
func TestBandAidDialFuncConcurrentDialsShareTheSequence(t *testing.T) {
	ln := listenLoopback(t)
	const dials = 32
	want := bandAidSources(t, dataplane.BandAidDialFunc(nil, 9), ln, dials)

	dial := dataplane.BandAidDialFunc(nil, 9)
	var mu sync.Mutex
	var got []net.IP
	var g errgroup.Group
	for range dials {
		g.Go(func() error {
			c, err := dial(t.Context(), "tcp", ln.Addr().String())
			if err != nil {
				return err
			}
			ip := c.LocalAddr().(*net.TCPAddr).IP.To4()
			mu.Lock()
			got = append(got, ip)
			mu.Unlock()
			return closeReset(c)
		})
	}
	require.NoError(t, g.Wait())
	byAddr := func(a, b net.IP) int { return bytes.Compare(a, b) }
	slices.SortFunc(want, byAddr)
	slices.SortFunc(got, byAddr)
	assert.Equal(t, want, got)
}

// listenLoopback returns a listener on 127.0.0.1, closed when tb ends. It
// never accepts: the kernel completes loopback handshakes by itself, up to
// its backlog.
func listenLoopback(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = ln.Close() })
	return ln
}

// bandAidSources dials ln n times in turn with dial and returns each
// connection's local address. Each connection is reset rather than closed,
// so that it leaves no TIME_WAIT holding its bound port.
func bandAidSources(tb testing.TB, dial dataplane.DialFunc, ln net.Listener, n int) []net.IP {
	tb.Helper()
	var out []net.IP
	for range n {
		c, err := dial(tb.Context(), "tcp", ln.Addr().String())
		require.NoError(tb, err)
		out = append(out, c.LocalAddr().(*net.TCPAddr).IP.To4())
		require.NoError(tb, closeReset(c))
	}
	return out
}

// closeReset closes c with a reset (SO_LINGER 0): no TIME_WAIT is left.
func closeReset(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetLinger(0); err != nil {
			_ = c.Close()
			return err
		}
	}
	return c.Close()
}

// requireInputError asserts that err is an *dataplane.InputError with the
// given HTTP status and returns it.
func requireInputError(tb testing.TB, err error, status int) *dataplane.InputError {
	tb.Helper()
	require.Error(tb, err)
	var ie *dataplane.InputError
	require.ErrorAs(tb, err, &ie)
	assert.Equal(tb, status, ie.Status, "status of %q", ie.Msg)
	return ie
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }
