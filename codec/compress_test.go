package codec

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
)

// textPayload is a JSON-like prompt of about n bytes.
func textPayload(n int) []byte {
	var b strings.Builder
	r := rand.New(rand.NewPCG(1, 2))
	words := []string{"the", "model", "reasoning", "summary", "report", "customer", "order", "token", "latency", "answer"}
	b.WriteString(`{"messages":[`)
	for b.Len() < n {
		b.WriteString(`{"role":"user","content":"`)
		for range 12 {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(' ')
		}
		b.WriteString(`"},`)
	}
	b.WriteString(`{}]}`)
	return []byte(b.String())
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestCompressRoundTrip(t *testing.T) {
	text := textPayload(64 << 10)
	for _, c := range []Compression{CompressS2, CompressZstd} {
		e := Envelope{Kind: KindRequest, Payload: text, Flags: FlagStream}
		if !Compress(&e, c, 0) || !Compressed(&e) || len(e.Payload) >= len(text)/2 || e.Flags&FlagStream == 0 {
			t.Fatalf("Compress(text, %v) = %d bytes of %d, flags %b", c, len(e.Payload), len(text), e.Flags)
		}
		t.Logf("%v: 64 KiB of text to %d bytes", c, len(e.Payload))
		// Through the wire format and back.
		var got Envelope
		if err := DecodeEnvelope(string(AppendEnvelope(nil, &e)), &got); err != nil {
			t.Fatal(err)
		}
		if err := Decompress(&got, len(text)); err != nil || !bytes.Equal(got.Payload, text) || Compressed(&got) || got.Flags != FlagStream {
			t.Fatalf("Decompress(%v) = %v, equal %v, flags %b", c, err, bytes.Equal(got.Payload, text), got.Flags)
		}
		// One byte over the limit: refused, envelope unchanged.
		again := e
		if err := Decompress(&again, len(text)-1); !errors.Is(err, ErrCorruptPayload) || !Compressed(&again) {
			t.Errorf("Decompress(%v, limit one short) = %v; want ErrCorruptPayload and no change", c, err)
		}
		// Corrupt bytes.
		bad := e
		bad.Payload = append([]byte(nil), e.Payload...)
		for i := 8; i < len(bad.Payload); i += 7 {
			bad.Payload[i] ^= 0x5a
		}
		if err := Decompress(&bad, 0); !errors.Is(err, ErrCorruptPayload) {
			t.Errorf("Decompress(%v, corrupt) = %v; want ErrCorruptPayload", c, err)
		}
	}
}

func TestCompressSkipsWhatDoesNotPay(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
		least   int
	}{
		{"random", randomPayload(64 << 10), 0},
		{"small", textPayload(600)[:500], 0},
		{"under the caller's minimum", textPayload(8 << 10), 16 << 10},
	} {
		for _, c := range []Compression{CompressS2, CompressZstd} {
			e := Envelope{Payload: tc.payload}
			if Compress(&e, c, tc.least) || Compressed(&e) || !bytes.Equal(e.Payload, tc.payload) {
				t.Errorf("Compress(%s, %v) compressed it", tc.name, c)
			}
		}
	}
	e := Envelope{Payload: textPayload(8 << 10)}
	if Compress(&e, CompressNone, 0) {
		t.Errorf("Compress(none) compressed")
	}
	// Already compressed: left alone.
	e = Envelope{Payload: textPayload(8 << 10)}
	Compress(&e, CompressS2, 0)
	before := e.Payload
	if Compress(&e, CompressZstd, 0) || &e.Payload[0] != &before[0] {
		t.Errorf("Compress of a compressed payload compressed it again")
	}
}

func TestDecompressRefuses(t *testing.T) {
	for _, e := range []Envelope{
		{Flags: FlagSnappy | FlagZstd, Payload: []byte("x")},
		{Flags: FlagZstd, Payload: []byte("not zstd")},
		{Flags: FlagSnappy, Payload: []byte{0xff, 0xff, 0xff, 0xff, 0x0f}}, // claims 4 GiB
	} {
		if err := Decompress(&e, 1<<20); !errors.Is(err, ErrCorruptPayload) {
			t.Errorf("Decompress(%+v) = %v; want ErrCorruptPayload", e, err)
		}
	}
	plain := Envelope{Payload: []byte("plain")}
	if err := Decompress(&plain, 1); err != nil || string(plain.Payload) != "plain" {
		t.Errorf("Decompress(not compressed) = %v, %q", err, plain.Payload)
	}
	for _, s := range []string{"none", "s2", "snappy", "zstd"} {
		if _, err := ParseCompression(s); err != nil {
			t.Errorf("ParseCompression(%q) = %v", s, err)
		}
	}
	if _, err := ParseCompression("gzip"); err == nil {
		t.Errorf("ParseCompression(gzip) = nil error")
	}
}

// FuzzDecompress: no input panics, and nothing decodes past the limit.
func FuzzDecompress(f *testing.F) {
	e := Envelope{Payload: textPayload(4 << 10)}
	Compress(&e, CompressS2, 0)
	f.Add(e.Payload, uint8(1))
	e = Envelope{Payload: textPayload(4 << 10)}
	Compress(&e, CompressZstd, 0)
	f.Add(e.Payload, uint8(2))
	f.Fuzz(func(t *testing.T, payload []byte, which uint8) {
		env := Envelope{Payload: payload, Flags: uint64(which&3) << 1}
		if err := Decompress(&env, 64<<10); err == nil && len(env.Payload) > 64<<10 {
			t.Fatalf("decoded %d bytes past the 64 KiB limit", len(env.Payload))
		}
	})
}

func BenchmarkCompress(b *testing.B) {
	for _, kind := range []struct {
		name string
		p    []byte
	}{{"text", textPayload(64 << 10)}, {"random", randomPayload(64 << 10)}} {
		for _, c := range []Compression{CompressS2, CompressZstd} {
			b.Run(kind.name+"/"+c.String(), func(b *testing.B) {
				b.SetBytes(int64(len(kind.p)))
				for b.Loop() {
					e := Envelope{Payload: kind.p}
					Compress(&e, c, 0)
				}
			})
		}
	}
}

// TestDecompressAllocatesForWhatIsThere: a few bytes claiming a huge
// payload are refused, or fail, without allocating what they claim.
func TestDecompressAllocatesForWhatIsThere(t *testing.T) {
	snappyClaim := []byte{0x80, 0x80, 0x80, 0x80, 0x02, 0, 0}                 // varint 512 MiB, then nothing
	zstdClaim := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x84, 0, 0, 0, 0x10, 0, 0, 0} // frame header: content size 256 MiB, no block
	for _, e := range []Envelope{{Flags: FlagSnappy, Payload: snappyClaim}, {Flags: FlagZstd, Payload: zstdClaim}} {
		allocs := testing.AllocsPerRun(1, func() {
			c := e
			_ = Decompress(&c, 0)
		})
		var ms1, ms2 runtime.MemStats
		runtime.ReadMemStats(&ms1)
		c := e
		err := Decompress(&c, 0)
		runtime.ReadMemStats(&ms2)
		if !errors.Is(err, ErrCorruptPayload) {
			t.Errorf("Decompress(%x) = %v; want ErrCorruptPayload", e.Payload, err)
		}
		if grew := ms2.TotalAlloc - ms1.TotalAlloc; grew > 1<<20 {
			t.Errorf("Decompress(%x) allocated %d bytes (%v allocations) for a claim it could not back", e.Payload, grew, allocs)
		}
	}
}
