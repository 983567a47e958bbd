/* A flow's end (core/flow.h): the close path and the release of everything it holds. */
#include <string.h>

#include "app.h"
#include "conn.h"
#include "flow.h"
#include "flowtab.h"
#include "iobuf.h"
#include "leg.h"
#include "timer.h"
#include "worker.h"

const char *const flow_state_names[FS_COUNT] = {
    "head",     "socks", "resolving", "connecting", "proxy",   "hello", "tls_up",
    "tls_down", "relay", "answer",    "linger",     "closing", "free",
};

/* docs/http1.md "Upstream connection pool": nothing is in flight on the upstream socket now
 * (pending is 0); the pool takes it with its TLS conn when nothing came from it since the HTTP
 * layer left it reusable. */
static void upstream_keep(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    struct soth_tls_conn *t = f->tls[SOTH_LEG_UPSTREAM];
    f->up_keep = false;
    /* one that carried no request (its client left first) is not kept: a pooled leg reports
     * the requests its connection carried, a positive `reused` (docs/events.md) */
    if (u->fd < 0 || t == NULL || u->q_count > 0 || w->stopping || f->up_requests == 0 ||
        soth_tls_conn_in_pending(t) != 0 || soth_tls_conn_out_pending(t) != 0)
        return;
    struct upool_key k;
    upool_key_set(&k, &f->upstream_addr, f->upstream_addr_len, f->up_alpn, f->up_alpn_len);
    soth_tls_conn_set_sink(t, NULL, NULL); /* f's queue goes; the pool's owner drains it */
    upool_put(&w->pool, &k, u->fd, t, f->up_requests, now_ms());
    u->fd = -1;
    f->tls[SOTH_LEG_UPSTREAM] = NULL;
}

void flow_free(struct worker *w, struct flow *f)
{
    if (f->up_keep)
        upstream_keep(w, f);
    for (unsigned s = 0; s < 2; s++) {
        struct conn *c = &f->c[s];
        conn_q_clear(&w->segs, c);
        if (c->fd >= 0) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_close(sqe, c->fd);
            io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, s, f->slot, f->gen));
            c->fd = -1;
        }
    }
    if (f->head != NULL) {
        chunk_put(&w->io, f->head);
        f->head = NULL;
    }
    if (f->answer != NULL) {
        chunk_put(&w->io, f->answer);
        f->answer = NULL;
    }
    pre_free(f);
    leg_replay_free(w, f);
    for (unsigned i = 0; i < 2; i++) {
        if (f->tls[i] != NULL) {
            soth_tls_conn_free(f->tls[i]);
            f->tls[i] = NULL;
        }
    }
    if (f->app != NULL) {
        app_free(f->app);
        f->app = NULL;
    }
    if (f->pol != NULL) {
        soth_policy_free(f->pol); /* the flow's reference */
        f->pol = NULL;
        f->route = NULL;
    }
    conn_unwait(w, f);
    timer_unlink(&w->timers, &f->timer);
    flow_table_release(&w->ft, f);
}

static enum soth_outcome outcome_of(enum soth_close_reason r)
{
    switch (r) {
    case SOTH_CLOSE_IDLE_TIMEOUT:
        return SOTH_OUTCOME_TIMEOUT;
    case SOTH_CLOSE_CLIENT_EOF:
        return SOTH_OUTCOME_CLIENT_ABORTED;
    case SOTH_CLOSE_RELAY_EOF:
        return SOTH_OUTCOME_UPSTREAM_ABORTED;
    default:
        return SOTH_OUTCOME_RESET;
    }
}

void flow_close(struct worker *w, struct flow *f, enum soth_close_reason reason)
{
    if (f->state == FS_CLOSING)
        return;
    if (f->app != NULL)
        app_abort(f->app, outcome_of(reason)); /* exchanges in flight end before the flow */
    soth_ev_stream_closed(&f->ev, reason, f->bytes[0], f->bytes[1]);
    SOTH_METRIC_ADD(w->m->active_connections, -1);
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "closed: %s",
             soth_close_reason_names[reason]);
    flow_set_state(f, FS_CLOSING);
    timer_unlink(&w->timers, &f->timer);
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    if (leg_cork_drop(w, f))
        f->up_keep = false; /* a request's bytes were still to be encrypted toward it */
    if (f->up_keep && (reason == SOTH_CLOSE_SHUTDOWN || u->q_count > 0 || u->send_inflight))
        f->up_keep = false; /* not kept: something is still on its way to the upstream */
    /* Cancel whatever is still in flight; the flow is freed when the last CQE arrives. */
    for (unsigned s = 0; s < 2; s++) {
        struct conn *c = &f->c[s];
        if (c->fd >= 0 && (c->recv_armed || c->send_inflight || f->pending > 0)) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, s, f->slot, f->gen));
        }
    }
    flow_maybe_free(w, f);
}
