/*
 * WebSocket and SSE observation of a connection's streams (core/app_obs.h), for both HTTP
 * versions: the frame parsers, the turn aggregator and the event stream parser of proto/, and
 * permessage-deflate inflation (proto/ws_deflate.c), turned into the flow's events. The
 * parsers only read what the relay forwards; nothing here delays or changes a byte.
 */
#include <stdlib.h>
#include <string.h>

#include "app_int.h"
#include "app_payload.h"
#include "soth/proto/sse.h"
#include "soth/proto/ws.h"
#include "soth/proto/headers.h"
#include "soth/proto/ws_deflate.h"

#define OBS_KEEP        32         /* observers a thread keeps per kind for reuse */
#define OBS_INFLATE_MAX (8u << 20) /* a compressed message inflates to at most this (bytes) */
#define OBS_ALIGN(n)    (((n) + 15) & ~(size_t)15)

enum obs_kind { OBS_WS = 0, OBS_SSE, OBS_KIND_COUNT };

struct obs_ws {
    struct soth_ws *p[2];         /* frame parsers, by sender (enum soth_leg) */
    struct soth_ws_inflate *z[2]; /* permessage-deflate, by sender; kept with the block */
    bool deflate;                 /* permessage-deflate is in effect */
    bool failed[2];               /* that sender's parser stopped on a protocol error */
    bool inflate_logged[2];       /* a message of that sender could not be inflated */
    bool turn_open;               /* a turn is open (from the aggregator's callbacks) */
    uint64_t last_ns;             /* layer clock of the open turn's last message */
    uint64_t idle_ns;             /* events.ws_turn_idle_ms; 0: no idle flush */
    uint64_t wall_off;            /* wall clock - layer clock at the start (mod 2^64) */
    struct soth_ws_turns turns;   /* timestamps in the layer's clock */
};

struct app_obs {
    struct app_obs *next, **pprev; /* the connection's live list, or a free list (next) */
    struct app *a;
    size_t size; /* bytes of this block: a kept block is reused for the same size only */
    uint32_t sid;
    uint8_t kind; /* enum obs_kind */
    union {
        struct obs_ws ws;
        struct soth_sse *sse;
    } u;
    _Alignas(max_align_t) unsigned char mem[]; /* the parsers */
};

/* ---- free lists, one per kind and thread (a worker): nothing is allocated per stream once
 * they are warm. */

struct obs_pool {
    struct app_obs *head;
    uint32_t n;
};

static _Thread_local struct obs_pool obs_pools[OBS_KIND_COUNT];

static void block_free(struct app_obs *o)
{
    if (o->kind == OBS_WS) {
        soth_ws_inflate_free(o->u.ws.z[0]);
        soth_ws_inflate_free(o->u.ws.z[1]);
    }
    free(o);
}

static struct app_obs *obs_get(enum obs_kind kind, size_t size)
{
    struct obs_pool *p = &obs_pools[kind];
    struct app_obs *o = p->head;
    if (o != NULL) {
        p->head = o->next;
        p->n--;
        if (o->size == size)
            return o;
        block_free(o); /* made for another capture (the config changed) */
    }
    o = malloc(size);
    if (o == NULL)
        return NULL;
    memset(o, 0, offsetof(struct app_obs, mem));
    o->size = size;
    o->kind = (uint8_t)kind;
    return o;
}

static void obs_put(struct app_obs *o)
{
    struct obs_pool *p = &obs_pools[o->kind];
    if (p->n >= OBS_KEEP) {
        block_free(o);
        return;
    }
    o->next = p->head;
    p->head = o;
    p->n++;
}

void app_obs_thread_done(void)
{
    for (size_t k = 0; k < OBS_KIND_COUNT; k++) {
        struct obs_pool *p = &obs_pools[k];
        while (p->head != NULL) {
            struct app_obs *o = p->head;
            p->head = o->next;
            block_free(o);
        }
        p->n = 0;
    }
}

/* ---- the connection's live observers */

void app_obs_init(struct app_obs_set *s)
{
    s->live = NULL;
    s->n_live = 0;
}

static void obs_link(struct app *a, struct app_obs *o)
{
    o->a = a;
    o->next = a->obs.live;
    if (o->next != NULL)
        o->next->pprev = &o->next;
    o->pprev = &a->obs.live;
    a->obs.live = o;
    a->obs.n_live++;
}

static void obs_release(struct app *a, struct app_obs *o)
{
    *o->pprev = o->next;
    if (o->next != NULL)
        o->next->pprev = o->pprev;
    a->obs.n_live--;
    obs_put(o);
}

bool app_obs_is_ws(const struct app_obs *o)
{
    return o->kind == OBS_WS;
}

/* ---- WebSocket */

static enum soth_leg dir_of(enum soth_leg d)
{
    return soth_leg_of(d);
}

static void ws_payload(struct app_obs *o, enum soth_leg d, bool compressed, const char *p, size_t n)
{
    struct obs_ws *w = &o->u.ws;
    if (compressed && w->z[d] != NULL)
        soth_ws_inflate_feed(w->z[d], p, n);
}

static void ws_payload_client(void *ctx, bool compressed, const char *p, size_t n)
{
    ws_payload(ctx, SOTH_LEG_CLIENT, compressed, p, n);
}

static void ws_payload_server(void *ctx, bool compressed, const char *p, size_t n)
{
    ws_payload(ctx, SOTH_LEG_UPSTREAM, compressed, p, n);
}

/*
 * A compressed message as the application gets it (RFC 7692): inflated, len its inflated
 * length, data the first bytes of the inflated text. One that cannot be inflated (corrupt, or
 * its direction's window was lost) keeps what the wire carried, compressed.
 */
static void ws_inflated(struct app_obs *o, struct soth_ws_msg *m)
{
    struct obs_ws *w = &o->u.ws;
    struct soth_ws_inflate *z = w->z[m->dir];
    if (!m->compressed || z == NULL)
        return;
    struct soth_ws_inflated r;
    soth_ws_inflate_end(z, &r);
    if (r.status == SOTH_WSZ_OK || r.status == SOTH_WSZ_OVER) {
        m->len = r.len;
        m->data = r.data;
        m->truncated = r.status == SOTH_WSZ_OVER || r.data.len < r.len;
        m->compressed = false;
        return;
    }
    if (!w->inflate_logged[m->dir]) {
        w->inflate_logged[m->dir] = true;
        struct soth_ev_flow *ev = o->a->env.ev;
        SOTH_LOG(SOTH_LOG_DEBUG, (int)ev->worker, ev->flow_id,
                 "websocket %s: permessage-deflate message not inflated (%s)",
                 m->dir == SOTH_LEG_UPSTREAM ? "server" : "client",
                 r.status == SOTH_WSZ_LOST ? "window lost" : "corrupt");
    }
}

static void ws_on_message(void *ctx, const struct soth_ws_msg *msg)
{
    struct app_obs *o = ctx;
    struct app *a = o->a;
    struct obs_ws *w = &o->u.ws;
    struct soth_ws_msg m = *msg;
    if (w->deflate)
        ws_inflated(o, &m);
    uint64_t now = app_clock_ns(a);
    soth_ws_turns_message(&w->turns, &m, now);
    if (w->turn_open)
        w->last_ns = now;
    soth_ev_ws_message(a->env.ev, o->sid, dir_of(m.dir), m.opcode, m.len, m.data, m.truncated);
    if ((m.opcode == SOTH_WS_OP_TEXT || m.opcode == SOTH_WS_OP_BINARY) && !m.compressed)
        app_pl_framed(a, o->sid, m.dir == SOTH_LEG_UPSTREAM, SOTH_FRAMING_WS, m.data, m.truncated);
}

static void ws_on_turn_start(void *ctx, const struct soth_ws_turn *t)
{
    struct app_obs *o = ctx;
    o->u.ws.turn_open = true;
    soth_ev_ws_turn_started(o->a->env.ev, o->sid, t->id, dir_of(t->initiator));
}

static void ws_on_turn_end(void *ctx, const struct soth_ws_turn *t)
{
    struct app_obs *o = ctx;
    struct obs_ws *w = &o->u.ws;
    static const enum soth_flush_reason why[SOTH_WS_FLUSH_COUNT] = {
        [SOTH_WS_FLUSH_DIRECTION_CHANGE] = SOTH_FLUSH_DIRECTION_CHANGE,
        [SOTH_WS_FLUSH_CLOSE] = SOTH_FLUSH_CLOSE,
        [SOTH_WS_FLUSH_ERROR] = SOTH_FLUSH_ERROR,
        [SOTH_WS_FLUSH_IDLE] = SOTH_FLUSH_IDLE,
    };
    w->turn_open = false;
    struct soth_ws_turn_stats st = {
        .turn_id = t->id,
        .initiator = dir_of(t->initiator),
        .client_frames = t->frames[SOTH_LEG_CLIENT],
        .server_frames = t->frames[SOTH_LEG_UPSTREAM],
        .client_bytes = t->bytes[SOTH_LEG_CLIENT],
        .server_bytes = t->bytes[SOTH_LEG_UPSTREAM],
        .started_ns = t->started_ns + w->wall_off,
        .ended_ns = t->ended_ns + w->wall_off,
        .flush_reason = why[t->reason],
    };
    soth_ev_ws_turn_completed(o->a->env.ev, o->sid, &st);
}

static struct app_obs *ws_start(struct app *a, uint32_t sid, const struct soth_header *h, size_t n)
{
    struct soth_ws_limits lim = {
        .capture = a->conf.capture < APP_WS_CAPTURE_MAX ? a->conf.capture : APP_WS_CAPTURE_MAX};
    size_t wsz = OBS_ALIGN(soth_ws_size(&lim));
    struct app_obs *o = obs_get(OBS_WS, sizeof(struct app_obs) + 2 * wsz);
    if (o == NULL)
        return NULL;
    struct obs_ws *w = &o->u.ws;
    struct soth_ws_inflate *z[2] = {w->z[0], w->z[1]}; /* kept from an earlier use */
    memset(w, 0, sizeof(*w));
    /* RFC 7692 5: the extension is in effect when the accepting response names it. */
    struct soth_pmd pmd;
    soth_pmd_parse(soth_header_get(h, n, "sec-websocket-extensions"), &pmd);
    for (int d = 0; d < 2; d++) {
        if (z[d] != NULL && soth_ws_inflate_capture(z[d]) != lim.capture) {
            soth_ws_inflate_free(z[d]);
            z[d] = NULL;
        }
        if (pmd.on && z[d] == NULL)
            z[d] = soth_ws_inflate_new(lim.capture, OBS_INFLATE_MAX);
        if (pmd.on && z[d] != NULL)
            (void)soth_ws_inflate_reset(z[d], pmd.window_bits[d], !pmd.no_takeover[d]);
        w->z[d] = z[d];
    }
    w->deflate = pmd.on;
    struct soth_ws_cbs cbs = {.ctx = o, .on_message = ws_on_message};
    if (pmd.on)
        cbs.on_payload = ws_payload_client;
    w->p[SOTH_LEG_CLIENT] = soth_ws_init(o->mem, SOTH_LEG_CLIENT, pmd.on, &lim, &cbs);
    if (pmd.on)
        cbs.on_payload = ws_payload_server;
    w->p[SOTH_LEG_UPSTREAM] = soth_ws_init(o->mem + wsz, SOTH_LEG_UPSTREAM, pmd.on, &lim, &cbs);
    w->idle_ns = (uint64_t)a->conf.ws_turn_idle_ms * 1000000u;
    struct soth_ws_turn_cbs tcbs = {
        .ctx = o, .on_start = ws_on_turn_start, .on_end = ws_on_turn_end};
    soth_ws_turns_init(&w->turns, w->idle_ns, &tcbs);
    w->wall_off = soth_now_ns() - app_clock_ns(a);
    o->sid = sid;
    obs_link(a, o);
    return o;
}

static void ws_data(struct app_obs *o, unsigned from, const char *p, size_t n)
{
    struct obs_ws *w = &o->u.ws;
    unsigned d = soth_leg_of(from);
    /* A broken direction is only observed no more: the relay goes on untouched. */
    if (w->failed[d] || soth_ws_feed(w->p[d], p, n) >= 0)
        return;
    w->failed[d] = true;
    struct soth_ev_flow *ev = o->a->env.ev;
    SOTH_LOG(SOTH_LOG_DEBUG, (int)ev->worker, ev->flow_id, "websocket %s: %s",
             d == SOTH_LEG_UPSTREAM ? "server" : "client",
             soth_ws_error_name(soth_ws_error(w->p[d])));
    soth_ws_turns_end(&w->turns, SOTH_WS_FLUSH_ERROR, app_clock_ns(o->a));
}

/* ---- server-sent events */

static void sse_on_event(void *ctx, const struct soth_sse_event *e)
{
    struct app_obs *o = ctx;
    /* WHATWG: an empty event type buffer dispatches a "message" event. */
    struct soth_iov type = e->event.len > 0 ? e->event : SOTH_IOV_LIT("message");
    soth_ev_sse_event(o->a->env.ev, o->sid, type, e->id.len > 0 ? e->id : SOTH_IOV_NULL, e->retry,
                      e->data);
    app_pl_framed(o->a, o->sid, 1, SOTH_FRAMING_SSE, e->data, e->truncated);
}

/* An event stream whose body bytes are the events (no content coding). */
static bool is_event_stream(const struct soth_header *h, size_t n)
{
    if (!soth_media_type_is(soth_header_get(h, n, "content-type"), "text/event-stream"))
        return false;
    struct soth_iov ce = soth_header_get(h, n, "content-encoding");
    return ce.len == 0 || soth_iov_is_ci(ce, "identity");
}

static struct app_obs *sse_start(struct app *a, uint32_t sid)
{
    struct app_obs *o = obs_get(OBS_SSE, sizeof(struct app_obs) + soth_sse_size(NULL));
    if (o == NULL)
        return NULL;
    struct soth_sse_cbs cbs = {.ctx = o, .on_event = sse_on_event};
    o->u.sse = soth_sse_init(o->mem, NULL, &cbs);
    o->sid = sid;
    obs_link(a, o);
    return o;
}

/* ---- the interface */

struct app_obs *app_obs_start(struct app *a, uint32_t sid, bool websocket, bool has_body,
                              const struct soth_header *h, size_t n)
{
    if (websocket)
        return ws_start(a, sid, h, n);
    if (!has_body || !is_event_stream(h, n))
        return NULL;
    soth_ev_flow_set_protocol(a->env.ev, SOTH_PROTO_SSE);
    return sse_start(a, sid);
}

void app_obs_data(struct app *a, struct app_obs *o, unsigned from, const char *p, size_t n)
{
    (void)a;
    if (o->kind == OBS_WS)
        ws_data(o, from, p, n);
    else if (from == SOTH_LEG_UPSTREAM)
        soth_sse_feed(o->u.sse, p, n);
}

void app_obs_end(struct app *a, struct app_obs *o)
{
    if (o->kind == OBS_WS)
        soth_ws_turns_end(&o->u.ws.turns, SOTH_WS_FLUSH_CLOSE, app_clock_ns(a));
    else
        soth_sse_finish(o->u.sse); /* WHATWG: an unfinished event is discarded */
    obs_release(a, o);
}

/* The open turn's idle deadline in ms, rounded up so that the timer never runs early. */
static uint64_t ws_deadline_ms(const struct obs_ws *w)
{
    if (!w->turn_open || w->idle_ns == 0)
        return 0;
    uint64_t ms = (w->last_ns + w->idle_ns + 999999u) / 1000000u;
    return ms != 0 ? ms : 1;
}

uint64_t app_obs_deadline(const struct app *a)
{
    uint64_t best = 0;
    for (const struct app_obs *o = a->obs.live; o != NULL; o = o->next) {
        if (o->kind != OBS_WS)
            continue;
        uint64_t d = ws_deadline_ms(&o->u.ws);
        if (d != 0 && (best == 0 || d < best))
            best = d;
    }
    return best;
}

void app_obs_timer(struct app *a, uint64_t now_ms)
{
    for (struct app_obs *o = a->obs.live; o != NULL; o = o->next) {
        if (o->kind != OBS_WS)
            continue;
        uint64_t d = ws_deadline_ms(&o->u.ws);
        /* The turn's last message is idle_ns old: it ends with that message's time. */
        if (d != 0 && d <= now_ms)
            soth_ws_turns_tick(&o->u.ws.turns, now_ms * 1000000u);
    }
}

void app_obs_dispose(struct app *a)
{
    while (a->obs.live != NULL)
        obs_release(a, a->obs.live);
}
