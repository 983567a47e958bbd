/*
 * Private to core/: a small single-producer/single-consumer queue of fixed-size slots
 * (core/spsc.c), between the workers and the resolver thread.
 */
#ifndef SOTH_CORE_SPSC_H
#define SOTH_CORE_SPSC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct soth_spsc;

/** n_slots (a power of 2) slots of slot_size bytes; NULL on allocation failure. */
struct soth_spsc *soth_spsc_new(size_t slot_size, uint32_t n_slots);
void soth_spsc_free(struct soth_spsc *q);
/** Producer: copy item in; false when full. */
bool soth_spsc_push(struct soth_spsc *q, const void *item);
/** Consumer: copy the oldest item out; false when empty. */
bool soth_spsc_pop(struct soth_spsc *q, void *item);

#endif
