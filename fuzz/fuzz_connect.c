/* libFuzzer: the proxy request head parser, both modes, random limits, growing prefixes. */
#include <stdint.h>
#include <string.h>

#include "soth/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    enum soth_head_mode mode = data[0] & 1 ? SOTH_HEAD_LENIENT : SOTH_HEAD_STRICT;
    struct soth_head_limits lim = {.max_line = 16u + (data[1] & 0x7f) * 8u,
                                   .max_head = 64u + (size_t)data[1] * 64u,
                                   .max_headers = 1u + (data[0] >> 3)};
    data += 2;
    size -= 2;
    struct soth_proxy_head h;
    const char *code = NULL, *detail = NULL;
    ssize_t whole = soth_proxy_head_parse((const char *)data, size, mode, &lim, &h, &code, &detail);
    if (whole > 0) {
        /* Everything returned points inside the input. */
        const char *lo = (const char *)data, *hi = lo + size;
        struct soth_iov parts[] = {h.method, h.target, h.version, h.host};
        for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
            if (parts[i].len && (parts[i].base < lo || parts[i].base + parts[i].len > hi))
                __builtin_trap();
        if ((size_t)whole > size || h.port == 0)
            __builtin_trap();
    }
    /* A prefix never succeeds with a different length than the whole. */
    for (size_t n = 0; n < size; n += 1 + n / 4) {
        ssize_t rc = soth_proxy_head_parse((const char *)data, n, mode, &lim, &h, &code, &detail);
        if (rc > 0 && whole > 0 && rc != whole)
            __builtin_trap();
    }
    return 0;
}
