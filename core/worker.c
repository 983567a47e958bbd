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

#include "core_int.h"
#include "learn.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static const char *const flow_state_names[FS_COUNT] = {
    "head",  "resolving", "connecting", "hello",   "tls_up", "tls_down",
    "relay", "answer",    "linger",     "closing", "free",
};

static void flow_close(struct worker *w, struct flow *f, enum soth_close_reason reason);
static void conn_try_send(struct worker *w, struct flow *f, unsigned side);
static void conn_arm_recv(struct worker *w, struct flow *f, unsigned side);
static void flow_start_upstream(struct worker *w, struct flow *f);

/* ------------------------------------------------------------------------------------------
 * small helpers
 * ------------------------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
    return soth_mono_ns() / 1000000u;
}

static struct io_uring_sqe *get_sqe(struct worker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (SOTH_UNLIKELY(sqe == NULL)) {
        /* SQ full: flush what we have and try again; the CQ is large enough (CQSIZE). */
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    SOTH_BUG_ON(sqe == NULL);
    return sqe;
}

static void flow_set_state(struct flow *f, enum flow_state st)
{
    SOTH_BUG_ON(f->state == FS_CLOSING);
    SOTH_LOG(SOTH_LOG_DEBUG, f->ev.worker, f->ev.flow_id, "state %s -> %s",
             flow_state_names[f->state], flow_state_names[st]);
    f->state = (uint8_t)st;
}

/* ---- owned chunks: SOTH_BUF_SIZE bytes each, pooled per worker, never returned to libc. */

/* A free chunk carries this tag after its link, so a chunk returned twice stops loudly instead
 * of being handed to two owners. */
static const uint64_t CHUNK_FREE_TAG = 0x9e3779b97f4a7c15ull;

static char *chunk_get(struct worker *w)
{
    char *c = w->free_chunks;
    if (c != NULL) {
        memcpy(&w->free_chunks, c, sizeof(char *));
        memset(c + sizeof(char *), 0, sizeof(CHUNK_FREE_TAG));
        return c;
    }
    if (w->n_chunks >= SOTH_MAX_CHUNKS)
        return NULL;
    c = malloc(SOTH_BUF_SIZE);
    if (c != NULL) {
        w->n_chunks++;
        memset(c + sizeof(char *), 0, sizeof(CHUNK_FREE_TAG));
    }
    return c;
}

static void chunk_put(struct worker *w, char *c)
{
    uint64_t tag;
    memcpy(&tag, c + sizeof(char *), sizeof(tag));
    SOTH_BUG_ON(tag == CHUNK_FREE_TAG);
    memcpy(c, &w->free_chunks, sizeof(char *));
    memcpy(c + sizeof(char *), &CHUNK_FREE_TAG, sizeof(tag));
    w->free_chunks = c;
}

/* ---- provided buffers */

static char *buf_addr(struct worker *w, unsigned bid)
{
    return w->bufs + (size_t)bid * SOTH_BUF_SIZE;
}

/** A recv completed into provided buffer bid: it is ours until buf_put. */
static unsigned buf_take(struct worker *w, unsigned bid)
{
    SOTH_BUG_ON(bid >= SOTH_BUF_COUNT || w->bid_ours[bid]);
    w->bid_ours[bid] = 1;
    return bid;
}

static void buf_put(struct worker *w, unsigned bid)
{
    SOTH_BUG_ON(bid >= SOTH_BUF_COUNT || !w->bid_ours[bid]);
    w->bid_ours[bid] = 0;
    io_uring_buf_ring_add(w->br, buf_addr(w, bid), SOTH_BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(SOTH_BUF_COUNT), (int)w->br_added);
    w->br_added++;
}

/** Publish returned buffers (one release store per loop turn) and wake recvs that ran dry. */
static void buf_publish(struct worker *w)
{
    if (w->br_added == 0)
        return;
    io_uring_buf_ring_advance(w->br, (int)w->br_added);
    w->br_added = 0;
    while (w->buf_waiters != NULL) {
        struct flow *f = w->buf_waiters;
        w->buf_waiters = f->wnext;
        f->on_wait_list = false;
        for (unsigned s = 0; s < 2; s++) {
            if (f->c[s].recv_wait_buf) {
                f->c[s].recv_wait_buf = false;
                conn_arm_recv(w, f, s);
            }
        }
    }
}

static void seg_release(struct worker *w, struct seg *s)
{
    if (s->bid >= 0)
        buf_put(w, (unsigned)s->bid);
    else if (s->bid == SEG_CHUNK)
        chunk_put(w, s->base);
}

/** Drop the first queued segment of c (sent, or discarded), returning what it holds. */
static void conn_q_pop(struct worker *w, struct conn *c)
{
    struct seg *s = c->q_first;
    c->q_first = s->next;
    if (c->q_first == NULL)
        c->q_last = NULL;
    c->q_count--;
    c->q_bytes -= s->len;
    seg_release(w, s);
    s->next = w->free_segs;
    w->free_segs = s;
}

static void conn_q_clear(struct worker *w, struct conn *c)
{
    while (c->q_first != NULL)
        conn_q_pop(w, c);
}

/* ---- timer wheel: one deadline per flow, checked lazily (idle deadlines move on activity). */

static void timer_unlink(struct worker *w, struct flow *f)
{
    if (f->tpprev == NULL)
        return;
    *f->tpprev = f->tnext;
    if (f->tnext)
        f->tnext->tpprev = f->tpprev;
    f->tnext = NULL;
    f->tpprev = NULL;
    w->n_timers--;
}

static void timer_set(struct worker *w, struct flow *f, uint64_t deadline_ms)
{
    timer_unlink(w, f);
    f->deadline_ms = deadline_ms;
    uint64_t tick = deadline_ms / SOTH_TICK_MS;
    if (tick < w->wheel_tick)
        tick = w->wheel_tick;
    struct flow **head = &w->wheel[tick & (SOTH_WHEEL_SLOTS - 1)];
    f->tnext = *head;
    if (*head)
        (*head)->tpprev = &f->tnext;
    *head = f;
    f->tpprev = head;
    w->n_timers++;
}

/* ------------------------------------------------------------------------------------------
 * flows
 * ------------------------------------------------------------------------------------------ */

static void conn_init(struct conn *c)
{
    memset(c, 0, offsetof(struct conn, msg));
    c->fd = -1;
}

static struct flow *flow_alloc(struct worker *w)
{
    struct flow *f = w->free_flows;
    if (f != NULL) {
        w->free_flows = f->wnext;
    } else {
        if (w->flows_hw >= SOTH_MAX_FLOWS)
            return NULL;
        f = &w->flows[w->flows_hw];
        f->slot = w->flows_hw++;
        f->gen = 0;
    }
    f->gen++;
    f->state = FS_HEAD;
    f->action = SOTH_ACTION_TUNNEL;
    f->is_connect = false;
    f->on_wait_list = false;
    f->first_eof = 0xff;
    f->answer_reason = SOTH_CLOSE_CLIENT_EOF;
    f->pending = 0;
    conn_init(&f->c[0]);
    conn_init(&f->c[1]);
    f->bytes[0] = f->bytes[1] = 0;
    f->deadline_ms = 0;
    f->last_active_ms = now_ms();
    f->tnext = NULL;
    f->tpprev = NULL;
    f->wnext = NULL;
    f->head = NULL;
    f->head_len = 0;
    f->tls[0] = f->tls[1] = NULL;
    f->w = w;
    f->app = NULL;
    f->is_reverse = false;
    f->is_transparent = false;
    f->client_plain = false;
    f->app_done = false;
    f->app_held[0] = f->app_held[1] = false;
    f->leaf_name_len = 0;
    f->answer = NULL;
    f->answer_len = 0;
    f->pre = NULL;
    f->pre_len = f->pre_cap = 0;
    f->upstream_port = 0;
    f->upstream_addr_len = 0;
    w->n_flows++;
    return f;
}

/** Live slots have an odd generation: alloc and free each advance it by one. */
static bool flow_is_live(const struct flow *f)
{
    return f->gen & 1;
}

#define SOTH_PRE_MAX (4u << 20) /* a plain client's bytes kept while its upstream comes up */

static bool pre_put(struct flow *f, const char *p, uint32_t n)
{
    if (n == 0)
        return true;
    if (f->pre_len + n > SOTH_PRE_MAX)
        return false;
    if (f->pre_len + n > f->pre_cap) {
        uint32_t cap = f->pre_cap ? f->pre_cap : 65536;
        while (cap < f->pre_len + n)
            cap *= 2;
        char *np = realloc(f->pre, cap);
        if (np == NULL)
            return false;
        f->pre = np;
        f->pre_cap = cap;
    }
    memcpy(f->pre + f->pre_len, p, n);
    f->pre_len += n;
    return true;
}

static void pre_free(struct flow *f)
{
    free(f->pre);
    f->pre = NULL;
    f->pre_len = f->pre_cap = 0;
}

static void flow_free(struct worker *w, struct flow *f)
{
    for (unsigned s = 0; s < 2; s++) {
        struct conn *c = &f->c[s];
        conn_q_clear(w, c);
        if (c->fd >= 0) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_close(sqe, c->fd);
            io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, s, f->slot, f->gen));
            c->fd = -1;
        }
    }
    if (f->head != NULL) {
        chunk_put(w, f->head);
        f->head = NULL;
    }
    if (f->answer != NULL) {
        chunk_put(w, f->answer);
        f->answer = NULL;
    }
    pre_free(f);
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
    if (f->on_wait_list) {
        for (struct flow **pp = &w->buf_waiters; *pp; pp = &(*pp)->wnext) {
            if (*pp == f) {
                *pp = f->wnext;
                break;
            }
        }
        f->on_wait_list = false;
    }
    timer_unlink(w, f);
    f->state = FS_FREE;
    f->gen++; /* any late CQE for the old generation is now stale */
    f->wnext = w->free_flows;
    w->free_flows = f;
    w->n_flows--;
}

/** After any CQE of a flow: free it once it is closing and nothing is in flight. */
static void flow_maybe_free(struct worker *w, struct flow *f)
{
    if (f->state == FS_CLOSING && f->pending == 0)
        flow_free(w, f);
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

static void flow_close(struct worker *w, struct flow *f, enum soth_close_reason reason)
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
    timer_unlink(w, f);
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

/* ------------------------------------------------------------------------------------------
 * sending
 * ------------------------------------------------------------------------------------------ */

/*
 * Queue bytes toward a socket. Segments come from a worker pool with one entry per provided
 * buffer and owned chunk (plus static answers), so a queue never overflows: how much a
 * connection holds is bounded by backpressure and, at worst, by the worker's buffers.
 */
static bool conn_queue(struct worker *w, struct conn *c, char *base, uint32_t off, uint32_t len,
                       int32_t bid)
{
    struct seg *s = w->free_segs;
    /* Buffers and chunks each have their segment; only static answers can run out. */
    SOTH_BUG_ON(s == NULL && bid != SEG_STATIC);
    if (s == NULL)
        return false;
    w->free_segs = s->next;
    s->base = base;
    s->off = off;
    s->len = len;
    s->bid = bid;
    s->next = NULL;
    if (c->q_last)
        c->q_last->next = s;
    else
        c->q_first = s;
    c->q_last = s;
    c->q_count++;
    c->q_bytes += len;
    return true;
}

/** Copy bytes into owned chunks queued toward side (our own answers, rewritten heads). */
static bool conn_queue_copy(struct worker *w, struct conn *c, const char *p, size_t len)
{
    while (len > 0) {
        struct seg *last = c->q_last;
        /* Append to the last owned chunk when it has room and is not being sent. */
        if (last && last->bid == SEG_CHUNK && !c->send_inflight &&
            last->off + last->len < SOTH_BUF_SIZE) {
            size_t room = SOTH_BUF_SIZE - last->off - last->len;
            size_t n = len < room ? len : room;
            memcpy(last->base + last->off + last->len, p, n);
            last->len += (uint32_t)n;
            c->q_bytes += n;
            p += n;
            len -= n;
            continue;
        }
        char *ch = chunk_get(w);
        if (ch == NULL)
            return false;
        size_t n = len < SOTH_BUF_SIZE ? len : SOTH_BUF_SIZE;
        memcpy(ch, p, n);
        conn_queue(w, c, ch, 0, (uint32_t)n, SEG_CHUNK);
        p += n;
        len -= n;
    }
    return true;
}

static void conn_submit_shutdown(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    c->shut_pending = false;
    c->shut_done = true;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_shutdown(sqe, c->fd, SHUT_WR);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_SHUTDOWN, side, f->slot, f->gen));
    f->pending++;
}

static void conn_try_send(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    if (c->send_inflight || !c->connected || f->state == FS_CLOSING)
        return;
    if (c->q_count == 0) {
        if (c->shut_pending)
            conn_submit_shutdown(w, f, side);
        return;
    }
    unsigned n = 0;
    for (struct seg *s = c->q_first; s != NULL && n < SOTH_SEND_IOV; s = s->next, n++) {
        c->iov[n].iov_base = s->base + s->off;
        c->iov[n].iov_len = s->len;
    }
    memset(&c->msg, 0, sizeof(c->msg));
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = n;
    c->iov_segs = n;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, side, f->slot, f->gen));
    c->send_inflight = true;
    f->pending++;
}

/* ------------------------------------------------------------------------------------------
 * receiving
 * ------------------------------------------------------------------------------------------ */

static void conn_arm_recv(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    if (c->recv_armed || c->eof_in || c->recv_paused || c->recv_wait_buf || c->fd < 0 ||
        f->state == FS_CLOSING)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = SOTH_BGID;
    io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, side, f->slot, f->gen));
    c->recv_armed = true;
    f->pending++;
}

/** Stop reading from side (backpressure): cancel its multishot recv. */
static void conn_pause_recv(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    if (c->recv_paused)
        return;
    c->recv_paused = true;
    if (!c->recv_armed)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_cancel64(sqe, ud_pack(OP_RECV, side, f->slot, f->gen), 0);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, side, f->slot, f->gen));
}

static void conn_resume_recv(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    if (!c->recv_paused)
        return;
    c->recv_paused = false;
    conn_arm_recv(w, f, side);
}

static bool over_high(const struct conn *c)
{
    return c->q_bytes >= SOTH_HIGH_WM || c->q_count >= SOTH_OUTQ_PAUSE;
}

/* ------------------------------------------------------------------------------------------
 * our own answers
 * ------------------------------------------------------------------------------------------ */

/**
 * Send an HTTP answer to the client and close gracefully afterwards (send, FIN, wait for the
 * peer's FIN or SOTH_LINGER_MS), then stream_closed with reason.
 */
static void flow_answer(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                        const char *body, size_t body_len, enum soth_close_reason reason)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %u %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, phrase, body_len);
    struct conn *c = &f->c[SIDE_CLIENT];
    f->answer_reason = (uint8_t)reason;
    flow_set_state(f, FS_ANSWER);
    struct soth_tls_conn *t = f->tls[SIDE_CLIENT];
    if (t != NULL) {
        /* Inside the client's TLS session (an upstream TLS failure): then close_notify. */
        if (soth_tls_conn_write(t, head, (size_t)n) < 0 ||
            soth_tls_conn_write(t, body, body_len) < 0) {
            flow_close(w, f, reason);
            return;
        }
        soth_tls_conn_shutdown(t);
        struct soth_iov iov;
        size_t k;
        while ((k = soth_tls_conn_out(t, &iov)) > 0) {
            if (!conn_queue_copy(w, c, iov.base, k)) {
                flow_close(w, f, reason);
                return;
            }
            soth_tls_conn_out_consume(t, k);
        }
    } else if (!conn_queue_copy(w, c, head, (size_t)n) || !conn_queue_copy(w, c, body, body_len)) {
        flow_close(w, f, reason);
        return;
    }
    c->shut_pending = true;
    timer_set(w, f, now_ms() + SOTH_ANSWER_MS);
    conn_try_send(w, f, SIDE_CLIENT);
}

static void flow_answer_text(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                             enum soth_close_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void flow_answer_text(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                             enum soth_close_reason reason, const char *fmt, ...)
{
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(body))
        n = sizeof(body) - 1;
    flow_answer(w, f, status, phrase, body, (size_t)n, reason);
}

/* ------------------------------------------------------------------------------------------
 * upstream: resolve, connect
 * ------------------------------------------------------------------------------------------ */

static uint64_t name_hash(struct soth_iov host)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, lowercased */
    for (size_t i = 0; i < host.len; i++) {
        unsigned char ch = (unsigned char)host.base[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch + 32);
        h = (h ^ ch) * 1099511628211ull;
    }
    return h;
}

static bool addr_from_text(const char *text, size_t len, uint16_t port, struct sockaddr_storage *ss,
                           socklen_t *sl)
{
    char tmp[64];
    if (len == 0 || len >= sizeof(tmp))
        return false;
    memcpy(tmp, text, len);
    tmp[len] = '\0';
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, tmp, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *sl = sizeof(*s4);
        return true;
    }
    if (inet_pton(AF_INET6, tmp, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *sl = sizeof(*s6);
        return true;
    }
    return false;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/** Resolve without blocking: overrides, literals, the worker's cache. */
static bool resolve_fast(struct worker *w, struct soth_iov host, uint16_t port,
                         struct sockaddr_storage *ss, socklen_t *sl)
{
    const struct soth_config *cfg = w->cfg;
    for (size_t i = 0; i < cfg->n_resolve; i++) {
        if (soth_iov_is_ci(host, cfg->resolve[i].name))
            return addr_from_text(cfg->resolve[i].addr, strlen(cfg->resolve[i].addr), port, ss, sl);
    }
    if (addr_from_text(host.base, host.len, port, ss, sl))
        return true;
    if (soth_iov_is_ci(host, "localhost"))
        return addr_from_text("127.0.0.1", 9, port, ss, sl);
    uint64_t h = name_hash(host);
    struct dns_cache_ent *e = &w->dns[h & (SOTH_DNS_CACHE - 1)];
    if (e->hash == h && e->expires_ms > now_ms()) {
        memcpy(ss, &e->addr, e->addr_len);
        *sl = e->addr_len;
        set_port(ss, port);
        return true;
    }
    return false;
}

static void flow_connect_failed(struct worker *w, struct flow *f, int err, bool timeout)
{
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "upstream %.*s:%u: %s",
             (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
             timeout ? "connect timeout" : soth_strerror(err));
    /* Bytes the client sent ahead for the upstream are dropped with the flow. */
    conn_q_clear(w, &f->c[SIDE_UPSTREAM]);
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

static void flow_connect(struct worker *w, struct flow *f)
{
    struct conn *u = &f->c[SIDE_UPSTREAM];
    int fd = socket(f->upstream_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        flow_connect_failed(w, f, -errno, false);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    u->fd = fd;
    flow_set_state(f, FS_CONNECTING);
    timer_set(w, f, now_ms() + w->cfg->timeouts.connect_ms);
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&f->upstream_addr, f->upstream_addr_len);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CONNECT, SIDE_UPSTREAM, f->slot, f->gen));
    f->pending++;
}

static void flow_start_upstream(struct worker *w, struct flow *f)
{
    struct soth_iov host = soth_iov(f->ev.server_host, f->ev.server_host_len);
    if (resolve_fast(w, host, f->upstream_port, &f->upstream_addr, &f->upstream_addr_len)) {
        flow_connect(w, f);
        return;
    }
    struct resolve_req rq;
    rq.slot = f->slot;
    rq.gen = f->gen;
    rq.port = f->upstream_port;
    rq.host_len = (uint16_t)host.len;
    memcpy(rq.host, host.base, host.len);
    if (soth_resolver_submit(w, &rq) < 0) {
        flow_connect_failed(w, f, -EAGAIN, false);
        return;
    }
    flow_set_state(f, FS_RESOLVING);
    timer_set(w, f, now_ms() + w->cfg->timeouts.connect_ms);
}

static void on_resolved(struct worker *w, const struct resolve_resp *rs)
{
    if (rs->slot >= w->flows_hw)
        return;
    struct flow *f = &w->flows[rs->slot];
    if (f->gen != rs->gen || f->state != FS_RESOLVING)
        return;
    if (rs->err < 0) {
        flow_connect_failed(w, f, rs->err, false);
        return;
    }
    struct soth_iov host = soth_iov(f->ev.server_host, f->ev.server_host_len);
    uint64_t h = name_hash(host);
    struct dns_cache_ent *e = &w->dns[h & (SOTH_DNS_CACHE - 1)];
    e->hash = h;
    e->expires_ms = now_ms() + 60000; /* getaddrinfo gives no TTL: keep a minute */
    memcpy(&e->addr, &rs->addr, rs->addr_len);
    e->addr_len = rs->addr_len;
    memcpy(&f->upstream_addr, &rs->addr, rs->addr_len);
    f->upstream_addr_len = rs->addr_len;
    flow_connect(w, f);
}

/* ------------------------------------------------------------------------------------------
 * TLS interception (regular-mode CONNECT with an intercept decision)
 *
 * Sequence: upstream TCP connect, "200 Connection Established", the client's ClientHello
 * gathered in f->head and peeked (SNI, ALPN), handshake with the upstream offering the client's
 * ALPN, then the client handshake with our leaf for the name and the ALPN the upstream chose
 * (mirroring), then plaintext relay: decrypt from one leg, encrypt into the other.
 * ------------------------------------------------------------------------------------------ */

static bool flow_intercepting(const struct worker *w, const struct flow *f)
{
    return (f->is_connect || f->is_reverse || f->is_transparent) &&
           f->action == SOTH_ACTION_INTERCEPT && w->tls != NULL;
}

static void flow_relay_start(struct worker *w, struct flow *f);
static void app_after(struct worker *w, struct flow *f, unsigned from, int rc);
static void flow_check_done(struct worker *w, struct flow *f);

static bool alpn_is(struct soth_iov a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && memcmp(a.base, s, n) == 0;
}

/** Move queued ciphertext of tls[side] into the socket's send queue. */
static bool tls_flush(struct worker *w, struct flow *f, unsigned side)
{
    struct soth_tls_conn *t = f->tls[side];
    struct soth_iov iov;
    size_t n;
    while (t != NULL && (n = soth_tls_conn_out(t, &iov)) > 0) {
        if (!conn_queue_copy(w, &f->c[side], iov.base, n))
            return false;
        soth_tls_conn_out_consume(t, n);
    }
    conn_try_send(w, f, side);
    return true;
}

static void tls_client_start(struct worker *w, struct flow *f, struct soth_iov alpn);

/**
 * After a failed handshake: an upstream failure still gives the client a TLS session with our
 * leaf (or, for a plain client, an answer right away) and then 502 naming the reason (SPEC);
 * anything else closes the flow.
 */
static void tls_failed_end(struct worker *w, struct flow *f, unsigned side,
                           enum soth_tls_fail reason, const char *detail)
{
    bool can_answer = side == SIDE_UPSTREAM && f->tls[SIDE_CLIENT] == NULL && f->answer == NULL &&
                      (f->client_plain || f->head != NULL) && !f->c[SIDE_CLIENT].eof_in;
    char *a = can_answer ? chunk_get(w) : NULL;
    if (a == NULL) {
        flow_close(w, f, SOTH_CLOSE_TLS_FAILED);
        return;
    }
    int n = snprintf(a, SOTH_BUF_SIZE, "soth-mitm: TLS with the upstream %.*s:%u failed: %s: %s\n",
                     (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
                     soth_tls_fail_names[reason], detail);
    f->answer = a;
    f->answer_len = (uint32_t)n;
    /* The upstream is done with: stop reading it (its bytes and FIN are ignored from now). */
    conn_pause_recv(w, f, SIDE_UPSTREAM);
    soth_tls_conn_free(f->tls[SIDE_UPSTREAM]);
    f->tls[SIDE_UPSTREAM] = NULL;
    if (f->client_plain) {
        flow_answer(w, f, 502, "Bad Gateway", f->answer, f->answer_len, SOTH_CLOSE_TLS_FAILED);
        return;
    }
    /* HTTP/1.1 when the client offers it, so the answer is one it can read. */
    struct soth_tls_client_hello ch;
    memset(&ch, 0, sizeof(ch));
    bool h1 = false;
    if (soth_tls_peek_client_hello(f->head, f->head_len, &ch) >= 0)
        for (size_t i = 0; i < ch.n_alpn; i++)
            h1 = h1 || alpn_is(ch.alpn[i], "http/1.1");
    tls_client_start(w, f, h1 ? SOTH_IOV_LIT("http/1.1") : SOTH_IOV_NULL);
}

static void tls_failed(struct worker *w, struct flow *f, unsigned side, int transport)
{
    struct soth_tls_conn *t = f->tls[side];
    enum soth_tls_fail reason = SOTH_TLS_FAIL_OTHER;
    char detail[256] = "";
    if (side == SIDE_CLIENT && t == NULL)
        soth_ev_tls_handshake_started(&f->ev, SOTH_SIDE_CLIENT, SOTH_IOV_NULL);
    if (t == NULL && transport >= 0) {
        static const enum soth_tls_fail direct[] = {SOTH_TLS_FAIL_EOF, SOTH_TLS_FAIL_RESET,
                                                    SOTH_TLS_FAIL_TIMEOUT};
        reason = direct[transport];
        snprintf(detail, sizeof(detail), "%s before the handshake started",
                 soth_tls_fail_names[reason]);
    } else if (t != NULL && transport >= 0)
        reason = soth_tls_conn_classify_transport(t, (enum soth_tls_transport)transport, detail,
                                                  sizeof(detail));
    else if (t == NULL || soth_tls_conn_failure(t, &reason, detail, sizeof(detail)) < 0)
        snprintf(detail, sizeof(detail), "TLS failure");
    /* A learning signal too: the telemetry thread counts it and fills in the event's counts. */
    soth_learn_flow_signal(w, &f->ev, side ? SOTH_SIDE_UPSTREAM : SOTH_SIDE_CLIENT,
                           (enum soth_tls_failure)reason, soth_learn_native_provider(w),
                           transport >= 0 ? SOTH_IOV_LIT("transport") : SOTH_IOV_LIT("tls"),
                           soth_iov(detail, strlen(detail)));
    SOTH_METRIC_ADD(w->m->tls_failures[side][reason], 1);
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "TLS %s: %s: %s",
             side ? "upstream" : "client", soth_tls_fail_names[reason], detail);
    tls_failed_end(w, f, side, reason, detail);
}

static void tls_succeeded(struct flow *f, unsigned side)
{
    struct soth_tls_conn *t = f->tls[side];
    soth_ev_tls_handshake_succeeded(&f->ev, side ? SOTH_SIDE_UPSTREAM : SOTH_SIDE_CLIENT,
                                    soth_tls_conn_version(t), soth_tls_conn_cipher(t),
                                    soth_tls_conn_alpn(t));
}

/** Decrypt what tls[from] holds and hand it to the HTTP layer. False once the flow ended. */
static bool tls_pump_app(struct worker *w, struct flow *f, unsigned from)
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
    app_after(w, f, from, rc);
    return f->state == FS_RELAY && !f->app_done;
}

/** Decrypt what tls[from] holds and re-encrypt it into tls[from ^ 1]. */
static bool tls_pump(struct worker *w, struct flow *f, unsigned from)
{
    if (f->app != NULL)
        return tls_pump_app(w, f, from);
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
    if (!tls_flush(w, f, to) || !tls_flush(w, f, from)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------
 * the HTTP layer (core/app.h): plaintext in from either leg, plaintext out through leg_send
 * ------------------------------------------------------------------------------------------ */

/** app_env.send: plaintext toward side, encrypted when that leg speaks TLS. */
static int leg_send(void *ctx, unsigned side, const char *p, size_t n)
{
    struct flow *f = ctx;
    if (f->tls[side] != NULL)
        return soth_tls_conn_write(f->tls[side], p, n) < 0 ? SOTH_E_TLS : 0;
    return conn_queue_copy(f->w, &f->c[side], p, n) ? 0 : SOTH_E_NOMEM;
}

static bool leg_flush(struct worker *w, struct flow *f, unsigned side)
{
    if (f->tls[side] != NULL)
        return tls_flush(w, f, side);
    conn_try_send(w, f, side);
    return true;
}

/** The HTTP layer finished: send what is queued, close_notify and FIN both legs, then close
 *  once the client's FIN arrives (bounded by SOTH_ANSWER_MS). */
static void app_finish(struct worker *w, struct flow *f)
{
    f->app_done = true;
    for (unsigned s = 0; s < 2; s++) {
        struct conn *c = &f->c[s];
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
    conn_resume_recv(w, f, SIDE_CLIENT);
    conn_resume_recv(w, f, SIDE_UPSTREAM);
    timer_set(w, f, now_ms() + SOTH_ANSWER_MS);
    flow_check_done(w, f);
}

/**
 * After the HTTP layer ran on bytes from `from` (rc as app_input returned): flush both legs,
 * end the flow when the layer is done, and apply backpressure.
 */
static void app_after(struct worker *w, struct flow *f, unsigned from, int rc)
{
    if (f->state != FS_RELAY || f->app_done)
        return;
    if (!leg_flush(w, f, SIDE_CLIENT) || !leg_flush(w, f, SIDE_UPSTREAM)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (rc == APP_DONE) {
        app_finish(w, f);
        return;
    }
    if (rc < 0) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "HTTP layer: %s", soth_strerror(rc));
        flow_close(w, f, app_close_reason(f->app));
        return;
    }
    /* The layer's timers: a request head in progress, an idle WebSocket turn (app_deadline). */
    uint64_t hd = app_deadline(f->app);
    if (hd != 0 && (f->deadline_ms == 0 || hd < f->deadline_ms))
        timer_set(w, f, hd);
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
                app_after(w, f, from, rc);
                return;
            }
        }
    }
    (void)from;
}

/** Bytes from a plain (not TLS) leg for the HTTP layer. Takes the buffer. */
static void app_plain_input(struct worker *w, struct flow *f, unsigned side, const char *p,
                            uint32_t len)
{
    int rc = app_input(f->app, side, p, len);
    app_after(w, f, side, rc);
    if (f->state == FS_RELAY && !f->app_done && over_high(&f->c[side ^ 1]) && !app_is_h2(f->app))
        conn_pause_recv(w, f, side);
}

/** Both legs are up (handshakes done where TLS is spoken): start the HTTP layer and relay. */
static void flow_relay_start(struct worker *w, struct flow *f)
{
    flow_set_state(f, FS_RELAY);
    timer_set(w, f, now_ms() + w->cfg->timeouts.idle_ms);
    if (f->action == SOTH_ACTION_INTERCEPT && f->app == NULL) {
        struct soth_iov alpn =
            f->tls[SIDE_CLIENT] != NULL ? soth_tls_conn_alpn(f->tls[SIDE_CLIENT]) : SOTH_IOV_NULL;
        bool h2 = alpn_is(alpn, "h2");
        if (h2 || alpn.len == 0 || alpn_is(alpn, "http/1.1") || alpn_is(alpn, "http/1.0")) {
            struct app_env env = {
                .cfg = w->cfg,
                .ev = &f->ev,
                .m = w->m,
                .client_tls = f->tls[SIDE_CLIENT] != NULL,
                .ctx = f,
                .send = leg_send,
            };
            f->app = app_new(h2 ? APP_H2 : APP_H1, &env);
            if (f->app == NULL && !h2) {
                flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
                return;
            }
            /* Without an HTTP/2 layer (not built), h2 is relayed as TLS-wrapped bytes. */
        }
    }
    conn_arm_recv(w, f, SIDE_CLIENT);
    conn_arm_recv(w, f, SIDE_UPSTREAM);
    if (f->app != NULL && f->head != NULL) {
        /* Reverse mode: the plain client's first bytes, read while looking for a ClientHello. */
        char *head = f->head;
        uint32_t n = f->head_len;
        f->head = NULL;
        f->head_len = 0;
        int rc = app_input(f->app, SIDE_CLIENT, head, n);
        chunk_put(w, head);
        if (rc == APP_AGAIN && f->pre_len > 0)
            rc = app_input(f->app, SIDE_CLIENT, f->pre, f->pre_len);
        pre_free(f);
        app_after(w, f, SIDE_CLIENT, rc); /* resumes client reads paused by pre_put */
    } else if (f->head != NULL) {
        conn_queue_copy(w, &f->c[SIDE_UPSTREAM], f->head, f->head_len);
        conn_queue_copy(w, &f->c[SIDE_UPSTREAM], f->pre, f->pre_len);
        pre_free(f);
        conn_resume_recv(w, f, SIDE_CLIENT);
        chunk_put(w, f->head);
        f->head = NULL;
        f->head_len = 0;
    }
    if (f->state != FS_RELAY || f->app_done)
        return;
    if (f->app != NULL && f->tls[SIDE_CLIENT] == NULL && f->tls[SIDE_UPSTREAM] == NULL) {
        app_after(w, f, SIDE_CLIENT, APP_AGAIN);
        return;
    }
    /* Application data may already sit behind either handshake (an HTTP/2 layer also has its
     * prefaces to send). */
    if (f->app != NULL)
        app_after(w, f, SIDE_CLIENT, APP_AGAIN);
    if (f->tls[SIDE_CLIENT] != NULL && !tls_pump(w, f, SIDE_CLIENT))
        return;
    if (f->tls[SIDE_UPSTREAM] != NULL)
        tls_pump(w, f, SIDE_UPSTREAM);
    else
        conn_try_send(w, f, SIDE_UPSTREAM);
}

/** Client side handshake done: relay from now on. */
static void tls_client_ready(struct worker *w, struct flow *f)
{
    tls_succeeded(f, SIDE_CLIENT);
    if (f->answer != NULL) {
        /* The upstream handshake failed: our 502 goes out inside the client's session. */
        flow_answer(w, f, 502, "Bad Gateway", f->answer, f->answer_len, SOTH_CLOSE_TLS_FAILED);
        return;
    }
    flow_relay_start(w, f);
}

/** Upstream handshake done: answer the client with our leaf and the upstream's ALPN. */
static void tls_upstream_ready(struct worker *w, struct flow *f)
{
    tls_succeeded(f, SIDE_UPSTREAM);
    if (f->client_plain) {
        /* Reverse mode, plain client: nothing to answer with a leaf. */
        flow_relay_start(w, f);
        return;
    }
    tls_client_start(w, f, soth_tls_conn_alpn(f->tls[SIDE_UPSTREAM]));
}

/** Start our server half toward the client: a leaf for the name, `alpn` selected. */
static void tls_client_start(struct worker *w, struct flow *f, struct soth_iov alpn)
{
    struct soth_iov name = f->leaf_name_len > 0
                               ? soth_iov(f->leaf_name, f->leaf_name_len)
                               : soth_iov(f->ev.server_host, f->ev.server_host_len);
    struct soth_tls_conn *c = NULL;
    struct soth_tls_leaf_cache_stats st;
    soth_ev_tls_handshake_started(&f->ev, SOTH_SIDE_CLIENT, name);
    int rc = soth_tls_conn_new_server(w->tls, name, alpn, &c);
    soth_tls_leaf_cache_stats(w->tls, &st);
    atomic_store_explicit(&w->m->leaf_cache_hits, st.hits, memory_order_relaxed);
    atomic_store_explicit(&w->m->leaf_cache_misses, st.misses, memory_order_relaxed);
    if (rc < 0) {
        tls_failed(w, f, SIDE_CLIENT, -1);
        return;
    }
    f->tls[SIDE_CLIENT] = c;
    flow_set_state(f, FS_TLS_DOWN);
    /* Replay the ClientHello (and whatever followed it) into our server half. */
    soth_tls_conn_feed(c, f->head, f->head_len);
    rc = soth_tls_conn_handshake(c);
    soth_tls_conn_feed_done(c);
    chunk_put(w, f->head);
    f->head = NULL;
    f->head_len = 0;
    if (!tls_flush(w, f, SIDE_CLIENT)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (rc == 0)
        tls_client_ready(w, f);
    else if (rc != SOTH_E_INCOMPLETE)
        tls_failed(w, f, SIDE_CLIENT, -1);
}

/** The client's first TLS bytes cannot be a ClientHello we can intercept: fail the flow. */
static void hello_failed(struct worker *w, struct flow *f, struct soth_iov detail)
{
    soth_ev_tls_handshake_started(&f->ev, SOTH_SIDE_CLIENT, SOTH_IOV_NULL);
    soth_learn_flow_signal(w, &f->ev, SOTH_SIDE_CLIENT, SOTH_TLSF_HANDSHAKE,
                           soth_learn_native_provider(w), SOTH_IOV_LIT("clienthello"), detail);
    SOTH_METRIC_ADD(w->m->tls_failures[SOTH_SIDE_CLIENT][SOTH_TLSF_HANDSHAKE], 1);
    flow_close(w, f, SOTH_CLOSE_TLS_FAILED);
}

/** Start our client half toward the upstream (SNI name, ALPN offer), FS_TLS_UP. */
static void tls_upstream_start(struct worker *w, struct flow *f, struct soth_iov name,
                               const struct soth_iov *alpn, size_t n_alpn)
{
    soth_ev_tls_handshake_started(&f->ev, SOTH_SIDE_UPSTREAM, name);
    struct soth_tls_conn *u = NULL;
    if (soth_tls_conn_new_client(w->tls, name, alpn, n_alpn, &u) < 0) {
        tls_failed(w, f, SIDE_UPSTREAM, -1);
        return;
    }
    f->tls[SIDE_UPSTREAM] = u;
    flow_set_state(f, FS_TLS_UP);
    timer_set(w, f, now_ms() + w->cfg->timeouts.tls_handshake_ms);
    int hrc = soth_tls_conn_handshake(u);
    if (hrc < 0 && hrc != SOTH_E_INCOMPLETE) {
        tls_failed(w, f, SIDE_UPSTREAM, -1);
        return;
    }
    if (!tls_flush(w, f, SIDE_UPSTREAM)) {
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    conn_arm_recv(w, f, SIDE_UPSTREAM);
}

/** Transparent mode: does a plain client start with an HTTP request line ("TOKEN ")? */
static bool looks_like_http(const char *p, uint32_t n)
{
    for (uint32_t i = 0; i < n && i < 20; i++) {
        if (p[i] == ' ')
            return i > 0;
        if (p[i] < 'A' || p[i] > 'Z')
            return false;
    }
    return false;
}

/** FS_HELLO: enough of the ClientHello? Then start the upstream handshake. */
static void tls_try_hello(struct worker *w, struct flow *f)
{
    if (f->head == NULL || f->state != FS_HELLO)
        return;
    struct soth_tls_client_hello ch;
    memset(&ch, 0, sizeof(ch));
    ssize_t rc = soth_tls_peek_client_hello(f->head, f->head_len, &ch);
    if (rc == SOTH_E_INCOMPLETE && f->head_len < SOTH_BUF_SIZE)
        return;
    if (rc == SOTH_TLS_E_NOT_TLS &&
        (f->is_reverse || (f->is_transparent && looks_like_http(f->head, f->head_len)))) {
        /* Reverse or transparent mode, plain HTTP from the client: parse it; TLS toward an
         * https reverse origin. */
        f->client_plain = true;
        if (f->is_reverse && w->cfg->reverse_tls) {
            static const struct soth_iov h1[] = {SOTH_IOV_LIT("http/1.1")};
            tls_upstream_start(w, f, soth_iov(f->ev.server_host, f->ev.server_host_len), h1, 1);
        } else {
            flow_relay_start(w, f);
        }
        return;
    }
    if (rc == SOTH_TLS_E_NOT_TLS) {
        /* Not TLS: nothing to intercept at this layer; relay what the client sent as is. */
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "not TLS: relaying as a tunnel");
        f->action = SOTH_ACTION_TUNNEL;
        conn_queue_copy(w, &f->c[SIDE_UPSTREAM], f->head, f->head_len);
        conn_queue_copy(w, &f->c[SIDE_UPSTREAM], f->pre, f->pre_len);
        pre_free(f);
        conn_resume_recv(w, f, SIDE_CLIENT);
        chunk_put(w, f->head);
        f->head = NULL;
        f->head_len = 0;
        flow_set_state(f, FS_RELAY);
        timer_set(w, f, now_ms() + w->cfg->timeouts.idle_ms);
        conn_arm_recv(w, f, SIDE_UPSTREAM);
        conn_try_send(w, f, SIDE_UPSTREAM);
        return;
    }
    if (rc < 0) {
        hello_failed(w, f, SOTH_IOV_LIT("malformed or oversized ClientHello"));
        return;
    }
    soth_ev_flow_set_protocol(&f->ev, SOTH_PROTO_TLS);
    /*
     * The ALPN offer toward the upstream: the client's list without what we cannot relay as
     * negotiated ("h2" only with http2_enabled; gRPC's "grpc-exp" is HTTP/2 on the wire, so
     * the client gets "h2" when the upstream picks it).
     */
    struct soth_iov alpn[SOTH_TLS_MAX_ALPN];
    size_t n_alpn = 0;
    bool offers_h1 = false;
    for (size_t i = 0; i < ch.n_alpn; i++) {
        if (alpn_is(ch.alpn[i], "grpc-exp") ||
            (alpn_is(ch.alpn[i], "h2") && !w->cfg->http2_enabled))
            continue;
        if (alpn_is(ch.alpn[i], "http/1.1"))
            offers_h1 = true;
        alpn[n_alpn++] = ch.alpn[i];
    }
    if (ch.has_alpn && n_alpn == 0) {
        /* Nothing left (an h2-only client with HTTP/2 off): offer HTTP/1.1. */
        alpn[n_alpn++] = SOTH_IOV_LIT("http/1.1");
    }
    if (f->is_reverse) {
        /* Our leaf is for the name the client asked for; the origin is the configured one. */
        struct soth_iov leaf = ch.has_sni && ch.sni.len > 0
                                   ? ch.sni
                                   : soth_iov(f->ev.server_host, f->ev.server_host_len);
        memcpy(f->leaf_name, leaf.base, leaf.len);
        f->leaf_name_len = (uint8_t)leaf.len;
        if (!w->cfg->reverse_tls) {
            /* Plain HTTP origin: we terminate TLS and speak HTTP/1.1 to it. */
            tls_client_start(w, f, offers_h1 ? SOTH_IOV_LIT("http/1.1") : SOTH_IOV_NULL);
            return;
        }
    } else if (ch.has_sni && ch.sni.len > 0) {
        /* The name for SNI and our leaf: the client's SNI, else the CONNECT host. */
        soth_ev_flow_set_server(&f->ev, ch.sni, f->ev.server_port);
    }
    tls_upstream_start(w, f, soth_iov(f->ev.server_host, f->ev.server_host_len), alpn, n_alpn);
}

/** Client bytes before the client handshake starts: gathered as the ClientHello. */
static void tls_hello_bytes(struct worker *w, struct flow *f, const char *p, uint32_t len)
{
    if (f->head == NULL) {
        f->head = chunk_get(w);
        f->head_len = 0;
        if (f->head == NULL) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
    }
    uint32_t room = SOTH_BUF_SIZE - f->head_len;
    if (len > room || f->pre_len > 0) {
        uint8_t first = f->head_len > 0 ? (uint8_t)f->head[0] : (uint8_t)p[0];
        if (first == 0x16) {
            hello_failed(w, f, SOTH_IOV_LIT("client sent more than a ClientHello"));
            return;
        }
        /* Not TLS (a plain client's big first write before the upstream is up): keep the
         * rest aside, bounded, and stop reading until the relay starts. */
        uint32_t n = f->pre_len > 0 ? 0 : room;
        memcpy(f->head + f->head_len, p, n);
        f->head_len += n;
        if (!pre_put(f, p + n, len - n)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        conn_pause_recv(w, f, SIDE_CLIENT);
        tls_try_hello(w, f);
        return;
    }
    memcpy(f->head + f->head_len, p, len);
    f->head_len += len;
    tls_try_hello(w, f);
}

/** Ciphertext from side while intercepting (handshakes or relay). Takes the buffer. */
static void tls_input(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len)
{
    char *data = buf_addr(w, bid);
    if (f->state == FS_HELLO || (side == SIDE_CLIENT && f->tls[SIDE_CLIENT] == NULL)) {
        if (side == SIDE_CLIENT)
            tls_hello_bytes(w, f, data, len);
        /* An upstream that speaks before the ClientHello is not a TLS server: drop it. */
        buf_put(w, bid);
        return;
    }
    struct soth_tls_conn *t = f->tls[side];
    if (soth_tls_conn_feed(t, data, len) < 0) {
        buf_put(w, bid);
        flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    if (f->state == FS_TLS_UP || f->state == FS_TLS_DOWN) {
        int rc = soth_tls_conn_is_established(t) ? 0 : soth_tls_conn_handshake(t);
        soth_tls_conn_feed_done(t);
        buf_put(w, bid);
        if (!tls_flush(w, f, side)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        if (rc == SOTH_E_INCOMPLETE)
            return;
        if (rc < 0) {
            tls_failed(w, f, side, -1);
            return;
        }
        if (side == SIDE_UPSTREAM && f->state == FS_TLS_UP)
            tls_upstream_ready(w, f);
        else if (side == SIDE_CLIENT && f->state == FS_TLS_DOWN)
            tls_client_ready(w, f);
        return;
    }
    uint32_t gen = f->gen;
    bool ok = tls_pump(w, f, side);
    if (f->gen != gen) {
        /* The pump ended the flow and, nothing being in flight, freed it and t with it. */
        buf_put(w, bid);
        return;
    }
    soth_tls_conn_feed_done(t);
    buf_put(w, bid);
    /* HTTP/2 holds output per leg instead: pausing would stall every stream's frames. */
    if (ok && over_high(&f->c[side ^ 1]) && (f->app == NULL || !app_is_h2(f->app)))
        conn_pause_recv(w, f, side);
}

static void on_connect(struct worker *w, struct flow *f, int res)
{
    if (f->state != FS_CONNECTING)
        return;
    if (res < 0) {
        struct conn *u = &f->c[SIDE_UPSTREAM];
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_close(sqe, u->fd);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, SIDE_UPSTREAM, f->slot, f->gen));
        u->fd = -1;
        flow_connect_failed(w, f, res, false);
        return;
    }
    struct conn *u = &f->c[SIDE_UPSTREAM];
    u->connected = true;
    bool intercept = flow_intercepting(w, f);
    flow_set_state(f, intercept ? FS_HELLO : FS_RELAY);
    timer_set(w, f,
              now_ms() +
                  (intercept ? w->cfg->timeouts.tls_handshake_ms : w->cfg->timeouts.idle_ms));
    if (f->is_connect) {
        static char established[] = "HTTP/1.1 200 Connection Established\r\n\r\n";
        /* The client queue is empty here: nothing from the upstream has been read yet. */
        if (!conn_queue(w, &f->c[SIDE_CLIENT], established, 0, sizeof(established) - 1,
                        SEG_STATIC)) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return;
        }
        conn_try_send(w, f, SIDE_CLIENT);
    }
    if (intercept) {
        /* The ClientHello may have come with the CONNECT: see whether it is complete. */
        conn_arm_recv(w, f, SIDE_CLIENT);
        tls_try_hello(w, f);
        return;
    }
    conn_arm_recv(w, f, SIDE_UPSTREAM);
    conn_arm_recv(w, f, SIDE_CLIENT);
    conn_try_send(w, f, SIDE_UPSTREAM);
}

/* ------------------------------------------------------------------------------------------
 * decisions and the proxy request head (regular mode)
 * ------------------------------------------------------------------------------------------ */

static bool learning_never(void *ctx, struct soth_iov host, uint16_t port)
{
    return false;
}

/** TLS learning changed this flow's decision to tunnel: say so in the flow. */
static void learning_applied(struct worker *w, struct flow *f)
{
    struct soth_iov host = soth_iov(f->ev.server_host, f->ev.server_host_len);
    struct soth_tls_learning_pin pin = {.provider = SOTH_TLS_PROVIDER_NATIVE};
    uint64_t now = soth_mono_ns();
    /* is_pinned said yes a moment ago; a pin ending in between leaves the defaults. */
    soth_tls_learning_lookup(w->learn_view, host, f->ev.server_port, now, &pin);
    char why[160];
    int n = snprintf(why, sizeof(why),
                     "failure_threshold_reached: %u client-side unknown_ca/cert_validation "
                     "failures within the window; tunnelled for %llu ms more",
                     pin.failures,
                     (unsigned long long)(pin.until_ns > now ? (pin.until_ns - now) / 1000000 : 0));
    soth_ev_tls_learning_audit(&f->ev, true, soth_iov(why, (size_t)n), host,
                               (enum soth_tls_provider)pin.provider);
}

/** Apply the policy to the flow's target; emits connect_decision. Returns the action. */
static enum soth_action flow_decide(struct worker *w, struct flow *f, struct soth_iov *rule)
{
    struct soth_learning_view lv = {.is_pinned = learning_never, .ctx = NULL};
    if (w->learn_on) {
        /* Takes a snapshot the aggregator published since the last decision, if any. */
        lv.is_pinned = soth_tls_learning_is_pinned;
        lv.ctx = soth_learn_view(w);
    }
    struct soth_policy_decision d = soth_policy_decide(
        w->policy, soth_iov(f->ev.server_host, f->ev.server_host_len), f->ev.server_port, &lv);
    soth_ev_connect_decision(&f->ev, d.action, (enum soth_decision_reason)d.reason, d.rule);
    f->action = (uint8_t)d.action;
    *rule = d.rule;
    if (d.reason == SOTH_REASON_TLS_LEARNING)
        learning_applied(w, f);
    return d.action;
}

static void flow_block(struct worker *w, struct flow *f, struct soth_iov rule)
{
    if (w->cfg->mode == SOTH_MODE_TRANSPARENT) {
        flow_close(w, f, SOTH_CLOSE_BLOCKED);
        return;
    }
    if (rule.len > 0)
        flow_answer_text(w, f, 403, "Forbidden", SOTH_CLOSE_BLOCKED,
                         "soth-mitm: %.*s:%u is blocked by policy rule \"%.*s\"\n",
                         (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
                         (int)rule.len, rule.base);
    else
        flow_answer_text(w, f, 403, "Forbidden", SOTH_CLOSE_BLOCKED,
                         "soth-mitm: %.*s:%u is blocked by the default policy\n",
                         (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port);
}

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
        bool ok =
            conn_queue_copy(w, u, h->method.base, h->method.len) && conn_queue_copy(w, u, " ", 1) &&
            conn_queue_copy(w, u, h->path.base, h->path.len) && conn_queue_copy(w, u, " ", 1) &&
            conn_queue_copy(w, u, h->version.base, h->version.len) &&
            conn_queue_copy(w, u, "\r\n", 2);
        bool have_host = false;
        for (size_t i = 0; ok && i < h->n_headers; i++) {
            const struct soth_header *hd = &h->headers[i];
            if (header_is(hd, "proxy-connection") || header_is(hd, "proxy-authorization"))
                continue;
            if (header_is(hd, "host"))
                have_host = true;
            ok = conn_queue_copy(w, u, hd->name.base, hd->name.len) &&
                 conn_queue_copy(w, u, ": ", 2) &&
                 conn_queue_copy(w, u, hd->value.base, hd->value.len) &&
                 conn_queue_copy(w, u, "\r\n", 2);
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
            ok = conn_queue_copy(w, u, hostline, (size_t)n);
        }
        ok = ok && conn_queue_copy(w, u, "\r\n", 2);
        if (!ok) {
            flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
            return false;
        }
    }
    flow_start_upstream(w, f);
    return f->state != FS_CLOSING;
}

/**
 * Regular-mode plain HTTP before the upstream is up: the HTTP layer takes the client's bytes
 * (queued for the upstream until it connects). The flow is in FS_RESOLVING/FS_CONNECTING, so
 * the layer's end is handled like in relay.
 */
static void app_plain_head(struct worker *w, struct flow *f, const char *p, uint32_t len)
{
    int rc = app_input(f->app, SIDE_CLIENT, p, len);
    if (rc == APP_AGAIN) {
        conn_try_send(w, f, SIDE_CLIENT);
        if (app_read_paused(f->app, SIDE_CLIENT))
            conn_pause_recv(w, f, SIDE_CLIENT);
        return;
    }
    /* An error answer (400/431) before any upstream byte matters: answer and close. */
    flow_set_state(f, FS_RELAY);
    app_after(w, f, SIDE_CLIENT, rc);
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
    char *data = buf_addr(w, bid);
    struct soth_proxy_head h;
    const char *code = NULL, *detail = NULL;
    ssize_t rc;

    if (f->head == NULL) {
        /* Usual case: the whole head in one buffer, parsed where it lies. */
        rc =
            soth_proxy_head_parse(data, len, SOTH_HEAD_STRICT, &w->head_limits, &h, &code, &detail);
        if (rc == SOTH_E_INCOMPLETE) {
            f->head = chunk_get(w);
            if (f->head == NULL) {
                buf_put(w, bid);
                flow_close(w, f, SOTH_CLOSE_RELAY_ERROR);
                return;
            }
            memcpy(f->head, data, len);
            f->head_len = len;
            buf_put(w, bid);
            return;
        }
        if (rc < 0) {
            buf_put(w, bid);
            flow_head_failed(w, f, rc, code, detail);
            return;
        }
        if (!flow_on_head(w, f, &h)) {
            buf_put(w, bid);
            return;
        }
        if (f->app != NULL) {
            /* Plain HTTP through the HTTP layer: the head and whatever followed it. */
            app_plain_head(w, f, data, len);
            buf_put(w, bid);
            return;
        }
        if ((size_t)rc == len) {
            buf_put(w, bid);
            return;
        }
        /* Bytes after the head (an early ClientHello, a body) wait for the upstream as is. */
        if (flow_intercepting(w, f)) {
            tls_hello_bytes(w, f, data + rc, len - (uint32_t)rc);
            buf_put(w, bid);
            return;
        }
        conn_queue(w, &f->c[SIDE_UPSTREAM], data, (uint32_t)rc, len - (uint32_t)rc, (int32_t)bid);
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
        buf_put(w, bid);
        return;
    }
    if (rc < 0) {
        buf_put(w, bid);
        flow_head_failed(w, f, rc, code, detail);
    } else if (flow_on_head(w, f, &h)) {
        char *proxy_head = f->head;
        uint32_t proxy_len = f->head_len;
        f->head = NULL;
        f->head_len = 0;
        if (f->app != NULL) {
            app_plain_head(w, f, proxy_head, proxy_len);
            if (n < len && f->state != FS_CLOSING && !f->app_done)
                app_plain_head(w, f, data + n, len - n);
            buf_put(w, bid);
        } else if (flow_intercepting(w, f)) {
            if ((uint32_t)rc < proxy_len)
                tls_hello_bytes(w, f, proxy_head + rc, proxy_len - (uint32_t)rc);
            if (n < len && f->state != FS_CLOSING)
                tls_hello_bytes(w, f, data + n, len - n);
            buf_put(w, bid);
        } else {
            if ((uint32_t)rc < proxy_len)
                conn_queue_copy(w, &f->c[SIDE_UPSTREAM], proxy_head + rc, proxy_len - (uint32_t)rc);
            if (n < len)
                conn_queue(w, &f->c[SIDE_UPSTREAM], data, n, len - n, (int32_t)bid);
            else
                buf_put(w, bid);
        }
        chunk_put(w, proxy_head);
        return;
    } else {
        buf_put(w, bid);
    }
    chunk_put(w, f->head);
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
    flow_start_upstream(w, f);
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
    struct flow *f = flow_alloc(w);
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
        timer_set(w, f, now_ms() + cfg->timeouts.request_header_ms);
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

/** Both directions finished (FIN seen both ways and our FINs sent): close normally. */
static void flow_check_done(struct worker *w, struct flow *f)
{
    if (f->state != FS_RELAY)
        return;
    struct conn *c = &f->c[SIDE_CLIENT], *u = &f->c[SIDE_UPSTREAM];
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
        flow_close(w, f,
                   f->first_eof == SIDE_UPSTREAM ? SOTH_CLOSE_RELAY_EOF : SOTH_CLOSE_CLIENT_EOF);
}

static void on_recv_data(struct worker *w, struct flow *f, unsigned side, unsigned bid,
                         uint32_t len)
{
    if (side == SIDE_UPSTREAM && f->answer != NULL) {
        buf_put(w, bid); /* the upstream failed its handshake: we answer the client ourselves */
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
        tls_input(w, f, side, bid, len);
        return;
    case FS_RESOLVING:
    case FS_CONNECTING:
        if (flow_intercepting(w, f)) {
            /* The ClientHello may arrive before the upstream is up: keep it for the peek. */
            tls_hello_bytes(w, f, buf_addr(w, bid), len);
            buf_put(w, bid);
            return;
        }
        if (f->app != NULL) {
            app_plain_head(w, f, buf_addr(w, bid), len);
            buf_put(w, bid);
            return;
        }
        SOTH_FALLTHROUGH;
    case FS_RELAY: {
        if (f->app_done) {
            buf_put(w, bid); /* after the HTTP layer finished: only FINs matter */
            return;
        }
        if (f->tls[side] != NULL) {
            tls_input(w, f, side, bid, len);
            return;
        }
        if (f->app != NULL) {
            app_plain_input(w, f, side, buf_addr(w, bid), len);
            buf_put(w, bid);
            return;
        }
        unsigned other = side ^ 1;
        struct conn *o = &f->c[other];
        conn_queue(w, o, buf_addr(w, bid), 0, len, (int32_t)bid);
        if (over_high(o))
            conn_pause_recv(w, f, side);
        conn_try_send(w, f, other);
        return;
    }
    default:
        /* Answering or lingering: the client's further bytes are discarded. */
        buf_put(w, bid);
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
        flow_close(w, f, side == SIDE_CLIENT ? SOTH_CLOSE_CLIENT_EOF : SOTH_CLOSE_RELAY_EOF);
        return;
    case FS_TLS_UP:
        if (side == SIDE_UPSTREAM)
            tls_failed(w, f, SIDE_UPSTREAM, SOTH_TLS_TRANSPORT_EOF);
        else
            flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
        return;
    case FS_TLS_DOWN:
        if (side == SIDE_CLIENT)
            tls_failed(w, f, SIDE_CLIENT, SOTH_TLS_TRANSPORT_EOF);
        else
            flow_close(w, f, SOTH_CLOSE_RELAY_EOF);
        return;
    case FS_RESOLVING:
    case FS_CONNECTING:
        if (side == SIDE_CLIENT) {
            /* Half-close before the upstream is up: forward the FIN once connected. */
            f->c[SIDE_UPSTREAM].shut_pending = true;
        }
        return;
    case FS_RELAY: {
        struct conn *o = &f->c[side ^ 1];
        if (f->app_done) {
            flow_check_done(w, f);
            return;
        }
        if (f->app != NULL) {
            int rc = app_eof(f->app, side, false);
            if (rc != APP_HALF_CLOSE) {
                app_after(w, f, side, rc);
                return;
            }
        }
        if (f->tls[side ^ 1] != NULL && !o->shut_done && !o->shut_pending) {
            /* A FIN without close_notify: close the other leg cleanly all the same. */
            soth_tls_conn_shutdown(f->tls[side ^ 1]);
            tls_flush(w, f, side ^ 1);
        }
        if (!o->shut_done) {
            o->shut_pending = true;
            conn_try_send(w, f, side ^ 1);
        }
        flow_check_done(w, f);
        return;
    }
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
        unsigned bid = buf_take(w, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        if (f->state == FS_CLOSING)
            buf_put(w, bid);
        else
            on_recv_data(w, f, side, bid, (uint32_t)cqe->res);
    } else if (cqe->res == 0) {
        if (f->state != FS_CLOSING)
            on_recv_eof(w, f, side);
    } else if (cqe->res == -ENOBUFS) {
        c->recv_wait_buf = true;
        if (!f->on_wait_list) {
            f->on_wait_list = true;
            f->wnext = w->buf_waiters;
            w->buf_waiters = f;
        }
    } else if (side == SIDE_UPSTREAM && f->answer != NULL) {
        /* ignored: the upstream already failed its handshake */
    } else if (cqe->res != -ECANCELED && f->state != FS_CLOSING) {
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "recv %s: %s",
                 side ? "upstream" : "client", soth_strerror(cqe->res));
        if (f->state == FS_HEAD)
            flow_close(w, f, SOTH_CLOSE_CLIENT_EOF);
        else if ((f->state == FS_TLS_UP && side == SIDE_UPSTREAM) ||
                 (f->state == FS_TLS_DOWN && side == SIDE_CLIENT))
            tls_failed(w, f, side, SOTH_TLS_TRANSPORT_RESET);
        else if (f->state == FS_ANSWER || f->state == FS_LINGER)
            /* The client went away while we answered: the answer's reason still holds. */
            flow_close(w, f, (enum soth_close_reason)f->answer_reason);
        else if (f->state == FS_RELAY && f->app != NULL) {
            /*
             * A reset leg (clients routinely close with bytes unread, e.g. TLS session
             * tickets): the HTTP layer ends its exchanges (a client's as its going away, an
             * upstream's as aborted) and names the close reason.
             */
            c->eof_in = true;
            if (!f->app_done)
                app_eof(f->app, side, true);
            flow_close(w, f, app_close_reason(f->app));
        } else
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
        if (f->state == FS_RELAY && f->app != NULL) {
            /* The leg is gone (reset, broken pipe): the HTTP layer ends its exchanges. */
            if (!f->app_done)
                app_eof(f->app, side, true);
            flow_close(w, f, app_close_reason(f->app));
            return;
        }
        flow_close(w, f,
                   f->state == FS_ANSWER ? (enum soth_close_reason)f->answer_reason
                                         : SOTH_CLOSE_RELAY_ERROR);
        return;
    }
    uint64_t left = (uint64_t)res;
    while (left > 0 && c->q_first != NULL) {
        struct seg *s = c->q_first;
        if (left < s->len) {
            s->off += (uint32_t)left;
            s->len -= (uint32_t)left;
            c->q_bytes -= left;
            break;
        }
        left -= s->len;
        conn_q_pop(w, c);
    }
    f->last_active_ms = now_ms();
    /* The source of these bytes may read again. */
    struct conn *src = &f->c[side ^ 1];
    bool low = c->q_bytes <= SOTH_LOW_WM && c->q_count < SOTH_OUTQ_PAUSE / 2;
    if (low && f->app != NULL && f->app_held[side] && !f->app_done && f->state == FS_RELAY) {
        f->app_held[side] = false;
        app_after(w, f, side, app_hold(f->app, side, false));
        if (f->state != FS_RELAY)
            return;
    }
    if (src->recv_paused && low && (f->app == NULL || !app_read_paused(f->app, side ^ 1)))
        conn_resume_recv(w, f, side ^ 1);
    if (c->q_count > 0) {
        conn_try_send(w, f, side);
        return;
    }
    if (c->shut_pending) {
        conn_submit_shutdown(w, f, side);
        return;
    }
    flow_check_done(w, f);
}

static void on_shutdown(struct worker *w, struct flow *f, unsigned side, int res)
{
    f->pending--;
    if (f->state == FS_CLOSING)
        return;
    if (f->state == FS_ANSWER) {
        /* Our answer is out and our FIN sent: wait for the client's FIN, bounded. */
        flow_set_state(f, FS_LINGER);
        if (f->c[SIDE_CLIENT].eof_in) {
            flow_close(w, f, (enum soth_close_reason)f->answer_reason);
            return;
        }
        timer_set(w, f, now_ms() + SOTH_LINGER_MS);
        conn_arm_recv(w, f, SIDE_CLIENT);
        return;
    }
    if (f->app_done && side == SIDE_CLIENT && f->state == FS_RELAY)
        timer_set(w, f, now_ms() + SOTH_LINGER_MS); /* all sent: wait for the FIN, briefly */
    flow_check_done(w, f);
}

static void on_timeout(struct worker *w, struct flow *f)
{
    uint64_t now = now_ms();
    if (f->app_done && f->state == FS_RELAY) {
        flow_close(w, f, app_close_reason(f->app));
        return;
    }
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
        if (f->state == FS_CONNECTING) {
            /* Cancel the connect; its CQE (-ECANCELED) then finds the flow past CONNECTING. */
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_cancel64(sqe, ud_pack(OP_CONNECT, SIDE_UPSTREAM, f->slot, f->gen), 0);
            io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, SIDE_UPSTREAM, f->slot, f->gen));
        }
        flow_connect_failed(w, f, -ETIMEDOUT, true);
        return;
    case FS_HELLO:
        tls_failed(w, f, SIDE_CLIENT, SOTH_TLS_TRANSPORT_TIMEOUT);
        return;
    case FS_TLS_UP:
        tls_failed(w, f, SIDE_UPSTREAM, SOTH_TLS_TRANSPORT_TIMEOUT);
        return;
    case FS_TLS_DOWN:
        tls_failed(w, f, SIDE_CLIENT, SOTH_TLS_TRANSPORT_TIMEOUT);
        return;
    case FS_RELAY: {
        uint64_t hd = f->app != NULL ? app_deadline(f->app) : 0;
        if (hd != 0 && hd <= now) {
            app_after(w, f, SIDE_CLIENT, app_timer(f->app, now)); /* 408, idle WebSocket turn */
            if (f->state != FS_RELAY || f->app_done)
                return;
            hd = app_deadline(f->app);
        }
        uint64_t idle = f->last_active_ms + w->cfg->timeouts.idle_ms;
        if (idle > now) {
            timer_set(w, f, hd != 0 && hd < idle ? hd : idle);
            return;
        }
        flow_close(w, f, SOTH_CLOSE_IDLE_TIMEOUT);
        return;
    }
    case FS_ANSWER:
    case FS_LINGER:
        flow_close(w, f, (enum soth_close_reason)f->answer_reason);
        return;
    default:
        return;
    }
}

static void timers_run(struct worker *w)
{
    uint64_t now = now_ms();
    /*
     * Walk only ticks that have fully elapsed: a timer due later in the current tick would be
     * found not due yet, and the walk would move past its slot for a whole revolution of the
     * wheel (8 s). Timers fire up to one tick late instead.
     */
    uint64_t last = now / SOTH_TICK_MS - 1;
    if (w->n_timers == 0) {
        /* Nothing armed: no need to walk the ticks that passed while the loop slept. */
        w->wheel_tick = last + 1;
        return;
    }
    while (w->wheel_tick <= last) {
        struct flow **slot = &w->wheel[w->wheel_tick & (SOTH_WHEEL_SLOTS - 1)];
        struct flow *f = *slot;
        while (f != NULL) {
            struct flow *next = f->tnext;
            if (f->deadline_ms <= now) {
                timer_unlink(w, f);
                on_timeout(w, f);
                flow_maybe_free(w, f);
            }
            f = next;
        }
        w->wheel_tick++;
    }
}

/* ------------------------------------------------------------------------------------------
 * control: shutdown, reload, resolver answers
 * ------------------------------------------------------------------------------------------ */

void soth_worker_wake(struct worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof(one));
    (void)n;
}

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
    for (uint32_t i = 0; i < w->flows_hw; i++) {
        struct flow *f = &w->flows[i];
        if (flow_is_live(f) && f->state == FS_HEAD && f->head == NULL)
            flow_close(w, f, SOTH_CLOSE_SHUTDOWN);
        else if (flow_is_live(f) && f->state == FS_RELAY && f->app != NULL && !f->app_done)
            app_after(w, f, SIDE_CLIENT, app_shutdown(f->app)); /* idle keep-alive: close */
    }
}

static void on_eventfd(struct worker *w)
{
    struct resolve_resp rs;
    while (soth_spsc_pop(w->rs, &rs))
        on_resolved(w, &rs);
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
    SOTH_BUG_ON(slot >= w->flows_hw);
    struct flow *f = &w->flows[slot];
    unsigned side = ud_side(ud);
    if (f->gen != ud_gen(ud)) {
        /* Cannot happen for tracked ops (freed only at pending == 0); keep buffers safe. */
        if (cqe->flags & IORING_CQE_F_BUFFER)
            buf_put(w, buf_take(w, cqe->flags >> IORING_CQE_BUFFER_SHIFT));
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
        on_connect(w, f, cqe->res);
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

    size_t ring_bytes = SOTH_BUF_COUNT * sizeof(struct io_uring_buf);
    void *br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED)
        return -errno;
    w->br = br;
    io_uring_buf_ring_init(w->br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)br, .ring_entries = SOTH_BUF_COUNT, .bgid = SOTH_BGID};
    rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0)
        return rc;
    w->bufs = mmap(NULL, (size_t)SOTH_BUF_COUNT * SOTH_BUF_SIZE, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (w->bufs == MAP_FAILED)
        return -errno;
    for (unsigned i = 0; i < SOTH_BUF_COUNT; i++)
        buf_put(w, buf_take(w, i));
    io_uring_buf_ring_advance(w->br, (int)w->br_added);
    w->br_added = 0;

    /* The flow table reserves address space; pages are touched only as slots are used. */
    w->flows = mmap(NULL, (size_t)SOTH_MAX_FLOWS * sizeof(struct flow), PROT_READ | PROT_WRITE,
                    MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
    if (w->flows == MAP_FAILED)
        return -errno;
    w->seg_pool = calloc(SOTH_SEGS, sizeof(struct seg));
    if (w->seg_pool == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < SOTH_SEGS; i++) {
        w->seg_pool[i].next = w->free_segs;
        w->free_segs = &w->seg_pool[i];
    }
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
    if (w->flows && w->flows != MAP_FAILED)
        munmap(w->flows, (size_t)SOTH_MAX_FLOWS * sizeof(struct flow));
    if (w->bufs && w->bufs != MAP_FAILED)
        munmap(w->bufs, (size_t)SOTH_BUF_COUNT * SOTH_BUF_SIZE);
    if (w->br)
        munmap(w->br, SOTH_BUF_COUNT * sizeof(struct io_uring_buf));
    free(w->seg_pool);
    w->seg_pool = NULL;
    while (w->free_chunks != NULL) {
        char *c = w->free_chunks;
        memcpy(&w->free_chunks, c, sizeof(char *));
        free(c);
    }
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
    w->wheel_tick = now_ms() / SOTH_TICK_MS;
    arm_accept(w);
    arm_eventfd(w);
    io_uring_submit(&w->ring);
    signal_ready(w, 0);

    for (;;) {
        buf_publish(w);
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000};
        bool timed = w->n_timers > 0 || w->stopping;
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
        timers_run(w);
        soth_ev_flush(w->prod);
        if (w->stopping) {
            if (now_ms() >= w->stop_deadline_ms) {
                for (uint32_t i = 0; i < w->flows_hw; i++) {
                    struct flow *f = &w->flows[i];
                    if (flow_is_live(f) && f->state != FS_CLOSING)
                        flow_close(w, f, SOTH_CLOSE_SHUTDOWN);
                }
            }
            if (w->n_flows == 0)
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
