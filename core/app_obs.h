/*
 * Private to the HTTP layer: one observer per observed stream, the same for HTTP/1.1 and
 * HTTP/2. A stream is observed when its response starts a WebSocket (frames of both
 * directions: ws_message, ws_turn_started, ws_turn_completed) or an event stream (the
 * response body: sse_event); decodable messages also get payload_parsed
 * (core/app_payload.c). The version decides which stream and which bytes: HTTP/1.1 hands the
 * bytes relayed after a 101 and the de-chunked response body, HTTP/2 the stream's DATA.
 *
 * Memory: an observer (its parsers, and for a WebSocket with permessage-deflate its two
 * inflaters) comes from a free list of the calling thread (a worker) and goes back when the
 * stream ends, so nothing is allocated per stream once the list is warm; a connection holds
 * one per observed stream, so at most its stream limit (HTTP/1.1: one). Design notes:
 * docs/streaming.md.
 */
#ifndef SOTH_CORE_APP_OBS_H
#define SOTH_CORE_APP_OBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "soth/base.h"

struct app;
struct app_obs; /* one observed stream */

/** The observers of one connection (inside struct app). */
struct app_obs_set {
    struct app_obs *live; /* in use, linked through their next/pprev */
    uint32_t n_live;
};

/** Empty set. */
void app_obs_init(struct app_obs_set *s);

/**
 * A final response head of stream `sid` (the stream_id of its events). `websocket`: the
 * version saw the exchange switch to WebSocket (HTTP/1.1: 101 with Upgrade: websocket;
 * HTTP/2: 2xx to an extended CONNECT for websocket, RFC 8441); the response's
 * Sec-WebSocket-Extensions then says whether permessage-deflate is on. Otherwise the stream
 * is observed when the head declares text/event-stream without a content coding and a body
 * follows (`has_body`); the flow's protocol becomes sse. Returns the observer, or NULL when
 * there is nothing to observe or no memory (observation only: the relay goes on).
 */
struct app_obs *app_obs_start(struct app *a, uint32_t sid, bool websocket, bool has_body,
                              const struct soth_header *h, size_t n);

/** Whether o observes a WebSocket (rather than an event stream). */
bool app_obs_is_ws(const struct app_obs *o);

/**
 * Bytes of o's stream as relayed, from leg `from` (SOTH_LEG_CLIENT / SOTH_LEG_UPSTREAM): WebSocket
 * frames of that sender, or (from the upstream) the event stream's body after transfer decoding.
 * Events of what completes in them are emitted before this returns.
 */
void app_obs_data(struct app *a, struct app_obs *o, unsigned from, const char *p, size_t n);

/**
 * o's stream ended (the event stream's response completed, or the exchange ended): an open
 * turn completes (flush_reason close), an unfinished event is discarded (WHATWG); o goes
 * back to the free list. Call before the stream's exchange_completed.
 */
void app_obs_end(struct app *a, struct app_obs *o);

/** The earliest idle deadline of an open WebSocket turn, in ms of the layer's clock; 0: none. */
uint64_t app_obs_deadline(const struct app *a);

/** Complete the turns whose idle gap passed by now_ms (flush_reason idle). */
void app_obs_timer(struct app *a, uint64_t now_ms);

/** Every observer of the connection back to the free list, without events (app_free). */
void app_obs_dispose(struct app *a);

/** Free the calling thread's kept observers (a worker, as it exits). */
void app_obs_thread_done(void);

#endif
