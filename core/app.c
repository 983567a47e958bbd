/*
 * The HTTP layer of a flow (core/app.h): dispatch, and the HTTP/1.1 kind on top of the
 * llhttp exchange engine (proto/h1.c). The engine re-serialises heads and passes bodies
 * through; this file turns its callbacks into the flow's events, bounds body capture, answers
 * protocol errors (400/431/502) and keeps what a blocked direction cannot take yet.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "app_payload.h"
#include "soth/proto/h1.h"
#include "soth/proto/ws.h"
#include "soth/proto/sse.h"
#include "soth/proto/decode.h"

#define APP_STASH_MAX  (1u << 20) /* bytes kept for a blocked direction before giving up */
#define APP_MAX_FIELDS 130

struct stash {
    char *p;
    size_t len, cap;
};

/* Capture state of the message in progress in one direction. */
struct msg_cap {
    uint32_t id;
    uint64_t off;      /* body bytes seen */
    uint64_t captured; /* body bytes put into events */
};

struct app_h1 {
    struct app_hdr hdr;
    struct app_env env;
    struct soth_h1 *h;
    uint64_t cap; /* events.body_capture_bytes */
    struct msg_cap msg[2];
    struct stash st[2];
    bool eof_seen[2];
    bool resp_open;         /* a final response head went to the client, its body not complete */
    bool dead;              /* engine failed or finished */
    bool answered;          /* we sent our own error answer */
    bool close_client;      /* the last request asked to close */
    bool other_host;        /* regular-mode plain HTTP: a request for another upstream arrived */
    bool awaiting_head;     /* the client's next bytes start a request head */
    uint64_t head_since_ms; /* when the pending request head's first byte came, 0 = none */
    uint8_t err_dir;        /* side whose bytes broke the protocol */
    unsigned err_status;
    const char *err_code, *err_detail;
    enum soth_close_reason reason;
    uint16_t authority_len; /* regular-mode plain HTTP: the connection's upstream */
    char authority[256];
    struct app_payload *pl; /* payload decoding (core/app_payload.c), NULL until needed */
    struct app_stream *obs; /* WebSocket/SSE parsers (issue 9), NULL until one is detected */
    _Alignas(max_align_t) unsigned char engine[];
};

/* ---- WebSocket and SSE observation (issue 9)
 *
 * The parsers only read what the engine relays: WebSocket frames of both directions after a
 * 101 (seen in h1_out), and the de-chunked body of a text/event-stream response (h1_on_body).
 * Their state is allocated once per flow, when the protocol is first detected, and reused.
 * Design notes: docs/streaming.md.
 */

#define APP_WS_TURN_IDLE_NS (30ull * 1000000000ull) /* a turn silent this long ends (idle) */
/* Capture per message and direction, at most (the ring's records are at most 1 MiB). */
#define APP_WS_CAPTURE_MAX (256u << 10)

struct app_stream {
    struct app_h1 *a;
    uint32_t ws_id;  /* the exchange that switched to WebSocket, 0: none */
    uint32_t sse_id; /* the exchange whose response is an event stream, 0: none */
    bool ws_live;    /* the 101 went out: relayed bytes are frames */
    struct soth_ws_turns turns;
    struct soth_ws *ws[2]; /* by the side the frames come from */
    void *ws_mem;
    struct soth_sse *sse;
    void *sse_mem;
};

static struct app_stream *stream_get(struct app_h1 *a)
{
    if (a->obs == NULL) {
        a->obs = calloc(1, sizeof(*a->obs));
        if (a->obs != NULL)
            a->obs->a = a;
    }
    return a->obs;
}

static void stream_on_ws_message(void *ctx, const struct soth_ws_msg *m)
{
    struct app_stream *s = ctx;
    soth_ws_turns_message(&s->turns, m, soth_now_ns());
    soth_ev_ws_message(s->a->env.ev, s->ws_id, soth_leg_of(m->dir), m->opcode, m->len, m->data,
                       m->truncated);
    if ((m->opcode == SOTH_WS_OP_TEXT || m->opcode == SOTH_WS_OP_BINARY) && !m->compressed)
        app_pl_framed(&s->a->pl, &s->a->env, s->ws_id, m->dir == SOTH_LEG_UPSTREAM, SOTH_FRAMING_WS,
                      m->data, m->truncated);
}

static void stream_on_turn_start(void *ctx, const struct soth_ws_turn *t)
{
    struct app_stream *s = ctx;
    soth_ev_ws_turn_started(s->a->env.ev, s->ws_id, t->id,
                            t->initiator == SOTH_LEG_UPSTREAM ? SOTH_LEG_UPSTREAM
                                                              : SOTH_LEG_CLIENT);
}

static void stream_on_turn_end(void *ctx, const struct soth_ws_turn *t)
{
    struct app_stream *s = ctx;
    static const enum soth_flush_reason why[SOTH_WS_FLUSH_COUNT] = {
        [SOTH_WS_FLUSH_DIRECTION_CHANGE] = SOTH_FLUSH_DIRECTION_CHANGE,
        [SOTH_WS_FLUSH_CLOSE] = SOTH_FLUSH_CLOSE,
        [SOTH_WS_FLUSH_ERROR] = SOTH_FLUSH_ERROR,
        [SOTH_WS_FLUSH_IDLE] = SOTH_FLUSH_IDLE,
    };
    struct soth_ws_turn_stats st = {
        .turn_id = t->id,
        .initiator = soth_leg_of(t->initiator),
        .client_frames = t->frames[SOTH_LEG_CLIENT],
        .server_frames = t->frames[SOTH_LEG_UPSTREAM],
        .client_bytes = t->bytes[SOTH_LEG_CLIENT],
        .server_bytes = t->bytes[SOTH_LEG_UPSTREAM],
        .started_ns = t->started_ns,
        .ended_ns = t->ended_ns,
        .flush_reason = why[t->reason],
    };
    soth_ev_ws_turn_completed(s->a->env.ev, s->ws_id, &st);
}

static void stream_on_sse_event(void *ctx, const struct soth_sse_event *e)
{
    struct app_stream *s = ctx;
    /* WHATWG: an empty event type buffer dispatches a "message" event. */
    struct soth_iov type = e->event.len > 0 ? e->event : SOTH_IOV_LIT("message");
    soth_ev_sse_event(s->a->env.ev, s->sse_id, type, e->id.len > 0 ? e->id : SOTH_IOV_NULL,
                      e->retry, e->data);
    app_pl_framed(&s->a->pl, &s->a->env, s->sse_id, 1, SOTH_FRAMING_SSE, e->data, e->truncated);
}

static struct soth_iov header_value(const struct soth_h1_head *hd, const char *name)
{
    for (size_t i = 0; i < hd->n_headers; i++)
        if (soth_iov_is_ci(hd->headers[i].name, name))
            return hd->headers[i].value;
    return SOTH_IOV_NULL;
}

static bool iov_has_ci(struct soth_iov v, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= v.len; i++)
        if (soth_iov_eq_ci(soth_iov(v.base + i, n), needle, n))
            return true;
    return false;
}

/* A final response head was reported: a 101 to WebSocket or an event stream starts here. */
static void stream_on_response_head(struct app_h1 *a, uint32_t id, const struct soth_h1_head *hd)
{
    if (hd->status == 101 && hd->upgrade) {
        if (!soth_iov_is_ci(header_value(hd, "upgrade"), "websocket"))
            return;
        struct app_stream *s = stream_get(a);
        if (s == NULL || s->ws_mem != NULL)
            return; /* out of memory (observation only: the relay goes on) */
        struct soth_ws_limits lim = {
            .capture = (uint32_t)(a->cap < APP_WS_CAPTURE_MAX ? a->cap : APP_WS_CAPTURE_MAX)};
        size_t sz = (soth_ws_size(&lim) + 15) & ~(size_t)15;
        s->ws_mem = malloc(2 * sz);
        if (s->ws_mem == NULL)
            return;
        /* RFC 7692: the extension is in effect when the 101 accepts it. */
        bool deflate =
            iov_has_ci(header_value(hd, "sec-websocket-extensions"), "permessage-deflate");
        struct soth_ws_cbs cbs = {.ctx = s, .on_message = stream_on_ws_message};
        s->ws[0] = soth_ws_init(s->ws_mem, SOTH_LEG_CLIENT, deflate, &lim, &cbs);
        s->ws[1] = soth_ws_init((char *)s->ws_mem + sz, SOTH_LEG_UPSTREAM, deflate, &lim, &cbs);
        struct soth_ws_turn_cbs tcbs = {
            .ctx = s, .on_start = stream_on_turn_start, .on_end = stream_on_turn_end};
        soth_ws_turns_init(&s->turns, APP_WS_TURN_IDLE_NS, &tcbs);
        s->ws_id = id;
        return;
    }
    struct soth_iov ct = header_value(hd, "content-type");
    const char *es = "text/event-stream";
    size_t esn = strlen(es);
    if (hd->no_body || ct.len < esn || !soth_iov_eq_ci(soth_iov(ct.base, esn), es, esn))
        return;
    if (ct.len > esn && ct.base[esn] != ';' && ct.base[esn] != ' ' && ct.base[esn] != '\t')
        return;
    /* A compressed stream is not parsed here (the bytes on the wire are not the events). */
    struct soth_iov ce = header_value(hd, "content-encoding");
    if (ce.base != NULL && ce.len > 0 && !soth_iov_is_ci(ce, "identity"))
        return;
    struct app_stream *s = stream_get(a);
    if (s == NULL)
        return;
    if (s->sse_mem == NULL) {
        s->sse_mem = malloc(soth_sse_size(NULL));
        if (s->sse_mem == NULL)
            return;
    }
    struct soth_sse_cbs cbs = {.ctx = s, .on_event = stream_on_sse_event};
    s->sse = soth_sse_init(s->sse_mem, NULL, &cbs);
    s->sse_id = id;
    soth_ev_flow_set_protocol(a->env.ev, SOTH_PROTO_SSE);
}

/* Relayed bytes after the 101, from side `from`. */
static void stream_ws_relay(struct app_h1 *a, int from, const char *p, size_t n)
{
    struct app_stream *s = a->obs;
    if (soth_ws_feed(s->ws[from], p, n) < 0 && !s->turns.closed) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)a->env.ev->worker, a->env.ev->flow_id, "websocket %s: %s",
                 from ? "server" : "client", soth_ws_error_name(soth_ws_error(s->ws[from])));
        soth_ws_turns_end(&s->turns, SOTH_WS_FLUSH_ERROR, soth_now_ns());
    }
}

static void stream_on_body(struct app_h1 *a, uint32_t id, const char *p, size_t n)
{
    if (a->obs != NULL && a->obs->sse != NULL && a->obs->sse_id == id)
        soth_sse_feed(a->obs->sse, p, n);
}

/* The stream's message or exchange ended: flush what must not stay open. */
static void stream_end(struct app_h1 *a, uint32_t id)
{
    struct app_stream *s = a->obs;
    if (s == NULL)
        return;
    if (s->sse != NULL && s->sse_id == id) {
        soth_sse_finish(s->sse); /* WHATWG: an unfinished event is discarded */
        s->sse = NULL;
        s->sse_id = 0;
    }
    if (s->ws_mem != NULL && s->ws_id == id && s->ws_live) {
        soth_ws_turns_end(&s->turns, SOTH_WS_FLUSH_CLOSE, soth_now_ns());
        s->ws_live = false;
    }
}

static void stream_free(struct app_h1 *a)
{
    if (a->obs == NULL)
        return;
    free(a->obs->ws_mem);
    free(a->obs->sse_mem);
    free(a->obs);
    a->obs = NULL;
}

/* ---- engine callbacks */

static int h1_out(void *ctx, enum soth_leg to_side, const char *p, size_t n)
{
    struct app_h1 *a = ctx;
    if (a->obs != NULL && a->obs->ws_live)
        stream_ws_relay(a, !to_side, p, n);
    return a->env.send(a->env.ctx, (unsigned)to_side, p, n);
}

static struct soth_iov h1_version(const struct soth_h1_head *hd)
{
    return hd->http_minor == 0 ? SOTH_IOV_LIT("1.0") : SOTH_IOV_LIT("1.1");
}

/*
 * Regular-mode plain HTTP: the upstream gets origin-form, Host from the target, and no
 * Proxy-* fields (RFC 9112 3.2.2); the event reports exactly what is sent.
 */
static int h1_send_origin_form(struct app_h1 *a, uint32_t id, const struct soth_h1_head *hd)
{
    struct soth_header f[APP_MAX_FIELDS];
    size_t n = 0;
    bool host_done = false;
    struct soth_iov auth = hd->authority;
    if (a->authority_len == 0 && auth.len > 0 && auth.len < sizeof(a->authority)) {
        memcpy(a->authority, auth.base, auth.len);
        a->authority_len = (uint16_t)auth.len;
    } else if (!soth_iov_eq_ci(auth, a->authority, a->authority_len)) {
        /* One upstream per client connection: close it cleanly without an answer; clients
         * retry a request that got nothing on a reused connection on a fresh one (curl -x
         * does, RFC 9112 9.3.1), which then reaches the other upstream. */
        a->other_host = true;
        return SOTH_E_STATE;
    }
    for (size_t i = 0; i < hd->n_headers && n < APP_MAX_FIELDS - 1; i++) {
        const struct soth_header *h = &hd->headers[i];
        if (soth_iov_is_ci(h->name, "proxy-connection") ||
            soth_iov_is_ci(h->name, "proxy-authorization"))
            continue;
        f[n] = *h;
        if (soth_iov_is_ci(h->name, "host") && hd->scheme.len > 0) {
            if (host_done)
                continue;
            f[n].value = auth;
            host_done = true;
        }
        n++;
    }
    if (!host_done && hd->scheme.len > 0)
        f[n++] = (struct soth_header){.name = SOTH_IOV_LIT("Host"), .value = auth};
    struct soth_iov path = hd->scheme.len > 0 ? hd->path : hd->target;
    soth_ev_request_headers(a->env.ev, id, hd->method,
                            hd->scheme.len ? hd->scheme : SOTH_IOV_LIT("http"), auth, path,
                            h1_version(hd), f, n);

    char buf[8192];
    size_t used = 0;
#define APPEND(p_, n_)                                                                             \
    do {                                                                                           \
        size_t n__ = (n_);                                                                         \
        if (used + n__ > sizeof(buf)) {                                                            \
            int rc__ = a->env.send(a->env.ctx, SOTH_LEG_UPSTREAM, buf, used);                      \
            if (rc__ < 0)                                                                          \
                return rc__;                                                                       \
            used = 0;                                                                              \
            if (n__ > sizeof(buf)) {                                                               \
                rc__ = a->env.send(a->env.ctx, SOTH_LEG_UPSTREAM, (p_), n__);                      \
                if (rc__ < 0)                                                                      \
                    return rc__;                                                                   \
                break;                                                                             \
            }                                                                                      \
        }                                                                                          \
        memcpy(buf + used, (p_), n__);                                                             \
        used += n__;                                                                               \
    } while (0)
    APPEND(hd->method.base, hd->method.len);
    APPEND(" ", 1);
    APPEND(path.base, path.len);
    APPEND(" ", 1);
    APPEND(hd->version.base, hd->version.len);
    APPEND("\r\n", 2);
    for (size_t i = 0; i < n; i++) {
        APPEND(f[i].name.base, f[i].name.len);
        APPEND(": ", 2);
        APPEND(f[i].value.base, f[i].value.len);
        APPEND("\r\n", 2);
    }
    APPEND("\r\n", 2);
#undef APPEND
    int rc = a->env.send(a->env.ctx, SOTH_LEG_UPSTREAM, buf, used);
    return rc < 0 ? rc : SOTH_H1_HEAD_SENT;
}

static int h1_on_head(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_h1_head *hd)
{
    struct app_h1 *a = ctx;
    if (dir == SOTH_LEG_CLIENT) {
        a->awaiting_head = false;
        a->head_since_ms = 0;
        a->msg[0] = (struct msg_cap){.id = id};
        a->close_client = !hd->keep_alive;
        app_pl_h1_head(&a->pl, &a->env, dir, hd->headers, hd->n_headers, false);
        if (a->env.m != NULL)
            SOTH_METRIC_ADD(a->env.m->requests[SOTH_PROTO_HTTP1], 1);
        if (a->env.origin_form)
            return h1_send_origin_form(a, id, hd);
        struct soth_iov scheme = hd->scheme;
        if (scheme.len == 0 && hd->method.len != 7)
            scheme = a->env.client_tls ? SOTH_IOV_LIT("https") : SOTH_IOV_LIT("http");
        soth_ev_request_headers(a->env.ev, id, hd->method, scheme, hd->authority, hd->path,
                                h1_version(hd), hd->headers, hd->n_headers);
        return 0;
    }
    if (hd->interim)
        return 0; /* 1xx: forwarded, not an exchange's response */
    a->msg[1] = (struct msg_cap){.id = id};
    a->resp_open = !hd->no_body;
    app_pl_h1_head(&a->pl, &a->env, dir, hd->headers, hd->n_headers, hd->no_body);
    soth_ev_response_headers(a->env.ev, id, hd->status, h1_version(hd), hd->headers, hd->n_headers);
    stream_on_response_head(a, id, hd);
    return 0;
}

static void h1_on_body(void *ctx, enum soth_leg dir, uint32_t id, const char *p, size_t n)
{
    struct app_h1 *a = ctx;
    struct msg_cap *m = &a->msg[dir];
    uint64_t room = a->cap > m->captured ? a->cap - m->captured : 0;
    size_t take = n < room ? n : (size_t)room;
    soth_ev_body_chunk(a->env.ev, soth_leg_of(dir), id, m->off, n, soth_iov(p, take), take < n);
    m->off += n;
    m->captured += take;
    app_pl_h1_body(a->pl, dir, p, n);
    if (dir == SOTH_LEG_UPSTREAM)
        stream_on_body(a, id, p, n);
}

static void h1_on_trailers(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_header *t,
                           size_t n)
{
    struct app_h1 *a = ctx;
    soth_ev_trailers(a->env.ev, soth_leg_of(dir), id, t, n);
}

static void h1_on_complete(void *ctx, enum soth_leg dir, uint32_t id)
{
    struct app_h1 *a = ctx;
    app_pl_h1_complete(a->pl, &a->env, dir, id);
    if (dir == SOTH_LEG_UPSTREAM) {
        a->resp_open = false;
        stream_end(a, id);
    } else {
        a->awaiting_head = true;
    }
}

static void h1_on_upgrade(void *ctx, uint32_t id, struct soth_iov protocol)
{
    struct app_h1 *a = ctx;
    if (soth_iov_is_ci(protocol, "websocket"))
        soth_ev_flow_set_protocol(a->env.ev, SOTH_PROTO_WEBSOCKET);
    if (a->obs != NULL && a->obs->ws_mem != NULL && a->obs->ws_id == id)
        a->obs->ws_live = true;
    a->resp_open = false;
}

static void h1_on_exchange(void *ctx, const struct soth_h1_exchange *x)
{
    struct app_h1 *a = ctx;
    stream_end(a, x->stream_id);
    soth_ev_exchange_completed(a->env.ev, x->stream_id, (enum soth_outcome)x->outcome,
                               x->request_bytes, x->response_bytes);
}

static void h1_on_error(void *ctx, enum soth_leg dir, uint32_t id, unsigned status,
                        const char *code, const char *detail)
{
    struct app_h1 *a = ctx;
    (void)id;
    a->err_dir = (uint8_t)dir;
    a->err_status = status;
    a->err_code = code;
    a->err_detail = detail;
}

/* ---- the layer */

static const char *status_phrase(unsigned st)
{
    switch (st) {
    case 400:
        return "Bad Request";
    case 431:
        return "Request Header Fields Too Large";
    default:
        return "Bad Gateway";
    }
}

/* The engine failed (rc): answer the client when nothing of a response is on its way, end
 * the exchanges in flight, and report the error so the worker closes after flushing. */
static int h1_fail(struct app_h1 *a, int rc)
{
    if (a->dead)
        return rc;
    a->dead = true;
    bool client_fault = a->err_status != 0 && a->err_dir == SOTH_LEG_CLIENT;
    if (a->err_status != 0 && !a->resp_open && !a->answered) {
        char body[256], head[256];
        int bn;
        if (client_fault)
            bn = snprintf(body, sizeof(body), "soth-mitm: bad request: %s (%s)\n",
                          a->err_detail ? a->err_detail : "malformed",
                          a->err_code ? a->err_code : "malformed");
        else
            bn =
                snprintf(body, sizeof(body), "soth-mitm: bad response from the upstream: %s (%s)\n",
                         a->err_detail ? a->err_detail : "malformed",
                         a->err_code ? a->err_code : "malformed");
        int hn = snprintf(head, sizeof(head),
                          "HTTP/1.1 %u %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n",
                          a->err_status, status_phrase(a->err_status), bn);
        a->answered = true;
        if (a->env.send(a->env.ctx, SOTH_LEG_CLIENT, head, (size_t)hn) == 0)
            a->env.send(a->env.ctx, SOTH_LEG_CLIENT, body, (size_t)bn);
    }
    soth_h1_abort(a->h, client_fault    ? SOTH_H1_CLIENT_ABORTED
                        : a->err_status ? SOTH_H1_UPSTREAM_ABORTED
                                        : SOTH_H1_RESET);
    if (a->other_host) {
        a->reason = SOTH_CLOSE_RELAY_EOF; /* this connection's upstream relay is over */
        return APP_DONE;
    }
    if (a->err_status != 0)
        a->reason = client_fault ? SOTH_CLOSE_PARSE_FAILED : SOTH_CLOSE_RELAY_ERROR;
    else
        a->reason = SOTH_CLOSE_RELAY_ERROR;
    return a->answered ? APP_DONE : rc;
}

static int stash_put(struct stash *s, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (s->len + n > APP_STASH_MAX)
        return SOTH_E_TOO_LARGE;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 16384;
        while (cap < s->len + n)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (np == NULL)
            return SOTH_E_NOMEM;
        s->p = np;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    return 0;
}

static int h1_status(struct app_h1 *a)
{
    if (a->dead)
        return APP_DONE;
    if (soth_h1_is_done(a->h)) {
        a->dead = true;
        return APP_DONE;
    }
    return APP_AGAIN;
}

/* Feed bytes of `side`; keeps what the engine does not take. */
static int h1_feed(struct app_h1 *a, unsigned side, const char *p, size_t n)
{
    ssize_t rc = soth_h1_feed(a->h, (int)side, p, n);
    if (rc < 0)
        return h1_fail(a, (int)rc);
    if ((size_t)rc < n) {
        int e = stash_put(&a->st[side], p + rc, n - (size_t)rc);
        if (e < 0)
            return h1_fail(a, e);
    }
    return 0;
}

/* Retry what `side` had stashed (the other direction may have unblocked it). */
static int h1_retry(struct app_h1 *a, unsigned side)
{
    struct stash *s = &a->st[side];
    while (s->len > 0 && !a->dead) {
        ssize_t rc = soth_h1_feed(a->h, (int)side, s->p, s->len);
        if (rc < 0)
            return h1_fail(a, (int)rc);
        if (rc == 0)
            break;
        memmove(s->p, s->p + rc, s->len - (size_t)rc);
        s->len -= (size_t)rc;
    }
    return 0;
}

static int h1_input(struct app_h1 *a, unsigned side, const char *p, size_t n)
{
    if (a->dead)
        return APP_DONE;
    if (side == SOTH_LEG_CLIENT && a->awaiting_head && a->head_since_ms == 0 && n > 0 &&
        !soth_h1_is_upgraded(a->h))
        a->head_since_ms = soth_mono_ns() / 1000000; /* cleared when the head completes */
    int rc;
    if (a->st[side].len > 0) {
        rc = stash_put(&a->st[side], p, n);
        if (rc < 0)
            return h1_fail(a, rc);
        rc = h1_retry(a, side);
    } else {
        rc = h1_feed(a, side, p, n);
    }
    if (rc < 0 || rc == APP_DONE)
        return rc;
    /* This side's bytes (a response completing, a request arriving) may unblock the other. */
    if (!a->dead && a->st[side ^ 1].len > 0) {
        rc = h1_retry(a, side ^ 1);
        if (rc < 0 || rc == APP_DONE)
            return rc;
    }
    if (soth_h1_is_done(a->h) && !a->dead) {
        a->dead = true;
        a->reason = a->eof_seen[SOTH_LEG_CLIENT] || a->close_client ? SOTH_CLOSE_CLIENT_EOF
                                                                    : SOTH_CLOSE_RELAY_EOF;
        return APP_DONE;
    }
    return h1_status(a);
}

static int h1_eof(struct app_h1 *a, unsigned side, bool reset)
{
    if (a->dead)
        return APP_DONE;
    a->eof_seen[side] = true;
    if (reset) {
        /* The transport is gone. A client that reset went away: its EOF ends what it can
         * (an upgraded relay whose upstream closed already is complete), the rest is
         * client_aborted. An upstream that reset aborted its exchanges. */
        if (side == SOTH_LEG_CLIENT && a->st[side].len == 0)
            soth_h1_eof(a->h, (int)side);
        soth_h1_abort(a->h,
                      side == SOTH_LEG_CLIENT ? SOTH_H1_CLIENT_ABORTED : SOTH_H1_UPSTREAM_ABORTED);
        a->dead = true;
        a->reason = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_ERROR;
        return APP_DONE;
    }
    if (a->st[side].len > 0) {
        /* The peer finished while its bytes wait behind a blocked exchange: keep them until
         * the engine can take them; the EOF is handled then (bounded by the idle timer). */
        soth_h1_abort(a->h,
                      side == SOTH_LEG_CLIENT ? SOTH_H1_CLIENT_ABORTED : SOTH_H1_UPSTREAM_ABORTED);
        a->dead = true;
        a->reason = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF;
        return APP_DONE;
    }
    bool upgraded = soth_h1_is_upgraded(a->h);
    int rc = soth_h1_eof(a->h, (int)side);
    if (rc == SOTH_H1_DONE || rc < 0 || soth_h1_is_done(a->h)) {
        a->dead = true;
        a->reason = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF;
        if (upgraded && a->eof_seen[side ^ 1])
            a->reason = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_RELAY_EOF : SOTH_CLOSE_CLIENT_EOF;
        return APP_DONE;
    }
    return upgraded ? APP_HALF_CLOSE : APP_AGAIN;
}

/* The request head the client is sending took too long: 408 when nothing of a response is
 * on its way (then the exchanges in flight end as timed out). */
static int h1_head_timeout(struct app_h1 *a)
{
    if (a->dead)
        return APP_DONE;
    if (!a->resp_open && soth_h1_in_flight(a->h) == 0) {
        static const char body[] = "soth-mitm: request head not received in time\n";
        char head[160];
        int hn = snprintf(head, sizeof(head),
                          "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          sizeof(body) - 1);
        if (a->env.send(a->env.ctx, SOTH_LEG_CLIENT, head, (size_t)hn) == 0)
            a->env.send(a->env.ctx, SOTH_LEG_CLIENT, body, sizeof(body) - 1);
        a->answered = true;
    }
    soth_h1_abort(a->h, SOTH_H1_TIMEOUT);
    a->dead = true;
    a->reason = SOTH_CLOSE_IDLE_TIMEOUT;
    return APP_DONE;
}

/*
 * Section buffers (a head or trailer section being re-serialised, ~68 KiB with the default
 * limits) are lent to the engines of a thread from its own free list while a section is built,
 * so an idle connection holds none and no request mallocs once the list is warm. Kept: as many
 * as were ever in use at once, up to 64.
 */
static _Thread_local struct soth_buf_pool h1_sections = {.keep = 64};

static void *h1_sec_get(void *ctx)
{
    (void)ctx;
    return soth_buf_pool_get(&h1_sections, soth_h1_section_size(NULL));
}

static void h1_sec_put(void *ctx, void *m)
{
    (void)ctx;
    soth_buf_pool_put(&h1_sections, m);
}

void app_thread_done(void)
{
    soth_buf_pool_drain(&h1_sections);
}

static struct app *h1_new(const struct app_env *env)
{
    size_t esz = soth_h1_core_size(NULL);
    struct app_h1 *a = calloc(1, sizeof(*a) + esz);
    if (a == NULL)
        return NULL;
    a->hdr.kind = APP_H1;
    a->env = *env;
    a->cap = env->cfg != NULL ? env->cfg->events.body_capture_bytes : 0;
    a->reason = SOTH_CLOSE_RELAY_EOF;
    a->awaiting_head = true;
    struct soth_h1_cbs cbs = {
        .ctx = a,
        .out = h1_out,
        .on_head = h1_on_head,
        .on_body = h1_on_body,
        .on_trailers = h1_on_trailers,
        .on_complete = h1_on_complete,
        .on_upgrade = h1_on_upgrade,
        .on_exchange = h1_on_exchange,
        .on_error = h1_on_error,
        .sec_get = h1_sec_get,
        .sec_put = h1_sec_put,
    };
    a->h = soth_h1_init(a->engine, NULL, &cbs);
    soth_ev_flow_set_protocol(env->ev, SOTH_PROTO_HTTP1);
    return (struct app *)a;
}

static void h1_free(struct app_h1 *a)
{
    soth_h1_dispose(a->h);
    app_pl_free(a->pl);
    stream_free(a);
    free(a->st[0].p);
    free(a->st[1].p);
    free(a);
}

/* ---- dispatch */

#define KIND(a) (((const struct app_hdr *)(const void *)(a))->kind)
#define H1(a)   ((struct app_h1 *)(void *)(a))

struct app *app_new(enum app_kind kind, const struct app_env *env)
{
    return kind == APP_H2 ? app_h2_new(env) : h1_new(env);
}

void app_free(struct app *a)
{
    if (a == NULL)
        return;
    if (KIND(a) == APP_H2)
        app_h2_free(a);
    else
        h1_free(H1(a));
}

int app_input(struct app *a, unsigned side, const char *p, size_t n)
{
    return KIND(a) == APP_H2 ? app_h2_input(a, side, p, n) : h1_input(H1(a), side, p, n);
}

int app_eof(struct app *a, unsigned side, bool reset)
{
    return KIND(a) == APP_H2 ? app_h2_eof(a, side, reset) : h1_eof(H1(a), side, reset);
}

void app_abort(struct app *a, enum soth_outcome outcome)
{
    if (KIND(a) == APP_H2) {
        app_h2_abort(a, outcome);
        return;
    }
    struct app_h1 *h = H1(a);
    soth_h1_abort(h->h, (enum soth_h1_outcome)outcome);
    h->dead = true;
}

int app_hold(struct app *a, unsigned side, bool hold)
{
    return KIND(a) == APP_H2 ? app_h2_hold(a, side, hold) : APP_AGAIN;
}

uint64_t app_head_deadline(const struct app *a, uint32_t request_header_ms)
{
    if (KIND(a) != APP_H1)
        return 0;
    const struct app_h1 *h = (const struct app_h1 *)(const void *)a;
    return h->dead || h->head_since_ms == 0 ? 0 : h->head_since_ms + request_header_ms;
}

int app_head_timeout(struct app *a)
{
    return KIND(a) == APP_H1 ? h1_head_timeout(H1(a)) : APP_AGAIN;
}

bool app_is_h2(const struct app *a)
{
    return KIND(a) == APP_H2;
}

bool app_read_paused(const struct app *a, unsigned side)
{
    return KIND(a) == APP_H1 && ((const struct app_h1 *)(const void *)a)->st[side].len > 0;
}

bool app_want_write(const struct app *a, unsigned side)
{
    return KIND(a) == APP_H2 ? app_h2_want_write(a, side) : false;
}

int app_shutdown(struct app *a)
{
    if (KIND(a) == APP_H2)
        return app_h2_shutdown(a);
    struct app_h1 *h = H1(a);
    if (soth_h1_in_flight(h->h) == 0) {
        soth_h1_abort(h->h, SOTH_H1_COMPLETE);
        h->dead = true;
        h->reason = SOTH_CLOSE_SHUTDOWN;
        return APP_DONE;
    }
    return APP_AGAIN;
}

enum soth_close_reason app_close_reason(const struct app *a)
{
    return KIND(a) == APP_H2 ? app_h2_close_reason(a)
                             : ((const struct app_h1 *)(const void *)a)->reason;
}
