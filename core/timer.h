/*
 * Private to core/: the timer wheel, one deadline per entry (a flow embeds one). Hashed by
 * SOTH_TICK_MS ticks into SOTH_WHEEL_SLOTS slots, so a revolution is about 8 s; an entry due
 * further away sits in its slot and is passed over (not due yet) until a later revolution.
 * Deadlines are checked lazily: an idle timeout is not moved on every byte, the flow looks at
 * its last activity when the entry fires and re-arms (core/flow_io.c).
 */
#ifndef SOTH_CORE_TIMER_H
#define SOTH_CORE_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "soth/base.h"

#define SOTH_TICK_MS     8u
#define SOTH_WHEEL_SLOTS 1024u /* power of 2 */

/** Monotonic milliseconds: the clock of every deadline in core/. */
static inline uint64_t now_ms(void)
{
    return soth_mono_ns() / 1000000u;
}

struct timer_entry {
    uint64_t deadline_ms;              /* monotonic ms of the last timer_set, 0 = never set */
    struct timer_entry *next, **pprev; /* slot list; pprev NULL = not in the wheel */
};

struct timer_wheel {
    struct timer_entry *slot[SOTH_WHEEL_SLOTS];
    uint64_t tick; /* the next tick timer_run walks */
    uint32_t n;    /* entries in the wheel */
};

/** A fresh entry: not in any wheel, no deadline. */
static inline void timer_entry_init(struct timer_entry *t)
{
    t->deadline_ms = 0;
    t->next = NULL;
    t->pprev = NULL;
}

/** An empty wheel whose first tick is the one containing `now` (monotonic ms). */
void timer_wheel_init(struct timer_wheel *tw, uint64_t now);

/** (Re-)arm t for deadline_ms; a deadline already past fires at the next timer_run. */
void timer_set(struct timer_wheel *tw, struct timer_entry *t, uint64_t deadline_ms);

/** Take t out of the wheel (no-op when it is not in it); its deadline_ms stays. */
void timer_unlink(struct timer_wheel *tw, struct timer_entry *t);

/** Called for a due entry, already unlinked; it may re-arm or unlink that entry only. */
typedef void (*timer_fire_cb)(void *ctx, struct timer_entry *t);

/**
 * Fire every entry due at `now` in the ticks that have fully elapsed. Only whole ticks are
 * walked: a timer due later in the current tick would otherwise be found not due and passed
 * over for a whole revolution, so timers fire up to one tick late instead.
 */
void timer_run(struct timer_wheel *tw, uint64_t now, timer_fire_cb fire, void *ctx);

#endif
