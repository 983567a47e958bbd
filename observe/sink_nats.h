/*
 * The NATS JetStream sink (docs/sinks.md), private to observe/.
 *
 * The telemetry thread hands each event line to nats_sink_put, which copies it into a byte
 * ring and returns (never a network call, never a wait on the sink). The sink's own thread
 * publishes from there with asynchronous JetStream acks, keeps what is not acknowledged, and
 * re-sends it after a reconnect; the message id `<run id>-<gseq>` lets the server drop the
 * copies it already stored.
 */
#ifndef SOTH_SINK_NATS_H
#define SOTH_SINK_NATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "soth/config.h"

struct nats_sink;

/**
 * Set up the sink `events.sinks[index]` (main thread, at start-up): connects to the server
 * and checks the stream (creating it when missing). A server that cannot be reached is not an
 * error (the sink connects in the background and buffers within max_pending_mb); a stream that
 * does not take our subjects, a server without JetStream or a refused login is: NULL with one
 * line in err. run_id names this run in every message id. drain_ms bounds how long stop waits
 * for the server to acknowledge what is pending.
 */
struct nats_sink *nats_sink_new(const struct soth_sink_cfg *cfg, unsigned index, const char *run_id,
                                uint32_t drain_ms, char *err, size_t err_len);
/** Start the sink thread. 0 or -errno. */
int nats_sink_start(struct nats_sink *ns);
/**
 * Queue one event (telemetry thread only): json is the event's JSON text without the newline.
 * When the queue is full the oldest queued events are dropped (and counted) to make room.
 */
void nats_sink_put(struct nats_sink *ns, unsigned type, uint64_t gseq, const char *json,
                   size_t len);
/**
 * Queue one event written in place (telemetry thread; docs/sinks.md, "Cost"): reserve returns
 * room for max bytes, contiguous, in the queue when they fit without dropping anything and
 * without wrapping round its end, else NULL (then encode elsewhere and use nats_sink_put).
 * commit queues the first len bytes written there (the JSON without the newline); nothing
 * else is queued in between. The bytes stay as written until the next put on this sink.
 */
char *nats_sink_reserve(struct nats_sink *ns, size_t max);
void nats_sink_commit(struct nats_sink *ns, unsigned type, uint64_t gseq, size_t len);
/**
 * Queue one exchange (telemetry thread only; a sink with "format": "exchange"): json is the
 * exchange's JSON text without the newline, published to <subject>.exchange with the message
 * id <run id>-x-<flow_id>-<stream_id>, "-p" appended when partial (docs/sinks.md). Dropped
 * like events when the queue is full.
 */
void nats_sink_put_exchange(struct nats_sink *ns, uint64_t flow_id, uint32_t stream_id,
                            bool partial, const char *json, size_t len);
/** After a batch of puts (telemetry thread): wake the sink thread if it sleeps. */
void nats_sink_kick(struct nats_sink *ns);
/**
 * Stop after the last put: publish what is pending and wait for its acks, at most drain_ms.
 * What was never published by then is counted as dropped; what was published and not
 * acknowledged is only logged (the server may hold it).
 */
void nats_sink_stop(struct nats_sink *ns);
void nats_sink_free(struct nats_sink *ns);
/** Events dropped so far (any thread). */
uint64_t nats_sink_dropped(const struct nats_sink *ns);
/** Events queued or published and not yet acknowledged (any thread). */
uint64_t nats_sink_pending(const struct nats_sink *ns);

#endif
