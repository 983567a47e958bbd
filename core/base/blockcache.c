/* Per-thread free lists of heap blocks by size class (soth/blockcache.h). */
#include "soth/blockcache.h"

#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BC_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define BC_OFF 1
#endif
#endif
#ifndef BC_OFF
#define BC_OFF 0
#endif

/*
 * Classes: up to 1016 bytes, every 16k + 8 (24, 40, ..., 1016): exactly what glibc hands out
 * for such a request (its chunks are 16-byte multiples with an 8-byte header), so a block
 * comes back to its own class and costs no byte more than malloc would. From 1 KiB to
 * SOTH_BC_MAX, eight classes per power of two (1024, 1152, 1280, ..., 1920, 2048, ...): a
 * block held for a connection's life (a WOLFSSL, 1,632 bytes; the HTTP/2 relay) wastes at most
 * an eighth.
 */
#define BC_NSMALL    63 /* 24 .. 1016 */
#define BC_BIG_SHIFT 10 /* 1024: the first class of the second kind */
#define BC_MAX_SHIFT 16 /* SOTH_BC_MAX */
#define BC_PER_POW   8  /* classes per power of two above 1 KiB */
#define BC_POW_SHIFT 3  /* log2(BC_PER_POW) */
#define BC_NCLASS    (BC_NSMALL + (BC_MAX_SHIFT - BC_BIG_SHIFT) * BC_PER_POW + 1)

struct bc_block {
    struct bc_block *next;
};

struct bc_cache {
    struct bc_block *head[BC_NCLASS];
    uint32_t n[BC_NCLASS];
    size_t bytes;     /* all cached blocks */
    size_t big_bytes; /* those in classes above SOTH_BC_SMALL */
    bool dead;        /* the thread-exit flush ran: later frees go to libc */
    bool keyed;       /* registered for the thread-exit flush */
};

static _Thread_local struct bc_cache bc;
static pthread_key_t bc_key;
static pthread_once_t bc_once = PTHREAD_ONCE_INIT;

static size_t class_size(unsigned c)
{
    if (c < BC_NSMALL)
        return 16 * (size_t)(c + 1) + 8;
    c -= BC_NSMALL;
    unsigned p = BC_BIG_SHIFT + c / BC_PER_POW, k = c % BC_PER_POW;
    return ((size_t)1 << p) + (size_t)k * ((size_t)1 << (p - BC_POW_SHIFT));
}

/** The smallest class holding n bytes (n <= SOTH_BC_MAX). */
static unsigned class_up(size_t n)
{
    if (n <= 24)
        return 0;
    if (n <= 1016)
        return (unsigned)((n - 8 + 15) / 16) - 1;
    if (n <= (1u << BC_BIG_SHIFT))
        return BC_NSMALL;
    unsigned p = 63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1)); /* 2^p < n */
    size_t step = (size_t)1 << (p - BC_POW_SHIFT);
    size_t k = (n - ((size_t)1 << p) + step - 1) / step; /* 1..BC_PER_POW */
    return BC_NSMALL + (p - BC_BIG_SHIFT) * BC_PER_POW + (unsigned)k;
}

/** The largest class not above u bytes, or -1 below the smallest or above the largest. */
static int class_down(size_t u)
{
    if (u < 24 || u >= 2 * (size_t)SOTH_BC_MAX)
        return -1;
    if (u < (1u << BC_BIG_SHIFT))
        return (int)((u - 8) / 16) - 1;
    unsigned p = 63u - (unsigned)__builtin_clzll((unsigned long long)u); /* 2^p <= u */
    size_t k = (u - ((size_t)1 << p)) >> (p - BC_POW_SHIFT);             /* 0..BC_PER_POW-1 */
    unsigned c = BC_NSMALL + (p - BC_BIG_SHIFT) * BC_PER_POW + (unsigned)k;
    return c < BC_NCLASS ? (int)c : BC_NCLASS - 1;
}

static void bc_flush(struct bc_cache *cache)
{
    for (unsigned c = 0; c < BC_NCLASS; c++) {
        struct bc_block *b = cache->head[c];
        while (b != NULL) {
            struct bc_block *next = b->next;
            free(b);
            b = next;
        }
        cache->head[c] = NULL;
        cache->n[c] = 0;
    }
    cache->bytes = 0;
    cache->big_bytes = 0;
}

static void bc_thread_exit(void *arg)
{
    struct bc_cache *cache = arg;
    bc_flush(cache);
    cache->dead = true;
}

static void bc_key_init(void)
{
    if (pthread_key_create(&bc_key, bc_thread_exit) != 0)
        bc_key = (pthread_key_t)-1;
}

bool soth_bc_enabled(void)
{
    return !BC_OFF;
}

void *soth_bc_malloc(size_t n)
{
    if (BC_OFF || n > SOTH_BC_MAX)
        return malloc(n);
    unsigned want = class_up(n);
    /* A block is filed on free by its usable size, which malloc rounds up (glibc: by up to 15
     * bytes), so blocks asked for as class c come back in c, c + 1 or c + 2: look there. */
    for (unsigned c = want; c < want + 3 && c < BC_NCLASS; c++) {
        struct bc_block *b = bc.head[c];
        if (b != NULL) {
            bc.head[c] = b->next;
            bc.n[c]--;
            bc.bytes -= class_size(c);
            if (class_size(c) > SOTH_BC_SMALL)
                bc.big_bytes -= class_size(c);
            return b;
        }
    }
    return malloc(class_size(want));
}

void *soth_bc_calloc(size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n))
        return NULL;
    if (BC_OFF || n > SOTH_BC_MAX)
        return calloc(nmemb, size);
    void *p = soth_bc_malloc(n);
    if (p != NULL)
        memset(p, 0, n);
    return p;
}

void soth_bc_free(void *p)
{
    if (p == NULL)
        return;
    if (BC_OFF) {
        free(p);
        return;
    }
    int c = class_down(malloc_usable_size(p));
    size_t sz = c >= 0 ? class_size((unsigned)c) : 0;
    /* Small and large blocks have a byte budget each: a burst of large frees (a handshake's)
     * must not push the small per-stream blocks out to malloc. */
    bool big = sz > SOTH_BC_SMALL;
    if (c < 0 || bc.dead || bc.n[c] >= SOTH_BC_KEEP ||
        (big ? bc.big_bytes + sz > SOTH_BC_KEEP_BYTES
             : bc.bytes - bc.big_bytes + sz > SOTH_BC_KEEP_SMALL_BYTES)) {
        free(p);
        return;
    }
    if (!bc.keyed) {
        pthread_once(&bc_once, bc_key_init);
        if (bc_key != (pthread_key_t)-1)
            pthread_setspecific(bc_key, &bc);
        bc.keyed = true;
    }
    struct bc_block *b = p;
    b->next = bc.head[c];
    bc.head[c] = b;
    bc.n[c]++;
    bc.bytes += sz;
    if (sz > SOTH_BC_SMALL)
        bc.big_bytes += sz;
}

void *soth_bc_realloc(void *p, size_t n)
{
    if (BC_OFF)
        return realloc(p, n);
    if (p == NULL)
        return soth_bc_malloc(n);
    if (n == 0) {
        soth_bc_free(p);
        return NULL;
    }
    size_t have = malloc_usable_size(p);
    if (have >= n)
        return p;
    void *q = soth_bc_malloc(n);
    if (q == NULL)
        return NULL;
    memcpy(q, p, have);
    soth_bc_free(p);
    return q;
}

void soth_bc_trim(void)
{
    bc_flush(&bc);
}

size_t soth_bc_cached_bytes(void)
{
    return bc.bytes;
}
