/*
 * libFuzzer target for the HTTP/1.1 engine (proto/h1.c). The input is a client byte stream and,
 * after the first "~~~~", an upstream byte stream. Checks:
 *  - no crash, leak or UB whatever the bytes and the interleaving of the two streams;
 *  - callback invariants: ids in order, every head forwarded exactly as reported, body bytes
 *    add up to the exchange counters, on_exchange once per id and last for it;
 *  - split independence: the client stream alone, fed whole and in random pieces, gives the
 *    same callback trace and the same bytes out;
 *  - with keep_upstream (seed bit 4; docs/http1.md "Upstream connection pool"), a response head
 *    toward the client is the reported one, or it with "Connection: close" added last, and the
 *    upstream is reusable only with nothing in flight.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/h1.h"

#define MAX_IDS 4096

/* abort() with the line of the broken check */
#define FAIL()                                                                                     \
    do {                                                                                           \
        fprintf(stderr, "fuzz_h1: check at line %d failed\n", __LINE__);                           \
        abort();                                                                                   \
    } while (0)

struct fz {
    uint64_t trace, out[2]; /* FNV-1a hashes */
    int lent;               /* section buffers out (lending engines) */
    bool keep;              /* soth_h1_set_keep_upstream */
    int body_dir;
    uint32_t body_id;
    char head[2][1 << 17]; /* expected next head bytes, by to_side */
    size_t head_len[2];
    uint32_t last_req_id;
    uint64_t body[2][MAX_IDS];
    uint8_t ended[MAX_IDS];
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

static void tag(struct fz *f, const char *what, int dir, uint32_t id)
{
    f->body_dir = -1;
    f->trace = fnv(f->trace, what, strlen(what));
    f->trace = fnv(f->trace, &dir, sizeof(dir));
    f->trace = fnv(f->trace, &id, sizeof(id));
}

static void head_add(struct fz *f, int to, const void *p, size_t n)
{
    if (f->head_len[to] + n > sizeof(f->head[to]))
        FAIL();
    memcpy(f->head[to] + f->head_len[to], p, n);
    f->head_len[to] += n;
}

static int f_out(void *ctx, enum soth_leg to, const char *p, size_t n)
{
    struct fz *f = ctx;
    if ((to != 0 && to != 1) || n == 0)
        FAIL();
    if (f->head_len[to] > 0) {
        static const char cc[] = "Connection: close\r\n\r\n";
        size_t e = f->head_len[to];
        bool added = f->keep && to == SOTH_LEG_CLIENT && e >= 2 && n == e + sizeof(cc) - 3 &&
                     memcmp(p, f->head[to], e - 2) == 0 &&
                     memcmp(p + e - 2, cc, sizeof(cc) - 1) == 0;
        if (!added && (n != e || memcmp(p, f->head[to], n) != 0))
            FAIL(); /* forwarded head differs from what on_head reported */
        f->head_len[to] = 0;
    }
    f->out[to] = fnv(f->out[to], p, n);
    return 0;
}

static void check_id(struct fz *f, uint32_t id)
{
    if (id == 0 || id >= MAX_IDS || f->ended[id])
        FAIL(); /* callback for an unknown or finished stream */
}

static int f_head(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_h1_head *h)
{
    struct fz *f = ctx;
    enum soth_leg to = soth_leg_other(dir);
    if (dir == 0) {
        if (id != f->last_req_id + 1)
            FAIL();
        f->last_req_id = id;
    }
    check_id(f, id);
    if (f->head_len[to] != 0)
        FAIL();
    if (dir == 0) {
        head_add(f, to, h->method.base, h->method.len);
        head_add(f, to, " ", 1);
        head_add(f, to, h->target.base, h->target.len);
        head_add(f, to, " ", 1);
        head_add(f, to, h->version.base, h->version.len);
    } else {
        char st[5] = {' ', (char)('0' + h->status / 100), (char)('0' + h->status / 10 % 10),
                      (char)('0' + h->status % 10), ' '};
        head_add(f, to, h->version.base, h->version.len);
        head_add(f, to, st, sizeof(st));
        head_add(f, to, h->reason.base, h->reason.len);
    }
    head_add(f, to, "\r\n", 2);
    for (size_t i = 0; i < h->n_headers; i++) {
        head_add(f, to, h->headers[i].name.base, h->headers[i].name.len);
        head_add(f, to, ": ", 2);
        head_add(f, to, h->headers[i].value.base, h->headers[i].value.len);
        head_add(f, to, "\r\n", 2);
    }
    head_add(f, to, "\r\n", 2);
    tag(f, "H", dir, id);
    f->trace = fnv(f->trace, f->head[to], f->head_len[to]);
    return 0;
}

static void f_body(void *ctx, enum soth_leg dir, uint32_t id, const char *p, size_t n)
{
    struct fz *f = ctx;
    check_id(f, id);
    if (n == 0)
        FAIL();
    f->body[dir][id] += n;
    if (f->body_dir != (int)dir || f->body_id != id) {
        tag(f, "B", dir, id);
        f->body_dir = dir;
        f->body_id = id;
    }
    f->trace = fnv(f->trace, p, n);
}

static void f_trailers(void *ctx, enum soth_leg dir, uint32_t id, const struct soth_header *t,
                       size_t n)
{
    struct fz *f = ctx;
    check_id(f, id);
    tag(f, "T", dir, id);
    for (size_t i = 0; i < n; i++) {
        f->trace = fnv(f->trace, t[i].name.base, t[i].name.len);
        f->trace = fnv(f->trace, t[i].value.base, t[i].value.len);
    }
}

static void f_complete(void *ctx, enum soth_leg dir, uint32_t id)
{
    struct fz *f = ctx;
    check_id(f, id);
    tag(f, "C", dir, id);
}

static void f_upgrade(void *ctx, uint32_t id, struct soth_iov proto)
{
    struct fz *f = ctx;
    check_id(f, id);
    tag(f, "U", 0, id);
    f->trace = fnv(f->trace, proto.base, proto.len);
}

static void f_exchange(void *ctx, const struct soth_h1_exchange *x)
{
    struct fz *f = ctx;
    check_id(f, x->stream_id);
    if (!x->upgraded && (x->request_bytes != f->body[0][x->stream_id] ||
                         x->response_bytes != f->body[1][x->stream_id]))
        FAIL(); /* counters disagree with the body callbacks */
    f->ended[x->stream_id] = 1;
    tag(f, soth_h1_outcome_name(x->outcome), 0, x->stream_id);
}

static void f_error(void *ctx, enum soth_leg dir, uint32_t id, unsigned status, const char *code,
                    const char *detail)
{
    struct fz *f = ctx;
    if (code == NULL || detail == NULL || (status != 400 && status != 431 && status != 502))
        FAIL();
    tag(f, code, dir, id);
}

static const struct soth_h1_limits lim = {.max_head = 4096, .max_fields = 32, .max_pipeline = 9};

/* Lent section buffers come from malloc and go back to free, so ASan sees a late use. */
static void *f_sec_get(void *ctx)
{
    struct fz *f = ctx;
    if (f->lent >= 2)
        FAIL(); /* more than one per direction */
    f->lent++;
    return malloc(soth_h1_section_size(&lim));
}

static void f_sec_put(void *ctx, void *mem)
{
    struct fz *f = ctx;
    f->lent--;
    free(mem);
}

static struct soth_h1 *mk(struct fz *f, bool lend, bool keep)
{
    memset(f, 0, sizeof(*f));
    f->keep = keep;
    f->body_dir = -1;
    struct soth_h1_cbs cbs = {
        .ctx = f,
        .out = f_out,
        .on_head = f_head,
        .on_body = f_body,
        .on_trailers = f_trailers,
        .on_complete = f_complete,
        .on_upgrade = f_upgrade,
        .on_exchange = f_exchange,
        .on_error = f_error,
    };
    struct soth_h1 *h;
    if (lend) {
        cbs.sec_get = f_sec_get;
        cbs.sec_put = f_sec_put;
        h = soth_h1_init(malloc(soth_h1_core_size(&lim)), &lim, &cbs);
    } else {
        h = soth_h1_new(&lim, &cbs);
    }
    if (h == NULL)
        FAIL();
    soth_h1_set_keep_upstream(h, keep);
    return h;
}

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Feed one side's stream in random pieces; returns false once the engine refused input. */
static bool feed_side(struct soth_h1 *h, int side, const uint8_t *d, size_t n, size_t *pos,
                      size_t piece)
{
    size_t end = *pos + piece > n ? n : *pos + piece;
    if (*pos >= end)
        return true;
    ssize_t rc = soth_h1_feed(h, side, (const char *)d + *pos, end - *pos);
    if (rc < 0)
        return false;
    if ((size_t)rc > end - *pos)
        FAIL();
    if ((size_t)rc < end - *pos && !soth_h1_is_blocked(h, side))
        FAIL();
    *pos += (size_t)rc;
    return true;
}

static struct fz fa, fb;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t seed = data[0] | 0x100u;
    const uint8_t *in = data + 1;
    size_t n = size - 1, cn = n;
    const uint8_t *up = NULL;
    size_t un = 0;
    for (size_t i = 0; i + 4 <= n; i++) {
        if (memcmp(in + i, "~~~~", 4) == 0) {
            cn = i;
            up = in + i + 4;
            un = n - i - 4;
            break;
        }
    }

    /* 1. Both streams interleaved in random pieces, then EOFs or an abort. */
    bool keep = (seed & 4) != 0;
    struct soth_h1 *h = mk(&fa, (seed & 2) != 0, keep);
    size_t cp = 0, upos = 0;
    bool alive = true;
    for (int guard = 0; alive && (cp < cn || upos < un) && guard < 100000; guard++) {
        int side = (int)(rnd(&seed) & 1);
        size_t piece = 1 + rnd(&seed) % 64;
        size_t before = cp + upos;
        if (side == 0)
            alive = feed_side(h, 0, in, cn, &cp, piece);
        else
            alive = feed_side(h, 1, up, un, &upos, piece);
        if (alive && cp + upos == before && (cp >= cn || soth_h1_is_blocked(h, 0)) &&
            (upos >= un || soth_h1_is_blocked(h, 1)))
            break; /* both sides done or stuck */
    }
    if (soth_h1_upstream_reusable(h) && soth_h1_in_flight(h) != 0)
        FAIL();
    switch (rnd(&seed) % 3) {
    case 0:
        if (soth_h1_eof(h, 1) == 0)
            (void)soth_h1_eof(h, 0);
        break;
    case 1:
        if (soth_h1_eof(h, 0) == 0)
            (void)soth_h1_eof(h, 1);
        break;
    default:
        break;
    }
    soth_h1_abort(h, SOTH_H1_RESET);
    if (soth_h1_in_flight(h) != 0)
        FAIL();
    soth_h1_free(h);
    if (fa.lent != 0)
        FAIL(); /* a section buffer was not given back */

    /* 2. The client stream alone: whole vs random pieces. */
    struct soth_h1 *a = mk(&fa, false, keep);
    ssize_t ra = soth_h1_feed(a, 0, (const char *)in, cn);
    struct soth_h1 *b = mk(&fb, true, keep); /* lent sections must not change anything */
    size_t bp = 0;
    ssize_t rb = 0;
    while (bp < cn) {
        size_t piece = 1 + rnd(&seed) % 16;
        size_t want = (bp + piece > cn ? cn : bp + piece) - bp;
        rb = soth_h1_feed(b, 0, (const char *)in + bp, want);
        if (rb < 0)
            break;
        bp += (size_t)rb;
        if ((size_t)rb < want)
            break; /* blocked: the whole feed stopped at the same byte */
    }
    if ((ra < 0) != (rb < 0) || (ra < 0 && ra != rb))
        FAIL();
    if (ra >= 0 && (size_t)ra != bp)
        FAIL();
    if (fa.trace != fb.trace || fa.out[0] != fb.out[0] || fa.out[1] != fb.out[1])
        FAIL();
    soth_h1_free(a);
    soth_h1_free(b);
    return 0;
}
