/*
 * The consumer side: one telemetry thread drains every worker's SPSC ring, assigns gseq, writes
 * the mmap'ed ring file (docs/event-ring.md) and the sinks; a metrics thread answers
 * GET /metrics. Neither ever blocks a worker: workers only see their own ring.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "observe_int.h"
#include "sink_nats.h"
#include "soth/exchange.h"

#define PROD_RING_BYTES (8u << 20) /* per worker */
#define SINK_BUF_MAX    (1u << 20) /* per uds client: beyond this, lines are dropped */
#define JSONL_BUF_BYTES (4u << 20) /* per jsonl sink (power of two): beyond, lines are dropped */
#define MAX_UDS_CLIENTS 64
#define DRAIN_BATCH     4096
#define IDLE_POLL_MS    100 /* bounds the cost of a lost wake-up; wakes are normally immediate */

struct sink_client {
    int fd;
    struct jbuf buf;
    size_t off; /* bytes of buf already written */
};

/*
 * A jsonl sink: the telemetry thread appends whole lines to a byte ring (SPSC); the sink's own
 * thread writes them to the file, so a slow disk never stalls the telemetry thread. A full ring
 * drops the line (soth_sink_dropped_total).
 */
struct jsonl_ring {
    char *data;
    uint64_t cap;
    _Alignas(SOTH_CACHELINE) _Atomic uint64_t tail; /* written by the telemetry thread */
    _Alignas(SOTH_CACHELINE) _Atomic uint64_t head; /* written by the sink thread */
    _Atomic int sleeping;                           /* sink thread waits on efd */
    _Atomic int stop;
    _Atomic uint64_t *dropped; /* the sink's dropped */
    int efd;
    pthread_t thr;
    bool started;
};

struct sink {
    enum soth_sink_type type;
    enum soth_sink_format format; /* event lines, or exchanges (docs/exchanges.md) */
    unsigned index;               /* in events.sinks */
    char *path;
    int fd; /* jsonl: the file; uds: the listening socket */
    struct jsonl_ring *jr;
    struct nats_sink *ns;
    _Atomic uint64_t dropped; /* lines dropped (jsonl, uds; nats counts its own) */
    struct sink_client clients[MAX_UDS_CLIENTS];
    unsigned n_clients;
};

/* ==========================================================================================
 * set-up
 * ========================================================================================== */

static int mkdirs(const char *path, mode_t mode)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, mode) == -1 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    }
    if (mkdir(tmp, mode) == -1 && errno != EEXIST)
        return -errno;
    return 0;
}

static int parent_dir(const char *path, mode_t mode)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    return mkdirs(dir, mode);
}

static int ring_file_open(struct soth_observe *o, uint32_t size_mb, char *err, size_t err_len)
{
    uint64_t cap = 1u << 20;
    while (cap < (uint64_t)size_mb << 20)
        cap <<= 1;
    int rc = parent_dir(o->ring_path, 0700);
    if (rc < 0) {
        snprintf(err, err_len, "event ring %s: cannot create its directory: %s", o->ring_path,
                 strerror(-rc));
        return -1;
    }
    /* A new file each run: readers holding the old one keep their mapping. */
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp%d", o->ring_path, (int)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        snprintf(err, err_len, "event ring %s: %s", o->ring_path, strerror(errno));
        return -1;
    }
    size_t total = RING_HDR_SIZE + cap;
    /* Allocate the blocks now: a full disk must fail here, not SIGBUS the telemetry thread. */
    rc = posix_fallocate(fd, 0, (off_t)total);
    if (rc == EOPNOTSUPP || rc == EINVAL)
        rc = ftruncate(fd, (off_t)total) == -1 ? errno : 0;
    if (rc != 0) {
        snprintf(err, err_len, "event ring %s: allocating %zu bytes: %s", o->ring_path, total,
                 strerror(rc));
        close(fd);
        unlink(tmp);
        return -1;
    }
    /* MAP_POPULATE: no page faults in the telemetry thread's hot loop. */
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) {
        snprintf(err, err_len, "event ring %s: mmap: %s", o->ring_path, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    o->n_chunks = cap >> RING_CHUNK_SHIFT;
    o->chunk_first = calloc(o->n_chunks, sizeof(*o->chunk_first));
    if (o->chunk_first == NULL) {
        snprintf(err, err_len, "out of memory");
        munmap(m, total);
        close(fd);
        unlink(tmp);
        return -1;
    }
    o->hdr = m;
    o->ring_data = (char *)m + RING_HDR_SIZE;
    o->ring_cap = cap;
    o->ring_fd = fd;
    o->hdr->version = RING_VERSION;
    o->hdr->hdr_size = RING_HDR_SIZE;
    o->hdr->capacity = cap;
    atomic_store(&o->hdr->write_pos, 0);
    atomic_store(&o->hdr->oldest, 0);
    atomic_store(&o->hdr->last_gseq, 0);
    o->hdr->start_ns = soth_now_ns();
    /* last: a reader never sees a half-initialised header */
    __atomic_store_n(&o->hdr->magic, RING_MAGIC, __ATOMIC_RELEASE);
    if (rename(tmp, o->ring_path) == -1) {
        snprintf(err, err_len, "event ring %s: rename: %s", o->ring_path, strerror(errno));
        munmap(m, total);
        close(fd);
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ==========================================================================================
 * jsonl sink thread
 * ========================================================================================== */

static void *jsonl_main(void *arg)
{
    struct sink *s = arg;
    pthread_setname_np(pthread_self(), "soth-jsonl");
    struct jsonl_ring *jr = s->jr;
    for (;;) {
        uint64_t head = atomic_load_explicit(&jr->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&jr->tail, memory_order_acquire);
        if (head != tail) {
            uint64_t off = head & (jr->cap - 1);
            size_t n = (size_t)(tail - head);
            if (off + n > jr->cap)
                n = (size_t)(jr->cap - off);
            ssize_t w = write(s->fd, jr->data + off, n);
            if (w > 0)
                head += (uint64_t)w;
            else if (w == -1 && errno == EINTR)
                continue;
            else {
                head += n; /* a broken file (EIO, ENOSPC): these bytes are lost, and counted */
                atomic_fetch_add_explicit(jr->dropped, 1, memory_order_relaxed);
            }
            atomic_store_explicit(&jr->head, head, memory_order_release);
            continue;
        }
        if (atomic_load_explicit(&jr->stop, memory_order_acquire)) {
            /* stop is set after the last line was queued: one more look, then done. */
            if (atomic_load_explicit(&jr->tail, memory_order_acquire) == head)
                break;
            continue;
        }
        /* Dekker with jsonl_wake: store sleeping, then load tail (seq_cst both). */
        atomic_store_explicit(&jr->sleeping, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&jr->tail, memory_order_seq_cst) == head &&
            !atomic_load_explicit(&jr->stop, memory_order_relaxed)) {
            struct pollfd pfd = {.fd = jr->efd, .events = POLLIN};
            poll(&pfd, 1, IDLE_POLL_MS);
            uint64_t v;
            ssize_t r = read(jr->efd, &v, sizeof(v));
            (void)r;
        }
        atomic_store_explicit(&jr->sleeping, 0, memory_order_relaxed);
    }
    return NULL;
}

static void jsonl_wake(struct jsonl_ring *jr)
{
    /* A seq_cst read-modify-write of tail, then load sleeping: the other half of the Dekker
     * pair in jsonl_main (lines were stored with release stores, once per line). */
    atomic_fetch_add_explicit(&jr->tail, 0, memory_order_seq_cst);
    if (atomic_load_explicit(&jr->sleeping, memory_order_seq_cst) &&
        atomic_exchange_explicit(&jr->sleeping, 0, memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t n = write(jr->efd, &one, sizeof(one));
        (void)n;
    }
}

/** Queue one line (telemetry thread). false when the ring has no room for all of it. */
static bool jsonl_put(struct jsonl_ring *jr, const char *line, size_t len)
{
    uint64_t tail = atomic_load_explicit(&jr->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&jr->head, memory_order_acquire);
    if (tail + len - head > jr->cap)
        return false;
    uint64_t off = tail & (jr->cap - 1);
    size_t first = off + len > jr->cap ? (size_t)(jr->cap - off) : len;
    memcpy(jr->data + off, line, first);
    memcpy(jr->data, line + first, len - first);
    atomic_store_explicit(&jr->tail, tail + len, memory_order_release);
    return true;
}

/* ==========================================================================================
 * sinks: set-up
 * ========================================================================================== */

static int sink_open(struct soth_observe *o, struct sink *s, const struct soth_sink_cfg *cfg,
                     char *err, size_t err_len)
{
    s->type = cfg->type;
    s->format = cfg->format;
    s->fd = -1;
    if (cfg->type == SOTH_SINK_NATS) {
        s->ns = nats_sink_new(cfg, s->index, o->run_id, o->drain_ms, err, err_len);
        return s->ns != NULL ? 0 : -1;
    }
    s->path = strdup(cfg->path);
    if (s->path == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    parent_dir(cfg->path, 0755);
    if (cfg->type == SOTH_SINK_JSONL) {
        s->fd = open(cfg->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (s->fd == -1) {
            snprintf(err, err_len, "events.sinks: jsonl %s: %s", cfg->path, strerror(errno));
            return -1;
        }
        s->jr = aligned_alloc(SOTH_CACHELINE, sizeof(*s->jr));
        if (s->jr == NULL) {
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        memset(s->jr, 0, sizeof(*s->jr));
        s->jr->cap = JSONL_BUF_BYTES;
        s->jr->dropped = &s->dropped;
        s->jr->data = malloc(JSONL_BUF_BYTES);
        s->jr->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->jr->data == NULL || s->jr->efd == -1) {
            snprintf(err, err_len, "events.sinks: jsonl %s: out of resources", cfg->path);
            return -1;
        }
        return 0;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(cfg->path) >= sizeof(a.sun_path)) {
        snprintf(err, err_len, "events.sinks: uds %s: path too long for a Unix socket", cfg->path);
        return -1;
    }
    memcpy(a.sun_path, cfg->path, strlen(cfg->path) + 1);
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    unlink(cfg->path);
    if (s->fd == -1 || bind(s->fd, (struct sockaddr *)&a, sizeof(a)) == -1 ||
        listen(s->fd, 64) == -1) {
        snprintf(err, err_len, "events.sinks: uds %s: %s", cfg->path, strerror(errno));
        return -1;
    }
    return 0;
}

static int metrics_listen(const struct soth_config *cfg, char *err, size_t err_len)
{
    const struct soth_hostport *hp = &cfg->metrics.listen;
    struct sockaddr_storage ss = hp->addr;
    socklen_t sl = hp->addr_len;
    if (sl == 0) {
        /* A name ("localhost"): resolved once here, at start-up (never on a worker). */
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
        struct addrinfo *ai = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%u", hp->port);
        int rc = getaddrinfo(hp->host, port, &hints, &ai);
        if (rc != 0 || ai == NULL) {
            snprintf(err, err_len, "metrics.listen %s: %s", cfg->metrics.listen_text,
                     rc ? gai_strerror(rc) : "no address");
            return -1;
        }
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        sl = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        bind(fd, (const struct sockaddr *)&ss, sl) == -1 || listen(fd, 64) == -1) {
        snprintf(err, err_len, "metrics.listen %s: %s", cfg->metrics.listen_text, strerror(errno));
        if (fd != -1)
            close(fd);
        return -1;
    }
    return fd;
}

static void on_exchange(void *ctx, const struct soth_xasm_out *x);

struct soth_observe *soth_observe_new(const struct soth_config *cfg, unsigned n_workers, char *err,
                                      size_t err_len)
{
    struct soth_observe *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    o->ring_fd = -1;
    o->efd = -1;
    o->metrics_fd = -1;
    o->n_workers = n_workers;
    o->n_prods = n_workers + 1; /* the workers', then the bridge's (docs/bridge.md) */
    o->ring_path =
        cfg->events.ring_path ? strdup(cfg->events.ring_path) : soth_config_default_ring_path();
    size_t n_alloc = o->n_prods;
    o->prods = aligned_alloc(SOTH_CACHELINE, sizeof(*o->prods) * n_alloc);
    o->metrics = aligned_alloc(SOTH_CACHELINE, sizeof(*o->metrics) * n_alloc);
    if (o->ring_path == NULL || o->prods == NULL || o->metrics == NULL)
        goto oom;
    memset(o->prods, 0, sizeof(*o->prods) * n_alloc);
    memset(o->metrics, 0, sizeof(*o->metrics) * n_alloc);
    for (unsigned i = 0; i < o->n_prods; i++) {
        struct soth_ev_producer *p = &o->prods[i];
        p->cap = PROD_RING_BYTES;
        p->mask = p->cap - 1;
        p->data = mmap(NULL, p->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p->data == MAP_FAILED) {
            p->data = NULL;
            goto oom;
        }
        p->obs = o;
        p->m = &o->metrics[i];
        p->worker = i < n_workers ? i : SOTH_EV_WORKER_BRIDGE;
        p->body_cap = cfg->events.body_capture_bytes;
    }
    o->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (o->efd == -1)
        goto oom;
    /* Names this run in the NATS message ids (docs/sinks.md). */
    uint64_t rid = soth_now_ns();
    if (getrandom(&rid, sizeof(rid), 0) != (ssize_t)sizeof(rid))
        rid ^= (uint64_t)getpid() << 32;
    snprintf(o->run_id, sizeof(o->run_id), "%016llx", (unsigned long long)rid);
    o->drain_ms = cfg->timeouts.drain_ms;
    if (ring_file_open(o, cfg->events.ring_size_mb, err, err_len) < 0)
        goto fail;
    o->sinks = calloc(cfg->events.n_sinks ? cfg->events.n_sinks : 1, sizeof(struct sink));
    if (o->sinks == NULL)
        goto oom;
    for (size_t i = 0; i < cfg->events.n_sinks; i++) {
        o->n_sinks++;
        o->sinks[i].index = (unsigned)i;
        if (sink_open(o, &o->sinks[i], &cfg->events.sinks[i], err, err_len) < 0)
            goto fail;
    }
    for (size_t i = 0; i < o->n_sinks && o->xasm == NULL; i++) {
        if (o->sinks[i].format != SOTH_SINK_FMT_EXCHANGE)
            continue;
        /* One assembler for every exchange sink, fed on the telemetry thread. */
        struct soth_xasm_cfg xc = {.body_capture_bytes = cfg->events.body_capture_bytes};
        o->xasm = soth_xasm_new(&xc, on_exchange, o);
        if (o->xasm == NULL)
            goto oom;
    }
    if (cfg->metrics.listen_text != NULL) {
        o->metrics_fd = metrics_listen(cfg, err, err_len);
        if (o->metrics_fd < 0)
            goto fail;
    }
    return o;
oom:
    snprintf(err, err_len, "out of memory");
fail:
    soth_observe_free(o);
    return NULL;
}

const char *soth_observe_ring_path(const struct soth_observe *obs)
{
    return obs->ring_path;
}

struct soth_ev_producer *soth_observe_producer(struct soth_observe *obs, unsigned worker)
{
    return &obs->prods[worker];
}

struct soth_metrics *soth_observe_metrics(struct soth_observe *obs, unsigned worker)
{
    return &obs->metrics[worker];
}

struct soth_ev_producer *soth_observe_bridge_producer(struct soth_observe *obs)
{
    return &obs->prods[obs->n_workers];
}

struct soth_metrics *soth_observe_bridge_metrics(struct soth_observe *obs)
{
    return &obs->metrics[obs->n_workers];
}

struct soth_bridge_metrics *soth_observe_bridge_counters(struct soth_observe *obs)
{
    return &obs->bridge;
}

static uint64_t sink_dropped(const struct sink *s)
{
    if (s->ns != NULL)
        return nats_sink_dropped(s->ns);
    return atomic_load_explicit(&s->dropped, memory_order_relaxed);
}

uint64_t soth_observe_sink_dropped(struct soth_observe *obs)
{
    uint64_t n = 0;
    for (size_t k = 0; k < obs->n_sinks; k++)
        n += sink_dropped(&obs->sinks[k]);
    return n;
}

/* ==========================================================================================
 * the ring file writer
 * ========================================================================================== */

/*
 * Record bytes go into the shared mapping as 8-byte stores that a concurrent reader may observe
 * half-way (seqlock; docs/event-ring.md). The writer moves `oldest` past a record *before* it
 * overwrites any of its bytes, and a reader checks `oldest` *after* copying, so a torn copy is
 * always detected:
 *  - x86-64: non-temporal stores (no read-for-ownership of cold file lines: the file is far
 *    bigger than the caches), with an sfence after the `oldest` store and one before each
 *    write_pos publication (x86 orders normal stores, not streaming ones);
 *  - elsewhere, and under ThreadSanitizer: C11-style release stores (readers load with acquire),
 *    which order the earlier `oldest` store before any byte a reader can see.
 */
#if defined(__SANITIZE_THREAD__)
#define RING_NT 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RING_NT 0
#endif
#endif
#ifndef RING_NT
#if defined(__x86_64__)
#define RING_NT 1
#else
#define RING_NT 0
#endif
#endif
#if RING_NT
#include <immintrin.h>
#endif

static void ring_copy_in(char *dst, const char *src, size_t len)
{
#if RING_NT
    long long *d = (long long *)(void *)dst;
    for (size_t i = 0; i < len / 8; i++) {
        long long w;
        memcpy(&w, src + 8 * i, 8);
        _mm_stream_si64(&d[i], w);
    }
#else
    uint64_t *d = (uint64_t *)(void *)dst;
    for (size_t i = 0; i < len / 8; i++) {
        uint64_t w;
        memcpy(&w, src + 8 * i, 8);
        __atomic_store_n(&d[i], w, __ATOMIC_RELEASE);
    }
#endif
}

/** Order every store made so far before the stores that follow (streaming stores included). */
static void ring_store_fence(void)
{
#if RING_NT
    _mm_sfence();
#endif
}

/*
 * Record starts are indexed per chunk (chunk_first[k] = the first record start at or after the
 * k-th chunk boundary), so advancing `oldest` never reads the old bytes back from the file.
 * `oldest` moves a chunk beyond what is strictly needed, so its store and fence happen once per
 * chunk, not once per record.
 */
static void ring_mark(struct soth_observe *o, uint64_t w)
{
    while (o->next_mark <= w) {
        o->chunk_first[(o->next_mark >> RING_CHUNK_SHIFT) & (o->n_chunks - 1)] = w;
        o->next_mark += 1ull << RING_CHUNK_SHIFT;
    }
}

/** Before writing [w, end): move `oldest` past every record those bytes overwrite. */
static void ring_make_room(struct soth_observe *o, uint64_t w, uint64_t end)
{
    if (end <= o->ring_cap || o->oldest >= end - o->ring_cap)
        return;
    uint64_t chunk = 1ull << RING_CHUNK_SHIFT;
    uint64_t b = (end - o->ring_cap + chunk + chunk - 1) & ~(chunk - 1);
    o->oldest = b > w ? w : o->chunk_first[(b >> RING_CHUNK_SHIFT) & (o->n_chunks - 1)];
    atomic_store_explicit(&o->hdr->oldest, o->oldest, memory_order_relaxed);
    ring_store_fence(); /* `oldest` is visible before any of the bytes it gives up change */
}

/** Append one record, stamped with gseq and its position (the producer's copy is untouched). */
static void ring_write(struct soth_observe *o, const struct ev_rec *r, uint64_t gseq)
{
    uint64_t w = o->wpos;
    uint64_t off = w & (o->ring_cap - 1);
    if (off + r->len > o->ring_cap) {
        /* Pad to the end so every record is contiguous in the mapping. */
        uint64_t pad_len = o->ring_cap - off;
        ring_mark(o, w);
        ring_make_room(o, w, w + pad_len);
        struct ev_rec pad;
        memset(&pad, 0, sizeof(pad));
        pad.len = (uint32_t)pad_len;
        pad.type = REC_PAD;
        pad.pos = w;
        ring_copy_in(o->ring_data + off, (const char *)&pad,
                     pad_len < sizeof(pad) ? pad_len : sizeof(pad));
        w += pad_len;
        off = 0;
    }
    uint64_t end = w + r->len;
    ring_mark(o, w);
    ring_make_room(o, w, end);
    /* The first 24 bytes (len, type, worker, gseq, pos) from a stamped copy, then the rest. */
    struct ev_rec h;
    memcpy(&h, r, 24);
    h.gseq = gseq;
    h.pos = w;
    ring_copy_in(o->ring_data + off, (const char *)&h, 24);
    ring_copy_in(o->ring_data + off + 24, (const char *)r + 24, r->len - 24);
    o->wpos = end;
    o->last_gseq = gseq;
}

/** Make what ring_write wrote visible to readers (once per batch: one fence, two stores). */
static void ring_publish(struct soth_observe *o)
{
    if (atomic_load_explicit(&o->hdr->write_pos, memory_order_relaxed) == o->wpos)
        return;
    ring_store_fence();
    atomic_store_explicit(&o->hdr->last_gseq, o->last_gseq, memory_order_relaxed);
    atomic_store_explicit(&o->hdr->write_pos, o->wpos, memory_order_release);
}

/* ==========================================================================================
 * sinks: the telemetry thread's side
 * ========================================================================================== */

static void client_close(struct sink *s, unsigned i)
{
    close(s->clients[i].fd);
    jbuf_free(&s->clients[i].buf);
    s->clients[i] = s->clients[--s->n_clients];
}

static void sink_accept(struct sink *s)
{
    for (;;) {
        int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1)
            return;
        if (s->n_clients >= MAX_UDS_CLIENTS) {
            close(fd);
            continue;
        }
        struct sink_client *c = &s->clients[s->n_clients++];
        memset(c, 0, sizeof(*c));
        c->fd = fd;
    }
}

static void client_flush(struct sink *s, unsigned i)
{
    struct sink_client *c = &s->clients[i];
    while (c->off < c->buf.len) {
        ssize_t n = send(c->fd, c->buf.p + c->off, c->buf.len - c->off, MSG_NOSIGNAL);
        if (n > 0) {
            c->off += (size_t)n;
            continue;
        }
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* Keep the pending bytes at the front so the buffer stays bounded. */
            if (c->off > c->buf.len / 2) {
                memmove(c->buf.p, c->buf.p + c->off, c->buf.len - c->off);
                c->buf.len -= c->off;
                c->off = 0;
            }
            return;
        }
        client_close(s, i);
        return;
    }
    c->buf.len = 0;
    c->off = 0;
}

/** Does any event sink want JSON lines right now? (Encoding is skipped otherwise.) */
static bool sinks_want_lines(const struct soth_observe *o)
{
    for (size_t k = 0; k < o->n_sinks; k++)
        if (o->sinks[k].format == SOTH_SINK_FMT_EVENT &&
            (o->sinks[k].type != SOTH_SINK_UDS || o->sinks[k].n_clients > 0))
            return true;
    return false;
}

/** Queue one JSON line for a jsonl or uds sink; a consumer that fell behind loses lines
 *  (counted). */
static void sink_put_line(struct sink *s, const char *line, size_t len)
{
    if (s->type == SOTH_SINK_JSONL) {
        if (!jsonl_put(s->jr, line, len))
            atomic_fetch_add_explicit(&s->dropped, 1, memory_order_relaxed);
        return;
    }
    for (unsigned i = 0; i < s->n_clients; i++) {
        struct sink_client *c = &s->clients[i];
        if (c->buf.len - c->off + len > SINK_BUF_MAX) {
            atomic_fetch_add_explicit(&s->dropped, 1, memory_order_relaxed);
            continue;
        }
        jbuf_put(&c->buf, line, len);
    }
}

/** Queue one event's JSON line for an event sink. */
static void sink_put(struct sink *s, const struct ev_rec *r, uint64_t gseq, const char *line,
                     size_t len)
{
    if (s->format != SOTH_SINK_FMT_EVENT)
        return;
    if (s->type == SOTH_SINK_NATS) {
        nats_sink_put(s->ns, r->type, gseq, line, len - 1); /* a message: no newline */
        return;
    }
    sink_put_line(s, line, len);
}

/**
 * One event's JSON line to every event sink. With a NATS sink the encoder writes it straight
 * into that sink's queue when there is room (docs/sinks.md, "Cost"), and the other sinks take
 * it from there; otherwise into o->line.
 */
static void sinks_put_event(struct soth_observe *o, struct sink *direct, const struct ev_rec *r,
                            uint32_t len)
{
    const char *line;
    size_t n, bound = direct != NULL ? soth_ev_rec_json_bound(r, len) : 0;
    char *dst = bound > 0 ? nats_sink_reserve(direct->ns, bound) : NULL;
    if (dst != NULL) {
        n = soth_ev_rec_json_at(r, dst);
        if (n == 0)
            return;
        nats_sink_commit(direct->ns, r->type, o->gseq, n - 1); /* a message: no newline */
        line = dst;
    } else {
        direct = NULL;
        o->line.len = 0;
        if (soth_ev_rec_to_json(r, len, &o->line) != 0)
            return;
        line = o->line.p;
        n = o->line.len;
    }
    for (size_t k = 0; k < o->n_sinks; k++)
        if (&o->sinks[k] != direct)
            sink_put(&o->sinks[k], r, o->gseq, line, n);
}

/** A finished exchange from the assembler (telemetry thread): to every exchange sink. */
static void on_exchange(void *ctx, const struct soth_xasm_out *x)
{
    struct soth_observe *o = ctx;
    for (size_t k = 0; k < o->n_sinks; k++) {
        struct sink *s = &o->sinks[k];
        if (s->format != SOTH_SINK_FMT_EXCHANGE)
            continue;
        if (s->type == SOTH_SINK_NATS) /* a message: no newline */
            nats_sink_put_exchange(s->ns, x->flow_id, x->stream_id, x->partial, x->json,
                                   x->len - 1);
        else
            sink_put_line(s, x->json, x->len);
    }
}

/** After a batch: hand the lines to their consumers (never blocks). */
static void sinks_flush(struct soth_observe *o)
{
    for (size_t k = 0; k < o->n_sinks; k++) {
        struct sink *s = &o->sinks[k];
        if (s->type == SOTH_SINK_NATS) {
            nats_sink_kick(s->ns);
            continue;
        }
        if (s->type == SOTH_SINK_JSONL) {
            if (atomic_load_explicit(&s->jr->tail, memory_order_relaxed) !=
                atomic_load_explicit(&s->jr->head, memory_order_relaxed))
                jsonl_wake(s->jr);
            continue;
        }
        sink_accept(s);
        for (unsigned i = s->n_clients; i-- > 0;)
            client_flush(s, i);
    }
}

/* ==========================================================================================
 * the telemetry thread
 * ========================================================================================== */

/** A learning signal: the hook counts it and the record carries the counts it returns. */
static void tls_failed_hook(struct soth_observe *o, struct ev_rec *r)
{
    struct soth_ev_tls_failure ev;
    unsigned char *counts;
    if (soth_ev_rec_tls_failed(r, r->len, &ev, &counts) < 0)
        return;
    uint32_t host = 0, global = 0;
    o->hooks.on_tls_failed(o->hooks.ctx, &ev, &host, &global);
    uint64_t h = host, g = global;
    memcpy(counts, &h, 8);
    memcpy(counts + 8, &g, 8);
}

/** Drain up to `budget` records from every ring. Returns how many were taken. */
static size_t drain(struct soth_observe *o, size_t budget)
{
    size_t total = 0;
    bool lines = o->n_sinks > 0 && sinks_want_lines(o);
    struct sink *direct = NULL; /* the first NATS event sink: see sinks_put_event */
    for (size_t k = 0; lines && k < o->n_sinks && direct == NULL; k++)
        if (o->sinks[k].type == SOTH_SINK_NATS && o->sinks[k].format == SOTH_SINK_FMT_EVENT)
            direct = &o->sinks[k];
    for (unsigned i = 0; i < o->n_prods; i++) {
        struct soth_ev_producer *p = &o->prods[i];
        uint64_t head = atomic_load_explicit(&p->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&p->pub_tail, memory_order_acquire);
        size_t n = 0;
        while (head < tail && n < budget) {
            struct ev_rec *r = (struct ev_rec *)(p->data + (head & p->mask));
            uint32_t len = r->len;
            if (r->type != REC_PAD) {
                if (r->type == SOTH_EV_TLS_HANDSHAKE_FAILED && o->hooks.on_tls_failed != NULL)
                    tls_failed_hook(o, r);
                ring_write(o, r, ++o->gseq);
                if (o->xasm != NULL)
                    soth_xasm_feed(o->xasm, r, len);
                if (lines) {
                    r->gseq = o->gseq; /* the JSON encoder reads it from the record */
                    sinks_put_event(o, direct, r, len);
                }
                n++;
            }
            head += len;
        }
        /* Release: the producer may reuse the bytes only after we are done reading them. */
        atomic_store_explicit(&p->head, head, memory_order_release);
        total += n;
        ring_publish(o);
    }
    return total;
}

static bool rings_empty(struct soth_observe *o)
{
    for (unsigned i = 0; i < o->n_prods; i++) {
        struct soth_ev_producer *p = &o->prods[i];
        if (atomic_load_explicit(&p->head, memory_order_relaxed) !=
            atomic_load_explicit(&p->pub_tail, memory_order_seq_cst))
            return false;
    }
    return true;
}

static void telemetry_sleep(struct soth_observe *o)
{
    struct pollfd pfd[1 + 4 * (1 + MAX_UDS_CLIENTS)];
    nfds_t np = 0;
    pfd[np++] = (struct pollfd){.fd = o->efd, .events = POLLIN};
    for (size_t k = 0; k < o->n_sinks && k < 4; k++) {
        struct sink *s = &o->sinks[k];
        if (s->type != SOTH_SINK_UDS)
            continue;
        pfd[np++] = (struct pollfd){.fd = s->fd, .events = POLLIN};
        for (unsigned i = 0; i < s->n_clients; i++)
            if (s->clients[i].off < s->clients[i].buf.len)
                pfd[np++] = (struct pollfd){.fd = s->clients[i].fd, .events = POLLOUT};
    }
    poll(pfd, np, IDLE_POLL_MS);
    uint64_t v;
    ssize_t r = read(o->efd, &v, sizeof(v));
    (void)r;
}

#define LINGER_MS     5   /* poll period while lingering */
#define LINGER_ROUNDS 200 /* polls (1 s) before the consumer sleeps on its eventfd */

static void *telemetry_main(void *arg)
{
    struct soth_observe *o = arg;
    pthread_setname_np(pthread_self(), "soth-telemetry");
    unsigned idle = 0;
    for (;;) {
        size_t n = drain(o, DRAIN_BATCH);
        if (o->n_sinks)
            sinks_flush(o);
        if (o->hooks.on_tick != NULL)
            o->hooks.on_tick(o->hooks.ctx);
        if (n > 0) {
            idle = 0;
            continue;
        }
        if (atomic_load_explicit(&o->stop, memory_order_acquire)) {
            if (rings_empty(o))
                break;
            continue;
        }
        /*
         * Linger before announcing sleep: under steady traffic a batch comes every few hundred
         * microseconds, and a consumer that slept after each one would make every worker flush
         * pay an eventfd write (a syscall and a wake-up) on the data path. Polling every
         * LINGER_MS for LINGER_ROUNDS costs this thread ~200 wake-ups/s (a 1 ms period cost a
         * fifth of the proxy's CPU in the peer benchmark) and bounds the added event latency to
         * LINGER_MS; a producer whose ring is over a quarter full still writes the eventfd
         * (soth_ev_flush), so a burst is drained at once.
         */
        if (idle < LINGER_ROUNDS) {
            idle++;
            struct pollfd pfd = {.fd = o->efd, .events = POLLIN};
            if (poll(&pfd, 1, LINGER_MS) > 0) {
                uint64_t v;
                ssize_t r = read(o->efd, &v, sizeof(v));
                (void)r;
            }
            continue;
        }
        /* Announce sleep, then look once more (Dekker with soth_ev_flush: seq_cst both). */
        atomic_store_explicit(&o->sleeping, 1, memory_order_seq_cst);
        if (rings_empty(o) && !atomic_load_explicit(&o->stop, memory_order_relaxed))
            telemetry_sleep(o);
        atomic_store_explicit(&o->sleeping, 0, memory_order_relaxed);
    }
    if (o->n_sinks)
        sinks_flush(o);
    return NULL;
}

/* ==========================================================================================
 * metrics
 * ========================================================================================== */

static void metric_line(struct jbuf *b, const char *name, const char *labels, uint64_t v)
{
    char line[256];
    int n = snprintf(line, sizeof(line), "%s%s %llu\n", name, labels, (unsigned long long)v);
    jbuf_put(b, line, (size_t)n);
}

static void metric_type(struct jbuf *b, const char *name, const char *type, const char *help)
{
    char line[320];
    int n = snprintf(line, sizeof(line), "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    jbuf_put(b, line, (size_t)n);
}

#define SUM(field)                                                                                 \
    ({                                                                                             \
        uint64_t s_ = 0;                                                                           \
        for (unsigned w_ = 0; w_ < o->n_prods; w_++)                                               \
            s_ += (uint64_t)atomic_load_explicit(&o->metrics[w_].field, memory_order_relaxed);     \
        s_;                                                                                        \
    })

static void render_metrics(struct soth_observe *o, struct jbuf *b)
{
    metric_type(b, "soth_connections_total", "counter", "Client connections accepted.");
    metric_line(b, "soth_connections_total", "", SUM(connections_total));
    metric_type(b, "soth_active_connections", "gauge", "Client connections open now.");
    int64_t active = 0;
    for (unsigned w = 0; w < o->n_prods; w++)
        active += atomic_load_explicit(&o->metrics[w].active_connections, memory_order_relaxed);
    metric_line(b, "soth_active_connections", "", active > 0 ? (uint64_t)active : 0);
    metric_type(b, "soth_bytes_total", "counter", "Bytes relayed, by direction.");
    metric_line(b, "soth_bytes_total", "{direction=\"client_to_server\"}",
                SUM(bytes_client_to_server));
    metric_line(b, "soth_bytes_total", "{direction=\"server_to_client\"}",
                SUM(bytes_server_to_client));
    metric_type(b, "soth_requests_total", "counter", "Requests, by protocol.");
    for (int p = 0; p < SOTH_PROTO_COUNT; p++) {
        char l[64];
        snprintf(l, sizeof(l), "{protocol=\"%s\"}", soth_protocol_names[p]);
        metric_line(b, "soth_requests_total", l, SUM(requests[p]));
    }
    metric_type(b, "soth_tls_handshake_failures_total", "counter",
                "TLS handshake failures, by side and reason.");
    for (int s = 0; s < SOTH_LEG_COUNT; s++) {
        for (int r = 0; r < SOTH_TLSF_COUNT; r++) {
            char l[96];
            snprintf(l, sizeof(l), "{side=\"%s\",reason=\"%s\"}", soth_leg_names[s],
                     soth_tls_failure_names[r]);
            metric_line(b, "soth_tls_handshake_failures_total", l, SUM(tls_failures[s][r]));
        }
    }
    metric_type(b, "soth_quic_flows_total", "counter",
                "QUIC flows, by decision (dropped: over quic.max_flows).");
    static const char *const quic_decisions[] = {"tunnel", "block", "dropped"};
    for (int d = 0; d < 3; d++) {
        char l[64];
        snprintf(l, sizeof(l), "{decision=\"%s\"}", quic_decisions[d]);
        metric_line(b, "soth_quic_flows_total", l, SUM(quic_flows[d + 1]));
    }
    metric_type(b, "soth_quic_datagrams_total", "counter", "QUIC datagrams relayed, by direction.");
    for (int s = 0; s < SOTH_LEG_COUNT; s++) {
        char l[64];
        snprintf(l, sizeof(l), "{direction=\"%s\"}", soth_direction_names[s]);
        metric_line(b, "soth_quic_datagrams_total", l, SUM(quic_datagrams[s]));
    }
    metric_type(b, "soth_leaf_cache_hits_total", "counter", "Leaf certificate cache hits.");
    metric_line(b, "soth_leaf_cache_hits_total", "", SUM(leaf_cache_hits));
    metric_type(b, "soth_leaf_cache_misses_total", "counter", "Leaf certificate cache misses.");
    metric_line(b, "soth_leaf_cache_misses_total", "", SUM(leaf_cache_misses));
    metric_type(b, "soth_upstream_pool_total", "counter",
                "Upstream connection pool (reverse https mode), by result.");
    static const char *const pool_results[] = {
        "hit", "miss", "stale", "expired", "evicted", "closed_max_requests", "retried"};
    for (int r = 0; r < 7; r++) {
        char l[64];
        snprintf(l, sizeof(l), "{result=\"%s\"}", pool_results[r]);
        metric_line(b, "soth_upstream_pool_total", l, SUM(upstream_pool[r]));
    }
    int64_t pool_idle = 0;
    for (unsigned w = 0; w < o->n_prods; w++)
        pool_idle += atomic_load_explicit(&o->metrics[w].upstream_pool_idle, memory_order_relaxed);
    metric_type(b, "soth_upstream_pool_idle", "gauge",
                "Idle upstream connections kept by the pool, all workers.");
    metric_line(b, "soth_upstream_pool_idle", "", pool_idle > 0 ? (uint64_t)pool_idle : 0);
    metric_type(b, "soth_worker_waits_total", "counter",
                "Waits of the workers for work: seen by the busy poll, in the kernel, or in "
                "the kernel batched.");
    metric_line(b, "soth_worker_waits_total", "{result=\"polled\"}", SUM(waits_polled));
    metric_line(b, "soth_worker_waits_total", "{result=\"blocked\"}", SUM(waits_blocked));
    metric_line(b, "soth_worker_waits_total", "{result=\"batched\"}", SUM(waits_batched));
    metric_type(b, "soth_busy_poll_seconds_total", "counter",
                "Time the workers spent in the busy poll's watch (busy_poll_us).");
    {
        uint64_t ns = SUM(busy_poll_ns);
        char line[96];
        int n = snprintf(line, sizeof(line), "soth_busy_poll_seconds_total %llu.%09llu\n",
                         (unsigned long long)(ns / 1000000000u),
                         (unsigned long long)(ns % 1000000000u));
        jbuf_put(b, line, (size_t)n);
    }
    metric_type(b, "soth_events_dropped_total", "counter",
                "Events dropped by workers on a full event ring.");
    metric_line(b, "soth_events_dropped_total", "", SUM(events_dropped));
    metric_type(b, "soth_events_written_total", "counter",
                "Events written to the event ring file (the last gseq).");
    metric_line(b, "soth_events_written_total", "",
                atomic_load_explicit(&o->hdr->last_gseq, memory_order_relaxed));
    metric_type(b, "soth_sink_dropped_total", "counter",
                "Events a sink dropped (its consumer fell behind or its server was away), by "
                "sink.");
    for (size_t k = 0; k < o->n_sinks; k++) {
        char l[64];
        snprintf(l, sizeof(l), "{sink=\"%s:%u\"}", soth_sink_type_names[o->sinks[k].type],
                 o->sinks[k].index);
        metric_line(b, "soth_sink_dropped_total", l, sink_dropped(&o->sinks[k]));
    }
    metric_type(b, "soth_bridge_lines_total", "counter", "Lines read from bridge clients.");
    metric_line(b, "soth_bridge_lines_total", "",
                atomic_load_explicit(&o->bridge.lines, memory_order_relaxed));
    metric_type(b, "soth_bridge_refused_total", "counter",
                "Bridge lines (and connections) refused, by reason.");
    for (int r = 0; r < SOTH_BRIDGE_R_COUNT; r++) {
        char l[64];
        snprintf(l, sizeof(l), "{reason=\"%s\"}", soth_bridge_refusal_names[r]);
        metric_line(b, "soth_bridge_refused_total", l,
                    atomic_load_explicit(&o->bridge.refused[r], memory_order_relaxed));
    }
    metric_type(b, "soth_bridge_clients", "gauge", "Bridge clients connected now.");
    metric_line(b, "soth_bridge_clients", "",
                atomic_load_explicit(&o->bridge.clients, memory_order_relaxed));
    metric_type(b, "soth_bridge_flows", "gauge", "Bridge flows open now.");
    metric_line(b, "soth_bridge_flows", "",
                atomic_load_explicit(&o->bridge.flows, memory_order_relaxed));
    metric_type(b, "soth_sink_pending", "gauge",
                "Events a NATS sink holds: queued, or published and not yet acknowledged.");
    for (size_t k = 0; k < o->n_sinks; k++) {
        if (o->sinks[k].ns == NULL)
            continue;
        char l[64];
        snprintf(l, sizeof(l), "{sink=\"nats:%u\"}", o->sinks[k].index);
        metric_line(b, "soth_sink_pending", l, nats_sink_pending(o->sinks[k].ns));
    }
}

struct soth_metrics_out {
    struct jbuf *b;
};

void soth_metrics_out_type(struct soth_metrics_out *o, const char *name, const char *type,
                           const char *help)
{
    metric_type(o->b, name, type, help);
}

void soth_metrics_out_line(struct soth_metrics_out *o, const char *name, const char *labels,
                           uint64_t v)
{
    metric_line(o->b, name, labels, v);
}

void soth_observe_set_metrics_source(struct soth_observe *o,
                                     void (*fn)(void *ctx, struct soth_metrics_out *out), void *ctx)
{
    o->metrics_fn = fn;
    o->metrics_ctx = ctx;
}

static void metrics_serve(struct soth_observe *o, int c, struct jbuf *body, struct jbuf *resp)
{
    struct timeval tv = {.tv_sec = 2};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    char req[2048];
    size_t got = 0;
    while (got < sizeof(req) - 1) {
        ssize_t n = recv(c, req + got, sizeof(req) - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    req[got] = '\0';
    body->len = resp->len = 0;
    char head[256];
    int hn;
    bool get = strncmp(req, "GET /metrics", 12) == 0 && (req[12] == ' ' || req[12] == '?');
    if (get) {
        render_metrics(o, body);
        if (o->metrics_fn != NULL) {
            struct soth_metrics_out mo = {body};
            o->metrics_fn(o->metrics_ctx, &mo);
        }
        hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      body->len);
    } else {
        jbuf_put(body, "not found\n", 10);
        hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      body->len);
    }
    jbuf_put(resp, head, (size_t)hn);
    jbuf_put(resp, body->p, body->len);
    size_t off = 0;
    while (off < resp->len) {
        ssize_t n = send(c, resp->p + off, resp->len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
}

/* One scrape at a time on a thread of its own: blocking sockets with timeouts are fine here. */
static void *metrics_main(void *arg)
{
    struct soth_observe *o = arg;
    pthread_setname_np(pthread_self(), "soth-metrics");
    struct jbuf body = {0}, resp = {0};
    while (!atomic_load(&o->metrics_stop)) {
        struct pollfd pfd = {.fd = o->metrics_fd, .events = POLLIN};
        if (poll(&pfd, 1, IDLE_POLL_MS) <= 0)
            continue;
        int c = accept4(o->metrics_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c == -1)
            continue;
        metrics_serve(o, c, &body, &resp);
        close(c);
    }
    jbuf_free(&body);
    jbuf_free(&resp);
    return NULL;
}

/* ==========================================================================================
 * lifecycle
 * ========================================================================================== */

void soth_observe_set_hooks(struct soth_observe *o, const struct soth_observe_hooks *h)
{
    o->hooks = *h;
}

void soth_observe_wake(struct soth_observe *o)
{
    uint64_t one = 1;
    ssize_t n = write(o->efd, &one, sizeof(one));
    (void)n;
}

int soth_observe_start(struct soth_observe *o)
{
    int rc;
    for (size_t k = 0; k < o->n_sinks; k++) {
        struct sink *s = &o->sinks[k];
        if (s->ns != NULL) {
            rc = nats_sink_start(s->ns);
            if (rc < 0) {
                rc = -rc;
                goto fail;
            }
            continue;
        }
        if (s->type != SOTH_SINK_JSONL || s->jr->started)
            continue;
        rc = pthread_create(&s->jr->thr, NULL, jsonl_main, s);
        if (rc != 0)
            goto fail;
        s->jr->started = true;
    }
    rc = pthread_create(&o->thr, NULL, telemetry_main, o);
    if (rc != 0)
        goto fail;
    o->started = true;
    if (o->metrics_fd >= 0) {
        rc = pthread_create(&o->metrics_thr, NULL, metrics_main, o);
        if (rc != 0)
            goto fail;
        o->metrics_started = true;
    }
    return 0;
fail:
    soth_observe_stop(o);
    return -rc;
}

static void sinks_stop(struct soth_observe *o)
{
    for (size_t k = 0; k < o->n_sinks; k++) {
        nats_sink_stop(o->sinks[k].ns);
        struct jsonl_ring *jr = o->sinks[k].jr;
        if (jr == NULL || !jr->started)
            continue;
        atomic_store_explicit(&jr->stop, 1, memory_order_release);
        uint64_t one = 1;
        ssize_t n = write(jr->efd, &one, sizeof(one));
        (void)n;
        pthread_join(jr->thr, NULL);
        jr->started = false;
    }
}

void soth_observe_stop(struct soth_observe *o)
{
    if (o == NULL)
        return;
    if (o->started) {
        /* Workers have stopped (contract): publish what they built but did not flush. */
        for (unsigned i = 0; i < o->n_prods; i++)
            atomic_store_explicit(&o->prods[i].pub_tail, o->prods[i].tail, memory_order_release);
        atomic_store_explicit(&o->stop, 1, memory_order_release);
        uint64_t one = 1;
        ssize_t n = write(o->efd, &one, sizeof(one));
        (void)n;
        pthread_join(o->thr, NULL);
        o->started = false;
    }
    sinks_stop(o); /* after the telemetry thread queued its last line */
    if (o->metrics_started) {
        atomic_store(&o->metrics_stop, 1);
        pthread_join(o->metrics_thr, NULL);
        o->metrics_started = false;
    }
    if (o->hdr != NULL)
        msync(o->hdr, RING_HDR_SIZE + o->ring_cap, MS_ASYNC);
}

void soth_observe_free(struct soth_observe *o)
{
    if (o == NULL)
        return;
    soth_observe_stop(o);
    if (o->prods) {
        for (unsigned i = 0; i < o->n_prods; i++)
            if (o->prods[i].data)
                munmap(o->prods[i].data, o->prods[i].cap);
    }
    free(o->prods);
    free(o->metrics);
    if (o->hdr)
        munmap(o->hdr, RING_HDR_SIZE + o->ring_cap);
    if (o->ring_fd >= 0)
        close(o->ring_fd);
    for (size_t k = 0; k < o->n_sinks; k++) {
        struct sink *s = &o->sinks[k];
        nats_sink_free(s->ns);
        while (s->n_clients > 0)
            client_close(s, s->n_clients - 1);
        if (s->fd >= 0)
            close(s->fd);
        if (s->type == SOTH_SINK_UDS && s->path && s->fd >= 0)
            unlink(s->path);
        if (s->jr != NULL) {
            free(s->jr->data);
            if (s->jr->efd >= 0)
                close(s->jr->efd);
            free(s->jr);
        }
        free(s->path);
    }
    free(o->sinks);
    soth_xasm_free(o->xasm);
    if (o->efd >= 0)
        close(o->efd);
    if (o->metrics_fd >= 0)
        close(o->metrics_fd);
    jbuf_free(&o->line);
    free(o->chunk_first);
    free(o->ring_path);
    free(o);
}
