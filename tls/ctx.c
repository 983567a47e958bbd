/*
 * The per-worker TLS context: wolfSSL server/client contexts configured explicitly (never
 * trust a build's defaults, docs/tls.md), the leaf key, the CA key copy and the leaf cache.
 */
#include "tls_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/* ECDHE only, AEAD only (AES-GCM, ChaCha20-Poly1305); TLS 1.3 suites first. */
static const char CIPHER_LIST[] =
    "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

int tls_on_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx);
int tls_on_send(WOLFSSL *ssl, char *buf, int sz, void *ctx);

static int fail(char *err, size_t err_len, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_len, int rc, const char *fmt, ...)
{
    if (err != NULL && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/*
 * Session tickets: AES-256-GCM under the process-wide key (tls.c), with this worker's own Aes
 * object and RNG, so no lock is taken. AAD = key name || IV || length. An unknown key name
 * or a bad tag rejects the ticket (full handshake), never the connection.
 */
static int on_ticket(WOLFSSL *ssl, unsigned char key_name[WOLFSSL_TICKET_NAME_SZ],
                     unsigned char iv[WOLFSSL_TICKET_IV_SZ],
                     unsigned char mac[WOLFSSL_TICKET_MAC_SZ], int enc, unsigned char *ticket,
                     int in_len, int *out_len, void *arg)
{
    struct soth_tls_ctx *t = arg;
    const struct tls_ticket_key *k = tls_ticket_key();
    uint8_t aad[WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ + 2];

    (void)ssl;
    if (t == NULL || !t->ticket_aes_ok || in_len < 0 || in_len > 0xffff)
        return WOLFSSL_TICKET_RET_FATAL;
    if (enc) {
        memcpy(key_name, k->name, WOLFSSL_TICKET_NAME_SZ);
        if (wc_RNG_GenerateBlock(&t->rng, iv, WOLFSSL_TICKET_IV_SZ) != 0)
            return WOLFSSL_TICKET_RET_FATAL;
    } else if (memcmp(key_name, k->name, WOLFSSL_TICKET_NAME_SZ) != 0) {
        return WOLFSSL_TICKET_RET_REJECT;
    }
    memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
    memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
    aad[sizeof(aad) - 2] = (uint8_t)(in_len >> 8);
    aad[sizeof(aad) - 1] = (uint8_t)in_len;
    if (enc) {
        if (wc_AesGcmEncrypt(&t->ticket_aes, ticket, ticket, (word32)in_len, iv, 12, mac, 16, aad,
                             sizeof(aad)) != 0)
            return WOLFSSL_TICKET_RET_FATAL;
        memset(mac + 16, 0, WOLFSSL_TICKET_MAC_SZ - 16);
    } else {
        if (wc_AesGcmDecrypt(&t->ticket_aes, ticket, ticket, (word32)in_len, iv, 12, mac, 16, aad,
                             sizeof(aad)) != 0)
            return WOLFSSL_TICKET_RET_REJECT;
    }
    *out_len = in_len;
    return WOLFSSL_TICKET_RET_OK;
}

/*
 * wolfSSL (built with WOLFSSL_ALWAYS_VERIFY_CB) calls this for every upstream certificate.
 * preverify predates its host-name and IP checks, whose verdict is in the store's error, so
 * both decide; a rejected certificate's subject and issuer are kept for the failure detail.
 */
static int on_verify(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
    if (preverify && wolfSSL_X509_STORE_CTX_get_error(store) == 0)
        return 1;
    WOLFSSL *ssl = wolfSSL_X509_STORE_CTX_get_ex_data(store, 0);
    struct soth_tls_conn *c = ssl != NULL ? wolfSSL_GetIOReadCtx(ssl) : NULL;
    WOLFSSL_X509 *x = wolfSSL_X509_STORE_CTX_get_current_cert(store);
    /* allocated for the first rejected certificate only (no memory: no names in the detail) */
    if (c != NULL && x != NULL && c->rejected == NULL &&
        (c->rejected = malloc(REJECTED_MAX)) != NULL) {
        char sub[88], iss[88]; /* both fit c->rejected with the quotes */
        if (wolfSSL_X509_NAME_oneline(wolfSSL_X509_get_subject_name(x), sub, sizeof(sub)) == NULL)
            sub[0] = '\0';
        if (wolfSSL_X509_NAME_oneline(wolfSSL_X509_get_issuer_name(x), iss, sizeof(iss)) == NULL)
            iss[0] = '\0';
        snprintf(c->rejected, REJECTED_MAX, "\"%s\" issued by \"%s\"", sub, iss);
    }
    return 0;
}

static int ctx_common(WOLFSSL_CTX *ctx, bool client)
{
    int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1};
    if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS)
        return -1;
    if (wolfSSL_CTX_set_cipher_list(ctx, CIPHER_LIST) != WOLFSSL_SUCCESS)
        return -1;
    if (wolfSSL_CTX_set_groups(ctx, groups, 2) != WOLFSSL_SUCCESS)
        return -1;
    if (client) {
        /* Each new session (a ticket read, a TLS 1.2 handshake done) is kept at once
         * (conn.c, keep_session). */
        wolfSSL_CTX_sess_set_new_cb(ctx, tls_on_new_session);
        /* supported_groups in the ClientHello: only what we allow (also for TLS 1.2 ECDHE) */
        if (wolfSSL_CTX_UseSupportedCurve(ctx, WOLFSSL_ECC_X25519) != WOLFSSL_SUCCESS ||
            wolfSSL_CTX_UseSupportedCurve(ctx, WOLFSSL_ECC_SECP256R1) != WOLFSSL_SUCCESS)
            return -1;
    }
    /* The global session cache takes a lock per handshake: tickets carry the state instead.
     * "Off" alone does not keep a server's session out of it once a ticket was made (wolfSSL
     * 5.5.4 with OPENSSL_EXTRA: AddSession copies it in under the cache row's mutex whenever
     * the client sent a legacy session id, as OpenSSL clients and browsers do); no internal
     * store does (docs/tls.md). */
    wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF |
                                                WOLFSSL_SESS_CACHE_NO_INTERNAL_STORE);
    wolfSSL_CTX_SetIORecv(ctx, tls_on_recv);
    wolfSSL_CTX_SetIOSend(ctx, tls_on_send);
    return 0;
}

static int decode_ca_key(struct soth_tls_ctx *t)
{
    const struct soth_tls_ca *ca = t->ca;
    word32 idx = 0;
    if (ca->key_type == ECC_TYPE) {
        if (wc_ecc_init(&t->ca_ecc) != 0)
            return -1;
        t->ca_key_ok = true;
        return wc_EccPrivateKeyDecode(ca->key_der, &idx, &t->ca_ecc, (word32)ca->key_der_len);
    }
    if (wc_InitRsaKey(&t->ca_rsa, NULL) != 0)
        return -1;
    t->ca_key_ok = true;
    if (wc_RsaPrivateKeyDecode(ca->key_der, &idx, &t->ca_rsa, (word32)ca->key_der_len) != 0)
        return -1;
    return wc_RsaSetRNG(&t->ca_rsa, &t->rng); /* RSA blinding */
}

int soth_tls_ctx_new(const struct soth_tls_ctx_params *p, struct soth_tls_ctx **out, char *err,
                     size_t err_len)
{
    struct soth_tls_ctx *t = calloc(1, sizeof(*t));
    int rc = SOTH_E_TLS;

    if (t == NULL)
        return fail(err, err_len, SOTH_E_NOMEM, "tls: out of memory");
    t->free_own.keep = 1024; /* idle input-remainder buffers kept (4 MiB) */
    if (p->ca == NULL || p->leaf_validity_days == 0) {
        free(t);
        return fail(err, err_len, SOTH_E_CONFIG, "tls: no CA or leaf_validity_days 0");
    }
    t->ca = p->ca;
    t->leaf_validity_days = p->leaf_validity_days;
    t->http2_enabled = p->http2_enabled;
    t->upstream_verify = p->upstream_verify;

    if (wc_InitRng(&t->rng) != 0) {
        rc = fail(err, err_len, SOTH_E_TLS, "tls: RNG init failed");
        goto fail;
    }
    t->rng_ok = true;

    /* One P-256 key per worker for all its leaves: minting then costs one signature. */
    if (wc_ecc_init(&t->leaf_key) != 0)
        goto fail_msg;
    t->leaf_key_ok = true;
    if (wc_ecc_make_key_ex(&t->rng, 32, &t->leaf_key, ECC_SECP256R1) != 0)
        goto fail_msg;
    int n = wc_EccKeyToDer(&t->leaf_key, t->leaf_key_der, sizeof(t->leaf_key_der));
    if (n <= 0)
        goto fail_msg;
    t->leaf_key_der_len = (size_t)n;
    if (decode_ca_key(t) != 0) {
        rc = fail(err, err_len, SOTH_E_TLS, "tls: cannot decode the CA key");
        goto fail;
    }

    t->tmpl = malloc(sizeof(Cert));
    t->work = malloc(sizeof(Cert));
    if (t->tmpl == NULL || t->work == NULL || wc_InitCert(t->tmpl) != 0)
        goto fail_msg;
    t->tmpl->sigType = t->ca->sig_type;
    t->tmpl->isCA = 0;
    t->tmpl->selfSigned = 0;
    /* Issuer copied byte for byte from the CA cert on disk (chain building compares DER). */
    if (wc_SetIssuerRaw(t->tmpl, t->ca->cert_der, (int)t->ca->cert_der_len) != 0 ||
        wc_SetAuthKeyIdFromCert(t->tmpl, t->ca->cert_der, (int)t->ca->cert_der_len) != 0 ||
        wc_SetKeyUsage(t->tmpl, "digitalSignature") != 0 ||
        wc_SetExtKeyUsage(t->tmpl, "serverAuth") != 0) {
        rc = fail(err, err_len, SOTH_E_TLS, "tls: cannot read issuer data from the CA cert");
        goto fail;
    }

    /* Leaf DER bound: fixed parts + name twice (SAN, CN) + issuer + AKI + signature. */
    size_t der_cap = 640 + 2 * LEAF_NAME_MAX + t->ca->cert_der_len / 2 + t->ca->sig_max;
    if (der_cap > 16384)
        der_cap = 16384;
    t->scratch_der = malloc(der_cap);
    if (t->scratch_der == NULL)
        goto fail_msg;
    rc = tls_cache_init(&t->cache, p->leaf_cache_size, der_cap);
    if (rc < 0) {
        rc = fail(err, err_len, rc, "tls.leaf_cache_size: cannot allocate %u entries",
                  p->leaf_cache_size);
        goto fail;
    }
    rc = SOTH_E_TLS;

    const struct tls_ticket_key *tk = tls_ticket_key();
    if (wc_AesInit(&t->ticket_aes, NULL, INVALID_DEVID) != 0)
        goto fail_msg;
    t->ticket_aes_ok = true;
    if (wc_AesGcmSetKey(&t->ticket_aes, tk->key, sizeof(tk->key)) != 0)
        goto fail_msg;

    /* Server side (facing clients): the leaf key once; the leaf cert per connection. */
    t->server_ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
    if (t->server_ctx == NULL || ctx_common(t->server_ctx, false) != 0)
        goto fail_msg;
    if (wolfSSL_CTX_use_PrivateKey_buffer(t->server_ctx, t->leaf_key_der, (long)t->leaf_key_der_len,
                                          WOLFSSL_FILETYPE_ASN1) != WOLFSSL_SUCCESS)
        goto fail_msg;
    /* wolfSSL_new() refuses a server ctx without a certificate: a placeholder leaf, replaced
     * on every connection by the leaf for its name. */
    ssize_t pl = soth_tls_leaf_mint(t, SOTH_IOV_LIT("soth-mitm.invalid"), t->scratch_der, der_cap);
    if (pl < 0 || wolfSSL_CTX_use_certificate_buffer(t->server_ctx, t->scratch_der, (long)pl,
                                                     WOLFSSL_FILETYPE_ASN1) != WOLFSSL_SUCCESS)
        goto fail_msg;
    wolfSSL_CTX_set_verify(t->server_ctx, WOLFSSL_VERIFY_NONE, NULL);
    if (wolfSSL_CTX_set_TicketEncCb(t->server_ctx, on_ticket) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_set_TicketEncCtx(t->server_ctx, t) != WOLFSSL_SUCCESS)
        goto fail_msg;

    /* Client side (facing origins). */
    t->client_ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
    if (t->client_ctx == NULL || ctx_common(t->client_ctx, true) != 0)
        goto fail_msg;
    if (p->upstream_verify) {
        const char *sys = p->system_ca_file != NULL ? p->system_ca_file : SYSTEM_CA_FILE;
        bool any = false;
        if (access(sys, R_OK) == 0 &&
            wolfSSL_CTX_load_verify_locations_ex(
                t->client_ctx, sys, NULL,
                WOLFSSL_LOAD_FLAG_IGNORE_ERR | WOLFSSL_LOAD_FLAG_DATE_ERR_OKAY) == WOLFSSL_SUCCESS)
            any = true;
        if (p->upstream_ca_file != NULL) {
            if (wolfSSL_CTX_load_verify_locations(t->client_ctx, p->upstream_ca_file, NULL) !=
                WOLFSSL_SUCCESS) {
                rc = fail(err, err_len, SOTH_E_CONFIG,
                          "tls.upstream_ca_file: cannot load CA certificates from %s",
                          p->upstream_ca_file);
                goto fail;
            }
            any = true;
        }
        if (!any) {
            rc = fail(err, err_len, SOTH_E_CONFIG,
                      "tls.upstream_verify: no trusted CAs (%s unreadable, no upstream_ca_file)",
                      sys);
            goto fail;
        }
        wolfSSL_CTX_set_verify(t->client_ctx, WOLFSSL_VERIFY_PEER, on_verify);
    } else {
        wolfSSL_CTX_set_verify(t->client_ctx, WOLFSSL_VERIFY_NONE, NULL);
    }
    *out = t;
    return 0;

fail_msg:
    rc = fail(err, err_len, SOTH_E_TLS, "tls: wolfSSL context set-up failed");
fail:
    soth_tls_ctx_free(t);
    return rc;
}

void soth_tls_ctx_free(struct soth_tls_ctx *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < TLS_UP_SESSIONS; i++)
        if (t->up_sess[i].s != NULL)
            wolfSSL_SESSION_free(t->up_sess[i].s);
    soth_tls_ctx_trim(t); /* the kept connection structs, output chunks and input buffers */
    if (t->server_ctx != NULL)
        wolfSSL_CTX_free(t->server_ctx);
    if (t->client_ctx != NULL)
        wolfSSL_CTX_free(t->client_ctx);
    if (t->ticket_aes_ok)
        wc_AesFree(&t->ticket_aes);
    tls_cache_dispose(&t->cache);
    free(t->scratch_der);
    free(t->tmpl);
    free(t->work);
    if (t->ca_key_ok) {
        if (t->ca->key_type == ECC_TYPE)
            wc_ecc_free(&t->ca_ecc);
        else
            wc_FreeRsaKey(&t->ca_rsa);
    }
    if (t->leaf_key_ok)
        wc_ecc_free(&t->leaf_key);
    if (t->rng_ok)
        wc_FreeRng(&t->rng);
    memset(t->leaf_key_der, 0, sizeof(t->leaf_key_der));
    free(t);
}
