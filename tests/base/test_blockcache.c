/* The per-thread block cache (soth/blockcache.h): a freed block comes back for the next
 * allocation of its class, sizes are honoured, bounds hold. */
#include <criterion/criterion.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "soth/blockcache.h"

Test(blockcache, reuses_a_freed_block_of_the_same_class)
{
    soth_bc_trim();
    void *a = soth_bc_malloc(100);
    cr_assert_not_null(a);
    cr_assert_geq(malloc_usable_size(a), 100);
    memset(a, 0xab, 100);
    soth_bc_free(a);
    void *b = soth_bc_malloc(97);
    if (soth_bc_enabled()) {
        cr_assert_eq(b, a, "the cached block comes back");
        cr_assert_eq(soth_bc_cached_bytes(), 0);
    }
    soth_bc_free(b);
    soth_bc_trim();
    cr_assert_eq(soth_bc_cached_bytes(), 0);
}

Test(blockcache, every_size_comes_back_to_its_own_class)
{
    if (!soth_bc_enabled())
        return; /* sanitizer build: libc's */
    for (size_t n = 1; n <= SOTH_BC_MAX; n += (n < 4096 ? 1 : 61)) {
        soth_bc_trim();
        void *p = soth_bc_malloc(n);
        cr_assert_not_null(p);
        soth_bc_free(p);
        cr_assert_gt(soth_bc_cached_bytes(), 0, "size %zu cached", n);
        void *q = soth_bc_malloc(n);
        cr_assert_eq(q, p, "size %zu: the freed block is found again", n);
        cr_assert_leq(malloc_usable_size(q), n + n / 8 + 24,
                      "size %zu: rounded up at most an eighth", n);
        soth_bc_free(q);
    }
    soth_bc_trim();
}

Test(blockcache, every_size_gets_room_and_calloc_zeroes)
{
    for (size_t n = 0; n <= SOTH_BC_MAX + 100; n += (n < 2048 ? 1 : 997)) {
        unsigned char *p = soth_bc_calloc(1, n);
        cr_assert_not_null(p);
        cr_assert_geq(malloc_usable_size(p), n);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(p[i], 0, "size %zu byte %zu", n, i);
        memset(p, 0xff, n);
        soth_bc_free(p);
    }
    soth_bc_trim();
}

Test(blockcache, realloc_keeps_bytes)
{
    char *p = soth_bc_realloc(NULL, 10);
    memcpy(p, "0123456789", 10);
    p = soth_bc_realloc(p, 5000);
    cr_assert_not_null(p);
    cr_assert_eq(memcmp(p, "0123456789", 10), 0);
    cr_assert_geq(malloc_usable_size(p), 5000);
    cr_assert_null(soth_bc_realloc(p, 0));
    cr_assert_null(soth_bc_calloc(SIZE_MAX / 2, 4), "overflow refused");
    soth_bc_trim();
}

Test(blockcache, bounded_per_class_and_in_bytes)
{
    enum { N = 3 * SOTH_BC_KEEP };
    static void *small[N], *big[N];
    for (int i = 0; i < N; i++) {
        small[i] = soth_bc_malloc(64);
        big[i] = soth_bc_malloc(60000);
    }
    for (int i = 0; i < N; i++) {
        soth_bc_free(small[i]);
        soth_bc_free(big[i]);
    }
    if (soth_bc_enabled()) {
        /* at most KEEP small blocks (each under 100 bytes) and KEEP_BYTES of big ones */
        cr_assert_leq(soth_bc_cached_bytes(), SOTH_BC_KEEP * 100 + SOTH_BC_KEEP_BYTES);
        cr_assert_geq(soth_bc_cached_bytes(), SOTH_BC_KEEP * 72, "64-byte blocks are kept");
        cr_assert_gt(soth_bc_cached_bytes(), 0);
    }
    soth_bc_trim();
    cr_assert_eq(soth_bc_cached_bytes(), 0);
}

static void *other_thread(void *arg)
{
    soth_bc_free(arg); /* freed here: cached on this thread, flushed at its exit */
    void *p = soth_bc_malloc(200);
    soth_bc_free(p);
    return (void *)(uintptr_t)soth_bc_cached_bytes();
}

Test(blockcache, a_block_may_be_freed_on_another_thread)
{
    void *p = soth_bc_malloc(200);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, other_thread, p), 0);
    void *ret;
    pthread_join(t, &ret);
    if (soth_bc_enabled())
        cr_assert_gt((uintptr_t)ret, 0);
    cr_assert_eq(soth_bc_cached_bytes(), 0, "nothing arrived in this thread's cache");
}
