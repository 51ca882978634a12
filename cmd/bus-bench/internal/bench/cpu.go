package bench

import (
	"context"
	"syscall"
	"time"
)

// cpuUsage is the CPU time used so far by this process and by the Redis
// server, to turn a run into CPU per request: a figure that moves far less
// than throughput on a shared machine.
type cpuUsage struct {
	self  time.Duration   // user + system time of this process (getrusage)
	redis time.Duration   // the servers', from INFO cpu (every master's, summed)
	nodes []time.Duration // each master's, in address order (a cluster's)
	ok    bool            // both were read
}

// cpuNow reads the CPU time of this process and of the server. It reports
// ok false if either could not be read (an embedded miniredis has no INFO
// cpu).
func (e *env) cpuNow() cpuUsage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuUsage{}
	}
	u := cpuUsage{self: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	nodes, err := e.insp.Servers(ctx)
	if err != nil || len(nodes) == 0 {
		return u
	}
	for _, s := range nodes {
		if !s.CPUOK {
			return u
		}
		u.redis += s.CPU
		u.nodes = append(u.nodes, s.CPU)
	}
	u.ok = true
	return u
}

// setCPU fills r's CPU per request from the usage at the measured start
// and now, over n completed requests (or handled events).
func (e *env) setCPU(r *Result, n int64) {
	if n <= 0 || !e.cpuStart.ok {
		return
	}
	end := e.cpuNow()
	if !end.ok {
		return
	}
	perReq := func(d time.Duration) float64 {
		return float64(int64(float64(d.Nanoseconds())/float64(n)/100+0.5)) / 10 // µs, 0.1 µs steps
	}
	r.ClientCPUUS = perReq(end.self - e.cpuStart.self)
	if d := end.redis - e.cpuStart.redis; d >= 0 { // less: the server restarted during the run
		r.RedisCPUUS = perReq(d)
	}
	if len(end.nodes) > 1 && len(end.nodes) == len(e.cpuStart.nodes) {
		for i := range end.nodes {
			r.RedisNodeCPUUS = append(r.RedisNodeCPUUS, perReq(max(end.nodes[i]-e.cpuStart.nodes[i], 0)))
		}
	}
}
