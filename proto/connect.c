/*
 * The proxy request head (RFC 9112 request line + fields) for regular mode: CONNECT in
 * authority-form and absolute-form requests. Stateless over a growing buffer: the caller keeps
 * the bytes and calls again after SOTH_E_INCOMPLETE; the scan is linear and bounded by the
 * limits, so re-parsing a head that arrives in pieces costs little.
 */
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#include "soth/proto.h"

#define DEFAULT_MAX_LINE 8192
#define DEFAULT_MAX_HEAD 65536

struct perr {
    const char **code, **detail;
};

static ssize_t bad(struct perr *e, ssize_t rc, const char *code, const char *detail)
{
    *e->code = code;
    *e->detail = detail;
    return rc;
}

/* RFC 9110 tchar */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static bool is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/**
 * Find the end of the line starting at off. Returns the index of '\n' or -1 when not there
 * yet. *content_end is where the line's content stops (before CR LF or LF).
 */
static ssize_t line_end(const char *buf, size_t len, size_t off, size_t limit, size_t *content_end)
{
    size_t stop = len < off + limit ? len : off + limit;
    const char *nl = memchr(buf + off, '\n', stop - off);
    if (nl == NULL)
        return -1;
    size_t i = (size_t)(nl - buf);
    *content_end = (i > off && buf[i - 1] == '\r') ? i - 1 : i;
    return (ssize_t)i;
}

/** Parse "host:port" or "[v6]:port" (port required when need_port). */
static ssize_t parse_authority(struct perr *e, const char *a, size_t n, bool need_port,
                               uint16_t default_port, struct soth_proxy_head *out)
{
    const char *host;
    size_t host_len;
    const char *rest;
    size_t rest_len;
    out->host_is_ipv6 = false;
    if (n > 0 && a[0] == '[') {
        const char *rb = memchr(a, ']', n);
        if (rb == NULL)
            return bad(e, SOTH_E_MALFORMED, "bad_brackets", "unterminated '[' in the authority");
        host = a + 1;
        host_len = (size_t)(rb - host);
        rest = rb + 1;
        rest_len = n - (size_t)(rest - a);
        if (rest_len > 0 && rest[0] != ':')
            return bad(e, SOTH_E_MALFORMED, "bad_brackets", "unexpected bytes after ']'");
        char tmp[INET6_ADDRSTRLEN + 1];
        unsigned char bin[16];
        if (host_len == 0 || host_len >= sizeof(tmp))
            return bad(e, SOTH_E_MALFORMED, "bad_brackets", "not an IPv6 address in brackets");
        memcpy(tmp, host, host_len);
        tmp[host_len] = '\0';
        if (inet_pton(AF_INET6, tmp, bin) != 1)
            return bad(e, SOTH_E_MALFORMED, "bad_brackets", "not an IPv6 address in brackets");
        out->host_is_ipv6 = true;
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++) {
            if (a[i] == ':') {
                if (colon != NULL)
                    return bad(e, SOTH_E_MALFORMED, "bad_brackets",
                               "IPv6 address without brackets");
                colon = a + i;
            } else if (a[i] == ']') {
                return bad(e, SOTH_E_MALFORMED, "bad_brackets", "']' without '['");
            }
        }
        host = a;
        host_len = colon ? (size_t)(colon - a) : n;
        rest = colon ? colon : a + n;
        rest_len = n - host_len;
        if (host_len == 0)
            return bad(e, SOTH_E_MALFORMED, "bad_target", "empty host");
        if (host_len > 253)
            return bad(e, SOTH_E_MALFORMED, "bad_target", "host name longer than 253 bytes");
        for (size_t i = 0; i < host_len; i++)
            if (!is_host_char((unsigned char)host[i]))
                return bad(e, SOTH_E_MALFORMED, "bad_target", "invalid character in host");
    }
    out->host = soth_iov(host, host_len);
    if (rest_len == 0) {
        if (need_port)
            return bad(e, SOTH_E_MALFORMED, "missing_port", "CONNECT target needs host:port");
        out->port = default_port;
        return 0;
    }
    /* rest = ":digits" */
    if (rest_len == 1)
        return bad(e, SOTH_E_MALFORMED, "missing_port", "empty port");
    uint32_t port = 0;
    for (size_t i = 1; i < rest_len; i++) {
        char c = rest[i];
        if (c < '0' || c > '9' || i > 5)
            return bad(e, SOTH_E_MALFORMED, "invalid_port", "port must be 1..65535");
        port = port * 10 + (uint32_t)(c - '0');
    }
    if (port == 0 || port > 65535)
        return bad(e, SOTH_E_MALFORMED, "invalid_port", "port must be 1..65535");
    out->port = (uint16_t)port;
    return 0;
}

static ssize_t parse_target(struct perr *e, struct soth_proxy_head *out)
{
    const char *t = out->target.base;
    size_t n = out->target.len;
    for (size_t i = 0; i < n; i++)
        if (is_ctl((unsigned char)t[i]) || t[i] == ' ' || (unsigned char)t[i] >= 0x80)
            return bad(e, SOTH_E_MALFORMED, "control_bytes", "control or non-ASCII byte in target");
    out->scheme = SOTH_IOV_NULL;
    out->path = SOTH_IOV_NULL;
    if (out->is_connect)
        return parse_authority(e, t, n, true, 0, out);
    /* absolute-form: scheme "://" authority [path-abempty] ["?" query] */
    uint16_t dport;
    size_t skip;
    if (n >= 7 && strncasecmp(t, "http://", 7) == 0) {
        dport = 80;
        skip = 7;
    } else if (n >= 8 && strncasecmp(t, "https://", 8) == 0) {
        dport = 443;
        skip = 8;
    } else {
        return bad(e, SOTH_E_MALFORMED, "bad_target",
                   "a proxy request needs an absolute URI (http://host/path) or CONNECT");
    }
    out->scheme = soth_iov(t, skip - 3);
    const char *a = t + skip;
    size_t alen = 0;
    while (alen < n - skip && a[alen] != '/' && a[alen] != '?' && a[alen] != '#')
        alen++;
    if (memchr(a, '@', alen) != NULL)
        return bad(e, SOTH_E_MALFORMED, "bad_target", "userinfo in a proxy request URI");
    ssize_t rc = parse_authority(e, a, alen, false, dport, out);
    if (rc < 0)
        return rc;
    const char *p = a + alen;
    size_t plen = n - skip - alen;
    if (plen == 0) {
        out->path = SOTH_IOV_LIT("/");
    } else if (p[0] != '/') {
        return bad(e, SOTH_E_MALFORMED, "bad_target", "URI path must start with '/'");
    } else {
        /* The fragment is not sent to servers (RFC 9110 4.2.4). */
        const char *hash = memchr(p, '#', plen);
        out->path = soth_iov(p, hash ? (size_t)(hash - p) : plen);
    }
    return 0;
}

static ssize_t parse_request_line(struct perr *e, const char *l, size_t n, enum soth_head_mode mode,
                                  struct soth_proxy_head *out)
{
    size_t i = 0;
    if (mode == SOTH_HEAD_LENIENT)
        while (i < n && (l[i] == ' ' || l[i] == '\t'))
            i++;
    size_t ms = i;
    while (i < n && is_tchar((unsigned char)l[i]))
        i++;
    if (i == ms || i >= n || l[i] != ' ') {
        if (i < n && is_ctl((unsigned char)l[i]) && l[i] != '\t')
            return bad(e, SOTH_E_MALFORMED, "control_bytes", "control byte in the method");
        return bad(e, SOTH_E_MALFORMED, "bad_method", "the request line must start with a method");
    }
    out->method = soth_iov(l + ms, i - ms);
    i++;
    if (mode == SOTH_HEAD_LENIENT)
        while (i < n && (l[i] == ' ' || l[i] == '\t'))
            i++;
    size_t ts = i;
    while (i < n && l[i] != ' ' && !(mode == SOTH_HEAD_LENIENT && l[i] == '\t'))
        i++;
    if (i == ts || i >= n)
        return bad(e, SOTH_E_MALFORMED, "bad_request_line",
                   "the request line must be METHOD TARGET VERSION");
    out->target = soth_iov(l + ts, i - ts);
    i++;
    if (mode == SOTH_HEAD_LENIENT)
        while (i < n && (l[i] == ' ' || l[i] == '\t'))
            i++;
    size_t vs = i;
    size_t ve = n;
    if (mode == SOTH_HEAD_LENIENT)
        while (ve > vs && (l[ve - 1] == ' ' || l[ve - 1] == '\t'))
            ve--;
    out->version = soth_iov(l + vs, ve - vs);
    if (out->version.len != 8 || (memcmp(out->version.base, "HTTP/1.1", 8) != 0 &&
                                  memcmp(out->version.base, "HTTP/1.0", 8) != 0)) {
        for (size_t k = vs; k < ve; k++)
            if (is_ctl((unsigned char)l[k]))
                return bad(e, SOTH_E_MALFORMED, "control_bytes", "control byte in the version");
        return bad(e, SOTH_E_MALFORMED, "bad_version", "version must be HTTP/1.1 or HTTP/1.0");
    }
    out->is_connect = out->method.len == 7 && memcmp(out->method.base, "CONNECT", 7) == 0;
    return parse_target(e, out);
}

static ssize_t parse_field(struct perr *e, const char *l, size_t n, struct soth_header *h)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)l[i]))
        i++;
    if (i == 0 || i >= n || l[i] != ':') {
        if (i < n && is_ctl((unsigned char)l[i]) && l[i] != '\t')
            return bad(e, SOTH_E_MALFORMED, "control_bytes", "control byte in a field name");
        return bad(e, SOTH_E_MALFORMED, "bad_header", "a field line must be NAME: VALUE");
    }
    h->name = soth_iov(l, i);
    i++;
    while (i < n && (l[i] == ' ' || l[i] == '\t'))
        i++;
    size_t vs = i, ve = n;
    while (ve > vs && (l[ve - 1] == ' ' || l[ve - 1] == '\t'))
        ve--;
    for (size_t k = vs; k < ve; k++)
        if (is_ctl((unsigned char)l[k]) && l[k] != '\t')
            return bad(e, SOTH_E_MALFORMED, "control_bytes", "control byte in a field value");
    h->value = soth_iov(l + vs, ve - vs);
    return 0;
}

ssize_t soth_proxy_head_parse(const char *buf, size_t len, enum soth_head_mode mode,
                              const struct soth_head_limits *limits, struct soth_proxy_head *out,
                              const char **reason_code, const char **detail)
{
    static const char *dummy_code, *dummy_detail;
    struct perr e = {reason_code ? reason_code : &dummy_code, detail ? detail : &dummy_detail};
    size_t max_line = limits && limits->max_line ? limits->max_line : DEFAULT_MAX_LINE;
    size_t max_head = limits && limits->max_head ? limits->max_head : DEFAULT_MAX_HEAD;
    size_t max_headers =
        limits && limits->max_headers ? limits->max_headers : SOTH_HEAD_MAX_HEADERS;
    if (max_headers > SOTH_HEAD_MAX_HEADERS)
        max_headers = SOTH_HEAD_MAX_HEADERS;
    memset(out, 0, offsetof(struct soth_proxy_head, headers));

    size_t cend;
    ssize_t nl = line_end(buf, len, 0, max_line + 2, &cend);
    if (nl < 0) {
        if (len >= max_line + 2)
            return bad(&e, SOTH_E_TOO_LARGE, "line_too_long", "request line too long");
        /* Fail early on bytes that can never start a request line. */
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)buf[i];
            if (c == '\r' && i + 1 < len)
                return bad(&e, SOTH_E_MALFORMED, "control_bytes", "bare CR in the request line");
            if (is_ctl(c) && c != '\r' && c != '\t')
                return bad(&e, SOTH_E_MALFORMED, "control_bytes", "control byte in the request");
        }
        return SOTH_E_INCOMPLETE;
    }
    if (cend == (size_t)nl && mode == SOTH_HEAD_STRICT)
        return bad(&e, SOTH_E_MALFORMED, "bare_lf", "line ends must be CRLF");
    if (cend > max_line)
        return bad(&e, SOTH_E_TOO_LARGE, "line_too_long", "request line too long");
    for (size_t i = 0; i < cend; i++)
        if (buf[i] == '\r')
            return bad(&e, SOTH_E_MALFORMED, "control_bytes", "bare CR in the request line");
    ssize_t rc = parse_request_line(&e, buf, cend, mode, out);
    if (rc < 0)
        return rc;
    out->line_len = (size_t)nl + 1;

    size_t off = out->line_len;
    for (;;) {
        if (off >= max_head)
            return bad(&e, SOTH_E_TOO_LARGE, "head_too_large", "request head too large");
        nl = line_end(buf, len, off, max_head - off, &cend);
        if (nl < 0) {
            if (len >= max_head)
                return bad(&e, SOTH_E_TOO_LARGE, "head_too_large", "request head too large");
            return SOTH_E_INCOMPLETE;
        }
        if (cend == (size_t)nl && mode == SOTH_HEAD_STRICT)
            return bad(&e, SOTH_E_MALFORMED, "bare_lf", "line ends must be CRLF");
        for (size_t i = off; i < cend; i++)
            if (buf[i] == '\r')
                return bad(&e, SOTH_E_MALFORMED, "control_bytes", "bare CR in a field line");
        if (cend == off) {
            off = (size_t)nl + 1;
            break;
        }
        if (buf[off] == ' ' || buf[off] == '\t')
            return bad(&e, SOTH_E_MALFORMED, "obs_fold", "obsolete line folding is not accepted");
        if (out->n_headers >= max_headers)
            return bad(&e, SOTH_E_TOO_LARGE, "too_many_headers", "too many header fields");
        rc = parse_field(&e, buf + off, cend - off, &out->headers[out->n_headers]);
        if (rc < 0)
            return rc;
        out->n_headers++;
        off = (size_t)nl + 1;
    }
    if (off > max_head)
        return bad(&e, SOTH_E_TOO_LARGE, "head_too_large", "request head too large");
    out->head_len = off;
    return (ssize_t)off;
}
