/*
 * Private to core/: a worker's pool of idle upstream TLS connections (docs/http1.md, "Upstream
 * connection pool"): reverse https mode, HTTP/1.1 legs. One per worker, no locks. An entry has
 * nothing in flight on its socket: it is checked with a MSG_PEEK when taken and once a second
 * by upool_sweep, never read.
 */
#ifndef SOTH_CORE_UPOOL_H
#define SOTH_CORE_UPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "soth/observe.h"
#include "soth/tls.h"

#define UPOOL_ALPN_MAX 32 /* an ALPN offer (wire format) longer than this is not pooled */

/** What a connection was opened for: the address dialled and the ALPN offer sent. */
struct upool_key {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    uint8_t alpn_len;
    char alpn[UPOOL_ALPN_MAX];
};

struct upool_ent {
    int fd;
    struct soth_tls_conn *tls;
    uint64_t idle_since_ms;
    uint32_t requests; /* carried so far */
    struct upool_key key;
    struct upool_ent *prev, *next; /* the idle list, most recent first; free list: next */
};

/** Results counted in soth_upstream_pool_total (docs/metrics.md), by index. */
enum upool_result {
    UPOOL_HIT = 0,
    UPOOL_MISS,
    UPOOL_STALE,
    UPOOL_EXPIRED,
    UPOOL_EVICTED,
    UPOOL_CLOSED_MAX_REQUESTS,
    UPOOL_RETRIED, /* a stale pooled leg replaced by a fresh connection (core/relay.c) */
    UPOOL_RESULT_COUNT
};

struct upool {
    struct upool_ent *ents; /* max_idle entries, allocated at init */
    struct upool_ent *head, *tail, *free;
    uint32_t n, max_idle, idle_ms, max_requests;
    uint64_t next_sweep_ms;
    struct soth_metrics *m; /* upstream_pool[], upstream_pool_idle; may be NULL */
};

/** The key of a connection dialled to addr with the ALPN offer alpn (wire format). */
void upool_key_set(struct upool_key *k, const void *addr, socklen_t addr_len, const char *alpn,
                   uint8_t alpn_len);

/** Set up (no entries when max_idle is 0). Returns 0 or SOTH_E_NOMEM. */
int upool_init(struct upool *p, uint32_t max_idle, uint32_t idle_ms, uint32_t max_requests,
               struct soth_metrics *m);
/** Close every idle connection (idempotent); the pool stays usable. */
void upool_close_all(struct upool *p);
/** Close every idle connection and free the entries. */
void upool_dispose(struct upool *p);
/** Whether an idle connection to this address is kept (any ALPN offer). */
bool upool_has_addr(const struct upool *p, const void *addr, socklen_t len);
/**
 * Take the most recently used live connection for key: true with *fd, *tls and *requests
 * moved to the caller. Dead ones met on the way (FIN, unexpected bytes, error) are closed and
 * counted stale, expired ones (idle_ms) counted expired. Counts a hit; the caller counts its misses
 * (upool_count).
 */
bool upool_take(struct upool *p, const struct upool_key *key, int *fd, struct soth_tls_conn **tls,
                uint32_t *requests, uint64_t now_ms);
/**
 * Keep an idle connection (fd and tls are the pool's from here on): closed instead when it
 * carried max_requests, and the least recently used entry is closed when the pool is full.
 */
void upool_put(struct upool *p, const struct upool_key *key, int fd, struct soth_tls_conn *tls,
               uint32_t requests, uint64_t now_ms);
/** Close entries idle longer than idle_ms and those found dead by a MSG_PEEK. */
void upool_sweep(struct upool *p, uint64_t now_ms);
/** Count a result in the metrics. */
void upool_count(struct upool *p, enum upool_result r);

#endif
