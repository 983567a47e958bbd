/*
 * A flow's completions (core/flow_io.h). Common to every state: byte counts and activity,
 * taking and returning provided buffers, the multishot recv's re-arm, the send queue's advance
 * and backpressure release, FIN bookkeeping. Then state_ops[] says what the flow's state makes
 * of the event; each entry points into the room that owns the state (core/head.c,
 * core/upstream.c, core/intercept.c, core/relay.c, core/answer.c).
 */
#include <errno.h>
#include <stddef.h>

#include "answer.h"
#include "conn.h"
#include "flow.h"
#include "flow_io.h"
#include "head.h"
#include "intercept.h"
#include "iobuf.h"
#include "relay.h"
#include "socks.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

typedef void (*flow_data_fn)(struct worker *w, struct flow *f, unsigned side, unsigned bid,
                             uint32_t len);
typedef void (*flow_side_fn)(struct worker *w, struct flow *f, unsigned side);
typedef void (*flow_fn)(struct worker *w, struct flow *f);

/** What a state does with each completion. Never called in FS_CLOSING (checked first). */
struct state_ops {
    flow_data_fn data;       /* bytes from side in provided buffer bid (ownership taken) */
    flow_side_fn eof;        /* side sent FIN */
    flow_side_fn recv_error; /* side's recv failed (reset...), not -ENOBUFS or -ECANCELED */
    flow_side_fn send_error; /* a sendmsg toward side failed */
    flow_side_fn fin_sent;   /* our FIN toward side went out */
    flow_fn timeout;         /* the flow's deadline passed */
};

/* Answering or lingering: the client's further bytes are discarded. */
static void discard(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    buf_put(&w->io, bid);
}

static void ignore(struct worker *w, struct flow *f, unsigned side)
{
}

static void ignore_timeout(struct worker *w, struct flow *f)
{
}

static void relay_error(struct worker *w, struct flow *f, unsigned side)
{
    flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
}

/* The client went away while we answered: the answer's reason still holds. */
static void answer_over(struct worker *w, struct flow *f, unsigned side)
{
    answer_end(w, f);
}

static void answer_out(struct worker *w, struct flow *f, unsigned side)
{
    answer_fin_sent(w, f); /* our answer is out and our FIN sent */
}

#define HANDSHAKING                                                                                \
    {                                                                                              \
        intercept_data, intercept_eof, intercept_recv_error, relay_error, ignore,                  \
            intercept_timeout                                                                      \
    }
#define UPSTREAM_PENDING                                                                           \
    {                                                                                              \
        upstream_data, upstream_eof, relay_error, relay_error, ignore, upstream_timeout            \
    }
#define PROXY_PENDING                                                                              \
    {                                                                                              \
        proxy_data, proxy_eof, proxy_recv_error, proxy_send_error, ignore, proxy_timeout           \
    }
#define GONE                                                                                       \
    {                                                                                              \
        discard, ignore, ignore, ignore, ignore, ignore_timeout                                    \
    }

static const struct state_ops state_ops[FS_COUNT] = {
    [FS_HEAD] = {head_data, head_eof, head_eof, relay_error, ignore, head_timeout},
    [FS_SOCKS] = {socks_data, socks_eof, socks_eof, relay_error, ignore, socks_timeout},
    [FS_RESOLVING] = UPSTREAM_PENDING,
    [FS_CONNECTING] = UPSTREAM_PENDING,
    [FS_PROXY] = PROXY_PENDING,
    [FS_HELLO] = HANDSHAKING,
    [FS_TLS_UP] = HANDSHAKING,
    [FS_TLS_DOWN] = HANDSHAKING,
    [FS_RELAY] = {relay_data, relay_eof, relay_recv_error, relay_send_error, relay_fin_sent,
                  relay_timeout},
    [FS_ANSWER] = {discard, ignore, answer_over, answer_over, answer_out, answer_end},
    [FS_LINGER] = {discard, answer_over, answer_over, relay_error, ignore, answer_end},
    [FS_CLOSING] = GONE,
    [FS_FREE] = GONE,
};

static void on_recv_data(struct worker *w, struct flow *f, unsigned side, unsigned bid,
                         uint32_t len)
{
    if (side == SOTH_LEG_UPSTREAM && f->answer != NULL) {
        /* The upstream failed its handshake: we answer the client ourselves. */
        buf_put(&w->io, bid);
        return;
    }
    f->bytes[side] += len;
    /* docs/soth.md "Budgets": a tunnel's bytes, both ways (the HTTP layer counts bodies) */
    if (f->budget_slot >= 0 && f->action == SOTH_ACTION_TUNNEL)
        soth_budget_add_bytes(f->bgt, w->idx, f->identity, f->budget_slot, now_ms(), len);
    if (side == SOTH_LEG_CLIENT)
        SOTH_METRIC_ADD(w->m->bytes_client_to_server, len);
    else
        SOTH_METRIC_ADD(w->m->bytes_server_to_client, len);
    f->last_active_ms = now_ms();
    state_ops[f->state].data(w, f, side, bid, len);
}

static void on_recv_eof(struct worker *w, struct flow *f, unsigned side)
{
    f->c[side].eof_in = true;
    if (side == SOTH_LEG_UPSTREAM && f->answer != NULL)
        return;
    if (f->first_eof == 0xff)
        f->first_eof = (uint8_t)side;
    state_ops[f->state].eof(w, f, side);
}

void flow_on_recv(struct worker *w, struct flow *f, unsigned side, struct io_uring_cqe *cqe)
{
    struct conn *c = &f->c[side];
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (side == SOTH_LEG_UPSTREAM && f->up_redial != UP_REDIAL_NONE && f->state == FS_RELAY) {
        relay_redial_recv(w, f, cqe);
        return;
    }
    /* docs/http1.md "Upstream connection pool": a connection that spoke after its last
     * response (bytes, FIN, error) is not kept */
    if (side == SOTH_LEG_UPSTREAM && cqe->res != -ECANCELED)
        f->up_keep = false;
    if (!more) {
        c->recv_armed = false;
        f->pending--;
    }
    if (cqe->res > 0) {
        SOTH_BUG_ON(!(cqe->flags & IORING_CQE_F_BUFFER));
        conn_note_recv(c, (uint32_t)cqe->res);
        unsigned bid = buf_take(&w->io, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        if (f->state == FS_CLOSING)
            buf_put(&w->io, bid);
        else
            on_recv_data(w, f, side, bid, (uint32_t)cqe->res);
    } else if (cqe->res == 0) {
        if (f->state != FS_CLOSING)
            on_recv_eof(w, f, side);
    } else if (cqe->res == -ENOBUFS) {
        conn_wait_buf(w, f, side);
    } else if (side == SOTH_LEG_UPSTREAM && f->answer != NULL) {
        /* ignored: the upstream already failed its handshake */
    } else if (cqe->res != -ECANCELED && f->state != FS_CLOSING) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "recv %s: %s",
                 side ? "upstream" : "client", soth_strerror(cqe->res));
        state_ops[f->state].recv_error(w, f, side);
    }
    /* A multishot recv that ended on its own (buffer pressure, kernel limits) is re-armed. */
    if (!more && f->state != FS_CLOSING)
        conn_arm_recv(w, f, side);
    if (f->up_redial == UP_REDIAL_DRAIN && f->state == FS_RELAY)
        relay_redial_step(w, f); /* a retry began here (core/relay.c) */
}

void flow_on_send(struct worker *w, struct flow *f, unsigned side, int res)
{
    struct conn *c = &f->c[side];
    if (side == SOTH_LEG_UPSTREAM && f->up_redial != UP_REDIAL_NONE && f->state == FS_RELAY) {
        relay_redial_sent(w, f, res);
        return;
    }
    c->send_inflight = false;
    f->pending--;
    if (res < 0 && side == SOTH_LEG_UPSTREAM)
        f->up_keep = false;
    if (f->state == FS_CLOSING)
        return;
    if (res < 0) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "send %s: %s",
                 side ? "upstream" : "client", soth_strerror(res));
        state_ops[f->state].send_error(w, f, side);
        if (f->up_redial == UP_REDIAL_DRAIN && f->state == FS_RELAY)
            relay_redial_step(w, f); /* a retry began here (core/relay.c) */
        return;
    }
    conn_q_sent(&w->segs, c, (uint64_t)res);
    f->last_active_ms = now_ms();
    /* The source of these bytes may read again. */
    if (!relay_drained(w, f, side))
        return;
    if (c->q_count > 0) {
        conn_try_send(w, f, side);
        return;
    }
    if (c->shut_pending) {
        conn_submit_shutdown(w, f, side);
        return;
    }
    relay_check_done(w, f);
}

void flow_on_shutdown(struct worker *w, struct flow *f, unsigned side, int res)
{
    f->pending--;
    if (f->state == FS_CLOSING)
        return;
    state_ops[f->state].fin_sent(w, f, side);
}

void flow_on_timer(void *ctx, struct timer_entry *t)
{
    struct worker *w = ctx;
    struct flow *f = (struct flow *)((char *)t - offsetof(struct flow, timer));
    state_ops[f->state].timeout(w, f);
    flow_maybe_free(w, f);
}
