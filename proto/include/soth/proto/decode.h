/*
 * soth/proto/decode.h: payload formats and content types, content codings, and the layered
 * decoder chain that turns one captured message into a payload_parsed result
 * (proto/decode.c): pure (no events, no I/O). Design notes: docs/streaming.md ("Layered
 * decoders").
 */
#ifndef SOTH_PROTO_DECODE_H
#define SOTH_PROTO_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/* ---- payload formats and content types ---------------------------------------------------- */

enum soth_payload_format {
    SOTH_FMT_UNKNOWN = 0, /* not declared: the decoder sniffs conservatively */
    SOTH_FMT_JSON,
    SOTH_FMT_MSGPACK,
    SOTH_FMT_PROTO, /* protobuf (application/grpc, +proto): needs a schema; sniffed only */
    SOTH_FMT_NONE,  /* declared as something else: nothing to parse */
    SOTH_FMT_COUNT
};
/** "json", "msgpack", "proto", ...: the payload_parsed `format` words (docs/events.md). */
const char *soth_payload_format_name(enum soth_payload_format f);

/**
 * gRPC content type? "application/grpc" alone or followed by "+subtype" or ";params"
 * (case-insensitive, surrounding OWS ignored). On true, *fmt (may be NULL) is the payload
 * format the subtype declares: none or "proto" -> PROTO, "json" -> JSON, "msgpack" ->
 * MSGPACK, others UNKNOWN.
 */
bool soth_grpc_content_type(struct soth_iov content_type, enum soth_payload_format *fmt);

/**
 * Payload format an HTTP Content-Type declares: application/json, text/json, any
 * "+json" suffix, application/x-json, application/problem+json -> JSON; application/msgpack,
 * application/x-msgpack, application/vnd.msgpack -> MSGPACK; text/javascript,
 * application/javascript and application/x-javascript -> UNKNOWN (a JSON body behind an
 * anti-hijack prefix is common there: the decoder sniffs); anything else or absent -> NONE.
 */
enum soth_payload_format soth_payload_format_of(struct soth_iov content_type);

/* ---- codings: Content-Encoding (RFC 9110 8.4) and grpc-encoding ----------------------- */

enum soth_coding {
    SOTH_CODING_IDENTITY = 0,
    SOTH_CODING_GZIP,    /* RFC 1952 ("x-gzip" too) */
    SOTH_CODING_DEFLATE, /* RFC 1950 zlib stream (raw RFC 1951 deflate accepted as well) */
    SOTH_CODING_BR,      /* RFC 7932 */
    SOTH_CODING_ZSTD,    /* RFC 8878 */
    SOTH_CODING_UNKNOWN, /* anything else (compress, snappy, ...): cannot be undone */
    SOTH_CODING_COUNT
};
/** "identity", "gzip", "deflate", "br", "zstd", "unknown". */
const char *soth_coding_name(enum soth_coding c);

#define SOTH_DECODE_MAX_CODINGS 4

/**
 * Parse a Content-Encoding (or grpc-encoding) value: comma-separated codings in the order
 * the sender applied them, "identity" dropped. Fills out[] (up to `max`) and returns the
 * count, or SOTH_E_TOO_LARGE for more than `max` codings. Names are case-insensitive.
 */
int soth_coding_parse(struct soth_iov value, enum soth_coding *out, size_t max);

/* ---- the layered decoder chain ------------------------------------------------------------
 * A registry of decoders run over one message in a fixed order of stages:
 *   1. content decoding   HTTP Content-Encoding, undone last-applied first: gzip, deflate, br,
 *                         zstd (zlib, brotli, zstd streaming APIs with bounded output)
 *   2. protocol framing   grpc / sse / ws: done by the caller, which hands over one message
 *   3. message decoding   a coding inside the framing: grpc-encoding of a compressed gRPC
 *                         message, permessage-deflate of a WebSocket message
 *   4. anti-hijack        strips the )]}' )]}', for(;;); while(1); &&&START&&& {}&& and
 *                         Prototype.js "-secure-" comment prefixes before JSON; sets
 *                         `sanitized`; not listed as a decoder
 *   5. payload parse      json (jansson) or msgpack (msgpack-c), into JSON text
 * The result lists the decoders applied in that order (e.g. ["gzip","grpc","msgpack"],
 * ["grpc","gzip","json"]). A stage that fails is listed and ends the chain with an `error`
 * "<decoder>: <reason>" (the relay never depends on it); a payload cut short by the capture
 * bound ends with the error "truncated". Memory: a decoder object holds scratch buffers
 * that grow on demand up to the limits and are reused for every message.
 */

enum soth_framing {
    SOTH_FRAMING_NONE = 0,
    SOTH_FRAMING_GRPC, /* "grpc" */
    SOTH_FRAMING_SSE,  /* "sse" */
    SOTH_FRAMING_WS,   /* "ws" */
    SOTH_FRAMING_COUNT
};

/** Limits; zero fields take the defaults in brackets. */
struct soth_decode_limits {
    uint32_t max_output;   /* bytes one decoding stage may produce; past it the output is cut
                              and the payload treated as truncated [262144] */
    uint32_t max_ratio;    /* decompression bomb: output above max(64 KiB, ratio x input) of
                              one stage is an error "<coding>: bomb" [100] */
    uint32_t max_depth;    /* nesting of arrays/maps (JSON and msgpack) [20, at most 30] */
    uint32_t max_elements; /* msgpack items (keys, values, elements) in one payload [16384] */
    uint32_t max_str;      /* bytes of one msgpack str/bin/ext [65536] */
    uint32_t max_value;    /* bytes of the `value` JSON text: longer values are capped by
                              dropping the items (and cutting the string) that no longer fit,
                              the text staying valid JSON [16384, at least 64] */
};

/** One message to decode. */
struct soth_decode_req {
    const char *data; /* the message as captured (before content decoding) */
    size_t len;
    bool truncated; /* data is only a prefix of the message (capture bound, or cut short) */
    enum soth_coding codings[SOTH_DECODE_MAX_CODINGS]; /* stage 1, in the order applied */
    size_t n_codings;
    enum soth_framing framing;       /* stage 2 (already removed by the caller) */
    enum soth_coding message_coding; /* stage 3; IDENTITY for none */
    enum soth_payload_format format; /* declared; UNKNOWN or PROTO: sniff (a JSON text that
                                        starts with { or [, a msgpack map with string keys
                                        using every byte), skipped when neither fits */
    bool sanitize;                   /* run the anti-hijack stage before JSON */
};

#define SOTH_DECODE_MAX_DECODERS (SOTH_DECODE_MAX_CODINGS + 3)

/** What a run found; iovs point into the decoder (valid until its next run) or static text. */
struct soth_decode_result {
    bool report; /* false: nothing to report (no payload format detected, nothing failed) */
    struct soth_iov decoders[SOTH_DECODE_MAX_DECODERS]; /* names, in the order applied */
    size_t n_decoders;
    bool sanitized;                  /* an anti-hijack prefix was stripped */
    enum soth_payload_format format; /* JSON or MSGPACK once the payload stage ran, else
                                        UNKNOWN */
    struct soth_iov value;           /* the payload as JSON text; base NULL when error */
    struct soth_iov error;           /* "<decoder>: <reason>" or "truncated"; base NULL when
                                        fine */
};

struct soth_decoder; /* opaque scratch space; one per flow or per worker */

/** malloc a decoder (no scratch yet). `limits` may be NULL. NULL on failure. */
struct soth_decoder *soth_decoder_new(const struct soth_decode_limits *limits);
/** NULL is fine. */
void soth_decoder_free(struct soth_decoder *d);

/**
 * Run the chain over one message. Always fills *res (never fails as a call: failures are
 * res->error). Returns 0, or SOTH_E_NOMEM when scratch space could not be had (res then
 * reports the error "nomem").
 */
int soth_decode_run(struct soth_decoder *d, const struct soth_decode_req *req,
                    struct soth_decode_result *res);

/**
 * The anti-hijack stage alone: the offset of the JSON text after a known prefix in p[0..n)
 * (leading whitespace and a UTF-8 BOM skipped, then the prefix, then whitespace), or 0 when
 * there is none. *tail_len (may be NULL) gets the length of a matching suffix to drop
 * (&&&END&&&, or the comment end of the "-secure-" wrapper), else 0.
 */
size_t soth_antihijack_strip(const char *p, size_t n, size_t *tail_len);

/**
 * Convert one msgpack object in p[0..n) to JSON text in out[0..cap) within the limits (only
 * max_depth, max_elements, max_str and max_value are used). Returns the JSON length, or
 * SOTH_E_INCOMPLETE (input ends inside the object), SOTH_E_MALFORMED (not msgpack, e.g.
 * the reserved byte 0xc1, or bytes left after the object), SOTH_E_TOO_LARGE (a limit).
 * `why` (may be NULL) gets a static reason. Bounded by the input: a container header cannot
 * claim more items than bytes remain, so nothing is allocated beyond ~24 bytes per input
 * byte. Used by the chain; public for the fuzz target and tests.
 */
ssize_t soth_msgpack_to_json(const char *p, size_t n, const struct soth_decode_limits *limits,
                             char *out, size_t cap, const char **why);

#endif
