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

/** Limits; zero fields take the defaults below. */
struct soth_head_limits {
    size_t max_line;    /* request line, default 8192 */
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
    size_t line_len;         /* request line incl. its line end */
    size_t head_len;         /* whole head incl. the final blank line */
    size_t n_headers;
    struct soth_header headers[SOTH_HEAD_MAX_HEADERS]; /* soth/base.h */
};

/**
 * Parse a proxy request head from buf[0..len). Call again with a longer buffer after
 * SOTH_E_INCOMPLETE (the head may arrive over many reads; the caller keeps the bytes).
 * Returns head_len (> 0) on success; SOTH_E_INCOMPLETE when the blank line has not arrived
 * and no limit is exceeded yet; SOTH_E_MALFORMED or SOTH_E_TOO_LARGE with *reason_code set to
 * a stable snake_case code (e.g. "missing_port", "invalid_port", "bad_brackets",
 * "control_bytes", "line_too_long", "head_too_large", "bare_lf", "bad_method",
 * "bad_version", "bad_target", "bad_header") and *detail to a short human sentence (static
 * strings). Errors are reported as early as the bytes allow (an overlong line fails before
 * its end arrives).
 */
ssize_t soth_proxy_head_parse(const char *buf, size_t len, enum soth_head_mode mode,
                              const struct soth_head_limits *limits, struct soth_proxy_head *out,
                              const char **reason_code, const char **detail);

/* ======================================================================================
 * HTTP/1.1 (issue 6): section owned by the HTTP/1.1 engineer.
 * ====================================================================================== */

/* ---- end of HTTP/1.1 section ---- */

/* ======================================================================================
 * HTTP/2 (issue 7): section owned by the HTTP/2 engineer.
 * ====================================================================================== */

/* ---- end of HTTP/2 section ---- */

#endif
