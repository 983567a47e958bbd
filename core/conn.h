/*
 * Private to core/: one leg's socket (the client's or the upstream's) as a worker drives it:
 * the queue of segments waiting to be sent, the sendmsg in flight, the multishot recv and
 * backpressure between the two legs.
 *
 * Data path of a relayed byte: a multishot recv lands it in a provided buffer; the buffer is
 * queued, as is, toward the other socket (a struct seg carrying its buffer id) and sent with
 * sendmsg; the buffer returns to the ring when the send completes. No copy.
 *
 * Backpressure: when the queue toward a socket holds SOTH_HIGH_WM bytes or SOTH_OUTQ_PAUSE
 * segments (over_high), the source's multishot recv is cancelled (it cannot be paused) and it
 * is re-armed once the queue drains under SOTH_LOW_WM (under_low).
 */
#ifndef SOTH_CORE_CONN_H
#define SOTH_CORE_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "iobuf.h"

#define SOTH_SEGS       (SOTH_BUF_COUNT + SOTH_MAX_CHUNKS + 1024u) /* + static answers */
#define SOTH_OUTQ_PAUSE 12u           /* pause the source's recv at this many segments... */
#define SOTH_HIGH_WM    (256u * 1024) /* ...or this many unsent bytes */
#define SOTH_LOW_WM     (64u * 1024)  /* resume the source below this */
#define SOTH_SEND_IOV   8u            /* segments per sendmsg */
/* Received since our last send on a socket, then acknowledge at once (conn_note_recv) */
#define SOTH_QUICKACK_AFTER (64u * 1024)

#define SEG_STATIC (-2) /* base points to static memory */
#define SEG_CHUNK  (-1) /* base is an owned chunk, freed when sent */

/** Bytes queued toward a socket: a provided buffer (bid >= 0), an owned chunk or static text. */
struct seg {
    char *base;
    uint32_t off, len; /* unsent bytes are base[off .. off+len) */
    int32_t bid;
    struct seg *next;
};

/* The two legs of a flow; index of struct flow.c[] and the side bit of a CQE's user_data. */
struct conn {
    int fd;             /* -1 = none */
    bool connected;     /* usable for send */
    bool recv_armed;    /* a multishot recv is in flight */
    bool recv_paused;   /* cancelled for backpressure */
    bool recv_wait_buf; /* stopped on -ENOBUFS, on the worker's waiter list */
    bool send_inflight;
    bool eof_in;       /* the peer sent FIN */
    bool shut_pending; /* send our FIN once the queue drains */
    bool shut_done;
    struct seg *q_first, *q_last; /* queued toward this socket, from the worker's seg_pool */
    uint32_t q_count;
    uint64_t q_bytes;  /* unsent bytes queued toward this socket */
    uint32_t iov_segs; /* segments covered by the in-flight sendmsg */
    /* send_capped: only send_cap more bytes may go (our CONNECT to an upstream proxy, ahead of
     * the client's bytes, which wait for its answer: core/upstream.c) */
    bool send_capped;
    uint32_t send_cap;
    uint32_t rx_since_tx; /* bytes received since our last send, up to SOTH_QUICKACK_AFTER */
    struct msghdr msg;
    struct iovec iov[SOTH_SEND_IOV];
};

/**
 * What send queues draw from: one segment per provided buffer and owned chunk (plus some for
 * static answers), so a queue never runs out; how much a connection holds is bounded by
 * backpressure and, at worst, by the worker's buffers. Bytes of a segment go back to io.
 */
struct seg_pool {
    struct seg *segs; /* every segment (calloc at set-up) */
    struct seg *free;
    struct iobuf *io; /* chunks for copies; where buffers and chunks return */
    char *reserved;   /* a chunk conn_reserve gave, until conn_commit queues or returns it */
};

/** n segments, all free. 0 or -ENOMEM. */
int seg_pool_init(struct seg_pool *p, struct iobuf *io, uint32_t n);
void seg_pool_dispose(struct seg_pool *p);

/** A fresh connection: no socket, nothing queued, nothing in flight. */
static inline void conn_init(struct conn *c)
{
    memset(c, 0, offsetof(struct conn, msg));
    c->fd = -1;
}

/**
 * Queue base[off .. off+len) toward c. On success takes ownership of what bid says: provided
 * buffer bid (>= 0) or an owned chunk (SEG_CHUNK), handed back once sent or discarded.
 * False only for SEG_STATIC when segments ran out.
 */
bool conn_queue(struct seg_pool *p, struct conn *c, char *base, uint32_t off, uint32_t len,
                int32_t bid);
/** Copy s[0..len) (at most SOTH_BUF_SIZE bytes) into an owned chunk queued at the front of c
 *  (nothing of c may be in flight). False when chunks ran out. */
bool conn_queue_front_copy(struct seg_pool *p, struct conn *c, const char *s, size_t len);
/** Copy bytes into owned chunks queued toward c (appending to the last chunk when it is not
 *  being sent). False when chunks ran out (what was copied stays queued). */
bool conn_queue_copy(struct seg_pool *p, struct conn *c, const char *s, size_t len);
/** Room for len bytes at the end of c's queue, written in place and then committed: the end of
 *  the last owned chunk when it has the room and is not being sent, else a new chunk (queued
 *  by conn_commit). NULL when len is over a chunk or chunks ran out. One at a time per pool:
 *  conn_commit before the next. */
char *conn_reserve(struct seg_pool *p, struct conn *c, size_t len);
/** The first len bytes of what conn_reserve gave are queued toward c (0: none, the room is
 *  given back). */
void conn_commit(struct seg_pool *p, struct conn *c, size_t len);
/** Drop the first queued segment of c (sent, or discarded), returning what it holds. */
void conn_q_pop(struct seg_pool *p, struct conn *c);
/** Drop everything queued toward c. */
void conn_q_clear(struct seg_pool *p, struct conn *c);
/** n bytes from the front of c's queue were sent. */
void conn_q_sent(struct seg_pool *p, struct conn *c, uint64_t n);

/** Ask the kernel to acknowledge what c received at once, and from now on whenever the
 *  receive queue is read empty, until our next send (conn_note_recv). */
void conn_quickack(const struct conn *c);

/**
 * n bytes were received on c. Once SOTH_QUICKACK_AFTER came in since our last send, the
 * socket leaves the kernel's "interactive" delayed-ACK mode (TCP_QUICKACK): a response (or an
 * upload) is arriving in bulk, and a sender that restarted its congestion window after idle
 * may be waiting for the ACK of a full-sized segment that an interactive socket delays by
 * 40 ms (docs/performance.md, "Delayed ACKs of a response"). One system call per 64 KiB
 * received at most, none for small exchanges.
 */
static inline void conn_note_recv(struct conn *c, uint32_t n)
{
    if (c->rx_since_tx >= SOTH_QUICKACK_AFTER)
        return;
    c->rx_since_tx += n;
    if (c->rx_since_tx >= SOTH_QUICKACK_AFTER)
        conn_quickack(c);
}

/** The queue toward c is full enough to stop reading its source. */
static inline bool over_high(const struct conn *c)
{
    return c->q_bytes >= SOTH_HIGH_WM || c->q_count >= SOTH_OUTQ_PAUSE;
}

/** The queue toward c drained enough to read its source again. */
static inline bool under_low(const struct conn *c)
{
    return c->q_bytes <= SOTH_LOW_WM && c->q_count < SOTH_OUTQ_PAUSE / 2;
}

/* ---- one leg of a flow on the worker's ring. Each submits a tracked SQE (counted in
 * flow->pending) or does nothing; none does anything once the flow is closing. */
struct worker;
struct flow;

/** Send what is queued toward side (a sendmsg of up to SOTH_SEND_IOV segments) unless a send
 *  is in flight; with nothing queued, our FIN when one is pending. */
void conn_try_send(struct worker *w, struct flow *f, unsigned side);
/** Our FIN toward side (shutdown SHUT_WR) now. */
void conn_submit_shutdown(struct worker *w, struct flow *f, unsigned side);
/** Arm side's multishot recv unless it is armed, paused, waiting for buffers, or at EOF. */
void conn_arm_recv(struct worker *w, struct flow *f, unsigned side);
/** Stop reading from side (backpressure): cancel its multishot recv. */
void conn_pause_recv(struct worker *w, struct flow *f, unsigned side);
/** Undo conn_pause_recv. */
void conn_resume_recv(struct worker *w, struct flow *f, unsigned side);
/** side's recv stopped on -ENOBUFS: re-arm it once buffers come back (conn_wake_waiters). */
void conn_wait_buf(struct worker *w, struct flow *f, unsigned side);
/** Buffers came back to the ring: re-arm every recv that ran dry. */
void conn_wake_waiters(struct worker *w);
/** Take f off the waiter list (it is being freed). */
void conn_unwait(struct worker *w, struct flow *f);

#endif
