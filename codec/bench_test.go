package codec

import (
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func BenchmarkEncode(b *testing.B) {
	for _, size := range []int{128, 1024, 64 << 10} {
		e := sample(size)
		b.Run(byteSize(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				buf := Encode(e)
				PutBuffer(buf)
			}
		})
	}
}

// BenchmarkEncodeMsgpackLib is the reference: the msgpack library's Marshal
// of the same layout.
func BenchmarkEncodeMsgpackLib(b *testing.B) {
	e := sample(1024)
	w := wire{Version: 1, Kind: uint8(e.Kind), ID: e.ID, ReplyTo: e.ReplyTo, Deadline: e.Deadline, Sent: e.Sent, Headers: e.Headers, Payload: e.Payload}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := msgpack.Marshal(&w); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, size := range []int{128, 1024, 64 << 10} {
		s := string(AppendEnvelope(nil, sample(size)))
		b.Run(byteSize(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var e Envelope
			for b.Loop() {
				if err := DecodeEnvelope(s, &e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeNoHeaders is the data path's decode: no headers, copying
// the payload (copy) or aliasing it (owned, as consumer and reply reader do).
func BenchmarkDecodeNoHeaders(b *testing.B) {
	e := sample(1024)
	e.Headers = nil
	s := string(AppendEnvelope(nil, e))
	for _, v := range []struct {
		name   string
		decode func(string, *Envelope) error
	}{{"copy", DecodeEnvelope}, {"owned", DecodeEnvelopeOwned}} {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			var out Envelope
			for b.Loop() {
				if err := v.decode(s, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func byteSize(n int) string {
	if n >= 1024 {
		return itoa(uint64(n>>10)) + "KiB"
	}
	return itoa(uint64(n)) + "B"
}
