package producer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestIdempotentPublish: a second Publish with the same IdempotencyKey
// within the window writes nothing and returns the first id, flagged; a
// different key, or the same key after the window, writes; the key is
// refused with a delay and by PublishBatch.
func TestIdempotentPublish(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{IdempotencyWindows: map[string]time.Duration{"orders": time.Minute}})
	ctx := context.Background()
	var first, again, other producer.PublishInfo
	id1, err := p.Publish(ctx, "orders", []byte("a"), producer.IdempotencyKey("order-1"), producer.WithPublishInfo(&first))
	if err != nil || first.Duplicate || first.ID != id1 {
		t.Fatalf("first publish = %q, %v, %+v", id1, err, first)
	}
	id2, err := p.Publish(ctx, "orders", []byte("b"), producer.IdempotencyKey("order-1"), producer.WithPublishInfo(&again))
	if err != nil || id2 != id1 || !again.Duplicate {
		t.Fatalf("duplicate publish = %q, %v, %+v; want %q flagged", id2, err, again, id1)
	}
	if _, err := p.Publish(ctx, "orders", []byte("c"), producer.IdempotencyKey("order-2"), producer.WithPublishInfo(&other)); err != nil || other.Duplicate {
		t.Fatalf("another key = %+v, %v", other, err)
	}
	if n := streamLen(t, m, "orders"); n != 2 {
		t.Fatalf("stream holds %d entries, want 2", n)
	}
	m.FastForward(61 * time.Second) // the window passed: a new publish
	if id3, err := p.Publish(ctx, "orders", []byte("d"), producer.IdempotencyKey("order-1")); err != nil || id3 == id1 {
		t.Fatalf("after the window = %q, %v; want a new entry", id3, err)
	}
	if st := p.Stats(); st.Duplicates != 1 || st.Published != 3 {
		t.Fatalf("stats: duplicates %d published %d, want 1 and 3", st.Duplicates, st.Published)
	}
	if _, err := p.Publish(ctx, "orders", []byte("x"), producer.IdempotencyKey("k"), producer.After(time.Second)); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("IdempotencyKey with After = %v, want ErrInvalidConfig", err)
	}
	if _, err := p.PublishBatch(ctx, "orders", [][]byte{[]byte("x")}, producer.IdempotencyKey("k")); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("PublishBatch with IdempotencyKey = %v, want ErrInvalidConfig", err)
	}
	if _, err := producer.New(c, producer.Config{IdempotencyWindow: 30 * 24 * time.Hour}); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("a 30-day window = %v, want ErrInvalidConfig", err)
	}
}
