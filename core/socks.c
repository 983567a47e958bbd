/* A socks5-mode flow until its target is known (core/socks.h). */
#include <stdio.h>
#include <string.h>

#include "soth/proto/socks5.h"

#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "intercept.h"
#include "iobuf.h"
#include "socks.h"
#include "socks_answer.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"

_Static_assert(sizeof(struct soth_socks5) <= SOTH_BUF_SIZE, "the parser lives in one chunk");

void socks_begin(struct worker *w, struct flow *f)
{
    f->is_socks = true;
    flow_set_state(f, FS_SOCKS);
    timer_set(&w->timers, &f->timer, now_ms() + w->cfg->timeouts.request_header_ms);
    conn_arm_recv(w, f, SOTH_LEG_CLIENT);
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
        socks_refuse(w, f, SOTH_SOCKS5_REP_NOT_ALLOWED, SOTH_CLOSE_BLOCKED);
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
                socks_refuse_greeting(w, f);
            else
                socks_refuse(w, f, (enum soth_socks5_rep)s->reply[1], SOTH_CLOSE_PARSE_FAILED);
            return;
        }
        off += (uint32_t)rc;
        if (ev == SOTH_SOCKS5_EV_GREETING) {
            if (!socks_method(w, f)) {
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
