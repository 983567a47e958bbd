/*
 * Leaf minting and the per-worker LRU leaf cache. No locks: a struct soth_tls_ctx belongs to
 * one worker. The cache's memory is allocated once at ctx creation (a fixed slab of DER slots).
 */
#include "tls_int.h"

#include <string.h>
#include <time.h>
#include <xxhash.h>

#define LEAF_BACKDATE_S 3600 /* clients with a clock a little behind still accept the leaf */

int tls_encode_time(int64_t t, uint8_t *out, int *out_len);

/* GeneralNames with one entry: [2] dNSName or [7] iPAddress (RFC 5280 4.2.1.6). */
static int build_alt_names(uint8_t *out, size_t cap, const char *name, size_t len,
                           const uint8_t *ip, int ip_len)
{
    size_t body = ip_len > 0 ? (size_t)ip_len : len;
    size_t gn_hdr = body < 128 ? 2 : 3;
    size_t inner = gn_hdr + body;
    size_t seq_hdr = inner < 128 ? 2 : 3;
    size_t off = 0;
    if (seq_hdr + inner > cap)
        return SOTH_E_TOO_LARGE;
    out[off++] = 0x30;
    if (inner >= 128)
        out[off++] = 0x81;
    out[off++] = (uint8_t)inner;
    out[off++] = ip_len > 0 ? 0x87 : 0x82;
    if (body >= 128)
        out[off++] = 0x81;
    out[off++] = (uint8_t)body;
    memcpy(out + off, ip_len > 0 ? (const void *)ip : (const void *)name, body);
    return (int)(off + body);
}

ssize_t soth_tls_leaf_mint(struct soth_tls_ctx *t, struct soth_iov name, uint8_t *der, size_t cap)
{
    char nm[LEAF_NAME_MAX];
    size_t n;
    uint8_t ip[16];

    if (tls_name_normalise(name, nm, &n) < 0)
        return SOTH_E_MALFORMED;
    int ip_len = tls_name_ip(nm, n, ip);
    if (ip_len == 0 && !tls_name_is_dns(nm, n, true))
        return SOTH_E_MALFORMED;

    Cert *c = t->work;
    memcpy(c, t->tmpl, sizeof(*c));
    c->serialSz = 16;
    if (wc_RNG_GenerateBlock(&t->rng, c->serial, 16) != 0)
        return SOTH_E_TLS;
    c->serial[0] = (uint8_t)((c->serial[0] & 0x7f) | 0x40); /* positive, no leading zero */
    if (n < sizeof(c->subject.commonName)) {
        memcpy(c->subject.commonName, nm, n + 1);
        c->subject.commonNameEnc = CTC_UTF8;
        c->altNamesCrit = 0;
    } else {
        /* RFC 5280 4.2.1.6: with an empty subject the SAN extension is critical. */
        c->subject.commonName[0] = '\0';
        c->altNamesCrit = 1;
    }
    int alt = build_alt_names(c->altNames, sizeof(c->altNames), nm, n, ip, ip_len);
    if (alt < 0)
        return alt;
    c->altNamesSz = alt;

    int64_t nb = (int64_t)time(NULL) - LEAF_BACKDATE_S;
    if (tls_encode_time(nb, c->beforeDate, &c->beforeDateSz) < 0 ||
        tls_encode_time(nb + (int64_t)t->leaf_validity_days * 86400, c->afterDate,
                        &c->afterDateSz) < 0)
        return SOTH_E_TLS;

    if (cap > UINT32_MAX)
        cap = UINT32_MAX;
    int r = wc_MakeCert_ex(c, der, (word32)cap, ECC_TYPE, &t->leaf_key, &t->rng);
    if (r < 0)
        return r == BUFFER_E ? SOTH_E_TOO_LARGE : SOTH_E_TLS;
    const struct soth_tls_ca *ca = t->ca;
    void *ca_key = ca->key_type == ECC_TYPE ? (void *)&t->ca_ecc : (void *)&t->ca_rsa;
    r = wc_SignCert_ex(c->bodySz, ca->sig_type, der, (word32)cap, ca->key_type, ca_key, &t->rng);
    if (r < 0)
        return r == BUFFER_E ? SOTH_E_TOO_LARGE : SOTH_E_TLS;
    return r;
}

/* ---- the cache */

int tls_cache_init(struct leaf_cache *c, uint32_t capacity, size_t der_cap)
{
    memset(c, 0, sizeof(*c));
    c->lru_head = c->lru_tail = c->free_head = LEAF_NIL;
    c->der_cap = der_cap;
    if (capacity == 0)
        return 0;
    uint32_t nb = 16;
    while (nb < capacity * 2u && nb < (1u << 30))
        nb <<= 1;
    c->e = calloc(capacity, sizeof(*c->e));
    c->buckets = malloc(nb * sizeof(*c->buckets));
    c->slab = malloc((size_t)capacity * der_cap);
    if (c->e == NULL || c->buckets == NULL || c->slab == NULL) {
        tls_cache_dispose(c);
        return SOTH_E_NOMEM;
    }
    c->capacity = capacity;
    c->nbuckets = nb;
    for (uint32_t i = 0; i < nb; i++)
        c->buckets[i] = LEAF_NIL;
    for (uint32_t i = 0; i < capacity; i++) {
        c->e[i].der = c->slab + (size_t)i * der_cap;
        c->e[i].hnext = i + 1 < capacity ? i + 1 : LEAF_NIL;
    }
    c->free_head = 0;
    return 0;
}

void tls_cache_dispose(struct leaf_cache *c)
{
    free(c->e);
    free(c->buckets);
    free(c->slab);
    c->e = NULL;
    c->buckets = NULL;
    c->slab = NULL;
    c->capacity = 0;
}

static void lru_unlink(struct leaf_cache *c, uint32_t i)
{
    struct leaf_entry *e = &c->e[i];
    if (e->prev != LEAF_NIL)
        c->e[e->prev].next = e->next;
    else
        c->lru_head = e->next;
    if (e->next != LEAF_NIL)
        c->e[e->next].prev = e->prev;
    else
        c->lru_tail = e->prev;
}

static void lru_push_front(struct leaf_cache *c, uint32_t i)
{
    struct leaf_entry *e = &c->e[i];
    e->prev = LEAF_NIL;
    e->next = c->lru_head;
    if (c->lru_head != LEAF_NIL)
        c->e[c->lru_head].prev = i;
    c->lru_head = i;
    if (c->lru_tail == LEAF_NIL)
        c->lru_tail = i;
}

static void bucket_remove(struct leaf_cache *c, uint32_t i)
{
    uint32_t *pp = &c->buckets[c->e[i].hash & (c->nbuckets - 1)];
    while (*pp != LEAF_NIL) {
        if (*pp == i) {
            *pp = c->e[i].hnext;
            return;
        }
        pp = &c->e[*pp].hnext;
    }
}

int soth_tls_leaf_get(struct soth_tls_ctx *t, struct soth_iov name, struct soth_tls_leaf *out)
{
    struct leaf_cache *c = &t->cache;
    char nm[LEAF_NAME_MAX];
    size_t n;

    if (tls_name_normalise(name, nm, &n) < 0)
        return SOTH_E_MALFORMED;
    uint64_t h = XXH3_64bits(nm, n);

    if (c->capacity == 0) {
        /* Cache disabled: mint into the one scratch slot every time. */
        ssize_t r = soth_tls_leaf_mint(t, soth_iov(nm, n), t->scratch_der, c->der_cap);
        if (r < 0)
            return (int)r;
        c->misses++;
        t->scratch_len = (uint16_t)r;
        out->der = soth_iov(t->scratch_der, (size_t)r);
        out->key = h;
        return 0;
    }

    uint32_t b = (uint32_t)(h & (c->nbuckets - 1));
    for (uint32_t i = c->buckets[b]; i != LEAF_NIL; i = c->e[i].hnext) {
        struct leaf_entry *e = &c->e[i];
        if (e->hash == h && e->name_len == n && memcmp(e->name, nm, n) == 0) {
            c->hits++;
            if (c->lru_head != i) {
                lru_unlink(c, i);
                lru_push_front(c, i);
            }
            out->der = soth_iov(e->der, e->der_len);
            out->key = h;
            return 0;
        }
    }

    /* Miss: take a free slot or evict the least recently used one. */
    uint32_t i = c->free_head;
    if (i != LEAF_NIL) {
        c->free_head = c->e[i].hnext;
    } else {
        i = c->lru_tail;
        lru_unlink(c, i);
        bucket_remove(c, i);
        c->e[i].used = false;
        c->count--;
        c->evictions++;
    }
    struct leaf_entry *e = &c->e[i];
    ssize_t r = soth_tls_leaf_mint(t, soth_iov(nm, n), e->der, c->der_cap);
    if (r < 0) {
        e->hnext = c->free_head;
        c->free_head = i;
        return (int)r;
    }
    c->misses++;
    e->hash = h;
    e->der_len = (uint16_t)r;
    e->name_len = (uint8_t)n;
    memcpy(e->name, nm, n);
    e->used = true;
    e->hnext = c->buckets[b];
    c->buckets[b] = i;
    lru_push_front(c, i);
    c->count++;
    out->der = soth_iov(e->der, e->der_len);
    out->key = h;
    return 0;
}

void soth_tls_leaf_cache_stats(const struct soth_tls_ctx *t, struct soth_tls_leaf_cache_stats *s)
{
    s->hits = t->cache.hits;
    s->misses = t->cache.misses;
    s->evictions = t->cache.evictions;
    s->entries = t->cache.count;
    s->capacity = t->cache.capacity;
}

void soth_tls_leaf_cache_flush(struct soth_tls_ctx *t)
{
    struct leaf_cache *c = &t->cache;
    if (c->capacity == 0)
        return;
    for (uint32_t i = 0; i < c->nbuckets; i++)
        c->buckets[i] = LEAF_NIL;
    for (uint32_t i = 0; i < c->capacity; i++) {
        c->e[i].used = false;
        c->e[i].hnext = i + 1 < c->capacity ? i + 1 : LEAF_NIL;
    }
    c->free_head = 0;
    c->lru_head = c->lru_tail = LEAF_NIL;
    c->count = 0;
}
