package consumer

import (
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/metrics"
)

// logTiming logs one finished entry's stages: at debug level for every
// entry, at info level for one in Config.Timing.Sample, at warn level when
// queue wait, handler and write together exceed Config.Timing.SlowEntry
// (at most 10 such lines per 10 s, the others at debug level). write is
// the reply write (for an event: its acknowledgement). Below the logger's
// level it costs a level check and, at info, one atomic add.
func (e *env) logTiming(d *completion, write time.Duration) {
	total := d.queued + d.handled + write
	lvl := zerolog.DebugLevel
	suppressed := 0
	switch {
	case e.cfg.Timing.SlowEntry > 0 && total >= e.cfg.Timing.SlowEntry:
		// Rate-limited as the warnings about entries: a backlog makes
		// every entry slow (one line per entry would flood the log).
		var ok bool
		if ok, suppressed = e.slowWarns.allow(time.Now()); ok {
			lvl = zerolog.WarnLevel
		}
	case e.cfg.Timing.Sample > 0 && e.log.GetLevel() <= zerolog.InfoLevel &&
		e.sampled.Add(1)%uint64(e.cfg.Timing.Sample) == 0:
		lvl = zerolog.InfoLevel
	}
	if ev := e.log.WithLevel(lvl); ev != nil {
		outcome := "ok"
		if d.failed {
			outcome = "handler_error"
		}
		wait := "queue_wait_us"
		if d.retried {
			wait = "retry_wait_us"
		}
		ev.Str("topic", e.cfg.Topic).Str("entry", d.id).Bool("request", d.reply != nil).Str("outcome", outcome).
			Float64(wait, metrics.Micros(d.queued)).Float64("handler_us", metrics.Micros(d.handled)).
			Float64("reply_write_us", metrics.Micros(write)).Float64("total_us", metrics.Micros(total))
		if suppressed > 0 {
			ev.Int("slow_entries_not_logged", suppressed)
		}
		ev.Msg("entry timing")
	}
}
