/*
 * soth/proto/h1.h: the HTTP/1.1 exchange engine (proto/h1.c, llhttp inside).
 * Design notes: docs/http1.md.
 */
#ifndef SOTH_PROTO_H1_H
#define SOTH_PROTO_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/*
 * One HTTP/1.1 connection seen by the proxy: requests flow client -> upstream, responses
 * upstream -> client. The engine runs llhttp (strict: lenient flags off) inline on the bytes
 * the caller received, reports what it parsed through callbacks, and hands back through
 * `out` the bytes to forward: heads and trailers re-serialised from what was parsed ("Name:
 * value\r\n" per field, start line rebuilt, chunk framing re-emitted without extensions),
 * bodies passed through as they arrive (never buffered). What the other side receives is
 * exactly what the callbacks reported. Design notes: docs/http1.md.
 *
 * Legs (enum soth_leg, soth/base.h): requests come from SOTH_LEG_CLIENT and go to
 * SOTH_LEG_UPSTREAM, responses the other way. `from` of a feed and `dir` of a callback name the
 * leg the message came from (client: a request, upstream: a response); `to` of `out` names the
 * leg the bytes go to.
 *
 * Exchanges: each request head gets stream_id 1, 2, 3, ... in order; its response carries the
 * same id. Pipelined requests are forwarded at once; a bounded FIFO of requests awaiting their
 * response frames responses to HEAD, CONNECT and upgrade requests and matches ids. Interim 1xx
 * responses (100 Continue, 103) are reported with `interim` set and forwarded; they do not end
 * the exchange. An exchange ends (on_exchange) when its request and its response are both
 * complete, or at eof/abort with the outcome.
 *
 * Memory: one block per connection, sized by soth_h1_size() (heads and trailers of each
 * direction are re-serialised into a buffer of about max_head bytes inside it); nothing is
 * allocated while feeding, except once for a connection that pipelines more than 3 requests
 * (the FIFO of exchanges in flight moves to the heap at max_pipeline + 1 entries; freed by
 * soth_h1_dispose). Not thread-safe: one connection, one worker.
 */

struct soth_h1; /* opaque */

/** How an exchange ended (exchange_completed `outcome`, docs/events.md). */
enum soth_h1_outcome {
    SOTH_H1_COMPLETE = 0,
    SOTH_H1_CLIENT_ABORTED,
    SOTH_H1_UPSTREAM_ABORTED,
    SOTH_H1_RESET,
    SOTH_H1_TIMEOUT,
    SOTH_H1_OUTCOME_COUNT
};
/** Event name of an outcome ("complete", "client_aborted", ...); "unknown" when out of
 *  range. */
const char *soth_h1_outcome_name(enum soth_h1_outcome o);

/** Limits; zero fields take the defaults. */
struct soth_h1_limits {
    size_t max_head;     /* bytes of one head (from its first byte to the end of its blank line,
                            leading empty lines included) or one trailer section; default 65536,
                            at least 256 */
    size_t max_fields;   /* header fields in one head or trailer section, default 128 */
    size_t max_pipeline; /* requests forwarded and still awaiting their response, default 32,
                            at most 1024 */
};

/**
 * A parsed head, valid only during on_head: every iov points into the engine's re-serialised
 * copy of the head (the bytes `out` forwards next), never into the caller's input.
 */
struct soth_h1_head {
    /* requests */
    struct soth_iov method;    /* "GET", ... */
    struct soth_iov target;    /* request-target as sent (and forwarded) */
    struct soth_iov scheme;    /* absolute-form: "http"/"https"; otherwise empty */
    struct soth_iov authority; /* absolute-form or CONNECT: from the target; otherwise the Host
                                  value (empty without Host) */
    struct soth_iov path;      /* origin-form: the target; absolute-form: path+query ("/" when
                                  empty); "*" for OPTIONS *; CONNECT: empty */
    /* responses */
    unsigned status;        /* 100..999; 0 for requests */
    struct soth_iov reason; /* reason phrase, may be empty */
    /* both */
    struct soth_iov version;           /* "HTTP/1.1" or "HTTP/1.0" */
    uint8_t http_minor;                /* 0 or 1 */
    const struct soth_header *headers; /* wire order, names as sent, values without OWS */
    size_t n_headers;
    bool keep_alive;         /* the connection may carry another exchange after this message */
    bool chunked;            /* Transfer-Encoding: chunked */
    bool has_content_length; /* content_length is meaningful */
    uint64_t content_length;
    bool body_until_close; /* response body ends at upstream EOF (no length, not chunked) */
    bool no_body;          /* no body follows (HEAD response, 1xx, 204, 304, 0 length...) */
    bool interim;          /* 1xx response other than a 101 that switches protocols */
    bool upgrade;          /* request: asks for an Upgrade or is CONNECT; response: a 101
                              accepting it, or a 2xx to CONNECT */
    bool expect_continue;  /* request: Expect: 100-continue */
};

/** on_head's answer: the head went out through `out` already; do not forward the engine's. */
#define SOTH_H1_HEAD_SENT 1
/**
 * on_head's answer for a request the caller refuses to forward (a second authority, a nested
 * CONNECT: docs/http1.md "Requests the proxy refuses"): nothing of it is sent, it is no
 * exchange (no on_exchange for it), and no request after it is read (the client's bytes from
 * here on are dropped). The exchanges before it carry on; soth_h1_is_done turns true once they
 * are all reported, which is when the caller sends its own answer and closes.
 */
#define SOTH_H1_REFUSE 2
/**
 * on_head's answer for a request the caller answers itself while the connection carries on
 * (a 429 over budget, docs/soth.md): allowed only when it is the one exchange in flight
 * (soth_h1_in_flight() == 1 during on_head), so its answer cannot overtake an earlier
 * response. Nothing of it is sent upstream, its body is read and dropped (no on_body,
 * on_trailers or on_complete), it is no exchange, and the next request is read as usual (a
 * request that asked to close still closes the connection after it).
 */
#define SOTH_H1_LOCAL 3

/** An exchange that ended. */
struct soth_h1_exchange {
    uint32_t stream_id;
    enum soth_h1_outcome outcome;
    uint64_t request_bytes;  /* request body bytes after de-chunking (plus raw client bytes
                                relayed after an upgrade) */
    uint64_t response_bytes; /* likewise for the response */
    bool upgraded;           /* the exchange switched the connection to a byte relay */
    bool close;              /* one of its messages ended the connection (Connection: close,
                                HTTP/1.0 without keep-alive, read-until-close) */
};

/**
 * Callbacks. All run synchronously inside soth_h1_feed / soth_h1_eof / soth_h1_abort, in wire
 * order; pointers they receive are valid only during the call. Every member but `out` may be
 * NULL. None of them may call back into the engine.
 */
struct soth_h1_cbs {
    void *ctx;
    /** Bytes to send to leg `to`. Return 0, or a negative error: the engine then stops (dead)
     *  and the feed returns that error. */
    int (*out)(void *ctx, enum soth_leg to, const char *p, size_t n);
    /** A complete head (before it is forwarded). Return 0 to forward it, SOTH_H1_HEAD_SENT
     *  when the callback already sent its own serialisation of the head through `out` (a
     *  proxy rewriting an absolute-form target), SOTH_H1_REFUSE (requests only) to drop the
     *  request and end the connection after the earlier exchanges, or a negative value to stop the
     * engine (dead) and make the feed return it: nothing of the message is sent, and a refused
     *  request is no exchange (no on_exchange for it). */
    int (*on_head)(void *ctx, enum soth_leg dir, uint32_t stream_id, const struct soth_h1_head *h);
    /** Message body bytes after de-chunking, in order; any split. */
    void (*on_body)(void *ctx, enum soth_leg dir, uint32_t stream_id, const char *p, size_t n);
    /** Trailer fields of a chunked message (only when there is at least one). */
    void (*on_trailers)(void *ctx, enum soth_leg dir, uint32_t stream_id,
                        const struct soth_header *t, size_t n);
    /** The message (request or final response) is complete. Not called for interim 1xx. */
    void (*on_complete)(void *ctx, enum soth_leg dir, uint32_t stream_id);
    /** A 101 (protocol = its Upgrade value, e.g. "websocket") or a 2xx to CONNECT (protocol
     *  empty) switched the connection to a byte relay, after that response head was reported
     *  and forwarded. From then on every feed forwards its bytes unchanged to the other side. */
    void (*on_upgrade)(void *ctx, uint32_t stream_id, struct soth_iov protocol);
    /** An exchange ended; always the stream's last callback. */
    void (*on_exchange)(void *ctx, const struct soth_h1_exchange *x);
    /** The peer on leg `dir` broke the protocol. `status` is the answer the proxy should give
     *  the client (400 or 431 for a bad request, 502 for a bad response), `code` a stable
     *  snake_case reason and `detail` a sentence (static strings). stream_id is the exchange the
     *  bad bytes belong to (a request that fails in its head gets the id it would have had; an
     *  unsolicited response 0). The engine is dead afterwards. */
    void (*on_error)(void *ctx, enum soth_leg dir, uint32_t stream_id, unsigned status,
                     const char *code, const char *detail);
    /**
     * Optional: lend the engine a section buffer (soth_h1_section_size bytes, aligned for any
     * type) while it re-serialises a head or trailer section, and take it back once that
     * section is forwarded, so an idle connection holds none. NULL from sec_get fails the feed
     * with SOTH_E_NOMEM. Without these the two section buffers live inside the engine memory.
     */
    void *(*sec_get)(void *ctx);
    void (*sec_put)(void *ctx, void *mem);
};

/** Bytes needed for an engine with these limits (NULL: defaults), section buffers inside. */
size_t soth_h1_size(const struct soth_h1_limits *limits);
/** Bytes needed for an engine whose cbs lend section buffers (sec_get / sec_put). */
size_t soth_h1_core_size(const struct soth_h1_limits *limits);
/** Bytes of one lent section buffer. */
size_t soth_h1_section_size(const struct soth_h1_limits *limits);

/**
 * Initialise an engine in caller-owned memory of soth_h1_size(limits) bytes, suitably aligned
 * for any type (malloc, a pool slot). `cbs` is copied; `limits` may be NULL. Returns the
 * engine (== mem). soth_h1_dispose() when done; the memory stays the caller's.
 */
struct soth_h1 *soth_h1_init(void *mem, const struct soth_h1_limits *limits,
                             const struct soth_h1_cbs *cbs);
/** Release what init set up (a lent section buffer goes back, a FIFO grown on the heap is
 * freed); the memory may then be reused. An engine set up by init must be disposed. */
void soth_h1_dispose(struct soth_h1 *h);
/** malloc + init (once per connection). NULL on allocation failure. */
struct soth_h1 *soth_h1_new(const struct soth_h1_limits *limits, const struct soth_h1_cbs *cbs);
/** dispose + free; NULL is fine. */
void soth_h1_free(struct soth_h1 *h);

/**
 * Feed bytes received from leg `from`. Callbacks and `out` run before this returns.
 * Returns the number of bytes consumed (everything, unless the engine is blocked on that side:
 * see soth_h1_is_blocked; keep the rest and feed it again after a later call on the other side
 * unblocks it). Results (callback trace and concatenated `out` bytes) do not depend on how the
 * input is split.
 * Errors: after on_error, SOTH_E_MALFORMED (400/502) or SOTH_E_TOO_LARGE (431, or 502 for an
 * oversized response head); a negative value returned by `out` or `on_head`; SOTH_E_NOMEM
 * (no on_error) when a lent section buffer or the grown FIFO cannot be had; SOTH_E_STATE when
 * the engine is already dead. After an error the engine is dead: answer the client if
 * appropriate, call soth_h1_abort() to end the exchanges in flight, and close.
 * Bytes arriving after the connection is known to end (after a message that closes it, or from
 * the client after soth_h1_is_done) are consumed and dropped.
 */
ssize_t soth_h1_feed(struct soth_h1 *h, enum soth_leg from, const char *data, size_t len);

/** The EOF from leg `side` ended the engine: close once the queued output is flushed. */
#define SOTH_H1_DONE 1
/**
 * `side` closed its sending direction (read returned 0). Finishes a read-until-close response
 * (on_body/on_complete/on_exchange complete), ends in-flight exchanges whose messages can no
 * longer complete (client EOF inside a request: client_aborted; upstream EOF before a response
 * completed: upstream_aborted; an exchange whose response completed counts as complete), and
 * reports an upgraded exchange complete once both sides have sent EOF.
 * Returns SOTH_H1_DONE when the connection is finished, 0 when the other direction must go on
 * (client EOF between requests while responses are still due, or one side of an upgraded
 * relay), SOTH_E_STATE when the engine was already dead.
 */
int soth_h1_eof(struct soth_h1 *h, enum soth_leg side);

/**
 * End every exchange still in flight with `outcome` (an exchange whose response completed is
 * reported complete) and make the engine dead. Call it whenever the connection closes for a
 * reason the engine did not see (error, timeout, reset, shutdown); a no-op when nothing is in
 * flight or everything was reported already.
 */
void soth_h1_abort(struct soth_h1 *h, enum soth_h1_outcome outcome);

/** True when feeding leg `side` would consume nothing now: the FIFO of requests awaiting
 *  responses is full, or an upgrade/CONNECT request waits for its answer. */
bool soth_h1_is_blocked(const struct soth_h1 *h, enum soth_leg side);
/** True when the connection has nothing more to do: error, abort, a message that closed the
 *  connection with every exchange reported, or EOF handled. Close after flushing output. */
bool soth_h1_is_done(const struct soth_h1 *h);

/**
 * docs/http1.md "Upstream connection pool": with on, an HTTP/1.1 request's lone
 * `Connection: close` is not forwarded (the exchange still closes the client's connection)
 * and the response to it gets `Connection: close` toward the client when the origin kept the
 * connection open. Off (the default): output unchanged. Set before the first feed.
 */
void soth_h1_set_keep_upstream(struct soth_h1 *h, bool on);
/** True when the upstream connection may carry another client's requests: no exchange in
 *  flight, its decoder between messages, no upstream EOF, and no final response that closed
 *  it, read until close or switched protocols. */
bool soth_h1_upstream_reusable(const struct soth_h1 *h);
/** True after a 101 / CONNECT 2xx switched the connection to byte relay. */
bool soth_h1_is_upgraded(const struct soth_h1 *h);
/** Exchanges started (request head seen) and not yet reported. */
size_t soth_h1_in_flight(const struct soth_h1 *h);
/**
 * docs/http1.md "Upstream connection pool": whether the upstream connection may be replaced by
 * a fresh one and the request sent again: nothing came from it (its decoder is idle, no EOF
 * fed), and at most one exchange is in flight, with an idempotent method (GET HEAD OPTIONS
 * TRACE PUT DELETE) and no protocol switch asked.
 */
bool soth_h1_upstream_retryable(const struct soth_h1 *h);

/* ---- origin-form serializer (proto/h1_write.c) ------------------------------------------- */

/**
 * A request head to forward to the origin in origin-form, and the target URI it was sent for
 * (absolute-form "http://host:port/path" to the proxy). Every iov is borrowed.
 */
struct soth_h1_origin_req {
    struct soth_iov method;            /* "GET", ... */
    struct soth_iov path;              /* origin-form path and query; empty writes "/" */
    struct soth_iov version;           /* "HTTP/1.1" or "HTTP/1.0" */
    const struct soth_header *headers; /* as received, wire order */
    size_t n_headers;
    struct soth_iov scheme; /* of the target: "http" or "https" (any case) */
    struct soth_iov host;   /* of the target: reg-name, IPv4 or IPv6 (no brackets) */
    bool host_is_ipv6;      /* host goes in brackets */
    uint16_t port;          /* of the target; 0 means the scheme's default */
    /* Toward an upstream HTTP proxy (docs/config.md "Routes"): the request line carries the
     * target in absolute-form ("http://host[:port]/path"), and proxy_auth (when not empty) is
     * sent as the last field, "Proxy-Authorization: <proxy_auth>", left out of `fields`. */
    bool absolute;
    struct soth_iov proxy_auth;
};

/**
 * Serialise req as an origin-form request head ("METHOD path VERSION", field lines "Name:
 * value", blank line) into buf[0..cap), as a proxy forwards a request it received in
 * absolute-form (RFC 9112 3.2.2, docs/http1.md "In the proxy"):
 *  - Host is the target's authority, whatever Host the client sent: the host (in brackets
 *    when IPv6), then ":port" only when port is neither 0 nor the default of the scheme (80
 *    for http, 443 for https; other schemes always get their port). It replaces the first
 *    received Host in place; later Host fields are dropped; without one it is the first
 *    field (RFC 9112 3.2);
 *  - Proxy-Connection and Proxy-Authorization are dropped (hop-by-hop, meant for the proxy);
 *  - every other field is written unchanged, in order;
 *  - with req->absolute, the request line's target is "scheme://authority" + path (the
 *    authority as in Host), and req->proxy_auth is added as Proxy-Authorization.
 * `fields` (may be NULL) receives the fields as written, each pointing into buf, with room
 * for n_headers + 1 entries, and *n_fields (n_fields may be NULL) their count: what an event
 * about this head should show. Allocates nothing; on failure buf holds nothing usable.
 * Returns the length of the head, SOTH_E_TOO_LARGE when it does not fit in cap, or
 * SOTH_E_MALFORMED when a piece could not be written safely: empty method, version or host,
 * a control byte, space or DEL in method, path, version, host or a field name, a ':' in a
 * field name, or CR, LF or NUL in a field value (the parsers never produce these).
 */
ssize_t soth_h1_write_origin_form(const struct soth_h1_origin_req *req, char *buf, size_t cap,
                                  struct soth_header *fields, size_t *n_fields);

/**
 * A response head as the proxy forwards it when it changed its fields (http3_passthrough
 * false removes HTTP/3 entries from Alt-Svc: docs/http3.md, "Forcing clients back to TCP"):
 * "version status reason" (reason may be empty: "HTTP/1.1 200 "), then headers[0 ..
 * n_headers) as "Name: value" lines in the order given, then a blank line, into buf[0 .. cap):
 * the bytes the engine would have forwarded for a head with these fields. Allocates nothing.
 * Returns the length, SOTH_E_TOO_LARGE when it does not fit in cap, or SOTH_E_MALFORMED for a
 * status outside 100..999, an empty version or one with a control byte, space or DEL, a field
 * name that is empty, not a word or holds ':', or CR, LF or NUL in the reason or a value.
 */
ssize_t soth_h1_write_response_head(struct soth_iov version, unsigned status,
                                    struct soth_iov reason, const struct soth_header *headers,
                                    size_t n_headers, char *buf, size_t cap);

/**
 * The proxy's own HTTP/1.1 answer (docs/answers.md) into out[0 .. cap): status line, Content-Type:
 * text/plain, Content-Length, Connection: close, blank line, then body[0 .. body_len). One
 * formatter for every answer: the engine's (core/answer.c) and the HTTP layer's (core/app_h1.c).
 * Returns the length written, or SOTH_E_TOO_LARGE when it does not fit in cap.
 */
ssize_t soth_h1_write_answer(char *out, size_t cap, unsigned status, const char *phrase,
                             const char *body, size_t body_len);
/** As soth_h1_write_answer with `extra` field lines ("Name: value\r\n"..., or NULL) after
 *  Content-Length (407's Proxy-Authenticate, 429's Retry-After), and Connection: close only
 *  when `close` (a 429 inside a kept-alive connection has none). */
ssize_t soth_h1_write_answer_hdr(char *out, size_t cap, unsigned status, const char *phrase,
                                 const char *extra, bool close, const char *body, size_t body_len);

#endif
