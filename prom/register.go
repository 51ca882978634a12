package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// RegisterConsumer registers a consumer's stage timings
// (role="consumer") and its Stats counters (mycelium_consumer_*) on reg.
func RegisterConsumer(reg prometheus.Registerer, co *consumer.Consumer) error {
	cfg := co.Config()
	return register(reg,
		newStageCollector("consumer", cfg.Topic, consumerStages[:], co.Timings),
		newStatsCollector("consumer", prometheus.Labels{"topic": cfg.Topic, "group": cfg.Group}, co.Stats),
	)
}

// RegisterProducer registers a producer's stage timings (role="producer",
// topic="" since a producer serves every topic) and its Stats counters
// (mycelium_producer_*, labelled with the producer id) on reg.
func RegisterProducer(reg prometheus.Registerer, p *producer.Producer) error {
	return register(reg,
		newStageCollector("producer", "", producerStages[:], p.Timings),
		newStatsCollector("producer", prometheus.Labels{"producer": p.ID()}, p.Stats),
	)
}

func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
