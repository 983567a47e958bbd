/*
 * Routes (docs/config.md "Routes"): soth_route_parse on good and bad texts, what each field
 * holds (the credentials only in written and proxy_auth), and that a SIGHUP reload keeps a
 * route's credentials while the printed config never shows the password.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/config.h"
#include "soth/route.h"

struct good {
    const char *in;
    enum soth_route_kind kind;
    const char *text, *shown, *host;
    bool v6;
    uint16_t port;
    const char *auth; /* Proxy-Authorization value, NULL = none */
};

static const struct good goods[] = {
    {"direct", SOTH_ROUTE_DIRECT, "direct", "direct", NULL, false, 0, NULL},
    {"upstream:http://127.0.0.1:3128", SOTH_ROUTE_UPSTREAM_HTTP, "upstream:http://127.0.0.1:3128",
     "upstream:http://127.0.0.1:3128", "127.0.0.1", false, 3128, NULL},
    {"upstream:http://egress.internal:1/", SOTH_ROUTE_UPSTREAM_HTTP,
     "upstream:http://egress.internal:1", "upstream:http://egress.internal:1", "egress.internal",
     false, 1, NULL},
    {"upstream:http://[::1]:65535", SOTH_ROUTE_UPSTREAM_HTTP, "upstream:http://[::1]:65535",
     "upstream:http://[::1]:65535", "::1", true, 65535, NULL},
    /* RFC 7617 2: base64("Aladdin:open sesame") */
    {"upstream:http://Aladdin:open%20sesame@p.test:8080", SOTH_ROUTE_UPSTREAM_HTTP,
     "upstream:http://p.test:8080", "upstream:http://Aladdin:(set)@p.test:8080", "p.test", false,
     8080, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="},
    /* '@' and ':' escaped in the user and password; the last '@' ends the userinfo */
    {"upstream:http://a%40b:p%3A%40w@[2001:db8::1]:3128", SOTH_ROUTE_UPSTREAM_HTTP,
     "upstream:http://[2001:db8::1]:3128", "upstream:http://a%40b:(set)@[2001:db8::1]:3128",
     "2001:db8::1", true, 3128, "Basic YUBiOnA6QHc="}, /* "a@b:p:@w" */
    /* a user without a password: an empty one (shown without "(set)": none was written) */
    {"upstream:http://bob@p:3", SOTH_ROUTE_UPSTREAM_HTTP, "upstream:http://p:3",
     "upstream:http://bob@p:3", "p", false, 3, "Basic Ym9iOg=="}, /* "bob:" */
    {"upstream:http://u:@p:3", SOTH_ROUTE_UPSTREAM_HTTP, "upstream:http://p:3",
     "upstream:http://u:(set)@p:3", "p", false, 3, "Basic dTo="}, /* "u:" */
    {"upstream:http://u:!$&'()*+,;=~._-@under_score.ex-ample.:9", SOTH_ROUTE_UPSTREAM_HTTP,
     "upstream:http://under_score.ex-ample.:9", "upstream:http://u:(set)@under_score.ex-ample.:9",
     "under_score.ex-ample.", false, 9, "Basic dTohJCYnKCkqKyw7PX4uXy0="},
};

Test(route, good_routes)
{
    for (size_t i = 0; i < SOTH_ARRAY_LEN(goods); i++) {
        const struct good *g = &goods[i];
        struct soth_route r;
        char err[200] = "";
        cr_assert_eq(soth_route_parse(g->in, &r, err, sizeof(err)), 0, "%s: %s", g->in, err);
        cr_expect_eq(r.kind, g->kind, "%s", g->in);
        cr_expect_str_eq(r.text, g->text, "%s", g->in);
        cr_expect_eq(r.text_len, strlen(g->text));
        cr_expect_str_eq(r.shown, g->shown, "%s", g->in);
        cr_expect_str_eq(r.written, g->in);
        if (g->host == NULL) {
            cr_expect_null(r.host);
        } else {
            cr_expect_str_eq(r.host, g->host, "%s", g->in);
            cr_expect_eq(r.host_len, strlen(g->host));
        }
        cr_expect_eq(r.host_is_ipv6, g->v6, "%s", g->in);
        cr_expect_eq(r.port, g->port, "%s", g->in);
        if (g->auth == NULL) {
            cr_expect_null(r.proxy_auth, "%s", g->in);
        } else {
            cr_assert_not_null(r.proxy_auth, "%s", g->in);
            cr_expect_str_eq(r.proxy_auth, g->auth, "%s", g->in);
            cr_expect_eq(r.proxy_auth_len, strlen(g->auth));
        }
        cr_expect_eq(soth_route_is_upstream(&r), g->kind == SOTH_ROUTE_UPSTREAM_HTTP);
        struct soth_route c;
        cr_assert_eq(soth_route_copy(&c, &r), 0);
        cr_expect_str_eq(c.text, r.text);
        cr_expect_neq(c.text, r.text);
        soth_route_dispose(&c);
        soth_route_dispose(&r);
        cr_expect_null(r.text);
    }
}

struct bad {
    const char *in;
    const char *err;
};

static const struct bad bads[] = {
    {"", "expected \"direct\" or \"upstream:http://[USER:PASSWORD@]HOST:PORT\""},
    {"Direct", "expected \"direct\" or \"upstream:http://[USER:PASSWORD@]HOST:PORT\""},
    {"upstream:https://p:1",
     "expected \"direct\" or \"upstream:http://[USER:PASSWORD@]HOST:PORT\""},
    {"http://p:1", "expected \"direct\" or \"upstream:http://[USER:PASSWORD@]HOST:PORT\""},
    {"upstream:http://", "missing \":PORT\" after the upstream proxy host"},
    {"upstream:http://p", "missing \":PORT\" after the upstream proxy host"},
    {"upstream:http://p:", "missing \":PORT\" after the upstream proxy host"},
    {"upstream:http://:3128", "upstream proxy host: expected a name, an IPv4 address or [IPv6]"},
    {"upstream:http://p:0", "port: expected 1..65535"},
    {"upstream:http://p:65536", "port: expected 1..65535"},
    {"upstream:http://p:03128", "port: expected 1..65535"},
    {"upstream:http://p:3128x", "port: expected 1..65535"},
    {"upstream:http://p:-1", "port: expected 1..65535"},
    {"upstream:http://p:1000000", "port: expected 1..65535"},
    {"upstream:http://p:1/x", "an upstream proxy URL has no path, query or fragment"},
    {"upstream:http://p:1?q", "an upstream proxy URL has no path, query or fragment"},
    {"upstream:http://p:1#f", "an upstream proxy URL has no path, query or fragment"},
    {"upstream:http://p..q:1", "upstream proxy host: expected a name, an IPv4 address or [IPv6]"},
    {"upstream:http://p q:1", "upstream proxy host: expected a name, an IPv4 address or [IPv6]"},
    {"upstream:http://::1:3128", "upstream proxy host: expected a name, an IPv4 address or [IPv6]"},
    {"upstream:http://[::1:3128", "'[' without ']' around an IPv6 host"},
    {"upstream:http://[]:1", "expected an IPv6 literal in brackets"},
    {"upstream:http://[1.2.3.4]:1", "expected an IPv6 literal in brackets"},
    {"upstream:http://[fe80::1%25eth0]:1", "expected an IPv6 literal in brackets"},
    {"upstream:http://[::1]3128", "missing \":PORT\" after the upstream proxy host"},
    {"upstream:http://@p:1", "empty user name before '@'"},
    {"upstream:http://:pw@p:1", "empty user name before '@'"},
    {"upstream:http://a%3Ab:pw@p:1", "user name: a decoded ':' is not allowed (RFC 7617)"},
    {"upstream:http://a%0a:pw@p:1", "user name: only unreserved characters, sub-delims and %XX "
                                    "escapes (no control bytes) are allowed"},
    {"upstream:http://a b:pw@p:1", "user name: only unreserved characters, sub-delims and %XX "
                                   "escapes (no control bytes) are allowed"},
    {"upstream:http://a:p%7@p:1", "password: only unreserved characters, sub-delims and %XX "
                                  "escapes (no control bytes) are allowed"},
    {"upstream:http://a:p%@p:1", "password: only unreserved characters, sub-delims and %XX "
                                 "escapes (no control bytes) are allowed"},
    {"upstream:http://a:p%00@p:1", "password: only unreserved characters, sub-delims and %XX "
                                   "escapes (no control bytes) are allowed"},
    {"upstream:http://a:p\"w@p:1", "password: only unreserved characters, sub-delims and %XX "
                                   "escapes (no control bytes) are allowed"},
};

Test(route, bad_routes_say_why_without_the_password)
{
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bads); i++) {
        struct soth_route r;
        memset(&r, 0xa5, sizeof(r));
        char err[200] = "";
        cr_expect_eq(soth_route_parse(bads[i].in, &r, err, sizeof(err)), SOTH_E_CONFIG, "%s",
                     bads[i].in);
        cr_expect_str_eq(err, bads[i].err, "%s", bads[i].in);
        cr_expect_null(r.text, "%s", bads[i].in);
        cr_expect_null(r.proxy_auth, "%s", bads[i].in);
        soth_route_dispose(&r); /* a no-op on the zeroed route */
    }
}

Test(route, overlong_route_is_refused)
{
    char big[SOTH_ROUTE_MAX_TEXT + 2];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct soth_route r;
    char err[200];
    cr_expect_eq(soth_route_parse(big, &r, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "route longer than 1024 bytes");
    /* a 300-byte host name is over what DNS allows */
    char host[400];
    int n = snprintf(host, sizeof(host), "upstream:http://");
    memset(host + n, 'h', 300);
    snprintf(host + n + 300, sizeof(host) - (size_t)n - 300, ":1");
    cr_expect_eq(soth_route_parse(host, &r, err, sizeof(err)), SOTH_E_CONFIG);
    /* a 256-byte user: refused, so that the printed form (USER:(set)@) always parses back */
    n = snprintf(host, sizeof(host), "upstream:http://");
    memset(host + n, 'u', 256);
    snprintf(host + n + 256, sizeof(host) - (size_t)n - 256, "@p:1");
    cr_expect_eq(soth_route_parse(host, &r, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "user name and password: at most 255 bytes each as written");
    host[n + 255] = '@';
    host[n + 256] = '\0';
    strcat(host, "p:1");
    cr_expect_eq(soth_route_parse(host, &r, err, sizeof(err)), 0, "%s", err);
    soth_route_dispose(&r);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

Test(route, reload_keeps_credentials_and_printing_hides_them)
{
    char path[] = "/tmp/soth-route-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    write_file(path, "{\"policy\":{\"default_route\":\"direct\"}}");
    char err[256];
    struct soth_config *cur = NULL, *next = NULL;
    cr_assert_eq(soth_config_load(path, NULL, &cur, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(cur->default_route.kind, SOTH_ROUTE_DIRECT);
    write_file(path, "{\"policy\":{\"default_route\":\"upstream:http://u:pw@d.test:1\",\"rules\":"
                     "[{\"host\":\"a.test\",\"action\":\"tunnel\",\"route\":"
                     "\"upstream:http://alice:s3cret@p.test:3128\"},"
                     "{\"host\":\"b.test\",\"action\":\"tunnel\"}]}}");
    bool restart = true;
    cr_assert_eq(soth_config_reload(cur, path, NULL, &next, &restart, err, sizeof(err)), 0, "%s",
                 err);
    cr_expect_not(restart);
    cr_assert_eq(next->n_rules, 2);
    cr_expect_str_eq(next->rules[0].route_text, "upstream:http://p.test:3128");
    cr_expect_str_eq(next->rules[0].route.proxy_auth, "Basic YWxpY2U6czNjcmV0");
    cr_expect_null(next->rules[1].route_text);
    cr_expect_str_eq(next->default_route.proxy_auth, "Basic dTpwdw==");
    char *js = soth_config_to_json(next);
    cr_assert_not_null(js);
    cr_expect_null(strstr(js, "s3cret"), "%s", js);
    cr_expect_null(strstr(js, ":pw@"), "%s", js);
    cr_expect_not_null(strstr(js, "\"route\": \"upstream:http://alice:(set)@p.test:3128\""), "%s",
                       js);
    cr_expect_not_null(strstr(js, "\"default_route\": \"upstream:http://u:(set)@d.test:1\""), "%s",
                       js);
    free(js);
    soth_config_unref(next);
    soth_config_unref(cur);
    unlink(path);
}
