/*
 * Learning (pinning bypass): per-host rolling failure counts and pins, owned by one writer
 * thread (the telemetry thread), published to workers as immutable, reference-counted
 * snapshots through per-worker one-entry mailboxes. Workers never lock and never see the
 * writer's mutable state. docs/tls.md "Learning".
 *
 * Rolling counts: the window is cut into ROLL_BUCKETS buckets; a count is the sum of the
 * buckets of the last window, so an event leaves the count between window - window/16 and
 * window after it happened.
 */
#include "tls_int.h"

#include <stdatomic.h>
#include <string.h>
#include <xxhash.h>

#define ROLL_BUCKETS      16
#define DEFAULT_MAX_HOSTS 65536

struct roll {
    uint64_t epoch[ROLL_BUCKETS];
    uint32_t count[ROLL_BUCKETS];
};

struct host {
    struct host *hnext;       /* hash chain */
    struct host *prev, *next; /* LRU by last update, head = newest */
    uint64_t hash;
    uint64_t pinned_until_ns; /* 0 = not pinned */
    struct roll all, pin;     /* every failure; client-side unknown_ca/cert_validation */
    uint32_t pin_failures;    /* pin-counting failures in the window when the pin was applied */
    uint8_t pin_provider;     /* enum soth_tls_signal_provider of the signal that applied it */
    uint16_t port;
    uint8_t name_len;
    char name[LEAF_NAME_MAX];
};

struct soth_tls_learning {
    struct soth_tls_learning_params p;
    uint64_t bucket_ns;
    struct host **buckets;
    uint32_t nbuckets, count;
    struct host *lru_head, *lru_tail;
    struct roll global;
};

struct pin {
    uint64_t hash;
    uint64_t until_ns;
    uint32_t failures;
    uint8_t provider;
    uint16_t port;
    uint8_t name_len;
    char name[LEAF_NAME_MAX];
};

struct soth_tls_learning_snapshot {
    atomic_uint refs;
    uint32_t n;
    struct pin pins[]; /* sorted by hash */
};

static uint64_t host_hash(const char *name, size_t len, uint16_t port)
{
    return XXH3_64bits_withSeed(name, len, port);
}

static void roll_add(struct roll *r, uint64_t epoch)
{
    unsigned i = (unsigned)(epoch % ROLL_BUCKETS);
    if (r->epoch[i] != epoch) {
        r->epoch[i] = epoch;
        r->count[i] = 0;
    }
    r->count[i]++;
}

static uint32_t roll_sum(const struct roll *r, uint64_t epoch)
{
    uint32_t s = 0;
    for (unsigned i = 0; i < ROLL_BUCKETS; i++) {
        /* epoch + 1 so that epoch 0 (the zeroed initial state) counts only when written */
        if (r->count[i] != 0 && r->epoch[i] + ROLL_BUCKETS > epoch && r->epoch[i] <= epoch)
            s += r->count[i];
    }
    return s;
}

int soth_tls_learning_new(const struct soth_tls_learning_params *p, struct soth_tls_learning **out)
{
    struct soth_tls_learning *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return SOTH_E_NOMEM;
    l->p = *p;
    if (l->p.failure_threshold == 0)
        l->p.failure_threshold = 1;
    if (l->p.window_s == 0)
        l->p.window_s = 1;
    if (l->p.max_hosts == 0)
        l->p.max_hosts = DEFAULT_MAX_HOSTS;
    l->bucket_ns = (uint64_t)l->p.window_s * 1000000000ull / ROLL_BUCKETS;
    l->nbuckets = 64;
    while (l->nbuckets < l->p.max_hosts && l->nbuckets < (1u << 20))
        l->nbuckets <<= 1;
    l->buckets = calloc(l->nbuckets, sizeof(*l->buckets));
    if (l->buckets == NULL) {
        free(l);
        return SOTH_E_NOMEM;
    }
    *out = l;
    return 0;
}

void soth_tls_learning_free(struct soth_tls_learning *l)
{
    if (l == NULL)
        return;
    struct host *h = l->lru_head;
    while (h != NULL) {
        struct host *n = h->next;
        free(h);
        h = n;
    }
    free(l->buckets);
    free(l);
}

static void lru_unlink(struct soth_tls_learning *l, struct host *h)
{
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        l->lru_head = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    else
        l->lru_tail = h->prev;
}

static void lru_front(struct soth_tls_learning *l, struct host *h)
{
    h->prev = NULL;
    h->next = l->lru_head;
    if (l->lru_head != NULL)
        l->lru_head->prev = h;
    l->lru_head = h;
    if (l->lru_tail == NULL)
        l->lru_tail = h;
}

static struct host *host_find(const struct soth_tls_learning *l, const char *nm, size_t n,
                              uint16_t port, uint64_t hash)
{
    for (struct host *h = l->buckets[hash & (l->nbuckets - 1)]; h != NULL; h = h->hnext)
        if (h->hash == hash && h->port == port && h->name_len == n && memcmp(h->name, nm, n) == 0)
            return h;
    return NULL;
}

static void host_drop(struct soth_tls_learning *l, struct host *h)
{
    struct host **pp = &l->buckets[h->hash & (l->nbuckets - 1)];
    while (*pp != h)
        pp = &(*pp)->hnext;
    *pp = h->hnext;
    lru_unlink(l, h);
    l->count--;
    free(h);
}

bool soth_tls_learning_provider_is_authoritative(enum soth_tls_signal_provider provider)
{
    return provider == SOTH_TLS_PROVIDER_NATIVE || provider == SOTH_TLS_PROVIDER_MITMPROXY;
}

int soth_tls_learning_record(struct soth_tls_learning *l, struct soth_iov host, uint16_t port,
                             enum soth_leg side, enum soth_tls_fail reason,
                             enum soth_tls_signal_provider provider, uint64_t now_ns,
                             struct soth_tls_learning_result *res)
{
    char nm[LEAF_NAME_MAX];
    size_t n;
    uint64_t epoch = now_ns / l->bucket_ns;

    memset(res, 0, sizeof(*res));
    if (tls_name_normalise(host, nm, &n) < 0)
        return SOTH_E_MALFORMED;
    uint64_t hash = host_hash(nm, n, port);
    struct host *h = host_find(l, nm, n, port, hash);

    if (!soth_tls_learning_provider_is_authoritative(provider)) {
        /* Only authoritative providers change learning state (docs/tls.md, "The rule"). */
        res->ignored = true;
        res->host_failure_count = h != NULL ? roll_sum(&h->all, epoch) : 0;
        res->global_failure_count = roll_sum(&l->global, epoch);
        return 0;
    }
    if (h == NULL) {
        if (l->count >= l->p.max_hosts && l->lru_tail != NULL)
            host_drop(l, l->lru_tail);
        h = calloc(1, sizeof(*h));
        if (h == NULL)
            return SOTH_E_NOMEM;
        h->hash = hash;
        h->port = port;
        h->name_len = (uint8_t)n;
        memcpy(h->name, nm, n);
        h->hnext = l->buckets[hash & (l->nbuckets - 1)];
        l->buckets[hash & (l->nbuckets - 1)] = h;
        lru_front(l, h);
        l->count++;
    } else if (l->lru_head != h) {
        lru_unlink(l, h);
        lru_front(l, h);
    }
    res->counted = true;
    roll_add(&h->all, epoch);
    roll_add(&l->global, epoch);
    if (h->pinned_until_ns != 0 && h->pinned_until_ns <= now_ns)
        h->pinned_until_ns = 0; /* the pin ran out: intercept again, learn again */
    bool pin_signal = side == SOTH_LEG_CLIENT && (reason == SOTH_TLS_FAIL_UNKNOWN_CA ||
                                                  reason == SOTH_TLS_FAIL_CERT_VALIDATION);
    if (pin_signal) {
        roll_add(&h->pin, epoch);
        uint32_t pin_count = roll_sum(&h->pin, epoch);
        if (l->p.enabled && h->pinned_until_ns == 0 && pin_count >= l->p.failure_threshold) {
            h->pinned_until_ns = now_ns + (uint64_t)l->p.window_s * 1000000000ull;
            h->pin_failures = pin_count;
            h->pin_provider = (uint8_t)provider;
            /* Start the next learning round from zero once the pin expires. */
            memset(&h->pin, 0, sizeof(h->pin));
            res->applied = true;
        }
    }
    res->host_failure_count = roll_sum(&h->all, epoch);
    res->global_failure_count = roll_sum(&l->global, epoch);
    return 0;
}

bool soth_tls_learning_is_pinned_at(const struct soth_tls_learning *l, struct soth_iov host,
                                    uint16_t port, uint64_t now_ns)
{
    char nm[LEAF_NAME_MAX];
    size_t n;
    if (tls_name_normalise(host, nm, &n) < 0)
        return false;
    const struct host *h = host_find(l, nm, n, port, host_hash(nm, n, port));
    return h != NULL && h->pinned_until_ns > now_ns;
}

/* ---- snapshots */

static int pin_cmp(const void *a, const void *b)
{
    const struct pin *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

struct soth_tls_learning_snapshot *soth_tls_learning_snapshot_new(struct soth_tls_learning *l,
                                                                  uint64_t now_ns)
{
    uint32_t n = 0;
    for (struct host *h = l->lru_head; h != NULL; h = h->next)
        if (h->pinned_until_ns > now_ns)
            n++;
    struct soth_tls_learning_snapshot *s = malloc(sizeof(*s) + (size_t)n * sizeof(struct pin));
    if (s == NULL)
        return NULL;
    atomic_init(&s->refs, 1);
    s->n = 0;
    for (struct host *h = l->lru_head; h != NULL; h = h->next) {
        if (h->pinned_until_ns <= now_ns)
            continue;
        struct pin *p = &s->pins[s->n++];
        p->hash = h->hash;
        p->until_ns = h->pinned_until_ns;
        p->failures = h->pin_failures;
        p->provider = h->pin_provider;
        p->port = h->port;
        p->name_len = h->name_len;
        memcpy(p->name, h->name, h->name_len);
    }
    qsort(s->pins, s->n, sizeof(struct pin), pin_cmp);
    return s;
}

struct soth_tls_learning_snapshot *
soth_tls_learning_snapshot_ref(struct soth_tls_learning_snapshot *s)
{
    if (s != NULL)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void soth_tls_learning_snapshot_unref(struct soth_tls_learning_snapshot *s)
{
    if (s != NULL && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        free(s);
}

bool soth_tls_learning_lookup(const struct soth_tls_learning_snapshot *s, struct soth_iov host,
                              uint16_t port, uint64_t now_ns, struct soth_tls_learning_pin *out)
{
    char nm[LEAF_NAME_MAX];
    size_t n;

    if (s == NULL || s->n == 0 || tls_name_normalise(host, nm, &n) < 0)
        return false;
    uint64_t hash = host_hash(nm, n, port);
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->pins[mid].hash < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < s->n && s->pins[i].hash == hash; i++) {
        const struct pin *p = &s->pins[i];
        if (p->port != port || p->name_len != n || memcmp(p->name, nm, n) != 0)
            continue;
        if (p->until_ns <= now_ns)
            return false;
        if (out != NULL) {
            out->until_ns = p->until_ns;
            out->failures = p->failures;
            out->provider = (enum soth_tls_signal_provider)p->provider;
        }
        return true;
    }
    return false;
}

uint32_t soth_tls_learning_snapshot_pins(const struct soth_tls_learning_snapshot *s)
{
    return s != NULL ? s->n : 0;
}

bool soth_tls_learning_is_pinned(void *ctx, struct soth_iov host, uint16_t port)
{
    const struct soth_tls_learning_snapshot *s = ctx;
    /* The clock is read only when something is pinned (the common snapshot is empty). */
    if (s == NULL || s->n == 0)
        return false;
    return soth_tls_learning_lookup(s, host, port, soth_mono_ns(), NULL);
}

/* ---- per-worker mailbox */

void soth_tls_learning_slot_init(struct soth_tls_learning_slot *slot)
{
    atomic_init(&slot->next, NULL);
}

void soth_tls_learning_slot_publish(struct soth_tls_learning_slot *slot,
                                    struct soth_tls_learning_snapshot *s)
{
    struct soth_tls_learning_snapshot *old =
        atomic_exchange_explicit(&slot->next, s, memory_order_acq_rel);
    soth_tls_learning_snapshot_unref(old);
}

struct soth_tls_learning_snapshot *soth_tls_learning_slot_take(struct soth_tls_learning_slot *slot)
{
    if (atomic_load_explicit(&slot->next, memory_order_relaxed) == NULL)
        return NULL;
    return atomic_exchange_explicit(&slot->next, NULL, memory_order_acq_rel);
}

void soth_tls_learning_slot_dispose(struct soth_tls_learning_slot *slot)
{
    soth_tls_learning_snapshot_unref(soth_tls_learning_slot_take(slot));
}
