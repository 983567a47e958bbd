/*
 * TLS connections over memory I/O. wolfSSL never sees a socket: its receive callback reads
 * the ciphertext the engine fed (borrowed bytes first-hand, their remainder from a small
 * per-conn copy), its send callback appends to a chunk queue the engine drains, or hands the
 * bytes to the engine's sink (its own send queue) when one is set.
 */
#include "tls_int.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#define IN_MAX          (1u << 20)  /* unread ciphertext a conn will hold */
#define OWN_KEEP        (64u << 10) /* larger input copies are freed when the conn is recycled */
#define MAX_FREE_CONNS  1024
#define MAX_FREE_CHUNKS 256
#define OWN_SMALL       4096u /* the usual remainder buffer: lent from the ctx while in use */
_Static_assert(OWN_SMALL == TLS_SH_CAP, "one buffer size in the ctx's free_own pool");

/* RFC 8446 4.1.3: the ServerHello random that marks a HelloRetryRequest. */
static const uint8_t HRR_RANDOM[32] = {
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C};

/* ---- wolfSSL I/O callbacks */

/* Follow record boundaries of the input during the handshake; note cleartext alerts. */
static void track_records(struct soth_tls_conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (c->rec_left == 0) {
            c->rec_hdr[c->rec_hdr_len++] = *p++;
            n--;
            if (c->rec_hdr_len == 5) {
                c->rec_left = (uint16_t)((c->rec_hdr[3] << 8) | c->rec_hdr[4]);
                c->rec_hdr_len = 0;
                c->rec_alert_len = 0;
            }
            continue;
        }
        size_t take = n < c->rec_left ? n : c->rec_left;
        if (c->rec_hdr[0] == 21) { /* alert: level, description */
            for (size_t i = 0; i < take && c->rec_alert_len < 2; i++)
                c->rec_alert[c->rec_alert_len++] = p[i];
            if (c->rec_alert_len == 2 && c->rec_left == 2 && c->rec_alert[0] == 2)
                c->clear_alert = c->rec_alert[1];
        }
        if (c->rec_hdr[0] == 22 && c->side == SOTH_LEG_UPSTREAM && !c->ja4s_done)
            tls_ja4s_take(c, p, take);
        c->rec_left = (uint16_t)(c->rec_left - take);
        p += take;
        n -= take;
    }
}

int tls_on_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx);
int tls_on_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    struct soth_tls_conn *c = ctx;
    size_t want = sz > 0 ? (size_t)sz : 0, got = 0;

    (void)ssl;
    if (c->own_len > c->own_off) {
        size_t take = c->own_len - c->own_off;
        if (take > want)
            take = want;
        memcpy(buf, c->own + c->own_off, take);
        c->own_off += take;
        got = take;
        if (c->own_off == c->own_len)
            c->own_off = c->own_len = 0;
    }
    if (got < want && c->bor_len > 0) {
        size_t take = c->bor_len;
        if (take > want - got)
            take = want - got;
        memcpy(buf + got, c->bor, take);
        c->bor += take;
        c->bor_len -= take;
        got += take;
    }
    if (got == 0)
        return WOLFSSL_CBIO_ERR_WANT_READ;
    c->got_any = true;
    if (c->state != CONN_ESTABLISHED)
        track_records(c, (const uint8_t *)buf, got);
    return (int)got;
}

static struct out_chunk *chunk_get(struct soth_tls_ctx *t)
{
    struct out_chunk *k = t->free_chunks;
    if (k != NULL) {
        t->free_chunks = k->next;
        t->n_free_chunks--;
    } else {
        k = malloc(sizeof(*k));
        if (k == NULL)
            return NULL;
    }
    k->next = NULL;
    k->off = k->len = 0;
    return k;
}

static void chunk_put(struct soth_tls_ctx *t, struct out_chunk *k)
{
    if (t->n_free_chunks >= MAX_FREE_CHUNKS) {
        free(k);
        return;
    }
    k->next = t->free_chunks;
    t->free_chunks = k;
    t->n_free_chunks++;
}

/* Server side, during the handshake: did this output carry a real ServerHello (not HRR)? */
static void note_server_hello(struct soth_tls_conn *c, const uint8_t *p, size_t n)
{
    /* wolfSSL hands whole records to the send callback (we always accept everything). */
    while (n >= 5) {
        size_t rlen = ((size_t)p[3] << 8) | p[4];
        if (p[0] == 22 && rlen >= 4 + 2 + 32 && n >= 5 + 4 + 2 + 32 && p[5] == 2 &&
            memcmp(p + 5 + 4 + 2, HRR_RANDOM, 32) != 0) {
            c->sent_server_hello = true;
            return;
        }
        if (n < 5 + rlen)
            return;
        p += 5 + rlen;
        n -= 5 + rlen;
    }
}

int tls_on_send(WOLFSSL *ssl, char *buf, int sz, void *ctx);
int tls_on_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    struct soth_tls_conn *c = ctx;
    const uint8_t *p = (const uint8_t *)buf;
    size_t n = sz > 0 ? (size_t)sz : 0;

    (void)ssl;
    if (c->side == SOTH_LEG_CLIENT && !c->sent_server_hello && c->state != CONN_ESTABLISHED)
        note_server_hello(c, p, n);
    c->sent_any = true;
    if (c->sink != NULL)
        return c->sink(c->sink_ctx, p, n) < 0 ? WOLFSSL_CBIO_ERR_GENERAL : sz;
    while (n > 0) {
        struct out_chunk *k = c->out_tail;
        if (k == NULL || k->len == OUT_CHUNK_CAP) {
            struct out_chunk *nk = chunk_get(c->t);
            if (nk == NULL)
                return WOLFSSL_CBIO_ERR_GENERAL;
            if (k == NULL)
                c->out_head = nk;
            else
                k->next = nk;
            c->out_tail = k = nk;
        }
        size_t room = OUT_CHUNK_CAP - k->len;
        size_t take = n < room ? n : room;
        memcpy(k->data + k->len, p, take);
        k->len += (uint32_t)take;
        c->out_pending += take;
        p += take;
        n -= take;
    }
    return sz;
}

#ifdef HAVE_WOLFSSL_RECORD_RESERVE
/* wolfSSL builds an application data record in the sink's queue (the record-reserve patch;
 * docs/dependencies.md, "wolfSSL patches"): sz bytes of room, or NULL for the send callback. */
static unsigned char *tls_on_reserve(WOLFSSL *ssl, int sz, void *ctx)
{
    struct soth_tls_conn *c = ctx;
    (void)ssl;
    if (c->sink == NULL || c->sink_reserve == NULL || sz <= 0)
        return NULL;
    return c->sink_reserve(c->sink_ctx, (size_t)sz);
}

static void tls_on_commit(WOLFSSL *ssl, int sz, void *ctx)
{
    struct soth_tls_conn *c = ctx;
    (void)ssl;
    if (sz > 0)
        c->sent_any = true;
    c->sink_commit(c->sink_ctx, sz > 0 ? (size_t)sz : 0);
}
#endif

static void arm_reserve(struct soth_tls_conn *c)
{
#ifdef HAVE_WOLFSSL_RECORD_RESERVE
    wolfSSL_set_record_reserve(c->ssl, tls_on_reserve, tls_on_commit);
#else
    (void)c;
#endif
}

/* ---- input remainder buffers */

/*
 * A conn holds a copy of ciphertext it could not consume yet (a partial record) only between
 * feeds; most of the time, and always while idle, it holds none. The small buffers go back to
 * a per-ctx free list once empty, so an idle conn keeps no input memory and a warm worker
 * mallocs none. Larger ones (bulk transfers) stay with their conn until it is recycled.
 */
/* The conn's remainder buffer is empty: a small one goes back to the ctx. */
static void own_release_if_empty(struct soth_tls_conn *c)
{
    if (c->own == NULL || c->own_len != c->own_off || c->own_cap != OWN_SMALL)
        return;
    soth_buf_pool_put(&c->t->free_own, c->own);
    c->own = NULL;
    c->own_cap = 0;
    c->own_off = c->own_len = 0;
}

/* ---- life cycle */

/* With the key log on: keep the handshake arrays (client random, TLS 1.2 master secret) until
 * the handshake is done, and hear every TLS 1.3 secret. Off: nothing is installed. */
static void keylog_arm(struct soth_tls_conn *c)
{
#ifdef HAVE_SECRET_CALLBACK
    if (!soth_tls_keylog_enabled())
        return;
    wolfSSL_KeepArrays(c->ssl);
    wolfSSL_set_tls13_secret_cb(c->ssl, tls_keylog_tls13, NULL);
    c->keylog = true;
#else
    (void)c;
#endif
}

static struct soth_tls_conn *conn_alloc(struct soth_tls_ctx *t, enum soth_leg side)
{
    struct soth_tls_conn *c = t->free_conns;
    uint8_t *own = NULL;
    size_t own_cap = 0;
    if (c != NULL) {
        t->free_conns = c->next_free;
        t->n_free_conns--;
        own = c->own;
        own_cap = c->own_cap;
    } else {
        c = malloc(sizeof(*c));
        if (c == NULL)
            return NULL;
    }
    memset(c, 0, sizeof(*c));
    c->t = t;
    c->side = side;
    c->state = CONN_NEW;
    c->own = own;
    c->own_cap = own_cap;
    c->clear_alert = -1;
    return c;
}

/*
 * Keep an upstream conn's session for the next connection to its name: a TLS 1.2 session, or
 * a TLS 1.3 one holding a ticket (a session ID alone does not resume TLS 1.3). Called as soon
 * as wolfSSL has made one (a TLS 1.2 handshake done, each TLS 1.3 NewSessionTicket read), so
 * that the client's next request, which may reach the origin before this conn is freed,
 * already resumes; and again when the conn is freed. A TLS 1.3 conn closed before the origin's
 * ticket was read holds the ticket it was resumed with, which still resumes: the wolfSSL build
 * pairs a session's ticket with that ticket's secret (docs/dependencies.md, "wolfSSL patches";
 * docs/tls.md, "Upstream sessions"). The kept object is the conn's own session (a reference,
 * not a copy): a later ticket on the same conn updates it, and wolfSSL_set_session copies it.
 */
static void keep_session(struct soth_tls_conn *c)
{
    struct soth_tls_ctx *t = c->t;
    c->sess_new = false;
    WOLFSSL_SESSION *s = wolfSSL_get1_session(c->ssl);
    bool tls13 = wolfSSL_version(c->ssl) == TLS1_3_VERSION;
    if (s != NULL && (wolfSSL_SESSION_is_resumable(s) != 1 ||
                      (tls13 && wolfSSL_SESSION_has_ticket(s) != WOLFSSL_SUCCESS))) {
        wolfSSL_SESSION_free(s);
        s = NULL;
    }
    if (s != NULL) {
        size_t i = c->host_key & (TLS_UP_SESSIONS - 1);
        if (t->up_sess[i].s != NULL)
            wolfSSL_SESSION_free(t->up_sess[i].s);
        t->up_sess[i].key = c->host_key;
        t->up_sess[i].s = s;
    }
}

int tls_on_new_session(WOLFSSL *ssl, WOLFSSL_SESSION *s)
{
    (void)s;
    struct soth_tls_conn *c = wolfSSL_GetIOReadCtx(ssl);
    if (c != NULL && c->side == SOTH_LEG_UPSTREAM)
        c->sess_new = true;
    return 0; /* wolfSSL keeps no extra reference: keep_session takes its own */
}

void soth_tls_conn_free(struct soth_tls_conn *c)
{
    if (c == NULL)
        return;
    struct soth_tls_ctx *t = c->t;
    if (c->ssl != NULL && c->side == SOTH_LEG_UPSTREAM &&
        (c->state == CONN_ESTABLISHED || c->state == CONN_CLOSED))
        keep_session(c);
    if (c->ssl != NULL && c->side == SOTH_LEG_UPSTREAM && c->state == CONN_FAILED) {
        /* A failed handshake may be the resumption itself (an origin that changed versions or
         * keys): never offer that session again. */
        size_t i = c->host_key & (TLS_UP_SESSIONS - 1);
        if (t->up_sess[i].s != NULL && t->up_sess[i].key == c->host_key) {
            wolfSSL_SESSION_free(t->up_sess[i].s);
            t->up_sess[i].s = NULL;
        }
    }
    if (c->ssl != NULL)
        wolfSSL_free(c->ssl);
    c->ssl = NULL;
    free(c->rejected);
    c->rejected = NULL;
    tls_ja4s_release(c);
    while (c->out_head != NULL) {
        struct out_chunk *k = c->out_head;
        c->out_head = k->next;
        chunk_put(t, k);
    }
    if (c->own_cap > OWN_KEEP) {
        free(c->own);
        c->own = NULL;
        c->own_cap = 0;
    } else if (c->own_cap == OWN_SMALL) {
        soth_buf_pool_put(&t->free_own, c->own);
        c->own = NULL;
        c->own_cap = 0;
    }
    if (t->n_free_conns >= MAX_FREE_CONNS) {
        free(c->own);
        free(c);
        return;
    }
    c->next_free = t->free_conns;
    t->free_conns = c;
    t->n_free_conns++;
}

int soth_tls_conn_new_server(struct soth_tls_ctx *t, struct soth_iov name, struct soth_iov alpn,
                             struct soth_tls_conn **out)
{
    struct soth_tls_leaf leaf;
    int rc = soth_tls_leaf_get(t, name, &leaf);
    if (rc < 0)
        return rc;
    if (alpn.len > 255 || (alpn.len > 0 && memchr(alpn.base, ',', alpn.len) != NULL))
        return SOTH_E_MALFORMED; /* wolfSSL_UseALPN takes a comma-separated list */

    struct soth_tls_conn *c = conn_alloc(t, SOTH_LEG_CLIENT);
    if (c == NULL)
        return SOTH_E_NOMEM;
    size_t n;
    tls_name_normalise(name, c->host, &n);
    c->ssl = wolfSSL_new(t->server_ctx);
    if (c->ssl == NULL) {
        rc = SOTH_E_NOMEM;
        goto fail;
    }
    wolfSSL_SetIOReadCtx(c->ssl, c);
    wolfSSL_SetIOWriteCtx(c->ssl, c);
    keylog_arm(c);
    arm_reserve(c);
    rc = SOTH_E_TLS;
    /* The key is the worker's leaf key, already on the server ctx; only the cert differs. */
    if (wolfSSL_use_certificate_buffer(c->ssl, (const unsigned char *)leaf.der.base,
                                       (long)leaf.der.len,
                                       WOLFSSL_FILETYPE_ASN1) != WOLFSSL_SUCCESS)
        goto fail;
    if (alpn.len > 0) {
        char one[256];
        memcpy(one, alpn.base, alpn.len);
        one[alpn.len] = '\0';
        /* Mirror the upstream's choice if the client offered it; otherwise no ALPN at all. */
        if (wolfSSL_UseALPN(c->ssl, one, (unsigned)alpn.len, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) !=
            WOLFSSL_SUCCESS)
            goto fail;
    }
    *out = c;
    return 0;
fail:
    soth_tls_conn_free(c);
    return rc;
}

static bool alpn_allowed(const struct soth_tls_ctx *t, struct soth_iov p)
{
    if (p.len == 0 || p.len > 255 || memchr(p.base, ',', p.len) != NULL)
        return false;
    if (!t->http2_enabled) {
        /* grpc-exp is HTTP/2 on the wire (grpcio clients offer it, docs/streaming.md). */
        if ((p.len == 2 && memcmp(p.base, "h2", 2) == 0) ||
            (p.len == 8 && memcmp(p.base, "grpc-exp", 8) == 0))
            return false;
    }
    return true;
}

/* wolfSSL's textual form of an IP SAN (asn.c GenerateDNSEntryIPString), which it compares. */
static void ip_text_wolf(const uint8_t *ip, int len, char *out, size_t cap)
{
    if (len == 4) {
        snprintf(out, cap, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
        return;
    }
    size_t off = 0;
    for (int i = 0; i < 8 && off < cap; i++)
        off += (size_t)snprintf(out + off, cap - off, "%02X%02X%s", ip[2 * i], ip[2 * i + 1],
                                i < 7 ? ":" : "");
}

int soth_tls_conn_new_client(struct soth_tls_ctx *t, struct soth_iov host,
                             const struct soth_iov *alpn, size_t n_alpn, struct soth_tls_conn **out)
{
    struct soth_tls_conn *c = conn_alloc(t, SOTH_LEG_UPSTREAM);
    size_t n;
    uint8_t ip[16];
    int rc = SOTH_E_MALFORMED;

    if (c == NULL)
        return SOTH_E_NOMEM;
    if (tls_name_normalise(host, c->host, &n) < 0)
        goto fail;
    int ip_len = tls_name_ip(c->host, n, ip);
    if (ip_len == 0 && !tls_name_is_dns(c->host, n, false))
        goto fail;
    c->ssl = wolfSSL_new(t->client_ctx);
    if (c->ssl == NULL) {
        rc = SOTH_E_NOMEM;
        goto fail;
    }
    wolfSSL_SetIOReadCtx(c->ssl, c);
    wolfSSL_SetIOWriteCtx(c->ssl, c);
    keylog_arm(c);
    arm_reserve(c);
    rc = SOTH_E_TLS;
    /* TLS 1.2 origins resume through tickets only when the client asks for them. */
    wolfSSL_UseSessionTicket(c->ssl);
    c->host_key = XXH3_64bits(c->host, n);
    size_t si = c->host_key & (TLS_UP_SESSIONS - 1);
    if (t->up_sess[si].s != NULL && t->up_sess[si].key == c->host_key) {
        /* Resume (TLS 1.3 ticket or 1.2 session): the name was verified when it was made. */
        if (wolfSSL_set_session(c->ssl, t->up_sess[si].s) != WOLFSSL_SUCCESS) {
            wolfSSL_SESSION_free(t->up_sess[si].s);
            t->up_sess[si].s = NULL;
        }
    }
    if (ip_len == 0) {
        if (wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, c->host, (unsigned short)n) !=
            WOLFSSL_SUCCESS)
            goto fail;
        if (t->upstream_verify && wolfSSL_check_domain_name(c->ssl, c->host) != WOLFSSL_SUCCESS)
            goto fail;
    } else if (t->upstream_verify) {
        /* RFC 6066 3: no SNI for literals; the certificate must carry the iPAddress SAN. */
        char txt[64];
        ip_text_wolf(ip, ip_len, txt, sizeof(txt));
        if (wolfSSL_X509_VERIFY_PARAM_set1_ip_asc(wolfSSL_get0_param(c->ssl), txt) !=
            WOLFSSL_SUCCESS)
            goto fail;
    }
    if (n_alpn > 0) {
        char list[1024];
        size_t off = 0;
        for (size_t i = 0; i < n_alpn; i++) {
            if (!alpn_allowed(t, alpn[i]) || off + alpn[i].len + 1 >= sizeof(list))
                continue;
            if (off > 0)
                list[off++] = ',';
            memcpy(list + off, alpn[i].base, alpn[i].len);
            off += alpn[i].len;
        }
        list[off] = '\0';
        if (off > 0 && wolfSSL_UseALPN(c->ssl, list, (unsigned)off,
                                       WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) != WOLFSSL_SUCCESS)
            goto fail;
    }
    *out = c;
    return 0;
fail:
    soth_tls_conn_free(c);
    return rc;
}

/* ---- input */

size_t soth_tls_conn_in_pending(const struct soth_tls_conn *c)
{
    return (c->own_len - c->own_off) + c->bor_len;
}

int soth_tls_conn_feed_done(struct soth_tls_conn *c)
{
#ifdef HAVE_WOLFSSL_KEEP_INPUT_BUFFER
    if (c->read_any) {
        c->read_any = false;
        /* This input's records are read: the record buffer wolfSSL kept from one to the next
         * (since the handshake completed) is zeroed and freed now if it holds nothing; one
         * holding part of a record stays for the rest (docs/tls.md "Memory I/O"). */
        wolfSSL_shrink_input_buffer(c->ssl);
    }
#endif
    if (c->bor_len == 0) {
        c->bor = NULL;
        own_release_if_empty(c);
        return 0;
    }
    size_t have = c->own_len - c->own_off;
    if (have + c->bor_len > IN_MAX)
        return SOTH_E_TOO_LARGE;
    if (c->own_off > 0) {
        memmove(c->own, c->own + c->own_off, have);
        c->own_off = 0;
        c->own_len = have;
    }
    if (c->own == NULL && c->bor_len <= OWN_SMALL) {
        c->own = soth_buf_pool_get(&c->t->free_own, OWN_SMALL);
        if (c->own == NULL)
            return SOTH_E_NOMEM;
        c->own_cap = OWN_SMALL;
    }
    if (c->own_len + c->bor_len > c->own_cap) {
        size_t cap = c->own_cap ? c->own_cap : OWN_SMALL;
        while (cap < c->own_len + c->bor_len)
            cap *= 2;
        uint8_t *p = realloc(c->own, cap);
        if (p == NULL)
            return SOTH_E_NOMEM;
        c->own = p;
        c->own_cap = cap;
    }
    memcpy(c->own + c->own_len, c->bor, c->bor_len);
    c->own_len += c->bor_len;
    c->bor = NULL;
    c->bor_len = 0;
    return 0;
}

int soth_tls_conn_feed(struct soth_tls_conn *c, const void *data, size_t len)
{
    int rc = soth_tls_conn_feed_done(c);
    if (rc < 0)
        return rc;
    if (soth_tls_conn_in_pending(c) + len > IN_MAX)
        return SOTH_E_TOO_LARGE;
    c->bor = data;
    c->bor_len = len;
    return 0;
}

/* ---- handshake and records */

/* Copy up to n unconsumed input bytes (copied remainder first, then borrowed). */
static size_t peek_input(const struct soth_tls_conn *c, uint8_t *out, size_t n)
{
    size_t got = 0;
    for (size_t i = c->own_off; i < c->own_len && got < n; i++)
        out[got++] = c->own[i];
    for (size_t i = 0; i < c->bor_len && got < n; i++)
        out[got++] = c->bor[i];
    return got;
}

static int conn_fail(struct soth_tls_conn *c, int err, int where)
{
    /* wolfSSL stops at the header of a cleartext alert it cannot take: read its body here. */
    if (c->clear_alert < 0 && c->rec_hdr[0] == 21 && c->rec_left == 2 && c->rec_hdr_len == 0 &&
        c->rec_alert_len == 0) {
        uint8_t a[2];
        if (peek_input(c, a, 2) == 2 && a[0] == 2)
            c->clear_alert = a[1];
    }
    c->state = CONN_FAILED;
    c->fail_ret = err != 0 ? err : FATAL_ERROR;
    c->fail_where = where;
    return SOTH_E_TLS;
}

int soth_tls_conn_handshake(struct soth_tls_conn *c)
{
    switch (c->state) {
    case CONN_ESTABLISHED:
        return 0;
    case CONN_FAILED:
        return SOTH_E_TLS;
    case CONN_CLOSED:
        return SOTH_E_STATE;
    case CONN_NEW:
        c->state = CONN_HANDSHAKING;
        SOTH_FALLTHROUGH;
    case CONN_HANDSHAKING:
        break;
    }
    int r = c->side == SOTH_LEG_CLIENT ? wolfSSL_accept(c->ssl) : wolfSSL_connect(c->ssl);
    if (r == WOLFSSL_SUCCESS) {
        c->state = CONN_ESTABLISHED;
        if (c->keylog)
            tls_keylog_handshake_done(c->ssl);
#ifdef HAVE_WOLFSSL_FREE_PEER_CERT
        /* Nothing reads the origin's certificate once the handshake is done (its checks and
         * the failure detail run during it, ctx.c on_verify): wolfSSL's copy goes
         * (docs/dependencies.md, "wolfSSL patches"). */
        wolfSSL_free_peer_cert(c->ssl);
#endif
#ifdef HAVE_WOLFSSL_FREE_HANDSHAKE_EXTRAS
        /* The suites, verify parameters and extensions only served the handshake: wolfSSL
         * keeps the negotiated ALPN, which is all that is read later (soth_tls_conn_alpn); the
         * event's facts, the key log and the session come from elsewhere (docs/dependencies.md,
         * "wolfSSL patches"). */
        wolfSSL_free_handshake_extras(c->ssl);
#endif
#ifdef HAVE_WOLFSSL_KEEP_INPUT_BUFFER
        /* Records after the handshake reuse one buffer while an input lasts, instead of a
         * malloc, a 16 KiB zeroing and a free each (soth_tls_conn_feed_done ends it). */
        wolfSSL_keep_input_buffer(c->ssl, 1);
#endif
        if (c->sess_new)
            keep_session(c);
        return 0;
    }
    int e = wolfSSL_get_error(c->ssl, r);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
        return SOTH_E_INCOMPLETE;
    return conn_fail(c, e, 1);
}

bool soth_tls_conn_is_established(const struct soth_tls_conn *c)
{
    return c->state == CONN_ESTABLISHED;
}

#if defined(HAVE_WOLFSSL_READ_IN_PLACE) && !defined(HAVE_WOLFSSL_KEEP_INPUT_BUFFER)
/* Lent plaintext is freed by soth_tls_conn_feed_done's shrink, which the other patch adds. */
#error "wolfSSL has wolfssl-record-read-in-place.patch without wolfssl-record-buffer-kept.patch"
#endif

/* soth_tls_conn_read and soth_tls_conn_read_view: *p set to the bytes, copied into buf or, with
 * view set and a wolfSSL that lends them, where they were decrypted. */
static ssize_t conn_read(struct soth_tls_conn *c, const char **p, void *buf, size_t cap, bool view)
{
    /* After our close_notify (CONN_CLOSED) the peer may still send data and its own
     * close_notify: a half-close, as a WebSocket whose origin closed first sees. */
    if (c->state != CONN_ESTABLISHED && c->state != CONN_CLOSED)
        return c->state == CONN_FAILED ? SOTH_E_TLS : SOTH_E_STATE;
    if (c->saw_eof)
        return 0;
    if (cap == 0)
        return SOTH_E_INCOMPLETE;
    if (cap > INT_MAX)
        cap = INT_MAX;
    int r;
#ifdef HAVE_WOLFSSL_READ_IN_PLACE
    if (view) {
        /* The plaintext where wolfSSL decrypted it: the record buffer is not shrunk under it
         * until soth_tls_conn_feed_done (ci/patches/wolfssl-record-read-in-place.patch). */
        const unsigned char *at = NULL;
        r = wolfSSL_read_in_place(c->ssl, &at, (int)cap);
        *p = (const char *)at;
    } else
#endif
    {
        (void)view;
        r = wolfSSL_read(c->ssl, buf, (int)cap);
        *p = buf;
    }
    c->read_any = true;
    if (c->sess_new)
        keep_session(c); /* the read took a NewSessionTicket */
    if (r > 0)
        return r;
    int e = wolfSSL_get_error(c->ssl, r);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
        return SOTH_E_INCOMPLETE;
    if (e == WOLFSSL_ERROR_ZERO_RETURN) {
        c->saw_eof = true;
        return 0;
    }
    return conn_fail(c, e, 2);
}

ssize_t soth_tls_conn_read(struct soth_tls_conn *c, void *buf, size_t cap)
{
    const char *p;
    return conn_read(c, &p, buf, cap, false);
}

ssize_t soth_tls_conn_read_view(struct soth_tls_conn *c, const char **p, void *buf, size_t cap)
{
    return conn_read(c, p, buf, cap, true);
}

ssize_t soth_tls_conn_write(struct soth_tls_conn *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    size_t off = 0;

    if (c->state != CONN_ESTABLISHED)
        return c->state == CONN_FAILED ? SOTH_E_TLS : SOTH_E_STATE;
    while (off < len) {
        size_t n = len - off;
        if (n > (1u << 30))
            n = 1u << 30;
        int r = wolfSSL_write(c->ssl, p + off, (int)n);
        if (r <= 0)
            return conn_fail(c, wolfSSL_get_error(c->ssl, r), 3);
        off += (size_t)r;
    }
    return (ssize_t)len;
}

int soth_tls_conn_shutdown(struct soth_tls_conn *c)
{
    if (c->state != CONN_ESTABLISHED)
        return c->state == CONN_CLOSED ? 0 : SOTH_E_STATE;
    int r = wolfSSL_shutdown(c->ssl);
    c->state = CONN_CLOSED;
    if (r == WOLFSSL_SUCCESS || r == WOLFSSL_SHUTDOWN_NOT_DONE)
        return 0;
    return SOTH_E_TLS;
}

/* ---- output */

size_t soth_tls_conn_out(const struct soth_tls_conn *c, struct soth_iov *iov)
{
    const struct out_chunk *k = c->out_head;
    if (k == NULL) {
        *iov = SOTH_IOV_NULL;
        return 0;
    }
    *iov = soth_iov(k->data + k->off, k->len - k->off);
    return iov->len;
}

size_t soth_tls_conn_out_iovs(const struct soth_tls_conn *c, struct soth_iov *iov, size_t max)
{
    size_t n = 0;
    for (const struct out_chunk *k = c->out_head; k != NULL && n < max; k = k->next) {
        if (k->len > k->off)
            iov[n++] = soth_iov(k->data + k->off, k->len - k->off);
    }
    return n;
}

void soth_tls_conn_out_consume(struct soth_tls_conn *c, size_t n)
{
    SOTH_BUG_ON(n > c->out_pending);
    c->out_pending -= n;
    while (n > 0) {
        struct out_chunk *k = c->out_head;
        size_t have = k->len - k->off;
        size_t take = n < have ? n : have;
        k->off += (uint32_t)take;
        n -= take;
        if (k->off == k->len) {
            /* Fully sent: recycle (an in-flight send is done with it by contract). */
            c->out_head = k->next;
            if (c->out_head == NULL)
                c->out_tail = NULL;
            chunk_put(c->t, k);
        }
    }
}

size_t soth_tls_conn_out_pending(const struct soth_tls_conn *c)
{
    return c->out_pending;
}

bool soth_tls_conn_set_sink(struct soth_tls_conn *c, soth_tls_sink_fn fn, void *ctx)
{
    if (c->out_pending != 0)
        return false;
    c->sink = fn;
    c->sink_ctx = fn != NULL ? ctx : NULL;
    if (fn == NULL)
        c->sink_reserve = NULL, c->sink_commit = NULL;
    return true;
}

void soth_tls_conn_set_sink_room(struct soth_tls_conn *c, soth_tls_reserve_fn reserve,
                                 soth_tls_commit_fn commit)
{
    SOTH_BUG_ON((reserve == NULL) != (commit == NULL));
    c->sink_reserve = reserve;
    c->sink_commit = commit;
}

void *soth_tls_conn_sink_ctx(const struct soth_tls_conn *c)
{
    return c->sink_ctx;
}

/* ---- facts */

struct soth_iov soth_tls_conn_version(const struct soth_tls_conn *c)
{
    if (c->ssl == NULL || c->state == CONN_NEW)
        return SOTH_IOV_NULL;
    const char *v = wolfSSL_get_version(c->ssl);
    return v != NULL ? soth_iov(v, strlen(v)) : SOTH_IOV_NULL;
}

struct soth_iov soth_tls_conn_cipher(const struct soth_tls_conn *c)
{
    if (c->ssl == NULL || c->state != CONN_ESTABLISHED)
        return SOTH_IOV_NULL;
    int s = wolfSSL_get_current_cipher_suite(c->ssl);
    const char *n = wolfSSL_get_cipher_name_iana_from_suite((uint8_t)(s >> 8), (uint8_t)s);
    return n != NULL ? soth_iov(n, strlen(n)) : SOTH_IOV_NULL;
}

struct soth_iov soth_tls_conn_alpn(const struct soth_tls_conn *c)
{
    char *name = NULL;
    unsigned short len = 0;
    if (c->ssl == NULL || c->state != CONN_ESTABLISHED)
        return SOTH_IOV_NULL;
    if (wolfSSL_ALPN_GetProtocol(c->ssl, &name, &len) != WOLFSSL_SUCCESS || name == NULL)
        return SOTH_IOV_NULL;
    return soth_iov(name, len);
}

bool soth_tls_conn_resumed(const struct soth_tls_conn *c)
{
    return c->ssl != NULL && wolfSSL_session_reused(c->ssl) == 1;
}

enum soth_leg soth_tls_conn_side(const struct soth_tls_conn *c)
{
    return c->side;
}

/* A quiet worker gives memory back (tls.h); soth_tls_ctx_free empties the pools the same way.
 * None is kept: what is kept through a quiet stretch pins pages wherever the burst left it in
 * the heap; the next connections malloc a few again. */
void soth_tls_ctx_trim(struct soth_tls_ctx *t)
{
    while (t->free_conns != NULL) {
        struct soth_tls_conn *c = t->free_conns;
        t->free_conns = c->next_free;
        free(c->own);
        free(c);
    }
    t->n_free_conns = 0;
    while (t->free_chunks != NULL) {
        struct out_chunk *k = t->free_chunks;
        t->free_chunks = k->next;
        free(k);
    }
    t->n_free_chunks = 0;
    soth_buf_pool_drain(&t->free_own);
}
