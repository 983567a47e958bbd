/*
 * libFuzzer: arbitrary bytes as a ring file image through the reader and the JSON encoder. It
 * must never crash, and every line it prints must be one valid JSON object ending in '\n'.
 * Input layout: byte 0 = flags, bytes 1..64 = header (made plausible when flags say so), the
 * rest = the data area (64 KiB ring).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/observe.h"

#define CAP 65536u

static void check_line(void *ctx, const char *line, size_t len)
{
    (void)ctx;
    if (len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1) != NULL)
        __builtin_trap();
    json_error_t je;
    json_t *j = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    if (j == NULL || !json_is_object(j))
        __builtin_trap();
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t flags = data[0];
    data++;
    size--;
    size_t total = 4096 + CAP;
    uint64_t *img = calloc(1, total);
    size_t hdr = size < 64 ? size : 64;
    memcpy(img, data, hdr);
    if (flags & 1) {
        /* A plausible header so that the fuzzer spends its time on records. */
        uint64_t magic = 0x474e495248544f53ull, cap = CAP;
        uint32_t ver = 1, hs = 4096;
        memcpy(img, &magic, 8);
        memcpy((char *)img + 8, &ver, 4);
        memcpy((char *)img + 12, &hs, 4);
        memcpy((char *)img + 16, &cap, 8);
    }
    if (flags & 2) {
        /* write_pos within a lap or two, oldest at or below it, both 8-aligned. */
        uint64_t wp = img[3] % (3 * CAP) & ~7ull, back = img[4] % (CAP + 1) & ~7ull;
        img[3] = wp;
        img[4] = back > wp ? 0 : wp - back;
    }
    if (size > 64)
        memcpy((char *)img + 4096, data + 64, size - 64 < CAP ? size - 64 : CAP);
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_from_memory(img, total, err, sizeof(err));
    if (r != NULL) {
        struct soth_ring_filter flt = {.type_mask =
                                           (flags & 4) && size ? (uint64_t)data[0] << 8 : 0,
                                       .has_flow = (flags & 8) != 0,
                                       .flow_id = 1};
        soth_ring_reader_seek(r, (flags & 16) == 0);
        soth_ring_reader_poll(r, &flt, check_line, NULL);
        /* The writer moves on: a second poll after the positions change. */
        img[3] += 4096;
        soth_ring_reader_poll(r, &flt, check_line, NULL);
        soth_ring_reader_free(r);
    }
    free(img);
    return 0;
}
