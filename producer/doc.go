// Package producer sends events and reasoning requests onto Mycelium topics.
//
// A Producer is safe for concurrent use by any number of goroutines; its
// Redis writes are batched, so concurrent callers share round trips.
// Request/reply uses one reply stream and one reply reader per Producer
// (started on the first Request), dispatching each reply to its waiter by
// correlation id. Close stops the reader and removes the reply stream.
package producer
