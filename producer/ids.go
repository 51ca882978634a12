package producer

import (
	"strconv"
	"sync/atomic"
)

// ids makes the correlation ids of a producer's requests: its incarnation
// (random per New, so replies meant for an earlier process with the same
// producer id are told apart) and a sequence number in base 36. Requests
// are registered by the number alone (registry); the string is made only
// where it travels: the envelope, a cancel notice, a span.
type ids struct {
	inc string
	seq atomic.Uint64
}

// next returns a new sequence number (never 0).
func (c *ids) next() uint64 { return c.seq.Add(1) }

// appendID appends seq's correlation id to b (a caller's stack buffer: the
// request path formats it without allocating).
func (c *ids) appendID(b []byte, seq uint64) []byte {
	return strconv.AppendUint(append(b, c.inc...), seq, 36)
}

// id returns seq's correlation id.
func (c *ids) id(seq uint64) string { return c.inc + strconv.FormatUint(seq, 36) }

// parse returns the sequence number of a correlation id of this
// incarnation; false for another's.
func (c *ids) parse(id string) (uint64, bool) {
	if len(id) <= len(c.inc) || id[:len(c.inc)] != c.inc {
		return 0, false
	}
	seq, err := strconv.ParseUint(id[len(c.inc):], 36, 64)
	return seq, err == nil
}
