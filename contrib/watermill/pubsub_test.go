package watermill_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	mwm "github.com/egos/mycelium/contrib/watermill"
)

// The suite's own redis-server (started by TestMain, with an append-only
// file fsynced at every write, so that a restart loses nothing Redis
// acknowledged: TestReconnect restarts it twice under load).
var (
	redisURL     string
	restartRedis []string
)

func TestMain(m *testing.M) {
	stop, err := startRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, "watermill tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// startRedis starts redis-server on a free loopback port, daemonized with
// a pid file in a temporary directory, and sets redisURL and the restart
// command; stop shuts it down and removes the directory.
func startRedis() (stop func(), err error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server not on PATH (make test-watermill installs it): %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	_ = l.Close()
	dir, err := os.MkdirTemp("", "myc-watermill-redis")
	if err != nil {
		return nil, err
	}
	start := fmt.Sprintf("redis-server --port %s --bind 127.0.0.1 --dir %s --save '' --appendonly yes --appendfsync always --daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log --loglevel warning && for i in $(seq 200); do redis-cli -p %s ping >/dev/null 2>&1 && exit 0; sleep 0.05; done; exit 1",
		port, dir, dir, dir, port)
	if out, err := exec.Command("sh", "-c", start).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("start redis-server: %v: %s", err, out)
	}
	redisURL = "redis://127.0.0.1:" + port
	// A restart as the suite wants it: shut down (the AOF is flushed), start again on the same files.
	restartRedis = []string{"sh", "-c", "redis-cli -p " + port + " shutdown >/dev/null 2>&1; " + start}
	return func() {
		_ = exec.Command("redis-cli", "-p", port, "shutdown", "nosave").Run()
		_ = os.RemoveAll(dir)
	}, nil
}

// connect returns a client of the suite's Redis, closed when t ends.
func connect(t *testing.T) *bus.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, bus.Config{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func createPubSub(t *testing.T) (message.Publisher, message.Subscriber) {
	return createPubSubWithConsumerGroup(t, "")
}

func createPubSubWithConsumerGroup(t *testing.T, group string) (message.Publisher, message.Subscriber) {
	return newPubSub(t, group, 0, true)
}

// newPubSub returns a Publisher and a Subscriber of group on the suite's
// Redis; prefetch is the subscriptions' read-ahead (0: the default, -1:
// none), dedup the Publisher's Deduplicate.
func newPubSub(t *testing.T, group string, prefetch int, dedup bool) (message.Publisher, message.Subscriber) {
	pc, sc := connect(t), connect(t)
	logger := wm.NopLogger{}
	// Deduplicate: TestReconnect restarts Redis under 100 publishers; a
	// write whose answer the restart lost is tried again without being
	// written twice (README: the suite's configuration).
	pub, err := mwm.NewPublisher(pc, mwm.PublisherConfig{Deduplicate: dedup}, logger)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := mwm.NewSubscriber(sc, mwm.SubscriberConfig{ConsumerGroup: group, Config: consumer.Config{Prefetch: prefetch}}, logger)
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}

// features are what Mycelium's Redis Streams promise, declared honestly
// (README.md in this folder says why each is what it is).
func features() tests.Features {
	return tests.Features{
		ConsumerGroups:                      true,
		ExactlyOnceDelivery:                 false, // at least once: a delivery whose Ack was not recorded is delivered again
		GuaranteedOrder:                     false, // a Nacked message comes back after later ones; several subscribers of a group read side by side
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
		RequireSingleInstance:               false,
		NewSubscriberReceivesOldMessages:    true, // a new group starts at the oldest entry still in the stream
	}
}

// TestPublishSubscribe is Watermill's universal suite, TestReconnect apart
// (TestPublishSubscribeReconnect runs it).
func TestPublishSubscribe(t *testing.T) {
	tests.TestPubSub(t, features(), createPubSub, createPubSubWithConsumerGroup)
}

// TestPublishSubscribeReconnect is the suite's TestReconnect (Redis
// restarted twice under 100 publishers), with subscriptions that do not
// read ahead: the test compares what it received with a list another of
// its goroutines appends without synchronisation, as soon as the last
// message arrives; a subscriber that hands that message out microseconds
// after its publish returned can finish before the append (1 run in 4 on
// a loaded machine with read-ahead: "sent 9999, extra <its id>"). Read
// one at a time, the subscriber trails the publishers.
func TestPublishSubscribeReconnect(t *testing.T) {
	f := features()
	f.RestartServiceCommand = restartRedis
	tests.TestReconnect(t, tests.TestContext{TestID: tests.NewTestID(), Features: f}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return newPubSub(t, "", -1, true)
	})
}

// TestPublishSubscribeStress is Watermill's stress variant (the suite ten
// times at once): make test-watermill-stress. Without RestartServiceCommand:
// the ten suites share one redis-server, and one's TestReconnect restarting
// it would fail the others' constructors (connection refused, LOADING) and
// their publishes in flight; TestPublishSubscribeReconnect runs it.
func TestPublishSubscribeStress(t *testing.T) {
	if os.Getenv("MYCELIUM_WATERMILL_STRESS") != "1" {
		t.Skip("the stress variant runs with MYCELIUM_WATERMILL_STRESS=1 (make test-watermill-stress)")
	}
	tests.TestPubSubStressTest(t, features(), createPubSub, createPubSubWithConsumerGroup)
}

// TestCloseWhileRedisDown: a Subscribe waiting for its group while Redis
// does not answer neither holds up Close nor outlives it.
func TestCloseWhileRedisDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	_ = l.Close()
	start := "redis-server --port " + port + " --bind 127.0.0.1 --save '' --appendonly no --daemonize yes && for i in $(seq 200); do redis-cli -p " + port + " ping >/dev/null 2>&1 && exit 0; sleep 0.05; done; exit 1"
	if out, err := exec.Command("sh", "-c", start).CombinedOutput(); err != nil {
		t.Fatalf("start redis-server: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, bus.Config{URL: "redis://127.0.0.1:" + port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sub, err := mwm.NewSubscriber(c, mwm.SubscriberConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = exec.Command("redis-cli", "-p", port, "shutdown", "nosave").Run()
	subscribed := make(chan error, 1)
	go func() {
		msgs, err := sub.Subscribe(context.Background(), "down")
		if err == nil {
			for range msgs { // closes once the Subscriber does
			}
		}
		subscribed <- err
	}()
	time.Sleep(200 * time.Millisecond) // let Subscribe reach its wait (nothing to poll: it waits on Redis)
	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	for _, ch := range []chan error{closed, subscribed} {
		select {
		case <-ch:
		case <-time.After(35 * time.Second):
			t.Fatal("Close or Subscribe did not return with Redis down")
		}
	}
}
