/*
 * Private to the tls module sources: struct bodies and helpers. wolfSSL headers are included here,
 * never in soth/tls.h. wolfssl/options.h must come before every other wolfSSL header.
 */
#ifndef SOTH_TLS_INT_H
#define SOTH_TLS_INT_H

#include <wolfssl/options.h>

#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/rsa.h>

#include "soth/tls.h"

/* ---- process-wide (set once by soth_tls_global_init, read-only afterwards) */
struct tls_ticket_key {
    uint8_t name[WOLFSSL_TICKET_NAME_SZ];
    uint8_t key[32]; /* AES-256-GCM */
};
const struct tls_ticket_key *tls_ticket_key(void);

/* ---- CA */
struct soth_tls_ca {
    char *cert_path;
    uint8_t *cert_der;
    size_t cert_der_len;
    uint8_t *key_der; /* traditional (SEC1 / PKCS#1) private key DER */
    size_t key_der_len;
    int key_type;   /* ECC_TYPE or RSA_TYPE (wolfCrypt enum CertType) */
    int sig_type;   /* CTC_SHA256wECDSA or CTC_SHA256wRSA */
    size_t sig_max; /* largest signature the key makes, bytes */
    int64_t not_before;
};

/* ---- leaf cache (per worker, no locks) */
#define LEAF_NAME_MAX 256
struct leaf_entry {
    uint64_t hash;
    uint32_t hnext;      /* next entry in the hash bucket, LEAF_NIL = end */
    uint32_t prev, next; /* LRU list: head = most recently used */
    uint16_t der_len;
    uint8_t name_len;
    bool used;
    char name[LEAF_NAME_MAX];
    uint8_t *der; /* der_cap bytes in the cache's slab */
};
#define LEAF_NIL UINT32_MAX

struct leaf_cache {
    struct leaf_entry *e; /* capacity entries */
    uint32_t *buckets;    /* nbuckets heads (power of two) */
    uint32_t nbuckets, capacity, count;
    uint32_t lru_head, lru_tail, free_head; /* free list through hnext */
    size_t der_cap;
    uint8_t *slab;
    uint64_t hits, misses, evictions;
};

/* ---- output queue: chunks never move once written (in-flight sends point into them) */
#define OUT_CHUNK_CAP (16384 + 1024)
struct out_chunk {
    struct out_chunk *next;
    uint32_t off, len; /* consumed, filled */
    uint8_t data[OUT_CHUNK_CAP];
};

#define TLS_UP_SESSIONS 256 /* power of 2 */

struct soth_tls_ctx {
    const struct soth_tls_ca *ca;
    uint32_t leaf_validity_days;
    bool http2_enabled, upstream_verify;
    WC_RNG rng;
    bool rng_ok;

    /* The worker's one leaf key: every leaf this worker mints carries it (docs/tls.md). */
    ecc_key leaf_key;
    bool leaf_key_ok;
    uint8_t leaf_key_der[160];
    size_t leaf_key_der_len;

    /* The worker's own decoded copy of the CA key (wolfCrypt key objects are not shared). */
    ecc_key ca_ecc;
    RsaKey ca_rsa;
    bool ca_key_ok;

    Cert *tmpl; /* issuer, AKI, EKU, key usage, signature type: set once */
    Cert *work; /* the cert being built (Cert is ~25 KB: heap, not stack) */

    WOLFSSL_CTX *server_ctx, *client_ctx;
    Aes ticket_aes;
    bool ticket_aes_ok;

    struct leaf_cache cache;
    uint8_t *scratch_der; /* the one leaf when the cache is disabled */
    uint16_t scratch_len;

    /* Upstream sessions to resume, direct-mapped by the hash of the verified name (one per
     * slot; a collision replaces). Only sessions of handshakes that succeeded are kept. */
    struct {
        uint64_t key;
        WOLFSSL_SESSION *s;
    } up_sess[TLS_UP_SESSIONS];

    struct soth_tls_conn *free_conns;
    uint32_t n_free_conns;
    struct out_chunk *free_chunks;
    uint32_t n_free_chunks;
    /* Small input-remainder buffers (OWN_SMALL bytes, conn.c), lent to a conn only while it
     * holds unread ciphertext. */
    struct soth_buf_pool free_own;
};

enum conn_state {
    CONN_NEW = 0,
    CONN_HANDSHAKING,
    CONN_ESTABLISHED,
    CONN_FAILED,
    CONN_CLOSED,
};

#define REJECTED_MAX 192 /* "subject" issued by "issuer": two names of up to 87 bytes, quoted */

struct soth_tls_conn {
    struct soth_tls_ctx *t;
    WOLFSSL *ssl;
    enum soth_leg side;
    enum conn_state state;

    /* input: borrowed bytes first consumed in place, their remainder copied to own */
    const uint8_t *bor;
    size_t bor_len;
    uint8_t *own;
    size_t own_off, own_len, own_cap;
    bool read_any; /* records were read since the last feed_done (wolfSSL's record buffer) */

    /* output: queued in out chunks, or handed to the sink as it is written */
    struct out_chunk *out_head, *out_tail;
    size_t out_pending;
    soth_tls_sink_fn sink;
    void *sink_ctx;
    soth_tls_reserve_fn sink_reserve; /* room in the sink's queue for a whole record */
    soth_tls_commit_fn sink_commit;

    /* handshake facts for the classifier */
    bool sent_server_hello; /* server: a ServerHello (not an HRR) left us */
    bool sent_any;
    bool got_any; /* the peer sent at least one byte */
    bool saw_eof; /* a read returned close_notify */
    int fail_ret; /* wolfSSL_get_error() of the failing call, 0 = none */
    /* Record tracker over the input during the handshake: TLS 1.3 peers send alerts in the
     * clear when they fail before their handshake keys, which wolfSSL cannot parse then. */
    uint8_t rec_hdr[5];
    uint8_t rec_hdr_len;
    uint16_t rec_left; /* body bytes of the current record still to come */
    uint8_t rec_alert[2];
    uint8_t rec_alert_len;
    int clear_alert; /* description of a fatal cleartext alert received, -1 = none */
    int fail_where;  /* 1 handshake, 2 read, 3 write */
    bool keylog;     /* secrets go to the key log (docs/tls.md, "Key log") */
    bool sess_new;   /* upstream: wolfSSL made a resumable session (tls_on_new_session) */
    /* upstream: the origin's ServerHello, collected for JA4S (ja4.c) in a buffer lent from
     * the ctx's free_own pool until it is complete */
    bool ja4s_done;
    uint8_t *sh;
    size_t sh_len;
    char ja4s[SOTH_TLS_JA4S_LEN + 1];
    /* upstream: the certificate verification rejected, as "subject" issued by "issuer"
     * (REJECTED_MAX bytes, allocated only when a certificate is rejected: not held by every
     * connection for its life) */
    char *rejected;

    char host[LEAF_NAME_MAX]; /* upstream: verified name; server: leaf name */
    uint64_t host_key;        /* upstream: hash of host (session cache key) */
    struct soth_tls_conn *next_free;
};

/* helpers shared between files */
/** Normalise name (lower case, IPv6 brackets dropped) into out (LEAF_NAME_MAX). */
int tls_name_normalise(struct soth_iov name, char *out, size_t *out_len);
/** 4 (IPv4), 16 (IPv6) with the address in ip, or 0 when name is not an IP literal. */
int tls_name_ip(const char *name, size_t len, uint8_t ip[16]);
/** A DNS name (optionally "*." wildcard) we are willing to mint or send as SNI. */
bool tls_name_is_dns(const char *name, size_t len, bool allow_wildcard);

int tls_cache_init(struct leaf_cache *c, uint32_t capacity, size_t der_cap);
void tls_cache_dispose(struct leaf_cache *c);

/* ---- key log (keylog.c): only called while soth_tls_keylog_enabled() */
void tls_keylog_line(const char *label, const uint8_t *client_random, const uint8_t *secret,
                     size_t secret_len);
int tls_keylog_tls13(WOLFSSL *ssl, int id, const unsigned char *secret, int secret_sz, void *ctx);
void tls_keylog_handshake_done(WOLFSSL *ssl);

/** Client ctx: wolfSSL made or updated ssl's session (a ticket, a finished handshake). */
int tls_on_new_session(WOLFSSL *ssl, WOLFSSL_SESSION *s);

/* ---- JA4S (ja4.c) */
#define TLS_SH_CAP 4096u /* a ServerHello we fingerprint fits; the free_own pool's size */
/** Upstream conns, during the handshake: bytes of handshake records from the origin. */
void tls_ja4s_take(struct soth_tls_conn *c, const uint8_t *p, size_t n);
void tls_ja4s_release(struct soth_tls_conn *c);

/** wolfSSL error code name (e.g. "ASN_NO_SIGNER_E"), never NULL. */
const char *tls_wolf_err_name(int err);

/* ---- A bounds-checked reader over bytes received from a peer (ClientHello, QUIC Initial):
 * every read fails instead of running past n. */

struct rd {
    const uint8_t *p;
    size_t n;
};

static inline bool rd_u8(struct rd *r, uint8_t *v)
{
    if (r->n < 1)
        return false;
    *v = r->p[0];
    r->p++;
    r->n--;
    return true;
}

static inline bool rd_u16(struct rd *r, uint16_t *v)
{
    if (r->n < 2)
        return false;
    *v = (uint16_t)((r->p[0] << 8) | r->p[1]);
    r->p += 2;
    r->n -= 2;
    return true;
}

static inline bool rd_skip(struct rd *r, size_t k)
{
    if (r->n < k)
        return false;
    r->p += k;
    r->n -= k;
    return true;
}

/* A sub-reader over the next k bytes. */
static inline bool rd_sub(struct rd *r, size_t k, struct rd *sub)
{
    if (r->n < k)
        return false;
    sub->p = r->p;
    sub->n = k;
    r->p += k;
    r->n -= k;
    return true;
}

#endif
