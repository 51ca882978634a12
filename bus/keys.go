package bus

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/egos/mycelium/internal/redisx"
)

// Keys builds every Redis key Mycelium uses, and parses them back: it is the
// only place that concatenates or takes apart key strings. Every key carries
// a hash tag so that a topic, its dead letters and its cache share
// one Redis Cluster slot. docs/wire.md lists the layout.
//
// Keys is a small value; the zero value uses DefaultPrefix.
type Keys struct {
	Prefix string
}

func (k Keys) prefix() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return k.Prefix
}

// Topic returns the stream of a topic's requests and events: prefix:{topic}.
func (k Keys) Topic(topic string) string { return k.prefix() + ":{" + topic + "}" }

// Reply returns the reply stream of one producer: prefix:{r.<name>}, name
// being "<owner>.<producer id>" for a producer with an owner (its ACL
// user: the producer role reads only its own user's reply streams,
// prefix:{r.<owner>.*}) and its id alone otherwise.
func (k Keys) Reply(name string) string { return k.prefix() + ":{r." + name + "}" }

// DeadLetter returns a topic's dead-letter stream: prefix:{topic}:dlq.
func (k Keys) DeadLetter(topic string) string { return k.Topic(topic) + dlqSuffix }

const dlqSuffix = ":dlq"

// Workers returns the presence set of a topic's workers:
// prefix:{topic}:workers (a sorted set: each consumer and when it last
// announced itself; producers read it to fail fast when nobody serves the
// topic).
func (k Keys) Workers(topic string) string { return k.Topic(topic) + ":workers" }

// Control returns a topic's control stream: prefix:{topic}:ctl. Producers
// write to it what every worker of the topic must hear at once (a caller
// cancelled a request, a delayed entry was added); every worker reads it
// (XREAD, no group). It lives in partition 0's slot.
func (k Keys) Control(topic string) string { return k.Topic(topic) + ":ctl" }

// Delayed returns the sorted set of a partition's delayed entries:
// prefix:{partition}:delayed (member "<id>:<encoded envelope>", score the
// unix milliseconds when it is due; workers move due entries to the
// partition's stream). It shares the partition's hash tag, so one script
// moves entries from it to the stream.
func (k Keys) Delayed(partition string) string { return k.Topic(partition) + ":delayed" }

// Once returns the key recording an idempotent publish to a partition:
// prefix:{partition}:once:<hash> (a string: the entry id the first publish
// with that idempotency key got, expiring with the topic's window; hash is
// IdempotencyHash of the key). It shares the partition's hash tag, so one
// script checks it and writes the stream.
func (k Keys) Once(partition, hash string) string { return k.Topic(partition) + ":once:" + hash }

// The state of a topic's fleet-wide limiter (docs/flow-control.md) lives on
// the topic's hash tag (not a partition's: one limiter serves every
// partition); the limits themselves are fields of the topic's Meta hash.

// LimitRate returns prefix:{topic}:lim:rate, the rate's GCRA arrival time
// (a string, unix ms).
func (k Keys) LimitRate(topic string) string { return k.Topic(topic) + ":lim:rate" }

// LimitTokens returns prefix:{topic}:lim:tokens, the token budget's GCRA
// arrival time (a string, unix ms).
func (k Keys) LimitTokens(topic string) string { return k.Topic(topic) + ":lim:tokens" }

// LimitLeases returns prefix:{topic}:lim:leases, a hash: consumer ->
// concurrency leases it holds.
func (k Keys) LimitLeases(topic string) string { return k.Topic(topic) + ":lim:leases" }

// LimitExpiry returns prefix:{topic}:lim:expiry, a sorted set: consumer ->
// when its leases lapse (unix ms).
func (k Keys) LimitExpiry(topic string) string { return k.Topic(topic) + ":lim:expiry" }

// Level returns the stream of priority level l of a partition (a topic
// with priorities, docs/scheduling.md): the partition's own stream for
// level 0, prefix:{partition}:p<l> for the others (same hash tag: one
// slot, so a read covers a partition's levels and the cached path's
// scripts write any of them).
func (k Keys) Level(partition string, l int) string {
	if l == 0 {
		return k.Topic(partition)
	}
	return k.Topic(partition) + levelSuffix(l)
}

// LevelDelayed is Delayed for priority level l of a partition:
// prefix:{partition}:p<l>:delayed (Delayed(partition) for level 0).
func (k Keys) LevelDelayed(partition string, l int) string {
	if l == 0 {
		return k.Delayed(partition)
	}
	return k.Level(partition, l) + ":delayed"
}

// LevelRetry is Retry for priority level l of a partition:
// prefix:{partition}:p<l>:retry (Retry(partition) for level 0).
func (k Keys) LevelRetry(partition string, l int) string {
	if l == 0 {
		return k.Retry(partition)
	}
	return k.Level(partition, l) + ":retry"
}

func levelSuffix(l int) string { return ":p" + strconv.Itoa(l) }

// MaxPriorities bounds a topic's priority levels (0..MaxPriorities-1).
const MaxPriorities = redisx.MaxLevels

// Retry returns the sorted set of a partition's delayed retries:
// prefix:{partition}:retry (member a pending entry's id, score the unix
// milliseconds when it is to be delivered again).
func (k Keys) Retry(partition string) string { return k.Topic(partition) + ":retry" }

// Pattern returns a SCAN MATCH pattern for every key under the prefix:
// topic, dead-letter and reply streams (tell them apart with ParseTopic,
// ParseDeadLetter and ParseReply).
func (k Keys) Pattern() string { return k.prefix() + ":{*" }

// ParseTopic returns the topic of a topic stream key, and false for any
// other key (reply streams, dead letters, foreign keys).
func (k Keys) ParseTopic(key string) (string, bool) {
	t, ok := k.tag(key)
	if !ok || strings.HasPrefix(t, "r.") {
		return "", false
	}
	return t, true
}

// ParseLevel returns the partition name and level of a priority level's
// stream key (Level with l > 0), and false for any other key.
func (k Keys) ParseLevel(key string) (string, int, bool) {
	i := strings.LastIndex(key, ":p")
	if i < 0 || len(key) != i+3 || key[i+2] < '1' || key[i+2] > '9' {
		return "", 0, false
	}
	t, ok := k.ParseTopic(key[:i])
	if !ok {
		return "", 0, false
	}
	return t, int(key[i+2] - '0'), true
}

// ParseDeadLetter returns the topic of a dead-letter stream key, and false
// for any other key.
func (k Keys) ParseDeadLetter(key string) (string, bool) {
	rest, ok := strings.CutSuffix(key, dlqSuffix)
	if !ok {
		return "", false
	}
	return k.ParseTopic(rest)
}

// ParseReply returns the name of a reply stream key ("<owner>.<producer
// id>", or the producer id), and false for any other key.
func (k Keys) ParseReply(key string) (string, bool) {
	t, ok := k.tag(key)
	if !ok {
		return "", false
	}
	id, ok := strings.CutPrefix(t, "r.")
	if !ok || id == "" {
		return "", false
	}
	return id, true
}

// tag returns the hash tag of prefix:{tag}, rejecting tags that no builder
// makes.
func (k Keys) tag(key string) (string, bool) {
	p := k.prefix() + ":{"
	if !strings.HasPrefix(key, p) || !strings.HasSuffix(key, "}") {
		return "", false
	}
	t := key[len(p) : len(key)-1]
	if t == "" || strings.ContainsAny(t, "{}") {
		return "", false
	}
	return t, true
}

// ValidateName checks a name of the given kind ("topic", "group",
// "consumer", "producer", "prefix"): non-empty, at most 200 bytes, no braces
// (they would break the hash tag), no spaces or control characters, valid
// UTF-8; a topic also must not start with "r." (its stream key would be a
// reply stream's) nor hold '#' (it separates a topic from its partition
// number), and a prefix holds no glob character (*?[]\: operator scans
// match keys by it).
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s name is empty", ErrInvalidConfig, kind)
	}
	if kind == "prefix" && strings.ContainsAny(name, `*?[]\`) {
		return fmt.Errorf("%w: prefix %q contains a glob character (*?[]\\): SCAN patterns would match other keys", ErrInvalidConfig, name)
	}
	if kind == "topic" && strings.Contains(name, PartitionSep) {
		return fmt.Errorf("%w: topic name %q contains %q, which separates a topic from its partition number", ErrInvalidConfig, name, PartitionSep)
	}
	if kind == "topic" && strings.HasPrefix(name, "r.") {
		return fmt.Errorf("%w: topic name %q starts with \"r.\", which reply streams use", ErrInvalidConfig, name)
	}
	if len(name) > 200 {
		return fmt.Errorf("%w: %s name is longer than 200 bytes", ErrInvalidConfig, kind)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %s name %q is not valid UTF-8", ErrInvalidConfig, kind, name)
	}
	for _, r := range name {
		if r == '{' || r == '}' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("%w: %s name %q contains %q", ErrInvalidConfig, kind, name, r)
		}
	}
	return nil
}

// PartitionSep separates a topic from its partition number in a partition's
// name (see Partition).
const PartitionSep = "#"

// MaxPartitions bounds a topic's partition count.
const MaxPartitions = redisx.MaxPartitions

// Partition returns the name of partition p of topic: the topic itself for
// partition 0 (so a topic that was never partitioned is its own partition
// 0, and raising its count strands nothing), "topic#p" otherwise. Every key
// builder takes a partition's name where it takes a topic: partition p's
// stream is Topic(Partition(t, p)) = prefix:{t#p}, its dead letters, cache
// entries, flights and cache metadata share that hash tag, so each
// partition may live on its own Redis Cluster node.
func Partition(topic string, p int) string {
	if p == 0 {
		return topic
	}
	return topic + PartitionSep + strconv.Itoa(p)
}

// ParsePartition splits a partition's name into its topic and number;
// ok is false when the number is not canonical (leading zeros, sign, 0,
// MaxPartitions or more).
func ParsePartition(name string) (topic string, p int, ok bool) {
	t, num, found := strings.Cut(name, PartitionSep)
	if !found {
		return name, 0, name != ""
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 || n >= MaxPartitions || strconv.Itoa(n) != num || t == "" {
		return "", 0, false
	}
	return t, n, true
}

// PriorityHeader carries a message's priority level (producer.Priority),
// when above 0: a dead letter is replayed to its level.
const PriorityHeader = "myc-priority"

// TenantHeader carries the tenant a message was sent for
// (producer.Tenant).
const TenantHeader = "myc-tenant"

// CostHeader is the message header carrying the caller's estimate of what
// handling a message costs, in the units of its topic's token budget
// (producer.Cost sets it; workers charge it: docs/flow-control.md).
const CostHeader = "myc-cost"
