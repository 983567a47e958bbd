/* The start-up self check reports the fast paths, and fails the build that lacks them. */
#include "soth/tls.h"

#include <criterion/criterion.h>
#include <string.h>

Test(tls_self_check, aesni_and_sp_asm_in_use)
{
    struct soth_tls_caps caps;
    char line[256];
    soth_tls_self_check(&caps, line, sizeof(line));
    cr_assert(caps.aesni_built, "wolfSSL built without AES-NI: %s", line);
    cr_assert(caps.sp_asm_built, "wolfSSL built without SP x86-64 assembly: %s", line);
    cr_assert(caps.aesni_cpu, "CPU without AES-NI: %s", line);
    cr_assert(strstr(line, "AES-GCM AES-NI") != NULL, "%s", line);
    cr_assert(strstr(line, "P-256 SP x86-64 assembly") != NULL, "%s", line);
    cr_assert(strstr(line, "5.5.4") != NULL, "%s", line);
    soth_tls_self_check(&caps, NULL, 0); /* no line wanted */
}
