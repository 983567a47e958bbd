/*
 * Private to core/: a worker, one thread pinned to a CPU with its own io_uring, listening
 * socket (SO_REUSEPORT, multishot accept), provided-buffer ring, flow table, owned chunks and
 * timer wheel. Nothing in it is shared with other workers on the data path; the main thread and
 * the resolver thread reach it only through its eventfd (soth_worker_wake) and the ctl_* and
 * resolver queue fields.
 */
#ifndef SOTH_CORE_WORKER_H
#define SOTH_CORE_WORKER_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/config.h"
#include "soth/observe.h"
#include "soth/policy.h"
#include "soth/proto/connect.h"
#include "soth/tls.h"

#include "conn.h"
#include "flowtab.h"
#include "iobuf.h"
#include "leg.h"
#include "resolver.h"
#include "timer.h"
#include "upool.h"

struct quic;
struct soth_engine;
struct soth_spsc;

/*
 * CQE user_data: op (8) | side (1) | slot (23) | gen (32), not a pointer, so a completion that
 * arrives after its flow was freed fails the generation check (core/flowtab.h). Tracked ops
 * count in flow->pending until their last CQE; untracked ones (close, cancel) never touch the
 * flow.
 */
enum soth_op {
    OP_NONE = 0,
    OP_ACCEPT,
    OP_RECV,
    OP_SEND,
    OP_CONNECT,
    OP_SHUTDOWN,
    OP_CLOSE,  /* untracked */
    OP_CANCEL, /* untracked */
    OP_EVENTFD,
    OP_QUIC_LISTEN, /* the UDP socket's multishot recvmsg (core/quic.c) */
    OP_QUIC_RECV,   /* a QUIC flow's socket, side = leg; tracked by the QUIC flow */
    OP_QUIC_SEND,   /* a relayed datagram, side = leg it leaves by; tag = buffer id */
    OP_POLL,        /* the client's one-shot POLLERR|POLLHUP during a retry (core/relay.c) */
    OP_COUNT
};

static inline uint64_t ud_pack(enum soth_op op, unsigned side, uint32_t slot, uint32_t gen)
{
    return (uint64_t)op << 56 | (uint64_t)(side & 1) << 55 | (uint64_t)(slot & 0x7fffff) << 32 |
           gen;
}
static inline enum soth_op ud_op(uint64_t ud)
{
    return (enum soth_op)(ud >> 56);
}
static inline unsigned ud_side(uint64_t ud)
{
    return (unsigned)(ud >> 55) & 1;
}
static inline uint32_t ud_slot(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & 0x7fffff;
}
static inline uint32_t ud_gen(uint64_t ud)
{
    return (uint32_t)ud;
}

struct worker {
    unsigned idx;
    int cpu;
    struct soth_engine *eng;
    pthread_t thr;
    struct io_uring ring;
    int listen_fd;
    bool accept_armed;
    int efd;
    uint64_t efd_val;

    struct iobuf io;           /* provided buffers and owned chunks (core/iobuf.h) */
    struct seg_pool segs;      /* send queue segments over io (core/conn.h) */
    struct flow_table ft;      /* core/flowtab.h */
    struct flow *buf_waiters;  /* flows whose recv stopped on -ENOBUFS (core/conn.c) */
    struct timer_wheel timers; /* one deadline per flow (core/timer.h) */
    struct quic *quic;         /* QUIC passthrough (core/quic.h), NULL when off */
    struct upool pool;         /* idle upstream connections (core/upool.h) */
    struct leg_cork cork;      /* one leg's small plaintext writes of a pass (core/leg.h) */

    struct soth_config *cfg;
    struct soth_policy *policy;
    struct soth_tls_ctx *tls;
    struct soth_head_limits head_limits;
    struct soth_ev_producer *prod;
    struct soth_metrics *m;
    uint64_t flow_counter;

    bool stopping;
    uint64_t stop_deadline_ms;

    /* Giving memory back when the worker has become quiet (core/worker.c, worker_trim;
     * docs/performance.md "Memory after bursts"). Read once a loop turn, checked once a second. */
    struct {
        uint64_t next_ms;        /* next check */
        uint64_t quiet_since_ms; /* first check of the current quiet stretch, 0 = busy */
        uint64_t last_ms;        /* last trim */
        uint64_t pub_last;       /* io.published at the last check */
        uint64_t pub_trim;       /* io.published at the last trim */
        uint32_t hw_trim;        /* ft.hw after the last trim */
        uint32_t n;              /* trims so far */
        uint32_t parks;          /* idle HTTP/2 upstream connections closed (core/relay.c) */
        uint32_t parks_trim;     /* parks at the last trim */
        bool ring_ok;            /* DEFER_TASKRUN: the kernel fills buffers only in our enters */
    } trim;

    /* Busy polling and wake batching between loop passes (busy_poll_us, wake_batch_us;
     * core/worker.c, worker_wait; docs/performance.md "Waking the worker", "Batching the
     * wake-ups"). */
    struct {
        uint64_t window_ns;    /* the config's busy_poll_us; 0 = off */
        uint64_t gap_ns;       /* moving average of the recent waits' lengths (1/8 weight each) */
        uint64_t batch_ns;     /* the config's wake_batch_us where the kernel has it; 0 = off */
        uint32_t per_batch;    /* moving average of the receives a batched wait brought, x16 */
        uint32_t probe;        /* waits since the last batched one, while batching is off */
        bool batched;          /* the last wait was batched (per_batch follows it) */
        uint8_t epoch;         /* activity epoch (epoch_len_ns): flows stamp it at a receive */
        uint32_t active;       /* flows with a receive in this epoch */
        uint32_t recvs;        /* flows' receive completions in this epoch */
        uint64_t epoch_ns;     /* when this epoch began */
        uint64_t epoch_len_ns; /* an epoch's length (BATCH_EPOCH_NS, longer for long windows) */
        uint64_t flow_gap_ns;  /* last epoch: average time between one flow's receives */
    } poll;

    struct soth_spsc *rq, *rs; /* resolver requests / responses */
    struct dns_cache dns;      /* resolver answers (core/resolver.c) */

    /* control from the main thread; read when the eventfd fires */
    _Atomic int ctl_stop;
    _Atomic int ctl_flush;
    _Atomic(struct soth_config *) ctl_cfg;

    int setup_err;
    char setup_msg[256];

    /* TLS learning (core/learn.c): the slot is written by the telemetry thread, the rest is
     * the worker's own */
    struct soth_tls_learning_slot learn_slot;
    struct soth_tls_learning_snapshot *learn_view; /* current snapshot (owned ref) or NULL */
    bool learn_on;                                 /* tls.learning.enabled, read at start */
    uint8_t learn_provider; /* enum soth_tls_provider of own failures (native; test hook) */
};

/** An SQE from the worker's ring; when the SQ is full, what is there is submitted first. */
static inline struct io_uring_sqe *get_sqe(struct worker *w)
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

/** The worker thread (pthread_create argument: its struct worker). */
void *soth_worker_main(void *arg);

/** Wake the worker's loop (its eventfd): control fields or resolver answers changed. Any
 *  thread; never blocks. */
static inline void soth_worker_wake(struct worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof(one));
    (void)n;
}

#endif
