package consumer

import (
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// Dead letters: an entry the consumer gives up on goes to the topic's
// dead-letter stream with why (docs/wire.md has the fields). Listing,
// replaying and purging them is package inspect's.

func (e *env) deadLetter(attempts int, reason, errText string) redisx.DeadLetter {
	return redisx.DeadLetter{
		Topic: e.cfg.Topic, Group: e.cfg.Group, Consumer: e.cfg.Name,
		Reason: reason, Error: errText, Attempts: attempts, Time: time.Now(),
	}
}

// deadFields describes an entry that could not be decoded: its raw fields
// travel with it.
func (e *env) deadFields(ent *redisx.Entry, attempts int, reason, errText string) []string {
	return redisx.DeadLetterOf(ent, e.deadLetter(attempts, reason, errText))
}

// deadEnvelope describes a decoded entry: its envelope is re-encoded.
func (e *env) deadEnvelope(id string, env *codec.Envelope, attempts int, reason, errText string) []string {
	d := e.deadLetter(attempts, reason, errText)
	d.OriginalID, d.Data, d.HasData = id, string(codec.AppendEnvelope(nil, env)), true
	return d.Fields()
}
