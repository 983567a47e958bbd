/*
 * Bridge lines into flow events (docs/bridge.md, "The protocol", "Flows", "Refusals and
 * bounds"). One conn = one flow of the bridge's producer (worker -1). Every check runs before
 * anything of the line is emitted, so a refused line leaves no trace but its count.
 *
 * Memory: conns and streams live in chunked pools that grow on demand up to their bounds and
 * are reused (a free list), never freed before soth_bline_free; one hash of conn ids (linear
 * probing, backward-shift deletion); one LRU list of conns by last line (idle expiry pops its
 * head). The scratch for decoded bytes and header arrays is allocated once. jansson allocates
 * the parsed line itself.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_line.h"
#include "learn.h"
#include "soth/tls.h"

#define NONE         0xffffffffu
#define CHUNK_SHIFT  8
#define CHUNK        (1u << CHUNK_SHIFT)
#define STREAMS_MAX  65536u /* open streams over all conns */
#define HDRS_MAX     1024u  /* header fields in one event line */
#define LIST_MAX     64u    /* entries of a list field (decoders, alt_svc_removed) */
#define LOG_EVERY_NS 1000000000ull

enum { TLS_NONE = 0, TLS_STARTED, TLS_ENDED };

/* stream flags */
#define S_FINAL    0x01 /* the final response_headers was seen */
#define S_REQ_TRL  0x02 /* request_trailers seen */
#define S_RESP_TRL 0x04 /* response_trailers seen */
#define S_HEAD     0x08 /* method HEAD: no response body */
#define S_TURN     0x10 /* a WebSocket turn is open */
#define S_NO_BODY  0x20 /* status 1xx/204/304: no response body */

struct bstream {
    uint32_t id;
    uint32_t next;                /* next stream of the conn, or NONE (also the free list) */
    uint64_t off[SOTH_LEG_COUNT]; /* body bytes reported: request (client leg), response */
    uint64_t cap[SOTH_LEG_COUNT]; /* captured bytes so far, per message */
    uint64_t turn_id, turn_started_ns;
    uint16_t status;
    uint8_t f;
    uint8_t turn_init;
};

struct bconn {
    struct soth_ev_flow ev;
    uint64_t last_ns;    /* monotonic time of the conn's last line */
    uint32_t prev, next; /* LRU list (next is the free list when unused) */
    uint32_t streams;    /* first open stream, or NONE */
    uint32_t last_sid;   /* the highest stream id seen */
    uint64_t bytes[SOTH_LEG_COUNT];
    uint8_t n_streams;
    uint8_t key_len;
    bool by_events; /* the flow began with an event line: the engine sends its lifecycle */
    bool decided;
    bool connect; /* connect_received's method was CONNECT or SOCKS5: a tunnel relays bytes only */
    uint8_t decision; /* enum soth_action */
    uint8_t tls[SOTH_LEG_COUNT];
    int8_t h2; /* -1 unknown, 0 HTTP/1.x, 1 HTTP/2 */
    char key[SOTH_BRIDGE_CONN_ID_MAX];
};

struct soth_bline {
    struct soth_bline_params p;
    uint64_t n_flows;
    uint64_t idle_ns;
    /* conns */
    struct bconn **conn_chunks;
    uint32_t n_conn_alloc, n_conns, conn_free;
    uint32_t lru_head, lru_tail;
    uint32_t *htab; /* conn index + 1, 0 = empty */
    uint32_t hmask;
    /* streams */
    struct bstream **st_chunks;
    uint32_t n_st_alloc, n_st, st_free;
    /* scratch, reset per line */
    char *arena;
    size_t arena_len, arena_cap;
    struct soth_header *hdrs;
    struct soth_iov list[LIST_MAX];
    /* refusal log rate limit */
    uint64_t log_last_ns, log_suppressed;
};

/* ==========================================================================================
 * pools, hash, LRU
 * ========================================================================================== */

static struct bconn *conn_at(struct soth_bline *b, uint32_t i)
{
    return &b->conn_chunks[i >> CHUNK_SHIFT][i & (CHUNK - 1)];
}

static struct bstream *st_at(struct soth_bline *b, uint32_t i)
{
    return &b->st_chunks[i >> CHUNK_SHIFT][i & (CHUNK - 1)];
}

static uint32_t hash_key(const char *k, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h;
}

static uint32_t conn_find(struct soth_bline *b, const char *k, size_t n)
{
    for (uint32_t s = hash_key(k, n) & b->hmask;; s = (s + 1) & b->hmask) {
        uint32_t v = b->htab[s];
        if (v == 0)
            return NONE;
        struct bconn *c = conn_at(b, v - 1);
        if (c->key_len == n && memcmp(c->key, k, n) == 0)
            return v - 1;
    }
}

static void hash_del(struct soth_bline *b, uint32_t idx)
{
    struct bconn *c = conn_at(b, idx);
    uint32_t s = hash_key(c->key, c->key_len) & b->hmask;
    while (b->htab[s] != idx + 1)
        s = (s + 1) & b->hmask;
    /* Backward-shift deletion keeps every probe chain unbroken. */
    uint32_t hole = s;
    for (uint32_t j = (s + 1) & b->hmask; b->htab[j] != 0; j = (j + 1) & b->hmask) {
        struct bconn *o = conn_at(b, b->htab[j] - 1);
        uint32_t home = hash_key(o->key, o->key_len) & b->hmask;
        /* Move j into the hole unless its home lies cyclically in (hole, j]. */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            b->htab[hole] = b->htab[j];
            hole = j;
        }
    }
    b->htab[hole] = 0;
}

static void lru_unlink(struct soth_bline *b, uint32_t i)
{
    struct bconn *c = conn_at(b, i);
    if (c->prev != NONE)
        conn_at(b, c->prev)->next = c->next;
    else
        b->lru_head = c->next;
    if (c->next != NONE)
        conn_at(b, c->next)->prev = c->prev;
    else
        b->lru_tail = c->prev;
}

static void lru_push(struct soth_bline *b, uint32_t i)
{
    struct bconn *c = conn_at(b, i);
    c->prev = b->lru_tail;
    c->next = NONE;
    if (b->lru_tail != NONE)
        conn_at(b, b->lru_tail)->next = i;
    else
        b->lru_head = i;
    b->lru_tail = i;
}

/** A free conn slot, growing the pool by a chunk when needed; NONE at the bound or on OOM. */
static uint32_t conn_alloc(struct soth_bline *b)
{
    if (b->n_conns >= b->p.max_conns)
        return NONE;
    if (b->conn_free == NONE) {
        uint32_t k = b->n_conn_alloc >> CHUNK_SHIFT;
        struct bconn *ch = calloc(CHUNK, sizeof(*ch));
        if (ch == NULL)
            return NONE;
        b->conn_chunks[k] = ch;
        for (uint32_t i = CHUNK; i-- > 0;) {
            ch[i].next = b->conn_free;
            b->conn_free = b->n_conn_alloc + i;
        }
        b->n_conn_alloc += CHUNK;
    }
    uint32_t i = b->conn_free;
    b->conn_free = conn_at(b, i)->next;
    b->n_conns++;
    return i;
}

static uint32_t st_alloc(struct soth_bline *b)
{
    if (b->n_st >= STREAMS_MAX)
        return NONE;
    if (b->st_free == NONE) {
        uint32_t k = b->n_st_alloc >> CHUNK_SHIFT;
        struct bstream *ch = calloc(CHUNK, sizeof(*ch));
        if (ch == NULL)
            return NONE;
        b->st_chunks[k] = ch;
        for (uint32_t i = CHUNK; i-- > 0;) {
            ch[i].next = b->st_free;
            b->st_free = b->n_st_alloc + i;
        }
        b->n_st_alloc += CHUNK;
    }
    uint32_t i = b->st_free;
    b->st_free = st_at(b, i)->next;
    b->n_st++;
    return i;
}

static uint32_t stream_find(struct soth_bline *b, struct bconn *c, uint32_t id)
{
    for (uint32_t i = c->streams; i != NONE; i = st_at(b, i)->next)
        if (st_at(b, i)->id == id)
            return i;
    return NONE;
}

static void stream_free(struct soth_bline *b, struct bconn *c, uint32_t idx)
{
    uint32_t *pp = &c->streams;
    while (*pp != idx)
        pp = &st_at(b, *pp)->next;
    *pp = st_at(b, idx)->next;
    st_at(b, idx)->next = b->st_free;
    b->st_free = idx;
    b->n_st--;
    c->n_streams--;
}

static void set_flows_gauge(struct soth_bline *b)
{
    if (b->p.bm != NULL)
        atomic_store_explicit(&b->p.bm->flows, b->n_conns, memory_order_relaxed);
}

/* ==========================================================================================
 * closing: what is left open is ended first (docs/bridge.md, "The protocol")
 * ========================================================================================== */

static enum soth_outcome outcome_of(enum soth_close_reason r)
{
    switch (r) {
    case SOTH_CLOSE_CLIENT_EOF:
        return SOTH_OUTCOME_CLIENT_ABORTED;
    case SOTH_CLOSE_RELAY_EOF:
    case SOTH_CLOSE_RELAY_ERROR:
    case SOTH_CLOSE_UPSTREAM_CONNECT_FAILED:
        return SOTH_OUTCOME_UPSTREAM_ABORTED;
    case SOTH_CLOSE_IDLE_TIMEOUT:
        return SOTH_OUTCOME_TIMEOUT;
    default:
        return SOTH_OUTCOME_RESET;
    }
}

static void turn_close(struct bconn *c, struct bstream *s)
{
    if (!(s->f & S_TURN))
        return;
    struct soth_ws_turn_stats st = {.turn_id = s->turn_id,
                                    .initiator = soth_leg_of(s->turn_init),
                                    .started_ns = s->turn_started_ns,
                                    .ended_ns = soth_now_ns(),
                                    .flush_reason = SOTH_FLUSH_CLOSE};
    soth_ev_ws_turn_completed(&c->ev, s->id, &st);
    s->f &= (uint8_t)~S_TURN;
}

static void streams_close(struct soth_bline *b, struct bconn *c, enum soth_close_reason r)
{
    while (c->streams != NONE) {
        uint32_t i = c->streams;
        struct bstream *s = st_at(b, i);
        turn_close(c, s);
        soth_ev_exchange_completed(&c->ev, s->id, outcome_of(r), s->off[SOTH_LEG_CLIENT],
                                   s->off[SOTH_LEG_UPSTREAM]);
        stream_free(b, c, i);
    }
}

/** Forget the conn (its stream_closed was emitted). */
static void conn_drop(struct soth_bline *b, uint32_t idx)
{
    struct bconn *c = conn_at(b, idx);
    while (c->streams != NONE)
        stream_free(b, c, c->streams);
    hash_del(b, idx);
    lru_unlink(b, idx);
    c->next = b->conn_free;
    b->conn_free = idx;
    b->n_conns--;
    set_flows_gauge(b);
}

static void conn_close(struct soth_bline *b, uint32_t idx, enum soth_close_reason r)
{
    struct bconn *c = conn_at(b, idx);
    streams_close(b, c, r);
    soth_ev_stream_closed(&c->ev, r, c->bytes[0], c->bytes[1]);
    conn_drop(b, idx);
}

/* ==========================================================================================
 * field access (docs/bridge.md: text is a string or {"b64": ...})
 * ========================================================================================== */

static int b64val(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/** Strict base64 (padding required) into the arena. 0, or -1. */
static int b64_decode(struct soth_bline *b, const char *s, size_t n, struct soth_iov *out)
{
    if (n % 4 != 0)
        return -1;
    size_t max = n / 4 * 3;
    if (b->arena_cap - b->arena_len < max)
        return -1;
    unsigned char *o = (unsigned char *)b->arena + b->arena_len;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=' && i + 4 == n && j >= 2) {
                v[j] = 0;
                pad++;
                continue;
            }
            if (pad > 0)
                return -1;
            v[j] = b64val(s[i + j]);
            if (v[j] < 0)
                return -1;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        o[k++] = (unsigned char)(w >> 16);
        if (pad < 2)
            o[k++] = (unsigned char)(w >> 8);
        if (pad < 1)
            o[k++] = (unsigned char)w;
    }
    *out = soth_iov(o, k);
    b->arena_len += k;
    return 0;
}

/* Presence rules for a field. */
enum { REQ = 0, OPT = 1, NUL = 2 };

/**
 * A text value: a string, or {"b64": "..."}; null when NUL allows it (*out = SOTH_IOV_NULL,
 * *is_null set). v NULL (absent): -1 when REQ, else *out null and *is_null set. 0 or -1.
 */
static int text_of(struct soth_bline *b, json_t *v, int rule, struct soth_iov *out, bool *is_null)
{
    if (is_null)
        *is_null = false;
    *out = soth_iov("", 0);
    if (v == NULL || json_is_null(v)) {
        if (v == NULL ? rule == REQ : rule != NUL)
            return -1;
        if (is_null)
            *is_null = true;
        *out = SOTH_IOV_NULL;
        return 0;
    }
    if (json_is_string(v)) {
        *out = soth_iov(json_string_value(v), json_string_length(v));
        return 0;
    }
    json_t *s = json_is_object(v) && json_object_size(v) == 1 ? json_object_get(v, "b64") : NULL;
    if (s == NULL || !json_is_string(s))
        return -1;
    return b64_decode(b, json_string_value(s), json_string_length(s), out);
}

static int get_text(struct soth_bline *b, json_t *o, const char *key, int rule,
                    struct soth_iov *out, bool *is_null)
{
    return text_of(b, json_object_get(o, key), rule, out, is_null);
}

static int get_uint(json_t *o, const char *key, int rule, uint64_t max, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    *out = 0;
    if (v == NULL || (rule == NUL && json_is_null(v)))
        return rule == REQ ? -1 : 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_bool(json_t *o, const char *key, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL || !json_is_boolean(v))
        return -1;
    *out = json_is_true(v);
    return 0;
}

static int get_enum(json_t *o, const char *key, const char *const *names, int n, int *out)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL || !json_is_string(v))
        return -1;
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], json_string_value(v)) == 0 &&
            strlen(names[i]) == json_string_length(v)) {
            *out = i;
            return 0;
        }
    return -1;
}

/** headers: [[name, value], ...] into the scratch array. */
static int get_headers(struct soth_bline *b, json_t *o, const char *key, size_t *n_out)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL || !json_is_array(v) || json_array_size(v) > HDRS_MAX)
        return -1;
    size_t n = json_array_size(v);
    for (size_t i = 0; i < n; i++) {
        json_t *pair = json_array_get(v, i);
        if (!json_is_array(pair) || json_array_size(pair) != 2)
            return -1;
        if (text_of(b, json_array_get(pair, 0), REQ, &b->hdrs[i].name, NULL) < 0 ||
            text_of(b, json_array_get(pair, 1), REQ, &b->hdrs[i].value, NULL) < 0)
            return -1;
    }
    *n_out = n;
    return 0;
}

/** A list of strings into the scratch list. */
static int get_list(json_t *o, const char *key, int rule, size_t *n_out)
{
    json_t *v = json_object_get(o, key);
    *n_out = 0;
    if (v == NULL)
        return rule == REQ ? -1 : 0;
    if (!json_is_array(v) || json_array_size(v) > LIST_MAX)
        return -1;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_string(json_array_get(v, i)))
            return -1;
    *n_out = json_array_size(v);
    return 0;
}

static void fill_list(struct soth_bline *b, json_t *o, const char *key, size_t n)
{
    json_t *v = json_object_get(o, key);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(v, i);
        b->list[i] = soth_iov(json_string_value(s), json_string_length(s));
    }
}

/* ==========================================================================================
 * refusals
 * ========================================================================================== */

static int refuse(struct soth_bline *b, int reason, const char *why, uint64_t now_ns)
{
    return soth_bline_refuse(b, reason, why, now_ns);
}

int soth_bline_refuse(struct soth_bline *b, int reason, const char *why, uint64_t now_ns)
{
    if (b->p.bm != NULL)
        SOTH_METRIC_ADD(b->p.bm->refused[reason], 1);
    /* One log line per second at most (docs/bridge.md): peer misbehaviour is counted. */
    if (now_ns - b->log_last_ns >= LOG_EVERY_NS || b->log_last_ns == 0) {
        SOTH_LOG(SOTH_LOG_WARN, -1, 0, "bridge: refused (%s): %s%s (%llu more refused before)",
                 soth_bridge_refusal_names[reason], why,
                 soth_bline_refusal_closes(reason) ? "; client closed" : "",
                 (unsigned long long)b->log_suppressed);
        b->log_last_ns = now_ns;
        b->log_suppressed = 0;
    } else {
        b->log_suppressed++;
    }
    return reason;
}

/* ==========================================================================================
 * flows
 * ========================================================================================== */

/** The conn's id as text: a string of 1..128 bytes or a non-negative integer. */
static int conn_key(json_t *o, char *key, size_t *len)
{
    json_t *v = json_object_get(o, "conn");
    if (v != NULL && json_is_string(v)) {
        size_t n = json_string_length(v);
        if (n == 0 || n > SOTH_BRIDGE_CONN_ID_MAX)
            return -1;
        memcpy(key, json_string_value(v), n);
        *len = n;
        return 0;
    }
    if (v != NULL && json_is_integer(v) && json_integer_value(v) >= 0) {
        int n = snprintf(key, SOTH_BRIDGE_CONN_ID_MAX, "%lld", (long long)json_integer_value(v));
        *len = (size_t)n;
        return 0;
    }
    return -1;
}

/** A new conn's flow (nothing emitted). NONE when the table is full. */
static uint32_t conn_open(struct soth_bline *b, const char *key, size_t key_len,
                          struct soth_iov client_addr, uint64_t now_ns)
{
    uint32_t idx = conn_alloc(b);
    if (idx == NONE)
        return NONE;
    struct bconn *c = conn_at(b, idx);
    memset(c, 0, offsetof(struct bconn, key));
    soth_ev_flow_init(&c->ev, b->p.prod, SOTH_EV_BRIDGE_FLOW_ID(++b->n_flows),
                      SOTH_EV_WORKER_BRIDGE, NULL, 0);
    soth_ev_flow_set_client_text(&c->ev, client_addr);
    c->streams = NONE;
    c->h2 = -1;
    c->last_ns = now_ns;
    memcpy(c->key, key, key_len);
    c->key_len = (uint8_t)key_len;
    uint32_t s = hash_key(key, key_len) & b->hmask;
    while (b->htab[s] != 0)
        s = (s + 1) & b->hmask;
    b->htab[s] = idx + 1;
    lru_push(b, idx);
    set_flows_gauge(b);
    return idx;
}

static void touch(struct soth_bline *b, uint32_t idx, uint64_t now_ns)
{
    conn_at(b, idx)->last_ns = now_ns;
    lru_unlink(b, idx);
    lru_push(b, idx);
}

/** "host:port" (IPv6 literals bracketed) into buf. */
static struct soth_iov host_port(char *buf, size_t cap, struct soth_iov host, uint64_t port)
{
    bool v6 = memchr(host.base, ':', host.len) != NULL;
    int n = snprintf(buf, cap, "%s%.*s%s:%llu", v6 ? "[" : "", (int)host.len, host.base,
                     v6 ? "]" : "", (unsigned long long)port);
    return soth_iov(buf, n > 0 && (size_t)n < cap ? (size_t)n : 0);
}

/* ==========================================================================================
 * tls_op lines
 * ========================================================================================== */

enum hook {
    H_CLIENTHELLO = 0,
    H_START_CLIENT,
    H_START_SERVER,
    H_EST_CLIENT,
    H_EST_SERVER,
    H_FAILED_CLIENT,
    H_FAILED_SERVER,
    H_DISCONNECTED,
    H_COUNT
};
static const char *const hook_names[H_COUNT] = {
    "tls_clienthello",        "tls_start_client",  "tls_start_server",  "tls_established_client",
    "tls_established_server", "tls_failed_client", "tls_failed_server", "client_disconnected"};

static int handle_tls_op(struct soth_bline *b, json_t *o, const char *key, size_t key_len,
                         uint64_t now_ns)
{
    int prov_i, hook;
    static const char *const provs[] = {"mitmproxy", "hudsucker"};
    if (get_enum(o, "provider", provs, 2, &prov_i) < 0)
        return refuse(b, SOTH_BRIDGE_R_SCHEMA, "tls_op: provider", now_ns);
    enum soth_tls_provider prov = prov_i == 0 ? SOTH_TLSP_MITMPROXY : SOTH_TLSP_HUDSUCKER;
    json_t *hv = json_object_get(o, "hook");
    if (hv == NULL || !json_is_string(hv))
        return refuse(b, SOTH_BRIDGE_R_SCHEMA, "tls_op: hook", now_ns);
    if (get_enum(o, "hook", hook_names, H_COUNT, &hook) < 0)
        return refuse(b, SOTH_BRIDGE_R_UNKNOWN_HOOK, "tls_op: unknown hook", now_ns);
    struct soth_iov caddr, host, sni, err, ver, cipher, alpn;
    bool sni_null, alpn_null;
    uint64_t port;
    /* Optional fields may also be null (an engine without the value): as if absent. */
    if (get_text(b, o, "client_addr", NUL, &caddr, NULL) < 0 ||
        get_text(b, o, "server_host", NUL, &host, NULL) < 0 ||
        get_uint(o, "server_port", NUL, 65535, &port) < 0 ||
        get_text(b, o, "sni", NUL, &sni, &sni_null) < 0 ||
        get_text(b, o, "error", NUL, &err, NULL) < 0 ||
        get_text(b, o, "tls_version", NUL, &ver, NULL) < 0 ||
        get_text(b, o, "cipher", NUL, &cipher, NULL) < 0 ||
        get_text(b, o, "alpn", NUL, &alpn, &alpn_null) < 0)
        return refuse(b, SOTH_BRIDGE_R_SCHEMA, "tls_op: a field has the wrong type", now_ns);
    if (caddr.base == NULL)
        caddr = soth_iov("", 0);
    if (host.base == NULL)
        host = soth_iov("", 0);
    if (sni.len == 0)
        sni_null = true;

    uint32_t idx = conn_find(b, key, key_len);
    struct bconn *c = idx != NONE ? conn_at(b, idx) : NULL;
    int side = -1;
    if (hook == H_START_CLIENT || hook == H_EST_CLIENT || hook == H_FAILED_CLIENT)
        side = SOTH_LEG_CLIENT;
    else if (hook == H_START_SERVER || hook == H_EST_SERVER || hook == H_FAILED_SERVER)
        side = SOTH_LEG_UPSTREAM;
    /* Checks first: nothing is emitted for a refused line. */
    if (c != NULL) {
        if (c->by_events && !c->decided && hook != H_DISCONNECTED)
            return refuse(b, SOTH_BRIDGE_R_ORDER, "tls_op before connect_decision", now_ns);
        if (side >= 0 && c->decision != SOTH_ACTION_INTERCEPT)
            return refuse(b, SOTH_BRIDGE_R_ORDER, "tls_op on a flow not intercepted", now_ns);
        if (side >= 0 && (hook == H_START_CLIENT || hook == H_START_SERVER) &&
            c->tls[side] != TLS_NONE)
            return refuse(b, SOTH_BRIDGE_R_ORDER, "second handshake start of a side", now_ns);
        if (side >= 0 && c->tls[side] == TLS_ENDED)
            return refuse(b, SOTH_BRIDGE_R_ORDER, "handshake end of a side that ended", now_ns);
    } else if (hook == H_DISCONNECTED) {
        return 0; /* a conn we do not know ends: nothing to report */
    }
    if (c == NULL) {
        idx = conn_open(b, key, key_len, caddr, now_ns);
        if (idx == NONE)
            return refuse(b, SOTH_BRIDGE_R_TOO_MANY_CONNS, "conn table full", now_ns);
        c = conn_at(b, idx);
        /* docs/bridge.md "Flows": target server_host:server_port, method null. */
        char tbuf[SOTH_EV_HOST_MAX + 16];
        struct soth_iov target = host_port(tbuf, sizeof(tbuf),
                                           host.len > 0 ? host
                                           : sni_null   ? host
                                                        : sni,
                                           port);
        soth_ev_flow_set_server(&c->ev, !sni_null ? sni : host, (uint16_t)port);
        soth_ev_connect_received(&c->ev, SOTH_IOV_NULL, target);
        soth_ev_connect_decision(&c->ev, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
        c->decided = true;
        c->decision = SOTH_ACTION_INTERCEPT;
    } else {
        touch(b, idx, now_ns);
        if (!sni_null)
            soth_ev_flow_set_server(&c->ev, sni, c->ev.server_port);
    }
    if (side >= 0 && c->ev.protocol == SOTH_PROTO_TCP)
        soth_ev_flow_set_protocol(&c->ev, SOTH_PROTO_TLS);
    enum soth_leg leg = side >= 0 ? soth_leg_of((unsigned)side) : SOTH_LEG_CLIENT;
    switch (hook) {
    case H_CLIENTHELLO:
        break;
    case H_START_CLIENT:
    case H_START_SERVER:
        soth_ev_tls_handshake_started(&c->ev, leg, sni_null ? SOTH_IOV_NULL : sni);
        c->tls[leg] = TLS_STARTED;
        break;
    case H_EST_CLIENT:
    case H_EST_SERVER:
        if (c->tls[leg] == TLS_NONE)
            soth_ev_tls_handshake_started(&c->ev, leg, sni_null ? SOTH_IOV_NULL : sni);
        soth_ev_tls_handshake_succeeded(&c->ev, leg, ver.base ? ver : soth_iov("", 0),
                                        cipher.base ? cipher : soth_iov("", 0),
                                        alpn_null || alpn.len == 0 ? SOTH_IOV_NULL : alpn);
        c->tls[leg] = TLS_ENDED;
        break;
    case H_FAILED_CLIENT:
    case H_FAILED_SERVER: {
        if (c->tls[leg] == TLS_NONE)
            soth_ev_tls_handshake_started(&c->ev, leg, sni_null ? SOTH_IOV_NULL : sni);
        struct soth_iov detail = err.base ? err : soth_iov("", 0);
        enum soth_tls_failure r =
            (enum soth_tls_failure)soth_tls_classify_mitmproxy(leg, detail.base, detail.len);
        soth_learn_emit_failure(&c->ev, b->p.learning_enabled, leg, r, prov,
                                soth_iov(soth_leg_names[leg], strlen(soth_leg_names[leg])), detail);
        if (b->p.m != NULL)
            SOTH_METRIC_ADD(b->p.m->tls_failures[leg][r], 1);
        c->tls[leg] = TLS_ENDED;
        break;
    }
    case H_DISCONNECTED:
        if (!c->by_events)
            conn_close(b, idx, SOTH_CLOSE_CLIENT_EOF);
        break;
    default:
        break;
    }
    return 0;
}

/* ==========================================================================================
 * event lines
 * ========================================================================================== */

static bool is_tls_type(int t)
{
    return t == SOTH_EV_TLS_HANDSHAKE_STARTED || t == SOTH_EV_TLS_HANDSHAKE_SUCCEEDED ||
           t == SOTH_EV_TLS_HANDSHAKE_FAILED;
}

static bool is_stream_type(int t)
{
    return t >= SOTH_EV_REQUEST_HEADERS && t <= SOTH_EV_PAYLOAD_PARSED;
}

#define BAD(msg) return refuse(b, SOTH_BRIDGE_R_SCHEMA, msg, now_ns)
#define ORD(msg) return refuse(b, SOTH_BRIDGE_R_ORDER, msg, now_ns)

/** Body chunk and its checks; dir: the leg that sent the body. */
static int ev_body(struct soth_bline *b, struct bconn *c, struct bstream *s, json_t *o,
                   enum soth_leg dir, uint64_t now_ns)
{
    uint64_t off, len;
    bool trunc;
    struct soth_iov data;
    json_t *d = json_object_get(o, "data_b64");
    if (get_uint(o, "offset", REQ, UINT64_MAX >> 1, &off) < 0 ||
        get_uint(o, "len", REQ, UINT64_MAX >> 1, &len) < 0 ||
        get_bool(o, "truncated", &trunc) < 0 || d == NULL || !json_is_string(d) ||
        b64_decode(b, json_string_value(d), json_string_length(d), &data) < 0)
        BAD("body chunk fields");
    if (data.len > len || len == 0)
        BAD("body chunk: data_b64 longer than len, or len 0");
    if (dir == SOTH_LEG_UPSTREAM && !(s->f & S_FINAL))
        ORD("response body before the final response_headers");
    if (dir == SOTH_LEG_UPSTREAM && (s->f & (S_HEAD | S_NO_BODY)))
        ORD("response body to HEAD, 1xx, 204 or 304");
    if (s->f & (dir == SOTH_LEG_CLIENT ? S_REQ_TRL : S_RESP_TRL))
        ORD("body chunk after its trailers");
    if (off != s->off[dir])
        ORD("body chunk offset not contiguous");
    /* Capture: the first body_capture_bytes of the message (docs/events.md). */
    uint64_t left =
        s->cap[dir] < b->p.body_capture_bytes ? b->p.body_capture_bytes - s->cap[dir] : 0;
    if (data.len > left)
        data.len = (size_t)left;
    s->off[dir] += len;
    s->cap[dir] += data.len;
    soth_ev_body_chunk(&c->ev, dir, s->id, off, len, data, s->cap[dir] < s->off[dir]);
    return 0;
}

static int handle_event(struct soth_bline *b, json_t *o, const char *key, size_t key_len,
                        uint64_t now_ns)
{
    json_t *tv = json_object_get(o, "type");
    if (tv == NULL || !json_is_string(tv))
        BAD("event: type");
    int t = soth_ev_type_from_name(json_string_value(tv), json_string_length(tv));
    /* budget_exceeded: budgets are the native engine's (docs/soth.md), never reported. */
    if (t < 0 || t == SOTH_EV_TLS_LEARNING_AUDIT || t == SOTH_EV_QUIC_CLIENT_HELLO ||
        t == SOTH_EV_BUDGET_EXCEEDED)
        BAD("event: type not accepted");
    /* Common fields the engine may set. */
    struct soth_iov caddr, shost;
    bool shost_null;
    uint64_t sport;
    json_t *pv = json_object_get(o, "protocol");
    int proto = -1;
    if (get_text(b, o, "client_addr", NUL, &caddr, NULL) < 0 ||
        get_text(b, o, "server_host", NUL, &shost, &shost_null) < 0 ||
        get_uint(o, "server_port", NUL, 65535, &sport) < 0 ||
        (pv != NULL && get_enum(o, "protocol", soth_protocol_names, SOTH_PROTO_COUNT, &proto) < 0))
        BAD("event: a common field");
    if (caddr.base == NULL)
        caddr = soth_iov("", 0);
    if (proto == SOTH_PROTO_HTTP3)
        BAD("event: no QUIC behind the bridge");

    uint32_t idx = conn_find(b, key, key_len);
    struct bconn *c = idx != NONE ? conn_at(b, idx) : NULL;
    if (c == NULL && t != SOTH_EV_CONNECT_RECEIVED && t != SOTH_EV_CONNECT_PARSE_FAILED)
        ORD("a conn's first event is connect_received or connect_parse_failed");
    if (c != NULL && (t == SOTH_EV_CONNECT_RECEIVED || t == SOTH_EV_CONNECT_PARSE_FAILED))
        ORD("second connect_received/connect_parse_failed");
    if (c != NULL && t == SOTH_EV_CONNECT_DECISION && c->decided)
        ORD("second connect_decision");
    if (c != NULL && (is_tls_type(t) || is_stream_type(t))) {
        if (!c->decided)
            ORD("TLS/HTTP event before connect_decision");
        if (c->decision == SOTH_ACTION_BLOCK ||
            (c->decision == SOTH_ACTION_TUNNEL && (is_tls_type(t) || c->connect)))
            ORD("TLS/HTTP event on a blocked or tunnelled flow");
    }

    /* Per type: parse and check everything, then emit. */
    struct soth_iov s1 = SOTH_IOV_NULL, s2 = SOTH_IOV_NULL, s3 = SOTH_IOV_NULL, s4 = SOTH_IOV_NULL,
                    s5 = SOTH_IOV_NULL;
    bool n1 = false, n2 = false, n3 = false;
    uint64_t u1 = 0, u2 = 0;
    int e1 = 0, e2 = 0, e3 = 0;
    size_t nh = 0, nl = 0;
    uint32_t sidx = NONE;
    struct bstream *s = NULL;
    uint64_t sid = 0;
    if (is_stream_type(t)) {
        if (get_uint(o, "stream_id", REQ, UINT32_MAX, &sid) < 0 || sid == 0)
            BAD("stream_id");
        sidx = stream_find(b, c, (uint32_t)sid);
        s = sidx != NONE ? st_at(b, sidx) : NULL;
        if (t != SOTH_EV_REQUEST_HEADERS && s == NULL)
            ORD("stream event before its request_headers (or after exchange_completed)");
    }
    switch (t) {
    case SOTH_EV_CONNECT_RECEIVED:
        if (get_text(b, o, "method", NUL, &s1, &n1) < 0 ||
            get_text(b, o, "target", REQ, &s2, NULL) < 0)
            BAD("connect_received fields");
        break;
    case SOTH_EV_CONNECT_PARSE_FAILED:
        if (get_text(b, o, "reason_code", REQ, &s1, NULL) < 0 ||
            get_text(b, o, "detail", REQ, &s2, NULL) < 0)
            BAD("connect_parse_failed fields");
        break;
    case SOTH_EV_CONNECT_DECISION:
        if (get_enum(o, "decision", soth_action_names, SOTH_ACTION_COUNT, &e1) < 0 ||
            get_enum(o, "reason", soth_decision_reason_names, SOTH_REASON_COUNT, &e2) < 0 ||
            get_text(b, o, "rule", OPT, &s1, &n1) < 0 ||
            get_text(b, o, "route", OPT, &s2, &n2) < 0 ||
            get_text(b, o, "identity", OPT, &s3, &n3) < 0)
            BAD("connect_decision fields");
        if (!n3 && (s3.len == 0 || s3.len > SOTH_EV_IDENTITY_MAX))
            BAD("connect_decision identity");
        break;
    case SOTH_EV_TLS_HANDSHAKE_STARTED:
        if (get_enum(o, "side", soth_leg_names, SOTH_LEG_COUNT, &e1) < 0 ||
            get_text(b, o, "sni", NUL, &s1, &n1) < 0 || get_text(b, o, "ja4", OPT, &s2, &n2) < 0)
            BAD("tls_handshake_started fields");
        if (c->tls[e1] != TLS_NONE)
            ORD("second tls_handshake_started of a side");
        break;
    case SOTH_EV_TLS_HANDSHAKE_SUCCEEDED:
        if (get_enum(o, "side", soth_leg_names, SOTH_LEG_COUNT, &e1) < 0 ||
            get_text(b, o, "tls_version", REQ, &s1, NULL) < 0 ||
            get_text(b, o, "cipher", REQ, &s2, NULL) < 0 ||
            get_text(b, o, "alpn", NUL, &s3, &n3) < 0 || get_text(b, o, "ja4s", OPT, &s4, &n2) < 0)
            BAD("tls_handshake_succeeded fields");
        if (c->tls[e1] != TLS_STARTED)
            ORD("handshake end without its start");
        break;
    case SOTH_EV_TLS_HANDSHAKE_FAILED:
        if (get_enum(o, "side", soth_leg_names, SOTH_LEG_COUNT, &e1) < 0 ||
            get_enum(o, "tls_failure_reason", soth_tls_failure_names, SOTH_TLSF_COUNT, &e2) < 0 ||
            get_text(b, o, "tls_failure_source", REQ, &s1, NULL) < 0 ||
            get_enum(o, "tls_ops_provider", soth_tls_provider_names, SOTH_TLSP_COUNT, &e3) < 0 ||
            get_text(b, o, "detail", REQ, &s2, NULL) < 0)
            BAD("tls_handshake_failed fields");
        if (c->tls[e1] != TLS_STARTED)
            ORD("handshake end without its start");
        break;
    case SOTH_EV_REQUEST_HEADERS:
        if (get_text(b, o, "method", REQ, &s1, NULL) < 0 ||
            get_text(b, o, "scheme", NUL, &s2, &n1) < 0 ||
            get_text(b, o, "authority", NUL, &s3, &n2) < 0 ||
            get_text(b, o, "path", REQ, &s4, NULL) < 0 ||
            get_text(b, o, "http_version", REQ, &s5, NULL) < 0 ||
            get_headers(b, o, "headers", &nh) < 0)
            BAD("request_headers fields");
        if (!(soth_iov_is_ci(s5, "1.0") || soth_iov_is_ci(s5, "1.1") || soth_iov_is_ci(s5, "2")))
            BAD("http_version is 1.0, 1.1 or 2");
        if (s != NULL)
            ORD("second request_headers on a stream");
        {
            int h2 = soth_iov_is_ci(s5, "2");
            if (c->h2 >= 0 && c->h2 != h2)
                ORD("HTTP/1.x and HTTP/2 on one conn");
            if (!h2 && sid != (uint64_t)c->last_sid + 1)
                ORD("HTTP/1.x stream_id not the next one");
            if (h2 && sid <= c->last_sid)
                ORD("HTTP/2 stream_id not increasing");
        }
        if (c->n_streams >= SOTH_BRIDGE_STREAMS_MAX)
            return refuse(b, SOTH_BRIDGE_R_TOO_MANY_STREAMS, "too many open streams", now_ns);
        break;
    case SOTH_EV_REQUEST_TRAILERS:
    case SOTH_EV_RESPONSE_TRAILERS:
        if (get_headers(b, o, "headers", &nh) < 0)
            BAD("trailers fields");
        if (t == SOTH_EV_RESPONSE_TRAILERS && !(s->f & S_FINAL))
            ORD("response_trailers before the final response_headers");
        if (s->f & (t == SOTH_EV_REQUEST_TRAILERS ? S_REQ_TRL : S_RESP_TRL))
            ORD("second trailers");
        break;
    case SOTH_EV_RESPONSE_HEADERS:
        if (get_uint(o, "status", REQ, 999, &u1) < 0 || u1 < 100 ||
            get_text(b, o, "http_version", REQ, &s1, NULL) < 0 ||
            get_headers(b, o, "headers", &nh) < 0 || get_list(o, "alt_svc_removed", OPT, &nl) < 0)
            BAD("response_headers fields");
        if (u1 > 599)
            BAD("status out of range");
        if (s->f & S_FINAL)
            ORD("response_headers after the final one");
        break;
    case SOTH_EV_REQUEST_BODY_CHUNK:
    case SOTH_EV_RESPONSE_BODY_CHUNK:
        break; /* checked and emitted by ev_body */
    case SOTH_EV_EXCHANGE_COMPLETED:
        if (get_enum(o, "outcome", soth_outcome_names, SOTH_OUTCOME_COUNT, &e1) < 0 ||
            get_uint(o, "request_bytes", REQ, UINT64_MAX >> 1, &u1) < 0 ||
            get_uint(o, "response_bytes", REQ, UINT64_MAX >> 1, &u2) < 0 ||
            get_text(b, o, "reason", OPT, &s1, &n1) < 0)
            BAD("exchange_completed fields");
        break;
    case SOTH_EV_WS_MESSAGE:
    case SOTH_EV_GRPC_MESSAGE: {
        json_t *d = json_object_get(o, "data_b64");
        if (get_enum(o, "direction", soth_direction_names, SOTH_LEG_COUNT, &e1) < 0 ||
            get_bool(o, "truncated", &n1) < 0 || d == NULL || !json_is_string(d) ||
            b64_decode(b, json_string_value(d), json_string_length(d), &s1) < 0)
            BAD("message fields");
        if (t == SOTH_EV_WS_MESSAGE && (get_uint(o, "opcode", REQ, 15, &u1) < 0 ||
                                        get_uint(o, "len", REQ, UINT64_MAX >> 1, &u2) < 0))
            BAD("ws_message fields");
        if (t == SOTH_EV_GRPC_MESSAGE &&
            (get_bool(o, "compressed", &n2) < 0 || get_uint(o, "length", REQ, UINT32_MAX, &u2) < 0))
            BAD("grpc_message fields");
        if ((t == SOTH_EV_WS_MESSAGE || e1 == SOTH_LEG_UPSTREAM) && !(s->f & S_FINAL))
            ORD("message before the final response_headers");
        break;
    }
    case SOTH_EV_WS_TURN_STARTED:
        if (get_uint(o, "turn_id", REQ, UINT64_MAX >> 1, &u1) < 0 ||
            get_enum(o, "initiator", soth_direction_names, SOTH_LEG_COUNT, &e1) < 0)
            BAD("ws_turn_started fields");
        if (!(s->f & S_FINAL) || (s->f & S_TURN))
            ORD("ws turn started before the response or while one is open");
        break;
    case SOTH_EV_WS_TURN_COMPLETED: {
        static const char *const k[] = {"client_frames", "server_frames", "client_bytes",
                                        "server_bytes",  "started_ns",    "ended_ns"};
        uint64_t dummy;
        if (get_uint(o, "turn_id", REQ, UINT64_MAX >> 1, &u1) < 0 ||
            get_enum(o, "initiator", soth_direction_names, SOTH_LEG_COUNT, &e1) < 0 ||
            get_enum(o, "flush_reason", soth_flush_reason_names, SOTH_FLUSH_COUNT, &e2) < 0)
            BAD("ws_turn_completed fields");
        for (int i = 0; i < 6; i++)
            if (get_uint(o, k[i], REQ, UINT64_MAX >> 1, &dummy) < 0)
                BAD("ws_turn_completed counts");
        if (!(s->f & S_TURN) || s->turn_id != u1)
            ORD("ws_turn_completed without its ws_turn_started");
        break;
    }
    case SOTH_EV_SSE_EVENT: {
        json_t *rv = json_object_get(o, "retry");
        if (get_text(b, o, "event", NUL, &s1, &n1) < 0 || get_text(b, o, "id", NUL, &s2, &n2) < 0 ||
            get_text(b, o, "data", REQ, &s3, NULL) < 0 ||
            (rv != NULL && !json_is_null(rv) && get_uint(o, "retry", REQ, INT64_MAX, &u1) < 0))
            BAD("sse_event fields");
        n3 = rv == NULL || json_is_null(rv);
        if (!(s->f & S_FINAL))
            ORD("sse_event before the final response_headers");
        break;
    }
    case SOTH_EV_PAYLOAD_PARSED: {
        json_t *val = json_object_get(o, "value");
        if (get_enum(o, "direction", soth_direction_names, SOTH_LEG_COUNT, &e1) < 0 ||
            get_list(o, "decoders", REQ, &nl) < 0 || get_bool(o, "sanitized", &n1) < 0 ||
            get_text(b, o, "format", NUL, &s1, &n2) < 0 ||
            get_text(b, o, "error", OPT, &s3, &n3) < 0)
            BAD("payload_parsed fields");
        if ((val == NULL) == n3)
            BAD("payload_parsed: exactly one of value and error");
        if (val != NULL) {
            size_t need = json_dumpb(val, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
            if (need == 0 || need > b->arena_cap - b->arena_len)
                BAD("payload_parsed: value");
            json_dumpb(val, b->arena + b->arena_len, need, JSON_COMPACT | JSON_ENCODE_ANY);
            s2 = soth_iov(b->arena + b->arena_len, need);
            b->arena_len += need;
        }
        if (e1 == SOTH_LEG_UPSTREAM && !(s->f & S_FINAL))
            ORD("payload_parsed before the final response_headers");
        break;
    }
    case SOTH_EV_STREAM_CLOSED:
        if (get_enum(o, "reason_code", soth_close_reason_names, SOTH_CLOSE_COUNT, &e1) < 0 ||
            get_uint(o, "bytes_client_to_server", OPT, UINT64_MAX >> 1, &u1) < 0 ||
            get_uint(o, "bytes_server_to_client", OPT, UINT64_MAX >> 1, &u2) < 0)
            BAD("stream_closed fields");
        break;
    default:
        BAD("event: type not accepted");
    }

    /* Accepted: emit. */
    if (c == NULL) {
        idx = conn_open(b, key, key_len, caddr, now_ns);
        if (idx == NONE)
            return refuse(b, SOTH_BRIDGE_R_TOO_MANY_CONNS, "conn table full", now_ns);
        c = conn_at(b, idx);
        c->by_events = true;
    } else {
        touch(b, idx, now_ns);
    }
    if (shost.base != NULL || sport != 0)
        soth_ev_flow_set_server(
            &c->ev, shost.base != NULL ? shost : soth_iov(c->ev.server_host, c->ev.server_host_len),
            json_object_get(o, "server_port") ? (uint16_t)sport : c->ev.server_port);
    if (proto >= 0)
        soth_ev_flow_set_protocol(&c->ev, (enum soth_protocol)proto);
    struct soth_ev_flow *f = &c->ev;
    switch (t) {
    case SOTH_EV_CONNECT_RECEIVED:
        c->connect = !n1 && (soth_iov_is_ci(s1, "CONNECT") || soth_iov_is_ci(s1, "SOCKS5"));
        soth_ev_connect_received(f, n1 ? SOTH_IOV_NULL : s1, s2);
        break;
    case SOTH_EV_CONNECT_PARSE_FAILED:
        soth_ev_connect_parse_failed(f, s1, s2);
        break;
    case SOTH_EV_CONNECT_DECISION:
        if (!n3) /* the engine's identity: every later event of the flow carries it */
            soth_ev_flow_set_identity(f, s3);
        soth_ev_connect_decision_route(f, (enum soth_action)e1, (enum soth_decision_reason)e2,
                                       n1 ? SOTH_IOV_NULL : s1, n2 ? SOTH_IOV_NULL : s2);
        c->decided = true;
        c->decision = (uint8_t)e1;
        break;
    case SOTH_EV_TLS_HANDSHAKE_STARTED:
        soth_ev_tls_handshake_started_fp(f, (enum soth_leg)e1, n1 ? SOTH_IOV_NULL : s1,
                                         n2 || e1 != SOTH_LEG_CLIENT ? SOTH_IOV_NULL : s2);
        c->tls[e1] = TLS_STARTED;
        break;
    case SOTH_EV_TLS_HANDSHAKE_SUCCEEDED:
        soth_ev_tls_handshake_succeeded_fp(f, (enum soth_leg)e1, s1, s2, n3 ? SOTH_IOV_NULL : s3,
                                           n2 || e1 != SOTH_LEG_UPSTREAM ? SOTH_IOV_NULL : s4,
                                           UINT64_MAX);
        c->tls[e1] = TLS_ENDED;
        break;
    case SOTH_EV_TLS_HANDSHAKE_FAILED:
        soth_learn_emit_failure(f, b->p.learning_enabled, (enum soth_leg)e1,
                                (enum soth_tls_failure)e2, (enum soth_tls_provider)e3, s1, s2);
        if (b->p.m != NULL)
            SOTH_METRIC_ADD(b->p.m->tls_failures[e1][e2], 1);
        c->tls[e1] = TLS_ENDED;
        break;
    case SOTH_EV_REQUEST_HEADERS: {
        sidx = st_alloc(b);
        if (sidx == NONE)
            return refuse(b, SOTH_BRIDGE_R_TOO_MANY_STREAMS, "stream pool full", now_ns);
        s = st_at(b, sidx);
        memset(s, 0, sizeof(*s));
        s->id = (uint32_t)sid;
        s->next = c->streams;
        c->streams = sidx;
        c->n_streams++;
        c->last_sid = (uint32_t)sid;
        c->h2 = (int8_t)soth_iov_is_ci(s5, "2");
        if (soth_iov_is_ci(s1, "HEAD"))
            s->f |= S_HEAD;
        soth_ev_request_headers(f, s->id, s1, n1 ? SOTH_IOV_NULL : s2, n2 ? SOTH_IOV_NULL : s3, s4,
                                s5, b->hdrs, nh);
        break;
    }
    case SOTH_EV_REQUEST_TRAILERS:
    case SOTH_EV_RESPONSE_TRAILERS: {
        enum soth_leg dir = t == SOTH_EV_REQUEST_TRAILERS ? SOTH_LEG_CLIENT : SOTH_LEG_UPSTREAM;
        s->f |= dir == SOTH_LEG_CLIENT ? S_REQ_TRL : S_RESP_TRL;
        soth_ev_trailers(f, dir, s->id, b->hdrs, nh);
        break;
    }
    case SOTH_EV_RESPONSE_HEADERS:
        if (u1 >= 200 || u1 == 101) {
            s->f |= S_FINAL;
            s->status = (uint16_t)u1;
            if (u1 == 204 || u1 == 304 || u1 == 101)
                s->f |= S_NO_BODY;
        }
        fill_list(b, o, "alt_svc_removed", nl);
        soth_ev_response_headers(f, s->id, (unsigned)u1, s1, b->hdrs, nh, b->list, nl);
        break;
    case SOTH_EV_REQUEST_BODY_CHUNK:
    case SOTH_EV_RESPONSE_BODY_CHUNK:
        return ev_body(b, c, s, o,
                       t == SOTH_EV_REQUEST_BODY_CHUNK ? SOTH_LEG_CLIENT : SOTH_LEG_UPSTREAM,
                       now_ns);
    case SOTH_EV_EXCHANGE_COMPLETED:
        turn_close(c, s);
        if (!n1 && s1.len > 0 && e1 != SOTH_OUTCOME_COMPLETE &&
            json_is_string(json_object_get(o, "reason")))
            /* Kept by pointer until the call below: the line outlives it. */
            soth_ev_exchange_reason(f, json_string_value(json_object_get(o, "reason")));
        soth_ev_exchange_completed(f, s->id, (enum soth_outcome)e1, s->off[SOTH_LEG_CLIENT],
                                   s->off[SOTH_LEG_UPSTREAM]);
        stream_free(b, c, sidx);
        break;
    case SOTH_EV_WS_MESSAGE:
        soth_ev_ws_message(f, s->id, (enum soth_leg)e1, (unsigned)u1, u2, s1, n1);
        break;
    case SOTH_EV_GRPC_MESSAGE:
        soth_ev_grpc_message(f, s->id, (enum soth_leg)e1, n2, (uint32_t)u2, s1, n1);
        break;
    case SOTH_EV_WS_TURN_STARTED:
        s->f |= S_TURN;
        s->turn_id = u1;
        s->turn_init = (uint8_t)e1;
        s->turn_started_ns = soth_now_ns();
        soth_ev_ws_turn_started(f, s->id, u1, (enum soth_leg)e1);
        break;
    case SOTH_EV_WS_TURN_COMPLETED: {
        struct soth_ws_turn_stats st = {.turn_id = u1,
                                        .initiator = (enum soth_leg)e1,
                                        .flush_reason = (enum soth_flush_reason)e2};
        get_uint(o, "client_frames", REQ, UINT64_MAX >> 1, &st.client_frames);
        get_uint(o, "server_frames", REQ, UINT64_MAX >> 1, &st.server_frames);
        get_uint(o, "client_bytes", REQ, UINT64_MAX >> 1, &st.client_bytes);
        get_uint(o, "server_bytes", REQ, UINT64_MAX >> 1, &st.server_bytes);
        get_uint(o, "started_ns", REQ, UINT64_MAX >> 1, &st.started_ns);
        get_uint(o, "ended_ns", REQ, UINT64_MAX >> 1, &st.ended_ns);
        s->f &= (uint8_t)~S_TURN;
        soth_ev_ws_turn_completed(f, s->id, &st);
        break;
    }
    case SOTH_EV_SSE_EVENT:
        soth_ev_sse_event(f, s->id, n1 ? SOTH_IOV_NULL : s1, n2 ? SOTH_IOV_NULL : s2,
                          n3 ? -1 : (int64_t)u1, s3);
        break;
    case SOTH_EV_PAYLOAD_PARSED:
        fill_list(b, o, "decoders", nl);
        /* n3: no error, so the value (s2) is there; exactly one of the two is passed. */
        soth_ev_payload_parsed(f, s->id, (enum soth_leg)e1, b->list, nl, n1,
                               n2 ? SOTH_IOV_NULL : s1, n3 ? s2 : SOTH_IOV_NULL,
                               n3 ? SOTH_IOV_NULL : s3);
        break;
    case SOTH_EV_STREAM_CLOSED:
        c->bytes[0] = u1;
        c->bytes[1] = u2;
        conn_close(b, idx, (enum soth_close_reason)e1);
        break;
    default:
        break;
    }
    return 0;
}

/* ==========================================================================================
 * the line
 * ========================================================================================== */

int soth_bline_handle(struct soth_bline *b, const char *line, size_t len, uint64_t now_ns)
{
    if (b->p.bm != NULL)
        SOTH_METRIC_ADD(b->p.bm->lines, 1);
    if (len > SOTH_BRIDGE_LINE_MAX)
        return refuse(b, SOTH_BRIDGE_R_LINE_TOO_LONG, "line over 1 MiB", now_ns);
    json_error_t jerr;
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (o == NULL)
        return refuse(b, SOTH_BRIDGE_R_BAD_JSON, jerr.text, now_ns);
    int rc;
    if (!json_is_object(o)) {
        rc = refuse(b, SOTH_BRIDGE_R_NOT_OBJECT, "not a JSON object", now_ns);
        goto out;
    }
    json_t *kind = json_object_get(o, "kind");
    const char *k = kind != NULL && json_is_string(kind) ? json_string_value(kind) : "";
    bool tls_op = strcmp(k, "tls_op") == 0, event = strcmp(k, "event") == 0;
    if (!tls_op && !event) {
        rc = refuse(b, SOTH_BRIDGE_R_UNKNOWN_KIND, "kind is tls_op or event", now_ns);
        goto out;
    }
    char key[SOTH_BRIDGE_CONN_ID_MAX + 1];
    size_t key_len;
    if (conn_key(o, key, &key_len) < 0) {
        rc = refuse(b, SOTH_BRIDGE_R_SCHEMA, "conn: 1..128 bytes or an integer", now_ns);
        goto out;
    }
    b->arena_len = 0;
    rc = tls_op ? handle_tls_op(b, o, key, key_len, now_ns)
                : handle_event(b, o, key, key_len, now_ns);
out:
    json_decref(o);
    return rc;
}

void soth_bline_expire(struct soth_bline *b, uint64_t now_ns)
{
    while (b->lru_head != NONE && now_ns - conn_at(b, b->lru_head)->last_ns >= b->idle_ns)
        conn_close(b, b->lru_head, SOTH_CLOSE_IDLE_TIMEOUT);
}

size_t soth_bline_open_flows(const struct soth_bline *b)
{
    return b->n_conns;
}

struct soth_bline *soth_bline_new(const struct soth_bline_params *p)
{
    struct soth_bline *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->p = *p;
    if (b->p.max_conns == 0 || b->p.max_conns > SOTH_BRIDGE_CONNS_MAX)
        b->p.max_conns = SOTH_BRIDGE_CONNS_MAX;
    b->idle_ns = (uint64_t)(p->idle_ms ? p->idle_ms : 60000) * 1000000ull;
    b->conn_free = b->st_free = b->lru_head = b->lru_tail = NONE;
    uint32_t hsize = 1;
    while (hsize < 2 * b->p.max_conns)
        hsize <<= 1;
    b->hmask = hsize - 1;
    b->htab = calloc(hsize, sizeof(*b->htab));
    b->conn_chunks = calloc((b->p.max_conns + CHUNK - 1) / CHUNK + 1, sizeof(*b->conn_chunks));
    b->st_chunks = calloc(STREAMS_MAX / CHUNK + 1, sizeof(*b->st_chunks));
    b->arena_cap = SOTH_BRIDGE_LINE_MAX + 64;
    b->arena = malloc(b->arena_cap);
    b->hdrs = calloc(HDRS_MAX, sizeof(*b->hdrs));
    if (b->htab == NULL || b->conn_chunks == NULL || b->st_chunks == NULL || b->arena == NULL ||
        b->hdrs == NULL) {
        soth_bline_free(b);
        return NULL;
    }
    return b;
}

void soth_bline_free(struct soth_bline *b)
{
    if (b == NULL)
        return;
    while (b->lru_head != NONE)
        conn_close(b, b->lru_head, SOTH_CLOSE_SHUTDOWN);
    if (b->conn_chunks != NULL)
        for (uint32_t i = 0; i < b->n_conn_alloc / CHUNK; i++)
            free(b->conn_chunks[i]);
    if (b->st_chunks != NULL)
        for (uint32_t i = 0; i < b->n_st_alloc / CHUNK; i++)
            free(b->st_chunks[i]);
    free(b->conn_chunks);
    free(b->st_chunks);
    free(b->htab);
    free(b->arena);
    free(b->hdrs);
    free(b);
}
