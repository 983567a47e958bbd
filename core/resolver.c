/*
 * Name resolution off the workers. A worker first consults the config's `resolve` overrides,
 * numeric literals and its own cache (worker.c); only a miss comes here. The resolver thread
 * sleeps on its eventfd, drains every worker's request queue, calls getaddrinfo (blocking, which
 * is why it lives on its own thread), and answers through the worker's response queue and
 * eventfd, which the worker reads through its ring.
 */
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"
#include "resolver.h"
#include "spsc.h"
#include "worker.h"

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
