/*
 * The SOCKS5 parser (proto/socks5.c): golden greetings and requests, each fed whole, byte by
 * byte and split in two at every offset, with the same events at the same offsets, the same
 * target or the same refusal (reply bytes, reason code) whatever the split.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "soth/proto/socks5.h"

/* What feeding a whole input gave. */
struct run {
    int greeting_at; /* offset just after the greeting, -1 when none */
    int request_at;  /* offset just after the request, -1 when none */
    bool failed;     /* SOTH_E_MALFORMED */
    uint8_t stage;
    char host[256];
    size_t host_len;
    bool v6;
    uint16_t port;
    uint8_t reply[10];
    size_t reply_len;
    const char *code;
};

/* Feed in[0..n) in pieces of at most step bytes after a first piece of first bytes. */
static void feed_split(const uint8_t *in, size_t n, size_t first, size_t step, struct run *r)
{
    struct soth_socks5 s;
    soth_socks5_init(&s);
    memset(r, 0, sizeof(*r));
    r->greeting_at = r->request_at = -1;
    size_t off = 0;
    while (off < n) {
        size_t piece = off == 0 ? first : step;
        if (piece > n - off)
            piece = n - off;
        size_t end = off + piece;
        while (off < end) {
            enum soth_socks5_event ev;
            ssize_t rc = soth_socks5_feed(&s, (const char *)in + off, end - off, &ev);
            if (rc < 0) {
                cr_assert_eq(rc, SOTH_E_MALFORMED);
                cr_assert_eq(s.stage, SOTH_SOCKS5_FAILED);
                cr_assert_not_null(s.reason_code);
                cr_assert_not_null(s.detail);
                r->failed = true;
                r->code = s.reason_code;
                r->reply_len = s.reply_len;
                memcpy(r->reply, s.reply, s.reply_len);
                r->stage = s.stage;
                /* Refused stays refused. */
                cr_assert_eq(soth_socks5_feed(&s, "\x05", 1, &ev), SOTH_E_MALFORMED);
                return;
            }
            off += (size_t)rc;
            if (ev == SOTH_SOCKS5_EV_GREETING) {
                cr_assert_eq(r->greeting_at, -1);
                r->greeting_at = (int)off;
            } else if (ev == SOTH_SOCKS5_EV_REQUEST) {
                cr_assert_eq(r->request_at, -1);
                r->request_at = (int)off;
                r->host_len = soth_socks5_host(&s, r->host, &r->v6);
                r->port = s.port;
                r->stage = s.stage;
                /* Bytes after the request are not the parser's. */
                cr_assert_eq(soth_socks5_feed(&s, "x", 1, &ev), 0);
                cr_assert_eq(ev, SOTH_SOCKS5_EV_NONE);
                return;
            } else {
                cr_assert_eq(off, end, "stopped without an event");
            }
        }
    }
    r->stage = s.stage;
}

static void expect_same(const struct run *a, const struct run *b, const char *what, size_t k)
{
    cr_expect_eq(a->greeting_at, b->greeting_at, "%s %zu: greeting", what, k);
    cr_expect_eq(a->request_at, b->request_at, "%s %zu: request", what, k);
    cr_expect_eq(a->failed, b->failed, "%s %zu: failed", what, k);
    cr_expect_eq(a->stage, b->stage, "%s %zu: stage", what, k);
    cr_expect_eq(a->host_len, b->host_len, "%s %zu: host", what, k);
    cr_expect(memcmp(a->host, b->host, a->host_len) == 0, "%s %zu: host", what, k);
    cr_expect_eq(a->port, b->port, "%s %zu: port", what, k);
    cr_expect_eq(a->reply_len, b->reply_len, "%s %zu: reply", what, k);
    cr_expect(memcmp(a->reply, b->reply, a->reply_len) == 0, "%s %zu: reply", what, k);
    cr_expect((a->code == NULL && b->code == NULL) ||
                  (a->code && b->code && strcmp(a->code, b->code) == 0),
              "%s %zu: code", what, k);
}

/* Whole, byte by byte, and split at every offset: all the same as whole. */
static void run_all(const uint8_t *in, size_t n, struct run *whole)
{
    feed_split(in, n, n, n, whole);
    struct run r;
    feed_split(in, n, 1, 1, &r);
    expect_same(whole, &r, "bytewise", 0);
    for (size_t k = 1; k < n; k++) {
        feed_split(in, n, k, n, &r);
        expect_same(whole, &r, "split", k);
    }
}

#define RUN(r, ...)                                                                                \
    do {                                                                                           \
        static const uint8_t in_[] = {__VA_ARGS__};                                                \
        run_all(in_, sizeof(in_), r);                                                              \
    } while (0)

static void expect_target(const struct run *r, const char *host, bool v6, uint16_t port)
{
    cr_assert_not(r->failed, "refused: %s", r->code ? r->code : "?");
    cr_assert_eq(r->stage, SOTH_SOCKS5_DONE);
    cr_expect_eq(r->host_len, strlen(host));
    cr_expect_str_eq(r->host, host);
    cr_expect_eq(r->v6, v6);
    cr_expect_eq(r->port, port);
}

static void expect_refused(const struct run *r, const char *code, const uint8_t *reply,
                           size_t reply_len)
{
    cr_assert(r->failed);
    cr_expect_str_eq(r->code, code);
    cr_assert_eq(r->reply_len, reply_len);
    cr_expect(memcmp(r->reply, reply, reply_len) == 0);
}

static const uint8_t NO_METHOD[] = {5, 0xff};
#define REP(code) ((const uint8_t[]){5, code, 0, 1, 0, 0, 0, 0, 0, 0})

Test(socks5, connect_domain)
{
    struct run r;
    RUN(&r, 5, 1, 0, /* request */ 5, 1, 0, 3, 11, 'o', 'r', 'i', 'g', 'i', 'n', '.', 't', 'e', 's',
        't', 0x01, 0xbb);
    expect_target(&r, "origin.test", false, 443);
    cr_expect_eq(r.greeting_at, 3);
    cr_expect_eq(r.request_at, 3 + 18);
}

Test(socks5, connect_ipv4)
{
    struct run r;
    RUN(&r, 5, 2, 2, 0, /* request */ 5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90);
    expect_target(&r, "127.0.0.1", false, 8080);
    cr_expect_eq(r.greeting_at, 4);
}

Test(socks5, connect_ipv6)
{
    struct run r;
    RUN(&r, 5, 1, 0, /* request */ 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
        80);
    expect_target(&r, "::1", true, 80);
}

Test(socks5, ipv6_text_as_domain)
{
    struct run r;
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 3, ':', ':', '1', 0, 80);
    expect_target(&r, "::1", true, 80);
}

Test(socks5, dotted_quad_as_domain)
{
    struct run r;
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 9, '1', '2', '7', '.', '0', '.', '0', '.', '1', 0, 80);
    expect_target(&r, "127.0.0.1", false, 80);
}

Test(socks5, greeting_only_is_incomplete_request)
{
    struct run r;
    RUN(&r, 5, 3, 1, 2, 0);
    cr_expect_not(r.failed);
    cr_expect_eq(r.greeting_at, 5);
    cr_expect_eq(r.request_at, -1);
    cr_expect_eq(r.stage, SOTH_SOCKS5_REQUEST);
    RUN(&r, 5, 3, 1, 2);
    cr_expect_eq(r.greeting_at, -1);
    cr_expect_eq(r.stage, SOTH_SOCKS5_GREETING);
}

Test(socks5, greeting_bad_version)
{
    struct run r;
    RUN(&r, 4, 1, 0, 80, 127, 0, 0, 1, 0);
    expect_refused(&r, "socks5_bad_version", NO_METHOD, 2);
    RUN(&r, 'C', 'O', 'N', 'N', 'E', 'C', 'T', ' ');
    expect_refused(&r, "socks5_bad_version", NO_METHOD, 2);
    RUN(&r, 0x16, 3, 1);
    expect_refused(&r, "socks5_bad_version", NO_METHOD, 2);
}

Test(socks5, greeting_no_acceptable_method)
{
    struct run r;
    RUN(&r, 5, 0);
    expect_refused(&r, "socks5_no_acceptable_method", NO_METHOD, 2);
    RUN(&r, 5, 2, 1, 2);
    expect_refused(&r, "socks5_no_acceptable_method", NO_METHOD, 2);
    RUN(&r, 5, 1, 2, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80);
    expect_refused(&r, "socks5_no_acceptable_method", NO_METHOD, 2);
}

Test(socks5, greeting_all_255_methods)
{
    uint8_t in[2 + 255 + 10];
    in[0] = 5;
    in[1] = 255;
    for (int i = 0; i < 255; i++)
        in[2 + i] = (uint8_t)(254 - i); /* 0x00 comes last */
    memcpy(in + 257, (const uint8_t[]){5, 1, 0, 1, 10, 0, 0, 1, 0, 22}, 10);
    struct run r;
    run_all(in, sizeof(in), &r);
    expect_target(&r, "10.0.0.1", false, 22);
    cr_expect_eq(r.greeting_at, 257);
}

Test(socks5, bind_and_udp_associate_not_supported)
{
    struct run r;
    RUN(&r, 5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80);
    expect_refused(&r, "socks5_command_not_supported", REP(7), 10);
    cr_expect_eq(r.greeting_at, 3);
    RUN(&r, 5, 1, 0, 5, 3, 0, 3, 1, 'a', 0, 80);
    expect_refused(&r, "socks5_command_not_supported", REP(7), 10);
    RUN(&r, 5, 1, 0, 5, 0x42, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80);
    expect_refused(&r, "socks5_command_not_supported", REP(7), 10);
    /* Refused only once the request is complete: a prefix is still incomplete. */
    RUN(&r, 5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0);
    cr_expect_not(r.failed);
    cr_expect_eq(r.stage, SOTH_SOCKS5_REQUEST);
}

Test(socks5, request_refusals)
{
    struct run r;
    RUN(&r, 5, 1, 0, 4, 1, 0, 1);
    expect_refused(&r, "socks5_bad_version", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 1, 1);
    expect_refused(&r, "socks5_bad_request", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 2, 1, 2, 3, 4);
    expect_refused(&r, "socks5_bad_address_type", REP(8), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 0, 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 0);
    expect_refused(&r, "invalid_port", REP(1), 10);
}

Test(socks5, domain_rules)
{
    struct run r;
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 5, 'a', ' ', 'b', '.', 'c', 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 4, 'a', '.', '.', 'b', 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 5, '1', '2', '7', '.', '1', 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 4, '0', 'x', '7', 'f', 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 4, ':', ':', 'g', '1', 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 3, 'a', 0, 'b', 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    /* Fuzz find: "::" then a NUL was read by inet_pton as "::" (the NUL ended its text). */
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 3, ':', ':', 0, 0, 80);
    expect_refused(&r, "bad_target", REP(1), 10);
    /* Allowed: a trailing dot, underscores, a numeric label that is not the last. */
    RUN(&r, 5, 1, 0, 5, 1, 0, 3, 7, '_', 'x', '.', '1', '.', 'a', '.', 0, 80);
    expect_target(&r, "_x.1.a.", false, 80);
}

Test(socks5, longest_domain)
{
    uint8_t in[3 + 5 + 255 + 2];
    memcpy(in, (const uint8_t[]){5, 1, 0, 5, 1, 0, 3, 255}, 8);
    for (int i = 0; i < 255; i++)
        in[8 + i] = (i % 64 == 63) ? '.' : 'a';
    in[8 + 254] = 'z';
    in[263] = 0x01;
    in[264] = 0xbb;
    struct run r;
    run_all(in, sizeof(in), &r);
    cr_assert_not(r.failed, "%s", r.code ? r.code : "");
    cr_expect_eq(r.host_len, 255);
    cr_expect_eq(r.port, 443);
    cr_expect_eq(r.request_at, (int)sizeof(in));
}

Test(socks5, reply_bytes)
{
    uint8_t out[22];
    static const uint8_t a4[4] = {127, 0, 0, 1};
    cr_assert_eq(soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, a4, 4, 40000), 10);
    cr_expect(memcmp(out, (const uint8_t[]){5, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40}, 10) == 0);
    uint8_t a6[16] = {0};
    a6[15] = 1;
    cr_assert_eq(soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, a6, 16, 443), 22);
    cr_expect_eq(out[3], 4);
    cr_expect_eq(out[19], 1);
    cr_expect_eq(out[20], 1);
    cr_expect_eq(out[21], 0xbb);
    cr_assert_eq(soth_socks5_reply(out, SOTH_SOCKS5_REP_NOT_ALLOWED, NULL, 0, 99), 10);
    cr_expect(memcmp(out, REP(2), 10) == 0);
    uint8_t m[2];
    soth_socks5_method_reply(m);
    cr_expect(m[0] == 5 && m[1] == 0);
}
