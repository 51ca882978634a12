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

// registry gathers what /metrics exports: the consumer's stage timings and
// counters, the breaker, the topic's streams and shared cache, and the Go
// runtime and process.
func registry(c *bus.Client, co *consumer.Consumer, br *prom.BreakerCollector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	if err := prom.RegisterConsumer(reg, co); err != nil {
		return nil, err
	}
	for _, col := range []prometheus.Collector{
		// The default Go metrics, plus the live heap (marked by the last
		// GC): the figure to watch for a leak, where the allocated heap
		// saws up and down with every cycle.
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		br,
		prom.NewStreamCollector(inspect.New(c), co.Config().Topic),
		prom.NewCacheCollector(inspect.New(c), co.Config().Topic),
	} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// opsMux serves the operator endpoints. br may be nil.
func opsMux(co *consumer.Consumer, br *breaker.Breaker, reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := co.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if br != nil && br.State() == breaker.Open {
			http.Error(w, "not ready: downstream circuit breaker open", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		out := struct {
			consumer.Stats
			Breaker string `json:"breaker,omitempty"`
		}{Stats: co.Stats()}
		if br != nil {
			out.Breaker = br.State().String()
		}
		_ = json.NewEncoder(w).Encode(out)
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
