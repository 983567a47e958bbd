/*
 * The HTTP/2 relay (proto/h2.c), in memory with real nghttp2 peers: an nghttp2 client
 * session plays the user agent (UA), an nghttp2 server session plays the origin, and the
 * harness pumps bytes UA -> relay -> origin and back until nothing moves. Feeds can be split
 * at any cumulative offset of either stream, or cut to pieces of N bytes.
 */
#include <criterion/criterion.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "soth/blockcache.h"
#include "soth/proto/h2.h"

#define MAXX 1100 /* exchanges per test */

/* ---- growable bytes */

struct bytes {
    char *p;
    size_t len, cap;
};

static void b_add(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n)
            c *= 2;
        b->p = realloc(b->p, c);
        cr_assert_not_null(b->p);
        b->cap = c;
    }
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void b_printf(struct bytes *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void b_printf(struct bytes *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    cr_assert(n >= 0);
    char *tmp = malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(tmp, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b_add(b, tmp, (size_t)n);
    free(tmp);
}

static void b_free(struct bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static bool b_eq(const struct bytes *a, const struct bytes *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* Deterministic body bytes for exchange `seed`. */
static void fill_pattern(struct bytes *b, unsigned seed, size_t n)
{
    b->len = 0;
    for (size_t j = 0; j < n; j++) {
        char c = (char)((seed * 131u + j * 7u + (j >> 8)) & 0xff);
        b_add(b, &c, 1);
    }
}

/* ---- counting allocator (also fail-after-N) */

struct counting {
    size_t cur, peak;
    long fail_after; /* < 0: never */
    long calls;
};

struct hdr_pad {
    size_t n;
    size_t pad; /* keep 16-byte alignment */
};

/* ctx is &harness.mem for the relay's own allocations and that address + 1 for nghttp2's
 * (soth_h2_mem.lib_ctx): nghttp2 1.52 double-frees in some of its own out-of-memory paths
 * (an item attached to a stream, then freed by nghttp2_submit_data), so failures are injected
 * into the relay's only. */
static struct counting *counting_of(void *ctx)
{
    return (struct counting *)((uintptr_t)ctx & ~(uintptr_t)1);
}

static void *c_alloc(size_t n, void *ctx)
{
    struct counting *c = counting_of(ctx);
    bool lib = ((uintptr_t)ctx & 1) != 0;
    if (c->fail_after >= 0 && !lib && c->calls++ >= c->fail_after)
        return NULL;
    struct hdr_pad *h = malloc(sizeof(*h) + n);
    if (h == NULL)
        return NULL;
    h->n = n;
    c->cur += n;
    if (c->cur > c->peak)
        c->peak = c->cur;
    return h + 1;
}

static void *c_malloc(size_t n, void *ctx)
{
    return c_alloc(n, ctx);
}

static void c_free(void *p, void *ctx)
{
    struct counting *c = counting_of(ctx);
    if (p == NULL)
        return;
    struct hdr_pad *h = (struct hdr_pad *)p - 1;
    c->cur -= h->n;
    free(h);
}

static void *c_calloc(size_t a, size_t b, void *ctx)
{
    void *p = c_alloc(a * b, ctx);
    if (p != NULL)
        memset(p, 0, a * b);
    return p;
}

static void *c_realloc(void *p, size_t n, void *ctx)
{
    if (p == NULL)
        return c_alloc(n, ctx);
    struct hdr_pad *h = (struct hdr_pad *)p - 1;
    void *q = c_alloc(n, ctx);
    if (q == NULL)
        return NULL;
    memcpy(q, p, h->n < n ? h->n : n);
    c_free(p, ctx);
    return q;
}

/* ---- exchanges as the UA and the origin see them */

struct xchg {
    /* what the UA sends */
    const char *method, *path, *authority, *protocol;
    struct bytes req_body;
    size_t req_off;
    bool req_trailers;
    bool no_body; /* END_STREAM on HEADERS */
    const nghttp2_nv *extra;
    size_t n_extra;
    const nghttp2_nv *trl; /* request trailers instead of the default two */
    size_t n_trl;
    /* what the UA got */
    int32_t sid;
    int status, n_interim;
    struct bytes resp_hdrs, resp_body, resp_trailers;
    struct bytes interim_hdrs; /* of every interim head, in order */
    bool final_seen, closed, rst_recv;
    uint32_t close_code, rst_code;
    size_t to_consume; /* UA with manual windows */
};

struct ostream { /* the origin's view of one stream */
    struct ostream *next;
    int32_t sid;
    char path[256], method[32], protocol[32];
    struct bytes req_hdrs, req_body, req_trailers;
    bool req_eof, closed, rst_recv, responded;
    uint32_t rst_code, close_code;
    size_t rd;      /* echo / generator offset */
    size_t gen_len; /* /get?n= */
    bool echo, trailers;
    uint32_t rst_after_head; /* +1 */
    size_t to_consume;       /* origin with manual windows */
};

/* Relay callback records, by client stream id. */
struct rec {
    int state; /* 0 none, 1 head, 2 ended */
    bool resp_head;
    struct bytes head, data[2], trailers[2], resp;
    struct soth_h2_stream_end end;
    char detail[64];
    int n_end;
};

struct harness {
    struct soth_h2_relay *r;
    struct soth_h2_settings set;
    struct counting mem;
    bool lend;                  /* cbs.buf_get / buf_put: count what is lent */
    long lent_out, lent_chunks; /* lent now, by size */
    long lent_out_peak, lent_chunks_peak;
    struct soth_h2_mem memhook;
    nghttp2_session *ua, *origin;
    struct bytes to_ua, to_origin;
    struct xchg x[MAXX];
    size_t nx;
    struct ostream *os;
    struct rec *recs; /* indexed by cid / 2 */
    size_t nrecs;
    /* knobs */
    size_t split_at[2]; /* cumulative offset to split feeds from each side (SIZE_MAX none) */
    size_t fed[2];
    size_t piece;                /* 0: whole */
    size_t ua_rate, origin_rate; /* bytes consumed per round with manual windows, 0 auto */
    uint32_t ua_window, origin_window, origin_max_streams;
    bool origin_connect_proto;
    int64_t origin_table_setting; /* SETTINGS_HEADER_TABLE_SIZE the relay sent the origin, or -1 */
    int out_fail;                 /* return this from out when != 0 */
    bool release_each_round;      /* soth_h2_relay_release after every round's flush */
    long releases;                /* ... that gave memory back */
    ssize_t feed_rc[2];           /* last negative feed result */
    /* UA connection-level observations */
    bool ua_goaway;
    uint32_t ua_goaway_code;
    int32_t ua_goaway_last;
    bool origin_goaway;
    uint32_t origin_goaway_code;
    size_t max_buffered[2];
    long rounds;
    /* fuzz seeds: with SOTH_H2_CORPUS_DIR set, tests that name themselves write what the
     * relay was fed in fuzz/fuzz_h2.c's record format */
    const char *corpus_name;
    struct bytes transcript;
};

static struct harness *H;

static struct rec *rec_of(int32_t cid)
{
    size_t i = (size_t)cid / 2;
    cr_assert(cid > 0 && (cid & 1));
    if (i >= H->nrecs) {
        size_t n = i + 64;
        H->recs = realloc(H->recs, n * sizeof(*H->recs));
        memset(H->recs + H->nrecs, 0, (n - H->nrecs) * sizeof(*H->recs));
        H->nrecs = n;
    }
    return &H->recs[i];
}

/* ---- relay callbacks: record, and check the per-stream order promised in soth/proto/h2.h */

static int cb_out(void *ctx, enum soth_leg to, const char *p, size_t n)
{
    struct harness *h = ctx;
    cr_assert(n > 0 && n <= 16384, "out chunk of %zu bytes", n);
    if (h->out_fail)
        return h->out_fail;
    b_add(to == SOTH_LEG_CLIENT ? &h->to_ua : &h->to_origin, p, n);
    return 0;
}

static void add_headers(struct bytes *b, const struct soth_header *hd, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b_printf(b, "%.*s: %.*s\n", (int)hd[i].name.len, hd[i].name.base, (int)hd[i].value.len,
                 hd[i].value.base);
}

static void cb_req(void *ctx, int32_t sid, const struct soth_h2_request *q)
{
    (void)ctx;
    struct rec *r = rec_of(sid);
    cr_assert_eq(r->state, 0, "request head twice on %d", sid);
    r->state = 1;
    b_printf(&r->head, "%.*s %.*s://%.*s%.*s proto=%.*s end=%d\n", (int)q->method.len,
             q->method.base, (int)q->scheme.len, q->scheme.base, (int)q->authority.len,
             q->authority.base, (int)q->path.len, q->path.base, (int)q->protocol.len,
             q->protocol.base, q->end_stream);
    add_headers(&r->head, q->headers, q->n_headers);
}

static void cb_resp(void *ctx, int32_t sid, const struct soth_h2_response *s)
{
    (void)ctx;
    struct rec *r = rec_of(sid);
    cr_assert_eq(r->state, 1, "response head on %d in state %d", sid, r->state);
    cr_assert(!r->resp_head);
    r->resp_head = true;
    b_printf(&r->resp, "%d end=%d\n", s->status, s->end_stream);
    add_headers(&r->resp, s->headers, s->n_headers);
    cr_assert_leq(s->n_alt_svc_removed, SOTH_H2_ALT_SVC_MAX);
    for (size_t i = 0; i < s->n_alt_svc_removed; i++)
        b_printf(&r->resp, "removed: %.*s\n", (int)s->alt_svc_removed[i].len,
                 s->alt_svc_removed[i].base);
}

static void cb_data(void *ctx, enum soth_leg dir, int32_t sid, const char *p, size_t n)
{
    (void)ctx;
    struct rec *r = rec_of(sid);
    cr_assert_eq(r->state, 1, "data on %d in state %d", sid, r->state);
    if (dir == SOTH_LEG_UPSTREAM)
        cr_assert(r->resp_head, "response data before the response head on %d", sid);
    cr_assert_gt(n, 0);
    b_add(&r->data[dir], p, n);
}

static void cb_trailers(void *ctx, enum soth_leg dir, int32_t sid, const struct soth_header *hd,
                        size_t n)
{
    (void)ctx;
    struct rec *r = rec_of(sid);
    cr_assert_eq(r->state, 1);
    if (dir == SOTH_LEG_UPSTREAM)
        cr_assert(r->resp_head);
    add_headers(&r->trailers[dir], hd, n);
}

static void cb_end(void *ctx, int32_t sid, const struct soth_h2_stream_end *e)
{
    (void)ctx;
    struct rec *r = rec_of(sid);
    cr_assert_neq(r->state, 2, "stream_end twice on %d", sid);
    r->state = 2;
    r->n_end++;
    r->end = *e;
    cr_assert_not_null(e->detail);
    snprintf(r->detail, sizeof(r->detail), "%s", e->detail);
    r->end.detail = r->detail;
    cr_assert_eq(e->request_bytes, r->data[SOTH_LEG_CLIENT].len, "request bytes on %d", sid);
    cr_assert_eq(e->response_bytes, r->data[SOTH_LEG_UPSTREAM].len, "response bytes on %d", sid);
    if (e->outcome == SOTH_H2_COMPLETE)
        cr_assert_eq(e->error_code, 0);
}

/* ---- the UA */

static ssize_t ua_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)ud;
    struct xchg *x = src->ptr;
    size_t n = x->req_body.len - x->req_off;
    if (n > len)
        n = len;
    if (n > 0)
        memcpy(buf, x->req_body.p + x->req_off, n);
    x->req_off += n;
    if (x->req_off == x->req_body.len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (x->req_trailers) {
            static const nghttp2_nv t[] = {
                {(uint8_t *)"x-req-trailer", (uint8_t *)"abc", 13, 3, 0},
                {(uint8_t *)"x-req-trailer-2", (uint8_t *)"def", 15, 3, 0},
            };
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (x->trl != NULL)
                cr_assert_eq(nghttp2_submit_trailer(s, sid, x->trl, x->n_trl), 0);
            else
                cr_assert_eq(nghttp2_submit_trailer(s, sid, t, 2), 0);
        }
    }
    return (ssize_t)n;
}

static int ua_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    struct xchg *x = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (x == NULL)
        return 0;
    if (nl == 7 && memcmp(name, ":status", 7) == 0) {
        x->status = atoi((const char *)value); /* NUL-terminated by nghttp2 */
        return 0;
    }
    struct bytes *b = x->final_seen ? &x->resp_trailers : &x->resp_hdrs;
    b_printf(b, "%.*s: %.*s\n", (int)nl, name, (int)vl, value);
    return 0;
}

static int ua_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct harness *h = ud;
    struct xchg *x =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(s, f->hd.stream_id) : NULL;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (x != NULL && !x->final_seen) {
            if (x->status >= 100 && x->status < 200) {
                x->n_interim++;
                b_add(&x->interim_hdrs, x->resp_hdrs.p, x->resp_hdrs.len);
                x->resp_hdrs.len = 0;
            } else {
                x->final_seen = true;
            }
        }
        break;
    case NGHTTP2_RST_STREAM:
        if (x != NULL) {
            x->rst_recv = true;
            x->rst_code = f->rst_stream.error_code;
        }
        break;
    case NGHTTP2_GOAWAY:
        h->ua_goaway = true;
        h->ua_goaway_code = f->goaway.error_code;
        h->ua_goaway_last = f->goaway.last_stream_id;
        break;
    }
    return 0;
}

static int ua_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *d, size_t n,
                   void *ud)
{
    (void)flags;
    (void)ud;
    struct xchg *x = nghttp2_session_get_stream_user_data(s, sid);
    cr_assert_not_null(x);
    b_add(&x->resp_body, d, n);
    x->to_consume += n;
    return 0;
}

static int ua_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    (void)ud;
    struct xchg *x = nghttp2_session_get_stream_user_data(s, sid);
    if (x != NULL) {
        x->closed = true;
        x->close_code = code;
    }
    return 0;
}

static void ua_new(struct harness *h)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    cr_assert_eq(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_header_callback(cb, ua_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, ua_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, ua_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, ua_close);
    cr_assert_eq(nghttp2_option_new(&opt), 0);
    nghttp2_option_set_max_send_header_block_length(opt, 1 << 20);
    if (h->ua_rate)
        nghttp2_option_set_no_auto_window_update(opt, 1);
    cr_assert_eq(nghttp2_session_client_new2(&h->ua, cb, h, opt), 0);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h->ua_window ? h->ua_window : 65535},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    cr_assert_eq(nghttp2_submit_settings(h->ua, 0, iv, 2), 0);
}

/* Queue one request on the UA; returns its exchange. */
static struct xchg *ua_submit(struct harness *h, const char *method, const char *path,
                              size_t body_len)
{
    cr_assert_lt(h->nx, MAXX);
    struct xchg *x = &h->x[h->nx];
    memset(x, 0, sizeof(*x));
    x->method = method;
    x->path = path;
    x->authority = "origin.test";
    if (body_len > 0)
        fill_pattern(&x->req_body, (unsigned)h->nx + 1, body_len);
    x->no_body = body_len == 0 && strcmp(method, "GET") == 0;
    h->nx++;
    return x;
}

static int32_t ua_send(struct harness *h, struct xchg *x)
{
    nghttp2_nv nv[40];
    size_t n = 0;
#define NV(n_, v_) ((nghttp2_nv){(uint8_t *)(n_), (uint8_t *)(v_), strlen(n_), strlen(v_), 0})
    nv[n++] = NV(":method", x->method);
    nv[n++] = NV(":scheme", "https");
    nv[n++] = NV(":authority", x->authority);
    if (x->protocol != NULL)
        nv[n++] = NV(":protocol", x->protocol);
    nv[n++] = NV(":path", x->path);
    nv[n++] = NV("user-agent", "soth-test/1");
    nv[n++] = NV("x-a", "1");
    nv[n++] = NV("cookie", "a=b");
    nv[n++] = NV("x-b", "2");
    if (x->req_trailers)
        nv[n++] = NV("te", "trailers");
    for (size_t i = 0; i < x->n_extra; i++)
        nv[n++] = x->extra[i];
#undef NV
    nghttp2_data_provider prov = {.source.ptr = x, .read_callback = ua_read};
    x->sid = nghttp2_submit_request(h->ua, NULL, nv, n, x->no_body ? NULL : &prov, x);
    cr_assert_gt(x->sid, 0);
    return x->sid;
}

/* ---- the origin */

static struct ostream *os_find_path(struct harness *h, const char *path)
{
    for (struct ostream *o = h->os; o != NULL; o = o->next)
        if (strcmp(o->path, path) == 0)
            return o;
    return NULL;
}

static ssize_t origin_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ud;
    struct ostream *o = src->ptr;
    size_t n;
    if (o->echo) {
        n = o->req_body.len - o->rd;
        if (n > len)
            n = len;
        if (n > 0)
            memcpy(buf, o->req_body.p + o->rd, n);
        o->rd += n;
        if (n == 0 && !o->req_eof)
            return NGHTTP2_ERR_DEFERRED;
        if (o->req_eof && o->rd == o->req_body.len) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (o->trailers) {
                static const nghttp2_nv t[] = {
                    {(uint8_t *)"x-resp-trailer", (uint8_t *)"xyz", 14, 3, 0},
                    {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0},
                };
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                cr_assert_eq(nghttp2_submit_trailer(s, sid, t, 2), 0);
            }
        }
        return (ssize_t)n;
    }
    n = o->gen_len - o->rd;
    if (n > len)
        n = len;
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(((o->rd + i) * 7u + ((o->rd + i) >> 8)) & 0xff);
    o->rd += n;
    if (o->rd == o->gen_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void expected_gen(struct bytes *b, size_t n)
{
    b->len = 0;
    for (size_t j = 0; j < n; j++) {
        char c = (char)((j * 7u + (j >> 8)) & 0xff);
        b_add(b, &c, 1);
    }
}

static int origin_begin(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct harness *h = ud;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct ostream *o = calloc(1, sizeof(*o));
    o->sid = f->hd.stream_id;
    o->next = h->os;
    h->os = o;
    nghttp2_session_set_stream_user_data(s, o->sid, o);
    return 0;
}

static int origin_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                         const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    struct ostream *o = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (o == NULL)
        return 0;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST) {
        b_printf(&o->req_trailers, "%.*s: %.*s\n", (int)nl, name, (int)vl, value);
        return 0;
    }
    if (nl == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(o->path, sizeof(o->path), "%.*s", (int)vl, value);
    else if (nl == 7 && memcmp(name, ":method", 7) == 0)
        snprintf(o->method, sizeof(o->method), "%.*s", (int)vl, value);
    else if (nl == 9 && memcmp(name, ":protocol", 9) == 0)
        snprintf(o->protocol, sizeof(o->protocol), "%.*s", (int)vl, value);
    b_printf(&o->req_hdrs, "%.*s: %.*s\n", (int)nl, name, (int)vl, value);
    return 0;
}

static void origin_respond(struct harness *h, nghttp2_session *s, struct ostream *o)
{
    nghttp2_nv nv[64];
    size_t n = 0;
#define NV(n_, v_) ((nghttp2_nv){(uint8_t *)(n_), (uint8_t *)(v_), strlen(n_), strlen(v_), 0})
    nv[n++] = NV(":status", "200");
    nv[n++] = NV("content-type", "application/octet-stream");
    nv[n++] = NV("x-origin", "yes");
    nghttp2_data_provider prov = {.source.ptr = o, .read_callback = origin_read};
    const char *p = o->path;
    o->responded = true;
    if (strncmp(p, "/echo", 5) == 0 || strncmp(p, "/trailers", 9) == 0) {
        o->echo = true;
        o->trailers = p[1] == 't';
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, &prov), 0);
    } else if (strncmp(p, "/get?n=", 7) == 0) {
        o->gen_len = strtoul(p + 7, NULL, 10);
        if (strstr(p, "&tag=") != NULL)
            nv[n++] = NV("x-path", p); /* heads_waiting_to_be_sent_arrive_intact */
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, o->gen_len ? &prov : NULL), 0);
    } else if (strcmp(p, "/conn-header") == 0) { /* a field nghttp2 refuses on receive */
        nv[n++] = NV("connection", "close");
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, NULL), 0);
    } else if (strncmp(p, "/rst?code=", 10) == 0) {
        cr_assert_eq(nghttp2_submit_rst_stream(s, 0, o->sid, (uint32_t)atoi(p + 10)), 0);
    } else if (strncmp(p, "/rst-after-head?code=", 21) == 0) {
        o->echo = true; /* deferred forever: no body */
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, &prov), 0);
        o->rst_after_head = (uint32_t)atoi(p + 21) + 1; /* once the head is out */
    } else if (strcmp(p, "/big-resp-headers") == 0 || strcmp(p, "/big-resp-trailers") == 0) {
        static char big[4001];
        memset(big, 'v', 4000);
        static char names[24][16];
        bool trailers = p[10] == 't';
        size_t base = n;
        for (int i = 0; i < 20; i++) {
            snprintf(names[i], sizeof(names[i]), "x-big-%02d", i);
            nv[n++] = NV(names[i], big);
        }
        if (!trailers) {
            cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, NULL), 0);
        } else {
            o->gen_len = 10;
            cr_assert_eq(nghttp2_submit_headers(s, 0, o->sid, NULL, nv, base, NULL), 0);
            cr_assert_eq(nghttp2_submit_headers(s, NGHTTP2_FLAG_END_STREAM, o->sid, NULL, nv + base,
                                                n - base, NULL),
                         0);
        }
    } else if (strcmp(p, "/goaway") == 0) {
        cr_assert_eq(nghttp2_submit_goaway(s, 0, o->sid, NGHTTP2_NO_ERROR, NULL, 0), 0);
        o->gen_len = 2;
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, &prov), 0);
    } else if (strcmp(p, "/altsvc") == 0) {
        nghttp2_nv i1[] = {NV(":status", "103"), NV("alt-svc", "h3=\":443\"")};
        cr_assert_eq(nghttp2_submit_headers(s, 0, o->sid, NULL, i1, 2, NULL), 0);
        nv[n++] = NV("alt-svc", "h3=\":443\"; ma=86400, h2=\":443\"");
        nv[n++] = NV("alt-svc", "h3-29=\":8443\"");
        nv[n++] = NV("alt-svc", "clear");
        o->gen_len = 3;
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, &prov), 0);
    } else if (strcmp(p, "/interim") == 0) {
        nghttp2_nv i1[] = {NV(":status", "103"), NV("link", "</a.css>; rel=preload")};
        cr_assert_eq(nghttp2_submit_headers(s, 0, o->sid, NULL, i1, 2, NULL), 0);
        o->gen_len = 3;
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, &prov), 0);
    } else if (strncmp(p, "/status?s=", 10) == 0 || strncmp(p, "/status103?s=", 13) == 0) {
        if (p[7] == '1') {
            nghttp2_nv i1[] = {NV(":status", "103")};
            cr_assert_eq(nghttp2_submit_headers(s, 0, o->sid, NULL, i1, 1, NULL), 0);
        }
        nv[0] = NV(":status", strchr(p, '=') + 1); /* nghttp2 sends it unchecked */
        o->gen_len = 3;
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, n, &prov), 0);
    } else if (strcmp(p, "/slow") == 0) {
        o->responded = false; /* never answers */
    } else {
        nv[0] = NV(":status", "404");
        cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, 1, NULL), 0);
    }
#undef NV
}

static int origin_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct harness *h = ud;
    struct ostream *o =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(s, f->hd.stream_id) : NULL;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (o != NULL && f->headers.cat == NGHTTP2_HCAT_REQUEST)
            origin_respond(h, s, o);
        SOTH_FALLTHROUGH;
    case NGHTTP2_DATA:
        if (o != NULL && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            o->req_eof = true;
            if (o->echo)
                nghttp2_session_resume_data(s, o->sid);
        }
        break;
    case NGHTTP2_SETTINGS:
        for (size_t i = 0; i < f->settings.niv; i++)
            if (f->settings.iv[i].settings_id == NGHTTP2_SETTINGS_HEADER_TABLE_SIZE)
                h->origin_table_setting = f->settings.iv[i].value;
        break;
    case NGHTTP2_RST_STREAM:
        /* also for streams the origin already closed: find it by id */
        for (o = h->os; o != NULL; o = o->next)
            if (o->sid == f->hd.stream_id) {
                o->rst_recv = true;
                o->rst_code = f->rst_stream.error_code;
            }
        break;
    case NGHTTP2_GOAWAY:
        h->origin_goaway = true;
        h->origin_goaway_code = f->goaway.error_code;
        break;
    }
    return 0;
}

static int origin_sent(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    struct ostream *o = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (o != NULL && f->hd.type == NGHTTP2_HEADERS && o->rst_after_head) {
        cr_assert_eq(nghttp2_submit_rst_stream(s, 0, o->sid, o->rst_after_head - 1), 0);
        o->rst_after_head = 0;
    }
    return 0;
}

static int origin_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *d, size_t n,
                       void *ud)
{
    (void)flags;
    (void)ud;
    struct ostream *o = nghttp2_session_get_stream_user_data(s, sid);
    cr_assert_not_null(o);
    b_add(&o->req_body, d, n);
    o->to_consume += n;
    if (o->echo)
        nghttp2_session_resume_data(s, sid);
    return 0;
}

static int origin_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    (void)ud;
    struct ostream *o = nghttp2_session_get_stream_user_data(s, sid);
    if (o != NULL) {
        o->closed = true;
        o->close_code = code;
    }
    return 0;
}

static void origin_new(struct harness *h)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    cr_assert_eq(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, origin_begin);
    nghttp2_session_callbacks_set_on_header_callback(cb, origin_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, origin_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, origin_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, origin_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, origin_sent);
    cr_assert_eq(nghttp2_option_new(&opt), 0);
    nghttp2_option_set_max_send_header_block_length(opt, 1 << 20);
    if (h->origin_rate)
        nghttp2_option_set_no_auto_window_update(opt, 1);
    cr_assert_eq(nghttp2_session_server_new2(&h->origin, cb, h, opt), 0);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[3];
    size_t n = 0;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
                                       h->origin_window ? h->origin_window : 65535};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                       h->origin_max_streams ? h->origin_max_streams : 1000};
    if (h->origin_connect_proto)
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    cr_assert_eq(nghttp2_submit_settings(h->origin, 0, iv, n), 0);
}

/* ---- harness life cycle and pump */

static void h_init(struct harness *h)
{
    memset(h, 0, sizeof(*h));
    h->split_at[0] = h->split_at[1] = SIZE_MAX;
    h->mem.fail_after = -1;
    h->origin_table_setting = -1;
    h->memhook =
        (struct soth_h2_mem){&h->mem, c_malloc, c_free, c_calloc, c_realloc, (char *)&h->mem + 1};
    H = h;
}

static const struct soth_h2_cbs CBS = {
    .out = cb_out,
    .on_request_head = cb_req,
    .on_response_head = cb_resp,
    .on_data = cb_data,
    .on_trailers = cb_trailers,
    .on_stream_end = cb_end,
};

static void pump(struct harness *h);

static void *cb_buf_get(void *ctx, size_t size)
{
    struct harness *h = ctx;
    cr_assert(size == SOTH_H2_OUT_BYTES || size == SOTH_H2_CHUNK_BYTES, "size %zu", size);
    long *n = size == SOTH_H2_OUT_BYTES ? &h->lent_out : &h->lent_chunks;
    long *peak = size == SOTH_H2_OUT_BYTES ? &h->lent_out_peak : &h->lent_chunks_peak;
    if (++*n > *peak)
        *peak = *n;
    void *m = malloc(size);
    cr_assert_not_null(m);
    memset(m, 0xa5, size); /* the relay must not rely on the contents */
    return m;
}

static void cb_buf_put(void *ctx, void *m, size_t size)
{
    struct harness *h = ctx;
    long *n = size == SOTH_H2_OUT_BYTES ? &h->lent_out : &h->lent_chunks;
    cr_assert_gt(*n, 0, "returned more than lent (size %zu)", size);
    --*n;
    free(m);
}

static void h_start(struct harness *h)
{
    struct soth_h2_cbs cbs = CBS;
    cbs.ctx = h;
    if (h->lend) {
        cbs.buf_get = cb_buf_get;
        cbs.buf_put = cb_buf_put;
    }
    h->set.mem = &h->memhook;
    h->r = soth_h2_relay_new(&cbs, &h->set);
    cr_assert_not_null(h->r);
    ua_new(h);
    origin_new(h);
    pump(h); /* prefaces and SETTINGS: the UA learns the relay's stream limit first */
}

static void write_corpus(struct harness *h)
{
    const char *dir = getenv("SOTH_H2_CORPUS_DIR");
    if (dir == NULL || h->corpus_name == NULL)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, h->corpus_name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    fputc(0, f); /* flags: no prepended blobs */
    fwrite(h->transcript.p, 1, h->transcript.len, f);
    fclose(f);
}

static void h_free(struct harness *h)
{
    write_corpus(h);
    b_free(&h->transcript);
    soth_h2_relay_free(h->r);
    cr_assert_eq(h->mem.cur, 0, "relay leaked %zu bytes", h->mem.cur);
    cr_assert_eq(h->lent_out + h->lent_chunks, 0, "lent buffers not returned: %ld + %ld",
                 h->lent_out, h->lent_chunks);
    nghttp2_session_del(h->ua);
    nghttp2_session_del(h->origin);
    b_free(&h->to_ua);
    b_free(&h->to_origin);
    for (size_t i = 0; i < h->nx; i++) {
        b_free(&h->x[i].req_body);
        b_free(&h->x[i].resp_hdrs);
        b_free(&h->x[i].interim_hdrs);
        b_free(&h->x[i].resp_body);
        b_free(&h->x[i].resp_trailers);
    }
    while (h->os != NULL) {
        struct ostream *o = h->os;
        h->os = o->next;
        b_free(&o->req_hdrs);
        b_free(&o->req_body);
        b_free(&o->req_trailers);
        free(o);
    }
    for (size_t i = 0; i < h->nrecs; i++) {
        struct rec *r = &h->recs[i];
        b_free(&r->head);
        b_free(&r->resp);
        for (int d = 0; d < 2; d++) {
            b_free(&r->data[d]);
            b_free(&r->trailers[d]);
        }
    }
    free(h->recs);
}

static void feed(struct harness *h, enum soth_leg side, const uint8_t *p, size_t n)
{
    while (n > 0) {
        size_t k = n;
        if (h->piece && k > h->piece)
            k = h->piece;
        size_t at = h->split_at[side];
        if (h->fed[side] < at && h->fed[side] + k > at)
            k = at - h->fed[side];
        ssize_t rc = soth_h2_relay_feed(h->r, side, (const char *)p, k);
        if (rc < 0) {
            h->feed_rc[side] = rc;
            return; /* the rest is dropped, as a caller closing the transport would */
        }
        cr_assert_eq(rc, (ssize_t)k);
        if (h->corpus_name != NULL) {
            uint8_t rec[3] = {(uint8_t)side, (uint8_t)(k >> 8), (uint8_t)k};
            for (size_t off = 0; off < k;) {
                size_t m = k - off > 65535 ? 65535 : k - off;
                rec[1] = (uint8_t)(m >> 8);
                rec[2] = (uint8_t)m;
                b_add(&h->transcript, rec, 3);
                b_add(&h->transcript, p + off, m);
                off += m;
            }
        }
        h->fed[side] += k;
        p += k;
        n -= k;
    }
}

static void consume_some(nghttp2_session *s, size_t rate, bool ua)
{
    size_t budget = rate;
    if (ua) {
        for (size_t i = 0; i < H->nx && budget > 0; i++) {
            struct xchg *x = &H->x[i];
            size_t k = x->to_consume < budget ? x->to_consume : budget;
            if (k == 0)
                continue;
            cr_assert_eq(nghttp2_session_consume(s, x->sid, k), 0);
            x->to_consume -= k;
            budget -= k;
        }
    } else {
        for (struct ostream *o = H->os; o != NULL && budget > 0; o = o->next) {
            size_t k = o->to_consume < budget ? o->to_consume : budget;
            if (k == 0)
                continue;
            cr_assert_eq(nghttp2_session_consume(s, o->sid, k), 0);
            o->to_consume -= k;
            budget -= k;
        }
    }
}

static bool pending_consume(struct harness *h)
{
    for (size_t i = 0; h->ua_rate && i < h->nx; i++)
        if (h->x[i].to_consume > 0)
            return true;
    for (struct ostream *o = h->os; h->origin_rate && o != NULL; o = o->next)
        if (o->to_consume > 0)
            return true;
    return false;
}

static bool pump_once(struct harness *h)
{
    bool progress = false;
    const uint8_t *p;
    ssize_t n;
    if (h->ua_rate)
        consume_some(h->ua, h->ua_rate, true);
    if (h->origin_rate)
        consume_some(h->origin, h->origin_rate, false);
    while ((n = nghttp2_session_mem_send(h->ua, &p)) > 0) {
        feed(h, SOTH_LEG_CLIENT, p, (size_t)n);
        progress = true;
    }
    cr_assert_geq(n, 0);
    while ((n = nghttp2_session_mem_send(h->origin, &p)) > 0) {
        feed(h, SOTH_LEG_UPSTREAM, p, (size_t)n);
        progress = true;
    }
    cr_assert_geq(n, 0);
    int rc = soth_h2_relay_flush(h->r);
    if (h->out_fail == 0)
        cr_assert_eq(rc, 0, "flush: %d", rc);
    if (h->release_each_round && soth_h2_relay_release(h->r) > 0)
        h->releases++;
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    for (int d = 0; d < 2; d++) {
        cr_assert_leq(st.buffered[d], st.buffer_bound[d]);
        if (st.buffered[d] > h->max_buffered[d])
            h->max_buffered[d] = st.buffered[d];
    }
    if (h->to_ua.len > 0) {
        n = nghttp2_session_mem_recv(h->ua, (const uint8_t *)h->to_ua.p, h->to_ua.len);
        cr_assert_eq(n, (ssize_t)h->to_ua.len, "UA rejected relay output: %zd", n);
        h->to_ua.len = 0;
        progress = true;
    }
    if (h->to_origin.len > 0) {
        n = nghttp2_session_mem_recv(h->origin, (const uint8_t *)h->to_origin.p, h->to_origin.len);
        cr_assert_eq(n, (ssize_t)h->to_origin.len, "origin rejected relay output: %zd", n);
        h->to_origin.len = 0;
        progress = true;
    }
    if (h->ua_rate || h->origin_rate) {
        /* Windows opened by consume_some show up as output only on the next round. */
        progress = progress || nghttp2_session_want_write(h->ua) ||
                   nghttp2_session_want_write(h->origin) || pending_consume(h);
    }
    h->rounds++;
    return progress;
}

static void pump(struct harness *h)
{
    for (int i = 0; i < 200000; i++)
        if (!pump_once(h))
            return;
    cr_assert_fail("pump did not settle");
}

/* A GET with no body; returns its exchange. */
static struct xchg *ua_get(struct harness *h, const char *path)
{
    struct xchg *x = ua_submit(h, "GET", path, 0);
    ua_send(h, x);
    return x;
}

static struct xchg *ua_post(struct harness *h, const char *path, size_t len)
{
    struct xchg *x = ua_submit(h, "POST", path, len);
    ua_send(h, x);
    return x;
}

static void assert_complete_echo(struct harness *h, struct xchg *x)
{
    cr_assert_eq(x->status, 200, "stream %d status %d", x->sid, x->status);
    cr_assert(x->closed);
    cr_assert_eq(x->close_code, 0);
    cr_assert(b_eq(&x->resp_body, &x->req_body), "stream %d: %zu bytes back for %zu", x->sid,
              x->resp_body.len, x->req_body.len);
    struct rec *r = rec_of(x->sid);
    cr_assert_eq(r->n_end, 1);
    cr_assert_eq(r->end.outcome, SOTH_H2_COMPLETE, "stream %d: %s (%s)", x->sid,
                 soth_h2_outcome_name(r->end.outcome), r->end.detail);
    cr_assert_eq(r->end.request_bytes, x->req_body.len);
    cr_assert_eq(r->end.response_bytes, x->req_body.len);
    cr_assert(b_eq(&r->data[SOTH_LEG_CLIENT], &x->req_body));
    cr_assert(b_eq(&r->data[SOTH_LEG_UPSTREAM], &x->req_body));
    (void)h;
}

static bool has_line(const struct bytes *b, const char *line)
{
    size_t l = strlen(line);
    for (size_t i = 0; i + l <= b->len; i++)
        if ((i == 0 || b->p[i - 1] == '\n') && memcmp(b->p + i, line, l) == 0 &&
            (i + l == b->len || b->p[i + l] == '\n'))
            return true;
    return false;
}

static struct harness HS; /* large: static, one per forked test */

/* ====================================================================================== */

Test(h2_relay, outcome_names)
{
    cr_assert_str_eq(soth_h2_outcome_name(SOTH_H2_COMPLETE), "complete");
    cr_assert_str_eq(soth_h2_outcome_name(SOTH_H2_CLIENT_ABORTED), "client_aborted");
    cr_assert_str_eq(soth_h2_outcome_name(SOTH_H2_UPSTREAM_ABORTED), "upstream_aborted");
    cr_assert_str_eq(soth_h2_outcome_name(SOTH_H2_RESET), "reset");
    cr_assert_str_eq(soth_h2_outcome_name(SOTH_H2_OUTCOME_COUNT), "?");
}

Test(h2_relay, new_requires_out)
{
    struct soth_h2_cbs cbs = {0};
    cr_assert_null(soth_h2_relay_new(&cbs, NULL));
    cr_assert_null(soth_h2_relay_new(NULL, NULL));
    cbs.out = cb_out;
    struct soth_h2_relay *r = soth_h2_relay_new(&cbs, NULL);
    cr_assert_not_null(r);
    cr_assert(soth_h2_relay_want_write(r, SOTH_LEG_CLIENT), "server preface pending");
    cr_assert(soth_h2_relay_want_write(r, SOTH_LEG_UPSTREAM), "client preface pending");
    soth_h2_relay_free(r);
    soth_h2_relay_free(NULL);
}

Test(h2_relay, one_get)
{
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "get";
    h_start(h);
    if (getenv("SOTH_H2_VERBOSE"))
        fprintf(stderr, "idle relay after the SETTINGS exchange: %zu bytes\n", h->mem.cur);
    struct xchg *x = ua_get(h, "/get?n=5");
    pump(h);
    cr_assert_eq(x->status, 200);
    struct bytes want = {0};
    expected_gen(&want, 5);
    cr_assert(b_eq(&x->resp_body, &want));
    cr_assert(has_line(&x->resp_hdrs, "x-origin: yes"));
    cr_assert(x->closed && x->close_code == 0);
    /* docs/http2.md, "Limits and protections": the upstream leg states the protocol's initial
     * header table size outright, which nginx answers by no longer inserting its response
     * fields into our decoder's table; every other server sees the value it assumed anyway. */
    cr_assert_eq(h->origin_table_setting, 4096);

    /* The origin got the request: pseudo-headers first, regular fields in order. */
    struct ostream *o = os_find_path(h, "/get?n=5");
    cr_assert_not_null(o);
    const char *want_hdrs =
        ":method: GET\n:scheme: https\n:authority: origin.test\n"
        ":path: /get?n=5\nuser-agent: soth-test/1\nx-a: 1\ncookie: a=b\nx-b: 2\n";
    cr_assert_eq(o->req_hdrs.len, strlen(want_hdrs));
    cr_assert(memcmp(o->req_hdrs.p, want_hdrs, o->req_hdrs.len) == 0, "%.*s", (int)o->req_hdrs.len,
              o->req_hdrs.p);

    struct rec *r = rec_of(x->sid);
    const char *want_head = "GET https://origin.test/get?n=5 proto= end=1\n"
                            "user-agent: soth-test/1\nx-a: 1\ncookie: a=b\nx-b: 2\n";
    cr_assert(r->head.len == strlen(want_head) && memcmp(r->head.p, want_head, r->head.len) == 0,
              "%.*s", (int)r->head.len, r->head.p);
    cr_assert(has_line(&r->resp, "200 end=0"));
    cr_assert(has_line(&r->resp, "x-origin: yes"));
    cr_assert_eq(r->end.outcome, SOTH_H2_COMPLETE);
    cr_assert_eq(r->end.request_bytes, 0);
    cr_assert_eq(r->end.response_bytes, 5);
    cr_assert_str_eq(r->end.detail, "complete");

    /* Idle: nothing to write, still reading; stream slots are all back. */
    cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_UPSTREAM));
    cr_assert(soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.streams, 0);
    cr_assert_eq(st.streams_total, 1);
    cr_assert_eq(st.buffered[0] + st.buffered[1], 0);
    b_free(&want);
    h_free(h);
}

/* docs/http2.md "Memory": with a lender, output buffers and body chunks are held only while
 * they hold bytes; an idle relay holds none, and its own memory stays small. */
Test(h2_relay, lent_buffers_only_while_in_use)
{
    struct harness *h = &HS;
    h_init(h);
    h->lend = true;
    h_start(h);
    cr_assert_eq(h->lent_out + h->lent_chunks, 0, "idle after SETTINGS: %ld + %ld", h->lent_out,
                 h->lent_chunks);
    struct xchg *a = ua_post(h, "/echo", 300000);
    struct xchg *b = ua_get(h, "/get?n=100000");
    pump(h);
    assert_complete_echo(h, a);
    struct bytes want = {0};
    expected_gen(&want, 100000);
    cr_assert(b_eq(&b->resp_body, &want));
    b_free(&want);
    cr_assert_gt(h->lent_out_peak, 0);
    cr_assert_gt(h->lent_chunks_peak, 1);
    cr_assert_eq(h->lent_out, 0, "idle relay holds %ld output buffers", h->lent_out);
    cr_assert_eq(h->lent_chunks, 0, "idle relay holds %ld chunks", h->lent_chunks);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.chunk_bytes, 0);
    cr_assert_eq(st.streams, 0);
    /* The relay's own memory, both nghttp2 sessions included, after an exchange: no 16 KiB
     * output buffer and no chunk among it. The sessions' frame buffers (16 KiB + 10 bytes) and
     * stream maps (4 KiB) are page blocks from libc, not counted there (their pages go back
     * when the relay is idle, soth_h2_relay_release). */
    if (getenv("SOTH_H2_VERBOSE"))
        fprintf(stderr, "idle relay with a lender: %zu bytes, and %zu in page blocks\n", h->mem.cur,
                st.page_bytes);
    cr_assert_eq(st.page_bytes, 2 * (16384 + 10 + 4096));
    /* The upstream session's struct (2,928 bytes in nghttp2 1.52) is on a page of its own,
     * not among the relay's heap bytes (docs/http2.md "Memory"). */
    if (soth_bc_enabled())
        cr_assert(st.up_page_bytes > 2900 && st.up_page_bytes <= 4096, "%zu", st.up_page_bytes);
    else
        cr_assert_eq(st.up_page_bytes, 0);
    cr_assert_lt(h->mem.cur + st.page_bytes + st.up_page_bytes, 64 * 1024,
                 "idle relay holds %zu + %zu bytes", h->mem.cur, st.page_bytes);
    h_free(h);
}

/* docs/http2.md "Memory": an idle relay gives back its sessions' frame buffers and stream maps
 * (pages) and its collectors; nothing while a stream is open; the connection goes on intact. */
Test(h2_relay, idle_release_then_more_exchanges_intact)
{
    struct harness *h = &HS;
    h_init(h);
    h->lend = true;
    h_start(h);
    struct xchg *x = ua_get(h, "/get?n=5");
    pump(h);
    cr_assert_eq(x->status, 200);
    size_t before = h->mem.cur;
    size_t got = soth_h2_relay_release(h->r);
    /* two frame buffers (16 KiB + 10 bytes: their 4 whole pages) and two stream maps (1 page
     * each), and the collectors' arrays */
    cr_assert_geq(got, 2 * 4 * 4096 + 2 * 4096 + 1, "released %zu", got);
    cr_assert_lt(h->mem.cur, before, "the collectors' arrays were freed (%zu -> %zu)", before,
                 h->mem.cur);

    /* A stream in flight: nothing is released, and it completes intact. */
    struct xchg *a = ua_post(h, "/echo", 70000);
    pump_once(h);
    cr_assert_eq(soth_h2_relay_release(h->r), 0);
    struct xchg *b = ua_get(h, "/get?n=100000");
    pump(h);
    assert_complete_echo(h, a);
    struct bytes want = {0};
    expected_gen(&want, 100000);
    cr_assert(b_eq(&b->resp_body, &want));
    b_free(&want);

    /* Released again after that, and again the next exchanges (new streams in the emptied
     * maps, frames in the emptied buffers, trailers, new heads) arrive byte-exact. */
    cr_assert_gt(soth_h2_relay_release(h->r), 0);
    h->release_each_round = true;
    for (int i = 0; i < 20; i++) {
        struct xchg *c = ua_post(h, "/echo", (size_t)(i * 7919) % 40000);
        pump(h);
        assert_complete_echo(h, c);
    }
    cr_assert_geq(h->releases, 20, "released between exchanges: %ld", h->releases);
    for (int i = 0; i < 30; i++)
        ua_post(h, "/echo", 1000 + (size_t)i * 977);
    pump(h);
    for (size_t i = h->nx - 30; i < h->nx; i++)
        assert_complete_echo(h, &h->x[i]);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.streams, 0);
    h_free(h);
}

/* docs/http2.md "Idle upstream connection": an idle relay parks its upstream leg (GOAWAY
 * NO_ERROR, session freed); frames without a stream are answered without it; the next request
 * waits, in pieces, until a new upstream connection is up, then it and the ones after go
 * through the new session byte-exact; when the new connection cannot be made, the waiting
 * request is refused (REFUSED_STREAM: the client may retry) and the client gets GOAWAY. */
Test(h2_relay, park_then_requests_on_a_new_upstream)
{
    struct harness *h = &HS;
    h_init(h);
    h->lend = true;
    h_start(h);
    struct xchg *x = ua_get(h, "/get?n=5");
    pump(h);
    cr_assert_eq(x->status, 200);
    size_t before = h->mem.cur;
    cr_assert_eq(soth_h2_relay_park(h->r), 1);
    cr_assert(soth_h2_relay_parked(h->r));
    cr_assert_lt(h->mem.cur + 1000, before, "the upstream session was freed (%zu -> %zu)", before,
                 h->mem.cur);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.up_page_bytes, 0, "the upstream session's page went with it");
    pump(h);
    cr_assert(h->origin_goaway && h->origin_goaway_code == NGHTTP2_NO_ERROR);
    cr_assert_eq(soth_h2_relay_park(h->r), 0, "parked already");

    /* A PING needs no upstream. */
    cr_assert_eq(nghttp2_submit_ping(h->ua, NGHTTP2_FLAG_NONE, NULL), 0);
    pump(h);
    cr_assert(!soth_h2_relay_waking(h->r));

    /* The next request, fed 7 bytes at a time: it waits (its body too) for a new connection. */
    h->piece = 7;
    struct xchg *a = ua_post(h, "/echo", 70000);
    pump(h);
    cr_assert(soth_h2_relay_waking(h->r));
    cr_assert_eq(a->status, 0);
    h->piece = 0;
    nghttp2_session_del(h->origin); /* the old connection is gone; a new origin session */
    h->origin_goaway = false;
    origin_new(h);
    cr_assert_eq(soth_h2_relay_unpark(h->r, true), 0);
    cr_assert(!soth_h2_relay_parked(h->r) && !soth_h2_relay_waking(h->r));
    pump(h);
    assert_complete_echo(h, a);
    for (int i = 0; i < 20; i++)
        ua_post(h, "/echo", 1000 + (size_t)i * 977);
    pump(h);
    for (size_t i = h->nx - 20; i < h->nx; i++)
        assert_complete_echo(h, &h->x[i]);
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.up_page_bytes > 0, soth_bc_enabled(), "the new session has a page again");
    cr_assert_eq(st.upstream_parked, 1);
    cr_assert_eq(st.upstream_unparked, 1);
    cr_assert(!h->ua_goaway);

    /* Parked again; this time no connection can be made. */
    cr_assert_eq(soth_h2_relay_park(h->r), 1);
    pump(h);
    struct xchg *b = ua_get(h, "/get?n=3");
    pump(h);
    cr_assert(soth_h2_relay_waking(h->r));
    cr_assert_eq(soth_h2_relay_unpark(h->r, false), 0);
    pump(h);
    cr_assert(b->rst_recv && b->rst_code == NGHTTP2_REFUSED_STREAM, "rst %d code %u", b->rst_recv,
              b->rst_code);
    cr_assert(h->ua_goaway && h->ua_goaway_code == NGHTTP2_NO_ERROR);
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_UPSTREAM));
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.streams, 0);
    h_free(h);
}

/* Not parked while busy: a stream open, or output held. */
Test(h2_relay, park_refused_while_busy)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_post(h, "/echo", 70000);
    pump_once(h);
    cr_assert_eq(soth_h2_relay_park(h->r), 0);
    pump(h);
    assert_complete_echo(h, a);
    soth_h2_relay_hold(h->r, SOTH_LEG_CLIENT, true);
    cr_assert_eq(soth_h2_relay_park(h->r), 0);
    soth_h2_relay_hold(h->r, SOTH_LEG_CLIENT, false);
    cr_assert_eq(soth_h2_relay_park(h->r), 1);
    h_free(h);
}

/* A head nghttp2 refuses on receive (a connection-specific field) ends its block with no
 * on_frame_recv: the stream's close ends the block, so the idle relay still gives back its
 * memory (soth_h2_relay_release waits for no block half received). */
Test(h2_relay, release_after_refused_heads)
{
    struct harness *h = &HS;
    h_init(h);
    h->lend = true;
    h_start(h);
    static const nghttp2_nv conn = {(uint8_t *)"connection", (uint8_t *)"keep-alive", 10, 10, 0};
    struct xchg *a = ua_submit(h, "GET", "/get?n=3", 0);
    a->extra = &conn;
    a->n_extra = 1;
    ua_send(h, a);
    pump(h);
    cr_assert(a->rst_recv && a->rst_code == NGHTTP2_PROTOCOL_ERROR, "rst %d code %u", a->rst_recv,
              a->rst_code);
    cr_assert_null(os_find_path(h, "/get?n=3"), "the refused request reached the origin");
    cr_assert_gt(soth_h2_relay_release(h->r), 0, "a refused request head");
    struct xchg *b = ua_get(h, "/conn-header");
    pump(h);
    cr_assert_eq(b->status, 502);
    cr_assert_gt(soth_h2_relay_release(h->r), 0, "a refused response head");
    struct xchg *c = ua_get(h, "/get?n=7");
    pump(h);
    cr_assert_eq(c->status, 200);
    cr_assert_eq(c->resp_body.len, 7);
    h_free(h);
}

Test(h2_relay, post_body_both_ways_byte_exact)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_post(h, "/echo", 100000);
    struct xchg *b = ua_post(h, "/echo", 1);
    struct xchg *c = ua_submit(h, "POST", "/echo", 0); /* empty body, END_STREAM on DATA */
    ua_send(h, c);
    pump(h);
    assert_complete_echo(h, a);
    assert_complete_echo(h, b);
    assert_complete_echo(h, c);
    cr_assert(has_line(&rec_of(a->sid)->head, "POST https://origin.test/echo proto= end=0"));
    h_free(h);
}

Test(h2_relay, hundred_concurrent_streams_distinct_bodies)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    for (int i = 0; i < 100; i++)
        ua_post(h, "/echo", 1000 + (size_t)i * 517);
    pump(h);
    for (size_t i = 0; i < h->nx; i++)
        assert_complete_echo(h, &h->x[i]);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.streams_total, 100);
    cr_assert_eq(st.streams, 0);
    cr_assert_geq(st.streams_peak, 50, "streams ran concurrently (peak %u)", st.streams_peak);
    h_free(h);
}

Test(h2_relay, thousand_streams_byte_accounting)
{
    struct harness *h = &HS;
    h_init(h);
    h->origin_max_streams = 64; /* the upstream leg queues beyond this */
    h_start(h);
    uint64_t want = 0;
    for (int i = 0; i < 1000; i++) {
        struct xchg *x = ua_post(h, "/echo", (size_t)(i * 37) % 3000);
        want += x->req_body.len;
    }
    pump(h);
    uint64_t req = 0, resp = 0;
    size_t complete = 0;
    for (size_t i = 0; i < h->nx; i++) {
        assert_complete_echo(h, &h->x[i]);
        struct rec *r = rec_of(h->x[i].sid);
        req += r->end.request_bytes;
        resp += r->end.response_bytes;
        complete += r->end.outcome == SOTH_H2_COMPLETE;
    }
    cr_assert_eq(complete, 1000);
    cr_assert_eq(req, want);
    cr_assert_eq(resp, want);
    size_t ends = 0;
    for (size_t i = 0; i < h->nrecs; i++)
        ends += (size_t)h->recs[i].n_end;
    cr_assert_eq(ends, 1000);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.streams_total, 1000);
    cr_assert_leq(st.streams_peak, 100 * 2 + 16);
    h_free(h);
}

/* 8 MiB each way through small peer windows and slow readers: the relay holds at most its
 * advertised connection window per direction, whatever the body size. */
Test(h2_relay, large_bodies_bounded_buffering, .timeout = 300)
{
    struct harness *h = &HS;
    h_init(h);
    h->set.connection_window = 256 * 1024;
    h->set.initial_window = 65535;
    h->ua_window = 16384;
    h->origin_window = 16384;
    h->ua_rate = 48 * 1024;
    h->origin_rate = 48 * 1024;
    h_start(h);
    struct xchg *x = ua_post(h, "/echo", 8u << 20);
    struct xchg *y = ua_get(h, "/get?n=8388608");
    pump(h);
    assert_complete_echo(h, x);
    struct bytes want = {0};
    expected_gen(&want, 8u << 20);
    cr_assert(b_eq(&y->resp_body, &want));
    b_free(&want);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    for (int d = 0; d < 2; d++) {
        cr_assert_eq(st.buffer_bound[d], 256 * 1024);
        cr_assert_leq(st.buffered_peak[d], st.buffer_bound[d]);
        cr_assert_gt(st.buffered_peak[d], 16384, "dir %d never buffered (%zu)", d,
                     st.buffered_peak[d]);
    }
    if (getenv("SOTH_H2_VERBOSE"))
        fprintf(stderr, "peak buffered %zu/%zu, relay memory peak %zu, chunks %zu, rounds %ld\n",
                st.buffered_peak[0], st.buffered_peak[1], h->mem.peak, st.chunk_bytes, h->rounds);
    /* Whole relay (nghttp2 included): far below the 16 MiB that crossed it. */
    cr_assert_lt(h->mem.peak, 1536 * 1024, "relay peak memory %zu", h->mem.peak);
    cr_assert_leq(st.chunk_bytes, 2 * 256 * 1024 + 64 * 4096);
    h_free(h);
}

Test(h2_relay, trailers_both_ways)
{
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "trailers";
    h_start(h);
    struct xchg *x = ua_submit(h, "POST", "/trailers", 3000);
    x->req_trailers = true;
    ua_send(h, x);
    struct xchg *e = ua_submit(h, "POST", "/trailers", 0); /* trailers right after the head */
    e->req_trailers = true;
    ua_send(h, e);
    pump(h);
    for (int i = 0; i < 2; i++) {
        struct xchg *t = i ? e : x;
        cr_assert_eq(t->status, 200);
        cr_assert(b_eq(&t->resp_body, &t->req_body));
        cr_assert(has_line(&t->resp_trailers, "x-resp-trailer: xyz"), "%.*s",
                  (int)t->resp_trailers.len, t->resp_trailers.p);
        cr_assert(has_line(&t->resp_trailers, "grpc-status: 0"));
        struct rec *r = rec_of(t->sid);
        cr_assert_eq(r->end.outcome, SOTH_H2_COMPLETE);
        cr_assert(has_line(&r->trailers[SOTH_LEG_CLIENT], "x-req-trailer: abc"));
        cr_assert(has_line(&r->trailers[SOTH_LEG_CLIENT], "x-req-trailer-2: def"));
        cr_assert(has_line(&r->trailers[SOTH_LEG_UPSTREAM], "x-resp-trailer: xyz"));
        cr_assert(has_line(&r->head, "te: trailers"));
    }
    int seen = 0;
    for (struct ostream *o = h->os; o != NULL; o = o->next) {
        cr_assert(has_line(&o->req_trailers, "x-req-trailer: abc"));
        cr_assert(has_line(&o->req_trailers, "x-req-trailer-2: def"));
        seen++;
    }
    cr_assert_eq(seen, 2);
    h_free(h);
}

Test(h2_relay, rst_from_client_propagates_code)
{
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "rst-client";
    h_start(h);
    struct xchg *a = ua_get(h, "/slow");
    struct xchg *b = ua_submit(h, "POST", "/slow", 0);
    b->extra = NULL;
    ua_send(h, b);
    struct xchg *c = ua_get(h, "/slow");
    pump(h);
    cr_assert_eq(nghttp2_submit_rst_stream(h->ua, 0, a->sid, NGHTTP2_CANCEL), 0);
    cr_assert_eq(nghttp2_submit_rst_stream(h->ua, 0, b->sid, NGHTTP2_ENHANCE_YOUR_CALM), 0);
    cr_assert_eq(nghttp2_submit_rst_stream(h->ua, 0, c->sid, NGHTTP2_FLOW_CONTROL_ERROR), 0);
    pump(h);
    struct {
        struct xchg *x;
        uint32_t sent, want;
    } t[] = {
        {a, NGHTTP2_CANCEL, NGHTTP2_CANCEL},
        {b, NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_ENHANCE_YOUR_CALM},
        {c, NGHTTP2_FLOW_CONTROL_ERROR, NGHTTP2_INTERNAL_ERROR}, /* hop-only code */
    };
    int found = 0;
    for (size_t i = 0; i < 3; i++) {
        struct rec *r = rec_of(t[i].x->sid);
        cr_assert_eq(r->n_end, 1);
        cr_assert_eq(r->end.outcome, SOTH_H2_CLIENT_ABORTED);
        cr_assert_eq(r->end.error_code, t[i].sent);
        cr_assert_str_eq(r->end.detail, "client_rst_stream");
    }
    for (struct ostream *o = h->os; o != NULL; o = o->next) {
        cr_assert(o->rst_recv);
        for (size_t i = 0; i < 3; i++)
            if ((int32_t)o->sid == (int32_t)(2 * i + 1)) { /* upstream ids follow client order */
                cr_assert_eq(o->rst_code, t[i].want, "upstream stream %d got %u", o->sid,
                             o->rst_code);
                found++;
            }
    }
    cr_assert_eq(found, 3);
    /* The connection goes on. */
    struct xchg *d = ua_get(h, "/get?n=7");
    pump(h);
    cr_assert_eq(d->status, 200);
    cr_assert_eq(d->resp_body.len, 7);
    h_free(h);
}

Test(h2_relay, rst_from_origin_propagates_code)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_get(h, "/rst?code=7");                     /* REFUSED_STREAM */
    struct xchg *b = ua_get(h, "/rst?code=8");                     /* CANCEL */
    struct xchg *c = ua_get(h, "/rst?code=1");                     /* PROTOCOL_ERROR: hop-only */
    struct xchg *d = ua_post(h, "/rst-after-head?code=2", 100000); /* after the head */
    pump(h);
    struct {
        struct xchg *x;
        uint32_t code, ua;
    } t[] = {{a, 7, 7}, {b, 8, 8}, {c, 1, NGHTTP2_INTERNAL_ERROR}, {d, 2, 2}};
    for (size_t i = 0; i < 4; i++) {
        struct xchg *x = t[i].x;
        cr_assert(x->rst_recv, "stream %d", x->sid);
        cr_assert_eq(x->rst_code, t[i].ua, "stream %d: %u", x->sid, x->rst_code);
        struct rec *r = rec_of(x->sid);
        cr_assert_eq(r->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
        cr_assert_eq(r->end.error_code, t[i].code);
        cr_assert_str_eq(r->end.detail, "upstream_rst_stream");
    }
    cr_assert_eq(d->status, 200, "the head before the reset was relayed (%d)", d->status);
    cr_assert(rec_of(d->sid)->resp_head);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.buffered[0] + st.buffered[1], 0);
    cr_assert_eq(st.streams, 0);
    struct xchg *e = ua_get(h, "/get?n=3");
    pump(h);
    cr_assert_eq(e->status, 200);
    h_free(h);
}

/* timeouts.response_header_ms, clock kept by the caller: soth_h2_relay_timeout answers 504 on
 * the late stream only and cancels it upstream; streams with a head are left alone. */
Test(h2_relay, late_response_head_gets_504_on_that_stream)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_get(h, "/slow");
    struct xchg *b = ua_get(h, "/get?n=5");
    pump(h);
    cr_assert_eq(a->status, 0, "no head yet");
    cr_assert_eq(b->status, 200);
    cr_assert(!soth_h2_relay_timeout(h->r, b->sid), "b has its head");
    cr_assert(!soth_h2_relay_timeout(h->r, 999), "unknown stream");
    cr_assert(soth_h2_relay_timeout(h->r, a->sid));
    cr_assert(!soth_h2_relay_timeout(h->r, a->sid), "answered already");
    pump(h);
    cr_assert_eq(a->status, 504);
    cr_assert_eq(a->resp_body.len, 0);
    cr_assert(a->closed && !a->rst_recv, "504 with END_STREAM, no reset");
    struct ostream *o = os_find_path(h, "/slow");
    cr_assert(o != NULL && o->rst_recv && o->rst_code == NGHTTP2_CANCEL, "upstream cancelled");
    struct rec *r = rec_of(a->sid);
    cr_assert_eq(r->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
    cr_assert_str_eq(r->end.detail, "upstream_timeout");
    cr_assert_eq(rec_of(b->sid)->end.outcome, SOTH_H2_COMPLETE);
    struct xchg *c = ua_get(h, "/get?n=3"); /* the connection goes on */
    pump(h);
    cr_assert_eq(c->status, 200);
    h_free(h);
}

Test(h2_relay, goaway_from_origin)
{
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "goaway-origin";
    h_start(h);
    pump(h); /* settle SETTINGS first */
    struct xchg *a = ua_get(h, "/get?n=10");
    struct xchg *b = ua_get(h, "/goaway");
    struct xchg *c = ua_get(h, "/slow");
    pump(h);
    cr_assert_eq(a->status, 200);
    cr_assert_eq(a->resp_body.len, 10);
    cr_assert_eq(b->status, 200);
    cr_assert_eq(b->resp_body.len, 2);
    cr_assert(c->rst_recv && c->rst_code == NGHTTP2_REFUSED_STREAM, "c: rst %d code %u",
              c->rst_recv, c->rst_code);
    struct rec *rc = rec_of(c->sid);
    cr_assert_eq(rc->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
    cr_assert_str_eq(rc->end.detail, "upstream_refused");
    cr_assert(h->ua_goaway);
    cr_assert_eq(h->ua_goaway_code, NGHTTP2_NO_ERROR);
    cr_assert(soth_h2_relay_goaway_received(h->r, SOTH_LEG_UPSTREAM));
    cr_assert(!soth_h2_relay_goaway_received(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_failed(h->r, SOTH_LEG_UPSTREAM), "a graceful GOAWAY is no failure");
    cr_assert(!soth_h2_relay_failed(h->r, SOTH_LEG_CLIENT));
    cr_assert_eq(rec_of(a->sid)->end.outcome, SOTH_H2_COMPLETE);
    cr_assert_eq(rec_of(b->sid)->end.outcome, SOTH_H2_COMPLETE);
    /* Everything drained: the client leg is finished. */
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    h_free(h);
}

Test(h2_relay, goaway_from_client_reaches_origin)
{
    uint32_t codes[] = {NGHTTP2_NO_ERROR, NGHTTP2_PROTOCOL_ERROR};
    for (int i = 0; i < 2; i++) {
        struct harness *h = &HS;
        h_init(h);
        h_start(h);
        struct xchg *a = ua_post(h, "/echo", 50000);
        pump_once(h);
        cr_assert_eq(nghttp2_submit_goaway(h->ua, 0, 0, codes[i], NULL, 0), 0);
        pump(h);
        cr_assert(h->origin_goaway);
        cr_assert_eq(h->origin_goaway_code, NGHTTP2_NO_ERROR, "the client's code stays on its hop");
        cr_assert(soth_h2_relay_goaway_received(h->r, SOTH_LEG_CLIENT));
        cr_assert(!soth_h2_relay_failed(h->r, SOTH_LEG_CLIENT));
        assert_complete_echo(h, a); /* in flight: finishes */
        cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_UPSTREAM), "upstream leg finished");
        h_free(h);
    }
}

static nghttp2_nv big_fields[12];
static char big_names[12][32];
static char big_value[8001];

static void make_big_fields(size_t n)
{
    memset(big_value, 'q', 8000);
    for (size_t i = 0; i < n; i++) {
        snprintf(big_names[i], sizeof(big_names[i]), "x-huge-%02zu", i);
        big_fields[i] = (nghttp2_nv){(uint8_t *)big_names[i], (uint8_t *)big_value,
                                     strlen(big_names[i]), 8000, NGHTTP2_NV_FLAG_NO_INDEX};
    }
}

Test(h2_relay, oversized_request_headers_get_431)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    make_big_fields(9); /* 9 * (8010 + 32) > 65536 */
    struct xchg *a = ua_submit(h, "GET", "/get?n=1", 0);
    a->extra = big_fields;
    a->n_extra = 9;
    ua_send(h, a);
    struct xchg *b = ua_submit(h, "POST", "/echo", 50000); /* with a body still coming */
    b->extra = big_fields;
    b->n_extra = 9;
    ua_send(h, b);
    pump(h);
    for (int i = 0; i < 2; i++) {
        struct xchg *x = i ? b : a;
        cr_assert_eq(x->status, 431, "stream %d status %d", x->sid, x->status);
        cr_assert(x->closed);
        struct rec *r = rec_of(x->sid);
        cr_assert_eq(r->state, 2);
        cr_assert_eq(r->head.len, 0, "no request_head for a refused block");
        cr_assert_eq(r->end.outcome, SOTH_H2_RESET);
        cr_assert_str_eq(r->end.detail, "request_headers_too_large");
    }
    cr_assert_null(h->os, "nothing reached the origin");
    /* Just under the limit passes, and the connection survives. */
    make_big_fields(8);
    struct xchg *c = ua_submit(h, "GET", "/get?n=2", 0);
    c->extra = big_fields;
    c->n_extra = 7;
    ua_send(h, c);
    pump(h);
    cr_assert_eq(c->status, 200);
    cr_assert_eq(rec_of(c->sid)->end.outcome, SOTH_H2_COMPLETE);
    struct ostream *o = os_find_path(h, "/get?n=2");
    cr_assert_not_null(o);
    cr_assert_gt(o->req_hdrs.len, 7 * 8000);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.buffered[0] + st.buffered[1], 0, "the refused body was not kept");
    h_free(h);
}

Test(h2_relay, oversized_response_headers_get_502)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_get(h, "/big-resp-headers");
    pump(h);
    cr_assert_eq(a->status, 502);
    struct rec *r = rec_of(a->sid);
    cr_assert(!r->resp_head, "the oversized head is not reported");
    cr_assert_eq(r->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
    cr_assert_str_eq(r->end.detail, "response_headers_too_large");
    struct ostream *o = os_find_path(h, "/big-resp-headers");
    cr_assert(o->rst_recv);
    cr_assert_eq(o->rst_code, NGHTTP2_INTERNAL_ERROR);
    struct xchg *b = ua_get(h, "/big-resp-trailers");
    struct xchg *c = ua_get(h, "/get?n=9");
    pump(h);
    cr_assert(b->rst_recv);
    cr_assert_eq(b->rst_code, NGHTTP2_INTERNAL_ERROR);
    cr_assert_eq(rec_of(b->sid)->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
    cr_assert_str_eq(rec_of(b->sid)->end.detail, "response_trailers_too_large");
    cr_assert_eq(c->status, 200);
    cr_assert_eq(c->resp_body.len, 9);
    h_free(h);
}

/* A ":status" below 100 ("000".."099" pass nghttp2's three-digit check) is a malformed
 * response: never reported or relayed, a 502 for the client (after a relayed 1xx too), the
 * upstream stream reset with PROTOCOL_ERROR, the connection goes on. */
Test(h2_relay, response_status_below_100_gets_502)
{
    static const char *const paths[] = {"/status?s=099", "/status?s=000", "/status103?s=042"};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(paths); i++) {
        struct harness *h = &HS;
        h_init(h);
        h_start(h);
        struct xchg *a = ua_get(h, paths[i]);
        pump(h);
        cr_assert_eq(a->status, 502, "%s: %d", paths[i], a->status);
        cr_assert_eq(a->n_interim, i == 2 ? 1 : 0);
        cr_assert_eq(a->resp_body.len, 0);
        struct rec *r = rec_of(a->sid);
        cr_assert(!r->resp_head, "the malformed head is not reported");
        cr_assert_eq(r->n_end, 1);
        cr_assert_eq(r->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
        cr_assert_eq(r->end.error_code, NGHTTP2_PROTOCOL_ERROR);
        cr_assert_str_eq(r->end.detail, "response_bad_status");
        struct ostream *o = os_find_path(h, paths[i]);
        cr_assert(o->rst_recv);
        cr_assert_eq(o->rst_code, NGHTTP2_PROTOCOL_ERROR);
        struct xchg *b = ua_get(h, "/get?n=9");
        pump(h);
        cr_assert_eq(b->status, 200);
        cr_assert_eq(b->resp_body.len, 9);
        cr_assert(!h->ua_goaway);
        h_free(h);
    }
}

/* Walk the frames in buf; return the error code of the first GOAWAY, or -1. */
static long find_goaway(const struct bytes *b)
{
    size_t i = 0;
    while (i + 9 <= b->len) {
        const uint8_t *p = (const uint8_t *)b->p + i;
        size_t len = ((size_t)p[0] << 16) | ((size_t)p[1] << 8) | p[2];
        if (i + 9 + len > b->len)
            break;
        if (p[3] == NGHTTP2_GOAWAY && len >= 8)
            return (long)(((uint32_t)p[13] << 24) | ((uint32_t)p[14] << 16) |
                          ((uint32_t)p[15] << 8) | p[16]);
        i += 9 + len;
    }
    return -1;
}

Test(h2_relay, bad_preface_goaway)
{
    struct harness *h = &HS;
    h_init(h);
    struct soth_h2_cbs cbs = CBS;
    cbs.ctx = h;
    h->r = soth_h2_relay_new(&cbs, NULL);
    const char *junk = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    cr_assert(!soth_h2_relay_failed(h->r, SOTH_LEG_CLIENT));
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, junk, strlen(junk)), SOTH_E_MALFORMED);
    cr_assert(soth_h2_relay_failed(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_failed(h->r, SOTH_LEG_UPSTREAM));
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    cr_assert(soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    cr_assert_eq(soth_h2_relay_flush(h->r), 0);
    cr_assert_eq(find_goaway(&h->to_ua), NGHTTP2_PROTOCOL_ERROR);
    cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, junk, 3), SOTH_E_CLOSED);
    soth_h2_relay_free(h->r);
    b_free(&h->to_ua);
    b_free(&h->to_origin);
}

Test(h2_relay, garbage_after_preface_goaway)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_get(h, "/slow");
    pump(h);
    /* A DATA frame on stream 0 is a connection error (RFC 9113 6.1). */
    static const uint8_t bad[] = {0, 0, 4, NGHTTP2_DATA, 0, 0, 0, 0, 0, 'a', 'b', 'c', 'd'};
    ssize_t rc = soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, (const char *)bad, sizeof(bad));
    cr_assert(rc == (ssize_t)sizeof(bad) || rc < 0);
    cr_assert_eq(soth_h2_relay_flush(h->r), 0);
    cr_assert_eq(find_goaway(&h->to_ua), NGHTTP2_PROTOCOL_ERROR);
    /* nghttp2 answered the connection error itself: the leg counts as failed */
    cr_assert(soth_h2_relay_failed(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_goaway_received(h->r, SOTH_LEG_CLIENT));
    cr_assert(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, (const char *)bad, 9) < 0);
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    struct rec *r = rec_of(a->sid);
    cr_assert_eq(r->n_end, 1);
    cr_assert_eq(r->end.outcome, SOTH_H2_RESET);
    cr_assert_str_eq(r->end.detail, "client_protocol_error");
    /* The origin is told: its stream is cancelled and the leg goes away. */
    h->to_ua.len = 0;
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(h->origin, &p)) > 0)
        soth_h2_relay_feed(h->r, SOTH_LEG_UPSTREAM, (const char *)p, (size_t)n);
    cr_assert_eq(
        nghttp2_session_mem_recv(h->origin, (const uint8_t *)h->to_origin.p, h->to_origin.len),
        (ssize_t)h->to_origin.len);
    struct ostream *o = os_find_path(h, "/slow");
    cr_assert(o->rst_recv);
    cr_assert_eq(o->rst_code, NGHTTP2_CANCEL);
    cr_assert(h->origin_goaway);
    h_free(h);
}

Test(h2_relay, client_eof_and_reset_outcomes)
{
    for (int reset = 0; reset < 2; reset++) {
        struct harness *h = &HS;
        h_init(h);
        h_start(h);
        struct xchg *done = ua_get(h, "/get?n=1");
        struct xchg *a = ua_get(h, "/slow");
        struct xchg *b = ua_post(h, "/slow", 10);
        pump(h);
        soth_h2_relay_eof(h->r, SOTH_LEG_CLIENT, reset);
        cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
        cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
        enum soth_h2_outcome want = reset ? SOTH_H2_RESET : SOTH_H2_CLIENT_ABORTED;
        for (int i = 0; i < 2; i++) {
            struct rec *r = rec_of((i ? b : a)->sid);
            cr_assert_eq(r->n_end, 1, "reported at once");
            cr_assert_eq(r->end.outcome, want);
            cr_assert_str_eq(r->end.detail, reset ? "client_reset" : "client_eof");
        }
        cr_assert_eq(rec_of(done->sid)->end.outcome, SOTH_H2_COMPLETE);
        cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, "x", 1), SOTH_E_CLOSED);
        h->to_ua.len = 0;
        /* Only the origin is left: it sees the cancels and a GOAWAY. */
        for (int i = 0; i < 50; i++) {
            const uint8_t *p;
            ssize_t n;
            while ((n = nghttp2_session_mem_send(h->origin, &p)) > 0)
                soth_h2_relay_feed(h->r, SOTH_LEG_UPSTREAM, (const char *)p, (size_t)n);
            soth_h2_relay_flush(h->r);
            if (h->to_origin.len == 0)
                break;
            nghttp2_session_mem_recv(h->origin, (const uint8_t *)h->to_origin.p, h->to_origin.len);
            h->to_origin.len = 0;
        }
        cr_assert(h->origin_goaway);
        for (struct ostream *o = h->os; o != NULL; o = o->next)
            if (strcmp(o->path, "/slow") == 0)
                cr_assert(o->rst_recv && o->rst_code == NGHTTP2_CANCEL);
        struct soth_h2_stats st;
        soth_h2_relay_stats(h->r, &st);
        cr_assert_eq(st.streams, 0, "slots freed once the upstream resets went out");
        cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_UPSTREAM));
        h_free(h);
    }
}

Test(h2_relay, upstream_eof_outcomes)
{
    for (int reset = 0; reset < 2; reset++) {
        struct harness *h = &HS;
        h_init(h);
        h_start(h);
        struct xchg *a = ua_get(h, "/slow");
        struct xchg *b = ua_post(h, "/rst-after-head?code=0", 0); /* head only, then NO_ERROR */
        (void)b;
        pump(h);
        soth_h2_relay_eof(h->r, SOTH_LEG_UPSTREAM, reset);
        /* New streams are refused from now on. */
        struct xchg *c = ua_get(h, "/get?n=1");
        for (int i = 0; i < 100 && pump_once(h); i++)
            ;
        cr_assert_eq(a->status, 502);
        struct rec *r = rec_of(a->sid);
        cr_assert_eq(r->end.outcome, reset ? SOTH_H2_RESET : SOTH_H2_UPSTREAM_ABORTED);
        cr_assert_str_eq(r->end.detail, reset ? "upstream_reset" : "upstream_eof");
        cr_assert(h->ua_goaway);
        cr_assert_eq(h->ua_goaway_code, NGHTTP2_NO_ERROR);
        cr_assert(c->closed && c->status == 0, "c refused");
        cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
        cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
        h_free(h);
    }
}

/* A response received in full is still delivered after the upstream went away. */
Test(h2_relay, upstream_eof_keeps_complete_response)
{
    struct harness *h = &HS;
    h_init(h);
    h->ua_window = 1000;
    h->ua_rate = 1; /* the UA reads almost nothing: the response waits in the relay */
    h_start(h);
    struct xchg *a = ua_get(h, "/get?n=30000");
    for (int i = 0; i < 50; i++)
        pump_once(h);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_gt(st.buffered[SOTH_LEG_UPSTREAM], 20000, "held %zu", st.buffered[1]);
    soth_h2_relay_eof(h->r, SOTH_LEG_UPSTREAM, false);
    h->ua_rate = 1 << 20;
    pump(h);
    cr_assert_eq(a->status, 200);
    cr_assert_eq(a->resp_body.len, 30000);
    cr_assert_eq(rec_of(a->sid)->end.outcome, SOTH_H2_COMPLETE);
    h_free(h);
}

Test(h2_relay, interim_response_relayed)
{
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "interim";
    h_start(h);
    struct xchg *a = ua_get(h, "/interim");
    pump(h);
    cr_assert_eq(a->n_interim, 1);
    cr_assert_eq(a->status, 200);
    cr_assert_eq(a->resp_body.len, 3);
    struct rec *r = rec_of(a->sid);
    cr_assert(has_line(&r->resp, "200 end=0"), "only the final head is reported");
    h_free(h);
}

Test(h2_relay, extended_connect_only_when_origin_offers)
{
    for (int offer = 0; offer < 2; offer++) {
        struct harness *h = &HS;
        h_init(h);
        h->origin_connect_proto = offer;
        h_start(h);
        pump(h);
        cr_assert_eq(
            nghttp2_session_get_remote_settings(h->ua, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL),
            (uint32_t)offer);
        if (offer) {
            struct xchg *x = ua_submit(h, "CONNECT", "/chat", 0);
            x->protocol = "websocket";
            x->req_body.len = 0;
            ua_send(h, x);
            pump(h);
            struct ostream *o = os_find_path(h, "/chat");
            cr_assert_not_null(o);
            cr_assert_str_eq(o->protocol, "websocket");
            cr_assert_str_eq(o->method, "CONNECT");
            cr_assert(has_line(&rec_of(x->sid)->head,
                               "CONNECT https://origin.test/chat proto=websocket end=0"));
        }
        h_free(h);
    }
}

Test(h2_relay, rapid_reset_is_bounded)
{
    struct harness *h = &HS;
    h_init(h);
    h->set.rst_burst = 20;
    h->set.rst_rate = 1;
    h->set.max_concurrent_streams = 10;
    h_start(h);
    pump(h);
    for (int i = 0; i < 60 && !h->ua_goaway; i++) {
        struct xchg *x = ua_get(h, "/slow");
        pump_once(h); /* HEADERS out first, else nghttp2 just drops the queued request */
        cr_assert_eq(nghttp2_submit_rst_stream(h->ua, 0, x->sid, NGHTTP2_CANCEL), 0);
        pump_once(h);
        struct soth_h2_stats st;
        soth_h2_relay_stats(h->r, &st);
        cr_assert_leq(st.streams, 10 * 2 + 16);
    }
    cr_assert(h->ua_goaway, "the RST_STREAM rate limit ended the connection");
    cr_assert_eq(h->ua_goaway_code, NGHTTP2_INTERNAL_ERROR); /* nghttp2's rate limiter */
    h_free(h);
}

Test(h2_relay, out_error_is_returned)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    cr_assert_eq(nghttp2_submit_ping(h->ua, 0, NULL), 0);
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(h->ua, &p)) > 0)
        cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, (const char *)p, (size_t)n), n);
    cr_assert(soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT), "PING ACK pending");
    h->out_fail = -32; /* -EPIPE */
    cr_assert_eq(soth_h2_relay_flush(h->r), -32);
    cr_assert_eq(soth_h2_relay_flush(h->r), -32, "sticky");
    h_free(h);
}

Test(h2_relay, shutdown_drains)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *a = ua_post(h, "/echo", 5000);
    pump_once(h);
    soth_h2_relay_shutdown(h->r);
    pump(h);
    assert_complete_echo(h, a);
    cr_assert(h->ua_goaway);
    cr_assert(h->origin_goaway);
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    h_free(h);
}

/* ---- split feeds: a small exchange gives identical results at every split offset */

static void digest(struct harness *h, struct bytes *d)
{
    for (size_t i = 0; i < h->nx; i++) {
        struct xchg *x = &h->x[i];
        b_printf(d, "ua %d status %d closed %d/%u rst %d/%u\n", x->sid, x->status, x->closed,
                 x->close_code, x->rst_recv, x->rst_code);
        b_add(d, x->resp_hdrs.p, x->resp_hdrs.len);
        b_add(d, x->resp_body.p, x->resp_body.len);
        b_add(d, x->resp_trailers.p, x->resp_trailers.len);
        struct rec *r = rec_of(x->sid);
        b_printf(d, "\nrec %d %s %s %llu %llu %u\n", r->state, soth_h2_outcome_name(r->end.outcome),
                 r->detail, (unsigned long long)r->end.request_bytes,
                 (unsigned long long)r->end.response_bytes, r->end.error_code);
        b_add(d, r->head.p, r->head.len);
        b_add(d, r->resp.p, r->resp.len);
        for (int k = 0; k < 2; k++) {
            b_add(d, r->data[k].p, r->data[k].len);
            b_add(d, r->trailers[k].p, r->trailers[k].len);
        }
    }
    /* the origin's view, in stream order */
    for (int32_t sid = 1; sid < 64; sid += 2)
        for (struct ostream *o = h->os; o != NULL; o = o->next)
            if (o->sid == sid) {
                b_printf(d, "origin %d eof %d rst %d/%u\n", sid, o->req_eof, o->rst_recv,
                         o->rst_code);
                b_add(d, o->req_hdrs.p, o->req_hdrs.len);
                b_add(d, o->req_body.p, o->req_body.len);
                b_add(d, o->req_trailers.p, o->req_trailers.len);
            }
}

static void small_exchange(struct harness *h)
{
    ua_get(h, "/get?n=40");
    struct xchg *p = ua_submit(h, "POST", "/trailers", 300);
    p->req_trailers = true;
    ua_send(h, p);
    ua_get(h, "/rst?code=8");
    ua_get(h, "/interim");
}

/* Run the exchange with feeds from `side` split at `at` (SIZE_MAX: none); returns the
 * total bytes that side fed. */
static size_t run_split(struct harness *h, int side, size_t at, size_t piece, struct bytes *d)
{
    h_init(h);
    h->split_at[side] = at;
    h->piece = piece;
    h_start(h);
    small_exchange(h);
    pump(h);
    size_t fed = h->fed[side];
    digest(h, d);
    h_free(h);
    return fed;
}

Test(h2_relay, split_feeds_at_every_offset, .timeout = 300)
{
    struct harness *h = &HS;
    for (int side = 0; side < 2; side++) {
        struct bytes ref = {0};
        size_t total = run_split(h, side, SIZE_MAX, 0, &ref);
        cr_assert_gt(total, 100);
        cr_assert_gt(ref.len, 100);
        for (size_t at = 0; at <= total; at++) {
            struct bytes d = {0};
            run_split(h, side, at, 0, &d);
            cr_assert(b_eq(&d, &ref), "side %d split at %zu of %zu differs", side, at, total);
            b_free(&d);
        }
        struct bytes d = {0};
        run_split(h, side, SIZE_MAX, 1, &d); /* byte by byte, both sides */
        cr_assert(b_eq(&d, &ref), "byte-by-byte differs");
        b_free(&d);
        b_free(&ref);
    }
}

/* Allocation failure at every point of a small exchange: no crash, no leak; the relay
 * either works or fails cleanly. */
Test(h2_relay, fail_after_n_allocations, .timeout = 300)
{
    struct harness *h = &HS;
    long last_calls = 0, n;
    for (n = 0; n < 400; n++) {
        h_init(h);
        h->mem.fail_after = n;
        struct soth_h2_cbs cbs = CBS;
        cbs.ctx = h;
        h->set.mem = &h->memhook;
        h->r = soth_h2_relay_new(&cbs, &h->set);
        if (h->r == NULL) {
            cr_assert_eq(h->mem.cur, 0);
            continue;
        }
        ua_new(h);
        origin_new(h);
        ua_get(h, "/get?n=100");
        ua_post(h, "/trailers", 5000);
        h->x[1].req_trailers = true;
        for (int i = 0; i < 200; i++) {
            const uint8_t *p;
            ssize_t k;
            bool progress = false;
            while ((k = nghttp2_session_mem_send(h->ua, &p)) > 0) {
                soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, (const char *)p, (size_t)k);
                progress = true;
            }
            while ((k = nghttp2_session_mem_send(h->origin, &p)) > 0) {
                soth_h2_relay_feed(h->r, SOTH_LEG_UPSTREAM, (const char *)p, (size_t)k);
                progress = true;
            }
            soth_h2_relay_flush(h->r);
            if (h->to_ua.len) {
                if (nghttp2_session_mem_recv(h->ua, (const uint8_t *)h->to_ua.p, h->to_ua.len) < 0)
                    break;
                h->to_ua.len = 0;
                progress = true;
            }
            if (h->to_origin.len) {
                if (nghttp2_session_mem_recv(h->origin, (const uint8_t *)h->to_origin.p,
                                             h->to_origin.len) < 0)
                    break;
                h->to_origin.len = 0;
                progress = true;
            }
            if (!progress)
                break;
        }
        soth_h2_relay_eof(h->r, SOTH_LEG_CLIENT, true);
        soth_h2_relay_eof(h->r, SOTH_LEG_UPSTREAM, true);
        /* every accepted stream got exactly one end */
        for (size_t i = 0; i < h->nrecs; i++)
            if (h->recs[i].state != 0)
                cr_assert_eq(h->recs[i].state, 2);
        last_calls = h->mem.calls;
        h_free(h);
        if (last_calls <= n)
            break; /* the whole exchange ran without reaching the failure point */
    }
    cr_assert_leq(last_calls, 400, "exchange needs more than 400 allocations (%ld)", last_calls);
    cr_assert_geq(n, 8, "failure injected at %ld points only", n);
}

/* Holding a leg stops its output; the origin is then stopped by flow control alone, with
 * the relay holding no more than its window. */
Test(h2_relay, hold_applies_backpressure)
{
    struct harness *h = &HS;
    h_init(h);
    h->set.connection_window = 128 * 1024;
    h_start(h);
    struct xchg *a = ua_get(h, "/get?n=1048576");
    pump_once(h); /* the request goes out */
    soth_h2_relay_hold(h->r, SOTH_LEG_CLIENT, true);
    pump(h); /* settles: nothing more reaches the UA */
    struct ostream *o = os_find_path(h, "/get?n=1048576");
    cr_assert_not_null(o);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_leq(st.buffered[SOTH_LEG_UPSTREAM], 65535, "one stream window at most");
    cr_assert_gt(st.buffered[SOTH_LEG_UPSTREAM], 60000);
    cr_assert_lt(o->rd, 300 * 1024, "the origin stalled at %zu", o->rd);
    cr_assert(soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    soth_h2_relay_hold(h->r, SOTH_LEG_CLIENT, false);
    pump(h);
    cr_assert_eq(a->resp_body.len, 1048576);
    cr_assert_eq(rec_of(a->sid)->end.outcome, SOTH_H2_COMPLETE);
    h_free(h);
}

/* Heads are lent to nghttp2, not copied (docs/http2.md, "Memory"): request heads that wait
 * in the upstream session's queue (the origin takes one stream at a time) and response heads
 * that wait behind a held client leg must reach the other side intact while the collectors
 * they were built in go on to the next blocks. */
Test(h2_relay, heads_waiting_to_be_sent_arrive_intact)
{
    enum { N = 24 };
    static char paths[N][64], vals[N][256];
    static nghttp2_nv extra[N];
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "heads-waiting";
    h->origin_max_streams = 1;
    h_start(h);
    struct xchg *x[N];
    for (int i = 0; i < N; i++) {
        snprintf(paths[i], sizeof(paths[i]), "/get?n=%d&tag=%0*d", 10 + i, 1 + i % 7, i);
        size_t vl = 10 + (size_t)i * 9;
        memset(vals[i], 'a' + i, vl);
        extra[i] = (nghttp2_nv){(uint8_t *)"x-tag", (uint8_t *)vals[i], 5, vl, 0};
        x[i] = ua_submit(h, "GET", paths[i], 0);
        x[i]->extra = &extra[i];
        x[i]->n_extra = 1;
        ua_send(h, x[i]);
    }
    soth_h2_relay_hold(h->r, SOTH_LEG_CLIENT, true);
    pump(h);
    struct bytes want = {0};
    for (int i = 0; i < N; i++) {
        struct ostream *o = os_find_path(h, paths[i]);
        cr_assert_not_null(o, "the origin never got %s", paths[i]);
        want.len = 0;
        b_printf(&want,
                 ":method: GET\n:scheme: https\n:authority: origin.test\n:path: %s\n"
                 "user-agent: soth-test/1\nx-a: 1\ncookie: a=b\nx-b: 2\nx-tag: %.*s\n",
                 paths[i], (int)(10 + i * 9), vals[i]);
        cr_assert(b_eq(&o->req_hdrs, &want), "request %d arrived as\n%.*s", i, (int)o->req_hdrs.len,
                  o->req_hdrs.p);
    }
    cr_assert(soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT), "responses wait for the client");
    soth_h2_relay_hold(h->r, SOTH_LEG_CLIENT, false);
    pump(h);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(x[i]->status, 200);
        cr_assert_eq(x[i]->resp_body.len, (size_t)(10 + i));
        want.len = 0;
        b_printf(&want, "x-path: %s", paths[i]);
        b_add(&want, "", 1);
        cr_assert(has_line(&x[i]->resp_hdrs, want.p), "response %d: %.*s", i,
                  (int)x[i]->resp_hdrs.len, x[i]->resp_hdrs.p);
        cr_assert_eq(rec_of(x[i]->sid)->end.outcome, SOTH_H2_COMPLETE);
    }
    b_free(&want);
    h_free(h);
}

/* A mix of small exchanges on one connection (also the richest fuzz seed). */
Test(h2_relay, small_mix)
{
    struct harness *h = &HS;
    h_init(h);
    h->corpus_name = "mix";
    h_start(h);
    for (int i = 0; i < 6; i++)
        ua_post(h, "/echo", 50 + (size_t)i * 40);
    struct xchg *t = ua_submit(h, "POST", "/trailers", 120);
    t->req_trailers = true;
    ua_send(h, t);
    ua_get(h, "/rst?code=8");
    ua_get(h, "/interim");
    ua_get(h, "/get?n=1000");
    ua_get(h, "/nothing-here");
    pump(h);
    for (int i = 0; i < 6; i++)
        assert_complete_echo(h, &h->x[i]);
    cr_assert_eq(h->x[7].rst_code, NGHTTP2_CANCEL);
    cr_assert_eq(h->x[9].resp_body.len, 1000);
    cr_assert_eq(h->x[10].status, 404);
    cr_assert_eq(rec_of(h->x[10].sid)->end.outcome, SOTH_H2_COMPLETE);
    h_free(h);
}

/* Fuzz finding: the upstream leg closed while a request head was still arriving
 * (HEADERS without END_HEADERS); the head was then submitted to the dead session and its
 * slot never freed. Now the stream is refused and nothing is left after both EOFs. */
Test(h2_relay, upstream_gone_during_header_block)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    make_big_fields(3); /* 24 KB: HEADERS + CONTINUATION */
    struct xchg *a = ua_submit(h, "GET", "/get?n=1", 0);
    a->extra = big_fields;
    a->n_extra = 3;
    ua_send(h, a);
    struct bytes all = {0};
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(h->ua, &p)) > 0)
        b_add(&all, p, (size_t)n);
    cr_assert_gt(all.len, 9 + 16384);
    size_t first = 9 + 16384;
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, all.p, first), (ssize_t)first);
    soth_h2_relay_eof(h->r, SOTH_LEG_UPSTREAM, false);
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, all.p + first, all.len - first),
                 (ssize_t)(all.len - first));
    b_free(&all);
    h->to_origin.len = 0;
    for (int i = 0; i < 20 && pump_once(h); i++)
        h->to_origin.len = 0;
    cr_assert(a->closed);
    cr_assert(a->rst_recv);
    cr_assert_eq(a->rst_code, NGHTTP2_REFUSED_STREAM);
    struct rec *r = rec_of(a->sid);
    cr_assert_eq(r->end.outcome, SOTH_H2_UPSTREAM_ABORTED);
    cr_assert_str_eq(r->end.detail, "upstream_gone");
    soth_h2_relay_eof(h->r, SOTH_LEG_CLIENT, false);
    struct soth_h2_stats st;
    soth_h2_relay_stats(h->r, &st);
    cr_assert_eq(st.streams, 0);
    h_free(h);
}

/* Trailers wait in the relay until the body before them is forwarded; together they are
 * capped (4 x max_header_list_size), so HPACK-cheap large trailers cannot pile up. */
Test(h2_relay, held_trailers_are_capped)
{
    struct harness *h = &HS;
    h_init(h);
    h->origin_window = 1000;
    h->origin_rate = 1; /* the origin barely reads: bodies and trailers wait in the relay */
    h_start(h);
    make_big_fields(7); /* about 56 KB of trailers per stream */
    for (int i = 0; i < 5; i++) {
        struct xchg *x = ua_submit(h, "POST", "/trailers", 5000);
        x->req_trailers = true;
        x->trl = big_fields;
        x->n_trl = 7;
        ua_send(h, x);
    }
    for (int i = 0; i < 200; i++)
        pump_once(h);
    int refused = 0;
    for (size_t i = 0; i < h->nx; i++) {
        struct rec *r = rec_of(h->x[i].sid);
        if (r->state == 2) {
            cr_assert_str_eq(r->detail, "request_trailers_too_large");
            cr_assert(h->x[i].rst_recv);
            refused++;
        }
    }
    cr_assert_eq(refused, 1, "%d streams refused", refused);
    h->origin_rate = 1 << 20;
    pump(h);
    int complete = 0;
    for (size_t i = 0; i < h->nx; i++)
        if (rec_of(h->x[i].sid)->end.outcome == SOTH_H2_COMPLETE) {
            complete++;
            cr_assert(b_eq(&h->x[i].resp_body, &h->x[i].req_body));
        }
    cr_assert_eq(complete, 4);
    int with_trailers = 0;
    for (struct ostream *o = h->os; o != NULL; o = o->next)
        with_trailers += o->req_trailers.len > 7 * 8000;
    cr_assert_eq(with_trailers, 4);
    h_free(h);
}

/* PING flood: nghttp2 refuses to queue more than 1000 ACKs; the feed fails and the client
 * gets GOAWAY(ENHANCE_YOUR_CALM). */
Test(h2_relay, ping_flood_ends_connection)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct bytes pings = {0};
    for (int i = 0; i < 1100; i++) {
        uint8_t f[17] = {0, 0, 8, NGHTTP2_PING, 0, 0, 0, 0, 0, (uint8_t)i};
        b_add(&pings, f, sizeof(f));
    }
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, pings.p, pings.len), SOTH_E_MALFORMED);
    b_free(&pings);
    cr_assert_eq(soth_h2_relay_flush(h->r), 0);
    cr_assert_eq(find_goaway(&h->to_ua), NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    cr_assert(!soth_h2_relay_want_write(h->r, SOTH_LEG_CLIENT));
    h->to_ua.len = 0;
    h->to_origin.len = 0;
    h_free(h);
}

/* A single 70 KB field: when HPACK shrinks it under 64 KiB on the wire (Huffman), our list
 * accounting answers 431; when its encoded string is over 64 KiB, nghttp2's HPACK decoder
 * fails the connection (COMPRESSION_ERROR) before we see it. */
Test(h2_relay, single_huge_field)
{
    for (int raw = 0; raw < 2; raw++) {
        struct harness *h = &HS;
        h_init(h);
        h_start(h);
        static char v[70001];
        memset(v, raw ? '~' : 'z', 70000); /* '~' is 13 bits in Huffman: sent raw */
        static nghttp2_nv f = {(uint8_t *)"x-one", (uint8_t *)v, 5, 70000, 0};
        struct xchg *a = ua_submit(h, "GET", "/get?n=1", 0);
        a->extra = &f;
        a->n_extra = 1;
        ua_send(h, a);
        const uint8_t *p;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(h->ua, &p)) > 0)
            soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, (const char *)p, (size_t)n);
        cr_assert_eq(soth_h2_relay_flush(h->r), 0);
        if (raw) {
            cr_assert_eq(find_goaway(&h->to_ua), NGHTTP2_COMPRESSION_ERROR);
            cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
            h->to_ua.len = 0;
        } else {
            pump(h);
            cr_assert_eq(a->status, 431);
            cr_assert_null(h->os);
        }
        h->to_origin.len = 0;
        h_free(h);
    }
}

/* ---- stream states nghttp2 does not check (docs/http2.md, "Stream states"): raw client
 * frames, fed whole, split in two at every offset, and one byte at a time */

static void raw_frame(struct bytes *b, uint8_t type, uint8_t flags, uint32_t sid, const void *p,
                      size_t n)
{
    uint8_t hd[9] = {
        (uint8_t)(n >> 16),   (uint8_t)(n >> 8),    (uint8_t)n,          type,        flags,
        (uint8_t)(sid >> 24), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8), (uint8_t)sid};
    b_add(b, hd, sizeof(hd));
    if (n > 0)
        b_add(b, p, n);
}

/* GET https://a/ from the static table, :authority as a literal never added to the table, so
 * every block decodes alone */
static void raw_get(struct bytes *b, uint32_t sid, uint8_t flags)
{
    static const uint8_t block[] = {0x82, 0x87, 0x84, 0x01, 0x01, 'a'};
    raw_frame(b, NGHTTP2_HEADERS, (uint8_t)(NGHTTP2_FLAG_END_HEADERS | flags), sid, block,
              sizeof(block));
}

static void raw_priority(struct bytes *b, uint32_t sid, uint32_t dep)
{
    uint8_t p[5] = {(uint8_t)(dep >> 24), (uint8_t)(dep >> 16), (uint8_t)(dep >> 8), (uint8_t)dep,
                    15};
    raw_frame(b, NGHTTP2_PRIORITY, 0, sid, p, sizeof(p));
}

/* What the relay answered the client: the first GOAWAY (code, last stream id) and the first
 * RST_STREAM (stream, code); -1 when absent. */
struct answer {
    long goaway_code, goaway_last, rst_sid, rst_code;
    long bad_feed; /* offset of a feed that did not take its bytes, or -1 */
    size_t leaked; /* relay bytes not freed */
    size_t pings;  /* PING ACKs: the client's PINGs nghttp2 read */
};

#define WANT(goaway, last, rst_sid, rst_code)                                                      \
    ((struct answer){goaway, last, rst_sid, rst_code, -1, 0, 0})

static struct answer client_answer(const struct bytes *b)
{
    struct answer a = {-1, -1, -1, -1, -1, 0, 0};
    size_t i = 0;
    while (i + 9 <= b->len) {
        const uint8_t *p = (const uint8_t *)b->p + i;
        size_t len = ((size_t)p[0] << 16) | ((size_t)p[1] << 8) | p[2];
        if (i + 9 + len > b->len)
            break;
        uint32_t sid = ((uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8]);
        if (p[3] == NGHTTP2_GOAWAY && len >= 8 && a.goaway_code < 0) {
            a.goaway_last =
                ((uint32_t)p[9] << 24 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 8 | p[12]);
            a.goaway_code =
                ((uint32_t)p[13] << 24 | (uint32_t)p[14] << 16 | (uint32_t)p[15] << 8 | p[16]);
        }
        if (p[3] == NGHTTP2_PING && (p[4] & NGHTTP2_FLAG_ACK))
            a.pings++;
        if (p[3] == NGHTTP2_RST_STREAM && len == 4 && a.rst_sid < 0) {
            a.rst_sid = sid;
            a.rst_code =
                ((uint32_t)p[9] << 24 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 8 | p[12]);
        }
        i += 9 + len;
    }
    return a;
}

/* Feed `in` (after the client magic and an empty SETTINGS) in pieces: whole (piece 0, cut
 * SIZE_MAX), in two at `cut`, or `piece` bytes at a time; return what the client got. Asserts
 * nothing itself: the caller asserts once per run, naming the case. (No `.timeout` on the test
 * below: with one, libcriterion 2.4's runner leaks 48 bytes under ASan whenever it overlaps
 * another timed test such as split_feeds_at_every_offset.) */
static struct answer raw_run(const struct bytes *in, size_t cut, size_t piece)
{
    struct harness *h = &HS;
    h_init(h);
    struct soth_h2_cbs cbs = CBS;
    cbs.ctx = h;
    h->set.mem = &h->memhook;
    h->r = soth_h2_relay_new(&cbs, &h->set);
    cr_assert_not_null(h->r);
    struct bytes all = {0};
    b_add(&all, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    raw_frame(&all, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
    b_add(&all, in->p, in->len);
    size_t off = 0;
    long bad_feed = -1;
    while (off < all.len) {
        size_t n = all.len - off;
        if (piece > 0 && n > piece)
            n = piece;
        if (cut != SIZE_MAX && off < cut && off + n > cut)
            n = cut - off;
        ssize_t rc = soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, all.p + off, n);
        if (rc == SOTH_E_CLOSED)
            break;
        if (rc != (ssize_t)n) {
            bad_feed = (long)off;
            break;
        }
        off += n;
    }
    if (soth_h2_relay_flush(h->r) != 0 && bad_feed < 0)
        bad_feed = (long)all.len;
    struct answer a = client_answer(&h->to_ua);
    a.bad_feed = bad_feed;
    b_free(&all);
    soth_h2_relay_free(h->r);
    h->r = NULL;
    a.leaked = h->mem.cur;
    b_free(&h->to_ua);
    b_free(&h->to_origin);
    for (size_t i = 0; i < h->nrecs; i++) {
        struct rec *r = &h->recs[i];
        b_free(&r->head);
        b_free(&r->resp);
        for (int d = 0; d < 2; d++) {
            b_free(&r->data[d]);
            b_free(&r->trailers[d]);
        }
    }
    free(h->recs);
    return a;
}

static void expect_answer_pieces(const struct bytes *in, struct answer want, const char *what,
                                 bool bytewise)
{
    size_t total = NGHTTP2_CLIENT_MAGIC_LEN + 9 + in->len;
    for (size_t cut = 0; cut <= total; cut++) {
        for (size_t piece = 0; piece < 2; piece++) {
            if (piece == 1 && (cut > 0 || !bytewise))
                continue; /* one byte at a time: once */
            struct answer a = raw_run(in, cut == 0 ? SIZE_MAX : cut, piece);
            if (a.goaway_code != want.goaway_code || a.goaway_last != want.goaway_last ||
                a.rst_sid != want.rst_sid || a.rst_code != want.rst_code || a.bad_feed >= 0 ||
                a.leaked != 0)
                cr_assert_fail("%s (cut %zu, piece %zu): GOAWAY %ld last %ld, RST_STREAM %ld code "
                               "%ld, feed refused at %ld, %zu bytes leaked",
                               what, cut, piece, a.goaway_code, a.goaway_last, a.rst_sid,
                               a.rst_code, a.bad_feed, a.leaked);
        }
    }
}

static void expect_answer(const struct bytes *in, struct answer want, const char *what)
{
    expect_answer_pieces(in, want, what, true);
}

Test(h2_relay, stream_states_nghttp2_forgets)
{
    struct bytes b = {0};
    /* a stream id below one already used (RFC 9113 5.1.1) */
    raw_get(&b, 5, NGHTTP2_FLAG_END_STREAM);
    raw_get(&b, 3, NGHTTP2_FLAG_END_STREAM);
    expect_answer(&b, WANT(NGHTTP2_PROTOCOL_ERROR, 5, -1, -1), "id going back");
    /* DATA and HEADERS after the client reset the stream (5.1) */
    for (int type = 0; type < 2; type++) {
        b.len = 0;
        raw_get(&b, 1, 0);
        uint8_t code[4] = {0, 0, 0, NGHTTP2_CANCEL};
        raw_frame(&b, NGHTTP2_RST_STREAM, 0, 1, code, 4);
        if (type == 0)
            raw_frame(&b, NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 1, "x", 1);
        else
            raw_get(&b, 1, NGHTTP2_FLAG_END_STREAM);
        expect_answer(&b, WANT(NGHTTP2_STREAM_CLOSED, 1, -1, -1), "after reset");
    }
    /* DATA after the client's END_STREAM */
    b.len = 0;
    raw_get(&b, 1, NGHTTP2_FLAG_END_STREAM);
    raw_frame(&b, NGHTTP2_DATA, 0, 1, "x", 1);
    expect_answer(&b, WANT(NGHTTP2_STREAM_CLOSED, 1, -1, -1), "after END_STREAM");
    /* DATA on an id skipped by a higher one: closed, never opened */
    b.len = 0;
    raw_get(&b, 3, NGHTTP2_FLAG_END_STREAM);
    raw_frame(&b, NGHTTP2_DATA, 0, 1, "x", 1);
    expect_answer(&b, WANT(NGHTTP2_STREAM_CLOSED, 3, -1, -1), "skipped id");
    /* PRIORITY on stream 0 (6.3), and depending on itself on an idle stream (5.3.1, and no
     * RST_STREAM on an idle stream, 6.4) */
    b.len = 0;
    raw_priority(&b, 0, 1);
    expect_answer(&b, WANT(NGHTTP2_PROTOCOL_ERROR, 0, -1, -1), "PRIORITY on 0");
    b.len = 0;
    raw_priority(&b, 1, 1);
    expect_answer(&b, WANT(NGHTTP2_PROTOCOL_ERROR, 0, -1, -1), "PRIORITY idle self");
    /* ... and on an open stream: a stream error */
    b.len = 0;
    raw_get(&b, 1, 0);
    raw_priority(&b, 1, 1);
    expect_answer(&b, WANT(-1, -1, 1, NGHTTP2_PROTOCOL_ERROR), "PRIORITY open self");
    /* all well: PRIORITY for idle and open streams, a body, a new stream, trailers; and a
     * frame inside a header block is left to nghttp2 (PROTOCOL_ERROR, not STREAM_CLOSED) */
    b.len = 0;
    raw_get(&b, 1, 0);
    raw_priority(&b, 7, 0);
    raw_priority(&b, 1, 3);
    raw_frame(&b, NGHTTP2_DATA, 0, 1, "body", 4);
    raw_get(&b, 3, NGHTTP2_FLAG_END_STREAM);
    static const uint8_t trailer[] = {0x00, 0x01, 'x', 0x01, 'y'};
    raw_frame(&b, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1, trailer,
              sizeof(trailer));
    expect_answer(&b, WANT(-1, -1, -1, -1), "all well");
    b.len = 0;
    raw_get(&b, 1, NGHTTP2_FLAG_END_STREAM);
    b.p[4] &= (char)~NGHTTP2_FLAG_END_HEADERS;
    raw_frame(&b, NGHTTP2_DATA, 0, 1, "x", 1);
    /* (not byte by byte: nghttp2 1.52 counts every read of a frame header while it expects a
     * CONTINUATION against max_continuations) */
    expect_answer_pieces(&b, WANT(NGHTTP2_PROTOCOL_ERROR, 1, -1, -1), "inside a block", false);
    b_free(&b);
}

/* Frames that carry nothing (docs/http2.md "Stream states", the flood budget): at most 1,000
 * more PRIORITY and empty DATA frames than HEADERS and DATA with data, then
 * GOAWAY(ENHANCE_YOUR_CALM). Fed whole and one byte at a time (every cut of ~15 KB would take
 * minutes). */
static void expect_flood(const struct bytes *b, struct answer want, const char *what)
{
    for (size_t piece = 0; piece < 2; piece++) {
        struct answer a = raw_run(b, SIZE_MAX, piece);
        if (a.goaway_code != want.goaway_code || a.goaway_last != want.goaway_last ||
            a.rst_sid != want.rst_sid || a.bad_feed >= 0 || a.leaked != 0 || a.pings != 0)
            cr_assert_fail("%s (piece %zu): GOAWAY %ld last %ld, RST_STREAM %ld, feed refused at "
                           "%ld, %zu bytes leaked, %zu PINGs answered",
                           what, piece, a.goaway_code, a.goaway_last, a.rst_sid, a.bad_feed,
                           a.leaked, a.pings);
    }
}

static void raw_empty_data(struct bytes *b, uint32_t sid, bool padded)
{
    static const uint8_t pad0[1] = {0};
    if (padded)
        raw_frame(b, NGHTTP2_DATA, NGHTTP2_FLAG_PADDED, sid, pad0, 1);
    else
        raw_frame(b, NGHTTP2_DATA, 0, sid, NULL, 0);
}

Test(h2_relay, idle_frame_floods)
{
    struct bytes b = {0};
    /* PRIORITY: 1,000 pass, the 1,001st ends the connection */
    for (uint32_t i = 0; i < 1000; i++)
        raw_priority(&b, 2 * i + 1, 0);
    expect_flood(&b, WANT(-1, -1, -1, -1), "1000 PRIORITY");
    raw_priority(&b, 2001, 0);
    expect_flood(&b, WANT(NGHTTP2_ENHANCE_YOUR_CALM, 0, -1, -1), "1001 PRIORITY");
    /* empty DATA without END_STREAM on an open stream, plain or all padding */
    for (int padded = 0; padded < 2; padded++) {
        b.len = 0;
        raw_get(&b, 1, 0);
        for (int i = 0; i < 1000; i++)
            raw_empty_data(&b, 1, padded);
        expect_flood(&b, WANT(-1, -1, -1, -1),
                     padded ? "1000 padding-only DATA" : "1000 empty DATA");
        raw_empty_data(&b, 1, padded);
        expect_flood(&b, WANT(NGHTTP2_ENHANCE_YOUR_CALM, 1, -1, -1),
                     padded ? "1001 padding-only DATA" : "1001 empty DATA");
    }
    /* after the budget is spent, each DATA with data allows one more (500 empty DATA more
     * than the budget, each after a DATA with data) */
    b.len = 0;
    raw_get(&b, 1, 0);
    for (uint32_t i = 0; i < 1000; i++)
        raw_priority(&b, 2 * i + 3, 0);
    for (int i = 0; i < 500; i++) {
        raw_frame(&b, NGHTTP2_DATA, 0, 1, "x", 1);
        raw_empty_data(&b, 1, false);
    }
    expect_flood(&b, WANT(-1, -1, -1, -1), "idle frames between frames with data");
    raw_priority(&b, 4001, 0);
    expect_flood(&b, WANT(NGHTTP2_ENHANCE_YOUR_CALM, 1, -1, -1), "one more");
    /* the connection is condemned: PINGs behind the flood in the same read are never read
     * (no PING ACK), and the next feed is refused at once */
    b.len = 0;
    for (uint32_t i = 0; i < 1001; i++)
        raw_priority(&b, 2 * i + 1, 0);
    for (int i = 0; i < 10; i++)
        raw_frame(&b, NGHTTP2_PING, 0, 0, "12345678", 8);
    expect_flood(&b, WANT(NGHTTP2_ENHANCE_YOUR_CALM, 0, -1, -1), "PINGs after the flood");
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, b.p, b.len), (ssize_t)b.len);
    cr_assert_eq(soth_h2_relay_feed(h->r, SOTH_LEG_CLIENT, b.p, b.len), SOTH_E_CLOSED);
    cr_assert_eq(soth_h2_relay_flush(h->r), 0);
    cr_assert_eq(find_goaway(&h->to_ua), NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert(!soth_h2_relay_want_read(h->r, SOTH_LEG_CLIENT));
    h->to_ua.len = 0;
    h->to_origin.len = 0;
    h_free(h);
    b_free(&b);
}

/*
 * ALTSVC frames (RFC 7838 4) from the origin never reach the client: the relay re-frames on
 * both legs and drops frame types it does not handle, so no HTTP/3 alternative is advertised
 * over HTTP/2 (docs/http3.md). The connection and later exchanges are unaffected.
 */
Test(h2_relay, altsvc_frames_not_forwarded)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *x = ua_get(h, "/get?n=5");
    pump(h);
    cr_assert_eq(x->status, 200);
    static const char origin[] = "https://origin.test";
    static const char value[] = "h3=\":443\"; ma=86400";
    uint8_t fr[9 + 2 + sizeof(origin) + sizeof(value)];
    size_t plen = 2 + strlen(origin) + strlen(value);
    /* on stream 0 with an origin; then on the (closed) stream with an empty origin */
    for (int k = 0; k < 2; k++) {
        size_t olen = k == 0 ? strlen(origin) : 0;
        size_t len = plen - strlen(origin) + olen;
        uint32_t sid = k == 0 ? 0 : (uint32_t)x->sid;
        uint8_t hd[9] = {
            0,           (uint8_t)(len >> 8),  (uint8_t)len,         0x0a,
            0,           (uint8_t)(sid >> 24), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8),
            (uint8_t)sid};
        memcpy(fr, hd, 9);
        fr[9] = 0;
        fr[10] = (uint8_t)olen;
        memcpy(fr + 11, origin, olen);
        memcpy(fr + 11 + olen, value, strlen(value));
        feed(h, SOTH_LEG_UPSTREAM, fr, 9 + len);
        cr_assert_eq(h->feed_rc[SOTH_LEG_UPSTREAM], 0);
        cr_assert_eq(soth_h2_relay_flush(h->r), 0);
        cr_assert_eq(h->to_ua.len, 0, "%zu bytes towards the client", h->to_ua.len);
    }
    struct xchg *y = ua_get(h, "/get?n=7");
    pump(h);
    cr_assert_eq(y->status, 200);
    cr_assert(y->closed && y->close_code == 0);
    h_free(h);
}

static bool has_text(const struct bytes *b, const char *t)
{
    size_t l = strlen(t);
    for (size_t i = 0; i + l <= b->len; i++)
        if (memcmp(b->p + i, t, l) == 0)
            return true;
    return false;
}

/*
 * http3_passthrough false (strip_h3_alt_svc, docs/http3.md): the client gets the response
 * heads (the interim 103 too) without the HTTP/3 entries of Alt-Svc, a field left empty is
 * gone, other entries stay; the callback reports the head as the origin sent it and the
 * removed entries.
 */
Test(h2_relay, alt_svc_h3_entries_removed_when_asked)
{
    struct harness *h = &HS;
    h_init(h);
    h->set.strip_h3_alt_svc = true;
    h_start(h);
    struct xchg *x = ua_get(h, "/altsvc");
    pump(h);
    cr_assert_eq(x->status, 200);
    cr_assert(x->closed && x->close_code == 0);
    cr_assert_eq(x->resp_body.len, 3);
    cr_assert(has_line(&x->resp_hdrs, "alt-svc: h2=\":443\""), "%.*s", (int)x->resp_hdrs.len,
              x->resp_hdrs.p);
    cr_assert(has_line(&x->resp_hdrs, "alt-svc: clear"));
    cr_assert(has_line(&x->resp_hdrs, "x-origin: yes"));
    cr_assert(!has_text(&x->resp_hdrs, "h3"), "%.*s", (int)x->resp_hdrs.len, x->resp_hdrs.p);
    cr_assert_eq(x->n_interim, 1);
    cr_assert(!has_text(&x->interim_hdrs, "alt-svc"), "the 103's h3-only Alt-Svc is gone");
    struct rec *r = rec_of(x->sid);
    cr_assert(has_line(&r->resp, "alt-svc: h3=\":443\"; ma=86400, h2=\":443\""));
    cr_assert(has_line(&r->resp, "alt-svc: h3-29=\":8443\""));
    cr_assert(has_line(&r->resp, "alt-svc: clear"));
    cr_assert(has_line(&r->resp, "removed: h3=\":443\"; ma=86400"));
    cr_assert(has_line(&r->resp, "removed: h3-29=\":8443\""));
    cr_assert(!has_text(&r->resp, "removed: h3=\":443\"\n"), "the 103 is not reported");
    /* the next exchange on the connection is unaffected */
    struct xchg *y = ua_get(h, "/get?n=7");
    pump(h);
    cr_assert_eq(y->status, 200);
    cr_assert(!has_text(&rec_of(y->sid)->resp, "removed:"));
    h_free(h);
}

/* The default (http3_passthrough true): Alt-Svc reaches the client as the origin sent it. */
Test(h2_relay, alt_svc_untouched_by_default)
{
    struct harness *h = &HS;
    h_init(h);
    h_start(h);
    struct xchg *x = ua_get(h, "/altsvc");
    pump(h);
    cr_assert_eq(x->status, 200);
    cr_assert_eq(x->n_interim, 1);
    cr_assert(has_line(&x->interim_hdrs, "alt-svc: h3=\":443\""));
    cr_assert(has_line(&x->resp_hdrs, "alt-svc: h3=\":443\"; ma=86400, h2=\":443\""));
    cr_assert(has_line(&x->resp_hdrs, "alt-svc: h3-29=\":8443\""));
    cr_assert(has_line(&x->resp_hdrs, "alt-svc: clear"));
    cr_assert(!has_text(&rec_of(x->sid)->resp, "removed:"));
    h_free(h);
}
