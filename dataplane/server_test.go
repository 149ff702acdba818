package dataplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

// newServer serves dp on loopback until tb ends.
func newServer(tb testing.TB, dp *dataplane.DataPlane) *dataplane.Server {
	tb.Helper()
	srv, err := dataplane.NewServer(dp)
	require.NoError(tb, err)
	tb.Cleanup(srv.Close)
	return srv
}

// post sends body to path on srv with an optional client header and
// returns the status and the decoded error body (zero on 200).
func post(tb testing.TB, srv *dataplane.Server, path, client, body string) (int, dataplane.ErrorBody) {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.Context(), http.MethodPost, srv.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	if client != "" {
		req.Header.Set(dataplane.ClientHeader, client)
	}
	res, err := srv.Client().Do(req)
	require.NoError(tb, err)
	defer func() { _ = res.Body.Close() }()
	b, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	assert.Equal(tb, "application/json", res.Header.Get("Content-Type"))
	var eb dataplane.ErrorBody
	if res.StatusCode != http.StatusOK {
		require.NoError(tb, json.Unmarshal(b, &eb), "error body %s", b)
	}
	return res.StatusCode, eb
}

func TestHTTPRoundTrip(t *testing.T) {
	seededEnv(t)
	noLeaks(t)
	dp := newDataPlane(t, dataplane.DefaultConfig())
	srv := newServer(t, dp)
	require.True(t, strings.HasPrefix(srv.URL, "http://127.0.0.1:"), srv.URL)
	c := &dataplane.Client{URL: srv.URL, Name: "feedgen", HTTP: srv.Client()}
	ctx := t.Context()

	uris := append(fixtures.PostURIs(postsHTTP, 3), fixtures.PostURI(absent+postsHTTP))
	posts, err := c.GetPostRecords(ctx, uris)
	require.NoError(t, err)
	require.Len(t, posts, 4)
	for i := range 3 {
		postsRPC.check(t, postsHTTP+i, posts[i])
	}
	assert.Nil(t, posts[3], "not found is null")
	profiles, err := c.GetProfiles(ctx, fixtures.DIDs(postsHTTP, 2))
	require.NoError(t, err)
	profilesRPC.check(t, postsHTTP+1, profiles[1])
	counts, err := c.GetInteractionCounts(ctx, fixtures.PostURIs(postsHTTP, 2))
	require.NoError(t, err)
	countsRPC.check(t, postsHTTP, counts[0])
	empty, err := c.GetPostRecords(ctx, nil)
	require.NoError(t, err)
	assert.Empty(t, empty)

	status, _ := post(t, srv, "/xrpc/GetPostRecords", "appview", `{"uris":["`+uris[0]+`"]}`)
	assert.Equal(t, http.StatusOK, status, "client named in the header")

	s := snapshot(t, dp)
	assert.InDelta(t, 4, s.Sum("requests_total", "client", "feedgen", "code", "ok"), 0)
	assert.InDelta(t, 1, s.Sum("requests_total", "client", "appview", "method", "GetPostRecords"), 0)

	res, err := srv.Client().Get(srv.URL + dataplane.MetricsPath)
	require.NoError(t, err)
	b, err := io.ReadAll(res.Body)
	require.NoError(t, res.Body.Close())
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Contains(t, string(b), `spiral_dataplane_requests_total{client="feedgen",code="ok",method="GetPostRecords"} 2`)
	assert.Contains(t, string(b), `spiral_dataplane_batch_size_bucket{client="feedgen"`)

	res, err = srv.Client().Get(srv.URL + dataplane.HealthPath)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	assert.Equal(t, http.StatusOK, res.StatusCode)
}

func TestHTTPBadInput(t *testing.T) {
	seededEnv(t)
	noLeaks(t)
	cfg := dataplane.DefaultConfig()
	cfg.MaxBatch = 5
	cfg.MaxBodyBytes = 2000
	cfg.Clients = []string{"feedgen", "appview"}
	dp := newDataPlane(t, cfg)
	srv := newServer(t, dp)
	uri := fixtures.PostURI(postsHTTP + 50)
	require.NoError(t, dp.Evict(t.Context(), dataplane.CachePost, []string{uri}))
	many := `"` + strings.Join(fixtures.PostURIs(postsHTTP, 6), `","`) + `"`

	for _, tc := range []struct {
		name, path, client, body string
		status                   int
		code, msg                string
		index                    int
	}{
		{"malformed uri", "/xrpc/GetPostRecords", "feedgen", `{"uris":["` + uri + `","at://x/y"]}`, 400, dataplane.CodeInvalidRequest, `uris[1]: malformed AT-URI "at://x/y"`, 1},
		{"malformed did", "/xrpc/GetProfiles", "feedgen", `{"dids":["did:plc:ok","did:"]}`, 400, dataplane.CodeInvalidRequest, `dids[1]: malformed DID "did:"`, 1},
		{"over limit", "/xrpc/GetPostRecords", "feedgen", `{"uris":[` + many + `]}`, 400, dataplane.CodeBatchTooLarge, "over the limit of 5", -1},
		{"no client", "/xrpc/GetPostRecords", "", `{"uris":["` + uri + `"]}`, 400, dataplane.CodeMissingClient, "no client named", -1},
		{"unknown client", "/xrpc/GetPostRecords", "crawler", `{"uris":["` + uri + `"]}`, 403, dataplane.CodeUnknownClient, `unknown client "crawler"`, -1},
		{"unknown method", "/xrpc/GetTimeline", "feedgen", `{"uris":[]}`, 404, dataplane.CodeUnknownMethod, `unknown method "GetTimeline"`, -1},
		{"malformed body", "/xrpc/GetPostRecords", "feedgen", `{"uris":[`, 400, dataplane.CodeInvalidRequest, "malformed body", -1},
		{"oversized body", "/xrpc/GetPostRecords", "feedgen", `{"uris":["` + strings.Repeat("a", 3000) + `"]}`, 413, dataplane.CodePayloadTooBig, "2000-byte limit", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, eb := post(t, srv, tc.path, tc.client, tc.body)
			assert.Equal(t, tc.status, status)
			assert.Equal(t, tc.code, eb.Error)
			assert.Contains(t, eb.Message, tc.msg)
			if tc.index >= 0 && assert.NotNil(t, eb.Index) {
				assert.Equal(t, tc.index, *eb.Index)
			}
		})
	}

	res, err := srv.Client().Get(srv.URL + "/xrpc/GetPostRecords")
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	assert.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)

	s := snapshot(t, dp)
	assert.InDelta(t, 0, s.Sum("lookups_total"), 0, "nothing looked up")
	assert.InDelta(t, 8, s.Sum("requests_total", "code", "bad_request"), 0)
	assert.InDelta(t, 1, s.Sum("requests_total", "method", "unknown"), 0, "an unknown method's name is not a label value")
	// Nothing cached: the good key of the rejected batch comes from the store.
	status, _ := post(t, srv, "/xrpc/GetPostRecords", "feedgen", `{"uris":["`+uri+`"]}`)
	require.Equal(t, http.StatusOK, status)
	assert.InDelta(t, 1, snapshot(t, dp).Sum("lookups_total", "source", "store"), 0)
}

// TestServerCloseWaitsForInFlight holds a request inside its memcached dial
// and checks that Close returns only after the request has been answered.
func TestServerCloseWaitsForInFlight(t *testing.T) {
	seededEnv(t)
	noLeaks(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unblock) // also on failure, so the held dial ends
	cfg := dataplane.DefaultConfig()
	cfg.MemcacheTimeout = 10 * time.Second
	cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		once.Do(func() {
			close(entered)
			<-release
		})
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	var logs bytes.Buffer
	cfg.LogSink = dataplane.SyncWriter(&logs)
	dp := newDataPlane(t, cfg)
	srv := dataplane.NewUnstartedServer(dp)
	srv.StuckAfter = 100 * time.Millisecond
	require.NoError(t, srv.Start())
	c := &dataplane.Client{URL: srv.URL, Name: "slow", HTTP: srv.Client()}

	var g errgroup.Group
	var posts []*dataplane.Post
	g.Go(func() error {
		var err error
		posts, err = c.GetPostRecords(context.Background(), fixtures.PostURIs(postsHTTP+60, 2))
		return err
	})
	<-entered
	closed := make(chan struct{})
	g.Go(func() error {
		srv.Close()
		close(closed)
		return nil
	})
	select {
	case <-closed:
		t.Fatal("Close returned while a request was in flight")
	case <-time.After(300 * time.Millisecond):
	}
	unblock()
	require.NoError(t, g.Wait())
	assert.Len(t, posts, 2)
	assert.Contains(t, logs.String(), `"msg":"server close waiting for request","request":"POST /xrpc/GetPostRecords"`,
		"Close says which request it waits for")
	_, err := c.GetPostRecords(t.Context(), fixtures.PostURIs(postsHTTP+60, 2))
	require.Error(t, err, "a closed server refuses new requests")
}
