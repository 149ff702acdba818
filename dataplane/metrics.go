package dataplane

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricPrefix starts every metric name the data plane exports.
const metricPrefix = "spiral_dataplane_"

// Request result codes: the "code" label of requests_total.
const (
	codeOK          = "ok"
	codeBadRequest  = "bad_request"
	codeCacheError  = "cache_error"
	codeStoreError  = "store_error"
	codeDeadline    = "deadline"
	codeCanceled    = "canceled"
	codeUnavailable = "unavailable"
)

// Lookup sources: the "source" label of lookups_total.
const (
	sourceCache = "cache" // found in memcached
	sourceStore = "store" // missed memcached, found in the CQL store
	sourceMiss  = "miss"  // found in neither: a nil entry
	sourceError = "error" // not answered: the lookup failed
)

type metrics struct {
	reg              *prometheus.Registry
	requests         *prometheus.CounterVec
	requestSeconds   *prometheus.HistogramVec
	batchSize        *prometheus.HistogramVec
	lookups          *prometheus.CounterVec
	lookupsInFlight  prometheus.Gauge
	cacheErrors      *prometheus.CounterVec
	storeErrors      *prometheus.CounterVec
	storeInFlight    prometheus.Gauge
	memcacheInFlight prometheus.Gauge
	dials            *prometheus.CounterVec
	connsOpen        prometheus.Gauge
	connsClosed      prometheus.Counter
	logWritten       prometheus.Counter
	logDropped       *prometheus.CounterVec
	// tot keeps the sampler's figures as plain atomics beside them.
	tot totals
}

// totals are the counters behind Totals, each moved where its Prometheus
// metric is.
type totals struct {
	lookupsInFlight, cacheErrors, portErrors, logWritten, logDropped atomic.Int64
	storeInFlight, connsOpen, cacheHits, storeReads, dialPortErrors  atomic.Int64
}

// Totals are a data plane's figures that a sampler reads every interval:
// what Metrics gives summed over every label set, read as a handful of
// atomic loads (no allocation, lock or system call), so that reading them
// while a flood saturates the machine neither waits on the GC nor gives
// the scheduler a chance to park the reader (BenchmarkMetrics).
type Totals struct {
	LookupsInFlight int64 // lookups_in_flight
	CacheErrors     int64 // cache_errors_total
	// PortErrors are cache errors of kind addr_not_avail or addr_in_use.
	PortErrors    int64
	LogWritten    int64 // log_lines_written_total
	LogDropped    int64 // log_lines_dropped_total
	StoreInFlight int64 // store_queries_in_flight
	ConnsOpen     int64 // memcached_conns_open
	CacheHits     int64 // lookups_total{source="cache"}
	StoreReads    int64 // lookups_total{source="store"}
	// DialPortErrors are memcached_dials_total of result addr_not_avail
	// or addr_in_use.
	DialPortErrors int64
}

func (t *totals) read() Totals {
	return Totals{
		LookupsInFlight: t.lookupsInFlight.Load(), CacheErrors: t.cacheErrors.Load(), PortErrors: t.portErrors.Load(),
		LogWritten: t.logWritten.Load(), LogDropped: t.logDropped.Load(), StoreInFlight: t.storeInFlight.Load(),
		ConnsOpen: t.connsOpen.Load(), CacheHits: t.cacheHits.Load(), StoreReads: t.storeReads.Load(), DialPortErrors: t.dialPortErrors.Load(),
	}
}

// portKind reports whether an error kind is the postmortem's: no local
// port to bind or connect from.
func portKind(kind string) bool { return kind == "addr_not_avail" || kind == "addr_in_use" }

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &metrics{reg: reg}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricPrefix + "requests_total",
		Help: "Requests by client, method and result code.",
	}, []string{"client", "method", "code"})
	m.requestSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    metricPrefix + "request_duration_seconds",
		Help:    "Request latency by client and method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms to 16 s
	}, []string{"client", "method"})
	m.batchSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: metricPrefix + "batch_size",
		Help: "Keys per request by client and method: a few clients sending huge batches stand out here.",
		// 1 to 32768: typical requests carry 1-50 keys, the postmortem's
		// internal client 15-20k.
		Buckets: prometheus.ExponentialBuckets(1, 2, 16),
	}, []string{"client", "method"})
	m.lookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricPrefix + "lookups_total",
		Help: "Keys looked up by client, method and source (cache, store, miss, error).",
	}, []string{"client", "method", "source"})
	m.lookupsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: metricPrefix + "lookups_in_flight",
		Help: "Keys of accepted requests not yet answered.",
	})
	m.cacheErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricPrefix + "cache_errors_total",
		Help: "Memcached errors by cache (post, profile, counts), operation (get, set), kind (addr_in_use, addr_not_avail, conn_refused, timeout, ...) and the client whose request met them.",
	}, []string{"cache", "op", "kind", "client"})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricPrefix + "store_errors_total",
		Help: "CQL store errors by table and kind.",
	}, []string{"table", "kind"})
	m.storeInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: metricPrefix + "store_queries_in_flight",
		Help: "CQL queries in flight.",
	})
	m.memcacheInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: metricPrefix + "memcached_ops_in_flight",
		Help: "Memcached operations in flight; each holds a connection.",
	})
	m.dials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricPrefix + "memcached_dials_total",
		Help: "Memcached connections dialed, by result (ok or an error kind).",
	}, []string{"result"})
	m.connsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: metricPrefix + "memcached_conns_open",
		Help: "Memcached connections open, idle or in use.",
	})
	m.connsClosed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: metricPrefix + "memcached_conns_closed_total",
		Help: "Memcached connections closed by the data plane; each leaves a socket in TIME_WAIT on this host for 60 s.",
	})
	m.logWritten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: metricPrefix + "log_lines_written_total",
		Help: "Log lines written to the sink.",
	})
	m.logDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricPrefix + "log_lines_dropped_total",
		Help: "Log lines not written, by reason (rate_limit, write_error).",
	}, []string{"reason"})
	for _, c := range []prometheus.Collector{
		m.requests, m.requestSeconds, m.batchSize, m.lookups, m.lookupsInFlight,
		m.cacheErrors, m.storeErrors, m.storeInFlight, m.memcacheInFlight,
		m.dials, m.connsOpen, m.connsClosed, m.logWritten, m.logDropped,
	} {
		f(c)
	}
	return m
}

// Sample is one value of a gathered metric. Histograms give two samples,
// name_count and name_sum.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Snapshot is every sample of a data plane's registry at one moment.
type Snapshot []Sample

// Sum adds the values of the samples named name whose labels match every
// key/value pair in labels (given as "key", "value", ...); a missing sample
// counts 0. It panics on an odd number of label arguments.
func (s Snapshot) Sum(name string, labels ...string) float64 {
	if len(labels)%2 != 0 {
		panic(fmt.Sprintf("Snapshot.Sum(%q): odd number of label arguments", name))
	}
	if !strings.HasPrefix(name, metricPrefix) {
		name = metricPrefix + name
	}
	var sum float64
next:
	for _, sm := range s {
		if sm.Name != name {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			if sm.Labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		sum += sm.Value
	}
	return sum
}

// Total adds the values of every sample named exactly name (no prefix
// added, so it reads any exporter's figures, go_goroutines for one) and
// says whether there was any.
func (s Snapshot) Total(name string) (float64, bool) {
	var sum float64
	found := false
	for _, sm := range s {
		if sm.Name == name {
			sum, found = sum+sm.Value, true
		}
	}
	return sum, found
}

// String lists the samples one per line, as name{k="v",...} value.
func (s Snapshot) String() string {
	var b strings.Builder
	for _, sm := range s {
		b.WriteString(sm.Name)
		if len(sm.Labels) > 0 {
			keys := make([]string, 0, len(sm.Labels))
			for k := range sm.Labels {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			b.WriteByte('{')
			for i, k := range keys {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "%s=%q", k, sm.Labels[k])
			}
			b.WriteByte('}')
		}
		fmt.Fprintf(&b, " %g\n", sm.Value)
	}
	return b.String()
}

func snapshot(g prometheus.Gatherer) (Snapshot, error) {
	families, err := g.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather metrics: %w", err)
	}
	return fromFamilies(families), nil
}

// ParseSnapshot reads metrics in the Prometheus text format (what a
// service's /metrics serves) into a Snapshot, as Metrics would have
// gathered them: counters and gauges as they are, a histogram or summary
// as its _count and _sum.
func ParseSnapshot(r io.Reader) (Snapshot, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	families := make([]*dto.MetricFamily, 0, len(byName))
	for _, mf := range byName {
		families = append(families, mf)
	}
	slices.SortFunc(families, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return fromFamilies(families), nil
}

func fromFamilies(families []*dto.MetricFamily) Snapshot {
	var out Snapshot
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			labels := make(map[string]string, len(m.GetLabel()))
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, Sample{mf.GetName(), labels, m.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				out = append(out, Sample{mf.GetName(), labels, m.GetGauge().GetValue()})
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				out = append(out,
					Sample{mf.GetName() + "_count", labels, float64(h.GetSampleCount())},
					Sample{mf.GetName() + "_sum", labels, h.GetSampleSum()})
			case dto.MetricType_SUMMARY:
				sm := m.GetSummary()
				out = append(out,
					Sample{mf.GetName() + "_count", labels, float64(sm.GetSampleCount())},
					Sample{mf.GetName() + "_sum", labels, sm.GetSampleSum()})
			default:
				out = append(out, Sample{mf.GetName(), labels, m.GetUntyped().GetValue()})
			}
		}
	}
	return out
}
