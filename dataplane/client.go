package dataplane

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Client calls a data plane's HTTP interface, as load generators do. The
// zero value is not usable: set URL and Name.
type Client struct {
	// URL is the server's base URL (Server.URL).
	URL string
	// Name is the client name sent with every request.
	Name string
	// HTTP sends the requests; nil means http.DefaultClient.
	HTTP *http.Client
	// Shape is how a batch RPC is sent; the zero value is this package's
	// (Handler's) own.
	Shape RequestShape
}

// RequestShape is how a service other than this package's takes a batch
// RPC: where it is posted, which JSON field carries the keys, how the
// client is named. Zero fields take this package's own.
type RequestShape struct {
	// Path is where every batch is posted ("/v1/lookup"), whatever the
	// method; "" is XRPCPrefix + method.
	Path string
	// KeysField is the JSON field carrying the keys; "" is the method's
	// own ("uris" or "dids").
	KeysField string
	// ClientField is the JSON field naming the client; "" is "client",
	// "-" sends none.
	ClientField string
	// ClientHeader is the header naming the client; "" is ClientHeader,
	// "-" sends none.
	ClientHeader string
}

// IsZero says s is this package's own shape.
func (s RequestShape) IsZero() bool { return s == RequestShape{} }

// Validate reports a shape no request could be sent with.
func (s RequestShape) Validate() error {
	var errs []error
	if s.Path != "" && !strings.HasPrefix(s.Path, "/") {
		errs = append(errs, fmt.Errorf("request path %q: want an absolute path (/...)", s.Path))
	}
	if s.ClientField == "-" && s.ClientHeader == "-" {
		errs = append(errs, errors.New("request shape names the client nowhere (neither a field nor a header): the per-client figures would be empty"))
	}
	if s.ClientHeader != "" && s.ClientHeader != "-" && !validHeaderName(s.ClientHeader) {
		errs = append(errs, fmt.Errorf("client header %q: not a valid header name", s.ClientHeader))
	}
	return errors.Join(errs...)
}

func validHeaderName(h string) bool {
	for _, r := range h {
		switch {
		case r == '-', r == '_', r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		default:
			return false
		}
	}
	return h != ""
}

// encode returns the path and body of a batch of keys for method.
func (s RequestShape) encode(method, client string, keys []string) (string, []byte, error) {
	if s.IsZero() {
		body, err := EncodeRequest(Request{Method: method, Client: client, Keys: keys})
		return XRPCPrefix + method, body, err
	}
	path := s.Path
	if path == "" {
		path = XRPCPrefix + method
	}
	field := s.KeysField
	if field == "" {
		f, ok := keyField(method)
		if !ok {
			return "", nil, fmt.Errorf("encode request: unknown method %q", method)
		}
		field = f
	}
	if keys == nil {
		keys = []string{}
	}
	body := map[string]any{field: keys}
	if cf := cmp.Or(s.ClientField, "client"); cf != "-" && client != "" {
		body[cf] = client
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", nil, fmt.Errorf("encode request: %w", err)
	}
	return path, b, nil
}

// CallError is a non-200 answer from the data plane.
type CallError struct {
	Status int
	Body   ErrorBody
}

// Error says the status, the error code and the message.
func (e *CallError) Error() string {
	return fmt.Sprintf("dataplane answered %d %s: %s", e.Status, e.Body.Error, e.Body.Message)
}

// GetPostRecords calls GetPostRecords over HTTP. It blocks until the
// answer is read or ctx is done.
func (c *Client) GetPostRecords(ctx context.Context, uris []string) ([]*Post, error) {
	var r PostsResponse
	err := c.Call(ctx, MethodGetPostRecords, uris, &r)
	return r.Posts, err
}

// GetProfiles calls GetProfiles over HTTP.
func (c *Client) GetProfiles(ctx context.Context, dids []string) ([]*Profile, error) {
	var r ProfilesResponse
	err := c.Call(ctx, MethodGetProfiles, dids, &r)
	return r.Profiles, err
}

// GetInteractionCounts calls GetInteractionCounts over HTTP.
func (c *Client) GetInteractionCounts(ctx context.Context, uris []string) ([]*InteractionCounts, error) {
	var r CountsResponse
	err := c.Call(ctx, MethodGetInteractionCounts, uris, &r)
	return r.Counts, err
}

// Call posts keys to method and decodes the answer into resp. A non-200
// answer is a *CallError.
func (c *Client) Call(ctx context.Context, method string, keys []string, resp any) error {
	path, body, err := c.Shape.encode(method, c.Name, keys)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("call %s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if h := cmp.Or(c.Shape.ClientHeader, ClientHeader); h != "-" {
		req.Header.Set(h, c.Name) // also in the body; the header names it before the body is read
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("call %s: %w", method, err)
	}
	defer func() { _ = res.Body.Close() }() // read to the end below
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("call %s: read answer: %w", method, err)
	}
	if res.StatusCode != http.StatusOK {
		ce := &CallError{Status: res.StatusCode}
		if err := json.Unmarshal(b, &ce.Body); err != nil {
			ce.Body.Message = string(b)
		}
		return fmt.Errorf("call %s: %w", method, ce)
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("call %s: decode answer: %w", method, err)
	}
	return nil
}
