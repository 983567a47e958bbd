/* wolfSSL glue. */
#include <wolfssl/options.h>

#include <stdio.h>
#include <wolfssl/ssl.h>

#include "soth/tls.h"

void soth_tls_self_check(struct soth_tls_caps *caps, char *line, size_t line_len)
{
#ifdef WOLFSSL_AESNI
    caps->aesni_built = true;
#else
    caps->aesni_built = false;
#endif
#ifdef WOLFSSL_SP_X86_64_ASM
    caps->sp_asm_built = true;
#else
    caps->sp_asm_built = false;
#endif
    caps->aesni_cpu = __builtin_cpu_supports("aes");
    caps->version = wolfSSL_lib_version();
    snprintf(line, line_len, "wolfSSL %s: AES-GCM %s, P-256 %s", caps->version,
             caps->aesni_built && caps->aesni_cpu ? "AES-NI"
             : caps->aesni_built                  ? "portable C (this CPU lacks AES-NI)"
                                                  : "portable C (built without AES-NI)",
             caps->sp_asm_built ? "SP x86-64 assembly" : "generic C");
}
