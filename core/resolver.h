/*
 * Private to core/: name resolution off the workers (core/resolver.c). A worker answers what it
 * can without blocking (config overrides, literals, its own cache); a miss goes to the resolver
 * thread through an SPSC queue and the answer comes back through another and the worker's
 * eventfd.
 */
#ifndef SOTH_CORE_RESOLVER_H
#define SOTH_CORE_RESOLVER_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "soth/base.h"

struct soth_engine;
struct worker;

struct resolve_req {
    uint32_t slot, gen;
    uint16_t port;
    uint16_t host_len;
    char host[256];
};
struct resolve_resp {
    uint32_t slot, gen;
    int err; /* 0 or -errno / EAI mapped to -EHOSTUNREACH */
    socklen_t addr_len;
    struct sockaddr_storage addr;
};

#define SOTH_DNS_CACHE 256u /* entries per worker (power of 2) */

struct dns_cache_ent {
    uint64_t hash;
    uint64_t expires_ms;
    socklen_t addr_len;
    struct sockaddr_storage addr;
};

/** A worker's cache of resolver answers: SOTH_DNS_CACHE entries, one per hash of the name
 *  (a later name on the same entry replaces the earlier), each kept SOTH_DNS_TTL_MS. */
struct dns_cache {
    struct dns_cache_ent ent[SOTH_DNS_CACHE];
};
#define SOTH_DNS_TTL_MS 60000u /* getaddrinfo gives no TTL: keep a minute */

struct soth_config;

/** Remember the address (its port aside) the resolver gave for host, at now (monotonic ms). */
void dns_cache_put(struct dns_cache *dc, struct soth_iov host, const struct sockaddr_storage *addr,
                   socklen_t addr_len, uint64_t now);
/** host's cached address with port, if it was put less than SOTH_DNS_TTL_MS before now. */
bool dns_cache_get(const struct dns_cache *dc, struct soth_iov host, uint16_t port,
                   struct sockaddr_storage *ss, socklen_t *sl, uint64_t now);

/**
 * Resolve without blocking, in order: the config's resolve overrides, a numeric literal,
 * "localhost", the cache. False when only the resolver thread can tell.
 */
bool resolve_fast(const struct soth_config *cfg, const struct dns_cache *dc, struct soth_iov host,
                  uint16_t port, struct sockaddr_storage *ss, socklen_t *sl);

int soth_resolver_start(struct soth_engine *e);
void soth_resolver_stop(struct soth_engine *e);
/** Worker side: queue a lookup; 0 or -EAGAIN when the queue is full. */
int soth_resolver_submit(struct worker *w, const struct resolve_req *req);

#endif
