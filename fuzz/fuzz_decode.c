/*
 * libFuzzer: the layered decoder chain (proto/decode.c): gzip/deflate/br/zstd, grpc framing,
 * message coding, anti-hijack, JSON (jansson) and msgpack (msgpack-c) paths.
 * Input: 2 bytes of settings, then the captured message bytes.
 *   byte 0: bits 0-2 content coding (identity, gzip, deflate, br, zstd, unknown, 2x gzip+br),
 *           bits 3-4 declared format (unknown, json, msgpack, proto), bit 5 sanitize,
 *           bit 6 truncated, bit 7 grpc framing
 *   byte 1: bits 0-2 message coding, bit 3 small limits
 * Checks, beyond "no crash, no leak, no out-of-bounds read":
 *  - a result either reports nothing, or lists 1..SOTH_DECODE_MAX_DECODERS known decoder
 *    names and has exactly one of value and error;
 *  - a value is one valid JSON text (jansson), at most max_value bytes, with format json or
 *    msgpack; an error is non-empty;
 *  - the same decoder object gives byte-identical results when run again (no state leaks).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/decode.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

/* Valid JSON as jansson reads it; jansson refuses two things valid JSON may hold (integers
 * beyond int64, read again as reals; \u0000 in an object key). */
static bool json_ok(const char *p, size_t n)
{
    json_error_t e;
    json_t *j = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (j == NULL && json_error_code(&e) == json_error_numeric_overflow)
        j = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &e);
    if (j == NULL)
        return json_error_code(&e) == json_error_null_byte_in_key;
    json_decref(j);
    return true;
}

static const char *const known[] = {"gzip", "deflate", "br", "zstd", "unknown",
                                    "grpc", "sse",     "ws", "json", "msgpack"};

static bool known_name(struct soth_iov v)
{
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (v.len == strlen(known[i]) && memcmp(v.base, known[i], v.len) == 0)
            return true;
    return false;
}

static void check_result(const struct soth_decode_result *r, uint32_t max_value)
{
    if (!r->report) {
        CHECK(r->value.base == NULL && r->error.base == NULL);
        return;
    }
    CHECK(r->n_decoders >= 1 && r->n_decoders <= SOTH_DECODE_MAX_DECODERS);
    for (size_t i = 0; i < r->n_decoders; i++)
        CHECK(known_name(r->decoders[i]));
    CHECK((r->value.base == NULL) != (r->error.base == NULL));
    if (r->value.base != NULL) {
        CHECK(r->value.len <= max_value);
        CHECK(r->format == SOTH_FMT_JSON || r->format == SOTH_FMT_MSGPACK);
        CHECK(json_ok(r->value.base, r->value.len));
    } else {
        CHECK(r->error.len > 0);
    }
}

static char first[1 << 16];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const enum soth_coding codings[8] = {
        SOTH_CODING_IDENTITY, SOTH_CODING_GZIP,    SOTH_CODING_DEFLATE, SOTH_CODING_BR,
        SOTH_CODING_ZSTD,     SOTH_CODING_UNKNOWN, SOTH_CODING_GZIP,    SOTH_CODING_IDENTITY};
    static const enum soth_payload_format formats[4] = {SOTH_FMT_UNKNOWN, SOTH_FMT_JSON,
                                                        SOTH_FMT_MSGPACK, SOTH_FMT_PROTO};
    uint8_t a = data[0], b = data[1];
    struct soth_decode_limits lim = {0};
    if (b & 8)
        lim = (struct soth_decode_limits){.max_output = 4096,
                                          .max_ratio = 4,
                                          .max_depth = 4,
                                          .max_elements = 32,
                                          .max_str = 16,
                                          .max_value = 64};
    uint32_t max_value = lim.max_value ? lim.max_value : 16384;
    struct soth_decode_req req = {
        .truncated = (a & 0x40) != 0,
        .framing = a & 0x80 ? SOTH_FRAMING_GRPC : SOTH_FRAMING_NONE,
        .message_coding = codings[b & 7],
        .format = formats[(a >> 3) & 3],
        .sanitize = (a & 0x20) != 0,
    };
    if ((a & 7) == 6) {
        req.codings[0] = SOTH_CODING_GZIP;
        req.codings[1] = SOTH_CODING_BR;
        req.n_codings = 2;
    } else if (codings[a & 7] != SOTH_CODING_IDENTITY) {
        req.codings[0] = codings[a & 7];
        req.n_codings = 1;
    }
    /* exact-size heap copy: reads past the input are caught */
    size_t len = size - 2;
    char *in = malloc(len ? len : 1);
    memcpy(in, data + 2, len);
    req.data = in;
    req.len = len;

    struct soth_decoder *d = soth_decoder_new(&lim);
    CHECK(d != NULL);
    struct soth_decode_result r;
    soth_decode_run(d, &req, &r);
    check_result(&r, max_value);
    /* run again on the same decoder: identical */
    bool report = r.report;
    size_t vlen = r.value.len, elen = r.error.len, nd = r.n_decoders;
    bool has_v = r.value.base != NULL;
    if (has_v)
        memcpy(first, r.value.base, vlen);
    soth_decode_run(d, &req, &r);
    CHECK(r.report == report && r.n_decoders == nd && r.error.len == elen);
    CHECK((r.value.base != NULL) == has_v && r.value.len == vlen);
    if (has_v)
        CHECK(memcmp(first, r.value.base, vlen) == 0);
    soth_decoder_free(d);
    free(in);
    return 0;
}
