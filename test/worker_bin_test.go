package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// buildCmd builds a command of this module once per test run.
func buildCmd(t *testing.T, name string) string {
	t.Helper()
	return redistest.Binary(t, name)
}

// startServe runs `bus-worker serve args...` and waits until it is ready.
func startServe(t *testing.T, args ...string) (*exec.Cmd, *redistest.SyncBuffer, string) {
	t.Helper()
	w := redistest.StartWorker(t, args...)
	return w.Cmd, w.Logs, w.HTTPAddr
}

func TestBusWorkerServeRequestSigterm(t *testing.T) {
	srv := redistest.Start(t)
	serve, logs, httpAddr := startServe(t, "--redis", srv.URL, "--topic", "e2e", "--concurrency", "4")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "e2e", "--data", "hello mycelium", "--timeout", "10s").CombinedOutput()
	if err != nil {
		t.Fatalf("bus-worker request: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || lines[0] != "hello mycelium" || !strings.HasPrefix(lines[1], "latency: ") {
		t.Fatalf("bus-worker request printed %q, want the reply then its latency", out)
	}
	// --stages prints where the time went, the overlap marked, and how the
	// stages add up to end to end.
	text, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "e2e", "--data", "x", "--stages").CombinedOutput()
	if err != nil || !strings.Contains(string(text), "redis_write") || !strings.Contains(string(text), "overlap") ||
		!strings.Contains(string(text), "end_to_end") || !strings.Contains(string(text), "= the stages above") {
		t.Fatalf("request --stages = %v\n%s", err, text)
	}
	// --stages --json adds where the time went, every producer stage.
	out, err = exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "e2e", "--data", "x", "--stages", "--json").Output()
	if err != nil {
		t.Fatalf("bus-worker request --stages --json: %v", err)
	}
	var withStages struct {
		Reply  string `json:"reply"`
		Stages []struct {
			Stage string `json:"stage"`
			Count int    `json:"count"`
		} `json:"stages"`
	}
	if err := json.Unmarshal(out, &withStages); err != nil || withStages.Reply != "x" || len(withStages.Stages) != 8 {
		t.Fatalf("request --stages --json = %s (%v); want the reply and 8 stages", out, err)
	}
	out, err = exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "publish", "--redis", srv.URL, "--topic", "e2e", "--data", "event").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "-") {
		t.Fatalf("bus-worker publish = %q, %v; want a stream id", out, err)
	}

	waitFor(t, 5*time.Second, "/stats to count the four messages", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/stats")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Handled uint64 `json:"handled"`
			Acked   uint64 `json:"acked"`
		}
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Handled == 4 && st.Acked == 4
	})
	// The worker's /metrics passes promtool and carries its stages.
	metricsText := scrape(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{
		`mycelium_stage_duration_seconds_count{role="consumer",stage="handler",topic="e2e"} 4`,
		`mycelium_stage_duration_seconds_count{role="consumer",stage="reply_write",topic="e2e"} 3`,
		`mycelium_consumer_handled_total{group="workers",topic="e2e"} 4`,
		`mycelium_stream_length{topic="e2e"} 4`,
		`go_goroutines`,
	} {
		if !bytes.Contains(metricsText, []byte(want)) {
			t.Errorf("bus-worker /metrics lacks %s", want)
		}
	}
	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("bus-worker serve exited with %v after SIGTERM; logs:\n%s", err, logs)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("bus-worker serve did not exit within 15s of SIGTERM; logs:\n%s", logs)
	}
	if !strings.Contains(logs.String(), `"handled":4`) {
		t.Fatalf("serve logs do not report 4 handled messages:\n%s", logs)
	}
}

// TestBusWorkerEmbedded: --embedded starts an in-memory Redis and says so
// first; without it (and without a Redis URL) serve refuses to start.
func TestBusWorkerEmbedded(t *testing.T) {
	for _, env := range [][]string{nil, {"MYCELIUM_REDIS=", "MYCELIUM_EMBEDDED=0"}} {
		cmd := exec.Command(buildCmd(t, "bus-worker"), "serve", "--http-addr", "")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || strings.Count(string(out), "\n") != 1 ||
			!strings.Contains(string(out), "--redis") || !strings.Contains(string(out), "--embedded") {
			t.Fatalf("serve without a Redis (env %v) = %q, %v; want exit 2 and one line naming --redis and --embedded", env, out, err)
		}
	}
	// The default HTTP address (127.0.0.1:9464) is taken: like the embedded
	// Redis, it moves to the next free port. (If something else holds 9464
	// here, it is taken all the same.)
	if l, err := net.Listen("tcp", "127.0.0.1:9464"); err == nil {
		defer l.Close()
	}
	serve := exec.Command(buildCmd(t, "bus-worker"), "serve", "--embedded")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MYCELIUM_") {
			serve.Env = append(serve.Env, kv)
		}
	}
	var out, logs redistest.SyncBuffer
	serve.Stdout, serve.Stderr = &out, &logs
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if serve.ProcessState == nil {
			_ = serve.Process.Kill()
			_ = serve.Wait()
		}
	}()
	waitFor(t, 20*time.Second, "the commands to try it", func() bool { return strings.Count(out.String(), "\n") >= 4 })
	lines := strings.Split(out.String(), "\n")
	if !strings.Contains(lines[0], "embedded in-memory Redis at redis://127.0.0.1:") || !strings.Contains(lines[0], "lost on exit") ||
		!strings.Contains(lines[1], " request --redis redis://127.0.0.1:") || !strings.Contains(lines[2], " stats --redis redis://127.0.0.1:") ||
		!strings.HasPrefix(strings.TrimSpace(lines[3]), "curl -s http://127.0.0.1:") || strings.Contains(lines[3], ":9464/") {
		t.Fatalf("first lines = %q, want the embedded Redis announced, then request, stats and curl commands with the actual addresses (not the taken :9464)", lines[:4])
	}
	// The printed commands work as printed, from a second terminal.
	reply, err := exec.Command("sh", "-c", strings.TrimSpace(lines[1])).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(reply), "hello mycelium\n") {
		t.Fatalf("%s = %q, %v", lines[1], reply, err)
	}
	metricsURL := strings.Fields(lines[3])[2]
	resp, err := http.Get(metricsURL)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %v, %v", metricsURL, resp, err)
	}
	resp.Body.Close()
	if !strings.Contains(logs.String(), "embedded in-memory Redis") {
		t.Fatalf("logs do not mention the embedded Redis:\n%s", logs.String())
	}
	_ = serve.Process.Signal(syscall.SIGINT)
	if err := serve.Wait(); err != nil {
		t.Fatalf("serve exit after SIGINT = %v", err)
	}

	// MYCELIUM_EMBEDDED=1 does the same.
	w := exec.Command(buildCmd(t, "bus-worker"), "serve", "--http-addr", "")
	w.Env = append(os.Environ(), "MYCELIUM_EMBEDDED=1")
	var wlogs redistest.SyncBuffer
	w.Stderr = &wlogs
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Process.Kill(); _ = w.Wait() }()
	waitFor(t, 10*time.Second, "the embedded Redis announced", func() bool { return strings.Contains(wlogs.String(), "embedded in-memory Redis") })
}

func TestBusWorkerBadInputExitsTwo(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--concurrency", "many"},
		{"serve", "--redis", "http://localhost"},
		{"serve", "--redis", "redis://127.0.0.1:1", "--http-addr", ""},
		{"serve"},
		{"serve", "--embedded", "--redis", "redis://127.0.0.1:1"},
		{"serve", "--handler", "teleport"},
		{"serve", "--retention", "soon"},
		{"serve", "--claim-idle", "5ms"},
		{"serve", "--embedded", "--concurrency", "100000000"}, // 24 GB in seconds before it was bounded
		{"dlq", "purge"},
		{"dlq", "frobnicate"},
		{"request", "--redis", "redis://127.0.0.1:1"},
		{"request", "--timeout", "-1s"},
		{"acl", "--role", "producer", "--user", "a.b"},
		{"acl", "--role", "operator", "--topics", "t"},
		{"acl", "--role", "worker", "--topics", "a,r.x"},
		{"acl", "--role", "root"},
		{"functions"},
		{"functions", "upgrade"},
		{"nonsense"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(buildCmd(t, "bus-worker"), args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("bus-worker %v = %v, want exit status 2", args, err)
			}
			text := stderr.String()
			if strings.Count(text, "\n") != 1 || !strings.HasSuffix(text, "\n") || !strings.HasPrefix(text, "bus-worker: ") {
				t.Fatalf("bus-worker %v stderr = %q, want one line", args, text)
			}
		})
	}
}

// TestBusWorkerFunctions: the operator's step loads the bus's functions
// (idempotently), lists them and prunes other releases' libraries.
func TestBusWorkerFunctions(t *testing.T) {
	srv := redistest.Start(t)
	bin := buildCmd(t, "bus-worker")
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, "--redis", srv.URL)...).CombinedOutput()
		if err != nil {
			t.Fatalf("bus-worker %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	lib := redisx.LibraryName()
	if out := cli("functions", "list"); !strings.Contains(out, "no library") || !strings.Contains(out, lib) {
		t.Fatalf("functions list before loading = %q", out)
	}
	for range 2 {
		if out := cli("functions", "load"); !strings.Contains(out, "loaded "+lib) {
			t.Fatalf("functions load = %q", out)
		}
	}
	if out := cli("functions", "list"); !strings.Contains(out, lib+" (this build's): myc_begin_") {
		t.Fatalf("functions list = %q", out)
	}
	var libs []struct{ Name string }
	if err := json.Unmarshal([]byte(cli("functions", "list", "--json")), &libs); err != nil || len(libs) != 1 || libs[0].Name != lib {
		t.Fatalf("functions list --json = %+v, %v", libs, err)
	}
	if out := cli("functions", "prune"); !strings.Contains(out, "no other library") {
		t.Fatalf("functions prune = %q", out)
	}
}

func TestBusWorkerEnvFlags(t *testing.T) {
	cmd := exec.Command(buildCmd(t, "bus-worker"), "serve", "--embedded", "--http-addr", "")
	cmd.Env = append(os.Environ(), "MYCELIUM_CONCURRENCY=zero")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "MYCELIUM_CONCURRENCY") {
		t.Fatalf("serve with MYCELIUM_CONCURRENCY=zero = %q, %v; want exit 2 naming the variable", out, err)
	}
}

// TestBusWorkerBreakerRefusesWhileDownstreamFails: with the worker's
// breaker open, a request is refused at once with breaker_open (the caller
// learns it long before its deadline), /readyz says so, and requests are
// answered again once the downstream is back.
func TestBusWorkerBreakerRefusesWhileDownstreamFails(t *testing.T) {
	srv := redistest.Start(t)
	var healthy atomic.Bool
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "model overloaded", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		_, _ = w.Write(append([]byte("answer:"), body...))
	}))
	defer down.Close()
	serve, logs, httpAddr := startServe(t, "--redis", srv.URL, "--topic", "llm", "--handler", down.URL,
		"--breaker-min-calls", "3", "--breaker-open-timeout", "2s", "--breaker-probes", "2")
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{NoBreaker: true})
	ctx := context.Background()
	for range 3 {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := p.Request(rctx, "llm", []byte("q"))
		cancel()
		var re *bus.RemoteError
		if !errors.As(err, &re) || re.Code != "http_503" {
			t.Fatalf("Request through a failing downstream = %v, want remote error http_503", err)
		}
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "circuit breaker open") {
		t.Fatalf("/readyz with the breaker open = %d %q", code, body)
	}
	if _, body := get("/stats"); !strings.Contains(body, `"breaker":"open"`) {
		t.Fatalf("/stats = %q, want the breaker state", body)
	}
	// Open: a request with 10 s to spare is refused at once.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := p.Request(rctx, "llm", []byte("q1"))
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "breaker_open" || time.Since(start) > 5*time.Second {
		t.Fatalf("Request with the breaker open = %v after %v, want remote error breaker_open at once", err, time.Since(start))
	}
	// The downstream recovers; once the breaker probes, requests are
	// answered (refusals until then are breaker_open, nothing else).
	healthy.Store(true)
	for _, q := range []string{"q2", "q3"} { // two good probes close it
		for {
			got, err := p.Request(rctx, "llm", []byte(q))
			if errors.As(err, &re) && re.Code == "breaker_open" {
				time.Sleep(50 * time.Millisecond) // pacing retries, as a caller would
				continue
			}
			if err != nil || string(got) != "answer:"+q {
				t.Fatalf("Request after recovery = %q, %v", got, err)
			}
			break
		}
	}
	waitFor(t, 5*time.Second, "/readyz to recover", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })
	_ = serve.Process.Signal(syscall.SIGTERM)
	if err := serve.Wait(); err != nil {
		t.Fatalf("serve exit = %v", err)
	}
	if !strings.Contains(logs.String(), `"to":"open"`) || !strings.Contains(logs.String(), `"to":"closed"`) {
		t.Fatalf("logs lack the breaker transitions:\n%s", logs)
	}
}

// TestBusWorkerRequestErrors: a failed request says what happened, on
// stderr in one line and, with --json, as a JSON object on stdout; exit 1.
func TestBusWorkerRequestErrors(t *testing.T) {
	srv := redistest.Start(t)
	startServe(t, "--redis", srv.URL, "--topic", "failing", "--handler", "http://127.0.0.1:1/", "--breaker=false")
	for _, tt := range []struct {
		name       string
		args       []string
		kind, code string
		stderr     string
	}{
		{"nobody serves the topic", []string{"--topic", "nobody"}, "no_responders", "", "no worker serves this topic"},
		{"queued for nobody", []string{"--topic", "nobody", "--wait-for-responders", "--timeout", "300ms"}, "timeout", "", "no reply within 300ms"},
		{"the handler failed", []string{"--topic", "failing"}, "remote", "http_unreachable", "remote error (http_unreachable)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(buildCmd(t, "bus-worker"), append([]string{"request", "--redis", srv.URL, "--data", "x", "--json"}, tt.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("request %v = %v, want exit 1", tt.args, err)
			}
			var out struct {
				Error struct{ Kind, Code, Message string } `json:"error"`
			}
			if json.Unmarshal(stdout.Bytes(), &out) != nil || out.Error.Kind != tt.kind || out.Error.Code != tt.code || out.Error.Message == "" {
				t.Fatalf("request %v --json printed %q, want an error of kind %q, code %q", tt.args, stdout.String(), tt.kind, tt.code)
			}
			if strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("request %v stderr = %q, want one line saying %q", tt.args, stderr.String(), tt.stderr)
			}
		})
	}
}

// TestBusWorkerTraceConsole: bus-worker serve and bus-worker request, two
// processes with OTEL_TRACES_EXPORTER=console, print spans of one trace:
// the request's (request, send) and the worker's (process).
func TestBusWorkerTraceConsole(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_SERVICE_NAME", "")
	w := redistest.StartWorker(t, "--redis", srv.URL, "--topic", "traced")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	out, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "traced", "--data", "hi").CombinedOutput()
	if err != nil {
		t.Fatalf("bus-worker request: %v\n%s", err, out)
	}
	t.Logf("request took %v", time.Since(began))
	began = time.Now()
	w.Stop(t) // flushes the worker's spans
	t.Logf("worker stop took %v", time.Since(began))
	traceIDs := func(s string) map[string][]string {
		ids := map[string][]string{}
		for _, m := range regexp.MustCompile(`"Name":\s*"([^"]+)",\s*"SpanContext":\s*\{\s*"TraceID":\s*"([0-9a-f]{32})"`).FindAllStringSubmatch(s, -1) {
			ids[m[2]] = append(ids[m[2]], m[1])
		}
		return ids
	}
	caller, worker := traceIDs(string(out)), traceIDs(w.Logs.String())
	for id, names := range caller {
		if wn, ok := worker[id]; ok {
			t.Logf("trace %s: request printed %q, the worker %q", id, names, wn)
			return
		}
	}
	t.Fatalf("no trace id in both processes' spans: request printed %v, the worker %v\nrequest output:\n%s", caller, worker, out)
}

// TestBusWorkerServesSeveralTopics: one `bus-worker serve` serving two
// topics (a consumer.Router: one process, shared slots, a cap on one),
// against a real redis-server: both answer, /stats and /metrics show each
// topic, and SIGTERM drains both.
func TestBusWorkerServesSeveralTopics(t *testing.T) {
	srv := redistest.Start(t)
	serve, logs, httpAddr := startServe(t, "--redis", srv.URL, "--topic", "alpha", "--topic", "beta", "--concurrency", "4", "--topic-concurrency", "beta=1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, topic := range []string{"alpha", "beta", "alpha"} {
		out, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", topic, "--data", "to "+topic, "--timeout", "10s").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "to "+topic+"\n") {
			t.Fatalf("request to %s = %v\n%s", topic, err, out)
		}
	}
	var st struct {
		Topics map[string]struct {
			Handled uint64 `json:"handled"`
			Acked   uint64 `json:"acked"`
			Breaker string `json:"breaker"`
		} `json:"topics"`
	}
	waitFor(t, 5*time.Second, "/stats to count each topic's requests", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/stats")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Topics["alpha"].Acked == 2 && st.Topics["beta"].Acked == 1
	})
	if st.Topics["alpha"].Breaker != "closed" || st.Topics["beta"].Breaker != "closed" {
		t.Fatalf("/stats breakers: %+v", st.Topics)
	}
	metricsText := scrape(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{
		`mycelium_consumer_handled_total{group="workers",topic="alpha"} 2`,
		`mycelium_consumer_handled_total{group="workers",topic="beta"} 1`,
		`mycelium_stream_length{topic="beta"} 1`,
		`mycelium_breaker_state{topic="alpha"} 0`,
		`mycelium_breaker_state{topic="beta"} 0`,
	} {
		if !bytes.Contains(metricsText, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := serve.Wait(); err != nil {
		t.Fatalf("serve exited with %v after SIGTERM; logs:\n%s", err, logs)
	}
	if !strings.Contains(logs.String(), `"handled":3`) || !strings.Contains(logs.String(), `"topics":["alpha","beta"],"topic_concurrency":{"alpha":4,"beta":1}`) {
		t.Fatalf("serve logs lack the two topics or their 3 handled requests:\n%s", logs)
	}
}
