// Package bus is Mycelium's shared vocabulary: how to reach Redis (Config,
// Connect and the Client that producers and consumers share), the key layout
// (Keys), and the error catalogue (sentinels to check with errors.Is, and
// RemoteError).
//
// Every Redis command the bus sends is built in one internal package, so
// that the facts measured about rueidis and Redis are applied in one place
// and a service using producer and consumer never needs a rueidis type.
// Client.Redis is the explicit escape hatch to the underlying client.
package bus
