package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Post is a post record, the answer of GetPostRecords for one URI.
type Post struct {
	URI       string    `json:"uri"`
	AuthorDID string    `json:"authorDid"`
	CID       string    `json:"cid"`
	Text      string    `json:"text"`
	CreatedAt time.Time `json:"createdAt"`
}

// Profile is an account's profile, the answer of GetProfiles for one DID.
type Profile struct {
	DID         string    `json:"did"`
	Handle      string    `json:"handle"`
	DisplayName string    `json:"displayName"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"createdAt"`
}

// InteractionCounts are a post's counters, the answer of
// GetInteractionCounts for one URI.
type InteractionCounts struct {
	URI     string `json:"uri"`
	Likes   int64  `json:"likes"`
	Reposts int64  `json:"reposts"`
	Replies int64  `json:"replies"`
	Quotes  int64  `json:"quotes"`
}

// Cached values are a version byte, then each field in declaration order
// except the key (it is in the cache key): strings as uvarint length and
// bytes, integers and times (Unix microseconds, the store's precision is
// milliseconds) as varints. A value that does not decode is a cache error
// of kind "corrupt".
const codecVersion = 1

var errCorrupt = errors.New("corrupt cache value")

type encoder []byte

func (e *encoder) str(s string) {
	*e = binary.AppendUvarint(*e, uint64(len(s)))
	*e = append(*e, s...)
}
func (e *encoder) int(v int64)      { *e = binary.AppendVarint(*e, v) }
func (e *encoder) time(t time.Time) { e.int(t.UnixMicro()) }

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) str() string {
	n, k := binary.Uvarint(d.b)
	if k <= 0 || n > uint64(len(d.b)-k) {
		d.err = errCorrupt
		return ""
	}
	s := string(d.b[k : k+int(n)])
	d.b = d.b[k+int(n):]
	return s
}

func (d *decoder) int() int64 {
	v, k := binary.Varint(d.b)
	if k <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[k:]
	return v
}

func (d *decoder) time() time.Time { return time.UnixMicro(d.int()).UTC() }

func newDecoder(b []byte) (*decoder, error) {
	if len(b) == 0 || b[0] != codecVersion {
		return nil, errCorrupt
	}
	return &decoder{b: b[1:]}, nil
}

func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(d.b))
	}
	return d.err
}

func encodePost(p *Post) []byte {
	e := encoder{codecVersion}
	e.str(p.AuthorDID)
	e.str(p.CID)
	e.str(p.Text)
	e.time(p.CreatedAt)
	return e
}

func decodePost(uri string, b []byte) (*Post, error) {
	d, err := newDecoder(b)
	if err != nil {
		return nil, err
	}
	p := &Post{URI: uri, AuthorDID: d.str(), CID: d.str(), Text: d.str(), CreatedAt: d.time()}
	return p, d.done()
}

func encodeProfile(p *Profile) []byte {
	e := encoder{codecVersion}
	e.str(p.Handle)
	e.str(p.DisplayName)
	e.str(p.Description)
	e.time(p.CreatedAt)
	return e
}

func decodeProfile(did string, b []byte) (*Profile, error) {
	d, err := newDecoder(b)
	if err != nil {
		return nil, err
	}
	p := &Profile{DID: did, Handle: d.str(), DisplayName: d.str(), Description: d.str(), CreatedAt: d.time()}
	return p, d.done()
}

func encodeCounts(c *InteractionCounts) []byte {
	e := encoder{codecVersion}
	e.int(c.Likes)
	e.int(c.Reposts)
	e.int(c.Replies)
	e.int(c.Quotes)
	return e
}

func decodeCounts(uri string, b []byte) (*InteractionCounts, error) {
	d, err := newDecoder(b)
	if err != nil {
		return nil, err
	}
	c := &InteractionCounts{URI: uri, Likes: d.int(), Reposts: d.int(), Replies: d.int(), Quotes: d.int()}
	return c, d.done()
}
