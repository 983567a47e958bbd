/*
 * gRPC length-prefixed message parser (docs/streaming.md, "gRPC"): one direction of one
 * stream. The wire format (grpc PROTOCOL-HTTP2.md, "Length-Prefixed-Message"):
 *
 *   Compressed-Flag (1 byte, 0 or 1) Message-Length (4 bytes, big endian) Message
 *
 * The state machine keeps the header bytes it has seen and how much of the message is left,
 * so any split of the input gives the same messages. Of each message it copies only the
 * first `capture` bytes; the capture buffer grows by doubling up to that bound the first time
 * a message needs it, never per chunk.
 */
#include <stdlib.h>
#include <string.h>

#include "soth/proto/grpc.h"

#define GRPC_DEF_MAX_MESSAGE (4u << 20)
#define GRPC_DEF_CAPTURE     4096u
#define GRPC_HDR             5u

enum grpc_state {
    GRPC_ST_HEADER = 0, /* collecting the 5-byte envelope */
    GRPC_ST_BODY,       /* inside a message */
    GRPC_ST_FAILED,     /* malformed: sticky */
    GRPC_ST_FINISHED,   /* soth_grpc_finish was called */
    GRPC_ST_COUNT
};

struct soth_grpc {
    enum grpc_state st;
    enum soth_grpc_error err;
    uint32_t max_message;
    uint32_t capture;
    uint8_t hdr[GRPC_HDR];
    uint8_t hdr_len; /* header bytes seen */
    bool compressed; /* of the message in progress */
    uint32_t length; /* of the message in progress */
    uint32_t left;   /* message bytes still to come */
    uint32_t kept;   /* message bytes captured */
    uint64_t index;  /* complete messages so far */
    char *buf;       /* capture buffer, buf_cap bytes (<= capture) */
    uint32_t buf_cap;
};

static const char *const grpc_error_names[SOTH_GRPC_ERROR_COUNT] = {
    [SOTH_GRPC_OK] = "ok",
    [SOTH_GRPC_BAD_FLAG] = "bad_flag",
    [SOTH_GRPC_TOO_LARGE] = "length_over_limit",
    [SOTH_GRPC_TRUNCATED] = "truncated",
};

const char *soth_grpc_error_name(enum soth_grpc_error e)
{
    return (unsigned)e < SOTH_GRPC_ERROR_COUNT ? grpc_error_names[e] : "unknown";
}

struct soth_grpc *soth_grpc_new(const struct soth_grpc_limits *limits)
{
    struct soth_grpc *g = malloc(sizeof(*g));
    if (g == NULL)
        return NULL;
    memset(g, 0, sizeof(*g));
    g->st = GRPC_ST_HEADER;
    g->max_message =
        limits != NULL && limits->max_message ? limits->max_message : GRPC_DEF_MAX_MESSAGE;
    g->capture = limits != NULL && limits->capture ? limits->capture : GRPC_DEF_CAPTURE;
    return g;
}

void soth_grpc_free(struct soth_grpc *g)
{
    if (g == NULL)
        return;
    free(g->buf);
    free(g);
}

enum soth_grpc_error soth_grpc_error(const struct soth_grpc *g)
{
    return g->err;
}

uint64_t soth_grpc_messages(const struct soth_grpc *g)
{
    return g->index;
}

/* Room for `want` captured bytes of the current message: doubling, bounded by capture. On
 * allocation failure the message keeps what fits already. */
static uint32_t reserve(struct soth_grpc *g, uint32_t want)
{
    if (want <= g->buf_cap)
        return g->buf_cap;
    uint32_t cap = g->buf_cap ? g->buf_cap : (g->capture < 256 ? g->capture : 256);
    while (cap < want)
        cap = cap > g->capture / 2 ? g->capture : cap * 2;
    char *p = realloc(g->buf, cap);
    if (p == NULL)
        return g->buf_cap;
    g->buf = p;
    g->buf_cap = cap;
    return cap;
}

static void fill_msg(const struct soth_grpc *g, struct soth_grpc_msg *m)
{
    m->index = g->index;
    m->compressed = g->compressed;
    m->length = g->length;
    m->data = soth_iov(g->kept ? g->buf : "", g->kept);
    m->truncated = g->kept < g->length;
}

static ssize_t fail(struct soth_grpc *g, enum soth_grpc_error e)
{
    g->st = GRPC_ST_FAILED;
    g->err = e;
    return e == SOTH_GRPC_TOO_LARGE ? SOTH_E_TOO_LARGE : SOTH_E_MALFORMED;
}

ssize_t soth_grpc_feed(struct soth_grpc *g, const char *data, size_t len, struct soth_grpc_msg *msg,
                       bool *got)
{
    *got = false;
    if (g->st == GRPC_ST_FAILED || g->st == GRPC_ST_FINISHED)
        return SOTH_E_STATE;
    size_t i = 0;
    while (i < len) {
        switch (g->st) {
        case GRPC_ST_HEADER: {
            size_t k = GRPC_HDR - g->hdr_len;
            if (k > len - i)
                k = len - i;
            /* The flag is judged as soon as it arrives, whatever follows. */
            if (g->hdr_len == 0 && (uint8_t)data[i] > 1)
                return fail(g, SOTH_GRPC_BAD_FLAG);
            memcpy(g->hdr + g->hdr_len, data + i, k);
            g->hdr_len = (uint8_t)(g->hdr_len + k);
            i += k;
            if (g->hdr_len < GRPC_HDR)
                break;
            g->compressed = g->hdr[0] == 1;
            g->length = (uint32_t)g->hdr[1] << 24 | (uint32_t)g->hdr[2] << 16 |
                        (uint32_t)g->hdr[3] << 8 | (uint32_t)g->hdr[4];
            if (g->length > g->max_message)
                return fail(g, SOTH_GRPC_TOO_LARGE);
            g->left = g->length;
            g->kept = 0;
            g->hdr_len = 0;
            if (g->left == 0) {
                fill_msg(g, msg);
                g->index++;
                *got = true;
                return (ssize_t)i;
            }
            g->st = GRPC_ST_BODY;
            break;
        }
        case GRPC_ST_BODY: {
            size_t k = g->left;
            if (k > len - i)
                k = len - i;
            if (g->kept < g->capture) {
                uint32_t want = g->length < g->capture ? g->length : g->capture;
                uint32_t room = reserve(g, want);
                size_t c = room > g->kept ? room - g->kept : 0;
                if (c > k)
                    c = k;
                if (c > 0) {
                    memcpy(g->buf + g->kept, data + i, c);
                    g->kept += (uint32_t)c;
                }
            }
            g->left -= (uint32_t)k;
            i += k;
            if (g->left == 0) {
                fill_msg(g, msg);
                g->index++;
                g->st = GRPC_ST_HEADER;
                *got = true;
                return (ssize_t)i;
            }
            break;
        }
        default:
            SOTH_BUG_ON(true);
        }
    }
    return (ssize_t)i;
}

int soth_grpc_finish(struct soth_grpc *g, struct soth_grpc_msg *msg, bool *got)
{
    *got = false;
    switch (g->st) {
    case GRPC_ST_FAILED:
        return g->err == SOTH_GRPC_TOO_LARGE ? SOTH_E_TOO_LARGE : SOTH_E_MALFORMED;
    case GRPC_ST_FINISHED:
        return g->err == SOTH_GRPC_OK ? 0 : SOTH_E_MALFORMED;
    case GRPC_ST_HEADER:
        g->st = GRPC_ST_FINISHED;
        if (g->hdr_len == 0)
            return 0;
        g->err = SOTH_GRPC_TRUNCATED;
        return SOTH_E_MALFORMED;
    case GRPC_ST_BODY:
        g->st = GRPC_ST_FINISHED;
        g->err = SOTH_GRPC_TRUNCATED;
        fill_msg(g, msg);
        msg->truncated = true;
        *got = true;
        return SOTH_E_MALFORMED;
    default:
        SOTH_BUG_ON(true);
        return SOTH_E_STATE;
    }
}
