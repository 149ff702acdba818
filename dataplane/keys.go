package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Limits from the AT Protocol specifications (atproto.com/specs).
const (
	maxDIDLen    = 2048 // did: "limited to 2 KB"
	maxHandleLen = 253  // handle: a DNS name
	maxNSIDLen   = 317  // nsid: 253 domain authority + "." + 63 name
	maxRKeyLen   = 512  // record-key
	maxATURILen  = 8192 // at-uri: "8 KBytes"
)

// maxClientLen bounds a client name: it is a metric label value.
const maxClientLen = 64

// memcachedMaxKey is memcached's key length limit.
const memcachedMaxKey = 250

// CheckDID reports whether s is a syntactically valid DID
// ("did:method:identifier"), saying what is wrong if not. It allocates
// nothing on success.
func CheckDID(s string) error {
	if len(s) > maxDIDLen {
		return fmt.Errorf("DID is %d bytes, over the %d limit", len(s), maxDIDLen)
	}
	rest, ok := strings.CutPrefix(s, "did:")
	if !ok {
		return errors.New(`DID does not start with "did:"`)
	}
	method, id, ok := strings.Cut(rest, ":")
	if !ok {
		return errors.New(`DID has no ":" after its method`)
	}
	if method == "" {
		return errors.New("DID method is empty")
	}
	for i := 0; i < len(method); i++ {
		if c := method[i]; c < 'a' || c > 'z' {
			return fmt.Errorf("DID method has %q: want lowercase letters", c)
		}
	}
	if id == "" {
		return errors.New("DID identifier is empty")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != ':' && c != '%' && c != '-' {
			return fmt.Errorf("DID identifier has %q at byte %d", c, i)
		}
	}
	if last := id[len(id)-1]; last == ':' || last == '%' {
		return fmt.Errorf("DID ends with %q", last)
	}
	return nil
}

// CheckATURI reports whether s is a syntactically valid AT-URI naming a
// record ("at://authority/collection/rkey", the authority a DID or a
// handle), saying what is wrong if not. It allocates nothing on success.
func CheckATURI(s string) error {
	if len(s) > maxATURILen {
		return fmt.Errorf("AT-URI is %d bytes, over the %d limit", len(s), maxATURILen)
	}
	rest, ok := strings.CutPrefix(s, "at://")
	if !ok {
		return errors.New(`AT-URI does not start with "at://"`)
	}
	authority, path, ok := strings.Cut(rest, "/")
	if !ok {
		return errors.New("AT-URI names no record: want at://authority/collection/rkey")
	}
	if strings.HasPrefix(authority, "did:") {
		if err := CheckDID(authority); err != nil {
			return fmt.Errorf("AT-URI authority: %w", err)
		}
	} else if err := checkHandle(authority); err != nil {
		return fmt.Errorf("AT-URI authority: %w", err)
	}
	collection, rkey, ok := strings.Cut(path, "/")
	if !ok {
		return errors.New("AT-URI names no record key: want at://authority/collection/rkey")
	}
	if err := checkNSID(collection); err != nil {
		return fmt.Errorf("AT-URI collection: %w", err)
	}
	if err := checkRKey(rkey); err != nil {
		return fmt.Errorf("AT-URI record key: %w", err)
	}
	return nil
}

func checkHandle(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > maxHandleLen {
		return fmt.Errorf("handle is %d bytes, over the %d limit", len(s), maxHandleLen)
	}
	labels := 0
	for label := range strings.SplitSeq(s, ".") {
		labels++
		if err := checkDomainLabel(label); err != nil {
			return fmt.Errorf("handle %w", err)
		}
	}
	if labels < 2 {
		return errors.New("handle has a single label: want a domain name")
	}
	tld := s[strings.LastIndexByte(s, '.')+1:]
	if tld[0] >= '0' && tld[0] <= '9' {
		return errors.New("handle's top-level domain starts with a digit")
	}
	return nil
}

func checkDomainLabel(label string) error {
	if label == "" || len(label) > 63 {
		return fmt.Errorf("label is %d bytes: want 1 to 63", len(label))
	}
	for i := 0; i < len(label); i++ {
		if c := label[i]; !isAlnum(c) && c != '-' {
			return fmt.Errorf("label has %q", c)
		}
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return errors.New("label starts or ends with '-'")
	}
	return nil
}

func checkNSID(s string) error {
	if len(s) > maxNSIDLen {
		return fmt.Errorf("NSID is %d bytes, over the %d limit", len(s), maxNSIDLen)
	}
	dot := strings.LastIndexByte(s, '.')
	if dot < 0 || strings.Count(s, ".") < 2 {
		return fmt.Errorf("NSID %q has fewer than 3 segments", s)
	}
	for label := range strings.SplitSeq(s[:dot], ".") {
		if err := checkDomainLabel(label); err != nil {
			return fmt.Errorf("NSID %w", err)
		}
	}
	name := s[dot+1:]
	if name == "" || len(name) > 63 {
		return fmt.Errorf("NSID name is %d bytes: want 1 to 63", len(name))
	}
	if !isAlpha(name[0]) {
		return errors.New("NSID name does not start with a letter")
	}
	for i := 1; i < len(name); i++ {
		if !isAlnum(name[i]) {
			return fmt.Errorf("NSID name has %q", name[i])
		}
	}
	return nil
}

func checkRKey(s string) error {
	if s == "" || len(s) > maxRKeyLen {
		return fmt.Errorf("%d bytes: want 1 to %d", len(s), maxRKeyLen)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q is reserved", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != ':' && c != '~' && c != '-' {
			return fmt.Errorf("has %q at byte %d", c, i)
		}
	}
	return nil
}

// checkClient reports whether name can name a client: 1 to 64 bytes of
// letters, digits, '.', '_' and '-'.
func checkClient(name string) error {
	if name == "" {
		return errors.New("client name is empty")
	}
	if len(name) > maxClientLen {
		return fmt.Errorf("client name is %d bytes, over the %d limit", len(name), maxClientLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("client name has %q at byte %d: want letters, digits, '.', '_', '-'", c, i)
		}
	}
	return nil
}

func isAlpha(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }
func isAlnum(c byte) bool { return isAlpha(c) || c >= '0' && c <= '9' }

// PostCacheKeys returns the memcached keys the data plane caches the posts
// of uris under (GetPostRecords), in order: for a caller that must forget
// them, as a restarted memcached would.
func PostCacheKeys(uris []string) []string { return cacheKeys(postKind("").prefix, uris) }

// cacheKeys returns cacheKey(prefix, id) for each of ids, all short keys
// sharing one allocation.
func cacheKeys(prefix string, ids []string) []string {
	n := 0
	for _, id := range ids {
		if len(prefix)+len(id) <= memcachedMaxKey {
			n += len(prefix) + len(id)
		}
	}
	var b strings.Builder
	b.Grow(n)
	ends := make([]int, len(ids))
	for i, id := range ids {
		if len(prefix)+len(id) <= memcachedMaxKey {
			b.WriteString(prefix)
			b.WriteString(id)
		}
		ends[i] = b.Len()
	}
	all := b.String()
	out := make([]string, len(ids))
	start := 0
	for i, id := range ids {
		if ends[i] == start {
			out[i] = cacheKey(prefix, id) // too long: hashed
			continue
		}
		out[i] = all[start:ends[i]]
		start = ends[i]
	}
	return out
}

// cacheKey returns the memcached key of id in the key space of prefix. Ids
// are validated first, so they hold no space or control byte; one too long
// for memcached is replaced by its SHA-256.
func cacheKey(prefix, id string) string {
	if len(prefix)+len(id) <= memcachedMaxKey {
		return prefix + id
	}
	sum := sha256.Sum256([]byte(id))
	return prefix + "sha256:" + hex.EncodeToString(sum[:])
}
