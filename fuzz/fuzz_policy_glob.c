/* libFuzzer: host glob matching; input = glob NUL host. */
#include <stdint.h>
#include <string.h>

#include "soth/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = memchr(data, 0, size);
    if (sep == NULL)
        return 0;
    struct soth_iov glob = soth_iov(data, (size_t)(sep - data));
    struct soth_iov host = soth_iov(sep + 1, size - (size_t)(sep - data) - 1);
    bool m = soth_policy_glob_match(glob, host);
    /* A glob without '*' matches exactly its own text, case-insensitively. */
    if (memchr(glob.base, '*', glob.len) == NULL && glob.len == host.len && glob.len > 0 &&
        glob.base[glob.len - 1] != '.' && strncasecmp(glob.base, host.base, glob.len) == 0 && !m)
        __builtin_trap();
    return 0;
}
