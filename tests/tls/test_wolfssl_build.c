/*
 * The wolfSSL in use is the fast build (docs/dependencies.md): AES-NI and x86-64 SP assembly
 * compiled in, and AES-GCM actually running at AES-NI speed on this CPU. Fails on Debian's
 * prebuilt libwolfssl (no AES-NI: ~0.17 GB/s here). It also carries our patches
 * (docs/dependencies.md, "wolfSSL patches"), each checked by what it fixes.
 */
#include <wolfssl/options.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

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

/*
 * Each TLS connection holds two AES-GCM key schedules (one per direction), four per intercepted
 * connection, for the connection's life. On AES-NI the assembly derives GHASH's key itself
 * (wc_AesGcmSetKey returns before building any table), so a GHASH table in struct Aes (512
 * bytes with configure's default --enable-aesgcm=4bit) is memory no code reads:
 * --enable-aesgcm=word leaves it out (docs/dependencies.md).
 */
Test(wolfssl_build, aes_gcm_key_schedule_has_no_unread_table)
{
#if defined(GCM_TABLE) || defined(GCM_TABLE_4BIT)
    cr_assert_fail("wolfSSL built with a GHASH table (GCM_TABLE/GCM_TABLE_4BIT): rerun "
                   "ci/setup.sh (--enable-aesgcm=word)");
#endif
    /* key (240), IV and counter state, H: 352 bytes in this build, 880 with the 4-bit table */
    cr_assert_leq(sizeof(Aes), 400, "sizeof(Aes) = %zu", sizeof(Aes));
}

/* ---- TLS 1.3 resumption: a session taken before the NewSessionTicket still resumes */

struct pipe_buf {
    unsigned char b[65536];
    size_t len;
};

struct mem_end {
    struct pipe_buf *in, *out;
};

static int mem_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    struct pipe_buf *p = ((struct mem_end *)ctx)->in;
    if (p->len == 0)
        return WOLFSSL_CBIO_ERR_WANT_READ;
    size_t n = (size_t)sz < p->len ? (size_t)sz : p->len;
    memcpy(buf, p->b, n);
    memmove(p->b, p->b + n, p->len - n);
    p->len -= n;
    return (int)n;
}

static int mem_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    struct pipe_buf *p = ((struct mem_end *)ctx)->out;
    cr_assert_leq((size_t)sz, sizeof(p->b) - p->len);
    memcpy(p->b + p->len, buf, (size_t)sz);
    p->len += (size_t)sz;
    return sz;
}

/* A self-signed P-256 server certificate and key, DER, made with wolfCrypt. */
static void make_server_cert(unsigned char *cert, int *cert_len, unsigned char *key, int *key_len)
{
    WC_RNG rng;
    ecc_key k;
    Cert c;
    cr_assert_eq(wc_InitRng(&rng), 0);
    cr_assert_eq(wc_ecc_init(&k), 0);
    cr_assert_eq(wc_ecc_make_key_ex(&rng, 32, &k, ECC_SECP256R1), 0);
    cr_assert_eq(wc_InitCert(&c), 0);
    strcpy(c.subject.commonName, "origin.test");
    c.sigType = CTC_SHA256wECDSA;
    c.isCA = 0;
    int n = wc_MakeCert(&c, cert, 4096, NULL, &k, &rng);
    cr_assert_gt(n, 0);
    n = wc_SignCert(c.bodySz, c.sigType, cert, 4096, NULL, &k, &rng);
    cr_assert_gt(n, 0);
    *cert_len = n;
    *key_len = wc_EccKeyToDer(&k, key, 512);
    cr_assert_gt(*key_len, 0);
    wc_ecc_free(&k);
    wc_FreeRng(&rng);
}

/* A server context with a fresh P-256 leaf and a client context that does not verify it,
 * both over the in-memory pipes (mem_recv, mem_send). */
static void mem_ctx_pair(WOLFSSL_METHOD *sm, WOLFSSL_METHOD *cm, WOLFSSL_CTX **sctx_out,
                         WOLFSSL_CTX **cctx_out)
{
    static unsigned char cert[4096], key[512];
    int cert_len, key_len;
    make_server_cert(cert, &cert_len, key, &key_len);
    WOLFSSL_CTX *sctx = wolfSSL_CTX_new(sm);
    WOLFSSL_CTX *cctx = wolfSSL_CTX_new(cm);
    cr_assert(sctx != NULL && cctx != NULL);
    cr_assert_eq(wolfSSL_CTX_use_certificate_buffer(sctx, cert, cert_len, WOLFSSL_FILETYPE_ASN1),
                 WOLFSSL_SUCCESS);
    cr_assert_eq(wolfSSL_CTX_use_PrivateKey_buffer(sctx, key, key_len, WOLFSSL_FILETYPE_ASN1),
                 WOLFSSL_SUCCESS);
    wolfSSL_CTX_set_verify(cctx, WOLFSSL_VERIFY_NONE, NULL);
    wolfSSL_CTX_SetIORecv(sctx, mem_recv);
    wolfSSL_CTX_SetIOSend(sctx, mem_send);
    wolfSSL_CTX_SetIORecv(cctx, mem_recv);
    wolfSSL_CTX_SetIOSend(cctx, mem_send);
    *sctx_out = sctx;
    *cctx_out = cctx;
}

/* A client and a server from cctx and sctx, talking through ce and se (their pipes emptied). */
static void mem_ssl_pair(WOLFSSL_CTX *cctx, WOLFSSL_CTX *sctx, struct mem_end *ce,
                         struct mem_end *se, WOLFSSL **c, WOLFSSL **s)
{
    ce->in->len = ce->out->len = 0;
    *c = wolfSSL_new(cctx);
    *s = wolfSSL_new(sctx);
    cr_assert(*c != NULL && *s != NULL);
    wolfSSL_SetIOReadCtx(*c, ce);
    wolfSSL_SetIOWriteCtx(*c, ce);
    wolfSSL_SetIOReadCtx(*s, se);
    wolfSSL_SetIOWriteCtx(*s, se);
}

/* The handshake of c and s, in memory; true when both completed (false at the first error
 * other than wanting to read). */
static bool mem_handshake(WOLFSSL *c, WOLFSSL *s)
{
    int rc = 0, rs = 0;
    for (int i = 0; i < 20 && (rc != WOLFSSL_SUCCESS || rs != WOLFSSL_SUCCESS); i++) {
        if (rc != WOLFSSL_SUCCESS)
            rc = wolfSSL_connect(c);
        if (rs != WOLFSSL_SUCCESS)
            rs = wolfSSL_accept(s);
        if ((rc != WOLFSSL_SUCCESS && wolfSSL_get_error(c, rc) != WOLFSSL_ERROR_WANT_READ) ||
            (rs != WOLFSSL_SUCCESS && wolfSSL_get_error(s, rs) != WOLFSSL_ERROR_WANT_READ))
            break;
    }
    return rc == WOLFSSL_SUCCESS && rs == WOLFSSL_SUCCESS;
}

/* One in-memory TLS 1.3 connection offering sess (may be NULL); reads the server's
 * NewSessionTicket only when read_ticket. Returns the client's session (get1) or NULL when
 * the handshake failed; *resumed says whether it resumed. */
static WOLFSSL_SESSION *one_conn(WOLFSSL_CTX *cctx, WOLFSSL_CTX *sctx, WOLFSSL_SESSION *sess,
                                 bool read_ticket, bool *resumed)
{
    static struct pipe_buf c2s, s2c;
    struct mem_end ce = {&s2c, &c2s}, se = {&c2s, &s2c};
    WOLFSSL *c, *s;
    mem_ssl_pair(cctx, sctx, &ce, &se, &c, &s);
    if (sess != NULL)
        cr_assert_eq(wolfSSL_set_session(c, sess), WOLFSSL_SUCCESS);
    WOLFSSL_SESSION *out = NULL;
    if (mem_handshake(c, s)) {
        cr_assert_gt(s2c.len, 0, "the server sent no NewSessionTicket");
        if (read_ticket) {
            char b[16];
            cr_assert_eq(wolfSSL_read(c, b, sizeof(b)), WOLFSSL_FATAL_ERROR);
            cr_assert_eq(wolfSSL_get_error(c, WOLFSSL_FATAL_ERROR), WOLFSSL_ERROR_WANT_READ);
            cr_assert_eq(s2c.len, 0);
        }
        *resumed = wolfSSL_session_reused(c) == 1;
        out = wolfSSL_get1_session(c);
    }
    wolfSSL_free(c);
    wolfSSL_free(s);
    return out;
}

/*
 * A resumed TLS 1.3 connection closed before it reads the server's NewSessionTicket (the
 * proxy frees such upstream conns, docs/tls.md "Upstream sessions") leaves a session that
 * still holds the ticket it was resumed with; resuming it again must work. wolfSSL 5.5.4 as
 * Debian ships it had already put the new connection's resumption secret into that session,
 * so the server rejected the binder (BAD_BINDER here, alert 47 from OpenSSL):
 * ci/patches/wolfssl-tls13-resumption-secret.patch (docs/dependencies.md, "wolfSSL patches").
 */
Test(wolfssl_build, tls13_session_taken_before_its_ticket_still_resumes)
{
    WOLFSSL_CTX *sctx, *cctx;
    mem_ctx_pair(wolfTLSv1_3_server_method(), wolfTLSv1_3_client_method(), &sctx, &cctx);
    wolfSSL_CTX_set_session_cache_mode(cctx, WOLFSSL_SESS_CACHE_OFF);

    bool resumed = true;
    WOLFSSL_SESSION *s1 = one_conn(cctx, sctx, NULL, true, &resumed);
    cr_assert_not_null(s1, "full handshake failed");
    cr_assert_not(resumed);
    WOLFSSL_SESSION *s2 = one_conn(cctx, sctx, s1, false, &resumed);
    cr_assert_not_null(s2, "first resumption failed");
    cr_assert(resumed);
    cr_assert_eq(wolfSSL_SESSION_has_ticket(s2), WOLFSSL_SUCCESS);
    for (int i = 0; i < 3; i++) {
        WOLFSSL_SESSION *s3 = one_conn(cctx, sctx, s2, i == 2, &resumed);
        cr_assert_not_null(s3, "resuming a session taken before its conn's ticket failed (%d)", i);
        cr_assert(resumed, "not resumed (%d)", i);
        wolfSSL_SESSION_free(s3);
    }
    wolfSSL_SESSION_free(s2);
    wolfSSL_SESSION_free(s1);
    wolfSSL_CTX_free(cctx);
    wolfSSL_CTX_free(sctx);
}

/* ---- the peer certificate copy: on the heap, and freed on request */

#ifdef HAVE_WOLFSSL_FREE_PEER_CERT
static size_t g_largest; /* the largest single wolfSSL allocation since it was reset */

static void *count_malloc(size_t n)
{
    if (n > g_largest)
        g_largest = n;
    return malloc(n);
}

static void *count_realloc(void *p, size_t n)
{
    if (n > g_largest)
        g_largest = n;
    return realloc(p, n);
}
#endif

/*
 * Every WOLFSSL of the Debian 5.5.4 build embeds a 3.5 KiB WOLFSSL_X509 for the peer
 * certificate (KEEP_PEER_CERT, which OPENSSL_EXTRA forces): 5.1 KiB per WOLFSSL, two per
 * intercepted connection, though a client-facing conn never receives a certificate.
 * ci/patches/wolfssl-peer-cert-on-heap.patch allocates it when a certificate arrives and adds
 * wolfSSL_free_peer_cert(), which the proxy calls after the handshake (docs/dependencies.md,
 * "wolfSSL patches"; docs/performance.md, idle connections).
 */
Test(wolfssl_build, peer_cert_on_the_heap_and_freed_after_the_handshake)
{
#ifndef HAVE_WOLFSSL_FREE_PEER_CERT
    cr_assert_fail("wolfSSL built without ci/patches/wolfssl-peer-cert-on-heap.patch "
                   "(rerun ci/setup.sh)");
#else
    WOLFSSL_CTX *sctx, *cctx;
    mem_ctx_pair(wolfTLSv1_3_server_method(), wolfTLSv1_3_client_method(), &sctx, &cctx);

    /* No single allocation of wolfSSL_new() is 4 KiB: the WOLFSSL itself was 5.1 KiB with
     * the embedded certificate, 1.6 KiB without (the handshake arrays, freed after the
     * handshake, are the largest at 3.4 KiB). */
    cr_assert_eq(wolfSSL_SetAllocators(count_malloc, free, count_realloc), 0);
    g_largest = 0;
    static struct pipe_buf c2s, s2c;
    struct mem_end ce = {&s2c, &c2s}, se = {&c2s, &s2c};
    WOLFSSL *c, *s;
    mem_ssl_pair(cctx, sctx, &ce, &se, &c, &s);
    cr_assert_lt(g_largest, 4096, "wolfSSL_new() allocated %zu bytes at once", g_largest);
    cr_assert(mem_handshake(c, s), "handshake failed");

    /* The client holds the server's certificate, the server none (no client certificate). */
    WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(c);
    cr_assert_not_null(x);
    wolfSSL_X509_free(x);
    cr_assert_null(wolfSSL_get_peer_certificate(s));
    wolfSSL_free_peer_cert(c);
    cr_assert_null(wolfSSL_get_peer_certificate(c));
    wolfSSL_free_peer_cert(c); /* twice is harmless */

    /* The connection works without it, both ways. */
    char b[16] = {0};
    cr_assert_eq(wolfSSL_write(c, "ping", 4), 4);
    cr_assert_eq(wolfSSL_read(s, b, sizeof(b)), 4);
    cr_assert_str_eq(b, "ping");
    cr_assert_eq(wolfSSL_write(s, "pong", 4), 4);
    memset(b, 0, sizeof(b));
    int n = 0;
    for (int i = 0; i < 3 && n <= 0; i++) /* the NewSessionTicket comes first */
        n = wolfSSL_read(c, b, sizeof(b));
    cr_assert_eq(n, 4);
    cr_assert_str_eq(b, "pong");
    wolfSSL_free(c);
    wolfSSL_free(s);
    wolfSSL_CTX_free(cctx);
    wolfSSL_CTX_free(sctx);
#endif
}

/* ---- what only the handshake reads: freed on request once it is done */

#ifdef HAVE_WOLFSSL_FREE_HANDSHAKE_EXTRAS
static size_t g_live; /* bytes wolfSSL holds (malloc_usable_size), since it was reset */

static void *live_malloc(size_t n)
{
    void *p = malloc(n);
    if (p != NULL)
        g_live += malloc_usable_size(p);
    return p;
}

static void live_free(void *p)
{
    if (p != NULL)
        g_live -= malloc_usable_size(p);
    free(p);
}

static void *live_realloc(void *p, size_t n)
{
    size_t was = p != NULL ? malloc_usable_size(p) : 0;
    void *q = realloc(p, n);
    if (q != NULL)
        g_live = g_live - was + malloc_usable_size(q);
    return q;
}

/* msg from a to b; b may first read post-handshake messages (a NewSessionTicket, a KeyUpdate). */
static void mem_say(WOLFSSL *a, WOLFSSL *b, const char *msg)
{
    char buf[32] = {0};
    int n = 0;
    cr_assert_eq(wolfSSL_write(a, msg, (int)strlen(msg)), (int)strlen(msg));
    for (int i = 0; i < 4 && n <= 0; i++) {
        n = wolfSSL_read(b, buf, sizeof(buf) - 1);
        if (n <= 0)
            cr_assert_eq(wolfSSL_get_error(b, n), WOLFSSL_ERROR_WANT_READ, "read failed: %d",
                         wolfSSL_get_error(b, n));
    }
    cr_assert_eq(n, (int)strlen(msg));
    cr_assert_str_eq(buf, msg);
}

static void alpn_is(WOLFSSL *ssl, const char *want)
{
    char *name = NULL;
    unsigned short len = 0;
    cr_assert_eq(wolfSSL_ALPN_GetProtocol(ssl, &name, &len), WOLFSSL_SUCCESS);
    cr_assert_eq(len, strlen(want));
    cr_assert_eq(memcmp(name, want, len), 0);
}

static void extras_one_version(bool tls13)
{
    WOLFSSL_CTX *sctx, *cctx;
    mem_ctx_pair(tls13 ? wolfTLSv1_3_server_method() : wolfTLSv1_2_server_method(),
                 tls13 ? wolfTLSv1_3_client_method() : wolfTLSv1_2_client_method(), &sctx, &cctx);

    static struct pipe_buf c2s, s2c;
    struct mem_end ce = {&s2c, &c2s}, se = {&c2s, &s2c};
    WOLFSSL *c, *s;
    mem_ssl_pair(cctx, sctx, &ce, &se, &c, &s);
    /* as the proxy's upstream conn: SNI, an ALPN list, tickets; its client-facing one: ALPN */
    cr_assert_eq(wolfSSL_UseSNI(c, WOLFSSL_SNI_HOST_NAME, "origin.test", 11), WOLFSSL_SUCCESS);
    char offer[] = "h2,http/1.1", pick[] = "http/1.1";
    cr_assert_eq(wolfSSL_UseALPN(c, offer, sizeof(offer) - 1, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH),
                 WOLFSSL_SUCCESS);
    cr_assert_eq(wolfSSL_UseALPN(s, pick, sizeof(pick) - 1, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH),
                 WOLFSSL_SUCCESS);
    cr_assert_eq(wolfSSL_UseSessionTicket(c), WOLFSSL_SUCCESS);
    /* (a server with an SNI of its own records the client's: wolfSSL_SNI_GetRequest) */
    cr_assert_eq(wolfSSL_UseSNI(s, WOLFSSL_SNI_HOST_NAME, "origin.test", 11), WOLFSSL_SUCCESS);
    /* Not before the handshake is done: nothing freed. */
    cr_assert_eq(wolfSSL_free_handshake_extras(c), WOLFSSL_FAILURE);
    cr_assert_not_null(wolfSSL_get0_param(c));
    cr_assert(mem_handshake(c, s), "handshake failed");

    void *sni = NULL;
    cr_assert_eq(wolfSSL_SNI_GetRequest(s, WOLFSSL_SNI_HOST_NAME, &sni), 11);
    size_t before = g_live;
    cr_assert_eq(wolfSSL_free_handshake_extras(c), WOLFSSL_SUCCESS);
    size_t freed_c = before - g_live;
    before = g_live;
    cr_assert_eq(wolfSSL_free_handshake_extras(s), WOLFSSL_SUCCESS);
    size_t freed_s = before - g_live;
    cr_log_info("TLS 1.%d: freed %zu bytes (client), %zu (server)", tls13 ? 3 : 2, freed_c,
                freed_s);
    /* suites (346 bytes) and parameters (336) at least, on either side */
    cr_assert_geq(freed_c, 1024, "client: %zu bytes freed", freed_c);
    cr_assert_geq(freed_s, 1024, "server: %zu bytes freed", freed_s);
    before = g_live;
    cr_assert_eq(wolfSSL_free_handshake_extras(c), WOLFSSL_SUCCESS); /* twice is harmless */
    cr_assert_eq(g_live, before);

    /* ALPN still answers; SNI and the verify parameters are gone; getters that read the
     * suites say so instead of crashing. */
    alpn_is(c, "http/1.1");
    alpn_is(s, "http/1.1");
    cr_assert_eq(wolfSSL_SNI_GetRequest(s, WOLFSSL_SNI_HOST_NAME, &sni), 0);
    cr_assert_null(wolfSSL_get0_param(c));
    int nid = 0;
    cr_assert_eq(wolfSSL_get_signature_nid(s, &nid), WOLFSSL_FAILURE);

    /* The connection works both ways: the TLS 1.3 client reads the server's NewSessionTicket
     * now, and both sides update their keys. */
    mem_say(s, c, "pong");
    mem_say(c, s, "ping");
    if (tls13) {
        cr_assert_eq(wolfSSL_SESSION_has_ticket(wolfSSL_get_session(c)), WOLFSSL_SUCCESS);
        cr_assert_eq(wolfSSL_update_keys(c), WOLFSSL_SUCCESS);
        mem_say(c, s, "after client key update");
        mem_say(s, c, "reply");
        cr_assert_eq(wolfSSL_update_keys(s), WOLFSSL_SUCCESS);
        mem_say(s, c, "after server key update");
        mem_say(c, s, "reply");
    }
    cr_assert_eq(wolfSSL_shutdown(c), WOLFSSL_SHUTDOWN_NOT_DONE);
    wolfSSL_free(s);

    /* A cleared client gets new suites and parameters and completes a new handshake. */
    c2s.len = s2c.len = 0;
    cr_assert_eq(wolfSSL_clear(c), WOLFSSL_SUCCESS);
    cr_assert_not_null(wolfSSL_get0_param(c));
    s = wolfSSL_new(sctx);
    cr_assert_not_null(s);
    wolfSSL_SetIOReadCtx(s, &se);
    wolfSSL_SetIOWriteCtx(s, &se);
    cr_assert(mem_handshake(c, s), "handshake after wolfSSL_clear failed");
    mem_say(c, s, "again");
    wolfSSL_free(c);
    wolfSSL_free(s);
    wolfSSL_CTX_free(cctx);
    wolfSSL_CTX_free(sctx);
}
#endif

/*
 * An OPENSSL_EXTRA build keeps the connection's cipher suites, verify parameters and TLS
 * extensions for the connection's life though only the handshake reads them (~2.5 KiB per
 * intercepted connection). ci/patches/wolfssl-free-after-handshake.patch adds
 * wolfSSL_free_handshake_extras(), which the proxy calls when a handshake completes
 * (docs/dependencies.md, "wolfSSL patches"): it keeps the negotiated ALPN, and what comes
 * after a handshake (data, a TLS 1.3 NewSessionTicket or KeyUpdate, wolfSSL_clear and a new
 * handshake) still works.
 */
Test(wolfssl_build, handshake_extras_freed_after_the_handshake)
{
#ifndef HAVE_WOLFSSL_FREE_HANDSHAKE_EXTRAS
    cr_assert_fail("wolfSSL built without ci/patches/wolfssl-free-after-handshake.patch "
                   "(rerun ci/setup.sh)");
#else
    cr_assert_eq(wolfSSL_SetAllocators(live_malloc, live_free, live_realloc), 0);
    extras_one_version(true);
    extras_one_version(false);
#endif
}

/* ---- the record buffer: kept from one record to the next while asked, zeroed when freed */

#ifdef HAVE_WOLFSSL_KEEP_INPUT_BUFFER
#define REC 16384                               /* a full record's plaintext */
static const char MARK[16] = "plaintext-mark!"; /* what the records carry, 16 bytes */
static int g_big_allocs;                        /* allocations of a record's size */
static int g_big_frees;                         /* frees of one */
static int g_marked_free; /* freed blocks still holding the records' plaintext */

static void *rec_malloc(size_t n)
{
    if (n >= REC)
        g_big_allocs++;
    return malloc(n);
}

static void rec_free(void *p)
{
    if (p != NULL) {
        size_t n = malloc_usable_size(p);
        if (n >= REC)
            g_big_frees++;
        if (memmem(p, n, MARK, sizeof(MARK)) != NULL)
            g_marked_free++;
    }
    free(p);
}

static void *rec_realloc(void *p, size_t n)
{
    if (n >= REC)
        g_big_allocs++;
    return realloc(p, n);
}

/* Record i of the test's stream: MARK over and over, its first byte numbering it. */
static void rec_fill(char *b, int i)
{
    for (size_t o = 0; o < REC; o += sizeof(MARK))
        memcpy(b + o, MARK, sizeof(MARK));
    b[0] = (char)('A' + i);
}

/* Reads one full record's plaintext from c and checks it is record i. */
static void rec_read(WOLFSSL *c, int i)
{
    static char want[REC], got[REC];
    rec_fill(want, i);
    int n = wolfSSL_read(c, got, sizeof(got));
    cr_assert_eq(n, REC, "record %d: read %d (error %d)", i, n, wolfSSL_get_error(c, n));
    cr_assert(memcmp(got, want, REC) == 0, "record %d: bytes differ", i);
}

/* s writes records first .. first + n - 1; the counters restart after them (the writer's own
 * record buffer is not what is counted). */
static void rec_send(WOLFSSL *s, int first, int n)
{
    static char b[REC];
    for (int i = first; i < first + n; i++) {
        rec_fill(b, i);
        cr_assert_eq(wolfSSL_write(s, b, REC), REC);
    }
    g_big_allocs = g_big_frees = 0;
}

/* A TLS 1.3 client c and server s in memory, with wolfSSL's allocations counted from before
 * they are made; s2c is the server's stream toward the client. */
static struct pipe_buf c2s, s2c;

static void rec_pair(WOLFSSL_CTX **sctx, WOLFSSL_CTX **cctx, WOLFSSL **c, WOLFSSL **s)
{
    mem_ctx_pair(wolfTLSv1_3_server_method(), wolfTLSv1_3_client_method(), sctx, cctx);
    cr_assert_eq(wolfSSL_SetAllocators(rec_malloc, rec_free, rec_realloc), 0);
    static struct mem_end ce = {&s2c, &c2s}, se = {&c2s, &s2c};
    c2s.len = s2c.len = 0;
    mem_ssl_pair(*cctx, *sctx, &ce, &se, c, s);
    cr_assert(mem_handshake(*c, *s), "handshake failed");
    mem_say(*s, *c, "ready"); /* the client also takes the NewSessionTicket */
}

/* Undo rec_pair: wolfSSL's allocators back to the plain ones, then both ends freed. */
static void rec_pair_free(WOLFSSL_CTX *sctx, WOLFSSL_CTX *cctx, WOLFSSL *c, WOLFSSL *s)
{
    cr_assert_eq(wolfSSL_SetAllocators(malloc, free, realloc), 0);
    wolfSSL_free(c);
    wolfSSL_free(s);
    wolfSSL_CTX_free(cctx);
    wolfSSL_CTX_free(sctx);
}

/* c has read everything that arrived. */
static void rec_drained(WOLFSSL *c)
{
    char b[64];
    cr_assert_eq(wolfSSL_read(c, b, sizeof(b)), WOLFSSL_FATAL_ERROR);
    cr_assert_eq(wolfSSL_get_error(c, WOLFSSL_FATAL_ERROR), WOLFSSL_ERROR_WANT_READ);
}
#endif

/*
 * wolfSSL reads each record with a body into a buffer grown for it, then zeroes it 8 bytes at
 * a time and frees it: per 16 KiB of a bulk transfer, a malloc, a 16 KiB zeroing and a free.
 * ci/patches/wolfssl-record-buffer-kept.patch adds wolfSSL_keep_input_buffer(), which the
 * proxy sets when a handshake completes, and wolfSSL_shrink_input_buffer(), which it calls
 * once an input's records are read (docs/dependencies.md, "wolfSSL patches"): one buffer
 * serves every record of an input, and is still zeroed before it is freed.
 */
Test(wolfssl_build, record_buffer_kept_for_a_burst_and_zeroed_when_freed)
{
#ifndef HAVE_WOLFSSL_KEEP_INPUT_BUFFER
    cr_assert_fail("wolfSSL built without ci/patches/wolfssl-record-buffer-kept.patch "
                   "(rerun ci/setup.sh)");
#else
    WOLFSSL_CTX *sctx, *cctx;
    WOLFSSL *c, *s;
    rec_pair(&sctx, &cctx, &c, &s);

    /* Without the flag: one buffer grown and freed per record. */
    rec_send(s, 0, 3);
    for (int i = 0; i < 3; i++)
        rec_read(c, i);
    cr_assert_eq(g_big_allocs, 3);
    cr_assert_eq(g_big_frees, 3);

    /* With it: one buffer for the three, kept until it is shrunk. */
    cr_assert_eq(wolfSSL_keep_input_buffer(c, 1), WOLFSSL_SUCCESS);
    rec_send(s, 0, 3);
    for (int i = 0; i < 3; i++)
        rec_read(c, i);
    rec_drained(c);
    cr_assert_eq(g_big_allocs, 1);
    cr_assert_eq(g_big_frees, 0, "the kept buffer was freed before it was shrunk");
    cr_assert_eq(wolfSSL_shrink_input_buffer(c), WOLFSSL_SUCCESS);
    cr_assert_eq(g_big_frees, 1, "shrinking left the empty buffer allocated");

    /* A buffer holding part of a record stays when shrunk, and the record ends intact once
     * the rest arrives; the flag still holds, so the emptied buffer waits to be shrunk. */
    rec_send(s, 0, 2);
    static unsigned char rest[sizeof(s2c.b)];
    size_t cut = s2c.len * 3 / 4, rest_len = s2c.len - cut; /* inside the second record */
    memcpy(rest, s2c.b + cut, rest_len);
    s2c.len = cut;
    rec_read(c, 0);
    rec_drained(c);
    cr_assert_eq(wolfSSL_shrink_input_buffer(c), WOLFSSL_SUCCESS);
    cr_assert_eq(g_big_frees, 0, "the buffer holding part of a record was freed");
    memcpy(s2c.b, rest, rest_len);
    s2c.len = rest_len;
    rec_read(c, 1);
    cr_assert_eq(g_big_allocs, 1);
    cr_assert_eq(g_big_frees, 0);

    /* Dropping the flag shrinks the emptied buffer; without it, reads free their own again. */
    cr_assert_eq(wolfSSL_keep_input_buffer(c, 0), WOLFSSL_SUCCESS);
    cr_assert_eq(g_big_frees, 1, "dropping the flag left the empty buffer allocated");
    rec_send(s, 4, 1);
    rec_read(c, 4);
    cr_assert_eq(g_big_allocs, 1);
    cr_assert_eq(g_big_frees, 1);

    /* Freeing the connection with a kept buffer zeroes and frees it too. */
    cr_assert_eq(wolfSSL_keep_input_buffer(c, 1), WOLFSSL_SUCCESS);
    rec_send(s, 5, 1);
    rec_read(c, 5);
    g_big_frees = 0;
    wolfSSL_free(c);
    cr_assert_eq(g_big_frees, 1);
    cr_assert_eq(g_marked_free, 0, "%d freed blocks held the plaintext", g_marked_free);
    cr_assert_eq(wolfSSL_SetAllocators(malloc, free, realloc), 0);
    wolfSSL_free(s);
    wolfSSL_CTX_free(cctx);
    wolfSSL_CTX_free(sctx);
#endif
}

/*
 * wolfSSL_read copies each record's plaintext out of the buffer it was decrypted in; a proxy
 * that parses it and encrypts it into another connection needs no copy.
 * ci/patches/wolfssl-record-read-in-place.patch adds wolfSSL_read_in_place(): a pointer to the
 * plaintext where it lies, valid until the next read or shrink on that connection, with the
 * buffer left in place under it (docs/dependencies.md, "wolfSSL patches").
 */
Test(wolfssl_build, read_in_place_lends_the_plaintext_until_the_next_read)
{
#ifndef HAVE_WOLFSSL_READ_IN_PLACE
    cr_assert_fail("wolfSSL built without ci/patches/wolfssl-record-read-in-place.patch "
                   "(rerun ci/setup.sh)");
#else
    WOLFSSL_CTX *sctx, *cctx;
    WOLFSSL *c, *s;
    rec_pair(&sctx, &cctx, &c, &s);
    static char want0[REC], want1[REC];
    rec_fill(want0, 0);
    rec_fill(want1, 1);

    /* A whole record, lent; the buffer is not shrunk under it (the flag is not even set). */
    rec_send(s, 0, 2);
    const unsigned char *p = NULL;
    int n = wolfSSL_read_in_place(c, &p, REC);
    cr_assert_eq(n, REC, "read %d (error %d)", n, wolfSSL_get_error(c, n));
    cr_assert(p != NULL && memcmp(p, want0, REC) == 0, "record 0: bytes differ");
    cr_assert_eq(g_big_frees, 0, "the buffer was freed under the bytes lent");
    /* A write on the same connection leaves them alone. */
    cr_assert_eq(wolfSSL_write(c, "ack", 3), 3);
    cr_assert(memcmp(p, want0, REC) == 0, "a write moved the bytes lent");

    /* Part of a record, then the rest of it from the same place. */
    const unsigned char *q = NULL, *r = NULL;
    cr_assert_eq(wolfSSL_read_in_place(c, &q, 100), 100);
    cr_assert(memcmp(q, want1, 100) == 0);
    cr_assert_eq(wolfSSL_read_in_place(c, &r, REC), REC - 100);
    cr_assert(r == q + 100, "the rest of the record was not lent from where it lay");
    cr_assert(memcmp(r, want1 + 100, REC - 100) == 0);

    /* Nothing left: WANT_READ and no pointer. One buffer served both records; the shrink the
     * caller makes once done zeroes and frees it. */
    const unsigned char *z = (const unsigned char *)want0;
    cr_assert_eq(wolfSSL_read_in_place(c, &z, REC), WOLFSSL_FATAL_ERROR);
    cr_assert_eq(wolfSSL_get_error(c, WOLFSSL_FATAL_ERROR), WOLFSSL_ERROR_WANT_READ);
    cr_assert_null(z);
    cr_assert_eq(g_big_allocs, 1);
    cr_assert_eq(g_big_frees, 0);
    cr_assert_eq(wolfSSL_shrink_input_buffer(c), WOLFSSL_SUCCESS);
    cr_assert_eq(g_big_frees, 1, "shrinking left the emptied buffer allocated");

    /* The peer's close_notify: 0, no pointer. Bad arguments are refused. */
    wolfSSL_shutdown(s);
    z = (const unsigned char *)want0;
    cr_assert_eq(wolfSSL_read_in_place(c, &z, REC), 0);
    cr_assert_eq(wolfSSL_get_error(c, 0), WOLFSSL_ERROR_ZERO_RETURN);
    cr_assert_null(z);
    cr_assert_eq(wolfSSL_read_in_place(NULL, &z, REC), BAD_FUNC_ARG);
    cr_assert_eq(wolfSSL_read_in_place(c, NULL, REC), BAD_FUNC_ARG);
    cr_assert_eq(g_marked_free, 0, "%d freed blocks held the plaintext", g_marked_free);
    rec_pair_free(sctx, cctx, c, s);
#endif
}

/*
 * wolfSSL_write() copies the plaintext into its output buffer (grown to a record's size and
 * freed again per record), encrypts it there, and hands the record to the send callback, which
 * copies it once more. ci/patches/wolfssl-record-write-in-place.patch adds
 * wolfSSL_set_record_reserve(): each application data record is built and encrypted in room
 * the caller reserves in its own send queue (docs/dependencies.md, "wolfSSL patches").
 */
#ifdef HAVE_WOLFSSL_RECORD_RESERVE
static unsigned char g_room[3 * REC];
static size_t g_room_len, g_room_asked;
static int g_reserves, g_commits;
static bool g_room_refuse;

static unsigned char *room_reserve(WOLFSSL *ssl, int sz, void *ctx)
{
    (void)ssl;
    (void)ctx;
    g_reserves++;
    if (g_room_refuse || (size_t)sz > sizeof(g_room) - g_room_len)
        return NULL;
    g_room_asked = (size_t)sz;
    return g_room + g_room_len;
}

static void room_commit(WOLFSSL *ssl, int sz, void *ctx)
{
    (void)ssl;
    (void)ctx;
    g_commits++;
    cr_assert(sz > 0 && (size_t)sz <= g_room_asked, "commit %d of %zu", sz, g_room_asked);
    g_room_len += (size_t)sz;
}

/* What the room holds goes on the wire toward the client. */
static void room_to_wire(void)
{
    cr_assert_leq(g_room_len, sizeof(s2c.b) - s2c.len);
    memcpy(s2c.b + s2c.len, g_room, g_room_len);
    s2c.len += g_room_len;
    g_room_len = 0;
}
#endif

Test(wolfssl_build, record_reserve_builds_records_in_the_callers_room)
{
#ifndef HAVE_WOLFSSL_RECORD_RESERVE
    cr_assert_fail("wolfSSL built without ci/patches/wolfssl-record-write-in-place.patch "
                   "(rerun ci/setup.sh)");
#else
    WOLFSSL_CTX *sctx, *cctx;
    WOLFSSL *c, *s;
    rec_pair(&sctx, &cctx, &c, &s);
    cr_assert_eq(wolfSSL_set_record_reserve(s, room_reserve, NULL), BAD_FUNC_ARG);
    cr_assert_eq(wolfSSL_set_record_reserve(NULL, room_reserve, room_commit), BAD_FUNC_ARG);
    cr_assert_eq(wolfSSL_set_record_reserve(s, room_reserve, room_commit), WOLFSSL_SUCCESS);

    /* Two full records and a short one in one write: each built in the room (no output buffer
     * grown for it, nothing through the send callback), read intact by the peer. */
    static char b[2 * REC + 1000];
    rec_fill(b, 0);
    rec_fill(b + REC, 1);
    memset(b + 2 * REC, 'z', 1000);
    g_big_allocs = 0;
    cr_assert_eq(wolfSSL_write(s, b, sizeof(b)), (int)sizeof(b));
    cr_assert_eq(g_commits, 3);
    cr_assert_eq(g_reserves, 3);
    cr_assert_eq(s2c.len, 0, "a record went through the send callback");
    cr_assert_eq(g_big_allocs, 0, "the output buffer was grown for a record");
    cr_assert_gt(g_room_len, sizeof(b));
    room_to_wire();
    rec_read(c, 0);
    rec_read(c, 1);
    char tail[1000];
    cr_assert_eq(wolfSSL_read(c, tail, sizeof(tail)), 1000);
    cr_assert(memcmp(tail, b + 2 * REC, 1000) == 0);

    /* Room refused: the record takes the output buffer and the send callback, intact. */
    g_room_refuse = true;
    rec_fill(b, 2);
    cr_assert_eq(wolfSSL_write(s, b, REC), REC);
    cr_assert_eq(g_commits, 3);
    cr_assert_gt(s2c.len, REC);
    rec_read(c, 2);

    /* Alerts are not application data: a close_notify takes the send callback. */
    g_room_refuse = false;
    int reserves = g_reserves;
    wolfSSL_shutdown(s);
    cr_assert_eq(g_reserves, reserves);
    cr_assert_gt(s2c.len, 0);
    char z[8];
    cr_assert_eq(wolfSSL_read(c, z, sizeof(z)), 0);
    cr_assert_eq(wolfSSL_get_error(c, 0), WOLFSSL_ERROR_ZERO_RETURN);
    rec_pair_free(sctx, cctx, c, s);
#endif
}

/* ---- a read that would block formats no error text */

/* Every snprintf of this test program comes here, the static wolfSSL's included (its
 * XSNPRINTF is snprintf): wolfSSL's error texts are counted, and every call is passed on. */
static int g_error_texts;

int snprintf(char *restrict s, size_t n, const char *restrict fmt, ...)
{
    if (strncmp(fmt, "wolfSSL error occurred", 22) == 0)
        g_error_texts++;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(s, n, fmt, ap);
    va_end(ap);
    return r;
}

/*
 * wolfSSL 5.5.4 formatted "wolfSSL error occurred, error = %d" for every read or write that
 * would block, a text only its debug log reads: once per record read to its end, in a
 * worker's every request (docs/performance.md, "wolfSSL formats no text for a read that would
 * block"). ci/patches/wolfssl-want-io-unformatted.patch formats it only with DEBUG_WOLFSSL.
 * A real error still gets its text (which shows that the count sees wolfSSL's calls).
 */
Test(wolfssl_build, a_read_that_would_block_formats_no_error_text)
{
    WOLFSSL_CTX *sctx, *cctx;
    mem_ctx_pair(wolfTLSv1_3_server_method(), wolfTLSv1_3_client_method(), &sctx, &cctx);
    static struct pipe_buf to_s, to_c;
    struct mem_end ce = {&to_c, &to_s}, se = {&to_s, &to_c};
    WOLFSSL *c, *s;
    mem_ssl_pair(cctx, sctx, &ce, &se, &c, &s);
    cr_assert(mem_handshake(c, s));
    char b[64];
    cr_assert_eq(wolfSSL_write(s, "hello", 5), 5);
    g_error_texts = 0;
    for (int i = 0; i < 3; i++) {
        int n = wolfSSL_read(c, b, sizeof(b));
        if (n > 0) /* the NewSessionTicket is read first, then the data */
            cr_assert(n == 5 && memcmp(b, "hello", 5) == 0);
        else
            cr_assert_eq(wolfSSL_get_error(c, n), WOLFSSL_ERROR_WANT_READ);
    }
    cr_assert_eq(wolfSSL_read(c, b, sizeof(b)), WOLFSSL_FATAL_ERROR);
    cr_assert_eq(wolfSSL_get_error(c, WOLFSSL_FATAL_ERROR), WOLFSSL_ERROR_WANT_READ);
    cr_assert_eq(g_error_texts, 0, "%d error texts formatted for reads that would block",
                 g_error_texts);
    /* a record that does not authenticate: a real error, with its text */
    static const unsigned char bad[] = {0x17, 0x03, 0x03, 0x00, 0x15, 1,  2,  3,  4,
                                        5,    6,    7,    8,    9,    10, 11, 12, 13,
                                        14,   15,   16,   17,   18,   19, 20, 21};
    memcpy(to_c.b, bad, sizeof(bad));
    to_c.len = sizeof(bad);
    cr_assert_eq(wolfSSL_read(c, b, sizeof(b)), WOLFSSL_FATAL_ERROR);
    cr_assert_neq(wolfSSL_get_error(c, WOLFSSL_FATAL_ERROR), WOLFSSL_ERROR_WANT_READ);
    cr_assert_gt(g_error_texts, 0, "no error text for a record that does not authenticate");
    wolfSSL_free(c);
    wolfSSL_free(s);
    wolfSSL_CTX_free(cctx);
    wolfSSL_CTX_free(sctx);
}
