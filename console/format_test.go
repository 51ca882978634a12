package console

import (
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/inspect"
)

func TestShowBytes(t *testing.T) {
	for _, tc := range []struct {
		in, format, contains string
		truncated            bool
	}{
		{`{"prompt":"hi","n":[1,2]}`, "json", "{\n  \"prompt\": \"hi\",\n  \"n\": [\n    1,", false},
		{`  [1, 2]`, "json", "[\n  1,\n  2\n]", false},
		{"plain words\nsecond line", "text", "plain words\nsecond line", false},
		{"42", "text", "42", false}, // valid JSON, but not an object or array: shown as it is
		{"\x00\x01\xffbinary", "hex", "00 01 ff 62 69 6e 61 72  79", false},
		{"", "empty", "", false},
		{strings.Repeat("a", maxShown+10), "text", "aaaa", true},
		{"<script>alert(1)</script>", "text", "<script>", false}, // escaped by the template, not here
	} {
		body, format, truncated := showBytes([]byte(tc.in))
		if format != tc.format || !strings.Contains(body, tc.contains) || truncated != tc.truncated {
			t.Errorf("showBytes(%.30q) = %.60q, %s, %v; want format %s containing %q, truncated %v", tc.in, body, format, truncated, tc.format, tc.contains, tc.truncated)
		}
	}
}

func TestMessageUsesTheFormatterFirst(t *testing.T) {
	c := &Console{}
	env := &codec.Envelope{Kind: codec.KindRequest, ID: "c1", Headers: map[string]string{"b": "2", "a": "1"}, Payload: []byte(`{"x":1}`)}
	m := c.message("t", env, nil)
	if m.Format != "json" || m.ID != "c1" || len(m.Headers) != 2 || m.Headers[0][0] != "a" {
		t.Fatalf("message = %+v; want json, id c1, headers sorted", m)
	}
	c.format = func(topic string, e *codec.Envelope) (string, bool) { return "custom " + topic, topic == "t" }
	if m := c.message("t", env, nil); m.Format != "custom" || m.Body != "custom t" {
		t.Errorf("message with a formatter = %+v", m)
	}
	if m := c.message("u", env, nil); m.Format != "json" {
		t.Errorf("message when the formatter declines = %+v; want json", m)
	}
	if m := c.message("t", nil, map[string]string{"m": "\x00\x01", "reason": "malformed"}); m.Format != "fields" || len(m.Fields) != 2 || m.Fields[0][0] != "m" {
		t.Errorf("message of raw fields = %+v", m)
	}
	if m := c.message("t", nil, nil); m != nil {
		t.Errorf("message of nothing = %+v; want nil", m)
	}
}

func TestEntryID(t *testing.T) {
	for s, want := range map[string]bool{"1-0": true, "1733560000000-12": true, "1": false, "-1": false, "1-": false, "a-b": false,
		"1-2-3": false, "99999999999999999999-0": false, "": false} {
		if got := entryID(s); got != want {
			t.Errorf("entryID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestRowsAndRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	topic := func(read, lag, pending int64) inspect.Topic {
		return inspect.Topic{Name: "a", Length: 50, Groups: []inspect.Group{
			{Name: "g1", Read: read, Lag: lag, Pending: pending, OldestPendingAge: time.Second, Consumers: []inspect.Consumer{
				{Name: "w1", LastBeat: time.Second}, {Name: "w2", LastBeat: time.Minute}, {Name: "w3", LastBeat: -1}}},
			{Name: "g2", Read: read / 2, Lag: lag * 2, Pending: 0, OldestPendingAge: 3 * time.Second},
		}}
	}
	a1, a2 := topic(100, 10, 5), topic(300, 20, 7)
	prev := &snapshot{Time: t0, Topics: []topicRow{row(&a1)}}
	s := &snapshot{Time: t0.Add(2 * time.Second), Topics: []topicRow{row(&a2), row(&inspect.Topic{Name: "b", Length: 7})}}
	rates(prev, s)
	a, b := s.Topics[0], s.Topics[1]
	// added: g1 read+lag 110 -> 320 (g2 says 70 -> 190: the max wins);
	// acknowledged: (100-5 + 50) -> (300-7 + 150) over both groups.
	if !a.RatesOK || a.InRate != 105 || a.OutRate != (443-145)/2.0 {
		t.Errorf("rates of a = in %v out %v ok %v; want 105, 149, true", a.InRate, a.OutRate, a.RatesOK)
	}
	if a.Backlog != 40 || a.Pending != 7 || a.OldestPending != 3*time.Second || a.Workers != 1 {
		t.Errorf("row a = %+v; want backlog 40 (the most behind group), pending 7, oldest 3s, 1 live worker (of 3 consumers)", a)
	}
	if b.RatesOK || b.Backlog != 7 {
		t.Errorf("row b (no group, new) = %+v; want no rates yet, backlog = length", b)
	}
	if s.Totals.Length != 57 || s.Totals.Backlog != 47 || s.Totals.InRate != 105 || !s.Totals.RatesOK {
		t.Errorf("totals = %+v", s.Totals)
	}
	// A topic nobody reads: its length's growth is what was added.
	bb := inspect.Topic{Name: "b", Length: 17}
	sb := &snapshot{Time: s.Time.Add(time.Second), Topics: []topicRow{row(&bb)}}
	rates(s, sb)
	if r := sb.Topics[0]; !r.RatesOK || r.InRate != 10 || r.OutRate != 0 {
		t.Errorf("rates of a topic nobody reads = %+v; want in 10/s, out 0", r)
	}
	// A stream deleted and recreated: counters go back; rates are not negative.
	a3 := topic(10, 0, 0)
	s2 := &snapshot{Time: s.Time.Add(time.Second), Topics: []topicRow{row(&a3)}}
	rates(s, s2)
	if s2.Topics[0].InRate != 0 || s2.Topics[0].OutRate != 0 {
		t.Errorf("rates after a reset = %v, %v; want 0", s2.Topics[0].InRate, s2.Topics[0].OutRate)
	}
	// Redis without entries-read: no rates.
	u := topic(-1, 5, 0)
	s3 := &snapshot{Time: s2.Time.Add(time.Second), Topics: []topicRow{row(&u)}}
	rates(s2, s3)
	if s3.Topics[0].RatesOK {
		t.Errorf("rates without entries-read = ok")
	}
}

func TestHistoryKeepsTheLastPoints(t *testing.T) {
	h := history{max: 3}
	names := []string{"a", "b"}
	for k := range 5 {
		h.add(point{t: time.Unix(int64(k), 0), names: append([]string(nil), names...)})
	}
	if len(h.points) != 3 || h.points[0].t.Unix() != 2 || &h.points[1].names[0] != &h.points[2].names[0] {
		t.Errorf("history = %d points from %v, names shared %v", len(h.points), h.points[0].t.Unix(), &h.points[1].names[0] == &h.points[2].names[0])
	}
	if j, ok := searchNames(names, "b"); !ok || j != 1 {
		t.Errorf("searchNames(b) = %d, %v", j, ok)
	}
	if _, ok := searchNames(names, "c"); ok {
		t.Errorf("searchNames(c) found it")
	}
}
