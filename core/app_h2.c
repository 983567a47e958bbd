/*
 * The HTTP/2 version of a flow's HTTP layer (core/app_int.h): the nghttp2 relay of proto/h2.c
 * between the two legs, its callbacks turned into the flow's events, and each stream's DATA
 * handed to its observer (WebSocket over RFC 8441, event streams: core/app_obs.c) and payload
 * decoding (core/app_payload.c). The worker feeds decrypted bytes, the relay answers through
 * env->send (at most 16 KiB per call, one TLS record each). The relay itself produces the
 * answers of this version (502/504 responses or RST_STREAM, docs/http2.md); this file keeps
 * the clock of timeouts.response_header_ms per stream and tells the relay when one is late.
 *
 * Per-stream event state (body offsets) lives in a fixed open-addressing table keyed by client
 * stream id: the relay never holds more than 2 x max_concurrent_streams + 16 stream slots, so
 * the table cannot fill and nothing is allocated per stream or per event here (nghttp2 and the
 * relay allocate per connection, see docs/http2.md; a stream's observer comes from the
 * worker's free list, docs/streaming.md). The table (16 KiB), the relay's output buffers and
 * its body chunks are lent from the worker's free lists only while streams or bytes are held,
 * so an idle connection holds none of them (docs/performance.md, "Idle connections").
 *
 * Close reasons (stream_closed reason_code, docs/events.md), the first cause wins:
 *   client EOF or reset                          client_eof
 *   upstream EOF or reset, or upstream GOAWAY    relay_eof
 *   client GOAWAY (then the streams drained)     client_eof
 *   bad client connection preface                parse_failed
 *   protocol error / flood on either leg         relay_error
 *   send or allocation failure                   relay_error
 *   app_shutdown (SIGTERM drain)                 shutdown
 */
#include <stdlib.h>
#include <string.h>

#include "app_int.h"
#include "app_payload.h"
#include "soth/blockcache.h"
#include "soth/proto/h2.h"

#define H2_MAX_STREAMS 100  /* SETTINGS_MAX_CONCURRENT_STREAMS toward the client */
#define H2_TABLE_CAP   256  /* > 2 x H2_MAX_STREAMS + 16 relay slots; a power of two */
#define H2_RELEASE_MS  1000 /* an idle relay gives back its sessions' pages after this */
#define H2_MAGIC       "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_MAGIC_LEN   (sizeof(H2_MAGIC) - 1)

_Static_assert(H2_TABLE_CAP > 2 * H2_MAX_STREAMS + 16, "stream table smaller than the slots");
_Static_assert((H2_TABLE_CAP & (H2_TABLE_CAP - 1)) == 0, "stream table not a power of two");

struct h2_stream {
    int32_t sid;     /* client stream id; 0 = free entry */
    uint64_t off[2]; /* body bytes reported so far, by enum soth_leg */
    /* gRPC and payload state, or NULL (core/app_payload.c) */
    struct app_pl_stream *pl;
    bool ws_connect;     /* extended CONNECT for websocket (RFC 8441) */
    struct app_obs *obs; /* its WebSocket or event stream observer (core/app_obs.c), or NULL */
    uint64_t wait_ms;    /* request complete, response head awaited since (ms), 0 = not */
    bool head_seen;      /* the final response head came */
    bool timed_out;      /* answered 504: timeouts.response_header_ms passed */
};

struct app_h2 {
    struct app base;
    struct soth_h2_relay *r;
    int err; /* first fatal error (send failure, allocation); sticky */
    bool reason_set;
    enum soth_close_reason reason;
    bool eof[2];      /* app_eof seen, by side */
    bool bad_preface; /* the client's first bytes were not the HTTP/2 connection preface */
    size_t magic_off; /* client preface bytes checked so far */
    bool aborting;    /* app_abort: streams still in flight end with abort_outcome */
    enum soth_outcome abort_outcome;
    bool done;            /* APP_DONE returned: the relay is finished */
    uint32_t n_streams;   /* entries in use in st[] */
    uint32_t n_waiting;   /* entries with wait_ms set */
    struct h2_stream *st; /* H2_TABLE_CAP entries, lent while n_streams > 0, else NULL */
    /* While n_waiting > 0: at most the earliest wait_ms of a waiting entry, never 0. A lower
     * bound, not raised when that entry stops waiting: h2_timer's scan makes it exact again,
     * so h2_deadline, asked after every pass, reads it instead of scanning the table. */
    uint64_t wait_min_ms;
    /* With n_streams 0: no stream since (ms; 0: the idle relay gave back its memory, nothing
     * to do until a stream has come and gone). H2_RELEASE_MS later, soth_h2_relay_release
     * (docs/http2.md, "Memory"). Read only while n_streams is 0. */
    uint64_t idle_since_ms;
    /* docs/http2.md "Idle upstream connection" (env.upstream_parkable, upstream_idle_ms > 0):
     * with n_streams 0, no stream since park_since_ms (0: parked, or not parkable); the
     * upstream session ends upstream_idle_ms later. wake_asked: APP_UP_OPEN was said for the
     * request now waiting. */
    uint64_t park_since_ms;
    bool parkable;
    bool wake_asked;
};

/*
 * Free lists of this thread: stream tables, and the relay's output buffers and body chunks
 * (cbs.buf_get / buf_put). Kept: as many as were ever in use at once, up to `keep`, until the
 * worker is quiet (app_thread_done frees them all). A table comes back with every entry free
 * (n_streams == 0), so only a new one needs zeroing, and the list's link in the first entry's
 * bytes.
 */
#define H2_TABLE_BYTES (H2_TABLE_CAP * sizeof(struct h2_stream))
/* nghttp2 allocates per stream (stream objects, frame queue items, header copies, HPACK
 * entries): from the worker's block cache, those are no malloc per request
 * (soth/blockcache.h; docs/performance.md, "Allocations per request"). */
static void *h2_mem_malloc(size_t n, void *ctx)
{
    (void)ctx;
    return soth_bc_malloc(n);
}
static void h2_mem_free(void *p, void *ctx)
{
    (void)ctx;
    soth_bc_free(p);
}
static void *h2_mem_calloc(size_t nmemb, size_t n, void *ctx)
{
    (void)ctx;
    return soth_bc_calloc(nmemb, n);
}
static void *h2_mem_realloc(void *p, size_t n, void *ctx)
{
    (void)ctx;
    return soth_bc_realloc(p, n);
}
static const struct soth_h2_mem h2_mem = {NULL,          h2_mem_malloc,  h2_mem_free,
                                          h2_mem_calloc, h2_mem_realloc, NULL};

static _Thread_local struct soth_buf_pool h2_tables = {.keep = 256};
static _Thread_local struct soth_buf_pool h2_outs = {.keep = 256};
static _Thread_local struct soth_buf_pool h2_chunks = {.keep = 4096};

static struct h2_stream *table_get(void)
{
    bool fresh = h2_tables.head == NULL;
    struct h2_stream *t = soth_buf_pool_get(&h2_tables, H2_TABLE_BYTES);
    if (t != NULL && fresh)
        memset(t, 0, H2_TABLE_BYTES);
    else if (t != NULL)
        memset(t, 0, sizeof(*t));
    return t;
}

static void *h2_buf_get(void *ctx, size_t size)
{
    (void)ctx;
    return soth_buf_pool_get(size == SOTH_H2_OUT_BYTES ? &h2_outs : &h2_chunks, size);
}

static void h2_buf_put(void *ctx, void *m, size_t size)
{
    (void)ctx;
    soth_buf_pool_put(size == SOTH_H2_OUT_BYTES ? &h2_outs : &h2_chunks, m);
}

void app_h2_thread_done(void)
{
    soth_buf_pool_drain(&h2_tables);
    soth_buf_pool_drain(&h2_outs);
    soth_buf_pool_drain(&h2_chunks);
    soth_h2_thread_trim();
}

static struct app_h2 *h2_of(struct app *a)
{
    return (struct app_h2 *)a;
}

static const struct app_h2 *h2_of_const(const struct app *a)
{
    return (const struct app_h2 *)a;
}

/* ---- per-stream table: linear probing, backward-shift deletion (no tombstones) */

static size_t slot_of(int32_t sid)
{
    /* Client stream ids are odd and mostly consecutive: id / 2 spreads them evenly. */
    return ((uint32_t)sid >> 1) & (H2_TABLE_CAP - 1);
}

static struct h2_stream *stream_find(struct app_h2 *h, int32_t sid)
{
    if (h->st == NULL)
        return NULL;
    for (size_t i = slot_of(sid), n = 0; n < H2_TABLE_CAP; i = (i + 1) & (H2_TABLE_CAP - 1), n++) {
        if (h->st[i].sid == sid)
            return &h->st[i];
        if (h->st[i].sid == 0)
            return NULL;
    }
    return NULL;
}

static struct h2_stream *stream_add(struct app_h2 *h, int32_t sid)
{
    /* The relay reports a head once per stream and holds at most 2 x H2_MAX_STREAMS + 16
     * streams, fewer than the table's entries: a free entry always exists. */
    SOTH_BUG_ON(h->n_streams >= H2_TABLE_CAP - 1);
    if (h->st == NULL && (h->st = table_get()) == NULL)
        return NULL;
    size_t i = slot_of(sid);
    while (h->st[i].sid != 0) {
        SOTH_BUG_ON(h->st[i].sid == sid);
        i = (i + 1) & (H2_TABLE_CAP - 1);
    }
    h->st[i] = (struct h2_stream){.sid = sid};
    h->n_streams++;
    return &h->st[i];
}

static void stream_del(struct app_h2 *h, struct h2_stream *e)
{
    size_t i = (size_t)(e - h->st);
    size_t j = i;
    for (;;) {
        j = (j + 1) & (H2_TABLE_CAP - 1);
        if (h->st[j].sid == 0)
            break;
        size_t home = slot_of(h->st[j].sid);
        /* Move j back into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            h->st[i] = h->st[j];
            i = j;
        }
    }
    h->st[i].sid = 0;
    if (--h->n_streams == 0) {
        soth_buf_pool_put(&h2_tables, h->st);
        h->st = NULL;
        h->idle_since_ms = app_clock_ns(&h->base) / 1000000u;
        if (h->parkable)
            h->park_since_ms = h->idle_since_ms;
    }
}

/* ---- relay callbacks -> events */

static int on_out(void *ctx, enum soth_leg to, const char *p, size_t n)
{
    struct app_h2 *h = ctx;
    int rc = h->base.env.send(h->base.env.ctx, (unsigned)to, p, n);
    return rc < 0 ? rc : 0;
}

static void on_request_head(void *ctx, int32_t sid, const struct soth_h2_request *q)
{
    struct app_h2 *h = ctx;
    struct h2_stream *ne = stream_add(h, sid);
    if (ne == NULL) { /* no table: the connection ends (relay_error) */
        if (h->err == 0)
            h->err = SOTH_E_NOMEM;
        return;
    }
    ne->ws_connect = q->method.len == 7 && memcmp(q->method.base, "CONNECT", 7) == 0 &&
                     soth_iov_is_ci(q->protocol, "websocket");
    app_pl_h2_request(&h->base, &ne->pl, q); /* grpc: protocol set before the head */
    if (h->base.env.m != NULL)
        SOTH_METRIC_ADD(h->base.env.m->requests[SOTH_PROTO_HTTP2], 1);
    soth_ev_request_headers(h->base.env.ev, (uint32_t)sid, q->method, q->scheme, q->authority,
                            q->path, SOTH_IOV_LIT("2"), q->headers, q->n_headers);
}

/* docs/soth.md "Budgets": a stream over budget is answered 429 by the relay, alone. */
static uint32_t on_request_admit(void *ctx, int32_t sid)
{
    struct app_h2 *h = ctx;
    uint32_t retry = 0;
    if (h->base.env.budget(h->base.env.ctx, (uint32_t)sid, &retry))
        return 0;
    if (retry == 0)
        retry = 1;
    char ra[12];
    int rn = snprintf(ra, sizeof(ra), "%u", retry);
    const struct soth_header f[] = {
        {SOTH_IOV_LIT("retry-after"), soth_iov(ra, (size_t)rn)},
        {SOTH_IOV_LIT("content-length"), SOTH_IOV_LIT("0")},
    };
    soth_ev_response_headers(h->base.env.ev, (uint32_t)sid, 429, SOTH_IOV_LIT("2"), f, 2, NULL, 0);
    return retry;
}

/* The stream no longer waits for its response head. */
static void stop_waiting(struct app_h2 *h, struct h2_stream *e)
{
    if (e->wait_ms != 0) {
        e->wait_ms = 0;
        h->n_waiting--;
    }
}

/* timeouts.response_header_ms runs from the end of the request (docs/answers.md). */
static void on_request_end(void *ctx, int32_t sid)
{
    struct app_h2 *h = ctx;
    struct h2_stream *e = stream_find(h, sid);
    if (e == NULL || e->head_seen || e->wait_ms != 0)
        return;
    e->wait_ms = app_clock_ns(&h->base) / 1000000u;
    if (e->wait_ms == 0)
        e->wait_ms = 1;
    if (h->n_waiting == 0 || e->wait_ms < h->wait_min_ms)
        h->wait_min_ms = e->wait_ms;
    h->n_waiting++;
}

static void on_response_head(void *ctx, int32_t sid, const struct soth_h2_response *s)
{
    struct app_h2 *h = ctx;
    soth_ev_response_headers(h->base.env.ev, (uint32_t)sid, (unsigned)s->status, SOTH_IOV_LIT("2"),
                             s->headers, s->n_headers, s->alt_svc_removed, s->n_alt_svc_removed);
    struct h2_stream *e = stream_find(h, sid);
    if (e == NULL)
        return;
    e->head_seen = true;
    stop_waiting(h, e);
    app_pl_h2_response(&h->base, &e->pl, s);
    /* RFC 8441 5: a 2xx to the extended CONNECT opens the WebSocket; its DATA are frames. */
    bool ws = e->ws_connect && s->status >= 200 && s->status <= 299 && !s->end_stream;
    if (ws)
        soth_ev_flow_set_protocol(h->base.env.ev, SOTH_PROTO_WEBSOCKET);
    e->obs = app_obs_start(&h->base, (uint32_t)sid, ws, !s->end_stream, s->headers, s->n_headers);
}

static enum soth_leg dir_of(enum soth_leg d)
{
    return soth_leg_of(d);
}

static void on_data(void *ctx, enum soth_leg dir, int32_t sid, const char *p, size_t n)
{
    struct app_h2 *h = ctx;
    struct h2_stream *e = stream_find(h, sid);
    SOTH_BUG_ON(e == NULL); /* the relay reports the head before any body byte */
    if (h->base.env.budget_bytes != NULL)
        h->base.env.budget_bytes(h->base.env.ctx, n);
    uint64_t off = e->off[dir];
    uint64_t capture = h->base.conf.capture;
    /* Capture at most `capture` bytes per message; bytes past it are counted, not copied. */
    size_t take = 0;
    if (off < capture)
        take = capture - off < n ? (size_t)(capture - off) : n;
    soth_ev_body_chunk(h->base.env.ev, dir_of(dir), (uint32_t)sid, off, n, soth_iov(p, take),
                       take < n);
    e->off[dir] = off + n;
    app_pl_h2_data(&h->base, e->pl, (int)dir, (uint32_t)sid, p, n);
    if (e->obs != NULL)
        app_obs_data(&h->base, e->obs, soth_leg_of(dir), p, n);
}

static void on_trailers(void *ctx, enum soth_leg dir, int32_t sid, const struct soth_header *hd,
                        size_t n)
{
    struct app_h2 *h = ctx;
    soth_ev_trailers(h->base.env.ev, dir_of(dir), (uint32_t)sid, hd, n);
}

static enum soth_outcome outcome_of(enum soth_h2_outcome o)
{
    switch (o) {
    case SOTH_H2_COMPLETE:
        return SOTH_OUTCOME_COMPLETE;
    case SOTH_H2_CLIENT_ABORTED:
        return SOTH_OUTCOME_CLIENT_ABORTED;
    case SOTH_H2_UPSTREAM_ABORTED:
        return SOTH_OUTCOME_UPSTREAM_ABORTED;
    case SOTH_H2_RESET:
    default:
        return SOTH_OUTCOME_RESET;
    }
}

static void on_stream_end(void *ctx, int32_t sid, const struct soth_h2_stream_end *end)
{
    struct app_h2 *h = ctx;
    struct h2_stream *e = stream_find(h, sid);
    /* Without an entry the stream was refused before its head was reported (431, malformed
     * head): no request_headers, so no exchange either (docs/events.md invariant 4: request_headers
     * is a stream's first event), as for an HTTP/1.1 head refused with 431. */
    if (e == NULL)
        return;
    struct app_pl_stream *pl = e->pl;
    if (e->obs != NULL)
        app_obs_end(&h->base, e->obs);
    stop_waiting(h, e);
    bool timed_out = e->timed_out;
    stream_del(h, e);
    enum soth_outcome o = timed_out ? SOTH_OUTCOME_TIMEOUT : outcome_of(end->outcome);
    if (h->aborting && o != SOTH_OUTCOME_COMPLETE)
        o = h->abort_outcome;
    app_pl_h2_end(&h->base, pl, (uint32_t)sid, o == SOTH_OUTCOME_COMPLETE);
    /* the relay's static cause (docs/http2.md, "Outcomes") as exchange_completed `reason` */
    if (o != SOTH_OUTCOME_COMPLETE && end->detail != NULL)
        soth_ev_exchange_reason(h->base.env.ev, end->detail);
    soth_ev_exchange_completed(h->base.env.ev, (uint32_t)sid, o, end->request_bytes,
                               end->response_bytes);
}

/* ---- driving */

static void set_reason(struct app_h2 *h, enum soth_close_reason why)
{
    if (!h->reason_set) {
        h->reason_set = true;
        h->reason = why;
    }
}

/* Record a cause the relay saw by itself (connection errors, GOAWAYs), if none yet. */
static void note_relay_cause(struct app_h2 *h)
{
    if (h->reason_set)
        return;
    if (soth_h2_relay_failed(h->r, SOTH_LEG_CLIENT))
        set_reason(h, h->bad_preface ? SOTH_CLOSE_PARSE_FAILED : SOTH_CLOSE_RELAY_ERROR);
    else if (soth_h2_relay_failed(h->r, SOTH_LEG_UPSTREAM))
        set_reason(h, SOTH_CLOSE_RELAY_ERROR);
    else if (soth_h2_relay_goaway_received(h->r, SOTH_LEG_UPSTREAM))
        set_reason(h, SOTH_CLOSE_RELAY_EOF);
    else if (soth_h2_relay_goaway_received(h->r, SOTH_LEG_CLIENT))
        set_reason(h, SOTH_CLOSE_CLIENT_EOF);
}

static bool leg_finished(const struct app_h2 *h, enum soth_leg side)
{
    return !soth_h2_relay_want_read(h->r, side) && !soth_h2_relay_want_write(h->r, side);
}

/* Stop: end every stream still open (no output is produced any more). */
static void finish(struct app_h2 *h)
{
    soth_h2_relay_eof(h->r, SOTH_LEG_CLIENT, false);
    soth_h2_relay_eof(h->r, SOTH_LEG_UPSTREAM, false);
    h->done = true;
}

/* After every call that may move the relay: flush, then decide whether the layer is done. */
static int settle(struct app_h2 *h)
{
    if (h->err < 0)
        return h->err;
    int rc = soth_h2_relay_flush(h->r);
    if (rc < 0) {
        h->err = rc;
        set_reason(h, SOTH_CLOSE_RELAY_ERROR);
        finish(h);
        return rc;
    }
    note_relay_cause(h);
    if (h->done)
        return APP_DONE;
    /* The relay is finished when its client leg is (docs/http2.md, "Driving it"); the
     * upstream leg has nothing left to say then: its streams were cancelled and its GOAWAY
     * flushed above, unless that output is held, which no longer matters. */
    if (leg_finished(h, SOTH_LEG_CLIENT)) {
        if (!h->reason_set)
            set_reason(h, SOTH_CLOSE_CLIENT_EOF);
        finish(h);
        return APP_DONE;
    }
    return APP_AGAIN;
}

static struct app *h2_create(const struct app_env *env, const struct app_conf *conf)
{
    struct app_h2 *h = malloc(sizeof(*h));
    if (h == NULL)
        return NULL;
    memset(h, 0, sizeof(*h));
    app_base_init(&h->base, &app_h2_ops, env, conf);
    struct soth_h2_cbs cbs = {
        .ctx = h,
        .out = on_out,
        .on_request_head = on_request_head,
        .on_request_admit = env->budget != NULL ? on_request_admit : NULL,
        .on_response_head = on_response_head,
        .on_data = on_data,
        .on_trailers = on_trailers,
        .on_stream_end = on_stream_end,
        .on_request_end = on_request_end,
        .buf_get = h2_buf_get,
        .buf_put = h2_buf_put,
    };
    struct soth_h2_settings set = {
        .mem = &h2_mem,
        .max_header_list_size = conf->h2_max_header_list_size,
        .strip_h3_alt_svc = conf->strip_h3_alt_svc,
        .max_concurrent_streams = H2_MAX_STREAMS,
    };
    h->r = soth_h2_relay_new(&cbs, &set);
    if (h->r == NULL) {
        free(h);
        return NULL;
    }
    soth_ev_flow_set_protocol(env->ev, SOTH_PROTO_HTTP2);
    h->idle_since_ms = app_clock_ns(&h->base) / 1000000u;
    h->parkable = env->upstream_parkable && conf->upstream_idle_ms > 0;
    if (h->parkable)
        h->park_since_ms = h->idle_since_ms;
    /* Both prefaces at once: our SETTINGS toward the client, the connection preface toward
     * the upstream (which waits for it before saying anything). */
    if (soth_h2_relay_flush(h->r) < 0) {
        soth_h2_relay_free(h->r);
        free(h);
        return NULL;
    }
    return &h->base;
}

static void h2_dispose(struct app *a)
{
    struct app_h2 *h = h2_of(a);
    soth_h2_relay_free(h->r);
    for (size_t i = 0; h->st != NULL && i < H2_TABLE_CAP; i++)
        if (h->st[i].sid != 0)
            app_pl_stream_free(h->st[i].pl);
    if (h->st != NULL)
        soth_buf_pool_put(&h2_tables, h->st);
    app_base_dispose(a);
    free(h);
}

/* Check the client's first bytes against the connection preface (RFC 9113 3.4), only to
 * tell a client that does not speak HTTP/2 (parse_failed) from a protocol error later. */
static void check_magic(struct app_h2 *h, const char *p, size_t n)
{
    size_t k = H2_MAGIC_LEN - h->magic_off;
    if (k > n)
        k = n;
    if (memcmp(p, &H2_MAGIC[h->magic_off], k) != 0)
        h->bad_preface = true;
    h->magic_off += k;
}

/* What reading bytes into the relay returned (soth_h2_relay_feed, soth_h2_relay_unpark).
 * SOTH_E_NOMEM: the layer ends (its GOAWAY, when it can still go). SOTH_E_MALFORMED (bad
 * preface, flood): fatal for that leg only; its terminating GOAWAY goes out with the next flush
 * and the relay winds the other leg down gracefully (502s or CANCELs, GOAWAY NO_ERROR); the
 * flow ends when the client leg is finished. SOTH_E_CLOSED: bytes after the leg stopped
 * reading (its GOAWAY is done): dropped. Returns the layer's error, else 0. */
static int fed(struct app_h2 *h, ssize_t rc)
{
    if (rc == SOTH_E_NOMEM) {
        set_reason(h, SOTH_CLOSE_RELAY_ERROR);
        (void)soth_h2_relay_flush(h->r);
        finish(h);
        h->err = SOTH_E_NOMEM;
        return h->err;
    }
    if (rc == SOTH_E_MALFORMED)
        note_relay_cause(h);
    return 0;
}

static int h2_input(struct app *a, unsigned side, const char *p, size_t n)
{
    struct app_h2 *h = h2_of(a);
    if (h->err < 0)
        return h->err;
    if (h->done)
        return APP_DONE;
    if (side == SOTH_LEG_CLIENT && h->magic_off < H2_MAGIC_LEN && !h->bad_preface && n > 0)
        check_magic(h, p, n);
    if (fed(h, soth_h2_relay_feed(h->r, side, p, n)) < 0)
        return h->err;
    if (side == SOTH_LEG_CLIENT && !h->wake_asked && soth_h2_relay_waking(h->r)) {
        h->wake_asked = true;
        h->base.up_want = APP_UP_OPEN; /* the worker connects, then h2_upstream_opened */
    }
    return settle(h);
}

static int h2_eof(struct app *a, unsigned side, bool reset)
{
    struct app_h2 *h = h2_of(a);
    if (h->eof[side & 1])
        return h->err < 0 ? h->err : (h->done ? APP_DONE : APP_AGAIN);
    h->eof[side & 1] = true;
    set_reason(h, side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF);
    if (h->err < 0)
        return h->err;
    if (h->done)
        return APP_DONE;
    soth_h2_relay_eof(h->r, soth_leg_of(side), reset);
    return settle(h);
}

static void h2_abort(struct app *a, enum soth_outcome outcome)
{
    struct app_h2 *h = h2_of(a);
    if (h->aborting)
        return;
    h->aborting = true;
    h->abort_outcome = outcome;
    /* Both transports are going away: every stream still open ends now (no output). */
    soth_h2_relay_eof(h->r, SOTH_LEG_CLIENT, true);
    soth_h2_relay_eof(h->r, SOTH_LEG_UPSTREAM, true);
    h->done = true;
}

static int h2_hold(struct app *a, unsigned side, bool hold)
{
    struct app_h2 *h = h2_of(a);
    soth_h2_relay_hold(h->r, soth_leg_of(side), hold);
    if (hold || h->done)
        return h->err < 0 ? h->err : (h->done ? APP_DONE : APP_AGAIN);
    return settle(h);
}

static bool h2_want_write(const struct app *a, unsigned side)
{
    const struct app_h2 *h = h2_of_const(a);
    return !h->done && soth_h2_relay_want_write(h->r, soth_leg_of(side));
}

static int h2_shutdown(struct app *a)
{
    struct app_h2 *h = h2_of(a);
    if (h->err < 0)
        return h->err;
    if (h->done)
        return APP_DONE;
    set_reason(h, SOTH_CLOSE_SHUTDOWN);
    soth_h2_relay_shutdown(h->r);
    return settle(h);
}

static enum soth_close_reason h2_close_reason(const struct app *a)
{
    const struct app_h2 *h = h2_of_const(a);
    return h->reason_set ? h->reason : SOTH_CLOSE_RELAY_ERROR;
}

/* When the earliest response head is due (timeouts.response_header_ms), or earlier: a
 * stream answered since the last h2_timer may have held the earliest wait, and then the
 * timer fires early, finds nothing late and makes the bound exact. An idle relay's memory
 * release is due H2_RELEASE_MS after its last stream ended. The worker's idle timer bounds
 * silence otherwise. */
static uint64_t h2_deadline(const struct app *a)
{
    const struct app_h2 *h = h2_of_const(a);
    if (h->done)
        return 0;
    if (h->n_streams == 0) {
        uint64_t t = h->idle_since_ms != 0 ? h->idle_since_ms + H2_RELEASE_MS : 0;
        uint64_t p = h->park_since_ms != 0 ? h->park_since_ms + a->conf.upstream_idle_ms : 0;
        return t == 0 || (p != 0 && p < t) ? p : t;
    }
    uint32_t limit = a->conf.response_header_ms;
    if (h->n_waiting == 0 || limit == 0)
        return 0;
    return h->wait_min_ms + limit;
}

/* Late response heads get 504 on their stream; the connection carries on. */
static int h2_timer(struct app *a, uint64_t now_ms)
{
    struct app_h2 *h = h2_of(a);
    if (h->err < 0)
        return h->err;
    if (h->done)
        return APP_DONE;
    if (h->n_streams == 0) {
        /* Idle since idle_since_ms: give back what the relay holds unused. Not quiet yet (output
         * held or queued, a header block half received): try again H2_RELEASE_MS later. */
        if (h->idle_since_ms != 0 && now_ms >= h->idle_since_ms + H2_RELEASE_MS) {
            size_t got = soth_h2_relay_release(h->r);
            h->idle_since_ms = got > 0 ? 0 : now_ms;
            if (got > 0) {
                const struct soth_ev_flow *ev = h->base.env.ev;
                SOTH_LOG(SOTH_LOG_DEBUG, (int)ev->worker, ev->flow_id,
                         "idle HTTP/2 relay: %zu bytes given back", got);
            }
        }
        uint32_t idle = a->conf.upstream_idle_ms;
        if (h->park_since_ms != 0 && now_ms >= h->park_since_ms + idle) {
            /* Not quiet yet: again H2_RELEASE_MS later. */
            int rc = soth_h2_relay_park(h->r);
            if (rc < 0) {
                h->err = rc;
                set_reason(h, SOTH_CLOSE_RELAY_ERROR);
                finish(h);
                return rc;
            }
            h->park_since_ms = rc > 0 ? 0 : now_ms + H2_RELEASE_MS - idle;
            if (rc > 0) {
                const struct soth_ev_flow *ev = h->base.env.ev;
                SOTH_LOG(SOTH_LOG_DEBUG, (int)ev->worker, ev->flow_id,
                         "idle HTTP/2 relay: upstream session ended after %u ms", idle);
                h->base.up_want = APP_UP_CLOSE;
                return settle(h);
            }
        }
        return APP_AGAIN;
    }
    uint32_t limit = a->conf.response_header_ms;
    if (h->n_waiting == 0 || limit == 0)
        return APP_AGAIN;
    /* Collect first: the relay's callbacks may change the table. */
    int32_t late[H2_TABLE_CAP];
    size_t n = 0;
    uint64_t min = 0; /* the earliest wait among the streams still waiting */
    for (size_t i = 0; i < H2_TABLE_CAP; i++) {
        struct h2_stream *e = &h->st[i];
        if (e->sid == 0 || e->wait_ms == 0)
            continue;
        if (e->wait_ms + limit <= now_ms) {
            stop_waiting(h, e);
            late[n++] = e->sid;
        } else if (min == 0 || e->wait_ms < min) {
            min = e->wait_ms;
        }
    }
    h->wait_min_ms = min;
    for (size_t i = 0; i < n; i++) {
        if (!soth_h2_relay_timeout(h->r, late[i]))
            continue;
        struct h2_stream *e = stream_find(h, late[i]);
        if (e != NULL)
            e->timed_out = true;
    }
    return settle(h);
}

static bool h2_read_paused(const struct app *a, unsigned side)
{
    (void)a, (void)side; /* HTTP/2 holds its output instead (app_hold) */
    return false;
}

static bool h2_upstream_reusable(const struct app *a, uint32_t *requests)
{
    (void)a, (void)requests; /* HTTP/2 upstream connections are not pooled */
    return false;
}

static bool h2_upstream_retryable(const struct app *a)
{
    (void)a;
    return false;
}

static int h2_upstream_opened(struct app *a, bool ok)
{
    struct app_h2 *h = h2_of(a);
    h->wake_asked = false;
    if (h->err < 0)
        return h->err;
    if (h->done)
        return APP_DONE;
    if (fed(h, soth_h2_relay_unpark(h->r, ok)) < 0)
        return h->err;
    /* A stream came and went while waiting (refused): idle again from now. */
    if (ok && h->n_streams == 0 && h->parkable)
        h->park_since_ms = app_clock_ns(&h->base) / 1000000u;
    return settle(h);
}

const struct app_ops app_h2_ops = {
    .name = "http/2",
    .h2 = true,
    .create = h2_create,
    .dispose = h2_dispose,
    .input = h2_input,
    .eof = h2_eof,
    .abort = h2_abort,
    .hold = h2_hold,
    .deadline = h2_deadline,
    .timer = h2_timer,
    .read_paused = h2_read_paused,
    .want_write = h2_want_write,
    .shutdown = h2_shutdown,
    .close_reason = h2_close_reason,
    .upstream_reusable = h2_upstream_reusable,
    .upstream_retryable = h2_upstream_retryable,
    .upstream_opened = h2_upstream_opened,
};
