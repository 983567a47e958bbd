/* The proxy request head parser: golden cases, fed whole, byte by byte and split everywhere. */
#include <criterion/criterion.h>
#include <string.h>

#include "soth/proto.h"

/** Parse text as it would arrive over reads: prefixes of growing length, like the core does. */
static ssize_t parse_growing(const char *text, size_t len, size_t step, enum soth_head_mode mode,
                             struct soth_proxy_head *h, const char **code)
{
    const char *detail;
    ssize_t rc = SOTH_E_INCOMPLETE;
    for (size_t n = step < len ? step : len;; n = n + step < len ? n + step : len) {
        rc = soth_proxy_head_parse(text, n, mode, NULL, h, code, &detail);
        if (rc != SOTH_E_INCOMPLETE || n == len)
            return rc;
    }
}

struct ok_case {
    const char *text;
    const char *method, *host;
    unsigned port;
    const char *path;
    bool connect, v6;
    size_t n_headers;
};

static const struct ok_case ok_cases[] = {
    {"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "CONNECT", "example.com",
     443, NULL, true, false, 1},
    {"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n", "CONNECT", "::1", 8443, NULL, true, true, 0},
    {"CONNECT 127.0.0.1:1 HTTP/1.0\r\nA: b\r\nC:d\r\nE:  f  \r\n\r\n", "CONNECT", "127.0.0.1", 1,
     NULL, true, false, 3},
    {"GET http://example.com/a/b?c=d HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET", "example.com",
     80, "/a/b?c=d", false, false, 1},
    {"POST http://example.com:8080 HTTP/1.1\r\n\r\n", "POST", "example.com", 8080, "/", false,
     false, 0},
    {"GET https://[2001:db8::1]/x#frag HTTP/1.1\r\n\r\n", "GET", "2001:db8::1", 443, "/x", false,
     true, 0},
};

Test(connect, valid_heads_every_split)
{
    for (size_t i = 0; i < sizeof(ok_cases) / sizeof(ok_cases[0]); i++) {
        const struct ok_case *c = &ok_cases[i];
        size_t len = strlen(c->text);
        for (size_t step = 1; step <= len; step++) {
            struct soth_proxy_head h;
            const char *code = NULL;
            ssize_t rc = parse_growing(c->text, len, step, SOTH_HEAD_STRICT, &h, &code);
            cr_assert_eq(rc, (ssize_t)len, "case %zu step %zu: rc %zd (%s)", i, step, rc,
                         code ? code : "");
            cr_expect_eq(h.method.len, strlen(c->method));
            cr_expect(memcmp(h.method.base, c->method, h.method.len) == 0);
            cr_expect_eq(h.host.len, strlen(c->host), "case %zu", i);
            cr_expect(memcmp(h.host.base, c->host, h.host.len) == 0, "case %zu", i);
            cr_expect_eq(h.port, c->port, "case %zu", i);
            cr_expect_eq(h.is_connect, c->connect);
            cr_expect_eq(h.host_is_ipv6, c->v6);
            cr_expect_eq(h.n_headers, c->n_headers);
            if (c->path) {
                cr_expect_eq(h.path.len, strlen(c->path), "case %zu", i);
                cr_expect(memcmp(h.path.base, c->path, h.path.len) == 0, "case %zu", i);
            }
        }
    }
}

Test(connect, header_values_are_trimmed)
{
    const char *t = "CONNECT a:1 HTTP/1.1\r\nX-A:   v a l   \r\n\r\n";
    struct soth_proxy_head h;
    const char *code, *detail;
    cr_assert_gt(soth_proxy_head_parse(t, strlen(t), SOTH_HEAD_STRICT, NULL, &h, &code, &detail),
                 0);
    cr_expect_eq(h.headers[0].value.len, 5);
    cr_expect(memcmp(h.headers[0].value.base, "v a l", 5) == 0);
}

struct bad_case {
    const char *text;
    ssize_t rc;
    const char *code;
};

static const struct bad_case bad_cases[] = {
    {"CONNECT example.com HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "missing_port"},
    {"CONNECT example.com: HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "missing_port"},
    {"CONNECT example.com:0 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "invalid_port"},
    {"CONNECT example.com:65536 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "invalid_port"},
    {"CONNECT example.com:44x HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "invalid_port"},
    {"CONNECT example.com:4433333 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "invalid_port"},
    {"CONNECT [::1:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_brackets"},
    {"CONNECT ::1:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_brackets"},
    {"CONNECT [nothex]:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_brackets"},
    {"CONNECT [::1]x:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_brackets"},
    {"CONNECT [::1] HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "missing_port"},
    {"CONNECT exa\x01mple.com:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "control_bytes"},
    {"CONNECT :443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_target"},
    {"CONNECT a_b!:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_target"},
    {"CONNECT example.com:443 HTTP/1.1\n\n", SOTH_E_MALFORMED, "bare_lf"},
    {"CONNECT example.com:443 HTTP/1.1\r\nA: b\n\r\n", SOTH_E_MALFORMED, "bare_lf"},
    {"CONNECT example.com:443 HTTP/2.0\r\n\r\n", SOTH_E_MALFORMED, "bad_version"},
    {"CONNECT  example.com:443 HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_request_line"},
    {"GET / HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_target"},
    {"GET http://user@host/ HTTP/1.1\r\n\r\n", SOTH_E_MALFORMED, "bad_target"},
    {"GARBAGE\r\n\r\n", SOTH_E_MALFORMED, "bad_method"},
    {"\x16\x03\x01\x02\x00", SOTH_E_MALFORMED, "control_bytes"},
    {"CONNECT a:1 HTTP/1.1\r\nX: a\rb\r\n\r\n", SOTH_E_MALFORMED, "control_bytes"},
    {"CONNECT a:1 HTTP/1.1\r\nX: a\x7f\r\n\r\n", SOTH_E_MALFORMED, "control_bytes"},
    {"CONNECT a:1 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", SOTH_E_MALFORMED, "obs_fold"},
    {"CONNECT a:1 HTTP/1.1\r\nX : a\r\n\r\n", SOTH_E_MALFORMED, "bad_header"},
    {"CONNECT a:1 HTTP/1.1\r\n: a\r\n\r\n", SOTH_E_MALFORMED, "bad_header"},
};

Test(connect, invalid_heads_every_split)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        size_t len = strlen(c->text);
        for (size_t step = 1; step <= len; step++) {
            struct soth_proxy_head h;
            const char *code = NULL;
            ssize_t rc = parse_growing(c->text, len, step, SOTH_HEAD_STRICT, &h, &code);
            cr_assert_eq(rc, c->rc, "case %zu step %zu: rc %zd", i, step, rc);
            cr_assert_str_eq(code, c->code, "case %zu step %zu", i, step);
        }
    }
}

Test(connect, lenient_accepts_bare_lf_and_extra_spaces)
{
    const char *t = "CONNECT   example.com:443   HTTP/1.1  \nHost: x\n\n";
    struct soth_proxy_head h;
    const char *code = NULL, *detail;
    ssize_t rc = soth_proxy_head_parse(t, strlen(t), SOTH_HEAD_LENIENT, NULL, &h, &code, &detail);
    cr_assert_eq(rc, (ssize_t)strlen(t), "%s", code ? code : "");
    cr_expect_eq(h.port, 443);
    rc = soth_proxy_head_parse(t, strlen(t), SOTH_HEAD_STRICT, NULL, &h, &code, &detail);
    cr_expect_lt(rc, 0);
}

Test(connect, incomplete_until_blank_line)
{
    const char *t = "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n";
    struct soth_proxy_head h;
    const char *code, *detail;
    cr_expect_eq(soth_proxy_head_parse(t, strlen(t), SOTH_HEAD_STRICT, NULL, &h, &code, &detail),
                 SOTH_E_INCOMPLETE);
    cr_expect_eq(soth_proxy_head_parse("", 0, SOTH_HEAD_STRICT, NULL, &h, &code, &detail),
                 SOTH_E_INCOMPLETE);
}

Test(connect, limits_fail_early)
{
    struct soth_head_limits lim = {.max_line = 64, .max_head = 256, .max_headers = 2};
    char line[200];
    memset(line, 'a', sizeof(line));
    memcpy(line, "CONNECT ", 8);
    struct soth_proxy_head h;
    const char *code = NULL, *detail;
    /* An overlong line fails before its end arrives. */
    cr_expect_eq(soth_proxy_head_parse(line, 100, SOTH_HEAD_STRICT, &lim, &h, &code, &detail),
                 SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "line_too_long");
    const char *many = "CONNECT a:1 HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    cr_expect_eq(
        soth_proxy_head_parse(many, strlen(many), SOTH_HEAD_STRICT, &lim, &h, &code, &detail),
        SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "too_many_headers");
    char big[400];
    int n = snprintf(big, sizeof(big), "CONNECT a:1 HTTP/1.1\r\nX: ");
    memset(big + n, 'b', sizeof(big) - (size_t)n);
    cr_expect_eq(
        soth_proxy_head_parse(big, sizeof(big), SOTH_HEAD_STRICT, &lim, &h, &code, &detail),
        SOTH_E_TOO_LARGE);
    cr_expect_str_eq(code, "head_too_large");
}
