// Package codec encodes and decodes the envelope that carries every Mycelium
// message through Redis, in msgpack.
//
// The envelope is a msgpack array (the layout of a struct tagged
// `msgpack:",as_array"`), written by a hand-rolled appender into pooled
// buffers: no reflection and no allocation on the hot path. Decoding reads the
// string that the Redis client returns; strings in the decoded envelope share
// its memory, and only the header map and the payload are allocated.
//
// The package imports nothing of Mycelium's so it can be used (and fuzzed)
// on its own. It is safe for concurrent use.
package codec
