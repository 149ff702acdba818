package netfault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"

	"github.com/spiral-chaos/spiral/faults"
)

var _ faults.Fault = (*Toxic)(nil)

// Toxic streams: which way the bytes a toxic acts on flow.
const (
	// Downstream is from the backend to the client (responses).
	Downstream = "downstream"
	// Upstream is from the client to the backend (requests).
	Upstream = "upstream"
)

// Proxy is a toxiproxy proxy running in this process, between clients and
// one backend: it listens on a free port of 127.0.0.1 and forwards each
// connection to the backend, through the toxics injected at the time. Point
// the client at Addr instead of the backend. It costs a few goroutines per
// connection, and no image or separate process.
type Proxy struct {
	p      *toxiproxy.Proxy
	addr   string
	seq    atomic.Int64 // names toxics uniquely
	closed atomic.Bool
}

// NewProxy starts a proxy to upstream (host:port), listening on a free
// port of 127.0.0.1. Close stops it. name labels it in errors.
func NewProxy(name, upstream string) (*Proxy, error) {
	// A server only carries the logger and metrics of its proxies: no
	// HTTP API is started. Metrics stay off; toxiproxy's logs are dropped.
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("start proxy %s to %s: %w", name, upstream, err)
	}
	p.Lock()
	addr := p.Listen // the port chosen by the kernel, set by Start
	p.Unlock()
	return &Proxy{p: p, addr: addr}, nil
}

// Addr returns the proxy's host:port on 127.0.0.1.
func (p *Proxy) Addr() string { return p.addr }

// Close stops accepting, closes the listener and every proxied connection,
// and waits for the accept loop to end. Toxics go with it. It is safe to
// call more than once.
func (p *Proxy) Close() error {
	if p.closed.CompareAndSwap(false, true) {
		p.p.Stop()
	}
	return nil
}

// Latency returns a fault adding latency (plus or minus up to jitter) to
// every chunk of data from the backend, on open and new connections alike.
// A request-response round trip takes at least latency longer.
func (p *Proxy) Latency(latency, jitter time.Duration) *Toxic {
	return p.newToxic("latency", Downstream, map[string]int64{
		"latency": latency.Milliseconds(),
		"jitter":  jitter.Milliseconds(),
	})
}

// ResetPeer returns a fault that resets connections: after is how long
// after the first request bytes arrive (0: at once). Connections opened
// while it is injected get a TCP RST (SO_LINGER 0); connections already open
// are closed (FIN): either way the client's request fails.
func (p *Proxy) ResetPeer(after time.Duration) *Toxic {
	return p.newToxic("reset_peer", Upstream, map[string]int64{
		"timeout": after.Milliseconds(),
	})
}

// Bandwidth returns a fault capping the data from the backend at
// kbPerSec KB/s (1 KB = 1000 bytes), per connection.
func (p *Proxy) Bandwidth(kbPerSec int64) *Toxic {
	return p.newToxic("bandwidth", Downstream, map[string]int64{"rate": kbPerSec})
}

func (p *Proxy) newToxic(typ, stream string, attrs map[string]int64) *Toxic {
	return &Toxic{
		proxy:  p,
		name:   fmt.Sprintf("%s_%s_%d", typ, stream, p.seq.Add(1)),
		typ:    typ,
		stream: stream,
		attrs:  attrs,
	}
}

// Toxic is a Fault on a Proxy: Inject adds a toxiproxy toxic, Recover
// removes it. Both take effect on open connections too.
type Toxic struct {
	proxy  *Proxy
	name   string
	typ    string
	stream string
	attrs  map[string]int64

	mu sync.Mutex
	on bool
}

// Name returns e.g. "toxic latency downstream latency=200 jitter=0".
func (t *Toxic) Name() string {
	s := "toxic " + t.typ + " " + t.stream
	for _, k := range []string{"latency", "jitter", "rate", "timeout"} {
		if v, ok := t.attrs[k]; ok {
			s += fmt.Sprintf(" %s=%d", k, v)
		}
	}
	return s
}

// Inject adds the toxic to the proxy.
func (t *Toxic) Inject(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.on {
		return faults.ErrInjected
	}
	if t.proxy.closed.Load() {
		return fmt.Errorf("inject %s: proxy closed", t.Name())
	}
	body, err := json.Marshal(map[string]any{
		"name":       t.name,
		"type":       t.typ,
		"stream":     t.stream,
		"toxicity":   1.0,
		"attributes": t.attrs,
	})
	if err != nil {
		return fmt.Errorf("inject %s: %w", t.Name(), err)
	}
	if _, err := t.proxy.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		return fmt.Errorf("inject %s: %w", t.Name(), err)
	}
	t.on = true
	return nil
}

// Recover removes the toxic; data flows untouched again. It is a no-op if
// the toxic is not injected.
func (t *Toxic) Recover(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.on {
		return nil
	}
	err := t.proxy.p.Toxics.RemoveToxic(ctx, t.name)
	if err != nil && !errors.Is(err, toxiproxy.ErrToxicNotFound) {
		return fmt.Errorf("recover %s: %w", t.Name(), err)
	}
	t.on = false
	return nil
}
