package consumer

import (
	"strconv"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
)

// Dead-letter entry fields. An entry of the dead-letter stream holds the
// original encoded envelope in bus.Field when there was one (so it can be
// replayed exactly), the original fields as "f.<name>" otherwise, and:
const (
	DLQOriginalID = "id"       // stream id of the original entry
	DLQTopic      = "topic"    // topic it was read from
	DLQGroup      = "group"    // consumer group
	DLQConsumer   = "consumer" // consumer that gave up on it
	DLQReason     = "reason"   // malformed | handler_error | ...
	DLQError      = "error"    // the error text
	DLQAttempts   = "attempts" // deliveries so far
	DLQTime       = "time"     // RFC 3339 time it was dead-lettered
)

func (c *Consumer) deadHeader(e *bus.Entry, attempts int, reason, errText string) []string {
	return []string{
		DLQOriginalID, e.ID, DLQTopic, c.cfg.Topic, DLQGroup, c.cfg.Group, DLQConsumer, c.cfg.Name,
		DLQReason, reason, DLQError, errText, DLQAttempts, strconv.Itoa(attempts),
		DLQTime, time.Now().UTC().Format(time.RFC3339Nano),
	}
}

// deadFields describes an entry that could not be decoded: its raw fields
// travel with it.
func (c *Consumer) deadFields(e *bus.Entry, attempts int, reason, errText string) []string {
	fv := c.deadHeader(e, attempts, reason, errText)
	if e.HasData {
		return append(fv, bus.Field, e.Data)
	}
	raw := e.Fields()
	for i := 0; i+1 < len(raw); i += 2 {
		fv = append(fv, "f."+raw[i], raw[i+1])
	}
	return fv
}

// deadEnvelope describes a decoded entry: its envelope is re-encoded.
func (c *Consumer) deadEnvelope(e *bus.Entry, env *codec.Envelope, attempts int, reason, errText string) []string {
	fv := c.deadHeader(e, attempts, reason, errText)
	b := codec.AppendEnvelope(nil, env)
	return append(fv, bus.Field, string(b))
}
