/*
 * libFuzzer target for the text/event-stream parser (proto/sse.c). Input: one byte choosing
 * the data bound, then the stream. Checks:
 *  - no crash, leak or UB;
 *  - event invariants: kept data within max_data and data_len, type and id within
 *    SOTH_SSE_FIELD_MAX, untruncated events carry all their data, retry is -1 or >= 0;
 *  - split independence: the stream fed whole, byte by byte (short inputs) and in
 *    pseudo-random pieces gives the same events, counters and end-of-stream result.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/sse.h"

#define FAIL()                                                                                     \
    do {                                                                                           \
        fprintf(stderr, "fuzz_sse: check at line %d failed\n", __LINE__);                          \
        abort();                                                                                   \
    } while (0)

struct fz {
    uint32_t max_data;
    uint64_t hash;
    uint64_t n;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    if (h == 0)
        h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void on_event(void *ctx, const struct soth_sse_event *e)
{
    struct fz *f = ctx;
    if (e->data.len > e->data_len || e->data.len > f->max_data)
        FAIL();
    if (e->event.len > SOTH_SSE_FIELD_MAX || e->id.len > SOTH_SSE_FIELD_MAX)
        FAIL();
    if (!e->truncated && e->data.len != e->data_len)
        FAIL();
    if (e->retry < -1)
        FAIL();
    f->hash = fnv(f->hash, e->event.base, e->event.len);
    f->hash = fnv(f->hash, "|", 1);
    f->hash = fnv(f->hash, e->id.base, e->id.len);
    f->hash = fnv(f->hash, "|", 1);
    f->hash = fnv(f->hash, e->data.base, e->data.len);
    f->hash = fnv(f->hash, &e->retry, sizeof(e->retry));
    f->hash = fnv(f->hash, &e->data_len, sizeof(e->data_len));
    f->hash = fnv(f->hash, &e->truncated, sizeof(e->truncated));
    f->n++;
}

struct result {
    uint64_t hash, n, events, truncated;
    bool pending;
};

/* mode 0: whole; 1: byte by byte; else pseudo-random pieces from the seed */
static void run(const struct soth_sse_limits *lim, const uint8_t *p, size_t n, int mode,
                uint64_t seed, struct result *out)
{
    static unsigned char mem[sizeof(void *) * 256 + 65536 + 4096] __attribute__((aligned(16)));
    if (soth_sse_size(lim) > sizeof(mem))
        FAIL();
    struct fz f = {.max_data = lim->max_data};
    struct soth_sse_cbs cbs = {.ctx = &f, .on_event = on_event};
    struct soth_sse *s = soth_sse_init(mem, lim, &cbs);
    size_t pos = 0;
    while (pos < n) {
        size_t take = n - pos;
        if (mode == 1) {
            take = 1;
        } else if (mode == 2) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            take = (size_t)(seed >> 33) % 17;
            if (take > n - pos)
                take = n - pos;
        }
        if (soth_sse_feed(s, (const char *)p + pos, take) != (ssize_t)take)
            FAIL();
        pos += take;
    }
    *out = (struct result){
        .hash = f.hash, .n = f.n, .events = soth_sse_events(s), .truncated = soth_sse_truncated(s)};
    out->pending = soth_sse_finish(s);
    if (soth_sse_finish(s))
        FAIL(); /* finish leaves a fresh stream */
    if (out->events != out->n || out->truncated > out->events)
        FAIL();
}

static bool same(const struct result *a, const struct result *b)
{
    return a->hash == b->hash && a->n == b->n && a->events == b->events &&
           a->truncated == b->truncated && a->pending == b->pending;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const uint32_t bounds[8] = {1, 2, 3, 5, 8, 64, 4096, 65536};
    struct soth_sse_limits lim = {.max_data = bounds[data[0] & 7]};
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    struct result whole, other;
    run(&lim, p, n, 0, 0, &whole);
    if (n <= 4096) {
        run(&lim, p, n, 1, 0, &other);
        if (!same(&whole, &other))
            FAIL(); /* byte by byte differs from whole */
    }
    run(&lim, p, n, 2, fnv(0, data, size) | 1, &other);
    if (!same(&whole, &other))
        FAIL(); /* random pieces differ from whole */
    return 0;
}
