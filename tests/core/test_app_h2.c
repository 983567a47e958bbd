/*
 * The HTTP/2 layer of a flow (core/app_h2.c) driven in memory, as the worker drives it: an
 * nghttp2 client session plays the user agent (UA), an nghttp2 server session plays the
 * origin, and the harness pumps bytes UA -> app -> origin and back until nothing moves. The
 * flow's events go through a real observe subsystem into a ring file and are read back as
 * the event JSON (docs/events.md), then checked per stream (order, offsets, capture, byte counts,
 * outcomes).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "soth/observe.h"

#define MAXX 1100

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

static void fill_pattern(struct bytes *b, unsigned seed, size_t n)
{
    b->len = 0;
    for (size_t j = 0; j < n; j++) {
        char c = (char)((seed * 131u + j * 7u + (j >> 8)) & 0xff);
        b_add(b, &c, 1);
    }
}

/* ---- exchanges as the UA and the origin see them */

struct xchg {
    const char *method;
    char path[64];
    struct bytes req_body;
    size_t req_off;
    const nghttp2_nv *extra;
    size_t n_extra;
    bool req_trailers;
    int32_t sid;
    int status;
    struct bytes resp_body;
    bool closed, rst_recv;
    uint32_t close_code, rst_code;
};

struct ostream {
    struct ostream *next;
    int32_t sid;
    char path[64];
    struct bytes req_body, resp;
    size_t rd;
    bool req_eof, responded, closed, rst_recv;
    uint32_t rst_code;
    int kind; /* 0 echo, 1 generate, 2 slow (head only), 3 rst, 4 big head, 5 trailers */
};

struct t {
    struct obs {
        char dir[64], ring[128];
        struct soth_config cfg;
        struct soth_observe *o;
        struct soth_ev_producer *prod;
    } obs;
    struct soth_ev_flow ev;
    struct soth_metrics m;
    struct app *a;
    nghttp2_session *ua, *origin;
    struct bytes to_ua, to_origin;
    struct xchg x[MAXX];
    size_t nx;
    struct ostream *os;
    int last_rc;
    int send_fail; /* env_send returns this when != 0 */
    bool done;
    int err;
    bool origin_silent; /* the origin stops reading and writing */
    bool ua_goaway;
    uint32_t ua_goaway_code;
    bool origin_goaway;
    json_t *events; /* after t_events() */
};

static struct t *T;

/* For t_setup: timeouts.response_header_ms (0: none), and a fake clock (g_now_ns) instead of
 * the monotonic one when g_fake_clock. */
static uint32_t g_resp_ms;
static bool g_fake_clock;
static uint32_t g_up_idle_ms; /* env.upstream_parkable with timeouts.upstream_idle_ms (0: not) */
static uint64_t g_now_ns;

static uint64_t fake_clock(void *ctx)
{
    (void)ctx;
    return g_now_ns;
}

/* ---- the app's send: queue toward the peer */

static int env_send(void *ctx, unsigned side, const char *p, size_t n)
{
    struct t *t = ctx;
    cr_assert(n > 0 && n <= 16384, "send of %zu bytes", n);
    if (t->send_fail)
        return t->send_fail;
    b_add(side == SOTH_LEG_CLIENT ? &t->to_ua : &t->to_origin, p, n);
    return 0;
}

/* ---- UA callbacks */

static struct xchg *x_of(nghttp2_session *s, int32_t sid)
{
    return nghttp2_session_get_stream_user_data(s, sid);
}

static ssize_t ua_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)s, (void)sid, (void)ud;
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
            static const nghttp2_nv trl[] = {
                {(uint8_t *)"x-req-sum", (uint8_t *)"42", 9, 2, 0},
            };
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            cr_assert_eq(nghttp2_submit_trailer(s, sid, trl, 1), 0);
        }
    }
    return (ssize_t)n;
}

static int ua_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    struct xchg *x = x_of(s, f->hd.stream_id);
    if (x != NULL && nl == 7 && memcmp(name, ":status", 7) == 0)
        x->status = atoi((const char *)value) + 0 * (int)vl;
    return 0;
}

static int ua_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *d, size_t n,
                   void *ud)
{
    (void)flags, (void)ud;
    struct xchg *x = x_of(s, sid);
    if (x != NULL)
        b_add(&x->resp_body, d, n);
    return 0;
}

static int ua_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct t *t = ud;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        struct xchg *x = x_of(s, f->hd.stream_id);
        if (x != NULL) {
            x->rst_recv = true;
            x->rst_code = f->rst_stream.error_code;
        }
    } else if (f->hd.type == NGHTTP2_GOAWAY) {
        t->ua_goaway = true;
        t->ua_goaway_code = f->goaway.error_code;
    }
    return 0;
}

static int ua_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    (void)ud;
    struct xchg *x = x_of(s, sid);
    if (x != NULL) {
        x->closed = true;
        x->close_code = code;
    }
    return 0;
}

/* ---- origin callbacks */

static struct ostream *os_of(nghttp2_session *s, int32_t sid)
{
    return nghttp2_session_get_stream_user_data(s, sid);
}

static int or_begin(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct t *t = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct ostream *o = calloc(1, sizeof(*o));
    o->sid = f->hd.stream_id;
    o->next = t->os;
    t->os = o;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, o);
    return 0;
}

static int or_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    struct ostream *o = os_of(s, f->hd.stream_id);
    if (o != NULL && nl == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(o->path, sizeof(o->path), "%.*s", (int)vl, value);
    return 0;
}

static int or_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *d, size_t n,
                   void *ud)
{
    (void)flags, (void)ud;
    struct ostream *o = os_of(s, sid);
    if (o != NULL)
        b_add(&o->req_body, d, n);
    return 0;
}

static ssize_t or_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)ud;
    struct ostream *o = src->ptr;
    if (o->kind == 2)
        return NGHTTP2_ERR_DEFERRED;
    size_t n = o->resp.len - o->rd;
    if (n > len)
        n = len;
    if (n > 0)
        memcpy(buf, o->resp.p + o->rd, n);
    o->rd += n;
    if (o->rd == o->resp.len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (o->kind == 5) {
            static const nghttp2_nv trl[] = {
                {(uint8_t *)"x-resp-sum", (uint8_t *)"7", 10, 1, 0},
            };
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            cr_assert_eq(nghttp2_submit_trailer(s, sid, trl, 1), 0);
        }
    }
    return (ssize_t)n;
}

static void respond(struct t *t, nghttp2_session *s, struct ostream *o)
{
    (void)t;
    if (o->responded || strncmp(o->path, "/hang", 5) == 0) /* /hang...: no answer */
        return;
    o->responded = true;
    static char big[2][12000];
    nghttp2_nv nv[3] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
    };
    size_t nnv = 1;
    o->kind = 0;
    if (strncmp(o->path, "/get/", 5) == 0) {
        o->kind = 1;
        fill_pattern(&o->resp, (unsigned)o->sid, (size_t)atol(o->path + 5));
    } else if (strcmp(o->path, "/slow") == 0) {
        o->kind = 2;
    } else if (strcmp(o->path, "/rst") == 0) {
        o->kind = 3;
        cr_assert_eq(
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, o->sid, NGHTTP2_ENHANCE_YOUR_CALM), 0);
        return;
    } else if (strcmp(o->path, "/bighead") == 0) {
        o->kind = 4;
        for (int i = 0; i < 2; i++) {
            memset(big[i], 'a' + i, sizeof(big[i]));
            nv[1 + i] = (nghttp2_nv){(uint8_t *)"x-big", (uint8_t *)big[i], 5, sizeof(big[i]),
                                     NGHTTP2_NV_FLAG_NO_INDEX};
        }
        nnv = 3;
        b_add(&o->resp, "never", 5);
    } else if (strcmp(o->path, "/trailers") == 0) {
        o->kind = 5;
        b_add(&o->resp, o->req_body.p, o->req_body.len);
    } else {
        b_add(&o->resp, o->req_body.p, o->req_body.len);
    }
    nghttp2_data_provider dp = {.source.ptr = o, .read_callback = or_read};
    cr_assert_eq(nghttp2_submit_response(s, o->sid, nv, nnv, &dp), 0);
}

static int or_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct t *t = ud;
    struct ostream *o = f->hd.stream_id > 0 ? os_of(s, f->hd.stream_id) : NULL;
    if (f->hd.type == NGHTTP2_GOAWAY)
        t->origin_goaway = true;
    if (o == NULL)
        return 0;
    if (f->hd.type == NGHTTP2_RST_STREAM) {
        o->rst_recv = true;
        o->rst_code = f->rst_stream.error_code;
        return 0;
    }
    bool slow = strcmp(o->path, "/slow") == 0 || strcmp(o->path, "/rst") == 0;
    if (f->hd.type == NGHTTP2_HEADERS && slow)
        respond(t, s, o);
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        o->req_eof = true;
        respond(t, s, o);
    }
    return 0;
}

static int or_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    (void)code, (void)ud;
    struct ostream *o = os_of(s, sid);
    if (o != NULL)
        o->closed = true;
    return 0;
}

/* ---- setup */

/* The origin's side of an upstream connection (a new one after the layer parked the last). */
static void origin_new(struct t *t, uint32_t origin_streams)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, or_begin);
    nghttp2_session_callbacks_set_on_header_callback(cb, or_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, or_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, or_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, or_close);
    cr_assert_eq(nghttp2_session_server_new(&t->origin, cb, t), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry or_iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, origin_streams ? origin_streams : 100},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    cr_assert_eq(nghttp2_submit_settings(t->origin, NGHTTP2_FLAG_NONE, or_iv, 2), 0);
}

static void t_setup(uint32_t capture, uint32_t max_header_list, uint32_t origin_streams)
{
    struct t *t = calloc(1, sizeof(*t));
    T = t;
    snprintf(t->obs.dir, sizeof(t->obs.dir), "/tmp/soth-apph2-XXXXXX");
    cr_assert_not_null(mkdtemp(t->obs.dir));
    snprintf(t->obs.ring, sizeof(t->obs.ring), "%s/ev.ring", t->obs.dir);
    struct soth_config *c = &t->obs.cfg;
    atomic_init(&c->refs, 1);
    c->events.ring_path = t->obs.ring;
    c->events.ring_size_mb = 16;
    c->events.body_capture_bytes = capture;
    c->http2_enabled = true;
    c->http2_max_header_list_size = max_header_list;
    c->timeouts.response_header_ms = g_resp_ms;
    c->timeouts.upstream_idle_ms = g_up_idle_ms;
    char err[256];
    t->obs.o = soth_observe_new(c, 1, err, sizeof(err));
    cr_assert_not_null(t->obs.o, "%s", err);
    cr_assert_eq(soth_observe_start(t->obs.o), 0);
    t->obs.prod = soth_observe_producer(t->obs.o, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
    sin.sin_addr.s_addr = htonl(0x7f000001);
    soth_ev_flow_init(&t->ev, t->obs.prod, 7, 0, (struct sockaddr *)&sin, sizeof(sin));
    soth_ev_flow_set_server(&t->ev, SOTH_IOV_LIT("origin.test"), 443);
    soth_ev_connect_received(&t->ev, SOTH_IOV_LIT("CONNECT"), SOTH_IOV_LIT("origin.test:443"));
    soth_ev_connect_decision(&t->ev, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);

    struct app_env env = {.cfg = c,
                          .ev = &t->ev,
                          .m = &t->m,
                          .client_tls = true,
                          .ctx = t,
                          .send = env_send,
                          .clock_ns = g_fake_clock ? fake_clock : NULL,
                          .upstream_parkable = g_up_idle_ms > 0};
    t->a = app_new(APP_H2, &env);
    cr_assert_not_null(t->a);
    cr_assert_eq(t->ev.protocol, SOTH_PROTO_HTTP2);
    cr_assert_gt(t->to_ua.len, 0, "server preface sent at once");
    cr_assert_geq(t->to_origin.len, 24, "client preface sent at once");
    cr_assert_eq(memcmp(t->to_origin.p, "PRI * HTTP/2.0", 14), 0);

    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, ua_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, ua_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, ua_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, ua_close);
    cr_assert_eq(nghttp2_session_client_new(&t->ua, cb, t), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry ua_iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    cr_assert_eq(nghttp2_submit_settings(t->ua, NGHTTP2_FLAG_NONE, ua_iv, 1), 0);
    origin_new(t, origin_streams);
}

static void t_teardown(void)
{
    struct t *t = T;
    if (t == NULL)
        return;
    app_free(t->a);
    nghttp2_session_del(t->ua);
    nghttp2_session_del(t->origin);
    soth_observe_free(t->obs.o);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", t->obs.dir);
    cr_expect_eq(system(cmd), 0);
    for (size_t i = 0; i < t->nx; i++) {
        free(t->x[i].req_body.p);
        free(t->x[i].resp_body.p);
    }
    while (t->os != NULL) {
        struct ostream *o = t->os;
        t->os = o->next;
        free(o->req_body.p);
        free(o->resp.p);
        free(o);
    }
    free(t->to_ua.p);
    free(t->to_origin.p);
    json_decref(t->events);
    free(t);
    T = NULL;
}

static void app_rc(struct t *t, int rc)
{
    t->last_rc = rc;
    if (rc == APP_DONE)
        t->done = true;
    else if (rc < 0) {
        t->err = rc;
        t->done = true;
    }
}

static void feed(struct t *t, unsigned side, const uint8_t *p, size_t n)
{
    if (t->done)
        return;
    app_rc(t, app_input(t->a, side, (const char *)p, n));
}

/* Move bytes until nothing moves (bounded). */
static void pump(struct t *t)
{
    for (int round = 0; round < 200000; round++) {
        bool moved = false;
        for (int k = 0; k < 64 && !t->done; k++) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(t->ua, &p);
            cr_assert_geq(n, 0);
            if (n == 0)
                break;
            moved = true;
            feed(t, SOTH_LEG_CLIENT, p, (size_t)n);
        }
        for (int k = 0; k < 64 && !t->done && !t->origin_silent; k++) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(t->origin, &p);
            cr_assert_geq(n, 0);
            if (n == 0)
                break;
            moved = true;
            feed(t, SOTH_LEG_UPSTREAM, p, (size_t)n);
        }
        if (t->to_ua.len > 0) {
            ssize_t n = nghttp2_session_mem_recv(t->ua, (uint8_t *)t->to_ua.p, t->to_ua.len);
            cr_assert_eq(n, (ssize_t)t->to_ua.len, "ua recv %zd", n);
            t->to_ua.len = 0;
            moved = true;
        }
        if (t->to_origin.len > 0 && !t->origin_silent) {
            ssize_t n =
                nghttp2_session_mem_recv(t->origin, (uint8_t *)t->to_origin.p, t->to_origin.len);
            cr_assert_eq(n, (ssize_t)t->to_origin.len, "origin recv %zd", n);
            t->to_origin.len = 0;
            moved = true;
        }
        soth_ev_flush(t->obs.prod);
        if (!moved)
            return;
    }
    cr_assert_fail("pump did not settle");
}

static struct xchg *submit(struct t *t, const char *method, const char *path, size_t body,
                           unsigned seed)
{
    cr_assert_lt(t->nx, MAXX);
    struct xchg *x = &t->x[t->nx++];
    x->method = method;
    snprintf(x->path, sizeof(x->path), "%s", path);
    fill_pattern(&x->req_body, seed, body);
    nghttp2_nv nv[8] = {
        {(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), 0},
        {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
        {(uint8_t *)":authority", (uint8_t *)"origin.test", 10, 11, 0},
        {(uint8_t *)":path", (uint8_t *)x->path, 5, strlen(x->path), 0},
        {(uint8_t *)"user-agent", (uint8_t *)"t/1", 10, 3, 0},
        {(uint8_t *)"x-first", (uint8_t *)"1", 7, 1, 0},
        {(uint8_t *)"accept", (uint8_t *)"*/*", 6, 3, 0},
    };
    size_t n = 7;
    nghttp2_nv all[16];
    memcpy(all, nv, n * sizeof(nv[0]));
    for (size_t i = 0; i < x->n_extra && n < 16; i++)
        all[n++] = x->extra[i];
    nghttp2_data_provider dp = {.source.ptr = x, .read_callback = ua_read};
    bool has_body = strcmp(method, "GET") != 0;
    x->sid = nghttp2_submit_request(t->ua, NULL, all, n, has_body ? &dp : NULL, x);
    cr_assert_gt(x->sid, 0);
    return x;
}

/* ---- events */

static json_t *t_events(struct t *t)
{
    if (t->events != NULL)
        return t->events;
    if (!t->ev.closed) {
        enum soth_close_reason why = app_close_reason(t->a);
        soth_ev_stream_closed(&t->ev, why, 0, 0);
    }
    soth_ev_flush(t->obs.prod);
    soth_observe_stop(t->obs.o);
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(t->obs.ring, err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    soth_ring_reader_seek(r, true);
    struct bytes txt = {0};
    struct emit {
        struct bytes *b;
    } e = {&txt};
    (void)e;
    soth_ring_reader_poll(r, NULL, (void (*)(void *, const char *, size_t))b_add, &txt);
    soth_ring_reader_free(r);
    json_t *arr = json_array();
    const char *p = txt.p, *end = txt.p + txt.len;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        cr_assert_not_null(nl);
        json_error_t je;
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, &je);
        cr_assert_not_null(j, "bad JSON %s", je.text);
        json_array_append_new(arr, j);
        p = nl + 1;
    }
    free(txt.p);
    t->events = arr;
    return arr;
}

static const char *ev_type(json_t *e)
{
    return json_string_value(json_object_get(e, "type"));
}

static long long ev_int(json_t *e, const char *k)
{
    json_t *v = json_object_get(e, k);
    cr_assert_not_null(v, "no %s in %s", k, ev_type(e));
    return json_integer_value(v);
}

static const char *ev_str(json_t *e, const char *k)
{
    json_t *v = json_object_get(e, k);
    cr_assert_not_null(v, "no %s in %s", k, ev_type(e));
    return json_string_value(v);
}

static size_t b64_decode(const char *s, unsigned char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (; *s != '\0' && *s != '='; s++) {
        const char *q = strchr(tbl, *s);
        cr_assert_not_null(q);
        acc = (acc << 6) | (unsigned)(q - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return n;
}

/* What the events say about one stream. */
struct sview {
    int n_req, n_resp, n_done, n_trl[2];
    json_t *req, *resp, *done;
    uint64_t off[2];     /* body bytes per direction from the chunks */
    struct bytes cap[2]; /* captured bytes */
    bool truncated[2];   /* some chunk said truncated */
};

/* Check the per-stream order of docs/events.md for every stream and collect stream `sid`. */
static void stream_view(struct t *t, int32_t sid, struct sview *v)
{
    memset(v, 0, sizeof(*v));
    json_t *arr = t_events(t);
    size_t i;
    json_t *e;
    long long seq = -1;
    json_array_foreach(arr, i, e)
    {
        cr_assert_eq(ev_int(e, "seq"), seq + 1, "seq gap at %s", ev_type(e));
        seq = ev_int(e, "seq");
        const char *ty = ev_type(e);
        json_t *jsid = json_object_get(e, "stream_id");
        if (jsid == NULL || json_integer_value(jsid) != sid)
            continue;
        cr_assert_str_eq(ev_str(e, "protocol"), "http2");
        cr_assert_eq(v->n_done, 0, "%s after exchange_completed on %d", ty, sid);
        if (strcmp(ty, "request_headers") == 0) {
            v->n_req++;
            v->req = e;
        } else if (strcmp(ty, "response_headers") == 0) {
            cr_assert_eq(v->n_req, 1, "response before request on %d", sid);
            v->n_resp++;
            v->resp = e;
        } else if (strcmp(ty, "exchange_completed") == 0) {
            v->n_done++;
            v->done = e;
        } else if (strstr(ty, "_body_chunk") != NULL || strstr(ty, "_trailers") != NULL) {
            int d = ty[2] == 'q' ? 0 : 1; /* "request_..." / "response_..." */
            cr_assert_eq(v->n_req, 1, "%s before request_headers on %d", ty, sid);
            if (d == 1)
                cr_assert_eq(v->n_resp, 1, "%s before response_headers on %d", ty, sid);
            if (strstr(ty, "_trailers") != NULL) {
                v->n_trl[d]++;
                continue;
            }
            cr_assert_eq((uint64_t)ev_int(e, "offset"), v->off[d], "offset on %d", sid);
            v->off[d] += (uint64_t)ev_int(e, "len");
            const char *b64 = ev_str(e, "data_b64");
            unsigned char *tmp = malloc(strlen(b64) + 4);
            size_t n = b64_decode(b64, tmp);
            b_add(&v->cap[d], tmp, n);
            free(tmp);
            cr_assert_leq(n, (size_t)ev_int(e, "len"));
            bool tr = json_is_true(json_object_get(e, "truncated"));
            cr_assert_eq(tr, n < (size_t)ev_int(e, "len"), "truncated flag on %d", sid);
            v->truncated[d] |= tr;
        }
    }
}

static void sview_free(struct sview *v)
{
    free(v->cap[0].p);
    free(v->cap[1].p);
}

/* The exchange's events match what the UA sent and got. */
static void check_exchange(struct t *t, struct xchg *x, const char *outcome, uint64_t capture)
{
    struct sview v;
    stream_view(t, x->sid, &v);
    cr_assert_eq(v.n_req, 1, "request_headers on %d", x->sid);
    cr_assert_eq(v.n_done, 1, "exchange_completed on %d", x->sid);
    cr_assert_str_eq(ev_str(v.req, "method"), x->method);
    cr_assert_str_eq(ev_str(v.req, "path"), x->path);
    cr_assert_str_eq(ev_str(v.req, "scheme"), "https");
    cr_assert_str_eq(ev_str(v.req, "authority"), "origin.test");
    cr_assert_str_eq(ev_str(v.req, "http_version"), "2");
    cr_assert_str_eq(ev_str(v.done, "outcome"), outcome, "outcome on %d", x->sid);
    cr_assert_eq((uint64_t)ev_int(v.done, "request_bytes"), v.off[0]);
    cr_assert_eq((uint64_t)ev_int(v.done, "response_bytes"), v.off[1]);
    if (strcmp(outcome, "complete") == 0) {
        cr_assert_eq(v.n_resp, 1);
        cr_assert_eq(ev_int(v.resp, "status"), x->status);
        cr_assert_str_eq(ev_str(v.resp, "http_version"), "2");
        cr_assert_eq(v.off[0], x->req_body.len, "request bytes on %d", x->sid);
        cr_assert_eq(v.off[1], x->resp_body.len, "response bytes on %d", x->sid);
        size_t c0 = x->req_body.len < capture ? x->req_body.len : capture;
        size_t c1 = x->resp_body.len < capture ? x->resp_body.len : capture;
        cr_assert_eq(v.cap[0].len, c0);
        cr_assert_eq(v.cap[1].len, c1);
        cr_assert(c0 == 0 || memcmp(v.cap[0].p, x->req_body.p, c0) == 0);
        cr_assert(c1 == 0 || memcmp(v.cap[1].p, x->resp_body.p, c1) == 0);
        cr_assert_eq(v.truncated[0], x->req_body.len > capture);
        cr_assert_eq(v.truncated[1], x->resp_body.len > capture);
    }
    sview_free(&v);
}

static size_t count_type(struct t *t, const char *type)
{
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(t_events(t), i, e) n += strcmp(ev_type(e), type) == 0;
    return n;
}

TestSuite(app_h2, .fini = t_teardown, .timeout = 120);

Test(app_h2, get_events_and_header_order)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *x = submit(t, "GET", "/get/1000", 0, 1);
    pump(t);
    cr_assert(x->closed && x->close_code == 0);
    cr_assert_eq(x->status, 200);
    cr_assert_eq(x->resp_body.len, 1000);
    cr_assert(!t->done);
    cr_assert_eq(atomic_load(&t->m.requests[SOTH_PROTO_HTTP2]), 1);
    check_exchange(t, x, "complete", 4096);
    struct sview v;
    stream_view(t, x->sid, &v);
    json_t *h = json_object_get(v.req, "headers");
    cr_assert_eq(json_array_size(h), 3);
    const char *want[] = {"user-agent", "x-first", "accept"};
    for (size_t i = 0; i < 3; i++)
        cr_assert_str_eq(json_string_value(json_array_get(json_array_get(h, i), 0)), want[i]);
    cr_assert_eq(ev_int(v.req, "stream_id"), 1);
    sview_free(&v);
}

Test(app_h2, hundred_streams_distinct_bodies_with_capture_bound)
{
    t_setup(1000, 65536, 0);
    struct t *t = T;
    for (unsigned i = 0; i < 100; i++)
        submit(t, "POST", "/echo", 1 + i * 397u % 20000u, i);
    pump(t);
    for (size_t i = 0; i < t->nx; i++) {
        struct xchg *x = &t->x[i];
        cr_assert(x->closed && x->close_code == 0 && x->status == 200);
        cr_assert_eq(x->resp_body.len, x->req_body.len);
        cr_assert_eq(memcmp(x->resp_body.p, x->req_body.p, x->req_body.len), 0);
        check_exchange(t, x, "complete", 1000);
    }
    cr_assert_eq(atomic_load(&t->m.requests[SOTH_PROTO_HTTP2]), 100);
    cr_assert_eq(t->ev.dropped, 0);
}

Test(app_h2, thousand_streams_byte_accounting)
{
    t_setup(64, 65536, 64);
    struct t *t = T;
    uint64_t want_req = 0, want_resp = 0;
    for (unsigned i = 0; i < 1000; i++) {
        struct xchg *x = submit(t, "POST", "/echo", i % 3000u, i);
        want_req += x->req_body.len;
        want_resp += x->req_body.len;
        if (i % 100 == 99)
            pump(t);
    }
    pump(t);
    uint64_t req = 0, resp = 0;
    size_t i;
    json_t *e;
    json_array_foreach(t_events(t), i, e)
    {
        if (strcmp(ev_type(e), "exchange_completed") == 0) {
            cr_assert_str_eq(ev_str(e, "outcome"), "complete");
            req += (uint64_t)ev_int(e, "request_bytes");
            resp += (uint64_t)ev_int(e, "response_bytes");
        }
    }
    cr_assert_eq(count_type(t, "exchange_completed"), 1000);
    cr_assert_eq(count_type(t, "request_headers"), 1000);
    cr_assert_eq(req, want_req);
    cr_assert_eq(resp, want_resp);
    for (size_t k = 0; k < t->nx; k += 97)
        check_exchange(t, &t->x[k], "complete", 64);
    cr_assert_eq(t->ev.dropped, 0);
}

Test(app_h2, trailers_both_ways)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    cr_assert_eq(t->nx, 0);
    struct xchg *x = &t->x[0];
    x->req_trailers = true;
    /* submit() fills the rest; req_trailers is read by the data provider */
    t->nx = 0;
    struct xchg *y = submit(t, "POST", "/trailers", 5000, 3);
    cr_assert_eq(y, x);
    pump(t);
    cr_assert(x->closed && x->close_code == 0 && x->status == 200);
    check_exchange(t, x, "complete", 4096);
    struct sview v;
    stream_view(t, x->sid, &v);
    cr_assert_eq(v.n_trl[0], 1);
    cr_assert_eq(v.n_trl[1], 1);
    sview_free(&v);
    cr_assert_eq(count_type(t, "request_trailers"), 1);
    cr_assert_eq(count_type(t, "response_trailers"), 1);
}

Test(app_h2, rst_stream_both_ways)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *up = submit(t, "GET", "/rst", 0, 1);
    struct xchg *cl = submit(t, "GET", "/slow", 0, 2);
    pump(t);
    cr_assert(up->rst_recv, "client saw the origin's reset");
    cr_assert_eq(up->rst_code, NGHTTP2_ENHANCE_YOUR_CALM);
    cr_assert_eq(cl->status, 200);
    cr_assert_eq(nghttp2_submit_rst_stream(t->ua, NGHTTP2_FLAG_NONE, cl->sid, NGHTTP2_CANCEL), 0);
    pump(t);
    struct ostream *o = t->os;
    while (o != NULL && strcmp(o->path, "/slow") != 0)
        o = o->next;
    cr_assert_not_null(o);
    cr_assert(o->rst_recv && o->rst_code == NGHTTP2_CANCEL, "origin saw the client's reset");
    /* the connection survives */
    struct xchg *z = submit(t, "GET", "/get/10", 0, 3);
    pump(t);
    cr_assert_eq(z->status, 200);
    check_exchange(t, up, "upstream_aborted", 4096);
    check_exchange(t, cl, "client_aborted", 4096);
    check_exchange(t, z, "complete", 4096);
}

Test(app_h2, oversized_heads_both_ways_connection_survives)
{
    t_setup(4096, 16384, 0);
    struct t *t = T;
    static char big[20000];
    memset(big, 'q', sizeof(big));
    static const nghttp2_nv extra[] = {
        {(uint8_t *)"x-huge", (uint8_t *)big, 6, sizeof(big), NGHTTP2_NV_FLAG_NO_INDEX}};
    t->x[0].extra = extra;
    t->x[0].n_extra = 1;
    struct xchg *a = submit(t, "GET", "/get/5", 0, 1);
    struct xchg *b = submit(t, "GET", "/bighead", 0, 2);
    struct xchg *c = submit(t, "GET", "/get/7", 0, 3);
    pump(t);
    cr_assert_eq(a->status, 431);
    cr_assert_eq(b->status, 502);
    cr_assert_eq(c->status, 200);
    cr_assert_eq(c->resp_body.len, 7);
    cr_assert(!t->done);
    /* the refused request left no events: it never had a head worth reporting */
    struct sview v;
    stream_view(t, a->sid, &v);
    cr_assert_eq(v.n_req + v.n_done + v.n_resp, 0);
    sview_free(&v);
    check_exchange(t, b, "upstream_aborted", 4096);
    check_exchange(t, c, "complete", 4096);
    cr_assert_eq(count_type(t, "request_headers"), 2);
}

Test(app_h2, client_eof_aborts_streams_and_closes_client_eof)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *x = submit(t, "GET", "/slow", 0, 1);
    pump(t);
    cr_assert_eq(x->status, 200);
    app_rc(t, app_eof(t->a, SOTH_LEG_CLIENT, false));
    cr_assert_eq(t->last_rc, APP_DONE);
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_CLIENT_EOF);
    /* the origin is told: its stream is cancelled and it gets a GOAWAY */
    ssize_t n = nghttp2_session_mem_recv(t->origin, (uint8_t *)t->to_origin.p, t->to_origin.len);
    cr_assert_eq(n, (ssize_t)t->to_origin.len);
    cr_assert(t->origin_goaway);
    check_exchange(t, x, "client_aborted", 4096);
}

Test(app_h2, upstream_eof_gives_502_and_relay_eof)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *done = submit(t, "GET", "/get/100", 0, 1);
    pump(t);
    struct xchg *x = submit(t, "POST", "/echo", 100, 2);
    /* the request reaches the origin, which goes away before answering */
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(t->ua, &p)) > 0)
        feed(t, SOTH_LEG_CLIENT, p, (size_t)n);
    app_rc(t, app_eof(t->a, SOTH_LEG_UPSTREAM, false));
    /* the 502 and the GOAWAY are handed over: nothing is left open on the client leg */
    cr_assert_eq(t->last_rc, APP_DONE);
    t->origin_silent = true;
    pump(t);
    cr_assert_eq(x->status, 502);
    cr_assert(t->ua_goaway && t->ua_goaway_code == NGHTTP2_NO_ERROR);
    cr_assert(t->done && t->last_rc == APP_DONE, "finished once the client leg drained");
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_RELAY_EOF);
    check_exchange(t, done, "complete", 4096);
    check_exchange(t, x, "upstream_aborted", 4096);
}

Test(app_h2, bad_client_preface_is_parse_failed)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    static const char req[] = "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n";
    app_rc(t, app_input(t->a, SOTH_LEG_CLIENT, req, sizeof(req) - 1));
    cr_assert_eq(t->last_rc, APP_DONE);
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_PARSE_FAILED);
    /* our SETTINGS then a GOAWAY(PROTOCOL_ERROR) went to the client */
    cr_assert_geq(t->to_ua.len, 17);
    const unsigned char *q = (const unsigned char *)t->to_ua.p;
    bool goaway = false;
    for (size_t off = 0; off + 9 <= t->to_ua.len;) {
        size_t len = ((size_t)q[off] << 16) | ((size_t)q[off + 1] << 8) | q[off + 2];
        if (q[off + 3] == NGHTTP2_GOAWAY) {
            goaway = true;
            cr_assert_eq(q[off + 9 + 7], NGHTTP2_PROTOCOL_ERROR);
        }
        off += 9 + len;
    }
    cr_assert(goaway);
    cr_assert_eq(count_type(t, "exchange_completed"), 0);
}

Test(app_h2, protocol_error_after_preface_is_relay_error)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    pump(t);
    /* DATA on stream 0 is a connection error (RFC 9113 6.1) */
    static const unsigned char bad[] = {0, 0, 1, NGHTTP2_DATA, 0, 0, 0, 0, 0, 'x'};
    app_rc(t, app_input(t->a, SOTH_LEG_CLIENT, (const char *)bad, sizeof(bad)));
    cr_assert_eq(t->last_rc, APP_DONE);
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_RELAY_ERROR);
}

Test(app_h2, abort_timeout_outcome)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *a = submit(t, "GET", "/get/10", 0, 1);
    struct xchg *b = submit(t, "GET", "/slow", 0, 2);
    pump(t);
    app_abort(t->a, SOTH_OUTCOME_TIMEOUT);
    app_abort(t->a, SOTH_OUTCOME_RESET); /* idempotent */
    check_exchange(t, a, "complete", 4096);
    check_exchange(t, b, "timeout", 4096);
    cr_assert_eq(count_type(t, "exchange_completed"), 2);
}

/* The origin stream of `path`. */
static struct ostream *os_path(struct t *t, const char *path)
{
    for (struct ostream *o = t->os; o != NULL; o = o->next)
        if (strcmp(o->path, path) == 0)
            return o;
    cr_assert_fail("no origin stream for %s", path);
    return NULL;
}

#define MS 1000000ull

/*
 * timeouts.response_header_ms (docs/answers.md): the layer's deadline is never later than the
 * earliest response head due, so no late stream waits past its time; it may be earlier once
 * the stream that held the earliest wait is answered, and then the timer finds nothing late
 * and the deadline becomes the next stream's.
 */
Test(app_h2, response_head_deadline_follows_the_earliest_waiting_stream)
{
    g_resp_ms = 1000;
    g_fake_clock = true;
    g_now_ns = 5000 * MS;
    t_setup(4096, 65536, 0);
    struct t *t = T;
    /* No stream yet: the only deadline is the idle relay's release, a second on (docs/http2.md,
     * "Memory"). */
    cr_assert_eq(app_deadline(t->a), 6000, "the idle release");
    struct xchg *a = submit(t, "GET", "/hang/a", 0, 1);
    pump(t);
    cr_assert_eq(app_deadline(t->a), 6000);
    g_now_ns = 5400 * MS;
    struct xchg *b = submit(t, "GET", "/hang/b", 0, 2);
    struct xchg *c = submit(t, "GET", "/get/10", 0, 3);
    pump(t);
    cr_assert_eq(c->status, 200);
    cr_assert_eq(app_deadline(t->a), 6000, "a's response head is due first");

    /* The origin answers a at 5500: b's head is due at 6400, the deadline no later. */
    g_now_ns = 5500 * MS;
    struct ostream *oa = os_path(t, "/hang/a");
    snprintf(oa->path, sizeof(oa->path), "/get/10");
    respond(t, t->origin, oa);
    pump(t);
    cr_assert_eq(a->status, 200);
    uint64_t d = app_deadline(t->a);
    cr_assert(d >= 6000 && d <= 6400, "deadline %" PRIu64, d);

    /* A timer before b's time (at that deadline, if it is earlier) answers nothing, and the
     * deadline is b's own after it. */
    uint64_t early = d < 6400 ? d : 6399;
    g_now_ns = early * MS;
    app_rc(t, app_timer(t->a, early));
    pump(t);
    cr_assert_eq(b->status, 0, "b answered before its time");
    cr_assert_eq(app_deadline(t->a), 6400);
    g_now_ns = 6400 * MS;
    app_rc(t, app_timer(t->a, 6400));
    pump(t);
    cr_assert_eq(b->status, 504);
    /* Nothing waits: the stream table is empty, the next deadline is the idle release; once
     * the relay gave back its memory, nothing is due until a stream has come and gone. */
    cr_assert_eq(app_deadline(t->a), 7400, "the idle release");
    g_now_ns = 7399 * MS;
    app_rc(t, app_timer(t->a, 7399));
    cr_assert_eq(app_deadline(t->a), 7400, "not before its time");
    g_now_ns = 7400 * MS;
    app_rc(t, app_timer(t->a, 7400));
    cr_assert_eq(app_deadline(t->a), 0, "released: nothing due");
    struct xchg *e = submit(t, "GET", "/get/10", 0, 4);
    pump(t);
    cr_assert_eq(e->status, 200);
    cr_assert_eq(e->resp_body.len, 10);
    cr_assert_eq(app_deadline(t->a), 8400, "idle again");
    cr_assert_geq(t->last_rc, 0);
    g_resp_ms = 0;
    g_fake_clock = false;
}

/* docs/http2.md "Idle upstream connection": no stream for timeouts.upstream_idle_ms, and the
 * layer ends its upstream session (GOAWAY) and asks the worker to close the connection, once;
 * the next request asks for a new one and waits for it; then it completes on the new session.
 * When none can be made, the waiting request is refused and the layer finishes. */
Test(app_h2, idle_upstream_closed_then_made_again_for_the_next_request)
{
    g_fake_clock = true;
    g_up_idle_ms = 2000;
    g_now_ns = 5000 * MS;
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *a = submit(t, "GET", "/get/10", 0, 1);
    pump(t);
    cr_assert_eq(a->status, 200);
    cr_assert_eq(app_deadline(t->a), 6000, "the idle release first");
    g_now_ns = 6000 * MS;
    app_rc(t, app_timer(t->a, 6000));
    cr_assert_eq(app_deadline(t->a), 7000, "then the upstream's close");
    cr_assert_eq(app_upstream_want(t->a), APP_UP_NONE);
    g_now_ns = 7000 * MS;
    app_rc(t, app_timer(t->a, 7000));
    cr_assert_eq(app_upstream_want(t->a), APP_UP_CLOSE);
    cr_assert_eq(app_upstream_want(t->a), APP_UP_NONE, "said once");
    pump(t);
    cr_assert(t->origin_goaway, "GOAWAY toward the origin");
    cr_assert_eq(app_deadline(t->a), 0, "nothing due while parked");

    struct xchg *b = submit(t, "POST", "/echo", 30000, 2);
    pump(t);
    cr_assert_eq(app_upstream_want(t->a), APP_UP_OPEN);
    cr_assert_eq(b->status, 0, "waits for the new connection");
    nghttp2_session_del(t->origin);
    t->origin_goaway = false;
    origin_new(t, 0);
    app_rc(t, app_upstream_opened(t->a, true));
    pump(t);
    cr_assert_eq(b->status, 200);
    cr_assert_eq(b->resp_body.len, 30000);
    cr_assert(memcmp(b->resp_body.p, b->req_body.p, 30000) == 0, "echo intact");
    cr_assert(!t->ua_goaway);

    /* Idle again: parked again; this time the connection cannot be made. */
    cr_assert_eq(app_deadline(t->a), 8000);
    g_now_ns = 9000 * MS;
    app_rc(t, app_timer(t->a, 9000));
    cr_assert_eq(app_upstream_want(t->a), APP_UP_CLOSE);
    pump(t);
    struct xchg *c = submit(t, "GET", "/get/10", 0, 3);
    pump(t);
    cr_assert_eq(app_upstream_want(t->a), APP_UP_OPEN);
    app_rc(t, app_upstream_opened(t->a, false));
    pump(t);
    cr_assert(c->rst_recv && c->rst_code == NGHTTP2_REFUSED_STREAM);
    cr_assert(t->ua_goaway && t->ua_goaway_code == NGHTTP2_NO_ERROR);
    cr_assert(t->done, "the layer finished");
    g_up_idle_ms = 0;
    g_fake_clock = false;
}

Test(app_h2, shutdown_drains_in_flight_then_done)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    struct xchg *a = submit(t, "POST", "/echo", 3000, 1);
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(t->ua, &p)) > 0)
        feed(t, SOTH_LEG_CLIENT, p, (size_t)n);
    app_rc(t, app_shutdown(t->a));
    cr_assert_eq(t->last_rc, APP_AGAIN);
    pump(t);
    cr_assert(t->ua_goaway && t->ua_goaway_code == NGHTTP2_NO_ERROR);
    cr_assert_eq(a->status, 200);
    cr_assert_eq(a->resp_body.len, 3000);
    /* the client leg finishes once the in-flight stream is done and both sides said GOAWAY */
    cr_assert(nghttp2_session_terminate_session(t->ua, NGHTTP2_NO_ERROR) == 0);
    pump(t);
    cr_assert(t->done && t->last_rc == APP_DONE);
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_SHUTDOWN);
    check_exchange(t, a, "complete", 4096);
}

Test(app_h2, hold_stops_output_toward_a_side)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    pump(t);
    app_rc(t, app_hold(t->a, SOTH_LEG_CLIENT, true));
    struct xchg *x = submit(t, "GET", "/get/200000", 0, 1);
    pump(t);
    cr_assert_eq(x->status, 0, "nothing reached the held client");
    cr_assert(app_want_write(t->a, SOTH_LEG_CLIENT));
    app_rc(t, app_hold(t->a, SOTH_LEG_CLIENT, false));
    pump(t);
    cr_assert_eq(x->status, 200);
    cr_assert_eq(x->resp_body.len, 200000);
    check_exchange(t, x, "complete", 4096);
}

Test(app_h2, send_failure_is_relay_error)
{
    t_setup(4096, 65536, 0);
    struct t *t = T;
    pump(t);
    struct xchg *x = submit(t, "GET", "/get/10", 0, 1);
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(t->ua, &p)) > 0)
        feed(t, SOTH_LEG_CLIENT, p, (size_t)n);
    cr_assert_eq(nghttp2_session_mem_recv(t->origin, (uint8_t *)t->to_origin.p, t->to_origin.len),
                 (ssize_t)t->to_origin.len);
    t->to_origin.len = 0;
    t->send_fail = -EPIPE;
    while ((n = nghttp2_session_mem_send(t->origin, &p)) > 0)
        feed(t, SOTH_LEG_UPSTREAM, p, (size_t)n);
    cr_assert_eq(t->err, -EPIPE);
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_RELAY_ERROR);
    cr_assert_eq(app_input(t->a, SOTH_LEG_CLIENT, "x", 1), -EPIPE, "sticky");
    /* every stream ended */
    struct sview v;
    stream_view(t, x->sid, &v);
    cr_assert_eq(v.n_done, 1);
    sview_free(&v);
}
