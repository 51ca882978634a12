package redisx

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Dead-letter entry fields (docs/wire.md). An entry of a topic's dead-letter
// stream holds these, then the original encoded envelope in Field when there
// was one (so it can be replayed exactly), or else the original entry's
// fields as RawFieldPrefix+name.
const (
	DLQOriginalID  = "id"       // stream id of the original entry
	DLQTopic       = "topic"    // topic it was read from
	DLQGroup       = "group"    // consumer group
	DLQConsumer    = "consumer" // consumer that gave up on it
	DLQReason      = "reason"   // malformed | handler_error | max_deliveries
	DLQError       = "error"    // the error text
	DLQAttempts    = "attempts" // deliveries so far
	DLQTime        = "time"     // RFC 3339 time it was dead-lettered
	DLQSize        = "size"     // oversized entries: the original data's size in bytes
	DLQPrefix      = "prefix"   // oversized entries: the first bytes of the original data (at most OversizedPrefix)
	RawFieldPrefix = "f."
)

// OversizedPrefix is how much of an oversized entry's data its dead letter
// keeps: copying it whole would double the memory it already costs.
const OversizedPrefix = 1024

// DeadLetterOversized is the dead letter of an entry too large to handle:
// its size and the first OversizedPrefix bytes of its data, not the data
// (it cannot be replayed).
func DeadLetterOversized(e *Entry, d DeadLetter) []string {
	d.OriginalID = e.ID
	p := e.Data
	if len(p) > OversizedPrefix {
		p = p[:OversizedPrefix]
	}
	return append(d.Fields(), DLQSize, strconv.Itoa(len(e.Data)), DLQPrefix, p)
}

// DeadLetter is one dead-letter entry: why an entry was given up, and what it
// held.
type DeadLetter struct {
	ID         string // id in the dead-letter stream; empty when writing
	OriginalID string
	Topic      string
	Group      string
	Consumer   string
	Reason     string
	Error      string
	Attempts   int
	Time       time.Time
	// Data is the original envelope (Field) and HasData says there was one;
	// otherwise Raw holds the original entry's fields.
	Data    string
	HasData bool
	Raw     map[string]string
	// Size and Prefix are, for an entry dead-lettered as too large
	// (DeadLetterOversized), its data's size and first bytes.
	Size   int
	Prefix string
}

// Fields is d as an entry's field/value list: the header fields, then Field
// with Data when HasData (DeadLetterOf adds raw fields instead).
func (d *DeadLetter) Fields() []string {
	fv := []string{
		DLQOriginalID, d.OriginalID, DLQTopic, d.Topic, DLQGroup, d.Group, DLQConsumer, d.Consumer,
		DLQReason, d.Reason, DLQError, d.Error, DLQAttempts, strconv.Itoa(d.Attempts),
		DLQTime, d.Time.UTC().Format(time.RFC3339Nano),
	}
	if d.HasData {
		return append(fv, Field, d.Data)
	}
	return fv
}

// DeadLetterOf is the dead letter of an entry read from a stream that has no
// decodable envelope: its fields travel with it.
func DeadLetterOf(e *Entry, d DeadLetter) []string {
	d.OriginalID = e.ID
	if e.HasData {
		d.Data, d.HasData = e.Data, true
		return d.Fields()
	}
	fv := d.Fields()
	raw := e.Fields()
	for i := 0; i+1 < len(raw); i += 2 {
		fv = append(fv, RawFieldPrefix+raw[i], raw[i+1])
	}
	return fv
}

// parseDeadLetter reads one dead-letter entry's fields. Nothing in it is
// trusted: missing or malformed fields are left zero.
func parseDeadLetter(id string, f map[string]string) DeadLetter {
	d := DeadLetter{ID: id, OriginalID: f[DLQOriginalID], Topic: f[DLQTopic], Group: f[DLQGroup], Consumer: f[DLQConsumer],
		Reason: f[DLQReason], Error: f[DLQError]}
	d.Attempts, _ = strconv.Atoi(f[DLQAttempts])
	d.Size, _ = strconv.Atoi(f[DLQSize])
	d.Prefix = f[DLQPrefix]
	d.Time, _ = time.Parse(time.RFC3339Nano, f[DLQTime])
	d.Data, d.HasData = f[Field]
	for k, v := range f {
		if raw, ok := strings.CutPrefix(k, RawFieldPrefix); ok {
			if d.Raw == nil {
				d.Raw = map[string]string{}
			}
			d.Raw[raw] = v
		}
	}
	return d
}

// DeadLetters reads the dead letters of key from start to end (XRANGE ids,
// "-" and "+" for all), at most count (count <= 0: all), oldest first.
func DeadLetters(ctx context.Context, c rueidis.Client, key, start, end string, count int64) ([]DeadLetter, error) {
	q := c.B().Xrange().Key(key).Start(start).End(end)
	var cmd rueidis.Completed
	if count > 0 {
		cmd = q.Count(count).Build()
	} else {
		cmd = q.Build()
	}
	entries, err := c.Do(ctx, cmd).AsXRange()
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(entries))
	for _, e := range entries {
		out = append(out, parseDeadLetter(e.ID, e.FieldValues))
	}
	return out, nil
}

// replayScript appends one envelope to the topic stream and then deletes
// its dead letter, atomically. A MULTI/EXEC would be atomic too, but it
// runs the XDEL even when the XADD fails while running (the topic key is
// not a stream: WRONGTYPE) and the dead letter would be lost; in a script
// the failed XADD raises before the XDEL.
var replayScript = newScript("replay", `if #redis.call('XRANGE', KEYS[2], ARGV[3], ARGV[3]) == 0 then return false end
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[3])
return id`)

// Replay appends data (an encoded envelope) to the stream and deletes the
// dead letter id from dlq, in one atomic script (both keys share a hash
// slot); the dead letter is deleted only if the write succeeded, and
// nothing is written when the dead letter is gone (ErrDeadLetterGone: two
// replays of one letter at once write it once). It returns the new entry's
// id.
func Replay(ctx context.Context, c rueidis.Client, stream, dlq, id string, data []byte) (string, error) {
	id, err := replayScript.Exec(ctx, c, []string{stream, dlq}, []string{Field, rueidis.BinaryString(data), id}).ToString()
	if rueidis.IsRedisNil(err) {
		return "", ErrDeadLetterGone
	}
	return id, err
}

// ErrDeadLetterGone is Replay finding no dead letter of that id (replayed or
// purged meanwhile): nothing was written.
var ErrDeadLetterGone = errors.New("redis: the dead letter is gone (replayed or purged meanwhile)")

// purgeScript deletes a stream and returns how many entries it had, in one
// step (nothing added between the count and the delete is lost unseen).
var purgeScript = newScript("purge", `local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n`)

// Purge deletes the stream key and returns how many entries it held.
func Purge(ctx context.Context, c rueidis.Client, key string) (int64, error) {
	return purgeScript.Exec(ctx, c, []string{key}, nil).AsInt64()
}
