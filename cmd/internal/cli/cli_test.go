package cli

import (
	"net"
	"strconv"
	"testing"
)

func TestOneLine(t *testing.T) {
	if got := OneLine("a\n  b\tc \n"); got != "a b c" {
		t.Fatalf("OneLine = %q", got)
	}
}

func TestStartEmbeddedMovesPastATakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	m, err := StartEmbedded(taken)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Port() == strconv.Itoa(taken) {
		t.Fatalf("started on the taken port %d", taken)
	}
	any, err := StartEmbedded(0)
	if err != nil {
		t.Fatal(err)
	}
	any.Close()
}
