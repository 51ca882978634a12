package redisx

import (
	"fmt"
	"slices"
	"strings"
)

// The ACL users of each role (docs/security.md, "Roles"): bus-worker acl
// prints them as ACL SETUSER rules, test/acl_test.go and the secure run of
// make test run the bus as those users, test/security_test.go attacks
// with them. Keep them in step with the commands this package builds and
// its scripts call: a script's commands are checked against the user too
// (a function runs with its caller's rights, never more).
//
// A rule is Redis 7's: key patterns with read (%R~) and write (%W~)
// permissions and selectors "(…)" that tie commands to key patterns: a
// command runs when the user's root permissions or one selector allow it
// and every key it names.

// connectionCommands are what the client itself sends on connecting (HELLO
// with AUTH and SETNAME) and what health checks send.
// On Redis Cluster the client reads the topology (CLUSTER SLOTS, or SHARDS
// on 8+); with Sentinel it checks the master's ROLE; operator tools ask each
// node's ROLE to find the masters (EachMaster).
var connectionCommands = []string{"hello", "auth", "ping", "client|setname", "select", "quit", "reset",
	"cluster|slots", "cluster|shards", "role"}

// workerCommands: the group (XGROUP CREATE, CREATECONSUMER, DELCONSUMER,
// XINFO GROUPS, CONSUMERS), reading and acknowledging, reclaim and
// heartbeats (XAUTOCLAIM, XCLAIM, XPENDING), dead letters (XADD),
// retention (XTRIM), presence (ZADD, ZREMRANGEBYSCORE, ZREM), the cache
// settle (MULTI, LRANGE, DEL, SET, EXEC), and what bus-worker serve's
// /metrics reads (XLEN, XRANGE, XREVRANGE, SCAN, STRLEN, HMGET), on its
// topics' keys; replies only by XADD to reply streams (another selector).
var workerCommands = []string{
	"xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers",
	"xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xadd", "xtrim", "xlen", "xrange", "xrevrange",
	"zadd", "zremrangebyscore", "zrem", "zcount", "zcard", "multi", "exec", "lrange", "del", "set",
	"scan", "strlen", "hmget",
	// partitions: the count (HMGET), forgetting drained ones (a function:
	// HGET, HSET, TIME; then DEL of their streams)
	"fcall", "hget", "hset", "time",
	// the control stream (XREAD); delayed events and retries (functions:
	// TYPE, ZRANGEBYSCORE, ZRANGE, ZREM, ZADD, XADD, XCLAIM; ZSCORE when
	// reclaiming)
	"xread", "type", "zrangebyscore", "zrange", "zscore",
	// the lag's repair (a function: XINFO STREAM, XINFO GROUPS, XGROUP
	// SETID to the group's own last id)
	"xinfo|stream", "xgroup|setid",
	// fleet-wide limits (functions permit, permitdone, pause: HMGET, TIME,
	// ZRANGEBYSCORE, HDEL, ZREM, HVALS, HINCRBY, ZADD, GET, SET, HGET,
	// HSET, DEL)
	"hvals", "hincrby", "hdel", "get",
}

// operatorCommands: package inspect (stats, pending, dead letters listed,
// replayed and purged by function, reply streams, server facts, cache
// stats and flushes, deleting a topic) and the bus's functions (loaded,
// listed, old releases' deleted).
var operatorCommands = []string{
	"scan", "xlen", "xrange", "xrevrange", "xinfo|groups", "xinfo|consumers", "xpending", "pttl", "info", "zrange",
	"fcall", "xadd", "xdel", "del", "hmget", "hincrby", "multi", "exec", "strlen", "zcount", "zcard",
	// dead letters purged by age (bus-worker dlq purge --older-than, the
	// console's purge)
	"xtrim",
	// partitions: set by function (HGET, HSET, TIME), forgotten with a
	// topic (HDEL)
	"hget", "hset", "time", "hdel",
	"function|load", "function|list", "function|delete",
}

// ACLRoles are the roles ACLRule knows.
var ACLRoles = []string{"producer", "worker", "operator"}

// ACLSpec is one user's grant.
type ACLSpec struct {
	Role   string // producer, worker or operator
	Prefix string
	// User is the user's name. A producer's reply streams are named after
	// it (<prefix>:{r.<user>.<id>}, producer.Config.Owner): it reads
	// those and no other producer's.
	User string
	// Topics are the topics a producer or worker may use (their
	// partitions too); none: every topic.
	Topics []string
}

// ACLRule returns the ACL SETUSER arguments after the user name: reset,
// on, no channels, no command but the role's, each on its keys only. The
// password is the caller's to add (">password" or "#<sha256>"): it never
// appears here. A producer's rule names its user (its reply streams).
func ACLRule(s ACLSpec) ([]string, error) {
	p := GlobEscape(s.Prefix)
	var tags []string // hash-tag patterns of the topics (and partitions)
	if len(s.Topics) == 0 {
		// Every tag that is not a reply stream's ("r.<…>"): those whose
		// first byte is not 'r', those of 'r' and a byte other than '.',
		// and the tag "r" itself.
		tags = []string{"[^r]*", "r[^.]*", "r"}
	}
	for _, t := range s.Topics {
		tags = append(tags, GlobEscape(t), GlobEscape(t)+"#*")
	}
	// keys: the patterns of key classes (suffixes) of every tag, with perm
	// "%R" (read only), "%W" (write only) or "" (both).
	keys := func(perm string, suffixes ...string) []string {
		var out []string
		for _, t := range tags {
			for _, sfx := range suffixes {
				out = append(out, perm+"~"+p+":{"+t+"}"+sfx)
			}
		}
		return out
	}
	cmds := func(cs ...string) []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = "+" + c
		}
		return out
	}
	selector := func(parts ...[]string) string { return "(" + strings.Join(slices.Concat(parts...), " ") + ")" }
	rule := []string{"reset", "on", "resetchannels", "-@all"}
	rule = append(rule, cmds(connectionCommands...)...)
	switch s.Role {
	case "producer":
		if err := ValidOwner(s.User); err != nil {
			return nil, err
		}
		// Root: requests, events and notices are written and never read
		// (XADD only, write-only keys): a producer sees no other
		// caller's prompt. Batches (MULTI/EXEC), WAIT and the functions'
		// clock (TIME) name no key.
		rule = append(rule, cmds("multi", "exec", "wait", "time", "xadd")...)
		rule = append(rule, keys("%W", "", levelStreams, ":ctl")...)
		rule = append(rule,
			// Its own reply streams, and no one else's.
			selector([]string{"~" + p + ":{r." + GlobEscape(s.User) + ".*}"}, cmds("xadd", "xread", "pexpire", "del")),
			// Partition counts, cache generations, presence: read only.
			selector(keys("%R", ":meta", ":workers"), cmds("hmget", "zcount", "zcard")),
			// Whether anyone serves a topic that no worker announced, and
			// its backlog (backpressure): its length and groups (names
			// and counts, no entry).
			selector(keys("%R", "", levelStreams), cmds("xinfo|groups", "xlen")),
			// The cache's entries and in-flight markers (the begin
			// function's commands).
			selector(keys("", ":c:*", ":f:*"), cmds("get", "pttl", "lindex", "llen", "lrem", "rpush", "lset", "del", "pexpire")),
			// Delayed events (the delay function).
			selector(keys("%W", ":delayed", levelStreams+":delayed"), cmds("zadd", "zcard")),
			// Idempotent publishes' records (the once function).
			selector(keys("", ":once:*"), cmds("get", "set")),
			// The bus's functions: FCALL names its keys, which need read
			// and write permission; what a function runs is checked
			// command by command against the rules above.
			selector(keys("", "", levelStreams, ":meta", ":c:*", ":f:*", ":delayed", levelStreams+":delayed", ":once:*"), cmds("fcall")),
		)
	case "worker":
		rule = append(rule, cmds(workerCommands...)...)
		rule = append(rule, keys("", "", ":*")...)
		// Replies: appended to reply streams (NOMKSTREAM), nothing else.
		rule = append(rule, selector([]string{"%W~" + p + ":{r.*}"}, cmds("xadd")))
	case "operator":
		rule = append(rule, cmds(operatorCommands...)...)
		rule = append(rule, "~"+p+":*")
	default:
		return nil, fmt.Errorf("unknown role %q (want %s)", s.Role, strings.Join(ACLRoles, ", "))
	}
	return rule, nil
}

// levelStreams is the key suffix of a partition's priority levels 1 to 9
// (bus.Keys.Level): one digit, so the pattern matches nothing else.
const levelStreams = ":p[1-9]"

// ValidOwner checks a producer's owner name (its user's): it names the
// producer's reply streams and their key pattern, so it holds no '.' (the
// pattern of "a" would match "a.b"'s streams) and no glob or hash-tag
// character.
func ValidOwner(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("a producer's rule needs its user name (its reply streams are named after it)")
	case strings.ContainsAny(name, ".{}*?[]\\ "), len(name) > 100:
		return fmt.Errorf("user name %q: a producer's name is at most 100 bytes without '.', braces, spaces or glob characters (*?[]\\): its reply streams' key pattern is made of it", name)
	}
	for _, r := range name {
		if r < ' ' || r == 0x7f {
			return fmt.Errorf("user name %q holds a control character", name)
		}
	}
	return nil
}

// GlobEscape escapes the characters a key pattern (SCAN MATCH, an ACL key
// rule) treats specially.
func GlobEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
