package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
)

// cacheCmd shows and invalidates a topic's response cache.
func cacheCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("cache: want stats or flush (see bus-worker help)")
	}
	sub := args[0]
	fs := flag.NewFlagSet("cache "+sub, flag.ContinueOnError)
	oc := addOpsConn(fs)
	topic := fs.String("topic", "", "topic (required)")
	var (
		asJSON    *bool
		key, data *string
	)
	switch sub {
	case "stats":
		asJSON = fs.Bool("json", false, "print one JSON object")
	case "flush":
		key = fs.String("key", "", "flush only the answer of requests made with this cache key (request --cache-key)")
		data = fs.String("data", "", "flush only the answer of requests with this payload (no cache key)")
	default:
		return usagef("cache: unknown command %q (want stats or flush)", sub)
	}
	given, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if err := bus.ValidateName("topic", *topic); err != nil {
		return usagef("cache %s: --topic: %v", sub, err)
	}
	if sub == "flush" && given["key"] && given["data"] {
		return usagef("cache flush: give --key or --data, not both")
	}
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	if sub == "stats" {
		st, err := insp.CacheStats(ctx, *topic)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(struct {
				Topic      string `json:"topic"`
				Generation uint64 `json:"generation"`
				Epoch      uint64 `json:"epoch"`
				Entries    int    `json:"entries"`
				Bytes      int64  `json:"bytes"`
				InFlight   int    `json:"in_flight"`
				Truncated  bool   `json:"truncated"`
			}{st.Topic, st.Generation, st.Epoch, st.Entries, st.Bytes, st.InFlight, st.Truncated})
		}
		more := ""
		if st.Truncated {
			more = " (scan stopped at its limit: at least)"
		}
		fmt.Fprintf(stdout, "topic %s: generation %d, %d stored answers, %d bytes, %d requests in flight%s\n",
			st.Topic, st.Generation, st.Entries, st.Bytes, st.InFlight, more)
		return nil
	}
	switch {
	case given["key"] || given["data"]:
		h := bus.HashKey(*key)
		what := fmt.Sprintf("key %q", *key)
		if given["data"] {
			h, what = bus.HashPayload([]byte(*data)), "that payload"
		}
		ok, err := insp.FlushCacheEntry(ctx, *topic, h)
		if err != nil {
			return err
		}
		if !ok {
			fmt.Fprintf(stdout, "topic %s: no stored answer for %s\n", *topic, what)
			return nil
		}
		fmt.Fprintf(stdout, "topic %s: flushed the answer for %s\n", *topic, what)
	default:
		g, err := insp.FlushCache(ctx, *topic)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "topic %s: every stored answer flushed (cache generation now %d; old entries expire by their TTL)\n", *topic, g)
	}
	return nil
}
