package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

func TestDoBatchOnMiniredis(t *testing.T) {
	_, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	xadd := func(key, v string) rueidis.Completed { return (&Add{Key: key, Data: []byte(v)}).cmd(c) }

	t.Run("one command, no transaction", func(t *testing.T) {
		res := DoBatch(ctx, c, rueidis.Commands{xadd("s1", "a")})
		if len(res) != 1 {
			t.Fatalf("%d results, want 1", len(res))
		}
		if _, err := res[0].ToString(); err != nil {
			t.Fatalf("XADD = %v", err)
		}
	})
	t.Run("one per command, tail after EXEC", func(t *testing.T) {
		if err := CreateGroup(ctx, c, "s2", "g", "0"); err != nil {
			t.Fatal(err)
		}
		res := DoBatch(ctx, c, rueidis.Commands{xadd("s2", "a"), xadd("s2", "b"), xadd("other", "c")},
			c.B().Xlen().Key("s2").Build())
		if len(res) != 4 {
			t.Fatalf("%d results, want 4", len(res))
		}
		var ids []string
		for i := range 3 {
			id, err := res[i].ToString()
			if err != nil || !strings.Contains(id, "-") {
				t.Fatalf("result %d = %q, %v; want an entry id", i, id, err)
			}
			ids = append(ids, id)
		}
		if ids[0] >= ids[1] {
			t.Errorf("ids %q, %q not in command order", ids[0], ids[1])
		}
		if n, err := res[3].AsInt64(); err != nil || n != 2 {
			t.Errorf("tail XLEN = %d, %v; want 2 (it runs after the transaction)", n, err)
		}
	})
	t.Run("a command failing while running fails alone", func(t *testing.T) {
		// One stream, so one transaction: the middle XADD's id is below the
		// first's, which Redis refuses only when it runs.
		withID := func(id string) rueidis.Completed {
			return c.B().Xadd().Key("s3").Id(id).FieldValue().FieldValue(Field, "v").Build()
		}
		res := DoBatch(ctx, c, rueidis.Commands{withID("5-0"), withID("1-0"), withID("6-0")})
		if id, err := res[0].ToString(); err != nil || id != "5-0" {
			t.Errorf("first XADD = %q, %v", id, err)
		}
		if err := res[1].Error(); !IsRedisReply(err) || !strings.Contains(err.Error(), "smaller") {
			t.Errorf("XADD below the top id = %v, want Redis's refusal", err)
		}
		if id, err := res[2].ToString(); err != nil || id != "6-0" {
			t.Errorf("third XADD = %q, %v", id, err)
		}
	})
	t.Run("a command refused when queued aborts all", func(t *testing.T) {
		bad := c.B().Arbitrary("XADD").Keys("s4").Build() // wrong number of arguments
		res := DoBatch(ctx, c, rueidis.Commands{xadd("s4", "a"), bad}, c.B().Ping().Build())
		for i, r := range res[:2] {
			if err := r.Error(); !IsRedisReply(err) {
				t.Errorf("result %d = %v, want a Redis error", i, err)
			}
		}
		if err := res[1].Error(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "wrong number") {
			t.Errorf("bad command's result = %v, want its own queue-time error", err)
		}
		if err := res[2].Error(); err != nil {
			t.Errorf("tail PING = %v, want it to run after the aborted transaction", err)
		}
		if n, _ := c.Do(ctx, c.B().Xlen().Key("s4").Build()).AsInt64(); n != 0 {
			t.Errorf("XLEN s4 = %d, want 0: the aborted transaction wrote nothing", n)
		}
	})
	t.Run("tail alone", func(t *testing.T) {
		res := DoBatch(ctx, c, nil, c.B().Ping().Build())
		if len(res) != 1 || res[0].Error() != nil {
			t.Fatalf("DoBatch(no cmds, PING) = %v", res)
		}
	})
	t.Run("a closed client fails every command", func(t *testing.T) {
		_, c2 := miniClient(t)
		c2.Close()
		res := DoBatch(ctx, c2, rueidis.Commands{xadd("s5", "a"), xadd("s5", "b")}, c2.B().Ping().Build())
		for i, r := range res {
			if err := r.Error(); err == nil || IsRedisReply(err) {
				t.Errorf("result %d = %v, want a client error", i, err)
			}
		}
	})
}

// TestExecResults covers the replies a live server cannot be made to give.
func TestExecResults(t *testing.T) {
	ok := rueidis.NewResult(rueidis.RedisMessage{}, nil)
	netErr := errors.New("connection reset")
	for _, tt := range []struct {
		name string
		res  []rueidis.RedisResult
		want string
	}{
		{"EXEC lost", []rueidis.RedisResult{ok, ok, rueidis.NewErrorResult(netErr)}, "connection reset"},
		{"MULTI lost", []rueidis.RedisResult{rueidis.NewErrorResult(netErr), rueidis.NewErrorResult(netErr), rueidis.NewErrorResult(netErr)}, "connection reset"},
		{"EXEC not an array", []rueidis.RedisResult{ok, ok, ok}, ""},
	} {
		out := make([]rueidis.RedisResult, 1)
		execResults(out, tt.res)
		err := out[0].Error()
		if err == nil || (tt.want != "" && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: result = %v, want an error %q", tt.name, err, tt.want)
		}
	}
}

func TestByKey(t *testing.T) {
	_, c := miniClient(t)
	x := func(key string) rueidis.Completed { return (&Add{Key: key, Data: []byte("v")}).cmd(c) }
	for _, tt := range []struct {
		keys []string
		want string
	}{
		{[]string{"a", "a", "a"}, "[[0 1 2]]"},
		{[]string{"a", "b", "a", "c", "b"}, "[[0 2] [1 4] [3]]"},
		{[]string{"a", "b"}, "[[0] [1]]"},
		{nil, "[]"},
	} {
		cmds := make(rueidis.Commands, len(tt.keys))
		for i, k := range tt.keys {
			cmds[i] = x(k)
		}
		if got := fmt.Sprint(byKey(cmds)); got != tt.want {
			t.Errorf("byKey(%v) = %s, want %s", tt.keys, got, tt.want)
		}
	}
}

// TestDoBatchInterleavedKeys checks that results come back in command
// order when the commands' keys interleave (each key's commands form one
// transaction).
func TestDoBatchInterleavedKeys(t *testing.T) {
	_, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys := []string{"a", "b", "a", "c", "b", "a"}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = c.B().Xadd().Key(k).Id("*").FieldValue().FieldValue("i", strconv.Itoa(i)).Build()
	}
	res := DoBatch(ctx, c, cmds)
	for i, k := range keys {
		id, err := res[i].ToString()
		if err != nil {
			t.Fatalf("XADD %d = %v", i, err)
		}
		got, err := c.Do(ctx, c.B().Xrange().Key(k).Start(id).End(id).Build()).AsXRange()
		if err != nil || len(got) != 1 || got[0].FieldValues["i"] != strconv.Itoa(i) {
			t.Errorf("result %d (id %s of %s) holds %v, %v; want field i=%d", i, id, k, got, err, i)
		}
	}
}
