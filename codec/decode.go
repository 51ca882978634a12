package codec

import (
	"errors"
	"fmt"
	"unsafe"
)

// ErrMalformed is wrapped by every decoding error: the bytes are not a
// Mycelium envelope. Check it with errors.Is.
var ErrMalformed = errors.New("mycelium: malformed envelope")

// DecodeError says where and why decoding failed. It wraps ErrMalformed.
type DecodeError struct {
	Offset int    // byte offset in the input where the problem was found
	Field  string // envelope field being decoded
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("mycelium: malformed envelope: %s at byte %d: %s", e.Field, e.Offset, e.Reason)
}

// Unwrap returns ErrMalformed.
func (e *DecodeError) Unwrap() error { return ErrMalformed }

// maxHeaders bounds the header map a decoder will build from untrusted input.
const maxHeaders = 1024

// maxSkipDepth bounds nesting when skipping unknown trailing fields.
const maxSkipDepth = 32

// DecodeEnvelope decodes s (as returned by the Redis client) into e,
// overwriting every field. Strings in e share s's memory; the payload is a
// fresh copy the caller may modify. It never panics: any input that is not a
// complete version-1 envelope yields an error wrapping ErrMalformed.
func DecodeEnvelope(s string, e *Envelope) error { return decodeEnvelope(s, e, false) }

// DecodeEnvelopeOwned is DecodeEnvelope without the payload copy: e.Payload
// aliases s's memory (capacity = length, so appending copies). It saves an
// allocation and a copy of every payload read from Redis, a third of the
// bytes a request allocates. Use it only for s the caller owns alone and
// that lives on the heap: the client allocates each bulk string it reads
// (rueidis readB: make([]byte, n), never shared without client-side
// caching, which the bus disables), so a stream entry's value qualifies. A
// string literal or a string someone else still reads does not: modifying
// the payload would modify it.
func DecodeEnvelopeOwned(s string, e *Envelope) error { return decodeEnvelope(s, e, true) }

func decodeEnvelope(s string, e *Envelope, alias bool) error {
	d := decoder{s: s}
	*e = Envelope{}
	n, ok := d.arrayLen()
	if !ok {
		return d.fail("envelope", "not a msgpack array")
	}
	if n < minFields {
		return d.fail("envelope", fmt.Sprintf("array of %d elements, want at least %d", n, minFields))
	}
	v, ok := d.uint()
	if !ok {
		return d.fail("version", "not an unsigned integer")
	}
	if v != Version {
		return d.fail("version", fmt.Sprintf("unsupported version %d", v))
	}
	k, ok := d.uint()
	if !ok || k >= uint64(kindEnd) {
		return d.fail("kind", "unknown kind")
	}
	e.Kind = Kind(k)
	if e.ID, ok = d.str(); !ok {
		return d.fail("id", "not a string")
	}
	if e.ReplyTo, ok = d.str(); !ok {
		return d.fail("reply_to", "not a string")
	}
	if e.Deadline, ok = d.int(); !ok {
		return d.fail("deadline", "not an integer")
	}
	if e.Sent, ok = d.int(); !ok {
		return d.fail("sent", "not an integer")
	}
	a, ok := d.uint()
	if !ok || a > 1<<32-1 {
		return d.fail("attempt", "not a 32-bit unsigned integer")
	}
	e.Attempt = uint32(a)
	if err := d.headers(e); err != nil {
		return err
	}
	p, ok := d.bin()
	if !ok {
		return d.fail("payload", "not binary data")
	}
	switch {
	case p == "":
	case alias:
		e.Payload = unsafe.Slice(unsafe.StringData(p), len(p))
	default:
		e.Payload = []byte(p)
	}
	if e.ErrCode, ok = d.str(); !ok {
		return d.fail("err_code", "not a string")
	}
	if e.ErrMsg, ok = d.str(); !ok {
		return d.fail("err_msg", "not a string")
	}
	read := minFields
	if n >= minFields+2 {
		read = minFields + 2
		if e.QueueWait, ok = d.int(); !ok {
			return d.fail("queue_wait", "not an integer")
		}
		if e.Handler, ok = d.int(); !ok {
			return d.fail("handler", "not an integer")
		}
	}
	if n >= fields {
		read = fields
		if e.CacheKey, ok = d.str(); !ok {
			return d.fail("cache_key", "not a string")
		}
		if e.CacheTTL, ok = d.int(); !ok {
			return d.fail("cache_ttl", "not an integer")
		}
	}
	if n >= fields+1 {
		read = fields + 1
		if e.RequestEntry, ok = d.str(); !ok {
			return d.fail("request_entry", "not a string")
		}
	}
	if n >= streamFields {
		read = streamFields
		if e.Seq, ok = d.uint(); !ok {
			return d.fail("seq", "not an unsigned integer")
		}
		if e.Flags, ok = d.uint(); !ok {
			return d.fail("flags", "not an unsigned integer")
		}
	}
	if n >= maxFields {
		read = maxFields
		t, ok := d.bin()
		if !ok || (len(t) != TokenSize && len(t) != 0) {
			return d.fail("token", fmt.Sprintf("not %d bytes of binary data", TokenSize))
		}
		copy(e.Token[:], t)
	}
	for i := read; i < n; i++ { // fields added by later minor revisions
		if !d.skip(0) {
			return d.fail("trailing field", "undecodable value")
		}
	}
	if d.off != len(d.s) {
		return d.fail("envelope", fmt.Sprintf("%d unexpected trailing bytes", len(d.s)-d.off))
	}
	return nil
}

type decoder struct {
	s   string
	off int
}

func (d *decoder) fail(field, reason string) error {
	return &DecodeError{Offset: d.off, Field: field, Reason: reason}
}

// need reports whether n more bytes are available.
func (d *decoder) need(n int) bool { return n >= 0 && len(d.s)-d.off >= n }

func (d *decoder) byte() (byte, bool) {
	if d.off >= len(d.s) {
		return 0, false
	}
	b := d.s[d.off]
	d.off++
	return b, true
}

func (d *decoder) be(n int) (uint64, bool) {
	if !d.need(n) {
		return 0, false
	}
	var v uint64
	for i := 0; i < n; i++ {
		v = v<<8 | uint64(d.s[d.off+i])
	}
	d.off += n
	return v, true
}

func (d *decoder) arrayLen() (int, bool) {
	b, ok := d.byte()
	if !ok {
		return 0, false
	}
	switch {
	case b&0xf0 == 0x90:
		return int(b & 0x0f), true
	case b == 0xdc:
		v, ok := d.be(2)
		return int(v), ok
	case b == 0xdd:
		v, ok := d.be(4)
		return int(v), ok
	}
	return 0, false
}

func (d *decoder) uint() (uint64, bool) {
	b, ok := d.byte()
	if !ok {
		return 0, false
	}
	switch {
	case b <= 0x7f:
		return uint64(b), true
	case b == 0xcc:
		return d.be(1)
	case b == 0xcd:
		return d.be(2)
	case b == 0xce:
		return d.be(4)
	case b == 0xcf:
		return d.be(8)
	case b >= 0xd0 && b <= 0xd3: // signed encodings of non-negative values
		d.off--
		v, ok := d.int()
		return uint64(v), ok && v >= 0
	}
	return 0, false
}

func (d *decoder) int() (int64, bool) {
	b, ok := d.byte()
	if !ok {
		return 0, false
	}
	switch {
	case b <= 0x7f:
		return int64(b), true
	case b >= 0xe0:
		return int64(int8(b)), true
	case b == 0xd0:
		v, ok := d.be(1)
		return int64(int8(v)), ok
	case b == 0xd1:
		v, ok := d.be(2)
		return int64(int16(v)), ok
	case b == 0xd2:
		v, ok := d.be(4)
		return int64(int32(v)), ok
	case b == 0xd3:
		v, ok := d.be(8)
		return int64(v), ok
	case b >= 0xcc && b <= 0xcf:
		d.off--
		v, ok := d.uint()
		return int64(v), ok && v <= 1<<63-1
	}
	return 0, false
}

// raw returns the next n bytes as a substring of the input.
func (d *decoder) raw(n uint64) (string, bool) {
	if n > uint64(len(d.s)-d.off) {
		return "", false
	}
	s := d.s[d.off : d.off+int(n)]
	d.off += int(n)
	return s, true
}

// str decodes a msgpack str (nil reads as "").
func (d *decoder) str() (string, bool) {
	b, ok := d.byte()
	if !ok {
		return "", false
	}
	var n uint64
	switch {
	case b&0xe0 == 0xa0:
		n = uint64(b & 0x1f)
	case b == 0xd9:
		n, ok = d.be(1)
	case b == 0xda:
		n, ok = d.be(2)
	case b == 0xdb:
		n, ok = d.be(4)
	case b == 0xc0:
		return "", true
	default:
		return "", false
	}
	if !ok {
		return "", false
	}
	return d.raw(n)
}

// bin decodes a msgpack bin; str and nil are accepted too, as other msgpack
// encoders write []byte either way.
func (d *decoder) bin() (string, bool) {
	b, ok := d.byte()
	if !ok {
		return "", false
	}
	var n uint64
	switch b {
	case 0xc4:
		n, ok = d.be(1)
	case 0xc5:
		n, ok = d.be(2)
	case 0xc6:
		n, ok = d.be(4)
	default:
		d.off--
		return d.str()
	}
	if !ok {
		return "", false
	}
	return d.raw(n)
}

func (d *decoder) headers(e *Envelope) error {
	b, ok := d.byte()
	if !ok {
		return d.fail("headers", "truncated")
	}
	var n uint64
	switch {
	case b == 0xc0:
		return nil
	case b&0xf0 == 0x80:
		n = uint64(b & 0x0f)
	case b == 0xde:
		n, ok = d.be(2)
	case b == 0xdf:
		n, ok = d.be(4)
	default:
		return d.fail("headers", "not a map")
	}
	if !ok {
		return d.fail("headers", "truncated")
	}
	if n > maxHeaders || n*2 > uint64(len(d.s)-d.off) {
		return d.fail("headers", fmt.Sprintf("implausible header count %d", n))
	}
	if n == 0 {
		return nil
	}
	e.Headers = make(map[string]string, n)
	for i := uint64(0); i < n; i++ {
		k, ok := d.str()
		if !ok {
			return d.fail("headers", "key is not a string")
		}
		v, ok := d.str()
		if !ok {
			return d.fail("headers", "value is not a string")
		}
		e.Headers[k] = v
	}
	return nil
}

// skip steps over one msgpack value of any type.
func (d *decoder) skip(depth int) bool {
	if depth > maxSkipDepth {
		return false
	}
	b, ok := d.byte()
	if !ok {
		return false
	}
	var n uint64
	switch {
	case b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3:
		return true
	case b&0xe0 == 0xa0:
		_, ok = d.raw(uint64(b & 0x1f))
		return ok
	case b&0xf0 == 0x90:
		return d.skipN(uint64(b&0x0f), depth)
	case b&0xf0 == 0x80:
		return d.skipN(2*uint64(b&0x0f), depth)
	}
	switch b {
	case 0xcc, 0xd0:
		_, ok = d.raw(1)
	case 0xcd, 0xd1:
		_, ok = d.raw(2)
	case 0xce, 0xd2, 0xca:
		_, ok = d.raw(4)
	case 0xcf, 0xd3, 0xcb:
		_, ok = d.raw(8)
	case 0xc4, 0xd9:
		if n, ok = d.be(1); ok {
			_, ok = d.raw(n)
		}
	case 0xc5, 0xda:
		if n, ok = d.be(2); ok {
			_, ok = d.raw(n)
		}
	case 0xc6, 0xdb:
		if n, ok = d.be(4); ok {
			_, ok = d.raw(n)
		}
	case 0xdc:
		if n, ok = d.be(2); ok {
			ok = d.skipN(n, depth)
		}
	case 0xdd:
		if n, ok = d.be(4); ok {
			ok = d.skipN(n, depth)
		}
	case 0xde:
		if n, ok = d.be(2); ok {
			ok = d.skipN(2*n, depth)
		}
	case 0xdf:
		if n, ok = d.be(4); ok {
			ok = d.skipN(2*n, depth)
		}
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1,2,4,8,16 (+1 type byte)
		_, ok = d.raw(1 + 1<<(b-0xd4))
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32
		if n, ok = d.be(1 << (b - 0xc7)); ok {
			_, ok = d.raw(n + 1)
		}
	default:
		return false
	}
	return ok
}

func (d *decoder) skipN(n uint64, depth int) bool {
	if n > uint64(len(d.s)-d.off) { // every value takes at least one byte
		return false
	}
	for i := uint64(0); i < n; i++ {
		if !d.skip(depth + 1) {
			return false
		}
	}
	return true
}
