/* A flow's upstream connection: resolve, connect, and what the connect brings (core/upstream.h). */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
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

/* Longest answer head an upstream proxy may send to our CONNECT. */
#define PROXY_HEAD_MAX 8192u

/*
 * docs/config.md "Routes": the upstream proxy refused, failed or could not be reached. The
 * client gets 502 naming the proxy (never its credentials), a SOCKS client a general failure,
 * a transparent one a close; stream_closed upstream_proxy_failed.
 */
static void proxy_failed(struct worker *w, struct flow *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void proxy_failed(struct worker *w, struct flow *f, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (n < 0)
        what[0] = '\0';
    SOTH_LOG(SOTH_LOG_INFO, (int)w->idx, f->ev.flow_id, "upstream proxy %s for %.*s:%u: %s",
             f->route->text, (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
             what);
    conn_q_clear(&w->segs, &f->c[SOTH_LEG_UPSTREAM]);
    f->c[SOTH_LEG_UPSTREAM].send_capped = false;
    /* Nothing more from the proxy: its FIN or reset must not cut our answer short. */
    conn_pause_recv(w, f, SOTH_LEG_UPSTREAM);
    if (f->is_socks) {
        socks_refuse(w, f, SOTH_SOCKS5_REP_GENERAL_FAILURE, SOTH_CLOSE_UPSTREAM_PROXY_FAILED);
        return;
    }
    if (w->cfg->mode == SOTH_MODE_TRANSPARENT) {
        flow_close(w, f, SOTH_CLOSE_UPSTREAM_PROXY_FAILED);
        return;
    }
    flow_answer_text(w, f, 502, "Bad Gateway", SOTH_CLOSE_UPSTREAM_PROXY_FAILED,
                     "soth-mitm: upstream proxy %s: %s\n", f->route->text, what);
}

/* Where the socket goes: the upstream proxy of the flow's route, else the target. */
static struct soth_iov dial_host(const struct flow *f)
{
    if (f->route != NULL)
        return soth_iov(f->route->host, f->route->host_len);
    return soth_iov(f->ev.server_host, f->ev.server_host_len);
}

static uint16_t dial_port(const struct flow *f)
{
    return f->route != NULL ? f->route->port : f->upstream_port;
}

static void upstream_failed(struct worker *w, struct flow *f, int err, bool timeout)
{
    if (f->route != NULL) {
        if (timeout)
            proxy_failed(w, f, "did not accept a connection within %u ms",
                         w->cfg->timeouts.connect_ms);
        else
            proxy_failed(w, f, "cannot connect: %s", soth_strerror(err));
        return;
    }
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

bool upstream_poolable(const struct worker *w, const struct flow *f)
{
    const struct soth_config *c = w->cfg;
    return c->mode == SOTH_MODE_REVERSE && c->reverse_tls && c->upstream_pool.enabled &&
           w->pool.max_idle > 0 && f->action == SOTH_ACTION_INTERCEPT && f->route == NULL &&
           w->tls != NULL && !w->stopping;
}

int upstream_dial(struct worker *w, struct flow *f)
{
    int fd = socket(f->upstream_addr.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    f->c[SOTH_LEG_UPSTREAM].fd = fd;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_connect(sqe, fd, &f->upstream_addr.sa, f->upstream_addr_len);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CONNECT, SOTH_LEG_UPSTREAM, f->slot, f->gen));
    f->pending++;
    return 0;
}

void upstream_connect(struct worker *w, struct flow *f)
{
    int rc = upstream_dial(w, f);
    if (rc < 0) {
        upstream_failed(w, f, rc, false);
        return;
    }
    flow_set_state(f, FS_CONNECTING);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.connect_ms);
}

void upstream_start(struct worker *w, struct flow *f)
{
    struct soth_iov host = dial_host(f);
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (resolve_fast(w->cfg, &w->dns, host, dial_port(f), &ss, &sl) &&
        flow_addr_set(&f->upstream_addr, &f->upstream_addr_len, &ss, sl)) {
        if (upstream_poolable(w, f) &&
            upool_has_addr(&w->pool, &f->upstream_addr, f->upstream_addr_len)) {
            /* The pool may have a connection for the ALPN offer the ClientHello brings: no
             * connect until then (core/intercept.c, upstream_leg_start). */
            f->up_defer = true;
            flow_set_state(f, FS_HELLO);
            timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.tls_handshake_ms);
            return;
        }
        upstream_connect(w, f);
        return;
    }
    struct resolve_req rq;
    rq.slot = f->slot;
    rq.gen = f->gen;
    rq.port = dial_port(f);
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
    dns_cache_put(&w->dns, dial_host(f), &rs->addr, rs->addr_len, now_ms());
    if (!flow_addr_set(&f->upstream_addr, &f->upstream_addr_len, &rs->addr, rs->addr_len)) {
        upstream_failed(w, f, -EAFNOSUPPORT, false);
        return;
    }
    upstream_connect(w, f);
}

static void upstream_ready(struct worker *w, struct flow *f);

/* Regular-mode plain HTTP goes to an upstream proxy as absolute-form requests (core/head.c,
 * core/app_h1.c); everything else through a CONNECT tunnel. */
static bool proxy_plain(const struct worker *w, const struct flow *f)
{
    return w->cfg->mode == SOTH_MODE_REGULAR && !f->is_connect;
}

/* A target host as it may appear in our CONNECT line: no byte that could end or split it (a
 * SOCKS5 domain name may hold any byte). */
static bool connect_host_ok(struct soth_iov h)
{
    if (h.len == 0)
        return false;
    for (size_t i = 0; i < h.len; i++) {
        unsigned char c = (unsigned char)h.base[i];
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == '@' || c == '[' || c == ']' || c == '?' ||
            c == '#' || c == '\\')
            return false;
    }
    return true;
}

/*
 * Connected to the upstream proxy: "CONNECT host:port HTTP/1.1" with Host and, when the route
 * has credentials, Proxy-Authorization. It goes ahead of whatever the client sent early,
 * which waits (send_capped) until the proxy says 2xx (FS_PROXY, bounded by connect_ms).
 */
static void proxy_connect(struct worker *w, struct flow *f)
{
    struct soth_iov h = soth_iov(f->ev.server_host, f->ev.server_host_len);
    if (!connect_host_ok(h)) {
        proxy_failed(w, f, "target host cannot be sent in a CONNECT request");
        return;
    }
    bool v6 = memchr(h.base, ':', h.len) != NULL;
    char req[1024 + 2 * 256];
    int n = snprintf(
        req, sizeof(req), "CONNECT %s%.*s%s:%u HTTP/1.1\r\nHost: %s%.*s%s:%u\r\n%s%.*s%s\r\n",
        v6 ? "[" : "", (int)h.len, h.base, v6 ? "]" : "", f->ev.server_port, v6 ? "[" : "",
        (int)h.len, h.base, v6 ? "]" : "", f->ev.server_port,
        f->route->proxy_auth != NULL ? "Proxy-Authorization: " : "", (int)f->route->proxy_auth_len,
        f->route->proxy_auth != NULL ? f->route->proxy_auth : "",
        f->route->proxy_auth != NULL ? "\r\n" : "");
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    bool ok =
        n > 0 && (size_t)n < sizeof(req) && conn_queue_front_copy(&w->segs, u, req, (size_t)n);
    memset(req, 0, sizeof(req)); /* the credentials */
    if (!ok) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    u->send_capped = true;
    u->send_cap = (uint32_t)n;
    f->proxy_head_len = 0;
    f->proxy_eoh = 0;
    f->proxy_line_len = 0;
    f->proxy_line_done = false;
    flow_set_state(f, FS_PROXY);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.connect_ms);
    conn_try_send(w, f, SOTH_LEG_UPSTREAM);
    conn_arm_recv(w, f, SOTH_LEG_UPSTREAM);
}

/* "HTTP/1.x NNN ..." -> NNN, else -1. */
static int proxy_status(const char *l, size_t n)
{
    if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || l[7] < '0' || l[7] > '9' || l[8] != ' ')
        return -1;
    for (int i = 9; i < 12; i++)
        if (l[i] < '0' || l[i] > '9')
            return -1;
    if (n > 12 && l[12] != ' ')
        return -1;
    return (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
}

/* The proxy's answer head is complete; rest bytes after it are in data[off..off+rest). */
static void proxy_answered(struct worker *w, struct flow *f, char *data, uint32_t off,
                           uint32_t rest, unsigned bid)
{
    size_t ll = f->proxy_line_len;
    while (ll > 0 && (f->proxy_line[ll - 1] == '\r' || f->proxy_line[ll - 1] == '\n'))
        ll--;
    /* What the proxy said, printable, for the 502 (its status line, cut at 46 bytes). */
    char line[sizeof(f->proxy_line) + 1];
    for (size_t i = 0; i < ll; i++) {
        unsigned char c = (unsigned char)f->proxy_line[i];
        line[i] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
    }
    line[ll] = '\0';
    int st = proxy_status(f->proxy_line, ll);
    if (st < 200 || st > 299) {
        buf_put(&w->io, bid);
        if (st < 0)
            proxy_failed(w, f, "bad answer to CONNECT %.*s:%u: \"%s\"", (int)f->ev.server_host_len,
                         f->ev.server_host, f->ev.server_port, line);
        else
            proxy_failed(w, f, "refused CONNECT %.*s:%u: %s", (int)f->ev.server_host_len,
                         f->ev.server_host, f->ev.server_port, line + 9);
        return;
    }
    if (rest > 0 && flow_intercepting(w, f)) {
        /* A TLS server never speaks first: these cannot be the origin's. */
        buf_put(&w->io, bid);
        proxy_failed(w, f, "sent bytes after its answer to CONNECT %.*s:%u, before ours",
                     (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port);
        return;
    }
    struct conn *u = &f->c[SOTH_LEG_UPSTREAM];
    u->send_capped = false;
    upstream_ready(w, f);
    if (rest > 0 && f->state == FS_RELAY) {
        /* The origin spoke first through the tunnel: after our 200, to the client. */
        conn_queue(&w->segs, &f->c[SOTH_LEG_CLIENT], data, off, rest, (int32_t)bid);
        conn_try_send(w, f, SOTH_LEG_CLIENT);
        return;
    }
    buf_put(&w->io, bid);
    if (f->state != FS_CLOSING)
        conn_try_send(w, f, SOTH_LEG_UPSTREAM); /* the client's early bytes */
}

void proxy_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    if (side == SOTH_LEG_CLIENT) {
        upstream_data(w, f, side, bid, len);
        return;
    }
    char *data = buf_addr(&w->io, bid);
    for (uint32_t i = 0; i < len; i++) {
        char c = data[i];
        if (f->proxy_head_len >= PROXY_HEAD_MAX) {
            buf_put(&w->io, bid);
            proxy_failed(w, f, "answer head to CONNECT over %u bytes", PROXY_HEAD_MAX);
            return;
        }
        f->proxy_head_len++;
        if (!f->proxy_line_done) {
            if (c == '\n')
                f->proxy_line_done = true;
            else if (f->proxy_line_len < sizeof(f->proxy_line))
                f->proxy_line[f->proxy_line_len++] = c;
        }
        /* The blank line: CRLF CRLF, or bare LFs (RFC 9112 2.2 lets a recipient accept them). */
        if (c == '\n') {
            if (f->proxy_eoh == 1 || f->proxy_eoh == 2) {
                proxy_answered(w, f, data, i + 1, len - i - 1, bid);
                return;
            }
            f->proxy_eoh = 1;
        } else if (c == '\r') {
            f->proxy_eoh = f->proxy_eoh == 1 ? 2 : 0;
        } else {
            f->proxy_eoh = 0;
        }
    }
    buf_put(&w->io, bid);
}

void proxy_eof(struct worker *w, struct flow *f, unsigned side)
{
    if (side == SOTH_LEG_CLIENT) {
        upstream_eof(w, f, side);
        return;
    }
    proxy_failed(w, f, "closed the connection before answering CONNECT %.*s:%u",
                 (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port);
}

void proxy_recv_error(struct worker *w, struct flow *f, unsigned side)
{
    if (side == SOTH_LEG_CLIENT) {
        flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
        return;
    }
    proxy_failed(w, f, "reset the connection before answering CONNECT %.*s:%u",
                 (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port);
}

void proxy_send_error(struct worker *w, struct flow *f, unsigned side)
{
    if (side == SOTH_LEG_CLIENT) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    proxy_failed(w, f, "connection failed while sending CONNECT %.*s:%u",
                 (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port);
}

void proxy_timeout(struct worker *w, struct flow *f)
{
    proxy_failed(w, f, "no answer to CONNECT %.*s:%u within %u ms", (int)f->ev.server_host_len,
                 f->ev.server_host, f->ev.server_port, w->cfg->timeouts.connect_ms);
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
    if (f->route != NULL && !proxy_plain(w, f)) {
        proxy_connect(w, f);
        return;
    }
    upstream_ready(w, f);
}

/* The way to the target is open (a TCP connection to it, or a tunnel through an upstream
 * proxy): TLS toward it for an intercepted flow, else the relay. */
static void upstream_ready(struct worker *w, struct flow *f)
{
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
