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

// TestOptionsPerVerb: each option implements the option interfaces of
// exactly the verbs it applies to, so Request(..., After(d)) or a cache
// option on Publish does not compile (issue 25, point 5: they compiled and
// failed at run time, or were silently ignored).
func TestOptionsPerVerb(t *testing.T) {
	var info producer.CacheInfo
	for _, tt := range []struct {
		name                     string
		opt                      any
		publish, request, stream bool
	}{
		{"WithHeaders", producer.WithHeaders(nil), true, true, true},
		{"PartitionKey", producer.PartitionKey("k"), true, true, true},
		{"WaitForResponders", producer.WaitForResponders(), false, true, true},
		{"After", producer.After(time.Second), true, false, false},
		{"At", producer.At(time.Now()), true, false, false},
		{"NoCache", producer.NoCache(), false, true, false},
		{"NoStore", producer.NoStore(), false, true, false},
		{"MaxAge", producer.MaxAge(time.Second), false, true, false},
		{"CacheKey", producer.CacheKey("k"), false, true, false},
		{"WithCacheInfo", producer.WithCacheInfo(&info), false, true, false},
	} {
		_, pub := tt.opt.(producer.PublishOption)
		_, req := tt.opt.(producer.RequestOption)
		_, st := tt.opt.(producer.StreamOption)
		if pub != tt.publish || req != tt.request || st != tt.stream {
			t.Errorf("%s applies to Publish %v, Request %v, Stream %v; want %v, %v, %v", tt.name, pub, req, st, tt.publish, tt.request, tt.stream)
		}
	}
}

// TestRequestBatchRefusesCacheInfo: one CacheInfo cannot describe a
// batch's answers, so RequestBatch refuses WithCacheInfo instead of
// ignoring it.
func TestRequestBatchRefusesCacheInfo(t *testing.T) {
	_, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{})
	var info producer.CacheInfo
	_, err := p.RequestBatch(context.Background(), "t", [][]byte{[]byte("a")}, producer.WithCacheInfo(&info))
	if !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("RequestBatch(WithCacheInfo) = %v, want ErrInvalidConfig", err)
	}
}
