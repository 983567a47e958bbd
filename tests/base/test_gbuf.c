/* soth_gbuf: a growable byte buffer bounded by the caller's max (core/base/base.c). */
#include <criterion/criterion.h>

#include "soth/base.h"

Test(gbuf, put_appends_in_order_and_consume_drops_the_front)
{
    struct soth_gbuf b = {0};
    cr_assert_eq(soth_gbuf_put(&b, "hello ", 6, 1 << 20), 0);
    cr_assert_eq(soth_gbuf_put(&b, "world", 5, 1 << 20), 0);
    cr_assert_eq(b.len, 11);
    cr_assert_eq(memcmp(b.p, "hello world", 11), 0);
    soth_gbuf_consume(&b, 6);
    cr_assert_eq(b.len, 5);
    cr_assert_eq(memcmp(b.p, "world", 5), 0);
    soth_gbuf_consume(&b, 5);
    cr_assert_eq(b.len, 0);
    cr_assert_not_null(b.p, "the memory is kept for the next put");
    soth_gbuf_free(&b);
    cr_assert_null(b.p);
    cr_assert_eq(b.len + b.cap, 0);
}

Test(gbuf, empty_put_allocates_nothing)
{
    struct soth_gbuf b = {0};
    cr_assert_eq(soth_gbuf_put(&b, NULL, 0, 16), 0);
    cr_assert_null(b.p);
}

Test(gbuf, never_holds_or_allocates_past_max)
{
    struct soth_gbuf b = {0};
    char chunk[1000];
    memset(chunk, 'x', sizeof(chunk));
    size_t max = 10000;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(soth_gbuf_put(&b, chunk, sizeof(chunk), max), 0);
    cr_assert_eq(b.len, max);
    cr_assert_leq(b.cap, max);
    cr_assert_eq(soth_gbuf_put(&b, chunk, 1, max), SOTH_E_TOO_LARGE);
    cr_assert_eq(b.len, max, "a refused put appends nothing");
    soth_gbuf_consume(&b, 1);
    cr_assert_eq(soth_gbuf_put(&b, "y", 1, max), 0);
    cr_assert_eq(b.p[max - 1], 'y');
    soth_gbuf_free(&b);
}

Test(gbuf, small_max_caps_the_first_allocation)
{
    struct soth_gbuf b = {0};
    cr_assert_eq(soth_gbuf_put(&b, "abc", 3, 8), 0);
    cr_assert_leq(b.cap, 8);
    cr_assert_eq(soth_gbuf_put(&b, "defgh", 5, 8), 0);
    cr_assert_eq(soth_gbuf_put(&b, "i", 1, 8), SOTH_E_TOO_LARGE);
    cr_assert_eq(memcmp(b.p, "abcdefgh", 8), 0);
    soth_gbuf_free(&b);
}

Test(gbuf, one_put_larger_than_max_is_refused)
{
    struct soth_gbuf b = {0};
    char big[64] = {0};
    cr_assert_eq(soth_gbuf_put(&b, big, sizeof(big), 63), SOTH_E_TOO_LARGE);
    cr_assert_eq(b.len, 0);
    cr_assert_null(b.p);
}

Test(gbuf, grows_by_doubling_keeping_the_bytes)
{
    struct soth_gbuf b = {0};
    for (unsigned i = 0; i < 100000; i++) {
        unsigned char c = (unsigned char)(i * 7);
        cr_assert_eq(soth_gbuf_put(&b, &c, 1, 1 << 20), 0);
    }
    for (unsigned i = 0; i < 100000; i++)
        cr_assert_eq((unsigned char)b.p[i], (unsigned char)(i * 7));
    cr_assert_eq(b.cap & (b.cap - 1), 0, "capacity %zu is a power of two", b.cap);
    soth_gbuf_free(&b);
}
