package codec

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden envelopes read by other clients' tests")

// goldenPath holds envelopes as this package encodes them, for the Python
// client's tests (clients/python): they check that its encoder writes the
// same bytes and its decoder reads them back.
const goldenPath = "../clients/python/tests/golden/envelopes.json"

// golden is one envelope: its fields (bytes as hex) and its encoding.
type golden struct {
	Name         string            `json:"name"`
	Kind         Kind              `json:"kind"`
	ID           string            `json:"id"`
	ReplyTo      string            `json:"reply_to"`
	Deadline     int64             `json:"deadline"`
	Sent         int64             `json:"sent"`
	Attempt      uint32            `json:"attempt"`
	Headers      map[string]string `json:"headers"` // null: none
	PayloadHex   string            `json:"payload_hex"`
	ErrCode      string            `json:"err_code"`
	ErrMsg       string            `json:"err_msg"`
	QueueWait    int64             `json:"queue_wait"`
	Handler      int64             `json:"handler"`
	CacheKey     string            `json:"cache_key"`
	CacheTTL     int64             `json:"cache_ttl"`
	RequestEntry string            `json:"request_entry"`
	Seq          uint64            `json:"seq"`
	Flags        uint64            `json:"flags"`
	TokenHex     string            `json:"token_hex"` // "": none
	EncodedHex   string            `json:"encoded_hex"`
}

func goldenEnvelopes() []golden {
	envs := []struct {
		name string
		e    Envelope
	}{
		{"empty event", Envelope{}},
		{"event", Envelope{Kind: KindEvent, Sent: 1764500000123456789, Payload: []byte("hello")}},
		{"request", Envelope{Kind: KindRequest, ID: "a1b2c3d41", ReplyTo: "myc:{r.0123456789ab}", Deadline: 1764500010123456789,
			Sent: 1764500000123456789, Payload: []byte(`{"prompt":"why?"}`), Headers: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}},
		{"reply", Envelope{Kind: KindReply, ID: "a1b2c3d41", Sent: 1764500001000000000, Payload: []byte("because"), QueueWait: 1500000, Handler: 2000000000,
			RequestEntry: "1764500000123-0", Attempt: 1}},
		{"remote error", Envelope{Kind: KindReply, ID: "x", ErrCode: "handler_error", ErrMsg: "model overloaded", RequestEntry: "5-1", Attempt: 2}},
		{"control", Envelope{Kind: KindControl, Sent: 42}},
		{"cached request", Envelope{Kind: KindRequest, ID: "c9", ReplyTo: "myc:{r.p}", Deadline: 1, CacheKey: "3:0123456789abcdef0123456789abcdef", CacheTTL: 300000000000}},
		{"stream request", Envelope{Kind: KindRequest, ID: "s1", ReplyTo: "myc:{r.p}", Deadline: 99, Flags: FlagStream}},
		{"request with a cancel token", Envelope{Kind: KindRequest, ID: "t1", ReplyTo: "myc:{r.p}", Deadline: 99, Payload: []byte("q"),
			Token: Token{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}}},
		{"chunk", Envelope{Kind: KindChunk, ID: "s1", RequestEntry: "7-0", Attempt: 1, Seq: 3, Payload: []byte("tok")}},
		{"negative times", Envelope{Deadline: -1, Sent: -5000000000}},
		{"long strings", Envelope{ID: strings.Repeat("i", 40), ReplyTo: strings.Repeat("r", 300), ErrMsg: strings.Repeat("e", 1000)}},
		{"binary payload 300", Envelope{Payload: bytes.Repeat([]byte{0, 0xff, 0x80}, 100)}},
		{"payload 1000", Envelope{Payload: bytes.Repeat([]byte{7}, 1000)}},
		{"big ints", Envelope{Deadline: 1<<63 - 1, Sent: 255, QueueWait: 65535, Handler: 65536, CacheTTL: 4294967296, Attempt: 1<<32 - 1}},
		{"unicode", Envelope{ID: "é", Headers: map[string]string{"k": "ü✓"}, Payload: []byte("ok")}},
		{"empty headers map", Envelope{Headers: map[string]string{}}},
	}
	out := make([]golden, len(envs))
	for i, g := range envs {
		e := g.e
		if !e.Token.IsZero() {
			out[i].TokenHex = hex.EncodeToString(e.Token[:])
		}
		out[i] = golden{TokenHex: out[i].TokenHex, Name: g.name, Kind: e.Kind, ID: e.ID, ReplyTo: e.ReplyTo, Deadline: e.Deadline, Sent: e.Sent, Attempt: e.Attempt,
			Headers: e.Headers, PayloadHex: hex.EncodeToString(e.Payload), ErrCode: e.ErrCode, ErrMsg: e.ErrMsg,
			QueueWait: e.QueueWait, Handler: e.Handler, CacheKey: e.CacheKey, CacheTTL: e.CacheTTL, RequestEntry: e.RequestEntry,
			Seq: e.Seq, Flags: e.Flags, EncodedHex: hex.EncodeToString(AppendEnvelope(nil, &e))}
	}
	return out
}

// TestGoldenEnvelopes keeps the golden file in step with the encoder (go
// test ./codec -run Golden -update rewrites it).
func TestGoldenEnvelopes(t *testing.T) {
	want, err := json.MarshalIndent(goldenEnvelopes(), "", " ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (go test ./codec -run Golden -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date: go test ./codec -run Golden -update", goldenPath)
	}
	for _, g := range goldenEnvelopes() { // every golden envelope decodes
		b, _ := hex.DecodeString(g.EncodedHex)
		var e Envelope
		if err := DecodeEnvelope(string(b), &e); err != nil {
			t.Fatalf("%s: %v", g.Name, err)
		}
	}
}

// compressedGoldenPath holds compressed envelopes the Python client must
// decompress to their plain payloads.
const compressedGoldenPath = "../clients/python/tests/golden/compressed.json"

type compressedGolden struct {
	Name       string `json:"name"`
	Flags      uint64 `json:"flags"`
	PlainHex   string `json:"plain_hex"`
	EncodedHex string `json:"encoded_hex"`
}

// TestGoldenCompressed keeps compressed.json in step with Compress (go test
// ./codec -run Golden -update rewrites it).
func TestGoldenCompressed(t *testing.T) {
	plain := bytes.Repeat([]byte(`{"role":"user","content":"summarise the quarterly report"},`), 40)
	var out []compressedGolden
	for _, c := range []Compression{CompressS2, CompressZstd} {
		e := Envelope{Kind: KindRequest, ID: "z1", ReplyTo: "myc:{r.p}", Payload: plain, Flags: FlagStream}
		if !Compress(&e, c, 0) {
			t.Fatalf("Compress(%v) did not compress", c)
		}
		out = append(out, compressedGolden{Name: c.String(), Flags: e.Flags, PlainHex: hex.EncodeToString(plain), EncodedHex: hex.EncodeToString(AppendEnvelope(nil, &e))})
	}
	want, err := json.MarshalIndent(out, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *updateGolden {
		if err := os.WriteFile(compressedGoldenPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(compressedGoldenPath)
	if err != nil {
		t.Fatalf("%v (go test ./codec -run Golden -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date: go test ./codec -run Golden -update", compressedGoldenPath)
	}
}
