package redisx

import (
	"fmt"
	"slices"
	"strings"
)

// The commands each role sends, for least-privilege ACL users (bus-worker
// acl prints them as ACL SETUSER rules; test/acl_test.go runs the suite's
// paths as those users). Keep them in step with the commands this package
// builds and its scripts call: a script's commands are checked against the
// user too.

// connectionCommands are what the client itself sends on connecting (HELLO
// with AUTH and SETNAME) and what health checks send.
// On Redis Cluster the client reads the topology (CLUSTER SLOTS, or SHARDS
// on 8+); with Sentinel it checks the master's ROLE; operator tools ask each
// node's ROLE to find the masters (EachMaster).
var connectionCommands = []string{"hello", "auth", "ping", "client|setname", "select", "quit", "reset",
	"cluster|slots", "cluster|shards", "role"}

// producerCommands: Publish, Request (the reply stream: created with a
// control entry, kept alive with PEXPIRE, read with XREAD, deleted on
// Close), PublishBatch/RequestBatch (MULTI/EXEC), the responders check
// (ZCOUNT, ZCARD; XINFO GROUPS when no worker ever announced itself), and
// the cache (HMGET of the meta hash; the begin script and its commands).
var producerCommands = []string{
	"xadd", "xread", "pexpire", "del", "multi", "exec", "zcount", "zcard", "xinfo|groups", "hmget",
	"evalsha", "eval", "get", "pttl", "lindex", "llen", "lrem", "rpush", "lset",
	"wait", // Config.WaitReplicas
	// cancel notices (XADD to the control stream); delayed events (a
	// script: TIME, ZCARD, ZADD)
	"time", "zadd",
}

// workerCommands: the group (XGROUP CREATE, CREATECONSUMER, DELCONSUMER,
// XINFO GROUPS, CONSUMERS), reading and acknowledging, reclaim and
// heartbeats (XAUTOCLAIM, XCLAIM, XPENDING), replies and dead letters
// (XADD), retention (XTRIM), presence (ZADD, ZREMRANGEBYSCORE, ZREM), the
// cache settle (MULTI, LRANGE, DEL, SET, EXEC), and what bus-worker
// serve's /metrics reads (XLEN, XRANGE, XREVRANGE, SCAN, STRLEN, HMGET).
var workerCommands = []string{
	"xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers",
	"xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xadd", "xtrim", "xlen", "xrange", "xrevrange",
	"zadd", "zremrangebyscore", "zrem", "zcount", "zcard", "multi", "exec", "lrange", "del", "set",
	"scan", "strlen", "hmget",
	// partitions: the count (HMGET), forgetting drained ones (a script:
	// HGET, HSET, TIME; then DEL of their streams)
	"evalsha", "eval", "hget", "hset", "time",
	// the control stream (XREAD); delayed events and retries (scripts:
	// ZRANGEBYSCORE, ZRANGE, ZREM, ZADD, XADD, XCLAIM; ZSCORE when
	// reclaiming)
	"xread", "zrangebyscore", "zrange", "zscore",
}

// operatorCommands: package inspect (stats, pending, dead letters listed,
// replayed and purged by script, reply streams, server facts, cache stats
// and flushes, deleting a topic).
var operatorCommands = []string{
	"scan", "xlen", "xrange", "xrevrange", "xinfo|groups", "xinfo|consumers", "xpending", "pttl", "info",
	"evalsha", "eval", "xadd", "xdel", "del", "hmget", "hincrby", "multi", "exec", "strlen", "zcount", "zcard",
	// partitions: set by script (HGET, HSET, TIME), forgotten with a topic (HDEL)
	"hget", "hset", "time", "hdel",
}

// ACLRoles are the roles ACLCommands knows.
var ACLRoles = []string{"producer", "worker", "operator"}

// ACLCommands returns the commands role needs, sorted, connection commands
// included.
func ACLCommands(role string) ([]string, error) {
	var cmds []string
	switch role {
	case "producer":
		cmds = producerCommands
	case "worker":
		cmds = workerCommands
	case "operator":
		cmds = operatorCommands
	default:
		return nil, fmt.Errorf("unknown role %q (want %s)", role, strings.Join(ACLRoles, ", "))
	}
	out := slices.Concat(connectionCommands, cmds)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ACLRule returns the ACL SETUSER arguments after the user name: reset,
// on, the key pattern of everything under prefix, no channels, no command
// but role's. The password is the caller's to add (">password" or
// "#<sha256>"): it never appears here.
func ACLRule(role, prefix string) ([]string, error) {
	cmds, err := ACLCommands(role)
	if err != nil {
		return nil, err
	}
	rule := []string{"reset", "on", "~" + GlobEscape(prefix) + ":*", "resetchannels", "-@all"}
	for _, c := range cmds {
		rule = append(rule, "+"+c)
	}
	return rule, nil
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
