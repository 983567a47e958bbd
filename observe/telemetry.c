/*
 * The consumer side: one telemetry thread drains every worker's SPSC ring, assigns gseq, writes
 * the mmap'ed ring file (docs/event-ring.md) and the sinks; a metrics thread answers
 * GET /metrics. Neither ever blocks a worker: workers only see their own ring.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "observe_int.h"

#define PROD_RING_BYTES (4u << 20) /* per worker */
#define SINK_BUF_MAX    (1u << 20) /* per sink client: beyond this, lines are dropped */
#define MAX_UDS_CLIENTS 64
#define DRAIN_BATCH     4096

struct sink_client {
    int fd;
    struct jbuf buf;
    size_t off; /* bytes of buf already written */
};

struct sink {
    enum soth_sink_type type;
    char *path;
    int fd; /* jsonl: the file; uds: the listening socket */
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
    uint64_t cap = 1;
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
    if (ftruncate(fd, (off_t)total) == -1) {
        snprintf(err, err_len, "event ring %s: ftruncate: %s", o->ring_path, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        snprintf(err, err_len, "event ring %s: mmap: %s", o->ring_path, strerror(errno));
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
    atomic_thread_fence(memory_order_release);
    o->hdr->magic = RING_MAGIC; /* last: a reader never sees a half-initialised header */
    if (rename(tmp, o->ring_path) == -1) {
        snprintf(err, err_len, "event ring %s: rename: %s", o->ring_path, strerror(errno));
        munmap(m, total);
        close(fd);
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int sink_open(struct sink *s, const struct soth_sink_cfg *cfg, char *err, size_t err_len)
{
    s->type = cfg->type;
    s->path = strdup(cfg->path);
    s->fd = -1;
    parent_dir(cfg->path, 0755);
    if (cfg->type == SOTH_SINK_JSONL) {
        s->fd = open(cfg->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644);
        if (s->fd == -1) {
            snprintf(err, err_len, "events.sinks: jsonl %s: %s", cfg->path, strerror(errno));
            return -1;
        }
        return 0;
    }
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", cfg->path);
    unlink(cfg->path);
    if (s->fd == -1 || bind(s->fd, (struct sockaddr *)&a, sizeof(a)) == -1 ||
        listen(s->fd, 64) == -1) {
        snprintf(err, err_len, "events.sinks: uds %s: %s", cfg->path, strerror(errno));
        return -1;
    }
    return 0;
}

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
    o->ring_path =
        cfg->events.ring_path ? strdup(cfg->events.ring_path) : soth_config_default_ring_path();
    o->prods = aligned_alloc(SOTH_CACHELINE, sizeof(*o->prods) * (n_workers ? n_workers : 1));
    o->metrics = aligned_alloc(SOTH_CACHELINE, sizeof(*o->metrics) * (n_workers ? n_workers : 1));
    if (o->prods == NULL || o->metrics == NULL)
        goto oom;
    memset(o->metrics, 0, sizeof(*o->metrics) * n_workers);
    for (unsigned i = 0; i < n_workers; i++) {
        struct soth_ev_producer *p = &o->prods[i];
        memset(p, 0, sizeof(*p));
        p->cap = PROD_RING_BYTES;
        p->mask = p->cap - 1;
        p->data = mmap(NULL, p->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p->data == MAP_FAILED) {
            p->data = NULL;
            goto oom;
        }
        p->obs = o;
        p->m = &o->metrics[i];
        p->worker = i;
    }
    o->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (o->efd == -1)
        goto oom;
    if (ring_file_open(o, cfg->events.ring_size_mb, err, err_len) < 0)
        goto fail;
    o->sinks = calloc(cfg->events.n_sinks ? cfg->events.n_sinks : 1, sizeof(struct sink));
    if (o->sinks == NULL)
        goto oom;
    for (size_t i = 0; i < cfg->events.n_sinks; i++) {
        o->n_sinks++;
        if (sink_open(&o->sinks[i], &cfg->events.sinks[i], err, err_len) < 0)
            goto fail;
    }
    if (cfg->metrics.listen_text != NULL) {
        const struct soth_hostport *hp = &cfg->metrics.listen;
        int fd = socket(hp->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd == -1 || bind(fd, (const struct sockaddr *)&hp->addr, hp->addr_len) == -1 ||
            listen(fd, 64) == -1) {
            snprintf(err, err_len, "metrics.listen %s: %s", cfg->metrics.listen_text,
                     strerror(errno));
            if (fd != -1)
                close(fd);
            goto fail;
        }
        o->metrics_fd = fd;
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

/* ==========================================================================================
 * the ring file writer
 * ========================================================================================== */

/** Append one record (gseq already set). Advances `oldest` past what it is about to overwrite. */
static void ring_write(struct soth_observe *o, struct ev_rec *r)
{
    uint64_t w = atomic_load_explicit(&o->hdr->write_pos, memory_order_relaxed);
    uint64_t off = w & (o->ring_cap - 1);
    if (off + r->len > o->ring_cap) {
        /* Pad to the end so every record is contiguous in the mapping. */
        struct ev_rec pad;
        memset(&pad, 0, sizeof(pad));
        pad.len = (uint32_t)(o->ring_cap - off);
        pad.type = REC_PAD;
        pad.pos = w;
        uint64_t oldest = atomic_load_explicit(&o->hdr->oldest, memory_order_relaxed);
        while (oldest + o->ring_cap < w + pad.len) {
            const struct ev_rec *old =
                (const struct ev_rec *)(o->ring_data + (oldest & (o->ring_cap - 1)));
            oldest += old->len;
        }
        atomic_store_explicit(&o->hdr->oldest, oldest, memory_order_release);
        memcpy(o->ring_data + off, &pad, pad.len < sizeof(pad) ? pad.len : sizeof(pad));
        w += pad.len;
        atomic_store_explicit(&o->hdr->write_pos, w, memory_order_release);
        off = 0;
    }
    uint64_t end = w + r->len;
    uint64_t oldest = atomic_load_explicit(&o->hdr->oldest, memory_order_relaxed);
    while (oldest + o->ring_cap < end) {
        const struct ev_rec *old =
            (const struct ev_rec *)(o->ring_data + (oldest & (o->ring_cap - 1)));
        oldest += old->len;
    }
    /* Published before the bytes change: a reader that copied from below it knows. */
    atomic_store_explicit(&o->hdr->oldest, oldest, memory_order_release);
    atomic_thread_fence(memory_order_release);
    r->pos = w;
    memcpy(o->ring_data + off, r, r->len);
    atomic_store_explicit(&o->hdr->last_gseq, r->gseq, memory_order_relaxed);
    atomic_store_explicit(&o->hdr->write_pos, end, memory_order_release);
}

/* ==========================================================================================
 * sinks
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
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        client_close(s, i);
        return;
    }
    c->buf.len = 0;
    c->off = 0;
}

/** Queue one JSON line for a sink; a consumer that fell behind loses lines (counted). */
static void sink_put(struct soth_observe *o, struct sink *s, const char *line, size_t len)
{
    if (s->type == SOTH_SINK_JSONL) {
        ssize_t n = write(s->fd, line, len);
        if (n != (ssize_t)len)
            atomic_fetch_add_explicit(&o->sink_dropped, 1, memory_order_relaxed);
        return;
    }
    for (unsigned i = 0; i < s->n_clients; i++) {
        struct sink_client *c = &s->clients[i];
        if (c->buf.len - c->off + len > SINK_BUF_MAX) {
            atomic_fetch_add_explicit(&o->sink_dropped, 1, memory_order_relaxed);
            continue;
        }
        jbuf_put(&c->buf, line, len);
    }
}

static void sinks_flush(struct soth_observe *o)
{
    for (size_t k = 0; k < o->n_sinks; k++) {
        struct sink *s = &o->sinks[k];
        if (s->type != SOTH_SINK_UDS)
            continue;
        sink_accept(s);
        for (unsigned i = s->n_clients; i-- > 0;)
            client_flush(s, i);
    }
}

/* ==========================================================================================
 * the telemetry thread
 * ========================================================================================== */

/** Drain up to `budget` records from every ring. Returns how many were taken. */
static size_t drain(struct soth_observe *o, size_t budget)
{
    size_t total = 0;
    for (unsigned i = 0; i < o->n_workers; i++) {
        struct soth_ev_producer *p = &o->prods[i];
        uint64_t head = atomic_load_explicit(&p->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&p->pub_tail, memory_order_acquire);
        size_t n = 0;
        while (head < tail && n < budget) {
            struct ev_rec *r = (struct ev_rec *)(p->data + (head & p->mask));
            uint32_t len = r->len;
            if (r->type != REC_PAD) {
                r->gseq = ++o->gseq;
                ring_write(o, r);
                if (o->n_sinks > 0) {
                    o->line.len = 0;
                    if (soth_ev_rec_to_json(r, len, &o->line) == 0)
                        for (size_t k = 0; k < o->n_sinks; k++)
                            sink_put(o, &o->sinks[k], o->line.p, o->line.len);
                }
                n++;
            }
            head += len;
        }
        atomic_store_explicit(&p->head, head, memory_order_release);
        total += n;
    }
    return total;
}

static bool rings_empty(struct soth_observe *o)
{
    for (unsigned i = 0; i < o->n_workers; i++) {
        struct soth_ev_producer *p = &o->prods[i];
        if (atomic_load_explicit(&p->head, memory_order_relaxed) !=
            atomic_load_explicit(&p->pub_tail, memory_order_acquire))
            return false;
    }
    return true;
}

static void *telemetry_main(void *arg)
{
    struct soth_observe *o = arg;
    for (;;) {
        size_t n = drain(o, DRAIN_BATCH);
        if (o->n_sinks)
            sinks_flush(o);
        if (n > 0)
            continue;
        if (atomic_load(&o->stop)) {
            if (rings_empty(o))
                break;
            continue;
        }
        /* Announce sleep, then look once more (Dekker with soth_ev_flush). */
        atomic_store_explicit(&o->sleeping, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        if (!rings_empty(o)) {
            atomic_store_explicit(&o->sleeping, 0, memory_order_relaxed);
            continue;
        }
        struct pollfd pfd[1 + 8];
        nfds_t np = 0;
        pfd[np++] = (struct pollfd){.fd = o->efd, .events = POLLIN};
        for (size_t k = 0; k < o->n_sinks && np < 9; k++)
            if (o->sinks[k].type == SOTH_SINK_UDS)
                pfd[np++] = (struct pollfd){.fd = o->sinks[k].fd, .events = POLLIN};
        /* The timeout bounds the cost of a missed wake-up; wakes are normally immediate. */
        poll(pfd, np, 100);
        uint64_t v;
        ssize_t r = read(o->efd, &v, sizeof(v));
        (void)r;
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

#define SUM(field)                                                                                 \
    ({                                                                                             \
        uint64_t s_ = 0;                                                                           \
        for (unsigned w_ = 0; w_ < o->n_workers; w_++)                                             \
            s_ += (uint64_t)atomic_load_explicit(&o->metrics[w_].field, memory_order_relaxed);     \
        s_;                                                                                        \
    })

static void render_metrics(struct soth_observe *o, struct jbuf *b)
{
    jbuf_put(b, "# TYPE soth_connections_total counter\n", 38);
    metric_line(b, "soth_connections_total", "", SUM(connections_total));
    jbuf_put(b, "# TYPE soth_active_connections gauge\n", 37);
    metric_line(b, "soth_active_connections", "", SUM(active_connections));
    jbuf_put(b, "# TYPE soth_bytes_total counter\n", 32);
    metric_line(b, "soth_bytes_total", "{direction=\"client_to_server\"}",
                SUM(bytes_client_to_server));
    metric_line(b, "soth_bytes_total", "{direction=\"server_to_client\"}",
                SUM(bytes_server_to_client));
    jbuf_put(b, "# TYPE soth_requests_total counter\n", 35);
    for (int p = 0; p < SOTH_PROTO_COUNT; p++) {
        char l[64];
        snprintf(l, sizeof(l), "{protocol=\"%s\"}", soth_protocol_names[p]);
        metric_line(b, "soth_requests_total", l, SUM(requests[p]));
    }
    jbuf_put(b, "# TYPE soth_tls_handshake_failures_total counter\n", 49);
    for (int s = 0; s < SOTH_SIDE_COUNT; s++) {
        for (int r = 0; r < SOTH_TLSF_COUNT; r++) {
            char l[96];
            snprintf(l, sizeof(l), "{side=\"%s\",reason=\"%s\"}", soth_side_names[s],
                     soth_tls_failure_names[r]);
            metric_line(b, "soth_tls_handshake_failures_total", l, SUM(tls_failures[s][r]));
        }
    }
    jbuf_put(b, "# TYPE soth_leaf_cache_hits_total counter\n", 42);
    metric_line(b, "soth_leaf_cache_hits_total", "", SUM(leaf_cache_hits));
    jbuf_put(b, "# TYPE soth_leaf_cache_misses_total counter\n", 44);
    metric_line(b, "soth_leaf_cache_misses_total", "", SUM(leaf_cache_misses));
    jbuf_put(b, "# TYPE soth_events_dropped_total counter\n", 41);
    metric_line(b, "soth_events_dropped_total", "", SUM(events_dropped));
    jbuf_put(b, "# TYPE soth_sink_dropped_total counter\n", 39);
    metric_line(b, "soth_sink_dropped_total", "", atomic_load(&o->sink_dropped));
}

static void *metrics_main(void *arg)
{
    struct soth_observe *o = arg;
    struct jbuf body = {0}, resp = {0};
    while (!atomic_load(&o->stop)) {
        struct pollfd pfd = {.fd = o->metrics_fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        int c = accept4(o->metrics_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c == -1)
            continue;
        struct timeval tv = {.tv_sec = 2};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char req[2048];
        size_t got = 0;
        while (got < sizeof(req) - 1) {
            ssize_t n = recv(c, req + got, sizeof(req) - 1 - got, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[got] = '\0';
        body.len = resp.len = 0;
        char head[256];
        int hn;
        if (strncmp(req, "GET /metrics ", 13) == 0) {
            render_metrics(o, &body);
            hn = snprintf(head, sizeof(head),
                          "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          body.len);
        } else {
            jbuf_put(&body, "not found\n", 10);
            hn = snprintf(head, sizeof(head),
                          "HTTP/1.1 404 Not Found\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n",
                          body.len);
        }
        jbuf_put(&resp, head, (size_t)hn);
        jbuf_put(&resp, body.p, body.len);
        size_t off = 0;
        while (off < resp.len) {
            ssize_t n = send(c, resp.p + off, resp.len - off, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            off += (size_t)n;
        }
        close(c);
    }
    jbuf_free(&body);
    jbuf_free(&resp);
    return NULL;
}

/* ==========================================================================================
 * lifecycle
 * ========================================================================================== */

int soth_observe_start(struct soth_observe *o)
{
    int rc = pthread_create(&o->thr, NULL, telemetry_main, o);
    if (rc != 0)
        return -rc;
    o->started = true;
    if (o->metrics_fd >= 0) {
        rc = pthread_create(&o->metrics_thr, NULL, metrics_main, o);
        if (rc != 0)
            return -rc;
        o->metrics_started = true;
    }
    return 0;
}

void soth_observe_stop(struct soth_observe *o)
{
    if (o == NULL || !o->started)
        return;
    atomic_store(&o->stop, 1);
    uint64_t one = 1;
    ssize_t n = write(o->efd, &one, sizeof(one));
    (void)n;
    pthread_join(o->thr, NULL);
    o->started = false;
    if (o->metrics_started) {
        pthread_join(o->metrics_thr, NULL);
        o->metrics_started = false;
    }
}

void soth_observe_free(struct soth_observe *o)
{
    if (o == NULL)
        return;
    soth_observe_stop(o);
    if (o->prods) {
        for (unsigned i = 0; i < o->n_workers; i++)
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
        while (s->n_clients > 0)
            client_close(s, s->n_clients - 1);
        if (s->fd >= 0)
            close(s->fd);
        if (s->type == SOTH_SINK_UDS && s->path)
            unlink(s->path);
        free(s->path);
    }
    free(o->sinks);
    if (o->efd >= 0)
        close(o->efd);
    if (o->metrics_fd >= 0)
        close(o->metrics_fd);
    jbuf_free(&o->line);
    free(o->ring_path);
    free(o);
}
