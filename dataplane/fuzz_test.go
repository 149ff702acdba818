package dataplane_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
)

var fuzzMethods = []string{
	dataplane.MethodGetPostRecords, dataplane.MethodGetProfiles, dataplane.MethodGetInteractionCounts, "GetNothing",
}

// FuzzDecodeRequest feeds arbitrary bodies, client headers and methods to
// DecodeRequest and CheckRequest. Either they reject the input with a 4xx
// *InputError of bounded size that names a key that really is bad, or
// every key is well formed, the batch is within the limit, and the request
// survives an encode/decode round trip unchanged.
//
//	go test -run ^$ -fuzz FuzzDecodeRequest -fuzztime 30s ./dataplane/
func FuzzDecodeRequest(f *testing.F) {
	uri, did := fixtures.PostURI(7), fixtures.DID(7)
	for _, seed := range []struct {
		method byte
		header string
		body   string
	}{
		{0, "", `{"client":"feedgen","uris":["` + uri + `"]}`},
		{1, "appview", `{"dids":["` + did + `","did:plc:x"]}`},
		{2, "a", `{"client":"a","uris":[]}`},
		{0, "", `{"client":"a","uris":["at://x"]}`},
		{0, "b", `{"client":"a"}`},
		{1, "", `{"client":"a","uris":["` + uri + `"]}`},
		{3, "", `{}`},
		{0, "", `{"client":"a","uris":["` + uri + `","` + uri + `","` + uri + `","` + uri + `"]} x`},
		{0, "", `{"client":"\u00e9","uris":null}`},
		{2, "", ``},
	} {
		f.Add(seed.method, seed.header, []byte(seed.body))
	}
	cfg := dataplane.DefaultConfig()
	cfg.MaxBatch = 3
	f.Fuzz(func(t *testing.T, m byte, header string, body []byte) {
		method := fuzzMethods[int(m)%len(fuzzMethods)]
		req, err := dataplane.DecodeRequest(method, header, bytes.NewReader(body))
		if err != nil {
			checkRejection(t, err, nil, nil)
			return
		}
		if req.Method != method {
			t.Fatalf("decoded method %q, asked %q", req.Method, method)
		}
		check := dataplane.CheckATURI
		if method == dataplane.MethodGetProfiles {
			check = dataplane.CheckDID
		}
		if err := dataplane.CheckRequest(cfg, req); err != nil {
			checkRejection(t, err, req.Keys, check)
			return
		}
		if len(req.Keys) > cfg.MaxBatch {
			t.Fatalf("accepted %d keys over the limit of %d", len(req.Keys), cfg.MaxBatch)
		}
		for i, k := range req.Keys {
			if err := check(k); err != nil {
				t.Fatalf("accepted bad key %d %q: %v", i, k, err)
			}
		}
		enc, err := dataplane.EncodeRequest(req)
		if err != nil {
			t.Fatalf("encode accepted request: %v", err)
		}
		again, err := dataplane.DecodeRequest(method, "", bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("decode re-encoded request %s: %v", enc, err)
		}
		if again.Client != req.Client || !slices.Equal(again.Keys, req.Keys) {
			t.Fatalf("round trip changed the request: %+v became %+v", req, again)
		}
	})
}

// checkRejection fails t unless err is a 4xx *InputError with a message of
// bounded size whose Index, if set, names a key check rejects.
func checkRejection(t *testing.T, err error, keys []string, check func(string) error) {
	t.Helper()
	var ie *dataplane.InputError
	if !errors.As(err, &ie) {
		t.Fatalf("rejection is %T, not *InputError: %v", err, err)
	}
	if ie.Status < 400 || ie.Status > 499 {
		t.Fatalf("rejection status %d: %v", ie.Status, err)
	}
	if ie.Msg == "" || len(ie.Msg) > 1024 {
		t.Fatalf("rejection message of %d bytes: %.2000q", len(ie.Msg), ie.Msg)
	}
	if ie.Index < 0 {
		return
	}
	if ie.Index >= len(keys) {
		t.Fatalf("rejection names key %d of %d: %v", ie.Index, len(keys), err)
	}
	if check(keys[ie.Index]) == nil {
		t.Fatalf("rejection names good key %d %q: %v", ie.Index, keys[ie.Index], err)
	}
}
