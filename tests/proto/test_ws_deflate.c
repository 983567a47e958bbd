/*
 * permessage-deflate for observation (proto/ws_deflate.c): the response's parameters, and
 * inflation per direction with the context takeover rules of RFC 7692, its bounds, and the
 * frame parser's on_payload hook that feeds it (proto/ws.c). Messages are compressed here
 * with zlib exactly as RFC 7692 7.2.1 says (raw deflate, sync flush, tail removed).
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "soth/proto/ws.h"
#include "soth/proto/ws_deflate.h"

/* ---- parameters */

static struct soth_pmd pmd(const char *ext)
{
    struct soth_pmd p;
    soth_pmd_parse(soth_iov(ext, strlen(ext)), &p);
    return p;
}

Test(pmd, absent_or_other_extension_is_off)
{
    struct soth_pmd p;
    soth_pmd_parse(SOTH_IOV_NULL, &p);
    cr_assert(!p.on);
    cr_assert(!pmd("").on);
    cr_assert(!pmd("x-webkit-deflate-frame").on);
    cr_assert(!pmd("permessage-deflater").on);
}

Test(pmd, defaults_keep_context_with_full_windows)
{
    struct soth_pmd p = pmd("permessage-deflate");
    cr_assert(p.on);
    cr_assert(!p.no_takeover[SOTH_LEG_CLIENT] && !p.no_takeover[SOTH_LEG_UPSTREAM]);
    cr_assert_eq(p.window_bits[SOTH_LEG_CLIENT], 15);
    cr_assert_eq(p.window_bits[SOTH_LEG_UPSTREAM], 15);
}

Test(pmd, parameters_per_direction)
{
    struct soth_pmd p = pmd("Permessage-Deflate ; server_no_context_takeover;"
                            "client_max_window_bits=10 ; server_max_window_bits=\"12\"");
    cr_assert(p.on);
    cr_assert(p.no_takeover[SOTH_LEG_UPSTREAM]);
    cr_assert(!p.no_takeover[SOTH_LEG_CLIENT]);
    cr_assert_eq(p.window_bits[SOTH_LEG_CLIENT], 10);
    cr_assert_eq(p.window_bits[SOTH_LEG_UPSTREAM], 12);
    p = pmd("x-other; a=1, permessage-deflate; client_no_context_takeover, permessage-deflate; "
            "server_no_context_takeover");
    cr_assert(p.on && p.no_takeover[SOTH_LEG_CLIENT] && !p.no_takeover[SOTH_LEG_UPSTREAM],
              "the first permessage-deflate element counts");
}

Test(pmd, invalid_window_bits_keep_the_default)
{
    struct soth_pmd p = pmd("permessage-deflate; server_max_window_bits=16; "
                            "client_max_window_bits=7; client_max_window_bits");
    cr_assert(p.on);
    cr_assert_eq(p.window_bits[SOTH_LEG_UPSTREAM], 15);
    cr_assert_eq(p.window_bits[SOTH_LEG_CLIENT], 15);
}

/* ---- a sender as RFC 7692 7.2.1 describes it */

struct sender {
    z_stream zs;
    bool takeover;
};

static void sender_init(struct sender *s, int bits, bool takeover)
{
    memset(s, 0, sizeof(*s));
    cr_assert_eq(
        deflateInit2(&s->zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY),
        Z_OK);
    s->takeover = takeover;
}

/* Compress one message; returns its payload (malloc'd) and length in *n. */
static unsigned char *sender_msg(struct sender *s, const void *msg, size_t len, size_t *n)
{
    size_t cap = len + len / 2 + 64;
    unsigned char *out = malloc(cap);
    cr_assert_not_null(out);
    s->zs.next_in = (Bytef *)(uintptr_t)msg;
    s->zs.avail_in = (uInt)len;
    s->zs.next_out = out;
    s->zs.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&s->zs, Z_SYNC_FLUSH), Z_OK);
    cr_assert_eq(s->zs.avail_in, 0);
    *n = cap - s->zs.avail_out;
    cr_assert_geq(*n, 4);
    cr_assert_eq(memcmp(out + *n - 4, "\x00\x00\xff\xff", 4), 0);
    *n -= 4;
    if (!s->takeover)
        cr_assert_eq(deflateReset(&s->zs), Z_OK);
    return out;
}

static struct soth_ws_inflated inflate_msg(struct soth_ws_inflate *z, const unsigned char *p,
                                           size_t n, size_t piece)
{
    for (size_t i = 0; i < n; i += piece)
        soth_ws_inflate_feed(z, (const char *)p + i, n - i < piece ? n - i : piece);
    struct soth_ws_inflated r;
    soth_ws_inflate_end(z, &r);
    return r;
}

static void expect_text(struct soth_ws_inflated r, const char *want, size_t cap)
{
    size_t wl = strlen(want);
    cr_assert_eq(r.status, SOTH_WSZ_OK);
    cr_assert_eq(r.len, wl);
    size_t keep = wl < cap ? wl : cap;
    cr_assert_eq(r.data.len, keep);
    cr_assert_eq(memcmp(r.data.base, want, keep), 0);
}

Test(ws_inflate, context_takeover_needs_every_message_in_order)
{
    /* With takeover the second message refers back into the first one's window: it only
     * inflates when the first went through the same inflater. */
    const char *m1 = "the quick brown fox jumps over the lazy dog, the quick brown fox";
    const char *m2 = "the quick brown fox jumps over the lazy dog, again";
    struct sender s;
    sender_init(&s, 15, true);
    size_t n1, n2;
    unsigned char *c1 = sender_msg(&s, m1, strlen(m1), &n1);
    unsigned char *c2 = sender_msg(&s, m2, strlen(m2), &n2);
    cr_assert_lt(n2, strlen(m2) / 2, "m2 compresses against m1's window");
    for (size_t piece = 1; piece <= n1 + n2; piece++) {
        struct soth_ws_inflate *z = soth_ws_inflate_new(4096, 1 << 20);
        cr_assert_eq(soth_ws_inflate_reset(z, 15, true), 0);
        expect_text(inflate_msg(z, c1, n1, piece), m1, 4096);
        expect_text(inflate_msg(z, c2, n2, piece), m2, 4096);
        soth_ws_inflate_free(z);
    }
    /* m2 alone (a fresh window) does not inflate to m2 */
    struct soth_ws_inflate *z = soth_ws_inflate_new(4096, 1 << 20);
    soth_ws_inflate_reset(z, 15, true);
    struct soth_ws_inflated r = inflate_msg(z, c2, n2, n2);
    cr_assert(r.status != SOTH_WSZ_OK || r.len != strlen(m2) ||
              memcmp(r.data.base, m2, r.len) != 0);
    soth_ws_inflate_free(z);
    free(c1);
    free(c2);
    deflateEnd(&s.zs);
}

Test(ws_inflate, no_context_takeover_resets_each_message)
{
    struct sender s;
    sender_init(&s, 15, false);
    struct soth_ws_inflate *z = soth_ws_inflate_new(64, 1 << 20);
    soth_ws_inflate_reset(z, 15, false);
    const char *msgs[] = {"first first first first", "second first first first", "x"};
    for (size_t i = 0; i < 3; i++) {
        size_t n;
        unsigned char *c = sender_msg(&s, msgs[i], strlen(msgs[i]), &n);
        expect_text(inflate_msg(z, c, n, 3), msgs[i], 64);
        free(c);
    }
    soth_ws_inflate_free(z);
    deflateEnd(&s.zs);
}

Test(ws_inflate, capture_keeps_a_prefix_and_counts_the_rest)
{
    size_t len = 100000;
    char *msg = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        msg[i] = (char)('a' + (i * 7 + i / 13) % 26);
    msg[len] = 0;
    struct sender s;
    sender_init(&s, 15, true);
    size_t n;
    unsigned char *c = sender_msg(&s, msg, len, &n);
    struct soth_ws_inflate *z = soth_ws_inflate_new(100, 1 << 20);
    soth_ws_inflate_reset(z, 15, true);
    expect_text(inflate_msg(z, c, n, 1000), msg, 100);
    free(c);
    /* the window stayed in step although only 100 bytes were kept */
    c = sender_msg(&s, msg, len, &n);
    expect_text(inflate_msg(z, c, n, n), msg, 100);
    free(c);
    free(msg);
    soth_ws_inflate_free(z);
    deflateEnd(&s.zs);
}

Test(ws_inflate, over_the_bound_is_cut_and_loses_a_takeover_window)
{
    size_t big = 3u << 20;
    char *zeros = calloc(1, big);
    struct sender s;
    sender_init(&s, 15, true);
    size_t n, n2;
    unsigned char *c = sender_msg(&s, zeros, big, &n);
    unsigned char *c2 = sender_msg(&s, "after", 5, &n2);
    cr_assert_lt(n, 8192, "a bomb: %zu compressed bytes", n);
    struct soth_ws_inflate *z = soth_ws_inflate_new(16, 1u << 20);
    soth_ws_inflate_reset(z, 15, true);
    struct soth_ws_inflated r = inflate_msg(z, c, n, 100);
    cr_assert_eq(r.status, SOTH_WSZ_OVER);
    cr_assert_eq(r.len, 1u << 20);
    cr_assert_eq(r.data.len, 16);
    cr_assert_eq(memcmp(r.data.base, zeros, 16), 0);
    r = inflate_msg(z, c2, n2, n2);
    cr_assert_eq(r.status, SOTH_WSZ_LOST, "the window is gone with takeover");
    cr_assert_eq(r.len, 0);
    /* a reset (another WebSocket) starts clean */
    soth_ws_inflate_reset(z, 15, false);
    struct sender s2;
    sender_init(&s2, 15, false);
    size_t n3;
    unsigned char *c3 = sender_msg(&s2, "fresh", 5, &n3);
    expect_text(inflate_msg(z, c3, n3, 1), "fresh", 16);
    free(c3);
    deflateEnd(&s2.zs);
    soth_ws_inflate_free(z);
    free(c);
    free(c2);
    free(zeros);
    deflateEnd(&s.zs);
}

Test(ws_inflate, over_the_bound_without_takeover_spares_the_next_message)
{
    size_t big = 2u << 20;
    char *zeros = calloc(1, big);
    struct sender s;
    sender_init(&s, 15, false);
    size_t n, n2;
    unsigned char *c = sender_msg(&s, zeros, big, &n);
    unsigned char *c2 = sender_msg(&s, "after", 5, &n2);
    struct soth_ws_inflate *z = soth_ws_inflate_new(8, 1u << 20);
    soth_ws_inflate_reset(z, 15, false);
    cr_assert_eq(inflate_msg(z, c, n, n).status, SOTH_WSZ_OVER);
    expect_text(inflate_msg(z, c2, n2, n2), "after", 8);
    soth_ws_inflate_free(z);
    free(c);
    free(c2);
    free(zeros);
    deflateEnd(&s.zs);
}

Test(ws_inflate, exactly_at_the_bound_is_complete)
{
    size_t len = 4096;
    char *msg = malloc(len + 1);
    memset(msg, 'q', len);
    msg[len] = 0;
    struct sender s;
    sender_init(&s, 15, true);
    size_t n;
    unsigned char *c = sender_msg(&s, msg, len, &n);
    struct soth_ws_inflate *z = soth_ws_inflate_new(16, len);
    soth_ws_inflate_reset(z, 15, true);
    expect_text(inflate_msg(z, c, n, 1), msg, 16);
    soth_ws_inflate_free(z);
    free(c);
    free(msg);
    deflateEnd(&s.zs);
}

Test(ws_inflate, corrupt_data_is_an_error)
{
    struct soth_ws_inflate *z = soth_ws_inflate_new(16, 1 << 20);
    soth_ws_inflate_reset(z, 15, false);
    static const unsigned char junk[] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x11};
    struct soth_ws_inflated r = inflate_msg(z, junk, sizeof(junk), 1);
    cr_assert_eq(r.status, SOTH_WSZ_ERROR);
    cr_assert_eq(r.len, 0);
    /* without takeover the next message is independent */
    struct sender s;
    sender_init(&s, 15, false);
    size_t n;
    unsigned char *c = sender_msg(&s, "ok", 2, &n);
    expect_text(inflate_msg(z, c, n, n), "ok", 16);
    free(c);
    deflateEnd(&s.zs);
    soth_ws_inflate_free(z);
}

Test(ws_inflate, final_block_inside_a_message_keeps_the_window)
{
    /* A sender may end a message with BFINAL (RFC 7692 7.2.3.4 allows it): the window still
     * carries over to the next message under takeover. */
    const char *m1 = "abcdefghijklmnopqrstuvwxyz0123456789";
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    cr_assert_eq(deflateInit2(&zs, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    unsigned char c1[256], c2[256];
    zs.next_in = (Bytef *)(uintptr_t)m1;
    zs.avail_in = (uInt)strlen(m1);
    zs.next_out = c1;
    zs.avail_out = sizeof(c1);
    cr_assert_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
    size_t n1 = sizeof(c1) - zs.avail_out;
    /* the second message: a new stream whose dictionary is m1 */
    cr_assert_eq(deflateReset(&zs), Z_OK);
    cr_assert_eq(deflateSetDictionary(&zs, (const Bytef *)m1, (uInt)strlen(m1)), Z_OK);
    zs.next_in = (Bytef *)(uintptr_t)m1;
    zs.avail_in = (uInt)strlen(m1);
    zs.next_out = c2;
    zs.avail_out = sizeof(c2);
    cr_assert_eq(deflate(&zs, Z_SYNC_FLUSH), Z_OK);
    size_t n2 = sizeof(c2) - zs.avail_out - 4;
    deflateEnd(&zs);
    struct soth_ws_inflate *z = soth_ws_inflate_new(64, 1 << 20);
    soth_ws_inflate_reset(z, 15, true);
    expect_text(inflate_msg(z, c1, n1, 5), m1, 64);
    expect_text(inflate_msg(z, c2, n2, 5), m1, 64);
    soth_ws_inflate_free(z);
}

Test(ws_inflate, small_windows_inflate)
{
    for (int bits = 9; bits <= 15; bits++) {
        struct sender s;
        sender_init(&s, bits, true);
        struct soth_ws_inflate *z = soth_ws_inflate_new(4096, 1 << 20);
        cr_assert_eq(soth_ws_inflate_reset(z, (unsigned)(bits == 9 ? 8 : bits), true), 0);
        char msg[3000];
        for (int k = 0; k < 3; k++) {
            for (size_t i = 0; i < sizeof(msg) - 1; i++)
                msg[i] = (char)('a' + (i * (size_t)(k + 3)) % 23);
            msg[sizeof(msg) - 1] = 0;
            size_t n;
            unsigned char *c = sender_msg(&s, msg, strlen(msg), &n);
            expect_text(inflate_msg(z, c, n, 17), msg, 4096);
            free(c);
        }
        soth_ws_inflate_free(z);
        deflateEnd(&s.zs);
    }
}

/* ---- the frame parser's payload hook */

struct seen {
    char buf[70000];
    size_t len;
    bool compressed;
    int messages;
    size_t at_message; /* payload bytes seen when on_message ran */
};

static void on_payload(void *ctx, bool compressed, const char *p, size_t n)
{
    struct seen *s = ctx;
    cr_assert_leq(s->len + n, sizeof(s->buf));
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->compressed = compressed;
}

static void on_message(void *ctx, const struct soth_ws_msg *m)
{
    struct seen *s = ctx;
    if (m->opcode == SOTH_WS_OP_TEXT || m->opcode == SOTH_WS_OP_BINARY) {
        s->messages++;
        s->at_message = s->len;
    }
}

static size_t frame(unsigned char *out, unsigned b0, const unsigned char *p, size_t n, bool mask)
{
    size_t k = 0;
    out[k++] = (unsigned char)b0;
    unsigned m = mask ? 0x80 : 0;
    if (n < 126) {
        out[k++] = (unsigned char)(m | n);
    } else {
        out[k++] = (unsigned char)(m | 126);
        out[k++] = (unsigned char)(n >> 8);
        out[k++] = (unsigned char)n;
    }
    static const unsigned char key[4] = {0x12, 0x34, 0x56, 0x78};
    if (mask) {
        memcpy(out + k, key, 4);
        k += 4;
    }
    for (size_t i = 0; i < n; i++)
        out[k + i] = mask ? p[i] ^ key[i & 3] : p[i];
    return k + n;
}

Test(ws_payload_hook, every_payload_byte_unmasked_at_any_split)
{
    /* a compressed message in two fragments with a ping between them, masked (client) */
    unsigned char payload[5000];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (unsigned char)(i * 31 + 7);
    unsigned char wire[6000];
    size_t n = frame(wire, 0x41, payload, 3001, true); /* TEXT, RSV1, no FIN */
    n += frame(wire + n, 0x89, (const unsigned char *)"hi", 2, true);
    n += frame(wire + n, 0x80, payload + 3001, sizeof(payload) - 3001, true);
    for (size_t piece = 1; piece < n; piece += piece < 20 ? 1 : 97) {
        struct seen s = {0};
        struct soth_ws_limits lim = {.capture = 16};
        void *mem = malloc(soth_ws_size(&lim));
        struct soth_ws_cbs cbs = {.ctx = &s, .on_message = on_message, .on_payload = on_payload};
        struct soth_ws *w = soth_ws_init(mem, SOTH_LEG_CLIENT, true, &lim, &cbs);
        for (size_t i = 0; i < n; i += piece)
            cr_assert_geq(soth_ws_feed(w, (const char *)wire + i, n - i < piece ? n - i : piece),
                          0);
        cr_assert_eq(s.messages, 1);
        cr_assert_eq(s.len, sizeof(payload), "piece %zu", piece);
        cr_assert_eq(s.at_message, sizeof(payload), "every byte before on_message");
        cr_assert(s.compressed);
        cr_assert_eq(memcmp(s.buf, payload, sizeof(payload)), 0, "piece %zu", piece);
        free(mem);
    }
}

Test(ws_payload_hook, uncompressed_server_message)
{
    unsigned char wire[200];
    size_t n = frame(wire, 0x82, (const unsigned char *)"plain bytes", 11, false);
    struct seen s = {0};
    void *mem = malloc(soth_ws_size(NULL));
    struct soth_ws_cbs cbs = {.ctx = &s, .on_message = on_message, .on_payload = on_payload};
    struct soth_ws *w = soth_ws_init(mem, SOTH_LEG_UPSTREAM, true, NULL, &cbs);
    cr_assert_eq(soth_ws_feed(w, (const char *)wire, n), (ssize_t)n);
    cr_assert_eq(s.len, 11);
    cr_assert(!s.compressed);
    cr_assert_eq(memcmp(s.buf, "plain bytes", 11), 0);
    free(mem);
}
