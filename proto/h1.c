/*
 * HTTP/1.1 exchange engine (docs/http1.md): llhttp on both directions of one connection, heads and
 * trailers re-serialised from what llhttp reported, bodies passed through, chunk framing
 * re-emitted. Design and rejection list: docs/http1.md.
 *
 * Per direction the bytes go through one of three paths:
 *  - heads and trailer sections: a pre-scan (scan_head) runs ahead of llhttp and stops at the
 *    first byte llhttp 8.1.0 would wrongly accept (bare CR, bare LF, obs-fold, control bytes) or
 *    at the end of the section; llhttp then parses exactly the bytes before that point, so an
 *    error llhttp finds earlier wins and the outcome never depends on how input was split;
 *  - bodies: llhttp alone (it pauses at the last chunk and at the end of every message, so the
 *    next head or the trailer section always goes back through the pre-scan);
 *  - after a 101 / CONNECT 2xx: plain relay.
 */
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "soth/proto/h1.h"

#define DEF_MAX_HEAD     65536
#define MIN_MAX_HEAD     256
#define DEF_MAX_FIELDS   128
#define DEF_MAX_PIPELINE 32
#define MAX_PIPELINE     1024
#define MAX_CHUNK_EXT    4096 /* chunk-extension bytes per chunk line (dropped, but bounded) */

enum dir_state {
    DS_IDLE = 0,     /* between messages */
    DS_HEAD,         /* inside a head: pre-scan, then llhttp */
    DS_BODY,         /* after the head until the message completes */
    DS_TRAILERS,     /* chunked trailer section: pre-scan again */
    DS_WAIT_UPGRADE, /* request side: upgrade/CONNECT request sent, its answer pending */
    DS_RAW,          /* byte relay after a 101 / CONNECT 2xx */
    DS_DISCARD,      /* the connection ends after the last message: drop */
    DS_COUNT
};

/* Pre-scan of a head or trailer section (RFC 9112 2.2, 5.2). */
enum scan_state {
    SC_START = 0, /* before the start line; empty lines are skipped (RFC 9112 2.2) */
    SC_START_CR,  /* CR before the start line */
    SC_RLINE,     /* inside a request line: single SPs between its three parts */
    SC_RLINE_SP,  /* just after a SP of the request line */
    SC_LINE,      /* inside a line */
    SC_CR,        /* CR inside a line */
    SC_BOL,       /* beginning of a field line */
    SC_BOL_CR,    /* CR at the beginning of a line: the blank line */
    SC_COUNT
};

enum scan_result { SCAN_MORE = 0, SCAN_END, SCAN_ERR };

/* Exchange flags. */
#define X_REQ_DONE  0x01  /* request message complete */
#define X_RESP_DONE 0x02  /* final response complete */
#define X_HEAD      0x04  /* request method HEAD: the response has no body */
#define X_CONNECT   0x08  /* request method CONNECT */
#define X_UPG_REQ   0x10  /* request asks for a protocol switch (Upgrade or CONNECT) */
#define X_UPGRADED  0x20  /* the switch happened: byte relay */
#define X_CLOSE     0x40  /* a message of this exchange closes the connection */
#define X_NO_SWITCH 0x80  /* a final response other than a switch answered the request */
#define X_REQ_CLOSE 0x100 /* keep_upstream: the request's Connection: close was not forwarded */
#define X_IDEMP     0x200 /* idempotent request method (RFC 9110 9.2.2) */

struct xchg {
    uint32_t id;
    uint32_t flags; /* X_* */
    uint64_t req_bytes, resp_bytes;
};

/* Per-message facts gathered while the head is parsed. */
struct msg {
    int fstate; /* 0: between fields, 1: in a name, 2: in a value */
    size_t n_fields;
    bool line_done;      /* start line written */
    bool status_written; /* response: status code written */
    bool seen_cl, seen_te, seen_host;
    bool expect_continue;
    bool keep_alive;
    bool upgrade;
    bool local; /* request answered by the caller (SOTH_H1_LOCAL): read and dropped */
    bool interim;
    bool no_body;
    bool until_close;
    bool close_dropped; /* keep_upstream: a Connection: close field was left out */
    struct soth_iov method, target, version, reason, host, upgrade_proto;
    char upgrade_copy[64];  /* upgrade_proto outlives the head's section buffer */
    struct soth_header cur; /* the field being parsed, stored once its value completes */
    int cur_kind;           /* FK_* of cur */
    uint32_t id;
    size_t ext_bytes;    /* chunk-extension bytes on the current chunk line */
    uint64_t chunk_left; /* chunk-data bytes of the current chunk still due */
    unsigned chunk_crlf; /* bytes of the CRLF after the chunk data still due (0..2) */
};

struct dir {
    llhttp_t p; /* first member: llhttp callbacks cast their llhttp_t * back */
    struct soth_h1 *h;
    enum soth_leg side; /* the leg this direction's messages come from */
    enum dir_state state;
    enum scan_state sc;
    bool need_reset;            /* request parser restarts before the next request */
    size_t raw;                 /* bytes of the current head/trailer section pre-scanned */
    char *buf;                  /* re-serialised head or trailer section */
    size_t cap, used;           /* of buf */
    struct soth_header *fields; /* max_fields entries, pointing into buf */
    struct msg m;
};

struct h1_err {
    bool set;
    enum soth_leg side;
    uint32_t id;
    unsigned status; /* 0: not a protocol error (out/on_head failed) */
    const char *code, *detail;
    int rc;
};

struct soth_h1 {
    struct dir d[SOTH_LEG_COUNT]; /* by the leg the messages come from */
    struct soth_h1_cbs cbs;
    struct soth_h1_limits lim;
    struct xchg *q; /* FIFO ring of exchanges in flight: Q_INLINE entries in the engine's own
                       memory, or lim.max_pipeline + 1 on the heap (q_reserve) */
    size_t qcap, qhead, qlen; /* qcap over q_inline_cap(&lim): q is on the heap */
    uint32_t next_id;
    bool dead;                /* error or abort: feeds refused */
    bool done;                /* finished normally: feeds dropped */
    bool closing;             /* a message closed the connection: no new request starts */
    bool upgraded;            /* byte relay */
    bool lend;                /* section buffers are lent by cbs.sec_get while a section is built */
    bool eof[SOTH_LEG_COUNT]; /* by leg */
    bool keep_upstream;       /* soth_h1_set_keep_upstream */
    bool up_close;            /* a final response closed (or read until close) the upstream */
    bool up_dropped;          /* upstream bytes were dropped after the last response */
    struct h1_err err;
};

static const char *const outcome_names[SOTH_H1_OUTCOME_COUNT] = {
    "complete", "client_aborted", "upstream_aborted", "reset", "timeout",
};

const char *soth_h1_outcome_name(enum soth_h1_outcome o)
{
    if ((unsigned)o >= SOTH_H1_OUTCOME_COUNT)
        return "unknown";
    return outcome_names[o];
}

/* ---- sizing and setup */

static void limits_fill(struct soth_h1_limits *l, const struct soth_h1_limits *in)
{
    *l = in != NULL ? *in : (struct soth_h1_limits){0};
    if (l->max_head == 0)
        l->max_head = DEF_MAX_HEAD;
    if (l->max_head < MIN_MAX_HEAD)
        l->max_head = MIN_MAX_HEAD;
    if (l->max_fields == 0)
        l->max_fields = DEF_MAX_FIELDS;
    if (l->max_pipeline == 0)
        l->max_pipeline = DEF_MAX_PIPELINE;
    if (l->max_pipeline > MAX_PIPELINE)
        l->max_pipeline = MAX_PIPELINE;
}

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/*
 * The re-serialised form of a head is at most its raw size plus one byte per field ("a:b"
 * becomes "a: b") plus one for a status line without reason ("HTTP/1.1 200" gains its SP), so
 * a buffer of this size never overflows before the raw limit trips; trailers add "0\r\n".
 */
static size_t buf_cap(const struct soth_h1_limits *l)
{
    return l->max_head + l->max_fields + 16;
}

/*
 * Exchanges in flight held in the engine's own memory. A connection that pipelines deeper moves
 * its ring to the heap, once, at its full size (q_reserve), so that the engine of every
 * connection, idle ones included, is not sized for the deepest pipeline (33 entries: 792
 * bytes).
 */
#define Q_INLINE 4

static size_t q_inline_cap(const struct soth_h1_limits *l)
{
    return l->max_pipeline + 1 < Q_INLINE ? l->max_pipeline + 1 : Q_INLINE;
}

static size_t core_size(const struct soth_h1_limits *l)
{
    return align16(sizeof(struct soth_h1)) + align16(q_inline_cap(l) * sizeof(struct xchg));
}

/* A section buffer: the field table, then the re-serialised bytes. */
static size_t section_size(const struct soth_h1_limits *l)
{
    return align16(l->max_fields * sizeof(struct soth_header)) + align16(buf_cap(l));
}

size_t soth_h1_size(const struct soth_h1_limits *limits)
{
    struct soth_h1_limits l;
    limits_fill(&l, limits);
    return core_size(&l) + 2 * section_size(&l);
}

size_t soth_h1_core_size(const struct soth_h1_limits *limits)
{
    struct soth_h1_limits l;
    limits_fill(&l, limits);
    return core_size(&l);
}

size_t soth_h1_section_size(const struct soth_h1_limits *limits)
{
    struct soth_h1_limits l;
    limits_fill(&l, limits);
    return section_size(&l);
}

static int cb_message_begin(llhttp_t *p);
static int cb_method(llhttp_t *p, const char *at, size_t n);
static int cb_method_complete(llhttp_t *p);
static int cb_url(llhttp_t *p, const char *at, size_t n);
static int cb_url_complete(llhttp_t *p);
static int cb_version(llhttp_t *p, const char *at, size_t n);
static int cb_version_complete(llhttp_t *p);
static int cb_status(llhttp_t *p, const char *at, size_t n);
static int cb_status_complete(llhttp_t *p);
static int cb_header_field(llhttp_t *p, const char *at, size_t n);
static int cb_header_field_complete(llhttp_t *p);
static int cb_header_value(llhttp_t *p, const char *at, size_t n);
static int cb_header_value_complete(llhttp_t *p);
static int cb_headers_complete(llhttp_t *p);
static int cb_body(llhttp_t *p, const char *at, size_t n);
static int cb_chunk_header(llhttp_t *p);
static int cb_chunk_complete(llhttp_t *p);
static int cb_chunk_ext(llhttp_t *p, const char *at, size_t n);
static int cb_chunk_ext_complete(llhttp_t *p);
static int cb_message_complete(llhttp_t *p);

static const llhttp_settings_t settings = {
    .on_message_begin = cb_message_begin,
    .on_url = cb_url,
    .on_status = cb_status,
    .on_method = cb_method,
    .on_version = cb_version,
    .on_header_field = cb_header_field,
    .on_header_value = cb_header_value,
    .on_chunk_extension_name = cb_chunk_ext,
    .on_chunk_extension_value = cb_chunk_ext,
    .on_headers_complete = cb_headers_complete,
    .on_body = cb_body,
    .on_message_complete = cb_message_complete,
    .on_url_complete = cb_url_complete,
    .on_status_complete = cb_status_complete,
    .on_method_complete = cb_method_complete,
    .on_version_complete = cb_version_complete,
    .on_header_field_complete = cb_header_field_complete,
    .on_header_value_complete = cb_header_value_complete,
    .on_chunk_header = cb_chunk_header,
    .on_chunk_complete = cb_chunk_complete,
    .on_chunk_extension_name_complete = cb_chunk_ext_complete,
    .on_chunk_extension_value_complete = cb_chunk_ext_complete,
};

static void sec_carve(struct dir *d, char *p, const struct soth_h1_limits *l)
{
    d->fields = (struct soth_header *)(void *)p;
    d->buf = p + align16(l->max_fields * sizeof(struct soth_header));
    d->cap = buf_cap(l);
}

/* A section is being built: make sure d has its buffer (lent ones are taken here). */
static bool sec_take(struct dir *d)
{
    if (d->buf != NULL)
        return true;
    struct soth_h1 *h = d->h;
    char *p = h->cbs.sec_get(h->cbs.ctx);
    if (p == NULL)
        return false;
    sec_carve(d, p, &h->lim);
    return true;
}

/* The section is forwarded (or abandoned): a lent buffer goes back. */
static void sec_drop(struct dir *d)
{
    if (!d->h->lend || d->buf == NULL)
        return;
    d->h->cbs.sec_put(d->h->cbs.ctx, d->fields);
    d->buf = NULL;
    d->fields = NULL;
    d->cap = 0;
}

struct soth_h1 *soth_h1_init(void *mem, const struct soth_h1_limits *limits,
                             const struct soth_h1_cbs *cbs)
{
    struct soth_h1 *h = mem;
    char *p = mem;
    memset(h, 0, sizeof(*h));
    limits_fill(&h->lim, limits);
    h->cbs = *cbs;
    p += align16(sizeof(*h));
    h->q = (struct xchg *)(void *)p;
    h->qcap = q_inline_cap(&h->lim);
    p += align16(h->qcap * sizeof(struct xchg));
    h->lend = cbs->sec_get != NULL && cbs->sec_put != NULL;
    for (unsigned s = 0; s < SOTH_LEG_COUNT; s++) {
        struct dir *d = &h->d[s];
        if (!h->lend) {
            sec_carve(d, p, &h->lim);
            p += section_size(&h->lim);
        }
        d->h = h;
        d->side = soth_leg_of(s);
        d->state = DS_IDLE;
        llhttp_init(&d->p, d->side == SOTH_LEG_CLIENT ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
        d->p.data = d;
    }
    h->next_id = 1;
    return h;
}

void soth_h1_dispose(struct soth_h1 *h)
{
    sec_drop(&h->d[0]);
    sec_drop(&h->d[1]);
    if (h->qcap > q_inline_cap(&h->lim)) {
        free(h->q);
        h->q = NULL;
        h->qcap = h->qlen = 0;
    }
}

struct soth_h1 *soth_h1_new(const struct soth_h1_limits *limits, const struct soth_h1_cbs *cbs)
{
    void *mem = malloc(soth_h1_size(limits));
    if (mem == NULL)
        return NULL;
    return soth_h1_init(mem, limits, cbs);
}

void soth_h1_free(struct soth_h1 *h)
{
    if (h == NULL)
        return;
    soth_h1_dispose(h);
    free(h);
}

/* ---- FIFO of exchanges */

static struct xchg *q_at(struct soth_h1 *h, size_t i)
{
    return &h->q[(h->qhead + i) % h->qcap];
}

/* The exchange whose response is expected next, NULL when none. */
static struct xchg *q_awaiting(struct soth_h1 *h)
{
    for (size_t i = 0; i < h->qlen; i++) {
        struct xchg *x = q_at(h, i);
        if ((x->flags & (X_RESP_DONE | X_UPGRADED)) == 0)
            return x;
    }
    return NULL;
}

/* The exchange of the request being received (the newest). */
static struct xchg *q_newest(struct soth_h1 *h)
{
    return h->qlen > 0 ? q_at(h, h->qlen - 1) : NULL;
}

/* Room for one more exchange: a full inline ring moves to the heap at its full size,
 * lim.max_pipeline + 1 entries (the client is paused at lim.max_pipeline, so that one never
 * fills). */
static bool q_reserve(struct soth_h1 *h)
{
    if (h->qlen < h->qcap)
        return true;
    size_t cap = h->lim.max_pipeline + 1;
    SOTH_BUG_ON(cap <= h->qcap); /* already on the heap, or no deeper than inline */
    struct xchg *q = malloc(cap * sizeof(*q));
    if (q == NULL)
        return false;
    for (size_t i = 0; i < h->qlen; i++)
        q[i] = *q_at(h, i);
    h->q = q;
    h->qcap = cap;
    h->qhead = 0;
    return true;
}

static void report(struct soth_h1 *h, struct xchg *x, enum soth_h1_outcome o)
{
    if (h->cbs.on_exchange != NULL) {
        struct soth_h1_exchange e = {
            .stream_id = x->id,
            .outcome = o,
            .request_bytes = x->req_bytes,
            .response_bytes = x->resp_bytes,
            .upgraded = (x->flags & X_UPGRADED) != 0,
            .close = (x->flags & X_CLOSE) != 0,
        };
        h->cbs.on_exchange(h->cbs.ctx, &e);
    }
}

static void q_pop(struct soth_h1 *h)
{
    h->qhead = (h->qhead + 1) % h->qcap;
    h->qlen--;
}

static void update_done(struct soth_h1 *h)
{
    if (h->dead || h->done || h->qlen > 0 || h->upgraded)
        return;
    if (h->eof[SOTH_LEG_CLIENT] || (h->closing && h->d[SOTH_LEG_CLIENT].state == DS_DISCARD))
        h->done = true;
}

/* Report, in order, every exchange whose request and response are both complete. */
static void q_settle(struct soth_h1 *h)
{
    while (h->qlen > 0) {
        struct xchg *x = q_at(h, 0);
        if ((x->flags & (X_REQ_DONE | X_RESP_DONE)) != (X_REQ_DONE | X_RESP_DONE))
            break;
        report(h, x, SOTH_H1_COMPLETE);
        q_pop(h);
    }
    update_done(h);
}

/* End everything in flight: an exchange whose response completed counts as complete. */
static void q_end_all(struct soth_h1 *h, enum soth_h1_outcome o)
{
    while (h->qlen > 0) {
        struct xchg *x = q_at(h, 0);
        enum soth_h1_outcome xo = o;
        if ((x->flags & X_RESP_DONE) != 0)
            xo = SOTH_H1_COMPLETE;
        report(h, x, xo);
        q_pop(h);
    }
}

/* ---- errors */

static unsigned err_status(enum soth_leg side, bool too_large)
{
    if (side == SOTH_LEG_UPSTREAM)
        return 502;
    return too_large ? 431 : 400;
}

/* Record the first error; the feed loop reports it once llhttp has returned. */
static void set_err(struct soth_h1 *h, enum soth_leg side, unsigned status, const char *code,
                    const char *detail, int rc)
{
    if (h->err.set)
        return;
    const struct dir *d = &h->d[side];
    uint32_t id = d->m.id; /* set once the head is complete */
    if (id == 0 && side == SOTH_LEG_CLIENT) {
        id = h->next_id;
    } else if (id == 0) {
        const struct xchg *x = q_awaiting(h);
        id = x != NULL ? x->id : 0;
    }
    h->err = (struct h1_err){true, side, id, status, code, detail, rc};
}

static void proto_err(struct dir *d, const char *code, const char *detail)
{
    set_err(d->h, d->side, err_status(d->side, false), code, detail, SOTH_E_MALFORMED);
}

static void size_err(struct dir *d, const char *code, const char *detail)
{
    set_err(d->h, d->side, err_status(d->side, true), code, detail, SOTH_E_TOO_LARGE);
}

/* Report the recorded error and kill the engine; returns the feed's result. */
static int fail(struct soth_h1 *h)
{
    SOTH_BUG_ON(!h->err.set);
    h->dead = true;
    if (h->err.status != 0 && h->cbs.on_error != NULL)
        h->cbs.on_error(h->cbs.ctx, h->err.side, h->err.id, h->err.status, h->err.code,
                        h->err.detail);
    return h->err.rc;
}

/* llhttp's own errors, mapped to stable codes. */
static void llhttp_err(struct dir *d, enum llhttp_errno e)
{
    const char *code;
    const char *detail = llhttp_get_error_reason(&d->p);
    switch (e) {
    case HPE_INVALID_METHOD:
        code = "bad_method";
        break;
    case HPE_INVALID_URL:
        code = "bad_target";
        break;
    case HPE_INVALID_CONSTANT:
    case HPE_INVALID_VERSION:
        code = "bad_start_line";
        break;
    case HPE_INVALID_STATUS:
        code = "bad_status";
        break;
    case HPE_INVALID_HEADER_TOKEN:
    case HPE_UNEXPECTED_SPACE:
        code = "bad_header";
        break;
    case HPE_INVALID_CONTENT_LENGTH:
        code = "bad_content_length";
        break;
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        code = "content_length_and_transfer_encoding";
        break;
    case HPE_INVALID_TRANSFER_ENCODING:
        code = "bad_transfer_encoding";
        break;
    case HPE_INVALID_CHUNK_SIZE:
        code = "bad_chunk_size";
        break;
    case HPE_STRICT:
    case HPE_LF_EXPECTED:
    case HPE_CR_EXPECTED:
        code = "bad_framing";
        break;
    default:
        code = "malformed";
        break;
    }
    if (detail == NULL || detail[0] == '\0')
        detail = llhttp_errno_name(e);
    proto_err(d, code, detail);
}

/* ---- output */

static int emit(struct soth_h1 *h, enum soth_leg to, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (to == SOTH_LEG_UPSTREAM && h->d[SOTH_LEG_CLIENT].m.local)
        return 0; /* a request the caller answered itself: nothing of it goes upstream */
    int rc = h->cbs.out(h->cbs.ctx, to, p, n);
    if (rc < 0)
        set_err(h, soth_leg_other(to), 0, NULL, NULL, rc);
    return rc;
}

/* Append to the re-serialised head; never overflows before the raw limit (see buf_cap). */
static int put(struct dir *d, const char *p, size_t n)
{
    if (!sec_take(d)) {
        set_err(d->h, d->side, 0, NULL, NULL, SOTH_E_NOMEM);
        return -1;
    }
    if (n > d->cap - d->used) {
        size_err(d, "head_too_large", "header section over the size limit");
        return -1;
    }
    memcpy(d->buf + d->used, p, n);
    d->used += n;
    return 0;
}

#define PUT_LIT(d, s) put((d), (s), sizeof(s) - 1)

/* ---- pre-scan */

static bool is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* Bytes allowed inside a line without a second look: VCHAR, SP, HTAB, obs-text. */
static bool is_plain(unsigned char c)
{
    return (c >= 0x20 && c != 0x7f) || c == '\t';
}

/*
 * Scan [p, p+n) of a head or trailer section. Sets *used to the bytes llhttp may see: up to and
 * including the final LF (SCAN_END), up to but excluding the first bad byte (SCAN_ERR: the
 * caller records the error only after llhttp ran on the bytes before it, see feed_section), or
 * all of them (SCAN_MORE).
 */
static enum scan_result scan_head(struct dir *d, const char *p, size_t n, size_t *used,
                                  const char **code, const char **detail, bool *too_large)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t room = d->h->lim.max_head - d->raw; /* raw never exceeds max_head */
    size_t lim = n < room ? n : room;
    enum scan_result r = SCAN_MORE;
    size_t i;
    *too_large = false;
    for (i = 0; i < lim; i++) {
        if (d->sc == SC_LINE) {
            while (i < lim && u[i] != '\r' && is_plain(u[i]))
                i++;
            if (i == lim)
                break;
        } else if (d->sc == SC_RLINE) {
            while (i < lim && u[i] > 0x20 && u[i] != 0x7f)
                i++;
            if (i == lim)
                break;
        }
        unsigned char c = u[i];
        switch (d->sc) {
        case SC_START:
            if (c == '\r')
                d->sc = SC_START_CR;
            else if (c == '\n')
                goto bare_lf;
            else if (is_ctl(c))
                goto ctl;
            else if (d->side == SOTH_LEG_CLIENT && (c == ' ' || c == '\t'))
                goto bad_sp;
            else
                d->sc = d->side == SOTH_LEG_CLIENT ? SC_RLINE : SC_LINE;
            break;
        case SC_RLINE:
        case SC_RLINE_SP:
            /* RFC 9112 3: method SP request-target SP HTTP-version, one SP each; the plain
             * path's head parser (proto/connect.c) refuses the same (docs/http1.md). */
            if (c == '\r' && d->sc == SC_RLINE)
                d->sc = SC_CR;
            else if (c == ' ' && d->sc == SC_RLINE)
                d->sc = SC_RLINE_SP;
            else if (c == ' ' || c == '\t' || c == '\r')
                goto bad_sp;
            else if (c == '\n')
                goto bare_lf;
            else if (is_ctl(c))
                goto ctl;
            else
                d->sc = SC_RLINE;
            break;
        case SC_START_CR:
            if (c != '\n')
                goto bare_cr;
            d->sc = SC_START;
            break;
        case SC_LINE:
            if (c == '\r')
                d->sc = SC_CR;
            else if (c == '\n')
                goto bare_lf;
            else
                goto ctl;
            break;
        case SC_CR:
            if (c != '\n')
                goto bare_cr;
            d->sc = SC_BOL;
            break;
        case SC_BOL:
            if (c == '\r') {
                d->sc = SC_BOL_CR;
            } else if (c == ' ' || c == '\t') {
                *code = "obs_fold";
                *detail = "field line starts with whitespace (obs-fold)";
                goto bad;
            } else if (c == '\n') {
                goto bare_lf;
            } else if (is_ctl(c)) {
                goto ctl;
            } else {
                d->sc = SC_LINE;
            }
            break;
        case SC_BOL_CR:
            if (c != '\n')
                goto bare_cr;
            i++;
            r = SCAN_END;
            goto out;
        default:
            SOTH_BUG_ON(1);
        }
    }
    if (i == room && i < n) {
        *code = d->state == DS_TRAILERS ? "trailers_too_large" : "head_too_large";
        *detail = "header section over the size limit";
        *too_large = true;
        r = SCAN_ERR;
    }
    goto out;
bad_sp:
    *code = "bad_start_line";
    *detail = "the request line must be METHOD SP TARGET SP VERSION, one space each";
    goto bad;
bare_cr:
    *code = "bare_cr";
    *detail = "CR not followed by LF in the header section";
    goto bad;
bare_lf:
    *code = "bare_lf";
    *detail = "line ended by LF without CR";
    goto bad;
ctl:
    *code = "control_bytes";
    *detail = "control byte in the header section";
bad:
    r = SCAN_ERR;
out:
    d->raw += i;
    *used = i;
    return r;
}

/* ---- llhttp callbacks */

static struct dir *dir_of(llhttp_t *p)
{
    return (struct dir *)p->data;
}

static bool iov_ieq(struct soth_iov v, const char *s)
{
    size_t n = strlen(s);
    return v.len == n && strncasecmp(v.base, s, n) == 0;
}

/* Fields the engine acts on, classified once per field. */
enum { FK_OTHER = 0, FK_CL, FK_TE, FK_HOST, FK_EXPECT, FK_UPGRADE, FK_CONNECTION };

static int field_kind(struct soth_iov n)
{
    switch (n.len) {
    case 4:
        return iov_ieq(n, "host") ? FK_HOST : FK_OTHER;
    case 6:
        return iov_ieq(n, "expect") ? FK_EXPECT : FK_OTHER;
    case 7:
        return iov_ieq(n, "upgrade") ? FK_UPGRADE : FK_OTHER;
    case 10:
        return iov_ieq(n, "connection") ? FK_CONNECTION : FK_OTHER;
    case 14:
        return iov_ieq(n, "content-length") ? FK_CL : FK_OTHER;
    case 17:
        return iov_ieq(n, "transfer-encoding") ? FK_TE : FK_OTHER;
    default:
        return FK_OTHER;
    }
}

static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-')
        return true;
    return c != '\0' && strchr("!#$%&'*+.^_`|~", c) != NULL;
}

static int cb_message_begin(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    if (d->state != DS_HEAD)
        return -1;
    if (d->side == SOTH_LEG_UPSTREAM) {
        d->m.version.base = d->buf + d->used;
        if (PUT_LIT(d, "HTTP/") < 0)
            return -1;
    }
    return 0;
}

static int cb_method(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    if (d->m.method.base == NULL)
        d->m.method.base = d->buf + d->used;
    d->m.method.len += n;
    return put(d, at, n) < 0 ? HPE_USER : 0;
}

static int cb_method_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    if (PUT_LIT(d, " ") < 0)
        return -1;
    d->m.target.base = d->buf + d->used;
    return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    d->m.target.len += n;
    return put(d, at, n) < 0 ? HPE_USER : 0;
}

static int cb_url_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    d->m.version.base = d->buf + d->used + 1;
    return PUT_LIT(d, " HTTP/") < 0 ? -1 : 0;
}

static int cb_version(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    return put(d, at, n) < 0 ? HPE_USER : 0;
}

static int cb_version_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    const char *v = d->m.version.base;
    d->m.version.len = (size_t)(d->buf + d->used - v);
    if (d->m.version.len != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1')) {
        proto_err(d, "bad_version", "HTTP version other than 1.0 or 1.1");
        return -1;
    }
    if (d->side == SOTH_LEG_CLIENT) {
        if (PUT_LIT(d, "\r\n") < 0)
            return -1;
        d->m.line_done = true;
    } else if (PUT_LIT(d, " ") < 0) {
        return -1;
    }
    return 0;
}

/*
 * Response: write the status code (known once its digits were parsed) before the reason.
 * Checks that can fail run only in *_complete callbacks: llhttp calls span callbacks (on_status,
 * on_header_field, ...) wherever a read ends, so an error raised there would come before or
 * after an llhttp error in the same span depending on the split.
 */
static int status_prefix(struct dir *d)
{
    if (d->m.status_written)
        return 0;
    unsigned st = d->p.status_code % 1000;
    char num[4] = {(char)('0' + st / 100), (char)('0' + st / 10 % 10), (char)('0' + st % 10), ' '};
    if (put(d, num, sizeof(num)) < 0)
        return -1;
    d->m.status_written = true;
    d->m.reason.base = d->buf + d->used;
    return 0;
}

static int status_line_end(struct dir *d)
{
    if (d->m.line_done)
        return 0;
    if (d->p.status_code < 100 || d->p.status_code > 999) {
        proto_err(d, "bad_status", "status code outside 100..999");
        return -1;
    }
    if (status_prefix(d) < 0 || PUT_LIT(d, "\r\n") < 0)
        return -1;
    d->m.line_done = true;
    return 0;
}

static int cb_status(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    if (status_prefix(d) < 0)
        return HPE_USER;
    d->m.reason.len += n;
    return put(d, at, n) < 0 ? HPE_USER : 0;
}

static int cb_status_complete(llhttp_t *p)
{
    return status_line_end(dir_of(p)) < 0 ? -1 : 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    if (d->m.fstate != 1) {
        d->m.cur.name = soth_iov(d->buf + d->used, 0);
        d->m.fstate = 1;
    }
    d->m.cur.name.len += n;
    return put(d, at, n) < 0 ? HPE_USER : 0;
}

static int cb_header_field_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    struct soth_iov name = d->m.cur.name;
    if (d->m.n_fields == d->h->lim.max_fields) {
        size_err(d, "too_many_headers", "more header fields than the limit");
        return -1;
    }
    for (size_t i = 0; i < name.len; i++) {
        if (!is_tchar((unsigned char)name.base[i])) {
            proto_err(d, "bad_header_name", "header name is not a token");
            return -1;
        }
    }
    if (name.len == 0) {
        proto_err(d, "bad_header_name", "empty header name");
        return -1;
    }
    /* Framing headers: decided here, before llhttp acts on the value, so the code does not
     * depend on which of llhttp's checks would fire first (RFC 9112 6.1, 6.3). */
    int kind = field_kind(name);
    bool is_cl = kind == FK_CL;
    bool is_te = kind == FK_TE;
    d->m.cur_kind = kind;
    if (d->state == DS_TRAILERS) {
        if (is_cl || is_te || kind == FK_HOST) {
            proto_err(d, "forbidden_trailer", "framing or routing field in a trailer section");
            return -1;
        }
    } else if (is_cl) {
        if (d->m.seen_te) {
            proto_err(d, "content_length_and_transfer_encoding",
                      "both Content-Length and Transfer-Encoding");
            return -1;
        }
        if (d->m.seen_cl) {
            proto_err(d, "duplicate_content_length", "more than one Content-Length field");
            return -1;
        }
        d->m.seen_cl = true;
    } else if (is_te) {
        if (d->m.seen_cl) {
            proto_err(d, "content_length_and_transfer_encoding",
                      "both Content-Length and Transfer-Encoding");
            return -1;
        }
        if (d->m.seen_te) {
            proto_err(d, "bad_transfer_encoding", "more than one Transfer-Encoding field");
            return -1;
        }
        d->m.seen_te = true;
    } else if (d->side == SOTH_LEG_CLIENT && kind == FK_HOST) {
        if (d->m.seen_host) {
            proto_err(d, "duplicate_host", "more than one Host field");
            return -1;
        }
        d->m.seen_host = true;
    }
    if (PUT_LIT(d, ": ") < 0)
        return -1;
    d->m.cur.value = soth_iov(d->buf + d->used, 0);
    d->m.fstate = 2;
    return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    d->m.cur.value.len += n;
    return put(d, at, n) < 0 ? HPE_USER : 0;
}

static int cb_header_value_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    struct soth_header *f = &d->fields[d->m.n_fields];
    *f = d->m.cur;
    /* llhttp skips leading OWS but keeps trailing OWS (RFC 9112 5.1: not part of the value). */
    while (f->value.len > 0 &&
           (f->value.base[f->value.len - 1] == ' ' || f->value.base[f->value.len - 1] == '\t')) {
        f->value.len--;
        d->used--;
    }
    d->m.fstate = 0;
    if (d->state != DS_TRAILERS && d->m.cur_kind == FK_CONNECTION && d->h->keep_upstream &&
        d->side == SOTH_LEG_CLIENT && p->http_major == 1 && p->http_minor == 1 &&
        iov_ieq(f->value, "close")) {
        /* docs/http1.md "Upstream connection pool": the origin connection outlives this
         * client's, so its close stays with us (the exchange still closes the client's). */
        d->used = (size_t)(f->name.base - d->buf);
        d->m.close_dropped = true;
        return 0;
    }
    if (PUT_LIT(d, "\r\n") < 0)
        return -1;
    d->m.n_fields++;
    if (d->state == DS_TRAILERS)
        return 0;
    switch (d->m.cur_kind) {
    case FK_TE:
        /* Only a lone "chunked" is accepted: any other coding list (gzip, chunked; chunked,
         * chunked; identity) is a smuggling shape or an encoding we would report undecoded. */
        if (!iov_ieq(f->value, "chunked")) {
            proto_err(d, "bad_transfer_encoding", "Transfer-Encoding other than chunked");
            return -1;
        }
        break;
    case FK_HOST:
        d->m.host = f->value;
        break;
    case FK_EXPECT:
        if (iov_ieq(f->value, "100-continue"))
            d->m.expect_continue = true;
        break;
    case FK_UPGRADE:
        d->m.upgrade_proto = f->value;
        break;
    default:
        break;
    }
    return 0;
}

/* scheme/authority/path of a request target (RFC 9112 3.2). */
static void split_target(const struct msg *m, struct soth_h1_head *hd, bool is_connect)
{
    struct soth_iov t = m->target;
    hd->scheme = SOTH_IOV_NULL;
    hd->authority = m->host;
    hd->path = t;
    if (is_connect) {
        hd->authority = t;
        hd->path = SOTH_IOV_NULL;
        return;
    }
    if (t.len == 0 || t.base[0] == '/' || (t.len == 1 && t.base[0] == '*'))
        return;
    for (size_t i = 0; i + 2 < t.len; i++) {
        if (t.base[i] == ':' && t.base[i + 1] == '/' && t.base[i + 2] == '/') {
            size_t a = i + 3, e = a;
            while (e < t.len && t.base[e] != '/' && t.base[e] != '?')
                e++;
            hd->scheme = soth_iov(t.base, i);
            hd->authority = soth_iov(t.base + a, e - a);
            hd->path = e < t.len ? soth_iov(t.base + e, t.len - e) : SOTH_IOV_LIT("/");
            return;
        }
        if (t.base[i] == '/' || t.base[i] == '?')
            return;
    }
}

static bool conn_keep_alive(const llhttp_t *p)
{
    if (p->http_minor == 1)
        return (p->flags & F_CONNECTION_CLOSE) == 0;
    return (p->flags & F_CONNECTION_KEEP_ALIVE) != 0;
}

/* A final response that is not a switch answered exchange x. */
static void resolve_upgrade_wait(struct soth_h1 *h, struct xchg *x)
{
    struct dir *c = &h->d[SOTH_LEG_CLIENT];
    x->flags |= X_NO_SWITCH;
    if (c->state != DS_WAIT_UPGRADE)
        return;
    /* llhttp paused optimistically after the upgrade/CONNECT request; the answer was not a
     * switch, so the request parser starts over before the next request. */
    c->need_reset = true;
    c->state = h->closing ? DS_DISCARD : DS_IDLE;
}

static int headers_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    struct soth_h1 *h = d->h;
    struct msg *m = &d->m;
    int ret = 0;
    struct xchg *x;

    if (m->version.len != 8) {
        /* llhttp takes "GET /x\r\n" as HTTP/0.9; we do not forward that. */
        proto_err(d, "bad_version", "request without an HTTP version");
        return -1;
    }
    if (d->side == SOTH_LEG_UPSTREAM && status_line_end(d) < 0)
        return -1;
    if (d->side == SOTH_LEG_UPSTREAM && h->keep_upstream) {
        /* The client asked to close and the origin did not: the client hears it from us. */
        const struct xchg *w = q_awaiting(h);
        unsigned st = p->status_code;
        if (w != NULL && (w->flags & X_REQ_CLOSE) != 0 && st >= 200 && st != 101 &&
            !((w->flags & X_CONNECT) != 0 && st < 300) && conn_keep_alive(p) &&
            PUT_LIT(d, "Connection: close\r\n") < 0)
            return -1;
    }
    if (PUT_LIT(d, "\r\n") < 0)
        return -1;

    struct soth_h1_head hd = {
        .method = m->method,
        .target = m->target,
        .version = m->version,
        .http_minor = p->http_minor,
        .headers = d->fields,
        .n_headers = m->n_fields,
        .chunked = (p->flags & F_CHUNKED) != 0,
        .has_content_length = (p->flags & F_CONTENT_LENGTH) != 0,
        .expect_continue = m->expect_continue,
    };
    if (hd.has_content_length)
        hd.content_length = p->content_length;
    if (m->seen_te && p->http_minor == 0) {
        /* RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing. */
        proto_err(d, "bad_transfer_encoding", "Transfer-Encoding in an HTTP/1.0 message");
        return -1;
    }
    m->keep_alive = conn_keep_alive(p);

    if (d->side == SOTH_LEG_CLIENT) {
        bool is_connect = p->method == HTTP_CONNECT;
        if (p->http_minor == 1 && !m->seen_host) {
            proto_err(d, "missing_host", "HTTP/1.1 request without Host");
            return -1;
        }
        split_target(m, &hd, is_connect);
        m->upgrade = p->upgrade != 0;
        hd.upgrade = m->upgrade;
        hd.no_body = !hd.chunked && hd.content_length == 0;
        hd.keep_alive = m->keep_alive;
        if (!q_reserve(h)) {
            set_err(h, d->side, 0, NULL, NULL, SOTH_E_NOMEM);
            return -1;
        }
        SOTH_BUG_ON(h->qlen >= h->qcap);
        m->id = h->next_id++;
        x = q_at(h, h->qlen++);
        *x = (struct xchg){.id = m->id};
        if (p->method == HTTP_HEAD)
            x->flags |= X_HEAD;
        if (p->method == HTTP_GET || p->method == HTTP_HEAD || p->method == HTTP_OPTIONS ||
            p->method == HTTP_TRACE || p->method == HTTP_PUT || p->method == HTTP_DELETE)
            x->flags |= X_IDEMP;
        if (is_connect)
            x->flags |= X_CONNECT;
        if (m->upgrade)
            x->flags |= X_UPG_REQ;
        if (!m->keep_alive)
            x->flags |= X_CLOSE;
        if (m->close_dropped)
            x->flags |= X_REQ_CLOSE;
        else if (!m->keep_alive)
            h->up_close = true; /* the origin was told to close */
    } else {
        unsigned st = p->status_code;
        x = q_awaiting(h);
        SOTH_BUG_ON(x == NULL);
        m->id = x->id;
        hd.status = st;
        hd.reason = m->reason;
        if (st == 101) {
            if ((x->flags & X_UPG_REQ) == 0 || (x->flags & X_CONNECT) != 0) {
                proto_err(d, "unexpected_upgrade", "101 without an Upgrade request");
                return -1;
            }
            if (!p->upgrade) {
                proto_err(d, "bad_upgrade", "101 without Upgrade and Connection: upgrade");
                return -1;
            }
            m->upgrade = true;
            ret = 1;
        } else if (st < 200) {
            m->interim = true;
            ret = 1;
        } else if ((x->flags & X_CONNECT) != 0 && st < 300) {
            m->upgrade = true;
            ret = 2;
        } else if ((x->flags & X_HEAD) != 0 || st == 204 || st == 304) {
            /* RFC 9110 6.4.1: no body whatever the framing fields say. */
            ret = 1;
        }
        if (ret != 0) {
            hd.no_body = true;
        } else if (!hd.chunked && !hd.has_content_length) {
            m->until_close = true;
            hd.body_until_close = true;
        } else {
            hd.no_body = !hd.chunked && hd.content_length == 0;
        }
        if (m->upgrade || m->until_close)
            m->keep_alive = false;
        hd.keep_alive = m->keep_alive;
        hd.interim = m->interim;
        hd.upgrade = m->upgrade;
        if (!m->interim && !m->keep_alive && !m->upgrade)
            x->flags |= X_CLOSE;
        if (!m->interim && !m->keep_alive)
            h->up_close = true;
        if (!m->interim && !m->upgrade)
            resolve_upgrade_wait(h, x);
    }

    if (h->cbs.on_head != NULL) {
        int rc = h->cbs.on_head(h->cbs.ctx, d->side, m->id, &hd);
        if (rc < 0) {
            /* A request refused by on_head was never reported: it is no exchange. */
            if (d->side == SOTH_LEG_CLIENT)
                h->qlen--;
            set_err(h, d->side, 0, NULL, NULL, rc);
            return -1;
        }
        if (rc == SOTH_H1_HEAD_SENT) {
            d->state = DS_BODY;
            return ret;
        }
        if (rc == SOTH_H1_LOCAL && d->side == SOTH_LEG_CLIENT) {
            /* Answered by the caller: no exchange, its body is read and dropped (emit and
             * count_body see m->local), the connection carries on after it. */
            SOTH_BUG_ON(h->qlen != 1);
            h->qlen--;
            m->local = true;
            d->state = DS_BODY;
            return ret;
        }
        if (rc == SOTH_H1_REFUSE && d->side == SOTH_LEG_CLIENT) {
            /* Not forwarded and no exchange; the connection ends once the exchanges before
             * it are reported (the caller answers it then), and the client's bytes from here
             * on are dropped. llhttp is paused and never runs on this side again. */
            h->qlen--;
            h->closing = true;
            d->state = DS_DISCARD;
            update_done(h);
            return HPE_PAUSED;
        }
    }
    if (emit(h, soth_leg_other(d->side), d->buf, d->used) < 0)
        return -1;
    d->state = DS_BODY;
    return ret;
}

/* The head is reported and forwarded (or refused): its section buffer goes back. What of it
 * is needed later (the Upgrade protocol, read when the message completes) is copied first. */
static int cb_headers_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    int ret = headers_complete(p);
    struct soth_iov *up = &d->m.upgrade_proto;
    if (up->len > 0 && up->base != d->m.upgrade_copy) {
        size_t n = up->len < sizeof(d->m.upgrade_copy) ? up->len : sizeof(d->m.upgrade_copy);
        memcpy(d->m.upgrade_copy, up->base, n);
        *up = soth_iov(d->m.upgrade_copy, n);
    }
    sec_drop(d);
    return ret;
}

static void count_body(struct dir *d, size_t n)
{
    if (d->m.local)
        return;
    struct xchg *x = d->side == SOTH_LEG_CLIENT ? q_newest(d->h) : q_awaiting(d->h);
    if (x == NULL)
        return;
    if (d->side == SOTH_LEG_CLIENT)
        x->req_bytes += n;
    else
        x->resp_bytes += n;
}

static int cb_body(llhttp_t *p, const char *at, size_t n)
{
    struct dir *d = dir_of(p);
    struct soth_h1 *h = d->h;
    count_body(d, n);
    if (d->m.local)
        return 0;
    if (h->cbs.on_body != NULL)
        h->cbs.on_body(h->cbs.ctx, d->side, d->m.id, at, n);
    return emit(h, soth_leg_other(d->side), at, n) < 0 ? HPE_USER : 0;
}

static int cb_chunk_header(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    uint64_t len = p->content_length;
    d->m.ext_bytes = 0;
    if (len == 0) {
        /* Last chunk: the trailer section goes through the pre-scan; pause so feed_section
         * takes over at the byte after "0\r\n". */
        d->state = DS_TRAILERS;
        d->sc = SC_BOL;
        d->raw = 0;
        d->used = 0;
        d->m.n_fields = 0;
        d->m.fstate = 0;
        if (PUT_LIT(d, "0\r\n") < 0)
            return -1;
        return HPE_PAUSED;
    }
    /* Re-emitted framing: "<hex>\r\n", extensions dropped. */
    char line[20];
    size_t n = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        unsigned dig = (unsigned)(len >> shift) & 0xf;
        if (dig != 0 || n > 0 || shift == 0)
            line[n++] = "0123456789abcdef"[dig];
    }
    line[n++] = '\r';
    line[n++] = '\n';
    if (emit(d->h, soth_leg_other(d->side), line, n) < 0)
        return -1;
    /* Pause so feed_body hands llhttp exactly the chunk data, then checks the CRLF after it. */
    d->m.chunk_left = len;
    return HPE_PAUSED;
}

static int cb_chunk_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    if (d->state == DS_TRAILERS)
        return 0;
    return emit(d->h, soth_leg_other(d->side), "\r\n", 2) < 0 ? -1 : 0;
}

static int cb_chunk_ext(llhttp_t *p, const char *at, size_t n)
{
    dir_of(p)->m.ext_bytes += n;
    return 0;
}

/* Checked when a name or value ends (not in the span callback: see status_prefix). */
static int cb_chunk_ext_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    if (d->m.ext_bytes > MAX_CHUNK_EXT) {
        proto_err(d, "chunk_extension_too_long", "chunk extensions over 4096 bytes");
        return -1;
    }
    return 0;
}

static int cb_message_complete(llhttp_t *p)
{
    struct dir *d = dir_of(p);
    struct soth_h1 *h = d->h;
    struct msg *m = &d->m;
    struct dir *c = &h->d[SOTH_LEG_CLIENT];

    if (d->state == DS_TRAILERS) {
        if (PUT_LIT(d, "\r\n") < 0)
            return -1;
        if (m->n_fields > 0 && h->cbs.on_trailers != NULL && !m->local)
            h->cbs.on_trailers(h->cbs.ctx, d->side, m->id, d->fields, m->n_fields);
        int rc = emit(h, soth_leg_other(d->side), d->buf, d->used);
        sec_drop(d);
        if (rc < 0)
            return -1;
    }
    if (d->side == SOTH_LEG_CLIENT && m->local) {
        /* The caller answered it (SOTH_H1_LOCAL): the next request may follow. */
        m->local = false;
        if (!m->keep_alive)
            h->closing = true;
        d->need_reset = m->upgrade;
        d->state = h->closing ? DS_DISCARD : DS_IDLE;
        update_done(h);
        return 0;
    }
    if (d->side == SOTH_LEG_CLIENT) {
        struct xchg *x = q_newest(h);
        SOTH_BUG_ON(x == NULL || x->id != m->id);
        x->flags |= X_REQ_DONE;
        if (h->cbs.on_complete != NULL)
            h->cbs.on_complete(h->cbs.ctx, SOTH_LEG_CLIENT, m->id);
        if (!m->keep_alive)
            h->closing = true;
        if (m->upgrade && (x->flags & X_NO_SWITCH) == 0) {
            d->state = DS_WAIT_UPGRADE;
        } else {
            /* Answered before the request ended, without a switch: llhttp would pause for the
             * upgrade at its next byte, so restart it (not from inside its own callback). */
            d->need_reset = m->upgrade;
            d->state = h->closing ? DS_DISCARD : DS_IDLE;
        }
    } else if (m->interim) {
        d->state = DS_IDLE;
    } else if (m->upgrade) {
        struct xchg *x = q_awaiting(h);
        x->flags |= X_UPGRADED;
        h->upgraded = true;
        d->state = DS_RAW;
        c->state = DS_RAW;
        if (h->cbs.on_upgrade != NULL)
            h->cbs.on_upgrade(h->cbs.ctx, m->id, m->upgrade_proto);
    } else {
        struct xchg *x = q_awaiting(h);
        x->flags |= X_RESP_DONE;
        if (h->cbs.on_complete != NULL)
            h->cbs.on_complete(h->cbs.ctx, SOTH_LEG_UPSTREAM, m->id);
        if (!m->keep_alive)
            h->closing = true;
        d->state = h->closing ? DS_DISCARD : DS_IDLE;
        /* No new request may start once the connection is closing; a head not yet complete
         * was never forwarded and is dropped. */
        if (h->closing && (c->state == DS_IDLE || c->state == DS_HEAD))
            c->state = DS_DISCARD;
    }
    q_settle(h);
    return HPE_PAUSED;
}

/* ---- driving llhttp */

static void msg_begin(struct dir *d)
{
    d->state = DS_HEAD;
    d->sc = SC_START;
    d->raw = 0;
    d->used = 0;
    d->m = (struct msg){0};
}

/* Run llhttp on [p, p+n). Returns bytes consumed, or -1 with h->err set. */
static ssize_t run(struct dir *d, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    enum llhttp_errno e = llhttp_execute(&d->p, p, n);
    if (e == HPE_OK)
        return (ssize_t)n;
    if (e == HPE_PAUSED) {
        size_t c = (size_t)(llhttp_get_error_pos(&d->p) - p);
        llhttp_resume(&d->p);
        return (ssize_t)c;
    }
    if (!d->h->err.set) {
        if (e == HPE_PAUSED_UPGRADE)
            proto_err(d, "malformed", "parser paused for an upgrade unexpectedly");
        else
            llhttp_err(d, e);
    }
    return -1;
}

/*
 * A body. llhttp 8.1 (built without LLHTTP_STRICT_MODE) skips the two bytes after chunk data
 * whatever they are, so `5\r\nhelloXX0\r\n\r\n` would pass as "hello" (RFC 9112 7.1 requires
 * CRLF there; docs/http1.md `bad_chunk`). llhttp is given the chunk data alone, and the two bytes
 * after it only once checked here, byte by byte, so the outcome never depends on the split.
 */
static ssize_t feed_body(struct dir *d, const char *p, size_t n)
{
    struct msg *m = &d->m;
    uint64_t data = m->chunk_left;
    if (data > 0) {
        if (n > data)
            n = (size_t)data;
    } else if (m->chunk_crlf > 0) {
        size_t k = 0;
        for (; k < n && m->chunk_crlf > 0; k++, m->chunk_crlf--) {
            if (p[k] != "\r\n"[2 - m->chunk_crlf]) {
                proto_err(d, "bad_chunk", "chunk data not followed by CRLF");
                return -1;
            }
        }
        n = k;
    }
    ssize_t c = run(d, p, n);
    if (c > 0 && data > 0) {
        m->chunk_left -= (uint64_t)c;
        if (m->chunk_left == 0)
            m->chunk_crlf = 2;
    }
    return c;
}

/* A head or trailer section: pre-scan, then llhttp on what the pre-scan let through. */
static ssize_t feed_section(struct dir *d, const char *p, size_t n)
{
    const char *code = NULL, *detail = NULL;
    bool too_large;
    size_t seg;
    enum dir_state before = d->state;
    if (!sec_take(d)) { /* the parser's callbacks point into the section from the start */
        set_err(d->h, d->side, 0, NULL, NULL, SOTH_E_NOMEM);
        return -1;
    }
    enum scan_result sr = scan_head(d, p, n, &seg, &code, &detail, &too_large);
    ssize_t c = run(d, p, seg);
    if (c < 0)
        return -1;
    if (d->state == DS_DISCARD)
        return (ssize_t)n; /* on_head refused the request: the rest is dropped */
    if (sr == SCAN_ERR) {
        if (too_large)
            size_err(d, code, detail);
        else
            proto_err(d, code, detail);
        return -1;
    }
    /* The pre-scan and llhttp agree on where a section ends; anything else is a parse we do
     * not understand, so refuse it rather than guess. */
    if ((size_t)c != seg || (sr == SCAN_END && d->state == before)) {
        proto_err(d, "malformed", "header section framing mismatch");
        return -1;
    }
    return c;
}

ssize_t soth_h1_feed(struct soth_h1 *h, enum soth_leg from, const char *data, size_t len)
{
    if (h->dead)
        return SOTH_E_STATE;
    SOTH_BUG_ON(from != SOTH_LEG_CLIENT && from != SOTH_LEG_UPSTREAM);
    struct dir *d = &h->d[from];
    size_t pos = 0;
    ssize_t c;

    while (pos < len) {
        if (h->done || d->state == DS_DISCARD) {
            /* dropped: an upstream connection that said more is not reused */
            h->up_dropped = h->up_dropped || from == SOTH_LEG_UPSTREAM;
            pos = len;
            break;
        }
        switch (d->state) {
        case DS_RAW: {
            struct xchg *x = q_at(h, 0);
            if (h->qlen > 0) {
                if (from == SOTH_LEG_CLIENT)
                    x->req_bytes += len - pos;
                else
                    x->resp_bytes += len - pos;
            }
            if (emit(h, soth_leg_other(from), data + pos, len - pos) < 0)
                return fail(h);
            pos = len;
            break;
        }
        case DS_WAIT_UPGRADE:
            return (ssize_t)pos;
        case DS_IDLE:
            if (from == SOTH_LEG_CLIENT && h->qlen >= h->lim.max_pipeline)
                return (ssize_t)pos;
            if (from == SOTH_LEG_UPSTREAM && q_awaiting(h) == NULL) {
                msg_begin(d); /* forget the previous response's id */
                proto_err(d, "unsolicited_response", "response bytes without a pending request");
                return fail(h);
            }
            if (d->need_reset) {
                llhttp_reset(&d->p);
                d->need_reset = false;
            }
            msg_begin(d);
            SOTH_FALLTHROUGH;
        case DS_HEAD:
        case DS_TRAILERS:
            c = feed_section(d, data + pos, len - pos);
            if (c < 0)
                return fail(h);
            pos += (size_t)c;
            break;
        case DS_BODY:
            c = feed_body(d, data + pos, len - pos);
            if (c < 0)
                return fail(h);
            pos += (size_t)c;
            break;
        default:
            SOTH_BUG_ON(1);
        }
        if (h->err.set)
            return fail(h);
    }
    return (ssize_t)pos;
}

int soth_h1_eof(struct soth_h1 *h, enum soth_leg side)
{
    if (h->dead)
        return SOTH_E_STATE;
    SOTH_BUG_ON(side != SOTH_LEG_CLIENT && side != SOTH_LEG_UPSTREAM);
    struct dir *d = &h->d[side];
    h->eof[side] = true;
    if (h->upgraded) {
        if (!h->eof[soth_leg_other(side)])
            return 0;
        q_end_all(h, SOTH_H1_COMPLETE);
        h->upgraded = false;
        h->done = true;
        return SOTH_H1_DONE;
    }
    if (h->done)
        return SOTH_H1_DONE;
    if (side == SOTH_LEG_UPSTREAM) {
        if (d->state == DS_BODY && d->m.until_close) {
            /* RFC 9112 6.3 item 8: the body ends at the close. */
            enum llhttp_errno e = llhttp_finish(&d->p);
            if (e != HPE_OK && e != HPE_PAUSED) {
                if (!h->err.set)
                    llhttp_err(d, e);
                return fail(h);
            }
            if (h->err.set)
                return fail(h);
        }
        q_end_all(h, SOTH_H1_UPSTREAM_ABORTED);
        h->done = true;
        return SOTH_H1_DONE;
    }
    bool partial = d->state == DS_BODY || d->state == DS_TRAILERS ||
                   (d->state == DS_HEAD && d->sc != SC_START && d->sc != SC_START_CR);
    if (partial || h->qlen == 0) {
        q_end_all(h, SOTH_H1_CLIENT_ABORTED);
        h->done = true;
        return SOTH_H1_DONE;
    }
    /* Half-close between requests: the responses still due go on. */
    d->state = DS_DISCARD;
    return 0;
}

void soth_h1_abort(struct soth_h1 *h, enum soth_h1_outcome outcome)
{
    q_end_all(h, outcome);
    h->upgraded = false;
    h->dead = true;
}

bool soth_h1_is_blocked(const struct soth_h1 *h, enum soth_leg side)
{
    const struct dir *d = &h->d[side];
    if (h->dead || h->done)
        return false;
    if (d->state == DS_WAIT_UPGRADE)
        return true;
    return side == SOTH_LEG_CLIENT && d->state == DS_IDLE && h->qlen >= h->lim.max_pipeline;
}

void soth_h1_set_keep_upstream(struct soth_h1 *h, bool on)
{
    h->keep_upstream = on;
}

bool soth_h1_upstream_reusable(const struct soth_h1 *h)
{
    const struct dir *u = &h->d[SOTH_LEG_UPSTREAM];
    return !h->dead && !h->upgraded && h->qlen == 0 && !h->up_close && !h->up_dropped &&
           !h->eof[SOTH_LEG_UPSTREAM] && (u->state == DS_IDLE || u->state == DS_DISCARD);
}

bool soth_h1_upstream_retryable(const struct soth_h1 *h)
{
    if (h->dead || h->done || h->upgraded || h->eof[SOTH_LEG_UPSTREAM] || h->qlen > 1 ||
        h->d[SOTH_LEG_UPSTREAM].state != DS_IDLE)
        return false;
    const struct xchg *x = h->qlen == 1 ? &h->q[h->qhead] : NULL;
    return x == NULL || ((x->flags & X_IDEMP) && !(x->flags & (X_UPG_REQ | X_RESP_DONE)));
}

bool soth_h1_is_done(const struct soth_h1 *h)
{
    return h->dead || h->done;
}

bool soth_h1_is_upgraded(const struct soth_h1 *h)
{
    return h->upgraded;
}

size_t soth_h1_in_flight(const struct soth_h1 *h)
{
    return h->qlen;
}
