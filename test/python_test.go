package test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// pythonWorker starts `python3 -m mycelium serve` (clients/python) and
// waits until it serves. Without a Python that has the redis and msgpack
// packages it skips, unless MYCELIUM_REQUIRE_PYTHON=1 (make test installs
// them).
func pythonWorker(t *testing.T, url, topic, handler string) *exec.Cmd {
	t.Helper()
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import redis, msgpack").Run(); err != nil {
		if os.Getenv("MYCELIUM_REQUIRE_PYTHON") == "1" {
			t.Fatalf("%s cannot import redis and msgpack: %v", py, err)
		}
		t.Skipf("no Python with redis and msgpack: %v", err)
	}
	cmd := exec.Command(py, "-m", "mycelium", "serve", "--redis", url, "--topic", topic, "--handler", handler, "--http-addr", "")
	cmd.Dir = filepath.Join("..", "clients", "python")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr redistest.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("python worker did not stop within 20s of SIGINT")
		}
		if t.Failed() {
			t.Logf("python worker stderr:\n%s", stderr.String())
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "serving" {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("python worker exited before serving:\n%s", stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("python worker not serving within 20s:\n%s", stderr.String())
	}
	return cmd
}

// TestPythonWorkerFromGo: the Python worker (clients/python) answers a Go
// producer's requests, reports its handler's remote error codes, and
// dead-letters a malformed entry written by Go (the conformance suite in
// clients/python/tests proves the other directions).
func TestPythonWorkerFromGo(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	pythonWorker(t, srv.URL, "pyconf", "echo")
	pythonWorker(t, srv.URL, "pyfail", "fail:model_overloaded")
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	big := []byte(strings.Repeat("μ", 1<<19)) // 1 MiB of UTF-8
	for _, payload := range [][]byte{[]byte("hello python"), big} {
		got, err := p.Request(ctx, "pyconf", payload, producer.WithHeaders(map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}))
		if err != nil || string(got) != string(payload) {
			t.Fatalf("Request to the Python worker = %.40q, %v", got, err)
		}
	}
	_, err := p.Request(ctx, "pyfail", []byte("x"))
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "model_overloaded" {
		t.Fatalf("Request to a failing Python handler = %v, want remote error model_overloaded", err)
	}
	// A malformed entry written by Go: dead-lettered by the Python worker.
	rc := c.Redis()
	if err := rc.Do(ctx, rc.B().Xadd().Key("myc:{pyconf}").Id("*").FieldValue().FieldValue("m", "\x93\x01\x02\x03").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the Python worker's dead letter", func() bool {
		n, err := rc.Do(ctx, rc.B().Xlen().Key("myc:{pyconf}:dlq").Build()).AsInt64()
		return err == nil && n == 1
	})
	entries, err := rc.Do(ctx, rc.B().Xrange().Key("myc:{pyconf}:dlq").Start("-").End("+").Build()).AsXRange()
	if err != nil || len(entries) != 1 || entries[0].FieldValues["reason"] != "malformed" || entries[0].FieldValues["m"] != "\x93\x01\x02\x03" {
		t.Fatalf("dead letter = %+v, %v", entries, err)
	}
}
