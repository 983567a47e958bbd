/*
 * proto/decode.c: the layered decoder chain. Stage order pinned, each content coding (real
 * encoders from zlib, brotli, zstd), decompression bombs, truncation, the anti-hijack
 * sanitizer, msgpack (real msgpack-c packer) with its bounds and malformed input, JSON value
 * capping (always valid JSON), sniffing.
 */
#include <brotli/encode.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "soth/proto/decode.h"

/* ---- encoders */

struct blob {
    char *p;
    size_t len;
};

static struct blob z_encode(const char *in, size_t n, int wbits)
{
    z_stream zs = {0};
    cr_assert_eq(deflateInit2(&zs, 9, Z_DEFLATED, wbits, 9, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, n) + 64;
    struct blob b = {malloc(cap), 0};
    zs.next_in = (unsigned char *)(uintptr_t)in;
    zs.avail_in = (uInt)n;
    zs.next_out = (unsigned char *)b.p;
    zs.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
    b.len = cap - zs.avail_out;
    deflateEnd(&zs);
    return b;
}

static struct blob gzip_encode(const char *in, size_t n)
{
    return z_encode(in, n, 15 + 16);
}

static struct blob br_encode(const char *in, size_t n)
{
    size_t cap = BrotliEncoderMaxCompressedSize(n) + 64;
    struct blob b = {malloc(cap), cap};
    cr_assert(BrotliEncoderCompress(5, 22, BROTLI_MODE_GENERIC, n, (const uint8_t *)in, &b.len,
                                    (uint8_t *)b.p));
    return b;
}

static struct blob zstd_encode(const char *in, size_t n)
{
    size_t cap = ZSTD_compressBound(n);
    struct blob b = {malloc(cap), 0};
    b.len = ZSTD_compress(b.p, cap, in, n, 3);
    cr_assert(!ZSTD_isError(b.len));
    return b;
}

static struct blob encode(enum soth_coding c, const char *in, size_t n)
{
    switch (c) {
    case SOTH_CODING_GZIP:
        return gzip_encode(in, n);
    case SOTH_CODING_DEFLATE:
        return z_encode(in, n, 15);
    case SOTH_CODING_BR:
        return br_encode(in, n);
    case SOTH_CODING_ZSTD:
        return zstd_encode(in, n);
    default: {
        struct blob b = {malloc(n + 1), n};
        memcpy(b.p, in, n);
        return b;
    }
    }
}

/* ---- running the chain */

static struct soth_decoder *dec;
static struct soth_decode_result res;

static void setup(void)
{
    dec = soth_decoder_new(NULL);
    cr_assert_not_null(dec);
}

static void teardown(void)
{
    soth_decoder_free(dec);
}

TestSuite(decode, .init = setup, .fini = teardown);

static void run(const struct soth_decode_req *req)
{
    cr_assert_eq(soth_decode_run(dec, req, &res), 0);
}

static bool iov_is(struct soth_iov v, const char *s)
{
    return v.base != NULL && v.len == strlen(s) && memcmp(v.base, s, v.len) == 0;
}

static void assert_decoders(const char *const *names, size_t n)
{
    cr_assert_eq(res.n_decoders, n, "decoders: %zu, expected %zu", res.n_decoders, n);
    for (size_t i = 0; i < n; i++)
        cr_assert(iov_is(res.decoders[i], names[i]), "decoder %zu: %.*s, expected %s", i,
                  (int)res.decoders[i].len, res.decoders[i].base, names[i]);
}
#define DECODERS(...)                                                                              \
    assert_decoders((const char *const[]){__VA_ARGS__},                                            \
                    sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

static void assert_value(const char *json)
{
    cr_assert(res.error.base == NULL, "error: %.*s", (int)res.error.len, res.error.base);
    cr_assert(iov_is(res.value, json), "value %.*s, expected %s", (int)res.value.len,
              res.value.base, json);
}

static void assert_error(const char *e)
{
    cr_assert(res.report);
    cr_assert(res.value.base == NULL);
    cr_assert(iov_is(res.error, e), "error %.*s, expected %s", (int)res.error.len,
              res.error.base ? res.error.base : "", e);
}

static void assert_valid_json(struct soth_iov v)
{
    json_error_t e;
    json_t *j = json_loadb(v.base, v.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    cr_assert_not_null(j, "not JSON (%s): %.*s", e.text, (int)v.len, v.base);
    json_decref(j);
}

static const char body_json[] = "{\"user\": {\"id\": 42, \"name\": \"ada\"}, \"tags\": [\"a\", "
                                "\"b\"], \"ok\": true, \"pi\": 3.25, \"none\": null}";
static const char body_value[] =
    "{\"user\":{\"id\":42,\"name\":\"ada\"},\"tags\":[\"a\",\"b\"],\"ok\":true,\"pi\":3.25,"
    "\"none\":null}";

/* ---- codings */

Test(decode, coding_parse)
{
    enum soth_coding c[4];
    cr_assert_eq(soth_coding_parse(SOTH_IOV_LIT("gzip"), c, 4), 1);
    cr_assert_eq(c[0], SOTH_CODING_GZIP);
    cr_assert_eq(soth_coding_parse(SOTH_IOV_LIT(" gzip , BR,identity,zstd, deflate"), c, 4), 4);
    cr_assert_eq(c[0], SOTH_CODING_GZIP);
    cr_assert_eq(c[1], SOTH_CODING_BR);
    cr_assert_eq(c[2], SOTH_CODING_ZSTD);
    cr_assert_eq(c[3], SOTH_CODING_DEFLATE);
    cr_assert_eq(soth_coding_parse(SOTH_IOV_LIT("identity"), c, 4), 0);
    cr_assert_eq(soth_coding_parse(SOTH_IOV_LIT(""), c, 4), 0);
    cr_assert_eq(soth_coding_parse(SOTH_IOV_LIT("x-gzip, compress"), c, 4), 2);
    cr_assert_eq(c[0], SOTH_CODING_GZIP);
    cr_assert_eq(c[1], SOTH_CODING_UNKNOWN);
    cr_assert_eq(soth_coding_parse(SOTH_IOV_LIT("gzip,gzip,gzip"), c, 2), SOTH_E_TOO_LARGE);
    cr_assert_str_eq(soth_coding_name(SOTH_CODING_BR), "br");
    cr_assert_str_eq(soth_payload_format_name(SOTH_FMT_MSGPACK), "msgpack");
}

Test(decode, plain_json)
{
    run(&(struct soth_decode_req){
        .data = body_json, .len = strlen(body_json), .format = SOTH_FMT_JSON});
    cr_assert(res.report);
    DECODERS("json");
    cr_assert_eq(res.format, SOTH_FMT_JSON);
    cr_assert(!res.sanitized);
    assert_value(body_value);
}

static void coding_roundtrip(enum soth_coding c, const char *name)
{
    struct blob b = encode(c, body_json, strlen(body_json));
    run(&(struct soth_decode_req){
        .data = b.p, .len = b.len, .codings = {c}, .n_codings = 1, .format = SOTH_FMT_JSON});
    DECODERS(name, "json");
    assert_value(body_value);
    free(b.p);
}

Test(decode, gzip_json)
{
    coding_roundtrip(SOTH_CODING_GZIP, "gzip");
}
Test(decode, deflate_zlib_json)
{
    coding_roundtrip(SOTH_CODING_DEFLATE, "deflate");
}
Test(decode, br_json)
{
    coding_roundtrip(SOTH_CODING_BR, "br");
}
Test(decode, zstd_json)
{
    coding_roundtrip(SOTH_CODING_ZSTD, "zstd");
}

Test(decode, deflate_raw_accepted)
{
    struct blob b = z_encode(body_json, strlen(body_json), -15);
    run(&(struct soth_decode_req){.data = b.p,
                                  .len = b.len,
                                  .codings = {SOTH_CODING_DEFLATE},
                                  .n_codings = 1,
                                  .format = SOTH_FMT_JSON});
    DECODERS("deflate", "json");
    assert_value(body_value);
    free(b.p);
}

Test(decode, gzip_members_concatenated)
{
    struct blob a = gzip_encode("{\"a\":", 5);
    struct blob b = gzip_encode("[1,2]}", 6);
    char *both = malloc(a.len + b.len);
    memcpy(both, a.p, a.len);
    memcpy(both + a.len, b.p, b.len);
    run(&(struct soth_decode_req){.data = both,
                                  .len = a.len + b.len,
                                  .codings = {SOTH_CODING_GZIP},
                                  .n_codings = 1,
                                  .format = SOTH_FMT_JSON});
    assert_value("{\"a\":[1,2]}");
    free(a.p);
    free(b.p);
    free(both);
}

Test(decode, two_codings_undone_in_reverse)
{
    /* Content-Encoding: gzip, br -> gzip applied first, br last: br is undone first. */
    struct blob g = gzip_encode(body_json, strlen(body_json));
    struct blob b = br_encode(g.p, g.len);
    run(&(struct soth_decode_req){.data = b.p,
                                  .len = b.len,
                                  .codings = {SOTH_CODING_GZIP, SOTH_CODING_BR},
                                  .n_codings = 2,
                                  .format = SOTH_FMT_JSON});
    DECODERS("br", "gzip", "json");
    assert_value(body_value);
    free(g.p);
    free(b.p);
}

/* ---- the order of the stages is fixed */

static struct blob pack_map(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "k", 1);
    msgpack_pack_int(&pk, -5);
    msgpack_pack_str_with_body(&pk, "list", 4);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    msgpack_pack_double(&pk, 0.5);
    msgpack_pack_nil(&pk);
    struct blob b = {malloc(sb.size), sb.size};
    memcpy(b.p, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return b;
}
#define MAP_VALUE "{\"k\":-5,\"list\":[18446744073709551615,0.5,null]}"

Test(decode, order_content_framing_message_payload)
{
    /* Stage order: content coding -> framing -> message coding -> payload. */
    struct blob m = pack_map();
    struct blob z = zstd_encode(m.p, m.len);
    struct blob g = gzip_encode(z.p, z.len);
    run(&(struct soth_decode_req){.data = g.p,
                                  .len = g.len,
                                  .codings = {SOTH_CODING_GZIP},
                                  .n_codings = 1,
                                  .framing = SOTH_FRAMING_GRPC,
                                  .message_coding = SOTH_CODING_ZSTD,
                                  .format = SOTH_FMT_MSGPACK});
    DECODERS("gzip", "grpc", "zstd", "msgpack");
    cr_assert_eq(res.format, SOTH_FMT_MSGPACK);
    assert_value(MAP_VALUE);
    free(m.p);
    free(z.p);
    free(g.p);
}

Test(decode, order_gzip_grpc_msgpack)
{
    struct blob m = pack_map();
    struct blob g = gzip_encode(m.p, m.len);
    run(&(struct soth_decode_req){.data = g.p,
                                  .len = g.len,
                                  .codings = {SOTH_CODING_GZIP},
                                  .n_codings = 1,
                                  .framing = SOTH_FRAMING_GRPC,
                                  .format = SOTH_FMT_MSGPACK});
    DECODERS("gzip", "grpc", "msgpack");
    assert_value(MAP_VALUE);
    free(m.p);
    free(g.p);
}

Test(decode, grpc_message_coding_then_json)
{
    struct blob g = gzip_encode(body_json, strlen(body_json));
    run(&(struct soth_decode_req){.data = g.p,
                                  .len = g.len,
                                  .framing = SOTH_FRAMING_GRPC,
                                  .message_coding = SOTH_CODING_GZIP,
                                  .format = SOTH_FMT_PROTO});
    DECODERS("grpc", "gzip", "json");
    assert_value(body_value);
    free(g.p);
}

Test(decode, framing_names)
{
    static const char *const names[] = {"grpc", "sse", "ws"};
    enum soth_framing f[] = {SOTH_FRAMING_GRPC, SOTH_FRAMING_SSE, SOTH_FRAMING_WS};
    for (int i = 0; i < 3; i++) {
        run(&(struct soth_decode_req){
            .data = "[1]", .len = 3, .framing = f[i], .format = SOTH_FMT_JSON});
        assert_decoders((const char *const[]){names[i], "json"}, 2);
        assert_value("[1]");
    }
}

/* ---- failures: each stage reports its own */

Test(decode, corrupt_gzip)
{
    run(&(struct soth_decode_req){.data = "\x1f\x8b\x08\x00garbagegarbage",
                                  .len = 18,
                                  .codings = {SOTH_CODING_GZIP},
                                  .n_codings = 1,
                                  .format = SOTH_FMT_JSON});
    DECODERS("gzip");
    assert_error("gzip: corrupt data");
    cr_assert_eq(res.format, SOTH_FMT_UNKNOWN);
}

Test(decode, corrupt_br_and_zstd)
{
    run(&(struct soth_decode_req){.data = "\xff\xff\xff\xff",
                                  .len = 4,
                                  .codings = {SOTH_CODING_BR},
                                  .n_codings = 1,
                                  .format = SOTH_FMT_JSON});
    assert_error("br: corrupt data");
    run(&(struct soth_decode_req){.data = "not zstd at all",
                                  .len = 15,
                                  .codings = {SOTH_CODING_ZSTD},
                                  .n_codings = 1,
                                  .format = SOTH_FMT_JSON});
    assert_error("zstd: corrupt data");
}

Test(decode, unsupported_coding)
{
    run(&(struct soth_decode_req){.data = "x",
                                  .len = 1,
                                  .codings = {SOTH_CODING_UNKNOWN},
                                  .n_codings = 1,
                                  .format = SOTH_FMT_JSON});
    DECODERS("unknown");
    assert_error("unknown: unsupported coding");
}

Test(decode, unexpected_end_without_truncation)
{
    enum soth_coding cs[] = {SOTH_CODING_GZIP, SOTH_CODING_BR, SOTH_CODING_ZSTD};
    const char *errs[] = {"gzip: unexpected end of data", "br: unexpected end of data",
                          "zstd: unexpected end of data"};
    for (int i = 0; i < 3; i++) {
        struct blob b = encode(cs[i], body_json, strlen(body_json));
        run(&(struct soth_decode_req){.data = b.p,
                                      .len = b.len - 4,
                                      .codings = {cs[i]},
                                      .n_codings = 1,
                                      .format = SOTH_FMT_JSON});
        assert_error(errs[i]);
        free(b.p);
    }
}

Test(decode, truncated_prefix_reports_truncated)
{
    enum soth_coding cs[] = {SOTH_CODING_IDENTITY, SOTH_CODING_GZIP, SOTH_CODING_BR,
                             SOTH_CODING_ZSTD};
    for (int i = 0; i < 4; i++) {
        struct blob b = encode(cs[i], body_json, strlen(body_json));
        run(&(struct soth_decode_req){.data = b.p,
                                      .len = b.len / 2,
                                      .truncated = true,
                                      .codings = {cs[i]},
                                      .n_codings = 1,
                                      .format = SOTH_FMT_JSON});
        assert_error("truncated");
        cr_assert_eq(res.format, SOTH_FMT_JSON);
        cr_assert_eq(res.n_decoders, cs[i] == SOTH_CODING_IDENTITY ? 1u : 2u);
        free(b.p);
    }
}

static void bomb(enum soth_coding c, const char *err)
{
    size_t n = 64 << 20; /* 64 MiB of zeros */
    char *z = calloc(1, n);
    struct blob b = encode(c, z, n);
    free(z);
    cr_assert(b.len < n / 200);
    run(&(struct soth_decode_req){
        .data = b.p, .len = b.len, .codings = {c}, .n_codings = 1, .format = SOTH_FMT_JSON});
    assert_error(err);
    free(b.p);
}

Test(decode, gzip_bomb)
{
    bomb(SOTH_CODING_GZIP, "gzip: bomb");
}
Test(decode, br_bomb)
{
    bomb(SOTH_CODING_BR, "br: bomb");
}
Test(decode, zstd_bomb)
{
    bomb(SOTH_CODING_ZSTD, "zstd: bomb");
}

Test(decode, big_output_within_ratio_is_cut_not_bomb)
{
    /* Incompressible-ish JSON over max_output: cut at the bound, reported as truncated. */
    struct soth_decode_limits lim = {.max_output = 8192};
    struct soth_decoder *d = soth_decoder_new(&lim);
    size_t n = 20000;
    char *s = malloc(n);
    uint32_t x = 1;
    s[0] = '"';
    for (size_t i = 1; i < n - 1; i++) {
        x = x * 1103515245u + 12345u;
        s[i] = (char)('a' + (x >> 16) % 26);
    }
    s[n - 1] = '"';
    struct blob b = gzip_encode(s, n);
    struct soth_decode_result r;
    cr_assert_eq(soth_decode_run(d,
                                 &(struct soth_decode_req){.data = b.p,
                                                           .len = b.len,
                                                           .codings = {SOTH_CODING_GZIP},
                                                           .n_codings = 1,
                                                           .format = SOTH_FMT_JSON},
                                 &r),
                 0);
    cr_assert(iov_is(r.error, "truncated"));
    soth_decoder_free(d);
    free(s);
    free(b.p);
}

Test(decode, json_errors)
{
    run(&(struct soth_decode_req){.data = "{\"a\":}", .len = 6, .format = SOTH_FMT_JSON});
    DECODERS("json");
    assert_error("json: syntax error at offset 6");
    run(&(struct soth_decode_req){.data = "[1] x", .len = 5, .format = SOTH_FMT_JSON});
    assert_error("json: trailing bytes");
    run(&(struct soth_decode_req){.data = "\"\xff\"", .len = 3, .format = SOTH_FMT_JSON});
    assert_error("json: invalid UTF-8");
    char deep[64];
    memset(deep, '[', 30);
    memset(deep + 30, ']', 30);
    run(&(struct soth_decode_req){.data = deep, .len = 60, .format = SOTH_FMT_JSON});
    assert_error("json: nesting too deep");
    run(&(struct soth_decode_req){.data = deep, .len = 40, .format = SOTH_FMT_JSON});
    assert_error("json: unexpected end of input");
}

Test(decode, json_scalars_and_big_numbers)
{
    run(&(struct soth_decode_req){
        .data = "[12345678901234567890, -1, 1e3, 0.1, \"\\u0000\\n\"]",
        .len = strlen("[12345678901234567890, -1, 1e3, 0.1, \"\\u0000\\n\"]"),
        .format = SOTH_FMT_JSON});
    assert_valid_json(res.value);
    assert_value("[1.2345678901234567e+19,-1,1000,0.1,\"\\u0000\\n\"]");
}

/* ---- anti-hijack */

Test(decode, antihijack_prefixes)
{
    static const char *const bodies[] = {
        ")]}'\n{\"a\":1}",     ")]}',\n{\"a\":1}",          "for(;;);{\"a\":1}",
        "while(1);{\"a\":1}",  "  )]}'{\"a\":1}",           "&&&START&&&{\"a\":1}&&&END&&&",
        "{}&& {\"a\":1}",      "/*-secure-\n{\"a\":1}\n*/", "\xef\xbb\xbf)]}'\n{\"a\":1}",
        "for (;;); {\"a\":1}",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        run(&(struct soth_decode_req){.data = bodies[i],
                                      .len = strlen(bodies[i]),
                                      .format = SOTH_FMT_JSON,
                                      .sanitize = true});
        cr_assert(res.sanitized, "%s", bodies[i]);
        assert_value("{\"a\":1}");
    }
    /* no prefix: not sanitized; sanitizing off: the prefix is a syntax error */
    run(&(struct soth_decode_req){
        .data = "{\"a\":1}", .len = 7, .format = SOTH_FMT_JSON, .sanitize = true});
    cr_assert(!res.sanitized);
    assert_value("{\"a\":1}");
    run(&(struct soth_decode_req){.data = ")]}'\n[1]", .len = 8, .format = SOTH_FMT_JSON});
    cr_assert(!res.sanitized);
    cr_assert(res.error.base != NULL);
}

Test(decode, antihijack_strip_offsets)
{
    size_t tail;
    cr_assert_eq(soth_antihijack_strip(")]}'\n[]", 7, &tail), 5);
    cr_assert_eq(tail, 0);
    cr_assert_eq(soth_antihijack_strip("&&&START&&&[]&&&END&&&\n", 23, &tail), 11);
    cr_assert_eq(tail, 10);
    cr_assert_eq(soth_antihijack_strip("[]", 2, &tail), 0);
    cr_assert_eq(soth_antihijack_strip(")]}", 3, NULL), 0);
}

Test(decode, gzip_br_zstd_with_prefix_sanitized)
{
    const char *b = ")]}',\n{\"items\":[1,2,3]}";
    enum soth_coding cs[] = {SOTH_CODING_GZIP, SOTH_CODING_BR, SOTH_CODING_ZSTD};
    const char *names[] = {"gzip", "br", "zstd"};
    for (int i = 0; i < 3; i++) {
        struct blob e = encode(cs[i], b, strlen(b));
        run(&(struct soth_decode_req){.data = e.p,
                                      .len = e.len,
                                      .codings = {cs[i]},
                                      .n_codings = 1,
                                      .format = SOTH_FMT_JSON,
                                      .sanitize = true});
        assert_decoders((const char *const[]){names[i], "json"}, 2);
        cr_assert(res.sanitized);
        assert_value("{\"items\":[1,2,3]}");
        free(e.p);
    }
}

Test(decode, javascript_type_with_prefix_becomes_json)
{
    run(&(struct soth_decode_req){
        .data = "while(1);[true]", .len = 15, .format = SOTH_FMT_UNKNOWN, .sanitize = true});
    cr_assert(res.report && res.sanitized);
    cr_assert_eq(res.format, SOTH_FMT_JSON);
    assert_value("[true]");
}

/* ---- msgpack */

Test(decode, msgpack_declared)
{
    struct blob m = pack_map();
    run(&(struct soth_decode_req){.data = m.p, .len = m.len, .format = SOTH_FMT_MSGPACK});
    DECODERS("msgpack");
    cr_assert_eq(res.format, SOTH_FMT_MSGPACK);
    assert_value(MAP_VALUE);
    free(m.p);
}

Test(decode, msgpack_types)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 9);
    msgpack_pack_true(&pk);
    msgpack_pack_false(&pk);
    msgpack_pack_bin_with_body(&pk, "\x00\x01\x02\xff", 4);
    msgpack_pack_ext_with_body(&pk, "ab", 2, 7);
    msgpack_pack_double(&pk, NAN);
    msgpack_pack_float(&pk, 1.5f);
    msgpack_pack_str_with_body(&pk, "a\"\\\x01\xff", 5);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "one", 3);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_nil(&pk);
    msgpack_pack_int64(&pk, INT64_MIN);
    run(&(struct soth_decode_req){.data = sb.data, .len = sb.size, .format = SOTH_FMT_MSGPACK});
    assert_valid_json(res.value);
    assert_value("[true,false,\"AAEC/w==\",{\"ext\":7,\"data_b64\":\"YWI=\"},null,1.5,"
                 "\"a\\\"\\\\\\u0001\\ufffd\",{\"1\":\"one\",\"(array)\":null},"
                 "-9223372036854775808]");
    msgpack_sbuffer_destroy(&sb);
}

Test(decode, msgpack_malformed)
{
    run(&(struct soth_decode_req){.data = "\xc1", .len = 1, .format = SOTH_FMT_MSGPACK});
    DECODERS("msgpack");
    assert_error("msgpack: reserved byte 0xc1");
    run(&(struct soth_decode_req){.data = "\x92\x01", .len = 2, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: unexpected end of data");
    run(&(struct soth_decode_req){.data = "\x01\x02", .len = 2, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: trailing bytes");
    run(&(struct soth_decode_req){.data = "", .len = 0, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: unexpected end of data");
}

Test(decode, msgpack_huge_headers_allocate_nothing)
{
    /* array32 / map32 / str32 / bin32 / ext32 claiming ~4 G items or bytes in 5..6 bytes. */
    run(&(struct soth_decode_req){
        .data = "\xdd\xff\xff\xff\xff\x00", .len = 6, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: too many elements");
    run(&(struct soth_decode_req){
        .data = "\xdd\x00\x00\x10\x00\x00", .len = 6, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: unexpected end of data");
    run(&(struct soth_decode_req){
        .data = "\xdf\x7f\xff\xff\xff", .len = 5, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: too many elements");
    run(&(struct soth_decode_req){
        .data = "\xdb\xff\xff\xff\xff", .len = 5, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: string over the size limit");
    run(&(struct soth_decode_req){
        .data = "\xc6\x00\x00\x01\x00", .len = 5, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: unexpected end of data");
    run(&(struct soth_decode_req){
        .data = "\xc9\xff\xff\xff\xff\x01", .len = 6, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: string over the size limit");
}

Test(decode, msgpack_depth_and_elements)
{
    char deep[64];
    memset(deep, 0x91, 40); /* [[[[...]]]] */
    deep[40] = 0x01;
    run(&(struct soth_decode_req){.data = deep, .len = 41, .format = SOTH_FMT_MSGPACK});
    assert_error("msgpack: nesting too deep");
    /* 20 levels is the default limit: fine */
    run(&(struct soth_decode_req){.data = deep + 20, .len = 21, .format = SOTH_FMT_MSGPACK});
    cr_assert(res.error.base == NULL);
    assert_valid_json(res.value);

    struct soth_decode_limits lim = {.max_elements = 10};
    struct soth_decoder *d = soth_decoder_new(&lim);
    char arr[16] = {(char)0x9a};
    memset(arr + 1, 0x01, 10); /* 1 array + 10 items = 11 */
    struct soth_decode_result r;
    soth_decode_run(
        d, &(struct soth_decode_req){.data = arr, .len = 11, .format = SOTH_FMT_MSGPACK}, &r);
    cr_assert(iov_is(r.error, "msgpack: too many elements"));
    arr[0] = (char)0x99;
    soth_decode_run(
        d, &(struct soth_decode_req){.data = arr, .len = 10, .format = SOTH_FMT_MSGPACK}, &r);
    cr_assert(r.error.base == NULL);
    soth_decoder_free(d);
}

Test(decode, msgpack_to_json_direct)
{
    char out[64];
    const char *why;
    cr_assert_eq(soth_msgpack_to_json("\x81\xa1\x61\x01", 4, NULL, out, sizeof(out), &why), 7);
    cr_assert(memcmp(out, "{\"a\":1}", 7) == 0);
    cr_assert_eq(soth_msgpack_to_json("\x81\xa1\x61", 3, NULL, out, sizeof(out), &why),
                 SOTH_E_INCOMPLETE);
    cr_assert_eq(soth_msgpack_to_json("\xc1", 1, NULL, out, sizeof(out), &why), SOTH_E_MALFORMED);
    cr_assert_str_eq(why, "reserved byte 0xc1");
}

/* ---- value capping */

Test(decode, value_capped_stays_valid_json)
{
    /* Every cap from 64 to past the full length over a mixed document. */
    const char *doc = "{\"a\":[1,2,3,{\"b\":\"a long string with \\\"quotes\\\" and \\u00e9 "
                      "and more text\"}],\"c\":{\"d\":[[],{}],\"e\":\"\\u2603\"},\"f\":true}";
    size_t full = 0;
    for (uint32_t cap = 64; cap < 400; cap++) {
        struct soth_decode_limits lim = {.max_value = cap};
        struct soth_decoder *d = soth_decoder_new(&lim);
        struct soth_decode_result r;
        soth_decode_run(
            d, &(struct soth_decode_req){.data = doc, .len = strlen(doc), .format = SOTH_FMT_JSON},
            &r);
        cr_assert(r.error.base == NULL);
        cr_assert(r.value.len <= cap, "cap %u: %zu bytes", cap, r.value.len);
        struct soth_iov v = r.value;
        json_error_t e;
        json_t *j = json_loadb(v.base, v.len, JSON_DECODE_ANY, &e);
        cr_assert_not_null(j, "cap %u: %.*s", cap, (int)v.len, v.base);
        json_decref(j);
        if (cap == 399)
            full = v.len;
        soth_decoder_free(d);
    }
    cr_assert(full > 64);
}

Test(decode, msgpack_value_capped_stays_valid_json)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "bin", 3);
    msgpack_pack_bin_with_body(&pk, "0123456789abcdefghij", 20);
    msgpack_pack_str_with_body(&pk, "arr", 3);
    msgpack_pack_array(&pk, 20);
    for (int i = 0; i < 20; i++)
        msgpack_pack_int(&pk, i * 1000);
    msgpack_pack_int(&pk, 7);
    msgpack_pack_ext_with_body(&pk, "xyzxyzxyz", 9, -1);
    for (uint32_t cap = 64; cap < 300; cap++) {
        struct soth_decode_limits lim = {.max_value = cap};
        char out[512];
        const char *why;
        ssize_t n = soth_msgpack_to_json(sb.data, sb.size, &lim, out, sizeof(out), &why);
        cr_assert(n > 0 && (size_t)n <= cap);
        json_error_t e;
        json_t *j = json_loadb(out, (size_t)n, JSON_DECODE_ANY, &e);
        cr_assert_not_null(j, "cap %u: %.*s", cap, (int)n, out);
        json_decref(j);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* ---- sniffing (format not declared) */

Test(decode, sniff_proto_is_skipped)
{
    /* A protobuf message (field 1 string "abc", field 2 varint 150) */
    run(&(struct soth_decode_req){.data = "\x0a\x03\x61\x62\x63\x10\x96\x01",
                                  .len = 8,
                                  .framing = SOTH_FRAMING_GRPC,
                                  .format = SOTH_FMT_PROTO});
    cr_assert(!res.report);
    /* field 16 varint: first byte 0x80 looks like an empty fixmap but bytes remain */
    run(&(struct soth_decode_req){
        .data = "\x80\x01\x05", .len = 3, .framing = SOTH_FRAMING_GRPC, .format = SOTH_FMT_PROTO});
    cr_assert(!res.report);
    /* field 16 length-delimited: 0x82 0x01 -> a map with a non-string key */
    run(&(struct soth_decode_req){.data = "\x82\x01\x02\x61\x62",
                                  .len = 5,
                                  .framing = SOTH_FRAMING_GRPC,
                                  .format = SOTH_FMT_PROTO});
    cr_assert(!res.report);
    /* '{' that is not JSON */
    run(&(struct soth_decode_req){.data = "{\x01\x02", .len = 3, .format = SOTH_FMT_UNKNOWN});
    cr_assert(!res.report);
    /* empty */
    run(&(struct soth_decode_req){.data = "", .len = 0, .format = SOTH_FMT_PROTO});
    cr_assert(!res.report);
}

Test(decode, sniff_json_and_msgpack)
{
    run(&(struct soth_decode_req){.data = " {\"x\": [1]}",
                                  .len = 11,
                                  .framing = SOTH_FRAMING_GRPC,
                                  .format = SOTH_FMT_PROTO});
    cr_assert(res.report);
    DECODERS("grpc", "json");
    cr_assert_eq(res.format, SOTH_FMT_JSON);
    assert_value("{\"x\":[1]}");
    struct blob m = pack_map();
    run(&(struct soth_decode_req){
        .data = m.p, .len = m.len, .framing = SOTH_FRAMING_GRPC, .format = SOTH_FMT_PROTO});
    DECODERS("grpc", "msgpack");
    assert_value(MAP_VALUE);
    free(m.p);
}

Test(decode, declared_none_reports_nothing)
{
    run(&(struct soth_decode_req){.data = "{}", .len = 2, .format = SOTH_FMT_NONE});
    cr_assert(!res.report);
}

Test(decode, decoder_reused_across_runs)
{
    /* Results of one decoder object do not leak into the next run. */
    for (int i = 0; i < 50; i++) {
        struct blob m = pack_map();
        run(&(struct soth_decode_req){.data = m.p, .len = m.len, .format = SOTH_FMT_MSGPACK});
        assert_value(MAP_VALUE);
        free(m.p);
        struct blob g = gzip_encode(body_json, strlen(body_json));
        run(&(struct soth_decode_req){.data = g.p,
                                      .len = g.len,
                                      .codings = {SOTH_CODING_GZIP},
                                      .n_codings = 1,
                                      .format = SOTH_FMT_JSON});
        assert_value(body_value);
        free(g.p);
    }
}
