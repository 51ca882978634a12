package inspect

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// ReplayedFromHeader is set on a replayed message to the dead-letter entry
// id it came from, so a handler can tell a replay from a first delivery.
const ReplayedFromHeader = "mycelium-replayed-from"

// maxDecompressed bounds a compressed payload an operator's read decodes
// (dead letters, Find): a larger one stays compressed in the envelope (its
// flag says so), and a page of 1,000 dead letters decodes at most 1 GiB.
const maxDecompressed = 1 << 20

// DeadLetter is one entry of a topic's dead-letter stream: an entry a
// consumer gave up on, and why. The JSON names are what `bus-worker dlq list
// --json` prints.
type DeadLetter struct {
	ID         string    `json:"id"`          // id in the dead-letter stream
	Partition  int       `json:"partition"`   // the topic's partition it came from (ids are unique per partition)
	OriginalID string    `json:"original_id"` // id it had on the topic stream
	Topic      string    `json:"topic"`
	Group      string    `json:"group"`
	Consumer   string    `json:"consumer"`
	Reason     string    `json:"reason"` // malformed | handler_error | max_deliveries
	Error      string    `json:"error"`
	Attempts   int       `json:"attempts"`
	Time       time.Time `json:"time"`
	// Envelope is the original message when it could be decoded; nil for
	// malformed entries, whose raw fields are in Fields. A compressed
	// payload is decompressed when it decodes to at most 1 MiB; a larger one
	// stays compressed (codec.Compressed says so).
	Envelope *codec.Envelope `json:"envelope,omitempty"`
	// Compression is how the message was stored compressed ("s2", "zstd";
	// "" when not): Envelope holds it decompressed, and a replay writes it
	// compressed again. When Envelope is still compressed (larger than an
	// operator's read decodes), codec.Compressed(Envelope) says so.
	Compression string            `json:"compression,omitempty"`
	Fields      map[string]string `json:"fields,omitempty"`
	// Size and Prefix describe an entry too large to handle: its data's
	// size and first bytes (its data is not kept).
	Size   int    `json:"size,omitempty"`
	Prefix string `json:"prefix,omitempty"`
}

// deadLetter turns a dead-letter entry into a DeadLetter, decoding (and so
// validating) its envelope.
func deadLetter(d *redisx.DeadLetter) DeadLetter {
	out := DeadLetter{ID: d.ID, OriginalID: d.OriginalID, Topic: d.Topic, Group: d.Group, Consumer: d.Consumer,
		Reason: d.Reason, Error: d.Error, Attempts: d.Attempts, Time: d.Time, Size: d.Size, Prefix: d.Prefix}
	if d.HasData {
		var env codec.Envelope
		if codec.DecodeEnvelope(d.Data, &env) == nil {
			if comp := codec.CompressionOf(&env); comp != codec.CompressNone && codec.Decompress(&env, maxDecompressed) == nil {
				out.Compression = comp.String() // shown decompressed, replayed compressed again
			}
			out.Envelope = &env
			return out
		}
	}
	out.Fields = maps.Clone(d.Raw)
	if out.Fields == nil {
		out.Fields = map[string]string{}
	}
	if d.HasData { // present but undecodable: show it as it is
		out.Fields[redisx.Field] = d.Data
	}
	return out
}

// DeadLetters returns up to limit entries of topic's dead-letter streams
// (one per partition), oldest first (limit <= 0: all of them, which costs
// O(length)).
func (i *Inspector) DeadLetters(ctx context.Context, topic string, limit int) ([]DeadLetter, error) {
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	for k, pn := range ps.names() {
		raw, err := i.port.DeadLetters(ctx, i.keys.DeadLetter(pn), "-", "+", int64(limit))
		if err != nil {
			return nil, fmt.Errorf("inspect: dead letters of %s: %w", pn, redisx.Unavailable(err))
		}
		for j := range raw {
			d := deadLetter(&raw[j])
			d.Partition = k
			out = append(out, d)
		}
	}
	slices.SortStableFunc(out, func(a, b DeadLetter) int { return redisx.CompareIDs(a.ID, b.ID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// ReplayDeadLetters puts dead letters back on their topic as new entries,
// with ReplayedFromHeader set, and deletes them from the dead-letter stream,
// each in one atomic script that deletes only after the write succeeded (a
// fresh entry starts its delivery count at 1). ids selects entries; none
// means all. It returns how many were replayed; entries that cannot be
// replayed are reported in the error (wrapping bus.ErrNotReplayable or
// bus.ErrNotFound) and left in place.
func (i *Inspector) ReplayDeadLetters(ctx context.Context, topic string, ids ...string) (int, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return 0, fmt.Errorf("inspect: %w", err)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return 0, err
	}
	names := ps.names()
	var letters []DeadLetter
	var errs []error
	if len(ids) == 0 {
		var err error
		if letters, err = i.DeadLetters(ctx, topic, 0); err != nil {
			return 0, err
		}
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			continue // asked twice: replayed once
		}
		seen[id] = true
		found := false
		for k, pn := range names { // ids are unique per partition: each one's letter
			raw, err := i.port.DeadLetters(ctx, i.keys.DeadLetter(pn), id, id, 1)
			if err != nil {
				return 0, fmt.Errorf("inspect: read dead letter %s: %w", id, redisx.Unavailable(err))
			}
			if len(raw) > 0 {
				d := deadLetter(&raw[0])
				d.Partition = k
				letters = append(letters, d)
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("%s: %w", id, bus.ErrNotFound))
		}
	}
	n := 0
	for _, d := range letters {
		if d.Envelope == nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.ID, bus.ErrNotReplayable))
			continue
		}
		env := *d.Envelope
		env.Headers = maps.Clone(env.Headers)
		if env.Headers == nil {
			env.Headers = make(map[string]string, 1)
		}
		env.Headers[ReplayedFromHeader] = d.ID
		if d.Compression != "" {
			c, _ := codec.ParseCompression(d.Compression)
			codec.Compress(&env, c, 0) // as it was stored
		}
		// Back to the partition it came from (a removed partition is read
		// until drained, and forgotten only once its dead letters are gone).
		// At its priority level, as its producer sent it (a level beyond
		// the topic's: its least urgent).
		pn := bus.Partition(topic, d.Partition)
		level := 0
		if l, err := strconv.Atoi(env.Headers[bus.PriorityHeader]); err == nil && l > 0 && ps.Levels > 1 {
			level = min(l, ps.Levels-1)
		}
		if _, err := i.port.Replay(ctx, i.keys.Level(pn, level), i.keys.DeadLetter(pn), d.ID, codec.AppendEnvelope(nil, &env)); err != nil {
			if errors.Is(err, redisx.ErrDeadLetterGone) {
				err = fmt.Errorf("%w: replayed or purged meanwhile", bus.ErrNotFound)
			} else {
				err = redisx.Unavailable(err)
			}
			errs = append(errs, fmt.Errorf("%s: %w", d.ID, err))
			continue
		}
		n++
	}
	if errs != nil {
		return n, fmt.Errorf("inspect: replay dead letters of %s: %w", topic, errors.Join(errs...))
	}
	return n, nil
}

// PurgeDeadLetters deletes topic's dead letters older than olderThan (all
// of them when olderThan <= 0) and returns how many it deleted.
func (i *Inspector) PurgeDeadLetters(ctx context.Context, topic string, olderThan time.Duration) (int64, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return 0, fmt.Errorf("inspect: %w", err)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, pn := range ps.names() {
		key := i.keys.DeadLetter(pn)
		var n int64
		if olderThan <= 0 {
			n, err = i.port.Purge(ctx, key)
		} else {
			n, err = i.port.Trim(ctx, key, 0, olderThan)
		}
		if err != nil {
			return total, fmt.Errorf("inspect: purge dead letters of %s: %w", pn, redisx.Unavailable(err))
		}
		total += n
	}
	return total, nil
}
