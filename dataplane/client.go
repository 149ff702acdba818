package dataplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
	body, err := EncodeRequest(Request{Method: method, Client: c.Name, Keys: keys})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+XRPCPrefix+method, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("call %s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ClientHeader, c.Name) // also in the body; the header names it before the body is read
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
