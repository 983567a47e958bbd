/*
 * permessage-deflate (RFC 7692) for observation: the accepting response's parameters, and a
 * raw-deflate inflater per direction that follows the sender's context takeover rules. See
 * soth/proto/ws_deflate.h and docs/streaming.md.
 */
#include "soth/proto/headers.h"
#include "soth/proto/ws_deflate.h"

#include <string.h>
#include <zlib.h>

#define WSZ_SCRATCH 16384 /* output past the capture goes through this much stack at a time */

struct soth_ws_inflate {
    z_stream zs;
    bool ready;      /* zs initialised (inflateInit2 done) */
    bool init_error; /* the last reset could not set zs up */
    bool takeover;   /* the sender keeps its window across messages */
    bool lost;       /* a message was cut or corrupt under takeover: the window is gone */
    bool ended;      /* the message in progress ended its deflate stream (BFINAL) */
    uint8_t st;      /* enum soth_ws_inflate_status of the message in progress */
    uint32_t cap, cap_len;
    uint64_t max_output, out_len;
    unsigned char buf[]; /* cap bytes: the message's first inflated bytes */
};

/* ---- Sec-WebSocket-Extensions */

/* Split *v at the first `sep`: returns what precedes it, *v keeps what follows. */
static struct soth_iov take_until(struct soth_iov *v, char sep)
{
    const char *e = v->len > 0 ? memchr(v->base, sep, v->len) : NULL;
    struct soth_iov head = *v;
    if (e == NULL) {
        v->base += v->len;
        v->len = 0;
        return head;
    }
    head.len = (size_t)(e - v->base);
    v->base = e + 1;
    v->len -= head.len + 1;
    return head;
}

/* A max_window_bits value: 8..15, bare or quoted (RFC 7692 7.1.2); 0 when invalid. */
static uint8_t window_bits(struct soth_iov v)
{
    v = soth_iov_trim_ows(v);
    if (v.len >= 2 && v.base[0] == '"' && v.base[v.len - 1] == '"') {
        v.base++;
        v.len -= 2;
    }
    if (v.len == 1 && v.base[0] >= '8' && v.base[0] <= '9')
        return (uint8_t)(v.base[0] - '0');
    if (v.len == 2 && v.base[0] == '1' && v.base[1] >= '0' && v.base[1] <= '5')
        return (uint8_t)(10 + v.base[1] - '0');
    return 0;
}

void soth_pmd_parse(struct soth_iov ext, struct soth_pmd *out)
{
    *out = (struct soth_pmd){.window_bits = {15, 15}};
    if (ext.base == NULL)
        return;
    while (ext.len > 0) {
        struct soth_iov el = take_until(&ext, ',');
        if (!soth_iov_is_ci(soth_iov_trim_ows(take_until(&el, ';')), "permessage-deflate"))
            continue;
        out->on = true;
        while (el.len > 0) {
            struct soth_iov param = take_until(&el, ';');
            struct soth_iov name = soth_iov_trim_ows(take_until(&param, '='));
            if (soth_iov_is_ci(name, "client_no_context_takeover")) {
                out->no_takeover[SOTH_LEG_CLIENT] = true;
            } else if (soth_iov_is_ci(name, "server_no_context_takeover")) {
                out->no_takeover[SOTH_LEG_UPSTREAM] = true;
            } else if (soth_iov_is_ci(name, "client_max_window_bits")) {
                uint8_t b = window_bits(param);
                if (b != 0)
                    out->window_bits[SOTH_LEG_CLIENT] = b;
            } else if (soth_iov_is_ci(name, "server_max_window_bits")) {
                uint8_t b = window_bits(param);
                if (b != 0)
                    out->window_bits[SOTH_LEG_UPSTREAM] = b;
            }
        }
        return;
    }
}

/* ---- inflater */

struct soth_ws_inflate *soth_ws_inflate_new(uint32_t capture, uint64_t max_output)
{
    struct soth_ws_inflate *z = malloc(sizeof(*z) + capture);
    if (z == NULL)
        return NULL;
    memset(z, 0, sizeof(*z));
    z->cap = capture;
    z->max_output = max_output < capture ? capture : max_output;
    z->init_error = true; /* until the first reset */
    return z;
}

void soth_ws_inflate_free(struct soth_ws_inflate *z)
{
    if (z == NULL)
        return;
    if (z->ready)
        inflateEnd(&z->zs);
    free(z);
}

uint32_t soth_ws_inflate_capture(const struct soth_ws_inflate *z)
{
    return z->cap;
}

static void msg_clear(struct soth_ws_inflate *z)
{
    z->st = SOTH_WSZ_OK;
    z->ended = false;
    z->out_len = 0;
    z->cap_len = 0;
}

int soth_ws_inflate_reset(struct soth_ws_inflate *z, unsigned window_bits, bool takeover)
{
    /* zlib's deflate turns a requested 8-bit raw window into 9 bits (zlib.h, deflateInit2):
     * a peer asked for 8 may well use 9; a larger window only costs memory. */
    int bits = window_bits < 9 ? 9 : window_bits > 15 ? 15 : (int)window_bits;
    int rc = z->ready ? inflateReset2(&z->zs, -bits) : inflateInit2(&z->zs, -bits);
    if (rc == Z_OK) {
        z->ready = true;
    } else if (!z->ready) {
        memset(&z->zs, 0, sizeof(z->zs));
    }
    z->init_error = rc != Z_OK;
    z->takeover = takeover;
    z->lost = false;
    msg_clear(z);
    return rc == Z_OK ? 0 : SOTH_E_NOMEM;
}

/* Inflate n bytes of the message in progress, keeping the first cap output bytes and counting
 * the rest up to one byte past max_output (which tells a message over the bound). */
static void run(struct soth_ws_inflate *z, const unsigned char *p, size_t n)
{
    unsigned char scratch[WSZ_SCRATCH];
    while (n > 0 && z->st == SOTH_WSZ_OK && !z->ended) {
        uInt in = n > (1u << 30) ? (1u << 30) : (uInt)n;
        z->zs.next_in = (Bytef *)(uintptr_t)p;
        z->zs.avail_in = in;
        while (z->zs.avail_in > 0 && z->st == SOTH_WSZ_OK) {
            uint64_t room = z->max_output + 1 - z->out_len;
            unsigned char *dst = scratch;
            size_t avail = sizeof(scratch);
            if (z->cap_len < z->cap) {
                dst = z->buf + z->cap_len;
                avail = z->cap - z->cap_len;
            }
            if (avail > room)
                avail = (size_t)room;
            uInt before_in = z->zs.avail_in;
            z->zs.next_out = dst;
            z->zs.avail_out = (uInt)avail;
            int rc = inflate(&z->zs, Z_SYNC_FLUSH);
            size_t got = avail - z->zs.avail_out;
            if (dst != scratch)
                z->cap_len += (uint32_t)got;
            z->out_len += got;
            if (z->out_len > z->max_output) {
                z->st = SOTH_WSZ_OVER;
            } else if (rc == Z_STREAM_END) {
                z->ended = true; /* what follows the final block is not deflate data */
                break;
            } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
                z->st = SOTH_WSZ_ERROR;
            } else if (got == 0 && z->zs.avail_in == before_in) {
                break; /* no progress: nothing more comes out of these bytes */
            }
        }
        p += in;
        n -= in;
    }
}

void soth_ws_inflate_feed(struct soth_ws_inflate *z, const char *p, size_t n)
{
    if (z->st != SOTH_WSZ_OK || z->lost || z->init_error)
        return;
    run(z, (const unsigned char *)p, n);
}

/* The sender ended its deflate stream inside the message (BFINAL) and keeps its window: start
 * a new stream with the old window as the dictionary (raw inflate takes one at any time). */
static void restart_keeping_window(struct soth_ws_inflate *z)
{
    unsigned char win[1u << 15];
    uInt len = sizeof(win);
    if (inflateGetDictionary(&z->zs, win, &len) != Z_OK || inflateReset(&z->zs) != Z_OK ||
        (len > 0 && inflateSetDictionary(&z->zs, win, len) != Z_OK))
        z->lost = true;
}

void soth_ws_inflate_end(struct soth_ws_inflate *z, struct soth_ws_inflated *out)
{
    static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
    if (z->st == SOTH_WSZ_OK && z->lost)
        z->st = SOTH_WSZ_LOST;
    else if (z->st == SOTH_WSZ_OK && z->init_error)
        z->st = SOTH_WSZ_ERROR;
    if (z->st == SOTH_WSZ_OK && !z->ended)
        run(z, tail, sizeof(tail));
    *out = (struct soth_ws_inflated){.status = (enum soth_ws_inflate_status)z->st};
    if (z->st == SOTH_WSZ_OK || z->st == SOTH_WSZ_OVER) {
        out->len = z->st == SOTH_WSZ_OK ? z->out_len : z->max_output;
        out->data = soth_iov(z->buf, z->cap_len);
    }
    if (z->ready && !z->init_error) {
        if (!z->takeover)
            (void)inflateReset(&z->zs); /* each message starts with an empty window */
        else if (z->st == SOTH_WSZ_OVER || z->st == SOTH_WSZ_ERROR)
            z->lost = true; /* the rest of that message never went through the window */
        else if (z->st == SOTH_WSZ_OK && z->ended)
            restart_keeping_window(z);
    }
    msg_clear(z);
}
