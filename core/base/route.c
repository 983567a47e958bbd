/* Routes: `direct` or `upstream:http://[USER:PASSWORD@]HOST:PORT` (soth/route.h). */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/base.h"
#include "soth/route.h"

#define UPSTREAM_PREFIX "upstream:http://"

static int route_fail(struct soth_route *out, char *err, size_t err_len, const char *what)
{
    soth_route_dispose(out);
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s", what);
    return SOTH_E_CONFIG;
}

static bool route_is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static bool route_is_sub_delim(unsigned char c)
{
    return c != 0 && strchr("!$&'()*+,;=", c) != NULL;
}

static int route_hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode userinfo text s[0..n) into out (room for n bytes). Returns the decoded
 * length, or -1 for a byte outside userinfo, a bad escape or a decoded control byte. */
static long route_decode_userinfo(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = route_hex_val((unsigned char)s[i + 1]),
                lo = route_hex_val((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        } else if (!route_is_unreserved(c) && !route_is_sub_delim(c)) {
            return -1;
        }
        if (c < 0x20 || c == 0x7f)
            return -1;
        out[o++] = (char)c;
    }
    return (long)o;
}

static size_t route_base64(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static char *route_dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* A host name: labels of letters, digits, '-' and '_', separated by single dots (one
 * trailing dot allowed). */
static bool route_is_host_name(const char *h, size_t n)
{
    if (n == 0 || n > SOTH_ROUTE_MAX_HOST || h[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c == '.') {
            if (i > 0 && h[i - 1] == '.')
                return false;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

int soth_route_parse(const char *text, struct soth_route *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof(*out));
    size_t len = strnlen(text, SOTH_ROUTE_MAX_TEXT + 1);
    if (len > SOTH_ROUTE_MAX_TEXT)
        return route_fail(out, err, err_len, "route longer than 1024 bytes");
    if (strcmp(text, "direct") == 0) {
        out->kind = SOTH_ROUTE_DIRECT;
        out->text = route_dup_n("direct", 6);
        out->shown = route_dup_n("direct", 6);
        out->written = route_dup_n("direct", 6);
        if (out->text == NULL || out->shown == NULL || out->written == NULL)
            return route_fail(out, err, err_len, "out of memory");
        out->text_len = 6;
        return 0;
    }
    size_t pl = sizeof(UPSTREAM_PREFIX) - 1;
    if (strncmp(text, UPSTREAM_PREFIX, pl) != 0)
        return route_fail(out, err, err_len,
                          "expected \"direct\" or \"upstream:http://[USER:PASSWORD@]HOST:PORT\"");
    const char *auth = text + pl;
    size_t alen = len - pl;
    if (alen > 0 && auth[alen - 1] == '/')
        alen--; /* "http://proxy:3128/" as environment variables often write it */
    if (memchr(auth, '/', alen) || memchr(auth, '?', alen) || memchr(auth, '#', alen))
        return route_fail(out, err, err_len,
                          "an upstream proxy URL has no path, query or fragment");

    /* userinfo: up to the last '@' ('@' inside it must be written %40) */
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@')
            at = auth + i;
    char cred[SOTH_ROUTE_MAX_TEXT + 1];
    long cred_len = -1;
    size_t user_raw_len = 0;
    bool has_password = false; /* "USER:PASSWORD@", not "USER@" */
    if (at != NULL) {
        const char *ui = auth;
        size_t ul = (size_t)(at - auth);
        const char *colon = memchr(ui, ':', ul);
        user_raw_len = colon != NULL ? (size_t)(colon - ui) : ul;
        if (user_raw_len == 0)
            return route_fail(out, err, err_len, "empty user name before '@'");
        if (user_raw_len > SOTH_ROUTE_MAX_CRED || ul - user_raw_len > SOTH_ROUTE_MAX_CRED + 1)
            return route_fail(out, err, err_len,
                              "user name and password: at most 255 bytes each as written");
        long un = route_decode_userinfo(ui, user_raw_len, cred);
        if (un < 0)
            return route_fail(out, err, err_len,
                              "user name: only unreserved characters, sub-delims and %XX escapes "
                              "(no control bytes) are allowed");
        if (memchr(cred, ':', (size_t)un))
            return route_fail(out, err, err_len,
                              "user name: a decoded ':' is not allowed (RFC 7617)");
        cred[un] = ':';
        long pn = 0;
        has_password = colon != NULL;
        if (colon != NULL) {
            pn = route_decode_userinfo(colon + 1, ul - user_raw_len - 1, cred + un + 1);
            if (pn < 0)
                return route_fail(
                    out, err, err_len,
                    "password: only unreserved characters, sub-delims and %XX escapes "
                    "(no control bytes) are allowed");
        }
        cred_len = un + 1 + pn;
        auth = at + 1;
        alen -= ul + 1;
    }

    /* HOST ":" PORT */
    const char *h = auth, *ps;
    size_t hl;
    bool v6 = false;
    if (alen > 0 && auth[0] == '[') {
        const char *rb = memchr(auth, ']', alen);
        if (rb == NULL)
            return route_fail(out, err, err_len, "'[' without ']' around an IPv6 host");
        h = auth + 1;
        hl = (size_t)(rb - h);
        ps = rb + 1;
        v6 = true;
        char tmp[64];
        struct in6_addr a6;
        if (hl == 0 || hl >= sizeof(tmp))
            return route_fail(out, err, err_len, "expected an IPv6 literal in brackets");
        memcpy(tmp, h, hl);
        tmp[hl] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return route_fail(out, err, err_len, "expected an IPv6 literal in brackets");
    } else {
        const char *colon = memchr(auth, ':', alen);
        if (colon == NULL)
            return route_fail(out, err, err_len, "missing \":PORT\" after the upstream proxy host");
        hl = (size_t)(colon - auth);
        ps = colon;
        if (!route_is_host_name(h, hl))
            return route_fail(out, err, err_len,
                              "upstream proxy host: expected a name, an IPv4 address or [IPv6]");
    }
    size_t rest = alen - (size_t)(ps - auth);
    if (rest < 2 || ps[0] != ':')
        return route_fail(out, err, err_len, "missing \":PORT\" after the upstream proxy host");
    unsigned long port = 0;
    for (size_t i = 1; i < rest; i++) {
        if (ps[i] < '0' || ps[i] > '9' || (i == 1 && ps[i] == '0') || i > 5)
            return route_fail(out, err, err_len, "port: expected 1..65535");
        port = port * 10 + (unsigned long)(ps[i] - '0');
    }
    if (port < 1 || port > 65535)
        return route_fail(out, err, err_len, "port: expected 1..65535");

    out->kind = SOTH_ROUTE_UPSTREAM_HTTP;
    out->host = route_dup_n(h, hl);
    out->host_len = hl;
    out->host_is_ipv6 = v6;
    out->port = (uint16_t)port;
    out->written = route_dup_n(text, len);
    char buf[SOTH_ROUTE_MAX_TEXT + 64];
    int n = snprintf(buf, sizeof(buf), UPSTREAM_PREFIX "%s%.*s%s:%lu", v6 ? "[" : "", (int)hl, h,
                     v6 ? "]" : "", port);
    out->text = route_dup_n(buf, (size_t)n);
    out->text_len = (size_t)n;
    if (cred_len >= 0) {
        /* The user as written (still escaped), the password never. */
        n = snprintf(buf, sizeof(buf), UPSTREAM_PREFIX "%.*s%s@%s%.*s%s:%lu", (int)user_raw_len,
                     text + pl, has_password ? ":(set)" : "", v6 ? "[" : "", (int)hl, h,
                     v6 ? "]" : "", port);
        out->shown = route_dup_n(buf, (size_t)n);
        char b64[(SOTH_ROUTE_MAX_TEXT + 3) / 3 * 4 + 8];
        size_t bl = route_base64((const unsigned char *)cred, (size_t)cred_len, b64);
        out->proxy_auth = malloc(6 + bl + 1);
        if (out->proxy_auth != NULL) {
            memcpy(out->proxy_auth, "Basic ", 6);
            memcpy(out->proxy_auth + 6, b64, bl + 1);
            out->proxy_auth_len = 6 + bl;
        }
        memset(b64, 0, sizeof(b64));
        memset(cred, 0, sizeof(cred));
    } else {
        out->shown = route_dup_n(out->text != NULL ? out->text : "", out->text_len);
    }
    if (out->host == NULL || out->written == NULL || out->text == NULL || out->shown == NULL ||
        (cred_len >= 0 && out->proxy_auth == NULL))
        return route_fail(out, err, err_len, "out of memory");
    return 0;
}

static char *route_dup_opt(const char *s, bool *ok)
{
    if (s == NULL)
        return NULL;
    char *p = strdup(s);
    if (p == NULL)
        *ok = false;
    return p;
}

int soth_route_copy(struct soth_route *dst, const struct soth_route *src)
{
    bool ok = true;
    *dst = *src;
    dst->text = route_dup_opt(src->text, &ok);
    dst->shown = route_dup_opt(src->shown, &ok);
    dst->written = route_dup_opt(src->written, &ok);
    dst->host = route_dup_opt(src->host, &ok);
    dst->proxy_auth = route_dup_opt(src->proxy_auth, &ok);
    if (!ok) {
        soth_route_dispose(dst);
        return SOTH_E_NOMEM;
    }
    return 0;
}

static void route_free_secret(char *s)
{
    if (s == NULL)
        return;
    /* Keep the credentials out of freed memory. */
    volatile char *v = s;
    while (*v)
        *v++ = '\0';
    free(s);
}

void soth_route_dispose(struct soth_route *r)
{
    free(r->text);
    free(r->shown);
    route_free_secret(r->written);
    free(r->host);
    route_free_secret(r->proxy_auth);
    memset(r, 0, sizeof(*r));
}
