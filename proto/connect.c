/*
 * The proxy request head (RFC 9112 request line + field lines) for regular mode: CONNECT in
 * authority-form and absolute-form requests.
 *
 * Stateless over a growing buffer: the caller keeps the bytes and calls again after
 * SOTH_E_INCOMPLETE. The scan runs strictly left to right and every decision looks only at
 * bytes before the current position, limits included. So a prefix of the input either gives
 * SOTH_E_INCOMPLETE or exactly the result of the whole input: the answer never depends on how
 * the bytes were split over reads (tests and the fuzzer check this), and an error is reported
 * at the first byte that makes the head invalid.
 */
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#include "soth/proto/connect.h"

#define DEFAULT_MAX_LINE 8192
#define DEFAULT_MAX_HEAD 65536

/* Byte classes, one table lookup per byte on the scanning loops. */
#define C_TCHAR 0x01 /* RFC 9110 5.6.2 token character */
#define C_HOST  0x02 /* reg-name characters we accept: ALPHA DIGIT - . _ */
#define C_CTL   0x04 /* 0x00-0x1f and 0x7f (HTAB, CR and LF included) */
#define C_URI   0x08 /* RFC 3986 characters allowed in a request-target */
#define C_FVAL  0x10 /* field-value byte: VCHAR, obs-text, SP, HTAB */

#define IS_ALNUM(c)                                                                                \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') || ((c) >= '0' && (c) <= '9'))
#define IS_HOST(c) (IS_ALNUM(c) || (c) == '-' || (c) == '.' || (c) == '_')
#define IS_TCHAR(c)                                                                                \
    (IS_HOST(c) || (c) == '!' || (c) == '#' || (c) == '$' || (c) == '%' || (c) == '&' ||           \
     (c) == '\'' || (c) == '*' || (c) == '+' || (c) == '^' || (c) == '`' || (c) == '|' ||          \
     (c) == '~')
/* unreserved, gen-delims, sub-delims and '%' (RFC 3986 2.1-2.3) */
#define IS_URI(c)                                                                                  \
    (IS_HOST(c) || (c) == '~' || (c) == ':' || (c) == '/' || (c) == '?' || (c) == '#' ||           \
     (c) == '[' || (c) == ']' || (c) == '@' || (c) == '!' || (c) == '$' || (c) == '&' ||           \
     (c) == '\'' || (c) == '(' || (c) == ')' || (c) == '*' || (c) == '+' || (c) == ',' ||          \
     (c) == ';' || (c) == '=' || (c) == '%')
#define IS_CTL(c)  ((c) < 0x20 || (c) == 0x7f)
#define IS_FVAL(c) (((c) > 0x20 && (c) != 0x7f) || (c) == ' ' || (c) == '\t')
#define K(c)                                                                                       \
    ((IS_TCHAR(c) ? C_TCHAR : 0) | (IS_HOST(c) ? C_HOST : 0) | (IS_CTL(c) ? C_CTL : 0) |           \
     (IS_URI(c) ? C_URI : 0) | (IS_FVAL(c) ? C_FVAL : 0))
#define K4(b)  K(b), K((b) + 1), K((b) + 2), K((b) + 3)
#define K16(b) K4(b), K4((b) + 4), K4((b) + 8), K4((b) + 12)
#define K64(b) K16(b), K16((b) + 16), K16((b) + 32), K16((b) + 48)

static const unsigned char byte_class[256] = {K64(0), K64(64), K64(128), K64(192)};

static inline bool has(unsigned char c, unsigned char k)
{
    return (byte_class[c] & k) != 0;
}

struct scan {
    const char *buf;
    size_t len;
    enum soth_head_mode mode;
    size_t max_line, max_head, max_headers;
    size_t line_start; /* first byte of the request line, after leading empty lines */
    const char *code, *detail;
};

static ssize_t fail(struct scan *s, ssize_t rc, const char *code, const char *detail)
{
    s->code = code;
    s->detail = detail;
    return rc;
}

/*
 * Byte i of the request line: >= 0 the byte, else an error or SOTH_E_INCOMPLETE. The head
 * limit is checked before availability (a head that needs byte max_head is too large whether
 * that byte came or not); the line limit after, since a line end at max_line is fine.
 */
static int line_byte(struct scan *s, size_t i)
{
    if (i >= s->max_head)
        return (int)fail(s, SOTH_E_TOO_LARGE, "head_too_large", "request head too large");
    if (i >= s->len)
        return SOTH_E_INCOMPLETE;
    unsigned char c = (unsigned char)s->buf[i];
    if (i - s->line_start >= s->max_line && c != '\r' && c != '\n')
        return (int)fail(s, SOTH_E_TOO_LARGE, "line_too_long", "request line too long");
    return c;
}

/* Byte i of a field line or the final blank line. */
static int head_byte(struct scan *s, size_t i)
{
    if (i >= s->max_head)
        return (int)fail(s, SOTH_E_TOO_LARGE, "head_too_large", "request head too large");
    if (i >= s->len)
        return SOTH_E_INCOMPLETE;
    return (unsigned char)s->buf[i];
}

static bool is_ws(int c)
{
    return c == ' ' || c == '\t';
}

/* A separator between request-line tokens: SP; lenient also takes HTAB. */
static bool is_sep(const struct scan *s, int c)
{
    return c == ' ' || (s->mode == SOTH_HEAD_LENIENT && c == '\t');
}

/**
 * Line end at i (c = byte i, CR or LF). Returns the index after the LF, or an error /
 * SOTH_E_INCOMPLETE. A CR must be followed by LF (a bare CR is never a line end: RFC 9112 2.2,
 * and llhttp 8.1 gets it wrong); a bare LF is accepted only in lenient mode.
 */
static ssize_t line_end(struct scan *s, size_t i, int c, bool request_line)
{
    if (c == '\n') {
        if (s->mode == SOTH_HEAD_STRICT)
            return fail(s, SOTH_E_MALFORMED, "bare_lf", "line ends must be CRLF");
        return (ssize_t)i + 1;
    }
    int n = request_line ? line_byte(s, i + 1) : head_byte(s, i + 1);
    if (n < 0)
        return n;
    if (n != '\n')
        return fail(s, SOTH_E_MALFORMED, "control_bytes", "CR not followed by LF");
    return (ssize_t)i + 2;
}

/* ---- request-target ---------------------------------------------------------------------- */

/** Numeric last label ("1", "0x7f"): inet_aton would read such a name as an IPv4 address. */
static bool last_label_numeric(const char *h, size_t n)
{
    size_t s = n;
    while (s > 0 && h[s - 1] != '.')
        s--;
    if (s == n)
        return false;
    if (n - s > 2 && h[s] == '0' && (h[s + 1] == 'x' || h[s + 1] == 'X')) {
        for (size_t i = s + 2; i < n; i++)
            if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f') ||
                  (h[i] >= 'A' && h[i] <= 'F')))
                return false;
        return true;
    }
    for (size_t i = s; i < n; i++)
        if (h[i] < '0' || h[i] > '9')
            return false;
    return true;
}

static ssize_t check_reg_name(struct scan *s, const char *h, size_t n)
{
    if (n == 0)
        return fail(s, SOTH_E_MALFORMED, "bad_target", "empty host");
    if (n > SOTH_HEAD_MAX_HOST)
        return fail(s, SOTH_E_MALFORMED, "bad_target", "host longer than 255 bytes");
    for (size_t i = 0; i < n; i++) {
        if (!has((unsigned char)h[i], C_HOST))
            return fail(s, SOTH_E_MALFORMED, "bad_target", "invalid character in host");
        /* Empty labels: only one trailing dot (an absolute name) is allowed. */
        if (h[i] == '.' && (i == 0 || h[i - 1] == '.'))
            return fail(s, SOTH_E_MALFORMED, "bad_target", "empty label in host");
    }
    size_t core = h[n - 1] == '.' ? n - 1 : n;
    if (last_label_numeric(h, core)) {
        /* Only dotted-quad IPv4: "127.1", "0x7f.1" or "2130706433" would reach an address
         * the policy never saw as text (inet_aton shorthand, which getaddrinfo accepts). */
        char tmp[INET_ADDRSTRLEN];
        struct in_addr a4;
        if (n >= sizeof(tmp))
            return fail(s, SOTH_E_MALFORMED, "bad_target", "numeric host is not an IPv4 address");
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        if (inet_pton(AF_INET, tmp, &a4) != 1)
            return fail(s, SOTH_E_MALFORMED, "bad_target", "numeric host is not an IPv4 address");
    }
    return 0;
}

/** Parse "host[:port]" or "[v6][:port]"; a missing port is an error when need_port. */
static ssize_t parse_authority(struct scan *s, const char *a, size_t n, bool need_port,
                               uint16_t default_port, struct soth_authority *out)
{
    const char *host, *rest;
    size_t host_len, rest_len;
    if (n > 0 && a[0] == '[') {
        const char *rb = memchr(a, ']', n);
        if (rb == NULL)
            return fail(s, SOTH_E_MALFORMED, "bad_brackets", "unterminated '[' in the authority");
        host = a + 1;
        host_len = (size_t)(rb - host);
        rest = rb + 1;
        rest_len = n - (size_t)(rest - a);
        if (rest_len > 0 && rest[0] != ':')
            return fail(s, SOTH_E_MALFORMED, "bad_brackets", "unexpected bytes after ']'");
        char tmp[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        if (host_len == 0 || host_len >= sizeof(tmp))
            return fail(s, SOTH_E_MALFORMED, "bad_brackets", "not an IPv6 address in brackets");
        memcpy(tmp, host, host_len);
        tmp[host_len] = '\0';
        if (inet_pton(AF_INET6, tmp, bin) != 1)
            return fail(s, SOTH_E_MALFORMED, "bad_brackets", "not an IPv6 address in brackets");
        out->host_is_ipv6 = true;
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++) {
            if (a[i] == '[' || a[i] == ']')
                return fail(s, SOTH_E_MALFORMED, "bad_brackets", "bracket inside the host");
            if (a[i] == ':') {
                if (colon != NULL)
                    return fail(s, SOTH_E_MALFORMED, "bad_brackets",
                                "an IPv6 address needs brackets");
                colon = a + i;
            }
        }
        host = a;
        host_len = colon != NULL ? (size_t)(colon - a) : n;
        rest = host_len > 0 ? a + host_len : a; /* a may be NULL when n is 0 (no offset then) */
        rest_len = n - host_len;
        ssize_t rc = check_reg_name(s, host, host_len);
        if (rc < 0)
            return rc;
    }
    out->host = soth_iov(host, host_len);
    if (rest_len <= 1) {
        /* No port, or an empty one after ':' (RFC 3986 6.2.3: the default port). */
        if (need_port)
            return fail(s, SOTH_E_MALFORMED, "missing_port", "CONNECT target needs host:port");
        out->port = default_port;
        return 0;
    }
    uint32_t port = 0;
    for (size_t i = 1; i < rest_len; i++) {
        char c = rest[i];
        if (c < '0' || c > '9' || i > 5)
            return fail(s, SOTH_E_MALFORMED, "invalid_port", "port must be 1..65535");
        port = port * 10 + (uint32_t)(c - '0');
    }
    if (port == 0 || port > 65535)
        return fail(s, SOTH_E_MALFORMED, "invalid_port", "port must be 1..65535");
    out->port = (uint16_t)port;
    return 0;
}

int soth_authority_parse(struct soth_iov auth, bool need_port, uint16_t default_port,
                         struct soth_authority *out, const char **reason_code, const char **detail)
{
    struct scan s = {.mode = SOTH_HEAD_STRICT};
    *out = (struct soth_authority){0};
    ssize_t rc = parse_authority(&s, auth.base, auth.len, need_port, default_port, out);
    if (reason_code != NULL)
        *reason_code = rc < 0 ? s.code : NULL;
    if (detail != NULL)
        *detail = rc < 0 ? s.detail : NULL;
    return (int)rc;
}

/* The parsed authority into the head. */
static ssize_t head_authority(struct scan *s, const char *a, size_t n, bool need_port,
                              uint16_t default_port, struct soth_proxy_head *out)
{
    struct soth_authority au = {0};
    ssize_t rc = parse_authority(s, a, n, need_port, default_port, &au);
    if (rc < 0)
        return rc;
    out->host = au.host;
    out->port = au.port;
    out->host_is_ipv6 = au.host_is_ipv6;
    return 0;
}

static ssize_t parse_target(struct scan *s, struct soth_proxy_head *out)
{
    const char *t = out->target.base;
    size_t n = out->target.len;
    if (out->is_connect)
        return head_authority(s, t, n, true, 0, out);

    /* absolute-form (RFC 9112 3.2.2): scheme "://" authority path-abempty ["?" query] */
    uint16_t dport;
    size_t skip;
    if (n >= 7 && strncasecmp(t, "http://", 7) == 0) {
        dport = 80;
        skip = 7;
    } else if (n >= 8 && strncasecmp(t, "https://", 8) == 0) {
        dport = 443;
        skip = 8;
    } else {
        return fail(s, SOTH_E_MALFORMED, "bad_target",
                    "a proxy request needs CONNECT or an absolute URI (http://host/path)");
    }
    out->scheme = soth_iov(t, skip - 3);
    const char *a = t + skip;
    size_t alen = 0;
    while (alen < n - skip && a[alen] != '/' && a[alen] != '?' && a[alen] != '#')
        alen++;
    if (memchr(a, '@', alen) != NULL)
        return fail(s, SOTH_E_MALFORMED, "bad_target", "userinfo in a proxy request URI");
    ssize_t rc = head_authority(s, a, alen, false, dport, out);
    if (rc < 0)
        return rc;
    const char *p = a + alen;
    size_t plen = n - skip - alen;
    const char *hash = memchr(p, '#', plen);
    if (hash != NULL) {
        /* absolute-URI has no fragment; clients are not supposed to send one. */
        if (s->mode == SOTH_HEAD_STRICT)
            return fail(s, SOTH_E_MALFORMED, "bad_target", "fragment in the request target");
        plen = (size_t)(hash - p);
    }
    if (plen == 0) {
        out->path = SOTH_IOV_LIT("/");
    } else if (p[0] != '/') {
        /* "http://h?q": origin-form would need a '/' we cannot insert into the caller's
         * bytes, and no client sends this. */
        return fail(s, SOTH_E_MALFORMED, "bad_target", "URI path must start with '/'");
    } else {
        out->path = soth_iov(p, plen);
    }
    return 0;
}

/* ---- request line ------------------------------------------------------------------------ */

/** Returns line_len or an error / SOTH_E_INCOMPLETE. */
static ssize_t scan_request_line(struct scan *s, struct soth_proxy_head *out)
{
    size_t i = s->line_start;
    int c;
    bool lenient = s->mode == SOTH_HEAD_LENIENT;

    if (lenient)
        while ((c = line_byte(s, i)) >= 0 && is_ws(c))
            i++;

    /* method = token */
    size_t ms = i;
    while ((c = line_byte(s, i)) >= 0 && has((unsigned char)c, C_TCHAR))
        i++;
    if (c < 0)
        return c;
    if (i == ms || !is_sep(s, c)) {
        if (c == 0x16 && i == ms)
            return fail(s, SOTH_E_MALFORMED, "control_bytes",
                        "a TLS handshake; this port speaks plain HTTP proxy requests");
        if (c == '\r' || c == '\n' || (i > ms && c == '\t'))
            return fail(s, SOTH_E_MALFORMED, "bad_request_line",
                        "the request line must be METHOD SP TARGET SP VERSION");
        if (has((unsigned char)c, C_CTL))
            return fail(s, SOTH_E_MALFORMED, "control_bytes", "control byte in the method");
        if (i == ms && c == ' ')
            return fail(s, SOTH_E_MALFORMED, "bad_request_line", "space before the method");
        return fail(s, SOTH_E_MALFORMED, "bad_method", "the method must be a token");
    }
    out->method = soth_iov(s->buf + ms, i - ms);
    out->is_connect = out->method.len == 7 && memcmp(out->method.base, "CONNECT", 7) == 0;
    i++;
    if (lenient)
        while ((c = line_byte(s, i)) >= 0 && is_ws(c))
            i++;

    /* request-target: validated character by character, then as a whole at its end */
    size_t ts = i;
    for (;; i++) {
        c = line_byte(s, i);
        if (c < 0)
            return c;
        if (is_sep(s, c))
            break;
        if (c == '\r' || c == '\n')
            return fail(s, SOTH_E_MALFORMED, "bad_request_line",
                        "the request line must be METHOD SP TARGET SP VERSION");
        if (has((unsigned char)c, C_CTL))
            return fail(s, SOTH_E_MALFORMED, "control_bytes", "control byte in the target");
        if (!(lenient ? c < 0x7f : has((unsigned char)c, C_URI)))
            return fail(s, SOTH_E_MALFORMED, "bad_target", "invalid character in the target");
    }
    if (i == ts)
        return fail(s, SOTH_E_MALFORMED, "bad_request_line",
                    "the request line must be METHOD SP TARGET SP VERSION");
    out->target = soth_iov(s->buf + ts, i - ts);
    ssize_t rc = parse_target(s, out);
    if (rc < 0)
        return rc;
    i++;
    if (lenient)
        while ((c = line_byte(s, i)) >= 0 && is_ws(c))
            i++;

    /* HTTP-version, exactly HTTP/1.0 or HTTP/1.1 (HTTP-name is case-sensitive) */
    static const char ver[] = "HTTP/1.";
    size_t vs = i;
    for (size_t k = 0; k < 8; k++, i++) {
        c = line_byte(s, i);
        if (c < 0)
            return c;
        bool ok = k < 7 ? c == ver[k] : (c == '0' || c == '1');
        if (!ok) {
            if (has((unsigned char)c, C_CTL) && c != '\r' && c != '\n')
                return fail(s, SOTH_E_MALFORMED, "control_bytes", "control byte in the version");
            if (k == 0 && (c == ' ' || c == '\r' || c == '\n'))
                return fail(s, SOTH_E_MALFORMED, "bad_request_line",
                            "the request line must be METHOD SP TARGET SP VERSION");
            return fail(s, SOTH_E_MALFORMED, "bad_version", "version must be HTTP/1.1 or HTTP/1.0");
        }
    }
    out->version = soth_iov(s->buf + vs, 8);
    if (lenient)
        while ((c = line_byte(s, i)) >= 0 && is_ws(c))
            i++;
    c = line_byte(s, i);
    if (c < 0)
        return c;
    if (c != '\r' && c != '\n') {
        if (c == ' ' || c == '\t')
            return fail(s, SOTH_E_MALFORMED, "bad_request_line", "bytes after the version");
        if (has((unsigned char)c, C_CTL))
            return fail(s, SOTH_E_MALFORMED, "control_bytes", "control byte in the version");
        return fail(s, SOTH_E_MALFORMED, "bad_version", "version must be HTTP/1.1 or HTTP/1.0");
    }
    return line_end(s, i, c, true);
}

/* ---- field lines ------------------------------------------------------------------------- */

/**
 * One field line or the blank line at off. Returns the offset after its line end; *blank
 * tells which it was. The field goes into *h.
 */
static ssize_t scan_field_line(struct scan *s, size_t off, struct soth_header *h, bool *blank,
                               bool full)
{
    size_t i = off;
    int c = head_byte(s, i);
    if (c < 0)
        return c;
    if (c == '\r' || c == '\n') {
        *blank = true;
        return line_end(s, i, c, false);
    }
    *blank = false;
    if (is_ws(c))
        /* RFC 9112 5.2: obs-fold in a request is rejected or rewritten; we never rewrite the
         * caller's bytes, so both modes reject it. */
        return fail(s, SOTH_E_MALFORMED, "obs_fold", "obsolete line folding is not accepted");
    if (full)
        return fail(s, SOTH_E_TOO_LARGE, "too_many_headers", "too many header fields");

    /* field-name = token, then ':' at once (RFC 9112 5.1: no whitespace before the colon) */
    while ((c = head_byte(s, i)) >= 0 && has((unsigned char)c, C_TCHAR))
        i++;
    if (c < 0)
        return c;
    if (c != ':' || i == off) {
        if (has((unsigned char)c, C_CTL) && c != '\r' && c != '\n' && c != '\t')
            return fail(s, SOTH_E_MALFORMED, "control_bytes", "control byte in a field name");
        return fail(s, SOTH_E_MALFORMED, "bad_header", "a field line must be NAME: VALUE");
    }
    h->name = soth_iov(s->buf + off, i - off);
    i++;
    while ((c = head_byte(s, i)) >= 0 && is_ws(c))
        i++;
    size_t vs = i, ve = i;
    for (;; i++) {
        c = head_byte(s, i);
        if (c < 0)
            return c;
        if (c == '\r' || c == '\n')
            break;
        if (!has((unsigned char)c, C_FVAL))
            return fail(s, SOTH_E_MALFORMED, "control_bytes", "control byte in a field value");
        if (!is_ws(c))
            ve = i + 1;
    }
    h->value = soth_iov(s->buf + vs, ve - vs);
    return line_end(s, i, c, false);
}

/* Empty lines before the request line: returns the offset of its first byte. Bounded by
 * max_head like every byte of the head; a line end follows the mode's rule (CRLF, or LF too
 * when lenient). */
static ssize_t skip_empty_lines(struct scan *s)
{
    size_t i = 0;
    for (;;) {
        int c = head_byte(s, i);
        if (c < 0)
            return c;
        if (c != '\r' && c != '\n')
            return (ssize_t)i;
        ssize_t rc = line_end(s, i, c, false);
        if (rc < 0)
            return rc;
        i = (size_t)rc;
    }
}

ssize_t soth_proxy_head_parse(const char *buf, size_t len, enum soth_head_mode mode,
                              const struct soth_head_limits *limits, struct soth_proxy_head *out,
                              const char **reason_code, const char **detail)
{
    struct scan s = {
        .buf = buf,
        .len = len,
        .mode = mode == SOTH_HEAD_LENIENT ? SOTH_HEAD_LENIENT : SOTH_HEAD_STRICT,
        .max_line = limits != NULL && limits->max_line ? limits->max_line : DEFAULT_MAX_LINE,
        .max_head = limits != NULL && limits->max_head ? limits->max_head : DEFAULT_MAX_HEAD,
        .max_headers =
            limits != NULL && limits->max_headers ? limits->max_headers : SOTH_HEAD_MAX_HEADERS,
    };
    if (s.max_headers > SOTH_HEAD_MAX_HEADERS)
        s.max_headers = SOTH_HEAD_MAX_HEADERS;
    memset(out, 0, offsetof(struct soth_proxy_head, headers));

    /* RFC 9112 2.2: empty lines before the request line are ignored (the intercepted path,
     * proto/h1.c, does the same; docs/http1.md "One strictness"). */
    ssize_t rc = skip_empty_lines(&s);
    if (rc >= 0) {
        s.line_start = (size_t)rc;
        rc = scan_request_line(&s, out);
    }
    if (rc >= 0) {
        out->line_len = (size_t)rc - s.line_start;
        size_t off = (size_t)rc;
        for (;;) {
            bool blank = false;
            bool full = out->n_headers >= s.max_headers;
            struct soth_header *h = full ? NULL : &out->headers[out->n_headers];
            rc = scan_field_line(&s, off, h, &blank, full);
            if (rc < 0)
                break;
            off = (size_t)rc;
            if (blank) {
                out->head_len = off;
                break;
            }
            out->n_headers++;
        }
    }
    if (reason_code != NULL)
        *reason_code = rc >= 0 || rc == SOTH_E_INCOMPLETE ? NULL : s.code;
    if (detail != NULL)
        *detail = rc >= 0 || rc == SOTH_E_INCOMPLETE ? NULL : s.detail;
    return rc;
}
