/* libFuzzer: a ring file image from arbitrary bytes through the reader (never crash). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/observe.h"

static void sink(void *ctx, const char *line, size_t len)
{
    (void)ctx;
    if (len == 0 || line[len - 1] != '\n')
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The input is laid out as header (first 64 bytes, padded to 4096) + data area. */
    size_t hdr = size < 64 ? size : 64;
    size_t total = 4096 + 65536;
    uint8_t *img = calloc(1, total);
    memcpy(img, data, hdr);
    /* Keep the header plausible often enough for the fuzzer to get past it. */
    if (size > 0 && (data[0] & 1)) {
        uint64_t magic = 0x474e495248544f53ull, cap = 65536;
        uint32_t ver = 1, hs = 4096;
        memcpy(img, &magic, 8);
        memcpy(img + 8, &ver, 4);
        memcpy(img + 12, &hs, 4);
        memcpy(img + 16, &cap, 8);
    }
    if (size > 64)
        memcpy(img + 4096, data + 64, size - 64 < 65536 ? size - 64 : 65536);
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_from_memory(img, total, err, sizeof(err));
    if (r != NULL) {
        soth_ring_reader_seek(r, true);
        soth_ring_reader_poll(r, NULL, sink, NULL);
        soth_ring_reader_free(r);
    }
    free(img);
    return 0;
}
