package deathspiral

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// portLines reads the service's log lines as the sink's reader gets them
// (faults.SinkConfig.Tee) and keeps the time each line that reports a dial
// failed for want of a port says it was logged: the runtime's own record,
// which outlives a child whose metrics were not read before it was killed.
// A line counts if its error is connect(2)'s EADDRNOTAVAIL (noPort) or its
// kind one of the bundled data plane's port kinds; its time is its JSON
// "time" field (log/slog's), else the time it was read.
type portLines struct {
	mu      sync.Mutex
	partial []byte
	times   []time.Time
	lines   int
}

// portKinds are the bundled data plane's "kind" values for a dial that
// found no port.
var portKinds = []string{`"kind":"addr_not_avail"`, `"kind":"addr_in_use"`}

func (p *portLines) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.partial = append(p.partial, b...)
			break
		}
		line := b[:i]
		if len(p.partial) > 0 {
			line = append(p.partial, line...)
			p.partial = p.partial[:0]
		}
		p.line(line)
		b = b[i+1:]
	}
	return n, nil
}

func (p *portLines) line(line []byte) {
	p.lines++
	s := string(line)
	if !strings.Contains(s, noPort) && !containsAny(s, portKinds) {
		return
	}
	var rec struct {
		Time time.Time `json:"time"`
	}
	at := time.Now()
	if json.Unmarshal(line, &rec) == nil && !rec.Time.IsZero() {
		at = rec.Time
	}
	p.times = append(p.times, at)
}

// Count is how many lines reported a dial without a port.
func (p *portLines) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.times)
}

// FirstAfter is the earliest time a line reporting a dial without a port
// was logged at or after t, and how many such lines were, if any.
func (p *portLines) FirstAfter(t time.Time) (time.Time, int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first time.Time
	n := 0
	for _, at := range p.times {
		if at.Before(t) {
			continue
		}
		if n == 0 || at.Before(first) {
			first = at
		}
		n++
	}
	return first, n, n > 0
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
