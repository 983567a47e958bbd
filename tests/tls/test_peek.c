/*
 * ClientHello peek over real ClientHellos (captured from openssl s_client, curl and python by
 * tests/tls/capture_clienthello.py into fuzz/corpus/clienthello) and hand-built malformed
 * ones. Inputs are parsed whole, at every prefix (= fed byte by byte, split anywhere), and
 * re-framed into many records.
 */
#include "tls_test_util.h"

#include <strings.h>

struct blob {
    uint8_t *p;
    size_t n;
};

static struct blob load(const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "fuzz/corpus/clienthello/%s.bin", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    struct blob b = {malloc(70000), 0};
    b.n = fread(b.p, 1, 70000, f);
    fclose(f);
    cr_assert_gt(b.n, 5);
    return b;
}

static bool iov_ieq(struct soth_iov a, const char *s)
{
    return a.len == strlen(s) && strncasecmp(a.base, s, a.len) == 0;
}

/* Parse whole; every shorter prefix must be INCOMPLETE. */
static struct soth_tls_client_hello parse_all_prefixes(struct blob b, char *scratch, size_t cap)
{
    struct soth_tls_client_hello h;
    for (size_t i = 0; i < b.n; i++) {
        memset(&h, 0, sizeof(h));
        h.scratch = scratch;
        h.scratch_cap = cap;
        ssize_t r = soth_tls_peek_client_hello(b.p, i, &h);
        cr_assert_eq(r, SOTH_E_INCOMPLETE, "prefix %zu of %zu: %zd", i, b.n, r);
    }
    memset(&h, 0, sizeof(h));
    h.scratch = scratch;
    h.scratch_cap = cap;
    ssize_t r = soth_tls_peek_client_hello(b.p, b.n, &h);
    cr_assert_eq(r, (ssize_t)b.n);
    return h;
}

struct expect {
    const char *file;
    const char *sni; /* NULL = none */
    const char *alpn[3];
    bool versions;
    uint16_t max_version;
};

static const struct expect EXPECT[] = {
    {"openssl_sni_alpn", "www.example.com", {"h2", "http/1.1"}, true, 0x0304},
    {"openssl_tls12_nosni", NULL, {NULL}, false, 0x0303},
    {"curl_h2", "api.example.org", {"h2", "http/1.1"}, true, 0x0304},
    {"curl_http11", "mixed.case.example", {"http/1.1"}, true, 0x0304},
    {"python_grpc_alpn", "grpc.example.net", {"grpc-exp", "h2"}, true, 0x0304},
    {"python_tls12", "old.example.net", {"http/1.1"}, false, 0x0303},
};

static void check(const struct expect *e, const struct soth_tls_client_hello *h)
{
    cr_assert_eq(h->legacy_version, 0x0303, "%s", e->file);
    cr_assert_eq(h->record_version >> 8, 3);
    cr_assert_eq(h->has_sni, e->sni != NULL, "%s", e->file);
    if (e->sni)
        cr_assert(iov_ieq(h->sni, e->sni), "%s: %.*s", e->file, (int)h->sni.len, h->sni.base);
    size_t n = 0;
    while (n < 3 && e->alpn[n])
        n++;
    cr_assert_eq(h->has_alpn, n > 0, "%s", e->file);
    cr_assert_eq(h->n_alpn, n, "%s", e->file);
    for (size_t i = 0; i < n; i++)
        cr_assert(iov_ieq(h->alpn[i], e->alpn[i]), "%s alpn %zu", e->file, i);
    cr_assert_eq(h->has_supported_versions, e->versions, "%s", e->file);
    cr_assert_eq(h->max_version, e->max_version, "%s", e->file);
}

/* Re-frame the handshake bytes of a single-record hello into records of k bytes. */
static struct blob reframe(struct blob b, size_t k)
{
    size_t hs_len = ((size_t)b.p[3] << 8) | b.p[4];
    const uint8_t *hs = b.p + 5;
    struct blob o = {malloc(hs_len * 6 + 64), 0};
    for (size_t off = 0; off < hs_len; off += k) {
        size_t n = hs_len - off < k ? hs_len - off : k;
        o.p[o.n++] = 22;
        o.p[o.n++] = 3;
        o.p[o.n++] = 1;
        o.p[o.n++] = (uint8_t)(n >> 8);
        o.p[o.n++] = (uint8_t)n;
        memcpy(o.p + o.n, hs + off, n);
        o.n += n;
    }
    return o;
}

Test(tls_peek, real_client_hellos_whole_and_every_prefix)
{
    for (size_t i = 0; i < SOTH_ARRAY_LEN(EXPECT); i++) {
        struct blob b = load(EXPECT[i].file);
        struct soth_tls_client_hello h = parse_all_prefixes(b, NULL, 0);
        check(&EXPECT[i], &h);
        /* the iovs borrow from the input */
        if (h.has_sni)
            cr_assert((const uint8_t *)h.sni.base > b.p && (const uint8_t *)h.sni.base < b.p + b.n);
        cr_assert_eq(h.hello_len + 5, b.n);
        free(b.p);
    }
}

Test(tls_peek, hello_split_over_records_needs_scratch)
{
    static char scratch[SOTH_TLS_MAX_HELLO];
    size_t ks[] = {1, 2, 3, 5, 64, 200};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(EXPECT); i++) {
        struct blob b = load(EXPECT[i].file);
        for (size_t j = 0; j < SOTH_ARRAY_LEN(ks); j++) {
            struct blob r = reframe(b, ks[j]);
            struct soth_tls_client_hello h = parse_all_prefixes(r, scratch, sizeof(scratch));
            check(&EXPECT[i], &h);
            if (r.n != b.n) { /* really split: iovs in scratch, and scratch is required */
                if (h.has_sni)
                    cr_assert(h.sni.base >= scratch && h.sni.base < scratch + sizeof(scratch));
                memset(&h, 0, sizeof(h));
                ssize_t rr = soth_tls_peek_client_hello(r.p, r.n, &h);
                cr_assert_eq(rr, SOTH_E_TOO_LARGE, "%s k=%zu: %zd", EXPECT[i].file, ks[j], rr);
                h.scratch = scratch;
                h.scratch_cap = 100;
                cr_assert_eq(soth_tls_peek_client_hello(r.p, r.n, &h), SOTH_E_TOO_LARGE);
            }
            free(r.p);
        }
        free(b.p);
    }
}

Test(tls_peek, bytes_after_the_hello_are_not_counted)
{
    struct blob b = load("curl_h2");
    b.p[b.n] = 0x17; /* the start of something else */
    struct soth_tls_client_hello h = {0};
    cr_assert_eq(soth_tls_peek_client_hello(b.p, b.n + 1, &h), (ssize_t)b.n);
    free(b.p);
}

/* The bare handshake message (QUIC's CRYPTO stream carries no record header). */
Test(tls_peek, bare_message_whole_and_every_prefix)
{
    for (size_t i = 0; i < SOTH_ARRAY_LEN(EXPECT); i++) {
        struct blob b = load(EXPECT[i].file);
        const uint8_t *msg = b.p + 5;
        size_t len = b.n - 5;
        struct soth_tls_client_hello h;
        for (size_t k = 0; k < len; k++) {
            memset(&h, 0, sizeof(h));
            cr_assert_eq(soth_tls_parse_client_hello_msg(msg, k, &h), SOTH_E_INCOMPLETE,
                         "%s prefix %zu", EXPECT[i].file, k);
        }
        memset(&h, 0, sizeof(h));
        cr_assert_eq(soth_tls_parse_client_hello_msg(msg, len, &h), (ssize_t)len);
        cr_assert_eq(h.record_version, 0); /* no record */
        h.record_version = 0x0301;         /* for check() */
        check(&EXPECT[i], &h);
        cr_assert_eq(h.hello_len, len);
        if (h.has_sni)
            cr_assert((const uint8_t *)h.sni.base > msg && (const uint8_t *)h.sni.base < msg + len);
        /* bytes after the message are not looked at */
        cr_assert_eq(soth_tls_parse_client_hello_msg(msg, len + 1, &h), (ssize_t)len);
        /* another handshake type is known from the first byte */
        b.p[5] = 2;
        cr_assert_eq(soth_tls_parse_client_hello_msg(msg, 1, &h), SOTH_E_MALFORMED);
        /* an inner length that does not add up */
        b.p[5] = 1;
        b.p[5 + 4 + 2 + 32] = 33; /* session id over 32 bytes */
        cr_assert_eq(soth_tls_parse_client_hello_msg(msg, len, &h), SOTH_E_MALFORMED);
        free(b.p);
    }
    /* a message over SOTH_TLS_MAX_HELLO */
    const uint8_t big[4] = {1, 0x01, 0x00, 0x00};
    struct soth_tls_client_hello h = {0};
    cr_assert_eq(soth_tls_parse_client_hello_msg(big, 4, &h), SOTH_E_TOO_LARGE);
}

Test(tls_peek, not_tls)
{
    const char *in[] = {"GET / HTTP/1.1\r\n", "CONNECT a:443 HTTP/1.1\r\n", "\x80\x2e\x01\x03",
                        "\x16\x02", "\x17\x03\x03\x00\x10"};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(in); i++) {
        struct soth_tls_client_hello h = {0};
        cr_assert_eq(soth_tls_peek_client_hello(in[i], strlen(in[i]), &h), SOTH_TLS_E_NOT_TLS,
                     "%zu", i);
    }
    struct soth_tls_client_hello h = {0};
    cr_assert_eq(soth_tls_peek_client_hello("\x16", 1, &h), SOTH_E_INCOMPLETE);
    cr_assert_eq(soth_tls_peek_client_hello("", 0, &h), SOTH_E_INCOMPLETE);
}

/* ---- a ClientHello builder for malformed cases */
struct hb {
    uint8_t b[4096];
    size_t n;
};

static void put(struct hb *h, const void *p, size_t n)
{
    memcpy(h->b + h->n, p, n);
    h->n += n;
}

static void put16(struct hb *h, size_t v)
{
    h->b[h->n++] = (uint8_t)(v >> 8);
    h->b[h->n++] = (uint8_t)v;
}

/* record(hs(client_hello(body with exts))) */
static struct blob build(const uint8_t *exts, size_t exts_len, bool with_ext_block, int sid_len)
{
    struct hb body = {.n = 0};
    put16(&body, 0x0303);
    memset(body.b + body.n, 0xab, 32);
    body.n += 32;
    body.b[body.n++] = (uint8_t)sid_len;
    memset(body.b + body.n, 1, (size_t)sid_len);
    body.n += (size_t)sid_len;
    put16(&body, 2);
    put16(&body, 0x1301);
    body.b[body.n++] = 1;
    body.b[body.n++] = 0;
    if (with_ext_block) {
        put16(&body, exts_len);
        put(&body, exts, exts_len);
    }
    struct blob o = {malloc(body.n + 9), 0};
    o.p[0] = 22;
    o.p[1] = 3;
    o.p[2] = 1;
    o.p[3] = (uint8_t)((body.n + 4) >> 8);
    o.p[4] = (uint8_t)(body.n + 4);
    o.p[5] = 1;
    o.p[6] = 0;
    o.p[7] = (uint8_t)(body.n >> 8);
    o.p[8] = (uint8_t)body.n;
    memcpy(o.p + 9, body.b, body.n);
    o.n = body.n + 9;
    return o;
}

#define EXT(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

static ssize_t peek_blob(struct blob b, struct soth_tls_client_hello *h)
{
    static uint8_t keep[8192]; /* the iovs in *h point here until the next call */
    cr_assert_leq(b.n, sizeof(keep));
    memcpy(keep, b.p, b.n);
    free(b.p);
    memset(h, 0, sizeof(*h));
    return soth_tls_peek_client_hello(keep, b.n, h);
}

Test(tls_peek, minimal_and_valid_builds)
{
    struct soth_tls_client_hello h;
    cr_assert_gt(peek_blob(build(NULL, 0, false, 0), &h), 0); /* no extensions at all */
    cr_assert_not(h.has_sni);
    cr_assert_gt(peek_blob(build(EXT(0, 0, 0, 9, 0, 7, 0, 0, 4, 'a', '.', 'b', 'c'), true, 32), &h),
                 0);
    cr_assert(tu_iov_eq(h.sni, "a.bc"));
    /* supported_versions with GREASE first */
    cr_assert_gt(peek_blob(build(EXT(0, 43, 0, 7, 6, 0x3a, 0x3a, 3, 4, 3, 3), true, 0), &h), 0);
    cr_assert_eq(h.max_version, 0x0304);
    /* unknown name types in SNI are skipped */
    cr_assert_gt(peek_blob(build(EXT(0, 0, 0, 6, 0, 4, 9, 0, 1, 'x'), true, 0), &h), 0);
    cr_assert_not(h.has_sni);
    /* more than SOTH_TLS_MAX_ALPN protocols: kept the first ones, flagged */
    uint8_t alpn[4 + 2 + 20 * 2];
    size_t k = 0;
    alpn[k++] = 0;
    alpn[k++] = 16;
    alpn[k++] = 0;
    alpn[k++] = 2 + 40;
    alpn[k++] = 0;
    alpn[k++] = 40;
    for (int i = 0; i < 20; i++) {
        alpn[k++] = 1;
        alpn[k++] = (uint8_t)('a' + i);
    }
    cr_assert_gt(peek_blob(build(alpn, k, true, 0), &h), 0);
    cr_assert_eq(h.n_alpn, SOTH_TLS_MAX_ALPN);
    cr_assert(h.alpn_truncated);
    cr_assert(tu_iov_eq(h.alpn[15], "p"));
}

Test(tls_peek, malformed)
{
    struct soth_tls_client_hello h;
    /* SNI: a name that is no DNS name is ignored (no SNI), not a failure */
    cr_assert_gt(peek_blob(build(EXT(0, 0, 0, 8, 0, 6, 0, 0, 3, 'a', ' ', 'b'), true, 0), &h), 0);
    cr_assert_not(h.has_sni);
    cr_assert_gt(peek_blob(build(EXT(0, 0, 0, 8, 0, 6, 0, 0, 3, 'a', ':', '1'), true, 0), &h), 0);
    cr_assert_not(h.has_sni);
    /* SNI: empty name, two host_names, list length lies */
    cr_assert_eq(peek_blob(build(EXT(0, 0, 0, 5, 0, 3, 0, 0, 0), true, 0), &h), SOTH_E_MALFORMED);
    cr_assert_eq(peek_blob(build(EXT(0, 0, 0, 10, 0, 8, 0, 0, 1, 'a', 0, 0, 1, 'b'), true, 0), &h),
                 SOTH_E_MALFORMED);
    cr_assert_eq(peek_blob(build(EXT(0, 0, 0, 6, 0, 9, 0, 0, 1, 'a'), true, 0), &h),
                 SOTH_E_MALFORMED);
    /* the same extension twice */
    cr_assert_eq(
        peek_blob(
            build(EXT(0, 16, 0, 5, 0, 3, 2, 'h', '2', 0, 16, 0, 5, 0, 3, 2, 'h', '2'), true, 0),
            &h),
        SOTH_E_MALFORMED);
    /* ALPN: empty protocol name, empty list */
    cr_assert_eq(peek_blob(build(EXT(0, 16, 0, 4, 0, 2, 0, 'x'), true, 0), &h), SOTH_E_MALFORMED);
    cr_assert_eq(peek_blob(build(EXT(0, 16, 0, 2, 0, 0), true, 0), &h), SOTH_E_MALFORMED);
    /* supported_versions odd length */
    cr_assert_eq(peek_blob(build(EXT(0, 43, 0, 4, 3, 3, 4, 3), true, 0), &h), SOTH_E_MALFORMED);
    /* extension running past the block */
    cr_assert_eq(peek_blob(build(EXT(0, 99, 0, 9, 1), true, 0), &h), SOTH_E_MALFORMED);
    /* session id over 32 bytes */
    cr_assert_eq(peek_blob(build(NULL, 0, false, 33), &h), SOTH_E_MALFORMED);

    /* record level: not a ClientHello, empty record, oversized record, huge message */
    struct blob b = build(NULL, 0, false, 0);
    b.p[5] = 2;
    cr_assert_eq(peek_blob(b, &h), SOTH_E_MALFORMED);
    const uint8_t empty[] = {22, 3, 1, 0, 0};
    cr_assert_eq(soth_tls_peek_client_hello(empty, sizeof(empty), &h), SOTH_E_MALFORMED);
    const uint8_t big[] = {22, 3, 1, 0x40, 0x01, 1, 0, 0, 50};
    cr_assert_eq(soth_tls_peek_client_hello(big, sizeof(big), &h), SOTH_E_MALFORMED);
    const uint8_t huge[] = {22, 3, 1, 0x40, 0x00, 1, 0x01, 0, 0};
    cr_assert_eq(soth_tls_peek_client_hello(huge, sizeof(huge), &h), SOTH_E_TOO_LARGE);
    /* an application-data record in the middle of a split hello */
    static char scratch[SOTH_TLS_MAX_HELLO];
    struct blob c = load("curl_h2");
    struct blob r = reframe(c, 100);
    r.p[105] = 23;
    memset(&h, 0, sizeof(h));
    h.scratch = scratch;
    h.scratch_cap = sizeof(scratch);
    cr_assert_eq(soth_tls_peek_client_hello(r.p, r.n, &h), SOTH_E_MALFORMED);
    free(r.p);
    free(c.p);
}

Test(tls_peek, hello_from_our_own_client_conn)
{
    struct tu_env env;
    tu_env_init(&env);
    struct soth_tls_conn *cli;
    struct soth_iov offer[] = {SOTH_IOV_LIT("h2"), SOTH_IOV_LIT("http/1.1")};
    cr_assert_eq(soth_tls_conn_new_client(env.t, SOTH_IOV_LIT("Own.Example.Test"), offer, 2, &cli),
                 0);
    cr_assert_eq(soth_tls_conn_handshake(cli), SOTH_E_INCOMPLETE);
    struct soth_iov out;
    cr_assert_gt(soth_tls_conn_out(cli, &out), 0);
    struct blob b = {(uint8_t *)out.base, out.len};
    struct soth_tls_client_hello h = parse_all_prefixes(b, NULL, 0);
    cr_assert(tu_iov_eq(h.sni, "own.example.test"));
    cr_assert_eq(h.n_alpn, 2);
    cr_assert_eq(h.max_version, 0x0304);
    soth_tls_conn_free(cli);
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}

/* fuzz regression: a record longer than the hello inside it; the result never passes the
 * input and the whole record is required */
Test(tls_peek, regress_record_longer_than_hello)
{
    struct blob b = load("regress_record_longer_than_hello");
    size_t rec = 5 + (((size_t)b.p[3] << 8) | b.p[4]);
    for (size_t i = 0; i <= b.n; i++) {
        struct soth_tls_client_hello h = {0};
        ssize_t r = soth_tls_peek_client_hello(b.p, i, &h);
        cr_assert_leq(r, (ssize_t)i);
        if (i < rec)
            cr_assert(r == SOTH_E_INCOMPLETE || r == SOTH_E_MALFORMED, "%zu: %zd", i, r);
    }
    free(b.p);
}
