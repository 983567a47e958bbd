/* The per-worker leaf cache: LRU bound, hits/misses, size 0, flush, case-insensitive keys. */
#include "tls_test_util.h"

static struct tu_env env;

static void setup(void)
{
    tu_env_init_ex(&env, 3, true);
}

static void teardown(void)
{
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}

TestSuite(tls_cache, .init = setup, .fini = teardown, .timeout = 60);

static struct soth_tls_leaf_cache_stats stats(struct soth_tls_ctx *t)
{
    struct soth_tls_leaf_cache_stats s;
    soth_tls_leaf_cache_stats(t, &s);
    return s;
}

static uint64_t serial_of(struct soth_tls_leaf l)
{
    /* bytes of the DER (serial is early): identical leaf <=> cache hit */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < l.der.len; i++)
        h = (h ^ (uint8_t)l.der.base[i]) * 1099511628211ull;
    return h;
}

Test(tls_cache, hits_misses_and_lru_eviction)
{
    struct soth_tls_leaf l;
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("a.test"), &l), 0);
    uint64_t a1 = serial_of(l);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("A.TEST"), &l), 0);
    cr_assert_eq(serial_of(l), a1, "same leaf for the same name in any case");
    cr_assert_eq(stats(env.t).hits, 1);
    cr_assert_eq(stats(env.t).misses, 1);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("b.test"), &l), 0);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("c.test"), &l), 0);
    cr_assert_eq(stats(env.t).entries, 3);
    /* touch a, so b is the least recently used; d evicts b */
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("a.test"), &l), 0);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("d.test"), &l), 0);
    struct soth_tls_leaf_cache_stats s = stats(env.t);
    cr_assert_eq(s.entries, 3);
    cr_assert_eq(s.capacity, 3);
    cr_assert_eq(s.evictions, 1);
    cr_assert_eq(s.hits, 2);
    cr_assert_eq(s.misses, 4);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("a.test"), &l), 0);
    cr_assert_eq(serial_of(l), a1);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("c.test"), &l), 0);
    cr_assert_eq(stats(env.t).hits, 4);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("b.test"), &l), 0);
    cr_assert_eq(stats(env.t).misses, 5, "b was evicted");
    cr_assert_eq(stats(env.t).evictions, 2);
}

Test(tls_cache, flush_empties_and_keeps_counters)
{
    struct soth_tls_leaf l;
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("a.test"), &l), 0);
    uint64_t a1 = serial_of(l);
    soth_tls_leaf_cache_flush(env.t);
    cr_assert_eq(stats(env.t).entries, 0);
    cr_assert_eq(soth_tls_leaf_get(env.t, SOTH_IOV_LIT("a.test"), &l), 0);
    cr_assert_neq(serial_of(l), a1, "a fresh leaf after the flush");
    cr_assert_eq(stats(env.t).misses, 2);
    cr_assert_eq(stats(env.t).hits, 0);
    /* many names through a small cache: bounded, consistent */
    char name[32];
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof(name), "h%d.test", i % 7);
        cr_assert_eq(soth_tls_leaf_get(env.t, soth_iov(name, strlen(name)), &l), 0);
        cr_assert_gt(l.der.len, 100);
    }
    struct soth_tls_leaf_cache_stats s = stats(env.t);
    cr_assert_eq(s.entries, 3);
    cr_assert_eq(s.hits + s.misses, 202);
}

Test(tls_cache, size_zero_disables_cache)
{
    struct tu_env e0;
    tu_env_init_ex(&e0, 0, true);
    struct soth_tls_leaf l;
    cr_assert_eq(soth_tls_leaf_get(e0.t, SOTH_IOV_LIT("a.test"), &l), 0);
    uint64_t a1 = serial_of(l);
    cr_assert_eq(soth_tls_leaf_get(e0.t, SOTH_IOV_LIT("a.test"), &l), 0);
    cr_assert_neq(serial_of(l), a1);
    struct soth_tls_leaf_cache_stats s = stats(e0.t);
    cr_assert_eq(s.hits, 0);
    cr_assert_eq(s.misses, 2);
    cr_assert_eq(s.capacity, 0);
    /* the server conns still work */
    struct soth_tls_conn *cli, *srv;
    cr_assert_eq(soth_tls_conn_new_client(e0.t, SOTH_IOV_LIT("a.test"), NULL, 0, &cli), 0);
    cr_assert_eq(soth_tls_conn_new_server(e0.t, SOTH_IOV_LIT("a.test"), SOTH_IOV_NULL, &srv), 0);
    cr_assert_eq(tu_handshake(cli, srv), 0);
    soth_tls_conn_free(cli);
    soth_tls_conn_free(srv);
    soth_tls_ctx_free(e0.t);
    soth_tls_ca_free(e0.ca);
    tu_rmdir(e0.dir);
}

Test(tls_cache, server_conns_count_hits)
{
    struct soth_tls_conn *srv;
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(soth_tls_conn_new_server(env.t, SOTH_IOV_LIT("s.test"), SOTH_IOV_NULL, &srv),
                     0);
        soth_tls_conn_free(srv);
    }
    cr_assert_eq(stats(env.t).misses, 1);
    cr_assert_eq(stats(env.t).hits, 4);
}
