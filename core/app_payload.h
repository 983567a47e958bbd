/*
 * Private to core/: payload observation for the HTTP layer of a flow. gRPC
 * envelopes per HTTP/2 stream direction (grpc_message), and the layered decoder chain of
 * proto/decode.c over message bodies (payload_parsed), for app_h1.c (HTTP/1.1), app_h2.c and
 * the stream observers of app_obs.c (SSE events, WebSocket messages).
 *
 * What gets decoded: a body whose Content-Type declares JSON or msgpack (or javascript, for
 * an anti-hijack prefixed JSON), through its Content-Encoding (gzip, deflate, br, zstd); and
 * every gRPC message of a stream whose content-type is application/grpc[+...], through its
 * grpc-encoding when compressed. Protobuf needs a schema: a gRPC message is reported only
 * when it is JSON or msgpack (declared by +json / +msgpack, or sniffed conservatively).
 *
 * Memory: at most APP_PL_CAPTURE bytes of a body (its prefix) are kept, in a buffer per
 * message direction that grows by doubling (sized from Content-Length when known), and
 * reused by the next message on HTTP/1.1; gRPC parsers keep the same bound per message. One
 * decoder (scratch for decompression and the value, bounded by soth_decode_limits) per flow,
 * created at the first decode. Nothing is allocated per chunk. A body longer than the bound
 * is reported with the error "truncated" (its prefix is not parsed). With
 * events.body_capture_bytes 0 no payload is captured or parsed.
 */
#ifndef SOTH_CORE_APP_PAYLOAD_H
#define SOTH_CORE_APP_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_int.h"
#include "soth/proto/decode.h"
#include "soth/proto/h2.h"

#define APP_PL_CAPTURE      (64u << 10) /* body bytes kept for decoding (per message) */
#define APP_PL_GRPC_MAX_MSG (64u << 20) /* gRPC Message-Length above this: length_over_limit */

struct app_payload;   /* per flow */
struct app_pl_stream; /* per HTTP/2 stream that carries something to observe */

/** Frees the flow's payload state; NULL is fine. */
void app_pl_free(struct app_payload *pl);

/* ---- HTTP/1.1: dir 0 request, 1 response; the flow's state (a->pl) is created on demand */

/** A message head: decide whether its body is decoded. no_body: nothing follows. */
void app_pl_h1_head(struct app *a, int dir, const struct soth_header *h, size_t n, bool no_body);
/** Body bytes of the message in progress in `dir`. */
void app_pl_h1_body(struct app *a, int dir, const char *p, size_t n);
/** The message in `dir` is complete: payload_parsed when there is something to say. */
void app_pl_h1_complete(struct app *a, int dir, uint32_t stream_id);

/* ---- framed protocols (SSE events, WebSocket messages): dir 0 client to server, 1 back */

/**
 * One message of a framing the caller parsed (SSE event data, an uncompressed WebSocket text
 * or binary message): payload_parsed when it sniffs as JSON (starts with { or [ and parses)
 * or as a msgpack map with string keys; nothing otherwise. `data` is the captured prefix,
 * `truncated` when the message was longer.
 */
void app_pl_framed(struct app *a, uint32_t stream_id, int dir, enum soth_framing framing,
                   struct soth_iov data, bool truncated);

/* ---- HTTP/2 (dir: enum soth_leg) */

/** Before request_headers is emitted: a gRPC stream sets the flow's protocol to grpc. May
 *  set *st (freed by app_pl_h2_end or app_pl_stream_free). */
void app_pl_h2_request(struct app *a, struct app_pl_stream **st, const struct soth_h2_request *q);
void app_pl_h2_response(struct app *a, struct app_pl_stream **st, const struct soth_h2_response *s);
/** DATA bytes of a stream (st may be NULL: nothing to do). */
void app_pl_h2_data(struct app *a, struct app_pl_stream *st, int dir, uint32_t stream_id,
                    const char *p, size_t n);
/** The stream ends (before exchange_completed): flush what is pending and free st. */
void app_pl_h2_end(struct app *a, struct app_pl_stream *st, uint32_t stream_id, bool complete);
/** Free without events (NULL is fine). */
void app_pl_stream_free(struct app_pl_stream *st);

#endif
