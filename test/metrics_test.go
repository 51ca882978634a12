package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
	"github.com/egos/mycelium/prom"
)

// promtool returns the path of promtool: make test installs it (Debian's
// prometheus package, with redis-server); missing, the test fails under
// make test and is skipped elsewhere. A test never installs packages.
// scrape GETs url (a /metrics endpoint) and returns its body once
// promtool found nothing to say about it.
func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
	}
	check := exec.Command(promtool(t), "check", "metrics")
	check.Stdin = bytes.NewReader(body)
	if out, err := check.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("promtool check metrics on %s: %v\n%s", url, err, out)
	}
	return body
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv(redistest.RequireEnv) == "1" {
			t.Fatal("promtool missing: make test installs it (make redis-server)")
		}
		t.Skip("promtool missing (make redis-server installs it)")
	}
	return p
}

// TestMetricsEndpoint: after traffic, /metrics passes promtool, carries
// every stage with observations, the counters and the stream gauges, and
// every metric the Grafana dashboard queries exists.
func TestMetricsEndpoint(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	setScheduling(t, c, "m", 1, inspect.Scheduling{Levels: 2}) // the levels' gauges and counters
	co := runConsumer(t, c, consumer.Config{Topic: "m"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		return m.Payload, nil
	}))
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"m": {}}})
	reg := prometheus.NewRegistry()
	br := prom.NewBreakerCollector(prometheus.Labels{"topic": "m"})
	if err := prom.RegisterConsumer(reg, co); err != nil {
		t.Fatal(err)
	}
	if err := prom.RegisterProducer(reg, p); err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(br, prom.NewStreamCollector(inspect.New(c), "m"), prom.NewCacheCollector(inspect.New(c), "m"))
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer hs.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 200
	for i := range n {
		if _, err := p.Request(ctx, "m", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Request(ctx, "m", []byte("0")); err != nil { // a cache hit
		t.Fatal(err)
	}
	// The consumer records ReplyWrite after its pipeline returns, which may
	// be after the caller got the reply.
	waitFor(t, 10*time.Second, "reply writes recorded", func() bool {
		return co.Timings().Stage(metrics.ReplyWrite).Count == n
	})

	text := string(scrape(t, hs.URL))

	for _, st := range metrics.Stages() {
		if st >= metrics.FirstChunk || st == metrics.RetryWait {
			continue // streamed replies only (test/stream_test.go); redeliveries only (TestRetryAfterOnTime)
		}
		re := regexp.MustCompile(`mycelium_stage_duration_seconds_count\{[^}]*stage="` + st.String() + `"[^}]*\} (\d+)`)
		m := re.FindStringSubmatch(text)
		if m == nil || m[1] == "0" {
			t.Errorf("stage %s: no observations in /metrics (%v)", st, m)
		}
	}
	for _, want := range []string{
		`mycelium_consumer_replied_total{group="workers",topic="m"} 200`,
		`mycelium_producer_replies_total{producer="` + p.ID() + `"} 200`,
		`mycelium_stream_length{topic="m"} 200`,
		`mycelium_group_pending{group="workers",topic="m"} 0`,
		`mycelium_redis_up 1`,
		`mycelium_breaker_state{topic="m"} 0`,
		`mycelium_cache_shared_entries{topic="m"} 200`,
		`mycelium_producer_cache_hits_local_total{producer="` + p.ID() + `"} 1`,
		`mycelium_priority_level_length{level="0",topic="m"} 200`,
		`mycelium_priority_level_length{level="1",topic="m"} 0`,
		`mycelium_consumer_reads_by_level_total{group="workers",level="0",topic="m"} 200`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Every metric the dashboard queries is exported.
	raw, err := os.ReadFile("../prom/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	names := regexp.MustCompile(`mycelium_[a-z_]+`)
	for _, pn := range dash.Panels {
		for _, tg := range pn.Targets {
			for _, name := range names.FindAllString(tg.Expr, -1) {
				if !strings.Contains(text, "\n"+name) {
					t.Errorf("dashboard panel %q queries %s, which /metrics does not export", pn.Title, name)
				}
			}
		}
	}
	// And every metric the alerting rules query.
	rules, err := os.ReadFile("../prom/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names.FindAllString(string(rules), -1) {
		if !strings.Contains(text, "\n"+name) {
			t.Errorf("prom/alerts.yml queries %s, which /metrics does not export", name)
		}
	}
}

// TestAlertRules: the alerting rules load (promtool check rules) and fire
// when they should, and only then (promtool test rules).
func TestAlertRules(t *testing.T) {
	tool := promtool(t)
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(tool, args...)
		cmd.Dir = "../prom"
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "SUCCESS") {
			t.Fatalf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// TestMetricsWhileRedisIsDown: a scrape during an outage still answers,
// quickly, with mycelium_redis_up 0 and the in-process metrics.
func TestMetricsWhileRedisIsDown(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	reg := prometheus.NewRegistry()
	sc := prom.NewStreamCollector(inspect.New(c), "m").ReadEvery(0) // every scrape reads Redis
	reg.MustRegister(sc, prom.NewBreakerCollector(prometheus.Labels{"topic": "m"}))
	hs := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer hs.Close()
	scrape := func() string {
		t.Helper()
		resp, err := http.Get(hs.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape: %d %s", resp.StatusCode, b)
		}
		return string(b)
	}
	if body := scrape(); !strings.Contains(body, "mycelium_redis_up 1") || !strings.Contains(body, `mycelium_stream_length{topic="m"} 0`) {
		t.Fatalf("scrape with Redis up:\n%s", body)
	}
	srv.Signal(syscall.SIGSTOP) // Redis hangs: the worst case for a scrape
	defer srv.Signal(syscall.SIGCONT)
	start := time.Now()
	body := scrape()
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("scrape during the outage took %v", took)
	}
	if !strings.Contains(body, "mycelium_redis_up 0") || strings.Contains(body, "mycelium_stream_length") || !strings.Contains(body, "mycelium_breaker_state") {
		t.Fatalf("scrape with Redis hung:\n%s", body)
	}
}
