/* A worker's pool of idle upstream TLS connections (core/upool.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soth/base.h"
#include "upool.h"

void upool_count(struct upool *p, enum upool_result r)
{
    if (p->m != NULL)
        SOTH_METRIC_ADD(p->m->upstream_pool[r], 1);
}

void upool_key_set(struct upool_key *k, const void *addr, socklen_t addr_len, const char *alpn,
                   uint8_t alpn_len)
{
    memset(k, 0, sizeof(*k));
    memcpy(&k->addr, addr, addr_len);
    k->addr_len = addr_len;
    k->alpn_len = alpn_len;
    memcpy(k->alpn, alpn, alpn_len);
}

static void idle_gauge(struct upool *p)
{
    if (p->m != NULL)
        atomic_store_explicit(&p->m->upstream_pool_idle, p->n, memory_order_relaxed);
}

int upool_init(struct upool *p, uint32_t max_idle, uint32_t idle_ms, uint32_t max_requests,
               struct soth_metrics *m)
{
    memset(p, 0, sizeof(*p));
    p->max_idle = max_idle;
    p->idle_ms = idle_ms;
    p->max_requests = max_requests;
    p->m = m;
    if (max_idle == 0)
        return 0;
    p->ents = calloc(max_idle, sizeof(*p->ents));
    if (p->ents == NULL)
        return SOTH_E_NOMEM;
    for (uint32_t i = 0; i < max_idle; i++) {
        p->ents[i].fd = -1;
        p->ents[i].next = i + 1 < max_idle ? &p->ents[i + 1] : NULL;
    }
    p->free = &p->ents[0];
    return 0;
}

static void unlink_ent(struct upool *p, struct upool_ent *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        p->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        p->tail = e->prev;
    e->prev = e->next = NULL;
    p->n--;
}

/* Back to the free list; its connection is gone (closed or handed out). */
static void release(struct upool *p, struct upool_ent *e)
{
    e->fd = -1;
    e->tls = NULL;
    e->next = p->free;
    p->free = e;
}

static void close_conn(int fd, struct soth_tls_conn *tls)
{
    /* No close_notify: nothing may be written on an idle connection we no longer track. */
    soth_tls_conn_free(tls);
    close(fd);
}

static void drop(struct upool *p, struct upool_ent *e, enum upool_result why)
{
    unlink_ent(p, e);
    close_conn(e->fd, e->tls);
    release(p, e);
    upool_count(p, why);
}

/* Alive: nothing to read and no EOF (an idle HTTP/1.1 origin never speaks first). */
static bool alive(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void upool_close_all(struct upool *p)
{
    while (p->head != NULL) {
        struct upool_ent *e = p->head;
        unlink_ent(p, e);
        close_conn(e->fd, e->tls);
        release(p, e);
    }
    idle_gauge(p);
}

void upool_dispose(struct upool *p)
{
    upool_close_all(p);
    free(p->ents);
    p->ents = NULL;
    p->free = NULL;
}

static bool addr_eq(const void *a, socklen_t al, const void *b, socklen_t bl)
{
    return al == bl && memcmp(a, b, al) == 0;
}

bool upool_has_addr(const struct upool *p, const void *addr, socklen_t len)
{
    for (const struct upool_ent *e = p->head; e != NULL; e = e->next)
        if (addr_eq(&e->key.addr, e->key.addr_len, addr, len))
            return true;
    return false;
}

static bool key_eq(const struct upool_key *a, const struct upool_key *b)
{
    return addr_eq(&a->addr, a->addr_len, &b->addr, b->addr_len) && a->alpn_len == b->alpn_len &&
           memcmp(a->alpn, b->alpn, a->alpn_len) == 0;
}

bool upool_take(struct upool *p, const struct upool_key *key, int *fd, struct soth_tls_conn **tls,
                uint32_t *requests, uint64_t now_ms)
{
    struct upool_ent *e = p->head;
    while (e != NULL) {
        struct upool_ent *next = e->next;
        if (key_eq(&e->key, key)) {
            if (now_ms - e->idle_since_ms >= p->idle_ms) {
                drop(p, e, UPOOL_EXPIRED);
            } else if (!alive(e->fd)) {
                drop(p, e, UPOOL_STALE);
            } else {
                unlink_ent(p, e);
                *fd = e->fd;
                *tls = e->tls;
                *requests = e->requests;
                release(p, e);
                upool_count(p, UPOOL_HIT);
                idle_gauge(p);
                return true;
            }
        }
        e = next;
    }
    idle_gauge(p);
    return false;
}

void upool_put(struct upool *p, const struct upool_key *key, int fd, struct soth_tls_conn *tls,
               uint32_t requests, uint64_t now_ms)
{
    if (requests >= p->max_requests || p->max_idle == 0) {
        close_conn(fd, tls);
        upool_count(p, UPOOL_CLOSED_MAX_REQUESTS);
        return;
    }
    if (p->free == NULL)
        drop(p, p->tail, UPOOL_EVICTED); /* full: the least recently used goes */
    struct upool_ent *e = p->free;
    p->free = e->next;
    e->fd = fd;
    e->tls = tls;
    e->requests = requests;
    e->idle_since_ms = now_ms;
    e->key = *key;
    e->prev = NULL;
    e->next = p->head;
    if (p->head != NULL)
        p->head->prev = e;
    else
        p->tail = e;
    p->head = e;
    p->n++;
    idle_gauge(p);
}

void upool_sweep(struct upool *p, uint64_t now_ms)
{
    struct upool_ent *e = p->head;
    while (e != NULL) {
        struct upool_ent *next = e->next;
        if (now_ms - e->idle_since_ms >= p->idle_ms)
            drop(p, e, UPOOL_EXPIRED);
        else if (!alive(e->fd))
            drop(p, e, UPOOL_STALE);
        e = next;
    }
    idle_gauge(p);
}
