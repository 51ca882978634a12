package test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestTLSMutualLibrary: producer and consumer talk over mutual TLS with a
// CA of their own (bus.Config.TLS).
func TestTLSMutualLibrary(t *testing.T) {
	f := redistest.NewTLSFiles(t)
	srv := redistest.StartTLS(t, f, "yes")
	c := redistest.Connect(t, bus.Config{URL: srv.URL, TLS: f.ClientConfig()})
	runConsumer(t, c, consumer.Config{Topic: "tls"}, echo)
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := p.Request(ctx, "tls", []byte("over tls")); err != nil || string(got) != "over tls" {
		t.Fatalf("Request over mutual TLS = %q, %v", got, err)
	}
}

// TestTLSBusWorkerFlags: bus-worker serve and request over mutual TLS with
// --tls-* flags (and the environment); clear errors for an unknown CA, a
// missing client certificate and a name mismatch; a warning for
// --tls-insecure-skip-verify.
func TestTLSBusWorkerFlags(t *testing.T) {
	f := redistest.NewTLSFiles(t)
	srv := redistest.StartTLS(t, f, "yes")
	flags := []string{"--tls-ca", f.CA, "--tls-cert", f.ClientCert, "--tls-key", f.ClientKey}
	redistest.StartWorker(t, append([]string{"--redis", srv.URL, "--topic", "tls"}, flags...)...)
	bin := buildCmd(t, "bus-worker")
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(cmd.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	req := []string{"request", "--redis", srv.URL, "--topic", "tls", "--data", "hi", "--timeout", "5s"}
	if out, err := run(nil, append(req, flags...)...); err != nil || !strings.HasPrefix(out, "hi\n") {
		t.Fatalf("request over mutual TLS = %v\n%s", err, out)
	}
	env := []string{"MYCELIUM_TLS_CA=" + f.CA, "MYCELIUM_TLS_CERT=" + f.ClientCert, "MYCELIUM_TLS_KEY=" + f.ClientKey}
	if out, err := run(env, req...); err != nil || !strings.HasPrefix(out, "hi\n") {
		t.Fatalf("request with MYCELIUM_TLS_* = %v\n%s", err, out)
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"unknown CA":       {[]string{"--tls-ca", f.OtherCA, "--tls-cert", f.ClientCert, "--tls-key", f.ClientKey}, "certificate signed by unknown authority"},
		"no client cert":   {[]string{"--tls-ca", f.CA}, "client certificate"},
		"name mismatch":    {append([]string{"--tls-server-name", "redis.example"}, flags...), "redis.example"},
		"cert without key": {[]string{"--tls-ca", f.CA, "--tls-cert", f.ClientCert}, "--tls-cert and --tls-key go together"},
		"plain URL":        {append([]string{"--redis", "redis://" + srv.Addr}, flags...), "need a rediss:// URL"},
	} {
		out, err := run(nil, append(req, tc.args...)...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: %v\n%s\nwant an error saying %q", name, err, out, tc.want)
		}
	}
	out, err := run(nil, append(req, "--tls-insecure-skip-verify", "--tls-cert", f.ClientCert, "--tls-key", f.ClientKey)...)
	if err != nil || !strings.Contains(out, "WARNING: --tls-insecure-skip-verify") {
		t.Fatalf("--tls-insecure-skip-verify = %v\n%s\nwant the reply and a warning", err, out)
	}
}

// TestTLSServerWithoutClientAuth: a server that does not ask for client
// certificates (tls-auth-clients no) needs only the CA.
func TestTLSServerWithoutClientAuth(t *testing.T) {
	f := redistest.NewTLSFiles(t)
	srv := redistest.StartTLS(t, f, "no")
	redistest.StartWorker(t, "--redis", srv.URL, "--topic", "tls", "--tls-ca", f.CA)
	out, err := exec.Command(buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "tls", "--data", "one-way", "--tls-ca", f.CA).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "one-way\n") {
		t.Fatalf("request over TLS without a client certificate = %v\n%s", err, out)
	}
	bench := exec.Command(buildCmd(t, "bus-bench"), "--redis", srv.URL, "--requests", "200", "--concurrency", "4", "--json")
	bench.Env = append(bench.Environ(), "MYCELIUM_TLS_CA="+f.CA) // the environment, as for bus-worker
	out, err = bench.Output()
	if err != nil || !strings.Contains(string(out), `"ok":200`) {
		t.Fatalf("bus-bench over TLS = %v\n%s", err, out)
	}
}

// TestTLSToAPlaintextServer: rediss:// to a server that does not speak TLS
// says so, not only "context deadline exceeded" (security issue, point 21).
func TestTLSToAPlaintextServer(t *testing.T) {
	srv := redistest.Start(t)
	if srv.TLS != nil {
		t.Skip("needs a plaintext server")
	}
	out, err := exec.Command(buildCmd(t, "bus-worker"), "request", "--redis", "rediss://"+srv.Addr, "--tls-insecure-skip-verify",
		"--topic", "t", "--data", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is the server speaking TLS on that port") {
		t.Fatalf("rediss:// to a plaintext server = %v\n%s", err, out)
	}
}
