/*
 * QUIC client Initial reader (soth/quic.h) over the published vectors of RFC 9001 Appendix A
 * (v1) and RFC 9369 Appendix A (v2), real first flights of ngtcp2's client (captured by
 * tests/tls/capture_quic_initial.py into fuzz/corpus/quic_initial), and Initial packets built
 * here. The builder (seal) is checked first: it must reproduce both RFC packets byte for byte,
 * so the crafted cases are real Initials and not a mirror of the reader's own mistakes.
 */
#include <wolfssl/options.h>

#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/hmac.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/quic.h"

/* ---- vectors */

static const uint8_t RFC_DCID[8] = {0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08};

/* RFC 9001 A.2 / RFC 9369 A.2: the CRYPTO frame of the client Initial (padded to 1162). */
static const char RFC_CRYPTO_HEX[] =
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff";

struct keys {
    uint8_t key[16], iv[12], hp[16];
};

/* RFC 9001 A.1 and RFC 9369 A.1: client Initial key, IV, hp. */
static const char *const RFC_KEYS_V1[3] = {"1f369613dd76d5467730efcbe3b1a22d",
                                           "fa044b2f42a3fd3b46fb255c",
                                           "9f50449e04a0e810283a1e9933adedd2"};
static const char *const RFC_KEYS_V2[3] = {"8b1a0bc121284290a29e0971b5cd045d",
                                           "91f73e2351d8fa91660e909f",
                                           "45b95e15235d6f45a6b19cbcb0294ba9"};

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* A corpus file: datagrams, each a 2-byte big-endian length and its bytes. */
struct flight {
    size_t n;
    uint8_t d[4][1500];
    size_t len[4];
};

static struct flight load(const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "fuzz/corpus/quic_initial/%s.bin", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static uint8_t raw[65536];
    size_t n = fread(raw, 1, sizeof(raw), f);
    fclose(f);
    struct flight fl = {0};
    size_t off = 0;
    while (off + 2 <= n && fl.n < 4) {
        size_t len = ((size_t)raw[off] << 8) | raw[off + 1];
        cr_assert_leq(off + 2 + len, n, "%s", path);
        cr_assert_leq(len, sizeof(fl.d[0]), "%s", path);
        memcpy(fl.d[fl.n], raw + off + 2, len);
        fl.len[fl.n++] = len;
        off += 2 + len;
    }
    cr_assert_gt(fl.n, 0);
    return fl;
}

/* ---- an Initial packet builder, independent of the reader */

static void derive(uint32_t version, const uint8_t *dcid, size_t dcid_len, struct keys *k)
{
    static const uint8_t salt_v1[20] = {0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
                                        0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a};
    static const uint8_t salt_v2[20] = {0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
                                        0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9};
    const char *pfx = version == SOTH_QUIC_V2 ? "quicv2 " : "quic ";
    uint8_t prk[32], client[32];
    cr_assert_eq(wc_HKDF_Extract(WC_SHA256, version == SOTH_QUIC_V2 ? salt_v2 : salt_v1, 20, dcid,
                                 (word32)dcid_len, prk),
                 0);
    struct {
        const char *label;
        uint8_t *out;
        size_t len;
        const uint8_t *secret;
    } steps[] = {{"client in", client, 32, prk},
                 {"key", k->key, 16, client},
                 {"iv", k->iv, 12, client},
                 {"hp", k->hp, 16, client}};
    for (size_t s = 0; s < 4; s++) {
        char label[40];
        snprintf(label, sizeof(label), "tls13 %s%s", s == 0 ? "" : pfx, steps[s].label);
        uint8_t info[64];
        size_t ll = strlen(label), n = 0;
        info[n++] = 0;
        info[n++] = (uint8_t)steps[s].len;
        info[n++] = (uint8_t)ll;
        memcpy(info + n, label, ll);
        n += ll;
        info[n++] = 0;
        cr_assert_eq(wc_HKDF_Expand(WC_SHA256, steps[s].secret, 32, info, (word32)n, steps[s].out,
                                    (word32)steps[s].len),
                     0);
    }
}

struct seal_opts {
    uint32_t version;
    const uint8_t *dcid; /* what the header carries */
    size_t dcid_len;
    uint64_t pn;
    size_t pn_len;
    size_t pad_to;    /* whole packet size, PADDING frames appended; 0 = none */
    uint8_t b0_extra; /* bits or'ed into the first byte before protection (reserved bits) */
    int long_type;    /* -1 = Initial of the version */
};

/* One protected Initial packet carrying frames (flen bytes) into out; returns its length. */
static size_t seal(const struct keys *k, const struct seal_opts *o, const uint8_t *frames,
                   size_t flen, uint8_t *out)
{
    size_t n = 0;
    int type = o->long_type >= 0 ? o->long_type : o->version == SOTH_QUIC_V2 ? 1 : 0;
    out[n++] = (uint8_t)(0xc0 | (type << 4) | (o->pn_len - 1) | o->b0_extra);
    out[n++] = (uint8_t)(o->version >> 24);
    out[n++] = (uint8_t)(o->version >> 16);
    out[n++] = (uint8_t)(o->version >> 8);
    out[n++] = (uint8_t)o->version;
    out[n++] = (uint8_t)o->dcid_len;
    memcpy(out + n, o->dcid, o->dcid_len);
    n += o->dcid_len;
    out[n++] = 0; /* SCID length */
    if (o->long_type < 0)
        out[n++] = 0; /* token length: Initial packets only */
    size_t plain = flen;
    size_t fixed = n + 2 + o->pn_len + 16;
    if (o->pad_to > fixed + plain)
        plain = o->pad_to - fixed;
    size_t length = o->pn_len + plain + 16;
    out[n++] = (uint8_t)(0x40 | (length >> 8));
    out[n++] = (uint8_t)length;
    size_t pn_off = n;
    for (size_t i = 0; i < o->pn_len; i++)
        out[n++] = (uint8_t)(o->pn >> (8 * (o->pn_len - 1 - i)));
    uint8_t *pt = calloc(1, plain + 1);
    memcpy(pt, frames, flen);
    uint8_t nonce[12];
    memcpy(nonce, k->iv, 12);
    for (size_t i = 0; i < 8; i++)
        nonce[4 + i] ^= (uint8_t)(o->pn >> (56 - 8 * i));
    Aes aes;
    cr_assert_eq(wc_AesInit(&aes, NULL, INVALID_DEVID), 0);
    cr_assert_eq(wc_AesGcmSetKey(&aes, k->key, 16), 0);
    cr_assert_eq(wc_AesGcmEncrypt(&aes, out + n, pt, (word32)plain, nonce, 12, out + n + plain, 16,
                                  out, (word32)n),
                 0);
    wc_AesFree(&aes);
    free(pt);
    n += plain + 16;
    /* header protection: one AES-ECB block, as CBC with a zero IV */
    uint8_t mask[16], zero[16] = {0};
    cr_assert_eq(wc_AesInit(&aes, NULL, INVALID_DEVID), 0);
    cr_assert_eq(wc_AesSetKey(&aes, k->hp, 16, zero, AES_ENCRYPTION), 0);
    cr_assert_eq(wc_AesCbcEncrypt(&aes, mask, out + pn_off + 4, 16), 0);
    wc_AesFree(&aes);
    out[0] ^= mask[0] & 0x0f;
    for (size_t i = 0; i < o->pn_len; i++)
        out[pn_off + i] ^= mask[1 + i];
    return n;
}

/* The hello of the RFC vectors (the CRYPTO frame's data). */
static uint8_t hello[241];

static void rfc_hello(void)
{
    uint8_t frame[245];
    cr_assert_eq(unhex(RFC_CRYPTO_HEX, frame), 245);
    memcpy(hello, frame + 4, sizeof(hello));
}

/* A CRYPTO frame for hello[off, off + len) (2-byte varints) into out; returns its length. */
static size_t crypto_frame(size_t off, size_t len, uint8_t *out)
{
    out[0] = 0x06;
    out[1] = (uint8_t)(0x40 | (off >> 8));
    out[2] = (uint8_t)off;
    out[3] = (uint8_t)(0x40 | (len >> 8));
    out[4] = (uint8_t)len;
    memcpy(out + 5, hello + off, len);
    return 5 + len;
}

static struct seal_opts v1_opts(uint64_t pn)
{
    return (struct seal_opts){SOTH_QUIC_V1, RFC_DCID, 8, pn, 2, 0, 0, -1};
}

static bool iov_is(struct soth_iov v, const char *s)
{
    return v.len == strlen(s) && memcmp(v.base, s, v.len) == 0;
}

static void expect_rfc_hello(const struct soth_quic_hello *q)
{
    cr_assert(q->ch.has_sni);
    cr_assert(iov_is(q->ch.sni, "example.com"), "%.*s", (int)q->ch.sni.len, q->ch.sni.base);
    cr_assert_eq(q->ch.n_alpn, 1);
    cr_assert(iov_is(q->ch.alpn[0], "alpn"));
    cr_assert_eq(q->ch.max_version, 0x0304);
    cr_assert_eq(q->ch.hello_len, 241);
}

static void expect_keys(const struct soth_quic_hello *q, const char *const want[3])
{
    uint8_t k[16], iv[12], hp[16];
    unhex(want[0], k);
    unhex(want[1], iv);
    unhex(want[2], hp);
    cr_assert_arr_eq(q->key, k, 16);
    cr_assert_arr_eq(q->iv, iv, 12);
    cr_assert_arr_eq(q->hp, hp, 16);
}

/* ---- the published vectors */

Test(quic_initial, rfc9001_client_initial)
{
    struct flight f = load("rfc9001_a2_client_initial");
    cr_assert_eq(f.len[0], 1200);
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[0], f.len[0]), SOTH_QUIC_DONE);
    expect_keys(&q, RFC_KEYS_V1);
    cr_assert_eq(q.version, SOTH_QUIC_V1);
    cr_assert_eq(q.initial_packets, 1);
    cr_assert_eq(q.largest_pn, 2);
    expect_rfc_hello(&q);
}

Test(quic_initial, rfc9369_client_initial)
{
    struct flight f = load("rfc9369_a2_client_initial");
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[0], f.len[0]), SOTH_QUIC_DONE);
    expect_keys(&q, RFC_KEYS_V2);
    cr_assert_eq(q.version, SOTH_QUIC_V2);
    cr_assert_eq(q.initial_packets, 1);
    expect_rfc_hello(&q);
}

/* The builder reproduces both RFC packets exactly: what it seals below is a real Initial. */
Test(quic_initial, builder_matches_rfc_packets)
{
    uint8_t frame[245], out[1300];
    unhex(RFC_CRYPTO_HEX, frame);
    const char *files[2] = {"rfc9001_a2_client_initial", "rfc9369_a2_client_initial"};
    uint32_t versions[2] = {SOTH_QUIC_V1, SOTH_QUIC_V2};
    for (int v = 0; v < 2; v++) {
        struct keys k;
        derive(versions[v], RFC_DCID, 8, &k);
        struct seal_opts o = {versions[v], RFC_DCID, 8, 2, 4, 1200, 0, -1};
        size_t n = seal(&k, &o, frame, sizeof(frame), out);
        struct flight f = load(files[v]);
        cr_assert_eq(n, f.len[0]);
        cr_assert_arr_eq(out, f.d[0], n, "%s", files[v]);
    }
}

/* A datagram cut anywhere: the first one is refused, never read past its end. */
Test(quic_initial, truncated_first_datagram)
{
    struct flight f = load("rfc9001_a2_client_initial");
    for (size_t len = 0; len < f.len[0]; len++) {
        uint8_t *copy = malloc(len + 1); /* exact size: ASan sees any overread */
        memcpy(copy, f.d[0], len);
        struct soth_quic_hello q;
        soth_quic_hello_init(&q);
        int rc = soth_quic_hello_feed(&q, copy, len);
        int want = len < 5 ? SOTH_QUIC_E_NOT_INITIAL : SOTH_E_MALFORMED;
        cr_assert_eq(rc, want, "len %zu: %d", len, rc);
        free(copy);
    }
}

Test(quic_initial, wrong_version_and_type)
{
    struct flight f = load("rfc9001_a2_client_initial");
    struct soth_quic_hello q;
    uint8_t d[1200];

    /* other versions: Version Negotiation (0), a draft, a GREASE version */
    uint32_t others[] = {0, 0xff00001d, 0x1a2a3a4a, 0x709a50c4};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        memcpy(d, f.d[0], 1200);
        d[1] = (uint8_t)(others[i] >> 24);
        d[2] = (uint8_t)(others[i] >> 16);
        d[3] = (uint8_t)(others[i] >> 8);
        d[4] = (uint8_t)others[i];
        soth_quic_hello_init(&q);
        cr_assert_eq(soth_quic_hello_feed(&q, d, 1200), SOTH_QUIC_E_NOT_INITIAL);
    }
    /* v1 packet types 0-RTT, Handshake, Retry first */
    for (int t = 1; t < 4; t++) {
        memcpy(d, f.d[0], 1200);
        d[0] = (uint8_t)((d[0] & 0xcf) | (t << 4));
        soth_quic_hello_init(&q);
        cr_assert_eq(soth_quic_hello_feed(&q, d, 1200), SOTH_QUIC_E_NOT_INITIAL);
    }
    /* the v1 packet labelled v2: v2's Initial type is 1, so type 0 is a Retry there */
    memcpy(d, f.d[0], 1200);
    d[1] = 0x6b, d[2] = 0x33, d[3] = 0x43, d[4] = 0xcf;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, d, 1200), SOTH_QUIC_E_NOT_INITIAL);
    /* ... and with v2's Initial type bits, v2 keys do not open it */
    d[0] = (uint8_t)((d[0] & 0xcf) | 0x10);
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, d, 1200), SOTH_E_MALFORMED);
    /* short header first */
    memcpy(d, f.d[0], 1200);
    d[0] = 0x43;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, d, 1200), SOTH_QUIC_E_NOT_INITIAL);
    /* the result is final */
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[0], 1200), SOTH_QUIC_E_NOT_INITIAL);
}

Test(quic_initial, garbage)
{
    uint8_t d[1500];
    uint32_t x = 12345;
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)round % sizeof(d);
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            d[i] = (uint8_t)(x >> 16);
        }
        if (round % 2 && len > 5) { /* half of them look like v1 Initials */
            d[0] = (uint8_t)(0xc0 | (d[0] & 0x0f));
            d[1] = d[2] = d[3] = 0;
            d[4] = 1;
        }
        struct soth_quic_hello q;
        soth_quic_hello_init(&q);
        int rc = soth_quic_hello_feed(&q, d, len);
        cr_assert(rc == SOTH_QUIC_E_NOT_INITIAL || rc == SOTH_E_MALFORMED, "round %d: %d", round,
                  rc);
        if (len == 0 || (d[0] & 0x80) == 0)
            cr_assert_eq(rc, SOTH_QUIC_E_NOT_INITIAL);
    }
}

Test(quic_initial, corrupted_packet)
{
    struct flight f = load("rfc9001_a2_client_initial");
    uint8_t d[1200];
    size_t spots[] = {0, 5, 17, 18, 30, 600, 1199}; /* first byte, DCID, length, pn, payload, tag */
    for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
        memcpy(d, f.d[0], 1200);
        d[spots[i]] ^= 0x01;
        struct soth_quic_hello q;
        soth_quic_hello_init(&q);
        cr_assert_eq(soth_quic_hello_feed(&q, d, 1200), SOTH_E_MALFORMED, "byte %zu", spots[i]);
    }
}

/* ---- real clients */

Test(quic_initial, ngtcp2_one_datagram)
{
    struct flight f = load("ngtcp2_h3");
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[0], f.len[0]), SOTH_QUIC_DONE);
    cr_assert_eq(q.version, SOTH_QUIC_V1);
    cr_assert_eq(q.initial_packets, 1);
    cr_assert(iov_is(q.ch.sni, "quic.example.net"));
    cr_assert_eq(q.ch.n_alpn, 1);
    cr_assert(iov_is(q.ch.alpn[0], "h3"));
    cr_assert_eq(q.ch.max_version, 0x0304);
    /* final: later datagrams are not read */
    cr_assert_eq(soth_quic_hello_feed(&q, "garbage", 7), SOTH_QUIC_DONE);
    cr_assert(iov_is(q.ch.sni, "quic.example.net"));
}

/* A ClientHello in two Initial packets in two datagrams, in order and reversed. */
Test(quic_initial, ngtcp2_two_datagrams)
{
    struct flight f = load("ngtcp2_split");
    cr_assert_eq(f.n, 2);
    for (int rev = 0; rev < 2; rev++) {
        struct soth_quic_hello q;
        soth_quic_hello_init(&q);
        cr_assert_eq(soth_quic_hello_feed(&q, f.d[rev], f.len[rev]), SOTH_E_INCOMPLETE);
        cr_assert_eq(soth_quic_hello_feed(&q, f.d[!rev], f.len[!rev]), SOTH_QUIC_DONE);
        cr_assert_eq(q.initial_packets, 2);
        cr_assert_gt(q.ch.hello_len, 1200);
        cr_assert(iov_is(q.ch.sni, "split.example.org"));
        cr_assert(iov_is(q.ch.alpn[0], "h3"));
    }
    /* a lost or cut second datagram is dropped, the retransmission completes the hello */
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[0], f.len[0]), SOTH_E_INCOMPLETE);
    for (size_t len = 0; len < f.len[1]; len += 97)
        cr_assert_eq(soth_quic_hello_feed(&q, f.d[1], len), SOTH_E_INCOMPLETE, "len %zu", len);
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[1], f.len[1]), SOTH_QUIC_DONE);
    cr_assert(iov_is(q.ch.sni, "split.example.org"));
}

Test(quic_initial, ngtcp2_v2_draft_is_not_read)
{
    struct flight f = load("ngtcp2_v2draft");
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, f.d[0], f.len[0]), SOTH_QUIC_E_NOT_INITIAL);
}

/* ---- crafted: reassembly */

/* The hello in pieces of every size, one Initial per piece and datagram: in order, reversed,
 * and all pieces coalesced into one datagram. */
Test(quic_initial, pieces_of_every_size, .init = rfc_hello)
{
    struct keys k;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    static uint8_t pkts[241][600];
    size_t plen[241];
    static uint8_t all[241 * 600];
    for (size_t size = 1; size <= sizeof(hello); size++) {
        size_t n = (sizeof(hello) + size - 1) / size;
        for (size_t i = 0; i < n; i++) {
            uint8_t fr[300];
            size_t off = i * size, len = off + size > sizeof(hello) ? sizeof(hello) - off : size;
            struct seal_opts o = v1_opts(i);
            plen[i] = seal(&k, &o, fr, crypto_frame(off, len, fr), pkts[i]);
        }
        for (int order = 0; order < 2; order++) {
            struct soth_quic_hello q;
            soth_quic_hello_init(&q);
            for (size_t j = 0; j < n; j++) {
                size_t i = order == 0 ? j : n - 1 - j;
                int rc = soth_quic_hello_feed(&q, pkts[i], plen[i]);
                int want = j + 1 == n ? SOTH_QUIC_DONE : SOTH_E_INCOMPLETE;
                cr_assert_eq(rc, want, "size %zu order %d piece %zu: %d", size, order, i, rc);
            }
            cr_assert_eq(q.initial_packets, n);
            expect_rfc_hello(&q);
        }
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(all + total, pkts[i], plen[i]);
            total += plen[i];
        }
        struct soth_quic_hello q;
        soth_quic_hello_init(&q);
        cr_assert_eq(soth_quic_hello_feed(&q, all, total), SOTH_QUIC_DONE, "size %zu", size);
        cr_assert_eq(q.initial_packets, n);
        expect_rfc_hello(&q);
    }
}

/* Overlapping CRYPTO frames must agree; different bytes at one offset are refused. */
Test(quic_initial, overlapping_frames, .init = rfc_hello)
{
    struct keys k;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    uint8_t fr[600], pkt[800];
    size_t n = 0;
    n += crypto_frame(50, 150, fr + n);
    n += crypto_frame(0, 100, fr + n);
    n += crypto_frame(150, 91, fr + n);
    n += crypto_frame(10, 20, fr + n); /* a repeat inside */
    struct seal_opts o = v1_opts(0);
    size_t len = seal(&k, &o, fr, n, pkt);
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_QUIC_DONE);
    cr_assert_eq(q.initial_packets, 1);
    expect_rfc_hello(&q);

    /* the second packet repeats bytes 60..79 with one changed: the name could differ */
    soth_quic_hello_init(&q);
    o = v1_opts(0);
    len = seal(&k, &o, fr, crypto_frame(0, 100, fr), pkt);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_E_INCOMPLETE);
    n = crypto_frame(60, 20, fr);
    fr[5 + 7] ^= 0x20;
    o = v1_opts(1);
    len = seal(&k, &o, fr, n, pkt);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_E_MALFORMED);
}

/* An Initial, a 0-RTT packet, a second Initial and trailing junk in one datagram. */
Test(quic_initial, coalesced_packets, .init = rfc_hello)
{
    struct keys k;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    uint8_t fr[300], d[2000];
    size_t n = 0;
    struct seal_opts o = v1_opts(0);
    n += seal(&k, &o, fr, crypto_frame(0, 120, fr), d + n);
    /* a 0-RTT packet (never opened: sealed with the Initial keys, type 1) */
    o = v1_opts(0);
    o.long_type = 1;
    o.pad_to = 60;
    uint8_t ping[1] = {0x01};
    n += seal(&k, &o, ping, 1, d + n);
    o = v1_opts(1);
    n += seal(&k, &o, fr, crypto_frame(120, 121, fr), d + n);
    memset(d + n, 0, 40); /* datagram padding after the packets */
    n += 40;
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, d, n), SOTH_QUIC_DONE);
    cr_assert_eq(q.initial_packets, 2);
    expect_rfc_hello(&q);
}

/* Later packets that do not open are dropped, not an error (RFC 9001 5.5). */
Test(quic_initial, later_bad_packet_dropped, .init = rfc_hello)
{
    struct keys k, other;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    const uint8_t odcid[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    derive(SOTH_QUIC_V1, odcid, 8, &other);
    uint8_t fr[300], pkt[600];
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    struct seal_opts o = v1_opts(0);
    size_t len = seal(&k, &o, fr, crypto_frame(0, 100, fr), pkt);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_E_INCOMPLETE);
    /* sealed with other keys (a forged packet): dropped */
    o = v1_opts(1);
    len = seal(&other, &o, fr, crypto_frame(100, 141, fr), pkt);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_E_INCOMPLETE);
    /* corrupted tag: dropped */
    o = v1_opts(1);
    len = seal(&k, &o, fr, crypto_frame(100, 141, fr), pkt);
    pkt[len - 1] ^= 1;
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_E_INCOMPLETE);
    pkt[len - 1] ^= 1;
    /* the same packet intact, after the client switched its DCID to the server's choice:
     * the keys stay those of the first DCID (RFC 9001 5.2) */
    o = v1_opts(1);
    o.dcid = odcid;
    len = seal(&k, &o, fr, crypto_frame(100, 141, fr), pkt);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_QUIC_DONE);
    cr_assert_eq(q.initial_packets, 2);
    expect_rfc_hello(&q);
}

/* PING, ACK, ACK with ECN counts and CONNECTION_CLOSE are allowed in Initial packets. */
Test(quic_initial, allowed_frames, .init = rfc_hello)
{
    struct keys k;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    uint8_t fr[400], pkt[800];
    size_t n = 0;
    const uint8_t extra[] = {
        0x01,                                           /* PING */
        0x02, 0x05, 0x00, 0x01, 0x01, 0x00, 0x01,       /* ACK: 5, delay 0, 1 range */
        0x03, 0x02, 0x00, 0x00, 0x02, 0x07, 0x08, 0x09, /* ACK_ECN: counts 7 8 9 */
        0x1c, 0x00, 0x06, 0x03, 'b',  'y',  'e',        /* CONNECTION_CLOSE */
        0x00, 0x00, 0x00,                               /* PADDING */
    };
    memcpy(fr, extra, sizeof(extra));
    n = sizeof(extra);
    n += crypto_frame(0, sizeof(hello), fr + n);
    struct seal_opts o = v1_opts(0);
    size_t len = seal(&k, &o, fr, n, pkt);
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_QUIC_DONE);
    expect_rfc_hello(&q);
}

static int feed_frames(const uint8_t *fr, size_t n, uint8_t b0_extra)
{
    struct keys k;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    uint8_t pkt[2100];
    struct seal_opts o = v1_opts(0);
    o.b0_extra = b0_extra;
    size_t len = seal(&k, &o, fr, n, pkt);
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    return soth_quic_hello_feed(&q, pkt, len);
}

Test(quic_initial, refused_frames, .init = rfc_hello)
{
    uint8_t fr[400];
    size_t n = crypto_frame(0, sizeof(hello), fr);
    cr_assert_eq(feed_frames(fr, n, 0), SOTH_QUIC_DONE);
    cr_assert_eq(feed_frames(fr, n, 0x0c), SOTH_E_MALFORMED); /* reserved bits */
    cr_assert_eq(feed_frames(fr, 0, 0), SOTH_E_MALFORMED);    /* no frame at all */

    uint8_t bad[][6] = {
        {0x08, 0x00, 0x00, 0x00},       /* STREAM */
        {0x1d, 0x00, 0x00, 0x00},       /* CONNECTION_CLOSE of the application */
        {0x1e},                         /* HANDSHAKE_DONE */
        {0x40, 0x06, 0x00, 0x00},       /* CRYPTO with a two-byte type */
        {0x06, 0x00, 0x10, 0x61},       /* CRYPTO longer than the packet */
        {0x02, 0x00},                   /* ACK cut short */
        {0x02, 0x00, 0x00, 0x05, 0x00}, /* ACK with 5 ranges missing */
        {0x1c, 0x00, 0x00, 0x09, 'x'},  /* CONNECTION_CLOSE reason past the end */
    };
    size_t bad_len[] = {4, 4, 1, 4, 4, 2, 5, 5};
    for (size_t i = 0; i < sizeof(bad_len) / sizeof(bad_len[0]); i++) {
        uint8_t buf[400];
        memcpy(buf, fr, n); /* the whole hello first: the bad frame still refuses it */
        memcpy(buf + n, bad[i], bad_len[i]);
        cr_assert_eq(feed_frames(buf, n + bad_len[i], 0), SOTH_E_MALFORMED, "case %zu", i);
    }
    /* a CRYPTO frame reaching past 2^62 */
    const uint8_t huge[] = {0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0, 0x40, 0x20};
    uint8_t buf[64] = {0};
    memcpy(buf, huge, sizeof(huge));
    cr_assert_eq(feed_frames(buf, sizeof(huge) + 32, 0), SOTH_E_MALFORMED);
}

Test(quic_initial, not_a_client_hello, .init = rfc_hello)
{
    uint8_t fr[400];
    size_t n = crypto_frame(0, sizeof(hello), fr);
    fr[5] = 2; /* ServerHello */
    cr_assert_eq(feed_frames(fr, n, 0), SOTH_E_MALFORMED);
    /* the first byte alone is enough to know */
    cr_assert_eq(feed_frames(fr, 6, 0), SOTH_E_MALFORMED);
    /* a ClientHello whose inner lengths are wrong */
    n = crypto_frame(0, sizeof(hello), fr);
    fr[5 + 4 + 2 + 32] = 40; /* session id length over 32 */
    cr_assert_eq(feed_frames(fr, n, 0), SOTH_E_MALFORMED);
}

Test(quic_initial, bounds, .init = rfc_hello)
{
    /* a hello announcing more than SOTH_QUIC_HELLO_MAX */
    uint8_t fr[64];
    size_t n = crypto_frame(0, 8, fr);
    fr[5 + 1] = 0x00, fr[5 + 2] = 0x40, fr[5 + 3] = 0x00; /* 16384 + 4 */
    cr_assert_eq(feed_frames(fr, n, 0), SOTH_E_TOO_LARGE);
    fr[5 + 2] = 0x3f, fr[5 + 3] = 0xfc; /* 16380 + 4: within the bound, incomplete */
    cr_assert_eq(feed_frames(fr, n, 0), SOTH_E_INCOMPLETE);

    /* CRYPTO bytes past the bound are ignored; the hello before them is read */
    uint8_t buf[600];
    size_t m = 0;
    buf[m++] = 0x06;
    buf[m++] = 0x80, buf[m++] = 0x00, buf[m++] = 0x80, buf[m++] = 0x00; /* offset 32768 */
    buf[m++] = 0x10;
    memset(buf + m, 0xab, 16);
    m += 16;
    m += crypto_frame(0, sizeof(hello), buf + m);
    cr_assert_eq(feed_frames(buf, m, 0), SOTH_QUIC_DONE);

    /* an Initial packet over SOTH_QUIC_PACKET_MAX */
    struct keys k;
    derive(SOTH_QUIC_V1, RFC_DCID, 8, &k);
    static uint8_t pkt[4000];
    struct seal_opts o = v1_opts(0);
    o.pad_to = SOTH_QUIC_PACKET_MAX + 1;
    size_t len = seal(&k, &o, buf, crypto_frame(0, sizeof(hello), buf), pkt);
    cr_assert_eq(len, SOTH_QUIC_PACKET_MAX + 1);
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_E_TOO_LARGE);
    o.pad_to = SOTH_QUIC_PACKET_MAX;
    len = seal(&k, &o, buf, crypto_frame(0, sizeof(hello), buf), pkt);
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt, len), SOTH_QUIC_DONE);
}

/* v2 end to end through the builder: two packets, v2 type bits and labels. */
Test(quic_initial, v2_two_packets, .init = rfc_hello)
{
    struct keys k;
    derive(SOTH_QUIC_V2, RFC_DCID, 8, &k);
    uint8_t fr[300], pkt[2][1300];
    size_t len[2];
    struct seal_opts o = {SOTH_QUIC_V2, RFC_DCID, 8, 7, 1, 1200, 0, -1};
    len[0] = seal(&k, &o, fr, crypto_frame(100, 141, fr), pkt[0]);
    o.pn = 8;
    len[1] = seal(&k, &o, fr, crypto_frame(0, 100, fr), pkt[1]);
    struct soth_quic_hello q;
    soth_quic_hello_init(&q);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt[0], len[0]), SOTH_E_INCOMPLETE);
    cr_assert_eq(soth_quic_hello_feed(&q, pkt[1], len[1]), SOTH_QUIC_DONE);
    cr_assert_eq(q.version, SOTH_QUIC_V2);
    cr_assert_eq(q.largest_pn, 8);
    expect_rfc_hello(&q);
}

/* The cheap pre-check agrees with what the reader takes as a first datagram. */
Test(quic_initial, is_initial)
{
    const char *yes[] = {"rfc9001_a2_client_initial", "rfc9369_a2_client_initial", "ngtcp2_h3",
                         "ngtcp2_split"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        struct flight f = load(yes[i]);
        for (size_t j = 0; j < f.n; j++)
            cr_assert(soth_quic_is_initial(f.d[j], f.len[j]), "%s %zu", yes[i], j);
    }
    struct flight f = load("ngtcp2_v2draft");
    cr_assert(!soth_quic_is_initial(f.d[0], f.len[0]));
    f = load("rfc9001_a2_client_initial");
    for (size_t len = 0; len < 1200; len++)
        cr_assert(!soth_quic_is_initial(f.d[0], len), "len %zu", len);
    f.d[0][0] = (uint8_t)((f.d[0][0] & 0xcf) | 0x20); /* Handshake */
    cr_assert(!soth_quic_is_initial(f.d[0], 1200));
    cr_assert(!soth_quic_is_initial("\x40\x00\x00\x00\x01", 5));
    cr_assert(!soth_quic_is_initial("", 0));
}
