/*
 * text/event-stream parser (WHATWG HTML 9.2.6 "Interpreting an event stream"): see soth/proto/sse.h
 * and docs/streaming.md. Lines are never buffered: field values go straight into the buffer
 * they belong to (data, event type, a provisional id, retry digits), so the memory is the
 * fixed block of soth_sse_size() whatever the line lengths.
 */
#include <string.h>

#include "soth/proto/sse.h"

#define SSE_DEFAULT_MAX_DATA 65536u
#define SSE_NAME_MAX         8  /* longest known field name is 5 bytes */
#define SSE_RETRY_DIGITS     18 /* fits int64 */

enum sse_state {
    SS_LINE = 0, /* at the start of a line */
    SS_NAME,     /* in a field name */
    SS_VALUE0,   /* just after the colon: one space is dropped */
    SS_VALUE,    /* in a field value */
    SS_COMMENT,  /* in a comment line (or an ignored value): skip to the line end */
    SS_STATE_COUNT
};

enum sse_field { F_OTHER = 0, F_DATA, F_EVENT, F_ID, F_RETRY };

struct soth_sse {
    struct soth_sse_cbs cbs;
    uint32_t max_data;
    uint8_t state;    /* enum sse_state */
    uint8_t field;    /* enum sse_field of the line in progress */
    uint8_t bom_have; /* BOM bytes matched at the stream start */
    bool bom_done;    /* past the stream start */
    bool after_cr;    /* the last byte was a CR: a following LF belongs to that line end */
    uint8_t name_len;
    char name[SSE_NAME_MAX];

    /* event in progress */
    uint64_t data_len; /* data buffer length (full) */
    uint32_t data_kept;
    uint16_t ev_len;
    bool ev_trunc;
    int64_t retry; /* retry of this event, -1 none */

    /* "id" field in progress, committed at its line end unless it holds a NUL */
    uint16_t idt_len;
    bool idt_trunc, idt_nul;
    /* last event ID buffer (persists) */
    uint16_t id_len;
    bool id_trunc;

    /* "retry" field in progress */
    uint8_t rt_digits;
    bool rt_bad;
    int64_t rt_val;

    uint64_t n_events, n_truncated;
    char ev[SOTH_SSE_FIELD_MAX];
    char id[SOTH_SSE_FIELD_MAX];
    char idt[SOTH_SSE_FIELD_MAX];
    char data[]; /* max_data bytes */
};

static uint32_t sse_max_data(const struct soth_sse_limits *l)
{
    return l != NULL && l->max_data != 0 ? l->max_data : SSE_DEFAULT_MAX_DATA;
}

size_t soth_sse_size(const struct soth_sse_limits *limits)
{
    return sizeof(struct soth_sse) + sse_max_data(limits);
}

struct soth_sse *soth_sse_init(void *mem, const struct soth_sse_limits *limits,
                               const struct soth_sse_cbs *cbs)
{
    struct soth_sse *s = mem;
    memset(s, 0, sizeof(*s));
    s->max_data = sse_max_data(limits);
    if (cbs != NULL)
        s->cbs = *cbs;
    s->retry = -1;
    return s;
}

uint64_t soth_sse_events(const struct soth_sse *s)
{
    return s->n_events;
}

uint64_t soth_sse_truncated(const struct soth_sse *s)
{
    return s->n_truncated;
}

static void event_reset(struct soth_sse *s)
{
    s->data_len = 0;
    s->data_kept = 0;
    s->ev_len = 0;
    s->ev_trunc = false;
    s->retry = -1;
}

/* Length of p[0..n) without a UTF-8 sequence cut at its end. */
static size_t utf8_trim(const char *p, size_t n)
{
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)p[i - 1] & 0xc0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0)
        return n;
    unsigned char lead = (unsigned char)p[i - 1];
    size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (need == 1)
        return n; /* ASCII (or stray continuation bytes: not ours to fix) */
    return back + 1 < need ? i - 1 : n;
}

/* A blank line: dispatch the event (WHATWG 9.2.6 "dispatch the event"). */
static void dispatch(struct soth_sse *s)
{
    if (s->data_len == 0) {
        event_reset(s);
        return;
    }
    /* The data buffer ends with the LF appended after each data line: drop it. */
    uint64_t full = s->data_len - 1;
    size_t kept = s->data_kept > full ? (size_t)full : s->data_kept;
    bool data_trunc = kept < full;
    if (data_trunc)
        kept = utf8_trim(s->data, kept);
    struct soth_sse_event e = {
        .event = soth_iov(s->ev, s->ev_len),
        .id = soth_iov(s->id, s->id_len),
        .retry = s->retry,
        .data = soth_iov(s->data, kept),
        .data_len = full,
        .truncated = data_trunc || s->ev_trunc || s->id_trunc,
    };
    if (s->ev_trunc)
        e.event.len = utf8_trim(s->ev, s->ev_len);
    if (s->id_trunc)
        e.id.len = utf8_trim(s->id, s->id_len);
    s->n_events++;
    if (e.truncated)
        s->n_truncated++;
    if (s->cbs.on_event != NULL)
        s->cbs.on_event(s->cbs.ctx, &e);
    event_reset(s);
}

static void data_append(struct soth_sse *s, const char *p, size_t n)
{
    uint32_t room = s->max_data - s->data_kept;
    size_t c = n < room ? n : room;
    memcpy(s->data + s->data_kept, p, c);
    s->data_kept += (uint32_t)c;
    s->data_len += n;
}

static void field_append(char *buf, uint16_t *len, bool *trunc, const char *p, size_t n)
{
    size_t room = SOTH_SSE_FIELD_MAX - *len;
    size_t c = n < room ? n : room;
    memcpy(buf + *len, p, c);
    *len = (uint16_t)(*len + c);
    if (c < n)
        *trunc = true;
}

static bool name_is(const struct soth_sse *s, const char *lit)
{
    size_t n = strlen(lit);
    return s->name_len == n && memcmp(s->name, lit, n) == 0;
}

/* The field name is complete (at its colon or at the line end): start its value. */
static void field_begin(struct soth_sse *s)
{
    s->field = F_OTHER;
    if (name_is(s, "data")) {
        s->field = F_DATA;
    } else if (name_is(s, "event")) {
        s->field = F_EVENT;
        s->ev_len = 0; /* the value replaces the event type buffer */
        s->ev_trunc = false;
    } else if (name_is(s, "id")) {
        s->field = F_ID;
        s->idt_len = 0;
        s->idt_trunc = false;
        s->idt_nul = false;
    } else if (name_is(s, "retry")) {
        s->field = F_RETRY;
        s->rt_digits = 0;
        s->rt_bad = false;
        s->rt_val = 0;
    }
}

static void value_bytes(struct soth_sse *s, const char *p, size_t n)
{
    switch (s->field) {
    case F_DATA:
        data_append(s, p, n);
        break;
    case F_EVENT:
        field_append(s->ev, &s->ev_len, &s->ev_trunc, p, n);
        break;
    case F_ID:
        if (memchr(p, '\0', n) != NULL)
            s->idt_nul = true;
        field_append(s->idt, &s->idt_len, &s->idt_trunc, p, n);
        break;
    case F_RETRY:
        for (size_t i = 0; i < n && !s->rt_bad; i++) {
            if (p[i] < '0' || p[i] > '9' || s->rt_digits >= SSE_RETRY_DIGITS) {
                s->rt_bad = true;
                break;
            }
            s->rt_val = s->rt_val * 10 + (p[i] - '0');
            s->rt_digits++;
        }
        break;
    default:
        break;
    }
}

/* The line of a field ended. */
static void field_end(struct soth_sse *s)
{
    switch (s->field) {
    case F_DATA:
        data_append(s, "\n", 1);
        break;
    case F_ID:
        if (!s->idt_nul) {
            memcpy(s->id, s->idt, s->idt_len);
            s->id_len = s->idt_len;
            s->id_trunc = s->idt_trunc;
        }
        break;
    case F_RETRY:
        if (!s->rt_bad && s->rt_digits > 0)
            s->retry = s->rt_val;
        break;
    default:
        break;
    }
}

static void line_end(struct soth_sse *s)
{
    switch (s->state) {
    case SS_LINE:
        dispatch(s);
        break;
    case SS_NAME:
        /* "a line without a colon: the whole line is the field name, the value empty" */
        field_begin(s);
        field_end(s);
        break;
    case SS_VALUE0:
    case SS_VALUE:
        field_end(s);
        break;
    default:
        break;
    }
    s->state = SS_LINE;
}

static void process(struct soth_sse *s, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (s->after_cr) {
            s->after_cr = false;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            line_end(s);
            s->after_cr = c == '\r';
            i++;
            continue;
        }
        switch (s->state) {
        case SS_LINE:
            if (c == ':') {
                s->state = SS_COMMENT;
                i++;
                break;
            }
            s->name_len = 0;
            s->state = SS_NAME;
            SOTH_FALLTHROUGH;
        case SS_NAME:
            if (c == ':') {
                field_begin(s);
                s->state = SS_VALUE0;
            } else if (s->name_len < SSE_NAME_MAX) {
                s->name[s->name_len++] = c;
            } else {
                s->name_len = SSE_NAME_MAX; /* too long for a known name: stays unknown */
            }
            i++;
            break;
        case SS_VALUE0:
            s->state = SS_VALUE;
            if (c == ' ') {
                i++;
                break;
            }
            SOTH_FALLTHROUGH;
        case SS_VALUE: {
            size_t j = i;
            while (j < n && p[j] != '\r' && p[j] != '\n')
                j++;
            value_bytes(s, p + i, j - i);
            i = j;
            break;
        }
        case SS_COMMENT: {
            size_t j = i;
            while (j < n && p[j] != '\r' && p[j] != '\n')
                j++;
            i = j;
            break;
        }
        default:
            SOTH_BUG_ON(1);
        }
    }
}

ssize_t soth_sse_feed(struct soth_sse *s, const char *data, size_t len)
{
    static const char bom[3] = {(char)0xef, (char)0xbb, (char)0xbf};
    size_t pos = 0;
    /* WHATWG: one leading U+FEFF is skipped; the bytes may arrive one at a time. */
    while (!s->bom_done && pos < len) {
        if (data[pos] == bom[s->bom_have]) {
            pos++;
            if (++s->bom_have == 3)
                s->bom_done = true;
            continue;
        }
        s->bom_done = true;
        process(s, bom, s->bom_have); /* a partial match was data after all */
    }
    if (pos < len)
        process(s, data + pos, len - pos);
    return (ssize_t)len;
}

bool soth_sse_finish(struct soth_sse *s)
{
    bool pending = s->data_len > 0 || s->state != SS_LINE;
    if (!s->bom_done && s->bom_have > 0)
        pending = true;
    struct soth_sse_cbs cbs = s->cbs;
    struct soth_sse_limits lim = {.max_data = s->max_data};
    uint64_t ne = s->n_events, nt = s->n_truncated;
    soth_sse_init(s, &lim, &cbs);
    s->n_events = ne;
    s->n_truncated = nt;
    return pending;
}
