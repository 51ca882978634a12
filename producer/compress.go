package producer

import "github.com/egos/mycelium/codec"

// encode encodes a request or event as cfg says: its payload compressed
// when Config.Compression is set and it pays (codec.Compress). e is left as
// it was (callers reuse it: a batch's entries, a cached request's tries).
func encode(cfg *Config, e *codec.Envelope) *codec.Buffer {
	if cfg.Compression == codec.CompressNone {
		return codec.Encode(e)
	}
	payload, flags := e.Payload, e.Flags
	codec.Compress(e, cfg.Compression, cfg.CompressMin)
	b := codec.Encode(e)
	e.Payload, e.Flags = payload, flags
	return b
}

// maxReplyPayload bounds a compressed reply's decoded size: Redis's own
// bulk-string limit (a worker could write no larger reply uncompressed).
const maxReplyPayload = MaxPayloadCap
