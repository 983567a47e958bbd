/*
 * Private to core/: name resolution off the workers (core/resolver.c). A worker answers what it
 * can without blocking (config overrides, literals, its own cache); a miss goes to the resolver
 * thread through an SPSC queue and the answer comes back through another and the worker's
 * eventfd.
 */
#ifndef SOTH_CORE_RESOLVER_H
#define SOTH_CORE_RESOLVER_H

#include <netinet/in.h>
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

int soth_resolver_start(struct soth_engine *e);
void soth_resolver_stop(struct soth_engine *e);
/** Worker side: queue a lookup; 0 or -EAGAIN when the queue is full. */
int soth_resolver_submit(struct worker *w, const struct resolve_req *req);

#endif
