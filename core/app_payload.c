/*
 * Payload observation for the HTTP layer of a flow (core/app_payload.h): gRPC envelopes and
 * the layered decoder chain turned into grpc_message and payload_parsed events.
 */
#include <stdlib.h>
#include <string.h>

#include "app_payload.h"
#include "soth/proto/grpc.h"
#include "soth/proto/headers.h"

/* One message direction's body capture and how to decode it. */
struct pl_msg {
    bool active;
    bool sanitize;
    enum soth_payload_format fmt;
    enum soth_coding codings[SOTH_DECODE_MAX_CODINGS];
    size_t n_codings;
    char *buf; /* capture, cap <= APP_PL_CAPTURE */
    uint32_t len, cap;
    uint64_t total; /* body bytes seen */
};

struct app_payload {
    struct soth_decoder *dec; /* created at the first decode */
    struct pl_msg msg[2];     /* HTTP/1.1: the message in progress per direction */
};

struct app_pl_stream {
    bool grpc;
    enum soth_payload_format grpc_fmt[2]; /* declared by each direction's content-type */
    struct soth_grpc *g[2];               /* by enum soth_leg; NULL: not parsed */
    enum soth_coding genc[2];             /* grpc-encoding */
    bool failed[2];                       /* framing error reported */
    struct pl_msg msg[2];                 /* plain HTTP/2 bodies */
};

static uint64_t content_length(const struct soth_header *h, size_t n)
{
    struct soth_iov v = soth_header_get(h, n, "content-length");
    uint64_t x = 0;
    for (size_t i = 0; i < v.len && i < 19; i++) {
        if (v.base[i] < '0' || v.base[i] > '9')
            return 0;
        x = x * 10 + (uint64_t)(v.base[i] - '0');
    }
    return x;
}

static enum soth_leg dir_of(int dir)
{
    return soth_leg_of(dir);
}

static bool capture_on(const struct app *a)
{
    return a->conf.capture > 0;
}

static struct app_payload *flow_pl(struct app *a)
{
    if (a->pl == NULL)
        a->pl = calloc(1, sizeof(*a->pl));
    return a->pl;
}

static void msg_dispose(struct pl_msg *m)
{
    free(m->buf);
    memset(m, 0, sizeof(*m));
}

/* Set up m for a message with these head fields; false when it is not decoded. */
static bool msg_begin(struct pl_msg *m, const struct soth_header *h, size_t n)
{
    m->active = false;
    m->len = 0;
    m->total = 0;
    enum soth_payload_format f = soth_payload_format_of(soth_header_get(h, n, "content-type"));
    if (f == SOTH_FMT_NONE)
        return false;
    int nc = soth_coding_parse(soth_header_get(h, n, "content-encoding"), m->codings,
                               SOTH_DECODE_MAX_CODINGS);
    if (nc < 0)
        return false; /* more codings than anyone uses: not worth a report */
    m->n_codings = (size_t)nc;
    m->fmt = f;
    m->sanitize = f != SOTH_FMT_MSGPACK;
    m->active = true;
    uint64_t cl = content_length(h, n);
    if (m->buf == NULL && cl > 0) {
        uint32_t want = cl < APP_PL_CAPTURE ? (uint32_t)cl : APP_PL_CAPTURE;
        m->buf = malloc(want);
        m->cap = m->buf != NULL ? want : 0;
    }
    return true;
}

static void msg_body(struct pl_msg *m, const char *p, size_t n)
{
    if (!m->active || n == 0)
        return;
    m->total += n;
    if (m->len >= APP_PL_CAPTURE)
        return;
    size_t take = APP_PL_CAPTURE - m->len < n ? APP_PL_CAPTURE - m->len : n;
    if (m->len + take > m->cap) {
        uint32_t cap = m->cap ? m->cap : 4096;
        while (cap < m->len + take)
            cap = cap > APP_PL_CAPTURE / 2 ? APP_PL_CAPTURE : cap * 2;
        char *nb = realloc(m->buf, cap);
        if (nb == NULL) {
            m->active = false; /* no memory: this message goes unparsed */
            return;
        }
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, p, take);
    m->len += (uint32_t)take;
}

static struct soth_decoder *decoder(struct app_payload *pl)
{
    if (pl->dec == NULL)
        pl->dec = soth_decoder_new(NULL);
    return pl->dec;
}

static void emit(const struct app *a, uint32_t sid, int dir, const struct soth_decode_result *r)
{
    if (!r->report)
        return;
    struct soth_iov fmt = SOTH_IOV_NULL;
    if (r->format == SOTH_FMT_JSON || r->format == SOTH_FMT_MSGPACK) {
        const char *f = soth_payload_format_name(r->format);
        fmt = soth_iov(f, strlen(f));
    }
    soth_ev_payload_parsed(a->env.ev, sid, dir_of(dir), r->decoders, r->n_decoders, r->sanitized,
                           fmt, r->value, r->error);
}

/* Decode the captured body of m (complete: the whole message arrived) and report. */
static void msg_finish(struct app *a, struct pl_msg *m, int dir, uint32_t sid, bool complete)
{
    if (!m->active)
        return;
    m->active = false;
    if (m->total == 0)
        return; /* no body: nothing to parse */
    struct soth_decoder *d = decoder(a->pl);
    if (d == NULL)
        return;
    struct soth_decode_req req = {
        .data = m->buf,
        .len = m->len,
        .truncated = m->total > m->len || !complete,
        .n_codings = m->n_codings,
        .format = m->fmt,
        .sanitize = m->sanitize,
    };
    memcpy(req.codings, m->codings, sizeof(req.codings));
    struct soth_decode_result r;
    soth_decode_run(d, &req, &r);
    emit(a, sid, dir, &r);
}

void app_pl_free(struct app_payload *pl)
{
    if (pl == NULL)
        return;
    msg_dispose(&pl->msg[0]);
    msg_dispose(&pl->msg[1]);
    soth_decoder_free(pl->dec);
    free(pl);
}

/* ---- HTTP/1.1 */

void app_pl_h1_head(struct app *a, int dir, const struct soth_header *h, size_t n, bool no_body)
{
    dir &= 1;
    if (a->pl != NULL)
        a->pl->msg[dir].active = false;
    if (no_body || !capture_on(a))
        return;
    if (soth_payload_format_of(soth_header_get(h, n, "content-type")) == SOTH_FMT_NONE)
        return;
    struct app_payload *p = flow_pl(a);
    if (p != NULL)
        msg_begin(&p->msg[dir], h, n);
}

void app_pl_h1_body(struct app *a, int dir, const char *p, size_t n)
{
    if (a->pl != NULL)
        msg_body(&a->pl->msg[dir & 1], p, n);
}

void app_pl_h1_complete(struct app *a, int dir, uint32_t stream_id)
{
    if (a->pl != NULL)
        msg_finish(a, &a->pl->msg[dir & 1], dir & 1, stream_id, true);
}

/* ---- framed protocols */

/* Cheap look before any state is set up: JSON text or a msgpack map might follow. */
static bool maybe_payload(struct soth_iov d)
{
    size_t i = 0;
    while (i < d.len &&
           (d.base[i] == ' ' || d.base[i] == '\t' || d.base[i] == '\r' || d.base[i] == '\n'))
        i++;
    if (i == d.len)
        return false;
    unsigned char c = (unsigned char)d.base[i];
    return c == '{' || c == '[' || (i == 0 && ((c & 0xf0) == 0x80 || c == 0xde || c == 0xdf));
}

void app_pl_framed(struct app *a, uint32_t stream_id, int dir, enum soth_framing framing,
                   struct soth_iov data, bool truncated)
{
    if (!capture_on(a) || !maybe_payload(data))
        return;
    struct app_payload *p = flow_pl(a);
    struct soth_decoder *d = p != NULL ? decoder(p) : NULL;
    if (d == NULL)
        return;
    struct soth_decode_req req = {
        .data = data.base,
        .len = data.len,
        .truncated = truncated,
        .framing = framing,
        .format = SOTH_FMT_UNKNOWN,
    };
    struct soth_decode_result r;
    soth_decode_run(d, &req, &r);
    emit(a, stream_id, dir & 1, &r);
}

/* ---- HTTP/2 and gRPC */

void app_pl_stream_free(struct app_pl_stream *st)
{
    if (st == NULL)
        return;
    for (int d = 0; d < 2; d++) {
        soth_grpc_free(st->g[d]);
        msg_dispose(&st->msg[d]);
    }
    free(st);
}

static struct app_pl_stream *stream_pl(struct app_pl_stream **st)
{
    if (*st == NULL)
        *st = calloc(1, sizeof(**st));
    return *st;
}

static struct soth_grpc *grpc_parser(void)
{
    struct soth_grpc_limits lim = {.max_message = APP_PL_GRPC_MAX_MSG, .capture = APP_PL_CAPTURE};
    return soth_grpc_new(&lim);
}

static enum soth_coding grpc_encoding(const struct soth_header *h, size_t n)
{
    enum soth_coding c[1];
    int k = soth_coding_parse(soth_header_get(h, n, "grpc-encoding"), c, 1);
    return k == 1 ? c[0] : k == 0 ? SOTH_CODING_IDENTITY : SOTH_CODING_UNKNOWN;
}

void app_pl_h2_request(struct app *a, struct app_pl_stream **st, const struct soth_h2_request *q)
{
    enum soth_payload_format f;
    if (soth_grpc_content_type(soth_header_get(q->headers, q->n_headers, "content-type"), &f)) {
        soth_ev_flow_set_protocol(a->env.ev, SOTH_PROTO_GRPC);
        struct app_pl_stream *s = stream_pl(st);
        if (s == NULL || flow_pl(a) == NULL)
            return;
        s->grpc = true;
        s->grpc_fmt[SOTH_LEG_CLIENT] = f;
        s->genc[SOTH_LEG_CLIENT] = grpc_encoding(q->headers, q->n_headers);
        if (!q->end_stream)
            s->g[SOTH_LEG_CLIENT] = grpc_parser();
        return;
    }
    if (q->end_stream || !capture_on(a) ||
        soth_payload_format_of(soth_header_get(q->headers, q->n_headers, "content-type")) ==
            SOTH_FMT_NONE)
        return;
    struct app_pl_stream *s = stream_pl(st);
    if (s != NULL && flow_pl(a) != NULL)
        msg_begin(&s->msg[SOTH_LEG_CLIENT], q->headers, q->n_headers);
}

void app_pl_h2_response(struct app *a, struct app_pl_stream **st, const struct soth_h2_response *s)
{
    if (s->end_stream)
        return;
    if (*st != NULL && (*st)->grpc) {
        /* The response is parsed as envelopes only when it says it is gRPC too (a proxy or
         * server answering with an HTML error page is not). */
        enum soth_payload_format f;
        if (soth_grpc_content_type(soth_header_get(s->headers, s->n_headers, "content-type"), &f)) {
            (*st)->grpc_fmt[SOTH_LEG_UPSTREAM] = f;
            (*st)->genc[SOTH_LEG_UPSTREAM] = grpc_encoding(s->headers, s->n_headers);
            (*st)->g[SOTH_LEG_UPSTREAM] = grpc_parser();
        }
        return;
    }
    if (!capture_on(a) || soth_payload_format_of(soth_header_get(s->headers, s->n_headers,
                                                                 "content-type")) == SOTH_FMT_NONE)
        return;
    struct app_pl_stream *ps = stream_pl(st);
    if (ps != NULL && flow_pl(a) != NULL)
        msg_begin(&ps->msg[SOTH_LEG_UPSTREAM], s->headers, s->n_headers);
}

static void grpc_framing_error(struct app_pl_stream *st, const struct app *a, int dir, uint32_t sid,
                               enum soth_grpc_error e)
{
    if (st->failed[dir])
        return;
    st->failed[dir] = true;
    static const char prefix[] = "grpc: ";
    char buf[64];
    const char *name = soth_grpc_error_name(e);
    size_t nl = strlen(name);
    memcpy(buf, prefix, sizeof(prefix) - 1);
    memcpy(buf + sizeof(prefix) - 1, name, nl);
    struct soth_iov dec[1] = {SOTH_IOV_LIT("grpc")};
    soth_ev_payload_parsed(a->env.ev, sid, dir_of(dir), dec, 1, false, SOTH_IOV_NULL, SOTH_IOV_NULL,
                           soth_iov(buf, sizeof(prefix) - 1 + nl));
}

/* One gRPC message: grpc_message, then payload_parsed when it decodes to JSON/msgpack. */
static void grpc_message(struct app *a, struct app_pl_stream *st, int dir, uint32_t sid,
                         const struct soth_grpc_msg *m)
{
    soth_ev_grpc_message(a->env.ev, sid, dir_of(dir), m->compressed, m->length, m->data,
                         m->truncated);
    if (!capture_on(a) || a->pl == NULL)
        return;
    if (m->compressed && st->genc[dir] == SOTH_CODING_IDENTITY) {
        struct soth_iov dec[1] = {SOTH_IOV_LIT("grpc")};
        soth_ev_payload_parsed(a->env.ev, sid, dir_of(dir), dec, 1, false, SOTH_IOV_NULL,
                               SOTH_IOV_NULL,
                               SOTH_IOV_LIT("grpc: compressed message without grpc-encoding"));
        return;
    }
    struct soth_decoder *d = decoder(a->pl);
    if (d == NULL)
        return;
    struct soth_decode_req req = {
        .data = m->data.base,
        .len = m->data.len,
        .truncated = m->truncated,
        .framing = SOTH_FRAMING_GRPC,
        .message_coding = m->compressed ? st->genc[dir] : SOTH_CODING_IDENTITY,
        .format = st->grpc_fmt[dir],
    };
    struct soth_decode_result r;
    soth_decode_run(d, &req, &r);
    emit(a, sid, dir, &r);
}

void app_pl_h2_data(struct app *a, struct app_pl_stream *st, int dir, uint32_t stream_id,
                    const char *p, size_t n)
{
    if (st == NULL)
        return;
    dir &= 1;
    if (!st->grpc) {
        msg_body(&st->msg[dir], p, n);
        return;
    }
    struct soth_grpc *g = st->g[dir];
    if (g == NULL || st->failed[dir])
        return;
    /* Each round consumes at least one byte or completes a message: bounded by n plus the
     * number of messages in these bytes. */
    while (n > 0) {
        struct soth_grpc_msg m;
        bool got;
        ssize_t k = soth_grpc_feed(g, p, n, &m, &got);
        if (k < 0) {
            grpc_framing_error(st, a, dir, stream_id, soth_grpc_error(g));
            return;
        }
        if (got)
            grpc_message(a, st, dir, stream_id, &m);
        p += k;
        n -= (size_t)k;
    }
}

void app_pl_h2_end(struct app *a, struct app_pl_stream *st, uint32_t stream_id, bool complete)
{
    if (st == NULL)
        return;
    for (int dir = 0; dir < 2; dir++) {
        if (st->grpc) {
            struct soth_grpc *g = st->g[dir];
            if (g == NULL || st->failed[dir])
                continue;
            struct soth_grpc_msg m;
            bool got;
            if (soth_grpc_finish(g, &m, &got) < 0) {
                /* Cut short inside a message: report what came, then why. */
                if (got)
                    soth_ev_grpc_message(a->env.ev, stream_id, dir_of(dir), m.compressed, m.length,
                                         m.data, true);
                grpc_framing_error(st, a, dir, stream_id, soth_grpc_error(g));
            }
        } else if (a->pl != NULL) {
            msg_finish(a, &st->msg[dir], dir, stream_id, complete);
        }
    }
    app_pl_stream_free(st);
}
