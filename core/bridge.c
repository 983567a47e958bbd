/*
 * The bridge thread (docs/bridge.md, "The thread"): one epoll over the listening Unix socket,
 * its clients, an eventfd for stop and a timerfd for idle flows and clients. Lines go to the
 * pure part (core/bridge_line.c), which emits through the bridge's own producer. We only read;
 * every socket is non-blocking, so no client can hold the thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include "bridge.h"
#include "bridge_line.h"

#define CLIENTS_MAX  64
#define BUF_INITIAL  16384u
#define TICK_MS      250
#define READS_PER_EV 16 /* reads of one client per wakeup: level-triggered, the rest next time */

enum { TAG_LISTEN = 0, TAG_STOP, TAG_TIMER, TAG_CLIENT };

struct client {
    int fd; /* -1: free slot */
    char *buf;
    size_t len, cap;
    uint64_t last_ns; /* monotonic time of the last byte */
};

struct soth_bridge {
    struct soth_bline *bl;
    struct soth_ev_producer *prod;
    struct soth_bridge_metrics *bm;
    char *path;
    int lfd, efd, tfd, epfd;
    uint64_t idle_ns;
    unsigned n_clients;
    pthread_t thr;
    struct client clients[CLIENTS_MAX];
};

static void set_clients_gauge(struct soth_bridge *br)
{
    atomic_store_explicit(&br->bm->clients, br->n_clients, memory_order_relaxed);
}

static void client_close(struct soth_bridge *br, struct client *c)
{
    epoll_ctl(br->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    br->n_clients--;
    set_clients_gauge(br);
}

static void on_accept(struct soth_bridge *br, uint64_t now)
{
    for (int n = 0; n < 64; n++) {
        int fd = accept4(br->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1)
            return; /* EAGAIN, or an error of that connection only */
        struct client *c = NULL;
        for (unsigned i = 0; i < CLIENTS_MAX && c == NULL; i++)
            if (br->clients[i].fd < 0)
                c = &br->clients[i];
        if (c == NULL) {
            close(fd); /* docs/bridge.md: accepted and closed at once, counted */
            soth_bline_refuse(br->bl, SOTH_BRIDGE_R_TOO_MANY_CLIENTS, "64 clients connected", now);
            continue;
        }
        c->buf = malloc(BUF_INITIAL);
        if (c->buf == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->cap = BUF_INITIAL;
        c->len = 0;
        c->last_ns = now;
        struct epoll_event ev = {.events = EPOLLIN,
                                 .data.u64 = TAG_CLIENT + (uint64_t)(c - br->clients)};
        if (epoll_ctl(br->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
            close(fd);
            free(c->buf);
            c->buf = NULL;
            c->fd = -1;
            continue;
        }
        br->n_clients++;
        set_clients_gauge(br);
    }
}

/** Hand every complete line of c's buffer over. false: the client is to be closed. */
static bool take_lines(struct soth_bridge *br, struct client *c, uint64_t now)
{
    size_t start = 0;
    for (;;) {
        char *nl = memchr(c->buf + start, '\n', c->len - start);
        if (nl == NULL)
            break;
        size_t end = (size_t)(nl - c->buf), len = end - start;
        if (len > 0 && c->buf[end - 1] == '\r')
            len--;
        if (len > 0) {
            int rc = soth_bline_handle(br->bl, c->buf + start, len, now);
            if (rc != 0 && soth_bline_refusal_closes(rc))
                return false; /* logged (rate-limited) with the refusal */
        }
        start = end + 1;
    }
    memmove(c->buf, c->buf + start, c->len - start);
    c->len -= start;
    if (c->len > SOTH_BRIDGE_LINE_MAX) {
        /* Counted like any refusal: handle() refuses a length over the bound unparsed. */
        soth_bline_handle(br->bl, c->buf, SOTH_BRIDGE_LINE_MAX + 1, now);
        return false;
    }
    return true;
}

static void on_client(struct soth_bridge *br, struct client *c, uint64_t now)
{
    for (int r = 0; r < READS_PER_EV; r++) {
        if (c->cap - c->len < 4096 && c->cap < SOTH_BRIDGE_LINE_MAX + 2) {
            size_t ncap = c->cap * 2;
            if (ncap > SOTH_BRIDGE_LINE_MAX + 2)
                ncap = SOTH_BRIDGE_LINE_MAX + 2;
            char *nb = realloc(c->buf, ncap);
            if (nb == NULL) {
                client_close(br, c);
                return;
            }
            c->buf = nb;
            c->cap = ncap;
        }
        ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR)) {
            client_close(br, c);
            return;
        }
        if (n == -1)
            break;
        c->len += (size_t)n;
        c->last_ns = now;
        if (!take_lines(br, c, now)) {
            client_close(br, c);
            return;
        }
    }
    /* After a long line, give the memory back. */
    if (c->cap > BUF_INITIAL && c->len < BUF_INITIAL / 2) {
        char *nb = realloc(c->buf, BUF_INITIAL);
        if (nb != NULL) {
            c->buf = nb;
            c->cap = BUF_INITIAL;
        }
    }
}

static void *bridge_main(void *arg)
{
    struct soth_bridge *br = arg;
    pthread_setname_np(pthread_self(), "soth-bridge");
    struct epoll_event evs[32];
    for (;;) {
        int n = epoll_wait(br->epfd, evs, 32, -1);
        if (n == -1 && errno != EINTR)
            break;
        uint64_t now = soth_mono_ns();
        bool stop = false;
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_STOP) {
                stop = true;
            } else if (tag == TAG_LISTEN) {
                on_accept(br, now);
            } else if (tag == TAG_TIMER) {
                uint64_t v;
                ssize_t r = read(br->tfd, &v, sizeof(v));
                (void)r;
                soth_bline_expire(br->bl, now);
                for (unsigned k = 0; k < CLIENTS_MAX; k++)
                    if (br->clients[k].fd >= 0 && now - br->clients[k].last_ns >= br->idle_ns)
                        client_close(br, &br->clients[k]);
            } else if (tag >= TAG_CLIENT && tag < TAG_CLIENT + CLIENTS_MAX) {
                struct client *c = &br->clients[tag - TAG_CLIENT];
                if (c->fd >= 0)
                    on_client(br, c, now);
            }
        }
        soth_ev_flush(br->prod);
        if (stop)
            break;
    }
    return NULL;
}

static void bridge_free(struct soth_bridge *br)
{
    for (unsigned i = 0; i < CLIENTS_MAX; i++)
        if (br->clients[i].fd >= 0)
            client_close(br, &br->clients[i]);
    /* The thread is gone (or never ran): this thread may use the producer now. */
    soth_bline_free(br->bl);
    soth_ev_flush(br->prod);
    if (br->lfd >= 0) {
        close(br->lfd);
        unlink(br->path);
    }
    if (br->efd >= 0)
        close(br->efd);
    if (br->tfd >= 0)
        close(br->tfd);
    if (br->epfd >= 0)
        close(br->epfd);
    free(br->path);
    free(br);
}

static int listen_unix(const char *path, char *err, size_t err_len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, err_len, "bridge.listen: path too long (at most %zu bytes): %s",
                 sizeof(sa.sun_path) - 1, path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, err_len, "bridge.listen: socket: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a stale socket of an earlier run */
    /* Mode 0600 from the start: the umask is narrowed around bind, then the mode set again. */
    mode_t old = umask(077);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int bind_errno = errno;
    umask(old);
    if (rc == -1) {
        snprintf(err, err_len, "bridge.listen: cannot bind %s: %s", path, strerror(bind_errno));
        close(fd);
        return -1;
    }
    if (chmod(path, 0600) == -1 || listen(fd, 128) == -1) {
        snprintf(err, err_len, "bridge.listen: %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

struct soth_bridge *soth_bridge_start(struct soth_engine *e, struct soth_ev_producer *prod,
                                      char *err, size_t err_len)
{
    const struct soth_config *cfg = e->cfg;
    struct soth_bridge *br = calloc(1, sizeof(*br));
    if (br == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    br->lfd = br->efd = br->tfd = br->epfd = -1;
    for (unsigned i = 0; i < CLIENTS_MAX; i++)
        br->clients[i].fd = -1;
    br->prod = prod;
    br->bm = soth_observe_bridge_counters(e->obs);
    br->idle_ns = (uint64_t)(cfg->timeouts.idle_ms ? cfg->timeouts.idle_ms : 60000) * 1000000ull;
    br->path = strdup(cfg->bridge.listen);
    struct soth_bline_params p = {.prod = prod,
                                  .m = soth_observe_bridge_metrics(e->obs),
                                  .bm = br->bm,
                                  .learning_enabled = cfg->tls.learning.enabled,
                                  .body_capture_bytes = cfg->events.body_capture_bytes,
                                  .idle_ms = cfg->timeouts.idle_ms};
    br->bl = soth_bline_new(&p);
    if (br->path == NULL || br->bl == NULL) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    br->lfd = listen_unix(br->path, err, err_len);
    if (br->lfd < 0)
        goto fail;
    br->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    br->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    br->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (br->efd == -1 || br->tfd == -1 || br->epfd == -1) {
        snprintf(err, err_len, "bridge: %s", strerror(errno));
        goto fail;
    }
    struct itimerspec its = {.it_interval = {.tv_nsec = TICK_MS * 1000000L},
                             .it_value = {.tv_nsec = TICK_MS * 1000000L}};
    timerfd_settime(br->tfd, 0, &its, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
    epoll_ctl(br->epfd, EPOLL_CTL_ADD, br->lfd, &ev);
    ev.data.u64 = TAG_STOP;
    epoll_ctl(br->epfd, EPOLL_CTL_ADD, br->efd, &ev);
    ev.data.u64 = TAG_TIMER;
    epoll_ctl(br->epfd, EPOLL_CTL_ADD, br->tfd, &ev);
    int rc = pthread_create(&br->thr, NULL, bridge_main, br);
    if (rc != 0) {
        snprintf(err, err_len, "bridge thread: %s", strerror(rc));
        goto fail;
    }
    SOTH_LOG(SOTH_LOG_INFO, -1, 0, "bridge: listening on %s", br->path);
    return br;
fail:
    bridge_free(br);
    return NULL;
}

void soth_bridge_stop(struct soth_bridge *br)
{
    if (br == NULL)
        return;
    uint64_t one = 1;
    ssize_t n = write(br->efd, &one, sizeof(one));
    (void)n;
    pthread_join(br->thr, NULL);
    bridge_free(br);
}
