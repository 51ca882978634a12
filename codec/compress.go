package codec

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Compression is how a payload may be compressed on the wire: the
// envelope's Flags say which, so every reader knows (docs/wire.md,
// "Compression").
type Compression uint8

// Compressions.
const (
	CompressNone Compression = iota
	// CompressS2 writes the Snappy block format with s2's encoder (fast:
	// a few GB/s): every client reads it (Python: python3-snappy).
	CompressS2
	// CompressZstd writes a zstd frame at its fastest level (smaller,
	// slower), with the content size in its header.
	CompressZstd
)

// Envelope flags of a compressed payload (at most one is set).
const (
	// FlagSnappy: the payload is in the Snappy block format.
	FlagSnappy uint64 = 1 << (iota + 1)
	// FlagZstd: the payload is one zstd frame that states its content size.
	FlagZstd
	flagCompressed = FlagSnappy | FlagZstd
)

// DefaultCompressMin is the size under which a payload is never
// compressed: the flags and the work cost more than the bytes saved.
const DefaultCompressMin = 1024

// String returns the compression's name, as ParseCompression reads it.
func (c Compression) String() string {
	switch c {
	case CompressNone:
		return "none"
	case CompressS2:
		return "s2"
	case CompressZstd:
		return "zstd"
	}
	return "compression(" + itoa(uint64(c)) + ")"
}

// ParseCompression reads "none", "s2" (or "snappy") or "zstd".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "", "none":
		return CompressNone, nil
	case "s2", "snappy":
		return CompressS2, nil
	case "zstd":
		return CompressZstd, nil
	}
	return CompressNone, fmt.Errorf("codec: compression %q: want none, s2 or zstd", s)
}

// ErrCorruptPayload is returned by Decompress for a compressed payload that
// does not decode, or that would decode to more than the limit.
var ErrCorruptPayload = errors.New("codec: compressed payload is corrupt or too large")

// sampleSize is how much of a payload Compress looks at first to tell
// whether compressing it would pay.
const sampleSize = 4096

// maxDecoded bounds any decoded payload (Redis's own bulk-string limit);
// callers pass their own, smaller, limits.
const maxDecoded = 512 << 20

// snappyExpansion bounds how much a Snappy block may expand: its longest
// copy (64 bytes) costs at least 3 bytes, so no valid block decodes to more
// than about 21 times its size. A block claiming more is refused before
// anything is allocated.
const snappyExpansion = 24

// The zstd encoder and decoder, made at first use and shared (their
// EncodeAll and DecodeAll are safe for concurrent use). They fail only for
// invalid options, which these are not.
var (
	zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false))
	})
	zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxDecoded))
	})
)

// Compress compresses e.Payload with c when it is at least least bytes
// (least <= 0: DefaultCompressMin) and compressing pays: a payload whose
// first bytes look random is left alone after a look at 4 KiB, and one
// that shrinks by less than an eighth is sent as it was. It sets the
// matching flag and reports whether it compressed; e.Payload is then a new
// slice (the caller's bytes are not touched). An envelope already
// compressed is left as it is.
func Compress(e *Envelope, c Compression, least int) bool {
	if least <= 0 {
		least = DefaultCompressMin
	}
	if c == CompressNone || len(e.Payload) < least || e.Flags&flagCompressed != 0 {
		return false
	}
	if compress.Estimate(e.Payload[:min(len(e.Payload), sampleSize)]) < 0.05 {
		return false // random or already compressed: would not pay
	}
	var out []byte
	var flag uint64
	switch c {
	case CompressS2:
		out, flag = s2.EncodeSnappy(nil, e.Payload), FlagSnappy
	case CompressZstd:
		enc, err := zstdEncoder()
		if err != nil {
			return false
		}
		out, flag = enc.EncodeAll(e.Payload, make([]byte, 0, len(e.Payload)/2)), FlagZstd
	default:
		return false
	}
	if len(out) > len(e.Payload)-len(e.Payload)/8 {
		return false
	}
	e.Payload, e.Flags = out, e.Flags|flag
	return true
}

// CompressionOf says how e's payload is compressed (CompressNone when it
// is not).
func CompressionOf(e *Envelope) Compression {
	switch e.Flags & flagCompressed {
	case FlagSnappy:
		return CompressS2
	case FlagZstd:
		return CompressZstd
	}
	return CompressNone
}

// Compressed reports whether e's payload is compressed.
func Compressed(e *Envelope) bool { return e.Flags&flagCompressed != 0 }

// Decompress replaces a compressed e.Payload with its decoded bytes and
// clears the flag; an envelope not compressed is left as it is. A payload
// that does not decode, that would decode to more than limit bytes
// (limit <= 0: no bound but the format's), or that carries both flags
// returns ErrCorruptPayload and leaves e unchanged.
func Decompress(e *Envelope, limit int) error {
	switch e.Flags & flagCompressed {
	case 0:
		return nil
	case FlagSnappy:
		n, err := s2.DecodedLen(e.Payload)
		if err != nil || (limit > 0 && n > limit) || n > maxDecoded || n > snappyExpansion*len(e.Payload)+64 {
			return fmt.Errorf("%w: snappy: claims %d bytes decoded from %d, limit %d", ErrCorruptPayload, n, len(e.Payload), limit)
		}
		out, err := s2.Decode(make([]byte, n), e.Payload)
		if err != nil {
			return fmt.Errorf("%w: snappy: %w", ErrCorruptPayload, err)
		}
		e.Payload = out
	case FlagZstd:
		var h zstd.Header
		if err := h.Decode(e.Payload); err != nil || !h.HasFCS || (limit > 0 && h.FrameContentSize > uint64(limit)) || h.FrameContentSize > maxDecoded {
			return fmt.Errorf("%w: zstd: a frame stating its content size within %d bytes is needed", ErrCorruptPayload, limit)
		}
		dec, err := zstdDecoder()
		if err != nil {
			return fmt.Errorf("%w: zstd: %w", ErrCorruptPayload, err)
		}
		// Sized for what the bytes at hand can hold, not for what the
		// header claims: a few bytes claiming the limit allocate nothing
		// until they decode (the decoder grows the slice as data comes).
		out, err := dec.DecodeAll(e.Payload, make([]byte, 0, int(min(h.FrameContentSize, uint64(8*len(e.Payload)+4096)))))
		switch {
		case err != nil:
			return fmt.Errorf("%w: zstd: %w", ErrCorruptPayload, err)
		case uint64(len(out)) != h.FrameContentSize: // more frames, or a size that lied
			return fmt.Errorf("%w: zstd: %d bytes decoded, the frame says %d", ErrCorruptPayload, len(out), h.FrameContentSize)
		}
		e.Payload = out
	default:
		return fmt.Errorf("%w: both compression flags set", ErrCorruptPayload)
	}
	e.Flags &^= flagCompressed
	return nil
}
