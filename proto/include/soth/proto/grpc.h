/*
 * soth/proto/grpc.h: the gRPC envelope parser (proto/grpc.c): pure (no events, no I/O),
 * incremental, one per stream direction. Design notes: docs/streaming.md ("gRPC").
 */
#ifndef SOTH_PROTO_GRPC_H
#define SOTH_PROTO_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/* ---- gRPC length-prefixed messages (gRPC over HTTP/2, PROTOCOL-HTTP2.md) ------------------
 * Each message is a 5-byte envelope, Compressed-Flag (0 or 1) and a 32-bit big-endian
 * Message-Length, then that many bytes. The parser takes DATA bytes of one direction of one
 * stream in pieces of any size; the messages, their captured prefixes and the errors do not
 * depend on how the bytes were split. It keeps at most `capture` bytes of each message (its
 * prefix), in a buffer that grows on demand up to that bound (so at most log2(capture)
 * allocations per stream direction, none per chunk), and never the rest.
 */

struct soth_grpc; /* opaque: one direction of one stream */

/** Why a direction's envelope stream is malformed (sticky: the parser stops there). */
enum soth_grpc_error {
    SOTH_GRPC_OK = 0,
    SOTH_GRPC_BAD_FLAG,  /* "bad_flag": Compressed-Flag byte other than 0 or 1 */
    SOTH_GRPC_TOO_LARGE, /* "length_over_limit": Message-Length above max_message */
    SOTH_GRPC_TRUNCATED, /* "truncated": the stream ended inside an envelope or message */
    SOTH_GRPC_ERROR_COUNT
};
/** Stable snake_case name of an error ("bad_flag", ...); "ok" for SOTH_GRPC_OK. */
const char *soth_grpc_error_name(enum soth_grpc_error e);

/** Limits; zero fields take the defaults in brackets. */
struct soth_grpc_limits {
    uint32_t max_message; /* Message-Length accepted [4 MiB, grpc's default receive limit] */
    uint32_t capture;     /* bytes of each message kept [4096] */
};

/** One message (complete, or cut short at stream end). Valid until the next feed/finish. */
struct soth_grpc_msg {
    uint64_t index;       /* messages of this direction before this one */
    bool compressed;      /* Compressed-Flag 1 */
    uint32_t length;      /* Message-Length as declared */
    struct soth_iov data; /* the message's first min(length, capture) bytes (fewer when cut
                             short); points into the parser */
    bool truncated;       /* data.len < length */
};

/** malloc a parser (the capture buffer comes later, on demand). NULL on failure. */
struct soth_grpc *soth_grpc_new(const struct soth_grpc_limits *limits);
/** NULL is fine. */
void soth_grpc_free(struct soth_grpc *g);

/**
 * Feed DATA bytes. Consumes bytes up to and including the end of the next complete message
 * and returns how many: when that count ends a message, *msg is filled and *got set (a
 * zero-length message completes with its envelope). Call again with the rest; every call
 * with len > 0 consumes at least one byte or returns an error, so a loop over the input is
 * bounded by its length plus the number of messages. Returns:
 *   >= 0               bytes consumed (all of len when no message completed)
 *   SOTH_E_MALFORMED   bad flag byte (soth_grpc_error() says which)
 *   SOTH_E_TOO_LARGE   Message-Length over max_message
 *   SOTH_E_STATE       the parser already failed or finished
 * After an error the parser consumes nothing more; the relay of the bytes is not its business.
 * When the capture buffer cannot grow, the message keeps the bytes that fit (truncated).
 */
ssize_t soth_grpc_feed(struct soth_grpc *g, const char *data, size_t len, struct soth_grpc_msg *msg,
                       bool *got);

/**
 * The direction ended (END_STREAM, or the stream went away). Returns 0 when it ended on a
 * message boundary; SOTH_E_MALFORMED with error SOTH_GRPC_TRUNCATED when it ended inside an
 * envelope (then *got tells whether the 5-byte header had arrived, and if so *msg describes
 * the partial message: length as declared, the bytes that came, truncated); the previous
 * error when the parser had failed already. Later feeds return SOTH_E_STATE.
 */
int soth_grpc_finish(struct soth_grpc *g, struct soth_grpc_msg *msg, bool *got);

/** The sticky error (SOTH_GRPC_OK while fine). */
enum soth_grpc_error soth_grpc_error(const struct soth_grpc *g);
/** Complete messages parsed so far. */
uint64_t soth_grpc_messages(const struct soth_grpc *g);

#endif
