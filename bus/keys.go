package bus

import (
	"fmt"
	"strings"
)

// Keys builds every Redis key Mycelium uses. It is the only place that
// concatenates key strings. Every key carries a hash tag so that a topic, its
// dead letters and its cache share one Redis Cluster slot.
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

// Reply returns the reply stream of one producer: prefix:{r.<producerID>}.
func (k Keys) Reply(producerID string) string { return k.prefix() + ":{r." + producerID + "}" }

// DeadLetter returns a topic's dead-letter stream: prefix:{topic}:dlq.
func (k Keys) DeadLetter(topic string) string { return k.Topic(topic) + ":dlq" }

// TopicPattern returns a SCAN MATCH pattern for every topic stream under the
// prefix (it also matches dead-letter and reply streams; filter with
// ParseTopic).
func (k Keys) TopicPattern() string { return k.prefix() + ":{*" }

// ParseTopic returns the topic of a topic stream key, and false for any
// other key (reply streams, dead letters, foreign keys).
func (k Keys) ParseTopic(key string) (string, bool) {
	p := k.prefix() + ":{"
	if !strings.HasPrefix(key, p) || !strings.HasSuffix(key, "}") {
		return "", false
	}
	t := key[len(p) : len(key)-1]
	if strings.HasPrefix(t, "r.") || strings.ContainsAny(t, "{}") {
		return "", false
	}
	return t, true
}

// ValidateName checks a topic, group, consumer or producer name: non-empty,
// at most 200 bytes, no braces (they would break the hash tag), no spaces or
// control characters.
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s name is empty", ErrInvalidConfig, kind)
	}
	if len(name) > 200 {
		return fmt.Errorf("%w: %s name is longer than 200 bytes", ErrInvalidConfig, kind)
	}
	for _, r := range name {
		if r == '{' || r == '}' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("%w: %s name %q contains %q", ErrInvalidConfig, kind, name, r)
		}
	}
	return nil
}
