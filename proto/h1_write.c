/*
 * HTTP/1.1 heads the proxy writes itself (contracts in soth/proto/h1.h): the origin-form
 * request head forwarded to the origin after it arrived in absolute-form (RFC 9112 3.2.2;
 * regular-mode plain HTTP, docs/http1.md "In the proxy"), a response head forwarded with
 * changed fields (Alt-Svc without HTTP/3, docs/http3.md "Forcing clients back to TCP"), and
 * the proxy's own answers (docs/answers.md).
 */
#include <stdio.h>
#include <string.h>

#include "soth/proto/h1.h"

struct out {
    char *p;
    size_t len, cap;
    bool full;
};

static char *put(struct out *o, const void *p, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return NULL;
    }
    char *at = o->p + o->len;
    if (n > 0)
        memcpy(at, p, n);
    o->len += n;
    return at;
}

/* A token-like piece of the request line or a field name: no control byte, space or DEL. */
static bool is_word(struct soth_iov v)
{
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.base[i];
        if (c <= 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* A field value: anything but a line end or NUL (the parsers allow HTAB and obs-text). */
static bool is_value(struct soth_iov v)
{
    for (size_t i = 0; i < v.len; i++)
        if (v.base[i] == '\r' || v.base[i] == '\n' || v.base[i] == '\0')
            return false;
    return true;
}

static bool is_name(struct soth_iov v)
{
    return v.len > 0 && is_word(v) && memchr(v.base, ':', v.len) == NULL;
}

/* Writes "Name: value\r\n"; *f (when not NULL) gets the copies in the output. */
static void put_field(struct out *o, struct soth_iov name, struct soth_iov value,
                      struct soth_header *f)
{
    const char *n = put(o, name.base, name.len);
    put(o, ": ", 2);
    const char *v = put(o, value.base, value.len);
    put(o, "\r\n", 2);
    if (f != NULL && !o->full)
        *f = (struct soth_header){{n, name.len}, {v, value.len}};
}

/* The authority: "host", "[v6]", plus ":port" unless it is the scheme's default. */
static void put_authority(struct out *o, const struct soth_h1_origin_req *r)
{
    if (r->host_is_ipv6)
        put(o, "[", 1);
    put(o, r->host.base, r->host.len);
    if (r->host_is_ipv6)
        put(o, "]", 1);
    unsigned dflt = soth_iov_is_ci(r->scheme, "http")    ? 80
                    : soth_iov_is_ci(r->scheme, "https") ? 443
                                                         : 0;
    if (r->port != 0 && r->port != dflt) {
        char d[6];
        size_t i = sizeof(d);
        unsigned p = r->port;
        do {
            d[--i] = (char)('0' + p % 10);
            p /= 10;
        } while (p != 0);
        d[--i] = ':';
        put(o, d + i, sizeof(d) - i);
    }
}

/* The Host field: the authority. */
static void put_host(struct out *o, const struct soth_h1_origin_req *r, struct soth_header *f)
{
    const char *n = put(o, "Host: ", 6);
    const char *v = n != NULL ? n + 6 : NULL;
    size_t start = o->len;
    put_authority(o, r);
    size_t vlen = o->len - start;
    put(o, "\r\n", 2);
    if (f != NULL && !o->full)
        *f = (struct soth_header){SOTH_IOV_LIT("Host"), {v, vlen}};
}

ssize_t soth_h1_write_origin_form(const struct soth_h1_origin_req *req, char *buf, size_t cap,
                                  struct soth_header *fields, size_t *n_fields)
{
    struct soth_iov path = req->path.len > 0 ? req->path : SOTH_IOV_LIT("/");
    if (req->method.len == 0 || req->version.len == 0 || req->host.len == 0 ||
        !is_word(req->method) || !is_word(path) || !is_word(req->version) || !is_word(req->host) ||
        (req->absolute && (req->scheme.len == 0 || !is_word(req->scheme))) ||
        !is_value(req->proxy_auth))
        return SOTH_E_MALFORMED;
    bool has_host = false;
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct soth_header *h = &req->headers[i];
        if (!is_name(h->name) || !is_value(h->value))
            return SOTH_E_MALFORMED;
        has_host = has_host || soth_iov_is_ci(h->name, "host");
    }

    struct out o = {buf, 0, cap, false};
    size_t nf = 0;
    put(&o, req->method.base, req->method.len);
    put(&o, " ", 1);
    if (req->absolute) {
        put(&o, req->scheme.base, req->scheme.len);
        put(&o, "://", 3);
        put_authority(&o, req);
    }
    put(&o, path.base, path.len);
    put(&o, " ", 1);
    put(&o, req->version.base, req->version.len);
    put(&o, "\r\n", 2);
    /* RFC 9112 3.2: Host first when the client sent none. */
    if (!has_host)
        put_host(&o, req, fields != NULL ? &fields[nf++] : NULL);
    bool host_done = false;
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct soth_header *h = &req->headers[i];
        if (soth_iov_is_ci(h->name, "proxy-connection") ||
            soth_iov_is_ci(h->name, "proxy-authorization"))
            continue;
        if (soth_iov_is_ci(h->name, "host")) {
            /* RFC 9112 3.2.2: the received Host is ignored and replaced by the target's. */
            if (host_done)
                continue;
            host_done = true;
            put_host(&o, req, fields != NULL ? &fields[nf++] : NULL);
            continue;
        }
        put_field(&o, h->name, h->value, fields != NULL ? &fields[nf++] : NULL);
    }
    if (req->proxy_auth.len > 0)
        put_field(&o, SOTH_IOV_LIT("Proxy-Authorization"), req->proxy_auth, NULL);
    put(&o, "\r\n", 2);
    if (o.full)
        return SOTH_E_TOO_LARGE;
    if (n_fields != NULL)
        *n_fields = nf;
    return (ssize_t)o.len;
}

ssize_t soth_h1_write_response_head(struct soth_iov version, unsigned status,
                                    struct soth_iov reason, const struct soth_header *headers,
                                    size_t n_headers, char *buf, size_t cap)
{
    if (version.len == 0 || !is_word(version) || status < 100 || status > 999 || !is_value(reason))
        return SOTH_E_MALFORMED;
    for (size_t i = 0; i < n_headers; i++)
        if (!is_name(headers[i].name) || !is_value(headers[i].value))
            return SOTH_E_MALFORMED;
    struct out o = {buf, 0, cap, false};
    char st[5] = {' ', (char)('0' + status / 100), (char)('0' + status / 10 % 10),
                  (char)('0' + status % 10), ' '};
    put(&o, version.base, version.len);
    put(&o, st, sizeof(st));
    put(&o, reason.base, reason.len);
    put(&o, "\r\n", 2);
    for (size_t i = 0; i < n_headers; i++)
        put_field(&o, headers[i].name, headers[i].value, NULL);
    put(&o, "\r\n", 2);
    if (o.full)
        return SOTH_E_TOO_LARGE;
    return (ssize_t)o.len;
}

ssize_t soth_h1_write_answer(char *out, size_t cap, unsigned status, const char *phrase,
                             const char *body, size_t body_len)
{
    return soth_h1_write_answer_hdr(out, cap, status, phrase, NULL, true, body, body_len);
}

ssize_t soth_h1_write_answer_hdr(char *out, size_t cap, unsigned status, const char *phrase,
                                 const char *extra, bool close, const char *body, size_t body_len)
{
    int n = snprintf(out, cap,
                     "HTTP/1.1 %u %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "%s%s\r\n",
                     status, phrase, body_len, extra != NULL ? extra : "",
                     close ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= cap || body_len > cap - (size_t)n)
        return SOTH_E_TOO_LARGE;
    if (body_len > 0)
        memcpy(out + n, body, body_len);
    return (ssize_t)((size_t)n + body_len);
}
