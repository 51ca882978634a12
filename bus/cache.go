package bus

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"

	"github.com/egos/mycelium/internal/redisx"
)

// CacheHash is the 128-bit identity of a cached request within its topic, as
// 32 lower-case hex digits: the first half of SHA-256 over a domain byte and
// either the request's payload or the key its caller chose (see
// producer.CacheKey). The match is exact: two prompts that differ by a space
// are two entries. A cryptographic hash, not a fast one such as xxh3,
// because an answer is served to whoever presents the same hash: with a
// hash whose collisions can be computed, one tenant could plant an answer
// for another tenant's prompt.
type CacheHash string

// HashPayload returns the cache hash of a request payload.
func HashPayload(payload []byte) CacheHash { return PayloadDigest(payload).Hash() }

// HashKey returns the cache hash of a caller-chosen cache key. A key and a
// payload of equal bytes hash differently.
func HashKey(key string) CacheHash { return KeyDigest(key).Hash() }

// IdempotencyHash names an idempotency key in its record's key
// (Keys.Once): the first 128 bits of SHA-256 over 'i' and the key, as 32
// hex digits, so any key (any bytes, any length) makes a valid key name.
func IdempotencyHash(key string) string { return string(digest('i', nil, key).Hash()) }

// CacheDigest is a CacheHash in binary: what the producer computes for
// every cached request (no allocation) and keys its memory by.
type CacheDigest [16]byte

// Hash returns d as a CacheHash (32 hex digits).
func (d CacheDigest) Hash() CacheHash { return CacheHash(hex.EncodeToString(d[:])) }

// PayloadDigest returns the digest of a request payload (see CacheHash).
func PayloadDigest(payload []byte) CacheDigest { return digest('p', payload, "") }

// KeyDigest returns the digest of a caller-chosen cache key.
func KeyDigest(key string) CacheDigest { return digest('k', nil, key) }

// digestBufs hold domain+input for sha256.Sum256, which takes one slice and
// does not make its input escape, unlike hash.Hash's Write.
var digestBufs = sync.Pool{New: func() any { return new([]byte) }}

func digest(domain byte, b []byte, s string) CacheDigest {
	bp := digestBufs.Get().(*[]byte)
	buf := append(append(append((*bp)[:0], domain), b...), s...)
	sum := sha256.Sum256(buf)
	if cap(buf) <= 64<<10 { // a huge prompt's buffer is not kept
		*bp = buf
		digestBufs.Put(bp)
	}
	return CacheDigest(sum[:16])
}

// CacheEntryID names one cache entry within its topic:
// "<generation>:<hash>". The generation is the topic's cache generation
// when the entry was made (bumping it invalidates every entry at once).
func CacheEntryID(gen uint64, h CacheHash) string {
	return strconv.FormatUint(gen, 10) + ":" + string(h)
}

// ParseCacheEntryID checks an entry id read from an envelope (untrusted):
// a decimal generation (canonical: no sign, no leading zeros), a colon, 32
// lower-case hex digits.
func ParseCacheEntryID(id string) (gen uint64, h CacheHash, ok bool) {
	g, hx, found := strings.Cut(id, ":")
	if !found || len(hx) != 32 || g == "" || len(g) > 20 || (len(g) > 1 && g[0] == '0') {
		return 0, "", false // one spelling per generation: no leading zeros
	}
	gen, err := strconv.ParseUint(g, 10, 64)
	if err != nil {
		return 0, "", false
	}
	for i := 0; i < len(hx); i++ {
		if c := hx[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return 0, "", false
		}
	}
	return gen, CacheHash(hx), true
}

// Cache returns the shared-tier key of a cache entry (see CacheEntryID):
// prefix:{topic}:c:<gen>:<hash>, a string holding the stored answer.
func (k Keys) Cache(topic, entryID string) string { return k.Topic(topic) + ":c:" + entryID }

// Flight returns the in-flight marker of a cache entry:
// prefix:{topic}:f:<gen>:<hash>, a list of the requests waiting for the
// answer that one worker computes (docs/cache.md).
func (k Keys) Flight(topic, entryID string) string { return k.Topic(topic) + ":f:" + entryID }

// Meta returns a topic's (or a partition's) metadata hash:
// prefix:{topic}:meta. A topic's holds its partition count (partitions,
// drain, lowered) and partition 0's cache generation and epoch; a
// partition's, its own cache generation and epoch (docs/wire.md).
func (k Keys) Meta(topic string) string { return k.Topic(topic) + ":meta" }

// CachePattern returns a SCAN MATCH pattern for a topic's shared cache
// entries (flight markers when flights is true), whatever their generation.
func (k Keys) CachePattern(topic string, flights bool) string {
	kind := ":c:*"
	if flights {
		kind = ":f:*"
	}
	return redisx.GlobEscape(k.Topic(topic)) + kind
}
