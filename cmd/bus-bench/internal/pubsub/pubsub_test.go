package pubsub

import (
	"bufio"
	"strings"
	"testing"
)

func readRESP(in string) (any, error) {
	s := &freshSub{r: bufio.NewReader(strings.NewReader(in))}
	return s.read()
}

func TestRESPRead(t *testing.T) {
	v, err := readRESP("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n")
	if a, ok := v.([]any); err != nil || !ok || len(a) != 3 || a[0] != "message" || a[2] != "hello" {
		t.Fatalf("message = %#v, %v", v, err)
	}
	if v, err := readRESP("-ERR wrong\r\n"); err != nil || v.(error).Error() != "ERR wrong" {
		t.Fatalf("error reply = %v, %v", v, err)
	}
	if v, err := readRESP(":42\r\n"); err != nil || v != int64(42) {
		t.Fatalf("integer = %v, %v", v, err)
	}
	for _, bad := range []string{"", "?x\r\n", "$5\r\nab", "*2\r\n:1\r\n", "$999999999999\r\n", "*99999999\r\n", strings.Repeat("*1\r\n", 20) + ":1\r\n", "+ok\n"} {
		if _, err := readRESP(bad); err == nil {
			t.Errorf("readRESP(%q) accepted garbage", bad)
		}
	}
}

// FuzzRESPRead: the baseline's RESP reader never panics and never
// allocates beyond its bounds on bytes that are not RESP.
func FuzzRESPRead(f *testing.F) {
	for _, seed := range []string{"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", "+OK\r\n", "-ERR x\r\n", "$-1\r\n", "*-1\r\n", "*1\r\n*1\r\n:5\r\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		_, _ = readRESP(in)
	})
}

func TestLockedBreaker(t *testing.T) {
	var b lockedBreaker
	for range 4 {
		b.done(false)
	}
	b.done(true) // a success resets the run of failures
	for range 4 {
		b.done(false)
	}
	if !b.allow() {
		t.Fatal("opened before 5 failures in a row")
	}
	b.done(false)
	if b.allow() {
		t.Fatal("still closed after 5 failures in a row")
	}
}
