package watermill_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/egos/mycelium/bus"
	mwm "github.com/egos/mycelium/contrib/watermill"
)

// A Watermill Router reading a topic from Mycelium, with Watermill's retry
// and poison-queue middleware: a message whose handler keeps failing goes
// to the poison topic (itself a Mycelium topic) after 2 retries. The README
// in this folder shows the same.
func Example_router() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, bus.Config{URL: redisURL}) // e.g. redis://127.0.0.1:6379
	if err != nil {
		panic(err)
	}
	defer c.Close()
	logger := wm.NopLogger{}
	pub, err := mwm.NewPublisher(c, mwm.PublisherConfig{}, logger)
	if err != nil {
		panic(err)
	}
	defer pub.Close()
	sub, err := mwm.NewSubscriber(c, mwm.SubscriberConfig{ConsumerGroup: "orders-service"}, logger)
	if err != nil {
		panic(err)
	}

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		panic(err)
	}
	poison, err := middleware.PoisonQueue(pub, "orders-poison")
	if err != nil {
		panic(err)
	}
	router.AddMiddleware(poison, middleware.Retry{MaxRetries: 2, InitialInterval: 10 * time.Millisecond}.Middleware)
	done := make(chan string, 2)
	router.AddConsumerHandler("orders", "orders", sub, func(msg *message.Message) error {
		if string(msg.Payload) == "bad" {
			return errors.New("cannot parse the order")
		}
		done <- string(msg.Payload)
		return nil
	})
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	for _, p := range []string{"bad", "order-1"} {
		if err := pub.Publish("orders", message.NewMessage(wm.NewUUID(), []byte(p))); err != nil {
			panic(err)
		}
	}
	fmt.Println("handled:", <-done)

	// The poison topic holds the message that kept failing, with why.
	poisoned, err := mwm.NewSubscriber(c, mwm.SubscriberConfig{ConsumerGroup: "ops"}, logger)
	if err != nil {
		panic(err)
	}
	msgs, err := poisoned.Subscribe(ctx, "orders-poison")
	if err != nil {
		panic(err)
	}
	m := <-msgs
	m.Ack()
	fmt.Printf("poisoned: %s (%s)\n", m.Payload, m.Metadata.Get(middleware.ReasonForPoisonedKey))
	_ = poisoned.Close()
	_ = router.Close()
	// Output:
	// handled: order-1
	// poisoned: bad (cannot parse the order)
}
