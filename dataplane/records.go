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

// decoder reads a cached value converted to a string once: every string
// field is a substring of it, one allocation per value instead of one per
// field.
type decoder struct {
	s   string
	err error
}

// uvarint is binary.Uvarint over a string.
func (d *decoder) uvarint() uint64 {
	var v uint64
	for i := 0; i < len(d.s) && i < binary.MaxVarintLen64; i++ {
		c := d.s[i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break // overflow
			}
			d.s = d.s[i+1:]
			return v | uint64(c)<<(7*i)
		}
		v |= uint64(c&0x7f) << (7 * i)
	}
	d.err = errCorrupt
	d.s = ""
	return 0
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.s)) {
		d.err = errCorrupt
		return ""
	}
	v := d.s[:n]
	d.s = d.s[n:]
	return v
}

func (d *decoder) int() int64 {
	u := d.uvarint()
	v := int64(u >> 1) // zig-zag, as binary.AppendVarint
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (d *decoder) time() time.Time { return time.UnixMicro(d.int()).UTC() }

func newDecoder(b []byte) (decoder, error) {
	if len(b) == 0 || b[0] != codecVersion {
		return decoder{}, errCorrupt
	}
	return decoder{s: string(b[1:])}, nil
}

func (d *decoder) done() error {
	if d.err == nil && len(d.s) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(d.s))
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

// decodePost fills p from a cached value; on error p holds garbage.
func decodePost(p *Post, uri string, b []byte) error {
	d, err := newDecoder(b)
	if err != nil {
		return err
	}
	*p = Post{URI: uri, AuthorDID: d.str(), CID: d.str(), Text: d.str(), CreatedAt: d.time()}
	return d.done()
}

func encodeProfile(p *Profile) []byte {
	e := encoder{codecVersion}
	e.str(p.Handle)
	e.str(p.DisplayName)
	e.str(p.Description)
	e.time(p.CreatedAt)
	return e
}

func decodeProfile(p *Profile, did string, b []byte) error {
	d, err := newDecoder(b)
	if err != nil {
		return err
	}
	*p = Profile{DID: did, Handle: d.str(), DisplayName: d.str(), Description: d.str(), CreatedAt: d.time()}
	return d.done()
}

func encodeCounts(c *InteractionCounts) []byte {
	e := encoder{codecVersion}
	e.int(c.Likes)
	e.int(c.Reposts)
	e.int(c.Replies)
	e.int(c.Quotes)
	return e
}

func decodeCounts(c *InteractionCounts, uri string, b []byte) error {
	d, err := newDecoder(b)
	if err != nil {
		return err
	}
	*c = InteractionCounts{URI: uri, Likes: d.int(), Reposts: d.int(), Replies: d.int(), Quotes: d.int()}
	return d.done()
}
