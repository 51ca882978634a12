package console_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/console"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "s3cret-token-of-the-console"

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  console.Config
		want string
	}{
		{console.Config{}, ""},
		{console.Config{RootPath: "/console", Token: token, Refresh: time.Second, PrometheusURL: "http://127.0.0.1:9090"}, ""},
		{console.Config{RootPath: "console"}, "root path"},
		{console.Config{RootPath: "/a b"}, "root path"},
		{console.Config{Refresh: 10 * time.Millisecond}, "refresh"},
		{console.Config{History: 48 * time.Hour}, "history"},
		{console.Config{Token: "short"}, "at least 16"},
		{console.Config{PrometheusURL: "ftp://x"}, "Prometheus"},
		{console.Config{SessionTTL: -1}, "session"},
	} {
		err := tc.cfg.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && (!strings.Contains(err.Error(), tc.want) || !errors.Is(err, bus.ErrInvalidConfig))) {
			t.Errorf("Validate(%+v) = %v; want %q", tc.cfg, err, tc.want)
		}
	}
}

// rig is a console on miniredis with one dead letter on topic "jobs".
type rig struct {
	srv  *httptest.Server
	http *http.Client
	logs *bytes.Buffer
	c    *bus.Client
}

func newRig(t *testing.T, cfg console.Config) *rig {
	t.Helper()
	m, c := redistest.Mini(t)
	env := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindEvent, Payload: []byte(`{"fail":true}`)})
	if _, err := m.XAdd("myc:{jobs}:dlq", "*", []string{"m", string(env), "reason", "handler_error", "error", "boom", "attempts", "3", "topic", "jobs"}); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	con, err := console.New(c, cfg, console.WithLogger(zerolog.New(logs)))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	root := strings.TrimSuffix(cfg.RootPath, "/")
	mux.Handle(root+"/", con)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(hc.CloseIdleConnections)
	return &rig{srv: srv, http: hc, logs: logs, c: c}
}

func (r *rig) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := r.http.Get(r.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *rig) post(t *testing.T, path string, form url.Values, header ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k := 0; k+1 < len(header); k += 2 {
		req.Header.Set(header[k], header[k+1])
	}
	resp, err := r.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func TestReadOnlyConsoleRefusesChanges(t *testing.T) {
	r := newRig(t, console.Config{})
	code, page := r.get(t, "/topics/jobs/dead-letters")
	if code != 200 || !strings.Contains(page, "read-only") || strings.Contains(page, "Replay selected") || !strings.Contains(page, "&#34;fail&#34;: true") {
		t.Fatalf("dead letters page = %d, read-only badge %v, replay button %v, decoded %v", code, strings.Contains(page, "read-only"),
			strings.Contains(page, "Replay selected"), strings.Contains(page, "&#34;fail&#34;: true"))
	}
	for _, p := range []string{"/topics/jobs/dead-letters/replay", "/topics/jobs/dead-letters/purge", "/topics/jobs/pause", "/topics/jobs/resume", "/sign-in"} {
		code, body, _ := r.post(t, p, url.Values{"all": {"1"}, "confirm": {"jobs"}, "for": {"1m"}, "token": {token}})
		if code != http.StatusForbidden || !strings.Contains(body, "read-only") {
			t.Errorf("POST %s = %d; want 403 read-only", p, code)
		}
		// Not even with a bearer token: there is none to match.
		if code, _, _ := r.post(t, p, url.Values{"all": {"1"}}, "Authorization", "Bearer "+token); code != http.StatusForbidden {
			t.Errorf("POST %s with a bearer token = %d; want 403", p, code)
		}
	}
	if n, _ := r.c.Redis().Do(context.Background(), r.c.Redis().B().Xlen().Key("myc:{jobs}:dlq").Build()).AsInt64(); n != 1 {
		t.Errorf("dead letters after refused changes = %d, want 1", n)
	}
	if !strings.Contains(r.logs.String(), `"refused"`) {
		t.Errorf("refusals not logged: %s", r.logs)
	}
}

func TestChangesNeedASessionAndItsCSRFToken(t *testing.T) {
	r := newRig(t, console.Config{Token: token, RootPath: "/console"})
	// Without a session: 401, nothing done.
	if code, _, _ := r.post(t, "/console/topics/jobs/dead-letters/purge", url.Values{"confirm": {"jobs"}}); code != http.StatusUnauthorized {
		t.Fatalf("purge without a session = %d, want 401", code)
	}
	// A wrong token does not sign in.
	if code, body, _ := r.post(t, "/console/sign-in", url.Values{"token": {"not-the-token-at-all"}}); code != http.StatusUnauthorized || !strings.Contains(body, "not the console") {
		t.Fatalf("sign-in with a wrong token = %d", code)
	}
	// The right one does (with the line break a file or shell adds), and
	// goes back only to a page of the console.
	code, _, h := r.post(t, "/console/sign-in", url.Values{"token": {token + "\n"}, "next": {"https://evil.example/"}})
	if code != http.StatusSeeOther || h.Get("Location") != "/console/" {
		t.Fatalf("sign-in = %d to %q; want 303 to /console/", code, h.Get("Location"))
	}
	_, page := r.get(t, "/console/topics/jobs/dead-letters")
	m := csrfRE.FindStringSubmatch(page)
	if m == nil || !strings.Contains(page, "Replay selected") {
		t.Fatalf("signed-in dead letters page has no CSRF token or replay button")
	}
	csrf := m[1]
	// Session without CSRF token, or from another site: refused.
	if code, _, _ := r.post(t, "/console/topics/jobs/dead-letters/purge", url.Values{"confirm": {"jobs"}}); code != http.StatusForbidden {
		t.Errorf("purge without the CSRF token = %d, want 403", code)
	}
	if code, _, _ := r.post(t, "/console/topics/jobs/dead-letters/purge", url.Values{"confirm": {"jobs"}, "csrf": {csrf}}, "Origin", "https://evil.example"); code != http.StatusForbidden {
		t.Errorf("purge from another origin = %d, want 403", code)
	}
	if code, _, _ := r.post(t, "/console/topics/jobs/dead-letters/purge", url.Values{"confirm": {"jobs"}, "csrf": {csrf}}, "Sec-Fetch-Site", "cross-site"); code != http.StatusForbidden {
		t.Errorf("purge with Sec-Fetch-Site cross-site = %d, want 403", code)
	}
	// The confirmation must name the topic.
	if code, body, _ := r.post(t, "/console/topics/jobs/dead-letters/purge", url.Values{"confirm": {"job"}, "csrf": {csrf}}); code != http.StatusBadRequest || !strings.Contains(body, "confirm") {
		t.Errorf("purge with a wrong confirmation = %d", code)
	}
	code, _, h = r.post(t, "/console/topics/jobs/dead-letters/purge", url.Values{"confirm": {"jobs"}, "csrf": {csrf}})
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "purged+1") {
		t.Fatalf("purge = %d to %q; want 303 with purged 1", code, h.Get("Location"))
	}
	if !strings.Contains(r.logs.String(), `"action":"purge"`) || !strings.Contains(r.logs.String(), `"what":"purged 1 dead letter(s)"`) || !strings.Contains(r.logs.String(), `"who":"session `) {
		t.Errorf("the purge is not logged with who and what: %s", r.logs)
	}
	if strings.Contains(r.logs.String(), token) {
		t.Errorf("the logs hold the token")
	}
	// Scripts: the token as a bearer token, JSON back.
	code, body, _ := r.post(t, "/console/topics/jobs/pause", url.Values{"for": {"90s"}}, "Authorization", "Bearer "+token)
	if code != 200 || !strings.Contains(body, `"ok":true`) || !strings.Contains(body, "paused until") {
		t.Errorf("pause with a bearer token = %d %s", code, body)
	}
	if code, _, _ := r.post(t, "/console/topics/jobs/pause", url.Values{"for": {"90s"}}, "Authorization", "Bearer wrong-token-wrong-token"); code != http.StatusUnauthorized {
		t.Errorf("pause with a wrong bearer token = %d, want 401", code)
	}
	for _, bad := range []string{"", "-1s", "1y", "800h"} {
		if code, _, _ := r.post(t, "/console/topics/jobs/pause", url.Values{"for": {bad}}, "Authorization", "Bearer "+token); code != http.StatusBadRequest {
			t.Errorf("pause for %q = %d, want 400", bad, code)
		}
	}
	// Replay asks for ids or all, and checks the ids.
	for _, f := range []url.Values{{}, {"id": {"not-an-id"}}, {"all": {"1"}, "id": {"1-0"}}} {
		f.Set("csrf", csrf)
		if code, _, _ := r.post(t, "/console/topics/jobs/dead-letters/replay", f); code != http.StatusBadRequest {
			t.Errorf("replay %v = %d, want 400", f, code)
		}
	}
	// A bad topic name is refused before Redis is asked.
	if code, _ := r.get(t, "/console/topics/a%7Bb/dead-letters"); code != http.StatusBadRequest {
		t.Errorf("dead letters of a{b = %d, want 400", code)
	}
	// Signing out needs the CSRF token too (no forced sign-out from another site).
	if code, _, _ := r.post(t, "/console/sign-out", nil); code != http.StatusForbidden {
		t.Errorf("sign-out without the CSRF token = %d, want 403", code)
	}
	u, _ := url.Parse(r.srv.URL + "/console/")
	old := r.http.Jar.Cookies(u)
	if code, _, _ := r.post(t, "/console/sign-out", url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Errorf("sign-out = %d, want 303", code)
	}
	if code, _, _ := r.post(t, "/console/topics/jobs/resume", url.Values{"csrf": {csrf}}); code != http.StatusUnauthorized {
		t.Errorf("resume after signing out = %d, want 401", code)
	}
	// A copy of the cookie kept from before is refused: the session is over.
	r.http.Jar.SetCookies(u, old)
	if code, _, _ := r.post(t, "/console/topics/jobs/resume", url.Values{"csrf": {csrf}}); code != http.StatusUnauthorized {
		t.Errorf("resume with a signed-out session's cookie = %d, want 401", code)
	}
	if !strings.Contains(r.logs.String(), "console: signed out") {
		t.Errorf("the sign-out is not logged")
	}
}

func TestHostsRedirectsAndMessages(t *testing.T) {
	r := newRig(t, console.Config{Token: token, RootPath: "/console", AllowedHosts: []string{"bus.example.org"}})
	// DNS rebinding: a name the console is not served under is refused.
	for host, want := range map[string]int{"rebind.attacker.example": http.StatusMisdirectedRequest, "bus.example.org": http.StatusOK,
		"localhost": http.StatusOK, "[::1]": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodGet, r.srv.URL+"/console/", nil)
		req.Host = host + ":8090"
		resp, err := r.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET with Host %s = %d, want %d", host, resp.StatusCode, want)
		}
	}
	// Sign-in goes back only to a page of the console.
	for next, want := range map[string]string{"/console/topics/jobs": "/console/topics/jobs", "/console/find?q=1-0": "/console/find?q=1-0",
		"/\t/evil.example": "/console/", "/console/../../x": "/console/", "//evil.example/console/": "/console/",
		"https://evil.example/console/": "/console/", "/console\\evil": "/console/", "/other": "/console/"} {
		next = strings.ReplaceAll(next, `\t`, "\t")
		code, _, h := r.post(t, "/console/sign-in", url.Values{"token": {token}, "next": {next}})
		if code != http.StatusSeeOther || h.Get("Location") != want {
			t.Errorf("sign-in with next %q = %d to %q, want %q", next, code, h.Get("Location"), want)
		}
	}
	// A result is shown only when the console wrote it.
	if _, page := r.get(t, "/console/?done=Your+session+expired"); strings.Contains(page, "session expired") {
		t.Errorf("an unsigned done message is shown")
	}
	_, page := r.get(t, "/console/topics/jobs/dead-letters")
	csrf := csrfRE.FindStringSubmatch(page)[1]
	// A null Origin is another site's; a proxy's Basic Authorization does
	// not turn a signed-in browser into a script.
	if code, _, _ := r.post(t, "/console/topics/jobs/pause", url.Values{"for": {"1m"}, "csrf": {csrf}}, "Origin", "null"); code != http.StatusForbidden {
		t.Errorf("pause with Origin null = %d, want 403", code)
	}
	code, _, h := r.post(t, "/console/topics/jobs/pause", url.Values{"for": {"1m"}, "csrf": {csrf}}, "Authorization", "Basic cHJveHk6cHc=")
	if code != http.StatusSeeOther {
		t.Fatalf("pause with a proxy's Basic Authorization = %d, want 303", code)
	}
	if _, page := r.get(t, h.Get("Location")); !strings.Contains(page, "Done: paused until") {
		t.Errorf("the signed result is not shown after the redirect")
	}
	// Replaying one dead letter asked five times writes it once.
	dls, err := inspect.New(r.c).DeadLetters(context.Background(), "jobs", 10)
	if err != nil || len(dls) != 1 {
		t.Fatal(dls, err)
	}
	id := dls[0].ID
	code, _, h = r.post(t, "/console/topics/jobs/dead-letters/replay", url.Values{"id": {id, id, id, id, id}, "csrf": {csrf}})
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "replayed+1+") {
		t.Errorf("replay of one id five times = %d to %q; want 1 replayed", code, h.Get("Location"))
	}
	if n, _ := r.c.Redis().Do(context.Background(), r.c.Redis().B().Xlen().Key("myc:{jobs}").Build()).AsInt64(); n != 1 {
		t.Errorf("topic length after replaying one dead letter = %d, want 1", n)
	}
	// Find's scan is bounded.
	if code, _ := r.get(t, "/console/find?q=x&scan=100000"); code != http.StatusBadRequest {
		t.Errorf("find with scan 100000 = %d, want 400", code)
	}
}

func TestPagesAndSecurityHeaders(t *testing.T) {
	r := newRig(t, console.Config{})
	for _, p := range []string{"/", "/topics/jobs", "/topics/jobs/dead-letters", "/topics/jobs/dead-letters/purge", "/find?q=1-0", "/find?q=corr-1",
		"/workers", "/redis", "/sign-in", "/api/overview", "/api/history", "/assets/console.js", "/assets/vendor/uPlot.iife.min.js"} {
		resp, err := r.http.Get(r.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s = %d, CSP %q", p, resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
		}
	}
	if code, _ := r.get(t, "/nope"); code != 404 {
		t.Errorf("GET /nope = %d, want 404", code)
	}
	if code, _ := r.get(t, "/topics/jobs/dead-letters?limit=5000"); code != 400 {
		t.Errorf("limit 5000 = %d, want 400", code)
	}
}
