/*
 * libFuzzer: the gRPC envelope parser (proto/grpc.c).
 * Input: 1 byte of settings (capture bound, length limit, split step), then DATA bytes.
 * Checks, beyond "no crash, no out-of-bounds read":
 *  - split invariance: the whole input in one feed and the same input cut into pieces whose
 *    sizes come from the settings byte give the same messages (index, flag, length, captured
 *    bytes), the same error and the same finish result;
 *  - every message respects the capture bound, data.len <= length, truncated exactly when
 *    data.len < length, indexes count up from 0;
 *  - each feed call consumes at least one byte or completes a message (bounded loop).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/grpc.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

#define MAX_TRACE 4096

struct trace {
    size_t n;
    uint64_t h[MAX_TRACE]; /* one hash per message */
    ssize_t err;
    int code;
    int fin;
    uint64_t fin_h;
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h;
}

static uint64_t msg_hash(const struct soth_grpc_msg *m)
{
    uint64_t h = mix(mix(mix(m->index, m->compressed), m->length), m->data.len);
    for (size_t i = 0; i < m->data.len; i++)
        h = mix(h, (unsigned char)m->data.base[i]);
    return mix(h, m->truncated);
}

static void run(const struct soth_grpc_limits *lim, const char *in, size_t len, size_t step,
                struct trace *t)
{
    memset(t, 0, sizeof(*t));
    struct soth_grpc *g = soth_grpc_new(lim);
    if (g == NULL)
        __builtin_trap();
    uint64_t expect_index = 0;
    for (size_t off = 0; off < len && t->err == 0;) {
        size_t piece = step == 0 ? len - off : (step < len - off ? step : len - off);
        /* exact-size heap copy: reads past the piece are caught */
        char *p = malloc(piece);
        memcpy(p, in + off, piece);
        size_t done = 0;
        while (done < piece) {
            struct soth_grpc_msg m;
            bool got;
            ssize_t k = soth_grpc_feed(g, p + done, piece - done, &m, &got);
            if (k < 0) {
                CHECK(k == SOTH_E_MALFORMED || k == SOTH_E_TOO_LARGE);
                t->err = k;
                t->code = soth_grpc_error(g);
                CHECK(t->code == SOTH_GRPC_BAD_FLAG || t->code == SOTH_GRPC_TOO_LARGE);
                break;
            }
            CHECK((size_t)k <= piece - done);
            CHECK(k > 0 || got);
            if (got) {
                CHECK(m.index == expect_index++);
                CHECK(m.data.len <= m.length && m.data.len <= lim->capture);
                CHECK(m.truncated == (m.data.len < m.length));
                CHECK(m.length <= lim->max_message);
                if (t->n < MAX_TRACE)
                    t->h[t->n++] = msg_hash(&m);
            }
            done += (size_t)k;
        }
        free(p);
        off += piece;
    }
    struct soth_grpc_msg m;
    bool got;
    t->fin = soth_grpc_finish(g, &m, &got);
    if (got) {
        CHECK(t->fin < 0 && m.truncated);
        t->fin_h = msg_hash(&m);
    }
    if (t->fin < 0 && t->err == 0)
        CHECK(soth_grpc_error(g) == SOTH_GRPC_TRUNCATED);
    CHECK(soth_grpc_messages(g) == expect_index);
    soth_grpc_free(g);
}

static struct trace whole, split;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t s = data[0];
    struct soth_grpc_limits lim = {
        .capture = 1u + (s & 0x0f) * 37u,
        .max_message = s & 0x10 ? 64u : 1u << 20,
    };
    size_t step = 1u + (s >> 5) * 3u; /* 1, 4, 7, ... 22 */
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    run(&lim, in, len, 0, &whole);
    run(&lim, in, len, step, &split);
    CHECK(whole.n == split.n && whole.err == split.err && whole.code == split.code);
    CHECK(whole.fin == split.fin && whole.fin_h == split.fin_h);
    for (size_t i = 0; i < whole.n; i++)
        CHECK(whole.h[i] == split.h[i]);
    return 0;
}
