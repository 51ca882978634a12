package prom_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/producer"
	"github.com/egos/mycelium/prom"
)

// A service exports its producer's stage timings and counters, and the
// streams of the topics it calls, on its own /metrics.
func ExampleRegisterProducer() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	client, err := bus.Connect(context.Background(), bus.Config{URL: "redis://" + mr.Addr()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	p, _ := producer.New(client, producer.Config{})
	defer p.Close(context.Background())

	reg := prometheus.NewRegistry()
	if err := prom.RegisterProducer(reg, p); err != nil {
		fmt.Println(err)
		return
	}
	reg.MustRegister(prom.NewStreamCollector(inspect.New(client), "reasoning"))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})) // your mux's "/metrics"
	defer srv.Close()

	_, _ = p.Publish(context.Background(), "reasoning", []byte("hello"))
	resp, err := http.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		name, rest, _ := strings.Cut(line, "{")
		if name == "mycelium_producer_published_total" || name == "mycelium_stream_length" {
			fmt.Println(name, rest[strings.LastIndex(rest, " ")+1:])
		}
	}
	// Output:
	// mycelium_producer_published_total 1
	// mycelium_stream_length 1
}
