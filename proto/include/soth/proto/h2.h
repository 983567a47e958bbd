/*
 * soth/proto/h2.h: the HTTP/2 relay (proto/h2.c, nghttp2 inside).
 */
#ifndef SOTH_PROTO_H2_H
#define SOTH_PROTO_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/*
 * The HTTP/2 relay: an nghttp2 server session toward the client and an nghttp2 client
 * session toward the upstream, driven only through memory I/O (the caller owns the
 * transports and TLS). Every client stream maps to one upstream stream; headers, data,
 * trailers, RST_STREAM and GOAWAY propagate; flow control is end to end, so the body bytes
 * held per connection stay under a fixed bound whatever the body sizes and stream counts.
 * Design, limits, the memory bound and the outcome table: docs/http2.md.
 */

/** The relay of one client connection (opaque; one allocation per connection). */
struct soth_h2_relay;

/*
 * Legs (enum soth_leg, soth/base.h): SOTH_LEG_CLIENT faces the user agent (our nghttp2 server
 * session), SOTH_LEG_UPSTREAM the origin (our nghttp2 client session). A message's direction
 * is the leg that sent it: the client leg sends requests, the upstream leg responses.
 */

/** How a stream ended: the exchange_completed outcomes (docs/events.md; table in
 *  docs/http2.md). */
enum soth_h2_outcome {
    SOTH_H2_COMPLETE = 0,     /* the whole response reached the client's output */
    SOTH_H2_CLIENT_ABORTED,   /* client RST_STREAM, or client transport EOF */
    SOTH_H2_UPSTREAM_ABORTED, /* upstream RST_STREAM/GOAWAY refusal/EOF/protocol error, bad head */
    SOTH_H2_RESET,            /* transport reset, client protocol error, 431 refusal, relay error */
    SOTH_H2_OUTCOME_COUNT,
};

/** Event name of an outcome ("complete", "client_aborted", ...); "?" when out of range. */
const char *soth_h2_outcome_name(enum soth_h2_outcome o);

/** A request head as received from the client. Valid only during the callback. */
struct soth_h2_request {
    struct soth_iov method, scheme, authority, path; /* pseudo-headers; empty when absent */
    struct soth_iov protocol;                        /* RFC 8441 :protocol; empty when absent */
    const struct soth_header *headers;               /* regular fields, wire order */
    size_t n_headers;
    bool end_stream; /* the request has no body */
};

/** A final response head as received from the upstream. Valid only during the callback. */
struct soth_h2_response {
    int status;                        /* 200..999 (1xx heads are relayed, not reported) */
    const struct soth_header *headers; /* regular fields, wire order, as received */
    size_t n_headers;
    bool end_stream; /* the response has no body */
    /* strip_h3_alt_svc: the Alt-Svc entries removed from the head relayed to the client (up
     * to SOTH_H2_ALT_SVC_MAX, iovs into headers' values); 0 when it went out unchanged */
    const struct soth_iov *alt_svc_removed;
    size_t n_alt_svc_removed;
};

/** At most this many removed Alt-Svc entries are reported per response head. */
#define SOTH_H2_ALT_SVC_MAX 16

/** The end of one client stream. */
struct soth_h2_stream_end {
    enum soth_h2_outcome outcome;
    uint64_t request_bytes;  /* request body bytes reported through on_data */
    uint64_t response_bytes; /* response body bytes reported through on_data */
    uint32_t error_code;     /* HTTP/2 error code behind a non-complete outcome, else 0 */
    const char *detail;      /* static snake_case cause, e.g. "client_rst_stream" */
};

/**
 * What the relay reports. Every pointer is borrowed for the duration of the call. Callbacks
 * fire from feed, flush, eof and shutdown (never from new/free) and must not call back into
 * the relay, except soth_h2_relay_stats. Any callback but out may be NULL.
 *
 * Per client stream the order is: on_request_head, then request on_data/on_trailers and
 * on_response_head in arrival order, response on_data/on_trailers after on_response_head,
 * and on_stream_end last, exactly once for every stream the relay accepted (a stream refused
 * with 431 or reset for a malformed head gets on_stream_end without on_request_head).
 */
struct soth_h2_cbs {
    void *ctx;
    /** Bytes for the transport toward `to` (at most 16 KiB per call, only from flush): encrypt
     *  or queue them before returning. Returns 0, or a negative error that flush returns. */
    int (*out)(void *ctx, enum soth_leg to, const char *p, size_t n);
    void (*on_request_head)(void *ctx, int32_t stream_id, const struct soth_h2_request *req);
    /** Optional, right after on_request_head: 0 forwards the request; a value > 0 answers the
     *  stream itself with 429 and `retry-after` that many seconds (over budget, docs/soth.md),
     *  nothing of it goes upstream, the request body is refused (RST_STREAM NO_ERROR after the
     *  answer) and the stream ends with outcome complete; other streams carry on. */
    uint32_t (*on_request_admit)(void *ctx, int32_t stream_id);
    void (*on_response_head)(void *ctx, int32_t stream_id, const struct soth_h2_response *resp);
    /** Body bytes as they arrive (before forwarding); sums match the stream_end byte counts. */
    void (*on_data)(void *ctx, enum soth_leg dir, int32_t stream_id, const char *p, size_t n);
    void (*on_trailers)(void *ctx, enum soth_leg dir, int32_t stream_id,
                        const struct soth_header *headers, size_t n);
    void (*on_stream_end)(void *ctx, int32_t stream_id, const struct soth_h2_stream_end *end);
    /** The client finished the request of a stream (END_STREAM seen), reported or not. */
    void (*on_request_end)(void *ctx, int32_t stream_id);
    /** Optional, both or neither: buffers of SOTH_H2_OUT_BYTES (a leg's coalesced output) and
     *  SOTH_H2_CHUNK_BYTES (body bytes held for a stream) lent to the relay only while they
     *  hold bytes, so an idle connection holds none (docs/http2.md, "Memory"). NULL from
     *  buf_get is an allocation failure. Without them the relay allocates its own through
     *  soth_h2_settings.mem and keeps them for its life. */
    void *(*buf_get)(void *ctx, size_t size);
    void (*buf_put)(void *ctx, void *mem, size_t size);
};

#define SOTH_H2_OUT_BYTES   16384 /* one TLS record of plaintext */
#define SOTH_H2_CHUNK_BYTES 4096

/** Optional allocator for the relay and both nghttp2 sessions (same shape as nghttp2_mem).
 *  Except: each session's frame buffer and stream map, page-aligned blocks from the thread's slabs
 *  (soth_h2_relay_release; counted in soth_h2_stats.page_bytes). */
struct soth_h2_mem {
    void *ctx;
    void *(*malloc_fn)(size_t size, void *ctx);
    void (*free_fn)(void *p, void *ctx);
    void *(*calloc_fn)(size_t nmemb, size_t size, void *ctx);
    void *(*realloc_fn)(void *p, size_t size, void *ctx);
    /* passed instead of ctx for the allocations nghttp2 makes for its sessions, so that they
     * can be told apart from the relay's own (tests inject failures into the relay's only);
     * NULL: ctx */
    void *lib_ctx;
};

/** Limits; zero fields take the defaults in brackets. */
struct soth_h2_settings {
    uint32_t max_header_list_size;   /* http2_max_header_list_size (docs/config.md) [65536]:
                                        advertised on both legs and enforced on every header
                                        block */
    uint32_t max_concurrent_streams; /* advertised to the client [100] */
    uint32_t initial_window;         /* stream window advertised on both legs [65535] */
    uint32_t connection_window;      /* connection window opened on both legs [1 MiB] */
    uint32_t max_settings;           /* SETTINGS entries accepted per frame [32] */
    uint32_t max_continuations;      /* CONTINUATION frames per header block [8] */
    uint32_t rst_burst, rst_rate;    /* client RST_STREAM token bucket [1000, 33/s] */
    const struct soth_h2_mem *mem;   /* NULL: libc */
    bool strip_h3_alt_svc;           /* http3_passthrough false (docs/http3.md): response heads
                                        (interim ones too) reach the client with the HTTP/3
                                        entries of their Alt-Svc fields removed, a field left
                                        empty dropped (soth_alt_svc_strip) [false] */
};

/** Counters, for tests and metrics. */
struct soth_h2_stats {
    size_t buffered[SOTH_LEG_COUNT];      /* body bytes held now, by the leg that sent them */
    size_t buffered_peak[SOTH_LEG_COUNT]; /* highest buffered[] seen */
    size_t buffer_bound[SOTH_LEG_COUNT];  /* buffered[] never exceeds this (docs/http2.md) */
    size_t chunk_bytes;                   /* memory in body chunks, free ones included */
    size_t page_bytes; /* nghttp2's page-aligned per-session buffers (from libc) */
    uint32_t streams;  /* stream slots in use */
    uint32_t streams_peak;
    uint64_t streams_total;     /* client streams accepted */
    uint64_t streams_refused;   /* client streams refused (limits, GOAWAY, shutdown) */
    uint64_t upstream_parked;   /* soth_h2_relay_park ended the upstream session */
    uint64_t upstream_unparked; /* soth_h2_relay_unpark made a new one */
    size_t up_page_bytes;       /* the upstream session's struct and what fits after it, carved from
                                   one page of the thread's (0: no session, or a sanitizer build) */
};

/**
 * Create a relay. Copies *cbs and *s (s may be NULL: defaults). Both legs start at once:
 * the first flush writes the server preface (SETTINGS) toward the client and the client
 * preface toward the upstream. Returns NULL on allocation failure or when cbs->out is NULL.
 */
struct soth_h2_relay *soth_h2_relay_new(const struct soth_h2_cbs *cbs,
                                        const struct soth_h2_settings *s);

/** Free the relay and both sessions. Fires no callback: call soth_h2_relay_eof for the
 *  legs still open first to get on_stream_end for every stream. NULL is ignored. */
void soth_h2_relay_free(struct soth_h2_relay *r);

/**
 * Bytes received from `from` (decrypted). Callbacks may fire before it returns; output is
 * only queued (call flush). Returns len on success, or:
 *   SOTH_E_MALFORMED  the peer broke the protocol in a way nghttp2 reports as fatal (bad
 *                     client preface, flooding): the leg is failing, flush sends its GOAWAY;
 *   SOTH_E_NOMEM      allocation failure (the leg is failing likewise);
 *   SOTH_E_CLOSED     the leg is no longer readable (failed, EOF, or GOAWAY done).
 * Protocol errors nghttp2 answers itself (GOAWAY with an error code) return len; the leg
 * turns unreadable when that GOAWAY is flushed.
 */
ssize_t soth_h2_relay_feed(struct soth_h2_relay *r, enum soth_leg from, const char *data,
                           size_t len);

/**
 * Serialize what both legs have to send and pass it to cbs->out in chunks of up to 16 KiB.
 * Forwarded body bytes open the sender's window only here, as they reach the other leg's
 * output. Returns 0, or the first negative error returned by out (or SOTH_E_NOMEM).
 */
int soth_h2_relay_flush(struct soth_h2_relay *r);

/**
 * Backpressure: while `hold` is true, flush produces nothing toward `side` (call it when the
 * transport's send queue is above its high watermark, release below the low one). Body bytes
 * for that side then stay in the relay's bounded buffers and, since windows reopen only as
 * bytes are forwarded, the sender on the other leg stops at its flow-control window.
 */
void soth_h2_relay_hold(struct soth_h2_relay *r, enum soth_leg side, bool hold);

/** Whether the leg wants more input / has output pending (call flush). When both are false
 *  for a leg its transport can be closed; when both are false for the client leg the relay
 *  is finished. */
bool soth_h2_relay_want_read(const struct soth_h2_relay *r, enum soth_leg side);
bool soth_h2_relay_want_write(const struct soth_h2_relay *r, enum soth_leg side);

/** Whether the leg ended (or is ending) on a connection error: nghttp2's terminating GOAWAY
 *  for a protocol error or flood, a fatal feed, or an internal failure. Sticky. */
bool soth_h2_relay_failed(const struct soth_h2_relay *r, enum soth_leg side);
/** Whether the peer on `side` sent GOAWAY (any code). Sticky. */
bool soth_h2_relay_goaway_received(const struct soth_h2_relay *r, enum soth_leg side);

/**
 * The transport of `side` closed: orderly EOF (reset false) or reset/broken pipe (reset
 * true). Open streams end with the deterministic outcomes of docs/http2.md; the other leg
 * gets RST_STREAM/GOAWAY (client side gone) or 502/RST_STREAM and a graceful GOAWAY
 * (upstream side gone); responses already received in full are still delivered. Further
 * feeds from that side return SOTH_E_CLOSED. Idempotent.
 */
void soth_h2_relay_eof(struct soth_h2_relay *r, enum soth_leg side, bool reset);

/** Graceful shutdown (drain): GOAWAY(NO_ERROR) to both legs, refuse new client streams, let
 *  streams in flight finish. */
void soth_h2_relay_shutdown(struct soth_h2_relay *r);
/**
 * The upstream's response head for client stream `stream_id` is late (the caller keeps the
 * clock, timeouts.response_header_ms): the client gets a 504 with content-length 0 (RST_STREAM
 * INTERNAL_ERROR when a head already went out), the upstream stream is cancelled, and the
 * stream ends upstream_aborted with detail "upstream_timeout". Call flush next. False (and
 * nothing done) for a stream that is unknown, closed toward the client, or already has its
 * final response head.
 */
bool soth_h2_relay_timeout(struct soth_h2_relay *r, int32_t stream_id);

/**
 * Give back what an idle relay holds but does not need (docs/http2.md, "Memory"): when no
 * stream is open, both legs are live with nothing queued, held or lent, and no header block
 * is being received, the pages of both nghttp2 sessions' outbound frame buffers (their bytes
 * are dead between frames) and of their stream maps (all zero when empty) go back to the
 * kernel (madvise MADV_DONTNEED; they fault back in, zeroed, when used), and the relay frees
 * its header collectors' arrays, its Alt-Svc buffer and its free stream slots. Nothing the
 * peers see changes. Returns the bytes given back (0: not idle, nothing done). The caller
 * decides when (core/app_h2.c: a connection idle for a while); each call costs a few system
 * calls.
 */
size_t soth_h2_relay_release(struct soth_h2_relay *r);

/**
 * docs/http2.md "Idle upstream connection": park the upstream leg of a quiet relay (as
 * soth_h2_relay_release means it, and no GOAWAY sent or received on either leg, no shutdown):
 * GOAWAY(NO_ERROR) toward the upstream goes to cbs->out at once, then its session is freed.
 * The caller closes that transport (close_notify, FIN). The client leg carries on: PINGs,
 * SETTINGS and the like are answered; the first request's head pauses the relay
 * (soth_h2_relay_waking turns true; its bytes and everything fed after wait, at most the
 * connection window and 256 KiB)
 * until soth_h2_relay_unpark. Returns 1 when parked, 0 when not quiet (nothing done), or a
 * negative error (the relay cannot go on).
 */
int soth_h2_relay_park(struct soth_h2_relay *r);
/** Whether the upstream leg is parked (until soth_h2_relay_unpark). */
bool soth_h2_relay_parked(const struct soth_h2_relay *r);
/** Whether a request waits for a parked upstream: the caller connects and calls
 *  soth_h2_relay_unpark; it should stop reading the client meanwhile. */
bool soth_h2_relay_waking(const struct soth_h2_relay *r);
/**
 * A new upstream transport is up (ok: a new session, its preface queued, then what waited is
 * read) or could not be made (not ok: the upstream leg is gone as after soth_h2_relay_eof, so
 * the waiting request is refused with REFUSED_STREAM and the client gets GOAWAY(NO_ERROR)).
 * No-op unless parked or waking. Returns 0 or a negative error as soth_h2_relay_feed; call flush
 * next.
 */
int soth_h2_relay_unpark(struct soth_h2_relay *r, bool ok);

/** Give back the pages of the free page blocks this thread keeps warm for new sessions (a
 *  worker's quiet trim; docs/http2.md, "Memory"). */
void soth_h2_thread_trim(void);

/** Fill *out with the relay's counters. */
void soth_h2_relay_stats(const struct soth_h2_relay *r, struct soth_h2_stats *out);

#endif
