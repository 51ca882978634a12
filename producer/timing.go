package producer

import (
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/metrics"
)

// stages records the producer's per-stage timings (the embedded
// metrics.Recorder, whose Record every component uses) and turns a
// finished request's stages into observations and, when due, a timing log
// event.
type stages struct {
	metrics.Recorder
	cfg *Config // TimingSample, SlowRequest
	log zerolog.Logger
}

// timing collects one request's stages while it runs; stages.request turns
// it into histogram observations and, when due, a timing log event.
type timing struct {
	seq                             uint64 // 0 until the request got a correlation id
	admission, encode, write        time.Duration
	queue, handler, transit, decode time.Duration
	replied, retried                bool   // retried: queue is a retry wait
	entry                           string // the request's stream entry id, once written
	chunks                          uint64 // a Stream's chunks handed to its caller
}

// fill copies what the sender and the reply reader measured.
func (tm *timing) fill(w *waiter, r *result) {
	tm.write, tm.entry = w.write, w.entry
	if r.replied {
		tm.replied = true
		tm.queue, tm.handler, tm.transit, tm.decode, tm.retried = r.queue, r.handler, r.transit, r.decode, r.retried
	}
}

// waitStage is the stage a reply's reported wait belongs to: RetryWait
// when a redelivery answered (its wait includes the earlier attempts),
// else QueueWait.
func waitStage(retried bool) metrics.Stage {
	if retried {
		return metrics.RetryWait
	}
	return metrics.QueueWait
}

// waitField and waitAttr name a reply's reported wait in the timing log
// and on the request's span.
func waitField(retried bool) string {
	if retried {
		return "retry_wait_us"
	}
	return "queue_wait_us"
}

func waitAttr(retried bool) string {
	if retried {
		return "mycelium.retry_wait_us"
	}
	return "mycelium.queue_wait_us"
}

// request records a finished request's stages (the Write stage is
// recorded by the sender, for publishes too) and logs them when due:
// every request at debug level, one in Config.TimingSample at info, and
// those slower than Config.SlowRequest at warn.
func (s *stages) request(topic string, start time.Time, tm *timing, err error) {
	total := time.Since(start)
	r := &s.Recorder
	r.Record(metrics.Admission, tm.admission)
	if tm.seq != 0 {
		r.Record(metrics.Encode, tm.encode)
	}
	if tm.replied {
		r.Record(waitStage(tm.retried), tm.queue)
		r.Record(metrics.Handler, tm.handler)
		r.Record(metrics.ReplyTransit, tm.transit)
		r.Record(metrics.Decode, tm.decode)
		r.Record(metrics.EndToEnd, total)
	}
	lvl := zerolog.DebugLevel
	switch {
	case s.cfg.SlowRequest > 0 && total >= s.cfg.SlowRequest:
		lvl = zerolog.WarnLevel
	case s.cfg.TimingSample > 0 && tm.seq != 0 && tm.seq%uint64(s.cfg.TimingSample) == 0:
		lvl = zerolog.InfoLevel
	}
	// WithLevel returns nil below the logger's level: then nothing else is
	// computed, so a disabled timing log costs the level check only.
	if ev := s.log.WithLevel(lvl); ev != nil {
		ev.Str("topic", topic).Str("outcome", outcome(err)).
			Float64("admission_us", metrics.Micros(tm.admission)).Float64("encode_us", metrics.Micros(tm.encode)).
			Float64("redis_write_us", metrics.Micros(tm.write)).Float64(waitField(tm.retried), metrics.Micros(tm.queue)).
			Float64("handler_us", metrics.Micros(tm.handler)).Float64("reply_transit_us", metrics.Micros(tm.transit)).
			Float64("decode_us", metrics.Micros(tm.decode)).Float64("end_to_end_us", metrics.Micros(total)).
			Msg("request timing")
	}
}

// cached records a cached request that did not end in the local tier (see
// cache.localHit): its admission and end to end (the stages of the
// worker's answer are the flight's, recorded once by cache.complete), and
// logs it when due (with its cache source).
func (s *stages) cached(topic string, start time.Time, admission time.Duration, src CacheSource, err error) {
	total := time.Since(start)
	s.Record(metrics.Admission, admission)
	s.Record(metrics.EndToEnd, total)
	lvl := zerolog.DebugLevel
	if s.cfg.SlowRequest > 0 && total >= s.cfg.SlowRequest {
		lvl = zerolog.WarnLevel
	}
	if ev := s.log.WithLevel(lvl); ev != nil {
		ev.Str("topic", topic).Str("outcome", outcome(err)).Str("cache", src.String()).
			Float64("admission_us", metrics.Micros(admission)).Float64("end_to_end_us", metrics.Micros(total)).
			Msg("request timing")
	}
}

// outcome names how a request ended, for timing logs.
func outcome(err error) string {
	if err == nil { // first, so the common case allocates nothing for errors.As
		return "ok"
	}
	var re *bus.RemoteError
	switch {
	case errors.As(err, &re):
		return "remote_error"
	case errors.Is(err, bus.ErrTimeout):
		return "timeout"
	}
	return "error"
}
