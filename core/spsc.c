/*
 * A small single-producer/single-consumer queue of fixed-size slots, used between workers and
 * the resolver thread (off the data path: one entry per DNS cache miss). The producer owns
 * tail, the consumer owns head; each publishes with a release store and reads the other's
 * index with an acquire load.
 */
#include <stdatomic.h>
#include <string.h>

#include <stdlib.h>

#include "soth/base.h"

#include "spsc.h"

struct soth_spsc {
    _Alignas(SOTH_CACHELINE) _Atomic uint32_t head;
    _Alignas(SOTH_CACHELINE) _Atomic uint32_t tail;
    _Alignas(SOTH_CACHELINE) uint32_t mask;
    size_t slot_size;
    char *slots;
};

struct soth_spsc *soth_spsc_new(size_t slot_size, uint32_t n_slots)
{
    SOTH_BUG_ON(n_slots == 0 || (n_slots & (n_slots - 1)) != 0);
    struct soth_spsc *q = aligned_alloc(SOTH_CACHELINE, sizeof(*q));
    if (q == NULL)
        return NULL;
    memset(q, 0, sizeof(*q));
    q->slots = calloc(n_slots, slot_size);
    if (q->slots == NULL) {
        free(q);
        return NULL;
    }
    q->mask = n_slots - 1;
    q->slot_size = slot_size;
    return q;
}

void soth_spsc_free(struct soth_spsc *q)
{
    if (q == NULL)
        return;
    free(q->slots);
    free(q);
}

bool soth_spsc_push(struct soth_spsc *q, const void *item)
{
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    if (t - h > q->mask)
        return false;
    memcpy(q->slots + (size_t)(t & q->mask) * q->slot_size, item, q->slot_size);
    atomic_store_explicit(&q->tail, t + 1, memory_order_release);
    return true;
}

bool soth_spsc_pop(struct soth_spsc *q, void *item)
{
    uint32_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (h == t)
        return false;
    memcpy(item, q->slots + (size_t)(h & q->mask) * q->slot_size, q->slot_size);
    atomic_store_explicit(&q->head, h + 1, memory_order_release);
    return true;
}
