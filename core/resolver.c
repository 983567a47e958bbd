/*
 * Name resolution, the worker's side and the resolver thread (core/resolver.h). A worker first
 * consults the config's `resolve` overrides, numeric literals and its own cache (resolve_fast);
 * only a miss goes to the resolver thread (soth_resolver_submit). The resolver thread
 * sleeps on its eventfd, drains every worker's request queue, calls getaddrinfo (blocking, which
 * is why it lives on its own thread), and answers through the worker's response queue and
 * eventfd, which the worker reads through its ring.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"
#include "resolver.h"
#include "spsc.h"
#include "timer.h"
#include "worker.h"

/* ---- the resolver thread */

static void resolve_one(struct worker *w, const struct resolve_req *rq)
{
    struct resolve_resp rs;
    memset(&rs, 0, sizeof(rs));
    rs.slot = rq->slot;
    rs.gen = rq->gen;
    char host[257];
    memcpy(host, rq->host, rq->host_len);
    host[rq->host_len] = '\0';
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || res == NULL) {
        rs.err = rc == EAI_NONAME ? -ENOENT : -EHOSTUNREACH;
    } else {
        memcpy(&rs.addr, res->ai_addr, res->ai_addrlen);
        rs.addr_len = res->ai_addrlen;
        if (rs.addr.ss_family == AF_INET)
            ((struct sockaddr_in *)&rs.addr)->sin_port = htons(rq->port);
        else
            ((struct sockaddr_in6 *)&rs.addr)->sin6_port = htons(rq->port);
    }
    if (res)
        freeaddrinfo(res);
    /* The response queue has as many slots as the request queue: it cannot be full. */
    while (!soth_spsc_push(w->rs, &rs))
        usleep(1000);
    soth_worker_wake(w);
}

static void *resolver_main(void *arg)
{
    struct soth_engine *e = arg;
    struct resolve_req rq;
    while (!atomic_load(&e->resolver_stop)) {
        uint64_t v;
        if (read(e->resolver_efd, &v, sizeof(v)) < 0 && errno != EINTR)
            break;
        for (unsigned i = 0; i < e->n_workers; i++)
            while (soth_spsc_pop(e->workers[i].rq, &rq))
                resolve_one(&e->workers[i], &rq);
    }
    return NULL;
}

int soth_resolver_start(struct soth_engine *e)
{
    e->resolver_efd = eventfd(0, EFD_CLOEXEC);
    if (e->resolver_efd == -1)
        return -errno;
    int rc = pthread_create(&e->resolver, NULL, resolver_main, e);
    if (rc != 0) {
        close(e->resolver_efd);
        return -rc;
    }
    return 0;
}

void soth_resolver_stop(struct soth_engine *e)
{
    atomic_store(&e->resolver_stop, 1);
    uint64_t one = 1;
    ssize_t n = write(e->resolver_efd, &one, sizeof(one));
    (void)n;
    pthread_join(e->resolver, NULL);
    close(e->resolver_efd);
}

/* ---- the worker's side */

static uint64_t name_hash(struct soth_iov host)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, lowercased */
    for (size_t i = 0; i < host.len; i++) {
        unsigned char ch = (unsigned char)host.base[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch + 32);
        h = (h ^ ch) * 1099511628211ull;
    }
    return h;
}

static bool addr_from_text(const char *text, size_t len, uint16_t port, struct sockaddr_storage *ss,
                           socklen_t *sl)
{
    char tmp[64];
    if (len == 0 || len >= sizeof(tmp))
        return false;
    memcpy(tmp, text, len);
    tmp[len] = '\0';
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, tmp, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *sl = sizeof(*s4);
        return true;
    }
    if (inet_pton(AF_INET6, tmp, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *sl = sizeof(*s6);
        return true;
    }
    return false;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

void dns_cache_put(struct dns_cache *dc, struct soth_iov host, const struct sockaddr_storage *addr,
                   socklen_t addr_len, uint64_t now)
{
    uint64_t h = name_hash(host);
    struct dns_cache_ent *e = &dc->ent[h & (SOTH_DNS_CACHE - 1)];
    e->hash = h;
    e->expires_ms = now + SOTH_DNS_TTL_MS;
    memcpy(&e->addr, addr, addr_len);
    e->addr_len = addr_len;
}

bool dns_cache_get(const struct dns_cache *dc, struct soth_iov host, uint16_t port,
                   struct sockaddr_storage *ss, socklen_t *sl, uint64_t now)
{
    uint64_t h = name_hash(host);
    const struct dns_cache_ent *e = &dc->ent[h & (SOTH_DNS_CACHE - 1)];
    if (e->hash == h && e->expires_ms > now) {
        memcpy(ss, &e->addr, e->addr_len);
        *sl = e->addr_len;
        set_port(ss, port);
        return true;
    }
    return false;
}

bool resolve_fast(const struct soth_config *cfg, const struct dns_cache *dc, struct soth_iov host,
                  uint16_t port, struct sockaddr_storage *ss, socklen_t *sl)
{
    for (size_t i = 0; i < cfg->n_resolve; i++) {
        if (soth_iov_is_ci(host, cfg->resolve[i].name))
            return addr_from_text(cfg->resolve[i].addr, strlen(cfg->resolve[i].addr), port, ss, sl);
    }
    if (addr_from_text(host.base, host.len, port, ss, sl))
        return true;
    if (soth_iov_is_ci(host, "localhost"))
        return addr_from_text("127.0.0.1", 9, port, ss, sl);
    return dns_cache_get(dc, host, port, ss, sl, now_ms());
}

int soth_resolver_submit(struct worker *w, const struct resolve_req *req)
{
    if (!soth_spsc_push(w->rq, req))
        return -EAGAIN;
    uint64_t one = 1;
    /* eventfd write never blocks unless the counter would overflow. */
    ssize_t n = write(w->eng->resolver_efd, &one, sizeof(one));
    (void)n;
    return 0;
}
