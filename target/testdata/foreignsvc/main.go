// Command foreignsvc is a small batch-lookup service written apart from
// Spiral (its own module, the standard library only), with a request shape
// of its own: Spiral's target tests run its suites against it by
// configuration alone (SPIRAL_TARGET=exec:..., SPIRAL_REQUEST_*).
//
//	POST /v2/fetch   {"ids": ["...", ...]}, the caller in X-Caller
//	GET  /healthz    200 while memcached answers
//	GET  /metrics    Prometheus text: the Go runtime's figures Spiral reads
//
// It serves on $SPIRAL_LISTEN and looks the ids up in the first memcached
// of $SPIRAL_MEMCACHED_ADDRS, in chunks of chunkKeys keys, over a fixed pool
// of poolConns connections that it never closes: a bounded service. With
// FOREIGNSVC_UNBOUNDED=1 it is a regression of the incident's kind instead:
// no bound, a goroutine and a fresh connection, closed after use, per chunk
// of unboundedChunk keys.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	poolConns      = 8
	chunkKeys      = 100
	unboundedChunk = 10
)

func main() {
	addr := os.Getenv("SPIRAL_LISTEN")
	mc, _, _ := strings.Cut(os.Getenv("SPIRAL_MEMCACHED_ADDRS"), ",")
	if addr == "" || mc == "" {
		fmt.Fprintln(os.Stderr, "foreignsvc: SPIRAL_LISTEN and SPIRAL_MEMCACHED_ADDRS must be set")
		os.Exit(2)
	}
	s := &service{mc: mc, unbounded: os.Getenv("FOREIGNSVC_UNBOUNDED") == "1", pool: make(chan *mcConn, poolConns)}
	go s.pollPeak()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v2/fetch", s.fetch)
	mux.HandleFunc("GET /healthz", s.health)
	mux.HandleFunc("GET /metrics", s.metrics)
	fmt.Fprintln(os.Stderr, "foreignsvc: serving on", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		fmt.Fprintln(os.Stderr, "foreignsvc:", err)
		os.Exit(1)
	}
}

type service struct {
	mc        string
	unbounded bool
	pool      chan *mcConn // idle connections
	open      atomic.Int64 // connections open, idle or in use
	peak      atomic.Int64 // goroutines' high-water mark since the last scrape asking for it
}

type mcConn struct {
	c net.Conn
	r *bufio.Reader
}

// get returns how many of keys memcached holds.
func (c *mcConn) get(keys []string) (int, error) {
	_ = c.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c.c, "get %s\r\n", strings.Join(keys, " ")); err != nil {
		return 0, err
	}
	found := 0
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return found, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "END":
			return found, nil
		case strings.HasPrefix(line, "VALUE "):
			var key string
			var flags, n int
			if _, err := fmt.Sscanf(line, "VALUE %s %d %d", &key, &flags, &n); err != nil {
				return found, err
			}
			if _, err := c.r.Discard(n + 2); err != nil {
				return found, err
			}
			found++
		default:
			return found, errors.New("memcached: " + line)
		}
	}
}

func (s *service) dial() (*mcConn, error) {
	c, err := net.DialTimeout("tcp", s.mc, time.Second)
	if err != nil {
		return nil, err
	}
	s.open.Add(1)
	return &mcConn{c: c, r: bufio.NewReader(c)}, nil
}

func (s *service) close(c *mcConn) {
	_ = c.c.Close()
	s.open.Add(-1)
}

// lookup looks keys up in memcached, chunk by chunk.
func (s *service) lookup(keys []string) (int, error) {
	if s.unbounded {
		var wg sync.WaitGroup
		var found atomic.Int64
		var failed atomic.Value
		for k := range slices.Chunk(keys, unboundedChunk) {
			wg.Go(func() {
				c, err := s.dial()
				if err != nil {
					failed.Store(err)
					return
				}
				defer s.close(c)
				n, err := c.get(k)
				if err != nil {
					failed.Store(err)
				}
				found.Add(int64(n))
			})
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			return int(found.Load()), err
		}
		return int(found.Load()), nil
	}
	found := 0
	for len(keys) > 0 {
		chunk := keys[:min(chunkKeys, len(keys))]
		keys = keys[len(chunk):]
		var c *mcConn
		select {
		case c = <-s.pool:
		default:
			if s.open.Load() < poolConns {
				var err error
				if c, err = s.dial(); err != nil {
					return found, err
				}
			} else {
				c = <-s.pool
			}
		}
		n, err := c.get(chunk)
		if err != nil {
			s.close(c)
			return found, err
		}
		s.pool <- c
		found += n
	}
	return found, nil
}

func (s *service) fetch(w http.ResponseWriter, r *http.Request) {
	var req struct {
		IDs []string `json:"ids"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.IDs) == 0 {
		http.Error(w, "want {\"ids\": [...]}", http.StatusBadRequest)
		return
	}
	for _, id := range req.IDs {
		if id == "" || strings.ContainsAny(id, " \r\n") || len(id) > 240 {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
	}
	keys := make([]string, len(req.IDs))
	for i, id := range req.IDs {
		keys[i] = "fsvc:" + id
	}
	found, err := s.lookup(keys)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"caller": r.Header.Get("X-Caller"), "asked": len(keys), "found": found})
}

func (s *service) health(w http.ResponseWriter, _ *http.Request) {
	c, err := net.DialTimeout("tcp", s.mc, time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_ = c.Close()
	_, _ = w.Write([]byte("ok\n"))
}

// pollPeak keeps the goroutines' high-water mark, polled every 5 ms.
func (s *service) pollPeak() {
	for range time.Tick(5 * time.Millisecond) {
		n := int64(runtime.NumGoroutine())
		for {
			p := s.peak.Load()
			if n <= p || s.peak.CompareAndSwap(p, n) {
				break
			}
		}
	}
}

// metrics writes the runtime figures Spiral reads from a service in
// another process, under the names the Prometheus Go client gives them,
// and the goroutines' high-water mark when the scrape asks for it
// (X-Spiral-Peak-Window).
func (s *service) metrics(w http.ResponseWriter, r *http.Request) {
	samples := []metrics.Sample{
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/cpu/classes/total:cpu-seconds"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(samples)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	gauge := func(name string, v float64) { fmt.Fprintf(w, "# TYPE %s gauge\n%[1]s %g\n", name, v) }
	counter := func(name string, v float64) { fmt.Fprintf(w, "# TYPE %s counter\n%[1]s %g\n", name, v) }
	gauge("go_goroutines", float64(runtime.NumGoroutine()))
	counter("go_cpu_classes_gc_total_cpu_seconds_total", samples[0].Value.Float64())
	counter("go_cpu_classes_total_cpu_seconds_total", samples[1].Value.Float64())
	gauge("go_memory_classes_heap_objects_bytes", float64(samples[2].Value.Uint64()))
	gauge("go_gc_heap_goal_bytes", float64(samples[3].Value.Uint64()))
	counter("go_gc_cycles_total_gc_cycles_total", float64(samples[4].Value.Uint64()))
	gauge("foreignsvc_memcached_conns", float64(s.open.Load()))
	if r.Header.Get("X-Spiral-Peak-Window") != "" {
		gauge("spiral_goroutines_peak", float64(max(s.peak.Swap(0), int64(runtime.NumGoroutine()))))
	}
}
