package dataplane

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCodecRoundTrip(t *testing.T) {
	at := time.Date(2026, 4, 3, 22, 16, 7, 944910000, time.UTC)
	for _, p := range []*Post{
		{URI: "at://a", AuthorDID: "did:plc:x", CID: "bafy", Text: "héllo\x00\n", CreatedAt: at},
		{URI: "at://b", CreatedAt: time.UnixMicro(0).UTC()},
		{URI: "at://c", Text: string(make([]byte, 300)), CreatedAt: time.UnixMicro(-1).UTC()},
	} {
		var got Post
		require.NoError(t, decodePost(&got, p.URI, encodePost(p)))
		assert.Equal(t, *p, got)
	}
	pr := &Profile{DID: "did:plc:x", Handle: "a.test", DisplayName: "A", Description: "", CreatedAt: at}
	var gotPr Profile
	require.NoError(t, decodeProfile(&gotPr, pr.DID, encodeProfile(pr)))
	assert.Equal(t, *pr, gotPr)
	for _, c := range []*InteractionCounts{
		{URI: "at://a", Likes: 1, Reposts: -1, Replies: math.MaxInt64, Quotes: math.MinInt64},
		{URI: "at://b"},
	} {
		var got InteractionCounts
		require.NoError(t, decodeCounts(&got, c.URI, encodeCounts(c)))
		assert.Equal(t, *c, got)
	}
}

func TestCodecRejectsCorruptValues(t *testing.T) {
	good := encodePost(&Post{Text: "text", CreatedAt: time.Now()})
	for name, b := range map[string][]byte{
		"empty":         nil,
		"version":       append([]byte{codecVersion + 1}, good[1:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte{}, good...), 0),
		"long string":   {codecVersion, 0x7f},
		"varint runoff": {codecVersion, 0x80, 0x80},
		"overflow":      {codecVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	} {
		var p Post
		require.ErrorIs(t, decodePost(&p, "at://x", b), errCorrupt, name)
	}
}

// FuzzUvarint checks the string decoder against encoding/binary.
func FuzzUvarint(f *testing.F) {
	f.Add([]byte{0x80, 0x01})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		want, n := binary.Uvarint(b)
		d := &decoder{s: string(b)}
		got := d.uvarint()
		if n <= 0 {
			if d.err == nil {
				t.Fatalf("% x: binary.Uvarint fails (%d), decoder gives %d", b, n, got)
			}
			return
		}
		if d.err != nil || got != want || len(d.s) != len(b)-n {
			t.Fatalf("% x: got %d (err %v, %d left), want %d (%d left)", b, got, d.err, len(d.s), want, len(b)-n)
		}
		iv, in := binary.Varint(b)
		d = &decoder{s: string(b)}
		if gotI := d.int(); in > 0 && gotI != iv {
			t.Fatalf("% x: int %d, want %d", b, gotI, iv)
		}
	})
}

func TestCacheKeys(t *testing.T) {
	long := "at://did:web:" + strings.Repeat("a", 300) + "/a.b.c/d"
	ids := []string{"at://x/a.b.c/1", long, "", "at://y/a.b.c/2"}
	got := cacheKeys("post:", ids)
	require.Len(t, got, len(ids))
	for i, id := range ids {
		assert.Equal(t, cacheKey("post:", id), got[i], id)
	}
	assert.Equal(t, "post:at://x/a.b.c/1", got[0])
	assert.True(t, strings.HasPrefix(got[1], "post:sha256:"), got[1])
	assert.LessOrEqual(t, len(got[1]), memcachedMaxKey)
}
