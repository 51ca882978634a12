package test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/test/redistest"
)

// TestCraftedReplyToNeverReachesForeignKeys: a request whose reply-to names
// a key that is not one of the bus's reply streams (a foreign stream,
// another topic) is dead-lettered as malformed; the key is neither written
// nor trimmed.
func TestCraftedReplyToNeverReachesForeignKeys(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	co := runConsumer(t, c, consumer.Config{Topic: "demo", ReplyMaxLen: 10}, echo)
	rc := c.Redis()
	ctx := context.Background()
	for i := range 50 {
		for _, k := range []string{"other:audit", c.Keys().Topic("victim")} {
			if err := rc.Do(ctx, rc.B().Xadd().Key(k).Id("*").FieldValue().FieldValue("n", strconv.Itoa(i)).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, target := range []string{"other:audit", c.Keys().Topic("victim"), "", "myc:{r.}"} {
		env := codec.Envelope{Kind: codec.KindRequest, ID: "x1", ReplyTo: target, Deadline: time.Now().Add(time.Minute).UnixNano(), Payload: []byte("forged")}
		if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic("demo")).Id("*").FieldValue().FieldValue("m", string(codec.AppendEnvelope(nil, &env))).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "4 dead letters", func() bool { return co.Stats().DeadLettered == 4 })
	for _, k := range []string{"other:audit", c.Keys().Topic("victim")} {
		if n, err := rc.Do(ctx, rc.B().Xlen().Key(k).Build()).AsInt64(); err != nil || n != 50 {
			t.Fatalf("XLEN %s = %d, %v; want 50 (untouched)", k, n, err)
		}
	}
	letters, err := inspect.New(c).DeadLetters(ctx, "demo", 10)
	if err != nil || len(letters) != 4 || letters[0].Reason != "malformed" {
		t.Fatalf("dead letters = %+v, %v; want 4 malformed", letters, err)
	}
	if s := co.Stats(); s.Replied != 0 || s.Handled != 0 {
		t.Fatalf("consumer stats = %+v: the handler ran or a reply was written", s)
	}
}
