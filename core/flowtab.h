/*
 * Private to core/: a worker's flow table. Slots are reserved as address space and touched as
 * they are first used; a released slot is reused, most recent first. Each slot's generation
 * advances at alloc and at release (odd = live), and a CQE's user_data carries the generation
 * it was submitted under, so a completion for a slot freed (and maybe reused) since is told
 * apart from the current flow's (flow_table_find).
 */
#ifndef SOTH_CORE_FLOWTAB_H
#define SOTH_CORE_FLOWTAB_H

#include <stdint.h>

#include "flow.h"

#define SOTH_MAX_FLOWS (1u << 16) /* flow slots per worker (user_data has 23 bits for them) */

struct flow_table {
    struct flow *flows; /* SOTH_MAX_FLOWS slots of address space */
    uint32_t hw;        /* slots ever used: flows[0 .. hw) */
    uint32_t n_live;    /* allocated and not yet released */
    uint32_t max;       /* slots allowed: SOTH_MAX_FLOWS (tests lower it) */
    struct flow *free;  /* released slots, linked through wnext */
    uint32_t gen_base;  /* even; a slot first used (again) starts here (flow_table_shrink) */
};

/** Reserve the slots. 0 or -errno. */
int flow_table_init(struct flow_table *ft);
void flow_table_dispose(struct flow_table *ft);

/**
 * A flow in FS_HEAD with every field set (no socket, nothing queued, no timer), owned by w,
 * its generation advanced; NULL when the table is full.
 */
struct flow *flow_table_alloc(struct flow_table *ft, struct worker *w);
/** Back to the free list: FS_FREE, generation advanced. The caller released its resources. */
void flow_table_release(struct flow_table *ft, struct flow *f);

/**
 * Give back the pages of the free slots at the top of the table (a quiet worker): hw falls to
 * just above the highest live slot (at least keep slots stay), the pages wholly above it are
 * MADV_DONTNEED, the free list is rebuilt from what is left. A slot used again later starts
 * from a generation above any it had (gen_base), so a stale completion still cannot match.
 * Returns the bytes advised.
 */
size_t flow_table_shrink(struct flow_table *ft, uint32_t keep);

/** The flow in slot whose generation is gen, or NULL (slot never used, or stale gen). */
static inline struct flow *flow_table_find(const struct flow_table *ft, uint32_t slot, uint32_t gen)
{
    if (slot >= ft->hw)
        return NULL;
    struct flow *f = &ft->flows[slot];
    return f->gen == gen ? f : NULL;
}

#endif
