/*
 * text/event-stream parser (proto/sse.c): the WHATWG interpretation rules, line ends, BOM,
 * bounds and the end-of-stream rule; every input fed whole, byte by byte, split in two at
 * every offset and in random pieces, with identical traces required.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/sse.h"

struct trace {
    char s[1 << 17];
    size_t len;
    unsigned n;
};

static void tr_put(struct trace *t, const char *p, size_t n)
{
    cr_assert_lt(t->len + n, sizeof(t->s), "trace overflow");
    memcpy(t->s + t->len, p, n);
    t->len += n;
    t->s[t->len] = 0;
}

static void on_event(void *ctx, const struct soth_sse_event *e)
{
    struct trace *t = ctx;
    char b[128];
    t->n++;
    tr_put(t, "[", 1);
    tr_put(t, e->event.base, e->event.len);
    tr_put(t, "|", 1);
    tr_put(t, e->id.base, e->id.len);
    snprintf(b, sizeof(b), "|%lld|%llu%s|", (long long)e->retry, (unsigned long long)e->data_len,
             e->truncated ? "T" : "");
    tr_put(t, b, strlen(b));
    tr_put(t, e->data.base, e->data.len);
    tr_put(t, "]", 1);
    cr_assert_leq(e->data.len, e->data_len);
}

struct run {
    struct trace t;
    bool pending;
    uint64_t events, truncated;
};

static struct run R1, R2;

static void run_sse(struct run *r, const struct soth_sse_limits *lim, const char *in, size_t n,
                    const size_t *cuts, size_t n_cuts)
{
    memset(r, 0, sizeof(*r));
    void *mem = malloc(soth_sse_size(lim));
    cr_assert_not_null(mem);
    struct soth_sse_cbs cbs = {.ctx = &r->t, .on_event = on_event};
    struct soth_sse *s = soth_sse_init(mem, lim, &cbs);
    size_t pos = 0;
    for (size_t k = 0; k <= n_cuts; k++) {
        size_t end = k < n_cuts ? cuts[k] : n;
        if (end < pos)
            end = pos;
        cr_assert_eq(soth_sse_feed(s, in + pos, end - pos), (ssize_t)(end - pos));
        pos = end;
    }
    r->events = soth_sse_events(s);
    r->truncated = soth_sse_truncated(s);
    r->pending = soth_sse_finish(s);
    cr_assert(!soth_sse_finish(s), "finish leaves a fresh stream");
    free(mem);
}

static void same(const struct run *a, const struct run *b, const char *what)
{
    cr_assert_eq(a->pending, b->pending, "%s: pending", what);
    cr_assert_eq(a->events, b->events, "%s: events", what);
    cr_assert_eq(a->truncated, b->truncated, "%s: truncated", what);
    cr_assert_eq(a->t.len, b->t.len, "%s:\n%s\nvs\n%s", what, a->t.s, b->t.s);
    cr_assert(memcmp(a->t.s, b->t.s, a->t.len) == 0, "%s:\n%s\nvs\n%s", what, a->t.s, b->t.s);
}

/* Whole (left in R1), byte by byte, every split in two (up to 4 KiB), random pieces. */
static void check_n(const struct soth_sse_limits *lim, const char *in, size_t n)
{
    run_sse(&R1, lim, in, n, NULL, 0);
    cr_assert_eq(R1.events, R1.t.n);
    size_t *cuts = calloc(n + 1, sizeof(size_t));
    cr_assert_not_null(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i;
    run_sse(&R2, lim, in, n, cuts, n);
    same(&R1, &R2, "byte by byte");
    if (n <= 4096) {
        for (size_t i = 0; i <= n; i++) {
            run_sse(&R2, lim, in, n, &i, 1);
            same(&R1, &R2, "split in two");
        }
    }
    srand(11);
    for (int round = 0; round < 20; round++) {
        size_t nc = 0, at = 0;
        while (at < n && nc < n) {
            at += (size_t)(rand() % 50);
            cuts[nc++] = at < n ? at : n;
        }
        run_sse(&R2, lim, in, n, cuts, nc);
        same(&R1, &R2, "random pieces");
    }
    free(cuts);
}

static void check(const char *in)
{
    check_n(NULL, in, strlen(in));
}

#define EXPECT(in, want)                                                                           \
    do {                                                                                           \
        check(in);                                                                                 \
        cr_assert_str_eq(R1.t.s, want);                                                            \
    } while (0)

Test(sse, basic_fields)
{
    EXPECT("event: update\nid: 42\nretry: 1500\ndata: hello\n\n", "[update|42|1500|5|hello]");
    cr_assert(!R1.pending);
    EXPECT("data: one\n\ndata: two\n\n", "[||-1|3|one][||-1|3|two]");
}

Test(sse, multiline_data)
{
    EXPECT("data: a\ndata: b\ndata:\ndata: c\n\n", "[||-1|6|a\nb\n\nc]");
    EXPECT("data\n\n", "[||-1|0|]"); /* a data line with an empty value: an empty event */
    EXPECT("data:\n\n", "[||-1|0|]");
}

Test(sse, space_after_colon)
{
    EXPECT("data:x\n\n", "[||-1|1|x]");
    EXPECT("data:  x\n\n", "[||-1|2| x]");
    EXPECT("data: x \n\n", "[||-1|2|x ]");
    EXPECT("data:\tx\n\n", "[||-1|2|\tx]");
}

Test(sse, comments_and_unknown_fields)
{
    EXPECT(": hello\n:\ndata: a\n: inside\nfoo: bar\nDATA: no\ndatax: no\n\n", "[||-1|1|a]");
    EXPECT(":only comments\n\n:x\n\n", "");
}

Test(sse, empty_data_dispatches_nothing_and_resets_type)
{
    EXPECT("event: a\n\ndata: x\n\n", "[||-1|1|x]");
    EXPECT("event: a\nretry: 5\n\ndata: x\n\n", "[||-1|1|x]");
    EXPECT("\n\n\n", "");
}

Test(sse, line_ends)
{
    EXPECT("data: a\r\ndata: b\r\n\r\n", "[||-1|3|a\nb]");
    EXPECT("data: a\rdata: b\r\r", "[||-1|3|a\nb]");
    EXPECT("data: a\ndata: b\r\rdata: c\r\n\n", "[||-1|3|a\nb][||-1|1|c]");
    /* CR LF is one line end, CR CR two, LF CR two */
    EXPECT("data: a\r\n\r\n", "[||-1|1|a]");
    EXPECT("data: a\n\r", "[||-1|1|a]");
    EXPECT("data: a\r\r\n", "[||-1|1|a]");
}

Test(sse, cr_at_piece_end_then_lf)
{
    /* Explicit: "data: a\r" | "\ndata: b\r\n\r\n": the CR LF across the cut is one line end
     * (check() also tries every cut). */
    const char *in = "data: a\r\ndata: b\r\n\r\n";
    size_t cut = 8;
    run_sse(&R2, NULL, in, strlen(in), &cut, 1);
    cr_assert_str_eq(R2.t.s, "[||-1|3|a\nb]");
}

Test(sse, bom)
{
    EXPECT("\xef\xbb\xbf"
           "data: a\n\n",
           "[||-1|1|a]");
    /* only one BOM, only at the start: a second one is part of the field name */
    EXPECT("\xef\xbb\xbf\xef\xbb\xbf"
           "data: a\n\ndata: b\n\n",
           "[||-1|1|b]");
    /* a partial BOM is data: here the start of an unknown field name */
    EXPECT("\xef\xbb"
           "data: a\n\ndata: b\n\n",
           "[||-1|1|b]");
    EXPECT("\xef\n\ndata: b\n\n", "[||-1|1|b]");
    EXPECT("data: \xef\xbb\xbf\n\n", "[||-1|3|\xef\xbb\xbf]");
}

Test(sse, id_persists_and_nul)
{
    EXPECT("id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n", "[|1|-1|1|a][|1|-1|1|b][||-1|1|c]");
    const char in[] = "id: 7\ndata: a\n\nid: x\0y\ndata: b\n\n";
    check_n(NULL, in, sizeof(in) - 1);
    cr_assert_str_eq(R1.t.s, "[|7|-1|1|a][|7|-1|1|b]");
    /* an id without data: no event, but the id buffer is set */
    EXPECT("id: 9\n\ndata: z\n\n", "[|9|-1|1|z]");
}

Test(sse, retry)
{
    EXPECT("retry: 10\ndata: a\n\ndata: b\n\n", "[||10|1|a][||-1|1|b]");
    EXPECT("retry: 1x\ndata: a\n\n", "[||-1|1|a]");
    EXPECT("retry:\ndata: a\n\n", "[||-1|1|a]");
    EXPECT("retry: -1\ndata: a\n\n", "[||-1|1|a]");
    EXPECT("retry: 123456789012345678\ndata: a\n\n", "[||123456789012345678|1|a]");
    EXPECT("retry: 1234567890123456789\ndata: a\n\n", "[||-1|1|a]");
    EXPECT("retry: 5\nretry: x\ndata: a\n\n", "[||5|1|a]");
}

Test(sse, event_type_replaced)
{
    EXPECT("event: a\nevent: b\ndata: x\n\n", "[b||-1|1|x]");
    EXPECT("event: a\nevent\ndata: x\n\n", "[||-1|1|x]");
}

Test(sse, incomplete_event_discarded_at_end)
{
    EXPECT("data: a\n\ndata: b\n", "[||-1|1|a]");
    cr_assert(R1.pending);
    EXPECT("data: a\n\ndata: b", "[||-1|1|a]");
    cr_assert(R1.pending);
    EXPECT("data: a\n\n", "[||-1|1|a]");
    cr_assert(!R1.pending);
    EXPECT("data: a\n\r", "[||-1|1|a]");
    cr_assert(!R1.pending);
}

Test(sse, data_bound)
{
    struct soth_sse_limits lim = {.max_data = 8};
    const char *in = "data: 0123456789\n\ndata: abc\ndata: defg\n\ndata: 0123\ndata: 456\n\n";
    check_n(&lim, in, strlen(in));
    /* 12 bytes is over; "abc\ndefg" is 8 exactly; "0123\n456" too (its final LF dropped) */
    cr_assert_str_eq(R1.t.s, "[||-1|10T|01234567][||-1|8|abc\ndefg][||-1|8|0123\n456]");
    cr_assert_eq(R1.truncated, 1);
}

Test(sse, data_bound_cuts_at_utf8_boundary)
{
    struct soth_sse_limits lim = {.max_data = 5};
    const char *in = "data: ab\xe2\x82\xac\xe2\x82\xac\n\n"; /* "ab€€" */
    check_n(&lim, in, strlen(in));
    cr_assert_str_eq(R1.t.s, "[||-1|8T|ab\xe2\x82\xac]");
    lim.max_data = 4;
    check_n(&lim, in, strlen(in));
    cr_assert_str_eq(R1.t.s, "[||-1|8T|ab]");
}

Test(sse, field_bounds)
{
    char in[2048];
    char big[600];
    memset(big, 'e', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    snprintf(in, sizeof(in), "event: %s\nid: %s\ndata: x\n\nevent: ok\ndata: y\n\n", big, big);
    check(in);
    char want[1024];
    snprintf(want, sizeof(want), "[%.*s|%.*s|-1|1T|x][ok|%.*s|-1|1T|y]", SOTH_SSE_FIELD_MAX, big,
             SOTH_SSE_FIELD_MAX, big, SOTH_SSE_FIELD_MAX, big);
    cr_assert_str_eq(R1.t.s, want);
    cr_assert_eq(R1.truncated, 2); /* the long id persists, truncated */
}

Test(sse, long_lines_stay_bounded)
{
    size_t n = 3u << 20;
    char *in = malloc(n + 64);
    cr_assert_not_null(in);
    size_t len = 0;
    memcpy(in, ":", 1);
    len = 1;
    memset(in + len, 'c', n / 3);
    len += n / 3;
    memcpy(in + len, "\nfoo: ", 6);
    len += 6;
    memset(in + len, 'f', n / 3);
    len += n / 3;
    memcpy(in + len, "\ndata: ", 7);
    len += 7;
    memset(in + len, 'd', n / 3);
    len += n / 3;
    memcpy(in + len, "\n\ndata: end\n\n", 13);
    len += 13;
    check_n(NULL, in, len);
    cr_assert_eq(R1.events, 2);
    cr_assert_eq(R1.truncated, 1);
    cr_assert(strstr(R1.t.s, "|1048576T|ddd") != NULL);
    cr_assert(strstr(R1.t.s, "[||-1|3|end]") != NULL);
    free(in);
}

Test(sse, mixed_split_invariance)
{
    EXPECT("\xef\xbb\xbf: stream\r\nretry: 3000\r\n\r\nevent: delta\r\nid: 1\r\ndata: {\"a\":\r\n"
           "data: 1}\r\n\r\n:keepalive\n\nevent: delta\nid: 2\ndata: {\"b\":2}\n\n"
           "event: done\rdata\r\r",
           "[delta|1|-1|8|{\"a\":\n1}][delta|2|-1|7|{\"b\":2}][done|2|-1|0|]");
}

Test(sse, reinit_for_a_new_stream)
{
    void *mem = malloc(soth_sse_size(NULL));
    struct trace t = {0};
    struct soth_sse_cbs cbs = {.ctx = &t, .on_event = on_event};
    struct soth_sse *s = soth_sse_init(mem, NULL, &cbs);
    soth_sse_feed(s, "id: 5\ndata: a\n\ndata: part", 26);
    cr_assert(soth_sse_finish(s));
    soth_sse_feed(s,
                  "\xef\xbb\xbf"
                  "data: b\n\n",
                  12);
    cr_assert_str_eq(t.s, "[|5|-1|1|a][||-1|1|b]");
    cr_assert_eq(soth_sse_events(s), 2);
    free(mem);
}
