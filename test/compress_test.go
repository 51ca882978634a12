package test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// promptText is a JSON-like prompt of about n bytes.
func promptText(n int) []byte {
	var b strings.Builder
	r := rand.New(rand.NewPCG(5, 6))
	words := []string{"summarise", "the", "quarterly", "report", "for", "customer", "accounts", "with", "risk", "notes"}
	b.WriteString(`{"model":"m","messages":[`)
	for b.Len() < n {
		fmt.Fprintf(&b, `{"role":"user","content":"%s %s %s %s %s %d"},`, words[r.IntN(10)], words[r.IntN(10)], words[r.IntN(10)], words[r.IntN(10)], words[r.IntN(10)], r.IntN(1000))
	}
	b.WriteString(`{}]}`)
	return []byte(b.String())
}

// TestCompressedPayloads: a producer with compression writes large
// compressible payloads compressed (the stream entry is smaller, its
// envelope flagged), a worker hands the handler the original bytes and
// compresses its reply the same way, and the caller gets the original
// reply; incompressible and small payloads go as they are.
func TestCompressedPayloads(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	for _, comp := range []codec.Compression{codec.CompressS2, codec.CompressZstd} {
		t.Run(comp.String(), func(t *testing.T) {
			topic := "compress-" + comp.String()
			seen := make(chan []byte, 8)
			runConsumer(t, c, consumer.Config{Topic: topic}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
				seen <- bytes.Clone(m.Payload)
				return append(bytes.Clone(m.Payload), " answered"...), nil
			}))
			p := newProducer(t, c, producer.Config{Compression: comp})
			for _, tc := range []struct {
				name       string
				payload    []byte
				compressed bool
			}{
				{"text 64 KiB", promptText(64 << 10), true},
				{"random 64 KiB", random, false},
				{"small", []byte(`{"prompt":"hi"}`), false},
			} {
				reply, err := p.Request(ctx, topic, tc.payload)
				if err != nil {
					t.Fatalf("%s: Request = %v", tc.name, err)
				}
				if got := <-seen; !bytes.Equal(got, tc.payload) {
					t.Fatalf("%s: the handler got %d bytes, not the %d sent", tc.name, len(got), len(tc.payload))
				}
				if !bytes.Equal(reply, append(bytes.Clone(tc.payload), " answered"...)) {
					t.Fatalf("%s: the reply is %d bytes, not the handler's %d", tc.name, len(reply), len(tc.payload)+9)
				}
				// The entry as stored: compressed or not, and flagged so.
				es, err := redisx.Range(ctx, c.Redis(), bus.Keys{}.Topic(topic), "+", "-", 1, true)
				if err != nil || len(es) != 1 {
					t.Fatalf("%s: newest entry: %v, %v", tc.name, es, err)
				}
				var env codec.Envelope
				if err := codec.DecodeEnvelope(es[0].Data, &env); err != nil {
					t.Fatal(err)
				}
				if codec.Compressed(&env) != tc.compressed || codec.CompressionOf(&env) != map[bool]codec.Compression{true: comp, false: codec.CompressNone}[tc.compressed] {
					t.Errorf("%s: stored with flags %b; compressed %v, want %v", tc.name, env.Flags, codec.Compressed(&env), tc.compressed)
				}
				// The reply as the worker wrote it: compressed as the request was.
				rs, err := redisx.Range(ctx, c.Redis(), p.ReplyStream(), "+", "-", 1, true)
				if err != nil || len(rs) != 1 {
					t.Fatalf("%s: newest reply: %v, %v", tc.name, rs, err)
				}
				var renv codec.Envelope
				if err := codec.DecodeEnvelope(rs[0].Data, &renv); err != nil || renv.Kind != codec.KindReply || codec.Compressed(&renv) != tc.compressed {
					t.Errorf("%s: reply stored as %v with flags %b (%v); want compressed %v", tc.name, renv.Kind, renv.Flags, err, tc.compressed)
				}
				if tc.compressed {
					t.Logf("%s as %v: %d bytes stored for %d", tc.name, comp, len(es[0].Data), len(tc.payload))
					if len(es[0].Data) > len(tc.payload)/2 {
						t.Errorf("%s: %d bytes stored for %d: not compressed enough", tc.name, len(es[0].Data), len(tc.payload))
					}
				}
			}
			// Events too (publish and a batch).
			big := promptText(16 << 10)
			if _, err := p.Publish(ctx, topic, big); err != nil {
				t.Fatal(err)
			}
			if got := <-seen; !bytes.Equal(got, big) {
				t.Fatalf("event: the handler got %d bytes, not %d", len(got), len(big))
			}
			if _, err := p.PublishBatch(ctx, topic, [][]byte{big, []byte("tiny")}); err != nil {
				t.Fatal(err)
			}
			a, b := <-seen, <-seen // handled in any order
			if len(a) < len(b) {
				a, b = b, a
			}
			if !bytes.Equal(a, big) || string(b) != "tiny" {
				t.Fatalf("batch events: the handler got %d and %d bytes, want %d and 4", len(a), len(b), len(big))
			}
		})
	}
}

// TestCorruptCompressedEntryIsDeadLettered: an entry flagged compressed
// whose payload does not decompress is a malformed entry, dead-lettered
// as such, and the worker goes on.
func TestCorruptCompressedEntryIsDeadLettered(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	handled := make(chan string, 4)
	runConsumer(t, c, consumer.Config{Topic: "corrupt"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		handled <- string(m.Payload)
		return nil, nil
	}))
	bad := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindEvent, Flags: codec.FlagZstd, Payload: []byte("not zstd at all")})
	key := bus.Keys{}.Topic("corrupt")
	if err := c.Redis().Do(ctx, c.Redis().B().Xadd().Key(key).Id("*").FieldValue().FieldValue("m", string(bad)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	p := newProducer(t, c, producer.Config{})
	if _, err := p.Publish(ctx, "corrupt", []byte("fine")); err != nil {
		t.Fatal(err)
	}
	if got := <-handled; got != "fine" {
		t.Fatalf("handled %q, want fine", got)
	}
	var reason string
	waitFor(t, 10*time.Second, "the corrupt entry dead-lettered", func() bool {
		dls, err := redisx.DeadLetters(ctx, c.Redis(), bus.Keys{}.DeadLetter("corrupt"), "-", "+", 10)
		if err != nil || len(dls) != 1 {
			return false
		}
		reason = dls[0].Reason + ": " + dls[0].Error
		return true
	})
	if !strings.Contains(reason, "malformed") || !strings.Contains(reason, "compressed payload") {
		t.Errorf("dead letter %q; want malformed, compressed payload", reason)
	}
}
