package metrics

import "time"

// Stage is one step of a message's way through the bus.
type Stage uint8

// The stages, in data-path order. A producer records Admission, Cache
// (cached topics), Encode,
// Write, QueueWait (RetryWait for a redelivery) and Handler (as reported on
// the reply), ReplyTransit, Decode and EndToEnd for requests (Admission,
// Encode and Write for publishes too); a consumer records QueueWait or
// RetryWait, Handler and ReplyWrite.
const (
	Admission    Stage = iota // producer: the topic's circuit breaker deciding, and for a request whether a worker serves the topic
	Cache                     // producer, cached topics: finding the answer in the local tier and, on a local miss, the shared tier's round trip when it answered (a shared miss's round trip is the Write)
	Encode                    // producer: encoding the envelope
	Write                     // producer: hand-off to the batched XADD until Redis accepted it
	QueueWait                 // entry id (or sent time, if later) to pick-up by a worker, on its first delivery
	RetryWait                 // a redelivered entry (a delayed retry, or reclaimed from a stopped worker): entry id (or sent time) to this pick-up, its earlier attempts and the waits between them included; it replaces QueueWait
	Handler                   // the handler's own time
	ReplyWrite                // consumer: handler done until the reply XADD and XACK were accepted
	ReplyTransit              // reply encoded by the worker until read by the producer's reply reader
	Decode                    // producer: decoding the reply
	EndToEnd                  // producer: Request call to return (a Stream's: call to its end)
	FirstChunk                // producer: Stream call to its first chunk read
	ChunkTransit              // a chunk encoded by the worker until read by the producer's reply reader
	ChunkWrite                // consumer: Message.Send until Redis stored the chunk
	NumStages
)

var stageNames = [NumStages]string{
	"admission", "cache", "encode", "redis_write", "queue_wait", "retry_wait", "handler", "reply_write", "reply_transit", "decode", "end_to_end",
	"first_chunk", "chunk_transit", "chunk_write",
}

// String returns the stage's metric label, e.g. "queue_wait".
func (s Stage) String() string {
	if s < NumStages {
		return stageNames[s]
	}
	return "unknown"
}

// Stages lists every stage in data-path order.
func Stages() []Stage {
	out := make([]Stage, NumStages)
	for i := range out {
		out[i] = Stage(i)
	}
	return out
}

// Recorder holds one Histogram per stage. The zero value is ready to use;
// it must not be copied after first use.
type Recorder struct {
	h [NumStages]Histogram
}

// Record adds d to stage s. Safe for concurrent use; no allocation.
func (r *Recorder) Record(s Stage, d time.Duration) {
	if s < NumStages {
		r.h[s].Record(d)
	}
}

// Snapshot copies every stage.
func (r *Recorder) Snapshot() *Snapshot {
	s := new(Snapshot)
	for i := range r.h {
		r.h[i].snapshotInto(&s.Stages[i])
	}
	return s
}

// Snapshot is a point-in-time copy of a Recorder.
type Snapshot struct {
	Stages [NumStages]HistogramSnapshot
}

// Stage returns the snapshot of one stage.
func (s *Snapshot) Stage(st Stage) *HistogramSnapshot { return &s.Stages[st] }

// Merge adds o into s: for example a producer's and its workers' stages.
func (s *Snapshot) Merge(o *Snapshot) {
	for i := range s.Stages {
		s.Stages[i].Merge(&o.Stages[i])
	}
}

// Sub leaves only what was recorded after the earlier snapshot.
func (s *Snapshot) Sub(earlier *Snapshot) {
	for i := range s.Stages {
		s.Stages[i].Sub(&earlier.Stages[i])
	}
}

// Summary is one stage's percentiles in microseconds, for JSON output.
type Summary struct {
	Stage  string  `json:"stage"`
	Count  uint64  `json:"count"`
	MeanUS float64 `json:"mean_us"`
	P50US  float64 `json:"p50_us"`
	P90US  float64 `json:"p90_us"`
	P99US  float64 `json:"p99_us"`
}

// Summaries returns the stages that have observations, in data-path order.
func (s *Snapshot) Summaries() []Summary {
	var out []Summary
	for i := range s.Stages {
		h := &s.Stages[i]
		if h.Count == 0 {
			continue
		}
		out = append(out, Summary{
			Stage: Stage(i).String(), Count: h.Count, MeanUS: us(h.Mean()),
			P50US: us(h.Quantile(0.5)), P90US: us(h.Quantile(0.9)), P99US: us(h.Quantile(0.99)),
		})
	}
	return out
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// Micros is d in microseconds, truncated to 0.1 µs: the unit of the
// producer's and the consumer's timing log fields (*_us).
func Micros(d time.Duration) float64 { return float64(d/100) / 10 }
