/*
 * The worker's pool of idle upstream connections (core/upool.c) over socketpairs: LIFO take by
 * key, the MSG_PEEK liveness check (FIN, unexpected bytes), expiry, LRU eviction, max_requests,
 * close_all, and the counters of soth_upstream_pool_total / soth_upstream_pool_idle.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "upool.h"

static struct soth_metrics m;

/* One connection: [0] goes to the pool, [1] plays the origin. */
static void pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

static bool is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static struct upool_key key(uint16_t port, const char *alpn)
{
    struct upool_key k;
    memset(&k, 0, sizeof(k));
    struct sockaddr_in *a = (struct sockaddr_in *)&k.addr;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(0x7f000001);
    k.addr_len = sizeof(*a);
    k.alpn_len = (uint8_t)strlen(alpn);
    memcpy(k.alpn, alpn, k.alpn_len);
    return k;
}

static uint64_t count(enum upool_result r)
{
    return atomic_load(&m.upstream_pool[r]);
}

static void setup(void)
{
    memset(&m, 0, sizeof(m));
}

TestSuite(upool, .init = setup);

Test(upool, take_is_lifo_and_by_key)
{
    struct upool p;
    cr_assert_eq(upool_init(&p, 4, 1000, 100, &m), 0);
    int a[2], b[2], c[2];
    pair(a), pair(b), pair(c);
    struct upool_key k1 = key(443, "\x08http/1.1"), k2 = key(443, ""), k3 = key(444, "");
    upool_put(&p, &k1, a[0], NULL, 1, 10);
    upool_put(&p, &k1, b[0], NULL, 2, 11);
    upool_put(&p, &k2, c[0], NULL, 3, 12);
    cr_assert_eq(atomic_load(&m.upstream_pool_idle), 3);
    cr_assert(upool_has_addr(&p, &k1.addr, k1.addr_len));
    cr_assert_not(upool_has_addr(&p, &k3.addr, k3.addr_len));
    int fd;
    struct soth_tls_conn *t;
    uint32_t n;
    cr_assert_not(upool_take(&p, &k3, &fd, &t, &n, 20));
    cr_assert(upool_take(&p, &k1, &fd, &t, &n, 20));
    cr_assert_eq(fd, b[0]); /* the most recently kept */
    cr_assert_eq(n, 2);
    cr_assert(upool_take(&p, &k1, &fd, &t, &n, 20));
    cr_assert_eq(fd, a[0]);
    cr_assert_not(upool_take(&p, &k1, &fd, &t, &n, 20));
    cr_assert(upool_take(&p, &k2, &fd, &t, &n, 20));
    cr_assert_eq(fd, c[0]);
    cr_assert_eq(count(UPOOL_HIT), 3);
    cr_assert_eq(atomic_load(&m.upstream_pool_idle), 0);
    upool_dispose(&p);
    int *all[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        close(all[i][0]);
        close(all[i][1]);
    }
}

Test(upool, dead_connections_are_stale)
{
    struct upool p;
    cr_assert_eq(upool_init(&p, 4, 1000, 100, &m), 0);
    int fin[2], bytes[2], live[2];
    pair(fin), pair(bytes), pair(live);
    struct upool_key k = key(443, "");
    upool_put(&p, &k, live[0], NULL, 1, 10);
    upool_put(&p, &k, bytes[0], NULL, 1, 10);
    upool_put(&p, &k, fin[0], NULL, 1, 10);
    close(fin[1]);                            /* the origin closed */
    cr_assert_eq(write(bytes[1], "x", 1), 1); /* the origin said something (an alert) */
    int fd;
    struct soth_tls_conn *t;
    uint32_t n;
    cr_assert(upool_take(&p, &k, &fd, &t, &n, 20));
    cr_assert_eq(fd, live[0]);
    cr_assert_eq(count(UPOOL_STALE), 2);
    cr_assert_not(is_open(fin[0]));
    cr_assert_not(is_open(bytes[0]));
    upool_dispose(&p);
    close(bytes[1]);
    close(live[0]);
    close(live[1]);
}

Test(upool, expiry_at_take_and_sweep)
{
    struct upool p;
    cr_assert_eq(upool_init(&p, 4, 300, 100, &m), 0);
    int a[2], b[2], c[2];
    pair(a), pair(b), pair(c);
    struct upool_key k = key(443, "");
    upool_put(&p, &k, a[0], NULL, 1, 1000);
    upool_put(&p, &k, b[0], NULL, 1, 1200);
    int fd;
    struct soth_tls_conn *t;
    uint32_t n;
    /* at 1400 b (idle 200 ms) is fine, a (400 ms) expired: b is taken first anyway */
    cr_assert(upool_take(&p, &k, &fd, &t, &n, 1400));
    cr_assert_eq(fd, b[0]);
    cr_assert_not(upool_take(&p, &k, &fd, &t, &n, 1400));
    cr_assert_eq(count(UPOOL_EXPIRED), 1);
    cr_assert_not(is_open(a[0]));
    upool_put(&p, &k, c[0], NULL, 1, 2000);
    upool_sweep(&p, 2299);
    cr_assert_eq(p.n, 1);
    close(c[1]); /* found dead by the sweep's peek */
    upool_sweep(&p, 2299);
    cr_assert_eq(p.n, 0);
    cr_assert_eq(count(UPOOL_STALE), 1);
    upool_put(&p, &k, b[0], NULL, 1, 3000);
    upool_sweep(&p, 3300);
    cr_assert_eq(p.n, 0);
    cr_assert_eq(count(UPOOL_EXPIRED), 2);
    cr_assert_eq(atomic_load(&m.upstream_pool_idle), 0);
    upool_dispose(&p);
    close(a[1]);
    close(b[1]);
}

Test(upool, full_pool_evicts_lru_and_max_requests_closes)
{
    struct upool p;
    cr_assert_eq(upool_init(&p, 2, 1000, 5, &m), 0);
    int a[2], b[2], c[2], d[2];
    pair(a), pair(b), pair(c), pair(d);
    struct upool_key k = key(443, "");
    upool_put(&p, &k, a[0], NULL, 1, 10);
    upool_put(&p, &k, b[0], NULL, 1, 11);
    upool_put(&p, &k, c[0], NULL, 1, 12); /* a, the least recently kept, goes */
    cr_assert_eq(count(UPOOL_EVICTED), 1);
    cr_assert_not(is_open(a[0]));
    cr_assert_eq(p.n, 2);
    upool_put(&p, &k, d[0], NULL, 5, 13); /* carried max_requests: closed, not kept */
    cr_assert_eq(count(UPOOL_CLOSED_MAX_REQUESTS), 1);
    cr_assert_not(is_open(d[0]));
    cr_assert_eq(p.n, 2);
    upool_close_all(&p);
    cr_assert_eq(p.n, 0);
    cr_assert_not(is_open(b[0]));
    cr_assert_not(is_open(c[0]));
    /* usable after close_all (a drain closes them; flows may still end) */
    int e[2];
    pair(e);
    upool_put(&p, &k, e[0], NULL, 1, 20);
    cr_assert_eq(p.n, 1);
    upool_dispose(&p);
    cr_assert_not(is_open(e[0]));
    int *all[] = {a, b, c, d, e};
    for (int i = 0; i < 5; i++)
        close(all[i][1]);
}

Test(upool, zero_max_idle_keeps_nothing)
{
    struct upool p;
    cr_assert_eq(upool_init(&p, 0, 1000, 5, &m), 0);
    int a[2];
    pair(a);
    struct upool_key k = key(443, "");
    upool_put(&p, &k, a[0], NULL, 1, 10);
    cr_assert_not(is_open(a[0]));
    cr_assert_eq(p.n, 0);
    upool_dispose(&p);
    close(a[1]);
}
