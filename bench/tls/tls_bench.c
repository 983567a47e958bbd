/*
 * soth_tls micro-benchmarks, each next to a reference measured in the same run:
 *  - leaf issuance/s on a cold cache (the worker's reused key) vs a fresh P-256 key per leaf;
 *  - full handshakes/s between two soth_tls_conns in memory (leaf from a warm cache) vs the
 *    same with the cache disabled, and vs a plain wolfSSL pair (static cert, minimal I/O);
 *  - AES-GCM MB/s through a soth_tls_conn pair vs a plain wolfSSL pair.
 * Usage: tls_bench [scale] (1 = default sizes). Single-threaded: figures are per core.
 */
#include <wolfssl/options.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

#include "soth/tls.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "tls_bench: %s\n", what);
    exit(1);
}

/* ---- soth_tls_conn pairs */
static void move(struct soth_tls_conn *from, struct soth_tls_conn *to)
{
    struct soth_iov iov;
    while (soth_tls_conn_out(from, &iov) > 0) {
        soth_tls_conn_feed(to, iov.base, iov.len);
        if (!soth_tls_conn_is_established(to))
            soth_tls_conn_handshake(to);
        soth_tls_conn_feed_done(to);
        soth_tls_conn_out_consume(from, iov.len);
    }
}

static void pair_handshake(struct soth_tls_conn *c, struct soth_tls_conn *s)
{
    for (int i = 0; i < 20; i++) {
        soth_tls_conn_handshake(c);
        move(c, s);
        soth_tls_conn_handshake(s);
        move(s, c);
        if (soth_tls_conn_is_established(c) && soth_tls_conn_is_established(s))
            return;
    }
    die("handshake did not complete");
}

static double soth_handshakes(struct soth_tls_ctx *t, int n)
{
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        struct soth_tls_conn *c, *s;
        if (soth_tls_conn_new_client(t, SOTH_IOV_LIT("bench.example"), NULL, 0, &c) < 0 ||
            soth_tls_conn_new_server(t, SOTH_IOV_LIT("bench.example"), SOTH_IOV_NULL, &s) < 0)
            die("conn");
        pair_handshake(c, s);
        soth_tls_conn_free(c);
        soth_tls_conn_free(s);
    }
    return n / (now_s() - t0);
}

static double soth_throughput(struct soth_tls_ctx *t, size_t total)
{
    struct soth_tls_conn *c, *s;
    if (soth_tls_conn_new_client(t, SOTH_IOV_LIT("bench.example"), NULL, 0, &c) < 0 ||
        soth_tls_conn_new_server(t, SOTH_IOV_LIT("bench.example"), SOTH_IOV_NULL, &s) < 0)
        die("conn");
    pair_handshake(c, s);
    static char chunk[16384], sink[16384];
    size_t got = 0;
    double t0 = now_s();
    for (size_t sent = 0; sent < total; sent += sizeof(chunk)) {
        soth_tls_conn_write(s, chunk, sizeof(chunk));
        struct soth_iov iov;
        while (soth_tls_conn_out(s, &iov) > 0) {
            soth_tls_conn_feed(c, iov.base, iov.len);
            ssize_t r;
            while ((r = soth_tls_conn_read(c, sink, sizeof(sink))) > 0)
                got += (size_t)r;
            soth_tls_conn_feed_done(c);
            soth_tls_conn_out_consume(s, iov.len);
        }
    }
    double dt = now_s() - t0;
    if (got != total)
        die("throughput: bytes lost");
    soth_tls_conn_free(c);
    soth_tls_conn_free(s);
    return (double)total / dt / 1e6;
}

/* ---- a plain wolfSSL pair: the same suites, static cert, simplest memory I/O */
struct q {
    unsigned char *b;
    size_t off, len, cap;
};

static int q_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    struct q *q = ctx;
    (void)ssl;
    if (q->len == q->off)
        return WOLFSSL_CBIO_ERR_WANT_READ;
    size_t n = q->len - q->off < (size_t)sz ? q->len - q->off : (size_t)sz;
    memcpy(buf, q->b + q->off, n);
    q->off += n;
    if (q->off == q->len)
        q->off = q->len = 0;
    return (int)n;
}

static int q_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    struct q *q = ctx;
    (void)ssl;
    if (q->len + (size_t)sz > q->cap) {
        q->cap = (q->len + (size_t)sz) * 2;
        q->b = realloc(q->b, q->cap);
    }
    memcpy(q->b + q->len, buf, (size_t)sz);
    q->len += (size_t)sz;
    return sz;
}

struct plain {
    WOLFSSL_CTX *sctx, *cctx;
    struct q c2s, s2c;
};

static void plain_init(struct plain *p, const uint8_t *cert, size_t cert_len, const uint8_t *key,
                       size_t key_len)
{
    memset(p, 0, sizeof(*p));
    p->sctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
    p->cctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
    int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1};
    WOLFSSL_CTX *both[] = {p->sctx, p->cctx};
    for (int i = 0; i < 2; i++) {
        wolfSSL_CTX_SetMinVersion(both[i], WOLFSSL_TLSV1_2);
        wolfSSL_CTX_set_groups(both[i], groups, 2);
        wolfSSL_CTX_SetIORecv(both[i], q_recv);
        wolfSSL_CTX_SetIOSend(both[i], q_send);
        wolfSSL_CTX_set_session_cache_mode(both[i], WOLFSSL_SESS_CACHE_OFF);
    }
    wolfSSL_CTX_set_verify(p->cctx, WOLFSSL_VERIFY_NONE, NULL);
    if (wolfSSL_CTX_use_certificate_buffer(p->sctx, cert, (long)cert_len, WOLFSSL_FILETYPE_ASN1) !=
            WOLFSSL_SUCCESS ||
        wolfSSL_CTX_use_PrivateKey_buffer(p->sctx, key, (long)key_len, WOLFSSL_FILETYPE_ASN1) !=
            WOLFSSL_SUCCESS)
        die("plain ctx");
}

static void plain_pair(struct plain *p, WOLFSSL **c, WOLFSSL **s)
{
    p->c2s.off = p->c2s.len = p->s2c.off = p->s2c.len = 0;
    *c = wolfSSL_new(p->cctx);
    *s = wolfSSL_new(p->sctx);
    wolfSSL_SetIOReadCtx(*c, &p->s2c);
    wolfSSL_SetIOWriteCtx(*c, &p->c2s);
    wolfSSL_SetIOReadCtx(*s, &p->c2s);
    wolfSSL_SetIOWriteCtx(*s, &p->s2c);
    for (int i = 0; i < 20; i++) {
        int a = wolfSSL_connect(*c);
        int b = wolfSSL_accept(*s);
        if (a == WOLFSSL_SUCCESS && b == WOLFSSL_SUCCESS)
            return;
    }
    die("plain handshake");
}

static double plain_handshakes(struct plain *p, int n)
{
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        WOLFSSL *c, *s;
        plain_pair(p, &c, &s);
        wolfSSL_free(c);
        wolfSSL_free(s);
    }
    return n / (now_s() - t0);
}

static double plain_throughput(struct plain *p, size_t total)
{
    WOLFSSL *c, *s;
    plain_pair(p, &c, &s);
    static char chunk[16384], sink[16384];
    size_t got = 0;
    double t0 = now_s();
    for (size_t sent = 0; sent < total; sent += sizeof(chunk)) {
        wolfSSL_write(s, chunk, sizeof(chunk));
        int r;
        while ((r = wolfSSL_read(c, sink, sizeof(sink))) > 0)
            got += (size_t)r;
    }
    double dt = now_s() - t0;
    if (got != total)
        die("plain throughput: bytes lost");
    wolfSSL_free(c);
    wolfSSL_free(s);
    return (double)total / dt / 1e6;
}

int main(int argc, char **argv)
{
    int scale = argc > 1 ? atoi(argv[1]) : 1;
    if (scale < 1)
        scale = 1;
    char dir[] = "/tmp/soth-tls-bench-XXXXXX", err[256], line[256];
    if (mkdtemp(dir) == NULL || soth_tls_global_init() < 0)
        die("init");
    struct soth_tls_caps caps;
    soth_tls_self_check(&caps, line, sizeof(line));
    printf("%s\n", line);
    struct soth_tls_ca *ca;
    struct soth_tls_ca_params cp = {.ca_dir = dir};
    if (soth_tls_ca_load_or_create(&cp, &ca, NULL, err, sizeof(err)) < 0)
        die(err);
    int n_leaves = 20000 * scale;
    struct soth_tls_ctx_params tp = {.ca = ca,
                                     .leaf_validity_days = 30,
                                     .leaf_cache_size = (uint32_t)n_leaves,
                                     .upstream_verify = false,
                                     .http2_enabled = true};
    struct soth_tls_ctx *t, *t0;
    if (soth_tls_ctx_new(&tp, &t, err, sizeof(err)) < 0)
        die(err);
    tp.leaf_cache_size = 0;
    if (soth_tls_ctx_new(&tp, &t0, err, sizeof(err)) < 0)
        die(err);

    /* 1. leaf issuance, cold cache: every name new */
    char name[64];
    struct soth_tls_leaf leaf;
    double a = now_s();
    for (int i = 0; i < n_leaves; i++) {
        int n = snprintf(name, sizeof(name), "host-%d.bench.example", i);
        if (soth_tls_leaf_get(t, soth_iov(name, (size_t)n), &leaf) < 0)
            die("leaf");
    }
    double cold = n_leaves / (now_s() - a);
    a = now_s();
    for (int i = 0; i < n_leaves; i++) {
        int n = snprintf(name, sizeof(name), "host-%d.bench.example", i);
        soth_tls_leaf_get(t, soth_iov(name, (size_t)n), &leaf);
    }
    double warm = n_leaves / (now_s() - a);
    /* reference: a fresh P-256 key per leaf = key generation time + minting time */
    WC_RNG rng;
    ecc_key k;
    wc_InitRng(&rng);
    int n_keys = n_leaves / 4;
    a = now_s();
    for (int i = 0; i < n_keys; i++) {
        wc_ecc_init(&k);
        if (wc_ecc_make_key_ex(&rng, 32, &k, ECC_SECP256R1) != 0)
            die("keygen");
        wc_ecc_free(&k);
    }
    double keygen = n_keys / (now_s() - a);
    double fresh = 1.0 / (1.0 / cold + 1.0 / keygen);
    printf("leaf issuance, cold cache:     %8.0f leaves/s (reused worker key) vs %8.0f/s with a "
           "fresh key per leaf (keygen %.0f/s): x%.2f\n",
           cold, fresh, keygen, cold / fresh);
    printf("leaf lookup, warm cache:       %8.0f lookups/s (x%.0f the cold rate)\n", warm,
           warm / cold);

    /* 2. full handshakes over memory pairs */
    int n_hs = 2000 * scale;
    soth_handshakes(t, 50);
    double hs_warm = soth_handshakes(t, n_hs);
    double hs_nocache = soth_handshakes(t0, n_hs / 2);
    struct plain p;
    uint8_t der[2048];
    ssize_t dl = soth_tls_leaf_mint(t, SOTH_IOV_LIT("bench.example"), der, sizeof(der));
    /* the plain pair needs the key too: a separate static P-256 cert from wolfCrypt */
    ecc_key sk;
    uint8_t kder[200];
    wc_ecc_init(&sk);
    wc_ecc_make_key_ex(&rng, 32, &sk, ECC_SECP256R1);
    int kl = wc_EccKeyToDer(&sk, kder, sizeof(kder));
    Cert *cert = malloc(sizeof(Cert));
    wc_InitCert(cert);
    snprintf(cert->subject.commonName, sizeof(cert->subject.commonName), "bench.example");
    cert->sigType = CTC_SHA256wECDSA;
    cert->daysValid = 30;
    int cl = wc_MakeCert_ex(cert, der, sizeof(der), ECC_TYPE, &sk, &rng);
    if (cl > 0)
        cl = wc_SignCert_ex(cert->bodySz, cert->sigType, der, sizeof(der), ECC_TYPE, &sk, &rng);
    if (dl < 0 || kl <= 0 || cl <= 0)
        die("plain cert");
    plain_init(&p, der, (size_t)cl, kder, (size_t)kl);
    plain_handshakes(&p, 50);
    double hs_plain = plain_handshakes(&p, n_hs);
    printf("full handshakes (TLS 1.3, both ends in-process): %7.0f/s soth_tls_conn pair, warm "
           "leaf cache | %7.0f/s cache disabled (x%.2f) | %7.0f/s plain wolfSSL pair, static "
           "cert (x%.2f)\n",
           hs_warm, hs_nocache, hs_warm / hs_nocache, hs_plain, hs_warm / hs_plain);

    /* 3. AES-GCM through the pairs */
    size_t total = (size_t)256 * scale << 20;
    double mb = soth_throughput(t, total);
    double mb_plain = plain_throughput(&p, total);
    printf("AES-128-GCM records, 16 KiB writes, %zu MiB: %7.0f MB/s soth_tls_conn pair | %7.0f "
           "MB/s plain wolfSSL pair (x%.2f)\n",
           total >> 20, mb, mb_plain, mb / mb_plain);

    wolfSSL_CTX_free(p.sctx);
    wolfSSL_CTX_free(p.cctx);
    free(p.c2s.b);
    free(p.s2c.b);
    free(cert);
    wc_ecc_free(&sk);
    wc_FreeRng(&rng);
    soth_tls_ctx_free(t);
    soth_tls_ctx_free(t0);
    soth_tls_ca_free(ca);
    soth_tls_global_cleanup();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return 0;
}
