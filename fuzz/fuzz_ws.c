/*
 * libFuzzer target for the WebSocket frame parser and the turn aggregator (proto/ws.c).
 * Input: one flags byte (bit 0 deflate, bits 1-3 capture size, bits 4-7 message limit), then
 * the frame stream. Checks:
 *  - no crash, leak or UB, for either direction;
 *  - message invariants: captured <= len and <= capture, truncated exactly when bytes were not
 *    captured, valid opcodes, control payloads <= 125 bytes, close codes sendable;
 *  - split independence: the stream fed whole and in pseudo-random pieces (seeded by the
 *    input) gives the same messages, the same error and the same error offset;
 *  - turns: the messages of both directions, interleaved, give well-formed turns (ids 1, 2,
 *    3, ..., one open at a time, each started turn completed after soth_ws_turns_end).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/ws.h"

#define FAIL()                                                                                     \
    do {                                                                                           \
        fprintf(stderr, "fuzz_ws: check at line %d failed\n", __LINE__);                           \
        abort();                                                                                   \
    } while (0)

#define MAX_MSGS 4096

struct rec {
    uint64_t len;
    unsigned opcode;
    int close_code;
    uint32_t frames;
    bool truncated, compressed;
    uint64_t data_hash;
};

struct fz {
    uint32_t cap;
    uint64_t hash; /* FNV-1a over every message */
    size_t n;
    struct rec *recs; /* NULL: don't record */
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

static void on_msg(void *ctx, const struct soth_ws_msg *m)
{
    struct fz *f = ctx;
    if (m->data.len > m->len || m->data.len > f->cap)
        FAIL();
    if (m->truncated != (m->data.len < m->len))
        FAIL();
    if (m->frames < 1)
        FAIL();
    switch (m->opcode) {
    case SOTH_WS_OP_TEXT:
    case SOTH_WS_OP_BINARY:
        if (m->close_code != -1)
            FAIL();
        break;
    case SOTH_WS_OP_CLOSE:
        if (m->len == 1 || (m->len >= 2 && m->close_code < 1000) ||
            (m->len == 0 && m->close_code != -1))
            FAIL();
        SOTH_FALLTHROUGH;
    case SOTH_WS_OP_PING:
    case SOTH_WS_OP_PONG:
        if (m->len > 125 || m->frames != 1 || m->compressed)
            FAIL();
        break;
    default:
        FAIL();
    }
    struct rec r;
    memset(&r, 0, sizeof(r)); /* padding is hashed too: no stack garbage in it */
    r.len = m->len;
    r.opcode = m->opcode;
    r.close_code = m->close_code;
    r.frames = m->frames;
    r.truncated = m->truncated;
    r.compressed = m->compressed;
    r.data_hash = fnv(0, m->data.base, m->data.len);
    f->hash = fnv(f->hash, &r, sizeof(r));
    if (f->recs != NULL && f->n < MAX_MSGS)
        f->recs[f->n] = r;
    f->n++;
}

struct result {
    uint64_t hash;
    size_t n;
    ssize_t rc;
    enum soth_ws_error err;
    uint64_t err_off;
    bool in_frame;
};

static void run(enum soth_leg dir, bool deflate, const struct soth_ws_limits *lim, const uint8_t *p,
                size_t n, uint64_t seed, struct rec *recs, struct result *out)
{
    static unsigned char mem[sizeof(void *) * 64 + 65536 + 4096] __attribute__((aligned(16)));
    if (soth_ws_size(lim) > sizeof(mem))
        FAIL();
    struct fz f = {.cap = lim->capture, .recs = recs};
    struct soth_ws_cbs cbs = {.ctx = &f, .on_message = on_msg};
    struct soth_ws *w = soth_ws_init(mem, dir, deflate, lim, &cbs);
    size_t pos = 0;
    ssize_t rc = 0;
    while (pos < n) {
        size_t take = n - pos;
        if (seed != 0) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            take = (size_t)(seed >> 33) % 23;
            if (take > n - pos)
                take = n - pos;
        }
        rc = soth_ws_feed(w, (const char *)p + pos, take);
        if (rc < 0)
            break;
        if ((size_t)rc != take)
            FAIL();
        pos += take;
    }
    if (rc >= 0)
        rc = 0;
    else if (soth_ws_error(w) == SOTH_WS_OK || soth_ws_feed(w, "\x81", 1) != rc)
        FAIL(); /* an error names its cause and sticks */
    *out = (struct result){.hash = f.hash,
                           .n = f.n,
                           .rc = rc,
                           .err = soth_ws_error(w),
                           .err_off = soth_ws_error_offset(w),
                           .in_frame = soth_ws_in_frame(w)};
}

/* ---- turns */

struct tz {
    uint64_t next_id;
    bool open;
};

static void on_start(void *ctx, const struct soth_ws_turn *t)
{
    struct tz *z = ctx;
    if (z->open || t->id != z->next_id)
        FAIL();
    z->open = true;
}

static void on_end(void *ctx, const struct soth_ws_turn *t)
{
    struct tz *z = ctx;
    if (!z->open || t->id != z->next_id || t->ended_ns < t->started_ns ||
        t->reason >= SOTH_WS_FLUSH_COUNT)
        FAIL();
    if (t->frames[t->initiator] == 0)
        FAIL(); /* the initiator's first message is in its turn */
    z->open = false;
    z->next_id++;
}

static void turns(const struct rec *a, size_t na, const struct rec *b, size_t nb, uint64_t seed,
                  uint64_t idle)
{
    struct tz z = {.next_id = 1};
    struct soth_ws_turn_cbs cbs = {.ctx = &z, .on_start = on_start, .on_end = on_end};
    struct soth_ws_turns t;
    soth_ws_turns_init(&t, idle, &cbs);
    size_t i = 0, j = 0;
    uint64_t now = 1000;
    while (i < na || j < nb) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        bool from_b = j < nb && (i >= na || (seed >> 40) & 1);
        const struct rec *r = from_b ? &b[j++] : &a[i++];
        struct soth_ws_msg m = {.dir = soth_leg_of(from_b),
                                .opcode = r->opcode,
                                .len = r->len,
                                .frames = r->frames,
                                .close_code = r->close_code};
        now += (seed >> 20) % 50;
        soth_ws_turns_message(&t, &m, now);
        if ((seed >> 50) % 7 == 0)
            soth_ws_turns_tick(&t, now + (seed >> 30) % 80);
    }
    soth_ws_turns_end(&t, (seed & 1) ? SOTH_WS_FLUSH_ERROR : SOTH_WS_FLUSH_CLOSE, now + 1);
    if (z.open)
        FAIL(); /* no turn left open */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct rec recs[2][MAX_MSGS];
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    static const uint32_t caps[8] = {0, 1, 2, 7, 16, 125, 4096, 65536};
    static const uint64_t maxes[16] = {0,        1,        2,          5,         16,    100,
                                       125,      126,      1000,       65535,     65536, 70000,
                                       1u << 20, 1u << 24, 1ull << 32, 1ull << 62};
    struct soth_ws_limits lim = {.capture = caps[(flags >> 1) & 7],
                                 .max_message = maxes[flags >> 4]};
    bool deflate = flags & 1;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    uint64_t seed = fnv(0, data, size) | 1;
    size_t nrec[2];
    for (int dir = 0; dir < 2; dir++) {
        struct result whole, split;
        run(soth_leg_of(dir), deflate, &lim, p, n, 0, recs[dir], &whole);
        run(soth_leg_of(dir), deflate, &lim, p, n, seed, NULL, &split);
        if (whole.hash != split.hash || whole.n != split.n || whole.rc != split.rc ||
            whole.err != split.err || whole.in_frame != split.in_frame ||
            (whole.rc < 0 && whole.err_off != split.err_off))
            FAIL(); /* the result depends on how the input was split */
        nrec[dir] = whole.n < MAX_MSGS ? whole.n : MAX_MSGS;
    }
    turns(recs[0], nrec[0], recs[1], nrec[1], seed, (flags & 8) ? 60 : 0);
    return 0;
}
