/*
 * Exchanges assembled from event records (docs/exchanges.md). Records are decoded through the
 * event schema (events.c), so a field an event gains later (`identity`, `route`) is read by
 * name as soon as the schema has it. Values are kept as raw bytes per flow and per stream and
 * encoded once, at emit time, by the events' own JSON encoders.
 */
#include <stdlib.h>
#include <string.h>

#include "observe_int.h"
#include "soth/exchange.h"

#define DEF_MAX_FLOWS      16384u
#define DEF_MAX_STREAMS    16384u
#define DEF_MAX_ITEMS      1024u
#define DEF_MAX_ITEM_BYTES (1u << 20)
#define DEF_MAX_BYTES      (256u << 20)
#define FREE_KEEP          256u        /* recycled flows / streams kept on a free list */
#define BUF_KEEP           (64u << 10) /* a recycled buffer larger than this is released */

/* ---- one decoded record */

struct xf {
    const struct field_def *fd;
    bool present; /* false: null (OPTSTR), or left out (OMITSTR, JSON, OMITU64) */
    uint64_t u;
    const unsigned char *p; /* strings, lists (the encoded list region) */
    uint32_t n;             /* bytes at p */
    uint32_t cnt;           /* list entries */
};

struct xrec {
    struct ev_rec h;
    const unsigned char *addr, *host, *ident;
    struct xf f[EV_MAX_FIELDS];
    unsigned nf;
};

/** Decode a record through the schema, with the bounds soth_ev_rec_to_json checks. */
static int decode(const void *rec, size_t avail, struct xrec *d)
{
    if (avail < sizeof(d->h))
        return -1;
    memcpy(&d->h, rec, sizeof(d->h));
    if (d->h.len < sizeof(d->h) || d->h.len > avail || d->h.type >= SOTH_EV_TYPE_COUNT)
        return -1;
    struct cur c = {(const unsigned char *)rec + sizeof(d->h),
                    (const unsigned char *)rec + d->h.len};
    if (!take(&c, d->h.client_addr_len, &d->addr) || !take(&c, d->h.server_host_len, &d->host) ||
        !take(&c, d->h.identity_len, &d->ident))
        return -1;
    const struct type_def *td = &soth_ev_schema[d->h.type];
    d->nf = td->n;
    for (unsigned i = 0; i < td->n; i++) {
        struct xf *f = &d->f[i];
        memset(f, 0, sizeof(*f));
        f->fd = &td->f[i];
        f->present = true;
        uint32_t n;
        switch (f->fd->kind) {
        case FK_U64:
        case FK_I64N:
        case FK_BOOL:
            if (!take_u64(&c, &f->u))
                return -1;
            break;
        case FK_OMITU64:
            if (!take_u64(&c, &f->u))
                return -1;
            f->present = f->u != UINT64_MAX;
            break;
        case FK_ENUM:
            if (!take_u64(&c, &f->u) || f->u >= f->fd->n_names)
                return -1;
            break;
        case FK_STR:
        case FK_B64:
        case FK_OPTSTR:
        case FK_OMITSTR:
        case FK_JSON:
            if (!take_u32(&c, &n))
                return -1;
            if (n == NULL_LEN) {
                if (f->fd->kind == FK_STR || f->fd->kind == FK_B64)
                    return -1;
                f->present = false;
                break;
            }
            if (!take(&c, n, &f->p))
                return -1;
            f->n = n;
            break;
        case FK_HDRS:
        case FK_STRLIST:
        case FK_OPTLIST: {
            uint32_t cnt;
            if (!take_u32(&c, &cnt) || cnt > d->h.len)
                return -1;
            f->p = c.p;
            f->cnt = cnt;
            unsigned parts = f->fd->kind == FK_HDRS ? 2 : 1;
            const unsigned char *q;
            for (uint32_t k = 0; k < cnt * parts; k++)
                if (!take_u32(&c, &n) || !take(&c, n, &q))
                    return -1;
            f->n = (uint32_t)(c.p - f->p);
            f->present = !(f->fd->kind == FK_OPTLIST && cnt == 0);
            break;
        }
        default:
            return -1;
        }
    }
    return 0;
}

/** The field by name, or NULL when the record's type has none. */
static const struct xf *fget(const struct xrec *d, const char *name)
{
    for (unsigned i = 0; i < d->nf; i++)
        if (strcmp(d->f[i].fd->name, name) == 0)
            return &d->f[i];
    return NULL;
}

static uint64_t fu(const struct xrec *d, const char *name)
{
    const struct xf *f = fget(d, name);
    return f ? f->u : 0;
}

/* ---- per-flow and per-stream state */

/** A value kept as raw bytes; !set = null. */
struct xstr {
    struct jbuf b;
    bool set;
};

static void xstr_set(struct xstr *s, const void *p, size_t n)
{
    s->b.len = 0;
    if (n)
        jbuf_put(&s->b, p, n);
    s->set = true;
}

static void xstr_from(struct xstr *s, const struct xf *f)
{
    if (f == NULL || !f->present)
        s->set = false;
    else
        xstr_set(s, f->p, f->n);
}

static void buf_reset(struct jbuf *b)
{
    if (b->cap > BUF_KEEP)
        jbuf_free(b);
    b->len = 0;
}

static void xstr_reset(struct xstr *s)
{
    buf_reset(&s->b);
    s->set = false;
}

struct xmsg {        /* one direction of an HTTP message */
    bool seen;       /* any event of it */
    bool head;       /* its headers event */
    bool trailers;   /* its trailers event */
    bool truncated;  /* a chunk said so, or the capture bound cut it */
    bool final_len;  /* bytes from exchange_completed */
    uint64_t bytes;  /* body bytes */
    uint64_t status; /* response */
    struct xstr method, scheme, authority, path, version;
    struct jbuf headers; /* the encoded list region of the event (raw) */
    uint32_t n_headers;
    struct jbuf trl; /* raw list region */
    uint32_t n_trl;
    struct jbuf cap; /* captured body bytes */
};

enum { L_PAYLOADS = 0, L_SSE, L_TURNS, L_GRPC, L_COUNT };

struct xstream {
    struct xstream *next; /* in the flow, or on the free list */
    uint32_t stream_id;
    uint8_t protocol;
    int outcome; /* enum soth_outcome, or -1 */
    uint64_t started_ns, ended_ns;
    uint64_t events_dropped, items_dropped;
    uint64_t ws_messages;
    bool ws_seen, sse_seen, grpc_seen;
    struct xmsg req, resp;
    struct jbuf list[L_COUNT]; /* JSON items, comma-separated */
    uint32_t n_items;
    size_t item_bytes;
    size_t held; /* bytes of headers, trailers, captures and items it holds */
};

struct xtls {
    bool seen, ok;
    struct xstr version, cipher, alpn, sni;
};

struct xflow {
    struct xflow *hnext;         /* hash chain, or the free list */
    struct xflow *older, *newer; /* by last activity (least recent first): who is evicted */
    uint64_t flow_id;
    uint32_t next_seq;
    uint64_t first_ts, last_ts;
    uint16_t server_port;
    uint8_t protocol;
    int decision; /* enum soth_action, or -1 */
    bool had_http;
    uint64_t gaps, attributed; /* events missed (seq gaps); those charged to an exchange */
    struct xstr client_addr, server_host, rule, route, identity;
    struct xtls tls[SOTH_LEG_COUNT];
    struct xstream *streams;
    unsigned n_streams;
};

struct soth_xasm {
    struct soth_xasm_cfg cfg;
    soth_xasm_emit_cb emit;
    void *ctx;
    struct xflow **tab;
    uint64_t tab_mask;
    struct xflow *oldest, *newest;
    size_t n_flows, n_streams;
    size_t held; /* sum of the open streams' held */
    struct xflow *free_flows;
    struct xstream *free_streams;
    size_t n_free_flows, n_free_streams;
    struct jbuf out;
};

static const char *const action_words[SOTH_ACTION_COUNT] = {"intercept", "tunnel", "block"};

struct soth_xasm *soth_xasm_new(const struct soth_xasm_cfg *cfg, soth_xasm_emit_cb emit, void *ctx)
{
    struct soth_xasm *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    x->cfg = *cfg;
    if (x->cfg.max_flows == 0)
        x->cfg.max_flows = DEF_MAX_FLOWS;
    if (x->cfg.max_streams == 0)
        x->cfg.max_streams = DEF_MAX_STREAMS;
    if (x->cfg.max_items == 0)
        x->cfg.max_items = DEF_MAX_ITEMS;
    if (x->cfg.max_item_bytes == 0)
        x->cfg.max_item_bytes = DEF_MAX_ITEM_BYTES;
    if (x->cfg.max_bytes == 0)
        x->cfg.max_bytes = DEF_MAX_BYTES;
    uint64_t n = 64;
    while (n < x->cfg.max_flows)
        n *= 2;
    x->tab = calloc(n, sizeof(*x->tab));
    if (x->tab == NULL) {
        free(x);
        return NULL;
    }
    x->tab_mask = n - 1;
    x->emit = emit;
    x->ctx = ctx;
    return x;
}

static void msg_free(struct xmsg *m)
{
    jbuf_free(&m->method.b);
    jbuf_free(&m->scheme.b);
    jbuf_free(&m->authority.b);
    jbuf_free(&m->path.b);
    jbuf_free(&m->version.b);
    jbuf_free(&m->headers);
    jbuf_free(&m->trl);
    jbuf_free(&m->cap);
}

static void stream_free(struct xstream *s)
{
    msg_free(&s->req);
    msg_free(&s->resp);
    for (int i = 0; i < L_COUNT; i++)
        jbuf_free(&s->list[i]);
    free(s);
}

static void flow_free(struct xflow *f)
{
    struct xstr *strs[] = {&f->client_addr, &f->server_host, &f->rule, &f->route, &f->identity};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        jbuf_free(&strs[i]->b);
    for (int s = 0; s < SOTH_LEG_COUNT; s++) {
        jbuf_free(&f->tls[s].version.b);
        jbuf_free(&f->tls[s].cipher.b);
        jbuf_free(&f->tls[s].alpn.b);
        jbuf_free(&f->tls[s].sni.b);
    }
    while (f->streams != NULL) {
        struct xstream *s = f->streams;
        f->streams = s->next;
        stream_free(s);
    }
    free(f);
}

void soth_xasm_free(struct soth_xasm *x)
{
    if (x == NULL)
        return;
    for (struct xflow *f = x->oldest; f != NULL;) {
        struct xflow *nx = f->newer;
        flow_free(f);
        f = nx;
    }
    while (x->free_flows != NULL) {
        struct xflow *f = x->free_flows;
        x->free_flows = f->hnext;
        flow_free(f);
    }
    while (x->free_streams != NULL) {
        struct xstream *s = x->free_streams;
        x->free_streams = s->next;
        stream_free(s);
    }
    jbuf_free(&x->out);
    free(x->tab);
    free(x);
}

void soth_xasm_counts(const struct soth_xasm *x, size_t *flows, size_t *streams)
{
    *flows = x->n_flows;
    *streams = x->n_streams;
}

/* ---- JSON output */

/** A buffer's bytes (an empty one may have no storage yet). */
static void put_buf(struct jbuf *b, const struct jbuf *from)
{
    if (from->len)
        jbuf_put(b, from->p, from->len);
}

static void put(struct jbuf *b, const char *s)
{
    jbuf_put(b, s, strlen(s));
}

static void put_xstr(struct jbuf *b, const struct xstr *s)
{
    if (s->set)
        soth_json_str(b, s->b.p, s->b.len);
    else
        put(b, "null");
}

/** An encoded list region (FK_HDRS with parts 2, FK_STRLIST with 1) as a JSON array. */
static void put_list(struct jbuf *b, const unsigned char *p, uint32_t cnt, unsigned parts)
{
    jbuf_put(b, "[", 1);
    for (uint32_t k = 0; k < cnt; k++) {
        if (k)
            jbuf_put(b, ",", 1);
        if (parts == 2)
            jbuf_put(b, "[", 1);
        for (unsigned q = 0; q < parts; q++) {
            uint32_t n;
            memcpy(&n, p, 4);
            if (q)
                jbuf_put(b, ",", 1);
            soth_json_str(b, p + 4, n);
            p += 4 + n;
        }
        if (parts == 2)
            jbuf_put(b, "]", 1);
    }
    jbuf_put(b, "]", 1);
}

/** One field's value as soth_ev_rec_to_json writes it (the caller skips absent ones). */
static void put_field(struct jbuf *b, const struct xf *f)
{
    switch (f->fd->kind) {
    case FK_U64:
    case FK_OMITU64:
        soth_json_u64(b, f->u);
        break;
    case FK_I64N:
        if ((int64_t)f->u < 0)
            put(b, "null");
        else
            soth_json_u64(b, f->u);
        break;
    case FK_BOOL:
        put(b, f->u ? "true" : "false");
        break;
    case FK_ENUM:
        jbuf_put(b, "\"", 1);
        put(b, f->fd->names[f->u]);
        jbuf_put(b, "\"", 1);
        break;
    case FK_B64:
        soth_json_b64(b, f->p, f->n);
        break;
    case FK_JSON:
        if (soth_json_valid(f->p, f->n)) {
            soth_json_text(b, f->p, f->n);
        } else {
            put(b, "null,\"");
            put(b, f->fd->name);
            put(b, "_invalid_b64\":");
            soth_json_b64(b, f->p, f->n);
        }
        break;
    case FK_HDRS:
    case FK_STRLIST:
    case FK_OPTLIST:
        put_list(b, f->p, f->cnt, f->fd->kind == FK_HDRS ? 2 : 1);
        break;
    default:
        if (f->present)
            soth_json_str(b, f->p, f->n);
        else
            put(b, "null");
    }
}

/** Append {"name":value,...} of the named fields to a stream's item list, within the bounds. */
static void add_item(struct soth_xasm *x, struct xstream *s, int list, const struct xrec *d,
                     const char *const *names)
{
    struct jbuf *b = &s->list[list];
    size_t start = b->len;
    if (s->n_items >= x->cfg.max_items) {
        s->items_dropped++;
        return;
    }
    if (start)
        jbuf_put(b, ",", 1);
    jbuf_put(b, "{", 1);
    bool first = true;
    for (; *names != NULL; names++) {
        const struct xf *f = fget(d, *names);
        if (f == NULL)
            continue;
        bool omit = !f->present && (f->fd->kind == FK_OMITSTR || f->fd->kind == FK_JSON ||
                                    f->fd->kind == FK_OMITU64 || f->fd->kind == FK_OPTLIST);
        if (omit)
            continue;
        if (!first)
            jbuf_put(b, ",", 1);
        first = false;
        jbuf_put(b, "\"", 1);
        put(b, f->fd->name);
        jbuf_put(b, "\":", 2);
        put_field(b, f);
    }
    jbuf_put(b, "}", 1);
    if (s->item_bytes + (b->len - start) > x->cfg.max_item_bytes) {
        b->len = start;
        s->items_dropped++;
        return;
    }
    s->item_bytes += b->len - start;
    s->held += b->len - start;
    x->held += b->len - start;
    s->n_items++;
}

static void put_version(struct jbuf *b, const struct xstr *v)
{
    static const struct {
        const char *ev, *x;
    } map[] = {{"1.0", "\"HTTP/1.0\""}, {"1.1", "\"HTTP/1.1\""}, {"2", "\"HTTP/2\""}};
    if (v->set)
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
            if (v->b.len == strlen(map[i].ev) && memcmp(v->b.p, map[i].ev, v->b.len) == 0) {
                put(b, map[i].x);
                return;
            }
    put_xstr(b, v);
}

static void put_body(struct jbuf *b, const struct xmsg *m)
{
    put(b, ",\"body\":{\"bytes\":");
    soth_json_u64(b, m->bytes);
    put(b, ",\"captured_b64\":");
    soth_json_b64(b, m->cap.p, m->cap.len);
    put(b, ",\"truncated\":");
    put(b, m->truncated ? "true" : "false");
    put(b, "}");
}

static void put_hdrs(struct jbuf *b, bool seen, const struct jbuf *raw, uint32_t cnt)
{
    if (seen)
        put_list(b, (const unsigned char *)raw->p, cnt, 2);
    else
        put(b, "null");
}

static void put_msg(struct jbuf *b, const struct xmsg *m, bool request)
{
    if (!m->seen) {
        put(b, "null");
        return;
    }
    if (request) {
        put(b, "{\"method\":");
        put_xstr(b, &m->method);
        put(b, ",\"scheme\":");
        put_xstr(b, &m->scheme);
        put(b, ",\"authority\":");
        put_xstr(b, &m->authority);
        put(b, ",\"path\":");
        put_xstr(b, &m->path);
    } else {
        put(b, "{\"status\":");
        if (m->head)
            soth_json_u64(b, m->status);
        else
            put(b, "null");
    }
    put(b, ",\"http_version\":");
    put_version(b, &m->version);
    put(b, ",\"headers\":");
    put_hdrs(b, m->head, &m->headers, m->n_headers);
    put(b, ",\"trailers\":");
    if (m->trailers)
        put_list(b, (const unsigned char *)m->trl.p, m->n_trl, 2);
    else
        put(b, m->head ? "[]" : "null"); /* a head without trailers, or nothing known */
    put_body(b, m);
    put(b, "}");
}

/** The value of the first header named `name` (ASCII case-insensitive) in a raw list. */
static bool hdr_find(const struct jbuf *raw, uint32_t cnt, const char *name,
                     const unsigned char **v, uint32_t *vn)
{
    const unsigned char *p = (const unsigned char *)raw->p;
    size_t nl = strlen(name);
    for (uint32_t k = 0; k < cnt; k++) {
        uint32_t n, m;
        memcpy(&n, p, 4);
        const unsigned char *nm = p + 4;
        p += 4 + n;
        memcpy(&m, p, 4);
        const unsigned char *val = p + 4;
        p += 4 + m;
        if (n != nl)
            continue;
        bool eq = true;
        for (size_t i = 0; i < n && eq; i++) {
            unsigned char c = nm[i];
            if (c >= 'A' && c <= 'Z')
                c = (unsigned char)(c + 32);
            eq = c == (unsigned char)name[i];
        }
        if (eq) {
            *v = val;
            *vn = m;
            return true;
        }
    }
    return false;
}

/** grpc-status / grpc-message: from the response trailers, else the response head (a
 *  trailers-only response, docs/exchanges.md). */
static bool grpc_field(const struct xstream *s, const char *name, const unsigned char **v,
                       uint32_t *vn)
{
    if (s->resp.trailers && hdr_find(&s->resp.trl, s->resp.n_trl, name, v, vn))
        return true;
    return s->resp.head && hdr_find(&s->resp.headers, s->resp.n_headers, name, v, vn);
}

static void put_grpc(struct jbuf *b, const struct xstream *s)
{
    const struct xstr *path = &s->req.path;
    const char *p = path->b.p;
    size_t n = path->set ? path->b.len : 0;
    size_t slash = n;
    for (size_t i = n; i-- > 1;)
        if (p[i] == '/') {
            slash = i;
            break;
        }
    bool named = n > 0 && p[0] == '/' && slash < n;
    put(b, "{\"service\":");
    if (named)
        soth_json_str(b, p + 1, slash - 1);
    else
        put(b, "null");
    put(b, ",\"method\":");
    if (named)
        soth_json_str(b, p + slash + 1, n - slash - 1);
    else
        put(b, "null");
    const unsigned char *v;
    uint32_t vn;
    put(b, ",\"status\":");
    if (grpc_field(s, "grpc-status", &v, &vn)) {
        bool digits = vn > 0 && vn <= 9;
        for (uint32_t i = 0; i < vn && digits; i++)
            digits = v[i] >= '0' && v[i] <= '9';
        if (digits)
            jbuf_put(b, v, vn);
        else
            soth_json_str(b, v, vn);
    } else {
        put(b, "null");
    }
    put(b, ",\"message\":");
    if (grpc_field(s, "grpc-message", &v, &vn))
        soth_json_str(b, v, vn);
    else
        put(b, "null");
    put(b, ",\"messages\":[");
    put_buf(b, &s->list[L_GRPC]);
    put(b, "]}");
}

/**
 * Write and emit one exchange. s NULL: the flow's stream-0 exchange. outcome: a word, or NULL
 * for null.
 */
static void emit_exchange(struct soth_xasm *x, const struct xflow *f, const struct xstream *s,
                          const char *outcome, uint64_t events_dropped, bool partial)
{
    struct jbuf *b = &x->out;
    b->len = 0;
    uint32_t sid = s ? s->stream_id : 0;
    put(b, "{\"v\":1,\"exchange_id\":\"");
    soth_json_u64(b, f->flow_id);
    put(b, "-");
    soth_json_u64(b, sid);
    put(b, "\",\"flow_id\":");
    soth_json_u64(b, f->flow_id);
    put(b, ",\"stream_id\":");
    soth_json_u64(b, sid);
    put(b, ",\"identity\":");
    put_xstr(b, &f->identity);
    put(b, ",\"rule\":");
    put_xstr(b, &f->rule);
    put(b, ",\"route\":");
    put_xstr(b, &f->route);
    put(b, ",\"decision\":");
    if (f->decision >= 0) {
        put(b, "\"");
        put(b, action_words[f->decision]);
        put(b, "\"");
    } else {
        put(b, "null");
    }
    put(b, ",\"client_addr\":");
    put_xstr(b, &f->client_addr);
    put(b, ",\"server_host\":");
    put_xstr(b, &f->server_host);
    put(b, ",\"server_port\":");
    soth_json_u64(b, f->server_port);
    uint8_t proto = s ? s->protocol : f->protocol;
    put(b, ",\"protocol\":\"");
    put(b, soth_protocol_names[proto < SOTH_PROTO_COUNT ? proto : 0]);
    put(b, "\",\"tls\":");
    if (f->tls[SOTH_LEG_CLIENT].seen || f->tls[SOTH_LEG_UPSTREAM].seen) {
        for (int side = 0; side < SOTH_LEG_COUNT; side++) {
            const struct xtls *t = &f->tls[side];
            put(b, side == SOTH_LEG_CLIENT ? "{\"client\":" : ",\"upstream\":");
            if (!t->seen) {
                put(b, "null");
                continue;
            }
            put(b, "{\"version\":");
            put_xstr(b, &t->version);
            put(b, ",\"cipher\":");
            put_xstr(b, &t->cipher);
            put(b, ",\"alpn\":");
            put_xstr(b, &t->alpn);
            if (side == SOTH_LEG_CLIENT) {
                put(b, ",\"sni\":");
                put_xstr(b, &t->sni);
            }
            put(b, "}");
        }
        put(b, "}");
    } else {
        put(b, "null");
    }
    put(b, ",\"request\":");
    if (s)
        put_msg(b, &s->req, true);
    else
        put(b, "null");
    put(b, ",\"response\":");
    if (s)
        put_msg(b, &s->resp, false);
    else
        put(b, "null");
    put(b, ",\"payloads\":[");
    if (s)
        put_buf(b, &s->list[L_PAYLOADS]);
    put(b, "],\"sse\":");
    if (s && (s->sse_seen || s->protocol == SOTH_PROTO_SSE)) {
        put(b, "{\"events\":[");
        put_buf(b, &s->list[L_SSE]);
        put(b, "]}");
    } else {
        put(b, "null");
    }
    put(b, ",\"ws\":");
    if (s && (s->ws_seen || s->protocol == SOTH_PROTO_WEBSOCKET)) {
        put(b, "{\"turns\":[");
        put_buf(b, &s->list[L_TURNS]);
        put(b, "],\"messages\":");
        soth_json_u64(b, s->ws_messages);
        put(b, "}");
    } else {
        put(b, "null");
    }
    put(b, ",\"grpc\":");
    if (s && (s->grpc_seen || s->protocol == SOTH_PROTO_GRPC))
        put_grpc(b, s);
    else
        put(b, "null");
    put(b, ",\"outcome\":");
    if (outcome) {
        put(b, "\"");
        put(b, outcome);
        put(b, "\"");
    } else {
        put(b, "null");
    }
    put(b, ",\"started_ns\":");
    soth_json_u64(b, s ? s->started_ns : f->first_ts);
    put(b, ",\"ended_ns\":");
    soth_json_u64(b, s ? s->ended_ns : f->last_ts);
    put(b, ",\"events_dropped\":");
    soth_json_u64(b, events_dropped);
    if (s && s->items_dropped) {
        put(b, ",\"items_dropped\":");
        soth_json_u64(b, s->items_dropped);
    }
    if (partial)
        put(b, ",\"partial\":true");
    put(b, "}\n");
    if (x->emit != NULL)
        x->emit(x->ctx, &(struct soth_xasm_out){.flow_id = f->flow_id,
                                                .stream_id = sid,
                                                .partial = partial,
                                                .json = b->p,
                                                .len = b->len});
}

/* ---- state lifecycle */

static void msg_reset(struct xmsg *m)
{
    m->seen = m->head = m->trailers = m->truncated = m->final_len = false;
    m->bytes = m->status = 0;
    xstr_reset(&m->method);
    xstr_reset(&m->scheme);
    xstr_reset(&m->authority);
    xstr_reset(&m->path);
    xstr_reset(&m->version);
    buf_reset(&m->headers);
    buf_reset(&m->trl);
    buf_reset(&m->cap);
    m->n_headers = m->n_trl = 0;
}

static void stream_release(struct soth_xasm *x, struct xflow *f, struct xstream *s)
{
    for (struct xstream **pp = &f->streams; *pp != NULL; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    f->n_streams--;
    x->n_streams--;
    x->held -= s->held;
    s->held = 0;
    if (x->n_free_streams >= FREE_KEEP) {
        stream_free(s);
        return;
    }
    msg_reset(&s->req);
    msg_reset(&s->resp);
    for (int i = 0; i < L_COUNT; i++)
        buf_reset(&s->list[i]);
    s->next = x->free_streams;
    x->free_streams = s;
    x->n_free_streams++;
}

static void flow_unlink(struct soth_xasm *x, struct xflow *f)
{
    struct xflow **pp = &x->tab[(f->flow_id * 0x9e3779b97f4a7c15ull) >> 20 & x->tab_mask];
    for (; *pp != NULL; pp = &(*pp)->hnext)
        if (*pp == f) {
            *pp = f->hnext;
            break;
        }
    if (f->older)
        f->older->newer = f->newer;
    else
        x->oldest = f->newer;
    if (f->newer)
        f->newer->older = f->older;
    else
        x->newest = f->older;
    x->n_flows--;
}

/** Forget a flow (its streams were emitted or are dropped). */
static void flow_release(struct soth_xasm *x, struct xflow *f)
{
    while (f->streams != NULL)
        stream_release(x, f, f->streams);
    flow_unlink(x, f);
    if (x->n_free_flows >= FREE_KEEP) {
        flow_free(f);
        return;
    }
    struct xstr *strs[] = {&f->client_addr, &f->server_host, &f->rule, &f->route, &f->identity};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        xstr_reset(strs[i]);
    for (int s = 0; s < SOTH_LEG_COUNT; s++) {
        f->tls[s].seen = f->tls[s].ok = false;
        xstr_reset(&f->tls[s].version);
        xstr_reset(&f->tls[s].cipher);
        xstr_reset(&f->tls[s].alpn);
        xstr_reset(&f->tls[s].sni);
    }
    f->hnext = x->free_flows;
    x->free_flows = f;
    x->n_free_flows++;
}

/** Emit what a flow holds as it is (partial) and forget it: the bounds, or a flush. */
static void flow_evict(struct soth_xasm *x, struct xflow *f)
{
    if (!f->had_http)
        emit_exchange(x, f, NULL, NULL, f->gaps, true);
    for (struct xstream *s = f->streams; s != NULL; s = s->next)
        emit_exchange(x, f, s, NULL, s->events_dropped, true);
    flow_release(x, f);
}

void soth_xasm_flush(struct soth_xasm *x)
{
    while (x->oldest != NULL)
        flow_evict(x, x->oldest);
}

static struct xflow *flow_find(struct soth_xasm *x, uint64_t id)
{
    struct xflow *f = x->tab[(id * 0x9e3779b97f4a7c15ull) >> 20 & x->tab_mask];
    while (f != NULL && f->flow_id != id)
        f = f->hnext;
    return f;
}

static struct xflow *flow_new(struct soth_xasm *x, uint64_t id)
{
    while (x->n_flows >= x->cfg.max_flows && x->oldest != NULL)
        flow_evict(x, x->oldest);
    struct xflow *f = x->free_flows;
    if (f != NULL) {
        x->free_flows = f->hnext;
        x->n_free_flows--;
    } else {
        f = calloc(1, sizeof(*f));
        if (f == NULL)
            return NULL;
    }
    f->flow_id = id;
    f->next_seq = 0;
    f->first_ts = f->last_ts = 0;
    f->server_port = 0;
    f->protocol = 0;
    f->decision = -1;
    f->had_http = false;
    f->gaps = f->attributed = 0;
    f->streams = NULL;
    f->n_streams = 0;
    struct xflow **bucket = &x->tab[(id * 0x9e3779b97f4a7c15ull) >> 20 & x->tab_mask];
    f->hnext = *bucket;
    *bucket = f;
    f->older = x->newest;
    f->newer = NULL;
    if (x->newest)
        x->newest->newer = f;
    else
        x->oldest = f;
    x->newest = f;
    x->n_flows++;
    return f;
}

static struct xstream *stream_find(struct xflow *f, uint32_t id)
{
    struct xstream *s = f->streams;
    while (s != NULL && s->stream_id != id)
        s = s->next;
    return s;
}

/** A new stream of f; may evict older flows (never f: it is the newest user). NULL on OOM. */
static struct xstream *stream_new(struct soth_xasm *x, struct xflow **fp, uint32_t id)
{
    struct xflow *f = *fp;
    while (x->n_streams >= x->cfg.max_streams && x->oldest != NULL && x->oldest != f)
        flow_evict(x, x->oldest);
    if (x->n_streams >= x->cfg.max_streams) {
        /* f itself holds every stream: emit its oldest open one as it is. */
        struct xstream *last = f->streams;
        while (last != NULL && last->next != NULL)
            last = last->next;
        if (last != NULL) {
            emit_exchange(x, f, last, NULL, last->events_dropped, true);
            stream_release(x, f, last);
        }
    }
    struct xstream *s = x->free_streams;
    if (s != NULL) {
        x->free_streams = s->next;
        x->n_free_streams--;
    } else {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return NULL;
    }
    s->stream_id = id;
    s->protocol = f->protocol;
    s->outcome = -1;
    s->started_ns = s->ended_ns = 0;
    s->events_dropped = s->items_dropped = s->ws_messages = 0;
    s->ws_seen = s->sse_seen = s->grpc_seen = false;
    s->n_items = 0;
    s->item_bytes = 0;
    s->next = f->streams; /* newest first: the list's tail is the oldest */
    f->streams = s;
    f->n_streams++;
    x->n_streams++;
    f->had_http = true;
    return s;
}

/* ---- feeding */

/** Returns the captured bytes it kept. */
static size_t body_chunk(struct soth_xasm *x, struct xmsg *m, const struct xrec *d)
{
    m->seen = true;
    if (!m->final_len)
        m->bytes += fu(d, "len");
    const struct xf *data = fget(d, "data_b64");
    if (fu(d, "truncated"))
        m->truncated = true;
    if (data == NULL || data->n == 0)
        return 0;
    size_t room =
        x->cfg.body_capture_bytes > m->cap.len ? x->cfg.body_capture_bytes - m->cap.len : 0;
    size_t n = data->n < room ? data->n : room;
    if (n < data->n)
        m->truncated = true;
    if (n)
        jbuf_put(&m->cap, data->p, n);
    return n;
}

static void hold(struct soth_xasm *x, struct xstream *s, size_t n)
{
    s->held += n;
    x->held += n;
}

static void head(struct xmsg *m, const struct xrec *d)
{
    m->seen = m->head = true;
    xstr_from(&m->method, fget(d, "method"));
    xstr_from(&m->scheme, fget(d, "scheme"));
    xstr_from(&m->authority, fget(d, "authority"));
    xstr_from(&m->path, fget(d, "path"));
    xstr_from(&m->version, fget(d, "http_version"));
    m->status = fu(d, "status");
    const struct xf *h = fget(d, "headers");
    m->headers.len = 0;
    m->n_headers = 0;
    if (h != NULL && h->n) {
        jbuf_put(&m->headers, h->p, h->n);
        m->n_headers = h->cnt;
    }
}

static void trailers(struct xmsg *m, const struct xrec *d)
{
    m->seen = m->trailers = true;
    const struct xf *h = fget(d, "headers");
    m->trl.len = 0;
    m->n_trl = 0;
    if (h != NULL && h->n) {
        jbuf_put(&m->trl, h->p, h->n);
        m->n_trl = h->cnt;
    }
}

static const char *const payload_fields[] = {"direction", "decoders", "sanitized", "format",
                                             "value",     "error",    NULL};
static const char *const sse_fields[] = {"event", "id", "retry", "data", NULL};
static const char *const turn_fields[] = {
    "turn_id",      "initiator",  "client_frames", "server_frames", "client_bytes",
    "server_bytes", "started_ns", "ended_ns",      "flush_reason",  NULL};
static const char *const grpc_fields[] = {"direction", "compressed", "length", NULL};

static void on_stream_closed(struct soth_xasm *x, struct xflow *f, const struct xrec *d)
{
    const char *reason = soth_close_reason_names[fu(d, "reason_code")];
    uint64_t reported = fu(d, "events_dropped");
    uint64_t lost = reported > f->gaps ? reported : f->gaps;
    /* Exchanges the flow ended first: outcome is the flow's reason_code (docs/exchanges.md). */
    while (f->streams != NULL) {
        struct xstream *s = f->streams;
        while (s->next != NULL)
            s = s->next; /* oldest first */
        s->ended_ns = d->h.ts_ns;
        emit_exchange(x, f, s, reason, s->events_dropped, false);
        stream_release(x, f, s);
    }
    if (!f->had_http)
        emit_exchange(x, f, NULL, reason, lost, false);
    else if (lost > f->attributed)
        emit_exchange(x, f, NULL, reason, lost - f->attributed, false);
    flow_release(x, f);
}

int soth_xasm_feed(struct soth_xasm *x, const void *rec, size_t avail)
{
    struct xrec d;
    if (decode(rec, avail, &d) < 0)
        return -1;
    struct xflow *f = flow_find(x, d.h.flow_id);
    if (f == NULL) {
        f = flow_new(x, d.h.flow_id);
        if (f == NULL)
            return -1;
        f->first_ts = d.h.ts_ns;
    } else if (f != x->newest) {
        /* The most recently active flow goes last: the bounds evict the least active. */
        f->newer->older = f->older;
        if (f->older)
            f->older->newer = f->newer;
        else
            x->oldest = f->newer;
        f->older = x->newest;
        f->newer = NULL;
        x->newest->newer = f;
        x->newest = f;
    }
    /* Events missed: a seq gap (dropped under overload, a lapped reader, a start mid-run). */
    uint64_t gap = 0;
    if (d.h.seq > f->next_seq)
        gap = d.h.seq - f->next_seq;
    if (d.h.seq >= f->next_seq)
        f->next_seq = d.h.seq + 1;
    if (gap) {
        f->gaps += gap;
        if (f->streams != NULL)
            f->attributed += gap;
        for (struct xstream *s = f->streams; s != NULL; s = s->next)
            s->events_dropped += gap;
    }
    f->last_ts = d.h.ts_ns;
    xstr_set(&f->client_addr, d.addr, d.h.client_addr_len);
    xstr_set(&f->server_host, d.host, d.h.server_host_len);
    f->server_port = d.h.server_port;
    f->protocol = d.h.protocol < SOTH_PROTO_COUNT ? d.h.protocol : 0;
    /* identity: a common field of every event from connect_decision on (docs/events.md) */
    if (d.h.identity_len > 0)
        xstr_set(&f->identity, d.ident, d.h.identity_len);

    enum soth_ev_type t = (enum soth_ev_type)d.h.type;
    switch (t) {
    case SOTH_EV_CONNECT_DECISION: {
        f->decision = (int)fu(&d, "decision");
        xstr_from(&f->rule, fget(&d, "rule"));
        xstr_from(&f->route, fget(&d, "route"));
        return 0;
    }
    case SOTH_EV_TLS_HANDSHAKE_STARTED:
    case SOTH_EV_TLS_HANDSHAKE_SUCCEEDED:
    case SOTH_EV_TLS_HANDSHAKE_FAILED: {
        struct xtls *tl = &f->tls[fu(&d, "side") ? SOTH_LEG_UPSTREAM : SOTH_LEG_CLIENT];
        tl->seen = true;
        if (t == SOTH_EV_TLS_HANDSHAKE_STARTED) {
            xstr_from(&tl->sni, fget(&d, "sni"));
        } else if (t == SOTH_EV_TLS_HANDSHAKE_SUCCEEDED) {
            tl->ok = true;
            xstr_from(&tl->version, fget(&d, "tls_version"));
            xstr_from(&tl->cipher, fget(&d, "cipher"));
            xstr_from(&tl->alpn, fget(&d, "alpn"));
        }
        return 0;
    }
    case SOTH_EV_STREAM_CLOSED:
        on_stream_closed(x, f, &d);
        return 0;
    default:
        break;
    }
    const struct xf *sidf = fget(&d, "stream_id");
    if (sidf == NULL)
        return 0; /* connect_received, connect_parse_failed, audits, quic_client_hello */
    uint32_t sid = (uint32_t)sidf->u;
    struct xstream *s = stream_find(f, sid);
    if (s == NULL) {
        s = stream_new(x, &f, sid);
        if (s == NULL)
            return -1;
        s->started_ns = d.h.ts_ns;
        if (gap && t != SOTH_EV_REQUEST_HEADERS) {
            /* Its beginning was among the events missed. */
            s->events_dropped += gap;
            if (f->n_streams == 1)
                f->attributed += gap;
        }
    }
    s->ended_ns = d.h.ts_ns;
    s->protocol = f->protocol;
    switch (t) {
    case SOTH_EV_REQUEST_HEADERS:
        head(&s->req, &d);
        hold(x, s, s->req.headers.len);
        break;
    case SOTH_EV_RESPONSE_HEADERS:
        head(&s->resp, &d);
        hold(x, s, s->resp.headers.len);
        break;
    case SOTH_EV_REQUEST_BODY_CHUNK:
        hold(x, s, body_chunk(x, &s->req, &d));
        break;
    case SOTH_EV_RESPONSE_BODY_CHUNK:
        hold(x, s, body_chunk(x, &s->resp, &d));
        break;
    case SOTH_EV_REQUEST_TRAILERS:
        trailers(&s->req, &d);
        hold(x, s, s->req.trl.len);
        break;
    case SOTH_EV_RESPONSE_TRAILERS:
        trailers(&s->resp, &d);
        hold(x, s, s->resp.trl.len);
        break;
    case SOTH_EV_WS_MESSAGE:
        s->ws_seen = true;
        s->ws_messages++;
        break;
    case SOTH_EV_WS_TURN_STARTED:
        s->ws_seen = true;
        break;
    case SOTH_EV_WS_TURN_COMPLETED:
        s->ws_seen = true;
        add_item(x, s, L_TURNS, &d, turn_fields);
        break;
    case SOTH_EV_SSE_EVENT:
        s->sse_seen = true;
        add_item(x, s, L_SSE, &d, sse_fields);
        break;
    case SOTH_EV_GRPC_MESSAGE:
        s->grpc_seen = true;
        add_item(x, s, L_GRPC, &d, grpc_fields);
        break;
    case SOTH_EV_PAYLOAD_PARSED:
        add_item(x, s, L_PAYLOADS, &d, payload_fields);
        break;
    case SOTH_EV_EXCHANGE_COMPLETED: {
        s->req.bytes = fu(&d, "request_bytes");
        s->resp.bytes = fu(&d, "response_bytes");
        s->req.final_len = s->resp.final_len = true;
        /* Body bytes of a message whose events were all missed still show. */
        if (s->req.bytes)
            s->req.seen = true;
        if (s->resp.bytes)
            s->resp.seen = true;
        emit_exchange(x, f, s, soth_outcome_names[fu(&d, "outcome")], s->events_dropped, false);
        stream_release(x, f, s);
        break;
    }
    default:
        break;
    }
    /* The bytes bound: the least recently active flows go first (this one is the most). */
    while (x->held > x->cfg.max_bytes && x->oldest != NULL && x->oldest != f)
        flow_evict(x, x->oldest);
    return 0;
}
