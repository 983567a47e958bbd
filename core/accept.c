/* New connections: accept, a flow each, per-mode set-up (core/accept.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "accept.h"
#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "flowtab.h"
#include "socks.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

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

static void begin_direct(struct worker *w, struct flow *f, const char *host, size_t host_len,
                         uint16_t port)
{
    /* Reverse and transparent modes: the target is known at accept, and the flow starts
     * with connect_received like any other (docs/events.md, "Ordering" 2). */
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
        conn_arm_recv(w, f, SOTH_LEG_CLIENT);
}

void accept_arm(struct worker *w)
{
    if (w->accept_armed || w->stopping)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_ACCEPT, 0, 0, 0));
    w->accept_armed = true;
}

void accept_on_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        w->accept_armed = false;
        if (cqe->res < 0 && cqe->res != -ECANCELED)
            SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0, "accept: %s", soth_strerror(cqe->res));
        accept_arm(w);
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
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) == -1 ||
        !flow_addr_set(&f->peer, &f->peer_len, &peer, plen)) {
        plen = 0; /* getpeername leaves it as it was on failure (a client gone already) */
        peer.ss_family = AF_UNSPEC;
        f->peer_len = 0;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    f->c[SOTH_LEG_CLIENT].fd = fd;
    f->c[SOTH_LEG_CLIENT].connected = true;
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
        conn_arm_recv(w, f, SOTH_LEG_CLIENT);
        break;
    case SOTH_MODE_SOCKS5:
        socks_begin(w, f);
        break;
    case SOTH_MODE_REVERSE:
        begin_direct(w, f, cfg->reverse_host, strlen(cfg->reverse_host), cfg->reverse_port);
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
        begin_direct(w, f, host, strlen(host), port);
        break;
    }
    default:
        SOTH_BUG_ON(1);
    }
    flow_maybe_free(w, f);
}
