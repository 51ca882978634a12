package redisx

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/rueidis"
)

// The bus's Lua scripts are one Redis Functions library (docs/security.md,
// "Scripts"): on Redis 7 every script runs by FCALL, so an ACL user needs
// +fcall and never +eval, and no role can run a script of its own (EVAL
// "while true do end" blocks every client; a script that wrote first
// cannot even be killed). The operator loads the library (bus-worker
// functions load, or the first client allowed to: the default user does);
// where Redis has no functions (miniredis: the embedded default and unit
// tests; Redis 6) the scripts run by EVALSHA instead.
//
// The library's name carries its version (a hash of its code), and so does
// every function's: a new release loads beside the old one, and a fleet
// mid-upgrade runs both.

// Script is one of the bus's scripts: a Lua body using KEYS and ARGV,
// every key it touches among KEYS (so it runs on Redis Cluster).
type Script struct {
	name string
	body string
	lua  *rueidis.Lua
}

var (
	scriptsMu sync.Mutex
	scripts   []*Script // the library, in declaration order
)

// newScript declares a script of the library (package-level vars only:
// the library's code is fixed once the package is initialised).
func newScript(name, body string) *Script {
	s := &Script{name: name, body: body, lua: rueidis.NewLuaScript(body)}
	scriptsMu.Lock()
	scripts = append(scripts, s)
	scriptsMu.Unlock()
	return s
}

// lib is the library as Redis loads it.
var lib = sync.OnceValue(func() (l struct{ name, version, code string }) {
	scriptsMu.Lock()
	defer scriptsMu.Unlock()
	h := sha1.New()
	for _, s := range scripts {
		h.Write([]byte(s.name + "\x00" + s.body + "\x00"))
	}
	l.version = hex.EncodeToString(h.Sum(nil))[:8]
	l.name = "mycelium_" + l.version
	var b strings.Builder
	b.WriteString("#!lua name=" + l.name + "\n")
	for _, s := range scripts {
		fmt.Fprintf(&b, "redis.register_function('%s', function(KEYS, ARGV)\n%s\nend)\n", s.function(l.version), s.body)
	}
	l.code = b.String()
	return l
})

func (s *Script) function(version string) string { return "myc_" + s.name + "_" + version }

// LibraryName is the name of this build's library of functions
// ("mycelium_<version>").
func LibraryName() string { return lib().name }

// LibraryCode is the library's source, as FUNCTION LOAD takes it.
func LibraryCode() string { return lib().code }

// How a client runs scripts, learnt from its server's answers.
const (
	modeUnknown int32 = iota // try FCALL
	modeFcall                // the library is loaded
	modeEval                 // this Redis has no functions: EVALSHA
)

// modes holds each client's mode (see ForgetClient).
var modes sync.Map // rueidis.Client -> *atomic.Int32

func modeOf(c rueidis.Client) *atomic.Int32 {
	if m, ok := modes.Load(c); ok {
		return m.(*atomic.Int32)
	}
	m, _ := modes.LoadOrStore(c, new(atomic.Int32))
	return m.(*atomic.Int32)
}

// ForgetClient drops what this package learnt about c (call it when c is
// closed).
func ForgetClient(c rueidis.Client) { modes.Delete(c) }

// ErrFunctionsNotLoaded is returned by a script when the bus's library is
// not loaded on the server and the client's user may neither load it nor
// run scripts (the roles of bus-worker acl): the operator loads it with
// bus-worker functions load. It wraps ErrPermission.
var ErrFunctionsNotLoaded = fmt.Errorf("%w: the bus's Redis functions are not loaded and this user may neither load them nor run scripts: load them as the operator (bus-worker functions load)", ErrPermission)

// Exec runs s with keys and args: by FCALL, loading the library first when
// the server lacks it and the user may load it; by EVALSHA where Redis has
// no functions, or has not the library and the user may run scripts.
func (s *Script) Exec(ctx context.Context, c rueidis.Client, keys, args []string) rueidis.RedisResult {
	mode := modeOf(c)
	if mode.Load() == modeEval {
		return s.lua.Exec(ctx, c, keys, args)
	}
	l := lib()
	call := func() rueidis.RedisResult {
		return c.Do(ctx, c.B().Fcall().Function(s.function(l.version)).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build())
	}
	r := call()
	err := r.Error()
	switch {
	case err == nil:
		mode.CompareAndSwap(modeUnknown, modeFcall)
		return r
	case isUnknownCommand(err):
		mode.Store(modeEval) // no functions in this server
		return s.lua.Exec(ctx, c, keys, args)
	case !isFunctionMissing(err):
		return r
	}
	// The library is missing: a fresh server, one restarted without
	// persistence, a node added to a cluster, or an older release's.
	lerr := LoadFunctions(ctx, c)
	if lerr == nil {
		return call()
	}
	if !IsPermission(lerr) {
		return rueidis.NewErrorResult(fmt.Errorf("redis: loading the bus's functions: %w", lerr))
	}
	// This user may not load it: run the script itself, if it may.
	r = s.lua.Exec(ctx, c, keys, args)
	if err := r.Error(); IsPermission(err) {
		return rueidis.NewErrorResult(fmt.Errorf("%w (%v)", ErrFunctionsNotLoaded, err)) //nolint:errorlint // not wrapped: callers branch on ErrFunctionsNotLoaded, not on the NOPERM behind it
	}
	return r
}

// LoadFunctions loads this build's library on every master (one server's
// own when c is not a cluster client), unless it is there already: it is
// idempotent. A user without FUNCTION LOAD gets an error that
// IsPermission.
func LoadFunctions(ctx context.Context, c rueidis.Client) error {
	l := lib()
	return EachMaster(ctx, c, func(addr string, n rueidis.Client) error {
		err := n.Do(ctx, n.B().FunctionLoad().FunctionCode(l.code).Build()).Error()
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			if addr != "" {
				return fmt.Errorf("redis: FUNCTION LOAD on %s: %w", addr, err)
			}
			return err
		}
		return nil
	})
}

// Library is one library of the bus's found on a server.
type Library struct {
	Node      string   // the master's address ("" when not a cluster)
	Name      string   // mycelium_<version>
	Current   bool     // this build's
	Functions []string // its functions
}

// ListFunctions returns the bus's libraries on every master (FUNCTION
// LIST LIBRARYNAME mycelium_).
func ListFunctions(ctx context.Context, c rueidis.Client) ([]Library, error) {
	var out []Library
	err := EachMaster(ctx, c, func(addr string, n rueidis.Client) error {
		libs, err := n.Do(ctx, n.B().FunctionList().Libraryname("mycelium_*").Build()).ToArray()
		if err != nil {
			return err
		}
		for _, e := range libs {
			m, err := e.AsMap()
			if err != nil {
				return fmt.Errorf("redis: FUNCTION LIST: %w", err)
			}
			nameMsg, fnsMsg := m["library_name"], m["functions"]
			name, _ := nameMsg.ToString()
			if !strings.HasPrefix(name, "mycelium_") {
				continue
			}
			lb := Library{Node: addr, Name: name, Current: name == LibraryName()}
			fns, _ := fnsMsg.ToArray()
			for _, f := range fns {
				fm, err := f.AsMap()
				if err != nil {
					continue
				}
				fnMsg := fm["name"]
				if fn, err := fnMsg.ToString(); err == nil {
					lb.Functions = append(lb.Functions, fn)
				}
			}
			slices.Sort(lb.Functions)
			out = append(out, lb)
		}
		return nil
	})
	return out, err
}

// DeleteOldFunctions deletes the bus's libraries other than this build's
// on every master and returns their names (node-qualified on a cluster).
// Run it once no process of an older release runs.
func DeleteOldFunctions(ctx context.Context, c rueidis.Client) ([]string, error) {
	libs, err := ListFunctions(ctx, c)
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for _, lb := range libs {
		if lb.Current {
			continue
		}
		n := c
		if lb.Node != "" {
			n = c.Nodes()[lb.Node]
		}
		if n == nil {
			errs = append(errs, fmt.Errorf("redis: node %s gone", lb.Node))
			continue
		}
		if err := n.Do(ctx, n.B().FunctionDelete().LibraryName(lb.Name).Build()).Error(); err != nil {
			errs = append(errs, err)
			continue
		}
		name := lb.Name
		if lb.Node != "" {
			name = lb.Node + " " + name
		}
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}

// isFunctionMissing: FCALL of a function the server does not have.
func isFunctionMissing(err error) bool {
	re, ok := redisErr(err)
	return ok && strings.Contains(re.Error(), "Function not found")
}

// isUnknownCommand: a server without FCALL (miniredis, Redis 6).
func isUnknownCommand(err error) bool {
	re, ok := redisErr(err)
	return ok && strings.Contains(strings.ToLower(re.Error()), "unknown command")
}
