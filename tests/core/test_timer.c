/* core/timer.c: the timer wheel fires each armed entry once its deadline has passed, in tick
 * order, at most one tick late, and never an entry that was unlinked or moved. */
#include <criterion/criterion.h>

#include "timer.h"

struct fired {
    struct timer_entry *order[16];
    unsigned n;
};

static void record(void *ctx, struct timer_entry *t)
{
    struct fired *f = ctx;
    cr_assert_lt(f->n, 16);
    cr_assert_null(t->pprev, "a fired entry is out of the wheel");
    f->order[f->n++] = t;
}

static struct timer_wheel tw;

static void start(uint64_t now)
{
    timer_wheel_init(&tw, now);
}

Test(timer, fires_once_after_the_deadline_never_before)
{
    struct timer_entry e;
    struct fired f = {0};
    start(1000);
    timer_entry_init(&e);
    timer_set(&tw, &e, 1100);
    cr_assert_eq(tw.n, 1);
    timer_run(&tw, 1099, record, &f);
    cr_assert_eq(f.n, 0);
    /* 1100 is in tick 137, walked once that tick has fully elapsed (now >= 1104). */
    timer_run(&tw, 1103, record, &f);
    cr_assert_eq(f.n, 0, "fired before its tick was over");
    timer_run(&tw, 1104 + SOTH_TICK_MS - 1, record, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.order[0], &e);
    cr_assert_eq(tw.n, 0);
    timer_run(&tw, 5000, record, &f);
    cr_assert_eq(f.n, 1, "fired twice");
}

Test(timer, rearm_moves_the_deadline)
{
    struct timer_entry e;
    struct fired f = {0};
    start(1000);
    timer_entry_init(&e);
    timer_set(&tw, &e, 1100);
    timer_set(&tw, &e, 2000);
    cr_assert_eq(tw.n, 1, "a re-armed entry is in the wheel once");
    cr_assert_eq(e.deadline_ms, 2000);
    timer_run(&tw, 1500, record, &f);
    cr_assert_eq(f.n, 0, "fired at the old deadline");
    timer_run(&tw, 2020, record, &f);
    cr_assert_eq(f.n, 1);
    /* Earlier again after firing: a fresh arm. */
    timer_set(&tw, &e, 2030);
    timer_run(&tw, 2050, record, &f);
    cr_assert_eq(f.n, 2);
}

Test(timer, unlink_cancels_and_is_idempotent)
{
    struct timer_entry a, b;
    struct fired f = {0};
    start(0);
    timer_entry_init(&a);
    timer_entry_init(&b);
    timer_set(&tw, &a, 100);
    timer_set(&tw, &b, 100); /* same slot: unlinking a must keep b */
    timer_unlink(&tw, &a);
    timer_unlink(&tw, &a);
    cr_assert_eq(tw.n, 1);
    cr_assert_null(a.pprev);
    cr_assert_eq(a.deadline_ms, 100, "unlink keeps the deadline for the caller to read");
    timer_run(&tw, 200, record, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(f.order[0], &b);
    timer_unlink(&tw, &b); /* already fired: no-op */
    cr_assert_eq(tw.n, 0);
}

Test(timer, due_entries_fire_in_tick_order)
{
    struct timer_entry e[4];
    struct fired f = {0};
    const uint64_t at[4] = {1300, 1050, 1180, 1100};
    start(1000);
    for (int i = 0; i < 4; i++) {
        timer_entry_init(&e[i]);
        timer_set(&tw, &e[i], at[i]);
    }
    timer_run(&tw, 1400, record, &f);
    cr_assert_eq(f.n, 4);
    cr_assert_eq(f.order[0], &e[1]);
    cr_assert_eq(f.order[1], &e[3]);
    cr_assert_eq(f.order[2], &e[2]);
    cr_assert_eq(f.order[3], &e[0]);
}

Test(timer, past_deadline_fires_at_the_next_run)
{
    struct timer_entry e;
    struct fired f = {0};
    start(5000);
    timer_entry_init(&e);
    timer_set(&tw, &e, 10); /* long past: lands in the current tick */
    timer_run(&tw, 5000 + 2 * SOTH_TICK_MS, record, &f);
    cr_assert_eq(f.n, 1);
}

Test(timer, wraps_around_the_wheel)
{
    const uint64_t rev = (uint64_t)SOTH_WHEEL_SLOTS * SOTH_TICK_MS;
    struct timer_entry far, near;
    struct fired f = {0};
    start(1000);
    timer_entry_init(&far);
    timer_entry_init(&near);
    timer_set(&tw, &far, 1000 + rev + 500); /* shares a slot with 1500, one revolution on */
    timer_set(&tw, &near, 1500);
    timer_run(&tw, 1600, record, &f);
    cr_assert_eq(f.n, 1, "the later revolution's entry fired early");
    cr_assert_eq(f.order[0], &near);
    cr_assert_eq(tw.n, 1);
    timer_run(&tw, 1000 + rev, record, &f);
    cr_assert_eq(f.n, 1);
    timer_run(&tw, 1000 + rev + 520, record, &f);
    cr_assert_eq(f.n, 2);
    cr_assert_eq(f.order[1], &far);
    cr_assert_eq(tw.n, 0);
}

static void rearm_later(void *ctx, struct timer_entry *t)
{
    record(ctx, t);
    timer_set(&tw, t, t->deadline_ms + 1000); /* an idle flow still active: look again later */
}

Test(timer, an_entry_rearmed_while_firing_fires_again_later)
{
    struct timer_entry e;
    struct fired f = {0};
    start(0);
    timer_entry_init(&e);
    timer_set(&tw, &e, 100);
    timer_run(&tw, 200, rearm_later, &f);
    cr_assert_eq(f.n, 1);
    cr_assert_eq(tw.n, 1);
    timer_run(&tw, 1000, rearm_later, &f);
    cr_assert_eq(f.n, 1);
    timer_run(&tw, 1200, rearm_later, &f);
    cr_assert_eq(f.n, 2);
}

Test(timer, an_empty_wheel_skips_the_ticks_that_passed)
{
    struct timer_entry e;
    struct fired f = {0};
    start(0);
    timer_run(&tw, 1000000, record, &f);
    cr_assert_eq(tw.tick, 1000000 / SOTH_TICK_MS);
    timer_entry_init(&e);
    timer_set(&tw, &e, 1000010);
    timer_run(&tw, 1000030, record, &f);
    cr_assert_eq(f.n, 1);
}
