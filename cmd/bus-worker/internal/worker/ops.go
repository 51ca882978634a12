package worker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/prom"
)

// registry gathers what /metrics exports: each topic's consumer stage
// timings and counters, its breaker, streams and shared cache, and the Go
// runtime and process.
func registry(c *bus.Client, t *topics) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, co := range t.cos {
		if err := prom.RegisterConsumer(reg, co); err != nil {
			return nil, err
		}
	}
	cols := []prometheus.Collector{
		// The default Go metrics, plus the live heap (marked by the last
		// GC): the figure to watch for a leak, where the allocated heap
		// saws up and down with every cycle.
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prom.NewStreamCollector(inspect.New(c), t.names...),
		prom.NewCacheCollector(inspect.New(c), t.names...),
	}
	for _, m := range t.brm {
		cols = append(cols, m)
	}
	for _, col := range cols {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// topicStats is one topic's /stats: its consumer's counters and its
// breaker's state.
type topicStats struct {
	consumer.Stats
	Breaker string `json:"breaker,omitempty"`
}

// opsMux serves the operator endpoints. /stats is one topicStats for one
// topic, {"topics": {name: topicStats}} for several.
func opsMux(t *topics, reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := t.run.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		for i, br := range t.brs {
			if br != nil && br.State() == breaker.Open {
				what := "downstream circuit breaker open"
				if len(t.names) > 1 {
					what = "topic " + t.names[i] + ": " + what
				}
				http.Error(w, "not ready: "+what, http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		all := map[string]topicStats{}
		for i, co := range t.cos {
			ts := topicStats{Stats: co.Stats()}
			if t.brs[i] != nil {
				ts.Breaker = t.brs[i].State().String()
			}
			all[t.names[i]] = ts
		}
		if len(t.cos) == 1 {
			_ = json.NewEncoder(w).Encode(all[t.names[0]])
			return
		}
		_ = json.NewEncoder(w).Encode(struct {
			Topics map[string]topicStats `json:"topics"`
		}{all})
	})
	return mux
}

// serveOps serves h on ln until the returned stop is called; stop shuts the
// server down (5 s for requests in progress) and waits for it.
func serveOps(ln net.Listener, h http.Handler, log zerolog.Logger) (stop func()) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("http server")
		}
	}
}
