package producer

import (
	"testing"
	"time"

	"github.com/egos/mycelium/codec"
)

// TestStreamBufferCountsChunks: a flood of empty chunks to a caller that
// does not read breaks the stream at the buffer's bound, as payload bytes
// do (security issue, point 12: 2,300,000 empty chunks took a caller's heap
// past 1 GiB without a break).
func TestStreamBufferCountsChunks(t *testing.T) {
	const max = 1 << 20
	s := newStreamState(max)
	var r result
	for i := range 100_000 {
		s.push(&codec.Envelope{Kind: codec.KindChunk, Seq: uint64(i)}, &r, time.Now())
		if s.over {
			if n := len(s.items); n > max/chunkOverhead+1 {
				t.Fatalf("over after %d empty chunks, want at most %d", n, max/chunkOverhead+1)
			}
			return
		}
	}
	t.Fatalf("100,000 empty chunks buffered (%d items) without passing a %d-byte bound", len(s.items), max)
}
