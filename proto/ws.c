/*
 * WebSocket frame parser (RFC 6455 5) and turn aggregator: see soth/proto/ws.h and
 * docs/streaming.md. The parser reads the relayed bytes once and keeps only the frame header in
 * progress, the capture of the message in progress and a control payload (<= 125 bytes).
 */
#include <string.h>

#include "soth/proto/ws.h"

#define WS_DEFAULT_MAX_MESSAGE (64ull << 20)
#define WS_DEFAULT_CAPTURE     4096u
#define WS_CONTROL_MAX         125

enum ws_state {
    WS_HDR = 0, /* collecting the frame header */
    WS_PAYLOAD, /* inside a frame's payload */
    WS_DEAD,    /* stopped on a protocol error */
    WS_STATE_COUNT
};

struct soth_ws {
    struct soth_ws_cbs cbs;
    uint64_t max_message;
    uint32_t cap; /* capture bytes per message */
    uint8_t dir;  /* enum soth_leg: the leg whose frames these are */
    bool deflate;
    uint8_t state; /* enum ws_state */
    uint8_t err;   /* enum soth_ws_error */
    uint64_t off;  /* stream bytes consumed */
    uint64_t err_off;
    uint64_t frame_off; /* stream offset of the current frame header */

    /* frame header in progress */
    uint8_t hdr[14];
    uint8_t hdr_have, hdr_need; /* 2, then 2 + extended length + mask key */

    /* current frame */
    uint8_t op;
    bool fin, masked;
    uint8_t key[4];
    uint64_t flen, fpos; /* payload length, payload bytes seen */

    /* data message in progress (possibly fragmented) */
    bool in_msg;
    bool msg_compressed;
    uint8_t msg_op;
    uint32_t msg_frames;
    uint64_t msg_len;
    uint32_t msg_cap_len;

    bool closed;                       /* this side sent its Close */
    uint8_t ctl_len;                   /* control payload bytes kept */
    unsigned char ctl[WS_CONTROL_MAX]; /* control payload, unmasked */
    unsigned char buf[];               /* cap bytes: the data message capture */
};

static const char *const ws_error_names[SOTH_WS_ERROR_COUNT] = {
    [SOTH_WS_OK] = "ok",
    [SOTH_WS_E_UNMASKED] = "unmasked_client_frame",
    [SOTH_WS_E_MASKED] = "masked_server_frame",
    [SOTH_WS_E_RSV] = "reserved_bits",
    [SOTH_WS_E_OPCODE] = "bad_opcode",
    [SOTH_WS_E_CONTROL_TOO_LONG] = "control_too_long",
    [SOTH_WS_E_CONTROL_FRAGMENTED] = "fragmented_control",
    [SOTH_WS_E_UNEXPECTED_CONT] = "unexpected_continuation",
    [SOTH_WS_E_EXPECTED_CONT] = "expected_continuation",
    [SOTH_WS_E_BAD_LENGTH] = "bad_length",
    [SOTH_WS_E_TOO_LARGE] = "message_too_large",
    [SOTH_WS_E_BAD_CLOSE] = "bad_close_payload",
    [SOTH_WS_E_AFTER_CLOSE] = "frame_after_close",
};

const char *soth_ws_error_name(enum soth_ws_error e)
{
    if ((unsigned)e >= SOTH_WS_ERROR_COUNT)
        return "unknown";
    return ws_error_names[e];
}

static void ws_limits(const struct soth_ws_limits *l, uint64_t *max_message, uint32_t *cap)
{
    *max_message = WS_DEFAULT_MAX_MESSAGE;
    *cap = WS_DEFAULT_CAPTURE;
    if (l != NULL) {
        if (l->max_message != 0)
            *max_message = l->max_message;
        *cap = l->capture;
    }
}

size_t soth_ws_size(const struct soth_ws_limits *limits)
{
    uint64_t mm;
    uint32_t cap;
    ws_limits(limits, &mm, &cap);
    return sizeof(struct soth_ws) + cap;
}

struct soth_ws *soth_ws_init(void *mem, enum soth_leg dir, bool deflate,
                             const struct soth_ws_limits *limits, const struct soth_ws_cbs *cbs)
{
    struct soth_ws *w = mem;
    memset(w, 0, sizeof(*w));
    ws_limits(limits, &w->max_message, &w->cap);
    if (cbs != NULL)
        w->cbs = *cbs;
    w->dir = (uint8_t)dir;
    w->deflate = deflate;
    w->state = WS_HDR;
    w->hdr_need = 2;
    return w;
}

enum soth_ws_error soth_ws_error(const struct soth_ws *w)
{
    return (enum soth_ws_error)w->err;
}

uint64_t soth_ws_error_offset(const struct soth_ws *w)
{
    return w->err_off;
}

bool soth_ws_in_frame(const struct soth_ws *w)
{
    return w->state == WS_PAYLOAD || w->hdr_have > 0 || w->in_msg;
}

static ssize_t ws_fail(struct soth_ws *w, enum soth_ws_error e)
{
    w->state = WS_DEAD;
    w->err = (uint8_t)e;
    w->err_off = w->frame_off;
    return e == SOTH_WS_E_TOO_LARGE ? SOTH_E_TOO_LARGE : SOTH_E_MALFORMED;
}

static bool is_control(uint8_t op)
{
    return (op & 0x8) != 0;
}

/*
 * RFC 6455 7.4.1/7.4.2 and the IANA registry: codes an endpoint may put in a Close frame.
 * 1004-1006 and 1015 are reserved for reports, never sent; 1016-2999 unassigned.
 */
static bool close_code_ok(unsigned c)
{
    if (c >= 3000 && c <= 4999)
        return true;
    if (c >= 1000 && c <= 1014)
        return c != 1004 && c != 1005 && c != 1006;
    return false;
}

/* The first two header bytes arrived: every check that needs only them. */
static ssize_t ws_check_base(struct soth_ws *w)
{
    uint8_t b0 = w->hdr[0], b1 = w->hdr[1];
    uint8_t op = b0 & 0x0f;
    bool fin = (b0 & 0x80) != 0;
    bool rsv1 = (b0 & 0x40) != 0;
    bool masked = (b1 & 0x80) != 0;
    uint8_t len7 = b1 & 0x7f;

    /* RFC 6455 5.5.1: nothing may follow this side's Close. */
    if (w->closed)
        return ws_fail(w, SOTH_WS_E_AFTER_CLOSE);
    if ((op >= 0x3 && op <= 0x7) || op >= 0xb)
        return ws_fail(w, SOTH_WS_E_OPCODE);
    /* RFC 6455 5.2 + RFC 7692 6: RSV1 only on the first frame of a data message, and only
     * when permessage-deflate was negotiated; RSV2/RSV3 are never negotiated here. */
    if ((b0 & 0x30) != 0)
        return ws_fail(w, SOTH_WS_E_RSV);
    if (rsv1 && (!w->deflate || op == SOTH_WS_OP_CONT || is_control(op)))
        return ws_fail(w, SOTH_WS_E_RSV);
    if (is_control(op)) {
        /* RFC 6455 5.5: <= 125 bytes, never fragmented; may interleave a fragmented message. */
        if (!fin)
            return ws_fail(w, SOTH_WS_E_CONTROL_FRAGMENTED);
        if (len7 > WS_CONTROL_MAX)
            return ws_fail(w, SOTH_WS_E_CONTROL_TOO_LONG);
    } else if (op == SOTH_WS_OP_CONT) {
        if (!w->in_msg)
            return ws_fail(w, SOTH_WS_E_UNEXPECTED_CONT);
    } else if (w->in_msg) {
        return ws_fail(w, SOTH_WS_E_EXPECTED_CONT);
    }
    /* RFC 6455 5.1/5.3: a client masks every frame, a server never does. */
    if (w->dir == SOTH_LEG_CLIENT && !masked)
        return ws_fail(w, SOTH_WS_E_UNMASKED);
    if (w->dir == SOTH_LEG_UPSTREAM && masked)
        return ws_fail(w, SOTH_WS_E_MASKED);
    w->op = op;
    w->fin = fin;
    w->masked = masked;
    w->hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0));
    if (rsv1 || (!is_control(op) && op != SOTH_WS_OP_CONT))
        w->msg_compressed = rsv1;
    return 0;
}

static void ws_report(struct soth_ws *w, const struct soth_ws_msg *m)
{
    if (w->cbs.on_message != NULL)
        w->cbs.on_message(w->cbs.ctx, m);
}

/* End of a frame's payload: report what completed. */
static ssize_t ws_frame_end(struct soth_ws *w)
{
    w->state = WS_HDR;
    w->hdr_have = 0;
    w->hdr_need = 2;
    struct soth_ws_msg m = {.dir = soth_leg_of(w->dir), .close_code = -1};
    if (is_control(w->op)) {
        m.opcode = w->op;
        m.len = w->ctl_len;
        m.frames = 1;
        if (w->op == SOTH_WS_OP_CLOSE) {
            if (w->ctl_len == 1)
                return ws_fail(w, SOTH_WS_E_BAD_CLOSE);
            if (w->ctl_len >= 2) {
                unsigned code = (unsigned)w->ctl[0] << 8 | w->ctl[1];
                if (!close_code_ok(code))
                    return ws_fail(w, SOTH_WS_E_BAD_CLOSE);
                m.close_code = (int)code;
                m.close_reason = soth_iov(w->ctl + 2, w->ctl_len - 2u);
            }
            w->closed = true;
        }
        size_t take = w->ctl_len < w->cap ? w->ctl_len : w->cap;
        m.data = soth_iov(w->ctl, take);
        m.truncated = take < m.len;
        ws_report(w, &m);
        return 0;
    }
    if (!w->fin)
        return 0;
    m.opcode = w->msg_op;
    m.len = w->msg_len;
    m.data = soth_iov(w->buf, w->msg_cap_len);
    m.truncated = w->msg_cap_len < w->msg_len;
    m.compressed = w->msg_compressed;
    m.frames = w->msg_frames;
    w->in_msg = false;
    w->msg_len = 0;
    w->msg_cap_len = 0;
    w->msg_frames = 0;
    w->msg_compressed = false;
    ws_report(w, &m);
    return 0;
}

/* The whole header arrived: length checks, then start the payload. */
static ssize_t ws_header_done(struct soth_ws *w)
{
    uint8_t len7 = w->hdr[1] & 0x7f;
    const uint8_t *p = w->hdr + 2;
    uint64_t len = len7;
    if (len7 == 126) {
        len = (uint64_t)p[0] << 8 | p[1];
        p += 2;
    } else if (len7 == 127) {
        if (p[0] & 0x80)
            return ws_fail(w, SOTH_WS_E_BAD_LENGTH);
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[i];
        p += 8;
    }
    if (w->masked)
        memcpy(w->key, p, 4);
    else
        memset(w->key, 0, 4);
    if (!is_control(w->op)) {
        uint64_t before = w->op == SOTH_WS_OP_CONT ? w->msg_len : 0;
        if (len > w->max_message || before > w->max_message - len)
            return ws_fail(w, SOTH_WS_E_TOO_LARGE);
        if (w->op != SOTH_WS_OP_CONT) {
            w->in_msg = true;
            w->msg_op = w->op;
            w->msg_len = 0;
            w->msg_cap_len = 0;
            w->msg_frames = 0;
        }
        w->msg_frames++;
    } else {
        w->ctl_len = 0;
    }
    w->flen = len;
    w->fpos = 0;
    w->state = WS_PAYLOAD;
    if (len == 0)
        return ws_frame_end(w);
    return 0;
}

/* Copy payload bytes p[0..n) (frame offset w->fpos) unmasked into dst. */
static void unmask_into(const struct soth_ws *w, unsigned char *dst, const unsigned char *p,
                        size_t n)
{
    size_t k = (size_t)(w->fpos & 3);
    for (size_t i = 0; i < n; i++)
        dst[i] = p[i] ^ w->key[(k + i) & 3];
}

/* Data payload bytes p[0..n) (frame offset w->fpos) to on_payload, unmasked in pieces. */
static void payload_out(const struct soth_ws *w, const unsigned char *p, size_t n)
{
    if (!w->masked) {
        w->cbs.on_payload(w->cbs.ctx, w->msg_compressed, (const char *)p, n);
        return;
    }
    unsigned char tmp[1024];
    size_t k = (size_t)(w->fpos & 3);
    while (n > 0) {
        size_t c = n < sizeof(tmp) ? n : sizeof(tmp);
        for (size_t i = 0; i < c; i++)
            tmp[i] = p[i] ^ w->key[(k + i) & 3];
        w->cbs.on_payload(w->cbs.ctx, w->msg_compressed, (const char *)tmp, c);
        k = (k + c) & 3;
        p += c;
        n -= c;
    }
}

ssize_t soth_ws_feed(struct soth_ws *w, const char *data, size_t len)
{
    if (w->state == WS_DEAD)
        return w->err == SOTH_WS_E_TOO_LARGE ? SOTH_E_TOO_LARGE : SOTH_E_MALFORMED;
    const unsigned char *p = (const unsigned char *)data;
    size_t pos = 0;
    ssize_t rc;
    while (pos < len) {
        switch (w->state) {
        case WS_HDR: {
            if (w->hdr_have == 0)
                w->frame_off = w->off + pos;
            size_t want = (size_t)(w->hdr_need - w->hdr_have);
            size_t take = len - pos < want ? len - pos : want;
            memcpy(w->hdr + w->hdr_have, p + pos, take);
            w->hdr_have = (uint8_t)(w->hdr_have + take);
            pos += take;
            if (w->hdr_have == 2 && w->hdr_need == 2) {
                rc = ws_check_base(w);
                if (rc < 0)
                    goto fail;
            }
            if (w->hdr_have == w->hdr_need) {
                rc = ws_header_done(w);
                if (rc < 0)
                    goto fail;
            }
            break;
        }
        case WS_PAYLOAD: {
            uint64_t left = w->flen - w->fpos;
            size_t n = len - pos < left ? len - pos : (size_t)left;
            if (is_control(w->op)) {
                unmask_into(w, w->ctl + w->ctl_len, p + pos, n);
                w->ctl_len = (uint8_t)(w->ctl_len + n);
            } else {
                uint32_t room = w->cap - w->msg_cap_len;
                size_t c = n < room ? n : room;
                if (c > 0) {
                    unmask_into(w, w->buf + w->msg_cap_len, p + pos, c);
                    w->msg_cap_len += (uint32_t)c;
                }
                w->msg_len += n;
                if (w->cbs.on_payload != NULL && n > 0)
                    payload_out(w, p + pos, n);
            }
            w->fpos += n;
            pos += n;
            if (w->fpos == w->flen) {
                rc = ws_frame_end(w);
                if (rc < 0)
                    goto fail;
            }
            break;
        }
        default:
            SOTH_BUG_ON(1);
        }
    }
    w->off += len;
    return (ssize_t)len;
fail:
    w->off += pos;
    return rc;
}

/* ---- turn aggregator */

void soth_ws_turns_init(struct soth_ws_turns *t, uint64_t idle_ns,
                        const struct soth_ws_turn_cbs *cbs)
{
    memset(t, 0, sizeof(*t));
    if (cbs != NULL)
        t->cbs = *cbs;
    t->idle_ns = idle_ns;
}

static void turn_end(struct soth_ws_turns *t, enum soth_ws_flush reason, uint64_t ended_ns)
{
    if (!t->open)
        return;
    t->open = false;
    t->cur.reason = reason;
    t->cur.ended_ns = ended_ns;
    if (t->cbs.on_end != NULL)
        t->cbs.on_end(t->cbs.ctx, &t->cur);
}

static void turn_start(struct soth_ws_turns *t, enum soth_leg initiator, uint64_t now_ns)
{
    uint64_t id = t->cur.id + 1;
    t->cur = (struct soth_ws_turn){.id = id, .initiator = initiator, .started_ns = now_ns};
    t->open = true;
    t->answered = false;
    if (t->cbs.on_start != NULL)
        t->cbs.on_start(t->cbs.ctx, &t->cur);
}

bool soth_ws_turns_tick(struct soth_ws_turns *t, uint64_t now_ns)
{
    if (!t->open || t->idle_ns == 0 || now_ns < t->last_ns || now_ns - t->last_ns < t->idle_ns)
        return false;
    turn_end(t, SOTH_WS_FLUSH_IDLE, t->last_ns);
    return true;
}

void soth_ws_turns_message(struct soth_ws_turns *t, const struct soth_ws_msg *m, uint64_t now_ns)
{
    if (t->closed)
        return;
    soth_ws_turns_tick(t, now_ns);
    bool data = m->opcode == SOTH_WS_OP_TEXT || m->opcode == SOTH_WS_OP_BINARY;
    enum soth_leg d = soth_leg_of(m->dir); /* indexes frames[], bytes[] */
    if (data) {
        if (t->open && t->answered && m->dir == t->cur.initiator)
            turn_end(t, SOTH_WS_FLUSH_DIRECTION_CHANGE, now_ns);
        if (!t->open)
            turn_start(t, m->dir, now_ns);
        else if (m->dir != t->cur.initiator)
            t->answered = true;
    }
    if (t->open) {
        t->cur.frames[d] += m->frames;
        t->cur.bytes[d] += m->len;
        t->last_ns = now_ns;
    }
    if (m->opcode == SOTH_WS_OP_CLOSE) {
        turn_end(t, SOTH_WS_FLUSH_CLOSE, now_ns);
        t->closed = true;
    }
}

void soth_ws_turns_end(struct soth_ws_turns *t, enum soth_ws_flush reason, uint64_t now_ns)
{
    turn_end(t, reason, now_ns);
    t->closed = true;
}
