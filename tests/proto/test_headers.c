/* Header field lookup (proto/headers.c): one lookup for every HTTP layer. */
#include <criterion/criterion.h>

#include <string.h>

#include "soth/proto/headers.h"

#define H(n, v)                                                                                    \
    {                                                                                              \
        SOTH_IOV_LIT(n), SOTH_IOV_LIT(v)                                                           \
    }

static const struct soth_header hd[] = {
    H("Host", "a.test"),
    H("Content-Type", "text/event-stream; charset=utf-8"),
    H("X-Empty", ""),
    H("content-type", "second"),
};

Test(headers, get_first_field_case_insensitively)
{
    struct soth_iov v = soth_header_get(hd, 4, "content-type");
    cr_assert(soth_iov_is_ci(v, "text/event-stream; charset=utf-8"));
    v = soth_header_get(hd, 4, "host");
    cr_assert(soth_iov_is_ci(v, "a.test"));
}

Test(headers, absent_is_null_empty_is_not)
{
    cr_assert_null(soth_header_get(hd, 4, "content-length").base);
    cr_assert_null(soth_header_get(hd, 0, "host").base);
    struct soth_iov e = soth_header_get(hd, 4, "x-empty");
    cr_assert_not_null(e.base);
    cr_assert_eq(e.len, 0);
    cr_assert_null(soth_header_get(hd, 4, "content").base, "whole names only");
}

Test(headers, media_type_ignores_case_parameters_and_whitespace)
{
    cr_assert(soth_media_type_is(SOTH_IOV_LIT("text/event-stream"), "text/event-stream"));
    cr_assert(
        soth_media_type_is(SOTH_IOV_LIT("Text/Event-Stream;charset=utf-8"), "text/event-stream"));
    cr_assert(soth_media_type_is(SOTH_IOV_LIT(" text/event-stream \t; x=y"), "text/event-stream"));
    cr_assert(!soth_media_type_is(SOTH_IOV_LIT("text/event-streams"), "text/event-stream"));
    cr_assert(!soth_media_type_is(SOTH_IOV_LIT("text/event"), "text/event-stream"));
    cr_assert(!soth_media_type_is(SOTH_IOV_NULL, "text/event-stream"));
}

Test(headers, list_has_element)
{
    cr_assert(soth_list_has(SOTH_IOV_LIT("websocket"), "websocket"));
    cr_assert(soth_list_has(SOTH_IOV_LIT("WebSocket"), "websocket"));
    cr_assert(soth_list_has(SOTH_IOV_LIT("keep-alive, Upgrade"), "upgrade"));
    cr_assert(soth_list_has(SOTH_IOV_LIT("x, permessage-deflate; client_max_window_bits"),
                            "permessage-deflate"));
    cr_assert(!soth_list_has(SOTH_IOV_LIT("websockets"), "websocket"));
    cr_assert(!soth_list_has(SOTH_IOV_LIT(""), "websocket"));
    cr_assert(!soth_list_has(SOTH_IOV_NULL, "websocket"));
}

/* Alt-Svc without its HTTP/3 alternatives (docs/http3.md). */
static void strip_is(const char *in, const char *want, size_t want_removed, const char *first)
{
    char out[256];
    struct soth_iov rem[4];
    size_t n = 99;
    ssize_t r = soth_alt_svc_strip(soth_iov(in, strlen(in)), out, strlen(in), rem, 4, &n);
    cr_assert_geq(r, 0, "%s", in);
    cr_assert_eq((size_t)r, strlen(want), "%s: got '%.*s'", in, (int)r, out);
    cr_assert(memcmp(out, want, (size_t)r) == 0, "%s: got '%.*s'", in, (int)r, out);
    cr_assert_eq(n, want_removed, "%s", in);
    if (first != NULL)
        cr_assert(soth_iov_eq_ci(rem[0], first, strlen(first)), "%s: removed '%.*s'", in,
                  (int)rem[0].len, rem[0].base);
}

Test(headers, alt_svc_strip)
{
    /* the case a user sees: h3 gone, h2 stays */
    strip_is("h3=\":443\"; ma=86400, h2=\":443\"", "h2=\":443\"", 1, "h3=\":443\"; ma=86400");
    /* only HTTP/3: nothing left, the field is dropped */
    strip_is("h3=\":443\"", "", 1, "h3=\":443\"");
    strip_is("h3-29=\":443\"; ma=2592000,h3-Q050=\":443\", h3=\":8443\"", "", 3,
             "h3-29=\":443\"; ma=2592000");
    /* the kept entries keep the separators that preceded them */
    strip_is("h2=\"a.test:443\",h3=\":443\",  http/1.1=\":80\"",
             "h2=\"a.test:443\",  http/1.1=\":80\"", 1, "h3=\":443\"");
    strip_is("h2=\":443\" , h3=\":443\"", "h2=\":443\"", 1, "h3=\":443\"");
    /* commas and h3 inside quoted strings and parameters are no entries */
    strip_is("h2=\"x.test:443\"; note=\"a, h3=\\\":1\\\", b\", h3=\":443\"",
             "h2=\"x.test:443\"; note=\"a, h3=\\\":1\\\", b\"", 1, "h3=\":443\"");
    strip_is("h2=\":443\"; persist=1; h3=1", "h2=\":443\"; persist=1; h3=1", 0, NULL);
    /* percent-encoded protocol-id (RFC 7838 3) */
    strip_is("%68%33=\":443\", h2=\":443\"", "h2=\":443\"", 1, "%68%33=\":443\"");
    strip_is("h%33-27=\":443\"", "", 1, "h%33-27=\":443\"");
    /* not HTTP/3: other ALPN ids, case differs, prefix without '-', clear */
    strip_is("h3x=\":443\", H3=\":443\", h31=\":1\"", "h3x=\":443\", H3=\":443\", h31=\":1\"", 0,
             NULL);
    strip_is("clear", "clear", 0, NULL);
    strip_is("", "", 0, NULL);
    /* empty list elements and whitespace */
    strip_is(" , h3=\":443\",, h2=\":443\" ,", "h2=\":443\"", 1, "h3=\":443\"");
    /* an unterminated quoted string runs to the end */
    strip_is("h2=\":443, h3=\":443\"", "h2=\":443, h3=\":443\"", 0, NULL);
    strip_is("h3=\":443, h2=\":443\"", "", 1, NULL);
}

Test(headers, alt_svc_strip_bounds)
{
    char out[64];
    struct soth_iov rem[1];
    size_t n;
    const char *in = "h3=\":1\", h3-29=\":2\", h2=\":3\"";
    cr_assert_eq(soth_alt_svc_strip(soth_iov(in, strlen(in)), out, strlen(in) - 1, rem, 1, &n),
                 SOTH_E_TOO_LARGE);
    /* more removed entries than room: all counted, the first kept */
    ssize_t r = soth_alt_svc_strip(soth_iov(in, strlen(in)), out, sizeof(out), rem, 1, &n);
    cr_assert_eq(n, 2);
    cr_assert(soth_iov_is_ci(rem[0], "h3=\":1\""));
    cr_assert_eq(r, 7);
    cr_assert(memcmp(out, "h2=\":3\"", 7) == 0);
    /* nothing removed: out is the value */
    in = "h2=\":443\"";
    r = soth_alt_svc_strip(soth_iov(in, strlen(in)), out, sizeof(out), NULL, 0, &n);
    cr_assert_eq(n, 0);
    cr_assert_eq(r, (ssize_t)strlen(in));
    cr_assert(memcmp(out, in, strlen(in)) == 0);
}
