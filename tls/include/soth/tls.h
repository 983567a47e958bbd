/*
 * soth_tls: TLS interception on wolfSSL (issue 5). wolfSSL types never appear here.
 *
 * What exists so far: the start-up self check of the crypto paths in use. The memory-I/O
 * connection wrapper, CA and leaf minting, the per-worker leaf cache, the ClientHello peek, the
 * failure taxonomy and learning land with the TLS interception issue.
 */
#ifndef SOTH_TLS_H
#define SOTH_TLS_H

#include <stdbool.h>
#include <stddef.h>

/** Which fast paths the linked wolfSSL has and this CPU can run. */
struct soth_tls_caps {
    bool aesni_built;  /* WOLFSSL_AESNI */
    bool aesni_cpu;    /* the CPU has AES-NI (wolfSSL picks it at run time) */
    bool sp_asm_built; /* P-256 through the x86-64 SP assembly */
    const char *version;
};

/** Fill caps and a one-line description for the start-up log ("AES-GCM: AES-NI, ..."). */
void soth_tls_self_check(struct soth_tls_caps *caps, char *line, size_t line_len);

#endif
