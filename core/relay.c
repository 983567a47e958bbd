/* A flow's relay once both legs are up, through its HTTP layer or as bytes (core/relay.h). */
#include "answer.h"
#include "app.h"
#include "conn.h"
#include "flow.h"
#include "iobuf.h"
#include "leg.h"
#include "relay.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

/** Decrypt what tls[from] holds and hand it to the HTTP layer. False once the flow ended. */
static bool relay_pump_app(struct worker *w, struct flow *f, unsigned from)
{
    char buf[SOTH_BUF_SIZE];
    int rc = APP_AGAIN;
    while (rc == APP_AGAIN) {
        ssize_t n = soth_tls_conn_read(f->tls[from], buf, sizeof(buf));
        if (n == SOTH_E_INCOMPLETE)
            break;
        if (n < 0) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
        if (n == 0) {
            /* close_notify: the leg's EOF for the HTTP layer. */
            f->c[from].eof_in = true;
            if (f->first_eof == 0xff)
                f->first_eof = (uint8_t)from;
            rc = app_eof(f->app, from, false);
            if (rc == APP_HALF_CLOSE) {
                soth_tls_conn_shutdown(f->tls[from ^ 1]);
                f->c[from ^ 1].shut_pending = true;
                rc = APP_AGAIN;
            }
            break;
        }
        rc = app_input(f->app, from, buf, (size_t)n);
    }
    relay_after(w, f, from, rc);
    return f->state == FS_RELAY && !f->app_done;
}

/** Decrypt what tls[from] holds and re-encrypt it into tls[from ^ 1]. */
static bool relay_pump(struct worker *w, struct flow *f, unsigned from)
{
    if (f->app != NULL)
        return relay_pump_app(w, f, from);
    unsigned to = from ^ 1;
    char buf[SOTH_BUF_SIZE];
    for (;;) {
        ssize_t n = soth_tls_conn_read(f->tls[from], buf, sizeof(buf));
        if (n == SOTH_E_INCOMPLETE)
            break;
        if (n == 0) {
            /* close_notify: pass the close on like a FIN. */
            soth_tls_conn_shutdown(f->tls[to]);
            f->c[to].shut_pending = true;
            break;
        }
        if (n < 0) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
        if (soth_tls_conn_write(f->tls[to], buf, (size_t)n) < 0) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
    }
    if (!leg_flush(w, f, to) || !leg_flush(w, f, from)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return false;
    }
    return true;
}

/** The HTTP layer finished: send what is queued, close_notify and FIN both legs, then close
 *  once the client's FIN arrives (bounded by SOTH_ANSWER_MS). */
static void relay_finish(struct worker *w, struct flow *f)
{
    f->app_done = true;
    uint32_t n = 0;
    if (f->up_poolable && app_upstream_reusable(f->app, &n) &&
        soth_tls_conn_in_pending(f->tls[SOTH_LEG_UPSTREAM]) == 0) {
        /* docs/http1.md "Upstream connection pool": the upstream connection stays open for
         * the worker's pool (kept at flow_free unless it says anything before). */
        f->up_keep = true;
        f->up_requests += n;
    }
    for (unsigned s = 0; s < 2; s++) {
        struct conn *c = &f->c[s];
        if (s == SOTH_LEG_UPSTREAM && f->up_keep)
            continue;
        if (f->tls[s] != NULL && !c->shut_done)
            soth_tls_conn_shutdown(f->tls[s]);
        if (!leg_flush(w, f, s)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        if (c->connected && !c->shut_done && !c->shut_pending) {
            c->shut_pending = true;
            conn_try_send(w, f, s);
        }
    }
    /* Reads go on (and are discarded) so the peers' FINs are seen. */
    conn_resume_recv(w, f, SOTH_LEG_CLIENT);
    conn_resume_recv(w, f, SOTH_LEG_UPSTREAM);
    timer_set(&w->timers, &f->timer, now_ms() + SOTH_ANSWER_MS);
    relay_check_done(w, f);
}

void relay_after(struct worker *w, struct flow *f, unsigned from, int rc)
{
    if (f->state != FS_RELAY || f->app_done)
        return;
    if (!leg_flush(w, f, SOTH_LEG_CLIENT) || !leg_flush(w, f, SOTH_LEG_UPSTREAM)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (rc == APP_DONE) {
        relay_finish(w, f);
        return;
    }
    if (rc < 0) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "HTTP layer: %s", soth_strerror(rc));
        flow_close(w, f, app_close_reason(f->app));
        return;
    }
    /* The layer's next deadline: a request head in progress (request_header_ms), an idle
     * WebSocket turn (events.ws_turn_idle_ms; docs/config.md). */
    uint64_t hd = app_deadline(f->app);
    if (hd != 0 && (f->timer.deadline_ms == 0 || hd < f->timer.deadline_ms))
        timer_set(&w->timers, &f->timer, hd);
    for (unsigned s = 0; s < 2; s++) {
        struct conn *out = &f->c[s];
        if (f->app != NULL && app_read_paused(f->app, s)) {
            conn_pause_recv(w, f, s);
        } else if (f->c[s].recv_paused && !over_high(&f->c[s ^ 1])) {
            conn_resume_recv(w, f, s);
        }
        /* HTTP/2 holds output for a congested leg; flow control then stops its sender. */
        if (!f->app_held[s] && over_high(out) && app_is_h2(f->app)) {
            f->app_held[s] = true;
            rc = app_hold(f->app, s, true);
            if (rc != APP_AGAIN) {
                relay_after(w, f, from, rc);
                return;
            }
        }
    }
    (void)from;
}

void relay_release_head(struct worker *w, struct flow *f)
{
    conn_queue_copy(&w->segs, &f->c[SOTH_LEG_UPSTREAM], f->head, f->head_len);
    conn_queue_copy(&w->segs, &f->c[SOTH_LEG_UPSTREAM], f->pre.p, f->pre.len);
    pre_free(f);
    conn_resume_recv(w, f, SOTH_LEG_CLIENT);
    chunk_put(&w->io, f->head);
    f->head = NULL;
    f->head_len = 0;
}

/** Bytes from a plain (not TLS) leg for the HTTP layer (the caller keeps its buffer). */
static void relay_plain_input(struct worker *w, struct flow *f, unsigned side, const char *p,
                              uint32_t len)
{
    int rc = app_input(f->app, side, p, len);
    relay_after(w, f, side, rc);
    if (f->state == FS_RELAY && !f->app_done && over_high(&f->c[side ^ 1]) && !app_is_h2(f->app))
        conn_pause_recv(w, f, side);
}

void relay_start(struct worker *w, struct flow *f)
{
    flow_set_state(f, FS_RELAY);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.idle_ms);
    if (f->action == SOTH_ACTION_INTERCEPT && f->app == NULL) {
        struct soth_iov alpn = f->tls[SOTH_LEG_CLIENT] != NULL
                                   ? soth_tls_conn_alpn(f->tls[SOTH_LEG_CLIENT])
                                   : SOTH_IOV_NULL;
        bool h2 = alpn_is(alpn, "h2");
        if (h2 || alpn.len == 0 || alpn_is(alpn, "http/1.1") || alpn_is(alpn, "http/1.0")) {
            struct app_env env = {
                .cfg = w->cfg,
                .ev = &f->ev,
                .m = w->m,
                .client_tls = f->tls[SOTH_LEG_CLIENT] != NULL,
                .ctx = f,
                .send = leg_send,
                .budget = f->budget_slot >= 0 ? leg_budget : NULL,
                .budget_bytes = f->budget_slot >= 0 ? leg_budget_bytes : NULL,
            };
            /* docs/http1.md "Upstream connection pool": an HTTP/1.1 leg the pool may keep */
            struct soth_iov ua = f->tls[SOTH_LEG_UPSTREAM] != NULL
                                     ? soth_tls_conn_alpn(f->tls[SOTH_LEG_UPSTREAM])
                                     : SOTH_IOV_NULL;
            f->up_poolable = !h2 && f->up_keyed && f->tls[SOTH_LEG_UPSTREAM] != NULL &&
                             (ua.len == 0 || alpn_is(ua, "http/1.1")) && upstream_poolable(w, f);
            env.keep_upstream = f->up_poolable;
            f->app = app_new(h2 ? APP_H2 : APP_H1, &env);
            if (f->app == NULL && !h2) {
                flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
                return;
            }
            /* Without an HTTP/2 layer (not built), h2 is relayed as TLS-wrapped bytes. */
        }
    }
    conn_arm_recv(w, f, SOTH_LEG_CLIENT);
    conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
    if (f->app != NULL && f->head != NULL) {
        /* Reverse mode: the plain client's first bytes, read while looking for a ClientHello. */
        char *head = f->head;
        uint32_t n = f->head_len;
        f->head = NULL;
        f->head_len = 0;
        int rc = app_input(f->app, SOTH_LEG_CLIENT, head, n);
        chunk_put(&w->io, head);
        if (rc == APP_AGAIN && f->pre.len > 0)
            rc = app_input(f->app, SOTH_LEG_CLIENT, f->pre.p, f->pre.len);
        pre_free(f);
        relay_after(w, f, SOTH_LEG_CLIENT, rc); /* resumes client reads paused by pre_put */
    } else if (f->head != NULL) {
        relay_release_head(w, f);
    }
    if (f->state != FS_RELAY || f->app_done)
        return;
    if (f->app != NULL && f->tls[SOTH_LEG_CLIENT] == NULL && f->tls[SOTH_LEG_UPSTREAM] == NULL) {
        relay_after(w, f, SOTH_LEG_CLIENT, APP_AGAIN);
        return;
    }
    /* Application data may already sit behind either handshake (an HTTP/2 layer also has its
     * prefaces to send). */
    if (f->app != NULL)
        relay_after(w, f, SOTH_LEG_CLIENT, APP_AGAIN);
    if (f->tls[SOTH_LEG_CLIENT] != NULL && !relay_pump(w, f, SOTH_LEG_CLIENT))
        return;
    if (f->tls[SOTH_LEG_UPSTREAM] != NULL)
        relay_pump(w, f, SOTH_LEG_UPSTREAM);
    else
        conn_try_send(w, f, SOTH_LEG_UPSTREAM);
}

void relay_plain_head(struct worker *w, struct flow *f, const char *p, uint32_t len)
{
    int rc = app_input(f->app, SOTH_LEG_CLIENT, p, len);
    if (rc == APP_AGAIN) {
        conn_try_send(w, f, SOTH_LEG_CLIENT);
        if (app_read_paused(f->app, SOTH_LEG_CLIENT))
            conn_pause_recv(w, f, SOTH_LEG_CLIENT);
        return;
    }
    /* An error answer (400/431) before any upstream byte matters: answer and close. */
    flow_set_state(f, FS_RELAY);
    relay_after(w, f, SOTH_LEG_CLIENT, rc);
}

void relay_check_done(struct worker *w, struct flow *f)
{
    if (f->state != FS_RELAY)
        return;
    struct conn *c = &f->c[SOTH_LEG_CLIENT], *u = &f->c[SOTH_LEG_UPSTREAM];
    if (f->app_done) {
        /* Everything delivered and our FINs out: close once the client's FIN came too. */
        if (c->q_count == 0 && !c->send_inflight && !c->shut_pending && c->eof_in &&
            (u->q_count == 0 || !u->connected) && !u->send_inflight &&
            (!u->shut_pending || !u->connected))
            flow_close(w, f, app_close_reason(f->app));
        return;
    }
    /* pending == 0: no send or shutdown in flight, so both FINs have left. */
    if (c->eof_in && u->eof_in && c->q_count == 0 && u->q_count == 0 && !c->shut_pending &&
        !u->shut_pending && f->pending == 0)
        flow_close(
            w, f, f->first_eof == SOTH_LEG_UPSTREAM ? SOTH_CLOSE_RELAY_EOF : SOTH_CLOSE_CLIENT_EOF);
}

bool relay_drained(struct worker *w, struct flow *f, unsigned side)
{
    bool low = under_low(&f->c[side]);
    if (low && f->app != NULL && f->app_held[side] && !f->app_done && f->state == FS_RELAY) {
        f->app_held[side] = false;
        relay_after(w, f, side, app_hold(f->app, side, false));
        if (f->state != FS_RELAY)
            return false;
    }
    if (f->c[side ^ 1].recv_paused && low && (f->app == NULL || !app_read_paused(f->app, side ^ 1)))
        conn_resume_recv(w, f, side ^ 1);
    return true;
}

/** Ciphertext from a TLS leg. Takes the buffer. */
static void relay_tls_input(struct worker *w, struct flow *f, unsigned side, unsigned bid,
                            uint32_t len)
{
    struct soth_tls_conn *t = f->tls[side];
    if (soth_tls_conn_feed(t, buf_addr(&w->io, bid), len) < 0) {
        buf_put(&w->io, bid);
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    uint32_t gen = f->gen;
    bool ok = relay_pump(w, f, side);
    if (f->gen != gen) {
        /* The pump ended the flow and, nothing being in flight, freed it and t with it. */
        buf_put(&w->io, bid);
        return;
    }
    soth_tls_conn_feed_done(t);
    buf_put(&w->io, bid);
    /* HTTP/2 holds output per leg instead: pausing would stall every stream's frames. */
    if (ok && over_high(&f->c[side ^ 1]) && (f->app == NULL || !app_is_h2(f->app)))
        conn_pause_recv(w, f, side);
}

void relay_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    if (f->app_done) {
        buf_put(&w->io, bid); /* after the HTTP layer finished: only FINs matter */
        return;
    }
    if (f->tls[side] != NULL) {
        relay_tls_input(w, f, side, bid, len);
        return;
    }
    if (f->app != NULL) {
        relay_plain_input(w, f, side, buf_addr(&w->io, bid), len);
        buf_put(&w->io, bid);
        return;
    }
    unsigned other = side ^ 1;
    struct conn *o = &f->c[other];
    conn_queue(&w->segs, o, buf_addr(&w->io, bid), 0, len, (int32_t)bid);
    if (over_high(o))
        conn_pause_recv(w, f, side);
    conn_try_send(w, f, other);
}

void relay_eof(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *o = &f->c[side ^ 1];
    if (f->app_done) {
        relay_check_done(w, f);
        return;
    }
    if (f->app != NULL) {
        int rc = app_eof(f->app, side, false);
        if (rc != APP_HALF_CLOSE) {
            relay_after(w, f, side, rc);
            return;
        }
    }
    if (f->tls[side ^ 1] != NULL && !o->shut_done && !o->shut_pending) {
        /* A FIN without close_notify: close the other leg cleanly all the same. */
        soth_tls_conn_shutdown(f->tls[side ^ 1]);
        leg_flush(w, f, side ^ 1);
    }
    if (!o->shut_done) {
        o->shut_pending = true;
        conn_try_send(w, f, side ^ 1);
    }
    relay_check_done(w, f);
}

/*
 * The upstream transport is gone (reset, broken pipe): the HTTP layer ends its exchanges and
 * may still answer the client (502 before a response head, docs/answers.md); what is queued
 * for the client goes out and the flow finishes as after any answer.
 */
static void relay_upstream_gone(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    u->eof_in = true;
    u->connected = false; /* nothing more toward it, not even a FIN */
    u->shut_pending = false;
    if (f->app_done) {
        relay_check_done(w, f);
        return;
    }
    relay_after(w, f, SOTH_LEG_UPSTREAM, app_eof(f->app, SOTH_LEG_UPSTREAM, true));
}

void relay_recv_error(struct worker *w, struct flow *f, unsigned side)
{
    if (f->app == NULL) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (side == SOTH_LEG_UPSTREAM) {
        relay_upstream_gone(w, f);
        return;
    }
    /*
     * A reset leg (clients routinely close with bytes unread, e.g. TLS session tickets): the
     * HTTP layer ends its exchanges (a client's as its going away, an upstream's as aborted)
     * and names the close reason.
     */
    f->c[side].eof_in = true;
    if (!f->app_done)
        app_eof(f->app, side, true);
    flow_close(w, f, app_close_reason(f->app));
}

void relay_send_error(struct worker *w, struct flow *f, unsigned side)
{
    if (f->app == NULL) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (side == SOTH_LEG_UPSTREAM) {
        relay_upstream_gone(w, f);
        return;
    }
    /* The leg is gone (reset, broken pipe): the HTTP layer ends its exchanges. */
    if (!f->app_done)
        app_eof(f->app, side, true);
    flow_close(w, f, app_close_reason(f->app));
}

void relay_fin_sent(struct worker *w, struct flow *f, unsigned side)
{
    if (f->app_done && side == SOTH_LEG_CLIENT)
        timer_set(&w->timers, &f->timer, now_ms() + SOTH_LINGER_MS); /* wait for the FIN */
    relay_check_done(w, f);
}

void relay_timeout(struct worker *w, struct flow *f)
{
    uint64_t now = now_ms();
    if (f->app_done) {
        flow_close(w, f, app_close_reason(f->app));
        return;
    }
    uint64_t hd = f->app != NULL ? app_deadline(f->app) : 0;
    if (hd != 0 && hd <= now) {
        /* 408 for a late request head; an idle WebSocket turn completes */
        relay_after(w, f, SOTH_LEG_CLIENT, app_timer(f->app, now));
        if (f->state != FS_RELAY || f->app_done)
            return;
        hd = app_deadline(f->app);
    }
    uint64_t idle = f->last_active_ms + w->cfg->timeouts.idle_ms;
    if (idle > now) {
        timer_set(&w->timers, &f->timer, hd != 0 && hd < idle ? hd : idle);
        return;
    }
    flow_close(w, f, SOTH_CLOSE_IDLE_TIMEOUT);
}
