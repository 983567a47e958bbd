/* The TLS interception sequence of a flow, ClientHello to relay (core/intercept.h). */
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "conn.h"
#include "flow.h"
#include "intercept.h"
#include "iobuf.h"
#include "learn.h"
#include "leg.h"
#include "relay.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

#define SOTH_PRE_MAX (4u << 20) /* a plain client's bytes kept while its upstream comes up */

static bool pre_put(struct flow *f, const char *p, uint32_t n)
{
    return soth_gbuf_put(&f->pre, p, n, SOTH_PRE_MAX) == 0;
}

static void handshake_succeeded(struct flow *f, unsigned side)
{
    struct soth_tls_conn *t = f->tls[side];
    /* a pooled upstream connection reports what it carried before (docs/events.md) */
    uint64_t reused = side == SOTH_LEG_UPSTREAM && f->up_pooled ? f->up_requests : UINT64_MAX;
    soth_ev_tls_handshake_succeeded_fp(&f->ev, soth_leg_of(side), soth_tls_conn_version(t),
                                       soth_tls_conn_cipher(t), soth_tls_conn_alpn(t),
                                       soth_tls_conn_ja4s(t), reused);
}

static void client_leg_start(struct worker *w, struct flow *f, struct soth_iov alpn);

/**
 * After a failed handshake: an upstream failure still gives the client a TLS session with our
 * leaf (or, for a plain client, an answer right away) and then 502 naming the reason (docs/tls.md);
 * anything else closes the flow.
 */
static void failed_end(struct worker *w, struct flow *f, unsigned side, enum soth_tls_fail reason,
                       const char *detail)
{
    bool can_answer = side == SOTH_LEG_UPSTREAM && f->tls[SOTH_LEG_CLIENT] == NULL &&
                      f->answer == NULL && (f->client_plain || f->head != NULL) &&
                      !f->c[SOTH_LEG_CLIENT].eof_in;
    char *a = can_answer ? chunk_get(&w->io) : NULL;
    if (a == NULL) {
        flow_close(w, f, SOTH_CLOSE_TLS_FAILED);
        return;
    }
    int n = snprintf(a, SOTH_BUF_SIZE, "soth-mitm: TLS with the upstream %.*s:%u failed: %s: %s\n",
                     (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
                     soth_tls_fail_names[reason], detail);
    f->answer = a;
    f->answer_len = (uint32_t)n;
    /* The upstream is done with: stop reading it (its bytes and FIN are ignored from now). */
    conn_pause_recv(w, f, SOTH_LEG_UPSTREAM);
    soth_tls_conn_free(f->tls[SOTH_LEG_UPSTREAM]);
    f->tls[SOTH_LEG_UPSTREAM] = NULL;
    if (f->client_plain) {
        flow_answer(w, f, 502, "Bad Gateway", f->answer, f->answer_len, SOTH_CLOSE_TLS_FAILED);
        return;
    }
    /* HTTP/1.1 when the client offers it, so the answer is one it can read. */
    struct soth_tls_client_hello ch;
    memset(&ch, 0, sizeof(ch));
    bool h1 = false;
    if (soth_tls_peek_client_hello(f->head, f->head_len, &ch) >= 0)
        for (size_t i = 0; i < ch.n_alpn; i++)
            h1 = h1 || alpn_is(ch.alpn[i], "http/1.1");
    client_leg_start(w, f, h1 ? SOTH_IOV_LIT("http/1.1") : SOTH_IOV_NULL);
}

void intercept_failed(struct worker *w, struct flow *f, unsigned side, int transport)
{
    struct soth_tls_conn *t = f->tls[side];
    enum soth_tls_fail reason = SOTH_TLS_FAIL_OTHER;
    char detail[256] = "";
    if (side == SOTH_LEG_CLIENT && t == NULL)
        soth_ev_tls_handshake_started(&f->ev, SOTH_LEG_CLIENT, SOTH_IOV_NULL);
    if (t == NULL && transport >= 0) {
        static const enum soth_tls_fail direct[] = {SOTH_TLS_FAIL_EOF, SOTH_TLS_FAIL_RESET,
                                                    SOTH_TLS_FAIL_TIMEOUT};
        reason = direct[transport];
        snprintf(detail, sizeof(detail), "%s before the handshake started",
                 soth_tls_fail_names[reason]);
    } else if (t != NULL && transport >= 0)
        reason = soth_tls_conn_classify_transport(t, (enum soth_tls_transport)transport, detail,
                                                  sizeof(detail));
    else if (t == NULL || soth_tls_conn_failure(t, &reason, detail, sizeof(detail)) < 0)
        snprintf(detail, sizeof(detail), "TLS failure");
    /* A learning signal too: the telemetry thread counts it and fills in the event's counts. */
    soth_learn_flow_signal(w, &f->ev, soth_leg_of(side), (enum soth_tls_failure)reason,
                           soth_learn_native_provider(w),
                           transport >= 0 ? SOTH_IOV_LIT("transport") : SOTH_IOV_LIT("tls"),
                           soth_iov(detail, strlen(detail)));
    SOTH_METRIC_ADD(w->m->tls_failures[side][reason], 1);
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "TLS %s: %s: %s",
             side ? "upstream" : "client", soth_tls_fail_names[reason], detail);
    failed_end(w, f, side, reason, detail);
}

/** Client side handshake done: relay from now on. */
static void client_leg_ready(struct worker *w, struct flow *f)
{
    handshake_succeeded(f, SOTH_LEG_CLIENT);
    if (f->answer != NULL) {
        /* The upstream handshake failed: our 502 goes out inside the client's session. */
        flow_answer(w, f, 502, "Bad Gateway", f->answer, f->answer_len, SOTH_CLOSE_TLS_FAILED);
        return;
    }
    relay_start(w, f);
}

/** Upstream handshake done: answer the client with our leaf and the upstream's ALPN. */
static void upstream_leg_ready(struct worker *w, struct flow *f)
{
    handshake_succeeded(f, SOTH_LEG_UPSTREAM);
    if (f->client_plain) {
        /* Reverse mode, plain client: nothing to answer with a leaf. */
        relay_start(w, f);
        return;
    }
    client_leg_start(w, f, soth_tls_conn_alpn(f->tls[SOTH_LEG_UPSTREAM]));
}

/** Start our server half toward the client: a leaf for the name, `alpn` selected. */
static void client_leg_start(struct worker *w, struct flow *f, struct soth_iov alpn)
{
    struct soth_tls_conn *c = NULL;
    struct soth_tls_leaf_cache_stats st;
    /* The client's JA4 (docs/tls.md, "Fingerprints"), from the ClientHello still held. */
    struct soth_tls_client_hello ch;
    char ja4[SOTH_TLS_JA4_LEN + 1];
    memset(&ch, 0, sizeof(ch));
    bool parsed = soth_tls_peek_client_hello(f->head, f->head_len, &ch) >= 0;
    bool fp = parsed && soth_tls_ja4(&ch, false, ja4, sizeof(ja4)) > 0;
    /* Our leaf's name: the client's SNI in reverse mode (the origin is the configured one),
     * else the flow's server name, which intercept_hello set to the SNI when there is one. */
    struct soth_iov name = f->is_reverse && parsed && ch.has_sni && ch.sni.len > 0
                               ? ch.sni
                               : soth_iov(f->ev.server_host, f->ev.server_host_len);
    soth_ev_tls_handshake_started_fp(&f->ev, SOTH_LEG_CLIENT, name,
                                     fp ? soth_iov(ja4, SOTH_TLS_JA4_LEN) : SOTH_IOV_NULL);
    int rc = soth_tls_conn_new_server(w->tls, name, alpn, &c);
    soth_tls_leaf_cache_stats(w->tls, &st);
    atomic_store_explicit(&w->m->leaf_cache_hits, st.hits, memory_order_relaxed);
    atomic_store_explicit(&w->m->leaf_cache_misses, st.misses, memory_order_relaxed);
    if (rc < 0) {
        intercept_failed(w, f, SOTH_LEG_CLIENT, -1);
        return;
    }
    f->tls[SOTH_LEG_CLIENT] = c;
    flow_set_state(f, FS_TLS_DOWN);
    /* Replay the ClientHello (and whatever followed it) into our server half. */
    soth_tls_conn_feed(c, f->head, f->head_len);
    rc = soth_tls_conn_handshake(c);
    soth_tls_conn_feed_done(c);
    chunk_put(&w->io, f->head);
    f->head = NULL;
    f->head_len = 0;
    if (!leg_flush(w, f, SOTH_LEG_CLIENT)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (rc == 0)
        client_leg_ready(w, f);
    else if (rc != SOTH_E_INCOMPLETE)
        intercept_failed(w, f, SOTH_LEG_CLIENT, -1);
}

/** The client's first TLS bytes cannot be a ClientHello we can intercept: fail the flow. */
static void hello_failed(struct worker *w, struct flow *f, struct soth_iov detail)
{
    soth_ev_tls_handshake_started(&f->ev, SOTH_LEG_CLIENT, SOTH_IOV_NULL);
    soth_learn_flow_signal(w, &f->ev, SOTH_LEG_CLIENT, SOTH_TLSF_HANDSHAKE,
                           soth_learn_native_provider(w), SOTH_IOV_LIT("clienthello"), detail);
    SOTH_METRIC_ADD(w->m->tls_failures[SOTH_LEG_CLIENT][SOTH_TLSF_HANDSHAKE], 1);
    flow_close(w, f, SOTH_CLOSE_TLS_FAILED);
}

/* The pool key's ALPN part: the offer in wire format (false: too long to pool). */
static bool pool_key_alpn(struct flow *f, const struct soth_iov *alpn, size_t n_alpn)
{
    size_t n = 0;
    for (size_t i = 0; i < n_alpn; i++) {
        if (alpn[i].len == 0 || alpn[i].len > 255 || n + 1 + alpn[i].len > sizeof(f->up_alpn))
            return false;
        f->up_alpn[n++] = (char)alpn[i].len;
        memcpy(f->up_alpn + n, alpn[i].base, alpn[i].len);
        n += alpn[i].len;
    }
    f->up_alpn_len = (uint8_t)n;
    return true;
}

/*
 * docs/http1.md "Upstream connection pool": an idle connection for the address and this ALPN
 * offer from the worker's pool. True when the flow took one (the leg is up, reported as
 * started + succeeded with `reused`), or when it ended or connects now (a deferred connect
 * with nothing in the pool: upstream_ready brings the flow back here); false: go on with the
 * connection the flow has.
 */
static bool upstream_from_pool(struct worker *w, struct flow *f, struct soth_iov name,
                               const struct soth_iov *alpn, size_t n_alpn)
{
    bool defer = f->up_defer;
    f->up_defer = false;
    f->up_keyed = upstream_poolable(w, f) && pool_key_alpn(f, alpn, n_alpn);
    if (f->up_keyed && f->c[SOTH_LEG_UPSTREAM].fd < 0) {
        struct upool_key k;
        upool_key_set(&k, &f->upstream_addr, f->upstream_addr_len, f->up_alpn, f->up_alpn_len);
        int fd;
        struct soth_tls_conn *t;
        uint32_t n;
        if (upool_take(&w->pool, &k, &fd, &t, &n, now_ms())) {
            struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
            u->fd = fd;
            u->connected = true;
            f->tls[SOTH_LEG_UPSTREAM] = t;
            f->up_pooled = true;
            f->up_requests = n;
            soth_ev_tls_handshake_started(&f->ev, SOTH_LEG_UPSTREAM, name);
            /* Its reads are armed by relay_start: a connection found dead after all is seen
             * there only (docs/http1.md: retried once when the request allows it, else 502). */
            upstream_leg_ready(w, f);
            return true;
        }
    }
    if (f->up_keyed)
        upool_count(&w->pool, UPOOL_MISS);
    if (defer) {
        upstream_connect(w, f);
        return true;
    }
    return false;
}

/** Start our client half toward the upstream (SNI name, ALPN offer), FS_TLS_UP. */
static void upstream_leg_start(struct worker *w, struct flow *f, struct soth_iov name,
                               const struct soth_iov *alpn, size_t n_alpn)
{
    if ((f->up_defer || !f->up_keyed) && upstream_from_pool(w, f, name, alpn, n_alpn))
        return;
    soth_ev_tls_handshake_started(&f->ev, SOTH_LEG_UPSTREAM, name);
    struct soth_tls_conn *u = NULL;
    if (soth_tls_conn_new_client(w->tls, name, alpn, n_alpn, &u) < 0) {
        intercept_failed(w, f, SOTH_LEG_UPSTREAM, -1);
        return;
    }
    f->tls[SOTH_LEG_UPSTREAM] = u;
    flow_set_state(f, FS_TLS_UP);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.tls_handshake_ms);
    int hrc = soth_tls_conn_handshake(u);
    if (hrc < 0 && hrc != SOTH_E_INCOMPLETE) {
        intercept_failed(w, f, SOTH_LEG_UPSTREAM, -1);
        return;
    }
    if (!leg_flush(w, f, SOTH_LEG_UPSTREAM)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
}

/** Transparent mode: does a plain client start with an HTTP request line ("TOKEN ")? */
static bool looks_like_http(const char *p, uint32_t n)
{
    for (uint32_t i = 0; i < n && i < 20; i++) {
        if (p[i] == ' ')
            return i > 0;
        if (p[i] < 'A' || p[i] > 'Z')
            return false;
    }
    return false;
}

void intercept_hello(struct worker *w, struct flow *f)
{
    if (f->head == NULL || f->state != FS_HELLO)
        return;
    struct soth_tls_client_hello ch;
    memset(&ch, 0, sizeof(ch));
    ssize_t rc = soth_tls_peek_client_hello(f->head, f->head_len, &ch);
    if (rc == SOTH_E_INCOMPLETE && f->head_len < SOTH_BUF_SIZE)
        return;
    if (rc == SOTH_TLS_E_NOT_TLS && (f->is_reverse || ((f->is_transparent || f->is_socks) &&
                                                       looks_like_http(f->head, f->head_len)))) {
        /* Reverse, transparent or socks5 mode, plain HTTP from the client: parse it; TLS
         * toward an https reverse origin. */
        f->client_plain = true;
        if (f->is_reverse && w->cfg->reverse_tls) {
            static const struct soth_iov h1[] = {SOTH_IOV_LIT("http/1.1")};
            upstream_leg_start(w, f, soth_iov(f->ev.server_host, f->ev.server_host_len), h1, 1);
        } else {
            relay_start(w, f);
        }
        return;
    }
    if (rc == SOTH_TLS_E_NOT_TLS) {
        /* Not TLS: nothing to intercept at this layer; relay what the client sent as is. */
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "not TLS: relaying as a tunnel");
        f->action = SOTH_ACTION_TUNNEL;
        relay_release_head(w, f);
        flow_set_state(f, FS_RELAY);
        timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.idle_ms);
        conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
        conn_try_send(w, f, SOTH_LEG_UPSTREAM);
        return;
    }
    if (rc < 0) {
        hello_failed(w, f, SOTH_IOV_LIT("malformed or oversized ClientHello"));
        return;
    }
    soth_ev_flow_set_protocol(&f->ev, SOTH_PROTO_TLS);
    /*
     * The ALPN offer toward the upstream: the client's list without what we cannot relay as
     * negotiated ("h2" only with http2_enabled; gRPC's "grpc-exp" is HTTP/2 on the wire, so
     * the client gets "h2" when the upstream picks it).
     */
    struct soth_iov alpn[SOTH_TLS_MAX_ALPN];
    size_t n_alpn = 0;
    bool offers_h1 = false;
    for (size_t i = 0; i < ch.n_alpn; i++) {
        if (alpn_is(ch.alpn[i], "grpc-exp") ||
            (alpn_is(ch.alpn[i], "h2") && !w->cfg->http2_enabled))
            continue;
        if (alpn_is(ch.alpn[i], "http/1.1"))
            offers_h1 = true;
        alpn[n_alpn++] = ch.alpn[i];
    }
    if (ch.has_alpn && n_alpn == 0) {
        /* Nothing left (an h2-only client with HTTP/2 off): offer HTTP/1.1. */
        alpn[n_alpn++] = SOTH_IOV_LIT("http/1.1");
    }
    if (f->is_reverse) {
        /* Our leaf is for the name the client asked for (client_leg_start reads it from the
         * ClientHello again); the origin is the configured one. */
        if (!w->cfg->reverse_tls) {
            /* Plain HTTP origin: we terminate TLS and speak HTTP/1.1 to it. */
            client_leg_start(w, f, offers_h1 ? SOTH_IOV_LIT("http/1.1") : SOTH_IOV_NULL);
            return;
        }
    } else if (ch.has_sni && ch.sni.len > 0) {
        /* The name for SNI and our leaf: the client's SNI, else the CONNECT host. */
        soth_ev_flow_set_server(&f->ev, ch.sni, f->ev.server_port);
    }
    upstream_leg_start(w, f, soth_iov(f->ev.server_host, f->ev.server_host_len), alpn, n_alpn);
}

void intercept_hello_bytes(struct worker *w, struct flow *f, const char *p, uint32_t len)
{
    if (f->head == NULL) {
        f->head = chunk_get(&w->io);
        f->head_len = 0;
        if (f->head == NULL) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
    }
    uint32_t room = SOTH_BUF_SIZE - f->head_len;
    if (len > room || f->pre.len > 0) {
        uint8_t first = f->head_len > 0 ? (uint8_t)f->head[0] : (uint8_t)p[0];
        if (first == 0x16) {
            hello_failed(w, f, SOTH_IOV_LIT("client sent more than a ClientHello"));
            return;
        }
        /* Not TLS (a plain client's big first write before the upstream is up): keep the
         * rest aside, bounded, and stop reading until the relay starts. */
        uint32_t n = f->pre.len > 0 ? 0 : room;
        memcpy(f->head + f->head_len, p, n);
        f->head_len += n;
        if (!pre_put(f, p + n, len - n)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        conn_pause_recv(w, f, SOTH_LEG_CLIENT);
        intercept_hello(w, f);
        return;
    }
    memcpy(f->head + f->head_len, p, len);
    f->head_len += len;
    intercept_hello(w, f);
}

void intercept_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    char *data = buf_addr(&w->io, bid);
    if (f->state == FS_HELLO || (side == SOTH_LEG_CLIENT && f->tls[SOTH_LEG_CLIENT] == NULL)) {
        if (side == SOTH_LEG_CLIENT)
            intercept_hello_bytes(w, f, data, len);
        /* An upstream that speaks before the ClientHello is not a TLS server: drop it. */
        buf_put(&w->io, bid);
        return;
    }
    struct soth_tls_conn *t = f->tls[side];
    if (soth_tls_conn_feed(t, data, len) < 0) {
        buf_put(&w->io, bid);
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (f->state == FS_TLS_UP || f->state == FS_TLS_DOWN) {
        int rc = soth_tls_conn_is_established(t) ? 0 : soth_tls_conn_handshake(t);
        soth_tls_conn_feed_done(t);
        buf_put(&w->io, bid);
        if (!leg_flush(w, f, side)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        if (rc == SOTH_E_INCOMPLETE)
            return;
        if (rc < 0) {
            intercept_failed(w, f, side, -1);
            return;
        }
        if (side == SOTH_LEG_UPSTREAM && f->state == FS_TLS_UP)
            upstream_leg_ready(w, f);
        else if (side == SOTH_LEG_CLIENT && f->state == FS_TLS_DOWN)
            client_leg_ready(w, f);
        return;
    }
}

/** The leg whose handshake the flow waits for: the upstream's in FS_TLS_UP, else the
 *  client's (its ClientHello in FS_HELLO, its handshake in FS_TLS_DOWN). */
static unsigned awaited_side(const struct flow *f)
{
    return f->state == FS_TLS_UP ? SOTH_LEG_UPSTREAM : SOTH_LEG_CLIENT;
}

void intercept_eof(struct worker *w, struct flow *f, unsigned side)
{
    if (f->state != FS_HELLO && side == awaited_side(f)) {
        intercept_failed(w, f, side, SOTH_TLS_TRANSPORT_EOF);
        return;
    }
    flow_close(w, f, side == SOTH_LEG_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF);
}

void intercept_recv_error(struct worker *w, struct flow *f, unsigned side)
{
    if (f->state != FS_HELLO && side == awaited_side(f)) {
        intercept_failed(w, f, side, SOTH_TLS_TRANSPORT_RESET);
        return;
    }
    flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
}

void intercept_timeout(struct worker *w, struct flow *f)
{
    intercept_failed(w, f, awaited_side(f), SOTH_TLS_TRANSPORT_TIMEOUT);
}
