/*
 * HTTP/2 layer of a flow (issue 7): the nghttp2 relay of proto/h2.c between the two legs,
 * its callbacks turned into the flow's events. The worker feeds decrypted bytes, the relay
 * answers through env->send (at most 16 KiB per call, one TLS record each).
 *
 * Per-stream event state (body offsets) lives in a fixed open-addressing table inside the
 * app, keyed by client stream id: the relay never holds more than 2 x max_concurrent_streams
 * + 16 stream slots, so the table cannot fill and nothing is allocated per stream or per
 * event here (nghttp2 and the relay allocate per connection, see docs/http2.md).
 *
 * Close reasons (SPEC stream_closed reason_code), the first cause wins:
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

#include "app.h"
#include "app_payload.h"
#include "soth/proto/h2.h"
#include "soth/proto/ws.h"
#include "soth/proto/sse.h"
#include "soth/proto/decode.h"

#define H2_MAX_STREAMS 100 /* SETTINGS_MAX_CONCURRENT_STREAMS toward the client */
#define H2_TABLE_CAP   256 /* > 2 x H2_MAX_STREAMS + 16 relay slots; a power of two */
#define H2_MAGIC       "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_MAGIC_LEN   (sizeof(H2_MAGIC) - 1)

_Static_assert(H2_TABLE_CAP > 2 * H2_MAX_STREAMS + 16, "stream table smaller than the slots");
_Static_assert((H2_TABLE_CAP & (H2_TABLE_CAP - 1)) == 0, "stream table not a power of two");

struct h2_stream {
    int32_t sid;     /* client stream id; 0 = free entry */
    uint64_t off[2]; /* body bytes reported so far, by enum soth_leg */
    /* gRPC and payload state, or NULL (core/app_payload.c) */
    struct app_pl_stream *pl;
    struct h2_sse_slot *sse; /* its text/event-stream parser (issue 9), or NULL */
    bool ws_connect;         /* extended CONNECT for websocket (RFC 8441) */
    struct h2_ws_slot *ws;   /* its WebSocket frame parsers (issue 9), or NULL */
};

struct app_h2 {
    struct app_hdr hdr; /* kind APP_H2: first, for app.c */
    struct app_env env;
    struct soth_h2_relay *r;
    uint64_t capture; /* events.body_capture_bytes per message */
    int err;          /* first fatal error (send failure, allocation); sticky */
    bool reason_set;
    enum soth_close_reason reason;
    bool eof[2];      /* app_eof seen, by side */
    bool bad_preface; /* the client's first bytes were not the HTTP/2 connection preface */
    size_t magic_off; /* client preface bytes checked so far */
    bool aborting;    /* app_abort: streams still in flight end with abort_outcome */
    enum soth_outcome abort_outcome;
    bool done;          /* APP_DONE returned: the relay is finished */
    uint32_t n_streams; /* entries in use in st[] */
    struct h2_stream st[H2_TABLE_CAP];
    struct app_payload *pl; /* payload decoding of the flow, NULL until needed */
    struct h2_sse *sse;     /* SSE parsers (issue 9), NULL until an event stream */
    struct h2_ws *ws;       /* WebSocket parsers (issue 9), NULL until an RFC 8441 stream */
};

static struct app_h2 *h2_of(struct app *a)
{
    return (struct app_h2 *)a;
}

/* ---- per-stream table: linear probing, backward-shift deletion (no tombstones) */

static size_t slot_of(int32_t sid)
{
    /* Client stream ids are odd and mostly consecutive: id / 2 spreads them evenly. */
    return ((uint32_t)sid >> 1) & (H2_TABLE_CAP - 1);
}

static struct h2_stream *stream_find(struct app_h2 *h, int32_t sid)
{
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
    h->n_streams--;
}

/* ---- SSE observation (issue 9): text/event-stream responses parsed from their DATA as it
 * arrives (docs/streaming.md). At most H2_SSE_SLOTS event streams of a connection are parsed
 * at once; each slot's parser is allocated on first use and kept for the flow. */

#define H2_SSE_SLOTS 4

struct h2_sse_slot {
    struct app_h2 *h;
    int32_t sid; /* stream being parsed, 0 = free */
    struct soth_sse *p;
    void *mem;
};

struct h2_sse {
    struct h2_sse_slot slot[H2_SSE_SLOTS];
};

static void sse_on_event(void *ctx, const struct soth_sse_event *e)
{
    struct h2_sse_slot *s = ctx;
    /* WHATWG: an empty event type buffer dispatches a "message" event. */
    struct soth_iov type = e->event.len > 0 ? e->event : SOTH_IOV_LIT("message");
    soth_ev_sse_event(s->h->env.ev, (uint32_t)s->sid, type, e->id.len > 0 ? e->id : SOTH_IOV_NULL,
                      e->retry, e->data);
    app_pl_framed(&s->h->pl, &s->h->env, (uint32_t)s->sid, 1, SOTH_FRAMING_SSE, e->data,
                  e->truncated);
}

/* A response head: start parsing it when it is an uncompressed event stream. */
static struct h2_sse_slot *sse_start(struct app_h2 *h, int32_t sid,
                                     const struct soth_h2_response *s)
{
    bool es = false;
    for (size_t i = 0; i < s->n_headers; i++) {
        struct soth_iov n = s->headers[i].name, v = s->headers[i].value;
        if (n.len == 12 && soth_iov_starts_ci(n, "content-type") &&
            soth_iov_starts_ci(v, "text/event-stream") &&
            (v.len == 17 || v.base[17] == ';' || v.base[17] == ' ' || v.base[17] == '\t'))
            es = true;
        if (n.len == 16 && soth_iov_starts_ci(n, "content-encoding") &&
            !(v.len == 8 && soth_iov_starts_ci(v, "identity")))
            return NULL; /* compressed: the DATA bytes are not the events */
    }
    if (!es || s->end_stream)
        return NULL;
    if (h->sse == NULL)
        h->sse = calloc(1, sizeof(*h->sse));
    if (h->sse == NULL)
        return NULL;
    struct h2_sse_slot *slot = NULL;
    for (size_t i = 0; i < H2_SSE_SLOTS && slot == NULL; i++)
        if (h->sse->slot[i].sid == 0)
            slot = &h->sse->slot[i];
    if (slot == NULL)
        return NULL;
    if (slot->mem == NULL)
        slot->mem = malloc(soth_sse_size(NULL));
    if (slot->mem == NULL)
        return NULL;
    struct soth_sse_cbs cbs = {.ctx = slot, .on_event = sse_on_event};
    slot->h = h;
    slot->p = soth_sse_init(slot->mem, NULL, &cbs);
    slot->sid = sid;
    soth_ev_flow_set_protocol(h->env.ev, SOTH_PROTO_SSE);
    return slot;
}

/* The stream ended: an unfinished event is discarded (WHATWG), the slot freed. */
static void sse_end(struct h2_sse_slot *slot)
{
    if (slot == NULL)
        return;
    soth_sse_finish(slot->p);
    slot->sid = 0;
}

static void sse_free(struct h2_sse *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < H2_SSE_SLOTS; i++)
        free(s->slot[i].mem);
    free(s);
}

/* ---- WebSocket over HTTP/2 (RFC 8441) observation (issue 9): after a 2xx to an extended
 * CONNECT with :protocol websocket, the stream's DATA in each direction is WebSocket frames
 * (docs/streaming.md). At most H2_WS_SLOTS such streams of a connection are parsed at once;
 * each slot (two frame parsers and the turn aggregator) is allocated on first use. */

#define H2_WS_SLOTS        4
#define H2_WS_TURN_IDLE_NS (30ull * 1000000000ull)
#define H2_WS_CAPTURE_MAX  (256u << 10) /* capture per message and direction, at most */

struct h2_ws_slot {
    struct app_h2 *h;
    int32_t sid; /* stream being parsed, 0 = free */
    struct soth_ws_turns turns;
    struct soth_ws *p[2]; /* by enum soth_leg: request = client frames */
    void *mem;
};

struct h2_ws {
    struct h2_ws_slot slot[H2_WS_SLOTS];
};

_Static_assert((int)SOTH_WS_FLUSH_DIRECTION_CHANGE == (int)SOTH_FLUSH_DIRECTION_CHANGE &&
                   (int)SOTH_WS_FLUSH_CLOSE == (int)SOTH_FLUSH_CLOSE &&
                   (int)SOTH_WS_FLUSH_ERROR == (int)SOTH_FLUSH_ERROR &&
                   (int)SOTH_WS_FLUSH_IDLE == (int)SOTH_FLUSH_IDLE,
               "flush reasons differ between proto.h and observe.h");

static enum soth_leg ws_dir(enum soth_leg d)
{
    return soth_leg_of(d);
}

static void ws_on_message(void *ctx, const struct soth_ws_msg *m)
{
    struct h2_ws_slot *s = ctx;
    soth_ws_turns_message(&s->turns, m, soth_now_ns());
    soth_ev_ws_message(s->h->env.ev, (uint32_t)s->sid, ws_dir(m->dir), m->opcode, m->len, m->data,
                       m->truncated);
    if ((m->opcode == SOTH_WS_OP_TEXT || m->opcode == SOTH_WS_OP_BINARY) && !m->compressed)
        app_pl_framed(&s->h->pl, &s->h->env, (uint32_t)s->sid, m->dir == SOTH_LEG_UPSTREAM,
                      SOTH_FRAMING_WS, m->data, m->truncated);
}

static void ws_on_turn_start(void *ctx, const struct soth_ws_turn *t)
{
    struct h2_ws_slot *s = ctx;
    soth_ev_ws_turn_started(s->h->env.ev, (uint32_t)s->sid, t->id, ws_dir(t->initiator));
}

static void ws_on_turn_end(void *ctx, const struct soth_ws_turn *t)
{
    struct h2_ws_slot *s = ctx;
    struct soth_ws_turn_stats st = {
        .turn_id = t->id,
        .initiator = ws_dir(t->initiator),
        .client_frames = t->frames[SOTH_LEG_CLIENT],
        .server_frames = t->frames[SOTH_LEG_UPSTREAM],
        .client_bytes = t->bytes[SOTH_LEG_CLIENT],
        .server_bytes = t->bytes[SOTH_LEG_UPSTREAM],
        .started_ns = t->started_ns,
        .ended_ns = t->ended_ns,
        /* same order as enum soth_flush_reason (proto.h) */
        .flush_reason = (enum soth_flush_reason)t->reason,
    };
    soth_ev_ws_turn_completed(s->h->env.ev, (uint32_t)s->sid, &st);
}

/* A 2xx to an extended CONNECT for websocket: start parsing the stream's DATA. */
static struct h2_ws_slot *ws_start(struct app_h2 *h, int32_t sid, const struct soth_h2_response *s)
{
    if (s->status < 200 || s->status > 299 || s->end_stream)
        return NULL;
    bool deflate = false;
    for (size_t i = 0; i < s->n_headers; i++) {
        struct soth_iov n = s->headers[i].name, v = s->headers[i].value;
        if (n.len == 24 && soth_iov_starts_ci(n, "sec-websocket-extensions"))
            for (size_t k = 0; k + 18 <= v.len; k++)
                if (soth_iov_starts_ci(soth_iov(v.base + k, v.len - k), "permessage-deflate"))
                    deflate = true;
    }
    if (h->ws == NULL)
        h->ws = calloc(1, sizeof(*h->ws));
    if (h->ws == NULL)
        return NULL;
    struct h2_ws_slot *slot = NULL;
    for (size_t i = 0; i < H2_WS_SLOTS && slot == NULL; i++)
        if (h->ws->slot[i].sid == 0)
            slot = &h->ws->slot[i];
    if (slot == NULL)
        return NULL;
    struct soth_ws_limits lim = {
        .capture = (uint32_t)(h->capture < H2_WS_CAPTURE_MAX ? h->capture : H2_WS_CAPTURE_MAX)};
    size_t sz = (soth_ws_size(&lim) + 15) & ~(size_t)15;
    if (slot->mem == NULL)
        slot->mem = malloc(2 * sz);
    if (slot->mem == NULL)
        return NULL;
    struct soth_ws_cbs cbs = {.ctx = slot, .on_message = ws_on_message};
    slot->h = h;
    slot->sid = sid;
    slot->p[SOTH_LEG_CLIENT] = soth_ws_init(slot->mem, SOTH_LEG_CLIENT, deflate, &lim, &cbs);
    slot->p[SOTH_LEG_UPSTREAM] =
        soth_ws_init((char *)slot->mem + sz, SOTH_LEG_UPSTREAM, deflate, &lim, &cbs);
    struct soth_ws_turn_cbs tcbs = {
        .ctx = slot, .on_start = ws_on_turn_start, .on_end = ws_on_turn_end};
    soth_ws_turns_init(&slot->turns, H2_WS_TURN_IDLE_NS, &tcbs);
    soth_ev_flow_set_protocol(h->env.ev, SOTH_PROTO_WEBSOCKET);
    return slot;
}

static void ws_data(struct h2_ws_slot *slot, enum soth_leg dir, const char *p, size_t n)
{
    /* A broken stream is only observed no more: the relay goes on untouched. */
    if (soth_ws_feed(slot->p[dir], p, n) < 0 && !slot->turns.closed)
        soth_ws_turns_end(&slot->turns, SOTH_WS_FLUSH_ERROR, soth_now_ns());
}

/* The stream ended: no turn stays open; the slot is freed. */
static void ws_end(struct h2_ws_slot *slot)
{
    if (slot == NULL)
        return;
    soth_ws_turns_end(&slot->turns, SOTH_WS_FLUSH_CLOSE, soth_now_ns());
    slot->sid = 0;
}

static void ws_free(struct h2_ws *w)
{
    if (w == NULL)
        return;
    for (size_t i = 0; i < H2_WS_SLOTS; i++)
        free(w->slot[i].mem);
    free(w);
}

/* ---- relay callbacks -> events */

static int on_out(void *ctx, enum soth_leg to, const char *p, size_t n)
{
    struct app_h2 *h = ctx;
    int rc = h->env.send(h->env.ctx, (unsigned)to, p, n);
    return rc < 0 ? rc : 0;
}

static void on_request_head(void *ctx, int32_t sid, const struct soth_h2_request *q)
{
    struct app_h2 *h = ctx;
    struct h2_stream *ne = stream_add(h, sid);
    ne->ws_connect = q->method.len == 7 && memcmp(q->method.base, "CONNECT", 7) == 0 &&
                     q->protocol.len == 9 && soth_iov_starts_ci(q->protocol, "websocket");
    app_pl_h2_request(&h->pl, &ne->pl, &h->env, q); /* grpc: protocol set before the head */
    if (h->env.m != NULL)
        SOTH_METRIC_ADD(h->env.m->requests[SOTH_PROTO_HTTP2], 1);
    soth_ev_request_headers(h->env.ev, (uint32_t)sid, q->method, q->scheme, q->authority, q->path,
                            SOTH_IOV_LIT("2"), q->headers, q->n_headers);
}

static void on_response_head(void *ctx, int32_t sid, const struct soth_h2_response *s)
{
    struct app_h2 *h = ctx;
    soth_ev_response_headers(h->env.ev, (uint32_t)sid, (unsigned)s->status, SOTH_IOV_LIT("2"),
                             s->headers, s->n_headers);
    struct h2_stream *e = stream_find(h, sid);
    if (e != NULL)
        app_pl_h2_response(&h->pl, &e->pl, &h->env, s);
    if (e != NULL)
        e->sse = sse_start(h, sid, s);
    if (e != NULL && e->ws_connect)
        e->ws = ws_start(h, sid, s);
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
    uint64_t off = e->off[dir];
    /* Capture at most `capture` bytes per message; bytes past it are counted, not copied. */
    size_t take = 0;
    if (off < h->capture)
        take = h->capture - off < n ? (size_t)(h->capture - off) : n;
    soth_ev_body_chunk(h->env.ev, dir_of(dir), (uint32_t)sid, off, n, soth_iov(p, take), take < n);
    e->off[dir] = off + n;
    app_pl_h2_data(h->pl, e->pl, &h->env, (int)dir, (uint32_t)sid, p, n);
    if (e->sse != NULL && dir == SOTH_LEG_UPSTREAM)
        soth_sse_feed(e->sse->p, p, n);
    if (e->ws != NULL)
        ws_data(e->ws, dir, p, n);
}

static void on_trailers(void *ctx, enum soth_leg dir, int32_t sid, const struct soth_header *hd,
                        size_t n)
{
    struct app_h2 *h = ctx;
    soth_ev_trailers(h->env.ev, dir_of(dir), (uint32_t)sid, hd, n);
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
     * head): no request_headers, so no exchange either (SPEC invariant 4: request_headers
     * is a stream's first event), as for an HTTP/1.1 head refused with 431. */
    if (e == NULL)
        return;
    struct app_pl_stream *pl = e->pl;
    sse_end(e->sse);
    ws_end(e->ws);
    stream_del(h, e);
    enum soth_outcome o = outcome_of(end->outcome);
    if (h->aborting && o != SOTH_OUTCOME_COMPLETE)
        o = h->abort_outcome;
    app_pl_h2_end(h->pl, pl, &h->env, (uint32_t)sid, o == SOTH_OUTCOME_COMPLETE);
    soth_ev_exchange_completed(h->env.ev, (uint32_t)sid, o, end->request_bytes,
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

struct app *app_h2_new(const struct app_env *env)
{
    struct app_h2 *h = malloc(sizeof(*h));
    if (h == NULL)
        return NULL;
    memset(h, 0, sizeof(*h));
    h->hdr.kind = APP_H2;
    h->env = *env;
    h->capture = env->cfg != NULL ? env->cfg->events.body_capture_bytes : 0;
    struct soth_h2_cbs cbs = {
        .ctx = h,
        .out = on_out,
        .on_request_head = on_request_head,
        .on_response_head = on_response_head,
        .on_data = on_data,
        .on_trailers = on_trailers,
        .on_stream_end = on_stream_end,
    };
    struct soth_h2_settings set = {
        .max_header_list_size = env->cfg != NULL ? env->cfg->http2_max_header_list_size : 0,
        .max_concurrent_streams = H2_MAX_STREAMS,
    };
    h->r = soth_h2_relay_new(&cbs, &set);
    if (h->r == NULL) {
        free(h);
        return NULL;
    }
    soth_ev_flow_set_protocol(env->ev, SOTH_PROTO_HTTP2);
    /* Both prefaces at once: our SETTINGS toward the client, the connection preface toward
     * the upstream (which waits for it before saying anything). */
    if (soth_h2_relay_flush(h->r) < 0) {
        soth_h2_relay_free(h->r);
        free(h);
        return NULL;
    }
    return (struct app *)h;
}

void app_h2_free(struct app *a)
{
    if (a == NULL)
        return;
    struct app_h2 *h = h2_of(a);
    soth_h2_relay_free(h->r);
    for (size_t i = 0; i < H2_TABLE_CAP; i++)
        if (h->st[i].sid != 0)
            app_pl_stream_free(h->st[i].pl);
    app_pl_free(h->pl);
    sse_free(h->sse);
    ws_free(h->ws);
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

int app_h2_input(struct app *a, unsigned side, const char *p, size_t n)
{
    struct app_h2 *h = h2_of(a);
    if (h->err < 0)
        return h->err;
    if (h->done)
        return APP_DONE;
    if (side == SOTH_LEG_CLIENT && h->magic_off < H2_MAGIC_LEN && !h->bad_preface && n > 0)
        check_magic(h, p, n);
    ssize_t rc = soth_h2_relay_feed(h->r, side, p, n);
    if (rc == SOTH_E_NOMEM) {
        set_reason(h, SOTH_CLOSE_RELAY_ERROR);
        (void)soth_h2_relay_flush(h->r); /* the GOAWAY, when it can still go */
        finish(h);
        h->err = SOTH_E_NOMEM;
        return h->err;
    }
    /* SOTH_E_MALFORMED (bad preface, flood): fatal for that leg only. The terminating GOAWAY
     * goes out with this flush and the relay winds the other leg down gracefully (502s or
     * CANCELs, GOAWAY NO_ERROR); the flow ends when the client leg is finished.
     * SOTH_E_CLOSED: bytes after the leg stopped reading (its GOAWAY is done): dropped. */
    if (rc == SOTH_E_MALFORMED)
        note_relay_cause(h);
    return settle(h);
}

int app_h2_eof(struct app *a, unsigned side, bool reset)
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

void app_h2_abort(struct app *a, enum soth_outcome outcome)
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

int app_h2_hold(struct app *a, unsigned side, bool hold)
{
    struct app_h2 *h = h2_of(a);
    soth_h2_relay_hold(h->r, soth_leg_of(side), hold);
    if (hold || h->done)
        return h->err < 0 ? h->err : (h->done ? APP_DONE : APP_AGAIN);
    return settle(h);
}

bool app_h2_want_write(const struct app *a, unsigned side)
{
    const struct app_h2 *h = (const struct app_h2 *)a;
    return !h->done && soth_h2_relay_want_write(h->r, soth_leg_of(side));
}

int app_h2_shutdown(struct app *a)
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

enum soth_close_reason app_h2_close_reason(const struct app *a)
{
    const struct app_h2 *h = (const struct app_h2 *)a;
    return h->reason_set ? h->reason : SOTH_CLOSE_RELAY_ERROR;
}
