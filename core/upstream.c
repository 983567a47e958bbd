/* A flow's upstream connection: resolve, connect, and what the connect brings (core/upstream.h). */
#include <errno.h>
#include <netinet/tcp.h>
#include <string.h>

#include "answer.h"
#include "app.h"
#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "flowtab.h"
#include "intercept.h"
#include "iobuf.h"
#include "relay.h"
#include "resolver.h"
#include "socks_answer.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

static void upstream_failed(struct worker *w, struct flow *f, int err, bool timeout)
{
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "upstream %.*s:%u: %s",
             (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
             timeout ? "connect timeout" : soth_strerror(err));
    /* Bytes the client sent ahead for the upstream are dropped with the flow. */
    conn_q_clear(&w->segs, &f->c[SOTH_LEG_UPSTREAM]);
    if (f->is_socks) {
        socks_failed(w, f, err, timeout);
        return;
    }
    if (w->cfg->mode == SOTH_MODE_TRANSPARENT) {
        flow_close(w, f, SOTH_CLOSE_UPSTREAM_CONNECT_FAILED);
        return;
    }
    if (timeout)
        flow_answer_text(w, f, 504, "Gateway Timeout", SOTH_CLOSE_UPSTREAM_CONNECT_FAILED,
                         "soth-mitm: upstream %.*s:%u did not answer within %u ms\n",
                         (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
                         w->cfg->timeouts.connect_ms);
    else
        flow_answer_text(w, f, 502, "Bad Gateway", SOTH_CLOSE_UPSTREAM_CONNECT_FAILED,
                         "soth-mitm: cannot connect to upstream %.*s:%u: %s\n",
                         (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
                         soth_strerror(err));
}

static void upstream_connect(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    int fd = socket(f->upstream_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        upstream_failed(w, f, -errno, false);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    u->fd = fd;
    flow_set_state(f, FS_CONNECTING);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.connect_ms);
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&f->upstream_addr, f->upstream_addr_len);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CONNECT, SOTH_LEG_UPSTREAM, f->slot, f->gen));
    f->pending++;
}

void upstream_start(struct worker *w, struct flow *f)
{
    struct soth_iov host = soth_iov(f->ev.server_host, f->ev.server_host_len);
    if (resolve_fast(w->cfg, &w->dns, host, f->upstream_port, &f->upstream_addr,
                     &f->upstream_addr_len)) {
        upstream_connect(w, f);
        return;
    }
    struct resolve_req rq;
    rq.slot = f->slot;
    rq.gen = f->gen;
    rq.port = f->upstream_port;
    rq.host_len = (uint16_t)host.len;
    memcpy(rq.host, host.base, host.len);
    if (soth_resolver_submit(w, &rq) < 0) {
        upstream_failed(w, f, -EAGAIN, false);
        return;
    }
    flow_set_state(f, FS_RESOLVING);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.connect_ms);
}

void upstream_resolved(struct worker *w, const struct resolve_resp *rs)
{
    struct flow *f = flow_table_find(&w->ft, rs->slot, rs->gen);
    if (f == NULL || f->state != FS_RESOLVING)
        return;
    if (rs->err < 0) {
        upstream_failed(w, f, rs->err, false);
        return;
    }
    struct soth_iov host = soth_iov(f->ev.server_host, f->ev.server_host_len);
    dns_cache_put(&w->dns, host, &rs->addr, rs->addr_len, now_ms());
    memcpy(&f->upstream_addr, &rs->addr, rs->addr_len);
    f->upstream_addr_len = rs->addr_len;
    upstream_connect(w, f);
}

void upstream_connected(struct worker *w, struct flow *f, int res)
{
    if (f->state != FS_CONNECTING)
        return;
    if (res < 0) {
        struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_close(sqe, u->fd);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, SOTH_LEG_UPSTREAM, f->slot, f->gen));
        u->fd = -1;
        upstream_failed(w, f, res, false);
        return;
    }
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    u->connected = true;
    bool intercept = flow_intercepting(w, f);
    flow_set_state(f, intercept ? FS_HELLO : FS_RELAY);
    timer_set(&w->timers, &f->timer,
              now_ms() +
                  (intercept ? w->cfg->timeouts.tls_handshake_ms : w->cfg->timeouts.idle_ms));
    if (f->is_connect || f->is_socks) {
        if (!(f->is_socks ? socks_established(w, f) : answer_established(w, f))) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
    }
    if (intercept) {
        /* The ClientHello may have come with the CONNECT: see whether it is complete. */
        conn_arm_recv(w, f, SOTH_LEG_CLIENT);
        intercept_hello(w, f);
        return;
    }
    if (f->app != NULL) {
        /* Plain HTTP: a request completed before the connect already runs its
         * timeouts.response_header_ms (core/relay.c keeps the timer from here on). */
        uint64_t hd = app_deadline(f->app);
        if (hd != 0 && hd < f->timer.deadline_ms)
            timer_set(&w->timers, &f->timer, hd);
    }
    conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
    conn_arm_recv(w, f, SOTH_LEG_CLIENT);
    conn_try_send(w, f, SOTH_LEG_UPSTREAM);
}

void upstream_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    if (flow_intercepting(w, f)) {
        /* The ClientHello may arrive before the upstream is up: keep it for the peek. */
        intercept_hello_bytes(w, f, buf_addr(&w->io, bid), len);
        buf_put(&w->io, bid);
        return;
    }
    if (f->app != NULL) {
        relay_plain_head(w, f, buf_addr(&w->io, bid), len);
        buf_put(&w->io, bid);
        return;
    }
    relay_data(w, f, side, bid, len); /* queued for the upstream as they are */
}

void upstream_eof(struct worker *w, struct flow *f, unsigned side)
{
    if (side == SOTH_LEG_CLIENT) {
        /* Half-close before the upstream is up: forward the FIN once connected. */
        f->c[SOTH_LEG_UPSTREAM].shut_pending = true;
    }
}

void upstream_timeout(struct worker *w, struct flow *f)
{
    if (f->state == FS_CONNECTING) {
        /* Cancel the connect; its CQE (-ECANCELED) then finds the flow past CONNECTING. */
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel64(sqe, ud_pack(OP_CONNECT, SOTH_LEG_UPSTREAM, f->slot, f->gen), 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, SOTH_LEG_UPSTREAM, f->slot, f->gen));
    }
    upstream_failed(w, f, -ETIMEDOUT, true);
}
