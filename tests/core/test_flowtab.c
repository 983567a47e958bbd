/*
 * core/flowtab.c: a flow's generation advances at alloc and at release, slots are reused, and a
 * completion's user_data from before a release names no flow any more (so a late CQE can never
 * act on the slot's next flow). No sockets, no io_uring instance.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "flowtab.h"
#include "worker.h"

static struct flow_table ft;
static struct worker *const owner = (struct worker *)&ft; /* only stored, never used */

static void setup(void)
{
    cr_assert_eq(flow_table_init(&ft), 0);
}

static void teardown(void)
{
    flow_table_dispose(&ft);
}

TestSuite(flowtab, .init = setup, .fini = teardown);

Test(flowtab, alloc_gives_a_fresh_flow_with_a_live_generation)
{
    struct flow *f = flow_table_alloc(&ft, owner);
    cr_assert_not_null(f);
    cr_assert_eq(f->slot, 0);
    cr_assert(flow_is_live(f));
    cr_assert_eq(f->state, FS_HEAD);
    cr_assert_eq(f->pending, 0);
    cr_assert_eq(f->c[SOTH_LEG_CLIENT].fd, -1);
    cr_assert_eq(f->c[SOTH_LEG_UPSTREAM].fd, -1);
    cr_assert_null(f->c[SOTH_LEG_CLIENT].q_first);
    cr_assert_null(f->timer.pprev);
    cr_assert_eq(f->w, owner);
    cr_assert_eq(ft.n_live, 1);
    struct flow *g = flow_table_alloc(&ft, owner);
    cr_assert_eq(g->slot, 1);
    cr_assert_eq(ft.hw, 2);
}

Test(flowtab, release_and_reuse_advance_the_generation)
{
    struct flow *f = flow_table_alloc(&ft, owner);
    uint32_t slot = f->slot, gen = f->gen;
    uint64_t ud = ud_pack(OP_RECV, SOTH_LEG_UPSTREAM, f->slot, f->gen);
    cr_assert_eq(flow_table_find(&ft, ud_slot(ud), ud_gen(ud)), f);
    cr_assert_eq(ud_side(ud), SOTH_LEG_UPSTREAM);
    cr_assert_eq(ud_op(ud), OP_RECV);

    flow_table_release(&ft, f);
    cr_assert_eq(f->state, FS_FREE);
    cr_assert_not(flow_is_live(f));
    cr_assert_eq(f->gen, gen + 1);
    cr_assert_eq(ft.n_live, 0);
    cr_assert_null(flow_table_find(&ft, ud_slot(ud), ud_gen(ud)), "stale CQE found a flow");

    struct flow *g = flow_table_alloc(&ft, owner);
    cr_assert_eq(g, f, "the released slot is reused");
    cr_assert_eq(g->slot, slot);
    cr_assert_eq(g->gen, gen + 2);
    cr_assert(flow_is_live(g));
    cr_assert_null(flow_table_find(&ft, ud_slot(ud), ud_gen(ud)),
                   "a CQE of the slot's previous flow reached its new flow");
    uint64_t ud2 = ud_pack(OP_SEND, SOTH_LEG_CLIENT, g->slot, g->gen);
    cr_assert_eq(flow_table_find(&ft, ud_slot(ud2), ud_gen(ud2)), g);
}

Test(flowtab, generation_survives_the_32_bit_wrap_in_user_data)
{
    struct flow *f = flow_table_alloc(&ft, owner);
    f->gen = UINT32_MAX; /* live (odd) */
    uint64_t ud = ud_pack(OP_RECV, SOTH_LEG_CLIENT, f->slot, f->gen);
    cr_assert_eq(ud_gen(ud), UINT32_MAX);
    cr_assert_eq(flow_table_find(&ft, f->slot, ud_gen(ud)), f);
    flow_table_release(&ft, f);
    cr_assert_eq(f->gen, 0);
    cr_assert_null(flow_table_find(&ft, ud_slot(ud), ud_gen(ud)));
}

Test(flowtab, unused_slots_and_a_full_table)
{
    cr_assert_null(flow_table_find(&ft, 0, 1), "a slot never used names no flow");
    ft.max = 2;
    struct flow *a = flow_table_alloc(&ft, owner);
    struct flow *b = flow_table_alloc(&ft, owner);
    cr_assert(a != NULL && b != NULL);
    cr_assert_null(flow_table_alloc(&ft, owner), "went past the table's size");
    flow_table_release(&ft, a);
    cr_assert_eq(flow_table_alloc(&ft, owner), a, "room again after a release");
    cr_assert_null(flow_table_find(&ft, 5, 1));
}

Test(flowtab, the_most_recently_released_slot_is_reused_first)
{
    struct flow *a = flow_table_alloc(&ft, owner);
    struct flow *b = flow_table_alloc(&ft, owner);
    flow_table_release(&ft, a);
    flow_table_release(&ft, b);
    cr_assert_eq(flow_table_alloc(&ft, owner), b);
    cr_assert_eq(flow_table_alloc(&ft, owner), a);
    cr_assert_eq(ft.hw, 2, "no new slot while released ones are free");
}
