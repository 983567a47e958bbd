/* One leg's socket (core/conn.h): its send queue, sendmsg, multishot recv and backpressure. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>

#include "conn.h"
#include "flow.h"
#include "worker.h"

int seg_pool_init(struct seg_pool *p, struct iobuf *io, uint32_t n)
{
    p->io = io;
    p->free = NULL;
    p->reserved = NULL;
    p->segs = calloc(n, sizeof(struct seg));
    if (p->segs == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        p->segs[i].next = p->free;
        p->free = &p->segs[i];
    }
    return 0;
}

void seg_pool_dispose(struct seg_pool *p)
{
    free(p->segs);
    p->segs = NULL;
    p->free = NULL;
}

static void seg_release(struct seg_pool *p, struct seg *s)
{
    if (s->bid >= 0)
        buf_put(p->io, (unsigned)s->bid);
    else if (s->bid == SEG_CHUNK)
        chunk_put(p->io, s->base);
}

void conn_q_pop(struct seg_pool *p, struct conn *c)
{
    struct seg *s = c->q_first;
    c->q_first = s->next;
    if (c->q_first == NULL)
        c->q_last = NULL;
    c->q_count--;
    c->q_bytes -= s->len;
    seg_release(p, s);
    s->next = p->free;
    p->free = s;
}

void conn_q_clear(struct seg_pool *p, struct conn *c)
{
    while (c->q_first != NULL)
        conn_q_pop(p, c);
}

void conn_q_sent(struct seg_pool *p, struct conn *c, uint64_t n)
{
    if (c->send_capped)
        c->send_cap -= n < c->send_cap ? (uint32_t)n : c->send_cap;
    uint64_t left = n;
    while (left > 0 && c->q_first != NULL) {
        struct seg *s = c->q_first;
        if (left < s->len) {
            s->off += (uint32_t)left;
            s->len -= (uint32_t)left;
            c->q_bytes -= left;
            break;
        }
        left -= s->len;
        conn_q_pop(p, c);
    }
}

bool conn_queue(struct seg_pool *p, struct conn *c, char *base, uint32_t off, uint32_t len,
                int32_t bid)
{
    struct seg *s = p->free;
    /* Buffers and chunks each have their segment; only static answers can run out. */
    SOTH_BUG_ON(s == NULL && bid != SEG_STATIC);
    if (s == NULL)
        return false;
    p->free = s->next;
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

bool conn_queue_front_copy(struct seg_pool *p, struct conn *c, const char *s, size_t len)
{
    SOTH_BUG_ON(c->send_inflight || len > SOTH_BUF_SIZE);
    char *ch = chunk_get(p->io);
    if (ch == NULL)
        return false;
    memcpy(ch, s, len);
    struct seg *first = c->q_first, *last = c->q_last;
    uint32_t count = c->q_count;
    uint64_t bytes = c->q_bytes;
    c->q_first = c->q_last = NULL;
    c->q_count = 0;
    c->q_bytes = 0;
    conn_queue(p, c, ch, 0, (uint32_t)len, SEG_CHUNK);
    if (first != NULL) {
        c->q_first->next = first;
        c->q_last = last;
    }
    c->q_count += count;
    c->q_bytes += bytes;
    return true;
}

/* The end of c's last owned chunk when bytes may still go there (not being sent), with the
 * room it has in *room; NULL (room 0) otherwise. */
static char *tail_room(const struct conn *c, size_t *room)
{
    const struct seg *last = c->q_last;
    *room = 0;
    if (last == NULL || last->bid != SEG_CHUNK || c->send_inflight)
        return NULL;
    *room = SOTH_CHUNK_SIZE - last->off - last->len;
    return last->base + last->off + last->len;
}

/* n bytes written at tail_room's end are queued. */
static void tail_grow(struct conn *c, size_t n)
{
    c->q_last->len += (uint32_t)n;
    c->q_bytes += n;
}

bool conn_queue_copy(struct seg_pool *p, struct conn *c, const char *src, size_t len)
{
    while (len > 0) {
        size_t room;
        char *end = tail_room(c, &room);
        /* Append to the last owned chunk when it has room and is not being sent. */
        if (room > 0) {
            size_t n = len < room ? len : room;
            memcpy(end, src, n);
            tail_grow(c, n);
            src += n;
            len -= n;
            continue;
        }
        char *ch = chunk_get(p->io);
        if (ch == NULL)
            return false;
        size_t n = len < SOTH_CHUNK_SIZE ? len : SOTH_CHUNK_SIZE;
        memcpy(ch, src, n);
        conn_queue(p, c, ch, 0, (uint32_t)n, SEG_CHUNK);
        src += n;
        len -= n;
    }
    return true;
}

char *conn_reserve(struct seg_pool *p, struct conn *c, size_t len)
{
    SOTH_BUG_ON(p->reserved != NULL);
    size_t room;
    char *end = tail_room(c, &room);
    if (end != NULL && len <= room)
        return end;
    if (len > SOTH_CHUNK_SIZE || (p->reserved = chunk_get(p->io)) == NULL)
        return NULL;
    return p->reserved;
}

void conn_commit(struct seg_pool *p, struct conn *c, size_t len)
{
    char *ch = p->reserved;
    p->reserved = NULL;
    if (ch == NULL)
        tail_grow(c, len);
    else if (len > 0)
        conn_queue(p, c, ch, 0, (uint32_t)len, SEG_CHUNK);
    else
        chunk_put(p->io, ch);
}

void conn_submit_shutdown(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    c->shut_pending = false;
    c->shut_done = true;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_shutdown(sqe, c->fd, SHUT_WR);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_SHUTDOWN, side, f->slot, f->gen));
    f->pending++;
}

void conn_try_send(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    /* What the cork holds for this leg goes first (core/leg.h). A failure fails the TLS
     * session: the flow ends at its next step on it. */
    if (w->cork.f == f && w->cork.side == side)
        (void)leg_uncork(w, f, side);
    if (c->send_inflight || !c->connected || f->state == FS_CLOSING)
        return;
    if (c->send_capped && c->send_cap == 0)
        return; /* the rest waits for the upstream proxy's answer */
    if (c->q_count == 0) {
        if (c->shut_pending)
            conn_submit_shutdown(w, f, side);
        return;
    }
    unsigned n = 0;
    uint64_t room = c->send_capped ? c->send_cap : UINT64_MAX;
    for (struct seg *s = c->q_first; s != NULL && n < SOTH_SEND_IOV && room > 0; s = s->next, n++) {
        c->iov[n].iov_base = s->base + s->off;
        c->iov[n].iov_len = s->len < room ? s->len : (size_t)room;
        room -= c->iov[n].iov_len;
    }
    memset(&c->msg, 0, sizeof(c->msg));
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = n;
    c->iov_segs = n;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, side, f->slot, f->gen));
    c->send_inflight = true;
    c->rx_since_tx = 0; /* the kernel may treat the socket as interactive again */
    f->pending++;
}

void conn_quickack(const struct conn *c)
{
    /* A plain system call: io_uring's socket commands (Linux 6.7) are not on Debian 12's
     * kernel, and this runs once per 64 KiB received at most. A failure (not TCP) changes
     * nothing. */
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

void conn_arm_recv(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    if (c->recv_armed || c->eof_in || c->recv_paused || c->recv_wait_buf || c->fd < 0 ||
        f->state == FS_CLOSING)
        return;
    /* An upstream retry (core/relay.c): the client waits; the old socket gets no new read and
     * the new one none before it is connected. */
    if (up_redialing(f->up_redial) && (side == SOTH_LEG_CLIENT || f->up_redial != UP_REDIAL_TLS))
        return;
    /* A parked upstream (docs/http2.md "Idle upstream connection"): its closing socket gets
     * no new read (the one armed sees the origin's FIN). */
    if (side == SOTH_LEG_UPSTREAM &&
        (f->up_redial == UP_REDIAL_PARK || f->up_redial == UP_REDIAL_PARKED))
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = SOTH_BGID;
    io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, side, f->slot, f->gen));
    c->recv_armed = true;
    f->pending++;
}

void conn_pause_recv(struct worker *w, struct flow *f, unsigned side)
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

void conn_resume_recv(struct worker *w, struct flow *f, unsigned side)
{
    struct conn *c = &f->c[side];
    if (!c->recv_paused)
        return;
    c->recv_paused = false;
    conn_arm_recv(w, f, side);
}

void conn_wait_buf(struct worker *w, struct flow *f, unsigned side)
{
    f->c[side].recv_wait_buf = true;
    if (!f->on_wait_list) {
        f->on_wait_list = true;
        f->wnext = w->buf_waiters;
        w->buf_waiters = f;
    }
}

void conn_wake_waiters(struct worker *w)
{
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

void conn_unwait(struct worker *w, struct flow *f)
{
    if (!f->on_wait_list)
        return;
    for (struct flow **pp = &w->buf_waiters; *pp; pp = &(*pp)->wnext) {
        if (*pp == f) {
            *pp = f->wnext;
            break;
        }
    }
    f->on_wait_list = false;
}
