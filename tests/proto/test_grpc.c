/*
 * proto/grpc.c: the gRPC envelope parser (whole, byte by byte, every split), malformed
 * classification, capture bound, content types.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/grpc.h"
#include "soth/proto/decode.h"

#define MAX_MSGS 64

struct seen {
    size_t n;
    struct {
        uint64_t index;
        bool compressed, truncated;
        uint32_t length;
        size_t data_len;
        char data[256];
    } m[MAX_MSGS];
    ssize_t err; /* first error returned by feed, 0 if none */
    enum soth_grpc_error code;
    int fin; /* soth_grpc_finish */
    bool fin_got;
    uint32_t fin_len;
    size_t fin_data;
};

static void record(struct seen *s, const struct soth_grpc_msg *m)
{
    cr_assert(s->n < MAX_MSGS);
    s->m[s->n].index = m->index;
    s->m[s->n].compressed = m->compressed;
    s->m[s->n].truncated = m->truncated;
    s->m[s->n].length = m->length;
    s->m[s->n].data_len = m->data.len;
    size_t k = m->data.len < 256 ? m->data.len : 256;
    memcpy(s->m[s->n].data, m->data.base, k);
    s->n++;
}

/* Feed `in` cut at the given offsets (sorted, may be empty) and finish. */
static void run_split(const struct soth_grpc_limits *lim, const char *in, size_t len,
                      const size_t *cuts, size_t n_cuts, struct seen *s)
{
    memset(s, 0, sizeof(*s));
    struct soth_grpc *g = soth_grpc_new(lim);
    cr_assert_not_null(g);
    size_t start = 0;
    for (size_t c = 0; c <= n_cuts && s->err == 0; c++) {
        size_t end = c < n_cuts ? cuts[c] : len;
        const char *p = in + start;
        size_t n = end - start;
        size_t guard = 0;
        while (n > 0) {
            cr_assert(guard++ < len + MAX_MSGS + 2, "feed loop did not progress");
            struct soth_grpc_msg m;
            bool got;
            ssize_t k = soth_grpc_feed(g, p, n, &m, &got);
            if (k < 0) {
                s->err = k;
                s->code = soth_grpc_error(g);
                break;
            }
            cr_assert((size_t)k <= n);
            cr_assert(k > 0 || got);
            if (got)
                record(s, &m);
            p += k;
            n -= (size_t)k;
        }
        start = end;
    }
    struct soth_grpc_msg m;
    s->fin = soth_grpc_finish(g, &m, &s->fin_got);
    if (s->fin_got) {
        s->fin_len = m.length;
        s->fin_data = m.data.len;
        cr_assert(m.truncated);
    }
    if (s->fin < 0 && s->err == 0)
        s->code = soth_grpc_error(g);
    soth_grpc_free(g);
}

static void assert_same(const struct seen *a, const struct seen *b)
{
    cr_assert_eq(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        cr_assert_eq(a->m[i].index, b->m[i].index);
        cr_assert_eq(a->m[i].compressed, b->m[i].compressed);
        cr_assert_eq(a->m[i].truncated, b->m[i].truncated);
        cr_assert_eq(a->m[i].length, b->m[i].length);
        cr_assert_eq(a->m[i].data_len, b->m[i].data_len);
        size_t k = a->m[i].data_len < 256 ? a->m[i].data_len : 256;
        cr_assert(memcmp(a->m[i].data, b->m[i].data, k) == 0);
    }
    cr_assert_eq(a->err, b->err);
    cr_assert_eq(a->code, b->code);
    cr_assert_eq(a->fin, b->fin);
    cr_assert_eq(a->fin_got, b->fin_got);
    cr_assert_eq(a->fin_len, b->fin_len);
    cr_assert_eq(a->fin_data, b->fin_data);
}

/* Every single cut, every pair of cuts (for short inputs) and byte by byte agree with whole. */
static void check_splits(const struct soth_grpc_limits *lim, const char *in, size_t len,
                         struct seen *whole)
{
    run_split(lim, in, len, NULL, 0, whole);
    struct seen *s = malloc(sizeof(*s));
    for (size_t c = 0; c <= len; c++) {
        run_split(lim, in, len, &c, 1, s);
        assert_same(whole, s);
    }
    if (len <= 64)
        for (size_t a = 0; a <= len; a++)
            for (size_t b = a; b <= len; b++) {
                size_t cuts[2] = {a, b};
                run_split(lim, in, len, cuts, 2, s);
                assert_same(whole, s);
            }
    size_t *all = malloc(len * sizeof(size_t) + 1);
    for (size_t i = 0; i < len; i++)
        all[i] = i + 1;
    run_split(lim, in, len, all, len, s);
    assert_same(whole, s);
    free(all);
    free(s);
}

static size_t envelope(char *out, uint8_t flag, const char *msg, uint32_t len)
{
    out[0] = (char)flag;
    out[1] = (char)(len >> 24);
    out[2] = (char)(len >> 16);
    out[3] = (char)(len >> 8);
    out[4] = (char)len;
    if (msg != NULL)
        memcpy(out + 5, msg, len);
    return 5 + (size_t)len;
}

Test(grpc, three_messages_any_split)
{
    char in[128];
    size_t n = 0;
    n += envelope(in + n, 0, "hello", 5);
    n += envelope(in + n, 0, NULL, 0);
    n += envelope(in + n, 1, "\x1f\x8b\x08zz", 5);
    struct seen w;
    check_splits(NULL, in, n, &w);
    cr_assert_eq(w.n, 3);
    cr_assert_eq(w.m[0].length, 5);
    cr_assert(memcmp(w.m[0].data, "hello", 5) == 0);
    cr_assert(!w.m[0].compressed && !w.m[0].truncated);
    cr_assert_eq(w.m[1].length, 0);
    cr_assert_eq(w.m[1].data_len, 0);
    cr_assert_eq(w.m[1].index, 1);
    cr_assert(w.m[2].compressed);
    cr_assert_eq(w.m[2].index, 2);
    cr_assert_eq(w.fin, 0);
    cr_assert_eq(w.err, 0);
}

Test(grpc, capture_bound_keeps_prefix)
{
    struct soth_grpc_limits lim = {.capture = 16};
    size_t len = 1000;
    char *in = malloc(5 + len + 5 + 8);
    char *body = malloc(len);
    for (size_t i = 0; i < len; i++)
        body[i] = (char)('a' + i % 26);
    size_t n = envelope(in, 0, body, (uint32_t)len);
    n += envelope(in + n, 0, "12345678", 8);
    struct seen w;
    check_splits(&lim, in, n, &w);
    cr_assert_eq(w.n, 2);
    cr_assert_eq(w.m[0].length, 1000);
    cr_assert_eq(w.m[0].data_len, 16);
    cr_assert(w.m[0].truncated);
    cr_assert(memcmp(w.m[0].data, body, 16) == 0);
    cr_assert_eq(w.m[1].data_len, 8);
    cr_assert(!w.m[1].truncated);
    free(in);
    free(body);
}

Test(grpc, message_larger_than_a_data_frame)
{
    /* 40 KiB across 16 KiB DATA frames: the capture (default 4096) is the prefix. */
    size_t len = 40 << 10;
    char *in = malloc(len + 5);
    char *body = in + 5;
    for (size_t i = 0; i < len; i++)
        body[i] = (char)(i * 7);
    envelope(in, 0, NULL, (uint32_t)len);
    struct seen w;
    run_split(NULL, in, len + 5, (size_t[]){16384, 32768}, 2, &w);
    cr_assert_eq(w.n, 1);
    cr_assert_eq(w.m[0].length, len);
    cr_assert_eq(w.m[0].data_len, 4096);
    cr_assert(w.m[0].truncated);
    free(in);
}

Test(grpc, bad_flag)
{
    char in[32];
    size_t n = envelope(in, 0, "ok", 2);
    n += envelope(in + n, 2, "xx", 2);
    struct seen w;
    check_splits(NULL, in, n, &w);
    cr_assert_eq(w.n, 1);
    cr_assert_eq(w.err, SOTH_E_MALFORMED);
    cr_assert_eq(w.code, SOTH_GRPC_BAD_FLAG);
    cr_assert_str_eq(soth_grpc_error_name(w.code), "bad_flag");
    cr_assert_eq(w.fin, SOTH_E_MALFORMED);
}

Test(grpc, flag_judged_on_first_byte)
{
    struct soth_grpc *g = soth_grpc_new(NULL);
    struct soth_grpc_msg m;
    bool got;
    cr_assert_eq(soth_grpc_feed(g, "\x80", 1, &m, &got), SOTH_E_MALFORMED);
    cr_assert_eq(soth_grpc_feed(g, "\x00", 1, &m, &got), SOTH_E_STATE);
    soth_grpc_free(g);
}

Test(grpc, length_over_limit)
{
    struct soth_grpc_limits lim = {.max_message = 100};
    char in[16];
    envelope(in, 0, NULL, 101);
    struct seen w;
    check_splits(&lim, in, 5, &w);
    cr_assert_eq(w.err, SOTH_E_TOO_LARGE);
    cr_assert_eq(w.code, SOTH_GRPC_TOO_LARGE);
    cr_assert_str_eq(soth_grpc_error_name(w.code), "length_over_limit");
    /* exactly at the limit is fine */
    char ok[128];
    size_t n = envelope(ok, 0, NULL, 100);
    memset(ok + 5, 'x', 100);
    check_splits(&lim, ok, n, &w);
    cr_assert_eq(w.err, 0);
    cr_assert_eq(w.n, 1);
}

Test(grpc, default_limit_is_4mib)
{
    char in[5];
    envelope(in, 0, NULL, (4u << 20) + 1);
    struct seen w;
    run_split(NULL, in, 5, NULL, 0, &w);
    cr_assert_eq(w.code, SOTH_GRPC_TOO_LARGE);
}

Test(grpc, truncated_in_header)
{
    char in[16];
    size_t n = envelope(in, 0, "abc", 3);
    n += 3; /* 3 header bytes of a second envelope */
    in[5 + 3] = 0;
    in[5 + 4] = 0;
    in[5 + 5] = 0;
    struct seen w;
    check_splits(NULL, in, n, &w);
    cr_assert_eq(w.n, 1);
    cr_assert_eq(w.fin, SOTH_E_MALFORMED);
    cr_assert_eq(w.code, SOTH_GRPC_TRUNCATED);
    cr_assert(!w.fin_got);
}

Test(grpc, truncated_in_body)
{
    char in[32];
    envelope(in, 1, "abcdefghij", 10);
    struct seen w;
    check_splits(NULL, in, 5 + 4, &w);
    cr_assert_eq(w.n, 0);
    cr_assert_eq(w.fin, SOTH_E_MALFORMED);
    cr_assert_eq(w.code, SOTH_GRPC_TRUNCATED);
    cr_assert(w.fin_got);
    cr_assert_eq(w.fin_len, 10);
    cr_assert_eq(w.fin_data, 4);
    cr_assert_str_eq(soth_grpc_error_name(SOTH_GRPC_TRUNCATED), "truncated");
}

Test(grpc, empty_stream_finishes_clean)
{
    struct seen w;
    run_split(NULL, "", 0, NULL, 0, &w);
    cr_assert_eq(w.fin, 0);
    cr_assert_eq(w.n, 0);
}

Test(grpc, feed_after_finish_is_state_error)
{
    struct soth_grpc *g = soth_grpc_new(NULL);
    struct soth_grpc_msg m;
    bool got;
    cr_assert_eq(soth_grpc_finish(g, &m, &got), 0);
    cr_assert_eq(soth_grpc_feed(g, "\0", 1, &m, &got), SOTH_E_STATE);
    cr_assert_eq(soth_grpc_messages(g), 0);
    soth_grpc_free(g);
    soth_grpc_free(NULL);
}

Test(grpc, many_small_messages_count)
{
    char *in = malloc(6 * 1000);
    size_t n = 0;
    for (int i = 0; i < 1000; i++)
        n += envelope(in + n, 0, "x", 1);
    struct soth_grpc *g = soth_grpc_new(NULL);
    const char *p = in;
    size_t left = n, msgs = 0;
    while (left > 0) {
        struct soth_grpc_msg m;
        bool got;
        ssize_t k = soth_grpc_feed(g, p, left, &m, &got);
        cr_assert(k > 0);
        msgs += got;
        p += k;
        left -= (size_t)k;
    }
    cr_assert_eq(msgs, 1000);
    cr_assert_eq(soth_grpc_messages(g), 1000);
    soth_grpc_free(g);
    free(in);
}

static bool ct(const char *s, enum soth_payload_format *f)
{
    return soth_grpc_content_type(soth_iov(s, strlen(s)), f);
}

Test(grpc, content_types)
{
    enum soth_payload_format f;
    cr_assert(ct("application/grpc", &f));
    cr_assert_eq(f, SOTH_FMT_PROTO);
    cr_assert(ct("application/grpc+proto", &f));
    cr_assert_eq(f, SOTH_FMT_PROTO);
    cr_assert(ct("Application/GRPC+JSON", &f));
    cr_assert_eq(f, SOTH_FMT_JSON);
    cr_assert(ct("application/grpc+msgpack", &f));
    cr_assert_eq(f, SOTH_FMT_MSGPACK);
    cr_assert(ct(" application/grpc+thrift ; charset=utf-8", &f));
    cr_assert_eq(f, SOTH_FMT_UNKNOWN);
    cr_assert(ct("application/grpc; x=1", &f));
    cr_assert_eq(f, SOTH_FMT_PROTO);
    cr_assert(!ct("application/grpc-web", &f));
    cr_assert(!ct("application/grpc-web+proto", &f));
    cr_assert(!ct("application/grpc+", &f));
    cr_assert(!ct("application/json", &f));
    cr_assert(!ct("", NULL));
    cr_assert(!ct("application/grp", NULL));
}

Test(grpc, payload_content_types)
{
#define FMT(s) soth_payload_format_of(SOTH_IOV_LIT(s))
    cr_assert_eq(FMT("application/json"), SOTH_FMT_JSON);
    cr_assert_eq(FMT("application/json; charset=utf-8"), SOTH_FMT_JSON);
    cr_assert_eq(FMT("application/vnd.api+json"), SOTH_FMT_JSON);
    cr_assert_eq(FMT("text/json"), SOTH_FMT_JSON);
    cr_assert_eq(FMT("application/msgpack"), SOTH_FMT_MSGPACK);
    cr_assert_eq(FMT("application/x-msgpack"), SOTH_FMT_MSGPACK);
    cr_assert_eq(FMT("application/vnd.msgpack"), SOTH_FMT_MSGPACK);
    cr_assert_eq(FMT("text/javascript"), SOTH_FMT_UNKNOWN);
    cr_assert_eq(FMT("text/html"), SOTH_FMT_NONE);
    cr_assert_eq(FMT(""), SOTH_FMT_NONE);
#undef FMT
}
