/*
 * QUIC client Initial reader (soth/quic.h). The input is a list of records, each a 2-byte
 * big-endian header and its bytes:
 *  - header < 0x8000: a datagram of that many bytes, fed as is (the corpus files captured by
 *    tests/tls/capture_quic_initial.py and the RFC 9001 / 9369 client Initials have this form);
 *  - header >= 0x8000: (header & 0x7fff) bytes = one flags byte and plaintext frames, which the
 *    target seals into a real Initial with the keys of the RFC DCID 8394c8f03e515708, so the
 *    fuzzer reaches the frames, the reassembly and the ClientHello behind the AEAD. Flags:
 *    bit 0 QUIC v2, bits 1-2 packet number length - 1, bit 3 coalesce into the previous
 *    datagram, bits 4-7 added to the packet number.
 * Checks beyond "no crash": every result is a documented one; a result other than
 * SOTH_E_INCOMPLETE is final (fed again, it comes back unchanged); soth_quic_is_initial() says
 * "no" only to first datagrams the reader refuses (SOTH_QUIC_E_NOT_INITIAL or SOTH_E_MALFORMED)
 * and "yes" never to one it calls SOTH_QUIC_E_NOT_INITIAL; after SOTH_QUIC_DONE the
 * version is v1 or v2, at least one Initial was counted, and the SNI and ALPN iovs lie inside
 * the hello in q->buf.
 */
#include <wolfssl/options.h>

#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/hmac.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/quic.h"

static const uint8_t DCID[8] = {0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08};

struct keys {
    uint8_t key[16], iv[12], hp[16];
};

static void expand(const uint8_t *secret, const char *label, uint8_t *out, size_t len)
{
    uint8_t info[64];
    size_t ll = strlen(label), n = 0;
    info[n++] = 0;
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0;
    if (wc_HKDF_Expand(WC_SHA256, secret, 32, info, (word32)n, out, (word32)len) != 0)
        abort();
}

static void derive(bool v2, struct keys *k)
{
    static const uint8_t salt_v1[20] = {0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
                                        0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a};
    static const uint8_t salt_v2[20] = {0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
                                        0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9};
    uint8_t prk[32], client[32];
    if (wc_HKDF_Extract(WC_SHA256, v2 ? salt_v2 : salt_v1, 20, DCID, sizeof(DCID), prk) != 0)
        abort();
    expand(prk, "client in", client, 32);
    expand(client, v2 ? "quicv2 key" : "quic key", k->key, 16);
    expand(client, v2 ? "quicv2 iv" : "quic iv", k->iv, 12);
    expand(client, v2 ? "quicv2 hp" : "quic hp", k->hp, 16);
}

/* One Initial carrying frames (padded to the 20 bytes header protection samples) into out. */
static size_t seal(bool v2, size_t pn_len, uint64_t pn, const uint8_t *frames, size_t flen,
                   uint8_t *out)
{
    static struct keys keys[2];
    static bool have[2];
    if (!have[v2]) {
        derive(v2, &keys[v2]);
        have[v2] = true;
    }
    const struct keys *k = &keys[v2];
    static uint8_t pt[SOTH_QUIC_PACKET_MAX];
    size_t plain = flen < 4 ? 4 : flen, n = 0;
    memset(pt, 0, plain);
    memcpy(pt, frames, flen);
    out[n++] = (uint8_t)(0xc0 | (v2 ? 0x10 : 0) | (pn_len - 1));
    memcpy(out + n, v2 ? "\x6b\x33\x43\xcf" : "\x00\x00\x00\x01", 4);
    n += 4;
    out[n++] = sizeof(DCID);
    memcpy(out + n, DCID, sizeof(DCID));
    n += sizeof(DCID);
    out[n++] = 0; /* SCID */
    out[n++] = 0; /* token */
    size_t length = pn_len + plain + 16;
    out[n++] = (uint8_t)(0x40 | (length >> 8));
    out[n++] = (uint8_t)length;
    size_t pn_off = n;
    for (size_t i = 0; i < pn_len; i++)
        out[n++] = (uint8_t)(pn >> (8 * (pn_len - 1 - i)));
    uint8_t nonce[12], mask[16], zero[16] = {0};
    memcpy(nonce, k->iv, 12);
    for (size_t i = 0; i < 8; i++)
        nonce[4 + i] ^= (uint8_t)(pn >> (56 - 8 * i));
    Aes aes;
    if (wc_AesInit(&aes, NULL, INVALID_DEVID) != 0 || wc_AesGcmSetKey(&aes, k->key, 16) != 0 ||
        wc_AesGcmEncrypt(&aes, out + n, pt, (word32)plain, nonce, 12, out + n + plain, 16, out,
                         (word32)n) != 0)
        abort();
    wc_AesFree(&aes);
    n += plain + 16;
    if (wc_AesInit(&aes, NULL, INVALID_DEVID) != 0 ||
        wc_AesSetKey(&aes, k->hp, 16, zero, AES_ENCRYPTION) != 0 ||
        wc_AesCbcEncrypt(&aes, mask, out + pn_off + 4, 16) != 0)
        abort();
    wc_AesFree(&aes);
    out[0] ^= mask[0] & 0x0f;
    for (size_t i = 0; i < pn_len; i++)
        out[pn_off + i] ^= mask[1 + i];
    return n;
}

static void check_iov(struct soth_iov v, const struct soth_quic_hello *q)
{
    const char *b = (const char *)q->buf;
    if (v.len == 0)
        return;
    if (v.base < b || v.base + v.len > b + q->ch.hello_len)
        abort();
}

static int feed(struct soth_quic_hello *q, const uint8_t *d, size_t len, int prev)
{
    int rc = soth_quic_hello_feed(q, d, len);
    if (rc != SOTH_QUIC_DONE && rc != SOTH_E_INCOMPLETE && rc != SOTH_QUIC_E_NOT_INITIAL &&
        rc != SOTH_E_MALFORMED && rc != SOTH_E_TOO_LARGE)
        abort();
    if (prev != SOTH_E_INCOMPLETE && rc != prev)
        abort(); /* results other than INCOMPLETE are final */
    if (rc == SOTH_QUIC_DONE) {
        if (q->version != SOTH_QUIC_V1 && q->version != SOTH_QUIC_V2)
            abort();
        if (q->initial_packets == 0 || q->ch.hello_len > SOTH_QUIC_HELLO_MAX ||
            q->ch.n_alpn > SOTH_TLS_MAX_ALPN)
            abort();
        check_iov(q->ch.sni, q);
        for (size_t i = 0; i < q->ch.n_alpn; i++)
            check_iov(q->ch.alpn[i], q);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct soth_quic_hello q;
    static uint8_t dgram[4 * SOTH_QUIC_PACKET_MAX];
    size_t dlen = 0; /* sealed packets waiting to be fed as one datagram */
    uint64_t pn = 0;
    int rc = SOTH_E_INCOMPLETE;

    soth_quic_hello_init(&q);
    size_t off = 0;
    while (off + 2 <= size) {
        size_t hdr = ((size_t)data[off] << 8) | data[off + 1];
        size_t len = hdr & 0x7fff;
        off += 2;
        if (len > size - off)
            len = size - off;
        const uint8_t *rec = data + off;
        off += len;
        if (hdr < 0x8000) {
            if (dlen > 0)
                rc = feed(&q, dgram, dlen, rc);
            dlen = 0;
            uint8_t *copy = malloc(len + 1); /* exact size: ASan sees any overread */
            memcpy(copy, rec, len);
            bool first = rc == SOTH_E_INCOMPLETE && !q.keyed;
            bool shape = soth_quic_is_initial(copy, len);
            rc = feed(&q, copy, len, rc);
            free(copy);
            /* the pre-check agrees with the reader on a first datagram */
            if (first && shape && rc == SOTH_QUIC_E_NOT_INITIAL)
                abort();
            if (first && !shape && rc != SOTH_QUIC_E_NOT_INITIAL && rc != SOTH_E_MALFORMED)
                abort();
            continue;
        }
        if (len == 0 || len - 1 > SOTH_QUIC_PACKET_MAX - 64)
            continue;
        uint8_t flags = rec[0];
        pn += 1 + (flags >> 4);
        if (!(flags & 8) && dlen > 0) {
            rc = feed(&q, dgram, dlen, rc);
            dlen = 0;
        }
        if (dlen + SOTH_QUIC_PACKET_MAX > sizeof(dgram)) {
            rc = feed(&q, dgram, dlen, rc);
            dlen = 0;
        }
        dlen += seal(flags & 1, (size_t)((flags >> 1) & 3) + 1, pn, rec + 1, len - 1, dgram + dlen);
    }
    if (dlen > 0)
        feed(&q, dgram, dlen, rc);
    return 0;
}
