package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths served by Handler.
const (
	// XRPCPrefix is followed by a method name: POST /xrpc/GetPostRecords.
	XRPCPrefix = "/xrpc/"
	// MetricsPath serves the Prometheus registry.
	MetricsPath = "/metrics"
	// HealthPath answers 200 when memcached and the CQL store answer, 503
	// with the failures otherwise.
	HealthPath = "/healthz"
)

// healthTimeout bounds one /healthz check.
const healthTimeout = 2 * time.Second

// ErrorBody is the JSON body of every non-200 answer.
type ErrorBody struct {
	Error   string `json:"error"`           // a Code constant, or "Unavailable", "Timeout"
	Message string `json:"message"`         // what is wrong
	Index   *int   `json:"index,omitempty"` // offending key, if one
}

// Response bodies of the three methods: the answers in request order,
// null where not found.
type (
	// PostsResponse is the answer of GetPostRecords.
	PostsResponse struct {
		Posts []*Post `json:"posts"`
	}
	// ProfilesResponse is the answer of GetProfiles.
	ProfilesResponse struct {
		Profiles []*Profile `json:"profiles"`
	}
	// CountsResponse is the answer of GetInteractionCounts.
	CountsResponse struct {
		Counts []*InteractionCounts `json:"counts"`
	}
)

// Handler returns the HTTP interface of d: POST XRPCPrefix+method with a
// JSON body {"client": ..., "uris"|"dids": [...]} (or the client in the
// ClientHeader header), GET MetricsPath and GET HealthPath.
func (d *DataPlane) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(XRPCPrefix, d.serveXRPC)
	mux.Handle(MetricsPath, promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc(HealthPath, d.serveHealth)
	return mux
}

func (d *DataPlane) serveXRPC(w http.ResponseWriter, r *http.Request) {
	method := strings.TrimPrefix(r.URL.Path, XRPCPrefix)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, inputErr(http.StatusMethodNotAllowed, CodeMethodNotAllowed, -1, "%s %s: want POST", r.Method, r.URL.Path))
		return
	}
	body := io.Reader(r.Body)
	if d.cfg.MaxBodyBytes > 0 {
		body = http.MaxBytesReader(w, r.Body, d.cfg.MaxBodyBytes)
	}
	req, err := DecodeRequest(method, r.Header.Get(ClientHeader), body)
	if err != nil {
		label := method
		if _, ok := keyField(method); !ok {
			label = "unknown"
		}
		client := req.Client
		if client == "" {
			client = r.Header.Get(ClientHeader)
		}
		d.m.requests.WithLabelValues(clientLabel(client), label, codeBadRequest).Inc()
		writeError(w, err)
		return
	}
	var resp any
	switch method {
	case MethodGetPostRecords:
		var v []*Post
		v, err = d.GetPostRecords(r.Context(), req.Client, req.Keys)
		resp = PostsResponse{Posts: nonNil(v)}
	case MethodGetProfiles:
		var v []*Profile
		v, err = d.GetProfiles(r.Context(), req.Client, req.Keys)
		resp = ProfilesResponse{Profiles: nonNil(v)}
	case MethodGetInteractionCounts:
		var v []*InteractionCounts
		v, err = d.GetInteractionCounts(r.Context(), req.Client, req.Keys)
		resp = CountsResponse{Counts: nonNil(v)}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func nonNil[T any](v []*T) []*T {
	if v == nil {
		return []*T{}
	}
	return v
}

func (d *DataPlane) serveHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	if err := d.Health(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: "Unavailable", Message: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// writeError answers err with its status: an *InputError's own, 504 past
// the deadline, 503 otherwise.
func writeError(w http.ResponseWriter, err error) {
	if ie, ok := errors.AsType[*InputError](err); ok {
		body := ErrorBody{Error: ie.Code, Message: ie.Msg}
		if ie.Index >= 0 {
			body.Index = &ie.Index
		}
		writeJSON(w, ie.Status, body)
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		writeJSON(w, http.StatusGatewayTimeout, ErrorBody{Error: "Timeout", Message: err.Error()})
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: "Unavailable", Message: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = fmt.Appendf(nil, `{"error":"InternalError","message":%q}`, err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n')) // the client is gone; nothing to do
}

// defaultStuckAfter is Server.StuckAfter's default (net/http/httptest
// uses 5 seconds).
const defaultStuckAfter = 5 * time.Second

// Server serves a DataPlane over HTTP on a loopback listener, in the manner
// of net/http/httptest.Server.
type Server struct {
	// URL is the base URL, http://127.0.0.1:port, set by Start.
	URL string
	// Listener is the loopback listener, set by Start.
	Listener net.Listener
	// StuckAfter is how long Close waits before saying which requests it
	// is waiting for, and how often it says it again. 0 means 5 seconds,
	// as net/http/httptest.
	StuckAfter time.Duration

	dp      *DataPlane
	handler http.Handler
	srv     *http.Server
	client  *http.Client

	mu       sync.Mutex
	started  bool
	closed   bool
	nextID   atomic.Uint64
	inflight map[uint64]inflight
}

type inflight struct {
	method, client, remote string
	start                  time.Time
}

// NewServer starts and returns a Server for dp on 127.0.0.1 and a free
// port. The caller must Close it.
func NewServer(dp *DataPlane) (*Server, error) {
	s := NewUnstartedServer(dp)
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// NewUnstartedServer returns a Server for dp that does not listen until
// Start.
func NewUnstartedServer(dp *DataPlane) *Server {
	s := &Server{dp: dp, handler: dp.Handler(), inflight: make(map[uint64]inflight)}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serve),
		ReadHeaderTimeout: 10 * time.Second,
	}
	s.client = &http.Client{Transport: &http.Transport{
		// Load generators open many connections to one host.
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
	}}
	return s
}

// Start listens on 127.0.0.1:0 and serves in a goroutine that Close ends.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("start dataplane server: already started")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("start dataplane server: %w", err)
	}
	s.started = true
	s.Listener = ln
	s.URL = "http://" + ln.Addr().String()
	go func() { _ = s.srv.Serve(ln) }() // returns http.ErrServerClosed at Close
	return nil
}

// Client returns an HTTP client for s whose idle connections Close closes.
func (s *Server) Client() *http.Client { return s.client }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	id := s.nextID.Add(1)
	s.mu.Lock()
	s.inflight[id] = inflight{method: r.Method + " " + r.URL.Path, client: r.Header.Get(ClientHeader), remote: r.RemoteAddr, start: time.Now()}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.inflight, id)
		s.mu.Unlock()
	}()
	s.handler.ServeHTTP(w, r)
}

// Close stops listening, closes idle connections and waits for requests in
// flight to finish. Every StuckAfter it writes the requests it is still
// waiting for to standard error and, never dropped, to the data plane's
// log. It does not close the DataPlane.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed || !s.started {
		s.closed = true
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()

	s.srv.SetKeepAlivesEnabled(false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Shutdown(context.Background()) // no deadline: only returns nil
	}()
	every := s.StuckAfter
	if every <= 0 {
		every = defaultStuckAfter
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	waited := time.Duration(0)
	for {
		select {
		case <-done:
			if t, ok := s.client.Transport.(*http.Transport); ok {
				t.CloseIdleConnections()
			}
			return
		case <-tick.C:
			waited += every
			s.reportStuck(waited)
		}
	}
}

func (s *Server) reportStuck(waited time.Duration) {
	s.mu.Lock()
	reqs := make([]inflight, 0, len(s.inflight))
	for _, r := range s.inflight {
		reqs = append(reqs, r)
	}
	s.mu.Unlock()
	if len(reqs) == 0 {
		return // handlers are done; Shutdown is closing their connections
	}
	slices.SortFunc(reqs, func(a, b inflight) int { return a.start.Compare(b.start) })
	var b strings.Builder
	fmt.Fprintf(&b, "dataplane.Server blocked in Close after %v, waiting for %d request(s):\n", waited, len(reqs))
	for _, r := range reqs {
		fmt.Fprintf(&b, "  %s client=%q from %s, running for %v\n", r.method, r.client, r.remote, time.Since(r.start).Round(time.Millisecond))
		s.dp.opsLog.Warn("server close waiting for request", "request", r.method, "client", r.client,
			"remote", r.remote, "running", time.Since(r.start).String())
	}
	_, _ = os.Stderr.WriteString(b.String())
}
