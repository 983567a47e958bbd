/*
 * The wolfSSL in use is the fast build (docs/dependencies.md): AES-NI and x86-64 SP assembly
 * compiled in, and AES-GCM actually running at AES-NI speed on this CPU. Fails on Debian's
 * prebuilt libwolfssl (no AES-NI: ~0.17 GB/s here).
 */
#include <wolfssl/options.h>

#include <criterion/criterion.h>
#include <time.h>
#include <wolfssl/wolfcrypt/aes.h>

Test(wolfssl_build, compiled_with_aesni_and_sp_asm)
{
#if !defined(WOLFSSL_AESNI)
    cr_assert_fail("wolfSSL built without WOLFSSL_AESNI");
#endif
#if !defined(WOLFSSL_SP_X86_64_ASM)
    cr_assert_fail("wolfSSL built without WOLFSSL_SP_X86_64_ASM (P-256 SP assembly)");
#endif
#if !defined(WOLFSSL_ALT_NAMES) || !defined(WOLFSSL_IP_ALT_NAME)
    cr_assert_fail("wolfSSL built without ALT_NAMES / IP_ALT_NAME (leaf SANs)");
#endif
#if !defined(HAVE_SNI) || !defined(HAVE_ALPN) || !defined(HAVE_SESSION_TICKET)
    cr_assert_fail("wolfSSL built without SNI / ALPN / session tickets");
#endif
    cr_assert(__builtin_cpu_supports("aes"), "this CPU has no AES-NI");
}

/* Renegotiation is refused on the client-facing side and never started upstream (docs/tls.md,
 * "Renegotiation"): the library has no renegotiation code at all. With
 * HAVE_SECURE_RENEGOTIATION (--enable-secure-renegotiation), a wolfSSL server goes through a
 * second handshake whenever a client that offered renegotiation_info asks for one. */
Test(wolfssl_build, compiled_without_renegotiation)
{
#if defined(HAVE_SECURE_RENEGOTIATION)
    cr_assert_fail("wolfSSL built with HAVE_SECURE_RENEGOTIATION: clients could renegotiate "
                   "(rebuild with ci/setup.sh)");
#endif
#if !defined(HAVE_SERVER_RENEGOTIATION_INFO)
    cr_assert_fail("wolfSSL built without HAVE_SERVER_RENEGOTIATION_INFO (RFC 5746 indication)");
#endif
}

/* The key log (docs/tls.md, "Key log") needs the TLS 1.3 secret callback and the exporter
 * secret (docs/dependencies.md). */
Test(wolfssl_build, compiled_with_key_log_support)
{
#if !defined(HAVE_SECRET_CALLBACK) || !defined(HAVE_KEYING_MATERIAL)
    cr_assert_fail("wolfSSL built without HAVE_SECRET_CALLBACK / HAVE_KEYING_MATERIAL: no key log "
                   "(rebuild with ci/setup.sh)");
#endif
}

Test(wolfssl_build, aes_gcm_runs_at_aesni_speed)
{
    static unsigned char key[16], iv[12], tag[16];
    size_t len = 16u << 20;
    unsigned char *in = calloc(1, len), *out = malloc(len);
    Aes aes;
    cr_assert_eq(wc_AesInit(&aes, NULL, INVALID_DEVID), 0);
    cr_assert_eq(wc_AesGcmSetKey(&aes, key, sizeof(key)), 0);
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        cr_assert_eq(
            wc_AesGcmEncrypt(&aes, out, in, (word32)len, iv, sizeof(iv), tag, sizeof(tag), NULL, 0),
            0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
        double gbps = (double)len / s / 1e9;
        if (gbps > best)
            best = gbps;
    }
    wc_AesFree(&aes);
    free(in);
    free(out);
    /* AES-NI measured 5.4 GB/s here, the portable C code 0.17 GB/s: 1 GB/s separates them. */
    cr_expect_gt(best, 1.0, "AES-128-GCM at %.2f GB/s: AES-NI is not in use", best);
}
