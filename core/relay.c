/* A flow's relay once both legs are up, through its HTTP layer or as bytes (core/relay.h). */
#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include "answer.h"
#include "app.h"
#include "conn.h"
#include "flow.h"
#include "iobuf.h"
#include "leg.h"
#include "relay.h"
#include "timer.h"
#include "upool.h"
#include "upstream.h"
#include "worker.h"

static bool relay_retry(struct worker *w, struct flow *f, bool reset);
static void relay_park(struct worker *w, struct flow *f);
static void relay_wake(struct worker *w, struct flow *f);
static void relay_park_step(struct worker *w, struct flow *f);
static void wake_fail(struct worker *w, struct flow *f);
static void wake_done(struct worker *w, struct flow *f);

/** Decrypt what tls[from] holds and hand it to the HTTP layer. False once the flow ended. */
static bool relay_pump_app(struct worker *w, struct flow *f, unsigned from)
{
    char buf[SOTH_BUF_SIZE]; /* used only with a wolfSSL that cannot lend its plaintext */
    int rc = APP_AGAIN;
    while (rc == APP_AGAIN) {
        /* The plaintext stays in wolfSSL's record buffer through app_input: the HTTP layer
         * reaches the flow only through its env (sends, budgets), which neither reads nor
         * frees tls[from] (docs/tls.md, "Memory I/O"). */
        const char *p;
        ssize_t n = soth_tls_conn_read_view(f->tls[from], &p, buf, sizeof(buf));
        if (n == SOTH_E_INCOMPLETE)
            break;
        if (n < 0) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
        if (n == 0) {
            /* A pooled leg closed before answering: replaced once (docs/http1.md). */
            if (from == SOTH_LEG_UPSTREAM && relay_retry(w, f, false))
                break;
            /* close_notify: the leg's EOF for the HTTP layer. */
            f->c[from].eof_in = true;
            if (f->first_eof == 0xff)
                f->first_eof = (uint8_t)from;
            rc = app_eof(f->app, from, false);
            if (rc == APP_HALF_CLOSE) {
                (void)leg_close_notify(w, f, from ^ 1);
                f->c[from ^ 1].shut_pending = true;
                rc = APP_AGAIN;
            }
            break;
        }
        if (from == SOTH_LEG_UPSTREAM && !f->up_heard) {
            f->up_heard = true; /* the origin answers on this connection: no retry */
            leg_replay_free(w, f);
        }
        rc = app_input(f->app, from, p, (size_t)n);
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
    char buf[SOTH_BUF_SIZE]; /* used only with a wolfSSL that cannot lend its plaintext */
    for (;;) {
        const char *p;
        ssize_t n = soth_tls_conn_read_view(f->tls[from], &p, buf, sizeof(buf));
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
        if (soth_tls_conn_write(f->tls[to], p, (size_t)n) < 0) {
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
        if (f->tls[s] != NULL && !c->shut_done && leg_close_notify(w, f, s) < 0) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
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
    /* docs/http2.md "Idle upstream connection": the layer ended its upstream session, or a
     * request wants a new one. */
    enum app_upstream_want want = app_upstream_want(f->app);
    if (want == APP_UP_CLOSE) {
        relay_park(w, f);
        if (f->state != FS_RELAY)
            return;
    } else if (want == APP_UP_OPEN) {
        relay_wake(w, f);
        if (f->state != FS_RELAY || f->app_done)
            return;
    }
    /* The layer's next deadline: a request head in progress (request_header_ms), an idle
     * WebSocket turn (events.ws_turn_idle_ms; docs/config.md). */
    uint64_t hd = app_deadline(f->app);
    if (hd != 0 && (f->timer.deadline_ms == 0 || hd < f->timer.deadline_ms))
        timer_set(&w->timers, &f->timer, hd);
    for (unsigned s = 0; s < 2 && !up_redialing(f->up_redial); s++) {
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
            /* docs/http2.md "Idle upstream connection": a direct TLS upstream can be closed
             * while idle and made again (not through an upstream proxy's tunnel) */
            env.upstream_parkable = h2 && f->tls[SOTH_LEG_UPSTREAM] != NULL && f->route == NULL &&
                                    f->c[SOTH_LEG_UPSTREAM].fd >= 0 && f->upstream_addr_len > 0;
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
    if (f->c[side ^ 1].recv_paused && low && !up_redialing(f->up_redial) &&
        (f->app == NULL || !app_read_paused(f->app, side ^ 1)))
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
    if (side == SOTH_LEG_CLIENT && up_redialing(f->up_redial)) {
        f->up_redial_eof = true; /* passed on once the upstream is back */
        return;
    }
    if (side == SOTH_LEG_UPSTREAM && relay_retry(w, f, false))
        return;
    if (f->app != NULL) {
        int rc = app_eof(f->app, side, false);
        if (rc != APP_HALF_CLOSE) {
            relay_after(w, f, side, rc);
            return;
        }
    }
    if (f->tls[side ^ 1] != NULL && !o->shut_done && !o->shut_pending) {
        /* A FIN without close_notify: close the other leg cleanly all the same. */
        (void)leg_close_notify(w, f, side ^ 1);
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
    if (relay_retry(w, f, true))
        return;
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
    if (side == SOTH_LEG_UPSTREAM && f->up_redial == UP_REDIAL_PARK) {
        f->up_park_fin = true;
        relay_park_step(w, f);
        return;
    }
    if (f->app_done && side == SOTH_LEG_CLIENT)
        timer_set(&w->timers, &f->timer, now_ms() + SOTH_LINGER_MS); /* wait for the FIN */
    relay_check_done(w, f);
}

void relay_timeout(struct worker *w, struct flow *f)
{
    if (up_redialing(f->up_redial)) {
        relay_redial_fail(w, f);
        return;
    }
    if (f->up_redial == UP_REDIAL_PARK) {
        /* The origin did not close within SOTH_LINGER_MS: stop reading it; the socket closes
         * once the read is cancelled. */
        conn_pause_recv(w, f, SOTH_LEG_UPSTREAM);
    }
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

/*
 * While the retry runs the client's reads are paused; a one-shot poll on its socket for
 * POLLERR|POLLHUP only (what a reset raises) ends the flow at once instead of at the retry's
 * end. Not POLLIN: the client may send more, or half-close (FIN), and neither ends the retry.
 */
static void redial_poll_arm(struct worker *w, struct flow *f)
{
    struct conn *c = &f->c[SOTH_LEG_CLIENT];
    if (f->up_redial_poll || c->fd < 0)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_poll_add(sqe, c->fd, POLLERR | POLLHUP);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_POLL, SOTH_LEG_CLIENT, f->slot, f->gen));
    f->up_redial_poll = true;
    f->pending++;
}

/** The retry ended: the poll must not fire later (its CQE, -ECANCELED, drops pending). */
static void redial_poll_cancel(struct worker *w, struct flow *f)
{
    if (!f->up_redial_poll)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_cancel64(sqe, ud_pack(OP_POLL, SOTH_LEG_CLIENT, f->slot, f->gen), 0);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, SOTH_LEG_CLIENT, f->slot, f->gen));
}

void relay_redial_poll(struct worker *w, struct flow *f, int res)
{
    f->up_redial_poll = false;
    f->pending--;
    if (res <= 0 || !(res & (POLLERR | POLLHUP)) || f->state != FS_RELAY ||
        f->up_redial == UP_REDIAL_NONE)
        return; /* cancelled, or the retry ended (the client's recv sees the reset then) */
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id,
             "client reset during the upstream retry (poll 0x%x)", (unsigned)res);
    /* As the client's recv error would be taken: the half-made upstream connection goes with
     * the flow (flow_close cancels what is in flight on it, flow_free closes it). */
    relay_recv_error(w, f, SOTH_LEG_CLIENT);
}

/*
 * docs/http1.md "Upstream connection pool", retry. A connection taken from the pool that the
 * origin closes (close_notify, FIN, reset, send error) before any plaintext came from it is
 * replaced once by a fresh one, silently (no second tls_handshake_started: the side reported
 * its pooled connection), when the HTTP layer says the request may be sent again and every
 * plaintext byte sent on it is still held in f->replay. The steps: the old socket's ops end
 * (UP_REDIAL_DRAIN, client reads paused, a client reset seen at once by redial_poll_arm's
 * poll), it is closed with its TLS conn (whose session resumes the new one), connect
 * (UP_REDIAL_CONNECT), handshake with the same name and offer (UP_REDIAL_TLS), the same ALPN
 * required, the replay written, reads resumed. Any failure or the deadline ends as the old
 * connection would have: relay_upstream_gone's 502.
 */
static bool relay_retry(struct worker *w, struct flow *f, bool reset)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    if (!f->up_pooled || f->up_heard || f->up_retried || f->up_replay_over ||
        f->up_redial != UP_REDIAL_NONE || f->state != FS_RELAY || f->app == NULL || f->app_done ||
        f->tls[SOTH_LEG_UPSTREAM] == NULL || u->shut_done || u->shut_pending || w->stopping ||
        !app_upstream_retryable(f->app))
        return false;
    struct soth_iov a = soth_tls_conn_alpn(f->tls[SOTH_LEG_UPSTREAM]);
    f->up_alpn_h11 = alpn_is(a, "http/1.1");
    f->up_redial = UP_REDIAL_DRAIN;
    f->up_redial_eof = false;
    f->up_redial_reset = reset;
    u->eof_in = false;
    if (f->first_eof == SOTH_LEG_UPSTREAM)
        f->first_eof = 0xff;
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id,
             "pooled upstream connection closed before answering: retrying");
    conn_pause_recv(w, f, SOTH_LEG_CLIENT);
    conn_pause_recv(w, f, SOTH_LEG_UPSTREAM);
    redial_poll_arm(w, f);
    timer_set(&w->timers, &f->timer,
              now_ms() + w->cfg->timeouts.connect_ms + w->cfg->timeouts.tls_handshake_ms);
    return true; /* relay_redial_step goes on once nothing is in flight on the old socket */
}

void relay_redial_fail(struct worker *w, struct flow *f)
{
    if (f->up_wake) {
        wake_fail(w, f);
        return;
    }
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "upstream retry failed");
    redial_poll_cancel(w, f);
    bool eof = f->up_redial_eof;
    f->up_redial = UP_REDIAL_NONE;
    f->up_retried = true;
    leg_replay_free(w, f);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.idle_ms);
    conn_resume_recv(w, f, SOTH_LEG_CLIENT);
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    u->recv_paused = false;
    if (f->up_redial_reset) {
        relay_upstream_gone(w, f);
    } else {
        /* the old connection's FIN or close_notify, as it would have been taken */
        u->eof_in = true;
        u->connected = false; /* nothing toward the half-made new one */
        if (f->first_eof == 0xff)
            f->first_eof = SOTH_LEG_UPSTREAM;
        relay_eof(w, f, SOTH_LEG_UPSTREAM);
    }
    if (eof && f->state == FS_RELAY && !f->app_done)
        relay_eof(w, f, SOTH_LEG_CLIENT);
}

void relay_redial_step(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    if (f->up_redial != UP_REDIAL_DRAIN || f->state != FS_RELAY || u->recv_armed ||
        u->send_inflight)
        return;
    conn_q_clear(&w->segs, u);
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
    soth_tls_conn_free(f->tls[SOTH_LEG_UPSTREAM]);
    f->tls[SOTH_LEG_UPSTREAM] = NULL;
    u->connected = u->eof_in = u->shut_pending = u->shut_done = false;
    u->recv_paused = u->recv_wait_buf = false;
    if (upstream_dial(w, f) < 0) {
        relay_redial_fail(w, f);
        return;
    }
    f->up_redial = UP_REDIAL_CONNECT;
}

void relay_redial_connected(struct worker *w, struct flow *f, int res)
{
    f->up_dialing = false;
    if (f->up_redial != UP_REDIAL_CONNECT || f->state != FS_RELAY)
        return;
    if (res < 0) {
        relay_redial_fail(w, f);
        return;
    }
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    u->connected = true;
    /* The same name and ALPN offer as the pooled connection's (its key). */
    struct soth_iov alpn[UPOOL_ALPN_MAX / 2];
    size_t n_alpn = 0;
    for (size_t i = 0; i < f->up_alpn_len && n_alpn < UPOOL_ALPN_MAX / 2;) {
        size_t len = (uint8_t)f->up_alpn[i];
        alpn[n_alpn++] = soth_iov(f->up_alpn + i + 1, len);
        i += 1 + len;
    }
    struct soth_tls_conn *t = NULL;
    if (soth_tls_conn_new_client(w->tls, soth_iov(f->ev.server_host, f->ev.server_host_len), alpn,
                                 n_alpn, &t) < 0) {
        relay_redial_fail(w, f);
        return;
    }
    f->tls[SOTH_LEG_UPSTREAM] = t;
    f->up_redial = UP_REDIAL_TLS;
    int rc = soth_tls_conn_handshake(t);
    if ((rc < 0 && rc != SOTH_E_INCOMPLETE) || !leg_flush(w, f, SOTH_LEG_UPSTREAM)) {
        relay_redial_fail(w, f);
        return;
    }
    conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
}

/* The fresh connection is up: the replay goes out, then the relay goes on as before. */
static void redial_done(struct worker *w, struct flow *f)
{
    if (f->up_wake) {
        wake_done(w, f);
        return;
    }
    struct soth_tls_conn *t = f->tls[SOTH_LEG_UPSTREAM];
    struct soth_iov a = soth_tls_conn_alpn(t);
    if (alpn_is(a, "http/1.1") != f->up_alpn_h11 || (!f->up_alpn_h11 && a.len > 0)) {
        relay_redial_fail(w, f);
        return;
    }
    for (uint32_t off = 0; off < f->replay_len; off += SOTH_BUF_SIZE) {
        uint32_t k = f->replay_len - off < SOTH_BUF_SIZE ? f->replay_len - off : SOTH_BUF_SIZE;
        if (soth_tls_conn_write(t, f->replay[off / SOTH_BUF_SIZE], k) < 0) {
            relay_redial_fail(w, f);
            return;
        }
    }
    bool eof = f->up_redial_eof;
    redial_poll_cancel(w, f);
    f->up_redial = UP_REDIAL_NONE;
    f->up_retried = true;
    f->up_requests = 0;
    leg_replay_free(w, f);
    upool_count(&w->pool, UPOOL_RETRIED);
    f->last_active_ms = now_ms();
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.idle_ms);
    if (!leg_flush(w, f, SOTH_LEG_UPSTREAM)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    f->c[SOTH_LEG_CLIENT].recv_paused = false;
    conn_arm_recv(w, f, SOTH_LEG_CLIENT);
    /* Application data may have come with the end of the handshake. */
    if (!relay_pump(w, f, SOTH_LEG_UPSTREAM))
        return;
    if (eof && f->state == FS_RELAY && !f->app_done)
        relay_eof(w, f, SOTH_LEG_CLIENT);
}

void relay_redial_recv(struct worker *w, struct flow *f, struct io_uring_cqe *cqe)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        u->recv_armed = false;
        f->pending--;
    }
    if (cqe->res > 0) {
        unsigned bid = buf_take(&w->io, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        f->bytes[SOTH_LEG_UPSTREAM] += (uint32_t)cqe->res;
        SOTH_METRIC_ADD(w->m->bytes_server_to_client, cqe->res);
        if (f->up_redial != UP_REDIAL_TLS) {
            buf_put(&w->io, bid); /* the old connection's last words */
        } else {
            struct soth_tls_conn *t = f->tls[SOTH_LEG_UPSTREAM];
            int rc = soth_tls_conn_feed(t, buf_addr(&w->io, bid), (size_t)cqe->res);
            if (rc >= 0)
                rc = soth_tls_conn_handshake(t);
            soth_tls_conn_feed_done(t);
            buf_put(&w->io, bid);
            if (rc == 0 || rc == SOTH_E_INCOMPLETE) {
                if (!leg_flush(w, f, SOTH_LEG_UPSTREAM))
                    rc = SOTH_E_NOMEM;
            }
            if (rc == 0) {
                uint32_t gen = f->gen;
                redial_done(w, f);
                if (f->gen == gen && !more && f->state == FS_RELAY)
                    conn_arm_recv(w, f, SOTH_LEG_UPSTREAM); /* the multishot recv ended */
                return;
            }
            if (rc != SOTH_E_INCOMPLETE) {
                relay_redial_fail(w, f);
                return;
            }
        }
    } else if (cqe->res == -ENOBUFS && f->up_redial == UP_REDIAL_TLS) {
        conn_wait_buf(w, f, SOTH_LEG_UPSTREAM);
    } else if (cqe->res != -ECANCELED && cqe->res != -ENOBUFS && f->up_redial == UP_REDIAL_TLS) {
        if (cqe->res == 0)
            u->eof_in = true;
        relay_redial_fail(w, f); /* the fresh connection closed or failed too */
        return;
    } else if (cqe->res <= 0 && cqe->res != -ENOBUFS && f->up_redial == UP_REDIAL_PARK) {
        u->eof_in = true; /* the parked connection's end: no new read */
    }
    if (f->up_redial == UP_REDIAL_PARK)
        relay_park_step(w, f);
    else if (f->up_redial == UP_REDIAL_DRAIN)
        relay_redial_step(w, f);
    else if (!more)
        conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
}

void relay_redial_sent(struct worker *w, struct flow *f, int res)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    u->send_inflight = false;
    f->pending--;
    if (f->up_redial == UP_REDIAL_DRAIN) {
        relay_redial_step(w, f);
        return;
    }
    if (f->up_redial == UP_REDIAL_PARK) {
        if (res < 0) {
            conn_q_clear(&w->segs, u); /* the origin is gone already: no FIN either */
            u->shut_pending = false;
            f->up_park_fin = true;
        } else {
            conn_q_sent(&w->segs, u, (uint64_t)res);
            conn_try_send(w, f, SOTH_LEG_UPSTREAM); /* the rest, then the FIN */
        }
        relay_park_step(w, f);
        return;
    }
    if (res < 0) {
        relay_redial_fail(w, f);
        return;
    }
    conn_q_sent(&w->segs, u, (uint64_t)res);
    conn_try_send(w, f, SOTH_LEG_UPSTREAM);
}

/*
 * docs/http2.md "Idle upstream connection". The HTTP/2 layer ended its upstream session of an
 * idle connection (its GOAWAY is queued): close_notify and FIN follow, the TLS state goes now,
 * and the socket closes once the FIN is out and the origin closed too (or SOTH_LINGER_MS
 * passed: relay_timeout cancels the read). Nothing is held for the upstream until a request
 * wakes it (relay_wake).
 */
static void relay_park(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id,
             "idle HTTP/2 upstream connection: closing it until the next request");
    w->trim.parks++; /* what it frees is given back by the worker's next trim */
    if (f->tls[SOTH_LEG_UPSTREAM] != NULL) {
        if (leg_close_notify(w, f, SOTH_LEG_UPSTREAM) < 0 ||
            !leg_queue_tls(w, f, SOTH_LEG_UPSTREAM)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        soth_tls_conn_free(f->tls[SOTH_LEG_UPSTREAM]); /* its session resumes the next one */
        f->tls[SOTH_LEG_UPSTREAM] = NULL;
    }
    f->up_redial = UP_REDIAL_PARK;
    f->up_park_fin = !u->connected || u->shut_done;
    if (u->connected && !u->shut_done) {
        u->shut_pending = true;
        conn_try_send(w, f, SOTH_LEG_UPSTREAM);
    }
    uint64_t linger = now_ms() + SOTH_LINGER_MS;
    if (f->timer.deadline_ms == 0 || linger < f->timer.deadline_ms)
        timer_set(&w->timers, &f->timer, linger);
    relay_park_step(w, f);
}

/* The parked socket closes once nothing is in flight on it. */
static void relay_park_step(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    if (f->up_redial != UP_REDIAL_PARK || f->state != FS_RELAY)
        return;
    if (u->send_inflight || u->shut_pending || !f->up_park_fin || u->recv_armed || f->up_dialing)
        return;
    conn_q_clear(&w->segs, u);
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
    u->connected = u->eof_in = u->shut_pending = u->shut_done = false;
    u->recv_paused = u->recv_wait_buf = false;
    f->up_park_fin = false;
    f->up_redial = UP_REDIAL_PARKED;
    if (f->app_done) {
        relay_check_done(w, f); /* the layer finished while the socket was closing */
        return;
    }
    if (f->up_wake_wanted) {
        f->up_wake_wanted = false;
        relay_wake(w, f);
    }
}

void relay_park_connected(struct worker *w, struct flow *f)
{
    f->up_dialing = false;
    relay_park_step(w, f);
}

/* The wake failed: the half-made connection closes as a parked one does, and the layer
 * refuses what waited (the client may retry it). */
static void wake_fail(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id,
             "idle HTTP/2 upstream connection: reconnecting failed");
    redial_poll_cancel(w, f);
    bool eof = f->up_redial_eof;
    f->up_wake = false;
    f->up_redial_eof = false;
    soth_tls_conn_free(f->tls[SOTH_LEG_UPSTREAM]);
    f->tls[SOTH_LEG_UPSTREAM] = NULL;
    conn_q_clear(&w->segs, u);
    u->connected = false; /* nothing toward it, not even a FIN */
    u->shut_pending = false;
    f->up_park_fin = true;
    f->up_redial = UP_REDIAL_PARK;
    if (u->recv_armed)
        conn_pause_recv(w, f, SOTH_LEG_UPSTREAM);
    if (f->up_dialing && u->fd >= 0) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel_fd(sqe, u->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, SOTH_LEG_UPSTREAM, f->slot, f->gen));
    }
    f->last_active_ms = now_ms();
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.idle_ms);
    conn_resume_recv(w, f, SOTH_LEG_CLIENT);
    relay_after(w, f, SOTH_LEG_CLIENT, app_upstream_opened(f->app, false));
    if (eof && f->state == FS_RELAY && !f->app_done)
        relay_eof(w, f, SOTH_LEG_CLIENT);
    relay_park_step(w, f);
}

/*
 * A request waits for the parked upstream: a new connection to the same address, TLS with
 * the same name offering h2 (verified as the first was), through the retry's steps
 * (UP_REDIAL_CONNECT, UP_REDIAL_TLS; client reads paused, a client reset seen at once), then
 * the layer reads what waited (wake_done). Silent in the events: the upstream side reported
 * its handshake once.
 */
static void relay_wake(struct worker *w, struct flow *f)
{
    if (f->up_redial == UP_REDIAL_PARK) {
        f->up_wake_wanted = true; /* once the old socket is closed; no more lingering */
        conn_pause_recv(w, f, SOTH_LEG_CLIENT);
        conn_pause_recv(w, f, SOTH_LEG_UPSTREAM);
        return;
    }
    if (f->up_redial != UP_REDIAL_PARKED)
        return;
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id,
             "idle HTTP/2 upstream connection: a request came, reconnecting");
    f->up_wake = true;
    f->up_redial_eof = false;
    f->up_redial_reset = false;
    memcpy(f->up_alpn, "\x02h2", 3);
    f->up_alpn_len = 3;
    conn_pause_recv(w, f, SOTH_LEG_CLIENT);
    redial_poll_arm(w, f);
    f->up_redial = UP_REDIAL_CONNECT;
    timer_set(&w->timers, &f->timer,
              now_ms() + w->cfg->timeouts.connect_ms + w->cfg->timeouts.tls_handshake_ms);
    if (w->stopping || upstream_dial(w, f) < 0) {
        wake_fail(w, f);
        return;
    }
    f->up_dialing = true;
}

/* The new connection is up with h2: the layer reads what waited, the relay goes on. */
static void wake_done(struct worker *w, struct flow *f)
{
    struct soth_iov a = soth_tls_conn_alpn(f->tls[SOTH_LEG_UPSTREAM]);
    if (!alpn_is(a, "h2")) {
        wake_fail(w, f);
        return;
    }
    bool eof = f->up_redial_eof;
    redial_poll_cancel(w, f);
    f->up_redial = UP_REDIAL_NONE;
    f->up_wake = false;
    f->up_redial_eof = false;
    f->last_active_ms = now_ms();
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.idle_ms);
    if (!leg_flush(w, f, SOTH_LEG_UPSTREAM)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    conn_resume_recv(w, f, SOTH_LEG_CLIENT);
    relay_after(w, f, SOTH_LEG_CLIENT, app_upstream_opened(f->app, true));
    if (f->state != FS_RELAY || f->app_done)
        return;
    /* Application data may have come with the end of the handshake. */
    if (!relay_pump(w, f, SOTH_LEG_UPSTREAM))
        return;
    if (eof && f->state == FS_RELAY && !f->app_done)
        relay_eof(w, f, SOTH_LEG_CLIENT);
}
