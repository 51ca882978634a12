package watermill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
)

// zerologFrom returns a zerolog logger writing to a Watermill logger: each
// line's level picks the method, its message and fields go along.
func zerologFrom(l watermill.LoggerAdapter) zerolog.Logger {
	if _, nop := l.(watermill.NopLogger); nop {
		return zerolog.Nop()
	}
	return zerolog.New(logWriter{l}).With().Timestamp().Logger()
}

type logWriter struct{ l watermill.LoggerAdapter }

func (w logWriter) Write(p []byte) (int, error) {
	var ev map[string]any
	if err := json.Unmarshal(p, &ev); err != nil {
		w.l.Info(string(p), nil)
		return len(p), nil
	}
	msg, _ := ev["message"].(string)
	level, _ := ev["level"].(string)
	errText, _ := ev["error"].(string)
	delete(ev, "message")
	delete(ev, "level")
	delete(ev, "time")
	delete(ev, "error")
	fields := watermill.LogFields(ev)
	switch level {
	case "error", "fatal", "panic":
		var err error
		if errText != "" {
			err = errors.New(errText)
		}
		w.l.Error(msg, err, fields)
	case "debug":
		w.l.Debug(msg, fields)
	case "trace":
		w.l.Trace(msg, fields)
	default:
		if errText != "" {
			fields["error"] = errText
		}
		w.l.Info(msg, fields)
	}
	return len(p), nil
}

// createGroup creates group on every partition of topic, from its oldest
// entry (an existing group is left as it is).
func createGroup(ctx context.Context, c *bus.Client, topic, group string) error {
	p, err := inspect.New(c).Partitions(ctx, topic)
	if err != nil {
		return fmt.Errorf("watermill: %w", err)
	}
	rd := c.Redis()
	for _, key := range p.Streams {
		err := rd.Do(ctx, rd.B().XgroupCreate().Key(key).Group(group).Id("0").Mkstream().Build()).Error()
		if err != nil && !isBusyGroup(err) {
			return fmt.Errorf("watermill: create group %s on %s: %w", group, key, err)
		}
	}
	return nil
}

func isBusyGroup(err error) bool {
	return err != nil && len(err.Error()) >= 9 && err.Error()[:9] == "BUSYGROUP"
}
