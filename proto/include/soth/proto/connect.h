/*
 * soth/proto/connect.h: the proxy request head, the first request on a regular-mode
 * connection (proto/connect.c):
 *   CONNECT host:port HTTP/1.1        (authority-form; bracketed IPv6 "[::1]:443")
 *   GET http://host[:port]/path HTTP/1.1   (absolute-form, plain HTTP forwarding)
 * Works on the bytes the worker received, never allocates. What the proxy answers to a
 * refused head: docs/http1.md.
 */
#ifndef SOTH_PROTO_CONNECT_H
#define SOTH_PROTO_CONNECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

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
    size_t line_len; /* request line incl. its line end (not the empty lines before it) */
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
 *  - empty lines before the request line are skipped (RFC 9112 2.2; counted in max_head);
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

/** An authority: host[:port] or [IPv6][:port]. Every iov points into the parsed text. */
struct soth_authority {
    struct soth_iov host; /* without brackets for IPv6 */
    uint16_t port;        /* given, else the default passed to soth_authority_parse */
    bool host_is_ipv6;
};

/**
 * Parse an authority with the rules of the proxy head's targets above (host: reg-name,
 * dotted-quad IPv4 or bracketed IPv6; port 1..65535, an empty port meaning the default):
 * the one authority parser of the proxy, for the proxy head and for the absolute-form
 * requests that follow it on a connection (core/app_h1.c). A missing port is an error when
 * need_port (CONNECT), else out->port = default_port. Returns 0, or SOTH_E_MALFORMED with
 * *reason_code / *detail (either may be NULL) set as for soth_proxy_head_parse.
 */
int soth_authority_parse(struct soth_iov auth, bool need_port, uint16_t default_port,
                         struct soth_authority *out, const char **reason_code, const char **detail);

#endif
