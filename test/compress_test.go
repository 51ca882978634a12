package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
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

// TestCompressedDeadLetterReplay: a compressed event its handler refuses is
// dead-lettered compressed as it came; inspect shows it decompressed and
// says how it was stored; a replay writes it compressed again, and the
// handler gets the original bytes.
func TestCompressedDeadLetterReplay(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var refuse atomic.Bool
	refuse.Store(true)
	got := make(chan []byte, 2)
	runConsumer(t, c, consumer.Config{Topic: "cdl"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if refuse.Load() {
			return nil, fmt.Errorf("no: %w", bus.ErrSkipRetry)
		}
		got <- bytes.Clone(m.Payload)
		return nil, nil
	}))
	p := newProducer(t, c, producer.Config{Compression: codec.CompressS2})
	big := promptText(32 << 10)
	if _, err := p.Publish(ctx, "cdl", big); err != nil {
		t.Fatal(err)
	}
	in := inspect.New(c)
	var dls []inspect.DeadLetter
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		var err error
		dls, err = in.DeadLetters(ctx, "cdl", 10)
		return err == nil && len(dls) == 1
	})
	raw, err := redisx.DeadLetters(ctx, c.Redis(), bus.Keys{}.DeadLetter("cdl"), "-", "+", 1)
	if err != nil || len(raw) != 1 || len(raw[0].Data) > len(big)/2 {
		t.Fatalf("stored dead letter: %d bytes for %d (%v); want it compressed", len(raw[0].Data), len(big), err)
	}
	if d := dls[0]; d.Compression != "s2" || d.Envelope == nil || !bytes.Equal(d.Envelope.Payload, big) {
		t.Fatalf("inspect's dead letter: compression %q, payload %d bytes; want s2 and the original", d.Compression, len(d.Envelope.Payload))
	}
	refuse.Store(false)
	if n, err := in.ReplayDeadLetters(ctx, "cdl"); err != nil || n != 1 {
		t.Fatalf("replay = %d, %v", n, err)
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("the replayed event reached the handler as %d bytes, want %d", len(b), len(big))
	}
	es, err := redisx.Range(ctx, c.Redis(), bus.Keys{}.Topic("cdl"), "+", "-", 1, true)
	if err != nil || len(es) != 1 || len(es[0].Data) > len(big)/2 {
		t.Fatalf("the replayed entry is not stored compressed: %v", err)
	}
}

// TestCorruptCompressedReplyFailsItsCall: a reply whose payload does not
// decompress fails the call it answers at once (not at its deadline).
func TestCorruptCompressedReplyFailsItsCall(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc := c.Redis()
	key := bus.Keys{}.Topic("badreply")
	if err := redisx.CreateGroup(ctx, rc, key, "g", "$"); err != nil {
		t.Fatal(err)
	}
	// A worker of its own: it answers with a corrupt zstd payload.
	go func() {
		for ctx.Err() == nil {
			es, err := redisx.ReadGroup(ctx, rc, key, "g", "w", ">", 1, 100*time.Millisecond)
			if err != nil || len(es) == 0 {
				continue
			}
			var req codec.Envelope
			if codec.DecodeEnvelope(es[0].Data, &req) != nil {
				continue
			}
			reply := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindReply, ID: req.ID, RequestEntry: es[0].ID, Attempt: 1,
				Flags: codec.FlagZstd, Payload: []byte("not a zstd frame")})
			_ = rc.Do(ctx, rc.B().Xadd().Key(req.ReplyTo).Id("*").FieldValue().FieldValue("m", string(reply)).Build()).Error()
			return
		}
	}()
	p := newProducer(t, c, producer.Config{})
	start := time.Now()
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	_, err := p.Request(rctx, "badreply", []byte("q"), producer.WaitForResponders())
	if !errors.Is(err, codec.ErrCorruptPayload) {
		t.Fatalf("Request = %v; want an error wrapping codec.ErrCorruptPayload", err)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("the call failed after %v: it waited for its deadline", took)
	}
}
