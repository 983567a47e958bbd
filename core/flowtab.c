/* A worker's flow table (core/flowtab.h): slots, generations, the free list. */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "flowtab.h"

int flow_table_init(struct flow_table *ft)
{
    ft->hw = 0;
    ft->n_live = 0;
    ft->max = SOTH_MAX_FLOWS;
    ft->free = NULL;
    ft->gen_base = 0;
    /* Address space only: pages are touched as slots are used. */
    void *p = mmap(NULL, (size_t)SOTH_MAX_FLOWS * sizeof(struct flow), PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    ft->flows = p;
    return 0;
}

void flow_table_dispose(struct flow_table *ft)
{
    if (ft->flows != NULL)
        munmap(ft->flows, (size_t)SOTH_MAX_FLOWS * sizeof(struct flow));
    ft->flows = NULL;
}

struct flow *flow_table_alloc(struct flow_table *ft, struct worker *w)
{
    struct flow *f = ft->free;
    if (f != NULL) {
        ft->free = f->wnext;
    } else {
        if (ft->hw >= ft->max)
            return NULL;
        f = &ft->flows[ft->hw];
        f->slot = ft->hw++;
        f->gen = ft->gen_base;
    }
    f->gen++;
    f->state = FS_HEAD;
    f->action = SOTH_ACTION_TUNNEL;
    f->is_connect = false;
    f->on_wait_list = false;
    f->first_eof = 0xff;
    f->answer_reason = SOTH_CLOSE_CLIENT_EOF;
    f->pending = 0;
    conn_init(&f->c[0]);
    conn_init(&f->c[1]);
    f->bytes[0] = f->bytes[1] = 0;
    timer_entry_init(&f->timer);
    f->last_active_ms = now_ms();
    f->wnext = NULL;
    f->head = NULL;
    f->head_len = 0;
    f->tls[0] = f->tls[1] = NULL;
    f->w = w;
    f->app = NULL;
    f->is_reverse = false;
    f->is_transparent = false;
    f->is_socks = false;
    f->client_plain = false;
    f->app_done = false;
    f->app_held[0] = f->app_held[1] = false;
    f->answer = NULL;
    f->answer_len = 0;
    f->pre = (struct soth_gbuf){0};
    f->upstream_port = 0;
    f->upstream_addr_len = 0;
    f->route = NULL;
    f->pol = NULL;
    f->proxy_head_len = 0;
    f->proxy_eoh = 0;
    f->proxy_line_len = 0;
    f->proxy_line_done = false;
    f->identity_set = false;
    f->identity = 0;
    f->budget_slot = -1;
    f->budget_retry_s = 0;
    f->bgt = NULL;
    f->peer_len = 0;
    f->up_defer = f->up_keyed = f->up_pooled = f->up_poolable = f->up_keep = false;
    f->up_alpn_len = 0;
    f->up_requests = 0;
    f->up_redial = UP_REDIAL_NONE;
    f->up_heard = f->up_retried = f->up_replay_over = f->up_redial_eof = f->up_alpn_h11 =
        f->up_redial_reset = false;
    f->up_wake = f->up_wake_wanted = f->up_park_fin = f->up_dialing = false;
    f->replay_len = 0;
    for (unsigned i = 0; i < FLOW_REPLAY_CHUNKS; i++)
        f->replay[i] = NULL;
    ft->n_live++;
    return f;
}

void flow_table_release(struct flow_table *ft, struct flow *f)
{
    f->state = FS_FREE;
    f->gen++; /* any late CQE for the old generation is now stale */
    f->wnext = ft->free;
    ft->free = f;
    ft->n_live--;
}

size_t flow_table_shrink(struct flow_table *ft, uint32_t keep)
{
    uint32_t top = ft->hw;
    while (top > keep && ft->flows[top - 1].state == FS_FREE)
        top--;
    if (top == ft->hw)
        return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)&ft->flows[top] + page - 1) & ~(page - 1);
    uintptr_t to = ((uintptr_t)&ft->flows[ft->hw] + page - 1) & ~(page - 1);
    for (uint32_t i = top; i < ft->hw; i++) {
        if (ft->flows[i].gen >= ft->gen_base)
            ft->gen_base = (ft->flows[i].gen + 2) & ~1u; /* even, above every gen given out */
    }
    ft->hw = top;
    ft->free = NULL;
    for (uint32_t i = top; i-- > 0;) {
        struct flow *f = &ft->flows[i];
        if (f->state == FS_FREE) {
            f->wnext = ft->free;
            ft->free = f;
        }
    }
    if (to <= from || madvise((void *)from, to - from, MADV_DONTNEED) != 0)
        return 0;
    return to - from;
}
