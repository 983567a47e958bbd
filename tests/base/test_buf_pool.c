/* soth_buf_pool: buffers lent while in use come back for reuse, at most `keep` are kept. */
#include <criterion/criterion.h>

#include "soth/base.h"

Test(buf_pool, reuses_what_was_put_back_last_first)
{
    struct soth_buf_pool p = {.keep = 4};
    void *a = soth_buf_pool_get(&p, 64);
    void *b = soth_buf_pool_get(&p, 64);
    cr_assert(a != NULL && b != NULL && a != b);
    soth_buf_pool_put(&p, a);
    soth_buf_pool_put(&p, b);
    cr_assert_eq(p.n, 2);
    cr_assert_eq(soth_buf_pool_get(&p, 64), b);
    cr_assert_eq(soth_buf_pool_get(&p, 64), a);
    cr_assert_eq(p.n, 0);
    cr_assert_null(p.head);
    free(a);
    free(b);
}

Test(buf_pool, keeps_at_most_keep_and_drains)
{
    struct soth_buf_pool p = {.keep = 2};
    void *m[3];
    for (int i = 0; i < 3; i++)
        m[i] = soth_buf_pool_get(&p, 32);
    for (int i = 0; i < 3; i++)
        soth_buf_pool_put(&p, m[i]); /* the third is freed, not kept */
    cr_assert_eq(p.n, 2);
    cr_assert_eq(soth_buf_pool_get(&p, 32), m[1]);
    soth_buf_pool_put(&p, m[1]);
    soth_buf_pool_drain(&p);
    cr_assert_eq(p.n, 0);
    cr_assert_null(p.head);
}

Test(buf_pool, keep_zero_keeps_none)
{
    struct soth_buf_pool p = {0};
    soth_buf_pool_put(&p, soth_buf_pool_get(&p, 16));
    cr_assert_eq(p.n, 0);
    cr_assert_null(p.head);
}

Test(buf_pool, trim_frees_down_to_the_floor_most_recent_kept_last)
{
    struct soth_buf_pool p = {.keep = 8};
    void *m[5];
    for (int i = 0; i < 5; i++)
        m[i] = soth_buf_pool_get(&p, 32);
    for (int i = 0; i < 5; i++)
        soth_buf_pool_put(&p, m[i]);
    soth_buf_pool_trim(&p, 2);
    cr_assert_eq(p.n, 2);
    /* the most recently put were freed first; the two put first stay */
    cr_assert_eq(soth_buf_pool_get(&p, 32), m[1]);
    cr_assert_eq(soth_buf_pool_get(&p, 32), m[0]);
    cr_assert_null(p.head);
    soth_buf_pool_trim(&p, 0); /* empty: nothing to do */
    cr_assert_eq(p.n, 0);
    free(m[0]);
    free(m[1]);
}
