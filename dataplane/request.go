package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
)

// ClientHeader is the HTTP header naming the calling client, as an
// alternative to the "client" field of the body.
const ClientHeader = "X-Spiral-Client"

// Codes of InputError, also the "error" field of HTTP error answers.
const (
	CodeInvalidRequest   = "InvalidRequest"       // malformed body or key
	CodeMissingClient    = "MissingClient"        // no client named
	CodeUnknownClient    = "UnknownClient"        // client not in Config.Clients
	CodeBatchTooLarge    = "BatchTooLarge"        // over Config.MaxBatch
	CodePayloadTooBig    = "PayloadTooLarge"      // body over Config.MaxBodyBytes
	CodeUnknownMethod    = "MethodNotImplemented" // no such RPC
	CodeMethodNotAllowed = "MethodNotAllowed"     // HTTP verb other than POST
)

// InputError is a request rejected before any lookup: nothing was read
// from memcached or the store and nothing was cached.
type InputError struct {
	// Status is the HTTP status the server answers with (4xx).
	Status int
	// Code is a short machine-readable name, one of the Code constants.
	Code string
	// Index is the position of the offending key in the batch, or -1.
	Index int
	// Msg says what is wrong, naming the key and the limit where there is one.
	Msg string
}

// Error returns Msg.
func (e *InputError) Error() string { return e.Msg }

func inputErr(status int, code string, index int, format string, args ...any) *InputError {
	return &InputError{Status: status, Code: code, Index: index, Msg: fmt.Sprintf(format, args...)}
}

// Request is one decoded RPC: its method, the client it names and the
// keys (AT-URIs or DIDs) it asks for.
type Request struct {
	Method string
	Client string
	Keys   []string
}

// requestBody is the JSON body of an RPC: {"client": "...", "uris": [...]}
// or, for GetProfiles, {"client": "...", "dids": [...]}.
type requestBody struct {
	Client string   `json:"client"`
	URIs   []string `json:"uris"`
	DIDs   []string `json:"dids"`
}

// EncodeRequest returns the JSON body of req, the inverse of DecodeRequest.
func EncodeRequest(req Request) ([]byte, error) {
	field, ok := keyField(req.Method)
	if !ok {
		return nil, fmt.Errorf("encode request: unknown method %q", req.Method)
	}
	keys := req.Keys
	if keys == nil {
		keys = []string{}
	}
	body := map[string]any{field: keys}
	if req.Client != "" {
		body["client"] = req.Client
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	return b, nil
}

// DecodeRequest reads the JSON body of one call of method. The client is
// the "client" field or, if that is absent, headerClient; naming two
// different clients is an error. Unknown fields, the other method's key
// field and trailing data are errors. Every error is an *InputError. It
// reads body to its end or to the first error; limit its size with
// http.MaxBytesReader (an *http.MaxBytesError becomes 413). It does not
// check the keys or the client: CheckRequest does.
func DecodeRequest(method, headerClient string, body io.Reader) (Request, error) {
	field, ok := keyField(method)
	if !ok {
		return Request{}, inputErr(http.StatusNotFound, CodeUnknownMethod, -1, "unknown method %s: want %s, %s or %s",
			truncate(method), MethodGetPostRecords, MethodGetProfiles, MethodGetInteractionCounts)
	}
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	var b requestBody
	if err := dec.Decode(&b); err != nil {
		return Request{}, bodyErr(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return Request{}, bodyErr(err)
		}
		return Request{}, inputErr(http.StatusBadRequest, CodeInvalidRequest, -1, "malformed body: data after the JSON object")
	}
	req := Request{Method: method, Client: b.Client}
	switch {
	case b.Client == "":
		req.Client = headerClient
	case headerClient != "" && headerClient != b.Client:
		return Request{}, inputErr(http.StatusBadRequest, CodeInvalidRequest, -1,
			"body names client %s, header %s names %s", truncate(b.Client), ClientHeader, truncate(headerClient))
	}
	switch {
	case field == "dids" && b.URIs != nil:
		return Request{}, inputErr(http.StatusBadRequest, CodeInvalidRequest, -1, `%s takes "dids", not "uris"`, method)
	case field == "uris" && b.DIDs != nil:
		return Request{}, inputErr(http.StatusBadRequest, CodeInvalidRequest, -1, `%s takes "uris", not "dids"`, method)
	case field == "dids":
		req.Keys = b.DIDs
	default:
		req.Keys = b.URIs
	}
	return req, nil
}

func bodyErr(err error) *InputError {
	if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return inputErr(http.StatusRequestEntityTooLarge, CodePayloadTooBig, -1, "body over the %d-byte limit", mbe.Limit)
	}
	if errors.Is(err, io.EOF) {
		return inputErr(http.StatusBadRequest, CodeInvalidRequest, -1, "malformed body: empty")
	}
	return inputErr(http.StatusBadRequest, CodeInvalidRequest, -1, "malformed body: %v", err)
}

// CheckRequest reports, as an *InputError, the first reason cfg rejects
// req: an unknown method, a missing or unknown client, a batch over
// cfg.MaxBatch, or a malformed key (named, with its index). It costs one
// pass over the keys and allocates only on error.
func CheckRequest(cfg Config, req Request) error {
	var check func(string) error
	field, what := "uris", "AT-URI"
	switch req.Method {
	case MethodGetPostRecords, MethodGetInteractionCounts:
		check = CheckATURI
	case MethodGetProfiles:
		check, field, what = CheckDID, "dids", "DID"
	default:
		return inputErr(http.StatusNotFound, CodeUnknownMethod, -1, "unknown method %s", truncate(req.Method))
	}
	if err := checkClientIn(cfg.Clients, req.Client); err != nil {
		return err
	}
	return checkKeys(cfg.MaxBatch, field, what, check, req.Keys)
}

func checkClientIn(clients []string, client string) error {
	if client == "" {
		return inputErr(http.StatusBadRequest, CodeMissingClient, -1,
			"no client named: set the \"client\" field or the %s header", ClientHeader)
	}
	if err := checkClient(client); err != nil {
		return inputErr(http.StatusBadRequest, CodeInvalidRequest, -1, "%v", err)
	}
	if len(clients) > 0 && !slices.Contains(clients, client) {
		return inputErr(http.StatusForbidden, CodeUnknownClient, -1, "unknown client %q", client)
	}
	return nil
}

func checkKeys(maxBatch int, field, what string, check func(string) error, keys []string) error {
	if maxBatch > 0 && len(keys) > maxBatch {
		return inputErr(http.StatusBadRequest, CodeBatchTooLarge, -1,
			"batch of %d keys is over the limit of %d", len(keys), maxBatch)
	}
	for i, k := range keys {
		if err := check(k); err != nil {
			return inputErr(http.StatusBadRequest, CodeInvalidRequest, i, "%s[%d]: malformed %s %s: %v", field, i, what, truncate(k), err)
		}
	}
	return nil
}

// truncate quotes s, cut to 100 bytes: error messages name bad input
// without echoing megabytes of it.
func truncate(s string) string {
	const max = 100
	if len(s) <= max {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:max]) + fmt.Sprintf("... (%d bytes)", len(s))
}
