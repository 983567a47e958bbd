/*
 * JA4 (client) and JA4S (server) TLS fingerprints, per FoxIO's published specification
 * (docs/tls.md, "Fingerprints"). Bounded, no allocation: lists are sorted on the stack.
 */
#include "tls_int.h"

#include <string.h>
#include <wolfssl/wolfcrypt/sha256.h>

#define EXT_SNI      0x0000
#define EXT_SIGALGS  0x000d
#define EXT_ALPN     0x0010
#define EXT_VERSIONS 0x002b
#define JA4_MAX_LIST 512 /* ciphers or extensions a fingerprint is computed over */

static const char HEXD[] = "0123456789abcdef";

static bool is_grease(uint16_t v)
{
    return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static void version_chars(uint16_t v, char *o)
{
    const char *s;
    switch (v) {
    case 0x0304:
        s = "13";
        break;
    case 0x0303:
        s = "12";
        break;
    case 0x0302:
        s = "11";
        break;
    case 0x0301:
        s = "10";
        break;
    case 0x0300:
        s = "s3";
        break;
    case 0x0002:
        s = "s2";
        break;
    case 0xfeff:
        s = "d1";
        break;
    case 0xfefd:
        s = "d2";
        break;
    case 0xfefc:
        s = "d3";
        break;
    default:
        s = "00";
        break;
    }
    o[0] = s[0];
    o[1] = s[1];
}

static void count_chars(size_t n, char *o)
{
    if (n > 99)
        n = 99;
    o[0] = (char)('0' + n / 10);
    o[1] = (char)('0' + n % 10);
}

static bool is_alnum(uint8_t b)
{
    return (b >= '0' && b <= '9') || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z');
}

/* First and last characters of an ALPN value; hex digits when either end is not alnum. */
static void alpn_chars(const uint8_t *p, size_t n, char *o)
{
    if (n == 0) {
        o[0] = o[1] = '0';
        return;
    }
    if (is_alnum(p[0]) && is_alnum(p[n - 1])) {
        o[0] = (char)p[0];
        o[1] = (char)p[n - 1];
        return;
    }
    o[0] = HEXD[p[0] >> 4];
    o[1] = HEXD[p[n - 1] & 15];
}

static void sort16(uint16_t *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint16_t x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1] > x) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
}

static void sha_list(wc_Sha256 *s, const uint16_t *v, size_t n, bool lead_comma)
{
    for (size_t i = 0; i < n; i++) {
        char h[5] = {',', HEXD[v[i] >> 12], HEXD[(v[i] >> 8) & 15], HEXD[(v[i] >> 4) & 15],
                     HEXD[v[i] & 15]};
        bool comma = i > 0 || lead_comma;
        wc_Sha256Update(s, (const byte *)(comma ? h : h + 1), comma ? 5 : 4);
    }
}

/* The first 12 hex characters of SHA-256(list_a[_list_b]) into o; "000000000000" when a is
 * empty. */
static int hash12(const uint16_t *a, size_t na, const uint16_t *b, size_t nb, char *o)
{
    if (na == 0) {
        memset(o, '0', 12);
        return 0;
    }
    wc_Sha256 s;
    byte d[WC_SHA256_DIGEST_SIZE];
    if (wc_InitSha256(&s) != 0)
        return SOTH_E_TLS;
    sha_list(&s, a, na, false);
    if (nb > 0) {
        wc_Sha256Update(&s, (const byte *)"_", 1);
        sha_list(&s, b, nb, false);
    }
    int rc = wc_Sha256Final(&s, d);
    wc_Sha256Free(&s);
    if (rc != 0)
        return SOTH_E_TLS;
    for (int i = 0; i < 6; i++) {
        o[2 * i] = HEXD[d[i] >> 4];
        o[2 * i + 1] = HEXD[d[i] & 15];
    }
    return 0;
}

int soth_tls_ja4(const struct soth_tls_client_hello *h, bool quic, char *out, size_t cap)
{
    uint16_t ciphers[JA4_MAX_LIST], exts[JA4_MAX_LIST], sigs[JA4_MAX_LIST];
    size_t nc = 0, ne = 0, ns = 0, n_ext_all = 0;
    bool sni = false;
    uint16_t version = h->legacy_version;
    const uint8_t *alpn = NULL;
    size_t alpn_len = 0;

    if (cap < SOTH_TLS_JA4_LEN + 1)
        return SOTH_E_TOO_LARGE;
    const uint8_t *p = (const uint8_t *)h->ciphers.base;
    for (size_t i = 0; i + 1 < h->ciphers.len; i += 2) {
        uint16_t v = be16(p + i);
        if (is_grease(v))
            continue;
        if (nc == JA4_MAX_LIST)
            return SOTH_E_TOO_LARGE;
        ciphers[nc++] = v;
    }
    p = (const uint8_t *)h->exts.base;
    size_t n = h->exts.len;
    while (n >= 4) {
        uint16_t type = be16(p), len = be16(p + 2);
        if ((size_t)len + 4 > n)
            return SOTH_E_MALFORMED;
        const uint8_t *d = p + 4;
        p += 4 + len;
        n -= 4 + (size_t)len;
        if (is_grease(type))
            continue;
        n_ext_all++;
        if (type == EXT_SNI) {
            sni = true;
            continue;
        }
        if (type == EXT_ALPN) {
            /* list length, then the first protocol: length byte and name */
            if (len >= 3 && d[2] + 3u <= len) {
                alpn = d + 3;
                alpn_len = d[2];
            }
            continue;
        }
        if (ne == JA4_MAX_LIST)
            return SOTH_E_TOO_LARGE;
        exts[ne++] = type;
        if (type == EXT_SIGALGS && len >= 2) {
            size_t l = be16(d);
            for (size_t i = 2; i + 1 < len && i < 2 + l; i += 2) {
                uint16_t v = be16(d + i);
                if (!is_grease(v) && ns < JA4_MAX_LIST)
                    sigs[ns++] = v;
            }
        }
        if (type == EXT_VERSIONS && len >= 1) {
            uint16_t best = 0;
            for (size_t i = 1; i + 1 < len && i < 1u + d[0]; i += 2) {
                uint16_t v = be16(d + i);
                if (!is_grease(v) && v > best)
                    best = v;
            }
            if (best != 0)
                version = best;
        }
    }
    out[0] = quic ? 'q' : 't';
    version_chars(version, out + 1);
    out[3] = sni ? 'd' : 'i';
    count_chars(nc, out + 4);
    count_chars(n_ext_all, out + 6);
    alpn_chars(alpn, alpn_len, out + 8);
    out[10] = '_';
    sort16(ciphers, nc);
    sort16(exts, ne);
    if (hash12(ciphers, nc, NULL, 0, out + 11) < 0)
        return SOTH_E_TLS;
    out[23] = '_';
    if (hash12(exts, ne, sigs, ns, out + 24) < 0)
        return SOTH_E_TLS;
    out[SOTH_TLS_JA4_LEN] = '\0';
    return SOTH_TLS_JA4_LEN;
}

int soth_tls_ja4s_msg(const void *msg, size_t len, bool quic, char *out, size_t cap)
{
    const uint8_t *m = msg;
    uint16_t exts[JA4_MAX_LIST];
    size_t ne = 0, n_ext_all = 0;
    const uint8_t *alpn = NULL;
    size_t alpn_len = 0;

    if (cap < SOTH_TLS_JA4S_LEN + 1)
        return SOTH_E_TOO_LARGE;
    if (len < 4 || m[0] != 2)
        return SOTH_E_MALFORMED;
    size_t mlen = ((size_t)m[1] << 16) | ((size_t)m[2] << 8) | m[3];
    if (mlen + 4 > len)
        return SOTH_E_INCOMPLETE;
    const uint8_t *p = m + 4;
    size_t n = mlen;
    /* legacy_version, random, session id, cipher, compression */
    if (n < 2 + 32 + 1)
        return SOTH_E_MALFORMED;
    uint16_t version = be16(p);
    size_t sid = p[34];
    if (n < 35 + sid + 3)
        return SOTH_E_MALFORMED;
    uint16_t cipher = be16(p + 35 + sid);
    p += 35 + sid + 3;
    n -= 35 + sid + 3;
    if (n >= 2) {
        size_t el = be16(p);
        if (el + 2 != n)
            return SOTH_E_MALFORMED;
        p += 2;
        n -= 2;
    } else if (n != 0) {
        return SOTH_E_MALFORMED;
    }
    while (n > 0) {
        if (n < 4)
            return SOTH_E_MALFORMED;
        uint16_t type = be16(p), l = be16(p + 2);
        if ((size_t)l + 4 > n)
            return SOTH_E_MALFORMED;
        const uint8_t *d = p + 4;
        p += 4 + l;
        n -= 4 + (size_t)l;
        if (is_grease(type))
            continue;
        n_ext_all++;
        if (ne == JA4_MAX_LIST)
            return SOTH_E_TOO_LARGE;
        exts[ne++] = type;
        if (type == EXT_VERSIONS && l == 2)
            version = be16(d);
        if (type == EXT_ALPN && l >= 3 && d[2] + 3u <= l) {
            alpn = d + 3;
            alpn_len = d[2];
        }
    }
    out[0] = quic ? 'q' : 't';
    version_chars(version, out + 1);
    count_chars(n_ext_all, out + 3);
    alpn_chars(alpn, alpn_len, out + 5);
    out[7] = '_';
    for (int i = 0; i < 4; i++)
        out[8 + i] = HEXD[(cipher >> (12 - 4 * i)) & 15];
    out[12] = '_';
    if (hash12(exts, ne, NULL, 0, out + 13) < 0)
        return SOTH_E_TLS;
    out[SOTH_TLS_JA4S_LEN] = '\0';
    return SOTH_TLS_JA4S_LEN;
}

/* ---- the origin's ServerHello, collected as wolfSSL reads it (conn.c, upstream conns) */

/* RFC 8446 4.1.3: the ServerHello random that marks a HelloRetryRequest. */
static const uint8_t HRR_RANDOM[32] = {
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C};

void tls_ja4s_release(struct soth_tls_conn *c)
{
    if (c->sh != NULL)
        soth_buf_pool_put(&c->t->free_own, c->sh);
    c->sh = NULL;
    c->sh_len = 0;
}

void tls_ja4s_take(struct soth_tls_conn *c, const uint8_t *p, size_t n)
{
    while (n > 0 && !c->ja4s_done) {
        if (c->sh == NULL) {
            c->sh = soth_buf_pool_get(&c->t->free_own, TLS_SH_CAP);
            if (c->sh == NULL) {
                c->ja4s_done = true; /* no memory: no JA4S, the handshake goes on */
                return;
            }
        }
        size_t need = 4;
        if (c->sh_len >= 4)
            need = 4 + (((size_t)c->sh[1] << 16) | ((size_t)c->sh[2] << 8) | c->sh[3]);
        if (need > TLS_SH_CAP || (c->sh_len >= 1 && c->sh[0] != 2) ||
            (c->sh_len >= 4 && need < 4 + 2 + 32 + 1 + 3)) {
            c->ja4s_done = true; /* not a ServerHello we can hold: no fingerprint */
            break;
        }
        size_t take = need - c->sh_len;
        if (take > n)
            take = n;
        memcpy(c->sh + c->sh_len, p, take);
        c->sh_len += take;
        p += take;
        n -= take;
        if (c->sh_len < need || need == 4)
            continue; /* more to come, or the header just completed: its length next */
        if (memcmp(c->sh + 6, HRR_RANDOM, 32) == 0) {
            c->sh_len = 0; /* a HelloRetryRequest: the ServerHello comes later */
            continue;
        }
        if (soth_tls_ja4s_msg(c->sh, c->sh_len, false, c->ja4s, sizeof(c->ja4s)) < 0)
            c->ja4s[0] = '\0';
        c->ja4s_done = true;
    }
    if (c->ja4s_done)
        tls_ja4s_release(c);
}

struct soth_iov soth_tls_conn_ja4s(const struct soth_tls_conn *c)
{
    if (c->side != SOTH_LEG_UPSTREAM || c->ja4s[0] == '\0')
        return SOTH_IOV_NULL;
    return soth_iov(c->ja4s, SOTH_TLS_JA4S_LEN);
}
