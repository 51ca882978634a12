package test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// rueidis closes the connections a cluster topology refresh replaced
	// 5 s later, on a goroutine of its own it gives no way to stop (its
	// cluster.go, _refresh): one may outlive a short run of cluster tests.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"))
}
