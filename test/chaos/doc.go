// Package chaos holds Mycelium's failure suite: real redis-server and real
// bus-worker processes, killed, paused and fed garbage under load, with
// every scenario asserting on counts (sent, replied, duplicated,
// dead-lettered, lost) and logging what it measured. Short versions run in
// `make test`; `make chaos` sets MYCELIUM_CHAOS_LONG=1 for the long ones.
package chaos
