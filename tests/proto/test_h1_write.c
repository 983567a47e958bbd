/*
 * The head serializers (proto/h1_write.c): what the origin receives for a request a
 * client sent to the proxy in absolute-form (most cases go through the proxy head parser
 * first, as regular-mode plain HTTP does), and a response head forwarded with changed fields.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "soth/proto/connect.h"
#include "soth/proto/h1.h"

static struct soth_proxy_head H; /* large: keep off the stack */
static char out[4096];

/* Parse a proxy head, serialise it in origin-form; returns the result as a C string. */
static const char *forward(const char *head)
{
    ssize_t n = soth_proxy_head_parse(head, strlen(head), SOTH_HEAD_STRICT, NULL, &H, NULL, NULL);
    cr_assert_gt(n, 0, "the proxy head parses: %s", head);
    struct soth_h1_origin_req r = {
        .method = H.method,
        .path = H.path,
        .version = H.version,
        .headers = H.headers,
        .n_headers = H.n_headers,
        .scheme = H.scheme,
        .host = H.host,
        .host_is_ipv6 = H.host_is_ipv6,
        .port = H.port,
    };
    ssize_t len = soth_h1_write_origin_form(&r, out, sizeof(out) - 1, NULL, NULL);
    cr_assert_gt(len, 0, "serialised: %s", head);
    out[len] = '\0';
    return out;
}

#define assert_forwards(in, want) cr_assert_str_eq(forward(in), want)

Test(h1_write, host_from_the_target_replaces_a_different_client_host)
{
    assert_forwards("GET http://a.example/x?y=1 HTTP/1.1\r\n"
                    "Host: evil.example\r\n"
                    "Accept: */*\r\n\r\n",
                    "GET /x?y=1 HTTP/1.1\r\n"
                    "Host: a.example\r\n"
                    "Accept: */*\r\n\r\n");
}

Test(h1_write, ipv6_host_in_brackets)
{
    assert_forwards("GET http://[::1]:8080/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
    assert_forwards("GET http://[2001:db8::1]/p HTTP/1.1\r\nHost: x\r\n\r\n",
                    "GET /p HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n");
    assert_forwards("GET https://[::1]:443/ HTTP/1.1\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n");
}

Test(h1_write, port_only_when_not_the_default_of_the_scheme)
{
    assert_forwards("GET http://a.example:80/ HTTP/1.1\r\nHost: a.example:80\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_forwards("GET HTTPS://a.example:443/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_forwards("GET http://a.example:443/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: a.example:443\r\n\r\n");
    assert_forwards("GET https://a.example:80/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: a.example:80\r\n\r\n");
    assert_forwards("GET http://127.0.0.1:65535/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: 127.0.0.1:65535\r\n\r\n");
    assert_forwards("GET http://a.example:/ HTTP/1.1\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
}

Test(h1_write, missing_host_is_added_first)
{
    assert_forwards("POST http://a.example:8080/submit HTTP/1.0\r\n"
                    "Content-Length: 3\r\n"
                    "X-A: 1\r\n\r\n",
                    "POST /submit HTTP/1.0\r\n"
                    "Host: a.example:8080\r\n"
                    "Content-Length: 3\r\n"
                    "X-A: 1\r\n\r\n");
}

Test(h1_write, duplicate_host_becomes_one_in_the_first_place)
{
    assert_forwards("GET http://a.example/ HTTP/1.1\r\n"
                    "Accept: */*\r\n"
                    "Host: one.example\r\n"
                    "X-Mid: m\r\n"
                    "host: two.example\r\n"
                    "X-End: e\r\n\r\n",
                    "GET / HTTP/1.1\r\n"
                    "Accept: */*\r\n"
                    "Host: a.example\r\n"
                    "X-Mid: m\r\n"
                    "X-End: e\r\n\r\n");
}

Test(h1_write, proxy_fields_are_dropped_and_the_rest_kept_in_order)
{
    assert_forwards("GET http://a.example/ HTTP/1.1\r\n"
                    "Host: a.example\r\n"
                    "Proxy-Connection: keep-alive\r\n"
                    "X-B: b\r\n"
                    "PROXY-AUTHORIZATION: Basic dTpw\r\n"
                    "Authorization: Bearer t\r\n"
                    "X-A: a\r\n"
                    "Connection: keep-alive\r\n\r\n",
                    "GET / HTTP/1.1\r\n"
                    "Host: a.example\r\n"
                    "X-B: b\r\n"
                    "Authorization: Bearer t\r\n"
                    "X-A: a\r\n"
                    "Connection: keep-alive\r\n\r\n");
}

static struct soth_h1_origin_req simple(const struct soth_header *hd, size_t n)
{
    return (struct soth_h1_origin_req){
        .method = SOTH_IOV_LIT("GET"),
        .path = SOTH_IOV_LIT("/p"),
        .version = SOTH_IOV_LIT("HTTP/1.1"),
        .headers = hd,
        .n_headers = n,
        .scheme = SOTH_IOV_LIT("http"),
        .host = SOTH_IOV_LIT("a.example"),
        .port = 80,
    };
}

Test(h1_write, fields_out_are_the_bytes_written)
{
    struct soth_header hd[] = {
        {SOTH_IOV_LIT("Proxy-Connection"), SOTH_IOV_LIT("close")},
        {SOTH_IOV_LIT("X-A"), SOTH_IOV_LIT("1")},
        {SOTH_IOV_LIT("Host"), SOTH_IOV_LIT("other")},
    };
    struct soth_h1_origin_req r = simple(hd, 3);
    r.port = 0; /* the default */
    struct soth_header f[4];
    size_t nf = 99;
    ssize_t n = soth_h1_write_origin_form(&r, out, sizeof(out), f, &nf);
    static const char want[] = "GET /p HTTP/1.1\r\nX-A: 1\r\nHost: a.example\r\n\r\n";
    cr_assert_eq(n, (ssize_t)sizeof(want) - 1);
    cr_assert_eq(memcmp(out, want, sizeof(want) - 1), 0);
    cr_assert_eq(nf, 2);
    cr_assert(soth_iov_is_ci(f[0].name, "X-A") && soth_iov_is_ci(f[0].value, "1"));
    cr_assert(soth_iov_is_ci(f[1].name, "Host") && soth_iov_is_ci(f[1].value, "a.example"));
    cr_assert(f[0].name.base >= out && f[0].value.base + f[0].value.len <= out + n);
    cr_assert(f[1].value.base >= out && f[1].value.base + f[1].value.len <= out + n);
}

Test(h1_write, empty_path_is_slash)
{
    struct soth_h1_origin_req r = simple(NULL, 0);
    r.path = SOTH_IOV_NULL;
    ssize_t n = soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL);
    static const char want[] = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
    cr_assert_eq(n, (ssize_t)sizeof(want) - 1);
    cr_assert_eq(memcmp(out, want, sizeof(want) - 1), 0);
}

Test(h1_write, too_large_for_every_short_buffer)
{
    struct soth_header hd[] = {{SOTH_IOV_LIT("Host"), SOTH_IOV_LIT("x")},
                               {SOTH_IOV_LIT("X-A"), SOTH_IOV_LIT("value")}};
    struct soth_h1_origin_req r = simple(hd, 2);
    r.port = 8080;
    ssize_t full = soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL);
    cr_assert_gt(full, 0);
    char small[256];
    for (size_t cap = 0; cap < (size_t)full; cap++) {
        struct soth_header f[3];
        size_t nf = 7;
        cr_assert_eq(soth_h1_write_origin_form(&r, small, cap, f, &nf), SOTH_E_TOO_LARGE, "cap %zu",
                     cap);
        cr_assert_eq(nf, 7, "count untouched on failure");
    }
    cr_assert_eq(soth_h1_write_origin_form(&r, small, (size_t)full, NULL, NULL), full);
    cr_assert_eq(memcmp(small, out, (size_t)full), 0);
}

Test(h1_write, refuses_what_would_split_the_head)
{
    struct soth_header crlf[] = {{SOTH_IOV_LIT("X-A"), SOTH_IOV_LIT("a\r\nX-Injected: 1")}};
    struct soth_header colon[] = {{SOTH_IOV_LIT("X:A"), SOTH_IOV_LIT("a")}};
    struct soth_header space[] = {{SOTH_IOV_LIT("X A"), SOTH_IOV_LIT("a")}};
    struct soth_header empty[] = {{SOTH_IOV_NULL, SOTH_IOV_LIT("a")}};
    struct soth_header *bad[] = {crlf, colon, space, empty};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bad); i++) {
        struct soth_h1_origin_req r = simple(bad[i], 1);
        cr_assert_eq(soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL), SOTH_E_MALFORMED,
                     "case %zu", i);
    }
    struct soth_h1_origin_req r = simple(NULL, 0);
    r.method = SOTH_IOV_LIT("GET /evil HTTP/1.1\r\n");
    cr_assert_eq(soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL), SOTH_E_MALFORMED);
    r = simple(NULL, 0);
    r.path = SOTH_IOV_LIT("/a b");
    cr_assert_eq(soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL), SOTH_E_MALFORMED);
    r = simple(NULL, 0);
    r.host = SOTH_IOV_LIT("a.example\r\nX: 1");
    cr_assert_eq(soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL), SOTH_E_MALFORMED);
    r = simple(NULL, 0);
    r.host = SOTH_IOV_NULL;
    cr_assert_eq(soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL), SOTH_E_MALFORMED);
}

/* ---- soth_h1_write_response_head: a response head forwarded with changed fields */

static const char *resp(unsigned status, const char *reason, const struct soth_header *f, size_t n)
{
    ssize_t len =
        soth_h1_write_response_head(SOTH_IOV_LIT("HTTP/1.1"), status,
                                    soth_iov(reason, strlen(reason)), f, n, out, sizeof(out) - 1);
    cr_assert_gt(len, 0);
    out[len] = '\0';
    return out;
}

Test(h1_write, response_head_status_line_and_fields_in_order)
{
    struct soth_header f[] = {{SOTH_IOV_LIT("Content-Length"), SOTH_IOV_LIT("5")},
                              {SOTH_IOV_LIT("alt-svc"), SOTH_IOV_LIT("h2=\":443\"")},
                              {SOTH_IOV_LIT("X-Empty"), SOTH_IOV_LIT("")}};
    cr_assert_str_eq(resp(200, "OK", f, 3), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                                            "alt-svc: h2=\":443\"\r\nX-Empty: \r\n\r\n");
    /* an empty reason keeps the space after the code, as the engine forwards it */
    cr_assert_str_eq(resp(204, "", NULL, 0), "HTTP/1.1 204 \r\n\r\n");
    cr_assert_str_eq(resp(999, "Odd Reason", NULL, 0), "HTTP/1.1 999 Odd Reason\r\n\r\n");
    ssize_t n = soth_h1_write_response_head(SOTH_IOV_LIT("HTTP/1.0"), 404, SOTH_IOV_LIT("Nope"),
                                            NULL, 0, out, sizeof(out));
    cr_assert_eq(n, (ssize_t)strlen("HTTP/1.0 404 Nope\r\n\r\n"));
    cr_assert(memcmp(out, "HTTP/1.0 404 Nope\r\n\r\n", (size_t)n) == 0);
}

Test(h1_write, response_head_too_large_for_every_short_buffer)
{
    struct soth_header f[] = {{SOTH_IOV_LIT("Alt-Svc"), SOTH_IOV_LIT("h2=\":443\"; ma=60")}};
    char small[128];
    ssize_t full = soth_h1_write_response_head(SOTH_IOV_LIT("HTTP/1.1"), 200, SOTH_IOV_LIT("OK"), f,
                                               1, small, sizeof(small));
    cr_assert_gt(full, 0);
    for (size_t cap = 0; cap < (size_t)full; cap++)
        cr_assert_eq(soth_h1_write_response_head(SOTH_IOV_LIT("HTTP/1.1"), 200, SOTH_IOV_LIT("OK"),
                                                 f, 1, small, cap),
                     SOTH_E_TOO_LARGE, "cap %zu", cap);
    cr_assert_eq(soth_h1_write_response_head(SOTH_IOV_LIT("HTTP/1.1"), 200, SOTH_IOV_LIT("OK"), f,
                                             1, small, (size_t)full),
                 full);
}

Test(h1_write, response_head_refuses_what_would_split_the_head)
{
    struct soth_header crlf[] = {{SOTH_IOV_LIT("X-A"), SOTH_IOV_LIT("a\r\nX-Injected: 1")}};
    struct soth_header colon[] = {{SOTH_IOV_LIT("X:A"), SOTH_IOV_LIT("a")}};
    struct soth_header empty[] = {{SOTH_IOV_NULL, SOTH_IOV_LIT("a")}};
    struct soth_header *bad[] = {crlf, colon, empty};
    struct soth_iov v11 = SOTH_IOV_LIT("HTTP/1.1"), ok = SOTH_IOV_LIT("OK");
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bad); i++)
        cr_assert_eq(soth_h1_write_response_head(v11, 200, ok, bad[i], 1, out, sizeof(out)),
                     SOTH_E_MALFORMED, "case %zu", i);
    cr_assert_eq(soth_h1_write_response_head(v11, 99, ok, NULL, 0, out, sizeof(out)),
                 SOTH_E_MALFORMED);
    cr_assert_eq(soth_h1_write_response_head(v11, 1000, ok, NULL, 0, out, sizeof(out)),
                 SOTH_E_MALFORMED);
    cr_assert_eq(soth_h1_write_response_head(v11, 200, SOTH_IOV_LIT("OK\r\nX: 1"), NULL, 0, out,
                                             sizeof(out)),
                 SOTH_E_MALFORMED);
    cr_assert_eq(soth_h1_write_response_head(SOTH_IOV_LIT("HTTP/1.1 200"), 200, ok, NULL, 0, out,
                                             sizeof(out)),
                 SOTH_E_MALFORMED);
    cr_assert_eq(soth_h1_write_response_head(SOTH_IOV_NULL, 200, ok, NULL, 0, out, sizeof(out)),
                 SOTH_E_MALFORMED);
}

/* Toward an upstream proxy (docs/config.md "Routes"): absolute-form, the client's Proxy-* fields
 * dropped, ours added last and kept out of the reported fields. */
Test(h1_write, absolute_form_for_an_upstream_proxy)
{
    struct soth_header hd[] = {
        {SOTH_IOV_LIT("Proxy-Authorization"), SOTH_IOV_LIT("Basic Y2xpZW50OnNlY3JldA==")},
        {SOTH_IOV_LIT("X-A"), SOTH_IOV_LIT("1")},
    };
    struct soth_h1_origin_req r = simple(hd, 2);
    r.absolute = true;
    r.proxy_auth = SOTH_IOV_LIT("Basic dTpw");
    struct soth_header f[3];
    size_t nf = 99;
    ssize_t n = soth_h1_write_origin_form(&r, out, sizeof(out), f, &nf);
    static const char want[] = "GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n"
                               "Proxy-Authorization: Basic dTpw\r\n\r\n";
    cr_assert_eq(n, (ssize_t)sizeof(want) - 1, "%.*s", (int)n, out);
    cr_assert_eq(memcmp(out, want, sizeof(want) - 1), 0);
    cr_assert_eq(nf, 2);
    cr_assert(soth_iov_is_ci(f[1].name, "X-A"));
    /* a port that is not the scheme's default, an IPv6 host, no credentials */
    r.proxy_auth = SOTH_IOV_NULL;
    r.host = SOTH_IOV_LIT("::1");
    r.host_is_ipv6 = true;
    r.port = 8080;
    n = soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL);
    static const char want6[] =
        "GET http://[::1]:8080/p HTTP/1.1\r\nHost: [::1]:8080\r\nX-A: 1\r\n\r\n";
    cr_assert_eq(n, (ssize_t)sizeof(want6) - 1, "%.*s", (int)n, out);
    cr_assert_eq(memcmp(out, want6, sizeof(want6) - 1), 0);
    /* a line break in the credentials is refused */
    r.proxy_auth = SOTH_IOV_LIT("Basic x\r\nX-Evil: 1");
    cr_assert_eq(soth_h1_write_origin_form(&r, out, sizeof(out), NULL, NULL), SOTH_E_MALFORMED);
}
