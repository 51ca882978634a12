package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

// cookieName is the session cookie's name.
const cookieName = "mycelium_console"

// maxForm bounds a change's form (ids of selected dead letters and a few
// fields).
const maxForm = 1 << 20

// Errors of changes, shown on the page and logged.
var (
	errReadOnly = errors.New("this console is read-only: it was started without a token (--console-token-file)")
	errSignIn   = errors.New("sign in with the console's token to make changes")
	errCSRF     = errors.New("the form is stale or came from another site (CSRF check failed): reload the page and try again")
)

// session is a signed-in browser: the cookie's value holds its expiry and
// a random id, signed with the console's key.
type session struct {
	value   string // the cookie's value
	id      string // a short form of its random id, for the logs
	expires time.Time
}

func (c *Console) mac(parts ...[]byte) []byte {
	h := hmac.New(sha256.New, c.key)
	for _, p := range parts {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}

// newSession signs a session valid for SessionTTL.
func (c *Console) newSession() (session, error) {
	var b [8 + 16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().Add(c.cfg.SessionTTL).Unix()))
	if _, err := rand.Read(b[8:]); err != nil {
		return session{}, err
	}
	v := append(b[:], c.mac([]byte("session"), b[:])...)
	return session{value: base64.RawURLEncoding.EncodeToString(v), id: hex.EncodeToString(b[8:12])}, nil
}

// sessionOf returns r's valid session, if any.
func (c *Console) sessionOf(r *http.Request) (session, bool) {
	if c.cfg.Token == "" {
		return session{}, false
	}
	ck, err := r.Cookie(c.cookieName(r))
	if err != nil {
		return session{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(ck.Value)
	if err != nil || len(b) != 8+16+sha256.Size {
		return session{}, false
	}
	if !hmac.Equal(b[24:], c.mac([]byte("session"), b[:24])) {
		return session{}, false
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(b[:8])), 0)
	if time.Now().After(exp) {
		return session{}, false
	}
	c.mu.Lock()
	_, revoked := c.revoked[ck.Value]
	c.mu.Unlock()
	if revoked {
		return session{}, false
	}
	return session{value: ck.Value, id: hex.EncodeToString(b[8:12]), expires: exp}, true
}

// csrf is the CSRF token of a session: forms that change things carry it.
func (c *Console) csrf(s session) string {
	return base64.RawURLEncoding.EncodeToString(c.mac([]byte("csrf"), []byte(s.value)))
}

// script reports whether r is a script's: it sends a bearer token (any
// other Authorization, a proxy's Basic one say, is not the console's).
func script(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// bearer reports whether r carries the console's token as a bearer token.
func (c *Console) bearer(r *http.Request) bool {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && c.cfg.Token != "" && subtle.ConstantTimeCompare([]byte(v), []byte(c.cfg.Token)) == 1
}

// secure reports whether the session cookie is sent over HTTPS only.
func (c *Console) secure(r *http.Request) bool { return c.cfg.SecureCookies || r.TLS != nil }

// cookieName is the session cookie's name: with the __Secure- prefix when
// it is Secure (a browser then refuses it from plain HTTP).
func (c *Console) cookieName(r *http.Request) string {
	if c.secure(r) {
		return "__Secure-" + cookieName
	}
	return cookieName
}

// authorize decides whether r may change things and names who asks.
func (c *Console) authorize(r *http.Request) (who string, status int, err error) {
	if c.cfg.Token == "" {
		return "anonymous from " + r.RemoteAddr, http.StatusForbidden, errReadOnly
	}
	if script(r) {
		if c.bearer(r) {
			return "bearer token from " + r.RemoteAddr, 0, nil
		}
		return "wrong credentials from " + r.RemoteAddr, http.StatusUnauthorized, errSignIn
	}
	s, status, err := c.formSession(r)
	who = "anonymous from " + r.RemoteAddr
	if s.id != "" {
		who = "session " + s.id + " from " + r.RemoteAddr
	}
	return who, status, err
}

// formSession returns the session of a form post that carries its CSRF
// token from this site: errSignIn (401) without a session, errCSRF (403,
// with the session, for the logs) for a missing or wrong token or another
// site's post.
func (c *Console) formSession(r *http.Request) (session, int, error) {
	s, ok := c.sessionOf(r)
	if !ok {
		return session{}, http.StatusUnauthorized, errSignIn
	}
	if !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(c.csrf(s))) != 1 {
		return s, http.StatusForbidden, errCSRF
	}
	return s, 0, nil
}

// sameOrigin rejects a request a browser says came from another site.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if o == "null" || err != nil || u.Host != r.Host { // null: a sandboxed frame or a redirect from elsewhere
			return false
		}
	}
	return true
}

// mutation wraps a change: it bounds and parses the form, authorizes the
// request, runs do, logs who did what and with which result, and answers
// the browser (a redirect back with a message) or a script (JSON).
func (c *Console) mutation(action string, do func(r *http.Request) (what, back string, err error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			c.fail(w, r, http.StatusBadRequest, errors.New("the form could not be read"))
			return
		}
		topic := r.PathValue("topic")
		who, status, err := c.authorize(r)
		if err != nil {
			c.log.Warn().Str("action", action).Str("topic", topic).Str("who", who).
				Str("refused", err.Error()).Msg("console: change refused")
			c.fail(w, r, status, err)
			return
		}
		what, back, err := do(r)
		if err != nil && what != "" {
			err = fmt.Errorf("%s, but: %w", what, err) // a partial success (replay all with some refused) says what it did
		}
		if err != nil {
			c.log.Warn().Str("error", err.Error()).Str("action", action).Str("topic", topic).Str("who", who).Str("what", what).
				Msg("console: change failed")
		} else {
			c.log.Info().Str("action", action).Str("topic", topic).Str("who", who).Str("what", what).Msg("console: change")
		}
		if err != nil {
			c.fail(w, r, statusOf(err), err)
			return
		}
		if script(r) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "action": action, "topic": topic, "result": what})
			return
		}
		http.Redirect(w, r, back+"?"+c.doneQuery(what), http.StatusSeeOther)
	}
}

// signIn opens a session for the right token.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if c.cfg.Token == "" {
		c.fail(w, r, http.StatusForbidden, errReadOnly)
		return
	}
	if err := r.ParseForm(); err != nil || !sameOrigin(r) {
		c.fail(w, r, http.StatusBadRequest, errors.New("the sign-in form could not be read"))
		return
	}
	// The token as pasted or sent by a script, without the line break a
	// file or a shell adds (the token file is read trimmed too).
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(r.PostFormValue("token"))), []byte(c.cfg.Token)) != 1 {
		c.log.Warn().Str("remote", r.RemoteAddr).Msg("console: sign-in with a wrong token")
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, r, "signin", "Sign in", map[string]any{"Error": "That is not the console's token.", "Next": c.next(r)})
		return
	}
	s, err := c.newSession()
	if err != nil {
		c.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: c.cookieName(r), Value: s.value, Path: c.root + "/", HttpOnly: true,
		Secure: c.secure(r), SameSite: http.SameSiteStrictMode, MaxAge: int(c.cfg.SessionTTL / time.Second)})
	c.log.Info().Str("who", "session "+s.id+" from "+r.RemoteAddr).Msg("console: signed in")
	http.Redirect(w, r, c.next(r), http.StatusSeeOther)
}

// signOut ends the browser's session: its cookie is dropped and its id
// refused from now on (until it would have expired anyway).
func (c *Console) signOut(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, http.StatusBadRequest, errors.New("the form could not be read"))
		return
	}
	s, status, err := c.formSession(r)
	if err != nil {
		c.fail(w, r, status, err)
		return
	}
	c.mu.Lock()
	now := time.Now()
	for id, until := range c.revoked {
		if now.After(until) {
			delete(c.revoked, id)
		}
	}
	c.revoked[s.value] = s.expires
	c.mu.Unlock()
	c.log.Info().Str("who", "session "+s.id+" from "+r.RemoteAddr).Msg("console: signed out")
	http.SetCookie(w, &http.Cookie{Name: c.cookieName(r), Value: "", Path: c.root + "/", HttpOnly: true, MaxAge: -1,
		Secure: c.secure(r), SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, c.root+"/", http.StatusSeeOther)
}

// next is where a sign-in goes back to: a page of this console only (a
// path under the root, no scheme or host, nothing a browser would strip or
// read as another origin).
func (c *Console) next(r *http.Request) string {
	home := c.root + "/"
	n := r.FormValue("next")
	for _, b := range []byte(n) {
		if b < 0x20 || b == 0x7f || b == '\\' {
			return home
		}
	}
	u, err := url.Parse(n)
	if n == "" || err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || strings.HasPrefix(n, "//") {
		return home
	}
	p := path.Clean(u.Path)
	if p != c.root && !strings.HasPrefix(p, home) {
		return home
	}
	if strings.HasSuffix(u.Path, "/") && p != "/" {
		p += "/"
	}
	if u.RawQuery != "" {
		p += "?" + u.RawQuery
	}
	return p
}

// doneQuery is the query a change redirects with: its result and a MAC,
// so that a page shows only results the console itself wrote.
func (c *Console) doneQuery(what string) string {
	return "done=" + url.QueryEscape(what) + "&sig=" + base64.RawURLEncoding.EncodeToString(c.mac([]byte("done"), []byte(what))[:16])
}

// done returns r's change result when the console signed it, else "".
func (c *Console) done(r *http.Request) string {
	q := r.URL.Query()
	what, sig := q.Get("done"), q.Get("sig")
	want := base64.RawURLEncoding.EncodeToString(c.mac([]byte("done"), []byte(what))[:16])
	if what == "" || subtle.ConstantTimeCompare([]byte(sig), []byte(want)) != 1 {
		return ""
	}
	return what
}

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, "signin", "Sign in", map[string]any{"Next": c.next(r)})
}
