package worker

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
)

func TestListenMovesOnlyWhenAllowed(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	if _, err := listen(context.Background(), addr, false); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen(taken, fixed) = %v, want EADDRINUSE", err)
	}
	ln, err := listen(context.Background(), addr, true)
	if err != nil {
		t.Fatalf("listen(taken, may move) = %v", err)
	}
	defer ln.Close()
	if ln.Addr().String() == addr {
		t.Fatalf("listen moved to %s, the taken address", ln.Addr())
	}
	if _, err := listen(context.Background(), "127.0.0.1:notaport", true); err == nil {
		t.Fatal("listen(bad port) succeeded")
	}
}
