package producer

// Options per verb: each verb takes its own option interface, and each
// option implements the interfaces of the verbs it applies to, so an option
// that makes no sense for a verb does not compile (Request(..., After(d)),
// a cache option on Publish):
//
//	option                                      Publish(Batch)  Request(Batch)  Stream
//	WithHeaders, PartitionKey, Cost (CallOption) yes            yes             yes
//	WaitForResponders (WaitOption)              -               yes             yes
//	After, At (DelayOption)                     yes             -               -
//	IdempotencyKey, WithPublishInfo (OnceOption) Publish only   -               -
//	NoCache, NoStore, MaxAge, CacheKey,
//	WithCacheInfo (CacheOption)                 -               yes             -
//
// RequestBatch refuses WithCacheInfo at run time (one CacheInfo cannot
// describe a batch's answers).

import "github.com/egos/mycelium/bus"

// PublishOption adjusts one Publish or PublishBatch.
type PublishOption interface{ publishOption(*callOptions) }

// RequestOption adjusts one Request or RequestBatch.
type RequestOption interface{ requestOption(*callOptions) }

// StreamOption adjusts one Stream.
type StreamOption interface{ streamOption(*callOptions) }

// CallOption applies to every verb: WithHeaders, PartitionKey.
type CallOption func(*callOptions)

func (o CallOption) publishOption(co *callOptions) { o(co) }
func (o CallOption) requestOption(co *callOptions) { o(co) }
func (o CallOption) streamOption(co *callOptions)  { o(co) }

// WaitOption applies to the verbs that wait for a worker's answer:
// Request, RequestBatch and Stream (WaitForResponders).
type WaitOption func(*callOptions)

func (o WaitOption) requestOption(co *callOptions) { o(co) }
func (o WaitOption) streamOption(co *callOptions)  { o(co) }

// DelayOption applies to events only: Publish and PublishBatch (After, At).
type DelayOption func(*callOptions)

func (o DelayOption) publishOption(co *callOptions) { o(co) }

// OnceOption applies to Publish (IdempotencyKey, WithPublishInfo);
// PublishBatch refuses it at run time (bus.ErrInvalidConfig: one key or one
// PublishInfo cannot describe a batch).
type OnceOption func(*callOptions)

func (o OnceOption) publishOption(co *callOptions) { o(co) }

// IdempotencyKey makes a Publish idempotent within the topic's window
// (Config.IdempotencyWindow, 2 minutes by default): a second Publish with
// the same key within it writes nothing and returns the first one's entry
// id (WithPublishInfo tells it was a duplicate). The check and the write
// are one script on the partition's hash tag: concurrent publishes from any
// number of producers write one entry. Without a PartitionKey the key picks
// the partition, so duplicates meet. An empty key is no key. Not with
// After or At (bus.ErrInvalidConfig).
func IdempotencyKey(k string) OnceOption {
	return func(co *callOptions) { co.once = k }
}

// PublishInfo is what a Publish did: its entry id, and whether it was a
// duplicate of an earlier idempotent publish (nothing written).
type PublishInfo struct {
	ID        string
	Duplicate bool
}

// WithPublishInfo fills info when the Publish returns without error.
func WithPublishInfo(info *PublishInfo) OnceOption {
	return func(co *callOptions) { co.pubInfo = info }
}

// CacheOption applies to the response cache's verbs: Request and
// RequestBatch (NoCache, NoStore, MaxAge, CacheKey, WithCacheInfo). Streams
// bypass the cache.
type CacheOption func(*callOptions)

func (o CacheOption) requestOption(co *callOptions) { o(co) }

// WithHeaders attaches headers (for example trace context) to the message.
// The map is read, not kept, during the call.
func WithHeaders(h map[string]string) CallOption {
	return func(co *callOptions) { co.headers = h }
}

// Cost estimates what handling the message costs, in the units of its
// topic's token budget (bus-worker limit set --tokens; a model's tokens,
// say): the budget is charged this when a worker starts the message, and
// corrected by what the handler reports (consumer.Message.ReportCost). It
// travels as the header CostHeader. Negative counts as 0.
func Cost(n int64) CallOption {
	return func(co *callOptions) { co.cost, co.hasCost = max(n, 0), true }
}

// Priority sends the message at priority level (0 the most urgent) on a
// topic with priority levels (bus-worker topic create --priorities N,
// docs/scheduling.md): workers serve the levels by their weights, in
// order within a level. A level beyond the topic's goes to its least
// urgent level; a topic without levels ignores it; a message without
// Priority is at level 0. Out of [0, bus.MaxPriorities): the call fails
// with bus.ErrInvalidConfig. It travels as the header bus.PriorityHeader
// (so a dead letter is replayed to its level).
func Priority(level int) CallOption {
	return func(co *callOptions) { co.priority, co.hasPriority = level, true }
}

// Tenant names whose message this is. On a topic with tenant fairness
// (bus-worker topic create --partitions N --fair-shards M) a tenant's
// messages go to its shard set, M of the topic's N partitions chosen by a
// stable hash of the id (the least loaded of them, by the backlog this
// producer measures), so one tenant's flood fills its shards and waits
// behind itself, not in front of the others (docs/scheduling.md). A
// PartitionKey, and a cached request's cache key, decide the partition
// instead. It travels as the header bus.TenantHeader. The id is validated
// like a topic name.
func Tenant(id string) CallOption {
	return func(co *callOptions) { co.tenant = id }
}

// CostHeader is the header Cost sets (consumer.CostHeader reads it).
const CostHeader = bus.CostHeader

// WaitForResponders makes a Request (or Stream) write its request even
// when no worker serves the topic now, and wait for its deadline: for work
// queued for workers that will come later (see Config.WaitForResponders).
func WaitForResponders() WaitOption {
	return func(co *callOptions) { co.wait = true }
}

// applyPublish, applyRequest and applyStream return what opts chose. They
// are kept out of line so that a call without options does not make its
// envelope escape to the heap, and return early without any: co escapes
// (the options get its address), so declaring it costs an allocation.
func applyPublish(opts []PublishOption) callOptions {
	if len(opts) == 0 {
		return callOptions{}
	}
	var co callOptions
	for _, o := range opts {
		o.publishOption(&co)
	}
	co.withCost()
	return co
}

func applyRequest(opts []RequestOption) callOptions {
	if len(opts) == 0 {
		return callOptions{}
	}
	var co callOptions
	for _, o := range opts {
		o.requestOption(&co)
	}
	co.withCost()
	return co
}

func applyStream(opts []StreamOption) callOptions {
	if len(opts) == 0 {
		return callOptions{}
	}
	var co callOptions
	for _, o := range opts {
		o.streamOption(&co)
	}
	co.withCost()
	return co
}
