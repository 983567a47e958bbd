/*
 * Private to core/: a flow, one client connection and what the proxy does with it (its upstream
 * connection, TLS sessions, HTTP layer, events), and its states. Every state change goes
 * through flow_set_state(); every end through flow_close() (core/flow.c), which emits the one
 * stream_closed and frees the flow once nothing it submitted is in flight.
 *
 * Lifetime: every tracked SQE counts in flow->pending; a flow is freed only when it is closing
 * and pending is zero, so no CQE can reach a reused slot (the generation in user_data catches
 * the untracked ones).
 */
#ifndef SOTH_CORE_FLOW_H
#define SOTH_CORE_FLOW_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "soth/base.h"
#include "soth/observe.h"
#include "soth/policy.h"
#include "soth/route.h"
#include "soth/tls.h"

#include "conn.h"
#include "timer.h"

struct app;
struct worker;

enum flow_state {
    FS_HEAD = 0,   /* regular mode: reading the proxy request head */
    FS_SOCKS,      /* socks5 mode: reading the greeting and request (core/socks.c) */
    FS_RESOLVING,  /* waiting for the resolver thread */
    FS_CONNECTING, /* upstream connect in flight */
    FS_PROXY,      /* through an upstream proxy: our CONNECT sent, reading its answer */
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

/* The replay of a pooled leg: at most this many owned chunks (64 KiB). */
#define FLOW_REPLAY_CHUNKS 4
#define FLOW_REPLAY_MAX    (FLOW_REPLAY_CHUNKS * SOTH_BUF_SIZE)

/* Where a flow's upstream redial stands (docs/http1.md "Upstream connection pool"). */
enum up_redial {
    UP_REDIAL_NONE = 0,
    UP_REDIAL_DRAIN,   /* waiting for the old socket's ops to end */
    UP_REDIAL_CONNECT, /* TCP connect to the origin in flight */
    UP_REDIAL_TLS,     /* TLS handshake with the origin */
    /* docs/http2.md "Idle upstream connection": an idle HTTP/2 layer ended its upstream
     * session; the connection closes (GOAWAY, close_notify and FIN out, the origin's FIN
     * awaited for up to SOTH_LINGER_MS), then none is held until a request wants one (a
     * wake: UP_REDIAL_CONNECT and UP_REDIAL_TLS with up_wake set) */
    UP_REDIAL_PARK,
    UP_REDIAL_PARKED,
};

/* A retry or wake in progress: the client's reads wait for the new upstream connection. */
static inline bool up_redialing(uint8_t st)
{
    return st == UP_REDIAL_DRAIN || st == UP_REDIAL_CONNECT || st == UP_REDIAL_TLS;
}

/* A flow's two addresses are TCP ones, IPv4 or IPv6: 28 bytes, not sockaddr_storage's 128
 * (a flow slot is held for every open connection: docs/performance.md, "Idle connections hold
 * less"). */
union flow_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* Copy an address into a flow_addr: false (nothing copied) when it is not one that fits. */
static inline bool flow_addr_set(union flow_addr *dst, socklen_t *dst_len, const void *src,
                                 socklen_t len)
{
    if (len > sizeof(*dst))
        return false;
    memcpy(dst, src, len);
    *dst_len = len;
    return true;
}

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
    bool is_socks;                /* socks5 mode: SOCKS replies where a CONNECT gets HTTP ones */
    bool client_plain;            /* intercepting, but the client leg is plain HTTP */
    bool app_done;                /* the HTTP layer finished: flushing, FINs, then close */
    bool app_held[2];             /* app_hold(side, true) in force */
    char *answer;                 /* our 502 after an upstream TLS failure (owned chunk) */
    struct soth_gbuf pre;         /* a plain client's bytes beyond `head` before its relay starts */
    uint32_t answer_len;
    uint32_t head_len;
    uint16_t upstream_port;
    union flow_addr upstream_addr;
    socklen_t upstream_addr_len;
    /* docs/config.md "Routes": the upstream proxy the flow goes through (NULL = direct), owned
     * by pol, a reference the flow holds so a reload cannot free it (core/decide.c); pol also
     * keeps bgt's table alive */
    const struct soth_route *route;
    struct soth_policy *pol;
    /* FS_PROXY: the proxy's answer head, read as it comes (core/upstream.c) */
    uint16_t proxy_head_len; /* bytes of it so far */
    uint8_t proxy_eoh;       /* progress through the blank line ending it */
    uint8_t proxy_line_len;  /* bytes kept of its status line */
    bool proxy_line_done;
    char proxy_line[47];
    /* docs/config.md "identities": who the flow is for and the budget it counts against */
    bool identity_set;       /* identity resolved (from the proxy head, else at the decision) */
    int16_t identity;        /* soth_policy identity number (0 = anonymous) */
    int16_t budget_slot;     /* the decision's rule budget, -1 = none */
    uint32_t budget_retry_s; /* over budget at the decision: the 429's Retry-After, else 0 */
    struct soth_budget *bgt; /* the table the flow counts in (its policy's, at the decision) */
    union flow_addr peer;    /* the client's address (identities.networks) */
    socklen_t peer_len;
    /* docs/http1.md "Upstream connection pool" (core/upool.c) */
    bool up_defer;    /* connect deferred to the ClientHello: the pool may have a connection */
    bool up_keyed;    /* up_alpn holds the ALPN offer sent (the pool key with upstream_addr) */
    bool up_pooled;   /* the upstream connection came from the pool */
    bool up_poolable; /* an HTTP/1.1 leg the pool may keep when the flow ends */
    bool up_keep;     /* the HTTP layer left the upstream reusable: kept at flow_free */
    uint8_t up_alpn_len;
    uint8_t seen_epoch;   /* the worker's activity epoch of its last receive (wake batching;
                           * here where it fills padding) */
    uint32_t up_requests; /* requests the upstream connection carried before this flow */
    char up_alpn[32];     /* UPOOL_ALPN_MAX, wire format */
    /* docs/http1.md "Upstream connection pool", retry: a pooled leg that closes before
     * answering is replaced once (core/relay.c, relay_retry) */
    uint8_t up_redial;    /* enum up_redial */
    bool up_heard;        /* a plaintext byte came from the upstream since attach */
    bool up_retried;      /* the one retry is spent (done or failed) */
    bool up_replay_over;  /* replay lost bytes (over FLOW_REPLAY_MAX, no chunk): no retry */
    bool up_redial_eof;   /* the client's FIN came during the redial: handled after it */
    bool up_redial_reset; /* the retry began on a reset or send error (else FIN, close_notify) */
    bool up_redial_poll;  /* the client's OP_POLL (reset watch) is in flight */
    bool up_alpn_h11;     /* the replaced connection negotiated http/1.1 (else none) */
    bool up_wake;         /* the redial is a parked HTTP/2 upstream's wake (else a retry) */
    bool up_wake_wanted;  /* a request came while the parked connection was still closing */
    bool up_park_fin;     /* UP_REDIAL_PARK: the FIN's shutdown completed (or none is due) */
    bool up_dialing;      /* a wake's connect is in flight */
    uint32_t replay_len;  /* plaintext sent upstream since attach, in replay[] */
    char *replay[FLOW_REPLAY_CHUNKS]; /* owned chunks (core/iobuf.h), NULL until used */
};

/** Short names for traces, indexed by enum flow_state (core/flow.c). */
extern const char *const flow_state_names[FS_COUNT];

/** The one way to change state: never out of FS_CLOSING, traced at debug level. */
static inline void flow_set_state(struct flow *f, enum flow_state st)
{
    SOTH_BUG_ON(f->state == FS_CLOSING);
    SOTH_LOG(SOTH_LOG_DEBUG, f->ev.worker, f->ev.flow_id, "state %s -> %s",
             flow_state_names[f->state], flow_state_names[st]);
    f->state = (uint8_t)st;
}

/** Live slots have an odd generation: alloc and free each advance it by one. */
static inline bool flow_is_live(const struct flow *f)
{
    return f->gen & 1;
}

/** Drop a plain client's bytes kept aside (f->pre). */
static inline void pre_free(struct flow *f)
{
    soth_gbuf_free(&f->pre);
}

/**
 * End the flow (no-op when it is already closing): the HTTP layer ends its exchanges, one
 * stream_closed with reason, FS_CLOSING, whatever is in flight is cancelled; the flow is freed
 * here when nothing is, else by flow_maybe_free after its last CQE. f may be freed on return.
 */
void flow_close(struct worker *w, struct flow *f, enum soth_close_reason reason);
/** Release everything f holds (queues, sockets, chunks, TLS, HTTP layer) and its slot. */
void flow_free(struct worker *w, struct flow *f);

/** After any CQE of a flow: free it once it is closing and nothing is in flight. */
static inline void flow_maybe_free(struct worker *w, struct flow *f)
{
    if (f->state == FS_CLOSING && f->pending == 0)
        flow_free(w, f);
}

#endif
