/*
 * The HTTP/1.1 version of a flow's HTTP layer (core/app_int.h), on top of the llhttp exchange
 * engine (proto/h1.c). The engine re-serialises heads and passes bodies through; this file
 * turns its callbacks into the flow's events, bounds body capture, answers protocol errors
 * (400/431/502), a late request head (408), a late response head (504) and an upstream gone
 * before its response head (502), keeps what a blocked direction cannot take yet,
 * and hands a WebSocket's relayed bytes or an event stream's body to the stream's observer
 * (core/app_obs.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app_int.h"
#include "app_payload.h"
#include "soth/proto/connect.h"
#include "soth/proto/h1.h"
#include "soth/proto/headers.h"

#define APP_STASH_MAX  (1u << 20) /* bytes kept for a blocked direction before giving up */
#define APP_MAX_FIELDS 130
/* An origin-form head: the longest head the engine accepts (65536) plus the Host it writes. */
#define SOTH_H1_ORIGIN_HEAD_MAX                                                                    \
    (65536 + 512 + 2048)   /* + an upstream proxy's target and credentials */
#define APP_ALT_SVC_MAX 16 /* removed Alt-Svc entries a response_headers event lists */

/* Capture state of the message in progress in one direction. */
struct msg_cap {
    uint32_t id;
    uint64_t off;      /* body bytes seen */
    uint64_t captured; /* body bytes put into events */
};

struct app_h1 {
    struct app base;
    struct soth_h1 *h;
    struct msg_cap msg[2];
    struct soth_gbuf st[2]; /* bytes of a side the engine cannot take yet (APP_STASH_MAX) */
    bool eof_seen[2];
    bool resp_open;         /* a final response head went to the client, its body not complete */
    bool dead;              /* engine failed or finished */
    bool answered;          /* we sent our own error answer */
    bool close_client;      /* the last request asked to close */
    bool awaiting_head;     /* the client's next bytes start a request head */
    bool ws_live;           /* obs is a WebSocket and the 101 went out: relayed bytes are frames */
    bool auth_private;      /* a 401/407 offered NTLM or Negotiate: the connection is bound */
    uint64_t head_since_ms; /* when the pending request head's first byte came, 0 = none */
    bool resp_head_out;     /* the final head of the response in progress went to the client */
    uint32_t req_done_id;   /* last exchange whose request is complete */
    uint32_t resp_head_id;  /* last exchange whose final response head came */
    uint64_t resp_wait_ms;  /* since when a complete request awaits its response head, 0 = none */
    uint8_t err_dir;        /* side whose bytes broke the protocol */
    unsigned err_status;
    const char *err_code, *err_detail;
    enum soth_close_reason reason;
    uint32_t refused_id;      /* a request refused (docs/http1.md), answered once the exchanges
                                 before it are reported; 0 = none */
    unsigned refused_status;  /* its answer: 421 (another authority), 501 (CONNECT) or 429 (over
                                 budget, docs/soth.md "Budgets") */
    uint32_t refused_retry_s; /* 429: Retry-After */
    uint16_t authority_len;   /* regular-mode plain HTTP: the connection's upstream */
    uint16_t authority_port;  /* the default port of its scheme */
    char authority[256];
    struct app_obs *obs; /* the observed stream (WebSocket or event stream), or NULL */
    uint32_t obs_id;     /* its exchange */
    _Alignas(max_align_t) unsigned char engine[];
};

static struct app_h1 *h1_of(struct app *a)
{
    return (struct app_h1 *)a;
}

static const struct app_h1 *h1_of_const(const struct app *a)
{
    return (const struct app_h1 *)a;
}

/* ---- the observed stream: at most one at a time (responses come one after the other, and a
 * WebSocket ends HTTP on the connection) */

/* A final response head was reported: a 101 to WebSocket or an event stream starts here. */
static void obs_on_response_head(struct app_h1 *a, uint32_t id, const struct soth_h1_head *hd)
{
    bool ws = hd->status == 101 && hd->upgrade &&
              soth_list_has(soth_header_get(hd->headers, hd->n_headers, "upgrade"), "websocket");
    if (a->obs != NULL) { /* an earlier stream whose end was not reported: end it first */
        app_obs_end(&a->base, a->obs);
        a->obs = NULL;
    }
    a->obs = app_obs_start(&a->base, id, ws, !hd->no_body, hd->headers, hd->n_headers);
    a->obs_id = id;
    a->ws_live = false;
}

/* The stream's response or exchange ended: flush what must not stay open. */
static void obs_end(struct app_h1 *a, uint32_t id)
{
    if (a->obs == NULL || a->obs_id != id)
        return;
    app_obs_end(&a->base, a->obs);
    a->obs = NULL;
    a->ws_live = false;
}

/* ---- engine callbacks */

static int h1_out(void *ctx, enum soth_leg to_side, const char *p, size_t n)
{
    struct app_h1 *a = ctx;
    if (a->ws_live)
        app_obs_data(&a->base, a->obs,
                     to_side == SOTH_LEG_CLIENT ? SOTH_LEG_UPSTREAM : SOTH_LEG_CLIENT, p, n);
    return a->base.env.send(a->base.env.ctx, (unsigned)to_side, p, n);
}

static struct soth_iov h1_version(const struct soth_h1_head *hd)
{
    return hd->http_minor == 0 ? SOTH_IOV_LIT("1.0") : SOTH_IOV_LIT("1.1");
}

/* The port a target's scheme implies (RFC 9110 4.2): 443 for https, else 80. */
static uint16_t scheme_port(struct soth_iov scheme)
{
    return soth_iov_is_ci(scheme, "https") ? 443 : 80;
}

/* Does this request name the connection's upstream? Host case-insensitively, port with the
 * scheme's default filled in ("h" and "h:80" are one authority over http). */
static bool same_authority(const struct app_h1 *a, const struct soth_h1_head *hd)
{
    struct soth_authority mine, theirs;
    if (soth_authority_parse(soth_iov(a->authority, a->authority_len), false, a->authority_port,
                             &mine, NULL, NULL) < 0 ||
        soth_authority_parse(hd->authority, false, scheme_port(hd->scheme), &theirs, NULL, NULL) <
            0)
        return soth_iov_eq_ci(hd->authority, a->authority, a->authority_len);
    return mine.port == theirs.port && soth_iov_eq_ci(theirs.host, mine.host.base, mine.host.len);
}

/* The heads this layer writes itself (origin-form requests, Alt-Svc-stripped responses): one
 * buffer and one field array per thread, shared, since each head is sent (copied into the leg)
 * before the next one is built. No malloc per head. */
static _Thread_local char h1_head_buf[SOTH_H1_ORIGIN_HEAD_MAX];
static _Thread_local struct soth_header h1_out_fields[APP_MAX_FIELDS];

/*
 * Regular-mode plain HTTP: the upstream gets origin-form, Host from the target, and no
 * Proxy-* fields (RFC 9112 3.2.2); the event reports exactly what is sent.
 */
static int h1_send_origin_form(struct app_h1 *a, uint32_t id, const struct soth_h1_head *hd)
{
    struct soth_iov auth = hd->authority;
    if (a->authority_len == 0 && auth.len > 0 && auth.len < sizeof(a->authority)) {
        memcpy(a->authority, auth.base, auth.len);
        a->authority_len = (uint16_t)auth.len;
        a->authority_port = scheme_port(hd->scheme);
    }
    /* One serializer for both plain paths (proto/h1_write.c; docs/http1.md "In the proxy"):
     * Host from the target, Proxy-* fields dropped. One buffer per thread: no malloc per
     * request, and the head is sent (copied into the leg) before the next one is built. */
    char *buf = h1_head_buf;
    struct soth_header *f = h1_out_fields;
    if (hd->n_headers + 1 > APP_MAX_FIELDS)
        return SOTH_E_TOO_LARGE;
    struct soth_h1_origin_req req = {
        .method = hd->method,
        .path = hd->scheme.len > 0 ? hd->path : hd->target,
        .version = hd->version,
        .headers = hd->headers,
        .n_headers = hd->n_headers,
        .scheme = hd->scheme.len > 0 ? hd->scheme : SOTH_IOV_LIT("http"),
        .absolute = a->base.env.upstream_proxy,
        .proxy_auth = a->base.env.proxy_auth,
    };
    /* One authority parser for the proxy head and the requests after it (proto/connect.c);
     * port 0 tells the serializer to use the scheme's default. */
    struct soth_authority au;
    if (soth_authority_parse(auth, false, 0, &au, NULL, NULL) < 0)
        return SOTH_E_MALFORMED;
    req.host = au.host;
    req.host_is_ipv6 = au.host_is_ipv6;
    req.port = au.port;
    size_t n = 0;
    ssize_t len = soth_h1_write_origin_form(&req, buf, sizeof(h1_head_buf), f, &n);
    if (len < 0)
        return (int)len;
    soth_ev_request_headers(a->base.env.ev, id, hd->method, req.scheme, auth,
                            req.path.len ? req.path : SOTH_IOV_LIT("/"), h1_version(hd), f, n);
    int rc = a->base.env.send(a->base.env.ctx, SOTH_LEG_UPSTREAM, buf, (size_t)len);
    return rc < 0 ? rc : SOTH_H1_HEAD_SENT;
}

/*
 * http3_passthrough false (docs/http3.md, "Forcing clients back to TCP"): a response head whose
 * Alt-Svc names HTTP/3 goes to the client rewritten, each Alt-Svc value without its h3 entries
 * and dropped when none is left (proto/headers.c, soth_alt_svc_strip). Returns 0 when there is
 * nothing to remove (the engine forwards the head as is), SOTH_H1_HEAD_SENT once the rewritten
 * head was sent, or a negative error. removed[0 .. max) gets the removed entries (iovs into
 * hd) and *n_removed their count (at most max). One set of buffers per thread, as for
 * origin-form heads: the head is sent (copied into the leg) before the next one is built.
 */
static int h1_alt_svc_strip(struct app_h1 *a, const struct soth_h1_head *hd,
                            struct soth_iov *removed, size_t max, size_t *n_removed)
{
    static _Thread_local char vals[SOTH_H1_ORIGIN_HEAD_MAX];
    char *buf = h1_head_buf;
    struct soth_header *f = h1_out_fields;
    size_t nf = 0, vlen = 0, nrem = 0;
    *n_removed = 0;
    if (!a->base.conf.strip_h3_alt_svc ||
        soth_header_get(hd->headers, hd->n_headers, "alt-svc").base == NULL)
        return 0;
    if (hd->n_headers > APP_MAX_FIELDS)
        return SOTH_E_TOO_LARGE;
    for (size_t i = 0; i < hd->n_headers; i++) {
        const struct soth_header *h = &hd->headers[i];
        size_t n = 0, got = nrem < max ? nrem : max;
        ssize_t len = 0;
        if (soth_iov_is_ci(h->name, "alt-svc"))
            len = soth_alt_svc_strip(h->value, vals + vlen, sizeof(vals) - vlen, removed + got,
                                     max - got, &n);
        if (len < 0)
            return (int)len;
        if (n == 0) {
            f[nf++] = *h;
            continue;
        }
        nrem += n;
        if (len > 0)
            f[nf++] = (struct soth_header){h->name, soth_iov(vals + vlen, (size_t)len)};
        vlen += (size_t)len;
    }
    if (nrem == 0)
        return 0;
    ssize_t len = soth_h1_write_response_head(hd->version, hd->status, hd->reason, f, nf, buf,
                                              sizeof(h1_head_buf));
    if (len < 0)
        return (int)len;
    *n_removed = nrem < max ? nrem : max;
    int rc = a->base.env.send(a->base.env.ctx, SOTH_LEG_CLIENT, buf, (size_t)len);
    return rc < 0 ? rc : SOTH_H1_HEAD_SENT;
}

static bool h1_is_connect(const struct soth_h1_head *hd)
{
    return hd->method.len == 7 && memcmp(hd->method.base, "CONNECT", 7) == 0;
}

/* The request head's event as received (scheme by the client leg when the target has none;
 * none for CONNECT, whose target is an authority). */
static void h1_request_event(struct app_h1 *a, uint32_t id, const struct soth_h1_head *hd)
{
    struct soth_iov scheme = hd->scheme;
    if (scheme.len == 0 && !h1_is_connect(hd))
        scheme = a->base.env.client_tls ? SOTH_IOV_LIT("https") : SOTH_IOV_LIT("http");
    const struct soth_header *fields = hd->headers;
    size_t n = hd->n_headers;
    if (a->base.env.origin_form && n <= APP_MAX_FIELDS) {
        /* A proxy request never forwarded (refused, 429): its Proxy-* fields, credentials
         * among them, stay out of the event as they stay out of what the upstream gets. */
        struct soth_header *f = h1_out_fields;
        n = 0;
        for (size_t i = 0; i < hd->n_headers; i++)
            if (!soth_iov_is_ci(hd->headers[i].name, "proxy-authorization") &&
                !soth_iov_is_ci(hd->headers[i].name, "proxy-connection"))
                f[n++] = hd->headers[i];
        fields = f;
    }
    soth_ev_request_headers(a->base.env.ev, id, hd->method, scheme, hd->authority, hd->path,
                            h1_version(hd), fields, n);
}

/*
 * Requests the proxy does not forward (docs/http1.md "Requests the proxy refuses"): a CONNECT
 * inside the connection (501: it would turn the flow into a blind relay), and on regular-mode
 * plain HTTP a request for another authority than the connection's upstream (421, RFC 9110
 * 15.5.20: the client may retry it on a new connection). The request is reported, the
 * exchanges before it finish, then the answer goes out (h1_refused_end) and the connection
 * closes.
 */
static unsigned h1_refusal(const struct app_h1 *a, const struct soth_h1_head *hd)
{
    if (h1_is_connect(hd))
        return 501;
    if (a->base.env.origin_form && a->authority_len > 0 && !same_authority(a, hd))
        return 421;
    return 0;
}

/*
 * Over budget (docs/soth.md "Budgets") with nothing else in flight: 429 with Retry-After at
 * once, the request's body read and dropped by the engine, and the connection carries on
 * (closed only when the request asked for it). Reported as its own exchange.
 */
static int h1_answer_local_429(struct app_h1 *a, uint32_t id, const struct soth_h1_head *hd)
{
    static const char body[] = "soth-mitm: budget exhausted\n";
    char out[320], extra[40], len[12], ra[12];
    int ln = snprintf(len, sizeof(len), "%zu", sizeof(body) - 1);
    int rn = snprintf(ra, sizeof(ra), "%u", a->refused_retry_s);
    snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", a->refused_retry_s);
    bool close = !hd->keep_alive;
    ssize_t n = soth_h1_write_answer_hdr(out, sizeof(out), 429, "Too Many Requests", extra, close,
                                         body, sizeof(body) - 1);
    if (n < 0)
        return (int)n;
    h1_request_event(a, id, hd);
    const struct soth_header f[] = {
        {SOTH_IOV_LIT("Content-Type"), SOTH_IOV_LIT("text/plain")},
        {SOTH_IOV_LIT("Content-Length"), soth_iov(len, (size_t)ln)},
        {SOTH_IOV_LIT("Retry-After"), soth_iov(ra, (size_t)rn)},
        {SOTH_IOV_LIT("Connection"), SOTH_IOV_LIT("close")},
    };
    soth_ev_response_headers(a->base.env.ev, id, 429, SOTH_IOV_LIT("1.1"), f, close ? 4 : 3, NULL,
                             0);
    int rc = a->base.env.send(a->base.env.ctx, SOTH_LEG_CLIENT, out, (size_t)n);
    if (rc < 0)
        return rc;
    size_t bl = sizeof(body) - 1;
    size_t take = a->base.conf.capture < bl ? (size_t)a->base.conf.capture : bl;
    soth_ev_body_chunk(a->base.env.ev, SOTH_LEG_UPSTREAM, id, 0, bl, soth_iov(body, take),
                       take < bl);
    soth_ev_exchange_completed(a->base.env.ev, id, SOTH_OUTCOME_COMPLETE, 0, bl);
    a->awaiting_head = true; /* the next request's head deadline starts now */
    return SOTH_H1_LOCAL;
}

/* A challenge for connection-bound authentication (NTLM, Negotiate: RFC 4559): such an
 * upstream connection must not carry another client's requests. */
static bool h1_auth_bound(const struct soth_h1_head *hd)
{
    for (size_t i = 0; i < hd->n_headers; i++) {
        struct soth_iov n = hd->headers[i].name, v = hd->headers[i].value;
        if (!soth_iov_is_ci(n, "www-authenticate") && !soth_iov_is_ci(n, "proxy-authenticate"))
            continue;
        if ((v.len >= 4 && strncasecmp(v.base, "ntlm", 4) == 0) ||
            (v.len >= 9 && strncasecmp(v.base, "negotiate", 9) == 0))
            return true;
    }
    return false;
}

static int h1_on_head(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_h1_head *hd)
{
    struct app_h1 *a = ctx;
    if (dir == SOTH_LEG_CLIENT) {
        a->awaiting_head = false;
        a->head_since_ms = 0;
        a->msg[0] = (struct msg_cap){.id = id};
        a->close_client = !hd->keep_alive;
        if (a->base.env.m != NULL)
            SOTH_METRIC_ADD(a->base.env.m->requests[SOTH_PROTO_HTTP1], 1);
        unsigned refuse = h1_refusal(a, hd);
        if (refuse == 0 && a->base.env.budget != NULL &&
            !a->base.env.budget(a->base.env.ctx, id, &a->refused_retry_s)) {
            if (soth_h1_in_flight(a->h) == 1 && !a->answered && !a->resp_open)
                return h1_answer_local_429(a, id, hd);
            refuse = 429; /* behind pipelined exchanges: answered after them, then closed */
        }
        if (refuse != 0) {
            h1_request_event(a, id, hd);
            a->refused_id = id;
            a->refused_status = refuse;
            return SOTH_H1_REFUSE;
        }
        app_pl_h1_head(&a->base, dir, hd->headers, hd->n_headers, false);
        if (a->base.env.origin_form)
            return h1_send_origin_form(a, id, hd);
        h1_request_event(a, id, hd);
        return 0;
    }
    struct soth_iov removed[APP_ALT_SVC_MAX];
    size_t n_removed;
    int sent = h1_alt_svc_strip(a, hd, removed, APP_ALT_SVC_MAX, &n_removed);
    if (sent < 0 || hd->interim)
        return sent; /* 1xx: forwarded, not an exchange's response */
    a->resp_head_out = true;
    a->resp_head_id = id;
    if (hd->status == 401 || hd->status == 407)
        a->auth_private = a->auth_private || h1_auth_bound(hd);
    /* A later complete request (pipelined) now waits for its own head, from now on. */
    a->resp_wait_ms = a->req_done_id > id ? app_clock_ns(&a->base) / 1000000u : 0;
    a->msg[1] = (struct msg_cap){.id = id};
    a->resp_open = !hd->no_body;
    app_pl_h1_head(&a->base, dir, hd->headers, hd->n_headers, hd->no_body);
    soth_ev_response_headers(a->base.env.ev, id, hd->status, h1_version(hd), hd->headers,
                             hd->n_headers, removed, n_removed);
    obs_on_response_head(a, id, hd);
    return sent;
}

static void h1_on_body(void *ctx, enum soth_leg dir, uint32_t id, const char *p, size_t n)
{
    struct app_h1 *a = ctx;
    struct msg_cap *m = &a->msg[dir];
    uint64_t cap = a->base.conf.capture;
    if (a->base.env.budget_bytes != NULL)
        a->base.env.budget_bytes(a->base.env.ctx, n);
    uint64_t room = cap > m->captured ? cap - m->captured : 0;
    size_t take = n < room ? n : (size_t)room;
    soth_ev_body_chunk(a->base.env.ev, soth_leg_of(dir), id, m->off, n, soth_iov(p, take),
                       take < n);
    m->off += n;
    m->captured += take;
    app_pl_h1_body(&a->base, dir, p, n);
    if (dir == SOTH_LEG_UPSTREAM && a->obs != NULL && a->obs_id == id && !a->ws_live)
        app_obs_data(&a->base, a->obs, SOTH_LEG_UPSTREAM, p, n);
}

static void h1_on_trailers(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_header *t,
                           size_t n)
{
    struct app_h1 *a = ctx;
    soth_ev_trailers(a->base.env.ev, soth_leg_of(dir), id, t, n);
}

static void h1_on_complete(void *ctx, enum soth_leg dir, uint32_t id)
{
    struct app_h1 *a = ctx;
    app_pl_h1_complete(&a->base, dir, id);
    if (dir == SOTH_LEG_UPSTREAM) {
        a->resp_open = false;
        a->resp_head_out = false;
        obs_end(a, id);
    } else {
        a->awaiting_head = true;
        /* timeouts.response_header_ms runs from the end of the request (docs/answers.md) */
        a->req_done_id = id;
        if (a->resp_wait_ms == 0 && a->resp_head_id < id)
            a->resp_wait_ms = app_clock_ns(&a->base) / 1000000u;
    }
}

static void h1_on_upgrade(void *ctx, uint32_t id, struct soth_iov protocol)
{
    struct app_h1 *a = ctx;
    if (soth_iov_is_ci(protocol, "websocket"))
        soth_ev_flow_set_protocol(a->base.env.ev, SOTH_PROTO_WEBSOCKET);
    if (a->obs != NULL && a->obs_id == id && app_obs_is_ws(a->obs))
        a->ws_live = true;
    a->resp_open = false;
    /* No request head follows a switch: bytes the client sent behind its upgrade request
     * (frames it did not wait to send) started no head deadline. */
    a->awaiting_head = false;
    a->head_since_ms = 0;
}

static void h1_on_exchange(void *ctx, const struct soth_h1_exchange *x)
{
    struct app_h1 *a = ctx;
    obs_end(a, x->stream_id);
    soth_ev_exchange_completed(a->base.env.ev, x->stream_id, (enum soth_outcome)x->outcome,
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
    case 408:
        return "Request Timeout";
    case 421:
        return "Misdirected Request";
    case 429:
        return "Too Many Requests";
    case 501:
        return "Not Implemented";
    case 431:
        return "Request Header Fields Too Large";
    case 504:
        return "Gateway Timeout";
    default:
        return "Bad Gateway";
    }
}

/*
 * The layer's own answer to the client (400, 408, 431, 502): a short text/plain body, then the
 * connection closes. Every answer of this version goes through here.
 */
static void h1_answer(struct app_h1 *a, unsigned status, const char *body, size_t bn)
{
    char out[640], extra[40] = "";
    if (status == 429)
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", a->refused_retry_s);
    ssize_t n = soth_h1_write_answer_hdr(out, sizeof(out), status, status_phrase(status), extra,
                                         true, body, bn);
    a->answered = true;
    if (n > 0)
        a->base.env.send(a->base.env.ctx, SOTH_LEG_CLIENT, out, (size_t)n);
}

/*
 * The refused request's end, once: with `answer`, when the exchanges before it were all
 * reported and nothing else went to the client, its answer (response_headers with the
 * answer's fields, then the bytes); always exchange_completed `reset` (nothing was relayed).
 */
static void h1_refused_end(struct app_h1 *a, bool answer)
{
    uint32_t id = a->refused_id;
    if (id == 0)
        return;
    a->refused_id = 0;
    if (answer && !a->answered && !a->resp_open) {
        char body[200];
        int bn = a->refused_status == 421
                     ? snprintf(body, sizeof(body),
                                "soth-mitm: this connection is for %.*s; send requests for "
                                "another authority on a new connection\n",
                                (int)a->authority_len, a->authority)
                 : a->refused_status == 429
                     ? snprintf(body, sizeof(body), "soth-mitm: budget exhausted\n")
                     : snprintf(body, sizeof(body),
                                "soth-mitm: CONNECT inside an HTTP connection is refused\n");
        if (bn < 0 || (size_t)bn >= sizeof(body))
            bn = (int)sizeof(body) - 1;
        char len[12], ra[12];
        int ln = snprintf(len, sizeof(len), "%d", bn);
        int rn = snprintf(ra, sizeof(ra), "%u", a->refused_retry_s);
        const struct soth_header f[] = {
            {SOTH_IOV_LIT("Content-Type"), SOTH_IOV_LIT("text/plain")},
            {SOTH_IOV_LIT("Content-Length"), soth_iov(len, (size_t)ln)},
            {SOTH_IOV_LIT("Retry-After"), soth_iov(ra, (size_t)rn)},
            {SOTH_IOV_LIT("Connection"), SOTH_IOV_LIT("close")},
        };
        bool retry = a->refused_status == 429;
        const struct soth_header f_noretry[] = {f[0], f[1], f[3]};
        soth_ev_response_headers(a->base.env.ev, id, a->refused_status, SOTH_IOV_LIT("1.1"),
                                 retry ? f : f_noretry, retry ? 4 : 3, NULL, 0);
        h1_answer(a, a->refused_status, body, (size_t)bn);
    }
    soth_ev_exchange_completed(a->base.env.ev, id, SOTH_OUTCOME_RESET, 0, 0);
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
        char body[256];
        int bn = snprintf(body, sizeof(body), "soth-mitm: %s: %s (%s)\n",
                          client_fault ? "bad request" : "bad response from the upstream",
                          a->err_detail ? a->err_detail : "malformed",
                          a->err_code ? a->err_code : "malformed");
        h1_answer(a, a->err_status, body, (size_t)bn);
    }
    if (a->err_status != 0 && !client_fault) /* exchange_completed `reason` (docs/events.md) */
        soth_ev_exchange_reason(a->base.env.ev,
                                a->err_code != NULL && strcmp(a->err_code, "bad_status") == 0
                                    ? "response_bad_status"
                                    : "response_malformed");
    soth_h1_abort(a->h, client_fault    ? SOTH_H1_CLIENT_ABORTED
                        : a->err_status ? SOTH_H1_UPSTREAM_ABORTED
                                        : SOTH_H1_RESET);
    soth_ev_exchange_reason(a->base.env.ev, NULL); /* not for a refused request */
    h1_refused_end(a, false);
    if (a->err_status != 0)
        a->reason = client_fault ? SOTH_CLOSE_PARSE_FAILED : SOTH_CLOSE_RELAY_ERROR;
    else
        a->reason = SOTH_CLOSE_RELAY_ERROR;
    return a->answered ? APP_DONE : rc;
}

/* The engine finished on its own: a refused request is answered now, and the connection
 * ends as refused (docs/answers.md). */
static void h1_finished(struct app_h1 *a, enum soth_close_reason reason)
{
    a->dead = true;
    a->reason = reason;
    if (a->refused_id != 0) {
        h1_refused_end(a, true);
        a->reason = SOTH_CLOSE_PARSE_FAILED;
    }
}

static int h1_status(struct app_h1 *a)
{
    if (a->dead)
        return APP_DONE;
    if (soth_h1_is_done(a->h)) {
        h1_finished(a, a->reason);
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
        int e = soth_gbuf_put(&a->st[side], p + rc, n - (size_t)rc, APP_STASH_MAX);
        if (e < 0)
            return h1_fail(a, e);
    }
    return 0;
}

/* Retry what `side` had stashed (the other direction may have unblocked it). */
static int h1_retry(struct app_h1 *a, unsigned side)
{
    struct soth_gbuf *s = &a->st[side];
    while (s->len > 0 && !a->dead) {
        ssize_t rc = soth_h1_feed(a->h, (int)side, s->p, s->len);
        if (rc < 0)
            return h1_fail(a, (int)rc);
        if (rc == 0)
            break;
        soth_gbuf_consume(s, (size_t)rc);
    }
    return 0;
}

static int h1_input(struct app *base, unsigned side, const char *p, size_t n)
{
    struct app_h1 *a = h1_of(base);
    if (a->dead)
        return APP_DONE;
    if (side == SOTH_LEG_CLIENT && a->awaiting_head && a->head_since_ms == 0 && n > 0 &&
        !soth_h1_is_upgraded(a->h))
        a->head_since_ms = app_clock_ns(base) / 1000000u; /* cleared when the head completes */
    int rc;
    if (a->st[side].len > 0) {
        rc = soth_gbuf_put(&a->st[side], p, n, APP_STASH_MAX);
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
        h1_finished(a, a->eof_seen[SOTH_LEG_CLIENT] || a->close_client ? SOTH_CLOSE_CLIENT_EOF
                                                                       : SOTH_CLOSE_RELAY_EOF);
        return APP_DONE;
    }
    return h1_status(a);
}

/* The upstream closed or reset with a request in flight and nothing of its response sent to
 * the client: 502, then the connection ends (docs/answers.md). */
static int h1_upstream_gone(struct app_h1 *a, bool reset)
{
    static const char fin[] = "soth-mitm: the upstream closed the connection before its "
                              "response head\n";
    static const char rst[] = "soth-mitm: the upstream reset the connection before its "
                              "response head\n";
    if (reset)
        h1_answer(a, 502, rst, sizeof(rst) - 1);
    else
        h1_answer(a, 502, fin, sizeof(fin) - 1);
    soth_ev_exchange_reason(a->base.env.ev, reset ? "upstream_reset" : "upstream_eof");
    soth_h1_abort(a->h, SOTH_H1_UPSTREAM_ABORTED);
    h1_refused_end(a, false);
    a->dead = true;
    a->reason = reset ? SOTH_CLOSE_RELAY_ERROR : SOTH_CLOSE_RELAY_EOF;
    return APP_DONE;
}

static int h1_eof(struct app *base, unsigned side, bool reset)
{
    struct app_h1 *a = h1_of(base);
    if (a->dead)
        return APP_DONE;
    a->eof_seen[side] = true;
    if (side == SOTH_LEG_UPSTREAM && !a->resp_head_out && !a->answered &&
        soth_h1_in_flight(a->h) > 0 && !soth_h1_is_upgraded(a->h))
        return h1_upstream_gone(a, reset);
    if (reset) {
        /* The transport is gone. A client that reset went away: its EOF ends what it can
         * (an upgraded relay whose upstream closed already is complete), the rest is
         * client_aborted. An upstream that reset aborted its exchanges. */
        if (side == SOTH_LEG_CLIENT && a->st[side].len == 0)
            soth_h1_eof(a->h, (int)side);
        else if (side == SOTH_LEG_UPSTREAM)
            soth_ev_exchange_reason(a->base.env.ev, "upstream_reset");
        soth_h1_abort(a->h,
                      side == SOTH_LEG_CLIENT ? SOTH_H1_CLIENT_ABORTED : SOTH_H1_UPSTREAM_ABORTED);
        soth_ev_exchange_reason(a->base.env.ev, NULL); /* not for a refused request */
        h1_refused_end(a, false);
        a->dead = true;
        a->reason = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_ERROR;
        return APP_DONE;
    }
    if (a->st[side].len > 0) {
        /* The peer finished while its bytes wait behind a blocked exchange: keep them until
         * the engine can take them; the EOF is handled then (bounded by the idle timer). */
        soth_h1_abort(a->h,
                      side == SOTH_LEG_CLIENT ? SOTH_H1_CLIENT_ABORTED : SOTH_H1_UPSTREAM_ABORTED);
        h1_refused_end(a, false);
        a->dead = true;
        a->reason = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF;
        return APP_DONE;
    }
    bool upgraded = soth_h1_is_upgraded(a->h);
    size_t in_flight = soth_h1_in_flight(a->h);
    if (side == SOTH_LEG_UPSTREAM) /* a response cut short by the close */
        soth_ev_exchange_reason(a->base.env.ev, "upstream_eof");
    int rc = soth_h1_eof(a->h, (int)side);
    soth_ev_exchange_reason(a->base.env.ev, NULL);
    if (rc == SOTH_H1_DONE || rc < 0 || soth_h1_is_done(a->h)) {
        enum soth_close_reason r =
            side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF;
        if (upgraded && a->eof_seen[side ^ 1])
            r = side == SOTH_LEG_CLIENT ? SOTH_CLOSE_RELAY_EOF : SOTH_CLOSE_CLIENT_EOF;
        /* A refused request is answered unless this EOF cut an exchange before it (the
         * client would take the answer for that exchange's response). */
        if (in_flight == 0 && rc >= 0) {
            h1_finished(a, r);
        } else {
            h1_refused_end(a, false);
            a->dead = true;
            a->reason = r;
        }
        return APP_DONE;
    }
    return upgraded ? APP_HALF_CLOSE : APP_AGAIN;
}

static void h1_abort(struct app *base, enum soth_outcome outcome)
{
    struct app_h1 *a = h1_of(base);
    soth_h1_abort(a->h, (enum soth_h1_outcome)outcome);
    h1_refused_end(a, false);
    a->dead = true;
}

static int h1_hold(struct app *base, unsigned side, bool hold)
{
    (void)base, (void)side, (void)hold; /* the worker pauses the source leg's reads instead */
    return APP_AGAIN;
}

/* The request head the client started must be complete by its first byte +
 * request_header_ms. */
static uint64_t h1_head_deadline(const struct app_h1 *a)
{
    if (a->dead || a->head_since_ms == 0 || a->base.conf.request_header_ms == 0)
        return 0;
    return a->head_since_ms + a->base.conf.request_header_ms;
}

/* A complete request's response head must begin by its end + response_header_ms. */
static uint64_t h1_resp_deadline(const struct app_h1 *a)
{
    if (a->dead || a->resp_wait_ms == 0 || a->base.conf.response_header_ms == 0 ||
        soth_h1_is_upgraded(a->h))
        return 0;
    return a->resp_wait_ms + a->base.conf.response_header_ms;
}

static uint64_t h1_deadline(const struct app *base)
{
    const struct app_h1 *a = h1_of_const(base);
    uint64_t hd = h1_head_deadline(a), rd = h1_resp_deadline(a);
    return hd == 0 || (rd != 0 && rd < hd) ? rd : hd;
}

/* The upstream sent no response head in time: 504 (nothing of that response went out yet),
 * the exchanges in flight end as timed out and the connection closes. */
static int h1_resp_timeout(struct app_h1 *a)
{
    if (!a->answered && !a->resp_head_out) {
        char body[128];
        int bn = snprintf(body, sizeof(body),
                          "soth-mitm: the upstream sent no response head within %u ms\n",
                          (unsigned)a->base.conf.response_header_ms);
        h1_answer(a, 504, body, (size_t)bn);
    }
    soth_ev_exchange_reason(a->base.env.ev, "upstream_timeout");
    soth_h1_abort(a->h, SOTH_H1_TIMEOUT);
    h1_refused_end(a, false);
    a->dead = true;
    a->reason = SOTH_CLOSE_IDLE_TIMEOUT;
    return APP_DONE;
}

/* The request head the client is sending took too long: 408 when nothing of a response is
 * on its way (then the exchanges in flight end as timed out). */
static int h1_timer(struct app *base, uint64_t now_ms)
{
    struct app_h1 *a = h1_of(base);
    if (a->dead)
        return APP_DONE;
    uint64_t rd = h1_resp_deadline(a);
    if (rd != 0 && rd <= now_ms)
        return h1_resp_timeout(a);
    uint64_t d = h1_head_deadline(a);
    if (d == 0 || d > now_ms)
        return APP_AGAIN;
    if (!a->resp_open && soth_h1_in_flight(a->h) == 0) {
        static const char body[] = "soth-mitm: request head not received in time\n";
        h1_answer(a, 408, body, sizeof(body) - 1);
    }
    soth_h1_abort(a->h, SOTH_H1_TIMEOUT);
    h1_refused_end(a, false);
    a->dead = true;
    a->reason = SOTH_CLOSE_IDLE_TIMEOUT;
    return APP_DONE;
}

static bool h1_read_paused(const struct app *base, unsigned side)
{
    return h1_of_const(base)->st[side].len > 0;
}

static bool h1_want_write(const struct app *base, unsigned side)
{
    (void)base, (void)side;
    return false;
}

static int h1_shutdown(struct app *base)
{
    struct app_h1 *a = h1_of(base);
    if (soth_h1_in_flight(a->h) == 0) {
        soth_h1_abort(a->h, SOTH_H1_COMPLETE);
        h1_refused_end(a, false);
        a->dead = true;
        a->reason = SOTH_CLOSE_SHUTDOWN;
        return APP_DONE;
    }
    return APP_AGAIN;
}

static enum soth_close_reason h1_close_reason(const struct app *base)
{
    return h1_of_const(base)->reason;
}

/*
 * Section buffers (a head or trailer section being re-serialised, ~68 KiB with the default
 * limits) are lent to the engines of a thread from its own free list while a section is built,
 * so an idle connection holds none and no request mallocs once the list is warm. Kept: as many
 * as were ever in use at once, up to 64, until the worker is quiet (app_thread_done).
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

void app_h1_thread_done(void)
{
    soth_buf_pool_drain(&h1_sections);
}

static struct app *h1_create(const struct app_env *env, const struct app_conf *conf)
{
    size_t esz = soth_h1_core_size(NULL);
    struct app_h1 *a = calloc(1, sizeof(*a) + esz);
    if (a == NULL)
        return NULL;
    app_base_init(&a->base, &app_h1_ops, env, conf);
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
    soth_h1_set_keep_upstream(a->h, env->keep_upstream);
    soth_ev_flow_set_protocol(env->ev, SOTH_PROTO_HTTP1);
    return &a->base;
}

static void h1_dispose(struct app *base)
{
    struct app_h1 *a = h1_of(base);
    soth_h1_dispose(a->h);
    app_base_dispose(base);
    soth_gbuf_free(&a->st[0]);
    soth_gbuf_free(&a->st[1]);
    free(a);
}

static bool h1_upstream_reusable(const struct app *base, uint32_t *requests)
{
    const struct app_h1 *a = h1_of_const(base);
    *requests = a->req_done_id;
    return !a->answered && a->err_status == 0 && !a->auth_private &&
           a->st[SOTH_LEG_UPSTREAM].len == 0 && soth_h1_upstream_reusable(a->h);
}

static int h1_upstream_opened(struct app *a, bool ok)
{
    (void)a, (void)ok; /* HTTP/1.1 never parks its upstream (app_upstream_want) */
    return APP_AGAIN;
}

static bool h1_upstream_retryable(const struct app *base)
{
    const struct app_h1 *a = h1_of_const(base);
    return !a->answered && a->err_status == 0 && a->st[SOTH_LEG_UPSTREAM].len == 0 &&
           soth_h1_upstream_retryable(a->h);
}

const struct app_ops app_h1_ops = {
    .name = "http/1.1",
    .h2 = false,
    .create = h1_create,
    .dispose = h1_dispose,
    .input = h1_input,
    .eof = h1_eof,
    .abort = h1_abort,
    .hold = h1_hold,
    .deadline = h1_deadline,
    .timer = h1_timer,
    .read_paused = h1_read_paused,
    .want_write = h1_want_write,
    .shutdown = h1_shutdown,
    .close_reason = h1_close_reason,
    .upstream_reusable = h1_upstream_reusable,
    .upstream_retryable = h1_upstream_retryable,
    .upstream_opened = h1_upstream_opened,
};
