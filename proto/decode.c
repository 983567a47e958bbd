/*
 * The layered decoder chain (docs/streaming.md, "Layered decoders"): content decoding ->
 * framing (the caller's) -> message decoding -> anti-hijack -> payload parse, over one
 * captured message. See soth/proto/decode.h for the contract and docs/streaming.md for the design.
 *
 * Bounds, in one place:
 *  - every decompression stage writes into a buffer that grows by doubling up to
 *    max_output; past that it stops (the payload is then a prefix: "truncated"), and past
 *    max(64 KiB, max_ratio x input consumed) it fails as a bomb. zstd windows are limited to
 *    2^23 bytes (frames asking for more fail), brotli and zlib windows are fixed by format;
 *  - msgpack input is walked once by scan_msgpack (iterative, depth <= 30) before msgpack-c
 *    sees it: a container header may not claim more items than bytes remain, so msgpack-c's
 *    zone stays below ~24 bytes per input byte, and its own 32-level stack is never hit;
 *  - JSON input is at most max_output bytes (jansson builds its tree from that);
 *  - the value text is written by a writer that reserves room for every bracket it opened,
 *    so a capped value is still one valid JSON text.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <brotli/decode.h>
#include <jansson.h>
#include <msgpack.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "soth/proto/decode.h"

#define DEC_DEF_MAX_OUTPUT   (256u << 10)
#define DEC_DEF_MAX_RATIO    100u
#define DEC_DEF_MAX_DEPTH    20u
#define DEC_MAX_DEPTH        30u /* msgpack-c unpacks with a 32-level stack */
#define DEC_DEF_MAX_ELEMENTS 16384u
#define DEC_DEF_MAX_STR      (64u << 10)
#define DEC_DEF_MAX_VALUE    (16u << 10)
#define DEC_MIN_VALUE        64u
#define DEC_BOMB_FLOOR       (64u << 10) /* outputs below this are never called bombs */
#define DEC_ZSTD_WINDOW_LOG  23
#define DEC_KEEP_SCRATCH     (64u << 10) /* stage buffers kept between runs */
#define DEC_STEP             (16u << 10) /* output granted per decompression call */

struct dbuf {
    char *p;
    size_t len, cap;
};

struct soth_decoder {
    struct soth_decode_limits lim;
    struct dbuf stage[2]; /* outputs of decoding stages, used in turn */
    struct dbuf val;      /* the value text, cap <= max_value */
    ZSTD_DCtx *zstd;      /* created on first use, reset per frame run */
    char err[160];
};

/* ---- names */

static const char *const format_names[SOTH_FMT_COUNT] = {
    [SOTH_FMT_UNKNOWN] = "unknown", [SOTH_FMT_JSON] = "json", [SOTH_FMT_MSGPACK] = "msgpack",
    [SOTH_FMT_PROTO] = "proto",     [SOTH_FMT_NONE] = "none",
};

const char *soth_payload_format_name(enum soth_payload_format f)
{
    return (unsigned)f < SOTH_FMT_COUNT ? format_names[f] : "unknown";
}

/* ---- content types */

static struct soth_iov trim(struct soth_iov v)
{
    while (v.len > 0 && (v.base[0] == ' ' || v.base[0] == '\t')) {
        v.base++;
        v.len--;
    }
    while (v.len > 0 && (v.base[v.len - 1] == ' ' || v.base[v.len - 1] == '\t'))
        v.len--;
    return v;
}

/* The media type without parameters, trimmed. */
static struct soth_iov media_type(struct soth_iov ct)
{
    for (size_t i = 0; i < ct.len; i++)
        if (ct.base[i] == ';') {
            ct.len = i;
            break;
        }
    return trim(ct);
}

bool soth_grpc_content_type(struct soth_iov content_type, enum soth_payload_format *fmt)
{
    static const char base[] = "application/grpc";
    struct soth_iov t = media_type(content_type);
    if (!soth_iov_prefix_ci(t, base, sizeof(base) - 1))
        return false;
    struct soth_iov sub = {t.base + sizeof(base) - 1, t.len - (sizeof(base) - 1)};
    enum soth_payload_format f;
    if (sub.len == 0) {
        f = SOTH_FMT_PROTO;
    } else if (sub.base[0] != '+' || sub.len == 1) {
        return false; /* "application/grpc-web", "application/grpcx" */
    } else {
        sub.base++;
        sub.len--;
        if (soth_iov_is_ci(sub, "proto"))
            f = SOTH_FMT_PROTO;
        else if (soth_iov_is_ci(sub, "json"))
            f = SOTH_FMT_JSON;
        else if (soth_iov_is_ci(sub, "msgpack"))
            f = SOTH_FMT_MSGPACK;
        else
            f = SOTH_FMT_UNKNOWN;
    }
    if (fmt != NULL)
        *fmt = f;
    return true;
}

enum soth_payload_format soth_payload_format_of(struct soth_iov content_type)
{
    struct soth_iov t = media_type(content_type);
    if (t.len == 0)
        return SOTH_FMT_NONE;
    if (soth_iov_is_ci(t, "application/json") || soth_iov_is_ci(t, "text/json") ||
        soth_iov_is_ci(t, "application/x-json"))
        return SOTH_FMT_JSON;
    if (t.len > 5 && soth_iov_prefix_ci((struct soth_iov){t.base + t.len - 5, 5}, "+json", 5))
        return SOTH_FMT_JSON;
    if (soth_iov_is_ci(t, "application/msgpack") || soth_iov_is_ci(t, "application/x-msgpack") ||
        soth_iov_is_ci(t, "application/vnd.msgpack"))
        return SOTH_FMT_MSGPACK;
    if (soth_iov_is_ci(t, "text/javascript") || soth_iov_is_ci(t, "application/javascript") ||
        soth_iov_is_ci(t, "application/x-javascript"))
        return SOTH_FMT_UNKNOWN;
    return SOTH_FMT_NONE;
}

static const char *const coding_names[SOTH_CODING_COUNT] = {
    [SOTH_CODING_IDENTITY] = "identity", [SOTH_CODING_GZIP] = "gzip",
    [SOTH_CODING_DEFLATE] = "deflate",   [SOTH_CODING_BR] = "br",
    [SOTH_CODING_ZSTD] = "zstd",         [SOTH_CODING_UNKNOWN] = "unknown",
};

const char *soth_coding_name(enum soth_coding c)
{
    return (unsigned)c < SOTH_CODING_COUNT ? coding_names[c] : "unknown";
}

static const char *const framing_names[SOTH_FRAMING_COUNT] = {
    [SOTH_FRAMING_NONE] = "",
    [SOTH_FRAMING_GRPC] = "grpc",
    [SOTH_FRAMING_SSE] = "sse",
    [SOTH_FRAMING_WS] = "ws",
};

int soth_coding_parse(struct soth_iov value, enum soth_coding *out, size_t max)
{
    size_t n = 0, i = 0;
    while (i < value.len) {
        size_t j = i;
        while (j < value.len && value.base[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && (value.base[a] == ' ' || value.base[a] == '\t'))
            a++;
        while (b > a && (value.base[b - 1] == ' ' || value.base[b - 1] == '\t'))
            b--;
        const char *t = value.base + a;
        size_t tl = b - a;
        enum soth_coding c;
        if (tl == 0 || soth_iov_is_ci(soth_iov(t, tl), "identity"))
            c = SOTH_CODING_IDENTITY;
        else if (soth_iov_is_ci(soth_iov(t, tl), "gzip") ||
                 soth_iov_is_ci(soth_iov(t, tl), "x-gzip"))
            c = SOTH_CODING_GZIP;
        else if (soth_iov_is_ci(soth_iov(t, tl), "deflate"))
            c = SOTH_CODING_DEFLATE;
        else if (soth_iov_is_ci(soth_iov(t, tl), "br"))
            c = SOTH_CODING_BR;
        else if (soth_iov_is_ci(soth_iov(t, tl), "zstd"))
            c = SOTH_CODING_ZSTD;
        else
            c = SOTH_CODING_UNKNOWN;
        if (c != SOTH_CODING_IDENTITY) {
            if (n >= max)
                return SOTH_E_TOO_LARGE;
            out[n++] = c;
        }
        i = j + 1;
    }
    return (int)n;
}

/* ---- decoder object */

static struct soth_decode_limits eff_limits(const struct soth_decode_limits *l)
{
    struct soth_decode_limits e = {0};
    if (l != NULL)
        e = *l;
    if (e.max_output == 0)
        e.max_output = DEC_DEF_MAX_OUTPUT;
    if (e.max_ratio == 0)
        e.max_ratio = DEC_DEF_MAX_RATIO;
    if (e.max_depth == 0)
        e.max_depth = DEC_DEF_MAX_DEPTH;
    if (e.max_depth > DEC_MAX_DEPTH)
        e.max_depth = DEC_MAX_DEPTH;
    if (e.max_elements == 0)
        e.max_elements = DEC_DEF_MAX_ELEMENTS;
    if (e.max_str == 0)
        e.max_str = DEC_DEF_MAX_STR;
    if (e.max_value == 0)
        e.max_value = DEC_DEF_MAX_VALUE;
    if (e.max_value < DEC_MIN_VALUE)
        e.max_value = DEC_MIN_VALUE;
    return e;
}

struct soth_decoder *soth_decoder_new(const struct soth_decode_limits *limits)
{
    struct soth_decoder *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->lim = eff_limits(limits);
    return d;
}

void soth_decoder_free(struct soth_decoder *d)
{
    if (d == NULL)
        return;
    free(d->stage[0].p);
    free(d->stage[1].p);
    free(d->val.p);
    ZSTD_freeDCtx(d->zstd);
    free(d);
}

/* Make room for at least `want` more bytes, doubling, never beyond `max` in total. Returns
 * the room available (possibly less than want; 0 at the bound or on allocation failure). */
static size_t dbuf_room(struct dbuf *b, size_t want, size_t max)
{
    if (b->cap - b->len >= want || b->cap >= max)
        return b->cap - b->len;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < want && cap < max)
        cap = cap > max / 2 ? max : cap * 2;
    if (cap > max)
        cap = max;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return b->cap - b->len;
    b->p = p;
    b->cap = cap;
    return b->cap - b->len;
}

/* ---- content and message decoding (stages 1 and 3) */

enum dec_rc {
    DEC_OK = 0, /* the whole input decoded */
    DEC_CUT,    /* output reached max_output, or the (truncated) input ended early */
    DEC_ERR,    /* corrupt input: why says */
    DEC_BOMB,   /* ratio over the bound */
    DEC_NOMEM,  /* scratch could not grow */
};

struct dec_io {
    const unsigned char *in;
    size_t in_len;
    bool in_trunc; /* the input is a prefix: running out of it is not an error */
    struct dbuf *out;
    size_t max_out;
    uint32_t ratio;
    const char *why;
};

static bool is_bomb(const struct dec_io *io, size_t consumed)
{
    size_t out = io->out->len;
    return out > DEC_BOMB_FLOOR && out / io->ratio > consumed;
}

static enum dec_rc run_zlib(struct dec_io *io, enum soth_coding c)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    int wbits = 15 + 16; /* gzip */
    if (c == SOTH_CODING_DEFLATE) {
        /* RFC 9110 "deflate" is a zlib stream; some servers send raw deflate: a valid zlib
         * header (CM 8, FCHECK) tells which. */
        bool zlib_hdr = io->in_len >= 2 && (io->in[0] & 0x0f) == 8 && (io->in[0] >> 4) <= 7 &&
                        ((unsigned)io->in[0] << 8 | io->in[1]) % 31 == 0;
        wbits = zlib_hdr || io->in_len < 2 ? 15 : -15;
    }
    if (inflateInit2(&zs, wbits) != Z_OK)
        return DEC_NOMEM;
    zs.next_in = (unsigned char *)(uintptr_t)io->in;
    zs.avail_in = (uInt)(io->in_len > UINT32_MAX ? UINT32_MAX : io->in_len);
    enum dec_rc rc = DEC_OK;
    for (;;) {
        size_t room = dbuf_room(io->out, DEC_STEP, io->max_out);
        if (room == 0) {
            rc = io->out->cap < io->max_out ? DEC_NOMEM : DEC_CUT;
            break;
        }
        zs.next_out = (unsigned char *)io->out->p + io->out->len;
        zs.avail_out = (uInt)(room > DEC_STEP ? DEC_STEP : room);
        uInt before = zs.avail_out, before_in = zs.avail_in;
        int z = inflate(&zs, Z_NO_FLUSH);
        io->out->len += before - zs.avail_out;
        bool moved = zs.avail_out != before || zs.avail_in != before_in;
        if (is_bomb(io, io->in_len - zs.avail_in)) {
            rc = DEC_BOMB;
            break;
        }
        if (z == Z_STREAM_END) {
            /* Concatenated gzip members (RFC 1952 2.2) go on; other trailing bytes are
             * ignored, as browsers do. */
            if (c == SOTH_CODING_GZIP && zs.avail_in >= 2 && zs.next_in[0] == 0x1f &&
                zs.next_in[1] == 0x8b) {
                if (inflateReset(&zs) != Z_OK) {
                    rc = DEC_ERR;
                    io->why = "corrupt data";
                    break;
                }
                continue;
            }
            break;
        }
        if (z == Z_OK)
            continue;
        if (z == Z_BUF_ERROR && zs.avail_in == 0) {
            if (io->in_trunc) {
                rc = DEC_CUT;
            } else {
                rc = DEC_ERR;
                io->why = "unexpected end of data";
            }
            break;
        }
        if (z == Z_BUF_ERROR && moved)
            continue; /* output full: the next round grows it or stops at the bound */
        rc = z == Z_MEM_ERROR ? DEC_NOMEM : DEC_ERR;
        io->why = "corrupt data";
        break;
    }
    inflateEnd(&zs);
    return rc;
}

static enum dec_rc run_brotli(struct dec_io *io)
{
    BrotliDecoderState *s = BrotliDecoderCreateInstance(NULL, NULL, NULL);
    if (s == NULL)
        return DEC_NOMEM;
    const uint8_t *next_in = io->in;
    size_t avail_in = io->in_len;
    enum dec_rc rc = DEC_OK;
    for (;;) {
        size_t room = dbuf_room(io->out, DEC_STEP, io->max_out);
        if (room == 0) {
            rc = io->out->cap < io->max_out ? DEC_NOMEM : DEC_CUT;
            break;
        }
        size_t avail_out = room > DEC_STEP ? DEC_STEP : room, before = avail_out;
        uint8_t *next_out = (uint8_t *)io->out->p + io->out->len;
        BrotliDecoderResult r =
            BrotliDecoderDecompressStream(s, &avail_in, &next_in, &avail_out, &next_out, NULL);
        io->out->len += before - avail_out;
        if (is_bomb(io, io->in_len - avail_in)) {
            rc = DEC_BOMB;
            break;
        }
        if (r == BROTLI_DECODER_RESULT_SUCCESS)
            break;
        if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT)
            continue;
        if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) {
            if (io->in_trunc) {
                rc = DEC_CUT;
            } else {
                rc = DEC_ERR;
                io->why = "unexpected end of data";
            }
            break;
        }
        rc = DEC_ERR;
        io->why = "corrupt data";
        break;
    }
    BrotliDecoderDestroyInstance(s);
    return rc;
}

static enum dec_rc run_zstd(struct soth_decoder *d, struct dec_io *io)
{
    if (d->zstd == NULL) {
        d->zstd = ZSTD_createDCtx();
        if (d->zstd == NULL)
            return DEC_NOMEM;
    }
    ZSTD_DCtx_reset(d->zstd, ZSTD_reset_session_and_parameters);
    ZSTD_DCtx_setParameter(d->zstd, ZSTD_d_windowLogMax, DEC_ZSTD_WINDOW_LOG);
    ZSTD_inBuffer in = {io->in, io->in_len, 0};
    size_t hint = 1;
    for (;;) {
        if (in.pos == in.size && hint == 0)
            return DEC_OK; /* every frame ended */
        size_t room = dbuf_room(io->out, DEC_STEP, io->max_out);
        if (room == 0)
            return io->out->cap < io->max_out ? DEC_NOMEM : DEC_CUT;
        ZSTD_outBuffer out = {io->out->p + io->out->len, room > DEC_STEP ? DEC_STEP : room, 0};
        size_t before_in = in.pos;
        hint = ZSTD_decompressStream(d->zstd, &out, &in);
        io->out->len += out.pos;
        if (ZSTD_isError(hint)) {
            io->why = ZSTD_getErrorCode(hint) == ZSTD_error_frameParameter_windowTooLarge
                          ? "window too large"
                          : "corrupt data";
            return DEC_ERR;
        }
        if (is_bomb(io, in.pos))
            return DEC_BOMB;
        if (hint != 0 && in.pos == in.size && out.pos < out.size) {
            /* Output room was left and all input is consumed: the frame needs more. */
            if (io->in_trunc)
                return DEC_CUT;
            io->why = "unexpected end of data";
            return DEC_ERR;
        }
        if (out.pos == 0 && in.pos == before_in) {
            if (hint == 0)
                return DEC_OK;
            io->why = "corrupt data"; /* no progress possible */
            return DEC_ERR;
        }
    }
}

static enum dec_rc decompress(struct soth_decoder *d, enum soth_coding c, struct dec_io *io)
{
    switch (c) {
    case SOTH_CODING_GZIP:
    case SOTH_CODING_DEFLATE:
        return run_zlib(io, c);
    case SOTH_CODING_BR:
        return run_brotli(io);
    case SOTH_CODING_ZSTD:
        return run_zstd(d, io);
    default:
        io->why = "unsupported coding";
        return DEC_ERR;
    }
}

/* ---- anti-hijack (stage 4) */

struct ah_prefix {
    const char *head;
    const char *tail; /* suffix dropped when present, or NULL */
};

/* Longest first where one is a prefix of another ()]}', before )]}'). */
static const struct ah_prefix ah_prefixes[] = {
    {")]}',", NULL},      /* AngularJS */
    {")]}'", NULL},       /* Google */
    {"for(;;);", NULL},   /* Facebook */
    {"for (;;);", NULL},  /* */
    {"while(1);", NULL},  /* Google, Salesforce */
    {"while (1);", NULL}, /* */
    {"&&&START&&&", "&&&END&&&"},
    {"{}&&", NULL},       /* Dojo */
    {"/*-secure-", "*/"}, /* Prototype.js */
};

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *p, size_t n, size_t i)
{
    while (i < n && is_ws(p[i]))
        i++;
    return i;
}

/* Leading whitespace and one UTF-8 BOM. */
static size_t skip_lead(const char *p, size_t n)
{
    size_t i = skip_ws(p, n, 0);
    if (n - i >= 3 && memcmp(p + i, "\xef\xbb\xbf", 3) == 0)
        i = skip_ws(p, n, i + 3);
    return i;
}

size_t soth_antihijack_strip(const char *p, size_t n, size_t *tail_len)
{
    if (tail_len != NULL)
        *tail_len = 0;
    size_t i = skip_lead(p, n);
    for (size_t k = 0; k < sizeof(ah_prefixes) / sizeof(ah_prefixes[0]); k++) {
        size_t hl = strlen(ah_prefixes[k].head);
        if (n - i < hl || memcmp(p + i, ah_prefixes[k].head, hl) != 0)
            continue;
        size_t start = skip_ws(p, n, i + hl);
        if (ah_prefixes[k].tail != NULL && tail_len != NULL) {
            size_t tl = strlen(ah_prefixes[k].tail);
            size_t end = n;
            while (end > start && is_ws(p[end - 1]))
                end--;
            if (end - start >= tl && memcmp(p + end - tl, ah_prefixes[k].tail, tl) == 0)
                *tail_len = n - (end - tl);
        }
        return start;
    }
    return 0;
}

/* ---- the value writer: valid JSON within a byte budget */

struct jw {
    char *p;
    size_t len, cap;
    size_t close; /* bytes reserved for closing what is open */
    bool full;    /* something did not fit: everything after is dropped */
};

static bool jw_fits(const struct jw *w, size_t n)
{
    return !w->full && w->len + n + w->close <= w->cap;
}

static void jw_raw(struct jw *w, const char *s, size_t n)
{
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

/* Escaped form of one input unit at s as part of a JSON string body (invalid UTF-8 becomes
 * \ufffd): returns the input length consumed and fills esc. */
static size_t esc_unit(const unsigned char *s, size_t n, char esc[8], size_t *esc_len)
{
    static const char hex[] = "0123456789abcdef";
    unsigned c = s[0];
    if (c == '"' || c == '\\') {
        esc[0] = '\\';
        esc[1] = (char)c;
        *esc_len = 2;
        return 1;
    }
    if (c < 0x20) {
        const char *short_esc = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        if (short_esc != NULL) {
            memcpy(esc, short_esc, 2);
            *esc_len = 2;
        } else {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            *esc_len = 6;
        }
        return 1;
    }
    size_t l = soth_utf8_seq_len(s, n);
    if (l == 0) {
        memcpy(esc, "\\ufffd", 6);
        *esc_len = 6;
        return 1;
    }
    memcpy(esc, s, l);
    *esc_len = l;
    return l;
}

static size_t str_esc_len(const char *s, size_t n)
{
    size_t total = 0;
    char esc[8];
    for (size_t i = 0; i < n;) {
        size_t el;
        i += esc_unit((const unsigned char *)s + i, n - i, esc, &el);
        total += el;
    }
    return total;
}

/* Write "s" (escaped) preceded by pre[0..pre_len); cut the string when `cut` and it does not
 * fit whole. Returns false when nothing was written. */
static bool jw_str(struct jw *w, const char *pre, size_t pre_len, const char *s, size_t n, bool cut)
{
    size_t need = pre_len + 2 + str_esc_len(s, n);
    if (!jw_fits(w, need) && !(cut && jw_fits(w, pre_len + 2)))
        return false;
    bool whole = jw_fits(w, need);
    jw_raw(w, pre, pre_len);
    jw_raw(w, "\"", 1);
    char esc[8];
    for (size_t i = 0; i < n;) {
        size_t el;
        size_t k = esc_unit((const unsigned char *)s + i, n - i, esc, &el);
        if (!whole && !jw_fits(w, el + 1))
            break;
        jw_raw(w, esc, el);
        i += k;
    }
    jw_raw(w, "\"", 1);
    if (!whole)
        w->full = true;
    return true;
}

/* A scalar token (number, literal) after pre. */
static bool jw_tok(struct jw *w, const char *pre, size_t pre_len, const char *t, size_t n)
{
    if (!jw_fits(w, pre_len + n)) {
        w->full = true;
        return false;
    }
    jw_raw(w, pre, pre_len);
    jw_raw(w, t, n);
    return true;
}

static bool jw_open(struct jw *w, const char *pre, size_t pre_len, char open)
{
    if (!jw_fits(w, pre_len + 2)) {
        w->full = true;
        return false;
    }
    jw_raw(w, pre, pre_len);
    jw_raw(w, &open, 1);
    w->close++;
    return true;
}

static void jw_close(struct jw *w, char close)
{
    w->close--;
    jw_raw(w, &close, 1);
}

/* Shortest text that reads back as the same double; null for NaN and infinities. */
static size_t fmt_double(double v, char *buf, size_t cap)
{
    if (!isfinite(v)) {
        memcpy(buf, "null", 4);
        return 4;
    }
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return (size_t)n;
}

/* Separator and optional key prefix of the next item: ",", "\"key\":" ... built by callers. */
struct jctx {
    struct jw *w;
    unsigned depth, max_depth;
    const char *why;
};

/* ---- JSON (jansson) -> value */

static bool json_emit(struct jctx *c, json_t *v, const char *pre, size_t pre_len);

static bool json_emit_items(struct jctx *c, json_t *v)
{
    char pre[2] = {',', 0};
    bool first = true;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (!json_emit(c, e, pre, first ? 0 : 1))
                return false;
            first = false;
            if (c->w->full)
                return true;
        }
        return true;
    }
    const char *key;
    json_t *e;
    json_object_foreach(v, key, e)
    {
        /* key + ':' as the prefix of the value: a member is written whole or not at all. */
        size_t klen = strlen(key);
        size_t kel = str_esc_len(key, klen);
        if (!jw_fits(c->w, (first ? 0 : 1) + kel + 3 + 1)) {
            c->w->full = true;
            return true;
        }
        char tmp[4096];
        struct jw kw = {tmp, 0, sizeof(tmp), 0, false};
        if (!first)
            jw_raw(&kw, ",", 1);
        if (!jw_str(&kw, "", 0, key, klen, false) || kw.len + 1 > sizeof(tmp)) {
            c->w->full = true;
            return true;
        }
        jw_raw(&kw, ":", 1);
        if (!json_emit(c, e, tmp, kw.len))
            return false;
        first = false;
        if (c->w->full)
            return true;
    }
    return true;
}

static bool json_emit(struct jctx *c, json_t *v, const char *pre, size_t pre_len)
{
    char num[40];
    size_t n;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
    case JSON_ARRAY: {
        bool arr = json_is_array(v);
        if (c->depth >= c->max_depth) {
            c->why = "nesting too deep";
            return false;
        }
        if (!jw_open(c->w, pre, pre_len, arr ? '[' : '{'))
            return true;
        c->depth++;
        bool ok = json_emit_items(c, v);
        c->depth--;
        jw_close(c->w, arr ? ']' : '}');
        return ok;
    }
    case JSON_STRING:
        if (!jw_str(c->w, pre, pre_len, json_string_value(v), json_string_length(v), true))
            c->w->full = true;
        return true;
    case JSON_INTEGER:
        n = (size_t)snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        jw_tok(c->w, pre, pre_len, num, n);
        return true;
    case JSON_REAL:
        n = fmt_double(json_real_value(v), num, sizeof(num));
        jw_tok(c->w, pre, pre_len, num, n);
        return true;
    case JSON_TRUE:
        jw_tok(c->w, pre, pre_len, "true", 4);
        return true;
    case JSON_FALSE:
        jw_tok(c->w, pre, pre_len, "false", 5);
        return true;
    default:
        jw_tok(c->w, pre, pre_len, "null", 4);
        return true;
    }
}

/* Parse JSON text p[0..n) into the value writer. Returns NULL or a static reason; for a
 * syntax error, *pos gets the offset jansson stopped at. */
static const char *json_to_value(const char *p, size_t n, unsigned max_depth, struct jw *w,
                                 size_t *pos)
{
    json_error_t e;
    json_t *v = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (v == NULL && json_error_code(&e) == json_error_numeric_overflow)
        v = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &e);
    if (v == NULL) {
        *pos = (size_t)e.position;
        switch (json_error_code(&e)) {
        case json_error_out_of_memory:
            return "out of memory";
        case json_error_stack_overflow:
            return "nesting too deep";
        case json_error_invalid_utf8:
            return "invalid UTF-8";
        case json_error_premature_end_of_input:
            return "unexpected end of input";
        case json_error_end_of_input_expected:
            return "trailing bytes";
        default:
            return "syntax error";
        }
    }
    struct jctx c = {w, 0, max_depth, NULL};
    bool ok = json_emit(&c, v, "", 0);
    json_decref(v);
    return ok ? NULL : c.why;
}

/* ---- msgpack: bounded walk, then msgpack-c, then the value */

struct mp_level {
    uint32_t left;  /* items still to come at this level */
    bool map;       /* keys at even positions */
    uint32_t index; /* items seen */
};

static uint32_t be16(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Walk one msgpack object in p[0..n). Returns the bytes it spans, or SOTH_E_INCOMPLETE,
 * SOTH_E_MALFORMED, SOTH_E_TOO_LARGE with *why. *str_keys tells whether the top level is a
 * map whose keys are all strings (for sniffing).
 */
static ssize_t scan_msgpack(const unsigned char *p, size_t n, const struct soth_decode_limits *l,
                            bool *str_keys, const char **why)
{
    struct mp_level st[DEC_MAX_DEPTH + 1];
    unsigned depth = 0;
    size_t i = 0, items = 0;
    *str_keys = n > 0 && ((p[0] & 0xf0) == 0x80 || p[0] == 0xde || p[0] == 0xdf);
    for (;;) {
        if (i >= n) {
            *why = "unexpected end of data";
            return SOTH_E_INCOMPLETE;
        }
        if (++items > l->max_elements) {
            *why = "too many elements";
            return SOTH_E_TOO_LARGE;
        }
        unsigned c = p[i];
        bool is_key = depth == 1 && st[0].map && st[0].index % 2 == 0;
        size_t hdr = 1;
        uint64_t body = 0;  /* payload bytes */
        uint64_t count = 0; /* container items */
        bool container = false, map = false, is_str = false;
        if (c <= 0x7f || c >= 0xe0) {
            /* fixint */
        } else if (c <= 0x8f) {
            container = map = true;
            count = c & 0x0f;
        } else if (c <= 0x9f) {
            container = true;
            count = c & 0x0f;
        } else if (c <= 0xbf) {
            is_str = true;
            body = c & 0x1f;
        } else {
            static const uint8_t fixed[] = {/* c0 nil */ 0,
                                            /* c1 */ 0xff,
                                            /* c2 c3 bool */ 0,     0,
                                            /* c4-c6 bin */ 0xf1,   0xf2, 0xf4,
                                            /* c7-c9 ext */ 0xf1,   0xf2, 0xf4,
                                            /* ca cb float */ 4,    8,
                                            /* cc-cf uint */ 1,     2,    4,    8,
                                            /* d0-d3 int */ 1,      2,    4,    8,
                                            /* d4-d8 fixext */ 2,   3,    5,    9, 17,
                                            /* d9-db str */ 0xf1,   0xf2, 0xf4,
                                            /* dc dd array */ 0xe2, 0xe4,
                                            /* de df map */ 0xd2,   0xd4};
            uint8_t f = fixed[c - 0xc0];
            if (f == 0xff) {
                *why = "reserved byte 0xc1";
                return SOTH_E_MALFORMED;
            }
            if (f < 0xd0) {
                body = f;
            } else {
                size_t w = f & 0x0f;
                if (n - i < 1 + w) {
                    *why = "unexpected end of data";
                    return SOTH_E_INCOMPLETE;
                }
                uint64_t len = w == 1 ? p[i + 1] : w == 2 ? be16(p + i + 1) : be32(p + i + 1);
                hdr = 1 + w;
                if ((f & 0xf0) == 0xf0) {
                    body = len + (c >= 0xc7 && c <= 0xc9 ? 1 : 0); /* ext: type byte */
                    is_str = c >= 0xd9;
                    if (len > l->max_str) {
                        *why = "string over the size limit";
                        return SOTH_E_TOO_LARGE;
                    }
                } else {
                    container = true;
                    map = (f & 0xf0) == 0xd0;
                    count = len;
                }
            }
        }
        if (is_key && !is_str)
            *str_keys = false;
        if (n - i < hdr || n - i - hdr < body) {
            *why = "unexpected end of data";
            return SOTH_E_INCOMPLETE;
        }
        i += hdr + body;
        if (container) {
            uint64_t k = map ? count * 2 : count;
            /* Each item takes at least one byte: a header claiming more than what is left
             * cannot be satisfied by this input (nor by any longer one within the capture
             * bound when the input is complete), so it never gets an allocation. */
            if (k > l->max_elements) {
                *why = "too many elements";
                return SOTH_E_TOO_LARGE;
            }
            if (k > n - i) {
                *why = "unexpected end of data";
                return SOTH_E_INCOMPLETE;
            }
            if (k > 0) {
                if (depth >= l->max_depth) {
                    *why = "nesting too deep";
                    return SOTH_E_TOO_LARGE;
                }
                st[depth++] = (struct mp_level){(uint32_t)k, map, 0};
                continue;
            }
        }
        /* One item done: pop finished levels. */
        while (depth > 0) {
            st[depth - 1].index++;
            if (--st[depth - 1].left > 0)
                break;
            depth--;
        }
        if (depth == 0)
            return (ssize_t)i;
    }
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 of p[0..n) as a JSON string after pre, cut to what fits (at 4-char groups). */
static void jw_b64(struct jw *w, const char *pre, size_t pre_len, const unsigned char *p, size_t n)
{
    size_t need = pre_len + 2 + (n + 2) / 3 * 4;
    if (!jw_fits(w, pre_len + 2)) {
        w->full = true;
        return;
    }
    bool whole = jw_fits(w, need);
    jw_raw(w, pre, pre_len);
    jw_raw(w, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        if (!whole && !jw_fits(w, 4 + 1))
            break;
        unsigned a = p[i], b = i + 1 < n ? p[i + 1] : 0, c = i + 2 < n ? p[i + 2] : 0;
        char q[4] = {b64chars[a >> 2], b64chars[(a & 3) << 4 | b >> 4],
                     i + 1 < n ? b64chars[(b & 15) << 2 | c >> 6] : '=',
                     i + 2 < n ? b64chars[c & 63] : '='};
        jw_raw(w, q, 4);
    }
    jw_raw(w, "\"", 1);
    if (!whole)
        w->full = true;
}

/* Text of a scalar msgpack object for a non-string map key; NULL for containers. */
static size_t mp_scalar_text(const msgpack_object *o, char *buf, size_t cap)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return (size_t)snprintf(buf, cap, "null");
    case MSGPACK_OBJECT_BOOLEAN:
        return (size_t)snprintf(buf, cap, "%s", o->via.boolean ? "true" : "false");
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (size_t)snprintf(buf, cap, "%llu", (unsigned long long)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (size_t)snprintf(buf, cap, "%lld", (long long)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return fmt_double(o->via.f64, buf, cap);
    default:
        return 0;
    }
}

static void mp_emit(struct jw *w, const msgpack_object *o, const char *pre, size_t pre_len)
{
    char num[48];
    size_t n;
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        if (!jw_str(w, pre, pre_len, o->via.str.ptr, o->via.str.size, true))
            w->full = true;
        return;
    case MSGPACK_OBJECT_BIN:
        jw_b64(w, pre, pre_len, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
        return;
    case MSGPACK_OBJECT_EXT:
        /* {"ext":TYPE,"data_b64":"..."} */
        if (!jw_open(w, pre, pre_len, '{'))
            return;
        n = (size_t)snprintf(num, sizeof(num), "\"ext\":%d", (int)o->via.ext.type);
        if (jw_tok(w, "", 0, num, n))
            jw_b64(w, ",\"data_b64\":", 12, (const unsigned char *)o->via.ext.ptr, o->via.ext.size);
        jw_close(w, '}');
        return;
    case MSGPACK_OBJECT_ARRAY:
        if (!jw_open(w, pre, pre_len, '['))
            return;
        for (uint32_t i = 0; i < o->via.array.size && !w->full; i++)
            mp_emit(w, &o->via.array.ptr[i], ",", i ? 1 : 0);
        jw_close(w, ']');
        return;
    case MSGPACK_OBJECT_MAP:
        if (!jw_open(w, pre, pre_len, '{'))
            return;
        for (uint32_t i = 0; i < o->via.map.size && !w->full; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            /* The key, as a JSON string: str as is; other scalars as their text; bin as
             * base64; containers and ext by their type name. */
            char kbuf[4096];
            struct jw kw = {kbuf, 0, sizeof(kbuf), 0, false};
            if (i > 0)
                jw_raw(&kw, ",", 1);
            const msgpack_object *k = &kv->key;
            if (k->type == MSGPACK_OBJECT_STR) {
                jw_str(&kw, "", 0, k->via.str.ptr, k->via.str.size, true);
            } else if (k->type == MSGPACK_OBJECT_BIN) {
                jw_b64(&kw, "", 0, (const unsigned char *)k->via.bin.ptr, k->via.bin.size);
            } else {
                n = mp_scalar_text(k, num, sizeof(num));
                if (n == 0)
                    n = (size_t)snprintf(num, sizeof(num), "%s",
                                         k->type == MSGPACK_OBJECT_ARRAY ? "(array)"
                                         : k->type == MSGPACK_OBJECT_MAP ? "(map)"
                                                                         : "(ext)");
                jw_str(&kw, "", 0, num, n, true);
            }
            if (kw.len + 1 > kw.cap) {
                w->full = true;
                break;
            }
            jw_raw(&kw, ":", 1);
            mp_emit(w, &kv->val, kbuf, kw.len);
        }
        jw_close(w, '}');
        return;
    default:
        n = mp_scalar_text(o, num, sizeof(num));
        jw_tok(w, pre, pre_len, num, n);
        return;
    }
}

/* msgpack p[0..n) (already walked: exactly one object, within the limits) -> value. */
static const char *mp_to_value(const char *p, size_t n, struct jw *w)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(&u, p, n, &off);
    const char *why = NULL;
    if (r == MSGPACK_UNPACK_SUCCESS && off == n)
        mp_emit(w, &u.data, "", 0);
    else
        why = r == MSGPACK_UNPACK_NOMEM_ERROR ? "out of memory" : "malformed";
    msgpack_unpacked_destroy(&u);
    return why;
}

ssize_t soth_msgpack_to_json(const char *p, size_t n, const struct soth_decode_limits *limits,
                             char *out, size_t cap, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    *why = NULL;
    struct soth_decode_limits l = eff_limits(limits);
    bool str_keys;
    ssize_t rc = scan_msgpack((const unsigned char *)p, n, &l, &str_keys, why);
    if (rc < 0)
        return rc;
    if ((size_t)rc != n) {
        *why = "trailing bytes";
        return SOTH_E_MALFORMED;
    }
    if (cap > l.max_value)
        cap = l.max_value;
    if (cap < 4) {
        *why = "no room";
        return SOTH_E_TOO_LARGE;
    }
    struct jw w = {out, 0, cap, 0, false};
    *why = mp_to_value(p, n, &w);
    if (*why != NULL)
        return SOTH_E_MALFORMED;
    return (ssize_t)w.len;
}

/* ---- the chain */

static void add_decoder(struct soth_decode_result *res, const char *name)
{
    if (res->n_decoders < SOTH_DECODE_MAX_DECODERS)
        res->decoders[res->n_decoders++] = soth_iov(name, strlen(name));
}

static void set_error(struct soth_decoder *d, struct soth_decode_result *res, const char *stage,
                      const char *why)
{
    int n = snprintf(d->err, sizeof(d->err), "%s: %s", stage, why);
    res->error = soth_iov(d->err, n < 0                        ? 0
                                  : (size_t)n < sizeof(d->err) ? (size_t)n
                                                               : sizeof(d->err) - 1);
    res->value = SOTH_IOV_NULL;
    res->report = true;
}

static void set_truncated(struct soth_decode_result *res)
{
    res->error = SOTH_IOV_LIT("truncated");
    res->value = SOTH_IOV_NULL;
    res->report = true;
}

/* One decoding stage over *in (replaced by its output). Returns false when the chain ends. */
static bool stage_decode(struct soth_decoder *d, enum soth_coding c, struct soth_iov *in,
                         bool *trunc, unsigned *turn, struct soth_decode_result *res)
{
    add_decoder(res, soth_coding_name(c));
    struct dbuf *out = &d->stage[*turn];
    out->len = 0;
    struct dec_io io = {(const unsigned char *)in->base,
                        in->len,
                        *trunc,
                        out,
                        d->lim.max_output,
                        d->lim.max_ratio,
                        NULL};
    enum dec_rc rc = decompress(d, c, &io);
    switch (rc) {
    case DEC_OK:
        break;
    case DEC_CUT:
        *trunc = true;
        break;
    case DEC_BOMB:
        set_error(d, res, soth_coding_name(c), "bomb");
        return false;
    case DEC_NOMEM:
        set_error(d, res, soth_coding_name(c), "out of memory");
        return false;
    default:
        set_error(d, res, soth_coding_name(c), io.why ? io.why : "corrupt data");
        return false;
    }
    *in = soth_iov(out->p ? out->p : "", out->len);
    *turn ^= 1;
    return true;
}

static bool looks_json(const char *p, size_t n)
{
    size_t i = skip_lead(p, n);
    return i < n && (p[i] == '{' || p[i] == '[');
}

static int decode_run(struct soth_decoder *d, const struct soth_decode_req *req,
                      struct soth_decode_result *res);

int soth_decode_run(struct soth_decoder *d, const struct soth_decode_req *req,
                    struct soth_decode_result *res)
{
    int rc = decode_run(d, req, res);
    /* The result never points into the stage buffers: give large ones back, so a flow that
     * once decoded a big body does not keep max_output twice for its lifetime. */
    for (int i = 0; i < 2; i++)
        if (d->stage[i].cap > DEC_KEEP_SCRATCH) {
            free(d->stage[i].p);
            d->stage[i] = (struct dbuf){0};
        }
    return rc;
}

static int decode_run(struct soth_decoder *d, const struct soth_decode_req *req,
                      struct soth_decode_result *res)
{
    memset(res, 0, sizeof(*res));
    res->format = SOTH_FMT_UNKNOWN;
    struct soth_iov cur = soth_iov(req->data ? req->data : "", req->len);
    bool trunc = req->truncated;
    unsigned turn = 0;

    /* 1. content decoding: the last coding applied is undone first. */
    size_t nc = req->n_codings < SOTH_DECODE_MAX_CODINGS ? req->n_codings : SOTH_DECODE_MAX_CODINGS;
    for (size_t k = nc; k-- > 0;) {
        if (req->codings[k] == SOTH_CODING_IDENTITY)
            continue;
        if (!stage_decode(d, req->codings[k], &cur, &trunc, &turn, res))
            return 0;
    }
    /* 2. framing, done by the caller. */
    if (req->framing != SOTH_FRAMING_NONE && (unsigned)req->framing < SOTH_FRAMING_COUNT)
        add_decoder(res, framing_names[req->framing]);
    /* 3. message decoding. */
    if (req->message_coding != SOTH_CODING_IDENTITY &&
        !stage_decode(d, req->message_coding, &cur, &trunc, &turn, res))
        return 0;

    /* 4 + 5. payload: declared, or sniffed conservatively. */
    enum soth_payload_format fmt = req->format;
    bool declared = fmt == SOTH_FMT_JSON || fmt == SOTH_FMT_MSGPACK;
    size_t skip = 0, tail = 0;
    if (req->sanitize && fmt != SOTH_FMT_MSGPACK) {
        skip = soth_antihijack_strip(cur.base, cur.len, &tail);
        if (skip > 0) {
            res->sanitized = true;
            fmt = SOTH_FMT_JSON;
        }
    }
    bool str_keys = false;
    const char *why = NULL;
    ssize_t mp = 0;
    if (fmt != SOTH_FMT_JSON && fmt != SOTH_FMT_MSGPACK) {
        if (fmt == SOTH_FMT_NONE)
            return 0;
        if (looks_json(cur.base, cur.len)) {
            fmt = SOTH_FMT_JSON;
        } else {
            mp = scan_msgpack((const unsigned char *)cur.base, cur.len, &d->lim, &str_keys, &why);
            bool fits = str_keys &&
                        ((mp > 0 && (size_t)mp == cur.len) || (mp == SOTH_E_INCOMPLETE && trunc));
            if (!fits)
                return 0; /* proto or unknown bytes: nothing to say */
            fmt = SOTH_FMT_MSGPACK;
        }
    }
    res->format = fmt;
    add_decoder(res, soth_payload_format_name(fmt));
    res->report = true;
    if (trunc) {
        set_truncated(res);
        return 0;
    }
    if (dbuf_room(&d->val, d->lim.max_value, d->lim.max_value) < DEC_MIN_VALUE) {
        set_error(d, res, soth_payload_format_name(fmt), "out of memory");
        return SOTH_E_NOMEM;
    }
    struct jw w = {d->val.p, 0, d->val.cap, 0, false};
    if (fmt == SOTH_FMT_JSON) {
        size_t pos = 0;
        size_t n = cur.len - skip - tail;
        why = json_to_value(cur.base + skip, n, d->lim.max_depth, &w, &pos);
        if (why != NULL) {
            /* A JSON text sniffed from bytes of unknown type that does not parse was not
             * JSON: say nothing. */
            if (!declared && !res->sanitized) {
                memset(res, 0, sizeof(*res));
                return 0;
            }
            char buf[96];
            if (strcmp(why, "syntax error") == 0) {
                snprintf(buf, sizeof(buf), "syntax error at offset %zu", pos + skip);
                why = buf;
            }
            set_error(d, res, "json", why);
            return 0;
        }
    } else {
        if (declared) {
            mp = scan_msgpack((const unsigned char *)cur.base, cur.len, &d->lim, &str_keys, &why);
            if (mp >= 0 && (size_t)mp != cur.len) {
                mp = SOTH_E_MALFORMED;
                why = "trailing bytes";
            }
            if (mp < 0) {
                set_error(d, res, "msgpack", why ? why : "malformed");
                return 0;
            }
        }
        why = mp_to_value(cur.base, cur.len, &w);
        if (why != NULL) {
            set_error(d, res, "msgpack", why);
            return 0;
        }
    }
    res->value = soth_iov(w.p, w.len);
    return 0;
}
