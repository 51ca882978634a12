package inspect

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// DefaultFindScan is how many of a stream's newest entries Find reads, by
// default, looking for a correlation id.
const DefaultFindScan = 2000

// maxFindScan bounds FindOptions.Scan: each entry read carries its payload.
const maxFindScan = 1_000_000

// findPage is how many entries one read of a correlation-id scan takes.
const findPage = 500

// entryIDPattern matches a stream entry id ("<ms>-<seq>", or "<ms>" for
// every entry of that millisecond).
var entryIDPattern = regexp.MustCompile(`^[0-9]{1,20}(-[0-9]{1,20})?$`)

// FindOptions narrows Find.
type FindOptions struct {
	// Topic limits the search to one topic; "" searches Topics, or every
	// topic under the prefix when Topics is nil (found with SCAN).
	Topic  string
	Topics []string
	// Scan is how many of each stream's newest entries (and each
	// dead-letter stream's oldest) a correlation-id search reads; 0 means
	// DefaultFindScan. An entry-id search reads only the id asked for in
	// the streams, and Scan dead letters.
	Scan int
}

// Delivery is where a found entry stands in one consumer group.
type Delivery struct {
	Group string
	// State is "pending" (delivered, not yet acknowledged: Consumer holds
	// it), "acknowledged" or "waiting" (not yet delivered to the group).
	State      string
	Consumer   string
	Idle       time.Duration
	Deliveries int64
}

// Found is one entry Find matched.
type Found struct {
	Topic     string
	Partition int
	Level     int
	// In is "stream" (an entry of the topic's stream, with Deliveries) or
	// "dead-letters" (with DeadLetter).
	In string
	ID string // the entry's id in that stream
	// Envelope is the entry decoded; nil when it does not decode, then Raw
	// holds its data as stored (for a stream entry).
	Envelope   *codec.Envelope
	Raw        string
	Deliveries []Delivery
	DeadLetter *DeadLetter
}

// Find looks for a message by entry id ("1733560000000-0") or by
// correlation id (a request's id, as producers and replies carry it), in
// the topic streams (each partition and priority level) and the dead
// letters. An entry id is read directly, O(log n) per stream; a correlation
// id is looked for among each stream's Scan newest entries, so a message
// older than that is not found (raise Scan). Matches come topic by topic,
// stream entries before dead letters.
func (i *Inspector) Find(ctx context.Context, query string, o FindOptions) ([]Found, error) {
	if query == "" || len(query) > 200 {
		return nil, fmt.Errorf("inspect: find: %w: want an entry id or a correlation id of 1 to 200 bytes", bus.ErrInvalidConfig)
	}
	if o.Scan < 0 || o.Scan > maxFindScan {
		return nil, fmt.Errorf("inspect: find: %w: scan %d, want 0 to %d", bus.ErrInvalidConfig, o.Scan, maxFindScan)
	}
	if o.Scan == 0 {
		o.Scan = DefaultFindScan
	}
	topics := []string{o.Topic}
	switch {
	case o.Topic != "":
	case o.Topics != nil:
		topics = o.Topics
	default:
		var err error
		if topics, err = i.Topics(ctx); err != nil {
			return nil, err
		}
	}
	byID := entryIDPattern.MatchString(query)
	var out []Found
	for _, t := range topics {
		ps, err := i.partitions(ctx, t)
		if err != nil {
			return out, err
		}
		for _, key := range ps.Streams {
			part, level := t, 0
			if p, l, ok := i.keys.ParseLevel(key); ok {
				part, level = p, l
			} else if p, ok := i.keys.ParseTopic(key); ok {
				part = p
			}
			_, pnum, _ := bus.ParsePartition(part)
			found, err := i.findIn(ctx, key, query, byID, o.Scan)
			if err != nil {
				return out, fmt.Errorf("inspect: find in %s: %w", key, redisx.Unavailable(err))
			}
			for k := range found {
				found[k].Topic, found[k].Partition, found[k].Level = t, pnum, level
				if err := i.deliveries(ctx, key, i.keys.DeadLetter(part), &found[k]); err != nil {
					return out, err
				}
			}
			out = append(out, found...)
		}
		for k, pn := range ps.names() {
			found, err := i.findDead(ctx, i.keys.DeadLetter(pn), query, o.Scan)
			if err != nil {
				return out, fmt.Errorf("inspect: find in the dead letters of %s: %w", pn, redisx.Unavailable(err))
			}
			for _, d := range found {
				d.Partition = k
				out = append(out, Found{Topic: t, Partition: k, In: "dead-letters", ID: d.ID, Envelope: d.Envelope, DeadLetter: &d})
			}
		}
	}
	return out, nil
}

// findDead returns the dead letters of key (up to scan, oldest first, read
// a page at a time) whose id, original id or correlation id is query.
func (i *Inspector) findDead(ctx context.Context, key, query string, scan int) ([]DeadLetter, error) {
	var out []DeadLetter
	start := "-"
	for read := 0; read < scan; {
		n := min(findPage, scan-read)
		raw, err := i.port.DeadLetters(ctx, key, start, "+", int64(n))
		if err != nil {
			return nil, err
		}
		for j := range raw {
			var env codec.Envelope
			decoded := raw[j].HasData && codec.DecodeEnvelope(raw[j].Data, &env) == nil
			if raw[j].ID == query || raw[j].OriginalID == query || (decoded && env.ID == query) {
				out = append(out, deadLetter(&raw[j])) // decoded (and decompressed) again: only the matches
			}
		}
		read += len(raw)
		if len(raw) < n {
			break
		}
		start = "(" + raw[len(raw)-1].ID
	}
	return out, nil
}

// findIn returns the entries of one stream that match query.
func (i *Inspector) findIn(ctx context.Context, key, query string, byID bool, scan int) ([]Found, error) {
	var out []Found
	match := func(es []redisx.Entry, want func(*Found) bool) {
		for _, e := range es {
			if e.Deleted {
				continue
			}
			f := Found{In: "stream", ID: e.ID}
			var env codec.Envelope
			if e.HasData && codec.DecodeEnvelope(e.Data, &env) == nil {
				f.Envelope = &env
			} else {
				f.Raw = e.Data
			}
			if want(&f) {
				if f.Envelope != nil {
					_ = codec.Decompress(f.Envelope, maxDecompressed) // only a match; shown compressed when it does not decompress
				}
				out = append(out, f)
			}
		}
	}
	if byID {
		es, err := i.port.Range(ctx, key, query, query, findPage, false)
		if err != nil {
			return nil, err
		}
		match(es, func(*Found) bool { return true })
		return out, nil
	}
	start := "+"
	for read := 0; read < scan; {
		n := min(findPage, scan-read)
		es, err := i.port.Range(ctx, key, start, "-", int64(n), true)
		if err != nil {
			return nil, err
		}
		match(es, func(f *Found) bool { return f.Envelope != nil && f.Envelope.ID == query })
		read += len(es)
		if len(es) < n {
			break
		}
		start = "(" + es[len(es)-1].ID
	}
	return out, nil
}

// deliveries fills in where f stands in each group of its stream key.
func (i *Inspector) deliveries(ctx context.Context, key, dlq string, f *Found) error {
	si, err := i.port.Info(ctx, key, dlq)
	if err != nil {
		return fmt.Errorf("inspect: find: groups of %s: %w", key, redisx.Unavailable(err))
	}
	for _, g := range si.Groups {
		d := Delivery{Group: g.Name, State: "waiting"}
		ps, err := i.port.PendingOf(ctx, key, g.Name, f.ID, f.ID, 1, "")
		switch {
		case err != nil:
			return fmt.Errorf("inspect: find: pending of %s/%s: %w", key, g.Name, redisx.Unavailable(err))
		case len(ps) == 1:
			d.State, d.Consumer, d.Idle, d.Deliveries = "pending", ps[0].Consumer, ps[0].Idle, ps[0].Deliveries
		case redisx.CompareIDs(f.ID, g.LastDeliveredID) <= 0:
			d.State = "acknowledged"
		}
		f.Deliveries = append(f.Deliveries, d)
	}
	return nil
}
