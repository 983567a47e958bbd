/*
 * libFuzzer: arbitrary event sequences through the exchange assembler (docs/exchanges.md). It
 * must never crash, stay within its bounds (flows, open exchanges), and every exchange it
 * emits must be one strictly valid JSON object ending in '\n'.
 *
 * Input: byte 0 selects the mode. Odd: the rest is raw records (u16 length, then that many
 * bytes as one record: the decoder's bounds checks). Even: records are built through the event
 * schema from the input (type, one of four flows, seq steps with gaps, one of four streams,
 * each field from the next bytes), so the assembler's state machine is reached.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../observe/observe_int.h"
#include "soth/exchange.h"

#define MAX_FLOWS   8
#define MAX_STREAMS 16

struct in {
    const uint8_t *p, *end;
};

static uint8_t byte(struct in *in)
{
    return in->p < in->end ? *in->p++ : 0;
}

static void check(void *ctx, const struct soth_xasm_out *x)
{
    (void)ctx;
    const char *json = x->json;
    size_t len = x->len;
    if (len == 0 || json[len - 1] != '\n' || memchr(json, '\n', len - 1) != NULL)
        __builtin_trap();
    json_error_t je;
    json_t *j = json_loadb(json, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    if (j == NULL || !json_is_object(j) || json_object_get(j, "exchange_id") == NULL ||
        json_is_true(json_object_get(j, "partial")) != x->partial)
        __builtin_trap();
    json_decref(j);
}

static _Alignas(8) unsigned char rec[1 << 16];

static size_t put_bytes(size_t off, struct in *in, unsigned max)
{
    uint32_t n = byte(in) % max;
    if (off + 4 + n > sizeof(rec))
        n = 0;
    memcpy(rec + off, &n, 4);
    for (uint32_t i = 0; i < n; i++)
        rec[off + 4 + i] = byte(in);
    return off + 4 + n;
}

/** One record built through the schema. */
static size_t build(struct in *in, uint32_t *seqs)
{
    struct ev_rec h;
    memset(&h, 0, sizeof(h));
    h.type = (uint16_t)(byte(in) % SOTH_EV_TYPE_COUNT);
    unsigned flow = byte(in) % 4;
    h.flow_id = flow + 1;
    uint8_t step = byte(in);
    seqs[flow] += step % 7 == 0 ? step % 3 : 0; /* a gap now and then */
    h.seq = seqs[flow]++;
    h.ts_ns = byte(in);
    h.protocol = (uint8_t)(byte(in) % (SOTH_PROTO_COUNT + 1));
    h.server_port = 443;
    size_t off = sizeof(h);
    const struct type_def *td = &soth_ev_schema[h.type];
    for (unsigned i = 0; i < td->n && off + 64 < sizeof(rec); i++) {
        const struct field_def *fd = &td->f[i];
        uint64_t u = byte(in);
        uint32_t n;
        switch (fd->kind) {
        case FK_U64:
        case FK_I64N:
        case FK_BOOL:
        case FK_OMITU64:
            if (strcmp(fd->name, "stream_id") == 0)
                u %= 4;
            else if (u == 0xff)
                u = UINT64_MAX;
            memcpy(rec + off, &u, 8);
            off += 8;
            break;
        case FK_ENUM:
            u %= fd->n_names;
            memcpy(rec + off, &u, 8);
            off += 8;
            break;
        case FK_OPTSTR:
        case FK_OMITSTR:
        case FK_JSON:
            if (u % 4 == 0) {
                n = NULL_LEN;
                memcpy(rec + off, &n, 4);
                off += 4;
                break;
            }
            off = put_bytes(off, in, 40);
            break;
        case FK_STR:
        case FK_B64:
            off = put_bytes(off, in, 40);
            break;
        default: { /* lists */
            uint32_t cnt = (uint32_t)(u % 4);
            unsigned parts = fd->kind == FK_HDRS ? 2 : 1;
            memcpy(rec + off, &cnt, 4);
            off += 4;
            for (uint32_t k = 0; k < cnt * parts; k++)
                off = put_bytes(off, in, 16);
        }
        }
    }
    off = (off + 7) & ~(size_t)7;
    h.len = (uint32_t)off;
    memcpy(rec, &h, sizeof(h));
    return off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct soth_xasm_cfg cfg = {.body_capture_bytes = 16,
                                .max_flows = MAX_FLOWS,
                                .max_streams = MAX_STREAMS,
                                .max_items = 8,
                                .max_item_bytes = 512,
                                .max_bytes = 4096};
    struct soth_xasm *x = soth_xasm_new(&cfg, check, NULL);
    if (x == NULL)
        return 0;
    struct in in = {data + 1, data + size};
    uint32_t seqs[4] = {0};
    while (in.p < in.end) {
        size_t len;
        if (data[0] & 1) {
            len = (size_t)byte(&in) | (size_t)byte(&in) << 8;
            if (len > (size_t)(in.end - in.p))
                len = (size_t)(in.end - in.p);
            memcpy(rec, in.p, len);
            in.p += len;
        } else {
            len = build(&in, seqs);
        }
        soth_xasm_feed(x, rec, len);
        size_t nf, ns;
        soth_xasm_counts(x, &nf, &ns);
        if (nf > MAX_FLOWS || ns > MAX_STREAMS)
            __builtin_trap();
    }
    if (data[0] & 2)
        soth_xasm_flush(x);
    soth_xasm_free(x);
    return 0;
}
