/*
 * QUIC passthrough on a worker (core/quic.h, docs/http3.md): the UDP socket on the listen port,
 * the QUIC flow table, the Initial read for SNI and ALPN, the decision, the relay of datagrams
 * both ways and a flow's end.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <xxhash.h>

#include "soth/quic.h"

#include "quic.h"
#include "timer.h"
#include "worker.h"

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR 20
#endif
#ifndef IP_ORIGDSTADDR
#define IP_ORIGDSTADDR 20
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif
#ifndef IPV6_RECVORIGDSTADDR
#define IPV6_RECVORIGDSTADDR 74
#endif
#ifndef IPV6_ORIGDSTADDR
#define IPV6_ORIGDSTADDR 74
#endif

/*
 * Provided buffers for datagrams, a ring of their own (bgid QUIC_BGID). A received datagram
 * stays in its buffer until the send that relays it completes. Each buffer holds the
 * io_uring_recvmsg_out header, the source address and the control messages before the
 * payload, which leaves room for datagrams of up to about 1,900 bytes (path MTU 1,500 and
 * QUIC's own limits keep real datagrams below); a longer one is dropped and counted.
 */
#define QUIC_BUF_SIZE  2048u
#define QUIC_BUF_COUNT 2048u /* power of 2 */
#define QUIC_BGID      1
#define QUIC_HOLD_MAX  8u    /* client datagrams held while their ClientHello is incomplete */
#define QUIC_HELD_MAX  512u  /* held datagrams of all flows: the rest of the ring stays free */
#define QUIC_HELLO_MS  3000u /* a ClientHello not complete this long after its first datagram */
#define QUIC_HELLOS    256u  /* ClientHellos being reassembled at once, per worker */
#define QUIC_CTL_LEN   64u   /* room for one IP(V6)_ORIGDSTADDR control message */

enum qstate {
    QS_HELLO = 0, /* reading the client's Initial packets; datagrams held */
    QS_RELAY,     /* both sockets open, datagrams relayed */
    QS_BLOCK,     /* blocked: datagrams dropped until the flow is idle */
    QS_CLOSING,   /* stream_closed emitted; waiting for in-flight ops */
    QS_FREE,
    QS_COUNT
};

/* The flow's identity, compared with memcmp: zeroed before it is filled. */
struct qkey {
    uint8_t caddr[16], daddr[16]; /* IPv4 in the first 4 bytes */
    uint16_t cport, dport;        /* host order */
    uint8_t v6;
    uint8_t pad[3];
};

struct qheld {
    uint16_t bid;
    uint16_t off; /* payload offset in the buffer */
    uint16_t len;
};

struct qflow {
    uint32_t slot, gen; /* gen odd = live */
    uint8_t state;      /* enum qstate */
    uint8_t n_held;
    bool recv_armed[2]; /* by leg: [CLIENT] the reply socket, [UPSTREAM] the origin socket */
    bool starved[2];    /* that receive stopped for lack of buffers */
    bool on_starved;    /* linked in quic->starved */
    uint16_t hello;     /* index in quic->hellos while QS_HELLO, else UINT16_MAX */
    uint16_t pending;   /* tracked ops in flight */
    int fd[2];          /* by leg, -1 = none */
    uint64_t bytes[2], dgrams[2]; /* received from each leg */
    uint64_t last_active_ms;
    uint64_t hello_due_ms; /* QS_HELLO ends then (QUIC_HELLO_MS after the first datagram) */
    struct timer_entry timer;
    struct qflow *hnext; /* hash chain */
    struct qflow *next;  /* free list or starved list */
    struct qkey key;
    struct qheld held[QUIC_HOLD_MAX];
    uint8_t target_len;
    char target[INET6_ADDRSTRLEN + 8]; /* original destination "ip:port" / "[ip6]:port" */
    struct soth_ev_flow ev;
};

struct quic {
    int fd; /* the UDP socket on the listen port, -1 = none */
    bool armed, starved, stopping, logged_full;
    struct msghdr lmsg; /* listener: source address and control messages */
    struct msghdr cmsg; /* connected sockets: payload only */

    struct io_uring_buf_ring *br;
    char *bufs;
    unsigned br_added;
    uint8_t bid_ours[QUIC_BUF_COUNT];

    struct qflow *flows; /* max slots of address space, touched as used */
    uint32_t hw, n_live, max;
    struct qflow *free;
    struct qflow **htab;
    uint32_t hmask;
    uint64_t seed;
    struct qflow *starved_flows;

    struct soth_quic_hello *hellos; /* QUIC_HELLOS parsers */
    uint16_t hello_free[QUIC_HELLOS];
    unsigned n_hello_free;
    unsigned n_held; /* held datagrams of all flows, at most QUIC_HELD_MAX */

    struct timer_wheel timers;
    uint32_t idle_ms;
    uint16_t listen_port;
};

enum { QD_TUNNEL = SOTH_ACTION_TUNNEL, QD_BLOCK = SOTH_ACTION_BLOCK, QD_DROPPED };

/* user_data: the op in the worker's bit positions (core/worker.h), then side, slot and a
 * 32-bit tag: the flow's generation for receives, the buffer id for sends. A flow is freed
 * only at pending == 0, so a tracked op's slot is always its flow's. */
static inline uint64_t qud(enum soth_op op, unsigned side, uint32_t slot, uint32_t tag)
{
    return ud_pack(op, side, slot, tag);
}

/* ------------------------------------------------------------------------------------------
 * buffers
 * ------------------------------------------------------------------------------------------ */

static inline char *qbuf(struct quic *q, unsigned bid)
{
    return q->bufs + (size_t)bid * QUIC_BUF_SIZE;
}

static inline void qbuf_take(struct quic *q, unsigned bid)
{
    SOTH_BUG_ON(bid >= QUIC_BUF_COUNT || q->bid_ours[bid]);
    q->bid_ours[bid] = 1;
}

static inline void qbuf_put(struct quic *q, unsigned bid)
{
    SOTH_BUG_ON(bid >= QUIC_BUF_COUNT || !q->bid_ours[bid]);
    q->bid_ours[bid] = 0;
    io_uring_buf_ring_add(q->br, qbuf(q, bid), QUIC_BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(QUIC_BUF_COUNT), (int)q->br_added);
    q->br_added++;
}

/* ------------------------------------------------------------------------------------------
 * flow table
 * ------------------------------------------------------------------------------------------ */

static uint32_t key_hash(const struct quic *q, const struct qkey *k)
{
    return (uint32_t)XXH3_64bits_withSeed(k, sizeof(*k), q->seed);
}

static struct qflow *flow_find(struct quic *q, const struct qkey *k)
{
    for (struct qflow *f = q->htab[key_hash(q, k) & q->hmask]; f != NULL; f = f->hnext)
        if (memcmp(&f->key, k, sizeof(*k)) == 0)
            return f;
    return NULL;
}

static void flow_unhash(struct quic *q, struct qflow *f)
{
    struct qflow **pp = &q->htab[key_hash(q, &f->key) & q->hmask];
    while (*pp != NULL && *pp != f)
        pp = &(*pp)->hnext;
    if (*pp == f)
        *pp = f->hnext;
    f->hnext = NULL;
}

static struct qflow *flow_alloc(struct quic *q, const struct qkey *k)
{
    struct qflow *f = q->free;
    if (f != NULL) {
        q->free = f->next;
    } else {
        if (q->hw >= q->max)
            return NULL;
        f = &q->flows[q->hw];
        f->slot = q->hw++;
        f->gen = 0;
    }
    f->gen++;
    f->state = QS_HELLO;
    f->n_held = 0;
    f->recv_armed[0] = f->recv_armed[1] = false;
    f->starved[0] = f->starved[1] = false;
    f->on_starved = false;
    f->hello = UINT16_MAX;
    f->pending = 0;
    f->fd[0] = f->fd[1] = -1;
    f->bytes[0] = f->bytes[1] = 0;
    f->dgrams[0] = f->dgrams[1] = 0;
    f->last_active_ms = now_ms();
    timer_entry_init(&f->timer);
    f->key = *k;
    f->next = NULL;
    uint32_t h = key_hash(q, k) & q->hmask;
    f->hnext = q->htab[h];
    q->htab[h] = f;
    q->n_live++;
    return f;
}

static void key_to_sa(const uint8_t *addr, uint16_t port, bool v6, struct sockaddr_storage *ss,
                      socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (v6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
        s->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, addr, 16);
        s->sin6_port = htons(port);
        *len = sizeof(*s);
    } else {
        struct sockaddr_in *s = (struct sockaddr_in *)ss;
        s->sin_family = AF_INET;
        memcpy(&s->sin_addr, addr, 4);
        s->sin_port = htons(port);
        *len = sizeof(*s);
    }
}

/* An address from the kernel into (addr, port) of a key; a v4-mapped IPv6 address (a dual-stack
 * socket) becomes IPv4. False for other families. */
static bool sa_to_key(const struct sockaddr *sa, socklen_t len, uint8_t *addr, uint16_t *port,
                      uint8_t *v6)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        memcpy(addr, &s->sin_addr, 4);
        *port = ntohs(s->sin_port);
        *v6 = 0;
        return true;
    }
    if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        if (memcmp(&s->sin6_addr, mapped, 12) == 0) {
            memcpy(addr, (const uint8_t *)&s->sin6_addr + 12, 4);
            *v6 = 0;
        } else {
            memcpy(addr, &s->sin6_addr, 16);
            *v6 = 1;
        }
        *port = ntohs(s->sin6_port);
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------------------------------
 * receiving and sending
 * ------------------------------------------------------------------------------------------ */

static void listen_arm(struct worker *w, struct quic *q)
{
    if (q->armed || q->fd < 0 || q->stopping)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_recvmsg_multishot(sqe, q->fd, &q->lmsg, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = QUIC_BGID;
    io_uring_sqe_set_data64(sqe, qud(OP_QUIC_LISTEN, 0, 0, 0));
    q->armed = true;
    q->starved = false;
}

static void recv_arm(struct worker *w, struct quic *q, struct qflow *f, unsigned side)
{
    if (f->recv_armed[side] || f->fd[side] < 0 || f->state != QS_RELAY)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_recvmsg_multishot(sqe, f->fd[side], &q->cmsg, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = QUIC_BGID;
    io_uring_sqe_set_data64(sqe, qud(OP_QUIC_RECV, side, f->slot, f->gen));
    f->recv_armed[side] = true;
    f->starved[side] = false;
    f->pending++;
}

/* Relay one datagram out of leg `to`'s socket, from its buffer; the buffer goes back to the
 * ring when the send completes. */
static void send_dgram(struct worker *w, struct qflow *f, unsigned to, unsigned bid, const char *p,
                       size_t len)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_send(sqe, f->fd[to], p, len, 0);
    io_uring_sqe_set_data64(sqe, qud(OP_QUIC_SEND, to, f->slot, bid));
    f->pending++;
    SOTH_METRIC_ADD(
        w->m->quic_datagrams[to == SOTH_LEG_UPSTREAM ? SOTH_LEG_CLIENT : SOTH_LEG_UPSTREAM], 1);
}

/* ------------------------------------------------------------------------------------------
 * a flow's end
 * ------------------------------------------------------------------------------------------ */

static void hello_release(struct quic *q, struct qflow *f)
{
    if (f->hello != UINT16_MAX) {
        q->hello_free[q->n_hello_free++] = f->hello;
        f->hello = UINT16_MAX;
    }
}

static void held_release(struct quic *q, struct qflow *f)
{
    for (unsigned i = 0; i < f->n_held; i++)
        qbuf_put(q, f->held[i].bid);
    q->n_held -= f->n_held;
    f->n_held = 0;
}

static void flow_release(struct worker *w, struct quic *q, struct qflow *f)
{
    for (unsigned s = 0; s < 2; s++) {
        if (f->fd[s] >= 0) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_close(sqe, f->fd[s]);
            io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, s, 0, 0));
            f->fd[s] = -1;
        }
    }
    if (f->on_starved) {
        struct qflow **pp = &q->starved_flows;
        while (*pp != f)
            pp = &(*pp)->next;
        *pp = f->next;
        f->on_starved = false;
    }
    f->state = QS_FREE;
    f->gen++;
    f->next = q->free;
    q->free = f;
    q->n_live--;
}

static void maybe_free(struct worker *w, struct quic *q, struct qflow *f)
{
    if (f->state == QS_CLOSING && f->pending == 0)
        flow_release(w, q, f);
}

static void flow_end(struct worker *w, struct quic *q, struct qflow *f,
                     enum soth_close_reason reason)
{
    if (f->state == QS_CLOSING || f->state == QS_FREE)
        return;
    soth_ev_stream_closed_dgrams(&f->ev, reason, f->bytes[0], f->bytes[1], f->dgrams[0],
                                 f->dgrams[1]);
    SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "quic flow closed: %s",
             soth_close_reason_names[reason]);
    f->state = QS_CLOSING;
    timer_unlink(&q->timers, &f->timer);
    flow_unhash(q, f);
    hello_release(q, f);
    held_release(q, f);
    for (unsigned s = 0; s < 2; s++) {
        if (f->fd[s] >= 0 && f->recv_armed[s]) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_cancel_fd(sqe, f->fd[s], IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, s, 0, 0));
        }
    }
    maybe_free(w, q, f);
}

/* ------------------------------------------------------------------------------------------
 * decision and the relay's sockets
 * ------------------------------------------------------------------------------------------ */

/*
 * The two sockets of a relayed flow. Toward the origin: an ordinary socket connected to the
 * original destination. Toward the client: a socket with IP_TRANSPARENT bound to the original
 * destination (not a local address) and connected to the client, so what it sends leaves
 * from the address and port the client sent to (the client's QUIC stack drops anything
 * else). Being connected, it is also the socket nftables' tproxy finds first for the client's
 * next datagrams (its established-socket lookup), so they come in on it.
 */
static int open_sockets(struct qflow *f, char *why, size_t why_len)
{
    struct sockaddr_storage cl, dst;
    socklen_t cl_len, dst_len;
    key_to_sa(f->key.caddr, f->key.cport, f->key.v6, &cl, &cl_len);
    key_to_sa(f->key.daddr, f->key.dport, f->key.v6, &dst, &dst_len);
    int fam = f->key.v6 ? AF_INET6 : AF_INET;
    int one = 1;
    int u = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u == -1) {
        snprintf(why, why_len, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(u, (struct sockaddr *)&dst, dst_len) == -1) {
        snprintf(why, why_len, "connect to the origin: %s", strerror(errno));
        close(u);
        return -1;
    }
    int c = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c == -1) {
        snprintf(why, why_len, "socket: %s", strerror(errno));
        close(u);
        return -1;
    }
    int rc = f->key.v6 ? setsockopt(c, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
                       : setsockopt(c, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
    if (rc == -1 || setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        bind(c, (struct sockaddr *)&dst, dst_len) == -1 ||
        connect(c, (struct sockaddr *)&cl, cl_len) == -1) {
        snprintf(why, why_len, "reply socket: %s", strerror(errno));
        close(c);
        close(u);
        return -1;
    }
    f->fd[SOTH_LEG_UPSTREAM] = u;
    f->fd[SOTH_LEG_CLIENT] = c;
    return 0;
}

/* The decision is made: relay (open the sockets, send what was held) or drop. */
static void apply(struct worker *w, struct quic *q, struct qflow *f, enum soth_action a)
{
    SOTH_METRIC_ADD(w->m->quic_flows[a == SOTH_ACTION_BLOCK ? QD_BLOCK : QD_TUNNEL], 1);
    if (a == SOTH_ACTION_BLOCK) {
        /* Kept in the table, dropping, until idle: one flow per attempt, not one per
         * retransmitted Initial. */
        held_release(q, f);
        f->state = QS_BLOCK;
        return;
    }
    char why[160];
    if (open_sockets(f, why, sizeof(why)) < 0) {
        SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, f->ev.flow_id, "quic: %s", why);
        flow_end(w, q, f, SOTH_CLOSE_UPSTREAM_CONNECT_FAILED);
        return;
    }
    f->state = QS_RELAY;
    for (unsigned i = 0; i < f->n_held; i++) {
        struct qheld *h = &f->held[i];
        send_dgram(w, f, SOTH_LEG_UPSTREAM, h->bid, qbuf(q, h->bid) + h->off, h->len);
    }
    q->n_held -= f->n_held;
    f->n_held = 0;
    recv_arm(w, q, f, SOTH_LEG_UPSTREAM);
    recv_arm(w, q, f, SOTH_LEG_CLIENT);
}

/* The flow's identity (docs/soth.md "Identity"): the client's network, else anonymous (a QUIC
 * flow has no proxy head; budgets do not apply to relayed datagrams). Set on its events. */
static int quic_identity(struct worker *w, struct qflow *f)
{
    struct sockaddr_storage ss;
    socklen_t len;
    key_to_sa(f->key.caddr, f->key.cport, f->key.v6 != 0, &ss, &len);
    int id = SOTH_IDENTITY_ANONYMOUS;
    bool required = soth_policy_identify(w->policy, SOTH_IOV_NULL, (struct sockaddr *)&ss, &id) ==
                    SOTH_IDENT_REQUIRED;
    soth_ev_flow_set_identity(&f->ev, soth_policy_identity_name(w->policy, id));
    return required ? -1 : id; /* identities.require without one: blocked */
}

/* Policy on SNI:port (the original destination's address without an SNI), as for TCP
 * (docs/config.md "policy"); what is not blocked is relayed and reported as tunnel. */
static void decide_hello(struct worker *w, struct quic *q, struct qflow *f,
                         const struct soth_quic_hello *h)
{
    char ver[16];
    int n = snprintf(ver, sizeof(ver), "0x%08x", (unsigned)h->version);
    struct soth_iov sni = h->ch.has_sni ? h->ch.sni : SOTH_IOV_NULL;
    soth_ev_connect_received(&f->ev, SOTH_IOV_NULL, soth_iov(f->target, f->target_len));
    soth_ev_quic_client_hello(&f->ev, soth_iov(ver, (size_t)n), sni, h->ch.alpn,
                              h->ch.has_alpn ? h->ch.n_alpn : 0, h->initial_packets);
    if (h->ch.has_sni)
        soth_ev_flow_set_server(&f->ev, h->ch.sni, f->key.dport);
    struct soth_learning_view lv = {.is_pinned = NULL, .ctx = NULL}; /* no pins for QUIC */
    int id = quic_identity(w, f);
    struct soth_policy_decision d =
        soth_policy_decide_for(w->policy, soth_iov(f->ev.server_host, f->ev.server_host_len),
                               f->ev.server_port, id < 0 ? SOTH_IDENTITY_ANONYMOUS : id, &lv);
    if (id < 0) {
        d.action = SOTH_ACTION_BLOCK;
        d.reason = SOTH_REASON_DEFAULT;
        d.rule_id = SOTH_IOV_NULL;
    }
    enum soth_action a = d.action == SOTH_ACTION_BLOCK ? SOTH_ACTION_BLOCK : SOTH_ACTION_TUNNEL;
    enum soth_decision_reason r = a == SOTH_ACTION_BLOCK ? (enum soth_decision_reason)d.reason
                                                         : SOTH_REASON_HTTP3_PASSTHROUGH;
    soth_ev_connect_decision_route(&f->ev, a, r, d.rule_id, SOTH_IOV_LIT("direct"));
    apply(w, q, f, a);
}

/* No readable Initial: connect_parse_failed (the flow's first event), then policy.default on
 * the original destination, unless the flow is ending anyway (decide false). */
static void decide_invalid(struct worker *w, struct quic *q, struct qflow *f, int rc, bool decide)
{
    const char *detail = rc == SOTH_QUIC_E_NOT_INITIAL ? "first datagram is no QUIC Initial"
                         : rc == SOTH_E_TOO_LARGE      ? "ClientHello too large"
                         : rc == SOTH_E_INCOMPLETE     ? "ClientHello incomplete"
                                                       : "Initial packet cannot be read";
    soth_ev_connect_parse_failed(&f->ev, SOTH_IOV_LIT("quic_initial_invalid"),
                                 soth_iov(detail, strlen(detail)));
    if (!decide)
        return;
    enum soth_action a = w->cfg->policy_default == SOTH_ACTION_BLOCK || quic_identity(w, f) < 0
                             ? SOTH_ACTION_BLOCK
                             : SOTH_ACTION_TUNNEL;
    soth_ev_connect_decision_route(&f->ev, a, SOTH_REASON_DEFAULT, SOTH_IOV_NULL,
                                   SOTH_IOV_LIT("direct"));
    apply(w, q, f, a);
}

/* ------------------------------------------------------------------------------------------
 * datagrams
 * ------------------------------------------------------------------------------------------ */

/* A datagram the client sent, in buffer bid (ours): hold it while the ClientHello is being
 * read, relay it, or drop it. */
static void from_client(struct worker *w, struct quic *q, struct qflow *f, unsigned bid, size_t off,
                        size_t len)
{
    f->last_active_ms = now_ms();
    f->dgrams[SOTH_LEG_CLIENT]++;
    f->bytes[SOTH_LEG_CLIENT] += len;
    SOTH_METRIC_ADD(w->m->bytes_client_to_server, len);
    switch (f->state) {
    case QS_HELLO: {
        if (f->n_held == QUIC_HOLD_MAX || q->n_held == QUIC_HELD_MAX) {
            /* Bounded: a ClientHello over more datagrams than that (or too many at once) is
             * not waited for; the datagram that did not fit is dropped (QUIC resends). */
            qbuf_put(q, bid);
            hello_release(q, f);
            decide_invalid(w, q, f, SOTH_E_TOO_LARGE, true);
            return;
        }
        f->held[f->n_held++] = (struct qheld){(uint16_t)bid, (uint16_t)off, (uint16_t)len};
        q->n_held++;
        /* A flow whose first datagram was no Initial has no reader (new_flow). */
        struct soth_quic_hello *h = f->hello != UINT16_MAX ? &q->hellos[f->hello] : NULL;
        int rc =
            h != NULL ? soth_quic_hello_feed(h, qbuf(q, bid) + off, len) : SOTH_QUIC_E_NOT_INITIAL;
        /* After the first, a datagram without Initial packets (0-RTT) just waits its turn. */
        if (rc == SOTH_E_INCOMPLETE || (rc == SOTH_QUIC_E_NOT_INITIAL && f->n_held > 1))
            return;
        if (rc == SOTH_QUIC_DONE)
            decide_hello(w, q, f, h); /* the hello's iovs point into h: release after */
        else
            decide_invalid(w, q, f, rc, true);
        hello_release(q, f);
        return;
    }
    case QS_RELAY:
        send_dgram(w, f, SOTH_LEG_UPSTREAM, bid, qbuf(q, bid) + off, len);
        return;
    default:
        qbuf_put(q, bid);
        return;
    }
}

static bool is_own_port(const struct quic *q, const struct qkey *k)
{
    /* A datagram sent to the proxy's own port was not diverted: relaying it to its
     * "original destination" would send it to ourselves. */
    return k->dport == q->listen_port;
}

/* A flow's first datagram: the flow, its first events, then the datagram. */
static void new_flow(struct worker *w, struct quic *q, const struct qkey *k,
                     const struct sockaddr *client, socklen_t client_len, unsigned bid, size_t off,
                     size_t len)
{
    /* Only a datagram that starts with an Initial gets a ClientHello reader: garbage cannot
     * take them from real clients. */
    bool initial = soth_quic_is_initial(qbuf(q, bid) + off, len);
    if (q->stopping || is_own_port(q, k) || (initial && q->n_hello_free == 0)) {
        SOTH_METRIC_ADD(w->m->quic_flows[QD_DROPPED], 1);
        qbuf_put(q, bid);
        return;
    }
    struct qflow *f = flow_alloc(q, k);
    if (f == NULL) {
        SOTH_METRIC_ADD(w->m->quic_flows[QD_DROPPED], 1);
        if (!q->logged_full)
            SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0,
                     "quic: %u flows (quic.max_flows): new flows dropped", q->max);
        q->logged_full = true;
        qbuf_put(q, bid);
        return;
    }
    uint64_t flow_id = ((uint64_t)(w->idx + 1) << 48) | ++w->flow_counter;
    soth_ev_flow_init(&f->ev, w->prod, flow_id, w->idx, client, client_len);
    soth_ev_flow_set_protocol(&f->ev, SOTH_PROTO_HTTP3);
    char host[INET6_ADDRSTRLEN], target[sizeof(f->target) + 1];
    inet_ntop(k->v6 ? AF_INET6 : AF_INET, k->daddr, host, sizeof(host));
    int n = k->v6 ? snprintf(target, sizeof(target), "[%s]:%u", host, k->dport)
                  : snprintf(target, sizeof(target), "%s:%u", host, k->dport);
    soth_ev_flow_set_server(&f->ev, soth_iov(host, strlen(host)), k->dport);
    /* connect_received waits for the ClientHello: a flow whose Initial cannot be read starts
     * with connect_parse_failed instead (docs/events.md, ordering invariant 2). */
    memcpy(f->target, target, (size_t)n);
    f->target_len = (uint8_t)n;
    if (initial) {
        f->hello = q->hello_free[--q->n_hello_free];
        soth_quic_hello_init(&q->hellos[f->hello]);
    }
    f->hello_due_ms = f->last_active_ms + (q->idle_ms < QUIC_HELLO_MS ? q->idle_ms : QUIC_HELLO_MS);
    timer_set(&q->timers, &f->timer, f->hello_due_ms);
    from_client(w, q, f, bid, off, len);
}

static void on_listen(struct worker *w, struct quic *q, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        q->armed = false;
    if (cqe->res < 0) {
        if (cqe->res == -ENOBUFS)
            q->starved = true;
        else if (cqe->res != -ECANCELED)
            SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0, "quic recvmsg: %s", soth_strerror(cqe->res));
    } else if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        qbuf_take(q, bid);
        char *b = qbuf(q, bid);
        struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(b, cqe->res, &q->lmsg);
        if (o == NULL || (o->flags & MSG_TRUNC) || q->stopping) {
            qbuf_put(q, bid);
            goto rearm;
        }
        struct qkey k;
        memset(&k, 0, sizeof(k));
        bool have_dst = false;
        uint8_t dv6 = 0;
        for (struct cmsghdr *c = io_uring_recvmsg_cmsg_firsthdr(o, &q->lmsg); c != NULL;
             c = io_uring_recvmsg_cmsg_nexthdr(o, &q->lmsg, c)) {
            if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
                (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR))
                have_dst =
                    sa_to_key((const struct sockaddr *)CMSG_DATA(c),
                              (socklen_t)(c->cmsg_len - CMSG_LEN(0)), k.daddr, &k.dport, &dv6);
        }
        const struct sockaddr *src = io_uring_recvmsg_name(o);
        if (!have_dst || o->namelen > q->lmsg.msg_namelen ||
            !sa_to_key(src, o->namelen, k.caddr, &k.cport, &k.v6) || k.v6 != dv6) {
            qbuf_put(q, bid);
            goto rearm;
        }
        size_t off = (size_t)((char *)io_uring_recvmsg_payload(o, &q->lmsg) - b);
        size_t len = io_uring_recvmsg_payload_length(o, cqe->res, &q->lmsg);
        struct qflow *f = flow_find(q, &k);
        if (f != NULL)
            from_client(w, q, f, bid, off, len);
        else
            new_flow(w, q, &k, src, o->namelen, bid, off, len);
    }
rearm:
    if (!q->armed && !q->starved)
        listen_arm(w, q);
}

static void on_recv(struct worker *w, struct quic *q, struct qflow *f, unsigned side,
                    struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        f->recv_armed[side] = false;
        f->pending--;
    }
    if (cqe->res >= 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        qbuf_take(q, bid);
        char *b = qbuf(q, bid);
        struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(b, cqe->res, &q->cmsg);
        if (o == NULL || (o->flags & MSG_TRUNC) || f->state != QS_RELAY) {
            qbuf_put(q, bid);
        } else {
            size_t off = (size_t)((char *)io_uring_recvmsg_payload(o, &q->cmsg) - b);
            size_t len = io_uring_recvmsg_payload_length(o, cqe->res, &q->cmsg);
            if (side == SOTH_LEG_CLIENT) {
                from_client(w, q, f, bid, off, len);
            } else {
                f->last_active_ms = now_ms();
                f->dgrams[SOTH_LEG_UPSTREAM]++;
                f->bytes[SOTH_LEG_UPSTREAM] += len;
                SOTH_METRIC_ADD(w->m->bytes_server_to_client, len);
                send_dgram(w, f, SOTH_LEG_CLIENT, bid, b + off, len);
            }
        }
    } else if (cqe->res == -ENOBUFS) {
        f->starved[side] = true;
        if (!f->on_starved) {
            f->on_starved = true;
            f->next = q->starved_flows;
            q->starved_flows = f;
        }
    } else if (cqe->res < 0 && cqe->res != -ECANCELED) {
        /* ICMP errors on a connected socket (the origin's port is closed): QUIC copes. */
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "quic recv (%s): %s",
                 soth_leg_names[side], soth_strerror(cqe->res));
    }
    if (!f->recv_armed[side] && !f->starved[side])
        recv_arm(w, q, f, side);
}

void quic_on_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
    struct quic *q = w->quic;
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum soth_op op = ud_op(ud);
    if (op == OP_QUIC_LISTEN) {
        on_listen(w, q, cqe);
        return;
    }
    uint32_t slot = ud_slot(ud);
    SOTH_BUG_ON(q == NULL || slot >= q->hw);
    struct qflow *f = &q->flows[slot];
    unsigned side = ud_side(ud);
    if (op == OP_QUIC_SEND) {
        qbuf_put(q, ud_gen(ud)); /* the tag of a send is its buffer id */
        f->pending--;
        if (cqe->res < 0)
            SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "quic send (%s): %s",
                     soth_leg_names[side], soth_strerror(cqe->res));
    } else {
        SOTH_BUG_ON(f->gen != ud_gen(ud));
        on_recv(w, q, f, side, cqe);
    }
    maybe_free(w, q, f);
}

/* ------------------------------------------------------------------------------------------
 * per turn: timers, buffers
 * ------------------------------------------------------------------------------------------ */

static void on_timer(void *ctx, struct timer_entry *t)
{
    struct worker *w = ctx;
    struct quic *q = w->quic;
    struct qflow *f = (struct qflow *)((char *)t - offsetof(struct qflow, timer));
    if (f->state == QS_CLOSING || f->state == QS_FREE)
        return;
    uint64_t due = f->state == QS_HELLO ? f->hello_due_ms : f->last_active_ms + q->idle_ms;
    if (now_ms() < due) {
        timer_set(&q->timers, &f->timer, due);
        return;
    }
    if (f->state == QS_HELLO) {
        /* The rest of the ClientHello never came. */
        decide_invalid(w, q, f, SOTH_E_INCOMPLETE, false);
        hello_release(q, f);
    }
    flow_end(w, q, f, f->state == QS_BLOCK ? SOTH_CLOSE_BLOCKED : SOTH_CLOSE_IDLE_TIMEOUT);
}

void quic_turn(struct worker *w)
{
    struct quic *q = w->quic;
    if (q == NULL)
        return;
    timer_run(&q->timers, now_ms(), on_timer, w);
    if (q->br_added == 0)
        return;
    io_uring_buf_ring_advance(q->br, (int)q->br_added);
    q->br_added = 0;
    if (q->starved)
        listen_arm(w, q);
    while (q->starved_flows != NULL) {
        struct qflow *f = q->starved_flows;
        q->starved_flows = f->next;
        f->on_starved = false;
        for (unsigned s = 0; s < 2; s++)
            if (f->starved[s]) {
                f->starved[s] = false;
                recv_arm(w, q, f, s);
            }
        maybe_free(w, q, f);
    }
}

bool quic_timed(const struct worker *w)
{
    return w->quic != NULL && w->quic->timers.n > 0;
}

uint32_t quic_live(const struct worker *w)
{
    return w->quic != NULL ? w->quic->n_live : 0;
}

void quic_stop(struct worker *w)
{
    struct quic *q = w->quic;
    if (q == NULL || q->stopping)
        return;
    q->stopping = true;
    if (q->fd < 0)
        return;
    if (q->armed) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel64(sqe, qud(OP_QUIC_LISTEN, 0, 0, 0), 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0, 0, 0));
    }
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_close(sqe, q->fd);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, 0, 0, 0));
    q->fd = -1;
}

void quic_shutdown(struct worker *w)
{
    struct quic *q = w->quic;
    if (q == NULL)
        return;
    for (uint32_t i = 0; i < q->hw; i++) {
        struct qflow *f = &q->flows[i];
        if (f->state == QS_CLOSING || f->state == QS_FREE)
            continue;
        if (f->state == QS_HELLO) {
            decide_invalid(w, q, f, SOTH_E_INCOMPLETE, false);
            hello_release(q, f);
        }
        flow_end(w, q, f, SOTH_CLOSE_SHUTDOWN);
    }
}

/* ------------------------------------------------------------------------------------------
 * set-up
 * ------------------------------------------------------------------------------------------ */

static int udp_socket(const struct soth_config *cfg, uint16_t port, char *err, size_t err_len,
                      bool *no_priv)
{
    struct sockaddr_storage addr = cfg->listen.addr;
    socklen_t alen = cfg->listen.addr_len;
    bool v6 = addr.ss_family == AF_INET6;
    if (v6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)&addr)->sin_port = htons(port);
    int fd = socket(addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, err_len, "quic: socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    int rc = setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
    if (rc == 0 && v6)
        rc = setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
    if (rc == -1) {
        int e = errno;
        close(fd);
        *no_priv = e == EPERM;
        snprintf(err, err_len, "quic: setsockopt(IP_TRANSPARENT): %s", strerror(e));
        return -e;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof(one)) == -1 ||
        (v6 && setsockopt(fd, SOL_IPV6, IPV6_RECVORIGDSTADDR, &one, sizeof(one)) == -1)) {
        int e = errno;
        snprintf(err, err_len, "quic: setsockopt: %s", strerror(e));
        close(fd);
        return -e;
    }
    if (bind(fd, (struct sockaddr *)&addr, alen) == -1) {
        int e = errno;
        snprintf(err, err_len, "quic: bind udp port %u: %s", port, strerror(e));
        close(fd);
        return -e;
    }
    return fd;
}

int quic_init(struct worker *w, char *err, size_t err_len)
{
    const struct soth_config *cfg = w->cfg;
    w->quic = NULL;
    if (cfg->mode != SOTH_MODE_TRANSPARENT || !cfg->http3_passthrough)
        return 0;
    bool no_priv = false;
    int fd = udp_socket(cfg, cfg->listen.port, err, err_len, &no_priv);
    if (fd < 0) {
        if (!no_priv)
            return fd;
        if (w->idx == 0)
            SOTH_LOG(SOTH_LOG_WARN, 0, 0,
                     "%s: QUIC is not received (IP_TRANSPARENT needs CAP_NET_ADMIN)", err);
        err[0] = '\0';
        return 0;
    }
    struct quic *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        close(fd);
        snprintf(err, err_len, "quic: out of memory");
        return -ENOMEM;
    }
    w->quic = q;
    q->fd = fd;
    q->listen_port = cfg->listen.port;
    q->idle_ms = cfg->quic.idle_ms;
    q->max = cfg->quic.max_flows;
    q->seed = soth_mono_ns() ^ ((uint64_t)(uintptr_t)q << 16) ^ w->idx;
    /* 32, not sizeof(struct sockaddr_in6) (28): the control messages follow the name in the
     * buffer and must start 8-byte aligned. */
    q->lmsg.msg_namelen = 32;
    q->lmsg.msg_controllen = QUIC_CTL_LEN;
    timer_wheel_init(&q->timers, now_ms());

    uint32_t hsize = 1;
    while (hsize < q->max)
        hsize <<= 1;
    q->hmask = hsize - 1;
    int rc = -ENOMEM;
    /* Address space for every slot; pages are touched as slots are first used. */
    q->flows = mmap(NULL, (size_t)q->max * sizeof(struct qflow), PROT_READ | PROT_WRITE,
                    MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
    q->htab = calloc(hsize, sizeof(*q->htab));
    q->hellos = calloc(QUIC_HELLOS, sizeof(*q->hellos));
    q->br = mmap(NULL, QUIC_BUF_COUNT * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    q->bufs = mmap(NULL, (size_t)QUIC_BUF_COUNT * QUIC_BUF_SIZE, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (q->flows == MAP_FAILED)
        q->flows = NULL;
    if (q->br == MAP_FAILED)
        q->br = NULL;
    if (q->bufs == MAP_FAILED)
        q->bufs = NULL;
    if (q->flows == NULL || q->htab == NULL || q->hellos == NULL || q->br == NULL ||
        q->bufs == NULL)
        goto fail;
    for (unsigned i = 0; i < QUIC_HELLOS; i++)
        q->hello_free[i] = (uint16_t)(QUIC_HELLOS - 1 - i);
    q->n_hello_free = QUIC_HELLOS;
    io_uring_buf_ring_init(q->br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)q->br, .ring_entries = QUIC_BUF_COUNT, .bgid = QUIC_BGID};
    rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0)
        goto fail;
    for (unsigned i = 0; i < QUIC_BUF_COUNT; i++)
        io_uring_buf_ring_add(q->br, qbuf(q, i), QUIC_BUF_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(QUIC_BUF_COUNT), (int)i);
    io_uring_buf_ring_advance(q->br, QUIC_BUF_COUNT);
    listen_arm(w, q);
    return 0;
fail:
    snprintf(err, err_len, "quic: set-up: %s", soth_strerror(rc));
    quic_dispose(w);
    return rc;
}

void quic_dispose(struct worker *w)
{
    struct quic *q = w->quic;
    if (q == NULL)
        return;
    if (q->flows != NULL) {
        for (uint32_t i = 0; i < q->hw; i++)
            for (unsigned s = 0; s < 2; s++)
                if (q->flows[i].state != QS_FREE && q->flows[i].fd[s] >= 0)
                    close(q->flows[i].fd[s]);
        munmap(q->flows, (size_t)q->max * sizeof(struct qflow));
    }
    if (q->fd >= 0)
        close(q->fd);
    if (q->bufs != NULL)
        munmap(q->bufs, (size_t)QUIC_BUF_COUNT * QUIC_BUF_SIZE);
    if (q->br != NULL)
        munmap(q->br, QUIC_BUF_COUNT * sizeof(struct io_uring_buf));
    free(q->hellos);
    free(q->htab);
    free(q);
    w->quic = NULL;
}
