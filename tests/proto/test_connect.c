/*
 * The proxy request head parser (proto/connect.c): golden valid and invalid heads, each fed
 * whole, byte by byte, split in two at every offset, and checked for the prefix property
 * (every prefix gives SOTH_E_INCOMPLETE or the whole input's result).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "soth/proto/connect.h"

#define STRICT  SOTH_HEAD_STRICT
#define LENIENT SOTH_HEAD_LENIENT

static struct soth_proxy_head H; /* large (64 headers): keep off the stack of every helper */
static struct soth_proxy_head H2;

static ssize_t parse(const char *t, size_t n, enum soth_head_mode m,
                     const struct soth_head_limits *lim, struct soth_proxy_head *h,
                     const char **code)
{
    const char *detail = NULL;
    *code = NULL;
    ssize_t rc = soth_proxy_head_parse(t, n, m, lim, h, code, &detail);
    if (rc < 0 && rc != SOTH_E_INCOMPLETE) {
        cr_assert_not_null(*code);
        cr_assert_not_null(detail);
        cr_assert_gt(strlen(detail), 0);
    } else {
        cr_assert_null(*code, "reason set without a failure");
        cr_assert_null(detail);
    }
    return rc;
}

static bool iov_is(struct soth_iov v, const char *s)
{
    if (s == NULL)
        return v.len == 0;
    return v.len == strlen(s) && memcmp(v.base, s, v.len) == 0;
}

/* Fields of two parses of the same bytes (possibly via different buffers) agree. */
static void expect_same_head(const struct soth_proxy_head *a, const char *abuf,
                             const struct soth_proxy_head *b, const char *bbuf, const char *what)
{
#define SAME_IOV(f)                                                                                \
    cr_expect(a->f.len == b->f.len &&                                                              \
                  (a->f.len == 0 || memcmp(a->f.base, b->f.base, a->f.len) == 0),                  \
              "%s: " #f " differs", what)
    SAME_IOV(method);
    SAME_IOV(target);
    SAME_IOV(version);
    SAME_IOV(host);
    SAME_IOV(scheme);
    SAME_IOV(path);
    cr_expect_eq(a->port, b->port, "%s", what);
    cr_expect_eq(a->is_connect, b->is_connect, "%s", what);
    cr_expect_eq(a->host_is_ipv6, b->host_is_ipv6, "%s", what);
    cr_expect_eq(a->line_len, b->line_len, "%s", what);
    cr_expect_eq(a->head_len, b->head_len, "%s", what);
    cr_assert_eq(a->n_headers, b->n_headers, "%s", what);
    for (size_t i = 0; i < a->n_headers; i++) {
        SAME_IOV(headers[i].name);
        SAME_IOV(headers[i].value);
    }
    /* Offsets into the buffer agree too (iovs point into the caller's bytes). */
    if (a->host.len > 0)
        cr_expect_eq(a->host.base - abuf, b->host.base - bbuf, "%s", what);
#undef SAME_IOV
}

/**
 * Parse text whole, then check every way of feeding it: growing by one byte, split in two at
 * every offset (a fresh copy per read, as a read into a new buffer would be), and the prefix
 * property. Returns the whole-input result with the head in H.
 */
static ssize_t parse_all_ways(const char *t, size_t len, enum soth_head_mode m,
                              const struct soth_head_limits *lim, const char **code)
{
    ssize_t whole = parse(t, len, m, lim, &H, code);
    const char *wcode = *code;
    char *copy = malloc(len + 1);
    cr_assert_not_null(copy);
    for (size_t n = 0; n < len; n++) {
        /* A prefix in its own buffer: nothing past n exists, ASan would see a read past it. */
        char *pre = malloc(n ? n : 1);
        cr_assert_not_null(pre);
        memcpy(pre, t, n);
        const char *pcode;
        ssize_t rc = parse(pre, n, m, lim, &H2, &pcode);
        free(pre);
        if (rc == SOTH_E_INCOMPLETE)
            continue;
        /* A decided prefix: the whole input says the same. */
        cr_assert_eq(rc, whole, "prefix %zu of \"%.*s\": rc %zd (%s), whole %zd (%s)", n, (int)len,
                     t, rc, pcode ? pcode : "-", whole, wcode ? wcode : "-");
        if (rc < 0)
            cr_assert_str_eq(pcode, wcode, "prefix %zu", n);
    }
    /* Two reads: the caller keeps the first part and appends the second. */
    for (size_t k = 0; k <= len; k++) {
        memcpy(copy, t, k);
        const char *pcode;
        ssize_t rc = parse(copy, k, m, lim, &H2, &pcode);
        if (rc == SOTH_E_INCOMPLETE) {
            memcpy(copy + k, t + k, len - k);
            rc = parse(copy, len, m, lim, &H2, &pcode);
        }
        cr_assert_eq(rc, whole, "split at %zu", k);
        if (rc < 0)
            cr_assert_str_eq(pcode, wcode, "split at %zu", k);
        else
            expect_same_head(&H, t, &H2, copy, "split");
    }
    free(copy);
    *code = wcode;
    return whole;
}

/* ---- valid heads ------------------------------------------------------------------------- */

struct ok_case {
    enum soth_head_mode mode;
    const char *text;
    const char *method, *host;
    unsigned port;
    const char *scheme, *path;
    bool connect, v6;
    const char *headers; /* "name=value|name=value" in wire order, NULL = none */
    size_t extra;        /* bytes after the head (not part of it) */
};

static const struct ok_case ok_cases[] = {
    {STRICT, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "CONNECT",
     "example.com", 443, NULL, NULL, true, false, "Host=example.com:443", 0},
    {STRICT, "CONNECT [::1]:8443 HTTP/1.1\r\n\r\n", "CONNECT", "::1", 8443, NULL, NULL, true, true,
     NULL, 0},
    {STRICT, "CONNECT [2001:db8::a:1]:65535 HTTP/1.0\r\n\r\n", "CONNECT", "2001:db8::a:1", 65535,
     NULL, NULL, true, true, NULL, 0},
    {STRICT, "CONNECT [::ffff:127.0.0.1]:1 HTTP/1.1\r\n\r\n", "CONNECT", "::ffff:127.0.0.1", 1,
     NULL, NULL, true, true, NULL, 0},
    {STRICT, "CONNECT 127.0.0.1:1 HTTP/1.0\r\nA: b\r\nC:d\r\nE:  f  \r\n\r\n", "CONNECT",
     "127.0.0.1", 1, NULL, NULL, true, false, "A=b|C=d|E=f", 0},
    {STRICT, "CONNECT a_b-c.Example.COM.:00443 HTTP/1.1\r\n\r\n", "CONNECT", "a_b-c.Example.COM.",
     443, NULL, NULL, true, false, NULL, 0},
    {STRICT, "CONNECT localhost:1 HTTP/1.1\r\nX-Empty:\r\nX-Tab:\ta\tb\t\r\n\r\n", "CONNECT",
     "localhost", 1, NULL, NULL, true, false, "X-Empty=|X-Tab=a\tb", 0},
    {STRICT, "CONNECT h:1 HTTP/1.1\r\nX: caf\xc3\xa9 \"q\" ~\r\n\r\n", "CONNECT", "h", 1, NULL,
     NULL, true, false, "X=caf\xc3\xa9 \"q\" ~", 0},
    {STRICT, "CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01\x02\x05hello", "CONNECT", "h", 443, NULL,
     NULL, true, false, NULL, 10},
    {STRICT, "GET http://example.com/a/b?c=d&e=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET",
     "example.com", 80, "http", "/a/b?c=d&e=%20", false, false, "Host=example.com", 0},
    {STRICT, "POST http://example.com:8080 HTTP/1.1\r\n\r\n", "POST", "example.com", 8080, "http",
     "/", false, false, NULL, 0},
    {STRICT, "GET HTTP://Example.com:/ HTTP/1.1\r\n\r\n", "GET", "Example.com", 80, "HTTP", "/",
     false, false, NULL, 0},
    {STRICT, "GET https://[2001:db8::1]/x HTTP/1.1\r\n\r\n", "GET", "2001:db8::1", 443, "https",
     "/x", false, true, NULL, 0},
    {STRICT, "DELETE https://h:8443/p;q=1,2 HTTP/1.0\r\n\r\n", "DELETE", "h", 8443, "https",
     "/p;q=1,2", false, false, NULL, 0},
    {STRICT, "M-SEARCH http://10.0.0.1/ HTTP/1.1\r\n\r\n", "M-SEARCH", "10.0.0.1", 80, "http", "/",
     false, false, NULL, 0},
    {STRICT, "GET http://h/ HTTP/1.1\r\n\r\nGET http://h/2 HTTP/1.1\r\n\r\n", "GET", "h", 80,
     "http", "/", false, false, NULL, 27},
    {LENIENT, "CONNECT   example.com:443 \t HTTP/1.1  \nHost: x\n\n", "CONNECT", "example.com", 443,
     NULL, NULL, true, false, "Host=x", 0},
    {LENIENT, " \tCONNECT\th:1\tHTTP/1.0\t\r\nA: 1\nB: 2\r\n\n", "CONNECT", "h", 1, NULL, NULL,
     true, false, "A=1|B=2", 0},
    {LENIENT, "GET http://h/a#frag HTTP/1.1\r\n\r\n", "GET", "h", 80, "http", "/a", false, false,
     NULL, 0},
    {LENIENT, "GET http://h/{a}|\"b\" HTTP/1.1\r\n\r\n", "GET", "h", 80, "http", "/{a}|\"b\"",
     false, false, NULL, 0},
    {LENIENT, "CONNECT h:1 HTTP/1.1\r\n\r\n", "CONNECT", "h", 1, NULL, NULL, true, false, NULL, 0},
};

static void check_headers(const struct soth_proxy_head *h, const char *spec, size_t ci)
{
    size_t n = 0;
    if (spec != NULL) {
        const char *p = spec;
        for (;;) {
            const char *bar = strchr(p, '|');
            size_t l = bar ? (size_t)(bar - p) : strlen(p);
            const char *eq = memchr(p, '=', l);
            cr_assert_not_null(eq);
            cr_assert_lt(n, h->n_headers, "case %zu: too few headers", ci);
            const struct soth_header *f = &h->headers[n];
            cr_expect(f->name.len == (size_t)(eq - p) && memcmp(f->name.base, p, f->name.len) == 0,
                      "case %zu header %zu name", ci, n);
            size_t vl = l - (size_t)(eq - p) - 1;
            cr_expect(f->value.len == vl && memcmp(f->value.base, eq + 1, vl) == 0,
                      "case %zu header %zu value \"%.*s\"", ci, n, (int)f->value.len,
                      f->value.base);
            n++;
            if (bar == NULL)
                break;
            p = bar + 1;
        }
    }
    cr_expect_eq(h->n_headers, n, "case %zu", ci);
}

Test(connect, valid_heads_all_ways)
{
    for (size_t i = 0; i < SOTH_ARRAY_LEN(ok_cases); i++) {
        const struct ok_case *c = &ok_cases[i];
        size_t len = strlen(c->text);
        const char *code;
        ssize_t rc = parse_all_ways(c->text, len, c->mode, NULL, &code);
        cr_assert_eq(rc, (ssize_t)(len - c->extra), "case %zu: rc %zd (%s)", i, rc,
                     code ? code : "");
        cr_expect_eq(H.head_len, (size_t)rc);
        cr_expect(iov_is(H.method, c->method), "case %zu method", i);
        cr_expect(iov_is(H.host, c->host), "case %zu host \"%.*s\"", i, (int)H.host.len,
                  H.host.base);
        cr_expect_eq(H.port, c->port, "case %zu", i);
        cr_expect(iov_is(H.scheme, c->scheme), "case %zu scheme", i);
        cr_expect(iov_is(H.path, c->path), "case %zu path \"%.*s\"", i, (int)H.path.len,
                  H.path.base);
        cr_expect_eq(H.is_connect, c->connect, "case %zu", i);
        cr_expect_eq(H.host_is_ipv6, c->v6, "case %zu", i);
        cr_expect(iov_is(H.version, "HTTP/1.1") || iov_is(H.version, "HTTP/1.0"));
        const char *nl = memchr(c->text, '\n', len);
        cr_expect_eq(H.line_len, (size_t)(nl - c->text) + 1, "case %zu", i);
        check_headers(&H, c->headers, i);
    }
}

Test(connect, target_is_kept_as_sent)
{
    const char *t = "GET http://Example.com:8080/p?q HTTP/1.1\r\n\r\n";
    const char *code;
    cr_assert_gt(parse(t, strlen(t), STRICT, NULL, &H, &code), 0);
    cr_expect(iov_is(H.target, "http://Example.com:8080/p?q"));
    cr_expect_eq(H.target.base, t + 4, "target points into the input");
    cr_expect_eq(H.host.base, t + 11);
}

/* ---- invalid heads ----------------------------------------------------------------------- */

struct bad_case {
    enum soth_head_mode mode;
    const char *text;
    ssize_t rc;
    const char *code;
    size_t len; /* 0: strlen(text) */
};

#define MAL SOTH_E_MALFORMED
/* A case holding NUL bytes: the length of the literal. */
#define NUL_CASE(m, lit, code)                                                                     \
    {                                                                                              \
        m, lit, MAL, code, sizeof(lit) - 1                                                         \
    }
static const struct bad_case bad_cases[] = {
    /* ports */
    {STRICT, "CONNECT example.com HTTP/1.1\r\n\r\n", MAL, "missing_port", 0},
    {STRICT, "CONNECT example.com: HTTP/1.1\r\n\r\n", MAL, "missing_port", 0},
    {STRICT, "CONNECT [::1] HTTP/1.1\r\n\r\n", MAL, "missing_port", 0},
    {STRICT, "CONNECT [::1]: HTTP/1.1\r\n\r\n", MAL, "missing_port", 0},
    {LENIENT, "CONNECT example.com HTTP/1.1\n\n", MAL, "missing_port", 0},
    {STRICT, "CONNECT example.com:0 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:00000 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:65536 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:99999 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:000443 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:4294967739 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:44x HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:-1 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT example.com:+443 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT [::1]:0 HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "CONNECT h:443/ HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "GET http://h:65536/ HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    {STRICT, "GET http://h:0/ HTTP/1.1\r\n\r\n", MAL, "invalid_port", 0},
    /* brackets */
    {STRICT, "CONNECT [::1:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT ::1:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT [nothex]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT [127.0.0.1]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT []:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT [::1]x:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT [::1]]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT ::1]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT a[::1]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "CONNECT [1:2:3:4:5:6:7:8:9]:443 HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "GET http://[::1/ HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    /* hosts and targets */
    {STRICT, "CONNECT :443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT a!b:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT a..b:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT .a:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT .:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT a.b..:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT 127.1:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT 2130706433:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT 0x7f.0.0.1:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT 127.0.0.0x1:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT 256.0.0.1:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT 127.0.0.1.:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT caf\xc3\xa9.example:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT a%41:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT user@h:443 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "CONNECT http://h:443/ HTTP/1.1\r\n\r\n", MAL, "bad_brackets", 0},
    {STRICT, "GET / HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "OPTIONS * HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET h:80 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "connect h:80 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET ftp://h/ HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http:/h/ HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http:// HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http:///x HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http://user@host/ HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http://user:pw@host/ HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http://h?q=1 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http://h/a#frag HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http://h/{a} HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {STRICT, "GET http://h/\xff HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    {LENIENT, "GET http://h/\x80 HTTP/1.1\r\n\r\n", MAL, "bad_target", 0},
    /* control bytes */
    {STRICT, "CONNECT exa\x01mple.com:443 HTTP/1.1\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT h:443\tHTTP/1.1\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT h:443 HTTP/1.1\rX\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT h:443 HTTP/1.1\r\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT h:443 HTTP/1\x7f\r\n\r\n", MAL, "control_bytes", 0},
    NUL_CASE(STRICT, "CON\x00NECT h:443 HTTP/1.1\r\n\r\n", "control_bytes"),
    NUL_CASE(STRICT, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "control_bytes"),
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX: a\rb\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX: a\x7f\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX: a\x01 b\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX\x01Y: a\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\n\r\r\n", MAL, "control_bytes", 0},
    NUL_CASE(LENIENT, "CONNECT a:1 HTTP/1.1\nX: a\x00\n\n", "control_bytes"),
    {LENIENT, "CONNECT a:1 HTTP/1.1\rX: a\r\n\r\n", MAL, "control_bytes", 0},
    /* line ends */
    {STRICT, "CONNECT example.com:443 HTTP/1.1\n\n", MAL, "bare_lf", 0},
    {STRICT, "CONNECT example.com:443 HTTP/1.1\r\nA: b\n\r\n", MAL, "bare_lf", 0},
    {STRICT, "CONNECT example.com:443 HTTP/1.1\r\nA: b\r\n\n", MAL, "bare_lf", 0},
    /* request-line structure */
    {STRICT, "CONNECT example.com:443 HTTP/2.0\r\n\r\n", MAL, "bad_version", 0},
    {STRICT, "CONNECT example.com:443 HTTP/1.2\r\n\r\n", MAL, "bad_version", 0},
    {STRICT, "CONNECT example.com:443 http/1.1\r\n\r\n", MAL, "bad_version", 0},
    {STRICT, "CONNECT example.com:443 HTTP/1.10\r\n\r\n", MAL, "bad_version", 0},
    {STRICT, "CONNECT example.com:443 HTTP/1.\r\n\r\n", MAL, "bad_version", 0},
    {STRICT, "CONNECT example.com:443 HTTP/1.1 \r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "CONNECT example.com:443 \r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "CONNECT example.com:443  HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "CONNECT  example.com:443 HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "CONNECT\texample.com:443 HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, " CONNECT example.com:443 HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "CONNECT example.com:443\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "GARBAGE\r\n\r\n", MAL, "bad_request_line", 0},
    /* empty lines before the request line: CRLF only in strict mode */
    {STRICT, "\nCONNECT h:1 HTTP/1.1\r\n\r\n", MAL, "bare_lf", 0},
    {STRICT, "\r\n\nCONNECT h:1 HTTP/1.1\r\n\r\n", MAL, "bare_lf", 0},
    {STRICT, "\r\rCONNECT h:1 HTTP/1.1\r\n\r\n", MAL, "control_bytes", 0},
    {STRICT, "\r\n CONNECT h:1 HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "GET  http://a/ HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "GET http://a/  HTTP/1.1\r\n\r\n", MAL, "bad_request_line", 0},
    {STRICT, "GET\r\n", MAL, "bad_request_line", 0},
    {STRICT, "CONN(ECT h:443 HTTP/1.1\r\n\r\n", MAL, "bad_method", 0},
    {STRICT,
     "CONN\xc3\xa9"
     "CT h:443 HTTP/1.1\r\n\r\n",
     MAL, "bad_method", 0},
    {STRICT, "{\"json\": 1}", MAL, "bad_method", 0},
    /* field lines */
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", MAL, "obs_fold", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\n\tb\r\n\r\n", MAL, "obs_fold", 0},
    {LENIENT, "CONNECT a:1 HTTP/1.1\nX: a\n b\n\n", MAL, "obs_fold", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX : a\r\n\r\n", MAL, "bad_header", 0},
    {LENIENT, "CONNECT a:1 HTTP/1.1\r\nX\t: a\r\n\r\n", MAL, "bad_header", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\n: a\r\n\r\n", MAL, "bad_header", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nNoColon\r\n\r\n", MAL, "bad_header", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX/Y: a\r\n\r\n", MAL, "bad_header", 0},
    {STRICT, "CONNECT a:1 HTTP/1.1\r\nX\xc3\xa9: a\r\n\r\n", MAL, "bad_header", 0},
};

Test(connect, invalid_heads_all_ways)
{
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bad_cases); i++) {
        const struct bad_case *c = &bad_cases[i];
        size_t len = c->len ? c->len : strlen(c->text);
        const char *code;
        ssize_t rc = parse_all_ways(c->text, len, c->mode, NULL, &code);
        cr_expect_eq(rc, c->rc, "case %zu \"%s\": rc %zd (%s)", i, c->text, rc, code ? code : "-");
        if (rc == c->rc)
            cr_expect_str_eq(code, c->code, "case %zu \"%s\"", i, c->text);
    }
}

Test(connect, strict_and_lenient_differ_on_line_ends_and_spaces)
{
    const char *t = "CONNECT   example.com:443   HTTP/1.1  \nHost: x\n\n";
    const char *code;
    cr_expect_eq(parse(t, strlen(t), LENIENT, NULL, &H, &code), (ssize_t)strlen(t));
    cr_expect_eq(H.port, 443);
    cr_expect_eq(parse(t, strlen(t), STRICT, NULL, &H, &code), SOTH_E_MALFORMED);
    cr_expect_str_eq(code, "bad_request_line");
    const char *lf = "CONNECT h:1 HTTP/1.1\nHost: x\n\n";
    cr_expect_eq(parse(lf, strlen(lf), LENIENT, NULL, &H, &code), (ssize_t)strlen(lf));
    cr_expect_eq(parse(lf, strlen(lf), STRICT, NULL, &H, &code), SOTH_E_MALFORMED);
    cr_expect_str_eq(code, "bare_lf");
}

/* ---- incomplete input and early failure -------------------------------------------------- */

Test(connect, incomplete_until_blank_line)
{
    static const char *const t[] = {
        "",
        "C",
        "CONNECT",
        "CONNECT ",
        "CONNECT [::1",
        "CONNECT h:443",
        "CONNECT h:443 HTTP/1.",
        "CONNECT h:443 HTTP/1.1",
        "CONNECT h:443 HTTP/1.1\r",
        "CONNECT h:443 HTTP/1.1\r\n",
        "CONNECT h:443 HTTP/1.1\r\nHost",
        "CONNECT h:443 HTTP/1.1\r\nHost: h:443",
        "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n",
        "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r",
        "GET http://h/ HTTP/1.1\r\nX: a  \r",
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++) {
        const char *code;
        cr_expect_eq(parse(t[i], strlen(t[i]), STRICT, NULL, &H, &code), SOTH_E_INCOMPLETE,
                     "\"%s\"", t[i]);
        cr_expect_eq(parse(t[i], strlen(t[i]), LENIENT, NULL, &H, &code), SOTH_E_INCOMPLETE,
                     "\"%s\"", t[i]);
    }
}

Test(connect, errors_are_reported_before_the_line_ends)
{
    static const struct {
        const char *text, *code;
    } t[] = {
        {"\x16\x03\x01", "control_bytes"},
        {"GET\x01", "control_bytes"},
        {"CONN(", "bad_method"},
        {"CONNECT example.com HTTP", "missing_port"}, /* decided at the SP after the target */
        {"CONNECT h:0 ", "invalid_port"},
        {"CONNECT [::1 ", "bad_brackets"},
        {"GET / ", "bad_target"},
        {"CONNECT h:1 HTTP/2", "bad_version"},
        {"CONNECT h:1 HTTP/1.1\n", "bare_lf"},
        {"CONNECT h:1 HTTP/1.1\r\nX: \x01", "control_bytes"},
        {"CONNECT h:1 HTTP/1.1\r\nX : ", "bad_header"},
        {"CONNECT h:1 HTTP/1.1\r\n ", "obs_fold"},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++) {
        const char *code;
        cr_expect_eq(parse(t[i].text, strlen(t[i].text), STRICT, NULL, &H, &code), SOTH_E_MALFORMED,
                     "\"%s\"", t[i].text);
        cr_expect_str_eq(code ? code : "", t[i].code, "\"%s\"", t[i].text);
    }
}

/* ---- limits ------------------------------------------------------------------------------ */

/* RFC 9112 2.2: empty lines before the request line are ignored, as the exchange engine does
 * (docs/http1.md "One strictness for every path"); they count toward the head, not the line. */
Test(connect, empty_lines_before_the_request_line_are_skipped)
{
    const char *t = "\r\n\r\nGET http://a.example:81/x HTTP/1.1\r\nHost: a\r\n\r\n";
    const char *code;
    cr_expect_eq(parse_all_ways(t, strlen(t), STRICT, NULL, &code), (ssize_t)strlen(t));
    cr_expect_eq(H.head_len, strlen(t));
    cr_expect_eq(H.line_len, strlen("GET http://a.example:81/x HTTP/1.1\r\n"));
    cr_expect(H.method.len == 3 && memcmp(H.method.base, "GET", 3) == 0);
    cr_expect_eq(H.port, 81);
    cr_expect_eq(H.n_headers, 1);
    const char *lf = "\n\nCONNECT h:1 HTTP/1.1\nHost: x\n\n";
    cr_expect_eq(parse_all_ways(lf, strlen(lf), LENIENT, NULL, &code), (ssize_t)strlen(lf));
    cr_expect_eq(H.port, 1);
    /* the line limit starts at the request line; the head limit counts the empty lines */
    struct soth_head_limits lim = {.max_line = 64, .max_head = 256};
    char big[300];
    memset(big, 0, sizeof(big));
    for (size_t i = 0; i < 100; i += 2)
        memcpy(big + i, "\r\n", 2);
    strcpy(big + 100, "CONNECT h:1 HTTP/1.1\r\n\r\n");
    cr_expect_eq(parse_all_ways(big, strlen(big), STRICT, &lim, &code), (ssize_t)strlen(big));
    lim.max_head = 100;
    cr_expect_eq(parse_all_ways(big, strlen(big), STRICT, &lim, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "head_too_large");
}

/* The one authority parser, shared with the requests after the proxy head (core/app_h1.c). */
Test(connect, authority_parse)
{
    struct soth_authority au;
    const char *code;
    cr_expect_eq(
        soth_authority_parse(SOTH_IOV_LIT("Example.COM:8080"), false, 80, &au, &code, NULL), 0);
    cr_expect(au.host.len == 11 && memcmp(au.host.base, "Example.COM", 11) == 0);
    cr_expect_eq(au.port, 8080);
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("h"), false, 443, &au, NULL, NULL), 0);
    cr_expect_eq(au.port, 443);
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("h:"), false, 80, &au, NULL, NULL), 0);
    cr_expect_eq(au.port, 80);
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("[::1]:81"), false, 80, &au, NULL, NULL), 0);
    cr_expect(au.host_is_ipv6 && au.host.len == 3 && au.port == 81);
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("h"), true, 0, &au, &code, NULL),
                 SOTH_E_MALFORMED);
    cr_expect_str_eq(code, "missing_port");
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("h:0"), false, 80, &au, &code, NULL),
                 SOTH_E_MALFORMED);
    cr_expect_str_eq(code, "invalid_port");
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("::1"), false, 80, &au, &code, NULL),
                 SOTH_E_MALFORMED);
    cr_expect_str_eq(code, "bad_brackets");
    /* No authority at all (an absent Host: base NULL, length 0): refused, no pointer offset
     * taken from NULL (UBSan found one, through fuzz_app_h1). */
    cr_expect_eq(soth_authority_parse(SOTH_IOV_NULL, false, 80, &au, &code, NULL),
                 SOTH_E_MALFORMED);
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT("127.1"), false, 80, &au, &code, NULL),
                 SOTH_E_MALFORMED);
    cr_expect_str_eq(code, "bad_target");
    cr_expect_eq(soth_authority_parse(SOTH_IOV_LIT(""), false, 80, &au, &code, NULL),
                 SOTH_E_MALFORMED);
}

Test(connect, line_limit_is_exact_and_fails_early)
{
    struct soth_head_limits lim = {.max_line = 64};
    char line[128];
    /* "CONNECT " + host + ":1 HTTP/1.1" = exactly 64 bytes before CRLF */
    size_t host_len = 64 - strlen("CONNECT :1 HTTP/1.1");
    memcpy(line, "CONNECT ", 8);
    memset(line + 8, 'a', host_len);
    memcpy(line + 8 + host_len, ":1 HTTP/1.1\r\n\r\n", 15);
    const char *code;
    cr_expect_eq(parse_all_ways(line, 8 + host_len + 15, STRICT, &lim, &code),
                 (ssize_t)(8 + host_len + 15));
    cr_expect_eq(H.line_len, 66);
    lim.max_line = 63;
    cr_expect_eq(parse_all_ways(line, 8 + host_len + 15, STRICT, &lim, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "line_too_long");
    /* 64 bytes of a line without its end: too long as soon as byte 64 is not a line end */
    cr_expect_eq(parse(line, 63, STRICT, &lim, &H, &code), SOTH_E_INCOMPLETE);
    cr_expect_eq(parse(line, 64, STRICT, &lim, &H, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "line_too_long");

    /* the default is 8192 */
    static char big[9000];
    memset(big, 'a', sizeof(big));
    memcpy(big, "CONNECT ", 8);
    cr_expect_eq(parse(big, 8192, STRICT, NULL, &H, &code), SOTH_E_INCOMPLETE);
    cr_expect_eq(parse(big, 8193, STRICT, NULL, &H, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "line_too_long");
}

Test(connect, head_limit_is_exact)
{
    const char *t = "CONNECT a:1 HTTP/1.1\r\nX: 0123456789\r\n\r\n";
    size_t len = strlen(t);
    struct soth_head_limits lim = {.max_head = len};
    const char *code;
    cr_expect_eq(parse_all_ways(t, len, STRICT, &lim, &code), (ssize_t)len);
    lim.max_head = len - 1;
    cr_expect_eq(parse_all_ways(t, len, STRICT, &lim, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "head_too_large");
    /* fails once max_head bytes are there without the blank line, not later */
    cr_expect_eq(parse(t, len - 1, STRICT, &lim, &H, &code), SOTH_E_TOO_LARGE);
    cr_expect_eq(parse(t, len - 2, STRICT, &lim, &H, &code), SOTH_E_INCOMPLETE);
    /* a max_head below the request line */
    lim.max_head = 10;
    cr_expect_eq(parse(t, len, STRICT, &lim, &H, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "head_too_large");

    static char big[70000];
    int n = snprintf(big, sizeof(big), "CONNECT a:1 HTTP/1.1\r\nX: ");
    memset(big + n, 'b', sizeof(big) - (size_t)n);
    cr_expect_eq(parse(big, 65536, STRICT, NULL, &H, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "head_too_large");
    cr_expect_eq(parse(big, 65535, STRICT, NULL, &H, &code), SOTH_E_INCOMPLETE);
}

Test(connect, header_count_limit)
{
    struct soth_head_limits lim = {.max_headers = 2};
    const char *two = "CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
    const char *three = "CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    const char *code;
    cr_expect_eq(parse_all_ways(two, strlen(two), STRICT, &lim, &code), (ssize_t)strlen(two));
    cr_expect_eq(H.n_headers, 2);
    cr_expect_eq(parse_all_ways(three, strlen(three), STRICT, &lim, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "too_many_headers");

    /* default and cap: SOTH_HEAD_MAX_HEADERS */
    static char many[4096];
    size_t off = (size_t)snprintf(many, sizeof(many), "CONNECT a:1 HTTP/1.1\r\n");
    for (int i = 0; i < SOTH_HEAD_MAX_HEADERS; i++)
        off += (size_t)snprintf(many + off, sizeof(many) - off, "H%d: %d\r\n", i, i);
    size_t at_cap = off;
    memcpy(many + off, "\r\n", 2);
    cr_expect_eq(parse(many, at_cap + 2, STRICT, NULL, &H, &code), (ssize_t)(at_cap + 2));
    cr_expect_eq(H.n_headers, SOTH_HEAD_MAX_HEADERS);
    cr_expect(iov_is(H.headers[63].name, "H63"));
    cr_expect(iov_is(H.headers[63].value, "63"));
    off += (size_t)snprintf(many + off, sizeof(many) - off, "Z: z\r\n\r\n");
    lim.max_headers = 1000; /* capped */
    cr_expect_eq(parse(many, off, STRICT, &lim, &H, &code), SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "too_many_headers");
    cr_expect_eq(parse(many, off, STRICT, NULL, &H, &code), SOTH_E_TOO_LARGE);
}

Test(connect, null_reason_pointers_are_allowed)
{
    const char *t = "CONNECT h HTTP/1.1\r\n\r\n";
    cr_expect_eq(soth_proxy_head_parse(t, strlen(t), STRICT, NULL, &H, NULL, NULL),
                 SOTH_E_MALFORMED);
    const char *code = "stale", *detail = "stale";
    const char *ok = "CONNECT h:1 HTTP/1.1\r\n\r\n";
    cr_expect_gt(soth_proxy_head_parse(ok, strlen(ok), STRICT, NULL, &H, &code, &detail), 0);
    cr_expect_null(code);
    cr_expect_null(detail);
}
