package codec

import (
	"encoding/binary"
	"math"
	"sync"
)

// AppendEnvelope appends the msgpack encoding of e to dst and returns the
// extended slice. It does not allocate when dst has room.
func AppendEnvelope(dst []byte, e *Envelope) []byte {
	tokened := !e.Token.IsZero()
	streamed := e.Seq != 0 || e.Flags != 0 || tokened
	switch {
	case tokened:
		dst = append(dst, 0xdc, 0, maxFields)
	case streamed:
		dst = append(dst, 0xdc, 0, streamFields)
	case e.RequestEntry == "":
		dst = append(dst, 0x90|fields) // fixarray
	default:
		dst = append(dst, 0xdc, 0, fields+1) // array 16: one more element than a fixarray holds
	}
	dst = appendUint(dst, Version)
	dst = appendUint(dst, uint64(e.Kind))
	dst = appendString(dst, e.ID)
	dst = appendString(dst, e.ReplyTo)
	dst = appendInt(dst, e.Deadline)
	dst = appendInt(dst, e.Sent)
	dst = appendUint(dst, uint64(e.Attempt))
	if e.Headers == nil {
		dst = append(dst, 0xc0)
	} else {
		dst = appendMapHeader(dst, len(e.Headers))
		for k, v := range e.Headers {
			dst = appendString(dst, k)
			dst = appendString(dst, v)
		}
	}
	dst = appendBin(dst, e.Payload)
	dst = appendString(dst, e.ErrCode)
	dst = appendString(dst, e.ErrMsg)
	dst = appendInt(dst, e.QueueWait)
	dst = appendInt(dst, e.Handler)
	dst = appendString(dst, e.CacheKey)
	dst = appendInt(dst, e.CacheTTL)
	if e.RequestEntry != "" || streamed {
		dst = appendString(dst, e.RequestEntry)
	}
	if streamed {
		dst = appendUint(dst, e.Seq)
		dst = appendUint(dst, e.Flags)
	}
	if tokened {
		dst = appendBin(dst, e.Token[:])
	}
	return dst
}

// EncodedSize returns an upper bound of the encoded size of e, for sizing
// buffers without encoding twice.
func EncodedSize(e *Envelope) int {
	n := 3 + 9*9 + 5*6 + 2 + TokenSize + len(e.ID) + len(e.ReplyTo) + len(e.Payload) + len(e.ErrCode) + len(e.ErrMsg) + len(e.CacheKey) + len(e.RequestEntry)
	for k, v := range e.Headers {
		n += 10 + len(k) + len(v)
	}
	return n
}

func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), v)
}

func appendInt(dst []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(dst, uint64(v))
	}
	if v >= -32 {
		return append(dst, byte(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
}

func appendString(dst []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= 31:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, 0xd9, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xda), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xdb), uint32(n))
	}
	return append(dst, s...)
}

func appendBin(dst []byte, b []byte) []byte {
	n := len(b)
	switch {
	case n <= math.MaxUint8:
		dst = append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0xc5), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint32(append(dst, 0xc6), uint32(n))
	}
	return append(dst, b...)
}

func appendMapHeader(dst []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(dst, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xde), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, 0xdf), uint32(n))
}

// Buffer is a pooled encoding buffer. Get one with GetBuffer, use B, and give
// it back with PutBuffer once nothing reads B any more.
type Buffer struct {
	B []byte
}

// maxPooled is the largest buffer kept in the pool; bigger ones are left to
// the garbage collector so one huge message does not pin memory forever.
const maxPooled = 256 << 10

var bufPool = sync.Pool{New: func() any { return &Buffer{B: make([]byte, 0, 2048)} }}

// GetBuffer returns an empty buffer from the pool. Safe for concurrent use.
func GetBuffer() *Buffer {
	b := bufPool.Get().(*Buffer)
	b.B = b.B[:0]
	return b
}

// PutBuffer returns b to the pool. The caller must not use b afterwards, nor
// any string or slice that aliases b.B.
func PutBuffer(b *Buffer) {
	if b == nil || cap(b.B) > maxPooled {
		return
	}
	bufPool.Put(b)
}

// Encode encodes e into a pooled buffer.
func Encode(e *Envelope) *Buffer {
	b := GetBuffer()
	if n := EncodedSize(e); cap(b.B) < n {
		b.B = make([]byte, 0, n)
	}
	b.B = AppendEnvelope(b.B, e)
	return b
}
