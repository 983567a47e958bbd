/*
 * Budgets per (identity, rule) over a sliding window, across workers without locks
 * (docs/soth.md "Budgets"). Each worker owns one slot per (identity, budget): a ring of
 * SOTH_BUDGET_BUCKETS sub-window counters stamped with their sub-window number. Only that
 * worker writes them; an admission reads every worker's slot (relaxed loads) and sums the
 * sub-windows still inside the window. Reading and counting are not one atomic step, so
 * workers admitting at the same instant can each see the last free unit: the total exceeds
 * a limit by at most one request per other worker (bytes: the transfers already admitted
 * finish, as with one worker).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "soth/policy.h"

const char *const soth_budget_limit_names[3] = {"", "requests", "bytes"};

struct bslot {
    _Atomic uint32_t epoch[SOTH_BUDGET_BUCKETS]; /* sub-window number of each counter */
    _Atomic uint32_t req[SOTH_BUDGET_BUCKETS];
    _Atomic uint64_t bytes[SOTH_BUDGET_BUCKETS];
    _Atomic uint64_t rejections; /* this worker's 429s under this budget (any identity) */
} __attribute__((aligned(64)));

struct bdef {
    struct soth_budget_cfg cfg;
    uint64_t bucket_ms;
    char *rule;
};

struct soth_budget {
    _Atomic unsigned users; /* soth_budget_hold / soth_budget_release */
    unsigned n_workers;
    int n_idents;
    int n_slots;
    char **idents; /* identity names, for soth_budget_fits */
    struct bdef *defs;
    struct bslot *slots; /* [(identity * n_slots + slot) * n_workers + worker] */
};

static struct bslot *slot_of(const struct soth_budget *b, unsigned worker, int identity, int slot)
{
    size_t k = ((size_t)identity * (size_t)b->n_slots + (size_t)slot) * b->n_workers + worker;
    return &b->slots[k];
}

struct soth_budget *soth_budget_new(const struct soth_policy *p, unsigned n_workers)
{
    int ns = soth_policy_n_budgets(p), ni = soth_policy_n_identities(p);
    if (ns == 0 || n_workers == 0)
        return NULL;
    struct soth_budget *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    atomic_init(&b->users, 1);
    b->n_workers = n_workers;
    b->n_idents = ni;
    b->n_slots = ns;
    b->idents = calloc((size_t)ni, sizeof(*b->idents));
    b->defs = calloc((size_t)ns, sizeof(*b->defs));
    size_t n = (size_t)ni * (size_t)ns * n_workers;
    b->slots = aligned_alloc(64, n * sizeof(struct bslot));
    if (b->idents == NULL || b->defs == NULL || b->slots == NULL)
        goto fail;
    memset(b->slots, 0, n * sizeof(struct bslot));
    for (int i = 0; i < ni; i++) {
        struct soth_iov nm = soth_policy_identity_name(p, i);
        b->idents[i] = strndup(nm.base, nm.len);
        if (b->idents[i] == NULL)
            goto fail;
    }
    for (int s = 0; s < ns; s++) {
        struct bdef *d = &b->defs[s];
        d->cfg = *soth_policy_budget(p, s);
        d->bucket_ms = (uint64_t)d->cfg.window_s * 1000u / SOTH_BUDGET_BUCKETS;
        struct soth_iov r = soth_policy_budget_rule(p, s);
        d->rule = strndup(r.base, r.len);
        if (d->rule == NULL)
            goto fail;
    }
    return b;
fail:
    soth_budget_free(b);
    return NULL;
}

void soth_budget_free(struct soth_budget *b)
{
    if (b == NULL)
        return;
    for (int i = 0; b->idents != NULL && i < b->n_idents; i++)
        free(b->idents[i]);
    for (int s = 0; b->defs != NULL && s < b->n_slots; s++)
        free(b->defs[s].rule);
    free(b->idents);
    free(b->defs);
    free(b->slots);
    free(b);
}

void soth_budget_hold(struct soth_budget *b)
{
    if (b != NULL)
        atomic_fetch_add_explicit(&b->users, 1, memory_order_relaxed);
}

/* Release: every count a worker made in b happens before the free that a 0 allows. */
void soth_budget_release(struct soth_budget *b)
{
    if (b != NULL)
        atomic_fetch_sub_explicit(&b->users, 1, memory_order_release);
}

unsigned soth_budget_users(const struct soth_budget *b)
{
    return atomic_load_explicit(&b->users, memory_order_acquire);
}

bool soth_budget_fits(const struct soth_budget *b, const struct soth_policy *p)
{
    if (b == NULL || b->n_slots != soth_policy_n_budgets(p) ||
        b->n_idents != soth_policy_n_identities(p))
        return false;
    for (int i = 0; i < b->n_idents; i++) {
        struct soth_iov nm = soth_policy_identity_name(p, i);
        if (strlen(b->idents[i]) != nm.len || memcmp(b->idents[i], nm.base, nm.len) != 0)
            return false;
    }
    for (int s = 0; s < b->n_slots; s++) {
        const struct soth_budget_cfg *c = soth_policy_budget(p, s);
        struct soth_iov r = soth_policy_budget_rule(p, s);
        const struct bdef *d = &b->defs[s];
        if (c->requests != d->cfg.requests || c->bytes != d->cfg.bytes ||
            c->window_s != d->cfg.window_s || strlen(d->rule) != r.len ||
            memcmp(d->rule, r.base, r.len) != 0)
            return false;
    }
    return true;
}

/* This worker's counter for sub-window `ep`, reset when it last counted an older one. The
 * stamp is stored after the reset, so a reader may briefly see the new stamp with the old
 * count (it then over-counts: refuses early, never admits more). */
static unsigned bucket_take(struct bslot *s, uint32_t ep)
{
    unsigned j = ep % SOTH_BUDGET_BUCKETS;
    if (atomic_load_explicit(&s->epoch[j], memory_order_relaxed) != ep) {
        atomic_store_explicit(&s->req[j], 0, memory_order_relaxed);
        atomic_store_explicit(&s->bytes[j], 0, memory_order_relaxed);
        atomic_store_explicit(&s->epoch[j], ep, memory_order_release);
    }
    return j;
}

enum soth_budget_limit soth_budget_admit(struct soth_budget *b, unsigned worker, int identity,
                                         int slot, uint64_t now_ms, bool count_request,
                                         uint32_t *retry_after_s)
{
    if (b == NULL || slot < 0 || slot >= b->n_slots || identity < 0 || identity >= b->n_idents ||
        worker >= b->n_workers)
        return SOTH_BUDGET_OK;
    const struct bdef *d = &b->defs[slot];
    uint64_t bms = d->bucket_ms ? d->bucket_ms : 1;
    uint32_t ep = (uint32_t)(now_ms / bms);
    uint64_t req = 0, bytes = 0;
    uint32_t oldest = ep;
    for (unsigned w = 0; w < b->n_workers; w++) {
        struct bslot *s = slot_of(b, w, identity, slot);
        for (unsigned j = 0; j < SOTH_BUDGET_BUCKETS; j++) {
            uint32_t e = atomic_load_explicit(&s->epoch[j], memory_order_acquire);
            if (ep - e >= SOTH_BUDGET_BUCKETS)
                continue; /* left the window (or never used) */
            uint32_t r = atomic_load_explicit(&s->req[j], memory_order_relaxed);
            uint64_t by = atomic_load_explicit(&s->bytes[j], memory_order_relaxed);
            if ((r | by) != 0 && e < oldest)
                oldest = e;
            req += r;
            bytes += by;
        }
    }
    enum soth_budget_limit lim = SOTH_BUDGET_OK;
    if (d->cfg.requests > 0 && req >= d->cfg.requests)
        lim = SOTH_BUDGET_REQUESTS;
    else if (d->cfg.bytes > 0 && bytes >= d->cfg.bytes)
        lim = SOTH_BUDGET_BYTES;
    struct bslot *mine = slot_of(b, worker, identity, slot);
    if (lim != SOTH_BUDGET_OK) {
        atomic_fetch_add_explicit(&mine->rejections, 1, memory_order_relaxed);
        if (retry_after_s != NULL) {
            uint64_t free_at = ((uint64_t)oldest + SOTH_BUDGET_BUCKETS) * bms;
            uint64_t wait = free_at > now_ms ? free_at - now_ms : 0;
            uint64_t s = (wait + 999) / 1000;
            *retry_after_s = s < 1 ? 1 : (uint32_t)s;
        }
        return lim;
    }
    if (count_request) {
        unsigned j = bucket_take(mine, ep);
        atomic_store_explicit(&mine->req[j],
                              atomic_load_explicit(&mine->req[j], memory_order_relaxed) + 1,
                              memory_order_relaxed);
    }
    return SOTH_BUDGET_OK;
}

void soth_budget_add_bytes(struct soth_budget *b, unsigned worker, int identity, int slot,
                           uint64_t now_ms, uint64_t n)
{
    if (b == NULL || n == 0 || slot < 0 || slot >= b->n_slots || identity < 0 ||
        identity >= b->n_idents || worker >= b->n_workers || b->defs[slot].cfg.bytes == 0)
        return;
    uint64_t bms = b->defs[slot].bucket_ms ? b->defs[slot].bucket_ms : 1;
    struct bslot *mine = slot_of(b, worker, identity, slot);
    unsigned j = bucket_take(mine, (uint32_t)(now_ms / bms));
    atomic_store_explicit(&mine->bytes[j],
                          atomic_load_explicit(&mine->bytes[j], memory_order_relaxed) + n,
                          memory_order_relaxed);
}

int soth_budget_n_slots(const struct soth_budget *b)
{
    return b != NULL ? b->n_slots : 0;
}

uint64_t soth_budget_rejections(const struct soth_budget *b, int slot)
{
    uint64_t n = 0;
    for (int i = 0; i < b->n_idents; i++)
        for (unsigned w = 0; w < b->n_workers; w++)
            n += atomic_load_explicit(&slot_of(b, w, i, slot)->rejections, memory_order_relaxed);
    return n;
}

const char *soth_budget_rule(const struct soth_budget *b, int slot)
{
    return b->defs[slot].rule;
}

uint32_t soth_budget_window_s(const struct soth_budget *b, int slot)
{
    return b->defs[slot].cfg.window_s;
}
