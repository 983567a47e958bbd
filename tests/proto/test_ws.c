/*
 * WebSocket frame parser and turn aggregator (proto/ws.c): frames built here (masked client,
 * unmasked server), every feature and error fed whole, byte by byte, split in two at every
 * offset and in random pieces, with identical traces required.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/ws.h"

#define CLIENT SOTH_LEG_CLIENT
#define SERVER SOTH_LEG_UPSTREAM

/* ---- frame builder */

struct wbuf {
    unsigned char *p;
    size_t len, cap;
};

static void wb_put(struct wbuf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        cr_assert_not_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* One frame: b0 = FIN|RSV|opcode as given; masked with key when mask != 0. len7 forced when
 * force_len7 >= 0 (to build bad headers). */
static void frame_x(struct wbuf *b, unsigned b0, bool mask, const void *payload, uint64_t n,
                    int force_len7)
{
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)b0;
    unsigned char m = mask ? 0x80 : 0;
    if (force_len7 >= 0) {
        h[hl++] = (unsigned char)(m | force_len7);
        if (force_len7 == 126) {
            h[hl++] = (unsigned char)(n >> 8);
            h[hl++] = (unsigned char)n;
        } else if (force_len7 == 127) {
            for (int i = 7; i >= 0; i--)
                h[hl++] = (unsigned char)(n >> (8 * i));
        }
    } else if (n < 126) {
        h[hl++] = (unsigned char)(m | n);
    } else if (n <= 0xffff) {
        h[hl++] = m | 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = m | 127;
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)(n >> (8 * i));
    }
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    if (mask) {
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    wb_put(b, h, hl);
    const unsigned char *pl = payload;
    if (n > (1u << 24))
        return; /* a header announcing more than the tests ever send */
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = pl ? pl[i] : (unsigned char)(i * 7 + 1);
        if (mask)
            c ^= key[i & 3];
        wb_put(b, &c, 1);
    }
}

static void frame(struct wbuf *b, unsigned b0, bool mask, const char *s)
{
    frame_x(b, b0, mask, s, strlen(s), -1);
}

/* ---- trace of callbacks */

struct trace {
    char s[1 << 16];
    size_t len;
    unsigned n;
};

static void tr_add(struct trace *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tr_add(struct trace *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->len, sizeof(t->s) - t->len, fmt, ap);
    va_end(ap);
    cr_assert(n >= 0 && (size_t)n < sizeof(t->s) - t->len, "trace overflow");
    t->len += (size_t)n;
}

static void on_msg(void *ctx, const struct soth_ws_msg *m)
{
    struct trace *t = ctx;
    t->n++;
    tr_add(t, "[%d op%u len%llu f%u%s%s code%d ", (int)m->dir, m->opcode,
           (unsigned long long)m->len, m->frames, m->truncated ? " T" : "",
           m->compressed ? " Z" : "", m->close_code);
    cr_assert_leq(m->data.len, m->len);
    cr_assert_eq(m->truncated, m->data.len < m->len);
    for (size_t i = 0; i < m->data.len; i++)
        tr_add(t, "%02x", (unsigned char)m->data.base[i]);
    tr_add(t, " r=");
    for (size_t i = 0; i < m->close_reason.len; i++)
        tr_add(t, "%c", m->close_reason.base[i]);
    tr_add(t, "]");
}

struct run {
    struct trace t;
    ssize_t rc;
    enum soth_ws_error err;
    uint64_t err_off;
    bool in_frame;
};

static struct run R1, R2;

/* Feed `in` in pieces given by cut points (NULL: whole); stop at the first error. */
static void run_ws(struct run *r, enum soth_leg dir, bool deflate, const struct soth_ws_limits *lim,
                   const unsigned char *in, size_t n, const size_t *cuts, size_t n_cuts)
{
    memset(r, 0, sizeof(*r));
    void *mem = malloc(soth_ws_size(lim));
    cr_assert_not_null(mem);
    struct soth_ws_cbs cbs = {.ctx = &r->t, .on_message = on_msg};
    struct soth_ws *w = soth_ws_init(mem, dir, deflate, lim, &cbs);
    size_t pos = 0;
    r->rc = 0;
    for (size_t k = 0; k <= n_cuts; k++) {
        size_t end = k < n_cuts ? cuts[k] : n;
        if (end < pos)
            end = pos;
        ssize_t rc = soth_ws_feed(w, (const char *)in + pos, end - pos);
        if (rc < 0) {
            r->rc = rc;
            break;
        }
        cr_assert_eq((size_t)rc, end - pos);
        pos = end;
    }
    r->err = soth_ws_error(w);
    r->err_off = soth_ws_error_offset(w);
    r->in_frame = soth_ws_in_frame(w);
    if (r->rc < 0) /* sticky */
        cr_assert_eq(soth_ws_feed(w, "\x81\x00", 2), r->rc);
    free(mem);
}

static void same(const struct run *a, const struct run *b, const char *what)
{
    cr_assert_eq(a->rc, b->rc, "%s: rc %zd vs %zd", what, a->rc, b->rc);
    cr_assert_eq(a->err, b->err, "%s: err", what);
    if (a->rc < 0)
        cr_assert_eq(a->err_off, b->err_off, "%s: err offset", what);
    cr_assert_eq(a->t.len, b->t.len, "%s: trace\n%s\nvs\n%s", what, a->t.s, b->t.s);
    cr_assert(memcmp(a->t.s, b->t.s, a->t.len) == 0, "%s: trace\n%s\nvs\n%s", what, a->t.s, b->t.s);
}

/* Whole, byte by byte, every split in two (inputs up to 4 KiB) and random pieces: same result
 * as whole, which is left in R1. */
static void check_splits(enum soth_leg dir, bool deflate, const struct soth_ws_limits *lim,
                         const struct wbuf *b)
{
    run_ws(&R1, dir, deflate, lim, b->p, b->len, NULL, 0);
    size_t *cuts = calloc(b->len + 1, sizeof(size_t));
    cr_assert_not_null(cuts);
    for (size_t i = 0; i < b->len; i++)
        cuts[i] = i;
    run_ws(&R2, dir, deflate, lim, b->p, b->len, cuts, b->len);
    same(&R1, &R2, "byte by byte");
    if (b->len <= 4096) {
        for (size_t i = 0; i <= b->len; i++) {
            run_ws(&R2, dir, deflate, lim, b->p, b->len, &i, 1);
            same(&R1, &R2, "split in two");
        }
    }
    srand(7);
    for (int round = 0; round < 20; round++) {
        size_t nc = 0, at = 0;
        while (at < b->len && nc < b->len) {
            at += (size_t)(rand() % 300);
            cuts[nc++] = at < b->len ? at : b->len;
        }
        run_ws(&R2, dir, deflate, lim, b->p, b->len, cuts, nc);
        same(&R1, &R2, "random pieces");
    }
    free(cuts);
}

static bool has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* ---- frames and messages */

Test(ws, server_text_unmasked)
{
    struct wbuf b = {0};
    frame(&b, 0x81, false, "Hi");
    check_splits(SERVER, false, NULL, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert_str_eq(R1.t.s, "[1 op1 len2 f1 code-1 4869 r=]");
    cr_assert(!R1.in_frame);
    free(b.p);
}

Test(ws, client_masked_unmasks)
{
    struct wbuf b = {0};
    frame(&b, 0x81, true, "Hello");
    frame(&b, 0x82, true, "\x01\x02\x03");
    check_splits(CLIENT, false, NULL, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert_str_eq(R1.t.s,
                     "[0 op1 len5 f1 code-1 48656c6c6f r=][0 op2 len3 f1 code-1 010203 r=]");
    free(b.p);
}

Test(ws, lengths_7_16_64)
{
    struct wbuf b = {0};
    frame_x(&b, 0x82, true, NULL, 125, -1);
    frame_x(&b, 0x82, true, NULL, 126, -1);
    frame_x(&b, 0x82, true, NULL, 65535, -1);
    frame_x(&b, 0x82, true, NULL, 65536, -1);
    frame_x(&b, 0x82, true, NULL, 3, 127); /* non-minimal 64-bit length: accepted */
    struct soth_ws_limits lim = {.capture = 4};
    check_splits(CLIENT, false, &lim, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert(has(R1.t.s, "[0 op2 len125 f1 T code-1 01080f16 r=]"), "%s", R1.t.s);
    cr_assert(has(R1.t.s, "[0 op2 len126 f1 T"), "%s", R1.t.s);
    cr_assert(has(R1.t.s, "[0 op2 len65535 f1 T"), "%s", R1.t.s);
    cr_assert(has(R1.t.s, "[0 op2 len65536 f1 T"), "%s", R1.t.s);
    cr_assert(has(R1.t.s, "[0 op2 len3 f1 code-1 01080f r=]"), "%s", R1.t.s);
    cr_assert_eq(R1.t.n, 5);
    free(b.p);
}

Test(ws, big_message_one_mib_capture_bounded)
{
    struct wbuf b = {0};
    frame_x(&b, 0x82, true, NULL, 1 << 20, -1);
    check_splits(CLIENT, false, NULL, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert(has(R1.t.s, "[0 op2 len1048576 f1 T code-1 "), "%.80s", R1.t.s);
    /* 4096 captured bytes, two hex digits each */
    const char *d = strstr(R1.t.s, "code-1 ") + 7;
    cr_assert_eq(strchr(d, ' ') - d, 8192);
    free(b.p);
}

Test(ws, capture_zero_and_exact)
{
    struct wbuf b = {0};
    frame(&b, 0x81, false, "abcd");
    struct soth_ws_limits lim0 = {.capture = 0};
    check_splits(SERVER, false, &lim0, &b);
    cr_assert_str_eq(R1.t.s, "[1 op1 len4 f1 T code-1  r=]");
    struct soth_ws_limits lim4 = {.capture = 4};
    check_splits(SERVER, false, &lim4, &b);
    cr_assert_str_eq(R1.t.s, "[1 op1 len4 f1 code-1 61626364 r=]");
    free(b.p);
}

Test(ws, fragmented_with_interleaved_controls)
{
    struct wbuf b = {0};
    frame(&b, 0x01, true, "Hel");   /* text, no FIN */
    frame(&b, 0x89, true, "p1");    /* ping inside */
    frame(&b, 0x00, true, "lo, ");  /* continuation */
    frame(&b, 0x8a, true, "");      /* pong inside */
    frame(&b, 0x00, true, "");      /* empty continuation */
    frame(&b, 0x80, true, "world"); /* final continuation */
    frame(&b, 0x82, true, "x");
    check_splits(CLIENT, false, NULL, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert_str_eq(R1.t.s, "[0 op9 len2 f1 code-1 7031 r=]"
                             "[0 op10 len0 f1 code-1  r=]"
                             "[0 op1 len12 f4 code-1 48656c6c6f2c20776f726c64 r=]"
                             "[0 op2 len1 f1 code-1 78 r=]");
    free(b.p);
}

Test(ws, fragmented_capture_spans_frames)
{
    struct wbuf b = {0};
    frame(&b, 0x02, false, "ab");
    frame(&b, 0x00, false, "cd");
    frame(&b, 0x80, false, "ef");
    struct soth_ws_limits lim = {.capture = 3};
    check_splits(SERVER, false, &lim, &b);
    cr_assert_str_eq(R1.t.s, "[1 op2 len6 f3 T code-1 616263 r=]");
    cr_assert(!R1.in_frame);
    free(b.p);
}

Test(ws, in_frame_when_cut)
{
    struct wbuf b = {0};
    frame(&b, 0x01, false, "ab");
    check_splits(SERVER, false, NULL, &b);
    cr_assert(R1.in_frame);
    cr_assert_eq(R1.t.n, 0);
    free(b.p);
}

Test(ws, close_codes)
{
    struct wbuf b = {0};
    frame(&b, 0x88, false,
          "\x03\xe8"
          "bye");
    check_splits(SERVER, false, NULL, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert_str_eq(R1.t.s, "[1 op8 len5 f1 code1000 03e8627965 r=bye]");
    free(b.p);

    b = (struct wbuf){0};
    frame(&b, 0x88, true, "");
    check_splits(CLIENT, false, NULL, &b);
    cr_assert_str_eq(R1.t.s, "[0 op8 len0 f1 code-1  r=]");
    free(b.p);

    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999};
    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(ok); i++) {
        b = (struct wbuf){0};
        unsigned char pl[2] = {(unsigned char)(ok[i] >> 8), (unsigned char)ok[i]};
        frame_x(&b, 0x88, false, pl, 2, -1);
        check_splits(SERVER, false, NULL, &b);
        cr_assert_eq(R1.rc, 0, "code %u", ok[i]);
        free(b.p);
    }
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bad); i++) {
        b = (struct wbuf){0};
        unsigned char pl[2] = {(unsigned char)(bad[i] >> 8), (unsigned char)bad[i]};
        frame_x(&b, 0x88, false, pl, 2, -1);
        check_splits(SERVER, false, NULL, &b);
        cr_assert_eq(R1.rc, SOTH_E_MALFORMED, "code %u", bad[i]);
        cr_assert_eq(R1.err, SOTH_WS_E_BAD_CLOSE);
        cr_assert_eq(R1.t.n, 0);
        free(b.p);
    }
    b = (struct wbuf){0};
    frame(&b, 0x88, false, "\x03");
    check_splits(SERVER, false, NULL, &b);
    cr_assert_eq(R1.err, SOTH_WS_E_BAD_CLOSE);
    free(b.p);
}

Test(ws, frame_after_close)
{
    struct wbuf b = {0};
    frame(&b, 0x81, false, "a");
    frame(&b, 0x88, false, "\x03\xe8");
    size_t off = b.len;
    frame(&b, 0x8a, false, "");
    check_splits(SERVER, false, NULL, &b);
    cr_assert_eq(R1.rc, SOTH_E_MALFORMED);
    cr_assert_eq(R1.err, SOTH_WS_E_AFTER_CLOSE);
    cr_assert_eq(R1.err_off, off);
    cr_assert_eq(R1.t.n, 2); /* text and close were reported */
    free(b.p);
}

Test(ws, rsv1_with_deflate_is_compressed)
{
    struct wbuf b = {0};
    frame_x(&b, 0xc1, true, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7, -1); /* RSV1 text */
    frame(&b, 0x42, true, "zz");                                    /* RSV1 binary, fragmented */
    frame(&b, 0x89, true, "");                                      /* ping in between: no RSV1 */
    frame(&b, 0x80, true, "yy");
    frame(&b, 0x81, true, "plain");
    check_splits(CLIENT, true, NULL, &b);
    cr_assert_eq(R1.rc, 0, "%s", soth_ws_error_name(R1.err));
    cr_assert_str_eq(R1.t.s, "[0 op1 len7 f1 Z code-1 f248cdc9c90700 r=]"
                             "[0 op9 len0 f1 code-1  r=]"
                             "[0 op2 len4 f2 Z code-1 7a7a7979 r=]"
                             "[0 op1 len5 f1 code-1 706c61696e r=]");
    free(b.p);
}

/* One bad frame after a good one: the good message is reported, then the error. */
static void expect_error(enum soth_leg dir, bool deflate, const struct soth_ws_limits *lim,
                         struct wbuf *b, size_t bad_off, enum soth_ws_error e, ssize_t rc)
{
    check_splits(dir, deflate, lim, b);
    cr_assert_eq(R1.rc, rc, "%s", soth_ws_error_name(R1.err));
    cr_assert_eq(R1.err, e, "got %s, want %s", soth_ws_error_name(R1.err), soth_ws_error_name(e));
    cr_assert_eq(R1.err_off, bad_off);
    free(b->p);
    *b = (struct wbuf){0};
}

Test(ws, errors)
{
    struct wbuf b = {0};
    size_t o;
#define GOOD(dir) frame(&b, 0x81, (dir) == CLIENT, "ok")
    GOOD(CLIENT);
    o = b.len;
    frame(&b, 0x81, false, "x");
    expect_error(CLIENT, false, NULL, &b, o, SOTH_WS_E_UNMASKED, SOTH_E_MALFORMED);
    cr_assert_eq(R1.t.n, 1);

    GOOD(SERVER);
    o = b.len;
    frame(&b, 0x81, true, "x");
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_MASKED, SOTH_E_MALFORMED);

    GOOD(SERVER);
    o = b.len;
    frame(&b, 0xc1, false, "x"); /* RSV1 without deflate */
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_RSV, SOTH_E_MALFORMED);

    o = b.len;
    frame(&b, 0xa1, false, "x"); /* RSV2 */
    expect_error(SERVER, true, NULL, &b, o, SOTH_WS_E_RSV, SOTH_E_MALFORMED);

    o = b.len;
    frame(&b, 0x91, false, "x"); /* RSV3 */
    expect_error(SERVER, true, NULL, &b, o, SOTH_WS_E_RSV, SOTH_E_MALFORMED);

    frame(&b, 0x01, false, "x");
    o = b.len;
    frame(&b, 0xc0, false, "x"); /* RSV1 on a continuation */
    expect_error(SERVER, true, NULL, &b, o, SOTH_WS_E_RSV, SOTH_E_MALFORMED);

    o = b.len;
    frame(&b, 0xc9, false, ""); /* RSV1 on a ping */
    expect_error(SERVER, true, NULL, &b, o, SOTH_WS_E_RSV, SOTH_E_MALFORMED);

    static const unsigned bad_ops[] = {3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bad_ops); i++) {
        GOOD(SERVER);
        o = b.len;
        frame(&b, 0x80 | bad_ops[i], false, "");
        expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_OPCODE, SOTH_E_MALFORMED);
    }

    o = b.len;
    frame_x(&b, 0x89, false, NULL, 126, -1);
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_CONTROL_TOO_LONG, SOTH_E_MALFORMED);

    o = b.len;
    frame(&b, 0x09, false, ""); /* ping without FIN */
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_CONTROL_FRAGMENTED, SOTH_E_MALFORMED);

    GOOD(SERVER);
    o = b.len;
    frame(&b, 0x80, false, "x");
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_UNEXPECTED_CONT, SOTH_E_MALFORMED);

    frame(&b, 0x01, false, "x");
    o = b.len;
    frame(&b, 0x81, false, "y");
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_EXPECTED_CONT, SOTH_E_MALFORMED);

    o = b.len;
    frame_x(&b, 0x82, false, NULL, 1ull << 63, 127);
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_BAD_LENGTH, SOTH_E_MALFORMED);

    struct soth_ws_limits lim = {.max_message = 100, .capture = 16};
    frame_x(&b, 0x82, false, NULL, 100, -1); /* at the limit: fine */
    frame_x(&b, 0x02, false, NULL, 60, -1);
    o = b.len;
    frame_x(&b, 0x80, false, NULL, 41, -1); /* the message crosses it */
    expect_error(SERVER, false, &lim, &b, o, SOTH_WS_E_TOO_LARGE, SOTH_E_TOO_LARGE);
    cr_assert_eq(R1.t.n, 1);

    o = b.len;
    frame_x(&b, 0x82, false, NULL, 1ull << 40, 127); /* header alone says too large */
    expect_error(SERVER, false, NULL, &b, o, SOTH_WS_E_TOO_LARGE, SOTH_E_TOO_LARGE);
#undef GOOD
}

Test(ws, error_names)
{
    cr_assert_str_eq(soth_ws_error_name(SOTH_WS_OK), "ok");
    cr_assert_str_eq(soth_ws_error_name(SOTH_WS_E_UNMASKED), "unmasked_client_frame");
    cr_assert_str_eq(soth_ws_error_name(SOTH_WS_E_AFTER_CLOSE), "frame_after_close");
    cr_assert_str_eq(soth_ws_error_name(SOTH_WS_ERROR_COUNT), "unknown");
    for (int e = 0; e < SOTH_WS_ERROR_COUNT; e++)
        cr_assert_neq(strcmp(soth_ws_error_name((enum soth_ws_error)e), "unknown"), 0);
}

Test(ws, mixed_stream_split_invariance)
{
    struct wbuf b = {0};
    for (int i = 0; i < 6; i++) {
        frame(&b, 0x01, true, "part-one ");
        frame(&b, 0x89, true, "ping");
        frame_x(&b, 0x00, true, NULL, 300, -1);
        frame_x(&b, 0x80, true, NULL, (uint64_t)(i * 17), -1);
        frame_x(&b, 0x82, true, NULL, 70, -1);
        frame(&b, 0x8a, true, "");
    }
    frame(&b, 0x88, true, "\x0f\xa0reason");
    struct soth_ws_limits lim = {.capture = 13};
    check_splits(CLIENT, false, &lim, &b);
    cr_assert_eq(R1.rc, 0);
    cr_assert_eq(R1.t.n, 6 * 4 + 1);
    cr_assert(has(R1.t.s, "code4000 0fa0726561736f6e r=reason]"), "%s", R1.t.s);
    free(b.p);
}

/* ---- turns */

struct tt {
    char s[4096];
    size_t len;
};

static void tt_add(struct tt *t, const char *s)
{
    size_t n = strlen(s);
    cr_assert_lt(t->len + n, sizeof(t->s));
    memcpy(t->s + t->len, s, n + 1);
    t->len += n;
}

static void on_start(void *ctx, const struct soth_ws_turn *t)
{
    char b[128];
    snprintf(b, sizeof(b), "S%llu:%d@%llu ", (unsigned long long)t->id, (int)t->initiator,
             (unsigned long long)t->started_ns);
    tt_add(ctx, b);
}

static void on_end(void *ctx, const struct soth_ws_turn *t)
{
    static const char *const why[] = {"dir", "close", "error", "idle"};
    char b[160];
    snprintf(b, sizeof(b), "E%llu:%d c%llu/%llu s%llu/%llu %llu-%llu %s ",
             (unsigned long long)t->id, (int)t->initiator, (unsigned long long)t->frames[0],
             (unsigned long long)t->bytes[0], (unsigned long long)t->frames[1],
             (unsigned long long)t->bytes[1], (unsigned long long)t->started_ns,
             (unsigned long long)t->ended_ns, why[t->reason]);
    tt_add(ctx, b);
}

static struct soth_ws_turns T;
static struct tt TT;

static void turns(uint64_t idle)
{
    TT.len = 0;
    TT.s[0] = 0;
    struct soth_ws_turn_cbs cbs = {.ctx = &TT, .on_start = on_start, .on_end = on_end};
    soth_ws_turns_init(&T, idle, &cbs);
}

static void msg(int dir, unsigned op, uint64_t len, uint32_t frames, uint64_t now)
{
    struct soth_ws_msg m = {
        .dir = soth_leg_of(dir), .opcode = op, .len = len, .frames = frames, .close_code = -1};
    soth_ws_turns_message(&T, &m, now);
}

Test(ws_turns, client_initiated)
{
    turns(0);
    msg(CLIENT, 1, 5, 1, 10); /* prompt */
    msg(SERVER, 1, 3, 1, 20); /* answer, streamed */
    msg(SERVER, 1, 4, 2, 30);
    msg(CLIENT, 1, 6, 1, 40); /* next prompt: direction change back */
    msg(SERVER, 2, 7, 1, 50);
    msg(CLIENT, 8, 2, 1, 60); /* close */
    msg(SERVER, 8, 2, 1, 70); /* close echo: no new turn */
    msg(CLIENT, 1, 1, 1, 80);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 90);
    cr_assert_str_eq(TT.s, "S1:0@10 E1:0 c1/5 s3/7 10-40 dir "
                           "S2:0@40 E2:0 c2/8 s1/7 40-60 close ");
}

Test(ws_turns, client_sends_several_before_answer)
{
    turns(0);
    msg(CLIENT, 1, 1, 1, 1);
    msg(CLIENT, 2, 1, 1, 2);
    msg(SERVER, 1, 1, 1, 3);
    msg(CLIENT, 1, 1, 1, 4);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 5);
    cr_assert_str_eq(TT.s, "S1:0@1 E1:0 c2/2 s1/1 1-4 dir S2:0@4 E2:0 c1/1 s0/0 4-5 close ");
}

Test(ws_turns, server_initiated)
{
    turns(0);
    msg(SERVER, 1, 9, 1, 100); /* push */
    msg(CLIENT, 1, 2, 1, 110); /* ack */
    msg(SERVER, 1, 9, 1, 120); /* next push */
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 130);
    cr_assert_str_eq(TT.s, "S1:1@100 E1:1 c1/2 s1/9 100-120 dir "
                           "S2:1@120 E2:1 c0/0 s1/9 120-130 close ");
}

Test(ws_turns, ping_pong_never_split)
{
    turns(0);
    msg(SERVER, 9, 0, 1, 1); /* ping before any turn: not counted */
    msg(CLIENT, 1, 4, 1, 2);
    msg(SERVER, 9, 1, 1, 3); /* ping from the other side: counted, no direction change */
    msg(CLIENT, 10, 1, 1, 4);
    msg(CLIENT, 1, 4, 1, 5); /* still the initiator's part */
    msg(SERVER, 1, 4, 1, 6);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 7);
    cr_assert_str_eq(TT.s, "S1:0@2 E1:0 c3/9 s2/5 2-7 close ");
}

Test(ws_turns, idle_gap)
{
    turns(1000);
    msg(CLIENT, 1, 1, 1, 0);
    msg(SERVER, 1, 1, 1, 500);
    msg(SERVER, 1, 1, 1, 1600); /* 1100 after the last one: idle ends turn 1 */
    cr_assert(!soth_ws_turns_tick(&T, 2599));
    cr_assert(soth_ws_turns_tick(&T, 2600));
    cr_assert(!soth_ws_turns_tick(&T, 9000)); /* nothing open */
    msg(CLIENT, 1, 1, 1, 9000);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_ERROR, 9100);
    msg(CLIENT, 1, 1, 1, 9200); /* after the end: nothing */
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 9300);
    cr_assert_str_eq(TT.s, "S1:0@0 E1:0 c1/1 s1/1 0-500 idle "
                           "S2:1@1600 E2:1 c0/0 s1/1 1600-1600 idle "
                           "S3:0@9000 E3:0 c1/1 s0/0 9000-9100 error ");
}

Test(ws_turns, close_without_turn_and_end_without_turn)
{
    turns(0);
    msg(CLIENT, 8, 0, 1, 1);
    msg(SERVER, 1, 1, 1, 2);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 3);
    cr_assert_str_eq(TT.s, "");
    turns(0);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 3);
    cr_assert_str_eq(TT.s, "");
}

/* Parser and aggregator together, as the proxy runs them: two directions, one trace. */
struct duo {
    struct soth_ws_turns *t;
    uint64_t now;
};

static void duo_msg(void *ctx, const struct soth_ws_msg *m)
{
    struct duo *d = ctx;
    soth_ws_turns_message(d->t, m, d->now);
}

Test(ws_turns, with_parsers)
{
    turns(0);
    struct duo d = {.t = &T};
    struct soth_ws_cbs cbs = {.ctx = &d, .on_message = duo_msg};
    void *mc = malloc(soth_ws_size(NULL)), *ms = malloc(soth_ws_size(NULL));
    struct soth_ws *wc = soth_ws_init(mc, CLIENT, false, NULL, &cbs);
    struct soth_ws *ws = soth_ws_init(ms, SERVER, false, NULL, &cbs);
    struct wbuf c = {0}, s = {0};
    frame(&c, 0x81, true, "hello");
    frame(&s, 0x01, false, "hel");
    frame(&s, 0x80, false, "lo");
    d.now = 1;
    cr_assert_eq(soth_ws_feed(wc, (const char *)c.p, c.len), (ssize_t)c.len);
    d.now = 2;
    cr_assert_eq(soth_ws_feed(ws, (const char *)s.p, s.len), (ssize_t)s.len);
    soth_ws_turns_end(&T, SOTH_WS_FLUSH_CLOSE, 3);
    cr_assert_str_eq(TT.s, "S1:0@1 E1:0 c1/5 s2/5 1-3 close ");
    free(c.p);
    free(s.p);
    free(mc);
    free(ms);
}
