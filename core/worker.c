/*
 * One worker: a pinned thread with its own io_uring, listening socket (SO_REUSEPORT, multishot
 * accept), provided-buffer ring (multishot recv), flow table, owned chunks and timer wheel.
 * Nothing here is shared with other workers on the data path.
 *
 * Data path of a relayed byte: a multishot recv lands it in a provided buffer; the buffer is
 * queued, as is, toward the other socket (struct seg with its buffer id) and sent with
 * sendmsg; the buffer returns to the ring when the send completes. No copy.
 *
 * Backpressure: when the queue toward a socket holds more than SOTH_HIGH_WM bytes or
 * SOTH_OUTQ_PAUSE segments, the multishot recv of the source is cancelled (it cannot be
 * paused) and re-armed once the queue drains below SOTH_LOW_WM.
 *
 * Lifetime: every tracked SQE counts in flow->pending; a flow is freed only when it is closing
 * and pending is zero, so no CQE can reach a reused slot (the generation in user_data catches
 * the untracked ones).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "answer.h"
#include "app.h"
#include "conn.h"
#include "engine.h"
#include "flow.h"
#include "flowtab.h"
#include "iobuf.h"
#include "learn.h"
#include "relay.h"
#include "intercept.h"
#include "leg.h"
#include "decide.h"
#include "upstream.h"
#include "resolver.h"
#include "spsc.h"
#include "timer.h"
#include "worker.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

/* ------------------------------------------------------------------------------------------
 * decisions and the proxy request head (regular mode)
 * ------------------------------------------------------------------------------------------ */

static bool header_is(const struct soth_header *h, const char *name)
{
    return soth_iov_is_ci(h->name, name);
}

/**
 * A complete head sits in buf[0..head_len); extra bytes after it (already from the client,
 * for the upstream) are handed over by the caller.
 */
static bool flow_on_head(struct worker *w, struct flow *f, const struct soth_proxy_head *h)
{
    soth_ev_flow_set_server(&f->ev, h->host, h->port);
    soth_ev_connect_received(&f->ev, h->method, h->target);
    f->upstream_port = h->port;
    f->is_connect = h->is_connect;
    if (!h->is_connect)
        soth_ev_flow_set_protocol(&f->ev, SOTH_PROTO_HTTP1);
    struct soth_iov rule;
    enum soth_action a = flow_decide(w, f, &rule);
    if (a == SOTH_ACTION_BLOCK) {
        flow_block(w, f, rule);
        return false;
    }
    if (!h->is_connect && a == SOTH_ACTION_INTERCEPT) {
        /* Absolute-form plain HTTP, parsed: the HTTP layer takes the whole head (the caller
         * feeds it) and sends the upstream origin-form. */
        struct app_env env = {
            .cfg = w->cfg,
            .ev = &f->ev,
            .m = w->m,
            .origin_form = true,
            .ctx = f,
            .send = leg_send,
        };
        f->app = app_new(APP_H1, &env);
        if (f->app == NULL) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
    } else if (!h->is_connect) {
        /*
         * Absolute-form plain HTTP, tunnelled: the upstream gets origin-form, without the
         * hop-by-hop Proxy-* fields; later requests on the connection are relayed as sent.
         */
        struct conn *u = &f->c[SIDE_UPSTREAM];
        bool ok = conn_queue_copy(&w->segs, u, h->method.base, h->method.len) &&
                  conn_queue_copy(&w->segs, u, " ", 1) &&
                  conn_queue_copy(&w->segs, u, h->path.base, h->path.len) &&
                  conn_queue_copy(&w->segs, u, " ", 1) &&
                  conn_queue_copy(&w->segs, u, h->version.base, h->version.len) &&
                  conn_queue_copy(&w->segs, u, "\r\n", 2);
        bool have_host = false;
        for (size_t i = 0; ok && i < h->n_headers; i++) {
            const struct soth_header *hd = &h->headers[i];
            if (header_is(hd, "proxy-connection") || header_is(hd, "proxy-authorization"))
                continue;
            if (header_is(hd, "host"))
                have_host = true;
            ok = conn_queue_copy(&w->segs, u, hd->name.base, hd->name.len) &&
                 conn_queue_copy(&w->segs, u, ": ", 2) &&
                 conn_queue_copy(&w->segs, u, hd->value.base, hd->value.len) &&
                 conn_queue_copy(&w->segs, u, "\r\n", 2);
        }
        if (ok && !have_host) {
            char hostline[300];
            /* RFC 9112 3.2: Host is the target URI's authority (brackets for IPv6). */
            bool dflt = h->port == (h->scheme.len == 5 ? 443 : 80);
            char port[8] = "";
            if (!dflt)
                snprintf(port, sizeof(port), ":%u", h->port);
            int n = snprintf(hostline, sizeof(hostline), "Host: %s%.*s%s%s\r\n",
                             h->host_is_ipv6 ? "[" : "", (int)h->host.len, h->host.base,
                             h->host_is_ipv6 ? "]" : "", port);
            ok = conn_queue_copy(&w->segs, u, hostline, (size_t)n);
        }
        ok = ok && conn_queue_copy(&w->segs, u, "\r\n", 2);
        if (!ok) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
    }
    upstream_start(w, f);
    return f->state != FS_CLOSING;
}

static void flow_head_failed(struct worker *w, struct flow *f, ssize_t rc, const char *code,
                             const char *detail)
{
    if (code == NULL)
        code = "malformed";
    if (detail == NULL)
        detail = "malformed request head";
    soth_ev_connect_parse_failed(&f->ev, soth_iov(code, strlen(code)),
                                 soth_iov(detail, strlen(detail)));
    if (rc == SOTH_E_TOO_LARGE && strcmp(code, "line_too_long") != 0)
        flow_answer_text(w, f, 431, "Request Header Fields Too Large", SOTH_CLOSE_PARSE_FAILED,
                         "soth-mitm: request head too large (%s)\n", detail);
    else
        flow_answer_text(w, f, 400, "Bad Request", SOTH_CLOSE_PARSE_FAILED,
                         "soth-mitm: bad request: %s (%s)\n", detail, code);
}

/** Client bytes while in FS_HEAD. Takes ownership of provided buffer bid. */
static void flow_head_input(struct worker *w, struct flow *f, unsigned bid, uint32_t len)
{
    char *data = buf_addr(&w->io, bid);
    struct soth_proxy_head h;
    const char *code = NULL, *detail = NULL;
    ssize_t rc;

    if (f->head == NULL) {
        /* Usual case: the whole head in one buffer, parsed where it lies. */
        rc =
            soth_proxy_head_parse(data, len, SOTH_HEAD_STRICT, &w->head_limits, &h, &code, &detail);
        if (rc == SOTH_E_INCOMPLETE) {
            f->head = chunk_get(&w->io);
            if (f->head == NULL) {
                buf_put(&w->io, bid);
                flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
                return;
            }
            memcpy(f->head, data, len);
            f->head_len = len;
            buf_put(&w->io, bid);
            return;
        }
        if (rc < 0) {
            buf_put(&w->io, bid);
            flow_head_failed(w, f, rc, code, detail);
            return;
        }
        if (!flow_on_head(w, f, &h)) {
            buf_put(&w->io, bid);
            return;
        }
        if (f->app != NULL) {
            /* Plain HTTP through the HTTP layer: the head and whatever followed it. */
            relay_plain_head(w, f, data, len);
            buf_put(&w->io, bid);
            return;
        }
        if ((size_t)rc == len) {
            buf_put(&w->io, bid);
            return;
        }
        /* Bytes after the head (an early ClientHello, a body) wait for the upstream as is. */
        if (flow_intercepting(w, f)) {
            intercept_hello_bytes(w, f, data + rc, len - (uint32_t)rc);
            buf_put(&w->io, bid);
            return;
        }
        conn_queue(&w->segs, &f->c[SIDE_UPSTREAM], data, (uint32_t)rc, len - (uint32_t)rc,
                   (int32_t)bid);
        return;
    }

    /* A head split over reads is gathered in one chunk, bounded by SOTH_HEAD_MAX. */
    uint32_t room = SOTH_HEAD_MAX - f->head_len;
    uint32_t n = len < room ? len : room;
    memcpy(f->head + f->head_len, data, n);
    f->head_len += n;
    rc = soth_proxy_head_parse(f->head, f->head_len, SOTH_HEAD_STRICT, &w->head_limits, &h, &code,
                               &detail);
    if (rc == SOTH_E_INCOMPLETE && f->head_len >= SOTH_HEAD_MAX) {
        rc = SOTH_E_TOO_LARGE;
        code = "head_too_large";
        detail = "request head exceeds the proxy's limit";
    }
    if (rc == SOTH_E_INCOMPLETE) {
        buf_put(&w->io, bid);
        return;
    }
    if (rc < 0) {
        buf_put(&w->io, bid);
        flow_head_failed(w, f, rc, code, detail);
    } else if (flow_on_head(w, f, &h)) {
        char *proxy_head = f->head;
        uint32_t proxy_len = f->head_len;
        f->head = NULL;
        f->head_len = 0;
        if (f->app != NULL) {
            relay_plain_head(w, f, proxy_head, proxy_len);
            if (n < len && f->state != FS_CLOSING && !f->app_done)
                relay_plain_head(w, f, data + n, len - n);
            buf_put(&w->io, bid);
        } else if (flow_intercepting(w, f)) {
            if ((uint32_t)rc < proxy_len)
                intercept_hello_bytes(w, f, proxy_head + rc, proxy_len - (uint32_t)rc);
            if (n < len && f->state != FS_CLOSING)
                intercept_hello_bytes(w, f, data + n, len - n);
            buf_put(&w->io, bid);
        } else {
            if ((uint32_t)rc < proxy_len)
                conn_queue_copy(&w->segs, &f->c[SIDE_UPSTREAM], proxy_head + rc,
                                proxy_len - (uint32_t)rc);
            if (n < len)
                conn_queue(&w->segs, &f->c[SIDE_UPSTREAM], data, n, len - n, (int32_t)bid);
            else
                buf_put(&w->io, bid);
        }
        chunk_put(&w->io, proxy_head);
        return;
    } else {
        buf_put(&w->io, bid);
    }
    chunk_put(&w->io, f->head);
    f->head = NULL;
    f->head_len = 0;
}

/* ------------------------------------------------------------------------------------------
 * CQE handlers
 * ------------------------------------------------------------------------------------------ */

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s", ip);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s", ip);
    }
}

static void flow_begin_direct(struct worker *w, struct flow *f, const char *host, size_t host_len,
                              uint16_t port)
{
    /* Reverse and transparent modes: the target is known at accept (SPEC invariant 2). */
    char target[320];
    int n;
    if (memchr(host, ':', host_len))
        n = snprintf(target, sizeof(target), "[%.*s]:%u", (int)host_len, host, port);
    else
        n = snprintf(target, sizeof(target), "%.*s:%u", (int)host_len, host, port);
    soth_ev_flow_set_server(&f->ev, soth_iov(host, host_len), port);
    soth_ev_connect_received(&f->ev, SOTH_IOV_NULL, soth_iov(target, (size_t)n));
    f->upstream_port = port;
    f->is_reverse = w->cfg->mode == SOTH_MODE_REVERSE;
    f->is_transparent = w->cfg->mode == SOTH_MODE_TRANSPARENT;
    struct soth_iov rule;
    if (flow_decide(w, f, &rule) == SOTH_ACTION_BLOCK) {
        flow_block(w, f, rule);
        return;
    }
    /* Read the client right away: bytes queue for the upstream under backpressure. */
    upstream_start(w, f);
    if (f->state != FS_CLOSING)
        conn_arm_recv(w, f, SIDE_CLIENT);
}

static void arm_accept(struct worker *w)
{
    if (w->accept_armed || w->stopping)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_ACCEPT, 0, 0, 0));
    w->accept_armed = true;
}

static void on_accept(struct worker *w, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        w->accept_armed = false;
        if (cqe->res < 0 && cqe->res != -ECANCELED)
            SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0, "accept: %s", soth_strerror(cqe->res));
        arm_accept(w);
    }
    if (cqe->res < 0)
        return;
    int fd = cqe->res;
    if (w->stopping) {
        close(fd);
        return;
    }
    struct flow *f = flow_table_alloc(&w->ft, w);
    if (f == NULL) {
        SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0, "flow table full: refusing a connection");
        close(fd);
        return;
    }
    struct sockaddr_storage peer;
    socklen_t plen = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) == -1)
        plen = 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    f->c[SIDE_CLIENT].fd = fd;
    f->c[SIDE_CLIENT].connected = true;
    uint64_t flow_id = ((uint64_t)(w->idx + 1) << 48) | ++w->flow_counter;
    soth_ev_flow_init(&f->ev, w->prod, flow_id, w->idx, plen ? (struct sockaddr *)&peer : NULL,
                      plen);
    SOTH_METRIC_ADD(w->m->connections_total, 1);
    SOTH_METRIC_ADD(w->m->active_connections, 1);

    const struct soth_config *cfg = w->cfg;
    switch (cfg->mode) {
    case SOTH_MODE_REGULAR:
        flow_set_state(f, FS_HEAD);
        timer_set(&w->timers, &f->timer, now_ms() + cfg->timeouts.request_header_ms);
        conn_arm_recv(w, f, SIDE_CLIENT);
        break;
    case SOTH_MODE_REVERSE:
        flow_begin_direct(w, f, cfg->reverse_host, strlen(cfg->reverse_host), cfg->reverse_port);
        break;
    case SOTH_MODE_TRANSPARENT: {
        struct sockaddr_storage dst;
        socklen_t dlen = sizeof(dst);
        int rc = peer.ss_family == AF_INET6
                     ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst, &dlen)
                     : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &dlen);
        if (rc == -1) {
            SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, flow_id, "SO_ORIGINAL_DST: %s", strerror(errno));
            soth_ev_connect_parse_failed(&f->ev, SOTH_IOV_LIT("no_original_dst"),
                                         SOTH_IOV_LIT("connection was not redirected"));
            flow_close(w, f, SOTH_CLOSE_PARSE_FAILED);
            break;
        }
        char host[INET6_ADDRSTRLEN + 1];
        format_addr(&dst, host, sizeof(host));
        uint16_t port = ntohs(dst.ss_family == AF_INET ? ((struct sockaddr_in *)&dst)->sin_port
                                                       : ((struct sockaddr_in6 *)&dst)->sin6_port);
        flow_begin_direct(w, f, host, strlen(host), port);
        break;
    }
    default:
        SOTH_BUG_ON(1);
    }
    flow_maybe_free(w, f);
}

static void on_recv_data(struct worker *w, struct flow *f, unsigned side, unsigned bid,
                         uint32_t len)
{
    if (side == SIDE_UPSTREAM && f->answer != NULL) {
        buf_put(&w->io,
                bid); /* the upstream failed its handshake: we answer the client ourselves */
        return;
    }
    f->bytes[side] += len;
    if (side == SIDE_CLIENT)
        SOTH_METRIC_ADD(w->m->bytes_client_to_server, len);
    else
        SOTH_METRIC_ADD(w->m->bytes_server_to_client, len);
    f->last_active_ms = now_ms();
    switch (f->state) {
    case FS_HEAD:
        flow_head_input(w, f, bid, len);
        return;
    case FS_HELLO:
    case FS_TLS_UP:
    case FS_TLS_DOWN:
        intercept_data(w, f, side, bid, len);
        return;
    case FS_RESOLVING:
    case FS_CONNECTING:
        upstream_data(w, f, side, bid, len);
        return;
    case FS_RELAY:
        relay_data(w, f, side, bid, len);
        return;
    default:
        /* Answering or lingering: the client's further bytes are discarded. */
        buf_put(&w->io, bid);
        return;
    }
}

static void on_recv_eof(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    c->eof_in = true;
    if (side == SIDE_UPSTREAM && f->answer != NULL)
        return;
    if (f->first_eof == 0xff)
        f->first_eof = (uint8_t)side;
    switch (f->state) {
    case FS_HEAD:
        flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
        return;
    case FS_HELLO:
    case FS_TLS_UP:
    case FS_TLS_DOWN:
        intercept_eof(w, f, side);
        return;
    case FS_RESOLVING:
    case FS_CONNECTING:
        upstream_eof(w, f, side);
        return;
    case FS_RELAY:
        relay_eof(w, f, side);
        return;
    case FS_LINGER:
        flow_close(w, f, (enum soth_close_reason)f->answer_reason);
        return;
    default:
        return;
    }
}

static void on_recv(struct worker *w, struct flow *f, unsigned side, struct io_uring_cqe *cqe)
{
    struct conn *c = &f->c[side];
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        c->recv_armed = false;
        f->pending--;
    }
    if (cqe->res > 0) {
        SOTH_BUG_ON(!(cqe->flags & IORING_CQE_F_BUFFER));
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
    } else if (side == SIDE_UPSTREAM && f->answer != NULL) {
        /* ignored: the upstream already failed its handshake */
    } else if (cqe->res != -ECANCELED && f->state != FS_CLOSING) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "recv %s: %s",
                 side ? "upstream" : "client", soth_strerror(cqe->res));
        if (f->state == FS_HEAD)
            flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
        else if (f->state == FS_HELLO || f->state == FS_TLS_UP || f->state == FS_TLS_DOWN)
            intercept_recv_error(w, f, side);
        else if (f->state == FS_ANSWER || f->state == FS_LINGER)
            /* The client went away while we answered: the answer's reason still holds. */
            flow_close(w, f, (enum soth_close_reason)f->answer_reason);
        else if (f->state == FS_RELAY)
            relay_recv_error(w, f, side);
        else
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
    }
    /* A multishot recv that ended on its own (buffer pressure, kernel limits) is re-armed. */
    if (!more && f->state != FS_CLOSING)
        conn_arm_recv(w, f, side);
}

static void on_send(struct worker *w, struct flow *f, unsigned side, int res)
{
    struct conn *c = &f->c[side];
    c->send_inflight = false;
    f->pending--;
    if (f->state == FS_CLOSING)
        return;
    if (res < 0) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "send %s: %s",
                 side ? "upstream" : "client", soth_strerror(res));
        if (f->state == FS_RELAY)
            relay_send_error(w, f, side);
        else
            flow_close(w, f,
                       f->state == FS_ANSWER ? (enum soth_close_reason)f->answer_reason
                                             : SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    conn_q_sent(&w->segs, c, (uint64_t)res);
    f->last_active_ms = now_ms();
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

static void on_shutdown(struct worker *w, struct flow *f, unsigned side, int res)
{
    f->pending--;
    if (f->state == FS_CLOSING)
        return;
    if (f->state == FS_ANSWER) {
        answer_fin_sent(w, f); /* our answer is out and our FIN sent */
        return;
    }
    if (f->state == FS_RELAY)
        relay_fin_sent(w, f, side);
}

static void on_timeout(struct worker *w, struct flow *f)
{
    switch (f->state) {
    case FS_HEAD:
        soth_ev_connect_parse_failed(&f->ev, SOTH_IOV_LIT("request_header_timeout"),
                                     SOTH_IOV_LIT("request head did not arrive in time"));
        flow_answer_text(w, f, 408, "Request Timeout", SOTH_CLOSE_IDLE_TIMEOUT,
                         "soth-mitm: request head not received within %u ms\n",
                         w->cfg->timeouts.request_header_ms);
        return;
    case FS_RESOLVING:
    case FS_CONNECTING:
        upstream_timeout(w, f);
        return;
    case FS_HELLO:
    case FS_TLS_UP:
    case FS_TLS_DOWN:
        intercept_timeout(w, f);
        return;
    case FS_RELAY:
        relay_timeout(w, f);
        return;
    case FS_ANSWER:
    case FS_LINGER:
        flow_close(w, f, (enum soth_close_reason)f->answer_reason);
        return;
    default:
        return;
    }
}

/** timer_run callback: a flow's deadline passed. */
static void on_timer(void *ctx, struct timer_entry *t)
{
    struct worker *w = ctx;
    struct flow *f = (struct flow *)((char *)t - offsetof(struct flow, timer));
    on_timeout(w, f);
    flow_maybe_free(w, f);
}

/* ------------------------------------------------------------------------------------------
 * control: shutdown, reload, resolver answers
 * ------------------------------------------------------------------------------------------ */

static void arm_eventfd(struct worker *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_read(sqe, w->efd, &w->efd_val, sizeof(w->efd_val), 0);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_EVENTFD, 0, 0, 0));
}

static void worker_begin_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    w->stop_deadline_ms = now_ms() + w->cfg->timeouts.drain_ms;
    if (w->accept_armed) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel64(sqe, ud_pack(OP_ACCEPT, 0, 0, 0), 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0, 0, 0));
    }
    /* Leave the SO_REUSEPORT group now, so new clients are refused instead of queued. */
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_close(sqe, w->listen_fd);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, 0, 0, 0));
    w->listen_fd = -1;
    /* Connections still waiting for a first request have nothing in flight: close them now. */
    for (uint32_t i = 0; i < w->ft.hw; i++) {
        struct flow *f = &w->ft.flows[i];
        if (flow_is_live(f) && f->state == FS_HEAD && f->head == NULL)
            flow_close(w, f, SOTH_CLOSE_SHUTDOWN);
        else if (flow_is_live(f) && f->state == FS_RELAY && f->app != NULL && !f->app_done)
            relay_after(w, f, SIDE_CLIENT, app_shutdown(f->app)); /* idle keep-alive: close */
    }
}

static void on_eventfd(struct worker *w)
{
    struct resolve_resp rs;
    while (soth_spsc_pop(w->rs, &rs))
        upstream_resolved(w, &rs);
    struct soth_config *ncfg = atomic_exchange(&w->ctl_cfg, NULL);
    if (ncfg != NULL) {
        char err[256];
        struct soth_policy *np = soth_policy_new(ncfg, err, sizeof(err));
        if (np == NULL) {
            SOTH_LOG(SOTH_LOG_ERROR, (int)w->idx, 0, "reload: %s", err);
            soth_config_unref(ncfg);
        } else {
            /* Flows keep their decisions; new CONNECTs see the new policy. */
            soth_policy_free(w->policy);
            w->policy = np;
            soth_config_unref(w->cfg);
            w->cfg = ncfg;
        }
    }
    if (atomic_exchange(&w->ctl_flush, 0) && w->tls != NULL)
        soth_tls_leaf_cache_flush(w->tls);
    if (atomic_load(&w->ctl_stop))
        worker_begin_stop(w);
    arm_eventfd(w);
}

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum soth_op op = ud_op(ud);
    switch (op) {
    case OP_ACCEPT:
        on_accept(w, cqe);
        return;
    case OP_EVENTFD:
        on_eventfd(w);
        return;
    case OP_CLOSE:
    case OP_CANCEL:
        return;
    default:
        break;
    }
    uint32_t slot = ud_slot(ud);
    SOTH_BUG_ON(slot >= w->ft.hw);
    struct flow *f = flow_table_find(&w->ft, slot, ud_gen(ud));
    unsigned side = ud_side(ud);
    if (f == NULL) {
        /* Cannot happen for tracked ops (freed only at pending == 0); keep buffers safe. */
        if (cqe->flags & IORING_CQE_F_BUFFER)
            buf_put(&w->io, buf_take(&w->io, cqe->flags >> IORING_CQE_BUFFER_SHIFT));
        return;
    }
    switch (op) {
    case OP_RECV:
        on_recv(w, f, side, cqe);
        break;
    case OP_SEND:
        on_send(w, f, side, cqe->res);
        break;
    case OP_CONNECT:
        f->pending--;
        upstream_connected(w, f, cqe->res);
        break;
    case OP_SHUTDOWN:
        on_shutdown(w, f, side, cqe->res);
        break;
    default:
        SOTH_BUG_ON(1);
    }
    flow_maybe_free(w, f);
}

/* ------------------------------------------------------------------------------------------
 * set-up and the loop
 * ------------------------------------------------------------------------------------------ */

static int ring_setup(struct worker *w)
{
    struct io_uring_params p;
    const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < SOTH_ARRAY_LEN(flag_sets); i++) {
        memset(&p, 0, sizeof(p));
        p.flags = flag_sets[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
        p.cq_entries = 16384;
        rc = io_uring_queue_init_params(2048, &w->ring, &p);
        if (rc == 0) {
            SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, 0, "io_uring flags 0x%x", p.flags);
            break;
        }
    }
    if (rc < 0)
        return rc;

    rc = iobuf_init(&w->io);
    if (rc < 0)
        return rc;
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)w->io.br, .ring_entries = SOTH_BUF_COUNT, .bgid = SOTH_BGID};
    rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0)
        return rc;
    iobuf_fill(&w->io);

    rc = flow_table_init(&w->ft);
    if (rc < 0)
        return rc;
    rc = seg_pool_init(&w->segs, &w->io, SOTH_SEGS);
    if (rc < 0)
        return rc;
    w->efd = eventfd(0, EFD_CLOEXEC);
    if (w->efd == -1)
        return -errno;
    return 0;
}

static void pin_cpu(struct worker *w)
{
    if (w->cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) == -1)
        SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0, "sched_setaffinity(cpu %d): %s", w->cpu,
                 strerror(errno));
}

static void worker_teardown(struct worker *w)
{
    io_uring_queue_exit(&w->ring);
    flow_table_dispose(&w->ft);
    seg_pool_dispose(&w->segs);
    iobuf_dispose(&w->io);
    /* w->efd stays open: other threads may still write to it (soth_worker_wake); the engine
     * closes it after joining every thread. */
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    w->listen_fd = -1;
    soth_policy_free(w->policy);
    w->policy = NULL;
    soth_tls_ctx_free(w->tls);
    w->tls = NULL;
}

static void signal_ready(struct worker *w, int err)
{
    struct soth_engine *e = w->eng;
    pthread_mutex_lock(&e->start_mu);
    w->setup_err = err;
    e->n_ready++;
    pthread_cond_broadcast(&e->start_cv);
    pthread_mutex_unlock(&e->start_mu);
}

void *soth_worker_main(void *arg)
{
    struct worker *w = arg;
    pin_cpu(w);
    w->efd = -1;
    int rc = ring_setup(w);
    if (rc < 0) {
        snprintf(w->setup_msg, sizeof(w->setup_msg), "io_uring set-up: %s", soth_strerror(rc));
        signal_ready(w, rc);
        worker_teardown(w);
        return NULL;
    }
    w->head_limits.max_line = 8192;
    w->head_limits.max_head = SOTH_HEAD_MAX;
    timer_wheel_init(&w->timers, now_ms());
    arm_accept(w);
    arm_eventfd(w);
    io_uring_submit(&w->ring);
    signal_ready(w, 0);

    for (;;) {
        if (iobuf_publish(&w->io))
            conn_wake_waiters(w);
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000};
        bool timed = w->timers.n > 0 || w->stopping;
        rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, timed ? &ts : NULL, NULL);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            SOTH_LOG(SOTH_LOG_ERROR, (int)w->idx, 0, "io_uring_submit_and_wait: %s",
                     soth_strerror(rc));
            break;
        }
        unsigned head, n = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            handle_cqe(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        timer_run(&w->timers, now_ms(), on_timer, w);
        soth_ev_flush(w->prod);
        if (w->stopping) {
            if (now_ms() >= w->stop_deadline_ms) {
                for (uint32_t i = 0; i < w->ft.hw; i++) {
                    struct flow *f = &w->ft.flows[i];
                    if (flow_is_live(f) && f->state != FS_CLOSING)
                        flow_close(w, f, SOTH_CLOSE_SHUTDOWN);
                }
            }
            if (w->ft.n_live == 0)
                break;
        }
    }
    soth_ev_flush(w->prod);
    /* Let the last closes reach the kernel. */
    io_uring_submit(&w->ring);
    worker_teardown(w);
    app_thread_done();
    return NULL;
}
