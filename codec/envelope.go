package codec

// Version is the envelope format version written in the first array element.
// Decoders accept this version and reject any other.
const Version = 1

// Kind says what an envelope carries.
type Kind uint8

// Envelope kinds.
const (
	KindEvent   Kind = iota // a published event: no reply is expected
	KindRequest             // a request: the handler's result goes to ReplyTo
	KindReply               // a reply to the request whose ID it carries
	KindControl             // bus-internal marker (for example a reply stream's first entry); never delivered
	KindChunk               // one part of a streamed reply (Seq orders them); the stream ends with a KindReply
	kindEnd
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case KindEvent:
		return "event"
	case KindRequest:
		return "request"
	case KindReply:
		return "reply"
	case KindControl:
		return "control"
	case KindChunk:
		return "chunk"
	}
	return "kind(" + itoa(uint64(k)) + ")"
}

// Envelope is one message on the bus: the routing and timing data the bus
// needs plus the user's payload.
type Envelope struct {
	Kind     Kind
	ID       string            // correlation id (requests and replies); empty for events
	ReplyTo  string            // stream key the reply goes to (requests only)
	Deadline int64             // unix nanoseconds after which the caller gave up; 0 means none
	Sent     int64             // unix nanoseconds when the sender encoded the message
	Headers  map[string]string // free-form metadata, e.g. trace context; may be nil
	Payload  []byte
	ErrCode  string // replies: a non-empty code marks a remote error
	ErrMsg   string // replies: the remote error's text

	// Stage timings a worker reports on its reply (nanoseconds; 0 when
	// unknown), so the caller sees where a request's time went.
	QueueWait int64 // request's time in the stream: its entry id (or Sent, if later) to pick-up
	Handler   int64 // time spent in the handler

	// Response cache (docs/cache.md). CacheKey names the request's cache
	// entry within its topic, "<generation>:<32 hex digits>", when the caller
	// uses the topic's cache (empty otherwise); a reply to a cached request
	// carries it back. CacheTTL is, on a request, how long its answer may be
	// stored (nanoseconds; 0: do not store) and, on a reply, how long the
	// worker stored it (0: not stored, so not to be kept by the caller either).
	CacheKey string
	CacheTTL int64

	// RequestEntry is, on a reply, the stream entry id of the request it
	// answers. A producer accepts a reply only for the entry it wrote, so a
	// request someone else wrote with its correlation id cannot answer it
	// (docs/security.md). Empty on requests and events: the envelope then
	// has 15 elements, 16 with it.
	RequestEntry string

	// Attempt is, on a request or event, how many deliveries this message
	// had before it was written again by a delayed retry (0 for a new
	// message): a worker counts them toward MaxDeliveries. On a chunk or a
	// reply it is the delivery that produced it (1 for the first), so a
	// caller never mixes the streams of two deliveries. Element 6 of the
	// array (it was reserved and written as 0).
	Attempt uint32

	// Streamed replies (docs/wire.md). Seq is a chunk's index in its stream
	// (from 0) and, on the reply that ends a stream, the number of chunks
	// sent before it. Flags carries FlagStream on a request whose caller
	// reads chunks. Elements 17 and 18, written only when one is non-zero
	// (RequestEntry, element 16, is then written even when empty).
	Seq   uint64
	Flags uint64

	// Token is, on a request, a random secret of its caller's: a cancel
	// notice must present it (docs/wire.md, "Control stream"), so only the
	// caller, who alone knows it, can cancel the request. Zero on
	// everything else. Element 19, written only when not zero (the
	// elements before it are then written too).
	Token Token
}

// TokenSize is the length of a request's cancel token.
const TokenSize = 16

// Token is a request's cancel token (Envelope.Token); the zero value is
// none.
type Token [TokenSize]byte

// IsZero reports whether t is no token.
func (t *Token) IsZero() bool { return *t == Token{} }

// Envelope flags.
const (
	// FlagStream marks a request whose caller reads a streamed reply: the
	// handler may send chunks before its reply.
	FlagStream uint64 = 1 << iota
)

// Reset clears e for reuse, keeping nothing that aliases earlier input.
func (e *Envelope) Reset() { *e = Envelope{} }

// minFields is the number of array elements every version-1 envelope has;
// fields is the number this revision writes (the stage timings were added
// as trailing elements, which older decoders skip, and then the cache
// fields, the request entry, the stream fields). Element 6 is Attempt
// (earlier revisions wrote 0 and ignored it). docs/wire.md has the layout.
const (
	minFields    = 11
	fields       = 15
	streamFields = fields + 3 // with RequestEntry, Seq and Flags
	maxFields    = fields + 4 // and Token
)

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return string(b[i:])
}
