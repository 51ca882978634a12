package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

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

// ReplayedFromHeader is set on a replayed message to the dead-letter entry
// id it came from.
const ReplayedFromHeader = "mycelium-replayed-from"

// DeadLetter is one entry of a topic's dead-letter stream.
type DeadLetter struct {
	ID         string    `json:"id"`          // id in the dead-letter stream
	OriginalID string    `json:"original_id"` // id it had on the topic stream
	Topic      string    `json:"topic"`
	Group      string    `json:"group"`
	Consumer   string    `json:"consumer"`
	Reason     string    `json:"reason"`
	Error      string    `json:"error"`
	Attempts   int       `json:"attempts"`
	Time       time.Time `json:"time"`
	// Envelope is the original message when it could be decoded; nil for
	// malformed entries, whose raw fields are in Fields.
	Envelope *codec.Envelope   `json:"envelope,omitempty"`
	Fields   map[string]string `json:"fields,omitempty"`
}

// ListDeadLetters returns up to limit entries of topic's dead-letter stream,
// oldest first (limit <= 0: all).
func ListDeadLetters(ctx context.Context, c rueidis.Client, prefix, topic string, limit int) ([]DeadLetter, error) {
	key := bus.Keys{Prefix: prefix}.DeadLetter(topic)
	q := c.B().Xrange().Key(key).Start("-").End("+")
	var cmd rueidis.Completed
	if limit > 0 {
		cmd = q.Count(int64(limit)).Build()
	} else {
		cmd = q.Build()
	}
	entries, err := c.Do(ctx, cmd).AsXRange()
	if err != nil {
		return nil, fmt.Errorf("consumer: list dead letters of %s: %w", topic, err)
	}
	out := make([]DeadLetter, 0, len(entries))
	for _, e := range entries {
		out = append(out, parseDeadLetter(e.ID, e.FieldValues))
	}
	return out, nil
}

func parseDeadLetter(id string, f map[string]string) DeadLetter {
	d := DeadLetter{ID: id, OriginalID: f[DLQOriginalID], Topic: f[DLQTopic], Group: f[DLQGroup], Consumer: f[DLQConsumer],
		Reason: f[DLQReason], Error: f[DLQError]}
	d.Attempts, _ = strconv.Atoi(f[DLQAttempts])
	d.Time, _ = time.Parse(time.RFC3339Nano, f[DLQTime])
	if data, ok := f[bus.Field]; ok {
		var env codec.Envelope
		if codec.DecodeEnvelope(data, &env) == nil {
			d.Envelope = &env
		}
	}
	if d.Envelope == nil {
		d.Fields = map[string]string{}
		for k, v := range f {
			if raw, ok := strings.CutPrefix(k, "f."); ok {
				d.Fields[raw] = v
			} else if k == bus.Field {
				d.Fields[k] = v
			}
		}
	}
	return d
}

// ErrNotReplayable is returned for a dead letter without a decodable
// envelope (a malformed entry): replaying it would only dead-letter it again.
var ErrNotReplayable = errors.New("consumer: dead letter has no decodable envelope")

// replayScript appends one envelope to the topic stream and then deletes
// its dead letter, atomically. A MULTI/EXEC would be atomic too, but it
// runs the XDEL even when the XADD fails while running (the topic key is
// not a stream: WRONGTYPE) and the dead letter would be lost; in a script
// the failed XADD raises before the XDEL.
var replayScript = rueidis.NewLuaScript(`local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[3])
return id`)

// ReplayDeadLetters puts dead letters back on their topic as new entries,
// with the attempt count reset and ReplayedFromHeader set, and deletes them
// from the dead-letter stream, each in one atomic script (both keys share
// a hash slot) that deletes only after the write succeeded. ids selects entries; none means all. It returns how many were
// replayed; entries that cannot be replayed are reported in the error
// (wrapping ErrNotReplayable) and left in place.
func ReplayDeadLetters(ctx context.Context, c rueidis.Client, prefix, topic string, ids ...string) (int, error) {
	keys := bus.Keys{Prefix: prefix}
	dlq, stream := keys.DeadLetter(topic), keys.Topic(topic)
	var letters []DeadLetter
	if len(ids) == 0 {
		var err error
		if letters, err = ListDeadLetters(ctx, c, prefix, topic, 0); err != nil {
			return 0, err
		}
	} else {
		for _, id := range ids {
			entries, err := c.Do(ctx, c.B().Xrange().Key(dlq).Start(id).End(id).Build()).AsXRange()
			if err != nil {
				return 0, fmt.Errorf("consumer: read dead letter %s: %w", id, err)
			}
			if len(entries) == 0 {
				return 0, fmt.Errorf("consumer: no dead letter %s in %s", id, dlq)
			}
			letters = append(letters, parseDeadLetter(entries[0].ID, entries[0].FieldValues))
		}
	}
	var errs []error
	n := 0
	for _, d := range letters {
		if d.Envelope == nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.ID, ErrNotReplayable))
			continue
		}
		env := *d.Envelope
		env.Attempt = 0
		h := make(map[string]string, len(env.Headers)+1)
		for k, v := range env.Headers {
			h[k] = v
		}
		h[ReplayedFromHeader] = d.ID
		env.Headers = h
		data := codec.AppendEnvelope(nil, &env)
		if err := replayScript.Exec(ctx, c, []string{stream, dlq}, []string{bus.Field, rueidis.BinaryString(data), d.ID}).Error(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.ID, err))
			continue
		}
		n++
	}
	if errs != nil {
		return n, fmt.Errorf("consumer: replay dead letters of %s: %w", topic, errors.Join(errs...))
	}
	return n, nil
}

// PurgeDeadLetters deletes topic's dead letters older than olderThan (all
// of them when olderThan <= 0) and returns how many it deleted.
func PurgeDeadLetters(ctx context.Context, c rueidis.Client, prefix, topic string, olderThan time.Duration) (int64, error) {
	key := bus.Keys{Prefix: prefix}.DeadLetter(topic)
	if olderThan <= 0 {
		n, err := c.Do(ctx, c.B().Xlen().Key(key).Build()).AsInt64()
		if err != nil {
			return 0, fmt.Errorf("consumer: purge dead letters of %s: %w", topic, err)
		}
		if err := c.Do(ctx, c.B().Del().Key(key).Build()).Error(); err != nil {
			return 0, fmt.Errorf("consumer: purge dead letters of %s: %w", topic, err)
		}
		return n, nil
	}
	minID := strconv.FormatInt(time.Now().Add(-olderThan).UnixMilli(), 10) + "-0"
	n, err := c.Do(ctx, c.B().Xtrim().Key(key).Minid().Threshold(minID).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("consumer: purge dead letters of %s: %w", topic, err)
	}
	return n, nil
}
