/*
 * The NATS JetStream sink (docs/sinks.md).
 *
 * Two stages, so that the telemetry thread never waits on the network and what is dropped is
 * known exactly:
 *  - the queue: a byte ring the telemetry thread appends to (lock-free while there is room)
 *    and the sink thread takes from. When it is full the telemetry thread drops the oldest
 *    queued events under q_mu, which the sink thread also holds while it copies out of the
 *    ring; these events were never handed to the server, so each one is missing from the
 *    stream and counted once.
 *  - in flight: events the sink thread published and the server has not acknowledged, in
 *    gseq order (a byte area and a slot array owned by the sink thread). They are never
 *    dropped: after a reconnect, an ack timeout or a temporary error they are all published
 *    again, in order, with the same message id, and JetStream stores each id once.
 * The in-flight area gets a quarter of max_pending_mb (at most 16 MiB), the queue the rest.
 *
 * libnats runs its own threads (socket reader, flusher, callbacks); its callbacks only record
 * what happened (acks, a lost connection) and wake the sink thread, which makes every
 * connection itself (see opts_setup). On a plain nats:// server the events do not go through
 * libnats at all: the sink thread writes them to a publishing socket of its own and reads the
 * acks there (raw_*; libnats keeps the stream checks, TLS and credentials files).
 */
#include "sink_nats.h"

#include <errno.h>
#include <nats/nats.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nats_proto.h"
#include "observe_int.h"

#define Q_HDR          16u
#define F_SLOTS        32768u /* events in flight at most (a power of two) */
#define ACKQ_CAP       (2u * F_SLOTS)
#define IDLE_MS        100
#define ACK_TIMEOUT_MS 10000u       /* no ack this long on a live connection: re-send from there */
#define RETRY_MS       500u         /* before the next stream check or after a temporary error */
#define CONFLICT_MS    5000u        /* before checking a conflicting stream again */
#define RECONNECT_MS   250u         /* between connection attempts */
#define MOVE_BUDGET    (256u << 10) /* bytes copied out of the queue per hold of q_mu */
#define BEHIND_LOG_MS  10000u       /* at most one "falling behind" line per this period */
#define ACK_EVERY      64u          /* one event in this many asks for an ack (see publish) */
#define MARK_MS        1u           /* a pause this long: ask for an ack of what was published */
#define LINGER_MS      20           /* poll period after work, before a long sleep */
#define LINGER_ROUNDS  50           /* polls (1 s) before that */
#define OB_CAP         (256u << 10) /* publishing socket: frame heads buffered per batch at most */
#define BATCH_BYTES    (2u << 20) /* publishing socket: bytes (heads and JSON) per batch at most */
#define IOV_CAP        1024u      /* publishing socket: pieces per sendmsg (UIO_MAXIOV) */
#define BLOCK          32u        /* put_blocks: the copy unit */
#define OB_SLACK       (2u * BLOCK)       /* beyond OB_CAP, for put_blocks' last block */
#define IB_CAP         (64u << 10)        /* publishing socket: bytes read and not yet parsed */
#define CONNECT_MS     2000u              /* connect and handshake of the publishing socket */
#define X_TYPE         SOTH_EV_TYPE_COUNT /* subject index of <subject>.exchange */
#define N_SUBJ         (SOTH_EV_TYPE_COUNT + 1)
#define ID_TAIL_MAX    48u /* "x-" u64 "-" u32 "-p" */

/*
 * A queued record: the header, then idlen bytes of message id tail (an exchange's
 * "x-<flow_id>-<stream_id>[-p]"; none for an event, whose id tail is its gseq), then the JSON.
 * len counts both; the record is padded to 8.
 */
struct qhdr {
    uint32_t len;
    uint16_t type; /* an event type, or X_TYPE */
    uint16_t idlen;
    uint64_t gseq; /* the event's gseq; for an exchange the sink's own count (x_seq) */
};
_Static_assert(sizeof(struct qhdr) == Q_HDR, "queue record header");

enum slot_state { SLOT_QUEUED = 0, SLOT_SENT, SLOT_ACKED };

struct slot {
    uint64_t gseq; /* the key acks come back with (struct qhdr) */
    uint64_t sent_ms;
    uint32_t off, len; /* in the in-flight area: idlen bytes of id tail, then the JSON */
    uint32_t epoch;    /* disconnects seen when it was last published */
    uint8_t type;
    uint8_t idlen;
    uint8_t state;     /* enum slot_state */
    uint8_t published; /* handed to the server at least once (it may hold it) */
};
_Static_assert(N_SUBJ <= 256 && ID_TAIL_MAX <= 255, "slot fields");

enum ack_result { ACK_OK = 0, ACK_RETRY, ACK_REFUSED };

struct ack {
    uint64_t gseq;   /* the slot's key; for an exchange acked through libnats: its flow_id */
    uint32_t stream; /* that exchange's stream_id */
    uint32_t epoch;  /* disconnects seen when the ack arrived */
    uint8_t result;  /* enum ack_result */
    uint8_t xid;     /* 0: by key; 1: exchange id x-<gseq>-<stream>; 2: the same with -p */
};

struct nats_sink {
    char name[40]; /* "events.sinks[N]" for log lines */
    char *url_log; /* the URL without credentials */
    char run_id[24];
    char *stream;
    char *subject;
    bool exchanges;         /* "format": "exchange": one message per exchange, not per event */
    const char *what;       /* "events" or "exchanges", for log lines */
    uint64_t x_seq;         /* exchanges queued so far (telemetry thread): their keys */
    char *subjects[N_SUBJ]; /* <subject>.<type>, then <subject>.exchange */
    uint32_t max_pending_mb;
    uint32_t drain_ms;

    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    jsOptions jso;

    /* ---- the queue: telemetry thread -> sink thread */
    char *q;
    uint64_t q_cap;
    pthread_mutex_t q_mu;
    _Alignas(SOTH_CACHELINE) _Atomic uint64_t q_tail; /* written by the telemetry thread */
    _Atomic uint64_t q_puts;                          /* events queued (telemetry thread) */
    _Alignas(SOTH_CACHELINE) _Atomic uint64_t q_head; /* moved under q_mu */
    _Atomic uint64_t q_takes;                         /* events taken or dropped (under q_mu) */
    _Atomic uint64_t dropped;

    /* ---- in flight: the sink thread only */
    _Alignas(SOTH_CACHELINE) char *f;
    uint32_t f_cap;
    uint32_t fb_tail;       /* where the next event's bytes go */
    struct slot *slots;     /* F_SLOTS */
    uint64_t fh, fs, ft;    /* oldest unacknowledged, next to publish, next free */
    _Atomic uint64_t f_len; /* ft - fh, for the pending gauge */

    /* ---- acks: libnats threads -> sink thread */
    pthread_mutex_t a_mu;
    struct ack *acks, *acks_taken;
    size_t n_acks;

    /* ---- connection state: libnats callbacks -> sink thread */
    _Atomic int up;                   /* cur_nc is connected */
    _Atomic(natsConnection *) cur_nc; /* the connection the callbacks may report on */
    _Atomic int live_conns;           /* connections whose closed callback has not run */
    _Atomic uint32_t dis_epoch;       /* +1 on every disconnect */

    /* ---- sink thread state */
    bool ready;             /* connected and the stream checked on this connection */
    uint64_t gen;           /* connections made so far */
    uint64_t connect_at_ms; /* next connection attempt while there is none */
    uint64_t check_at_ms;   /* next stream check */
    uint64_t rewind_at_ms;  /* a temporary publish error: re-send from fh then (0 = none) */
    bool move_more;         /* move_in stopped for its budget with more queued */
    uint32_t unmarked;      /* events published since the last one that asked for an ack */
    uint64_t unmarked_ms;   /* when the first of them was published */
    bool outage;
    uint64_t outage_ms, outage_dropped;
    uint64_t conflict_gen; /* connection on which a stream error was logged */
    uint64_t behind_dropped, behind_ms;
    uint64_t refused_logged;

    /* ---- the publishing socket (docs/sinks.md, "Cost"): the sink thread only */
    bool raw;                /* publish on it; libnats keeps the stream checks */
    char *connect_line;      /* "CONNECT {...}\r\n" */
    size_t subj_len[N_SUBJ]; /* strlen(subjects[t]) */
    size_t run_id_len;
    char *hpub[N_SUBJ]; /* "HPUB <subject> ", zero-padded by a BLOCK at least */
    size_t hpub_len[N_SUBJ];
    char id_pre[96]; /* "\r\nNATS/1.0\r\nNats-Msg-Id: <run id>-", zero-padded */
    size_t id_pre_len;
    char g_dec[BLOCK]; /* gseq_dec: g_val in decimal, g_len digits (0: none yet) */
    size_t g_len;
    uint64_t g_val;
    int rfd;        /* -1: none */
    char inbox[64]; /* "_INBOX.<run id>.<gen>.": replies go to inbox<gseq> */
    size_t inbox_len;
    /* A batch: the frames' heads (and trailing CRLFs) written to ob, their JSON left in the
     * in-flight area; iov lists the pieces in order, [iov_done, n_iov) not yet written. */
    char *ob; /* OB_CAP + OB_SLACK */
    size_t ob_len;
    struct iovec *iov; /* IOV_CAP */
    size_t n_iov, iov_done;
    size_t batch_bytes; /* in iov so far */
    char *ib;           /* IB_CAP: [0, ib_len) read, not yet parsed */
    size_t ib_len;
    uint64_t max_payload; /* the server's (INFO) */
    bool need_pong;
    uint64_t too_big_logged;
    uint64_t err_log_ms; /* last -ERR line (at most one per BEHIND_LOG_MS) */

    int efd;
    _Atomic int sleeping; /* in a long sleep: wake through efd */
    _Atomic int kicked;   /* the queue filled up: efd written, not yet seen */
    _Atomic int stop;
    uint64_t stop_deadline_ms;
    pthread_t thr;
    bool started;
};

static uint64_t mono_ms(void)
{
    return soth_mono_ns() / 1000000u;
}

static uint64_t pad8(uint64_t n)
{
    return (n + 7u) & ~(uint64_t)7u;
}

/* ==========================================================================================
 * the queue (byte ring; records may wrap around its end)
 * ========================================================================================== */

static void q_copy_in(struct nats_sink *ns, uint64_t pos, const void *src, size_t n)
{
    if (n == 0)
        return; /* an event has no id part: src may be NULL, and memcpy's may not */
    uint64_t off = pos % ns->q_cap;
    if (off + n <= ns->q_cap) {
        memcpy(ns->q + off, src, n);
        return;
    }
    size_t first = (size_t)(ns->q_cap - off);
    memcpy(ns->q + off, src, first);
    memcpy(ns->q, (const char *)src + first, n - first);
}

static void q_copy_out(const struct nats_sink *ns, uint64_t pos, void *dst, size_t n)
{
    uint64_t off = pos % ns->q_cap;
    if (off + n <= ns->q_cap) {
        memcpy(dst, ns->q + off, n);
        return;
    }
    size_t first = (size_t)(ns->q_cap - off);
    memcpy(dst, ns->q + off, first);
    memcpy((char *)dst + first, ns->q, n - first);
}

static void sink_wake(struct nats_sink *ns)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&ns->sleeping, memory_order_seq_cst) &&
        atomic_exchange_explicit(&ns->sleeping, 0, memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t n = write(ns->efd, &one, sizeof(one));
        (void)n;
    }
}

static const char digits2[201] =
    "0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546"
    "4748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293"
    "949596979899";

/** The number of decimal digits of v. */
static size_t dec_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 100) {
        n += 2;
        v /= 100;
    }
    return n + (v >= 10);
}

/** v in decimal at o, exactly n = dec_len(v) digits (no NUL). Two digits per step. */
static void put_dec(char *o, uint64_t v, size_t n)
{
    char *e = o + n;
    while (v >= 100) {
        e -= 2;
        memcpy(e, digits2 + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10)
        memcpy(e - 2, digits2 + 2 * v, 2);
    else
        e[-1] = (char)('0' + v);
}

/** v in decimal at o (no NUL); its length. */
static size_t put_u64(char *o, uint64_t v)
{
    size_t n = dec_len(v);
    put_dec(o, v, n);
    return n;
}

/** The message id tail of an exchange: "x-<flow_id>-<stream_id>", "-p" when partial. */
static size_t xid_tail(char *o, uint64_t flow_id, uint32_t stream_id, bool partial)
{
    size_t n = 0;
    o[n++] = 'x';
    o[n++] = '-';
    n += put_u64(o + n, flow_id);
    o[n++] = '-';
    n += put_u64(o + n, stream_id);
    if (partial) {
        o[n++] = '-';
        o[n++] = 'p';
    }
    return n;
}

static void q_put(struct nats_sink *ns, unsigned type, uint64_t gseq, const char *id, size_t idlen,
                  const char *json, size_t jlen)
{
    size_t len = idlen + jlen;
    uint64_t need = Q_HDR + pad8(len);
    if (len > ns->f_cap || need > ns->q_cap) {
        atomic_fetch_add_explicit(&ns->dropped, 1, memory_order_relaxed);
        return;
    }
    uint64_t tail = atomic_load_explicit(&ns->q_tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&ns->q_head, memory_order_acquire);
    if (tail + need - head > ns->q_cap) {
        /* Full: drop the oldest queued events. The sink thread copies out only under q_mu. */
        pthread_mutex_lock(&ns->q_mu);
        head = atomic_load_explicit(&ns->q_head, memory_order_relaxed);
        uint64_t n = 0;
        while (tail + need - head > ns->q_cap) {
            struct qhdr h;
            q_copy_out(ns, head, &h, sizeof(h));
            head += Q_HDR + pad8(h.len);
            n++;
        }
        atomic_store_explicit(&ns->q_head, head, memory_order_release);
        atomic_fetch_add_explicit(&ns->q_takes, n, memory_order_relaxed);
        atomic_fetch_add_explicit(&ns->dropped, n, memory_order_relaxed);
        pthread_mutex_unlock(&ns->q_mu);
    }
    struct qhdr h = {
        .len = (uint32_t)len, .type = (uint16_t)type, .idlen = (uint16_t)idlen, .gseq = gseq};
    q_copy_in(ns, tail, &h, sizeof(h));
    q_copy_in(ns, tail + Q_HDR, id, idlen);
    q_copy_in(ns, tail + Q_HDR + idlen, json, jlen);
    atomic_store_explicit(&ns->q_tail, tail + need, memory_order_release);
    atomic_store_explicit(&ns->q_puts, atomic_load_explicit(&ns->q_puts, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void nats_sink_put(struct nats_sink *ns, unsigned type, uint64_t gseq, const char *json, size_t len)
{
    q_put(ns, type, gseq, NULL, 0, json, len);
}

char *nats_sink_reserve(struct nats_sink *ns, size_t max)
{
    uint64_t tail = atomic_load_explicit(&ns->q_tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&ns->q_head, memory_order_acquire);
    uint64_t off = tail % ns->q_cap;
    if (Q_HDR + max > ns->q_cap - off || tail + Q_HDR + pad8(max) - head > ns->q_cap)
        return NULL; /* it would wrap round the end, or need a drop: q_put does both */
    return ns->q + off + Q_HDR;
}

void nats_sink_commit(struct nats_sink *ns, unsigned type, uint64_t gseq, size_t len)
{
    if (len > ns->f_cap) { /* as in q_put: it could never go in flight */
        atomic_fetch_add_explicit(&ns->dropped, 1, memory_order_relaxed);
        return;
    }
    uint64_t tail = atomic_load_explicit(&ns->q_tail, memory_order_relaxed);
    struct qhdr h = {.len = (uint32_t)len, .type = (uint16_t)type, .idlen = 0, .gseq = gseq};
    memcpy(ns->q + tail % ns->q_cap, &h, sizeof(h));
    atomic_store_explicit(&ns->q_tail, tail + Q_HDR + pad8(len), memory_order_release);
    atomic_store_explicit(&ns->q_puts, atomic_load_explicit(&ns->q_puts, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void nats_sink_put_exchange(struct nats_sink *ns, uint64_t flow_id, uint32_t stream_id,
                            bool partial, const char *json, size_t len)
{
    char id[ID_TAIL_MAX];
    size_t idlen = xid_tail(id, flow_id, stream_id, partial);
    q_put(ns, X_TYPE, ++ns->x_seq, id, idlen, json, len);
}

void nats_sink_kick(struct nats_sink *ns)
{
    uint64_t fill = atomic_load_explicit(&ns->q_tail, memory_order_relaxed) -
                    atomic_load_explicit(&ns->q_head, memory_order_relaxed);
    if (fill > ns->q_cap / 4 && !atomic_exchange_explicit(&ns->kicked, 1, memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t n = write(ns->efd, &one, sizeof(one));
        (void)n;
        return;
    }
    sink_wake(ns);
}

uint64_t nats_sink_dropped(const struct nats_sink *ns)
{
    return atomic_load_explicit(&ns->dropped, memory_order_relaxed);
}

static uint64_t queued(const struct nats_sink *ns)
{
    uint64_t takes = atomic_load_explicit(&ns->q_takes, memory_order_relaxed);
    uint64_t puts = atomic_load_explicit(&ns->q_puts, memory_order_relaxed);
    return puts > takes ? puts - takes : 0;
}

uint64_t nats_sink_pending(const struct nats_sink *ns)
{
    return queued(ns) + atomic_load_explicit(&ns->f_len, memory_order_relaxed);
}

/* ==========================================================================================
 * in flight
 * ========================================================================================== */

static struct slot *slot_at(struct nats_sink *ns, uint64_t i)
{
    return &ns->slots[i & (F_SLOTS - 1)];
}

/** Room for n bytes, contiguous, in the in-flight area: the offset, or -1. */
static int64_t f_alloc(struct nats_sink *ns, uint32_t n)
{
    if (ns->fh == ns->ft) {
        ns->fb_tail = n;
        return n <= ns->f_cap ? 0 : -1;
    }
    uint32_t head = slot_at(ns, ns->fh)->off;
    uint32_t off;
    /* Strict inequalities: a non-empty area never has fb_tail == head. */
    if (ns->fb_tail > head) {
        if (ns->f_cap - ns->fb_tail >= n)
            off = ns->fb_tail;
        else if (head > n)
            off = 0;
        else
            return -1;
    } else {
        if (head - ns->fb_tail > n)
            off = ns->fb_tail;
        else
            return -1;
    }
    ns->fb_tail = off + n;
    return off;
}

/** Take queued events into the in-flight area while it has room (sink thread). */
static size_t move_in(struct nats_sink *ns)
{
    ns->move_more = false;
    if (ns->ft - ns->fh >= F_SLOTS)
        return 0;
    uint64_t tail = atomic_load_explicit(&ns->q_tail, memory_order_acquire);
    if (atomic_load_explicit(&ns->q_head, memory_order_relaxed) == tail)
        return 0;
    size_t n = 0, bytes = 0;
    pthread_mutex_lock(&ns->q_mu);
    uint64_t head = atomic_load_explicit(&ns->q_head, memory_order_relaxed);
    while (head < tail && ns->ft - ns->fh < F_SLOTS && bytes < MOVE_BUDGET) {
        struct qhdr h;
        q_copy_out(ns, head, &h, sizeof(h));
        int64_t off = f_alloc(ns, h.len);
        if (off < 0)
            break;
        q_copy_out(ns, head + Q_HDR, ns->f + off, h.len);
        *slot_at(ns, ns->ft) = (struct slot){.gseq = h.gseq,
                                             .off = (uint32_t)off,
                                             .len = h.len,
                                             .type = (uint8_t)h.type,
                                             .idlen = (uint8_t)h.idlen};
        ns->ft++;
        head += Q_HDR + pad8(h.len);
        bytes += h.len;
        n++;
    }
    ns->move_more = bytes >= MOVE_BUDGET && head < tail;
    atomic_store_explicit(&ns->q_head, head, memory_order_release);
    atomic_fetch_add_explicit(&ns->q_takes, n, memory_order_relaxed);
    pthread_mutex_unlock(&ns->q_mu);
    return n;
}

/** The slot holding gseq and its index, or NULL (slots are in gseq order). */
static struct slot *slot_find(struct nats_sink *ns, uint64_t gseq, uint64_t *idx)
{
    uint64_t lo = ns->fh, hi = ns->ft;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        uint64_t g = slot_at(ns, mid)->gseq;
        if (g == gseq) {
            *idx = mid;
            return slot_at(ns, mid);
        }
        if (g < gseq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/**
 * The newest in-flight slot holding the exchange an ack names by its message id (acks through
 * libnats carry no key), and its index, or NULL. The newest: one exchange id can be in flight
 * twice (a partial one emitted again), and the ack of the later one stands for both.
 */
static struct slot *slot_find_xid(struct nats_sink *ns, const struct ack *a, uint64_t *idx)
{
    char id[ID_TAIL_MAX];
    size_t n = xid_tail(id, a->gseq, a->stream, a->xid == 2);
    for (uint64_t i = ns->ft; i-- > ns->fh;) {
        struct slot *sl = slot_at(ns, i);
        if (sl->idlen == n && memcmp(ns->f + sl->off, id, n) == 0) {
            *idx = i;
            return sl;
        }
    }
    return NULL;
}

static void advance_head(struct nats_sink *ns)
{
    while (ns->fh < ns->ft && slot_at(ns, ns->fh)->state == SLOT_ACKED)
        ns->fh++;
    if (ns->fs < ns->fh)
        ns->fs = ns->fh;
    atomic_store_explicit(&ns->f_len, ns->ft - ns->fh, memory_order_relaxed);
}

/* ==========================================================================================
 * libnats callbacks (its threads)
 * ========================================================================================== */

static void ack_push(struct nats_sink *ns, struct ack a)
{
    a.epoch = atomic_load(&ns->dis_epoch);
    pthread_mutex_lock(&ns->a_mu);
    /* Full only when acks of an old connection pile up: the ack timeout re-sends. */
    if (ns->n_acks < ACKQ_CAP)
        ns->acks[ns->n_acks++] = a;
    pthread_mutex_unlock(&ns->a_mu);
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct nats_sink *ns = closure;
    const char *id = NULL;
    if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != NULL &&
        strlen(id) > ns->run_id_len) {
        /* A JetStream API error (ErrCode) is the server refusing this message; anything else
         * (a timeout, no responders while JetStream starts) is worth another try. */
        struct ack a = {.result = pa != NULL                         ? ACK_OK
                                  : pae != NULL && pae->ErrCode != 0 ? ACK_REFUSED
                                                                     : ACK_RETRY};
        const char *t = id + ns->run_id_len + 1; /* after "<run id>-" */
        if (t[0] == 'x' && t[1] == '-') {
            /* An exchange: x-<flow_id>-<stream_id>[-p]; take_acks finds its slot. */
            char *end;
            a.gseq = strtoull(t + 2, &end, 10);
            a.stream = *end == '-' ? (uint32_t)strtoul(end + 1, &end, 10) : 0;
            a.xid = strcmp(end, "-p") == 0 ? 2 : 1;
        } else {
            a.gseq = strtoull(t, NULL, 10);
        }
        ack_push(ns, a);
        sink_wake(ns);
    }
    natsMsg_Destroy(msg);
}

/* The connection in use broke (libnats does not reconnect it: the sink thread connects anew). */
static void on_lost(natsConnection *nc, void *closure)
{
    struct nats_sink *ns = closure;
    /* A late callback of a connection already replaced: that object is still allocated until
     * its callbacks ran, so no newer connection can have its address. */
    if (nc != atomic_load(&ns->cur_nc))
        return;
    atomic_fetch_add(&ns->dis_epoch, 1);
    atomic_store(&ns->up, 0);
    sink_wake(ns);
}

/* A connection's last callback (libnats calls it once per connection made): until then the
 * sink must stay allocated (nats_sink_free waits for it). */
static void on_closed(natsConnection *nc, void *closure)
{
    struct nats_sink *ns = closure;
    on_lost(nc, closure);
    atomic_fetch_sub(&ns->live_conns, 1);
}

/* ==========================================================================================
 * the publishing socket (docs/sinks.md, "Cost")
 *
 * On a plain nats:// connection the sink writes the HPUB frames itself, many to one send(),
 * with the message id header pre-formatted, and reads the JetStream acks on the same socket:
 * no message object, header map or lock per event, no wake-up of another thread. libnats'
 * connection to the same server stays for the stream checks (request/reply) and for TLS and
 * credentials files, which publish through libnats.
 * ========================================================================================== */

static void ob_reset(struct nats_sink *ns)
{
    ns->ob_len = ns->n_iov = ns->iov_done = ns->batch_bytes = 0;
}

/** Append a piece to the batch (iov has room): merged with the previous one when it follows it. */
static void iov_add(struct nats_sink *ns, const char *p, size_t n)
{
    struct iovec *last = ns->n_iov > ns->iov_done ? &ns->iov[ns->n_iov - 1] : NULL;
    if (last != NULL && (const char *)last->iov_base + last->iov_len == p)
        last->iov_len += n;
    else
        ns->iov[ns->n_iov++] = (struct iovec){.iov_base = (void *)p, .iov_len = n};
    ns->batch_bytes += n;
}

static void raw_lost(struct nats_sink *ns)
{
    if (ns->rfd < 0)
        return;
    close(ns->rfd);
    ns->rfd = -1;
    ob_reset(ns);
    ns->ib_len = 0;
    atomic_fetch_add(&ns->dis_epoch, 1);
    atomic_store(&ns->up, 0);
}

/** Bytes into ob and the batch (the caller checked for room in both). */
static void ob_put(struct nats_sink *ns, const void *p, size_t n)
{
    memcpy(ns->ob + ns->ob_len, p, n);
    iov_add(ns, ns->ob + ns->ob_len, n);
    ns->ob_len += n;
}

static int raw_read(struct nats_sink *ns);

/**
 * Write out the batch (one sendmsg of all its pieces, as a rule), reading acks meanwhile. 0, or
 * -1 the socket is gone. The JSON the batch points to stays put meanwhile: only take_acks frees
 * in-flight room, and the sink thread is here.
 */
static int raw_flush(struct nats_sink *ns)
{
    uint64_t since = 0;
    while (ns->rfd >= 0 && ns->iov_done < ns->n_iov) {
        struct msghdr mh = {.msg_iov = ns->iov + ns->iov_done,
                            .msg_iovlen = ns->n_iov - ns->iov_done};
        ssize_t w = sendmsg(ns->rfd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            size_t left = (size_t)w;
            while (left > 0) {
                struct iovec *v = &ns->iov[ns->iov_done];
                if (left < v->iov_len) {
                    v->iov_base = (char *)v->iov_base + left;
                    v->iov_len -= left;
                    break;
                }
                left -= v->iov_len;
                ns->iov_done++;
            }
            since = 0;
            continue;
        }
        if (w == -1 && errno == EINTR)
            continue;
        if (w == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* The server reads slowly: keep reading its acks so that neither side blocks. */
            uint64_t now = mono_ms();
            if (since == 0)
                since = now;
            else if (now - since > ACK_TIMEOUT_MS)
                break;
            struct pollfd pfd = {.fd = ns->rfd, .events = POLLIN | POLLOUT};
            if (poll(&pfd, 1, 100) > 0 && (pfd.revents & POLLIN) && raw_read(ns) < 0)
                return -1;
            continue;
        }
        break;
    }
    if (ns->rfd < 0 || ns->iov_done < ns->n_iov) {
        raw_lost(ns);
        return -1;
    }
    ob_reset(ns);
    return 0;
}

/** One server operation from the socket: handle what the main loop may see. 0 or -1 (gone). */
static int raw_op(struct nats_sink *ns, const struct nats_op *op)
{
    switch (op->kind) {
    case NATS_OP_MSG: {
        uint64_t gseq;
        if (op->subj_len <= ns->inbox_len || memcmp(op->subj, ns->inbox, ns->inbox_len) != 0 ||
            !nats_proto_subject_tail(op->subj, op->subj_len, &gseq))
            return 0;
        enum nats_ack r = nats_proto_ack(op);
        ack_push(ns, (struct ack){.gseq = gseq,
                                  .result = r == NATS_ACK_OK        ? ACK_OK
                                            : r == NATS_ACK_REFUSED ? ACK_REFUSED
                                                                    : ACK_RETRY});
        return 0;
    }
    case NATS_OP_PING:
        ns->need_pong = true;
        return 0;
    case NATS_OP_ERR: {
        /* The server closes the connection after most errors: start anew either way. */
        uint64_t now = mono_ms();
        if (ns->err_log_ms == 0 || now - ns->err_log_ms >= BEHIND_LOG_MS) {
            ns->err_log_ms = now;
            SOTH_LOG(SOTH_LOG_WARN, -1, 0, "%s: nats: %s says -ERR %.*s", ns->name, ns->url_log,
                     (int)(op->arg_len > 200 ? 200 : op->arg_len), op->arg);
        }
        return -1;
    }
    default:
        return 0;
    }
}

/** Parse what was read. 0, or -1 (a protocol error: the caller drops the socket). */
static int raw_parse(struct nats_sink *ns)
{
    size_t off = 0;
    int rc = 0;
    for (;;) {
        struct nats_op op;
        ssize_t r = nats_proto_parse(ns->ib + off, ns->ib_len - off, &op);
        if (r == SOTH_E_INCOMPLETE) {
            if (off == 0 && ns->ib_len == IB_CAP)
                rc = -1; /* an operation larger than the buffer: none of ours */
            break;
        }
        if (r < 0 || raw_op(ns, &op) < 0) {
            rc = -1;
            break;
        }
        off += (size_t)r;
    }
    memmove(ns->ib, ns->ib + off, ns->ib_len - off);
    ns->ib_len -= off;
    return rc;
}

/** Read and handle whatever the server sent (acks, PING), without waiting. 0 or -1 (gone). */
static int raw_read(struct nats_sink *ns)
{
    while (ns->rfd >= 0) {
        size_t room = IB_CAP - ns->ib_len;
        ssize_t r = recv(ns->rfd, ns->ib + ns->ib_len, room, MSG_DONTWAIT);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (r <= 0) {
            raw_lost(ns);
            return -1;
        }
        ns->ib_len += (size_t)r;
        if (raw_parse(ns) < 0) {
            raw_lost(ns);
            return -1;
        }
        if ((size_t)r < room)
            break; /* a short read: nothing more waits */
    }
    /* The answer goes out with the next write (the caller flushes what is buffered). */
    if (ns->rfd >= 0 && ns->need_pong && ns->ob_len + 6 <= OB_CAP && ns->n_iov < IOV_CAP) {
        ns->need_pong = false;
        ob_put(ns, "PONG\r\n", 6);
    }
    return ns->rfd >= 0 ? 0 : -1;
}

/** Wait for the next complete operation during the handshake: its length in ib, or -1. */
static ssize_t raw_wait_op(struct nats_sink *ns, struct nats_op *op, uint64_t deadline)
{
    for (;;) {
        ssize_t r = nats_proto_parse(ns->ib, ns->ib_len, op);
        if (r != SOTH_E_INCOMPLETE)
            return r > 0 ? r : -1;
        uint64_t now = mono_ms();
        if (ns->ib_len == IB_CAP || now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = ns->rfd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t n = recv(ns->rfd, ns->ib + ns->ib_len, IB_CAP - ns->ib_len, MSG_DONTWAIT);
        if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR))
            return -1;
        if (n > 0)
            ns->ib_len += (size_t)n;
    }
}

static void ib_consume(struct nats_sink *ns, size_t n)
{
    memmove(ns->ib, ns->ib + n, ns->ib_len - n);
    ns->ib_len -= n;
}

/** TCP to host:port within the connect timeout: the socket, or -1. */
static int tcp_connect(const char *host, const char *port, uint64_t deadline)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *a = ai; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc == -1 && errno == EINPROGRESS) {
            uint64_t now = mono_ms();
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t l = sizeof(err);
            if (now < deadline && poll(&pfd, 1, (int)(deadline - now)) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) == 0 && err == 0)
                rc = 0;
        }
        if (rc != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

/**
 * Open the publishing socket to the server libnats just connected to: INFO, CONNECT (headers
 * on, no_responders so that a JetStream still starting answers 503 at once), the reply
 * subscription, PING; ready at the PONG. 0 or -1.
 */
static int raw_open(struct nats_sink *ns)
{
    char url[512], host[256], port[8] = "4222";
    if (natsConnection_GetConnectedUrl(ns->nc, url, sizeof(url)) != NATS_OK)
        return -1;
    const char *h = strstr(url, "://");
    h = h != NULL ? h + 3 : url;
    const char *at = strrchr(h, '@');
    if (at != NULL)
        h = at + 1;
    const char *colon = strrchr(h, ':');
    const char *hend = colon != NULL ? colon : h + strlen(h);
    if (*h == '[') {
        const char *rb = strchr(h, ']');
        if (rb == NULL)
            return -1;
        h++;
        hend = rb;
        colon = rb[1] == ':' ? rb + 1 : NULL;
    }
    if ((size_t)(hend - h) >= sizeof(host) || (colon != NULL && strlen(colon + 1) >= sizeof(port)))
        return -1;
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    if (colon != NULL)
        snprintf(port, sizeof(port), "%s", colon + 1);
    uint64_t deadline = mono_ms() + CONNECT_MS;
    ns->rfd = tcp_connect(host, port, deadline);
    if (ns->rfd < 0)
        return -1;
    ns->ib_len = 0;
    ob_reset(ns);
    ns->need_pong = false;
    struct nats_op op;
    ssize_t r = raw_wait_op(ns, &op, deadline);
    if (r < 0 || op.kind != NATS_OP_INFO || !nats_proto_json_true(op.arg, op.arg_len, "headers") ||
        nats_proto_json_true(op.arg, op.arg_len, "tls_required"))
        goto fail;
    if (!nats_proto_json_u64(op.arg, op.arg_len, "max_payload", &ns->max_payload))
        ns->max_payload = 1u << 20;
    ib_consume(ns, (size_t)r);
    int il = snprintf(ns->inbox, sizeof(ns->inbox), "_INBOX.%s.%llu.", ns->run_id,
                      (unsigned long long)ns->gen);
    ns->inbox_len = (size_t)il;
    ob_put(ns, ns->connect_line, strlen(ns->connect_line));
    ob_put(ns, "SUB ", 4);
    ob_put(ns, ns->inbox, ns->inbox_len);
    ob_put(ns, "* 1\r\nPING\r\n", 11);
    if (raw_flush(ns) < 0)
        return -1;
    for (;;) {
        r = raw_wait_op(ns, &op, deadline);
        if (r < 0)
            goto fail;
        if (op.kind == NATS_OP_PONG)
            break;
        if (op.kind == NATS_OP_ERR) {
            SOTH_LOG(SOTH_LOG_WARN, -1, 0, "%s: nats: %s refused the publishing connection: %.*s",
                     ns->name, ns->url_log, (int)(op.arg_len > 200 ? 200 : op.arg_len), op.arg);
            goto fail;
        }
        if (op.kind == NATS_OP_PING)
            ns->need_pong = true;
        ib_consume(ns, (size_t)r);
    }
    ib_consume(ns, (size_t)r);
    return 0;
fail:
    raw_lost(ns);
    return -1;
}

/**
 * n bytes from s to o in whole BLOCK-byte blocks (s is readable and o writable that far,
 * OB_SLACK): fixed-size copies, no memcpy call per piece of a frame. Returns the end.
 */
static char *put_blocks(char *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i += BLOCK)
        memcpy(o + i, s + i, BLOCK);
    return o + n;
}

/**
 * gseq in decimal (ns->g_dec, its length): published gseqs mostly follow one another, so the
 * previous one's digits are counted up instead of converted anew.
 */
static size_t gseq_dec(struct nats_sink *ns, uint64_t gseq)
{
    size_t n = ns->g_len;
    if (n > 0 && gseq == ns->g_val + 1) {
        size_t i = n;
        while (i > 0 && ns->g_dec[i - 1] == '9')
            ns->g_dec[--i] = '0';
        if (i > 0) {
            ns->g_dec[i - 1]++;
        } else { /* 99...9 + 1 */
            memmove(ns->g_dec + 1, ns->g_dec, n);
            ns->g_dec[0] = '1';
            n++;
        }
    } else {
        n = put_u64(ns->g_dec, gseq);
    }
    ns->g_val = gseq;
    ns->g_len = n;
    return n;
}

/**
 * Append one HPUB frame to the batch (a marker carries the reply subject): its head goes to
 * ob, its JSON is sent from the in-flight area where it is (no copy), the CRLF after it starts
 * the next piece of ob. 0, -1 gone, -2 too big.
 */
static int raw_publish(struct nats_sink *ns, const struct slot *sl, bool marker)
{
    const char *json = ns->f + sl->off + sl->idlen;
    size_t len = sl->len - sl->idlen;
    /* NATS/1.0\r\nNats-Msg-Id: <run id>-<id tail>\r\n\r\n; the reply subject ends in the key.
     * id_pre is "\r\n" (ending the HPUB line), then that header up to the id tail. */
    size_t nl = gseq_dec(ns, sl->gseq);
    size_t tl = sl->idlen ? sl->idlen : nl;
    size_t hlen = ns->id_pre_len - 2 + tl + 4;
    if (hlen + len > ns->max_payload)
        return -2;
    size_t need = ns->hpub_len[sl->type] + ns->inbox_len + nl + 1 + 20 + 1 + 20 + hlen + 2;
    if (need > OB_CAP)
        return -2;
    if ((OB_CAP - ns->ob_len < need || ns->n_iov + 3 > IOV_CAP ||
         ns->batch_bytes + need + len > BATCH_BYTES) &&
        ns->n_iov > 0 && raw_flush(ns) < 0)
        return -1;
    char *o = ns->ob + ns->ob_len, *start = o;
    o = put_blocks(o, ns->hpub[sl->type], ns->hpub_len[sl->type]); /* "HPUB <subject> " */
    if (marker) {
        memcpy(o, ns->inbox, ns->inbox_len);
        o = put_blocks(o + ns->inbox_len, ns->g_dec, nl);
        *o++ = ' ';
    }
    o += put_u64(o, hlen);
    *o++ = ' ';
    o += put_u64(o, hlen + len);
    o = put_blocks(o, ns->id_pre, ns->id_pre_len);
    if (sl->idlen) {
        memcpy(o, ns->f + sl->off, tl);
        o += tl;
    } else {
        o = put_blocks(o, ns->g_dec, nl);
    }
    memcpy(o, "\r\n\r\n", 4);
    o += 4;
    iov_add(ns, start, (size_t)(o - start));
    iov_add(ns, json, len);
    memcpy(o, "\r\n", 2);
    iov_add(ns, o, 2);
    ns->ob_len += (size_t)(o + 2 - start);
    return 0;
}

/* ==========================================================================================
 * the stream
 * ========================================================================================== */

/** Does the subject pattern `pat` (NATS wildcards '*' and '>') match the subject `subj`? */
static bool subject_matches(const char *pat, const char *subj)
{
    for (;;) {
        const char *pe = strchr(pat, '.');
        size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
        if (pl == 1 && pat[0] == '>')
            return pe == NULL && *subj != '\0';
        const char *se = strchr(subj, '.');
        size_t sl = se ? (size_t)(se - subj) : strlen(subj);
        if (*subj == '\0')
            return false;
        if (!(pl == 1 && pat[0] == '*') && (pl != sl || memcmp(pat, subj, pl) != 0))
            return false;
        if (pe == NULL || se == NULL)
            return pe == NULL && se == NULL;
        pat = pe + 1;
        subj = se + 1;
    }
}

static const char *nats_err_text(natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    return t != NULL && t[0] != '\0' ? t : natsStatus_GetText(s);
}

/**
 * Check that the stream takes every subject we publish to, creating it when missing.
 * 0; -1 a permanent problem (conflict, JetStream disabled); -2 worth retrying. err says why.
 */
static int stream_check(struct nats_sink *ns, char *err, size_t err_len)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, ns->js, ns->stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        char subj[512];
        snprintf(subj, sizeof(subj), "%s.>", ns->subject);
        const char *subjs[1] = {subj};
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        sc.Name = ns->stream;
        sc.Subjects = subjs;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        jerr = 0;
        s = js_AddStream(&si, ns->js, &sc, NULL, &jerr);
        if (s == NATS_OK) {
            jsStreamInfo_Destroy(si);
            SOTH_LOG(SOTH_LOG_INFO, -1, 0, "%s: nats: created JetStream stream %s (subjects %s)",
                     ns->name, ns->stream, subj);
            return 0;
        }
        if (jerr == JSStreamSubjectOverlapErr) {
            snprintf(err, err_len,
                     "%s: nats: cannot create JetStream stream %s: its subjects %s overlap with "
                     "another stream (use that stream, or another subject)",
                     ns->name, ns->stream, subj);
            return -1;
        }
        snprintf(err, err_len, "%s: nats: cannot create JetStream stream %s: %s", ns->name,
                 ns->stream, nats_err_text(s));
        return s == NATS_TIMEOUT ? -2 : -1;
    }
    if (s != NATS_OK) {
        if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr ||
            jerr == 10039 /* JetStream not enabled for account */) {
            snprintf(err, err_len,
                     "%s: nats: JetStream is not enabled on %s (start nats-server with -js)",
                     ns->name, ns->url_log);
            return s == NATS_NO_RESPONDERS ? -3 : -1;
        }
        snprintf(err, err_len, "%s: nats: JetStream stream %s: %s", ns->name, ns->stream,
                 nats_err_text(s));
        return -2;
    }
    int rc = 0;
    const jsStreamConfig *c = si->Config;
    for (int t = ns->exchanges ? X_TYPE : 0; t < (ns->exchanges ? N_SUBJ : X_TYPE) && rc == 0;
         t++) {
        bool taken = false;
        for (int k = 0; c != NULL && k < c->SubjectsLen && !taken; k++)
            taken = subject_matches(c->Subjects[k], ns->subjects[t]);
        if (!taken) {
            char list[256] = "";
            size_t o = 0;
            for (int k = 0; c != NULL && k < c->SubjectsLen && o < sizeof(list); k++)
                o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", k ? ", " : "",
                                      c->Subjects[k]);
            snprintf(err, err_len,
                     "%s: nats: JetStream stream %s exists with subjects [%s], which do not take "
                     "%s: use another stream, or add %s.> to its subjects",
                     ns->name, ns->stream, list, ns->subjects[t], ns->subject);
            rc = -1;
        }
    }
    jsStreamInfo_Destroy(si);
    return rc;
}

/** A fresh JetStream context (the old one's pending acks go with it), everything unacked to be
 *  published again from the oldest. */
static int js_rewind(struct nats_sink *ns)
{
    if (ns->js != NULL)
        jsCtx_Destroy(ns->js);
    ns->js = NULL;
    natsStatus s = natsConnection_JetStream(&ns->js, ns->nc, &ns->jso);
    if (s != NATS_OK) {
        ns->js = NULL;
        return -1;
    }
    for (uint64_t i = ns->fh; i < ns->ft; i++)
        if (slot_at(ns, i)->state == SLOT_SENT)
            slot_at(ns, i)->state = SLOT_QUEUED;
    ns->fs = ns->fh;
    ns->rewind_at_ms = 0;
    ns->unmarked = 0;
    return 0;
}

/* ==========================================================================================
 * the sink thread
 * ========================================================================================== */

static void take_acks(struct nats_sink *ns, uint64_t now)
{
    pthread_mutex_lock(&ns->a_mu);
    struct ack *a = ns->acks;
    size_t n = ns->n_acks;
    ns->acks = ns->acks_taken;
    ns->acks_taken = a;
    ns->n_acks = 0;
    pthread_mutex_unlock(&ns->a_mu);
    uint64_t refused = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t idx;
        struct slot *sl =
            a[i].xid ? slot_find_xid(ns, &a[i], &idx) : slot_find(ns, a[i].gseq, &idx);
        if (sl == NULL || sl->state == SLOT_ACKED)
            continue;
        if (a[i].result != ACK_RETRY && a[i].epoch == sl->epoch) {
            /*
             * Everything published before a marker on the same connection was processed
             * first. An ack that arrives after a disconnect may be for a marker libnats
             * buffered and sent on the next connection, while those before it were lost with
             * the old one: it covers only the marker (the rest is re-sent).
             */
            for (uint64_t k = ns->fh; k < idx; k++)
                if (slot_at(ns, k)->state == SLOT_SENT)
                    slot_at(ns, k)->state = SLOT_ACKED;
        }
        switch (a[i].result) {
        case ACK_OK:
            sl->state = SLOT_ACKED;
            break;
        case ACK_REFUSED:
            sl->state = SLOT_ACKED;
            refused++;
            break;
        default:
            if (sl->state == SLOT_SENT && ns->rewind_at_ms == 0)
                ns->rewind_at_ms = now + RETRY_MS;
            break;
        }
    }
    if (refused > 0) {
        atomic_fetch_add_explicit(&ns->dropped, refused, memory_order_relaxed);
        if (ns->refused_logged++ == 0)
            SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                     "%s: nats: the server refused %llu %s (counted as dropped; this line "
                     "is logged once)",
                     ns->name, (unsigned long long)refused, ns->what);
    }
    advance_head(ns);
}

static void outage_begin(struct nats_sink *ns, uint64_t now)
{
    if (ns->outage)
        return;
    ns->outage = true;
    ns->outage_ms = now;
    ns->outage_dropped = nats_sink_dropped(ns);
    SOTH_LOG(SOTH_LOG_WARN, -1, 0,
             "%s: nats: connection to %s lost; keeping up to %u MB of %s (%llu pending) "
             "until it is back",
             ns->name, ns->url_log, ns->max_pending_mb, ns->what,
             (unsigned long long)nats_sink_pending(ns));
}

static void outage_end(struct nats_sink *ns, uint64_t now)
{
    if (!ns->outage)
        return;
    ns->outage = false;
    SOTH_LOG(SOTH_LOG_WARN, -1, 0,
             "%s: nats: connected to %s after %.1f s: re-sending %llu pending %s; %llu "
             "dropped during the outage",
             ns->name, ns->url_log, (double)(now - ns->outage_ms) / 1000.0,
             (unsigned long long)nats_sink_pending(ns), ns->what,
             (unsigned long long)(nats_sink_dropped(ns) - ns->outage_dropped));
    /* Those drops are in this line: the next "falling behind" line counts from here. */
    ns->behind_dropped = nats_sink_dropped(ns);
}

static void conn_drop(struct nats_sink *ns)
{
    if (ns->rfd >= 0) {
        close(ns->rfd);
        ns->rfd = -1;
    }
    if (ns->js != NULL)
        jsCtx_Destroy(ns->js);
    ns->js = NULL;
    if (ns->nc != NULL) {
        atomic_store(&ns->cur_nc, NULL);
        natsConnection_Close(ns->nc);
        natsConnection_Destroy(ns->nc);
    }
    ns->nc = NULL;
    atomic_store(&ns->up, 0);
    ns->ready = false;
}

/** One connection attempt (blocks up to the connect timeout): NATS_OK or why not. */
static natsStatus conn_open(struct nats_sink *ns)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, ns->opts);
    if (s != NATS_OK)
        return s;
    atomic_fetch_add(&ns->live_conns, 1);
    ns->nc = nc;
    ns->gen++;
    atomic_store(&ns->up, 1);
    atomic_store(&ns->cur_nc, nc);
    /* It may have broken before cur_nc named it (its callback was ignored then). */
    if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED)
        atomic_store(&ns->up, 0);
    if (ns->raw && raw_open(ns) < 0) {
        conn_drop(ns);
        return NATS_IO_ERROR;
    }
    return NATS_OK;
}

/**
 * Follow the connection: the outage lines; when it breaks, a new one (the stream checked, then
 * everything unacknowledged published again).
 */
static void conn_step(struct nats_sink *ns, uint64_t now)
{
    if (ns->nc != NULL && !atomic_load(&ns->up)) {
        outage_begin(ns, now);
        conn_drop(ns);
        ns->connect_at_ms = now + RECONNECT_MS;
    }
    if (ns->nc == NULL) {
        if (now < ns->connect_at_ms)
            return;
        outage_begin(ns, now);
        if (conn_open(ns) != NATS_OK) {
            ns->connect_at_ms = mono_ms() + RECONNECT_MS;
            return;
        }
        ns->check_at_ms = 0;
    }
    if (ns->ready || now < ns->check_at_ms)
        return;
    char err[512];
    int rc = js_rewind(ns) < 0 ? -2 : stream_check(ns, err, sizeof(err));
    if (rc == 0) {
        ns->ready = true;
        outage_end(ns, mono_ms());
        return;
    }
    if (rc == -1 && ns->conflict_gen != ns->gen) {
        ns->conflict_gen = ns->gen;
        SOTH_LOG(SOTH_LOG_ERROR, -1, 0, "%s (%s are kept, within max_pending_mb)", err, ns->what);
    }
    ns->check_at_ms = now + (rc == -1 ? CONFLICT_MS : RETRY_MS);
}

/**
 * Publish one event. A marker asks JetStream for an ack (a reply subject, js_PublishMsgAsync);
 * the others are plain publishes that the stream stores without answering.
 */
static int publish_one(struct nats_sink *ns, const struct slot *sl, bool marker)
{
    if (ns->raw)
        return raw_publish(ns, sl, marker);
    char id[96];
    if (sl->idlen)
        snprintf(id, sizeof(id), "%s-%.*s", ns->run_id, (int)sl->idlen, ns->f + sl->off);
    else
        snprintf(id, sizeof(id), "%s-%llu", ns->run_id, (unsigned long long)sl->gseq);
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, ns->subjects[sl->type], NULL, ns->f + sl->off + sl->idlen,
                                  (int)(sl->len - sl->idlen));
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
    if (s == NATS_OK)
        s = marker ? js_PublishMsgAsync(ns->js, &m, NULL) : natsConnection_PublishMsg(ns->nc, m);
    natsMsg_Destroy(m); /* NULL when js_PublishMsgAsync took it */
    return s == NATS_OK ? 0 : -1;
}

/** Can we publish now? (Nothing goes into libnats' reconnect buffer: see opts_setup.) */
static bool conn_live(struct nats_sink *ns)
{
    if (ns->raw)
        return ns->rfd >= 0 && atomic_load_explicit(&ns->up, memory_order_relaxed);
    return natsConnection_Status(ns->nc) == NATS_CONN_STATUS_CONNECTED;
}

/** An event the server would refuse for its size (over max_payload): counted, logged once. */
static void too_big(struct nats_sink *ns, struct slot *sl)
{
    sl->state = SLOT_ACKED;
    sl->published = 1; /* counted here, not again at stop */
    atomic_fetch_add_explicit(&ns->dropped, 1, memory_order_relaxed);
    if (ns->too_big_logged++ == 0)
        SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                 "%s: nats: %s of %u bytes is over the server's max_payload (%llu): "
                 "dropped and counted (this line is logged once)",
                 ns->name, ns->exchanges ? "an exchange" : "an event", sl->len - sl->idlen,
                 (unsigned long long)ns->max_payload);
}

/**
 * Publish what is queued in flight. Returns how many.
 *
 * Acks are asked for on every ACK_EVERY-th event and on the last event of each batch (the
 * newest in flight); should a batch end without one (a failed write), once publishing pauses
 * for MARK_MS, on the newest published one (published again: the stream keeps the first copy
 * and acks the second as a duplicate). A stream stores the messages of one connection in the
 * order they arrive, so the ack of a marker stands for every event published before it on that
 * connection: one ack message per ACK_EVERY events and one per batch instead of one per event
 * (docs/sinks.md, "Cost").
 */
static size_t publish(struct nats_sink *ns, uint64_t now)
{
    size_t n = 0;
    uint32_t epoch = atomic_load(&ns->dis_epoch);
    while (ns->fs < ns->ft) {
        struct slot *sl = slot_at(ns, ns->fs);
        if (sl->state == SLOT_ACKED) {
            ns->fs++;
            continue;
        }
        if (!conn_live(ns))
            break;
        bool marker = ns->unmarked + 1 >= ACK_EVERY || ns->fs + 1 == ns->ft;
        int rc = publish_one(ns, sl, marker);
        if (rc == -2) {
            too_big(ns, sl);
            ns->fs++;
            continue;
        }
        if (rc < 0) {
            /* The connection is going or gone (its callback follows), or libnats' own
             * buffer is full: try again shortly, from the oldest unacknowledged event. */
            if (ns->rewind_at_ms == 0)
                ns->rewind_at_ms = now + RETRY_MS;
            return n;
        }
        sl->state = SLOT_SENT;
        sl->published = 1;
        sl->sent_ms = now;
        sl->epoch = epoch;
        ns->fs++;
        n++;
        if (marker)
            ns->unmarked = 0;
        else if (ns->unmarked++ == 0)
            ns->unmarked_ms = now;
    }
    if (ns->unmarked > 0 && now - ns->unmarked_ms >= MARK_MS && ns->fs > ns->fh && conn_live(ns)) {
        struct slot *last = slot_at(ns, ns->fs - 1);
        if (last->state != SLOT_SENT || publish_one(ns, last, true) == 0) {
            last->epoch = epoch;
            ns->unmarked = 0;
        }
    }
    /* One write for the whole batch; a failure is a lost connection (conn_step follows). */
    if (ns->raw && ns->n_iov > 0)
        raw_flush(ns);
    return n;
}

static void check_stuck(struct nats_sink *ns, uint64_t now)
{
    if (ns->rewind_at_ms != 0 && now >= ns->rewind_at_ms) {
        js_rewind(ns);
        return;
    }
    if (ns->fh < ns->fs && slot_at(ns, ns->fh)->state == SLOT_SENT &&
        now - slot_at(ns, ns->fh)->sent_ms > ACK_TIMEOUT_MS) {
        SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                 "%s: nats: no ack for %u s; re-sending %llu unacknowledged %s", ns->name,
                 ACK_TIMEOUT_MS / 1000, (unsigned long long)(ns->fs - ns->fh), ns->what);
        js_rewind(ns);
    }
}

static void behind_step(struct nats_sink *ns, uint64_t now)
{
    uint64_t d = nats_sink_dropped(ns);
    if (ns->outage || d == ns->behind_dropped || now - ns->behind_ms < BEHIND_LOG_MS)
        return;
    SOTH_LOG(SOTH_LOG_WARN, -1, 0,
             "%s: nats: falling behind the %s: %llu dropped (oldest first) since the last "
             "such line",
             ns->name, ns->what, (unsigned long long)(d - ns->behind_dropped));
    ns->behind_dropped = d;
    ns->behind_ms = now;
}

static bool all_done(struct nats_sink *ns)
{
    return ns->fh == ns->ft && atomic_load_explicit(&ns->q_head, memory_order_relaxed) ==
                                   atomic_load_explicit(&ns->q_tail, memory_order_acquire);
}

/**
 * Sleep until woken (eventfd), or timeout_ms; with acks, also until the publishing socket has
 * something. While lingering acks wait for the next round: they would otherwise wake this
 * thread once per marker.
 */
static void wait_io(struct nats_sink *ns, int timeout_ms, bool acks)
{
    struct pollfd pfd[2] = {{.fd = ns->efd, .events = POLLIN}, {.fd = ns->rfd, .events = POLLIN}};
    if (poll(pfd, acks && ns->rfd >= 0 ? 2 : 1, timeout_ms) > 0 && (pfd[0].revents & POLLIN)) {
        uint64_t v;
        ssize_t r = read(ns->efd, &v, sizeof(v));
        (void)r;
    }
}

static void *nats_main(void *arg)
{
    struct nats_sink *ns = arg;
    pthread_setname_np(pthread_self(), "soth-nats");
    unsigned idle = 0;
    for (;;) {
        uint64_t now = mono_ms();
        if (ns->rfd >= 0 && raw_read(ns) == 0 && ns->n_iov > 0)
            raw_flush(ns);
        take_acks(ns, now);
        conn_step(ns, now);
        size_t work = 0;
        if (ns->ready) {
            check_stuck(ns, now);
            work += move_in(ns);
            work += publish(ns, now);
        }
        behind_step(ns, now);
        if (atomic_load_explicit(&ns->stop, memory_order_acquire)) {
            if (all_done(ns) || now >= ns->stop_deadline_ms)
                break;
        }
        if (work > 0) {
            idle = 0;
            /* The queue had more than one pass takes: another pass at once. Otherwise the
             * round is over; what comes meanwhile goes with the next one (a pass now would
             * publish a handful of events with a send, a recv and an ack of their own). */
            if (ns->move_more && ns->ft - ns->fh < F_SLOTS)
                continue;
        }
        /*
         * Linger before announcing sleep, as the telemetry thread does (telemetry.c): under
         * steady traffic the telemetry thread then never pays an eventfd write per batch, and
         * each wake-up here publishes a batch big enough that libnats writes it with one
         * syscall. Events wait at most LINGER_MS more; a queue filling up still wakes us.
         */
        if (idle < LINGER_ROUNDS) {
            idle++;
            wait_io(ns, LINGER_MS, false);
            atomic_store_explicit(&ns->kicked, 0, memory_order_relaxed);
            continue;
        }
        /* Dekker with sink_wake: announce, then look for work once more. */
        atomic_store_explicit(&ns->sleeping, 1, memory_order_seq_cst);
        pthread_mutex_lock(&ns->a_mu);
        bool acks = ns->n_acks > 0;
        pthread_mutex_unlock(&ns->a_mu);
        bool more = ns->ready && ns->ft - ns->fh < F_SLOTS &&
                    atomic_load_explicit(&ns->q_head, memory_order_relaxed) !=
                        atomic_load_explicit(&ns->q_tail, memory_order_seq_cst);
        if (!acks && !more)
            wait_io(ns, ns->unmarked > 0 ? (int)MARK_MS : IDLE_MS, true);
        atomic_store_explicit(&ns->sleeping, 0, memory_order_relaxed);
    }
    /* Never published: missing from the stream for sure, counted. Published and not
     * acknowledged: the server may have stored them; logged, not counted (docs/sinks.md). */
    uint64_t left = queued(ns), unacked = 0;
    for (uint64_t i = ns->fh; i < ns->ft; i++) {
        const struct slot *sl = slot_at(ns, i);
        if (!sl->published)
            left++;
        else if (sl->state != SLOT_ACKED)
            unacked++;
    }
    if (left > 0 || unacked > 0) {
        atomic_fetch_add_explicit(&ns->dropped, left, memory_order_relaxed);
        SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                 "%s: nats: stopping with %llu %s never published (counted as dropped) and "
                 "%llu published but not acknowledged by %s",
                 ns->name, (unsigned long long)left, ns->what, (unsigned long long)unacked,
                 ns->url_log);
    }
    return NULL;
}

/* ==========================================================================================
 * set-up and teardown
 * ========================================================================================== */

/** The URL list with any user:password@ removed (for log lines). */
static char *url_redacted(const char *url)
{
    size_t n = strlen(url);
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (const char *u = url; *u;) {
        const char *comma = strchr(u, ',');
        const char *end = comma ? comma : u + strlen(u);
        const char *scheme = strstr(u, "://");
        const char *at = memchr(u, '@', (size_t)(end - u));
        if (scheme != NULL && scheme < end && at != NULL) {
            memcpy(out + o, u, (size_t)(scheme + 3 - u));
            o += (size_t)(scheme + 3 - u);
            u = at + 1;
        }
        memcpy(out + o, u, (size_t)(end - u));
        o += (size_t)(end - u);
        if (comma == NULL)
            break;
        out[o++] = ',';
        u = comma + 1;
    }
    out[o] = '\0';
    return out;
}

/** JSON string body of s (quotes, backslashes and control characters escaped) at o. */
static size_t json_esc(char *o, const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            o[n++] = '\\';
            o[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(o + n, 7, "\\u%04x", c);
        } else {
            o[n++] = (char)c;
        }
    }
    return n;
}

/** The CONNECT line of the publishing socket (malloc'd), user and password included. */
static char *connect_line(const struct soth_sink_cfg *cfg)
{
    size_t ul = cfg->user ? strlen(cfg->user) : 0, pl = cfg->password ? strlen(cfg->password) : 0;
    size_t cap = 256 + 6 * (ul + pl);
    char *b = malloc(cap);
    if (b == NULL)
        return NULL;
    size_t n = (size_t)snprintf(b, cap,
                                "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,"
                                "\"no_responders\":true,\"protocol\":1,\"lang\":\"C\",\"version\":"
                                "\"soth-mitm\",\"name\":\"soth-mitm\"");
    if (cfg->user != NULL) {
        memcpy(b + n, ",\"user\":\"", 9);
        n += 9 + json_esc(b + n + 9, cfg->user);
        memcpy(b + n, "\",\"pass\":\"", 10);
        n += 10 + json_esc(b + n + 10, cfg->password ? cfg->password : "");
        b[n++] = '"';
    }
    memcpy(b + n, "}\r\n", 4);
    return b;
}

static int opts_setup(struct nats_sink *ns, const struct soth_sink_cfg *cfg, char *err,
                      size_t err_len)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    ns->opts = o;
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, cfg->url);
    const char *what = "url";
    if (s == NATS_OK)
        s = natsOptions_SetName(o, "soth-mitm");
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, 2000);
    /*
     * No reconnect inside libnats: it would keep what is published while it reconnects and
     * send it first on the new connection, ahead of older events lost with the old one, and
     * their re-send would land after it (gseq order per subject). The sink thread makes a new
     * connection instead; a broken one refuses every publish.
     */
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, false);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_lost, ns);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, on_closed, ns);
    if (s == NATS_OK && cfg->tls_ca_file != NULL) {
        what = "tls_ca_file";
        s = natsOptions_SetSecure(o, true);
        if (s == NATS_OK)
            s = natsOptions_LoadCATrustedCertificates(o, cfg->tls_ca_file);
    }
    if (s == NATS_OK && cfg->tls_cert_file != NULL) {
        what = "tls_cert_file";
        s = natsOptions_SetSecure(o, true);
        if (s == NATS_OK)
            s = natsOptions_LoadCertificatesChain(o, cfg->tls_cert_file, cfg->tls_key_file);
    }
    if (s == NATS_OK && cfg->creds_file != NULL) {
        what = "creds_file";
        s = natsOptions_SetUserCredentialsFromFiles(o, cfg->creds_file, NULL);
    }
    if (s == NATS_OK && cfg->user != NULL) {
        what = "user";
        s = natsOptions_SetUserInfo(o, cfg->user, cfg->password);
    }
    if (s != NATS_OK) {
        snprintf(err, err_len, "%s.%s: nats: %s", ns->name, what, nats_err_text(s));
        return -1;
    }
    jsOptions_Init(&ns->jso);
    ns->jso.PublishAsync.AckHandler = on_ack;
    ns->jso.PublishAsync.AckHandlerClosure = ns;
    /* The sink bounds what is in flight itself (F_SLOTS); libnats never stalls a publish. */
    ns->jso.PublishAsync.MaxPending = 0;
    return 0;
}

struct nats_sink *nats_sink_new(const struct soth_sink_cfg *cfg, unsigned index, const char *run_id,
                                uint32_t drain_ms, char *err, size_t err_len)
{
    struct nats_sink *ns = aligned_alloc(SOTH_CACHELINE, sizeof(*ns));
    if (ns == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    memset(ns, 0, sizeof(*ns));
    ns->efd = -1;
    ns->rfd = -1;
    pthread_mutex_init(&ns->q_mu, NULL);
    pthread_mutex_init(&ns->a_mu, NULL);
    snprintf(ns->name, sizeof(ns->name), "events.sinks[%u]", index);
    snprintf(ns->run_id, sizeof(ns->run_id), "%s", run_id);
    ns->run_id_len = strlen(ns->run_id);
    ns->id_pre_len = (size_t)snprintf(ns->id_pre, sizeof(ns->id_pre),
                                      "\r\nNATS/1.0\r\nNats-Msg-Id: %s-", ns->run_id);
    ns->max_pending_mb = cfg->max_pending_mb;
    ns->exchanges = cfg->format == SOTH_SINK_FMT_EXCHANGE;
    ns->what = ns->exchanges ? "exchanges" : "events";
    ns->drain_ms = drain_ms;
    ns->stream = strdup(cfg->stream);
    ns->subject = strdup(cfg->subject);
    ns->url_log = url_redacted(cfg->url);
    uint64_t total = (uint64_t)cfg->max_pending_mb << 20;
    ns->f_cap = (uint32_t)(total / 4 > (16u << 20) ? (16u << 20) : total / 4);
    ns->q_cap = total - ns->f_cap;
    /* Touched now: no page faults on the telemetry thread as the queue laps (as the ring
     * file, telemetry.c); max_pending_mb is memory this sink holds for good. */
    ns->q = mmap(NULL, ns->q_cap, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    ns->f = mmap(NULL, ns->f_cap, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (ns->q == MAP_FAILED)
        ns->q = NULL;
    if (ns->f == MAP_FAILED)
        ns->f = NULL;
    ns->slots = calloc(F_SLOTS, sizeof(*ns->slots));
    ns->acks = calloc(ACKQ_CAP, sizeof(*ns->acks));
    ns->acks_taken = calloc(ACKQ_CAP, sizeof(*ns->acks_taken));
    ns->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    bool ok = ns->stream && ns->subject && ns->url_log && ns->q && ns->f && ns->slots && ns->acks &&
              ns->acks_taken && ns->efd >= 0;
    for (int t = 0; t < N_SUBJ && ok; t++) {
        const char *tn = t == X_TYPE ? "exchange" : soth_ev_type_names[t];
        size_t n = strlen(cfg->subject) + strlen(tn) + 2;
        ns->subjects[t] = malloc(n);
        ok = ns->subjects[t] != NULL;
        if (ok)
            ns->subj_len[t] = (size_t)snprintf(ns->subjects[t], n, "%s.%s", cfg->subject, tn);
        /* raw_publish's prefix of the frame, copied in whole blocks */
        ns->hpub[t] = ok ? calloc(1, (n + 6 + BLOCK - 1) / BLOCK * BLOCK + BLOCK) : NULL;
        ok = ns->hpub[t] != NULL;
        if (ok)
            ns->hpub_len[t] = (size_t)sprintf(ns->hpub[t], "HPUB %s ", ns->subjects[t]);
    }
    /* TLS and credentials files stay with libnats (docs/sinks.md, "Cost"). */
    ns->raw = cfg->tls_ca_file == NULL && cfg->tls_cert_file == NULL && cfg->creds_file == NULL &&
              strstr(cfg->url, "tls://") == NULL && strchr(cfg->url, '@') == NULL;
    if (ok && ns->raw) {
        ns->ob = malloc(OB_CAP + OB_SLACK);
        ns->iov = malloc(IOV_CAP * sizeof(*ns->iov));
        ns->ib = malloc(IB_CAP);
        ns->connect_line = connect_line(cfg);
        ok = ns->ob != NULL && ns->iov != NULL && ns->ib != NULL && ns->connect_line != NULL;
    }
    if (!ok) {
        snprintf(err, err_len, "%s: nats: out of memory", ns->name);
        goto fail;
    }
    if (opts_setup(ns, cfg, err, err_len) < 0)
        goto fail;
    natsStatus s = conn_open(ns);
    if (s == NATS_NO_SERVER || s == NATS_TIMEOUT || s == NATS_IO_ERROR) {
        /* Not an error: the proxy serves and the sink connects when the server is there. */
        ns->outage = true;
        ns->outage_ms = mono_ms();
        ns->connect_at_ms = ns->outage_ms + RECONNECT_MS;
        SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                 "%s: nats: %s unreachable (%s); connecting in the background, keeping up to "
                 "%u MB of %s meanwhile",
                 ns->name, ns->url_log, nats_err_text(s), ns->max_pending_mb, ns->what);
    } else if (s != NATS_OK) {
        snprintf(err, err_len, "%s: nats: %s: %s", ns->name, ns->url_log, nats_err_text(s));
        goto fail;
    } else {
        int rc = js_rewind(ns) < 0 ? -2 : stream_check(ns, err, err_len);
        if (rc == -1 || rc == -3)
            goto fail;
        if (rc == -2)
            SOTH_LOG(SOTH_LOG_WARN, -1, 0, "%s (retrying in the background)", err);
        ns->ready = rc == 0;
        if (rc != 0)
            ns->check_at_ms = mono_ms() + RETRY_MS;
    }
    if (ns->exchanges)
        SOTH_LOG(SOTH_LOG_INFO, -1, 0,
                 "%s: nats: publishing exchanges to JetStream stream %s, subject %s.exchange, "
                 "message ids %s-x-<flow_id>-<stream_id>",
                 ns->name, ns->stream, ns->subject, ns->run_id);
    else
        SOTH_LOG(SOTH_LOG_INFO, -1, 0,
                 "%s: nats: publishing to JetStream stream %s, subjects %s.<type>, message ids "
                 "%s-<gseq>",
                 ns->name, ns->stream, ns->subject, ns->run_id);
    return ns;
fail:
    nats_sink_free(ns);
    return NULL;
}

int nats_sink_start(struct nats_sink *ns)
{
    int rc = pthread_create(&ns->thr, NULL, nats_main, ns);
    if (rc != 0)
        return -rc;
    ns->started = true;
    return 0;
}

void nats_sink_stop(struct nats_sink *ns)
{
    if (ns == NULL || !ns->started)
        return;
    ns->stop_deadline_ms = mono_ms() + ns->drain_ms;
    atomic_store_explicit(&ns->stop, 1, memory_order_release);
    uint64_t one = 1;
    ssize_t n = write(ns->efd, &one, sizeof(one));
    (void)n;
    pthread_join(ns->thr, NULL);
    ns->started = false;
}

void nats_sink_free(struct nats_sink *ns)
{
    if (ns == NULL)
        return;
    nats_sink_stop(ns);
    conn_drop(ns);
    /* libnats delivers the closed callback on a thread of its own, after Close returned. */
    for (int i = 0; i < 1000 && atomic_load(&ns->live_conns) > 0; i++)
        usleep(10000);
    if (atomic_load(&ns->live_conns) > 0) {
        SOTH_LOG(SOTH_LOG_WARN, -1, 0, "%s: nats: the client library did not close in 10 s",
                 ns->name);
        return; /* its callbacks may still use ns: keep it */
    }
    natsOptions_Destroy(ns->opts);
    for (int t = 0; t < N_SUBJ; t++) {
        free(ns->subjects[t]);
        free(ns->hpub[t]);
    }
    if (ns->q != NULL)
        munmap(ns->q, ns->q_cap);
    if (ns->f != NULL)
        munmap(ns->f, ns->f_cap);
    free(ns->ob);
    free(ns->iov);
    free(ns->ib);
    free(ns->connect_line);
    free(ns->slots);
    free(ns->acks);
    free(ns->acks_taken);
    free(ns->stream);
    free(ns->subject);
    free(ns->url_log);
    if (ns->efd >= 0)
        close(ns->efd);
    pthread_mutex_destroy(&ns->q_mu);
    pthread_mutex_destroy(&ns->a_mu);
    free(ns);
}
