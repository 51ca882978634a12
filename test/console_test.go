package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/console"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// requireBrowser is set to 1 by `make test` (which installs Debian's
// chromium when missing): then a missing browser fails the browser tests
// instead of skipping them.
const requireBrowser = "MYCELIUM_REQUIRE_BROWSER"

const consoleToken = "console-test-token-0123456789"

// browser is a headless Chromium driven by chromedp, with every console
// error, uncaught exception and failed load it reports recorded.
type browser struct {
	ctx    context.Context
	mu     sync.Mutex
	errors []string
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv(requireBrowser) == "1" {
			t.Fatalf("chromium not found and %s=1: install it (apt-get install chromium)", requireBrowser)
		}
		t.Skip("chromium not found: the browser tests need it (make test installs it)")
	}
	// Chromium's helpers may still write into its profile as it exits: a
	// directory of our own, removed as well as can be.
	profile, err := os.MkdirTemp("", "console-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]), chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.WindowSize(1400, 1000), chromedp.UserDataDir(profile))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	b := &browser{ctx: ctx}
	chromedp.ListenTarget(ctx, func(ev any) {
		var msg string
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = "exception: " + e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.APITypeError || e.Type == runtime.APITypeWarning {
				msg = "console." + string(e.Type) + ":"
				for _, a := range e.Args {
					msg += " " + string(a.Value) + a.Description
				}
			}
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.LevelError || e.Entry.Level == cdplog.LevelWarning {
				msg = "log " + string(e.Entry.Level) + ": " + e.Entry.Text + " " + e.Entry.URL
			}
		}
		if msg != "" {
			b.mu.Lock()
			b.errors = append(b.errors, msg)
			b.mu.Unlock()
		}
	})
	if err := chromedp.Run(ctx, cdplog.Enable()); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
		_ = os.RemoveAll(profile)
	})
	return b
}

// run runs actions within 30 s.
func (b *browser) run(t *testing.T, what string, actions ...chromedp.Action) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// settle loads the page the browser is on again with chromedp.Navigate, so
// that what follows acts on a page whose load chromedp waited for. (A wait
// for an element the page before a form's submission also had returns at
// once, on the old page: the steps after it then race the navigation, "No
// node with given id found"; each such wait here is for something only the
// new page has.)
func (b *browser) settle(t *testing.T) {
	t.Helper()
	var href string
	b.run(t, "current address", chromedp.WaitReady("body", chromedp.ByQuery), chromedp.Evaluate(`location.href`, &href))
	b.run(t, "load "+href+" again", chromedp.Navigate(href), chromedp.WaitReady("body", chromedp.ByQuery))
}

// takeErrors returns and forgets the errors recorded so far.
func (b *browser) takeErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.errors
	b.errors = nil
	return e
}

// shot saves a full-page screenshot as out/console/<name>.png.
func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	var png []byte
	b.run(t, "screenshot "+name, chromedp.FullScreenshot(&png, 100))
	dir := filepath.Join("..", "out", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// axe runs axe-core (vendored from npm, console/testdata) in the page and
// fails on a serious or critical violation.
func (b *browser) axe(t *testing.T, page string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "console", "testdata", "axe.min.js"))
	if err != nil {
		t.Fatal(err)
	}
	var out string
	b.run(t, "axe-core on "+page, chromedp.Evaluate(string(src), nil),
		chromedp.Evaluate(`axe.run(document, {resultTypes: ["violations"]}).then(r => JSON.stringify(r.violations.map(v =>
			({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.html)}))))`, &out,
			func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
	var vs []struct {
		ID, Impact, Help string
		Nodes            []string
	}
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatalf("axe-core on %s: %v (%s)", page, err, out)
	}
	for _, v := range vs {
		if v.Impact == "serious" || v.Impact == "critical" {
			t.Errorf("axe-core on %s: %s violation %s (%s) at %v", page, v.Impact, v.ID, v.Help, v.Nodes)
		} else {
			t.Logf("axe-core on %s: %s violation %s (%s)", page, v.Impact, v.ID, v.Help)
		}
	}
}

// overviewFigures reads the overview table: each topic's cells by field.
func (b *browser) overviewFigures(t *testing.T) map[string]map[string]string {
	t.Helper()
	var out map[string]map[string]string
	b.run(t, "read the overview", chromedp.Evaluate(`Object.fromEntries([...document.querySelectorAll("#topics tbody tr[data-topic]")].map(tr =>
		[tr.dataset.topic, Object.fromEntries([...tr.querySelectorAll("[data-field]")].map(td => [td.dataset.field, td.textContent.trim()]))]))`, &out))
	return out
}

// statsJSON is what `bus-worker stats --json` prints, the fields compared.
type statsJSON struct {
	Topics []struct {
		Topic       string `json:"topic"`
		Length      int64  `json:"length"`
		DeadLetters int64  `json:"dead_letters"`
		Delayed     int64  `json:"delayed"`
		Groups      []struct {
			Pending int64 `json:"pending"`
			Lag     int64 `json:"lag"`
		} `json:"groups"`
	} `json:"topics"`
}

// statsFigures runs `bus-worker stats --json` and returns, per topic, the
// figures the console shows: length, pending (over groups), backlog (the
// most behind group's lag; the length when no group reads it), dead
// letters.
func statsFigures(t *testing.T, args ...string) map[string]map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), append([]string{"stats", "--json"}, args...)...).Output()
	if err != nil {
		t.Fatalf("bus-worker stats --json: %v", err)
	}
	var s statsJSON
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("stats --json printed %q: %v", out, err)
	}
	m := map[string]map[string]string{}
	for _, tp := range s.Topics {
		var pending, backlog int64
		backlog = tp.Length
		if len(tp.Groups) > 0 {
			backlog = 0
		}
		for _, g := range tp.Groups {
			pending += g.Pending
			backlog = max(backlog, g.Lag)
		}
		m[tp.Topic] = map[string]string{"length": itoa(tp.Length), "pending": itoa(pending), "backlog": itoa(backlog),
			"dead_letters": itoa(tp.DeadLetters)}
	}
	return m
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// sameFigures compares the console's figures with stats' for the fields
// stats has.
func sameFigures(t *testing.T, where string, console, stats map[string]map[string]string) {
	t.Helper()
	if len(console) != len(stats) {
		t.Errorf("%s: the console lists %d topics, stats %d", where, len(console), len(stats))
	}
	for topic, want := range stats {
		got, ok := console[topic]
		if !ok {
			t.Errorf("%s: topic %s missing from the console", where, topic)
			continue
		}
		for f, v := range want {
			if got[f] != v {
				t.Errorf("%s: %s %s = %q in the console, %q in bus-worker stats --json", where, topic, f, got[f], v)
			}
		}
	}
}

// serveConsole serves a console of c under /console and runs its sampler.
func serveConsole(t *testing.T, c *bus.Client, cfg console.Config) string {
	t.Helper()
	cfg.RootPath = "/console"
	if cfg.Refresh == 0 {
		cfg.Refresh = 500 * time.Millisecond
	}
	con, err := console.New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/console/", con)
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- con.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		srv.CloseClientConnections()
		srv.Close()
		<-done
	})
	return srv.URL + "/console"
}

// TestConsoleInABrowser drives the console in headless Chromium: the
// overview's figures after a known load match `bus-worker stats --json`
// and follow a new load live; a dead letter is shown decoded, replayed
// through the UI and handled; purge asks for a confirmation; pause and
// resume; a read-only console refuses changes (HTTP status and UI); a page
// of 1,000 topics renders; no page logs an error, axe-core finds no
// serious violation, and each page leaves a screenshot in out/console.
func TestConsoleInABrowser(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := newProducer(t, c, producer.Config{})

	// The load: 25 events nobody reads (orders), 40 requests handled
	// (reasoning), 3 events that fail at first (flaky: dead letters).
	for k := range 25 {
		if _, err := p.Publish(ctx, "orders", fmt.Appendf(nil, `{"order":%d}`, k)); err != nil {
			t.Fatal(err)
		}
	}
	runConsumer(t, c, consumer.Config{Topic: "reasoning", Concurrency: 4}, echo)
	for k := range 40 {
		if _, err := p.Request(ctx, "reasoning", fmt.Appendf(nil, "prompt %d", k)); err != nil {
			t.Fatal(err)
		}
	}
	var failing atomic.Bool
	failing.Store(true)
	var handled sync.Map
	runConsumer(t, c, consumer.Config{Topic: "flaky", Concurrency: 2}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if failing.Load() {
			return nil, fmt.Errorf("model refused the prompt: %w", bus.ErrSkipRetry)
		}
		handled.Store(string(m.Payload), true)
		return nil, nil
	}))
	for k := range 3 {
		if _, err := p.Publish(ctx, "flaky", fmt.Appendf(nil, `{"order":%d,"prompt":"summarise the report","fail":true}`, k), producer.WithHeaders(map[string]string{"tenant": "acme"})); err != nil {
			t.Fatal(err)
		}
	}
	in := inspect.New(c)
	deadLetters := func() int64 {
		tp, err := in.Topic(ctx, "flaky")
		if err != nil {
			t.Fatal(err)
		}
		return tp.DeadLetters
	}
	waitFor(t, 10*time.Second, "3 dead letters", func() bool { return deadLetters() == 3 })
	failing.Store(false)
	// Settled: every request answered and acknowledged.
	waitFor(t, 10*time.Second, "reasoning settled", func() bool {
		tp, err := in.Topic(ctx, "reasoning")
		return err == nil && len(tp.Groups) == 1 && tp.Groups[0].Pending == 0 && tp.Groups[0].Lag == 0
	})

	b := startBrowser(t)
	base := serveConsole(t, c, console.Config{Token: consoleToken})

	// The overview after the load matches bus-worker stats --json.
	b.run(t, "overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(`#topics tbody tr[data-topic="orders"]`, chromedp.ByQuery))
	sameFigures(t, "overview after the load", b.overviewFigures(t), statsFigures(t, "--redis", srv.URL))
	if f := b.overviewFigures(t)["orders"]; f["length"] != "25" || f["backlog"] != "25" || f["dead_letters"] != "0" {
		t.Errorf("orders on the overview = %v; want length 25, backlog 25, 0 dead letters", f)
	}
	if f := b.overviewFigures(t)["flaky"]; f["dead_letters"] != "3" {
		t.Errorf("flaky on the overview = %v; want 3 dead letters", f)
	}
	b.axe(t, "overview")
	// Live: 5 more events show up without a reload, with a rate.
	for range 5 {
		if _, err := p.Publish(ctx, "orders", []byte(`{"order":"late"}`)); err != nil {
			t.Fatal(err)
		}
	}
	b.run(t, "live update", chromedp.Poll(`document.querySelector('#topics tr[data-topic="orders"] [data-field="length"]').textContent.trim() === "30"`, nil,
		chromedp.WithPollingTimeout(15*time.Second)))
	b.run(t, "chart drawn", chromedp.WaitVisible(`.chart canvas`, chromedp.ByQuery))
	b.shot(t, "overview")

	// Sign in through the page.
	b.run(t, "sign-in link", chromedp.Click(`#sign-in`, chromedp.ByQuery), chromedp.WaitVisible(`#token`, chromedp.ByQuery))
	b.settle(t)
	b.run(t, "sign in", chromedp.SendKeys(`#token`, consoleToken, chromedp.ByQuery), chromedp.Click(`#sign-in-go`, chromedp.ByQuery),
		chromedp.WaitVisible(`form[action="/console/sign-out"]`, chromedp.ByQuery))

	// Dead letters, decoded; replay one through the UI; it is handled.
	var payload string
	b.run(t, "dead letters", chromedp.Navigate(base+"/topics/flaky/dead-letters"), chromedp.WaitVisible(`#dead-letters`, chromedp.ByQuery),
		chromedp.Click(`#dead-letters tbody tr details summary`, chromedp.ByQuery),
		chromedp.Text(`#dead-letters tbody tr pre.payload`, &payload, chromedp.ByQuery))
	if !strings.Contains(payload, "\"prompt\": \"summarise the report\"") || !strings.Contains(payload, "\n  \"fail\": true") {
		t.Errorf("dead letter payload shown as %q; want pretty-printed JSON", payload)
	}
	var headers string
	b.run(t, "dead letter headers", chromedp.Text(`#dead-letters tbody tr .msg table`, &headers, chromedp.ByQuery))
	if !strings.Contains(headers, "tenant") || !strings.Contains(headers, "acme") {
		t.Errorf("dead letter headers shown as %q; want tenant acme", headers)
	}
	b.axe(t, "dead letters")
	b.shot(t, "dead-letters")
	var done string
	b.run(t, "replay one", chromedp.Click(`#dead-letters tbody tr button.replay-one`, chromedp.ByQuery),
		chromedp.WaitVisible(`.done`, chromedp.ByQuery), chromedp.Text(`.done`, &done, chromedp.ByQuery))
	if !strings.Contains(done, "replayed 1 dead letter") {
		t.Errorf("after replaying one the page says %q", done)
	}
	waitFor(t, 10*time.Second, "the replayed dead letter handled", func() bool {
		n := 0
		handled.Range(func(any, any) bool { n++; return true })
		return n == 1
	})
	if n := deadLetters(); n != 2 {
		t.Errorf("dead letters after replaying one = %d, want 2", n)
	}
	// Replay the selected one (the first row's box), from the page without
	// the last result on it: the next result is then the new page's.
	b.run(t, "dead letters again", chromedp.Navigate(base+"/topics/flaky/dead-letters"), chromedp.WaitVisible(`#dead-letters`, chromedp.ByQuery))
	b.run(t, "replay selected", chromedp.Click(`#sel-0`, chromedp.ByQuery), chromedp.Click(`#replay-selected-btn`, chromedp.ByQuery),
		chromedp.WaitVisible(`.done`, chromedp.ByQuery), chromedp.Text(`.done`, &done, chromedp.ByQuery))
	if !strings.Contains(done, "replayed 1 dead letter") {
		t.Errorf("after replaying the selected one the page says %q", done)
	}
	waitFor(t, 10*time.Second, "the second replayed dead letter handled", func() bool {
		n := 0
		handled.Range(func(any, any) bool { n++; return true })
		return n == 2
	})

	// Purge asks for a confirmation first; nothing is deleted until then.
	var title string
	b.run(t, "dead letters, then purge", chromedp.Navigate(base+"/topics/flaky/dead-letters"), chromedp.WaitVisible(`#purge-link`, chromedp.ByQuery),
		chromedp.Click(`#purge-link`, chromedp.ByQuery), chromedp.WaitVisible(`#purge-form`, chromedp.ByQuery))
	b.settle(t)
	b.run(t, "purge page title", chromedp.Text(`h1`, &title, chromedp.ByQuery))
	if title != "Purge dead letters of flaky" || deadLetters() != 1 {
		t.Errorf("purge page titled %q with %d dead letters left; want the confirmation and 1", title, deadLetters())
	}
	b.axe(t, "purge")
	b.shot(t, "purge")
	// A wrong name is refused.
	var status string
	b.run(t, "purge with a wrong name", chromedp.SendKeys(`#confirm`, "flak", chromedp.ByQuery), chromedp.Click(`#purge-confirm`, chromedp.ByQuery),
		chromedp.WaitVisible(`#error`, chromedp.ByQuery), chromedp.Text(`#error`, &status, chromedp.ByQuery))
	if !strings.Contains(status, "confirm") || deadLetters() != 1 {
		t.Errorf("purge with a wrong name: %q, %d dead letters; want a refusal and 1", status, deadLetters())
	}
	b.takeErrors() // the 400 of the refused form is logged by the browser: expected
	b.run(t, "purge", chromedp.Navigate(base+"/topics/flaky/dead-letters/purge"), chromedp.WaitVisible(`#purge-form`, chromedp.ByQuery),
		chromedp.SendKeys(`#confirm`, "flaky", chromedp.ByQuery), chromedp.Click(`#purge-confirm`, chromedp.ByQuery),
		chromedp.WaitVisible(`.done`, chromedp.ByQuery), chromedp.Text(`.done`, &done, chromedp.ByQuery))
	if !strings.Contains(done, "purged 1 dead letter") || deadLetters() != 0 {
		t.Errorf("after the purge the page says %q and %d dead letters are left", done, deadLetters())
	}

	// Pause and resume a topic.
	b.run(t, "pause", chromedp.Navigate(base+"/topics/reasoning"), chromedp.WaitVisible(`#pause`, chromedp.ByQuery),
		chromedp.Click(`#pause`, chromedp.ByQuery), chromedp.WaitVisible(`#paused`, chromedp.ByQuery))
	if l, err := in.Limits(ctx, "reasoning"); err != nil || !l.PausedUntil.After(time.Now().Add(9*time.Minute)) {
		t.Errorf("after pausing for 10m: limits %+v, %v", l, err)
	}
	b.settle(t)
	b.axe(t, "topic")
	b.shot(t, "topic")
	b.run(t, "resume", chromedp.Click(`#resume`, chromedp.ByQuery), chromedp.WaitVisible(`#running`, chromedp.ByQuery))
	if l, err := in.Limits(ctx, "reasoning"); err != nil || l.PausedUntil.After(time.Now()) {
		t.Errorf("after resuming: limits %+v, %v", l, err)
	}

	// Find a message by correlation id and by entry id.
	id, err := p.Publish(ctx, "orders", []byte(`{"find":"me"}`))
	if err != nil {
		t.Fatal(err)
	}
	var found string
	b.run(t, "find by entry id", chromedp.Navigate(base+"/find?q="+url.QueryEscape(id)), chromedp.WaitVisible(`#found-h`, chromedp.ByQuery),
		chromedp.Text(`main`, &found, chromedp.ByQuery))
	if !strings.Contains(found, "1 match(es)") || !strings.Contains(found, `"find": "me"`) {
		t.Errorf("find %s shows %q", id, found)
	}
	b.axe(t, "find")
	b.shot(t, "find")

	for _, pg := range []struct{ path, name, ready string }{{"/workers", "workers", "#workers"}, {"/redis", "redis", "#servers"}} {
		b.run(t, pg.name, chromedp.Navigate(base+pg.path), chromedp.WaitVisible(pg.ready, chromedp.ByQuery))
		b.axe(t, pg.name)
		b.shot(t, pg.name)
	}
	var mode string
	b.run(t, "redis mode", chromedp.Navigate(base+"/redis"), chromedp.Text(`#redis-mode`, &mode, chromedp.ByQuery))
	if mode != "standalone" {
		t.Errorf("redis page mode %q, want standalone", mode)
	}

	// Keyboard: the skip link is the first stop and leads to the content.
	var focused string
	b.run(t, "keyboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(`#topics`, chromedp.ByQuery),
		chromedp.KeyEvent("\t"), chromedp.Evaluate(`document.activeElement.textContent`, &focused))
	if focused != "Skip to the content" {
		t.Errorf("first Tab stop = %q, want the skip link", focused)
	}
	if errs := b.takeErrors(); len(errs) > 0 {
		t.Errorf("the pages logged errors: %q", errs)
	}

	// A read-only console: no change offered, every change refused.
	ro := serveConsole(t, c, console.Config{})
	failing.Store(true)
	if _, err := p.Publish(ctx, "flaky", []byte(`{"again":true}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a dead letter", func() bool { return deadLetters() == 1 })
	var buttons int
	b.run(t, "read-only dead letters", chromedp.Navigate(ro+"/topics/flaky/dead-letters"), chromedp.WaitVisible(`#dead-letters`, chromedp.ByQuery),
		chromedp.Text(`#mode`, &mode, chromedp.ByQuery), chromedp.Evaluate(`document.querySelectorAll("button.replay-one, #replay-selected-btn, #purge-link").length`, &buttons))
	if mode != "read-only" || buttons != 0 {
		t.Errorf("read-only dead letters page: mode %q, %d change buttons; want read-only, 0", mode, buttons)
	}
	b.shot(t, "read-only")
	var purgeText string
	b.run(t, "read-only purge page", chromedp.Navigate(ro+"/topics/flaky/dead-letters/purge"), chromedp.Text(`main`, &purgeText, chromedp.ByQuery))
	if !strings.Contains(purgeText, "read-only") || strings.Contains(purgeText, "Purge dead letters\n") {
		t.Errorf("read-only purge page: %q", purgeText)
	}
	for _, path := range []string{"/topics/flaky/dead-letters/replay", "/topics/flaky/dead-letters/purge", "/topics/flaky/pause"} {
		resp, err := http.PostForm(ro+path, url.Values{"all": {"1"}, "confirm": {"flaky"}, "for": {"1m"}})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "read-only") {
			t.Errorf("POST %s to a read-only console = %d", path, resp.StatusCode)
		}
	}
	if n := deadLetters(); n != 1 {
		t.Errorf("dead letters after refused changes = %d, want 1", n)
	}
	if errs := b.takeErrors(); len(errs) > 0 {
		t.Errorf("the read-only pages logged errors: %q", errs)
	}
}

// TestConsoleThousandTopics renders the overview of 1,000 topics and
// reports how long it took (reported, not judged: absolute times are not
// a reason for a test to fail on a shared machine).
func TestConsoleThousandTopics(t *testing.T) {
	srv := redistest.Start(t)
	cfg := srv.Config()
	cfg.Prefix = "big"
	c := redistest.Connect(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc := c.Redis()
	cmds := make(rueidis.Commands, 0, 2000)
	for k := range 1000 {
		key := c.Keys().Topic(fmt.Sprintf("topic-%04d", k))
		cmds = append(cmds, rc.B().Xadd().Key(key).Id("*").FieldValue().FieldValue("m", "x").Build(),
			rc.B().XgroupCreate().Key(key).Group("workers").Id("0").Build())
	}
	for _, r := range rc.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			t.Fatal(err)
		}
	}
	b := startBrowser(t)
	base := serveConsole(t, c, console.Config{})
	var rows int
	for _, run := range []string{"first (reads 1,000 topics)", "warm"} {
		start := time.Now()
		b.run(t, "overview of 1,000 topics", chromedp.Navigate(base+"/"), chromedp.WaitVisible(`#topics`, chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelectorAll("#topics tbody tr[data-topic]").length`, &rows))
		took := time.Since(start)
		if rows != 1000 {
			t.Fatalf("the overview lists %d topics, want 1000", rows)
		}
		t.Logf("overview of 1,000 topics, %s: rendered in %v", run, took.Round(time.Millisecond))
		writeTiming(t, fmt.Sprintf("overview of 1,000 topics, %s: %v", run, took.Round(time.Millisecond)))
	}
	var count string
	b.run(t, "topic count", chromedp.Text(`#topic-count`, &count, chromedp.ByQuery))
	if count != "1000" {
		t.Errorf("topic count %q, want 1000", count)
	}
	b.shot(t, "thousand-topics")
	if errs := b.takeErrors(); len(errs) > 0 {
		t.Errorf("the page logged errors: %q", errs)
	}
}

// writeTiming appends a line to out/console/timings.txt.
func writeTiming(t *testing.T, line string) {
	t.Helper()
	dir := filepath.Join("..", "out", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "timings.txt"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
}

// TestConsoleMatchesStatsOnCluster: `bus-worker console` on the cluster rig
// (partitioned topics over 3 masters, the seed suite's rpc and publish
// cases) shows the figures `bus-worker stats --json` prints, and the Redis
// page lists every master.
func TestConsoleMatchesStatsOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := inspect.New(c).CreateTopic(ctx, "spread", 3); err != nil {
		t.Fatal(err)
	}
	p := newProducer(t, c, producer.Config{})
	for k := range 60 {
		if _, err := p.Publish(ctx, "spread", fmt.Appendf(nil, "e%d", k), producer.PartitionKey(strconv.Itoa(k))); err != nil {
			t.Fatal(err)
		}
	}
	for k := range 7 {
		if _, err := p.Publish(ctx, "single", fmt.Appendf(nil, "s%d", k)); err != nil {
			t.Fatal(err)
		}
	}
	// The seed suite's load: its rpc case on 3 partitions and its publish
	// case, as bus-bench runs them (their topics stay behind).
	for _, args := range [][]string{
		{"--scenario", "rpc", "--concurrency", "20", "--requests", "2000", "--payload", "1024", "--topic", "seed-rpc", "--partitions", "3"},
		{"--scenario", "publish", "--concurrency", "8", "--requests", "3000", "--payload", "256", "--topic", "seed-publish"},
	} {
		if out, err := exec.CommandContext(ctx, buildCmd(t, "bus-bench"), append([]string{"--redis", cl.URL, "--json"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("bus-bench %v: %v\n%s", args, err, out)
		}
	}
	// The console as operators run it: the binary, on a free port.
	cmd := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "console", "--redis", cl.URL, "--http-addr", "127.0.0.1:0", "--refresh", "500ms")
	logs := &redistest.SyncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	var base string
	waitFor(t, 20*time.Second, "the console's address", func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, "bus-worker console: serving "); ok {
				base = strings.TrimSuffix(strings.Fields(rest)[0], "/")
				return true
			}
		}
		return false
	})
	var live struct {
		Topics []struct {
			Name        string `json:"name"`
			Length      int64  `json:"length"`
			Pending     int64  `json:"pending"`
			Backlog     int64  `json:"backlog"`
			DeadLetters int64  `json:"dead_letters"`
		} `json:"topics"`
	}
	resp, err := http.Get(base + "/api/overview")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&live)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]string{}
	for _, tp := range live.Topics {
		got[tp.Name] = map[string]string{"length": itoa(tp.Length), "pending": itoa(tp.Pending), "backlog": itoa(tp.Backlog), "dead_letters": itoa(tp.DeadLetters)}
	}
	sameFigures(t, "cluster", got, statsFigures(t, "--redis", cl.URL))
	if got["spread"]["length"] != "60" || got["single"]["length"] != "7" || got["seed-publish"]["length"] != "3000" || got["seed-rpc"]["length"] == "" {
		t.Errorf("cluster figures = %v; want spread 60, single 7, seed-publish 3000 and seed-rpc", got)
	}
	resp, err = http.Get(base + "/redis")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(string(page), `<tr><th scope="row">127.0.0.1:`); n < 3 || !strings.Contains(string(page), ">cluster<") {
		t.Errorf("the Redis page lists %d nodes (want the 3 masters and the cluster's nodes) in mode cluster", n)
	}
}
