/*
 * Exchanges assembled from events (docs/exchanges.md).
 *
 * An assembler is fed event records in gseq order (the binary records of the event ring,
 * docs/event-ring.md) and emits one JSON object per finished exchange: an HTTP/1.1
 * request/response, an HTTP/2 stream, a gRPC call, a WebSocket session or an SSE stream, or,
 * for a flow that never reached HTTP, one exchange with stream_id 0. Every field comes from an
 * event field; a value no event carried is null.
 *
 * Memory is bounded: at most max_flows flows, max_streams open streams and max_bytes of
 * their headers, captures and items are tracked (the least recently active flow is emitted as
 * it is and forgotten when a new one would exceed one of them), and each exchange collects at
 * most max_items payloads / SSE events / WebSocket turns / gRPC messages and max_item_bytes of
 * their JSON (the rest is counted in `items_dropped`). Flow and stream state is recycled
 * through free lists that keep their buffers, so a steady load allocates nothing per event.
 *
 * Threading: one assembler is used by one thread at a time.
 */
#ifndef SOTH_EXCHANGE_H
#define SOTH_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct soth_ring_reader;
struct soth_xasm;

/** One finished exchange, as handed to the callback. */
struct soth_xasm_out {
    uint64_t flow_id;
    uint32_t stream_id;
    bool partial;     /* emitted before its last event was seen ("partial": true) */
    const char *json; /* one compact JSON object followed by '\n' (len counts it) */
    size_t len;
};

/**
 * Called once per finished exchange; out and its json are valid until the callback returns.
 * May not call back into the assembler. A partial exchange's exchange_id can come again, when
 * the rest of its flow's events arrive (docs/exchanges.md, "Bounds").
 */
typedef void (*soth_xasm_emit_cb)(void *ctx, const struct soth_xasm_out *out);

struct soth_xasm_cfg {
    uint32_t body_capture_bytes; /* captured bytes kept per message body */
    uint32_t max_flows;          /* flows tracked at once (0: 16384) */
    uint32_t max_streams;        /* open exchanges tracked at once (0: 16384) */
    uint32_t max_items;          /* collected items per exchange (0: 1024) */
    uint32_t max_item_bytes;     /* JSON bytes of collected items per exchange (0: 1 MiB) */
    uint64_t max_bytes; /* headers, trailers, captures and items held in all (0: 256 MiB) */
};

/** A new assembler; NULL when out of memory. */
struct soth_xasm *soth_xasm_new(const struct soth_xasm_cfg *cfg, soth_xasm_emit_cb emit, void *ctx);
/** Free it; exchanges still open are dropped without being emitted. */
void soth_xasm_free(struct soth_xasm *x);

/**
 * Feed one event record (the bytes of one ring record, docs/event-ring.md; avail bytes readable
 * at rec). Records must come in gseq order. Bounds are checked: a malformed record is ignored.
 * Emits (through the callback, before returning) the exchanges this record finishes.
 * Returns 0, or -1 for a record that was ignored.
 */
int soth_xasm_feed(struct soth_xasm *x, const void *rec, size_t avail);

/**
 * Emit every exchange still open as it is (`outcome` null, `"partial": true`) and forget every
 * flow. For a reader that stops before the flows it saw have ended.
 */
void soth_xasm_flush(struct soth_xasm *x);

/** Flows and open exchanges tracked now (tests, bounds). */
void soth_xasm_counts(const struct soth_xasm *x, size_t *flows, size_t *streams);

/**
 * Feed every record written to the ring since the last call into x (as soth_ring_reader_poll,
 * with records instead of JSON lines; a lap loses records, which the affected flows see as
 * seq gaps). Returns the number of records fed.
 */
size_t soth_ring_reader_poll_exchanges(struct soth_ring_reader *r, struct soth_xasm *x);

#endif
