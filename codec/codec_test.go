package codec

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// wire mirrors the envelope layout for the msgpack library, to prove the
// hand-rolled codec speaks standard msgpack in both directions.
type wire struct {
	_msgpack struct{} `msgpack:",as_array"` //nolint:unused // read by msgpack's struct tag parser
	Version  uint8
	Kind     uint8
	ID       string
	ReplyTo  string
	Deadline int64
	Sent     int64
	Attempt  uint32
	Headers  map[string]string
	Payload  []byte
	ErrCode  string
	ErrMsg   string
	Queue    int64
	Handler  int64
	CacheKey string
	CacheTTL int64
}

func sample(payload int) *Envelope {
	p := bytes.Repeat([]byte{0xab}, payload)
	return &Envelope{
		Kind: KindRequest, ID: "p1-42", ReplyTo: "myc:{r.p1}", Deadline: 1764230400123456789,
		Sent: 1764230399123456789, QueueWait: 1 << 40, Handler: 1500,
		CacheKey: "7:0123456789abcdef0123456789abcdef", CacheTTL: 300e9,
		Headers: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k": "v"},
		Payload: p,
	}
}

func equal(t *testing.T, got, want *Envelope) {
	t.Helper()
	if got.Kind != want.Kind || got.ID != want.ID || got.ReplyTo != want.ReplyTo || got.Deadline != want.Deadline ||
		got.Sent != want.Sent || !bytes.Equal(got.Payload, want.Payload) ||
		got.ErrCode != want.ErrCode || got.ErrMsg != want.ErrMsg || len(got.Headers) != len(want.Headers) ||
		got.QueueWait != want.QueueWait || got.Handler != want.Handler ||
		got.CacheKey != want.CacheKey || got.CacheTTL != want.CacheTTL || got.RequestEntry != want.RequestEntry ||
		got.Attempt != want.Attempt || got.Seq != want.Seq || got.Flags != want.Flags || got.Token != want.Token {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	for k, v := range want.Headers {
		if got.Headers[k] != v {
			t.Fatalf("header %q = %q, want %q", k, got.Headers[k], v)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	long := strings.Repeat("x", 70000)
	tests := []struct {
		name string
		env  *Envelope
	}{
		{"empty", &Envelope{}},
		{"event", &Envelope{Kind: KindEvent, Sent: 5, Payload: []byte("hello")}},
		{"request 1KiB", sample(1024)},
		{"request 70KiB", sample(70000)},
		{"request 1MiB", sample(1 << 20)},
		{"negative deadline", &Envelope{Deadline: -1, Sent: -1 << 40}},
		{"reply error", &Envelope{Kind: KindReply, ID: "x", ErrCode: "handler_error", ErrMsg: long}},
		{"reply with its request's entry", &Envelope{Kind: KindReply, ID: "x", Payload: []byte("a"), RequestEntry: "1764230400123-7"}},
		{"retried event", &Envelope{Kind: KindEvent, Attempt: 3, Payload: []byte("a")}},
		{"stream request", &Envelope{Kind: KindRequest, ID: "x", ReplyTo: "r", Flags: FlagStream}},
		{"request with a cancel token", &Envelope{Kind: KindRequest, ID: "x", ReplyTo: "r", Payload: []byte("p"), Token: Token{0xff, 1, 0, 9}}},
		{"stream request with a cancel token", &Envelope{Kind: KindRequest, ID: "x", ReplyTo: "r", Flags: FlagStream, Token: Token{7}}},
		{"chunk", &Envelope{Kind: KindChunk, ID: "x", Payload: []byte("tok"), RequestEntry: "1-1", Attempt: 2, Seq: 1 << 40}},
		{"string sizes", &Envelope{ID: strings.Repeat("i", 31), ReplyTo: strings.Repeat("r", 200), ErrCode: strings.Repeat("c", 300)}},
		{"many headers", &Envelope{Headers: func() map[string]string {
			m := map[string]string{}
			for i := 0; i < 40; i++ {
				m[strings.Repeat("h", i+1)] = "v"
			}
			return m
		}()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := Encode(tt.env)
			defer PutBuffer(b)
			var got Envelope
			if err := DecodeEnvelope(string(b.B), &got); err != nil {
				t.Fatalf("DecodeEnvelope(Encode(%s)) = %v", tt.name, err)
			}
			equal(t, &got, tt.env)
			if len(b.B) > EncodedSize(tt.env) {
				t.Fatalf("encoded %d bytes, EncodedSize said at most %d", len(b.B), EncodedSize(tt.env))
			}

			if !tt.env.Token.IsZero() { // 19 elements, the token last
				var all []any
				if err := msgpack.Unmarshal(b.B, &all); err != nil || len(all) != maxFields || !bytes.Equal(all[maxFields-1].([]byte), tt.env.Token[:]) {
					t.Fatalf("msgpack.Unmarshal(ours) = %v, %v; want %d elements ending with the token", all, err, maxFields)
				}
				return
			}
			if tt.env.Seq != 0 || tt.env.Flags != 0 { // 18 elements
				var all []any
				if err := msgpack.Unmarshal(b.B, &all); err != nil || len(all) != streamFields {
					t.Fatalf("msgpack.Unmarshal(ours) = %v, %v; want %d elements", all, err, streamFields)
				}
				return
			}
			if tt.env.RequestEntry != "" { // 16 elements: check the last one, generically
				var all []any
				if err := msgpack.Unmarshal(b.B, &all); err != nil || len(all) != fields+1 || all[fields] != tt.env.RequestEntry {
					t.Fatalf("msgpack.Unmarshal(ours) = %v, %v; want %d elements ending with the request entry", all, err, fields+1)
				}
				return
			}
			// The msgpack library reads what we write ...
			var w wire
			if err := msgpack.Unmarshal(b.B, &w); err != nil {
				t.Fatalf("msgpack.Unmarshal(ours) = %v", err)
			}
			if w.Version != Version || w.ID != tt.env.ID || !bytes.Equal(w.Payload, tt.env.Payload) || w.ErrMsg != tt.env.ErrMsg {
				t.Fatalf("msgpack.Unmarshal(ours) = %+v", w)
			}
			// ... and we read what it writes.
			lib, err := msgpack.Marshal(&w)
			if err != nil {
				t.Fatal(err)
			}
			var back Envelope
			if err := DecodeEnvelope(string(lib), &back); err != nil {
				t.Fatalf("DecodeEnvelope(msgpack.Marshal) = %v", err)
			}
			equal(t, &back, tt.env)
		})
	}
}

// TestAttemptElement: element 6 carries Attempt (earlier revisions wrote
// 0 there); any 32-bit unsigned integer is accepted, anything else is
// malformed.
func TestAttemptElement(t *testing.T) {
	b := AppendEnvelope(nil, sample(4))
	var w wire
	if err := msgpack.Unmarshal(b, &w); err != nil || w.Attempt != 0 {
		t.Fatalf("attempt element = %d, %v; want 0", w.Attempt, err)
	}
	for _, v := range []uint32{2, 1<<32 - 1} {
		w.Attempt = v
		lib, err := msgpack.Marshal(&w)
		if err != nil {
			t.Fatal(err)
		}
		var got Envelope
		if err := DecodeEnvelope(string(lib), &got); err != nil {
			t.Fatalf("DecodeEnvelope(attempt %d) = %v", v, err)
		}
		want := *sample(4)
		want.Attempt = v
		equal(t, &got, &want)
	}
	// A string where the integer goes: an event with empty id and
	// reply_to and zero times encodes element 6 at byte 7.
	ev := AppendEnvelope(nil, &Envelope{})
	if ev[7] != 0 {
		t.Fatalf("element 6 not at byte 7 of % x", ev)
	}
	for _, bad := range [][]byte{{0xa1, '2'}, {0xcf, 0, 0, 0, 1, 0, 0, 0, 0}} {
		lib := append(append(ev[:7:7], bad...), ev[8:]...)
		var got Envelope
		var de *DecodeError
		if err := DecodeEnvelope(string(lib), &got); !errors.As(err, &de) || de.Field != "attempt" {
			t.Fatalf("DecodeEnvelope(% x in element 6) = %v, want a DecodeError on the attempt field", bad, err)
		}
	}
}

func TestDecodeSkipsTrailingFields(t *testing.T) {
	in := sample(10)
	b := AppendEnvelope(nil, in)
	in.RequestEntry, in.Seq, in.Flags = "5-1", 9, FlagStream
	in.Token = Token{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	b = append([]byte{0xdc, 0, maxFields + 3}, b[1:]...) // array16 header
	b = append(b, 0xa3, '5', '-', '1', 9, 1)             // request entry, seq, flags
	b = append(b, 0xc4, TokenSize)                       // the token
	b = append(b, in.Token[:]...)
	// three extra values of other types: a nested map, a float and an ext.
	extra, err := msgpack.Marshal(map[string]any{"a": []any{1, "x", nil}, "b": 1.5})
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, extra...)
	b = append(b, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, 0xd6, 0x01, 1, 2, 3, 4)
	var got Envelope
	if err := DecodeEnvelope(string(b), &got); err != nil {
		t.Fatalf("DecodeEnvelope(with trailing fields) = %v", err)
	}
	equal(t, &got, in)
}

// TestDecodeEarlierRevision: an envelope written before the stage timings
// were added (11 elements), or with one of them only, or before the cache
// fields (13 elements), still decodes.
func TestDecodeEarlierRevision(t *testing.T) {
	in := sample(10)
	in.CacheKey, in.CacheTTL = "", 0
	b := AppendEnvelope(nil, in)
	b = b[:len(b)-2] // drop the empty cache fields (2 bytes)
	var got Envelope
	thirteen := append([]byte{0x90 | 13}, b[1:]...)
	if err := DecodeEnvelope(string(thirteen), &got); err != nil {
		t.Fatalf("DecodeEnvelope(13 elements) = %v", err)
	}
	equal(t, &got, in)
	old := append([]byte{0x90 | minFields}, b[1:len(b)-12]...) // drop both timings (9 + 3 bytes)
	if tail := AppendEnvelope(nil, &Envelope{QueueWait: 1 << 40, Handler: 1500}); string(b[len(b)-12:]) != string(tail[len(tail)-14:len(tail)-2]) {
		t.Fatalf("test setup: timing tail is not 12 bytes")
	}
	if err := DecodeEnvelope(string(old), &got); err != nil {
		t.Fatalf("DecodeEnvelope(11 elements) = %v", err)
	}
	want := *in
	want.QueueWait, want.Handler = 0, 0
	equal(t, &got, &want)
	twelve := append(append([]byte{0x90 | 12}, old[1:]...), 0x07) // one unknown trailing value
	if err := DecodeEnvelope(string(twelve), &got); err != nil {
		t.Fatalf("DecodeEnvelope(12 elements) = %v", err)
	}
	equal(t, &got, &want)
}

func TestDecodeRejects(t *testing.T) {
	good := AppendEnvelope(nil, sample(16))
	// good ends with the cache key (a 33-byte string + 1-byte header) and
	// its TTL (9 bytes)
	wrongVersion := append([]byte(nil), good...)
	wrongVersion[1] = 2
	short := append([]byte{0x90 | 3}, good[1:]...)
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", "not a msgpack array"},
		{"garbage", "hello world", "not a msgpack array"},
		{"json", `{"id":"1"}`, "not a msgpack array"},
		{"truncated", string(good[:len(good)-3]), "cache_ttl"},
		{"truncated key", string(good[:len(good)-12]), "cache_key"},
		{"truncated timing", string(good[:len(good)-46]), "handler"},
		{"truncated payload", string(good[:len(good)-70]), "payload"},
		{"trailing bytes", string(append(append([]byte(nil), good...), 0x01)), "trailing bytes"},
		{"wrong version", string(wrongVersion), "unsupported version"},
		{"too few fields", string(short), "want at least"},
		{"huge header count", string([]byte{0x9b, 1, 0, 0xa0, 0xa0, 0, 0, 0, 0xdf, 0xff, 0xff, 0xff, 0xff}), "implausible header count"},
		{"huge string length", string([]byte{0x9b, 1, 0, 0xdb, 0xff, 0xff, 0xff, 0xff}), "id"},
		{"bad kind", string([]byte{0x9b, 1, 9}), "kind"},
		{"short token", string(append(append([]byte{0xdc, 0, maxFields}, good[1:]...), 0xa0, 0, 0, 0xc4, 5, 1, 2, 3, 4, 5)), "token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e Envelope
			err := DecodeEnvelope(tt.in, &e)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeEnvelope(%q) = %v, want ErrMalformed", tt.name, err)
			}
			var de *DecodeError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeEnvelope(%q) = %v, want a *DecodeError mentioning %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestPayloadIsACopy(t *testing.T) {
	b := AppendEnvelope(nil, &Envelope{Payload: []byte("abc")})
	s := string(b)
	var e Envelope
	if err := DecodeEnvelope(s, &e); err != nil {
		t.Fatal(err)
	}
	e.Payload[0] = 'z'
	var again Envelope
	if err := DecodeEnvelope(s, &again); err != nil || string(again.Payload) != "abc" {
		t.Fatalf("payload aliases input: got %q, %v", again.Payload, err)
	}
}

func TestOwnedPayloadAliases(t *testing.T) {
	b := AppendEnvelope(nil, &Envelope{ID: "i", Payload: []byte("abc")})
	s := string(b) // heap-allocated, owned by this test
	var e Envelope
	if err := DecodeEnvelopeOwned(s, &e); err != nil {
		t.Fatal(err)
	}
	if string(e.Payload) != "abc" || len(e.Payload) != cap(e.Payload) {
		t.Fatalf("payload = %q (len %d, cap %d), want abc with cap = len", e.Payload, len(e.Payload), cap(e.Payload))
	}
	e.Payload = append(e.Payload, 'd') // cap = len: appending copies, never writes past the payload
	var again Envelope
	if err := DecodeEnvelopeOwned(s, &again); err != nil || string(again.Payload) != "abc" {
		t.Fatalf("append wrote into the input: got %q, %v", again.Payload, err)
	}
	again.Payload[0] = 'z' // aliasing: the write shows in the input
	var third Envelope
	if err := DecodeEnvelope(s, &third); err != nil || string(third.Payload) != "zbc" {
		t.Fatalf("owned payload is not an alias of the input: got %q, %v", third.Payload, err)
	}
	var empty Envelope
	if err := DecodeEnvelopeOwned(string(AppendEnvelope(nil, &Envelope{})), &empty); err != nil || empty.Payload != nil {
		t.Fatalf("empty payload = %v, %v; want nil", empty.Payload, err)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindEvent: "event", KindRequest: "request", KindReply: "reply", KindControl: "control", KindChunk: "chunk", 200: "kind(200)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(AppendEnvelope(nil, sample(8)))
	f.Add(AppendEnvelope(nil, &Envelope{}))
	f.Add(AppendEnvelope(nil, &Envelope{Kind: KindReply, ErrCode: "c", ErrMsg: "m"}))
	f.Add(AppendEnvelope(nil, &Envelope{Kind: KindChunk, ID: "x", Seq: 3, Attempt: 2, Payload: []byte("t")}))
	f.Add([]byte{})
	f.Add([]byte("garbage"))
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		var e, owned Envelope
		err := DecodeEnvelope(string(in), &e)
		if errOwned := DecodeEnvelopeOwned(string(in), &owned); (err == nil) != (errOwned == nil) {
			t.Fatalf("DecodeEnvelope = %v but DecodeEnvelopeOwned = %v", err, errOwned)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		equal(t, &owned, &e)
		// Whatever decodes must re-encode and decode to the same envelope.
		var again Envelope
		if err := DecodeEnvelope(string(AppendEnvelope(nil, &e)), &again); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
		equal(t, &again, &e)
	})
}
