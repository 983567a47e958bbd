/*
 * core/resolver.c, the worker's side: names answered without blocking (config overrides,
 * literals, localhost) and the cache of resolver answers (hit, expiry, bounded size). No
 * resolver thread, no sockets.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "soth/config.h"

#include "resolver.h"
#include "timer.h"

static struct dns_cache dc; /* zeroed: empty */

static struct soth_iov name(const char *s)
{
    return soth_iov(s, strlen(s));
}

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_port = htons(port);
    cr_assert_eq(inet_pton(AF_INET, ip, &s->sin_addr), 1);
    return ss;
}

static void assert_v4(const struct sockaddr_storage *ss, socklen_t sl, const char *ip,
                      uint16_t port)
{
    const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
    char got[INET_ADDRSTRLEN];
    cr_assert_eq(sl, sizeof(struct sockaddr_in));
    cr_assert_eq(s->sin_family, AF_INET);
    inet_ntop(AF_INET, &s->sin_addr, got, sizeof(got));
    cr_assert_str_eq(got, ip);
    cr_assert_eq(ntohs(s->sin_port), port);
}

Test(dns_cache, an_answer_is_found_by_name_with_the_asked_port)
{
    struct sockaddr_storage a = v4("127.0.0.7", 1), got;
    socklen_t sl = 0;
    cr_assert_not(dns_cache_get(&dc, name("origin.test"), 443, &got, &sl, 1000), "empty cache");
    dns_cache_put(&dc, name("origin.test"), &a, sizeof(struct sockaddr_in), 1000);
    cr_assert(dns_cache_get(&dc, name("origin.test"), 443, &got, &sl, 1001));
    assert_v4(&got, sl, "127.0.0.7", 443);
    cr_assert(dns_cache_get(&dc, name("ORIGIN.Test"), 8443, &got, &sl, 1001),
              "names compare case-insensitively");
    assert_v4(&got, sl, "127.0.0.7", 8443);
    cr_assert_not(dns_cache_get(&dc, name("other.test"), 443, &got, &sl, 1001));
}

Test(dns_cache, an_answer_expires_after_its_ttl)
{
    struct sockaddr_storage a = v4("127.0.0.8", 0), got;
    socklen_t sl;
    dns_cache_put(&dc, name("ttl.test"), &a, sizeof(struct sockaddr_in), 5000);
    cr_assert(dns_cache_get(&dc, name("ttl.test"), 80, &got, &sl, 5000 + SOTH_DNS_TTL_MS - 1));
    cr_assert_not(dns_cache_get(&dc, name("ttl.test"), 80, &got, &sl, 5000 + SOTH_DNS_TTL_MS));
    /* A fresh answer starts a fresh minute. */
    dns_cache_put(&dc, name("ttl.test"), &a, sizeof(struct sockaddr_in), 5000 + SOTH_DNS_TTL_MS);
    cr_assert(dns_cache_get(&dc, name("ttl.test"), 80, &got, &sl, 5000 + SOTH_DNS_TTL_MS + 1));
}

Test(dns_cache, size_is_bounded)
{
    struct sockaddr_storage a = v4("127.0.0.9", 0), got;
    socklen_t sl;
    char n[32];
    const unsigned total = 4 * SOTH_DNS_CACHE;
    for (unsigned i = 0; i < total; i++) {
        int k = snprintf(n, sizeof(n), "h%u.test", i);
        dns_cache_put(&dc, soth_iov(n, (size_t)k), &a, sizeof(struct sockaddr_in), 1);
    }
    unsigned hits = 0;
    for (unsigned i = 0; i < total; i++) {
        int k = snprintf(n, sizeof(n), "h%u.test", i);
        hits += dns_cache_get(&dc, soth_iov(n, (size_t)k), 80, &got, &sl, 2);
    }
    cr_assert_leq(hits, SOTH_DNS_CACHE, "%u names cached in %u entries", hits, SOTH_DNS_CACHE);
    cr_assert_gt(hits, SOTH_DNS_CACHE / 2, "the cache kept only %u names", hits);
    int k = snprintf(n, sizeof(n), "h%u.test", total - 1);
    cr_assert(dns_cache_get(&dc, soth_iov(n, (size_t)k), 80, &got, &sl, 2),
              "the last answer put is always there");
}

Test(resolve_fast, literals_localhost_overrides_then_the_cache)
{
    struct soth_resolve_entry over[] = {{.name = "api.test", .addr = "127.0.0.42"},
                                        {.name = "v6.test", .addr = "::1"}};
    struct soth_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.resolve = over;
    cfg.n_resolve = 2;
    struct sockaddr_storage got;
    socklen_t sl = 0;

    cr_assert(resolve_fast(&cfg, &dc, name("127.0.0.1"), 8080, &got, &sl));
    assert_v4(&got, sl, "127.0.0.1", 8080);
    cr_assert(resolve_fast(&cfg, &dc, name("LocalHost"), 80, &got, &sl));
    assert_v4(&got, sl, "127.0.0.1", 80);
    cr_assert(resolve_fast(&cfg, &dc, name("API.test"), 443, &got, &sl));
    assert_v4(&got, sl, "127.0.0.42", 443);

    cr_assert(resolve_fast(&cfg, &dc, name("v6.test"), 443, &got, &sl));
    cr_assert_eq(sl, sizeof(struct sockaddr_in6));
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&got;
    cr_assert_eq(s6->sin6_family, AF_INET6);
    cr_assert_eq(ntohs(s6->sin6_port), 443);
    cr_assert(IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));

    cr_assert_not(resolve_fast(&cfg, &dc, name("origin.test"), 443, &got, &sl),
                  "a name only the resolver thread can answer");
    struct sockaddr_storage a = v4("127.0.0.5", 0);
    dns_cache_put(&dc, name("origin.test"), &a, sizeof(struct sockaddr_in), now_ms());
    cr_assert(resolve_fast(&cfg, &dc, name("origin.test"), 443, &got, &sl));
    assert_v4(&got, sl, "127.0.0.5", 443);
}
