/*
 * soth_proto: the protocol parsers. Every parser is incremental or works on the bytes the
 * worker received, never allocates per call, and returns bytes consumed / SOTH_E_INCOMPLETE /
 * another negative soth_err.
 *
 * Sections: proxy request head (CONNECT and absolute-form), then later HTTP/1.1 (llhttp),
 * HTTP/2 (nghttp2), WebSocket, SSE, gRPC, decoders. Each section is owned by its issue.
 */
#ifndef SOTH_PROTO_H
#define SOTH_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/* ======================================================================================
 * Proxy request head: the first request on a regular-mode connection.
 *   CONNECT host:port HTTP/1.1        (authority-form; bracketed IPv6 "[::1]:443")
 *   GET http://host[:port]/path HTTP/1.1   (absolute-form, plain HTTP forwarding)
 * ====================================================================================== */

enum soth_head_mode {
    SOTH_HEAD_STRICT = 0, /* default: CRLF line ends only, RFC 9110/9112 grammar */
    SOTH_HEAD_LENIENT,    /* also bare LF line ends and surrounding whitespace */
};

#define SOTH_HEAD_MAX_HEADERS 64
#define SOTH_HEAD_MAX_HOST    255 /* longest reg-name host accepted (bytes) */

/** Limits; zero fields take the defaults below. */
struct soth_head_limits {
    size_t max_line;    /* request line without its line end, default 8192 */
    size_t max_head;    /* whole head incl. headers and final blank line, default 65536 */
    size_t max_headers; /* default and cap SOTH_HEAD_MAX_HEADERS */
};

/** A parsed head. All iovs point into the caller's input buffer. */
struct soth_proxy_head {
    struct soth_iov method;  /* "CONNECT", "GET", ... */
    struct soth_iov target;  /* request-target exactly as sent */
    struct soth_iov version; /* "HTTP/1.1" */
    struct soth_iov host;    /* without brackets for IPv6 */
    uint16_t port;           /* CONNECT: given (required); absolute-form: given or 80/443 */
    struct soth_iov scheme;  /* absolute-form: "http"; CONNECT: empty */
    struct soth_iov path;    /* absolute-form: origin-form path+query ("/" when empty) */
    bool is_connect;
    bool host_is_ipv6;
    size_t line_len; /* request line incl. its line end */
    size_t head_len; /* whole head incl. the final blank line */
    size_t n_headers;
    struct soth_header headers[SOTH_HEAD_MAX_HEADERS]; /* soth/base.h */
};

/**
 * Parse a proxy request head from buf[0..len). Call again with a longer buffer after
 * SOTH_E_INCOMPLETE (the head may arrive over many reads; the caller keeps the bytes).
 * Returns head_len (> 0) on success; bytes after the head are not looked at. Returns
 * SOTH_E_INCOMPLETE when the blank line has not arrived and no limit is exceeded yet;
 * SOTH_E_MALFORMED or SOTH_E_TOO_LARGE with *reason_code set to a stable snake_case code and
 * *detail to a short human sentence (static strings); both are set to NULL when the call did
 * not fail (either pointer may be NULL). *out is complete only on success.
 *
 * The scan runs left to right and decides only on bytes already seen, so errors are reported
 * at the first byte that makes the head invalid (an overlong line fails before its end
 * arrives), and the result never depends on how the input was split: for any prefix of an
 * input, the result is SOTH_E_INCOMPLETE or the result of the whole input.
 *
 * Grammar (RFC 9112 2-5, RFC 9110 4.2, 5.6):
 *  - request line METHOD SP TARGET SP VERSION CRLF; METHOD a token (case-sensitive, "CONNECT"
 *    is CONNECT); VERSION exactly "HTTP/1.1" or "HTTP/1.0".
 *  - CONNECT: authority-form host:port with port 1..65535 (leading zeros allowed, at most 5
 *    digits); other methods: absolute-form http:// or https:// (case-insensitive scheme),
 *    default port 80/443, an empty port means the default, no userinfo, path "/" when empty;
 *    origin-form ("/x", "*") is refused here (this is the proxy's first request).
 *  - host: reg-name of ALPHA DIGIT '-' '.' '_' up to SOTH_HEAD_MAX_HOST bytes without empty
 *    labels (one trailing dot allowed); a name whose last label is numeric ("1", "0x7f")
 *    must be a dotted-quad IPv4 address ("127.1" and "2130706433" are refused: resolvers
 *    would read them as addresses the policy never saw); or an IPv6 address in brackets,
 *    checked with inet_pton (no zone ids).
 *  - field lines NAME ":" OWS VALUE OWS; NAME a token with no space before the colon;
 *    VALUE trimmed of OWS, may hold VCHAR, obs-text, SP and HTAB, no other control byte.
 *  - a CR is always followed by LF (a bare CR is "control_bytes", never a line end).
 *  - obs-fold (a field line starting with SP/HTAB) is refused in both modes (RFC 9112 5.2
 *    allows refusing; rewriting it would mean writing into the caller's bytes).
 * Lenient mode also accepts: bare LF line ends, runs of SP/HTAB between and around the
 * request-line tokens, any printable ASCII in the target, and a fragment in an absolute URI
 * (dropped from path). Nothing else is relaxed.
 *
 * Reason codes (SOTH_E_MALFORMED unless noted):
 *   "missing_port"      CONNECT target without a port ("host", "host:", "[::1]")
 *   "invalid_port"      port 0, > 65535, more than 5 digits or not digits
 *   "bad_brackets"      unbalanced/misplaced brackets, bracketed text not IPv6, IPv6 without
 *                       brackets
 *   "bad_target"        empty or invalid host, wrong target form for the method, userinfo,
 *                       fragment (strict), non-ASCII or non-URI byte in the target
 *   "control_bytes"     a control byte (or a bare CR) in the line or a field line; also a TLS
 *                       handshake sent to the proxy port
 *   "bare_lf"           strict mode: a line ended by LF alone
 *   "bad_method"        a non-token byte in the method
 *   "bad_version"       anything but HTTP/1.1 or HTTP/1.0
 *   "bad_request_line"  wrong number of tokens or separators (strict: a single SP each)
 *   "bad_header"        a field line that is not NAME: VALUE
 *   "obs_fold"          a field line starting with SP or HTAB
 *   "line_too_long"     SOTH_E_TOO_LARGE: request line longer than max_line
 *   "head_too_large"    SOTH_E_TOO_LARGE: head longer than max_head
 *   "too_many_headers"  SOTH_E_TOO_LARGE: more than max_headers field lines
 */
ssize_t soth_proxy_head_parse(const char *buf, size_t len, enum soth_head_mode mode,
                              const struct soth_head_limits *limits, struct soth_proxy_head *out,
                              const char **reason_code, const char **detail);

/* ======================================================================================
 * HTTP/1.1 (issue 6): section owned by the HTTP/1.1 engineer.
 * ====================================================================================== */

/*
 * One HTTP/1.1 connection seen by the proxy: requests flow client -> upstream, responses
 * upstream -> client. The engine runs llhttp (strict: lenient flags off) inline on the bytes
 * the caller received, reports what it parsed through callbacks, and hands back through
 * `out` the bytes to forward: heads and trailers re-serialised from what was parsed ("Name:
 * value\r\n" per field, start line rebuilt, chunk framing re-emitted without extensions),
 * bodies passed through as they arrive (never buffered). What the other side receives is
 * exactly what the callbacks reported. Design notes: docs/http1.md.
 *
 * Sides and directions: SOTH_H1_CLIENT (0) and SOTH_H1_UPSTREAM (1). `from_side` of a feed and
 * `dir` of a callback name the side the message came from (0: request, 1: response); `to_side`
 * of `out` names the side the bytes go to.
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
 * allocated while feeding. Not thread-safe: one connection, one worker.
 */

struct soth_h1; /* opaque */

enum soth_h1_side {
    SOTH_H1_CLIENT = 0,   /* requests come from here, responses go here */
    SOTH_H1_UPSTREAM = 1, /* responses come from here, requests go here */
};

/** How an exchange ended (SPEC exchange_completed `outcome`). */
enum soth_h1_outcome {
    SOTH_H1_COMPLETE = 0,
    SOTH_H1_CLIENT_ABORTED,
    SOTH_H1_UPSTREAM_ABORTED,
    SOTH_H1_RESET,
    SOTH_H1_TIMEOUT,
    SOTH_H1_OUTCOME_COUNT
};
/** SPEC name of an outcome ("complete", "client_aborted", ...); "unknown" when out of range. */
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
    /** Bytes to send to `to_side`. Return 0, or a negative error: the engine then stops (dead)
     *  and the feed returns that error. */
    int (*out)(void *ctx, int to_side, const char *p, size_t n);
    /** A complete head (before it is forwarded). Return 0 to forward it, SOTH_H1_HEAD_SENT
     *  when the callback already sent its own serialisation of the head through `out` (a
     *  proxy rewriting an absolute-form target), or a negative value to stop the engine
     *  (dead) and make the feed return it: nothing of the message is sent, and a refused
     *  request is no exchange (no on_exchange for it). */
    int (*on_head)(void *ctx, int dir, uint32_t stream_id, const struct soth_h1_head *h);
    /** Message body bytes after de-chunking, in order; any split. */
    void (*on_body)(void *ctx, int dir, uint32_t stream_id, const char *p, size_t n);
    /** Trailer fields of a chunked message (only when there is at least one). */
    void (*on_trailers)(void *ctx, int dir, uint32_t stream_id, const struct soth_header *t,
                        size_t n);
    /** The message (request or final response) is complete. Not called for interim 1xx. */
    void (*on_complete)(void *ctx, int dir, uint32_t stream_id);
    /** A 101 (protocol = its Upgrade value, e.g. "websocket") or a 2xx to CONNECT (protocol
     *  empty) switched the connection to a byte relay, after that response head was reported
     *  and forwarded. From then on every feed forwards its bytes unchanged to the other side. */
    void (*on_upgrade)(void *ctx, uint32_t stream_id, struct soth_iov protocol);
    /** An exchange ended; always the stream's last callback. */
    void (*on_exchange)(void *ctx, const struct soth_h1_exchange *x);
    /** The peer on side `dir` broke the protocol. `status` is the answer the proxy should give
     *  the client (400 or 431 for a bad request, 502 for a bad response), `code` a stable
     *  snake_case reason and `detail` a sentence (static strings). stream_id is the exchange the
     *  bad bytes belong to (a request that fails in its head gets the id it would have had; an
     *  unsolicited response 0). The engine is dead afterwards. */
    void (*on_error)(void *ctx, int dir, uint32_t stream_id, unsigned status, const char *code,
                     const char *detail);
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
/** Release what init set up (a lent section buffer goes back); the memory may then be reused. */
void soth_h1_dispose(struct soth_h1 *h);
/** malloc + init (once per connection). NULL on allocation failure. */
struct soth_h1 *soth_h1_new(const struct soth_h1_limits *limits, const struct soth_h1_cbs *cbs);
/** dispose + free; NULL is fine. */
void soth_h1_free(struct soth_h1 *h);

/**
 * Feed bytes received from `from_side`. Callbacks and `out` run before this returns.
 * Returns the number of bytes consumed (everything, unless the engine is blocked on that side:
 * see soth_h1_is_blocked; keep the rest and feed it again after a later call on the other side
 * unblocks it). Results (callback trace and concatenated `out` bytes) do not depend on how the
 * input is split.
 * Errors: after on_error, SOTH_E_MALFORMED (400/502) or SOTH_E_TOO_LARGE (431, or 502 for an
 * oversized response head); a negative value returned by `out` or `on_head`; SOTH_E_STATE when
 * the engine is already dead. After an error the engine is dead: answer the client if
 * appropriate, call soth_h1_abort() to end the exchanges in flight, and close.
 * Bytes arriving after the connection is known to end (after a message that closes it, or from
 * the client after soth_h1_is_done) are consumed and dropped.
 */
ssize_t soth_h1_feed(struct soth_h1 *h, int from_side, const char *data, size_t len);

/** The EOF from `side` ended the engine: close once the queued output is flushed. */
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
int soth_h1_eof(struct soth_h1 *h, int side);

/**
 * End every exchange still in flight with `outcome` (an exchange whose response completed is
 * reported complete) and make the engine dead. Call it whenever the connection closes for a
 * reason the engine did not see (error, timeout, reset, shutdown); a no-op when nothing is in
 * flight or everything was reported already.
 */
void soth_h1_abort(struct soth_h1 *h, enum soth_h1_outcome outcome);

/** True when feeding `side` would consume nothing now: the FIFO of requests awaiting
 *  responses is full, or an upgrade/CONNECT request waits for its answer. */
bool soth_h1_is_blocked(const struct soth_h1 *h, int side);
/** True when the connection has nothing more to do: error, abort, a message that closed the
 *  connection with every exchange reported, or EOF handled. Close after flushing output. */
bool soth_h1_is_done(const struct soth_h1 *h);
/** True after a 101 / CONNECT 2xx switched the connection to byte relay. */
bool soth_h1_is_upgraded(const struct soth_h1 *h);
/** Exchanges started (request head seen) and not yet reported. */
size_t soth_h1_in_flight(const struct soth_h1 *h);

/* ---- end of HTTP/1.1 section ---- */

/* ======================================================================================
 * HTTP/2 (issue 7): section owned by the HTTP/2 engineer.
 *
 * The HTTP/2 relay: an nghttp2 server session toward the client and an nghttp2 client
 * session toward the upstream, driven only through memory I/O (the caller owns the
 * transports and TLS). Every client stream maps to one upstream stream; headers, data,
 * trailers, RST_STREAM and GOAWAY propagate; flow control is end to end, so the body bytes
 * held per connection stay under a fixed bound whatever the body sizes and stream counts.
 * Design, limits, the memory bound and the outcome table: docs/http2.md.
 * ====================================================================================== */

/** The relay of one client connection (opaque; one allocation per connection). */
struct soth_h2_relay;

/** A leg of the relay, and the argument of feed/eof/want_*. */
enum soth_h2_side {
    SOTH_H2_CLIENT = 0,   /* toward the user agent: our nghttp2 server session */
    SOTH_H2_UPSTREAM = 1, /* toward the origin: our nghttp2 client session */
};

/** Direction of a message (SPEC "client_to_server" / "server_to_client"). */
enum soth_h2_dir {
    SOTH_H2_REQUEST = 0,  /* client to upstream */
    SOTH_H2_RESPONSE = 1, /* upstream to client */
};

/** How a stream ended: the SPEC exchange_completed outcomes (table in docs/http2.md). */
enum soth_h2_outcome {
    SOTH_H2_COMPLETE = 0,     /* the whole response reached the client's output */
    SOTH_H2_CLIENT_ABORTED,   /* client RST_STREAM, or client transport EOF */
    SOTH_H2_UPSTREAM_ABORTED, /* upstream RST_STREAM/GOAWAY refusal/EOF/protocol error, bad head */
    SOTH_H2_RESET,            /* transport reset, client protocol error, 431 refusal, relay error */
    SOTH_H2_OUTCOME_COUNT,
};

/** SPEC name of an outcome ("complete", "client_aborted", ...); "?" when out of range. */
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
    const struct soth_header *headers; /* regular fields, wire order */
    size_t n_headers;
    bool end_stream; /* the response has no body */
};

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
    int (*out)(void *ctx, enum soth_h2_side to, const char *p, size_t n);
    void (*on_request_head)(void *ctx, int32_t stream_id, const struct soth_h2_request *req);
    void (*on_response_head)(void *ctx, int32_t stream_id, const struct soth_h2_response *resp);
    /** Body bytes as they arrive (before forwarding); sums match the stream_end byte counts. */
    void (*on_data)(void *ctx, enum soth_h2_dir dir, int32_t stream_id, const char *p, size_t n);
    void (*on_trailers)(void *ctx, enum soth_h2_dir dir, int32_t stream_id,
                        const struct soth_header *headers, size_t n);
    void (*on_stream_end)(void *ctx, int32_t stream_id, const struct soth_h2_stream_end *end);
};

/** Optional allocator for the relay and both nghttp2 sessions (same shape as nghttp2_mem). */
struct soth_h2_mem {
    void *ctx;
    void *(*malloc_fn)(size_t size, void *ctx);
    void (*free_fn)(void *p, void *ctx);
    void *(*calloc_fn)(size_t nmemb, size_t size, void *ctx);
    void *(*realloc_fn)(void *p, size_t size, void *ctx);
};

/** Limits; zero fields take the defaults in brackets. */
struct soth_h2_settings {
    uint32_t max_header_list_size;   /* SPEC http2_max_header_list_size [65536]: advertised
                                        on both legs and enforced on every header block */
    uint32_t max_concurrent_streams; /* advertised to the client [100] */
    uint32_t initial_window;         /* stream window advertised on both legs [65535] */
    uint32_t connection_window;      /* connection window opened on both legs [1 MiB] */
    uint32_t max_settings;           /* SETTINGS entries accepted per frame [32] */
    uint32_t max_continuations;      /* CONTINUATION frames per header block [8] */
    uint32_t rst_burst, rst_rate;    /* client RST_STREAM token bucket [1000, 33/s] */
    const struct soth_h2_mem *mem;   /* NULL: libc */
};

/** Counters, for tests and metrics. */
struct soth_h2_stats {
    size_t buffered[2];      /* body bytes held now, by enum soth_h2_dir */
    size_t buffered_peak[2]; /* highest buffered[] seen */
    size_t buffer_bound[2];  /* buffered[] never exceeds this (docs/http2.md) */
    size_t chunk_bytes;      /* memory in body chunks, free ones included */
    uint32_t streams;        /* stream slots in use */
    uint32_t streams_peak;
    uint64_t streams_total;   /* client streams accepted */
    uint64_t streams_refused; /* client streams refused (limits, GOAWAY, shutdown) */
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
ssize_t soth_h2_relay_feed(struct soth_h2_relay *r, enum soth_h2_side from, const char *data,
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
void soth_h2_relay_hold(struct soth_h2_relay *r, enum soth_h2_side side, bool hold);

/** Whether the leg wants more input / has output pending (call flush). When both are false
 *  for a leg its transport can be closed; when both are false for the client leg the relay
 *  is finished. */
bool soth_h2_relay_want_read(const struct soth_h2_relay *r, enum soth_h2_side side);
bool soth_h2_relay_want_write(const struct soth_h2_relay *r, enum soth_h2_side side);

/** Whether the leg ended (or is ending) on a connection error: nghttp2's terminating GOAWAY
 *  for a protocol error or flood, a fatal feed, or an internal failure. Sticky. */
bool soth_h2_relay_failed(const struct soth_h2_relay *r, enum soth_h2_side side);
/** Whether the peer on `side` sent GOAWAY (any code). Sticky. */
bool soth_h2_relay_goaway_received(const struct soth_h2_relay *r, enum soth_h2_side side);

/**
 * The transport of `side` closed: orderly EOF (reset false) or reset/broken pipe (reset
 * true). Open streams end with the deterministic outcomes of docs/http2.md; the other leg
 * gets RST_STREAM/GOAWAY (client side gone) or 502/RST_STREAM and a graceful GOAWAY
 * (upstream side gone); responses already received in full are still delivered. Further
 * feeds from that side return SOTH_E_CLOSED. Idempotent.
 */
void soth_h2_relay_eof(struct soth_h2_relay *r, enum soth_h2_side side, bool reset);

/** Graceful shutdown (drain): GOAWAY(NO_ERROR) to both legs, refuse new client streams, let
 *  streams in flight finish. */
void soth_h2_relay_shutdown(struct soth_h2_relay *r);

/** Fill *out with the relay's counters. */
void soth_h2_relay_stats(const struct soth_h2_relay *r, struct soth_h2_stats *out);

/* ---- end of HTTP/2 section ---- */

/* ======================================================================================
 * WebSocket and SSE (issue 9): section owned by the streaming-protocols engineer (A).
 * ====================================================================================== */

/*
 * WebSocket (RFC 6455) frames, observed on the bytes the proxy relays after a 101. One parser
 * per direction; it never modifies or keeps the relayed bytes (the caller forwards them
 * unchanged), it only reports each message with a bounded, unmasked copy of its first bytes.
 * A message is a data message (text/binary, possibly fragmented into continuation frames) or
 * a control frame (close/ping/pong); control frames interleaved inside a fragmented message
 * are reported as they complete, before the data message they interrupt. Results never depend
 * on how the input is split. Design notes and the turn model: docs/streaming.md.
 *
 * Memory: one block of soth_ws_size(limits) bytes per direction (the capture buffer is inside
 * it); nothing is allocated while feeding. Not thread-safe.
 */

struct soth_ws; /* opaque */

/** Which endpoint sent the frames (RFC 6455 5.1: clients mask, servers do not). */
enum soth_ws_dir {
    SOTH_WS_CLIENT = 0, /* client_to_server */
    SOTH_WS_SERVER = 1, /* server_to_client */
};

/** Opcodes (RFC 6455 5.2). */
enum {
    SOTH_WS_OP_CONT = 0x0,
    SOTH_WS_OP_TEXT = 0x1,
    SOTH_WS_OP_BINARY = 0x2,
    SOTH_WS_OP_CLOSE = 0x8,
    SOTH_WS_OP_PING = 0x9,
    SOTH_WS_OP_PONG = 0xa,
};

/** Why a parser stopped: stable codes, soth_ws_error_name() gives the snake_case text. */
enum soth_ws_error {
    SOTH_WS_OK = 0,
    SOTH_WS_E_UNMASKED,           /* "unmasked_client_frame": client frame without MASK */
    SOTH_WS_E_MASKED,             /* "masked_server_frame": server frame with MASK */
    SOTH_WS_E_RSV,                /* "reserved_bits": RSV2/RSV3, or RSV1 without
                                     permessage-deflate or on a continuation/control frame */
    SOTH_WS_E_OPCODE,             /* "bad_opcode": reserved opcode 3-7 or 0xb-0xf */
    SOTH_WS_E_CONTROL_TOO_LONG,   /* "control_too_long": control payload over 125 bytes */
    SOTH_WS_E_CONTROL_FRAGMENTED, /* "fragmented_control": control frame without FIN */
    SOTH_WS_E_UNEXPECTED_CONT,    /* "unexpected_continuation": no message to continue */
    SOTH_WS_E_EXPECTED_CONT,      /* "expected_continuation": new data frame inside a
                                     fragmented message */
    SOTH_WS_E_BAD_LENGTH,         /* "bad_length": 64-bit length with the top bit set */
    SOTH_WS_E_TOO_LARGE,          /* "message_too_large": over limits.max_message */
    SOTH_WS_E_BAD_CLOSE,          /* "bad_close_payload": close payload of 1 byte, or a
                                     status code that may not be sent (RFC 6455 7.4) */
    SOTH_WS_E_AFTER_CLOSE,        /* "frame_after_close": a frame after this side's Close */
    SOTH_WS_ERROR_COUNT
};
/** Stable snake_case name ("ok", "unmasked_client_frame", ...); "unknown" when out of range. */
const char *soth_ws_error_name(enum soth_ws_error e);

/** Limits. Pass NULL for the defaults in brackets. */
struct soth_ws_limits {
    uint64_t max_message; /* payload bytes of one message, all fragments [64 MiB]; 0: default */
    uint32_t capture;     /* payload bytes copied (unmasked) per message, exactly this many:
                             0 captures nothing [4096] */
};

/** One complete message, valid only during on_message. */
struct soth_ws_msg {
    enum soth_ws_dir dir;
    unsigned opcode;      /* of its first frame: TEXT, BINARY, CLOSE, PING or PONG */
    uint64_t len;         /* payload bytes, all fragments (compressed size when compressed) */
    struct soth_iov data; /* the first min(len, capture) payload bytes, unmasked */
    bool truncated;       /* data.len < len */
    bool compressed;      /* RSV1 on its first frame with permessage-deflate: data is the
                             compressed payload (RFC 7692) */
    uint32_t frames;      /* frames it took: 1 + continuations (1 for control frames) */
    int close_code;       /* CLOSE: the status code, -1 when the payload is empty; else -1 */
    struct soth_iov close_reason; /* CLOSE: the reason text (up to 123 bytes), else empty */
};

struct soth_ws_cbs {
    void *ctx;
    /** A message completed. Runs inside soth_ws_feed; must not call back into the parser. */
    void (*on_message)(void *ctx, const struct soth_ws_msg *m);
    /**
     * Optional (NULL: not called): payload bytes of the data message in progress (text or
     * binary, all its fragments) as they arrive, unmasked, every byte rather than only the
     * captured prefix; `compressed` as the message's RSV1 under permessage-deflate. The last
     * call for a message comes before its on_message. Runs inside soth_ws_feed; must not call
     * back into the parser.
     */
    void (*on_payload)(void *ctx, bool compressed, const char *p, size_t n);
};

/** Bytes needed for a parser with these limits (NULL: defaults). */
size_t soth_ws_size(const struct soth_ws_limits *limits);

/**
 * Initialise a parser for the frames `dir` sends, in caller-owned memory of
 * soth_ws_size(limits) bytes aligned for any type. `deflate`: permessage-deflate was
 * negotiated (Sec-WebSocket-Extensions in the 101), so RSV1 marks a compressed message.
 * `cbs` and `limits` are copied (limits may be NULL). Returns the parser (== mem). There is
 * nothing to dispose: the memory may be reused or freed at any time.
 */
struct soth_ws *soth_ws_init(void *mem, enum soth_ws_dir dir, bool deflate,
                             const struct soth_ws_limits *limits, const struct soth_ws_cbs *cbs);

/**
 * Parse relayed bytes (read-only). on_message runs for every message completed in them.
 * Returns len, or after a protocol violation SOTH_E_MALFORMED (SOTH_E_TOO_LARGE for
 * message_too_large) with soth_ws_error() set; the parser is then stopped and every later
 * feed returns the same error without looking at its bytes. The violation is detected at the
 * first byte that makes the stream invalid (header checks as soon as the header byte holding
 * the field arrives, close payload checks at the end of the close frame), so any split gives
 * the same messages and the same error.
 * Not checked: UTF-8 validity of text and close reasons, minimal length encoding.
 */
ssize_t soth_ws_feed(struct soth_ws *w, const char *data, size_t len);

/** The violation that stopped the parser, SOTH_WS_OK while it runs. */
enum soth_ws_error soth_ws_error(const struct soth_ws *w);
/** Stream offset (bytes fed before it) of the frame header that broke the protocol. */
uint64_t soth_ws_error_offset(const struct soth_ws *w);
/** True when a frame or a fragmented message is partly received (EOF now would cut it). */
bool soth_ws_in_frame(const struct soth_ws *w);

/*
 * Turn aggregator: groups the messages of one WebSocket connection into conversational turns.
 * Pure logic: the caller passes every message of both directions in relay order with a
 * timestamp; callbacks report turn starts and ends.
 *  - A turn starts with a data message (text/binary) when no turn is open; its sender is the
 *    initiator. Messages from the other side are the turn's answer. The first data message of
 *    the initiator after an answer (the direction change back) ends the turn with
 *    DIRECTION_CHANGE and starts the next one (same timestamp).
 *  - Ping and pong frames are counted in the open turn but never start or end one.
 *  - A close frame is counted in the open turn, which then ends with CLOSE; after a close (or
 *    soth_ws_turns_end) nothing starts any more.
 *  - IDLE: with idle_ns > 0, an open turn whose last message is idle_ns or more older than the
 *    next message (or than `now` of soth_ws_turns_tick) ends with IDLE; the next data message
 *    starts a new turn.
 *  - soth_ws_turns_end (connection closed: CLOSE, or a parser error: ERROR) ends the open turn,
 *    so no turn is ever left open.
 * Counters: frames and payload bytes per direction of the messages counted in the turn.
 * started_ns: timestamp of the first message; ended_ns: of the message that changed direction,
 * of the close frame or of the end call, and for IDLE the turn's last message.
 */
enum soth_ws_flush {
    SOTH_WS_FLUSH_DIRECTION_CHANGE = 0, /* same order as the SPEC flush_reason names */
    SOTH_WS_FLUSH_CLOSE,
    SOTH_WS_FLUSH_ERROR,
    SOTH_WS_FLUSH_IDLE,
    SOTH_WS_FLUSH_COUNT
};

struct soth_ws_turn {
    uint64_t id;                  /* 1, 2, 3, ... per connection */
    enum soth_ws_dir initiator;   /* sender of the first message */
    uint64_t frames[2], bytes[2]; /* by enum soth_ws_dir */
    uint64_t started_ns, ended_ns;
    enum soth_ws_flush reason; /* meaningful in on_end */
};

struct soth_ws_turn_cbs {
    void *ctx;
    void (*on_start)(void *ctx, const struct soth_ws_turn *t);
    void (*on_end)(void *ctx, const struct soth_ws_turn *t);
};

/** Caller-owned state; fields are private to proto/ws.c. */
struct soth_ws_turns {
    struct soth_ws_turn_cbs cbs;
    uint64_t idle_ns; /* 0: no idle flush */
    uint64_t last_ns; /* timestamp of the last message counted */
    bool open;        /* cur is a turn in progress */
    bool answered;    /* the other side spoke in cur */
    bool closed;      /* no turn starts any more */
    struct soth_ws_turn cur;
};

/** Start with no turn; cbs copied (members may be NULL). */
void soth_ws_turns_init(struct soth_ws_turns *t, uint64_t idle_ns,
                        const struct soth_ws_turn_cbs *cbs);
/** Account one message (from soth_ws_feed's on_message) at now_ns. Callbacks fire before it
 *  returns: an end (idle or direction change) first, then a start; emit the message after. */
void soth_ws_turns_message(struct soth_ws_turns *t, const struct soth_ws_msg *m, uint64_t now_ns);
/** Idle check at now_ns: ends the open turn with IDLE when it has been idle long enough.
 *  Returns true when it did. */
bool soth_ws_turns_tick(struct soth_ws_turns *t, uint64_t now_ns);
/** End the open turn (if any) with `reason` at now_ns; no turn starts afterwards. */
void soth_ws_turns_end(struct soth_ws_turns *t, enum soth_ws_flush reason, uint64_t now_ns);

/*
 * Server-sent events (WHATWG HTML, "Server-sent events", 9.2.6 Interpreting an event stream):
 * an incremental text/event-stream parser fed the response body after transfer decoding.
 * Lines end with CRLF, LF or CR (a CR at the end of one piece followed by LF at the start of
 * the next is one line end); one UTF-8 BOM at the stream start is skipped; lines starting
 * with ':' are comments; fields "event", "data", "id", "retry" as the spec says (unknown
 * fields ignored, one space after the colon dropped, a line without colon is a field with an
 * empty value). A blank line dispatches the event when its data buffer is not empty (the last
 * LF of the data removed); "id" persists across events (the last event ID buffer), "id" with a
 * NUL is ignored, "retry" only of ASCII digits (at most 18) is taken. The bytes are only read:
 * the caller forwards them at once (no added latency).
 * At stream end the pending, undispatched event is discarded, as the spec says ("If the file
 * ends in the middle of an event, before the final empty line, the incomplete event is not
 * dispatched"): soth_sse_finish() reports whether one was.
 * Bounds: data keeps max_data bytes, event type and id 256 bytes each; beyond that the event
 * is still dispatched, with what fits and `truncated` set (cut at a UTF-8 boundary), and
 * parsing goes on normally. Memory: soth_sse_size() bytes, nothing allocated while feeding.
 */

struct soth_sse; /* opaque */

#define SOTH_SSE_FIELD_MAX 256 /* bytes kept of an event type or id */

struct soth_sse_limits {
    uint32_t max_data; /* data bytes kept per event [65536]; 0: default */
};

/** A dispatched event, valid only during on_event. */
struct soth_sse_event {
    struct soth_iov event; /* event type buffer; empty means "message" */
    struct soth_iov id;    /* last event ID buffer (persists across events); may be empty */
    int64_t retry;         /* a valid "retry" field in this event's lines, else -1 */
    struct soth_iov data;  /* data buffer without its final LF (at most max_data bytes) */
    uint64_t data_len;     /* full length of the data (> data.len when truncated) */
    bool truncated;        /* data, event or id did not fit */
};

struct soth_sse_cbs {
    void *ctx;
    /** An event was dispatched. Runs inside soth_sse_feed; must not call back. */
    void (*on_event)(void *ctx, const struct soth_sse_event *ev);
};

size_t soth_sse_size(const struct soth_sse_limits *limits);
/** Initialise (or restart, for a new stream) in caller memory of soth_sse_size(limits) bytes
 *  aligned for any type; cbs and limits copied (limits may be NULL). Returns the parser. */
struct soth_sse *soth_sse_init(void *mem, const struct soth_sse_limits *limits,
                               const struct soth_sse_cbs *cbs);
/** Parse body bytes; on_event fires for every event completed. Never fails: returns len. */
ssize_t soth_sse_feed(struct soth_sse *s, const char *data, size_t len);
/** The stream ended: discard the incomplete event, if any (returns true then); the parser is
 *  back at a stream start. */
bool soth_sse_finish(struct soth_sse *s);
/** Events dispatched so far, and of those truncated. */
uint64_t soth_sse_events(const struct soth_sse *s);
uint64_t soth_sse_truncated(const struct soth_sse *s);

/* ---- end of WebSocket and SSE section ---- */

/* ======================================================================================
 * gRPC, layered decoders, payload parsing (issue 9): section owned by engineer (B).
 * ====================================================================================== */

/*
 * Two pieces, both pure (no events, no I/O): the gRPC envelope parser (incremental, one per
 * stream direction) and the layered decoder chain that turns one captured message into a
 * payload_parsed result. Design notes: docs/streaming.md ("gRPC", "Layered decoders").
 */

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

/* ---- payload formats and content types ---------------------------------------------------- */

enum soth_payload_format {
    SOTH_FMT_UNKNOWN = 0, /* not declared: the decoder sniffs conservatively */
    SOTH_FMT_JSON,
    SOTH_FMT_MSGPACK,
    SOTH_FMT_PROTO, /* protobuf (application/grpc, +proto): needs a schema; sniffed only */
    SOTH_FMT_NONE,  /* declared as something else: nothing to parse */
    SOTH_FMT_COUNT
};
/** "json", "msgpack", "proto", ...: the SPEC payload_parsed `format` words for JSON/msgpack. */
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

/* ---- end of gRPC and decoders section ---- */

#endif
