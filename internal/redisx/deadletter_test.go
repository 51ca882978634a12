package redisx

import (
	"testing"
	"time"
)

func TestDeadLetterRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 2, 3, 4, time.UTC)
	d := DeadLetter{OriginalID: "1-1", Topic: "t", Group: "g", Consumer: "c", Reason: "handler_error", Error: "boom", Attempts: 3, Time: at,
		Data: "env", HasData: true}
	f := d.Fields()
	m := map[string]string{}
	for i := 0; i+1 < len(f); i += 2 {
		m[f[i]] = f[i+1]
	}
	got := parseDeadLetter("9-9", m)
	d.ID = "9-9"
	if got.ID != d.ID || got.OriginalID != d.OriginalID || got.Reason != d.Reason || got.Attempts != 3 || !got.Time.Equal(at) ||
		got.Data != "env" || !got.HasData || got.Raw != nil {
		t.Fatalf("round trip = %+v, want %+v", got, d)
	}

	raw := DeadLetterOf(&Entry{ID: "2-2"}, DeadLetter{Reason: "malformed"})
	if raw[1] != "2-2" {
		t.Fatalf("DeadLetterOf kept id %q", raw[1])
	}
}

// FuzzParseDeadLetter: whatever a dead-letter stream holds (anyone who can
// write the key can put anything there), parsing never panics and never
// invents data.
func FuzzParseDeadLetter(f *testing.F) {
	f.Add("attempts", "x", "time", "yesterday", "f.a")
	f.Add("m", "\xc1", "attempts", "-1", "f.")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3 string) {
		d := parseDeadLetter("1-1", map[string]string{k1: v1, k2: v2, k3: v1})
		if d.HasData != (k1 == Field || k2 == Field || k3 == Field) {
			t.Fatalf("HasData = %v for fields %q %q %q", d.HasData, k1, k2, k3)
		}
		for k := range d.Raw {
			if _, ok := map[string]bool{k1: true, k2: true, k3: true}[RawFieldPrefix+k]; !ok {
				t.Fatalf("raw field %q not in the input", k)
			}
		}
	})
}
