/*
 * The HTTP/1.1 exchange engine (proto/h1.c). Every scenario is a script of feeds (client or
 * upstream bytes), EOFs and aborts; it runs whole, byte by byte, and with each feed split in two
 * at every offset, and every run must give the same callback trace (body pieces coalesced) and
 * the same bytes out on each side. Each head forwarded must be exactly the head the callbacks
 * reported, re-serialised (checked in `out`).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/h1.h"

#define C SOTH_LEG_CLIENT
#define U SOTH_LEG_UPSTREAM

/* ---- growable byte string */
struct str {
    char *p;
    size_t len, cap;
};

static void str_add(struct str *s, const char *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n + 1)
            cap *= 2;
        s->p = realloc(s->p, cap);
        cr_assert_not_null(s->p);
        s->cap = cap;
    }
    if (n > 0)
        memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

static void str_cat(struct str *s, const char *z)
{
    str_add(s, z, strlen(z));
}

static void str_iov(struct str *s, struct soth_iov v)
{
    str_add(s, v.base, v.len);
}

static void str_fmt(struct str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void str_fmt(struct str *s, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    cr_assert(n >= 0 && (size_t)n < sizeof(tmp));
    str_add(s, tmp, (size_t)n);
}

static void str_free(struct str *s)
{
    free(s->p);
    *s = (struct str){0};
}

/* ---- recorder: the callbacks of one run */
struct rec {
    int lent;        /* section buffers out (lending runs): at most one per direction */
    size_t sec_size; /* soth_h1_section_size of the run's limits */
    struct str trace;
    struct str out[2];
    struct str expect_head[2]; /* by to_side: head bytes on_head promised, not yet seen */
    int body_dir;              /* dir of the body run being coalesced, -1 none */
    uint32_t body_id;
    int fail_out_after; /* out fails (-EPIPE) after this many calls; -1 never */
    int n_out;
    int head_rc;        /* returned by on_head */
    uint32_t refuse_id; /* on_head returns SOTH_H1_REFUSE for this request; 0 none */
    bool keep_upstream; /* heads toward the client may carry an added Connection: close */
};

static void body_flush(struct rec *r)
{
    if (r->body_dir >= 0)
        str_cat(&r->trace, "\n");
    r->body_dir = -1;
}

static int rec_out(void *ctx, enum soth_leg to_side, const char *p, size_t n)
{
    struct rec *r = ctx;
    cr_assert(to_side == C || to_side == U);
    cr_assert_gt(n, 0, "empty out");
    if (r->fail_out_after >= 0 && r->n_out++ >= r->fail_out_after)
        return -32;
    struct str *e = &r->expect_head[to_side];
    if (e->len > 0 && r->keep_upstream && to_side == C) {
        e->len = 0; /* checked by the test's out_is */
    } else if (e->len > 0) {
        /* The head goes out in one piece, byte for byte what on_head reported. */
        cr_assert_eq(n, e->len, "head out %zu bytes, reported %zu", n, e->len);
        cr_assert(memcmp(p, e->p, n) == 0, "forwarded head differs from the reported one:\n%.*s",
                  (int)n, p);
        e->len = 0;
    }
    str_add(&r->out[to_side], p, n);
    return 0;
}

static void add_fields(struct str *s, const struct soth_header *f, size_t n)
{
    str_cat(s, "{");
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            str_cat(s, "|");
        str_iov(s, f[i].name);
        str_cat(s, ": ");
        str_iov(s, f[i].value);
    }
    str_cat(s, "}");
}

static int rec_head(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_h1_head *h)
{
    struct rec *r = ctx;
    struct str *t = &r->trace;
    struct str *e = &r->expect_head[!dir];
    body_flush(r);
    cr_assert_eq(e->len, 0, "previous head not forwarded");
    /* What the other side must receive next: the head rebuilt from the callback's view. */
    if (dir == C) {
        str_iov(e, h->method);
        str_cat(e, " ");
        str_iov(e, h->target);
        str_cat(e, " ");
        str_iov(e, h->version);
    } else {
        str_iov(e, h->version);
        str_fmt(e, " %03u ", h->status);
        str_iov(e, h->reason);
    }
    str_cat(e, "\r\n");
    for (size_t i = 0; i < h->n_headers; i++) {
        str_iov(e, h->headers[i].name);
        str_cat(e, ": ");
        str_iov(e, h->headers[i].value);
        str_cat(e, "\r\n");
    }
    str_cat(e, "\r\n");
    bool refuse = dir == C && id == r->refuse_id;
    if (r->head_rc < 0 || refuse)
        e->len = 0; /* vetoed or refused: nothing is forwarded */
    cr_assert_eq(h->http_minor, h->version.base[7] - '0');

    str_fmt(t, "H%d %u ", dir, id);
    if (dir == C) {
        str_iov(t, h->method);
        str_cat(t, " ");
        str_iov(t, h->target);
    } else {
        str_fmt(t, "%u", h->status);
        if (h->reason.len > 0) {
            str_cat(t, " ");
            str_iov(t, h->reason);
        }
    }
    str_cat(t, " ");
    str_iov(t, h->version);
    str_cat(t, " ");
    add_fields(t, h->headers, h->n_headers);
    if (dir == C) {
        if (h->scheme.len > 0) {
            str_cat(t, " s=");
            str_iov(t, h->scheme);
        }
        str_cat(t, " a=");
        str_iov(t, h->authority);
        str_cat(t, " p=");
        str_iov(t, h->path);
    }
    if (h->keep_alive)
        str_cat(t, " ka");
    if (h->chunked)
        str_cat(t, " ch");
    if (h->has_content_length)
        str_fmt(t, " cl=%llu", (unsigned long long)h->content_length);
    if (h->body_until_close)
        str_cat(t, " uc");
    if (h->no_body)
        str_cat(t, " nb");
    if (h->interim)
        str_cat(t, " int");
    if (h->upgrade)
        str_cat(t, " upg");
    if (h->expect_continue)
        str_cat(t, " ec");
    str_cat(t, "\n");
    return refuse ? SOTH_H1_REFUSE : r->head_rc;
}

static void rec_body(void *ctx, enum soth_leg dir, uint32_t id, const char *p, size_t n)
{
    struct rec *r = ctx;
    cr_assert_gt(n, 0);
    if (r->body_dir != (int)dir || r->body_id != id) {
        body_flush(r);
        str_fmt(&r->trace, "B%d %u ", dir, id);
        r->body_dir = dir;
        r->body_id = id;
    }
    str_add(&r->trace, p, n);
}

static void rec_trailers(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_header *f,
                         size_t n)
{
    struct rec *r = ctx;
    body_flush(r);
    str_fmt(&r->trace, "T%d %u ", dir, id);
    add_fields(&r->trace, f, n);
    str_cat(&r->trace, "\n");
}

static void rec_complete(void *ctx, enum soth_leg dir, uint32_t id)
{
    struct rec *r = ctx;
    body_flush(r);
    str_fmt(&r->trace, "C%d %u\n", dir, id);
}

static void rec_upgrade(void *ctx, uint32_t id, struct soth_iov proto)
{
    struct rec *r = ctx;
    body_flush(r);
    str_fmt(&r->trace, "U %u %.*s\n", id, (int)proto.len, proto.base);
}

static void rec_exchange(void *ctx, const struct soth_h1_exchange *x)
{
    struct rec *r = ctx;
    body_flush(r);
    str_fmt(&r->trace, "X %u %s %llu %llu%s%s\n", x->stream_id, soth_h1_outcome_name(x->outcome),
            (unsigned long long)x->request_bytes, (unsigned long long)x->response_bytes,
            x->upgraded ? " upg" : "", x->close ? " close" : "");
}

static void rec_error(void *ctx, enum soth_leg dir, uint32_t id, unsigned status, const char *code,
                      const char *detail)
{
    struct rec *r = ctx;
    body_flush(r);
    cr_assert_not_null(code);
    cr_assert(detail != NULL && detail[0] != '\0');
    str_fmt(&r->trace, "E%d %u %u %s\n", dir, id, status, code);
}

/* ---- scripts */
enum { S_FEED = 1, S_EOF, S_ABORT };
struct step {
    int kind, side;
    const char *data;
    size_t len;
    enum soth_h1_outcome outcome;
};
#define FEED(s, lit)                                                                               \
    {                                                                                              \
        S_FEED, (s), (lit), sizeof(lit) - 1, 0                                                     \
    }
#define END(s)                                                                                     \
    {                                                                                              \
        S_EOF, (s), NULL, 0, 0                                                                     \
    }
#define ABORT(o)                                                                                   \
    {                                                                                              \
        S_ABORT, 0, NULL, 0, (o)                                                                   \
    }

struct run_opts {
    struct soth_h1_limits lim;
    int fail_out_after; /* 0: never (stored as -1 in the recorder) */
    int head_rc;
    uint32_t refuse_id;
    bool keep_upstream; /* soth_h1_set_keep_upstream; the trace ends with reusable=0/1 and
                         * retryable=0/1 */
};

struct result {
    struct str trace;
    struct str out[2];
};

/* Bytes a side still holds because the engine was blocked on it. */
struct held {
    struct str b[2];
};

static void try_feed(struct soth_h1 *h, struct rec *r, struct held *hd, int side, bool *dead)
{
    struct str *b = &hd->b[side];
    if (*dead || b->len == 0)
        return;
    ssize_t n = soth_h1_feed(h, side, b->p, b->len);
    if (n < 0) {
        body_flush(r);
        str_fmt(&r->trace, "R %zd\n", n);
        *dead = true;
        b->len = 0;
        return;
    }
    cr_assert_leq((size_t)n, b->len);
    if ((size_t)n < b->len)
        cr_assert(soth_h1_is_blocked(h, side), "partial consumption without being blocked");
    memmove(b->p, b->p + n, b->len - (size_t)n);
    b->len -= (size_t)n;
}

/* Lending runs: plain malloc/free, so ASan sees any use of a section after it went back. */
static void *lend_get(void *ctx)
{
    struct rec *r = ctx;
    r->lent++;
    cr_assert_leq(r->lent, 2, "more than one section buffer per direction");
    return malloc(r->sec_size);
}

static void lend_put(void *ctx, void *mem)
{
    struct rec *r = ctx;
    r->lent--;
    free(mem);
}

/*
 * Run the script; step `split_step` (or every feed when split_step < 0 and bytewise) is fed in
 * pieces: one byte at a time (bytewise) or cut at `split_at`.
 */
static void run_once(const struct step *st, size_t n_st, const struct run_opts *o, int split_step,
                     size_t split_at, bool bytewise, bool lend, struct result *res)
{
    struct rec r = {.body_dir = -1,
                    .fail_out_after = -1,
                    .head_rc = o->head_rc,
                    .refuse_id = o->refuse_id,
                    .keep_upstream = o->keep_upstream};
    if (o->fail_out_after > 0)
        r.fail_out_after = o->fail_out_after;
    struct soth_h1_cbs cbs = {
        .ctx = &r,
        .out = rec_out,
        .on_head = rec_head,
        .on_body = rec_body,
        .on_trailers = rec_trailers,
        .on_complete = rec_complete,
        .on_upgrade = rec_upgrade,
        .on_exchange = rec_exchange,
        .on_error = rec_error,
    };
    struct soth_h1 *h;
    if (lend) {
        /* Section buffers lent only while a head or trailer section is built. */
        cbs.sec_get = lend_get;
        cbs.sec_put = lend_put;
        r.sec_size = soth_h1_section_size(&o->lim);
        h = soth_h1_init(malloc(soth_h1_core_size(&o->lim)), &o->lim, &cbs);
    } else {
        h = soth_h1_new(&o->lim, &cbs);
    }
    cr_assert_not_null(h);
    if (o->keep_upstream)
        soth_h1_set_keep_upstream(h, true);
    struct held hd = {0};
    bool dead = false;
    for (size_t i = 0; i < n_st; i++) {
        const struct step *s = &st[i];
        if (s->kind == S_FEED) {
            size_t cuts[2] = {s->len, s->len};
            size_t piece = s->len;
            if ((int)i == split_step && !bytewise)
                cuts[0] = split_at;
            if (bytewise && (split_step < 0 || (int)i == split_step))
                piece = 1;
            size_t off = 0;
            while (off < s->len) {
                size_t end = off + piece;
                if (off < cuts[0] && end > cuts[0])
                    end = cuts[0];
                if (end > s->len)
                    end = s->len;
                /* A fresh copy per read, as a new receive buffer would be; a dead engine's
                 * caller has closed the connection and reads nothing more. */
                if (!dead)
                    str_add(&hd.b[s->side], s->data + off, end - off);
                try_feed(h, &r, &hd, s->side, &dead);
                off = end;
            }
            /* Bytes the other side holds are offered again once this read is processed (the
             * core does the same after each completion), not between pieces of one split: which
             * of two directions goes first is the caller's timing, not the engine's. */
            try_feed(h, &r, &hd, !s->side, &dead);
        } else if (s->kind == S_EOF) {
            int rc = soth_h1_eof(h, s->side);
            body_flush(&r);
            str_fmt(&r.trace, "F%d %d\n", s->side, rc);
            if (rc == SOTH_E_STATE)
                dead = true;
            try_feed(h, &r, &hd, !s->side, &dead);
        } else {
            soth_h1_abort(h, s->outcome);
            body_flush(&r);
            str_cat(&r.trace, "A\n");
            dead = true;
        }
    }
    body_flush(&r);
    str_fmt(&r.trace, "done=%d inflight=%zu held=%zu/%zu\n", soth_h1_is_done(h),
            soth_h1_in_flight(h), hd.b[0].len, hd.b[1].len);
    if (o->keep_upstream)
        str_fmt(&r.trace, "reusable=%d\nretryable=%d\n", soth_h1_upstream_reusable(h),
                soth_h1_upstream_retryable(h));
    cr_assert_eq(r.expect_head[0].len, 0, "a reported head was never forwarded");
    cr_assert_eq(r.expect_head[1].len, 0, "a reported head was never forwarded");
    soth_h1_free(h);
    cr_assert_eq(r.lent, 0, "a section buffer was not given back");
    res->trace = r.trace;
    res->out[0] = r.out[0];
    res->out[1] = r.out[1];
    str_free(&r.expect_head[0]);
    str_free(&r.expect_head[1]);
    str_free(&hd.b[0]);
    str_free(&hd.b[1]);
}

static void same_result(const struct result *a, const struct result *b, const char *how)
{
    cr_assert_str_eq(b->trace.p, a->trace.p, "trace differs (%s):\n%s\nwhole:\n%s", how, b->trace.p,
                     a->trace.p);
    for (int s = 0; s < 2; s++) {
        cr_assert_eq(b->out[s].len, a->out[s].len, "out[%d] length differs (%s)", s, how);
        cr_assert(a->out[s].len == 0 || memcmp(a->out[s].p, b->out[s].p, a->out[s].len) == 0,
                  "out[%d] differs (%s)", s, how);
    }
}

static void result_free(struct result *r)
{
    str_free(&r->trace);
    str_free(&r->out[0]);
    str_free(&r->out[1]);
}

/* Whole, byte by byte, every split of every feed: all identical. Returns the whole run. */
static void run_all(const struct step *st, size_t n_st, const struct run_opts *o,
                    struct result *ref)
{
    struct result r;
    char how[64];
    run_once(st, n_st, o, -1, 0, false, false, ref);
    run_once(st, n_st, o, -1, 0, true, false, &r);
    same_result(ref, &r, "byte by byte");
    result_free(&r);
    run_once(st, n_st, o, -1, 0, true, true, &r);
    same_result(ref, &r, "byte by byte, sections lent");
    result_free(&r);
    for (size_t i = 0; i < n_st; i++) {
        if (st[i].kind != S_FEED)
            continue;
        for (size_t k = 1; k < st[i].len; k++) {
            run_once(st, n_st, o, (int)i, k, false, (k & 1) != 0, &r);
            snprintf(how, sizeof(how), "step %zu split at %zu%s", i, k, (k & 1) ? ", lent" : "");
            same_result(ref, &r, how);
            result_free(&r);
        }
    }
}

static void out_is(const struct result *r, int side, const char *want)
{
    cr_assert_eq(r->out[side].len, strlen(want), "out[%d] is:\n%.*s\nwant:\n%s", side,
                 (int)r->out[side].len, r->out[side].p ? r->out[side].p : "", want);
    cr_assert(memcmp(r->out[side].p, want, strlen(want)) == 0, "out[%d] is:\n%s\nwant:\n%s", side,
              r->out[side].p, want);
}

#define RUN(res, ...)                                                                              \
    do {                                                                                           \
        static const struct step st_[] = {__VA_ARGS__};                                            \
        run_all(st_, SOTH_ARRAY_LEN(st_), &(struct run_opts){0}, (res));                           \
    } while (0)
#define RUN_OPTS(res, opts, ...)                                                                   \
    do {                                                                                           \
        static const struct step st_[] = {__VA_ARGS__};                                            \
        run_all(st_, SOTH_ARRAY_LEN(st_), (opts), (res));                                          \
    } while (0)

#define TRACE_IS(res, want) cr_assert_str_eq((res)->trace.p, (want))

/* ======================================================================================== */

Test(h1, get_content_length)
{
    struct result r;
    RUN(&r, FEED(C, "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept:*/*\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  v  \t\r\n\r\nhello"));
    TRACE_IS(&r, "H0 1 GET /a?b=1 HTTP/1.1 {Host: example.test|Accept: */*} a=example.test "
                 "p=/a?b=1 ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 5|X-A: v} ka cl=5\n"
                 "B1 1 hello\n"
                 "C1 1\n"
                 "X 1 complete 0 5\n"
                 "done=0 inflight=0 held=0/0\n");
    out_is(&r, U, "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: v\r\n\r\nhello");
    result_free(&r);
}

Test(h1, post_content_length)
{
    struct result r;
    RUN(&r, FEED(C, "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello "),
        FEED(C, "world"), FEED(U, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"));
    TRACE_IS(&r, "H0 1 POST /up HTTP/1.1 {Host: h|Content-Length: 11} a=h p=/up ka cl=11\n"
                 "B0 1 hello world\n"
                 "C0 1\n"
                 "H1 1 201 Created HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 11 0\n"
                 "done=0 inflight=0 held=0/0\n");
    out_is(&r, U, "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world");
    result_free(&r);
}

Test(h1, chunked_both_ways_with_trailers)
{
    struct result r;
    RUN(&r,
        FEED(C, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n"
                "X-Sum: 42\r\nX-B:b\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n"
                "3\r\nabc\r\n0\r\n\r\n"));
    TRACE_IS(&r, "H0 1 POST / HTTP/1.1 {Host: h|Transfer-Encoding: chunked} a=h p=/ ka ch\n"
                 "B0 1 helloabcdefghijklmnopqrstuvwxyz\n"
                 "T0 1 {X-Sum: 42|X-B: b}\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Transfer-Encoding: CHUNKED} ka ch\n"
                 "B1 1 abc\n"
                 "C1 1\n"
                 "X 1 complete 31 3\n"
                 "done=0 inflight=0 held=0/0\n");
    /* Chunk framing re-emitted (extension dropped, lower-case hex), trailers re-serialised. */
    out_is(&r, U,
           "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           "5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 42\r\nX-B: b\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    result_free(&r);
}

Test(h1, keep_alive_three_exchanges)
{
    struct result r;
    RUN(&r, FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
        FEED(C, "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb"),
        FEED(C, "\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nccc"));
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 1} ka cl=1\n"
                 "B1 1 a\n"
                 "C1 1\n"
                 "X 1 complete 0 1\n"
                 "H0 2 GET /2 HTTP/1.1 {Host: h} a=h p=/2 ka nb\n"
                 "C0 2\n"
                 "H1 2 200 OK HTTP/1.1 {Content-Length: 2} ka cl=2\n"
                 "B1 2 bb\n"
                 "C1 2\n"
                 "X 2 complete 0 2\n"
                 "H0 3 GET /3 HTTP/1.1 {Host: h} a=h p=/3 ka nb\n"
                 "C0 3\n"
                 "H1 3 404 Not Found HTTP/1.1 {Content-Length: 3} ka cl=3\n"
                 "B1 3 ccc\n"
                 "C1 3\n"
                 "X 3 complete 0 3\n"
                 "done=0 inflight=0 held=0/0\n");
    /* The empty line before request 3 is not forwarded (RFC 9112 2.2). */
    out_is(&r, U,
           "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
           "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    result_free(&r);
}

Test(h1, pipelined_three_in_one_feed)
{
    struct result r;
    RUN(&r,
        FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                "POST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nzz"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nc\r\n0\r\n\r\n"));
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H0 2 HEAD /2 HTTP/1.1 {Host: h} a=h p=/2 ka nb\n"
                 "C0 2\n"
                 "H0 3 POST /3 HTTP/1.1 {Host: h|Content-Length: 2} a=h p=/3 ka cl=2\n"
                 "B0 3 zz\n"
                 "C0 3\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 1} ka cl=1\n"
                 "B1 1 a\n"
                 "C1 1\n"
                 "X 1 complete 0 1\n"
                 "H1 2 200 OK HTTP/1.1 {Content-Length: 100} ka cl=100 nb\n"
                 "C1 2\n"
                 "X 2 complete 0 0\n"
                 "H1 3 200 OK HTTP/1.1 {Transfer-Encoding: chunked} ka ch\n"
                 "B1 3 c\n"
                 "C1 3\n"
                 "X 3 complete 2 1\n"
                 "done=0 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, head_response_has_no_body)
{
    struct result r;
    RUN(&r, FEED(C, "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        FEED(C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"));
    TRACE_IS(&r, "H0 1 HEAD / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 5} ka cl=5 nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "H0 2 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 2\n"
                 "H1 2 200 OK HTTP/1.1 {Content-Length: 5} ka cl=5\n"
                 "B1 2 hello\n"
                 "C1 2\n"
                 "X 2 complete 0 5\n"
                 "done=0 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, no_body_204_304)
{
    struct result r;
    RUN(&r, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 204 No Content\r\n\r\n"
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"x\"\r\n\r\n"));
    TRACE_IS(&r, "H0 1 GET /a HTTP/1.1 {Host: h} a=h p=/a ka nb\n"
                 "C0 1\n"
                 "H0 2 GET /b HTTP/1.1 {Host: h} a=h p=/b ka nb\n"
                 "C0 2\n"
                 "H1 1 204 No Content HTTP/1.1 {} ka nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "H1 2 304 Not Modified HTTP/1.1 {Content-Length: 10|ETag: \"x\"} ka cl=10 nb\n"
                 "C1 2\n"
                 "X 2 complete 0 0\n"
                 "done=0 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, expect_100_continue)
{
    struct result r;
    RUN(&r,
        FEED(C, "PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
        FEED(U, "HTTP/1.1 100 Continue\r\n\r\n"), FEED(C, "data"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    TRACE_IS(&r, "H0 1 PUT /f HTTP/1.1 {Host: h|Expect: 100-continue|Content-Length: 4} a=h p=/f "
                 "ka cl=4 ec\n"
                 "H1 1 100 Continue HTTP/1.1 {} ka nb int\n"
                 "B0 1 data\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 2} ka cl=2\n"
                 "B1 1 ok\n"
                 "C1 1\n"
                 "X 1 complete 4 2\n"
                 "done=0 inflight=0 held=0/0\n");
    out_is(&r, C, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    result_free(&r);
}

Test(h1, connection_close_request)
{
    struct result r;
    RUN(&r,
        FEED(C, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"), END(U));
    TRACE_IS(&r, "H0 1 GET / HTTP/1.1 {Host: h|Connection: close} a=h p=/ nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 1} ka cl=1\n"
                 "B1 1 x\n"
                 "C1 1\n"
                 "X 1 complete 0 1 close\n"
                 "F1 1\n"
                 "done=1 inflight=0 held=0/0\n");
    /* Nothing after the closing request reaches the upstream (RFC 9112 9.6). */
    out_is(&r, U, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    result_free(&r);
}

Test(h1, connection_close_response_and_http10)
{
    struct result r;
    RUN(&r, FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n"),
        FEED(C, "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"), END(U));
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H0 2 GET /2 HTTP/1.1 {Host: h} a=h p=/2 ka nb\n"
                 "C0 2\n"
                 "H1 1 200 OK HTTP/1.0 {Content-Length: 1} cl=1\n"
                 "B1 1 x\n"
                 "C1 1\n"
                 "X 1 complete 0 1 close\n"
                 "X 2 upstream_aborted 0 0\n"
                 "F1 1\n"
                 "done=1 inflight=0 held=0/0\n");
    out_is(&r, C, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx");
    result_free(&r);
}

Test(h1, read_until_close_response)
{
    struct result r;
    RUN(&r, FEED(C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome "), FEED(U, "bytes"),
        END(U));
    TRACE_IS(&r, "H0 1 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Type: text/plain} uc\n"
                 "B1 1 some bytes\n"
                 "C1 1\n"
                 "X 1 complete 0 10 close\n"
                 "F1 1\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, upgrade_101_then_raw_relay)
{
    struct result r;
    RUN(&r,
        FEED(C, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                "\x81\x02hi"),
        FEED(U, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\n\r\n\x81\x03yo!"),
        FEED(C, "GET / HTTP/1.1\r\n"), END(C), FEED(U, "more"), END(U));
    TRACE_IS(&r, "H0 1 GET /ws HTTP/1.1 {Host: h|Upgrade: websocket|Connection: Upgrade} a=h p=/ws "
                 "ka nb upg\n"
                 "C0 1\n"
                 "H1 1 101 Switching Protocols HTTP/1.1 {Upgrade: websocket|Connection: Upgrade} "
                 "nb upg\n"
                 "U 1 websocket\n"
                 "F0 0\n"
                 "X 1 complete 20 9 upg\n"
                 "F1 1\n"
                 "done=1 inflight=0 held=0/0\n");
    /* Frames the client sent before the 101 were held, then relayed untouched. */
    out_is(&r, U,
           "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           "\x81\x02hiGET / HTTP/1.1\r\n");
    out_is(&r, C,
           "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           "\x81\x03yo!more");
    result_free(&r);
}

Test(h1, upgrade_refused_goes_on_as_http)
{
    struct result r;
    RUN(&r,
        FEED(C, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                "GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 3\r\n\r\nno!"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    /* The request held while the upgrade was pending is parsed as HTTP once the answer is
     * known not to be a switch. */
    TRACE_IS(&r, "H0 1 GET /ws HTTP/1.1 {Host: h|Upgrade: websocket|Connection: Upgrade} a=h p=/ws "
                 "ka nb upg\n"
                 "C0 1\n"
                 "H1 1 426 Upgrade Required HTTP/1.1 {Content-Length: 3} ka cl=3\n"
                 "B1 1 no!\n"
                 "C1 1\n"
                 "X 1 complete 0 3\n"
                 "H0 2 GET /next HTTP/1.1 {Host: h} a=h p=/next ka nb\n"
                 "C0 2\n"
                 "H1 2 200 OK HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 2\n"
                 "X 2 complete 0 0\n"
                 "done=0 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, connect_2xx_relays)
{
    struct result r;
    RUN(&r, FEED(C, "CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\nraw1"),
        FEED(U, "HTTP/1.1 200 Connection established\r\n\r\nraw2"), END(U), FEED(C, "late"),
        END(C));
    TRACE_IS(&r, "H0 1 CONNECT db.test:5432 HTTP/1.1 {Host: db.test:5432} a=db.test:5432 p= ka nb "
                 "upg\n"
                 "C0 1\n"
                 "H1 1 200 Connection established HTTP/1.1 {} nb upg\n"
                 "U 1 \n"
                 "F1 0\n"
                 "X 1 complete 8 4 upg\n"
                 "F0 1\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, absolute_form_and_http10)
{
    struct result r;
    RUN(&r,
        FEED(C, "GET http://Example.test:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n"
                "GET https://e.test HTTP/1.0\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    TRACE_IS(&r, "H0 1 GET http://Example.test:8080/p?q HTTP/1.1 {Host: other} s=http "
                 "a=Example.test:8080 p=/p?q ka nb\n"
                 "C0 1\n"
                 "H0 2 GET https://e.test HTTP/1.0 {} s=https a=e.test p=/ nb\n"
                 "C0 2\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "done=0 inflight=1 held=0/0\n");
    result_free(&r);
}

/* ---- rejections: each refuses with the status and code, and nothing of the bad head leaves */

struct bad_case {
    const char *name;
    int side;
    const char *text;
    unsigned status;
    const char *code;
    size_t forwarded; /* bytes of `text` forwarded before the error (a good head) */
};

static void expect_rejected(const struct bad_case *bc, const struct soth_h1_limits *lim)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    struct step st[2];
    size_t n = 0;
    if (bc->side == U)
        st[n++] = (struct step){S_FEED, C, req, sizeof(req) - 1, 0};
    st[n++] = (struct step){S_FEED, bc->side, bc->text, strlen(bc->text), 0};
    struct run_opts o = {0};
    if (lim != NULL)
        o.lim = *lim;
    struct result r;
    run_all(st, n, &o, &r);
    char want[160];
    snprintf(want, sizeof(want), "E%d %u %u %s\nR %d\n", bc->side, 1u, bc->status, bc->code,
             bc->status == 431 ? SOTH_E_TOO_LARGE : SOTH_E_MALFORMED);
    cr_assert(strstr(r.trace.p, want) != NULL, "%s: trace\n%s\nlacks\n%s", bc->name, r.trace.p,
              want);
    cr_assert_eq(r.out[!bc->side].len, bc->forwarded, "%s: %zu bytes forwarded", bc->name,
                 r.out[!bc->side].len);
    result_free(&r);
}

Test(h1, smuggling_shapes_rejected)
{
    static const struct bad_case cases[] = {
        {"cl+te", C,
         "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         400, "content_length_and_transfer_encoding", 0},
        {"te+cl", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         400, "content_length_and_transfer_encoding", 0},
        {"dup cl differing", C,
         "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400,
         "duplicate_content_length", 0},
        {"dup cl same", C,
         "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", 400,
         "duplicate_content_length", 0},
        {"cl list", C, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", 400,
         "bad_content_length", 0},
        {"cl sign", C, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", 400,
         "bad_content_length", 0},
        {"te gzip,chunked", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400,
         "bad_transfer_encoding", 0},
        {"te chunked,gzip", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400,
         "bad_transfer_encoding", 0},
        {"te twice", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
         "chunked\r\n\r\n",
         400, "bad_transfer_encoding", 0},
        {"te identity", C, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 400,
         "bad_transfer_encoding", 0},
        {"te xchunked", C, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 400,
         "bad_transfer_encoding", 0},
        {"te http/1.0", C, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
         "bad_transfer_encoding", 0},
        {"chunk size hex junk", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
         "bad_chunk_size", 56},
        {"chunk size negative", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400,
         "bad_chunk_size", 56},
        {"chunk size overflow", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
         400, "bad_chunk_size", 56},
        {"chunk size bare lf", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello", 400,
         "bad_chunk_size", 56},
        {"bare cr header", C, "GET / HTTP/1.1\r\nHost: h\r\nx:\rTransfer-Encoding: chunked\r\n\r\n",
         400, "bare_cr", 0},
        {"bare cr request line", C, "GET /\r HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bare_cr", 0},
        {"bare lf", C, "GET / HTTP/1.1\nHost: h\n\n", 400, "bare_lf", 0},
        {"obs-fold", C, "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", 400, "obs_fold", 0},
        {"space before first field", C,
         "GET / HTTP/1.1\r\n Content-Length: 5\r\nHost: h\r\n\r\nhello", 400, "obs_fold", 0},
        {"space before colon", C, "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, "bad_header_name", 0},
        {"nul in value", C, "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n", 400, "control_bytes",
         0},
        {"missing host", C, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "missing_host", 0},
        {"duplicate host", C, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host",
         0},
        {"http/2.0", C, "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400, "bad_version", 0},
        {"http/0.9", C, "GET http://e.test/x\r\n\r\n", 400, "bad_version", 0},
        {"unknown method", C, "BREW / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad_method", 0},
        {"space in target", C, "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad_start_line", 0},
        {"forbidden trailer", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: "
         "5\r\n\r\n",
         400, "forbidden_trailer", 56},
        {"obs-fold in trailer", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: b\r\n c\r\n\r\n",
         400, "obs_fold", 56},
        {"response cl+te", U,
         "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 502,
         "content_length_and_transfer_encoding", 0},
        {"response bare cr", U, "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", 502, "bare_cr", 0},
        {"response te gzip", U, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 502,
         "bad_transfer_encoding", 0},
        {"response bad status", U, "HTTP/1.1 2000 OK\r\n\r\n", 502, "bad_status", 0},
        /* three digits, below 100: malformed, never taken for a final (or interim) response */
        {"response status 099", U, "HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n", 502,
         "bad_status", 0},
        {"response status 000", U, "HTTP/1.1 000 OK\r\n\r\n", 502, "bad_status", 0},
        {"response status 042, no reason", U, "HTTP/1.1 042\r\n\r\n", 502, "bad_status", 0},
        {"response 101 unasked", U,
         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
         502, "unexpected_upgrade", 0},
        {"response bad chunk", U,
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 502, "bad_chunk", 52},
        /* RFC 9112 7.1: chunk data is followed by CRLF (llhttp 8.1 skips any two bytes). What
         * went out is the head and "5\r\nhello"; the chunk's CRLF never does. */
        {"stray bytes after chunk data", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
         400, "bad_chunk", 64},
        {"cr then stray byte after chunk data", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\rX0\r\n\r\n",
         400, "bad_chunk", 64},
        {"bare lf after chunk data", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
         400, "bad_chunk", 64},
        {"stray bytes after a later chunk", C,
         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
         "chunked\r\n\r\n1\r\na\r\n2\r\nbcXX0\r\n\r\n",
         400, "bad_chunk", 67},
        {"response stray bytes after chunk data", U,
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 502,
         "bad_chunk", 55},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(cases); i++)
        expect_rejected(&cases[i], NULL);
}

Test(h1, oversized_heads)
{
    struct soth_h1_limits lim = {.max_head = 256, .max_fields = 4};
    char big[400];
    int n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %0250d\r\n\r\n", 7);
    cr_assert(n > 0 && (size_t)n < sizeof(big));
    struct bad_case req = {"big request", C, big, 431, "head_too_large", 0};
    expect_rejected(&req, &lim);

    struct bad_case many = {"many fields",
                            C,
                            "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
                            431,
                            "too_many_headers",
                            0};
    expect_rejected(&many, &lim);

    /* Fuzz regression: the field over the limit has a bad name. llhttp reports the bad byte
     * before the name ends; the count is checked only when a name ends, so every split gives
     * llhttp's error (it used to give too_many_headers when the name's first byte ended a read). */
    struct bad_case many_bad = {
        "many fields, bad last name",
        C,
        "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD@: 4\r\n\r\n",
        400,
        "bad_header",
        0};
    expect_rejected(&many_bad, &lim);

    /* The trailer section has its own size and count bounds. */
    static char tr[400];
    int t = snprintf(tr, sizeof(tr),
                     "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: "
                     "%0260d\r\n\r\n",
                     0);
    cr_assert(t > 0 && (size_t)t < sizeof(tr));
    struct bad_case trail = {"big trailers", C, tr, 431, "trailers_too_large", 56};
    expect_rejected(&trail, &lim);

    /* Chunk extensions are dropped but bounded (4096 bytes per chunk line). */
    static char ext[4300];
    int m = snprintf(
        ext, sizeof(ext),
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=%04100d\r\n", 0);
    cr_assert(m > 0 && (size_t)m < sizeof(ext));
    struct bad_case longext = {"chunk extension", C, ext, 400, "chunk_extension_too_long", 56};
    expect_rejected(&longext, NULL);

    char bigr[400];
    n = snprintf(bigr, sizeof(bigr), "HTTP/1.1 200 OK\r\nX-Big: %0250d\r\n\r\n", 7);
    cr_assert(n > 0 && (size_t)n < sizeof(bigr));
    struct bad_case resp = {"big response", U, bigr, 502, "head_too_large", 0};
    /* A response over the limit is a bad gateway, not a client error. */
    struct step st[2] = {
        {S_FEED, C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 27, 0},
        {S_FEED, U, resp.text, strlen(resp.text), 0},
    };
    struct run_opts o = {.lim = lim};
    struct result r;
    run_all(st, 2, &o, &r);
    cr_assert(strstr(r.trace.p, "E1 1 502 head_too_large\nR -1002\n") != NULL, "%s", r.trace.p);
    result_free(&r);

    /* Exactly at the limit passes: a head of max_head bytes. */
    char fit[300];
    int pad = 256 - (int)strlen("GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n");
    n = snprintf(fit, sizeof(fit), "GET / HTTP/1.1\r\nHost: h\r\nX: %0*d\r\n\r\n", pad, 0);
    cr_assert_eq(n, 256);
    struct step ok[1] = {{S_FEED, C, fit, (size_t)n, 0}};
    run_all(ok, 1, &o, &r);
    cr_assert(strstr(r.trace.p, "C0 1\n") != NULL, "%s", r.trace.p);
    cr_assert_eq(r.out[U].len, 256);
    result_free(&r);
}

Test(h1, aborts_mid_body)
{
    struct result r;
    /* Client gone in the middle of its body. */
    RUN(&r, FEED(C, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc"), END(C));
    TRACE_IS(&r, "H0 1 POST / HTTP/1.1 {Host: h|Content-Length: 10} a=h p=/ ka cl=10\n"
                 "B0 1 abc\n"
                 "X 1 client_aborted 3 0\n"
                 "F0 1\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);

    /* Upstream gone in the middle of a length-delimited response. */
    RUN(&r, FEED(C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"), END(U));
    TRACE_IS(&r, "H0 1 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 10} ka cl=10\n"
                 "B1 1 12345\n"
                 "X 1 upstream_aborted 0 5\n"
                 "F1 1\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);

    /* An early complete response, then the client leaves mid-upload: the exchange got its
     * answer. */
    RUN(&r, FEED(C, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab"),
        FEED(U, "HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"), END(C));
    TRACE_IS(&r, "H0 1 POST / HTTP/1.1 {Host: h|Content-Length: 10} a=h p=/ ka cl=10\n"
                 "B0 1 ab\n"
                 "H1 1 413 Too Large HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 2 0\n"
                 "F0 1\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);

    /* Timeout with pipelined requests pending: each ends with the caller's outcome. */
    RUN(&r, FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"), ABORT(SOTH_H1_TIMEOUT));
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H0 2 GET /2 HTTP/1.1 {Host: h} a=h p=/2 ka nb\n"
                 "C0 2\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 4} ka cl=4\n"
                 "B1 1 ab\n"
                 "X 1 timeout 0 2\n"
                 "X 2 timeout 0 0\n"
                 "A\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, client_half_close_still_gets_response)
{
    struct result r;
    RUN(&r, FEED(C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), END(C),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    TRACE_IS(&r, "H0 1 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 1\n"
                 "F0 0\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 2} ka cl=2\n"
                 "B1 1 ok\n"
                 "C1 1\n"
                 "X 1 complete 0 2\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);
}

Test(h1, unsolicited_response)
{
    struct result r;
    RUN(&r, FEED(U, "HTTP/1.1 200 OK\r\n\r\n"));
    TRACE_IS(&r, "E1 0 502 unsolicited_response\nR -1001\ndone=1 inflight=0 held=0/0\n");
    result_free(&r);

    /* A second response to one request. */
    RUN(&r, FEED(C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"));
    TRACE_IS(&r, "H0 1 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "E1 0 502 unsolicited_response\n"
                 "R -1001\n"
                 "done=1 inflight=0 held=0/0\n");
    result_free(&r);
}

/* The trace of response k of deep_pipeline_grows_the_exchange_ring_in_order: every 5th request
 * is a HEAD (no body), the others get the one-byte body 'a' + k % 26. */
static void want_deep_response(struct str *want, int k)
{
    if (k % 5 == 0)
        str_fmt(want,
                "H1 %d 200 OK HTTP/1.1 {Content-Length: 1} ka cl=1 nb\nC1 %d\nX %d complete 0 0\n",
                k, k, k);
    else
        str_fmt(want,
                "H1 %d 200 OK HTTP/1.1 {Content-Length: 1} ka cl=1\nB1 %d %c\nC1 %d\n"
                "X %d complete 0 1\n",
                k, k, 'a' + k % 26, k, k);
}

/* A pipeline deeper than the engine's inline ring of exchanges (docs/http1.md, "Limits and
 * memory") moves the ring to the heap, here while it has wrapped (two exchanges finished
 * first): every exchange keeps its own method (HEAD: no body) and gets its own response, in
 * order. */
Test(h1, deep_pipeline_grows_the_exchange_ring_in_order)
{
    enum { FIRST = 3, DONE_FIRST = 2, MORE = 17, ALL = FIRST + MORE };
    struct str req[2] = {0}, resp[2] = {0}, want = {0};
    for (int i = 1; i <= ALL; i++) {
        bool head = i % 5 == 0;
        str_fmt(&req[i > FIRST], "%s /%d HTTP/1.1\r\nHost: h\r\n\r\n", head ? "HEAD" : "GET", i);
        str_fmt(&resp[i > DONE_FIRST], "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%s",
                head ? "" : (const char[]){(char)('a' + i % 26), 0});
    }
    struct step st[] = {
        {S_FEED, C, req[0].p, req[0].len, 0},
        {S_FEED, U, resp[0].p, resp[0].len, 0},
        {S_FEED, C, req[1].p, req[1].len, 0},
        {S_FEED, U, resp[1].p, resp[1].len, 0},
    };
    for (int i = 1; i <= ALL; i++) {
        bool head = i % 5 == 0;
        const char *m = head ? "HEAD" : "GET";
        if (i == FIRST + 1) { /* the first two responses come before the other requests */
            for (int k = 1; k <= DONE_FIRST; k++)
                want_deep_response(&want, k);
        }
        str_fmt(&want, "H0 %d %s /%d HTTP/1.1 {Host: h} a=h p=/%d ka nb\nC0 %d\n", i, m, i, i, i);
    }
    for (int k = DONE_FIRST + 1; k <= ALL; k++)
        want_deep_response(&want, k);
    str_cat(&want, "done=0 inflight=0 held=0/0\n");
    struct result r;
    run_all(st, SOTH_ARRAY_LEN(st), &(struct run_opts){0}, &r);
    TRACE_IS(&r, want.p);
    str_cat(&req[0], req[1].p);
    str_cat(&resp[0], resp[1].p);
    out_is(&r, U, req[0].p);
    out_is(&r, C, resp[0].p);
    result_free(&r);
    for (int i = 0; i < 2; i++) {
        free(req[i].p);
        free(resp[i].p);
    }
    free(want.p);
}

/* The ring grown to the limit (max_pipeline + 1 entries) still pauses the client at the limit:
 * request 6 waits until response 1 frees a slot, then goes to the upstream. */
Test(h1, grown_ring_still_pauses_at_the_pipeline_limit)
{
    struct run_opts o = {.lim = {.max_pipeline = 5}};
    struct result r;
    RUN_OPTS(&r, &o,
             FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /3 HTTP/1.1\r\nHost: h\r\n\r\nGET /4 HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /5 HTTP/1.1\r\nHost: h\r\n\r\nGET /6 HTTP/1.1\r\nHost: h\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H0 2 GET /2 HTTP/1.1 {Host: h} a=h p=/2 ka nb\n"
                 "C0 2\n"
                 "H0 3 GET /3 HTTP/1.1 {Host: h} a=h p=/3 ka nb\n"
                 "C0 3\n"
                 "H0 4 GET /4 HTTP/1.1 {Host: h} a=h p=/4 ka nb\n"
                 "C0 4\n"
                 "H0 5 GET /5 HTTP/1.1 {Host: h} a=h p=/5 ka nb\n"
                 "C0 5\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "H0 6 GET /6 HTTP/1.1 {Host: h} a=h p=/6 ka nb\n"
                 "C0 6\n"
                 "done=0 inflight=5 held=0/0\n");
    result_free(&r);
}

Test(h1, pipeline_limit_blocks_client)
{
    struct run_opts o = {.lim = {.max_pipeline = 2}};
    struct result r;
    RUN_OPTS(&r, &o,
             FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                     "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    /* Request 3 waits in the caller's buffer until response 1 frees a slot. */
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H0 2 GET /2 HTTP/1.1 {Host: h} a=h p=/2 ka nb\n"
                 "C0 2\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "H0 3 GET /3 HTTP/1.1 {Host: h} a=h p=/3 ka nb\n"
                 "C0 3\n"
                 "done=0 inflight=2 held=0/0\n");
    result_free(&r);
}

Test(h1, on_head_veto_and_out_failure)
{
    static const struct step st[] = {
        FEED(C, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    };
    struct run_opts o = {.head_rc = -13};
    struct result r;
    run_all(st, 1, &o, &r); /* a refused request is no exchange: nothing in flight */
    TRACE_IS(&r,
             "H0 1 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\nR -13\ndone=1 inflight=0 held=0/0\n");
    cr_assert_eq(r.out[U].len, 0);
    result_free(&r);

    static const struct step st2[] = {
        FEED(C, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"),
    };
    struct run_opts o2 = {.fail_out_after = 1};
    run_once(st2, 1, &o2, -1, 0, false, false, &r);
    cr_assert(strstr(r.trace.p, "R -32\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

/* on_head refusing a request (docs/http1.md "Requests the proxy refuses"): nothing of it or
 * after it is forwarded, the exchanges before it finish, then the engine is done. */
Test(h1, on_head_refuse_after_pipelined_exchange)
{
    static const struct step st[] = {
        FEED(C, "POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
                "CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(C, "more bytes"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"),
    };
    struct run_opts o = {.refuse_id = 2};
    struct result r;
    run_all(st, SOTH_ARRAY_LEN(st), &o, &r);
    TRACE_IS(&r, "H0 1 POST /1 HTTP/1.1 {Host: h|Content-Length: 2} a=h p=/1 ka cl=2\n"
                 "B0 1 ab\n"
                 "C0 1\n"
                 "H0 2 CONNECT x:1 HTTP/1.1 {Host: x:1} a=x:1 p= ka nb upg\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 3} ka cl=3\n"
                 "B1 1 xyz\n"
                 "C1 1\n"
                 "X 1 complete 2 3\n"
                 "done=1 inflight=0 held=0/0\n");
    out_is(&r, U, "POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz");
    result_free(&r);

    /* Nothing in flight: done at once; a response arriving then is dropped. */
    static const struct step st2[] = {
        FEED(C, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 204 No Content\r\n\r\n"),
        FEED(C, "GET http://other/ HTTP/1.1\r\nHost: other\r\n\r\n"),
    };
    run_all(st2, SOTH_ARRAY_LEN(st2), &o, &r);
    TRACE_IS(&r, "H0 1 GET /1 HTTP/1.1 {Host: h} a=h p=/1 ka nb\n"
                 "C0 1\n"
                 "H1 1 204 No Content HTTP/1.1 {} ka nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "H0 2 GET http://other/ HTTP/1.1 {Host: other} s=http a=other p=/ ka nb\n"
                 "done=1 inflight=0 held=0/0\n");
    out_is(&r, U, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n");
    result_free(&r);
}

/* One request-line rule with the plain path's head parser (docs/http1.md "One strictness for
 * every path"): empty lines before it are skipped, its three parts take one SP each. */
Test(h1, request_line_single_spaces)
{
    static const struct bad_case cases[] = {
        {"two spaces after method", C, "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad_start_line",
         0},
        {"two spaces before version", C, "GET /  HTTP/1.1\r\nHost: h\r\n\r\n", 400,
         "bad_start_line", 0},
        {"space after version", C, "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400, "bad_start_line", 0},
        {"tab separator", C, "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad_start_line", 0},
        {"space before method", C, " GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad_start_line", 0},
        {"space after empty line", C, "\r\n GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400,
         "bad_start_line", 0},
        {"bare lf empty line", C, "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bare_lf", 0},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(cases); i++)
        expect_rejected(&cases[i], NULL);

    /* Responses keep their status line as it comes (one SP rule for requests only). */
    struct result r;
    RUN(&r, FEED(C, "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    TRACE_IS(&r, "H0 1 GET / HTTP/1.1 {Host: h} a=h p=/ ka nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 0} ka cl=0 nb\n"
                 "C1 1\n"
                 "X 1 complete 0 0\n"
                 "done=0 inflight=0 held=0/0\n");
    out_is(&r, U, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    result_free(&r);
}

Test(h1, dead_engine_refuses_and_abort_reports)
{
    struct rec rc = {.body_dir = -1, .fail_out_after = -1};
    struct soth_h1_cbs cbs = {
        .ctx = &rc, .out = rec_out, .on_exchange = rec_exchange, .on_error = rec_error};
    void *mem = malloc(soth_h1_size(NULL));
    struct soth_h1 *h = soth_h1_init(mem, NULL, &cbs);
    const char req[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    cr_assert_eq(soth_h1_feed(h, C, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
    cr_assert_eq(soth_h1_in_flight(h), 1);
    const char bad[] = "HTTP/1.1 2x0 OK\r\n\r\n";
    cr_assert_eq(soth_h1_feed(h, U, bad, sizeof(bad) - 1), SOTH_E_MALFORMED);
    cr_assert(soth_h1_is_done(h));
    cr_assert_eq(soth_h1_feed(h, C, req, sizeof(req) - 1), SOTH_E_STATE);
    cr_assert_eq(soth_h1_eof(h, C), SOTH_E_STATE);
    soth_h1_abort(h, SOTH_H1_UPSTREAM_ABORTED);
    soth_h1_abort(h, SOTH_H1_RESET); /* nothing left */
    cr_assert_str_eq(rc.trace.p, "E1 1 502 bad_status\nX 1 upstream_aborted 0 0\n");
    soth_h1_dispose(h);
    free(mem);
    str_free(&rc.trace);
    str_free(&rc.out[0]);
    str_free(&rc.out[1]);
    str_free(&rc.expect_head[0]);
    str_free(&rc.expect_head[1]);
    cr_assert_str_eq(soth_h1_outcome_name(SOTH_H1_CLIENT_ABORTED), "client_aborted");
    cr_assert_str_eq(soth_h1_outcome_name(SOTH_H1_OUTCOME_COUNT), "unknown");
}

/* ---- docs/http1.md "Upstream connection pool": keep_upstream */

#define KEEP (&(struct run_opts){.keep_upstream = true})

Test(h1, keep_upstream_drops_request_close_adds_response_close)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX: y\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    TRACE_IS(&r, "H0 1 GET /a HTTP/1.1 {Host: h|X: y} a=h p=/a nb\n"
                 "C0 1\n"
                 "H1 1 200 OK HTTP/1.1 {Content-Length: 2} ka cl=2\n"
                 "B1 1 ok\n"
                 "C1 1\n"
                 "X 1 complete 0 2 close\n"
                 "done=1 inflight=0 held=0/0\n"
                 "reusable=1\n"
                 "retryable=0\n");
    out_is(&r, U, "GET /a HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    result_free(&r);
}

Test(h1, keep_upstream_off_forwards_close_unchanged)
{
    struct result r;
    RUN(&r, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX: y\r\n\r\n"),
        FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    out_is(&r, U, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX: y\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    result_free(&r);
}

Test(h1, keep_upstream_keep_alive_request_untouched)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
             FEED(C, "GET /b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"),
             FEED(U, "HTTP/1.1 204 No Content\r\n\r\n"));
    out_is(&r, U,
           "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: "
           "keep-alive\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n");
    cr_assert(strstr(r.trace.p, "reusable=1\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_origin_close_not_reusable)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"));
    out_is(&r, U, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
    cr_assert(strstr(r.trace.p, "reusable=0\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_until_close_not_reusable)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\n\r\nbody"), END(U));
    out_is(&r, C, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody");
    cr_assert(strstr(r.trace.p, "reusable=0\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_close_list_forwarded_not_reusable)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close, x\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    out_is(&r, U, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close, x\r\n\r\n");
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    cr_assert(strstr(r.trace.p, "reusable=0\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_http10_request_forwarded_not_reusable)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.0\r\nConnection: close\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    out_is(&r, U, "GET /a HTTP/1.0\r\nConnection: close\r\n\r\n");
    cr_assert(strstr(r.trace.p, "reusable=0\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_mid_body_not_reusable)
{
    struct result r;
    RUN_OPTS(&r, KEEP, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
             FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"));
    out_is(&r, C, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nok");
    cr_assert(strstr(r.trace.p, "reusable=0\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_interim_then_final)
{
    struct result r;
    RUN_OPTS(
        &r, KEEP,
        FEED(C, "POST /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nExpect: "
                "100-continue\r\nContent-Length: 1\r\n\r\n"),
        FEED(U, "HTTP/1.1 100 Continue\r\n\r\n"), FEED(C, "z"),
        FEED(U, "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"));
    out_is(&r, C,
           "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: "
           "chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n");
    cr_assert(strstr(r.trace.p, "reusable=1\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

Test(h1, keep_upstream_upgrade_not_reusable)
{
    struct result r;
    RUN_OPTS(&r, KEEP,
             FEED(C, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: "
                     "websocket\r\n\r\n"),
             FEED(U, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
                     "websocket\r\n\r\n"));
    cr_assert(strstr(r.trace.p, "reusable=0\n") != NULL, "%s", r.trace.p);
    result_free(&r);
}

/* docs/http1.md "Upstream connection pool", retry: which exchanges may be sent again. */
#define RETRYABLE_IS(want, ...)                                                                    \
    do {                                                                                           \
        struct result r_;                                                                          \
        RUN_OPTS(&r_, KEEP, __VA_ARGS__);                                                          \
        cr_assert(strstr(r_.trace.p, (want) ? "retryable=1\n" : "retryable=0\n") != NULL, "%s",    \
                  r_.trace.p);                                                                     \
        result_free(&r_);                                                                          \
    } while (0)

Test(h1, keep_upstream_retryable_idempotent_methods)
{
    RETRYABLE_IS(true, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"));
    RETRYABLE_IS(true, FEED(C, "HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n"));
    RETRYABLE_IS(true, FEED(C, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"));
    RETRYABLE_IS(true, FEED(C, "TRACE /a HTTP/1.1\r\nHost: h\r\n\r\n"));
    RETRYABLE_IS(true, FEED(C, "PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"));
    RETRYABLE_IS(true, FEED(C, "DELETE /a HTTP/1.1\r\nHost: h\r\n\r\n"));
    /* nothing in flight after a complete exchange */
    RETRYABLE_IS(true, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"),
                 FEED(U, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
}

Test(h1, keep_upstream_not_retryable)
{
    RETRYABLE_IS(false, FEED(C, "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"));
    RETRYABLE_IS(false, FEED(C, "PATCH /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"));
    /* a byte of the response came: the origin answered on this connection */
    RETRYABLE_IS(false, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"), FEED(U, "HTTP/1.1 2"));
    /* two exchanges in flight */
    RETRYABLE_IS(false,
                 FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"));
    /* a protocol switch asked */
    RETRYABLE_IS(false, FEED(C, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                                "Upgrade: websocket\r\n\r\n"));
    /* the origin's FIN was fed */
    RETRYABLE_IS(false, FEED(C, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"), END(U));
}
