/*
 * libFuzzer: msgpack to JSON (proto/decode.c soth_msgpack_to_json: the bounded walk, then
 * msgpack-c, then the capped JSON writer).
 * Input: 1 byte of settings (limits), then msgpack bytes.
 * Checks, beyond "no crash, no leak, no huge allocation":
 *  - a success is one valid JSON text (jansson) within the output and max_value bounds;
 *  - failures are only SOTH_E_INCOMPLETE / SOTH_E_MALFORMED / SOTH_E_TOO_LARGE, with a reason;
 *  - prefix property: a strict prefix of an accepted input is never accepted (msgpack objects
 *    are self-delimiting), it is incomplete or over a limit;
 *  - when accepted, msgpack-c alone also unpacks the input exactly.
 */
#include <jansson.h>
#include <msgpack.h>
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

static char out[1 << 15];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t s = data[0];
    struct soth_decode_limits lim = {
        .max_depth = 1u + (s & 7) * 4u,
        .max_elements = s & 8 ? 16u : 100000u,
        .max_str = s & 16 ? 8u : 65536u,
        .max_value = s & 32 ? 64u : (uint32_t)sizeof(out),
    };
    size_t len = size - 1;
    char *in = malloc(len ? len : 1);
    memcpy(in, data + 1, len);
    const char *why = NULL;
    ssize_t n = soth_msgpack_to_json(in, len, &lim, out, sizeof(out), &why);
    if (n >= 0) {
        CHECK(why == NULL);
        CHECK((size_t)n <= lim.max_value);
        CHECK(json_ok(out, (size_t)n));
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        size_t off = 0;
        CHECK(msgpack_unpack_next(&u, in, len, &off) == MSGPACK_UNPACK_SUCCESS && off == len);
        msgpack_unpacked_destroy(&u);
        /* strict prefixes (a few) are not accepted */
        for (size_t k = 0; k < len; k += 1 + len / 4) {
            ssize_t m = soth_msgpack_to_json(in, k, &lim, out, sizeof(out), &why);
            CHECK(m == SOTH_E_INCOMPLETE || m == SOTH_E_TOO_LARGE);
        }
    } else {
        CHECK(n == SOTH_E_INCOMPLETE || n == SOTH_E_MALFORMED || n == SOTH_E_TOO_LARGE);
        CHECK(why != NULL && why[0] != '\0');
    }
    free(in);
    return 0;
}
