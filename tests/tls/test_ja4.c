/*
 * JA4 / JA4S (docs/tls.md, "Fingerprints") against the examples of FoxIO's published JA4 and
 * JA4S specifications: hellos built here with the specification's cipher, extension and
 * signature algorithm lists (plus GREASE values, which must not count), parsed by the real
 * ClientHello peek.
 */
#include "tls_test_util.h"

struct hb {
    uint8_t b[4096];
    size_t n;
};

static void put8(struct hb *h, unsigned v)
{
    h->b[h->n++] = (uint8_t)v;
}
static void put16(struct hb *h, unsigned v)
{
    put8(h, v >> 8);
    put8(h, v & 0xff);
}
static void putb(struct hb *h, const void *p, size_t n)
{
    memcpy(h->b + h->n, p, n);
    h->n += n;
}
/* Patch a 16-bit length at off: bytes after off+2. */
static void fix16(struct hb *h, size_t off)
{
    size_t l = h->n - off - 2;
    h->b[off] = (uint8_t)(l >> 8);
    h->b[off + 1] = (uint8_t)l;
}

struct hello_spec {
    const uint16_t *ciphers;
    size_t n_ciphers;
    const uint16_t *exts; /* in wire order */
    size_t n_exts;
    const uint8_t *alpn1; /* first ALPN protocol (NULL = "h2") */
    size_t alpn1_len;
    bool no_sigalgs; /* 000d present with an empty list */
};

static const uint16_t SIGS[] = {0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601};

/* A record carrying a ClientHello with spec's lists; extension bodies are minimal but valid. */
static void build_hello(const struct hello_spec *s, struct hb *h)
{
    h->n = 0;
    put8(h, 22);
    put16(h, 0x0301);
    size_t rec = h->n;
    put16(h, 0);
    put8(h, 1);
    put8(h, 0);
    size_t hs = h->n;
    put16(h, 0);
    put16(h, 0x0303);
    for (int i = 0; i < 32; i++)
        put8(h, i);
    put8(h, 0); /* session id */
    put16(h, (unsigned)(2 * s->n_ciphers));
    for (size_t i = 0; i < s->n_ciphers; i++)
        put16(h, s->ciphers[i]);
    put8(h, 1);
    put8(h, 0);
    size_t el = h->n;
    put16(h, 0);
    for (size_t i = 0; i < s->n_exts; i++) {
        uint16_t t = s->exts[i];
        put16(h, t);
        size_t l = h->n;
        put16(h, 0);
        if (t == 0x0000) { /* server_name: host_name "origin.test" */
            put16(h, 14);
            put8(h, 0);
            put16(h, 11);
            putb(h, "origin.test", 11);
        } else if (t == 0x0010) {
            const uint8_t *a = s->alpn1 ? s->alpn1 : (const uint8_t *)"h2";
            size_t al = s->alpn1 ? s->alpn1_len : 2;
            size_t ll = h->n;
            put16(h, 0);
            put8(h, (unsigned)al);
            putb(h, a, al);
            put8(h, 8);
            putb(h, "http/1.1", 8);
            fix16(h, ll);
        } else if (t == 0x002b) {
            put8(h, 6);
            put16(h, 0x3a3a); /* GREASE */
            put16(h, 0x0304);
            put16(h, 0x0303);
        } else if (t == 0x000d) {
            size_t ll = h->n;
            put16(h, 0);
            if (!s->no_sigalgs) {
                put16(h, 0x5a5a); /* GREASE is ignored here too */
                for (size_t k = 0; k < sizeof(SIGS) / sizeof(SIGS[0]); k++)
                    put16(h, SIGS[k]);
            }
            fix16(h, ll);
        }
        fix16(h, l);
    }
    fix16(h, el);
    size_t ml = h->n - hs - 2;
    h->b[hs - 1] = (uint8_t)(ml >> 16);
    h->b[hs] = (uint8_t)(ml >> 8);
    h->b[hs + 1] = (uint8_t)ml;
    fix16(h, rec);
}

static const char *ja4_of(const struct hello_spec *s, char *out)
{
    struct hb h;
    struct soth_tls_client_hello ch;
    build_hello(s, &h);
    memset(&ch, 0, sizeof(ch));
    cr_assert_eq(soth_tls_peek_client_hello(h.b, h.n, &ch), (ssize_t)h.n);
    cr_assert_eq(soth_tls_ja4(&ch, false, out, SOTH_TLS_JA4_LEN + 1), SOTH_TLS_JA4_LEN);
    return out;
}

/* The specification's example, in its original order (JA4_ro), with GREASE added. */
static const uint16_t SPEC_CIPHERS[] = {0x2a2a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f,
                                        0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
                                        0x009c, 0x009d, 0x002f, 0x0035};
static const uint16_t SPEC_EXTS[] = {0x0a0a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469,
                                     0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
                                     0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0xfafa};
#define N(a) (sizeof(a) / sizeof((a)[0]))

Test(ja4, specification_example)
{
    char out[SOTH_TLS_JA4_LEN + 1];
    struct hello_spec s = {SPEC_CIPHERS, N(SPEC_CIPHERS), SPEC_EXTS, N(SPEC_EXTS), NULL, 0, false};
    cr_assert_str_eq(ja4_of(&s, out), "t13d1516h2_8daaf6152771_e5627efa2ab1");
}

Test(ja4, no_signature_algorithms_no_underscore)
{
    char out[SOTH_TLS_JA4_LEN + 1];
    struct hello_spec s = {SPEC_CIPHERS, N(SPEC_CIPHERS), SPEC_EXTS, N(SPEC_EXTS), NULL, 0, true};
    /* the specification's hash of the sorted list alone */
    cr_assert_str_eq(ja4_of(&s, out), "t13d1516h2_8daaf6152771_6d807ffa2a79");
}

Test(ja4, no_sni_no_alpn_no_versions)
{
    static const uint16_t exts[] = {0x000d, 0x000a};
    char out[SOTH_TLS_JA4_LEN + 1];
    struct hello_spec s = {SPEC_CIPHERS, N(SPEC_CIPHERS), exts, N(exts), NULL, 0, false};
    ja4_of(&s, out);
    /* legacy_version 0x0303 without supported_versions; "i" without SNI; "00" without ALPN */
    cr_assert_eq(strncmp(out, "t12i150200_8daaf6152771_", 24), 0, "%s", out);
}

Test(ja4, only_grease_ciphers_and_extensions)
{
    static const uint16_t c[] = {0x0a0a};
    static const uint16_t e[] = {0x1a1a};
    char out[SOTH_TLS_JA4_LEN + 1];
    struct hello_spec s = {c, N(c), e, N(e), NULL, 0, false};
    cr_assert_str_eq(ja4_of(&s, out), "t12i000000_000000000000_000000000000");
}

Test(ja4, counts_cap_at_99)
{
    uint16_t c[120];
    for (int i = 0; i < 120; i++)
        c[i] = (uint16_t)(0x1000 + i);
    char out[SOTH_TLS_JA4_LEN + 1];
    struct hello_spec s = {c, N(c), SPEC_EXTS, N(SPEC_EXTS), NULL, 0, false};
    cr_assert_eq(strncmp(ja4_of(&s, out), "t13d9916h2_", 11), 0, "%s", out);
}

/* The specification's ALPN examples: non-alphanumeric ends print hex digits. */
Test(ja4, alpn_characters)
{
    static const struct {
        const char *v;
        size_t n;
        const char *want;
    } t[] = {
        {"\xab", 1, "ab"},
        {"\xab\xcd", 2, "ad"},
        {"\x30\xab", 2, "3b"},
        {"\x30\x31\xab\xcd", 4, "3d"},
        {"\x30\xab\xcd\x31", 4, "01"},
        {"http/1.1", 8, "h1"},
        {"x", 1, "xx"},
    };
    for (size_t i = 0; i < N(t); i++) {
        char out[SOTH_TLS_JA4_LEN + 1];
        struct hello_spec s = {SPEC_CIPHERS, N(SPEC_CIPHERS),         SPEC_EXTS,
                               N(SPEC_EXTS), (const uint8_t *)t[i].v, t[i].n,
                               false};
        ja4_of(&s, out);
        cr_assert_eq(strncmp(out + 8, t[i].want, 2), 0, "alpn %zu: %s", i, out);
    }
}

Test(ja4, small_buffer_refused)
{
    struct soth_tls_client_hello ch;
    char out[8];
    memset(&ch, 0, sizeof(ch));
    cr_assert_eq(soth_tls_ja4(&ch, false, out, sizeof(out)), SOTH_E_TOO_LARGE);
}

/* A ServerHello handshake message: version, cipher, extensions (type, body). */
static size_t server_hello(uint8_t *b, uint16_t cipher, const uint16_t *exts, size_t n, bool tls13,
                           const char *alpn)
{
    struct hb h = {.n = 0};
    put8(&h, 2);
    put8(&h, 0);
    put16(&h, 0);
    put16(&h, 0x0303);
    for (int i = 0; i < 32; i++)
        put8(&h, 0x40 + i);
    put8(&h, 32);
    for (int i = 0; i < 32; i++)
        put8(&h, i);
    put16(&h, cipher);
    put8(&h, 0);
    size_t el = h.n;
    put16(&h, 0);
    for (size_t i = 0; i < n; i++) {
        put16(&h, exts[i]);
        size_t l = h.n;
        put16(&h, 0);
        if (exts[i] == 0x002b)
            put16(&h, tls13 ? 0x0304 : 0x0303);
        else if (exts[i] == 0x0010) {
            put16(&h, (unsigned)strlen(alpn) + 1);
            put8(&h, (unsigned)strlen(alpn));
            putb(&h, alpn, strlen(alpn));
        } else if (exts[i] == 0x0033) {
            put16(&h, 0x001d);
            put16(&h, 32);
            for (int k = 0; k < 32; k++)
                put8(&h, k);
        }
        fix16(&h, l);
    }
    fix16(&h, el);
    h.b[2] = (uint8_t)((h.n - 4) >> 8);
    h.b[3] = (uint8_t)(h.n - 4);
    memcpy(b, h.b, h.n);
    return h.n;
}

Test(ja4s, specification_example)
{
    static const uint16_t e[] = {0x0005, 0x0017, 0xff01, 0x0000};
    uint8_t b[512];
    char out[SOTH_TLS_JA4S_LEN + 1];
    size_t n = server_hello(b, 0xc030, e, N(e), false, "");
    cr_assert_eq(soth_tls_ja4s_msg(b, n, false, out, sizeof(out)), SOTH_TLS_JA4S_LEN);
    cr_assert_str_eq(out, "t120400_c030_4e8089b08790");
    /* every shorter prefix is incomplete */
    for (size_t i = 4; i < n; i++)
        cr_assert_eq(soth_tls_ja4s_msg(b, i, false, out, sizeof(out)), SOTH_E_INCOMPLETE);
}

Test(ja4s, tls13_supported_versions_and_alpn)
{
    static const uint16_t e[] = {0x002b, 0x0033};
    static const uint16_t e2[] = {0xff01, 0x0010, 0x000b};
    uint8_t b[512];
    char out[SOTH_TLS_JA4S_LEN + 1];
    size_t n = server_hello(b, 0x1301, e, N(e), true, "");
    cr_assert_eq(soth_tls_ja4s_msg(b, n, false, out, sizeof(out)), SOTH_TLS_JA4S_LEN);
    /* sha256("002b,0033") starts a56c5b993250 */
    cr_assert_str_eq(out, "t130200_1301_a56c5b993250");
    n = server_hello(b, 0xc02f, e2, N(e2), false, "http/1.1");
    cr_assert_eq(soth_tls_ja4s_msg(b, n, true, out, sizeof(out)), SOTH_TLS_JA4S_LEN);
    /* sha256("ff01,0010,000b") starts 26b1f9d0693b */
    cr_assert_str_eq(out, "q1203h1_c02f_26b1f9d0693b");
}

Test(ja4s, malformed)
{
    uint8_t b[64] = {1, 0, 0, 4, 3, 3, 0, 0};
    char out[SOTH_TLS_JA4S_LEN + 1];
    cr_assert_eq(soth_tls_ja4s_msg(b, 8, false, out, sizeof(out)), SOTH_E_MALFORMED);
    b[0] = 2;
    cr_assert_eq(soth_tls_ja4s_msg(b, 8, false, out, sizeof(out)), SOTH_E_MALFORMED);
}

/* The collector on a real upstream conn: our own server's ServerHello, fed byte by byte. */
Test(ja4s, upstream_conn_collects_server_hello_fed_byte_by_byte, .timeout = 60)
{
    struct tu_env env;
    tu_env_init(&env);
    struct soth_tls_conn *cli, *srv;
    cr_assert_eq(soth_tls_conn_new_client(env.t, SOTH_IOV_LIT("fp.example.test"), NULL, 0, &cli),
                 0);
    cr_assert_eq(
        soth_tls_conn_new_server(env.t, SOTH_IOV_LIT("fp.example.test"), SOTH_IOV_NULL, &srv), 0);
    cr_assert_eq(soth_tls_conn_ja4s(cli).len, 0);
    cr_assert_eq(soth_tls_conn_handshake(cli), SOTH_E_INCOMPLETE);
    tu_move(cli, srv);
    cr_assert_eq(soth_tls_conn_handshake(srv), SOTH_E_INCOMPLETE);
    /* The server's first flight: its first record carries the ServerHello. */
    struct soth_iov iov;
    static uint8_t wire[16384];
    size_t n = 0;
    while (soth_tls_conn_out(srv, &iov) > 0) {
        memcpy(wire + n, iov.base, iov.len);
        n += iov.len;
        soth_tls_conn_out_consume(srv, iov.len);
    }
    cr_assert_gt(n, 5 + 4);
    cr_assert_eq(wire[0], 22);
    char want[SOTH_TLS_JA4S_LEN + 1];
    size_t rlen = ((size_t)wire[3] << 8) | wire[4];
    cr_assert_eq(soth_tls_ja4s_msg(wire + 5, rlen, false, want, sizeof(want)), SOTH_TLS_JA4S_LEN);
    cr_assert_eq(strncmp(want, "t1302", 5), 0, "%s", want);
    cr_assert_eq(strncmp(want + 7, "_1301_", 6), 0, "%s", want);
    for (size_t i = 0; i < n; i++) {
        uint8_t b = wire[i];
        cr_assert_eq(soth_tls_conn_feed(cli, &b, 1), 0);
        int r = soth_tls_conn_handshake(cli);
        cr_assert(r == 0 || r == SOTH_E_INCOMPLETE);
        cr_assert_eq(soth_tls_conn_feed_done(cli), 0);
    }
    cr_assert(tu_iov_eq(soth_tls_conn_ja4s(cli), want), "%.*s", (int)soth_tls_conn_ja4s(cli).len,
              soth_tls_conn_ja4s(cli).base);
    cr_assert_eq(soth_tls_conn_ja4s(srv).len, 0, "server conns have no JA4S");
    tu_move(cli, srv);
    cr_assert_eq(tu_handshake(cli, srv), 0);
    cr_assert(tu_iov_eq(soth_tls_conn_ja4s(cli), want));
    soth_tls_conn_free(cli);
    soth_tls_conn_free(srv);
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}
