/* The timer wheel of a worker (core/timer.h): arming, unlinking and firing deadlines. */
#include <string.h>

#include "timer.h"

void timer_wheel_init(struct timer_wheel *tw, uint64_t now)
{
    memset(tw->slot, 0, sizeof(tw->slot));
    tw->tick = now / SOTH_TICK_MS;
    tw->n = 0;
}

void timer_unlink(struct timer_wheel *tw, struct timer_entry *t)
{
    if (t->pprev == NULL)
        return;
    *t->pprev = t->next;
    if (t->next)
        t->next->pprev = t->pprev;
    t->next = NULL;
    t->pprev = NULL;
    tw->n--;
}

void timer_set(struct timer_wheel *tw, struct timer_entry *t, uint64_t deadline_ms)
{
    timer_unlink(tw, t);
    t->deadline_ms = deadline_ms;
    uint64_t tick = deadline_ms / SOTH_TICK_MS;
    if (tick < tw->tick)
        tick = tw->tick;
    struct timer_entry **head = &tw->slot[tick & (SOTH_WHEEL_SLOTS - 1)];
    t->next = *head;
    if (*head)
        (*head)->pprev = &t->next;
    *head = t;
    t->pprev = head;
    tw->n++;
}

void timer_run(struct timer_wheel *tw, uint64_t now, timer_fire_cb fire, void *ctx)
{
    uint64_t last = now / SOTH_TICK_MS - 1;
    if (tw->n == 0) {
        /* Nothing armed: no need to walk the ticks that passed while the loop slept. */
        tw->tick = last + 1;
        return;
    }
    while (tw->tick <= last) {
        struct timer_entry *t = tw->slot[tw->tick & (SOTH_WHEEL_SLOTS - 1)];
        while (t != NULL) {
            struct timer_entry *next = t->next;
            if (t->deadline_ms <= now) {
                timer_unlink(tw, t);
                fire(ctx, t);
            }
            t = next;
        }
        tw->tick++;
    }
}
