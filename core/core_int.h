/* Private to core/: worker, flow and connection structures. */
#ifndef SOTH_CORE_INT_H
#define SOTH_CORE_INT_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "soth/base.h"
#include "soth/config.h"
#include "soth/core.h"
#include "soth/observe.h"
#include "soth/policy.h"
#include "soth/proto.h"
#include "soth/tls.h"

#include "app.h"
#include "iobuf.h"
#include "timer.h"
#include "conn.h"

/* ---- sizes (per worker unless noted) */
#define SOTH_MAX_FLOWS (1u << 16)    /* flow slots (address space reserved, touched lazily) */
#define SOTH_HEAD_MAX  SOTH_BUF_SIZE /* a split proxy head is gathered into one chunk */
#define SOTH_LINGER_MS 1000u         /* after our own error answer: wait for the peer's FIN */
#define SOTH_ANSWER_MS 5000u         /* bound on sending our own answer */

/* ---- CQE user_data: op (8) | side (1) | slot (23) | gen (32). Stale CQEs fail the gen check. */
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

enum flow_state {
    FS_HEAD = 0,   /* regular mode: reading the proxy request head */
    FS_RESOLVING,  /* waiting for the resolver thread */
    FS_CONNECTING, /* upstream connect in flight */
    FS_HELLO,      /* intercept: upstream connected, 200 sent, reading the ClientHello */
    FS_TLS_UP,     /* intercept: handshaking with the upstream */
    FS_TLS_DOWN,   /* intercept: handshaking with the client (our leaf) */
    FS_RELAY,      /* bytes both ways (plaintext through tls[] when intercepting) */
    FS_ANSWER,     /* sending our own answer (403/400/502...), then linger */
    FS_LINGER,     /* our FIN sent: discard input until the peer's FIN or a timer */
    FS_CLOSING,    /* stream_closed emitted; waiting for in-flight ops */
    FS_FREE,       /* slot on the free list */
    FS_COUNT
};

struct flow {
    uint32_t slot, gen;
    uint8_t state;   /* enum flow_state */
    uint8_t action;  /* enum soth_action decided */
    bool is_connect; /* regular mode CONNECT (answer 200 on connect) */
    bool on_wait_list;
    uint8_t first_eof;     /* side that sent FIN first, 0xff = none */
    uint8_t answer_reason; /* enum soth_close_reason once the answer is sent */
    uint16_t pending;      /* in-flight tracked SQEs */
    struct conn c[2];
    struct soth_ev_flow ev;
    uint64_t bytes[2];        /* [0] client->server, [1] server->client */
    struct timer_entry timer; /* the flow's one deadline (core/timer.h) */
    uint64_t last_active_ms;
    struct flow *wnext; /* waiter list for provided buffers / free list */
    char *head;         /* split proxy head, then the ClientHello, gathered here (owned chunk) */
    struct soth_tls_conn *tls[2]; /* intercept: [0] faces the client, [1] the upstream */
    struct worker *w;             /* owner (for the HTTP layer's callbacks) */
    struct app *app;              /* HTTP layer once both legs are up (core/app.h), or NULL */
    bool is_reverse;              /* reverse mode: the client may speak TLS or plain HTTP */
    bool is_transparent;          /* transparent mode: likewise; TLS names come from the SNI */
    bool client_plain;            /* intercepting, but the client leg is plain HTTP */
    bool app_done;                /* the HTTP layer finished: flushing, FINs, then close */
    bool app_held[2];             /* app_hold(side, true) in force */
    char *answer;                 /* our 502 after an upstream TLS failure (owned chunk) */
    char *pre;                    /* a plain client's bytes beyond `head` before its relay starts */
    uint32_t pre_len, pre_cap;
    uint32_t answer_len;
    uint8_t leaf_name_len; /* reverse mode: the name our leaf is for (client SNI) */
    char leaf_name[SOTH_TLS_MAX_NAME_LEN + 1];
    uint32_t head_len;
    uint16_t upstream_port;
    struct sockaddr_storage upstream_addr;
    socklen_t upstream_addr_len;
};

struct soth_spsc; /* core/spsc.c: fixed-size slots, one producer, one consumer */

struct resolve_req {
    uint32_t slot, gen;
    uint16_t port;
    uint16_t host_len;
    char host[256];
};
struct resolve_resp {
    uint32_t slot, gen;
    int err; /* 0 or -errno / EAI mapped to -EHOSTUNREACH */
    socklen_t addr_len;
    struct sockaddr_storage addr;
};

struct dns_cache_ent {
    uint64_t hash;
    uint64_t expires_ms;
    socklen_t addr_len;
    struct sockaddr_storage addr;
};
#define SOTH_DNS_CACHE 256u

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

    struct iobuf io; /* provided buffers and owned chunks */

    struct flow *flows;
    uint32_t flows_hw; /* slots ever used */
    struct flow *free_flows;
    uint32_t n_flows; /* live (not freed) */
    struct flow *buf_waiters;

    struct seg_pool segs; /* one per buffer and chunk that can be queued */

    struct timer_wheel timers;

    struct soth_config *cfg;
    struct soth_policy *policy;
    struct soth_tls_ctx *tls;
    struct soth_head_limits head_limits;
    struct soth_ev_producer *prod;
    struct soth_metrics *m;
    uint64_t flow_counter;

    bool stopping;
    uint64_t stop_deadline_ms;

    struct soth_spsc *rq, *rs; /* resolver requests / responses */
    struct dns_cache_ent dns[SOTH_DNS_CACHE];

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

struct soth_engine {
    struct soth_config *cfg;
    struct soth_observe *obs;
    unsigned n_workers;
    struct worker *workers;
    pthread_mutex_t start_mu; /* start-up only */
    pthread_cond_t start_cv;
    unsigned n_ready;
    struct soth_tls_ca *ca;
    pthread_t resolver;
    int resolver_efd;
    _Atomic int resolver_stop;
    struct soth_learn *learn; /* core/learn.c */
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

/* worker.c */
void *soth_worker_main(void *arg);
void soth_worker_wake(struct worker *w);

/* resolver.c */
int soth_resolver_start(struct soth_engine *e);
void soth_resolver_stop(struct soth_engine *e);
/** Worker side: queue a lookup; 0 or -EAGAIN when the queue is full. */
int soth_resolver_submit(struct worker *w, const struct resolve_req *req);

/* spsc.c */
struct soth_spsc *soth_spsc_new(size_t slot_size, uint32_t n_slots);
void soth_spsc_free(struct soth_spsc *q);
bool soth_spsc_push(struct soth_spsc *q, const void *item);
bool soth_spsc_pop(struct soth_spsc *q, void *item);

#endif
