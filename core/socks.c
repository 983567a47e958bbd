/* A socks5-mode flow until its target is known, and the SOCKS replies (core/socks.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "soth/proto/socks5.h"

#include "answer.h"
#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "intercept.h"
#include "iobuf.h"
#include "socks.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

_Static_assert(sizeof(struct soth_socks5) <= SOTH_BUF_SIZE, "the parser lives in one chunk");

/* Static bytes for conn_queue (SEG_STATIC): the method selection and every refusal, each
 * with the bound address 0.0.0.0:0 (RFC 1928 6). */
static char method_noauth[2] = {SOTH_SOCKS5_VERSION, SOTH_SOCKS5_METHOD_NOAUTH};
static char method_none[2] = {SOTH_SOCKS5_VERSION, (char)SOTH_SOCKS5_METHOD_NONE};
#define REFUSAL(rep)                                                                               \
    {                                                                                              \
        SOTH_SOCKS5_VERSION, rep, 0, SOTH_SOCKS5_ATYP_IPV4, 0, 0, 0, 0, 0, 0                       \
    }
static char refusals[9][10] = {REFUSAL(0), REFUSAL(1), REFUSAL(2), REFUSAL(3), REFUSAL(4),
                               REFUSAL(5), REFUSAL(6), REFUSAL(7), REFUSAL(8)};

void socks_begin(struct worker *w, struct flow *f)
{
    f->is_socks = true;
    flow_set_state(f, FS_SOCKS);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.request_header_ms);
    conn_arm_recv(w, f, SOTH_LEG_CLIENT);
}

/** Our refusal, then FIN and the linger of core/answer.c (FS_ANSWER), so the client reads it
 *  before the close instead of a reset. */
static void refuse(struct worker *w, struct flow *f, char *bytes, uint32_t len,
                   enum soth_close_reason reason)
{
    struct conn *c = &f->c[SOTH_LEG_CLIENT];
    if (f->head != NULL) {
        chunk_put(&w->io, f->head);
        f->head = NULL;
    }
    f->answer_reason = (uint8_t)reason;
    flow_set_state(f, FS_ANSWER);
    if (!conn_queue(&w->segs, c, bytes, 0, len, SEG_STATIC)) {
        flow_close(w, f, reason);
        return;
    }
    c->shut_pending = true;
    timer_set(&w->timers, &f->timer, now_ms() + SOTH_ANSWER_MS);
    conn_try_send(w, f, SOTH_LEG_CLIENT);
}

static void refuse_rep(struct worker *w, struct flow *f, enum soth_socks5_rep rep,
                       enum soth_close_reason reason)
{
    refuse(w, f, refusals[rep], sizeof(refusals[rep]), reason);
}

bool socks_established(struct worker *w, struct flow *f)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    uint8_t out[22];
    size_t n;
    if (getsockname(f->c[SOTH_LEG_UPSTREAM].fd, (struct sockaddr *)&ss, &sl) == 0 &&
        ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        n = soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, a->sin6_addr.s6_addr, 16,
                              ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        n = soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, (const uint8_t *)&a->sin_addr, 4,
                              ntohs(a->sin_port));
    } else {
        n = soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, NULL, 0, 0);
    }
    /* The client queue is empty here: nothing from the upstream has been read yet. */
    if (!conn_queue_copy(&w->segs, &f->c[SOTH_LEG_CLIENT], (const char *)out, n))
        return false;
    conn_try_send(w, f, SOTH_LEG_CLIENT);
    return true;
}

void socks_failed(struct worker *w, struct flow *f, int err, bool timeout)
{
    enum soth_socks5_rep rep = SOTH_SOCKS5_REP_GENERAL_FAILURE;
    if (timeout)
        rep = SOTH_SOCKS5_REP_TTL_EXPIRED;
    else if (err == -ECONNREFUSED)
        rep = SOTH_SOCKS5_REP_REFUSED;
    else if (err == -ENETUNREACH)
        rep = SOTH_SOCKS5_REP_NET_UNREACHABLE;
    else if (err == -EHOSTUNREACH || err == -ENOENT || err == -ETIMEDOUT)
        rep = SOTH_SOCKS5_REP_HOST_UNREACHABLE; /* also a name that does not resolve */
    refuse_rep(w, f, rep, SOTH_CLOSE_UPSTREAM_CONNECT_FAILED);
}

/** A complete CONNECT request: as a CONNECT head does in core/head.c. The client's bytes after
 *  the request are data[off..len) of provided buffer bid (ownership taken). */
static void on_request(struct worker *w, struct flow *f, const struct soth_socks5 *s, char *data,
                       uint32_t off, uint32_t len, unsigned bid)
{
    char host[256], target[264];
    bool v6;
    size_t hl = soth_socks5_host(s, host, &v6);
    uint16_t port = s->port;
    int n = snprintf(target, sizeof(target), v6 ? "[%s]:%u" : "%s:%u", host, port);
    chunk_put(&w->io, f->head); /* s is gone: the chunk may gather the ClientHello next */
    f->head = NULL;
    soth_ev_flow_set_server(&f->ev, soth_iov(host, hl), port);
    soth_ev_connect_received(&f->ev, SOTH_IOV_LIT("SOCKS5"), soth_iov(target, (size_t)n));
    f->upstream_port = port;
    struct soth_iov rule;
    if (flow_decide(w, f, &rule) == SOTH_ACTION_BLOCK) {
        buf_put(&w->io, bid);
        refuse_rep(w, f, SOTH_SOCKS5_REP_NOT_ALLOWED, SOTH_CLOSE_BLOCKED);
        return;
    }
    upstream_start(w, f);
    if (off == len || (f->state != FS_RESOLVING && f->state != FS_CONNECTING)) {
        buf_put(&w->io, bid);
        return;
    }
    /* Bytes sent ahead of our reply (an early ClientHello) wait for the upstream as is. */
    if (flow_intercepting(w, f)) {
        intercept_hello_bytes(w, f, data + off, len - off);
        buf_put(&w->io, bid);
        return;
    }
    conn_queue(&w->segs, &f->c[SOTH_LEG_UPSTREAM], data, off, len - off, (int32_t)bid);
}

void socks_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    char *data = buf_addr(&w->io, bid);
    if (f->head == NULL) {
        f->head = chunk_get(&w->io);
        if (f->head == NULL) {
            buf_put(&w->io, bid);
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        soth_socks5_init((struct soth_socks5 *)(void *)f->head);
    }
    struct soth_socks5 *s = (struct soth_socks5 *)(void *)f->head;
    uint32_t off = 0;
    while (off < len) {
        enum soth_socks5_event ev;
        ssize_t rc = soth_socks5_feed(s, data + off, len - off, &ev);
        if (rc < 0) {
            buf_put(&w->io, bid);
            soth_ev_connect_parse_failed(&f->ev, soth_iov(s->reason_code, strlen(s->reason_code)),
                                         soth_iov(s->detail, strlen(s->detail)));
            if (s->reply_len == 2)
                refuse(w, f, method_none, sizeof(method_none), SOTH_CLOSE_PARSE_FAILED);
            else
                refuse_rep(w, f, (enum soth_socks5_rep)s->reply[1], SOTH_CLOSE_PARSE_FAILED);
            return;
        }
        off += (uint32_t)rc;
        if (ev == SOTH_SOCKS5_EV_GREETING) {
            if (!conn_queue(&w->segs, &f->c[SOTH_LEG_CLIENT], method_noauth, 0,
                            sizeof(method_noauth), SEG_STATIC)) {
                buf_put(&w->io, bid);
                flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
                return;
            }
            conn_try_send(w, f, SOTH_LEG_CLIENT);
        } else if (ev == SOTH_SOCKS5_EV_REQUEST) {
            on_request(w, f, s, data, off, len, bid);
            return;
        }
    }
    buf_put(&w->io, bid);
}

void socks_eof(struct worker *w, struct flow *f, unsigned side)
{
    flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
}

void socks_timeout(struct worker *w, struct flow *f)
{
    soth_ev_connect_parse_failed(
        &f->ev, SOTH_IOV_LIT("request_header_timeout"),
        SOTH_IOV_LIT("SOCKS5 greeting and request did not arrive in time"));
    flow_close(w, f, SOTH_CLOSE_IDLE_TIMEOUT);
}
