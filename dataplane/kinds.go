package dataplane

import (
	"fmt"

	"github.com/gocql/gocql"
)

// Method names, as served under /xrpc/ and used in the "method" label.
const (
	MethodGetPostRecords       = "GetPostRecords"
	MethodGetProfiles          = "GetProfiles"
	MethodGetInteractionCounts = "GetInteractionCounts"
)

// Cache names, as used in the "cache" label and the "cache" log field.
const (
	CachePost    = "post"
	CacheProfile = "profile"
	CacheCounts  = "counts"
)

// kind is one RPC: its cache key space, its table and its codec.
type kind[T any] struct {
	method  string
	cache   string             // cache label and log field
	field   string             // JSON field holding the keys
	keyAttr string             // log attribute naming one key
	what    string             // what a key is, for errors
	check   func(string) error // key syntax
	prefix  string             // memcached key prefix
	table   string             // CQL table
	query   string             // select by primary key
	scan    func(*gocql.Query, string) (*T, error)
	encode  func(*T) []byte
	decode  func(*T, string, []byte) error
}

func postKind(ks string) *kind[Post] {
	return &kind[Post]{
		method: MethodGetPostRecords, cache: CachePost, field: "uris", keyAttr: "uri", what: "AT-URI",
		check: CheckATURI, prefix: "post:", table: "posts",
		query: fmt.Sprintf("SELECT author_did, cid, text, created_at FROM %s.posts WHERE uri = ?", ks),
		scan: func(q *gocql.Query, uri string) (*Post, error) {
			p := &Post{URI: uri}
			return p, q.Scan(&p.AuthorDID, &p.CID, &p.Text, &p.CreatedAt)
		},
		encode: encodePost, decode: decodePost,
	}
}

func profileKind(ks string) *kind[Profile] {
	return &kind[Profile]{
		method: MethodGetProfiles, cache: CacheProfile, field: "dids", keyAttr: "did", what: "DID",
		check: CheckDID, prefix: "profile:", table: "profiles",
		query: fmt.Sprintf("SELECT handle, display_name, description, created_at FROM %s.profiles WHERE did = ?", ks),
		scan: func(q *gocql.Query, did string) (*Profile, error) {
			p := &Profile{DID: did}
			return p, q.Scan(&p.Handle, &p.DisplayName, &p.Description, &p.CreatedAt)
		},
		encode: encodeProfile, decode: decodeProfile,
	}
}

func countsKind(ks string) *kind[InteractionCounts] {
	return &kind[InteractionCounts]{
		method: MethodGetInteractionCounts, cache: CacheCounts, field: "uris", keyAttr: "uri", what: "AT-URI",
		check: CheckATURI, prefix: "counts:", table: "interaction_counts",
		query: fmt.Sprintf("SELECT likes, reposts, replies, quotes FROM %s.interaction_counts WHERE uri = ?", ks),
		scan: func(q *gocql.Query, uri string) (*InteractionCounts, error) {
			c := &InteractionCounts{URI: uri}
			return c, q.Scan(&c.Likes, &c.Reposts, &c.Replies, &c.Quotes)
		},
		encode: encodeCounts, decode: decodeCounts,
	}
}

// keyField returns the JSON field holding the keys of method, and whether
// method is known.
func keyField(method string) (string, bool) {
	switch method {
	case MethodGetPostRecords, MethodGetInteractionCounts:
		return "uris", true
	case MethodGetProfiles:
		return "dids", true
	}
	return "", false
}
