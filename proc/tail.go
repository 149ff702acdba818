package proc

import (
	"bytes"
	"sync"
)

// Tail is an io.Writer that keeps the last Max bytes written to it: a
// child's output, for the error or exit record that says why it stopped.
// It is safe for concurrent use.
type Tail struct {
	Max int

	mu sync.Mutex
	b  []byte
}

// Write keeps p's bytes, dropping the oldest past Max; it never fails.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.Max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// String is what is kept, as written.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// Said is ": " and what is kept, trimmed, or "" if nothing is: the end of
// an error message.
func (t *Tail) Said() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := bytes.TrimSpace(t.b); len(s) > 0 {
		return ": " + string(s)
	}
	return ""
}
