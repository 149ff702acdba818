package dataplane_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
)

// capture answers every request with 200 and keeps the last one's path,
// client header and body.
type capture struct {
	path, header string
	body         map[string]any
}

func (c *capture) server(t *testing.T, header string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		assert.NoError(t, err)
		c.path, c.header, c.body = r.URL.Path, r.Header.Get(header), nil
		assert.NoError(t, json.Unmarshal(b, &c.body))
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// The zero shape is the bundled data plane's; another names where batches
// go, the keys' field and the client's field and header, "-" leaving one
// out.
func TestClientSendsTheShapeItIsGiven(t *testing.T) {
	var c capture
	srv := c.server(t, dataplane.ClientHeader)
	cl := &dataplane.Client{URL: srv.URL, Name: "appview"}
	_, err := cl.GetPostRecords(t.Context(), []string{"a", "b"})
	require.NoError(t, err)
	assert.Equal(t, dataplane.XRPCPrefix+dataplane.MethodGetPostRecords, c.path)
	assert.Equal(t, "appview", c.header)
	assert.Equal(t, map[string]any{"client": "appview", "uris": []any{"a", "b"}}, c.body)

	var c2 capture
	srv2 := c2.server(t, "X-Caller")
	cl2 := &dataplane.Client{URL: srv2.URL, Name: "appview", Shape: dataplane.RequestShape{Path: "/v1/lookup", KeysField: "ids", ClientField: "-", ClientHeader: "X-Caller"}}
	var out struct{}
	require.NoError(t, cl2.Call(t.Context(), dataplane.MethodGetProfiles, []string{"d"}, &out))
	assert.Equal(t, "/v1/lookup", c2.path)
	assert.Equal(t, "appview", c2.header)
	assert.Equal(t, map[string]any{"ids": []any{"d"}}, c2.body, "no client field")
}

func TestRequestShapeValidate(t *testing.T) {
	assert.NoError(t, dataplane.RequestShape{}.Validate())
	assert.NoError(t, dataplane.RequestShape{Path: "/v1/lookup", ClientHeader: "X-Caller"}.Validate())
	require.ErrorContains(t, dataplane.RequestShape{Path: "v1"}.Validate(), "absolute path")
	require.ErrorContains(t, dataplane.RequestShape{ClientField: "-", ClientHeader: "-"}.Validate(), "names the client nowhere")
	assert.ErrorContains(t, dataplane.RequestShape{ClientHeader: "X Caller"}.Validate(), "not a valid header name")
}
