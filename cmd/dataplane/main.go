// Command dataplane runs Spiral's bundled data plane as a process of its
// own: the service under test of the suites, for a run where it must live
// apart from the test (a child process in a memory cgroup, a service
// restarted after an OOM kill) or for trying it by hand.
//
// Usage:
//
//	dataplane [flags]
//
// It serves the data plane's HTTP interface (POST /xrpc/<method>, GET
// /metrics, GET /healthz, which answers 200 only while memcached and the
// CQL store both answer) on -listen, and prints one line to stdout once it
// listens:
//
//	dataplane: listening on http://127.0.0.1:41234
//
// so that whoever started it on port 0 learns the address. SIGINT or
// SIGTERM stops it: requests in flight get -shutdown-timeout to finish,
// then it exits 0. Bad flags exit 2 with a message; a data plane that can't
// start (no backend, bad keyspace) exits 1.
//
// The backends default to Spiral's external-mode variables
// (SPIRAL_MEMCACHED_ADDRS, SPIRAL_CQL_HOSTS, SPIRAL_KEYSPACE) and the
// address to $SPIRAL_LISTEN, which is how Spiral's child-process target
// (target.Exec) hands a child its environment's backends and its address.
// GOMEMLIMIT and GOGC apply as to any Go program.
//
// Its /metrics carries the Go runtime's figures beside the data plane's
// (go_goroutines, go_cpu_classes_*, go_gc_*, go_memory_classes_heap_*), so
// that a suite can judge a child's goroutines, heap and GC share as it
// judges an in-process data plane's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/target"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the parsed flags.
type options struct {
	listen          string
	config          string
	ablate          string
	maxIdleConns    int
	memcached       []string
	cql             []string
	keyspace        string
	logSink         string
	shutdownTimeout time.Duration
}

// configs are the configurations -config names.
var configs = map[string]func() dataplane.Config{
	"fixed":    dataplane.DefaultConfig,
	"incident": dataplane.IncidentConfig,
	"setlimit": dataplane.PostmortemFixConfig,
}

// parseFlags parses args; a bad flag is an error to print with the usage.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("dataplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		_, _ = fmt.Fprintf(stderr, "usage: dataplane [flags]\n\nRuns Spiral's bundled data plane; see `go doc ./cmd/dataplane`.\n\n")
		fs.PrintDefaults()
	}
	memcached := envOr(fixtures.EnvMemcachedAddrs, "")
	cql := envOr(fixtures.EnvCQLHosts, "")
	fs.StringVar(&o.listen, "listen", envOr(target.EnvListen, "127.0.0.1:0"), "`address` to serve on (port 0: any free port, printed once listening; default $"+target.EnvListen+" or 127.0.0.1:0)")
	fs.StringVar(&o.config, "config", "fixed", "data plane configuration: fixed (dataplane.DefaultConfig), incident (dataplane.IncidentConfig) or setlimit (dataplane.PostmortemFixConfig: the incident with the postmortem's SetLimit alone)")
	fs.StringVar(&o.ablate, "ablate", "", "with -config fixed, turn this `knob` back to the incident's value, the rest kept fixed: "+strings.Join(dataplane.KnobNames(), ", "))
	fs.IntVar(&o.maxIdleConns, "memcache-max-idle-conns", 0, "memcached idle pool size (Config.MemcacheMaxIdleConns) in place of the configuration's: a regression of one knob; 0 keeps the configuration's")
	fs.StringVar(&memcached, "memcached", memcached, "memcached servers, comma-separated `host:port` (default $"+fixtures.EnvMemcachedAddrs+")")
	fs.StringVar(&cql, "cql", cql, "CQL store contact points, comma-separated `host:port` (default $"+fixtures.EnvCQLHosts+")")
	fs.StringVar(&o.keyspace, "keyspace", envOr(fixtures.EnvKeyspace, fixtures.DefaultKeyspace), "CQL `keyspace` holding the tables (default $"+fixtures.EnvKeyspace+")")
	fs.StringVar(&o.logSink, "log", "stderr", "where error lines go: stderr (one write(2) per line, no lock), discard (counted, not written) or a file `path` (appended)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long requests in flight may take to finish after SIGINT or SIGTERM")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if _, ok := configs[o.config]; !ok {
		errs = append(errs, fmt.Errorf("-config %q: want fixed, incident or setlimit", o.config))
	}
	if o.ablate != "" {
		if o.config != "fixed" {
			errs = append(errs, fmt.Errorf("-ablate %q: only with -config fixed", o.ablate))
		} else if _, err := dataplane.Ablate(dataplane.DefaultConfig(), o.ablate); err != nil {
			errs = append(errs, fmt.Errorf("-ablate: %w", err))
		}
	}
	if o.maxIdleConns < 0 {
		errs = append(errs, fmt.Errorf("-memcache-max-idle-conns %d: want 1 or more, or 0 for the configuration's", o.maxIdleConns))
	}
	o.memcached, o.cql = fixtures.SplitList(memcached), fixtures.SplitList(cql)
	if len(o.memcached) == 0 {
		errs = append(errs, fmt.Errorf("no memcached server: set -memcached or $%s", fixtures.EnvMemcachedAddrs))
	}
	if len(o.cql) == 0 {
		errs = append(errs, fmt.Errorf("no CQL contact point: set -cql or $%s", fixtures.EnvCQLHosts))
	}
	for _, a := range append(append([]string{o.listen}, o.memcached...), o.cql...) {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("address %q: %w", a, err))
		}
	}
	if o.shutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown-timeout %v: want more than 0", o.shutdownTimeout))
	}
	return o, errors.Join(errs...)
}

// run is the command: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "dataplane: %v\n", err) // nowhere else to say it
		return 2
	}
	if err := serve(ctx, o, stdout); err != nil {
		_, _ = fmt.Fprintf(stderr, "dataplane: %v\n", err) // nowhere else to say it
		return 1
	}
	return 0
}

// dataplaneConfig is the configuration o names: -config, then -ablate
// and -memcache-max-idle-conns applied (both checked by parseFlags).
func (o options) dataplaneConfig() dataplane.Config {
	cfg := configs[o.config]()
	if o.ablate != "" {
		cfg, _ = dataplane.Ablate(cfg, o.ablate)
	}
	if o.maxIdleConns > 0 {
		cfg.MemcacheMaxIdleConns = o.maxIdleConns
	}
	return cfg
}

// serve builds the data plane, serves it until ctx ends, then shuts down.
func serve(ctx context.Context, o options, stdout io.Writer) error {
	cfg := o.dataplaneConfig()
	sink, closeSink, err := openSink(o.logSink)
	if err != nil {
		return err
	}
	defer closeSink()
	cfg.LogSink = sink

	env := fixtures.Env{MemcachedAddrs: o.memcached, CQLHosts: o.cql, Keyspace: o.keyspace}
	dp, err := dataplane.New(cfg, dataplane.Backends{MemcachedAddrs: o.memcached, Cluster: env.NewCluster(), Keyspace: o.keyspace})
	if err != nil {
		return fmt.Errorf("start the data plane: %w", err)
	}
	defer func() { _ = dp.Close() }() // its error would change nothing at exit

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	peak, err := probe.NewGoroutinesPeak(5 * time.Millisecond)
	if err != nil {
		return err
	}
	if err := peak.Start(ctx); err != nil {
		return err
	}
	defer peak.Stop()
	srv := &http.Server{Handler: withRuntimeMetrics(dp, peak), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	_, _ = fmt.Fprintf(stdout, "dataplane: listening on http://%s\n", ln.Addr())

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	return nil
}

// withRuntimeMetrics is dp's handler with the Go runtime's figures added to
// its /metrics: goroutines, and the runtime/metrics that the suites' GC
// share and heap figures come from for a child-process target.
//
// A scrape carrying target.PeakWindowHeader also gets
// target.PeakGoroutinesMetric: the highest goroutine count polled every 5
// ms since the previous such scrape (peak), which starts the next window.
func withRuntimeMetrics(dp *dataplane.DataPlane, peak *probe.Peak) http.Handler {
	rt := prometheus.NewRegistry()
	rt.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/(cpu/classes/|gc/cycles/total|gc/heap/goal|memory/classes/heap/objects|sched/goroutines)`)},
	)))
	metrics := promhttp.HandlerFor(prometheus.Gatherers{dp.Registry(), rt}, promhttp.HandlerOpts{})
	mux := http.NewServeMux()
	mux.Handle(dataplane.MetricsPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(target.PeakWindowHeader) == "" {
			metrics.ServeHTTP(w, r)
			return
		}
		// The text format only: the window's figure is appended to it.
		r.Header.Del("Accept")
		r.Header.Del("Accept-Encoding")
		v := make([]float64, 1)
		if err := peak.Read(r.Context(), v); err != nil {
			v[0] = float64(runtime.NumGoroutine()) // a failed poll: the count now, never a gap
		}
		metrics.ServeHTTP(w, r)
		_, _ = fmt.Fprintf(w, "# HELP %s Highest goroutine count polled every 5 ms since the previous scrape carrying %s.\n# TYPE %[1]s gauge\n%[1]s %[3]g\n",
			target.PeakGoroutinesMetric, target.PeakWindowHeader, v[0])
		_, _ = fmt.Fprintf(w, "# HELP %s Highest number of store queries in flight at once since the previous scrape carrying %s.\n# TYPE %[1]s gauge\n%[1]s %[3]d\n",
			target.PeakStoreMetric, target.PeakWindowHeader, dp.StoreInFlightPeak())
	}))
	mux.Handle("/", dp.Handler())
	return mux
}

// openSink returns the writer -log names and how to close it.
func openSink(name string) (io.Writer, func(), error) {
	switch name {
	case "stderr":
		return dataplane.FDWriter(unix.Stderr), func() {}, nil
	case "discard":
		return nil, func() {}, nil
	case "":
		return nil, nil, errors.New("-log is empty: want stderr, discard or a path")
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open the log sink: %w", err)
	}
	return f, func() { _ = f.Close() }, nil // lines are written unbuffered
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
