package consumer

import (
	"context"
	"testing"
	"time"
)

// TestSlotLoan: a blocked read's slots are lent to claimed entries; the
// read, when it returns, knows how many; a second reader lends nothing
// while one lends; claim waits for an offer when no slot is free.
func TestSlotLoan(t *testing.T) {
	c := &slotPool{ch: make(chan struct{}, 4)} // every slot held by the read below
	if !c.loan.offer(4) {
		t.Fatal("the first offer was refused")
	}
	if c.loan.offer(2) {
		t.Fatal("a second reader's offer was taken while one runs")
	}
	ctx := context.Background()
	for range 3 {
		if !c.claim(ctx) {
			t.Fatal("no slot borrowed from the blocked read")
		}
	}
	if lent := c.loan.withdraw(4); lent != 3 {
		t.Fatalf("withdraw = %d lent, want 3", lent)
	}
	if c.loan.borrow() {
		t.Fatal("borrowed after the offer was withdrawn")
	}
	// No free slot and no offer: claim waits, and an offer wakes it.
	got := make(chan bool, 1)
	go func() { got <- c.claim(ctx) }()
	select {
	case <-got:
		t.Fatal("claim returned with nothing free and nothing lent")
	case <-time.After(20 * time.Millisecond):
	}
	c.loan.offer(1)
	if !<-got {
		t.Fatal("claim did not borrow the slot offered")
	}
	if lent := c.loan.withdraw(1); lent != 1 {
		t.Fatalf("withdraw = %d lent, want 1", lent)
	}
	// A free slot is taken first.
	c.give(1)
	if !c.claim(ctx) || len(c.ch) != 0 {
		t.Fatal("the free slot was not taken")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if c.claim(cctx) {
		t.Fatal("claim with nothing free and a cancelled ctx reported a slot")
	}
}
