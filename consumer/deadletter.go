package consumer

import (
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// Dead letters: an entry the consumer gives up on goes to the topic's
// dead-letter stream with why (docs/wire.md has the fields). Listing,
// replaying and purging them is package inspect's.

func (c *Consumer) deadLetter(attempts int, reason, errText string) redisx.DeadLetter {
	return redisx.DeadLetter{
		Topic: c.cfg.Topic, Group: c.cfg.Group, Consumer: c.cfg.Name,
		Reason: reason, Error: errText, Attempts: attempts, Time: time.Now(),
	}
}

// deadFields describes an entry that could not be decoded: its raw fields
// travel with it.
func (c *Consumer) deadFields(e *redisx.Entry, attempts int, reason, errText string) []string {
	return redisx.DeadLetterOf(e, c.deadLetter(attempts, reason, errText))
}

// deadEnvelope describes a decoded entry: its envelope is re-encoded.
func (c *Consumer) deadEnvelope(id string, env *codec.Envelope, attempts int, reason, errText string) []string {
	d := c.deadLetter(attempts, reason, errText)
	d.OriginalID, d.Data, d.HasData = id, string(codec.AppendEnvelope(nil, env)), true
	return d.Fields()
}
