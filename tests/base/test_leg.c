/* enum soth_leg: the one name for a side of a flow, and its checked conversions. */
#include <criterion/criterion.h>
#include <signal.h>

#include "soth/base.h"

Test(leg, values_are_the_event_wire_values)
{
    /* Recorded events store the leg as this number (docs/events.md "side", "direction"). */
    cr_assert_eq(SOTH_LEG_CLIENT, 0);
    cr_assert_eq(SOTH_LEG_UPSTREAM, 1);
    cr_assert_eq(SOTH_LEG_COUNT, 2);
}

Test(leg, other_swaps_the_legs)
{
    cr_assert_eq(soth_leg_other(SOTH_LEG_CLIENT), SOTH_LEG_UPSTREAM);
    cr_assert_eq(soth_leg_other(SOTH_LEG_UPSTREAM), SOTH_LEG_CLIENT);
    cr_assert_eq(soth_leg_other(soth_leg_other(SOTH_LEG_UPSTREAM)), SOTH_LEG_UPSTREAM);
}

Test(leg, of_takes_an_index_back)
{
    cr_assert_eq(soth_leg_of(0), SOTH_LEG_CLIENT);
    cr_assert_eq(soth_leg_of(1), SOTH_LEG_UPSTREAM);
    cr_assert_eq(soth_leg_of(true), SOTH_LEG_UPSTREAM);
}

Test(leg, of_aborts_on_a_value_that_is_no_leg, .signal = SIGABRT)
{
    volatile unsigned v = 2;
    (void)soth_leg_of(v);
}
