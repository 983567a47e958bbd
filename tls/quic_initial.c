/*
 * QUIC client Initial reader (soth/quic.h, docs/http3.md): long header (RFC 9000 17.2),
 * Initial keys and protection (RFC 9001 5), the v2 differences (RFC 9369 3), CRYPTO
 * reassembly (RFC 9000 19.6), then the ClientHello through soth_tls_parse_client_hello_msg().
 */
#include "tls_int.h"

#include <wolfssl/wolfcrypt/hmac.h>

#include <string.h>

#include "soth/quic.h"

#define PN_MAX     (((int64_t)1 << 62) - 1)
#define TAG_LEN    16
#define SAMPLE     16
#define FT_PADDING 0x00
#define FT_PING    0x01
#define FT_ACK     0x02
#define FT_ACK_ECN 0x03
#define FT_CRYPTO  0x06
#define FT_CLOSE   0x1c /* CONNECTION_CLOSE of the transport; 0x1d is not allowed in Initial */

/* What differs between the versions (RFC 9001 5.2, RFC 9369 3.2-3.3). */
struct quic_version {
    uint32_t version;
    uint8_t salt[20];
    const char *key_label, *iv_label, *hp_label;
    uint8_t type_initial; /* long packet type bits of Initial */
    uint8_t type_retry;   /* and of Retry, which carries no Length field */
};

static const struct quic_version VERSIONS[] = {
    {SOTH_QUIC_V1,
     {0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
      0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a},
     "quic key",
     "quic iv",
     "quic hp",
     0,
     3},
    {SOTH_QUIC_V2,
     {0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
      0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9},
     "quicv2 key",
     "quicv2 iv",
     "quicv2 hp",
     1,
     0},
};

/* What read_packet() tells the datagram walk. */
enum {
    PKT_NEXT = 1, /* go on with the next coalesced packet */
    PKT_STOP,     /* the rest of the datagram is nothing to read */
    PKT_DONE,     /* the ClientHello is complete */
};

/* RFC 9000 16: variable-length integer. */
static bool rd_varint(struct rd *r, uint64_t *v)
{
    if (r->n < 1)
        return false;
    size_t k = (size_t)1 << (r->p[0] >> 6);
    if (r->n < k)
        return false;
    uint64_t x = r->p[0] & 0x3f;
    for (size_t i = 1; i < k; i++)
        x = (x << 8) | r->p[i];
    r->p += k;
    r->n -= k;
    *v = x;
    return true;
}

static const struct quic_version *version_find(uint32_t version)
{
    for (size_t i = 0; i < sizeof(VERSIONS) / sizeof(VERSIONS[0]); i++)
        if (VERSIONS[i].version == version)
            return &VERSIONS[i];
    return NULL;
}

/* HKDF-Expand-Label of TLS 1.3 (RFC 8446 7.1) with an empty context, SHA-256. */
static int expand_label(const uint8_t secret[32], const char *label, uint8_t *out, size_t out_len)
{
    uint8_t info[2 + 1 + 6 + 16 + 1];
    size_t label_len = strlen(label);
    size_t n = 0;

    if (label_len > 16)
        return SOTH_E_TLS;
    info[n++] = (uint8_t)(out_len >> 8);
    info[n++] = (uint8_t)out_len;
    info[n++] = (uint8_t)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, label_len);
    n += label_len;
    info[n++] = 0;
    if (wc_HKDF_Expand(WC_SHA256, secret, 32, info, (word32)n, out, (word32)out_len) != 0)
        return SOTH_E_TLS;
    return 0;
}

/* RFC 9001 5.2: the client's Initial key, IV and header protection key from the DCID. */
static int derive_keys(struct soth_quic_hello *q, const struct quic_version *v, const uint8_t *dcid,
                       size_t dcid_len)
{
    uint8_t initial[32], client[32];

    if (wc_HKDF_Extract(WC_SHA256, v->salt, sizeof(v->salt), dcid, (word32)dcid_len, initial) != 0)
        return SOTH_E_TLS;
    if (expand_label(initial, "client in", client, sizeof(client)) < 0 ||
        expand_label(client, v->key_label, q->key, sizeof(q->key)) < 0 ||
        expand_label(client, v->iv_label, q->iv, sizeof(q->iv)) < 0 ||
        expand_label(client, v->hp_label, q->hp, sizeof(q->hp)) < 0)
        return SOTH_E_TLS;
    memcpy(q->dcid, dcid, dcid_len);
    q->dcid_len = (uint8_t)dcid_len;
    return 0;
}

/*
 * RFC 9001 5.4.3: the header protection mask is AES-128-ECB of the sample. This wolfSSL build
 * has no WOLFSSL_AES_DIRECT (ci/setup.sh), and CBC over one block with a zero IV is exactly
 * that ECB block.
 */
static int hp_mask(const uint8_t hp[16], const uint8_t sample[SAMPLE], uint8_t mask[SAMPLE])
{
    static const uint8_t zero_iv[AES_BLOCK_SIZE];
    Aes aes;
    int rc;

    if (wc_AesInit(&aes, NULL, INVALID_DEVID) != 0)
        return SOTH_E_TLS;
    rc = wc_AesSetKey(&aes, hp, 16, zero_iv, AES_ENCRYPTION);
    if (rc == 0)
        rc = wc_AesCbcEncrypt(&aes, mask, sample, SAMPLE);
    wc_AesFree(&aes);
    return rc == 0 ? 0 : SOTH_E_TLS;
}

/* RFC 9000 A.3: the full packet number from its truncated encoding. */
static int64_t decode_pn(int64_t largest, uint64_t truncated, unsigned nbits)
{
    int64_t expected = largest + 1;
    int64_t win = (int64_t)1 << nbits;
    int64_t hwin = win / 2;
    int64_t cand = (expected & ~(win - 1)) | (int64_t)truncated;

    if (cand <= expected - hwin && cand < ((int64_t)1 << 62) - win)
        return cand + win;
    if (cand > expected + hwin && cand >= win)
        return cand - win;
    return cand;
}

/*
 * Remove header protection and open one Initial packet (p, len; the packet number at pn_off)
 * into out: the unprotected header, then the plaintext. Returns 0 with *hdr_len and
 * *plain_len, or SOTH_E_MALFORMED (does not open) / SOTH_E_TLS.
 */
static int open_packet(struct soth_quic_hello *q, const uint8_t *p, size_t pn_off, size_t len,
                       uint8_t *out, size_t *hdr_len, size_t *plain_len, int64_t *pn_out)
{
    uint8_t mask[SAMPLE], nonce[12];
    Aes aes;
    int rc;

    /* The sample starts 4 bytes after the packet number's start (RFC 9001 5.4.2). */
    rc = hp_mask(q->hp, p + pn_off + 4, mask);
    if (rc < 0)
        return rc;
    uint8_t b0 = p[0] ^ (mask[0] & 0x0f); /* long header: the low 4 bits are protected */
    size_t pn_len = (size_t)(b0 & 3) + 1;
    memcpy(out, p, pn_off + pn_len);
    out[0] = b0;
    uint64_t truncated = 0;
    for (size_t i = 0; i < pn_len; i++) {
        out[pn_off + i] ^= mask[1 + i];
        truncated = (truncated << 8) | out[pn_off + i];
    }
    int64_t pn = decode_pn(q->largest_pn, truncated, (unsigned)(8 * pn_len));
    if (pn > PN_MAX)
        return SOTH_E_MALFORMED;

    /* RFC 9001 5.3: nonce = IV XOR the packet number, left-padded to the IV's length. */
    memcpy(nonce, q->iv, sizeof(nonce));
    for (size_t i = 0; i < 8; i++)
        nonce[4 + i] ^= (uint8_t)((uint64_t)pn >> (56 - 8 * i));

    size_t h = pn_off + pn_len;
    size_t ct_len = len - h - TAG_LEN;
    if (wc_AesInit(&aes, NULL, INVALID_DEVID) != 0)
        return SOTH_E_TLS;
    rc = wc_AesGcmSetKey(&aes, q->key, sizeof(q->key));
    if (rc == 0)
        rc = wc_AesGcmDecrypt(&aes, out + h, p + h, (word32)ct_len, nonce, sizeof(nonce),
                              p + h + ct_len, TAG_LEN, out, (word32)h);
    wc_AesFree(&aes);
    if (rc != 0)
        return SOTH_E_MALFORMED;
    /* Reserved bits set in a packet that opened: PROTOCOL_VIOLATION (RFC 9000 17.2). */
    if ((b0 & 0x0c) != 0)
        return SOTH_E_MALFORMED;
    *hdr_len = h;
    *plain_len = ct_len;
    *pn_out = pn;
    return 0;
}

/*
 * Store CRYPTO bytes [off, off + len) of the stream: what lies past SOTH_QUIC_HELLO_MAX is
 * dropped (the hello's length, once known, decides whether it mattered). Bytes that arrived
 * before must arrive again unchanged (RFC 9000 2.2): a peer that sends different bytes for the
 * same offset could show the proxy one name and the server another.
 */
static int crypto_store(struct soth_quic_hello *q, uint64_t off, const uint8_t *data, size_t len)
{
    if (off >= SOTH_QUIC_HELLO_MAX)
        return 0;
    size_t end = (size_t)off + len;
    if (end > SOTH_QUIC_HELLO_MAX)
        end = SOTH_QUIC_HELLO_MAX;
    for (size_t i = (size_t)off; i < end; i++) {
        uint8_t bit = (uint8_t)(1u << (i & 7));
        uint8_t byte = data[i - (size_t)off];
        if (q->have[i >> 3] & bit) {
            if (q->buf[i] != byte)
                return SOTH_E_MALFORMED;
            continue;
        }
        q->have[i >> 3] |= bit;
        q->buf[i] = byte;
    }
    while (q->contig < SOTH_QUIC_HELLO_MAX && (q->have[q->contig >> 3] & (1u << (q->contig & 7))))
        q->contig++;
    return 0;
}

/* RFC 9000 12.4: the frames an Initial packet may carry; anything else is malformed. */
static int read_frames(struct soth_quic_hello *q, const uint8_t *f, size_t n, bool *crypto)
{
    struct rd r = {f, n};

    if (n == 0)
        return SOTH_E_MALFORMED; /* a packet without frames (RFC 9000 12.4) */
    while (r.n > 0) {
        uint8_t type;
        uint64_t a, b, c, count;
        rd_u8(&r, &type);
        /*
         * Every type allowed here is below 64: a longer encoding is either another type or
         * not the shortest one (RFC 9000 12.4 lets a receiver refuse that).
         */
        switch (type) {
        case FT_PADDING:
            while (r.n > 0 && r.p[0] == 0)
                rd_skip(&r, 1);
            break;
        case FT_PING:
            break;
        case FT_ACK:
        case FT_ACK_ECN: /* RFC 9000 19.3 */
            if (!rd_varint(&r, &a) || !rd_varint(&r, &b) || !rd_varint(&r, &count) ||
                !rd_varint(&r, &c))
                return SOTH_E_MALFORMED;
            for (uint64_t i = 0; i < count; i++)
                if (!rd_varint(&r, &a) || !rd_varint(&r, &b))
                    return SOTH_E_MALFORMED;
            if (type == FT_ACK_ECN &&
                (!rd_varint(&r, &a) || !rd_varint(&r, &b) || !rd_varint(&r, &c)))
                return SOTH_E_MALFORMED;
            break;
        case FT_CRYPTO: { /* RFC 9000 19.6 */
            const uint8_t *data;
            if (!rd_varint(&r, &a) || !rd_varint(&r, &b) || b > r.n)
                return SOTH_E_MALFORMED;
            if (a + b > (uint64_t)PN_MAX) /* the stream's end stays below 2^62 */
                return SOTH_E_MALFORMED;
            data = r.p;
            rd_skip(&r, b);
            int rc = crypto_store(q, a, data, (size_t)b);
            if (rc < 0)
                return rc;
            *crypto = true;
            break;
        }
        case FT_CLOSE: /* RFC 9000 19.19 */
            if (!rd_varint(&r, &a) || !rd_varint(&r, &b) || !rd_varint(&r, &c) || !rd_skip(&r, c))
                return SOTH_E_MALFORMED;
            break;
        default:
            return SOTH_E_MALFORMED;
        }
    }
    return 0;
}

/* After a packet's frames: is the ClientHello complete? PKT_DONE, 0 (not yet) or an error. */
static int hello_check(struct soth_quic_hello *q)
{
    if (q->contig >= 1 && q->buf[0] != 1)
        return SOTH_E_MALFORMED; /* the client's first handshake message is its ClientHello */
    if (q->need == 0 && q->contig >= 4) {
        size_t mlen = ((size_t)q->buf[1] << 16) | ((size_t)q->buf[2] << 8) | q->buf[3];
        if (mlen + 4 > SOTH_QUIC_HELLO_MAX)
            return SOTH_E_TOO_LARGE;
        q->need = (uint32_t)(mlen + 4);
    }
    if (q->need == 0 || q->contig < q->need)
        return 0;
    struct soth_tls_client_hello ch;
    memset(&ch, 0, sizeof(ch));
    ssize_t r = soth_tls_parse_client_hello_msg(q->buf, q->need, &ch);
    if (r < 0)
        return r == SOTH_E_TOO_LARGE ? SOTH_E_TOO_LARGE : SOTH_E_MALFORMED;
    q->ch = ch;
    return PKT_DONE;
}

/* A long header (RFC 9000 17.2) of v1 or v2 at the start of a packet. */
struct long_hdr {
    const struct quic_version *v;
    unsigned type; /* long packet type bits (their meaning depends on the version) */
    const uint8_t *dcid;
    uint8_t dcid_len;
    size_t pn_off; /* where the (protected) packet number starts */
    size_t len;    /* the whole packet: pn_off + Length */
};

enum {
    HDR_OK = 0,
    HDR_OTHER, /* no long header of v1 or v2 */
    HDR_RETRY, /* a Retry: no Length field to find its end */
    HDR_BAD,   /* v1 or v2, but the lengths do not fit in the bytes (h->v and h->type are set) */
};

static int parse_long_header(const uint8_t *p, size_t n, struct long_hdr *h)
{
    if (n < 5 || (p[0] & 0x80) == 0)
        return HDR_OTHER;
    uint32_t version =
        ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
    h->v = version_find(version);
    if (h->v == NULL)
        return HDR_OTHER;
    h->type = (p[0] >> 4) & 3;
    if (h->type == h->v->type_retry)
        return HDR_RETRY;

    struct rd r = {p + 5, n - 5};
    uint8_t scid_len;
    uint64_t token_len = 0, length;
    if (!rd_u8(&r, &h->dcid_len) || h->dcid_len > SOTH_QUIC_CID_MAX)
        return HDR_BAD;
    h->dcid = r.p;
    if (!rd_skip(&r, h->dcid_len) || !rd_u8(&r, &scid_len) || scid_len > SOTH_QUIC_CID_MAX ||
        !rd_skip(&r, scid_len))
        return HDR_BAD;
    /* Only Initial packets carry a token (RFC 9000 17.2.2). */
    if (h->type == h->v->type_initial && (!rd_varint(&r, &token_len) || !rd_skip(&r, token_len)))
        return HDR_BAD;
    if (!rd_varint(&r, &length) || length > r.n)
        return HDR_BAD;
    h->pn_off = (size_t)(r.p - p);
    h->len = h->pn_off + (size_t)length;
    return HDR_OK;
}

bool soth_quic_is_initial(const void *dgram, size_t len)
{
    struct long_hdr h;
    return parse_long_header(dgram, len, &h) == HDR_OK && h.type == h.v->type_initial &&
           h.len - h.pn_off >= 4 + SAMPLE;
}

/*
 * One packet at the start of p (n bytes). *used: its length when PKT_NEXT is returned.
 * Before the first Initial opened (!q->keyed) anything unexpected is final; after it, packets
 * that cannot be read are dropped as a QUIC endpoint drops them (RFC 9000 12.2, RFC 9001 5.5).
 */
static int read_packet(struct soth_quic_hello *q, const uint8_t *p, size_t n, size_t *used)
{
    bool first = !q->keyed;
    uint8_t pkt[SOTH_QUIC_PACKET_MAX];
    struct long_hdr h;

    int hr = parse_long_header(p, n, &h);
    if (first) {
        if (hr == HDR_OTHER || hr == HDR_RETRY || h.type != h.v->type_initial)
            return SOTH_QUIC_E_NOT_INITIAL;
        if (hr == HDR_BAD)
            return SOTH_E_MALFORMED;
    } else {
        if (hr != HDR_OK || h.v->version != q->version)
            return PKT_STOP; /* a Retry (never sent by a client), another version, padding */
        if (h.type != h.v->type_initial) {
            *used = h.len;
            return PKT_NEXT; /* 0-RTT or Handshake: never opened, skipped by its Length */
        }
    }
    const struct quic_version *v = h.v;
    size_t pn_off = h.pn_off;
    uint64_t length = h.len - h.pn_off;
    *used = h.len;

    /* Long enough for the header protection sample (RFC 9001 5.4.2) and the tag. */
    if (length < 4 + SAMPLE)
        return first ? SOTH_E_MALFORMED : PKT_NEXT;
    if (*used > sizeof(pkt))
        return SOTH_E_TOO_LARGE;
    if (first) {
        int rc = derive_keys(q, v, h.dcid, h.dcid_len);
        if (rc < 0)
            return rc;
        q->version = v->version;
    }
    size_t hdr_len, plain_len;
    int64_t pn;
    int rc = open_packet(q, p, pn_off, *used, pkt, &hdr_len, &plain_len, &pn);
    if (rc < 0)
        return first || rc != SOTH_E_MALFORMED ? rc : PKT_NEXT;
    q->keyed = true;
    if (pn > q->largest_pn)
        q->largest_pn = pn;
    bool crypto = false;
    rc = read_frames(q, pkt + hdr_len, plain_len, &crypto);
    if (rc < 0)
        return rc;
    if (crypto)
        q->initial_packets++;
    rc = hello_check(q);
    if (rc != 0)
        return rc;
    return PKT_NEXT;
}

void soth_quic_hello_init(struct soth_quic_hello *q)
{
    /* The bitmap and counters must start clear; buf is written before it is read. */
    memset(q->have, 0, sizeof(q->have));
    q->contig = 0;
    q->need = 0;
    q->largest_pn = -1;
    q->rc = SOTH_E_INCOMPLETE;
    q->keyed = false;
    q->dcid_len = 0;
    q->version = 0;
    q->initial_packets = 0;
    memset(&q->ch, 0, sizeof(q->ch));
}

int soth_quic_hello_feed(struct soth_quic_hello *q, const void *dgram, size_t len)
{
    const uint8_t *d = dgram;
    size_t off = 0;

    if (q->rc != SOTH_E_INCOMPLETE)
        return q->rc;
    while (off < len) {
        size_t used = 0;
        int rc = read_packet(q, d + off, len - off, &used);
        if (rc == PKT_DONE) {
            q->rc = SOTH_QUIC_DONE;
            return q->rc;
        }
        if (rc < 0) {
            q->rc = rc;
            return rc;
        }
        if (rc == PKT_STOP)
            break;
        off += used;
    }
    if (!q->keyed) {
        q->rc = SOTH_QUIC_E_NOT_INITIAL; /* an empty first datagram */
        return q->rc;
    }
    return SOTH_E_INCOMPLETE;
}
