/*
 * The event vocabulary, the record schema, the producer side (emitters writing records into the
 * worker's SPSC ring) and the JSON encoding shared by soth-mitm-tail and the sinks.
 */
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "observe_int.h"

const char *const soth_ev_type_names[SOTH_EV_TYPE_COUNT] = {
    "connect_received",      "connect_parse_failed",    "connect_decision",
    "tls_handshake_started", "tls_handshake_succeeded", "tls_handshake_failed",
    "tls_learning_audit",    "request_headers",         "request_body_chunk",
    "request_trailers",      "response_headers",        "response_body_chunk",
    "response_trailers",     "exchange_completed",      "ws_message",
    "ws_turn_started",       "ws_turn_completed",       "sse_event",
    "grpc_message",          "payload_parsed",          "stream_closed",
    "quic_client_hello",     "budget_exceeded",
};
const char *const soth_protocol_names[SOTH_PROTO_COUNT] = {"tcp",       "tls", "http1", "http2",
                                                           "websocket", "sse", "grpc",  "http3"};
const char *const soth_close_reason_names[SOTH_CLOSE_COUNT] = {"blocked",
                                                               "parse_failed",
                                                               "upstream_connect_failed",
                                                               "tls_failed",
                                                               "client_eof",
                                                               "relay_eof",
                                                               "relay_error",
                                                               "idle_timeout",
                                                               "shutdown",
                                                               "upstream_proxy_failed"};
const char *const soth_decision_reason_names[SOTH_REASON_COUNT] = {
    "ignore_hosts", "policy_rule", "tls_learning", "default", "http3_passthrough"};
const char *const soth_leg_names[SOTH_LEG_COUNT] = {"client", "upstream"};
const char *const soth_tls_failure_names[SOTH_TLSF_COUNT] = {
    "unknown_ca", "cert_validation", "handshake", "timeout", "eof", "reset", "other"};
const char *const soth_tls_provider_names[SOTH_TLSP_COUNT] = {"native", "mitmproxy", "hudsucker"};
const char *const soth_bridge_refusal_names[SOTH_BRIDGE_R_COUNT] = {
    "line_too_long", "bad_json", "not_object",     "unknown_kind",     "unknown_hook",
    "schema",        "order",    "too_many_conns", "too_many_streams", "too_many_clients"};
const char *const soth_outcome_names[SOTH_OUTCOME_COUNT] = {"complete", "client_aborted",
                                                            "upstream_aborted", "reset", "timeout"};
const char *const soth_direction_names[SOTH_LEG_COUNT] = {"client_to_server", "server_to_client"};
const char *const soth_flush_reason_names[SOTH_FLUSH_COUNT] = {"direction_change", "close", "error",
                                                               "idle"};
static const char *const action_names[SOTH_ACTION_COUNT] = {"intercept", "tunnel", "block"};
static const char *const audit_names[2] = {"ignored", "applied"};
static const char *const limit_names[2] = {"requests", "bytes"};

#define E(names, n) FK_ENUM, names, n
#define U(name)                                                                                    \
    {                                                                                              \
        name, FK_U64, NULL, 0                                                                      \
    }
#define S(name)                                                                                    \
    {                                                                                              \
        name, FK_STR, NULL, 0                                                                      \
    }
#define OS(name)                                                                                   \
    {                                                                                              \
        name, FK_OPTSTR, NULL, 0                                                                   \
    }
#define B(name)                                                                                    \
    {                                                                                              \
        name, FK_BOOL, NULL, 0                                                                     \
    }
#define STREAM U("stream_id")
#define DIR                                                                                        \
    {                                                                                              \
        "direction", E(soth_direction_names, SOTH_LEG_COUNT)                                       \
    }
#define HDRS                                                                                       \
    {                                                                                              \
        "headers", FK_HDRS, NULL, 0                                                                \
    }
#define BODY U("offset"), U("len"), {"data_b64", FK_B64, NULL, 0}, B("truncated")

const struct type_def soth_ev_schema[SOTH_EV_TYPE_COUNT] = {
    [SOTH_EV_CONNECT_RECEIVED] = {{OS("method"), S("target")}, 2},
    [SOTH_EV_CONNECT_PARSE_FAILED] = {{S("reason_code"), S("detail")}, 2},
    [SOTH_EV_CONNECT_DECISION] = {{{"decision", E(action_names, SOTH_ACTION_COUNT)},
                                   {"reason", E(soth_decision_reason_names, SOTH_REASON_COUNT)},
                                   {"rule", FK_OMITSTR, NULL, 0},
                                   {"route", FK_OMITSTR, NULL, 0}},
                                  4},
    [SOTH_EV_TLS_HANDSHAKE_STARTED] =
        {{{"side", E(soth_leg_names, SOTH_LEG_COUNT)}, OS("sni"), {"ja4", FK_OMITSTR, NULL, 0}}, 3},
    [SOTH_EV_TLS_HANDSHAKE_SUCCEEDED] = {{{"side", E(soth_leg_names, SOTH_LEG_COUNT)},
                                          S("tls_version"),
                                          S("cipher"),
                                          OS("alpn"),
                                          {"ja4s", FK_OMITSTR, NULL, 0},
                                          {"reused", FK_OMITU64, NULL, 0}},
                                         6},
    [SOTH_EV_TLS_HANDSHAKE_FAILED] =
        {{{"side", E(soth_leg_names, SOTH_LEG_COUNT)},
          {"tls_failure_reason", E(soth_tls_failure_names, SOTH_TLSF_COUNT)},
          S("tls_failure_source"),
          {"tls_ops_provider", E(soth_tls_provider_names, SOTH_TLSP_COUNT)},
          S("detail"),
          U("host_failure_count"),
          U("global_failure_count")},
         7},
    [SOTH_EV_TLS_LEARNING_AUDIT] = {{{"decision", E(audit_names, 2)},
                                     S("reason"),
                                     S("host"),
                                     {"signal_provider",
                                      E(soth_tls_provider_names, SOTH_TLSP_COUNT)}},
                                    4},
    [SOTH_EV_REQUEST_HEADERS] = {{STREAM, S("method"), OS("scheme"), OS("authority"), S("path"),
                                  S("http_version"), HDRS},
                                 7},
    [SOTH_EV_REQUEST_BODY_CHUNK] = {{STREAM, BODY}, 5},
    [SOTH_EV_REQUEST_TRAILERS] = {{STREAM, HDRS}, 2},
    [SOTH_EV_RESPONSE_HEADERS] =
        {{STREAM, U("status"), S("http_version"), HDRS, {"alt_svc_removed", FK_OPTLIST, NULL, 0}},
         5},
    [SOTH_EV_RESPONSE_BODY_CHUNK] = {{STREAM, BODY}, 5},
    [SOTH_EV_RESPONSE_TRAILERS] = {{STREAM, HDRS}, 2},
    [SOTH_EV_EXCHANGE_COMPLETED] = {{STREAM,
                                     {"outcome", E(soth_outcome_names, SOTH_OUTCOME_COUNT)},
                                     U("request_bytes"),
                                     U("response_bytes"),
                                     {"reason", FK_OMITSTR, NULL, 0}},
                                    5},
    [SOTH_EV_WS_MESSAGE] =
        {{STREAM, DIR, U("opcode"), U("len"), {"data_b64", FK_B64, NULL, 0}, B("truncated")}, 6},
    [SOTH_EV_WS_TURN_STARTED] =
        {{STREAM, U("turn_id"), {"initiator", E(soth_direction_names, SOTH_LEG_COUNT)}}, 3},
    [SOTH_EV_WS_TURN_COMPLETED] = {{STREAM,
                                    U("turn_id"),
                                    {"initiator", E(soth_direction_names, SOTH_LEG_COUNT)},
                                    U("client_frames"),
                                    U("server_frames"),
                                    U("client_bytes"),
                                    U("server_bytes"),
                                    U("started_ns"),
                                    U("ended_ns"),
                                    {"flush_reason", E(soth_flush_reason_names, SOTH_FLUSH_COUNT)}},
                                   10},
    [SOTH_EV_SSE_EVENT] = {{STREAM, OS("event"), OS("id"), {"retry", FK_I64N, NULL, 0}, S("data")},
                           5},
    [SOTH_EV_GRPC_MESSAGE] =
        {{STREAM, DIR, B("compressed"), U("length"), {"data_b64", FK_B64, NULL, 0}, B("truncated")},
         6},
    [SOTH_EV_PAYLOAD_PARSED] = {{STREAM,
                                 DIR,
                                 {"decoders", FK_STRLIST, NULL, 0},
                                 B("sanitized"),
                                 OS("format"),
                                 {"value", FK_JSON, NULL, 0},
                                 {"error", FK_OMITSTR, NULL, 0}},
                                7},
    [SOTH_EV_STREAM_CLOSED] = {{{"reason_code", E(soth_close_reason_names, SOTH_CLOSE_COUNT)},
                                U("bytes_client_to_server"),
                                U("bytes_server_to_client"),
                                U("duration_ns"),
                                U("events_dropped"),
                                {"datagrams_client_to_server", FK_OMITU64, NULL, 0},
                                {"datagrams_server_to_client", FK_OMITU64, NULL, 0}},
                               7},
    [SOTH_EV_QUIC_CLIENT_HELLO] =
        {{S("quic_version"), OS("sni"), {"alpn", FK_STRLIST, NULL, 0}, U("initial_packets")}, 4},
    [SOTH_EV_BUDGET_EXCEEDED] = {{STREAM, S("rule"), {"limit", E(limit_names, 2)}, U("window_s")},
                                 4},
};

int soth_ev_type_from_name(const char *name, size_t len)
{
    for (int i = 0; i < SOTH_EV_TYPE_COUNT; i++)
        if (strlen(soth_ev_type_names[i]) == len && memcmp(soth_ev_type_names[i], name, len) == 0)
            return i;
    return -1;
}

/* ==========================================================================================
 * producer side
 * ========================================================================================== */

/** One argument of an emitter, in schema order. */
struct ev_val {
    uint64_t u;
    struct soth_iov s;              /* strings; base NULL = null */
    const struct soth_header *hdrs; /* FK_HDRS */
    const struct soth_iov *list;    /* FK_STRLIST, FK_OPTLIST */
    size_t n;
};

/*
 * stream_closed is never dropped (docs/events.md, ordering invariant 1 and "Overload"): others may
 * not use the last (open_flows + 1) * SC_REC_MAX bytes of the ring, which is room for the
 * stream_closed of every flow still open plus one wrap padding. The reserve is capped at half
 * the ring so that a caller that leaks flows (init without stream_closed) cannot starve the rest.
 */
#define SC_REC_MAX                                                                                 \
    ((sizeof(struct ev_rec) + SOTH_EV_ADDR_MAX + SOTH_EV_HOST_MAX + 7 * 8 + REC_ALIGN - 1) &       \
     ~(size_t)(REC_ALIGN - 1))

static uint64_t closed_reserve(const struct soth_ev_producer *pr)
{
    uint64_t r = (pr->open_flows + 1) * (uint64_t)SC_REC_MAX;
    return r < pr->cap / 2 ? r : pr->cap / 2;
}

static size_t field_size(const struct field_def *fd, const struct ev_val *v)
{
    switch (fd->kind) {
    case FK_STR:
    case FK_OPTSTR:
    case FK_OMITSTR:
    case FK_B64:
    case FK_JSON:
        return 4 + v->s.len;
    case FK_HDRS: {
        size_t n = 4;
        for (size_t i = 0; i < v->n; i++)
            n += 8 + v->hdrs[i].name.len + v->hdrs[i].value.len;
        return n;
    }
    case FK_STRLIST:
    case FK_OPTLIST: {
        size_t n = 4;
        for (size_t i = 0; i < v->n; i++)
            n += 4 + v->list[i].len;
        return n;
    }
    default:
        return 8;
    }
}

static char *put_u32(char *p, uint32_t x)
{
    memcpy(p, &x, 4);
    return p + 4;
}

static char *put_bytes(char *p, struct soth_iov s, bool nullable)
{
    if (s.base == NULL && nullable)
        return put_u32(p, NULL_LEN);
    p = put_u32(p, (uint32_t)s.len);
    if (s.len)
        memcpy(p, s.base, s.len);
    return p + s.len;
}

static void emit(struct soth_ev_flow *f, enum soth_ev_type t, const struct ev_val *vals)
{
    struct soth_ev_producer *pr = f->prod;
    uint32_t seq = f->seq++;
    if (pr == NULL || f->closed)
        return;
    const struct type_def *td = &soth_ev_schema[t];
    size_t len = sizeof(struct ev_rec) + f->client_addr_len + f->server_host_len + f->identity_len;
    for (unsigned i = 0; i < td->n; i++)
        len += field_size(&td->f[i], &vals[i]);
    len = (len + REC_ALIGN - 1) & ~(size_t)(REC_ALIGN - 1);

    /* Room: records are contiguous; a record that would wrap is preceded by padding. */
    uint64_t off = pr->tail & pr->mask;
    size_t pad = off + len > pr->cap ? (size_t)(pr->cap - off) : 0;
    uint64_t limit = t == SOTH_EV_STREAM_CLOSED ? pr->cap : pr->cap - closed_reserve(pr);
    if (SOTH_UNLIKELY(len > REC_MAX || pr->tail + pad + len - pr->head_cache > limit)) {
        pr->head_cache = atomic_load_explicit(&pr->head, memory_order_acquire);
        if (len > REC_MAX || pr->tail + pad + len - pr->head_cache > limit) {
            f->dropped++;
            SOTH_METRIC_ADD(pr->m->events_dropped, 1);
            return;
        }
    }
    if (pad) {
        struct ev_rec *pr_rec = (struct ev_rec *)(pr->data + off);
        pr_rec->len = (uint32_t)pad;
        pr_rec->type = REC_PAD;
        pr->tail += pad;
        off = 0;
    }
    struct ev_rec *r = (struct ev_rec *)(pr->data + off);
    r->len = (uint32_t)len;
    r->type = (uint16_t)t;
    r->worker = f->worker;
    r->gseq = 0;
    r->pos = 0;
    r->flow_id = f->flow_id;
    r->ts_ns = soth_now_ns();
    r->seq = seq;
    r->server_port = f->server_port;
    r->protocol = f->protocol;
    r->client_addr_len = f->client_addr_len;
    r->server_host_len = f->server_host_len;
    r->identity_len = f->identity_len;
    memset(r->pad, 0, sizeof(r->pad));
    char *p = (char *)(r + 1);
    memcpy(p, f->client_addr, f->client_addr_len);
    p += f->client_addr_len;
    memcpy(p, f->server_host, f->server_host_len);
    p += f->server_host_len;
    memcpy(p, f->identity, f->identity_len);
    p += f->identity_len;
    for (unsigned i = 0; i < td->n; i++) {
        const struct ev_val *v = &vals[i];
        switch (td->f[i].kind) {
        case FK_STR:
        case FK_B64:
            p = put_bytes(p, v->s, false);
            break;
        case FK_OPTSTR:
        case FK_OMITSTR:
        case FK_JSON:
            p = put_bytes(p, v->s, true);
            break;
        case FK_HDRS:
            p = put_u32(p, (uint32_t)v->n);
            for (size_t k = 0; k < v->n; k++) {
                p = put_bytes(p, v->hdrs[k].name, false);
                p = put_bytes(p, v->hdrs[k].value, false);
            }
            break;
        case FK_STRLIST:
        case FK_OPTLIST:
            p = put_u32(p, (uint32_t)v->n);
            for (size_t k = 0; k < v->n; k++)
                p = put_bytes(p, v->list[k], false);
            break;
        default:
            memcpy(p, &v->u, 8);
            p += 8;
            break;
        }
    }
    memset(p, 0, (size_t)((char *)r + len - p));
    pr->tail += len;
    if (t == SOTH_EV_STREAM_CLOSED)
        f->closed = true;
}

void soth_ev_flush(struct soth_ev_producer *pr)
{
    if (pr == NULL)
        return;
    if (atomic_load_explicit(&pr->pub_tail, memory_order_relaxed) == pr->tail)
        return;
    /*
     * Dekker with the consumer's "sleeping" announcement (telemetry_main): store tail, then load
     * sleeping, both seq_cst, so one of the two sides always sees the other. On x86-64 the
     * store is one xchg per batch; the load is a plain move.
     */
    atomic_store_explicit(&pr->pub_tail, pr->tail, memory_order_seq_cst);
    struct soth_observe *obs = pr->obs;
    /* A lingering consumer (see telemetry_main) polls every millisecond; a ring filling up
     * faster than that wakes it too (head_cache is stale-low, so this errs towards waking). */
    bool filling = pr->tail - pr->head_cache > pr->cap / 4;
    if ((atomic_load_explicit(&obs->sleeping, memory_order_seq_cst) &&
         atomic_exchange_explicit(&obs->sleeping, 0, memory_order_relaxed)) ||
        (filling && (pr->head_cache = atomic_load_explicit(&pr->head, memory_order_acquire),
                     pr->tail - pr->head_cache > pr->cap / 4))) {
        uint64_t one = 1;
        ssize_t n = write(obs->efd, &one, sizeof(one));
        (void)n;
    }
}

void soth_ev_flow_init(struct soth_ev_flow *f, struct soth_ev_producer *prod, uint64_t flow_id,
                       unsigned worker, const struct sockaddr *client, socklen_t client_len)
{
    f->prod = prod;
    f->flow_id = flow_id;
    f->start_mono_ns = soth_mono_ns();
    f->seq = 0;
    f->dropped = 0;
    f->worker = (uint16_t)worker;
    f->server_port = 0;
    f->protocol = SOTH_PROTO_TCP;
    f->client_addr_len = 0;
    f->server_host_len = 0;
    f->identity_len = 0;
    f->closed = false;
    f->x_reason = NULL;
    if (prod != NULL)
        prod->open_flows++; /* until its stream_closed: see closed_reserve() */
    if (client == NULL || client_len == 0)
        return;
    char ip[INET6_ADDRSTRLEN];
    int n = 0;
    if (client->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)client;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        n = snprintf(f->client_addr, sizeof(f->client_addr), "%s:%u", ip, ntohs(s->sin_port));
    } else if (client->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)client;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        n = snprintf(f->client_addr, sizeof(f->client_addr), "[%s]:%u", ip, ntohs(s->sin6_port));
    }
    if (n > 0 && (size_t)n < sizeof(f->client_addr))
        f->client_addr_len = (uint8_t)n;
}

void soth_ev_flow_set_server(struct soth_ev_flow *f, struct soth_iov host, uint16_t port)
{
    size_t n = host.len < SOTH_EV_HOST_MAX ? host.len : SOTH_EV_HOST_MAX;
    memcpy(f->server_host, host.base, n);
    f->server_host_len = (uint8_t)n;
    f->server_port = port;
}

void soth_ev_flow_set_identity(struct soth_ev_flow *f, struct soth_iov id)
{
    size_t n = id.len < SOTH_EV_IDENTITY_MAX ? id.len : SOTH_EV_IDENTITY_MAX;
    if (n > 0)
        memcpy(f->identity, id.base, n);
    f->identity_len = (uint8_t)n;
}

void soth_ev_flow_set_client_text(struct soth_ev_flow *f, struct soth_iov addr)
{
    size_t n = addr.len < SOTH_EV_ADDR_MAX ? addr.len : SOTH_EV_ADDR_MAX - 1;
    memcpy(f->client_addr, addr.base, n);
    f->client_addr_len = (uint8_t)n;
}

#define VU(x)                                                                                      \
    {                                                                                              \
        .u = (uint64_t)(x)                                                                         \
    }
#define VS(x)                                                                                      \
    {                                                                                              \
        .s = (x)                                                                                   \
    }
#define VH(h, cnt)                                                                                 \
    {                                                                                              \
        .hdrs = (h), .n = (cnt)                                                                    \
    }

/*
 * Captured bytes never exceed events.body_capture_bytes in one record, whatever the caller
 * passes (the caller bounds the per-message total; this is the per-record safety net).
 */
static struct soth_iov capture(const struct soth_ev_flow *f, struct soth_iov data, bool *truncated)
{
    if (f->prod != NULL && data.len > f->prod->body_cap) {
        data.len = f->prod->body_cap;
        *truncated = true;
    }
    return data;
}

void soth_ev_connect_received(struct soth_ev_flow *f, struct soth_iov method,
                              struct soth_iov target)
{
    struct ev_val v[] = {VS(method), VS(target)};
    emit(f, SOTH_EV_CONNECT_RECEIVED, v);
}

void soth_ev_connect_parse_failed(struct soth_ev_flow *f, struct soth_iov reason_code,
                                  struct soth_iov detail)
{
    struct ev_val v[] = {VS(reason_code), VS(detail)};
    emit(f, SOTH_EV_CONNECT_PARSE_FAILED, v);
}

void soth_ev_connect_decision(struct soth_ev_flow *f, enum soth_action decision,
                              enum soth_decision_reason reason, struct soth_iov rule)
{
    soth_ev_connect_decision_route(f, decision, reason, rule, SOTH_IOV_NULL);
}

void soth_ev_connect_decision_route(struct soth_ev_flow *f, enum soth_action decision,
                                    enum soth_decision_reason reason, struct soth_iov rule,
                                    struct soth_iov route)
{
    struct ev_val v[] = {VU(decision), VU(reason), VS(rule), VS(route)};
    emit(f, SOTH_EV_CONNECT_DECISION, v);
}

void soth_ev_budget_exceeded(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov rule,
                             int limit, uint32_t window_s)
{
    uint64_t lim = limit == 2 ? 1 : 0; /* enum soth_budget_limit: 1 requests, 2 bytes */
    struct ev_val v[] = {VU(stream_id), VS(rule), VU(lim), VU(window_s)};
    emit(f, SOTH_EV_BUDGET_EXCEEDED, v);
}

void soth_ev_tls_handshake_started_fp(struct soth_ev_flow *f, enum soth_leg side,
                                      struct soth_iov sni, struct soth_iov ja4)
{
    struct ev_val v[] = {VU(side), VS(sni), VS(ja4)};
    emit(f, SOTH_EV_TLS_HANDSHAKE_STARTED, v);
}

void soth_ev_tls_handshake_started(struct soth_ev_flow *f, enum soth_leg side, struct soth_iov sni)
{
    soth_ev_tls_handshake_started_fp(f, side, sni, SOTH_IOV_NULL);
}

void soth_ev_tls_handshake_succeeded_fp(struct soth_ev_flow *f, enum soth_leg side,
                                        struct soth_iov tls_version, struct soth_iov cipher,
                                        struct soth_iov alpn, struct soth_iov ja4s, uint64_t reused)
{
    struct ev_val v[] = {VU(side), VS(tls_version), VS(cipher), VS(alpn), VS(ja4s), VU(reused)};
    emit(f, SOTH_EV_TLS_HANDSHAKE_SUCCEEDED, v);
}

void soth_ev_tls_handshake_succeeded(struct soth_ev_flow *f, enum soth_leg side,
                                     struct soth_iov tls_version, struct soth_iov cipher,
                                     struct soth_iov alpn)
{
    soth_ev_tls_handshake_succeeded_fp(f, side, tls_version, cipher, alpn, SOTH_IOV_NULL,
                                       UINT64_MAX);
}

void soth_ev_tls_handshake_failed(struct soth_ev_flow *f, enum soth_leg side,
                                  enum soth_tls_failure reason, struct soth_iov source,
                                  enum soth_tls_provider provider, struct soth_iov detail,
                                  uint32_t host_failure_count, uint32_t global_failure_count)
{
    struct ev_val v[] = {VU(side),
                         VU(reason),
                         VS(source),
                         VU(provider),
                         VS(detail),
                         VU(host_failure_count),
                         VU(global_failure_count)};
    emit(f, SOTH_EV_TLS_HANDSHAKE_FAILED, v);
}

void soth_ev_tls_learning_audit(struct soth_ev_flow *f, bool applied, struct soth_iov reason,
                                struct soth_iov host, enum soth_tls_provider signal_provider)
{
    struct ev_val v[] = {VU(applied), VS(reason), VS(host), VU(signal_provider)};
    emit(f, SOTH_EV_TLS_LEARNING_AUDIT, v);
}

void soth_ev_request_headers(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov method,
                             struct soth_iov scheme, struct soth_iov authority,
                             struct soth_iov path, struct soth_iov http_version,
                             const struct soth_header *hdrs, size_t n_hdrs)
{
    struct ev_val v[] = {VU(stream_id), VS(method),       VS(scheme),      VS(authority),
                         VS(path),      VS(http_version), VH(hdrs, n_hdrs)};
    emit(f, SOTH_EV_REQUEST_HEADERS, v);
}

void soth_ev_response_headers(struct soth_ev_flow *f, uint32_t stream_id, unsigned status,
                              struct soth_iov http_version, const struct soth_header *hdrs,
                              size_t n_hdrs, const struct soth_iov *alt_svc_removed,
                              size_t n_alt_svc_removed)
{
    struct ev_val v[] = {VU(stream_id),
                         VU(status),
                         VS(http_version),
                         VH(hdrs, n_hdrs),
                         {.list = alt_svc_removed, .n = n_alt_svc_removed}};
    emit(f, SOTH_EV_RESPONSE_HEADERS, v);
}

void soth_ev_trailers(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                      const struct soth_header *hdrs, size_t n_hdrs)
{
    struct ev_val v[] = {VU(stream_id), VH(hdrs, n_hdrs)};
    emit(f, dir == SOTH_LEG_CLIENT ? SOTH_EV_REQUEST_TRAILERS : SOTH_EV_RESPONSE_TRAILERS, v);
}

void soth_ev_body_chunk(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                        uint64_t offset, uint64_t len, struct soth_iov data, bool truncated)
{
    data = capture(f, data, &truncated);
    struct ev_val v[] = {VU(stream_id), VU(offset), VU(len), VS(data), VU(truncated)};
    emit(f, dir == SOTH_LEG_CLIENT ? SOTH_EV_REQUEST_BODY_CHUNK : SOTH_EV_RESPONSE_BODY_CHUNK, v);
}

void soth_ev_exchange_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                enum soth_outcome outcome, uint64_t request_bytes,
                                uint64_t response_bytes)
{
    /* a cause is reported only for an exchange that did not complete (docs/events.md) */
    const char *why = outcome != SOTH_OUTCOME_COMPLETE ? f->x_reason : NULL;
    struct soth_iov reason = why != NULL ? soth_iov(why, strlen(why)) : SOTH_IOV_NULL;
    f->x_reason = NULL;
    struct ev_val v[] = {VU(stream_id), VU(outcome), VU(request_bytes), VU(response_bytes),
                         VS(reason)};
    emit(f, SOTH_EV_EXCHANGE_COMPLETED, v);
}

void soth_ev_exchange_reason(struct soth_ev_flow *f, const char *reason)
{
    f->x_reason = reason;
}

void soth_ev_ws_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                        unsigned opcode, uint64_t len, struct soth_iov data, bool truncated)
{
    data = capture(f, data, &truncated);
    struct ev_val v[] = {VU(stream_id), VU(dir), VU(opcode), VU(len), VS(data), VU(truncated)};
    emit(f, SOTH_EV_WS_MESSAGE, v);
}

void soth_ev_ws_turn_started(struct soth_ev_flow *f, uint32_t stream_id, uint64_t turn_id,
                             enum soth_leg initiator)
{
    struct ev_val v[] = {VU(stream_id), VU(turn_id), VU(initiator)};
    emit(f, SOTH_EV_WS_TURN_STARTED, v);
}

void soth_ev_ws_turn_completed(struct soth_ev_flow *f, uint32_t stream_id,
                               const struct soth_ws_turn_stats *st)
{
    struct ev_val v[] = {VU(stream_id),         VU(st->turn_id),       VU(st->initiator),
                         VU(st->client_frames), VU(st->server_frames), VU(st->client_bytes),
                         VU(st->server_bytes),  VU(st->started_ns),    VU(st->ended_ns),
                         VU(st->flush_reason)};
    emit(f, SOTH_EV_WS_TURN_COMPLETED, v);
}

void soth_ev_sse_event(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov event,
                       struct soth_iov id, int64_t retry, struct soth_iov data)
{
    struct ev_val v[] = {VU(stream_id), VS(event), VS(id), VU(retry), VS(data)};
    emit(f, SOTH_EV_SSE_EVENT, v);
}

void soth_ev_grpc_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                          bool compressed, uint32_t length, struct soth_iov data, bool truncated)
{
    data = capture(f, data, &truncated);
    struct ev_val v[] = {VU(stream_id), VU(dir),  VU(compressed),
                         VU(length),    VS(data), VU(truncated)};
    emit(f, SOTH_EV_GRPC_MESSAGE, v);
}

void soth_ev_payload_parsed(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                            const struct soth_iov *decoders, size_t n_decoders, bool sanitized,
                            struct soth_iov format, struct soth_iov value_json,
                            struct soth_iov error)
{
    struct ev_val v[] = {VU(stream_id), VU(dir),    {.list = decoders, .n = n_decoders},
                         VU(sanitized), VS(format), VS(value_json),
                         VS(error)};
    emit(f, SOTH_EV_PAYLOAD_PARSED, v);
}

void soth_ev_stream_closed_dgrams(struct soth_ev_flow *f, enum soth_close_reason reason,
                                  uint64_t bytes_client_to_server, uint64_t bytes_server_to_client,
                                  uint64_t datagrams_client_to_server,
                                  uint64_t datagrams_server_to_client)
{
    if (f->prod != NULL && !f->closed && f->prod->open_flows > 0)
        f->prod->open_flows--;
    /* events_dropped counts what this flow lost before its last event. */
    struct ev_val v[] = {VU(reason),
                         VU(bytes_client_to_server),
                         VU(bytes_server_to_client),
                         VU(soth_mono_ns() - f->start_mono_ns),
                         VU(f->dropped),
                         VU(datagrams_client_to_server),
                         VU(datagrams_server_to_client)};
    emit(f, SOTH_EV_STREAM_CLOSED, v);
}

void soth_ev_stream_closed(struct soth_ev_flow *f, enum soth_close_reason reason,
                           uint64_t bytes_client_to_server, uint64_t bytes_server_to_client)
{
    /* TCP flows have no datagram counts: the fields are left out (FK_OMITU64). */
    soth_ev_stream_closed_dgrams(f, reason, bytes_client_to_server, bytes_server_to_client,
                                 UINT64_MAX, UINT64_MAX);
}

void soth_ev_quic_client_hello(struct soth_ev_flow *f, struct soth_iov quic_version,
                               struct soth_iov sni, const struct soth_iov *alpn, size_t n_alpn,
                               uint64_t initial_packets)
{
    struct ev_val v[] = {
        VS(quic_version), VS(sni), {.list = alpn, .n = n_alpn}, VU(initial_packets)};
    emit(f, SOTH_EV_QUIC_CLIENT_HELLO, v);
}

/* ==========================================================================================
 * JSON encoding
 * ========================================================================================== */

void jbuf_put(struct jbuf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        SOTH_BUG_ON(np == NULL);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void jbuf_free(struct jbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/*
 * The encoder writes through a cursor into room reserved once per event (ev_bound), so no
 * field checks capacity or calls memcpy/strlen for a key: the keys are copied from tables
 * built once from the schema (jtab), with fixed-size copies that may write past the cursor
 * (into the reserve's J_SLACK), and numbers are written two digits at a time (docs/sinks.md,
 * "Cost").
 */
#define J_KEY   48 /* bytes copied for a key; a longer key is written byte by byte */
#define J_SLACK 64 /* reserve beyond the bound for those copies */

static const char jdigits[201] =
    "0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546"
    "4748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293"
    "949596979899";

/** Exactly eight digits of v (< 10^8) at o. */
static char *w_8digits(char *o, uint32_t v)
{
    uint32_t a = v / 10000, b = v % 10000;
    memcpy(o, jdigits + 2 * (a / 100), 2);
    memcpy(o + 2, jdigits + 2 * (a % 100), 2);
    memcpy(o + 4, jdigits + 2 * (b / 100), 2);
    memcpy(o + 6, jdigits + 2 * (b % 100), 2);
    return o + 8;
}

/** v (< 10^8) in decimal at o, no leading zeros; writes 8 bytes at o whatever v. */
static char *w_u32(char *o, uint32_t v)
{
    unsigned n = v < 10         ? 1
                 : v < 100      ? 2
                 : v < 1000     ? 3
                 : v < 10000    ? 4
                 : v < 100000   ? 5
                 : v < 1000000  ? 6
                 : v < 10000000 ? 7
                                : 8;
    char *t = o + n;
    while (v >= 100) {
        t -= 2;
        memcpy(t, jdigits + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10)
        memcpy(t - 2, jdigits + 2 * v, 2);
    else
        t[-1] = (char)('0' + v);
    return o + n;
}

/** x in decimal at o; returns the end. Eight digits at a time in 32-bit arithmetic. */
static char *w_u64(char *o, uint64_t x)
{
    if (x < 100000000)
        return w_u32(o, (uint32_t)x);
    uint64_t hi = x / 100000000;
    uint32_t lo = (uint32_t)(x % 100000000);
    if (hi < 100000000) {
        o = w_u32(o, (uint32_t)hi);
    } else {
        o = w_u32(o, (uint32_t)(hi / 100000000));
        o = w_8digits(o, (uint32_t)(hi % 100000000));
    }
    return w_8digits(o, lo);
}

/** A NUL-terminated name (an enum value) at o. */
static char *w_cstr(char *o, const char *s)
{
    while (*s)
        *o++ = *s++;
    return o;
}

static char *w_b64(char *o, const unsigned char *p, size_t n);
static char *w_str(char *o, const unsigned char *p, size_t n);

/*
 * A strict RFC 8259 syntax check for the JSON text a producer hands over (payload_parsed
 * `value`): the event stream stays valid JSON even if a decoder misbehaves, and records read
 * from a file someone else wrote cannot inject anything. Depth-bounded recursive descent.
 */
struct jscan {
    const unsigned char *p, *end;
};

#define JSON_MAX_DEPTH 64

static void js_ws(struct jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool js_lit(struct jscan *s, const char *lit, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool js_digits(struct jscan *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

static bool js_number(struct jscan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!js_digits(s))
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!js_digits(s))
            return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!js_digits(s))
            return false;
    }
    return true;
}

static bool js_string(struct jscan *s)
{
    s->p++; /* opening quote */
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            if (s->end - s->p < 2)
                return false;
            unsigned char e = s->p[1];
            s->p += 2;
            if (e == 'u') {
                if (s->end - s->p < 4)
                    return false;
                for (int i = 0; i < 4; i++)
                    if (!((s->p[i] >= '0' && s->p[i] <= '9') ||
                          (s->p[i] >= 'a' && s->p[i] <= 'f') || (s->p[i] >= 'A' && s->p[i] <= 'F')))
                        return false;
                s->p += 4;
            } else if (strchr("\"\\/bfnrt", e) == NULL || e == '\0') {
                return false;
            }
            continue;
        }
        if (c < 0x80) {
            s->p++;
            continue;
        }
        size_t l = soth_utf8_seq_len(s->p, (size_t)(s->end - s->p));
        if (l == 0)
            return false;
        s->p += l;
    }
    return false;
}

static bool js_value(struct jscan *s, unsigned depth)
{
    js_ws(s);
    if (s->p >= s->end || depth > JSON_MAX_DEPTH)
        return false;
    switch (*s->p) {
    case '"':
        return js_string(s);
    case 't':
        return js_lit(s, "true", 4);
    case 'f':
        return js_lit(s, "false", 5);
    case 'n':
        return js_lit(s, "null", 4);
    case '[':
    case '{': {
        bool obj = *s->p == '{';
        char close = obj ? '}' : ']';
        s->p++;
        js_ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return true;
        }
        for (;;) {
            if (obj) {
                js_ws(s);
                if (s->p >= s->end || *s->p != '"' || !js_string(s))
                    return false;
                js_ws(s);
                if (s->p >= s->end || *s->p != ':')
                    return false;
                s->p++;
            }
            if (!js_value(s, depth + 1))
                return false;
            js_ws(s);
            if (s->p >= s->end)
                return false;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p != close)
                return false;
            s->p++;
            return true;
        }
    }
    default:
        return js_number(s);
    }
}

/** Is p[0..n) exactly one JSON value (surrounding whitespace allowed)? */
static bool json_valid(const unsigned char *p, size_t n)
{
    struct jscan s = {p, p + n};
    if (!js_value(&s, 0))
        return false;
    js_ws(&s);
    return s.p == s.end;
}

/** Copy valid JSON text; whitespace newlines become spaces (one event per line). */
static char *w_json(char *o, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        o[i] = p[i] == '\n' || p[i] == '\r' ? ' ' : (char)p[i];
    return o + n;
}

/* 0: copied as is; 1: needs an escape; 2: non-ASCII (UTF-8 check). */
static const unsigned char jclass[256] = {
    [0x00 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1, [0x7f] = 1, [0x80 ... 0xff] = 2,
};

#define J_ONES  0x0101010101010101ull
#define J_HIGHS 0x8080808080808080ull

/* High bit of each byte of v equal to c (exact as to whether any is). */
static uint64_t jbytes_eq(uint64_t v, unsigned char c)
{
    uint64_t x = v ^ (J_ONES * c);
    return (x - J_ONES) & ~x & J_HIGHS;
}

/* Eight bytes that are all copied as they are (jclass 0): printable ASCII, no '"' or '\\'. */
static bool jplain8(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    uint64_t ctl = (v - J_ONES * 0x20) & ~v & J_HIGHS; /* a byte below 0x20 */
    return ((v & J_HIGHS) | ctl | jbytes_eq(v, '"') | jbytes_eq(v, '\\') | jbytes_eq(v, 0x7f)) == 0;
}

#if defined(__SSE2__)
#include <emmintrin.h>

/** Any of the sixteen bytes not copied as it is (jclass not 0)? */
static inline bool jbad16(__m128i v)
{
    /* Signed bytes: 0x80..0xff are negative, so "> 0x1f and < 0x7f" is printable ASCII. */
    __m128i ok = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(0x1f)),
                               _mm_cmplt_epi8(v, _mm_set1_epi8(0x7f)));
    __m128i esc =
        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    return (_mm_movemask_epi8(ok) & ~_mm_movemask_epi8(esc)) != 0xffff;
}
#endif

static bool jascii(const unsigned char *p, size_t n)
{
    size_t i = 0;
    uint64_t acc = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        acc |= v;
    }
    for (; i < n; i++)
        acc |= p[i];
    return (acc & J_HIGHS) == 0;
}

/** A string with something to escape, or not ASCII: escaped, or {"b64":...} if not UTF-8. */
static char *w_str_slow(char *o, const unsigned char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (!jascii(p, n) && !soth_utf8_valid(p, n)) {
        memcpy(o, "{\"b64\":", 7);
        o = w_b64(o + 7, p, n);
        *o++ = '}';
        return o;
    }
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        /* Eight plain bytes at a time, then byte by byte up to the next such run. */
        while (i + 8 <= n && jplain8(p + i)) {
            memcpy(o, p + i, 8);
            o += 8;
            i += 8;
        }
        if (i == n)
            break;
        unsigned char c = p[i];
        if (jclass[c] != 1) {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    return o;
}

/**
 * A JSON value for arbitrary bytes, losslessly and as strictly valid JSON: bytes that are valid
 * UTF-8 become a JSON string; anything else becomes {"b64":"<base64 of the raw bytes>"}, so a
 * consumer never gets a silently altered header name or value (docs/events.md, "Bytes in
 * JSON"). At most 6n + 2 bytes at o. Most
 * strings need no escape and are ASCII: one pass checks and copies them eight bytes at a
 * time; anything else starts again on the slow path.
 */
static char *w_str(char *o, const unsigned char *p, size_t n)
{
    char *q = o + 1;
#if defined(__SSE2__)
    if (n >= 8) {
        /* Sixteen bytes at a time, the last sixteen (or the last eight) overlapping. */
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
            if (jbad16(v))
                return w_str_slow(o, p, n);
            _mm_storeu_si128((__m128i *)(void *)(q + i), v);
        }
        if (n >= 16 && i < n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + n - 16));
            if (jbad16(v))
                return w_str_slow(o, p, n);
            _mm_storeu_si128((__m128i *)(void *)(q + n - 16), v);
        } else if (n < 16) {
            long long lo, hi;
            memcpy(&lo, p, 8);
            memcpy(&hi, p + n - 8, 8);
            if (jbad16(_mm_set_epi64x(hi, lo)))
                return w_str_slow(o, p, n);
            memcpy(q, &lo, 8);
            memcpy(q + n - 8, &hi, 8);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            if (jclass[p[i]] != 0)
                return w_str_slow(o, p, n);
            q[i] = (char)p[i];
        }
    }
#else
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        if (!jplain8(p + i))
            return w_str_slow(o, p, n);
        memcpy(q + i, p + i, 8);
    }
    if (i < n) {
        if (n >= 8) { /* the last eight bytes, overlapping what was copied */
            if (!jplain8(p + n - 8))
                return w_str_slow(o, p, n);
            memcpy(q + n - 8, p + n - 8, 8);
        } else {
            for (; i < n; i++) {
                if (jclass[p[i]] != 0)
                    return w_str_slow(o, p, n);
                q[i] = (char)p[i];
            }
        }
    }
#endif
    o[0] = '"';
    q[n] = '"';
    return q + n + 1;
}

static const char jb64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The tables built once from the schema (jtab_init). */
struct jkey {
    uint8_t n;     /* 0: too long for s, written from the schema's name */
    char s[J_KEY]; /* ,"name":  (,"name":" for an enum) */
};
static struct {
    struct jkey head[SOTH_EV_TYPE_COUNT]; /* {"v":1,"type":"<type>","gseq": */
    struct jkey key[SOTH_EV_TYPE_COUNT][EV_MAX_FIELDS];
    struct jkey proto[SOTH_PROTO_COUNT]; /* ,"protocol":"<protocol>" */
    char b64[4096][2];                   /* 12 bits -> two base64 characters */
} jtab;
static pthread_once_t jtab_once = PTHREAD_ONCE_INIT;

static void jkey_set(struct jkey *k, const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    k->n = 0;
    if (la + lb + lc > J_KEY)
        return;
    memcpy(k->s, a, la);
    memcpy(k->s + la, b, lb);
    memcpy(k->s + la + lb, c, lc);
    k->n = (uint8_t)(la + lb + lc);
}

static void jtab_init(void)
{
    for (int t = 0; t < SOTH_EV_TYPE_COUNT; t++) {
        jkey_set(&jtab.head[t], "{\"v\":1,\"type\":\"", soth_ev_type_names[t], "\",\"gseq\":");
        const struct type_def *td = &soth_ev_schema[t];
        for (unsigned i = 0; i < td->n; i++)
            jkey_set(&jtab.key[t][i], ",\"", td->f[i].name,
                     td->f[i].kind == FK_ENUM ? "\":\"" : "\":");
    }
    for (int p = 0; p < SOTH_PROTO_COUNT; p++)
        jkey_set(&jtab.proto[p], ",\"protocol\":\"", soth_protocol_names[p], "\"");
    for (int v = 0; v < 4096; v++) {
        jtab.b64[v][0] = jb64[v >> 6];
        jtab.b64[v][1] = jb64[v & 63];
    }
}

/** A table entry at o (J_KEY bytes written), or a too-long one from its parts. */
static char *w_key(char *o, const struct jkey *k, const char *a, const char *b, const char *c)
{
    if (k->n != 0) {
        memcpy(o, k->s, J_KEY);
        return o + k->n;
    }
    return w_cstr(w_cstr(w_cstr(o, a), b), c);
}

/** Base64 in quotes: (n + 2) / 3 * 4 + 2 bytes at o (jtab must be built). */
static char *w_b64(char *o, const unsigned char *p, size_t n)
{
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        memcpy(o, jtab.b64[v >> 12], 2);
        memcpy(o + 2, jtab.b64[v & 4095], 2);
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *o++ = jb64[v >> 18];
        *o++ = jb64[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        *o++ = jb64[v >> 18];
        *o++ = jb64[(v >> 12) & 63];
        *o++ = jb64[(v >> 6) & 63];
        *o++ = '=';
    }
    *o++ = '"';
    return o;
}

/** Ensure room for n more bytes (plus J_SLACK); returns where they go. */
static char *jbuf_room(struct jbuf *b, size_t n)
{
    n += J_SLACK;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        SOTH_BUG_ON(np == NULL);
        b->p = np;
        b->cap = cap;
    }
    return b->p + b->len;
}

/*
 * What one record's JSON can take at most: every record byte as six (a string of control
 * characters, each \u00XX; a header's two length words cover its ["",""]; an 8-byte number
 * its 20 digits), plus each field's key and what a field adds beyond its bytes (null, the
 * invalid-JSON marker), plus the common fields' keys.
 */
static size_t ev_bound(const struct ev_rec *r, const struct type_def *td)
{
    return 6 * (size_t)r->len + 128 * (size_t)td->n + 512;
}

static bool ev_ok(const struct ev_rec *r, size_t avail)
{
    return avail >= sizeof(*r) && r->len >= sizeof(*r) && r->len <= avail &&
           r->type < SOTH_EV_TYPE_COUNT;
}

size_t soth_ev_rec_json_bound(const struct ev_rec *r, size_t avail)
{
    return ev_ok(r, avail) ? ev_bound(r, &soth_ev_schema[r->type]) + J_SLACK : 0;
}

/** The JSON line of a record that passed ev_ok at start (room: its bound): its length, or 0. */
static size_t ev_json(const struct ev_rec *r, char *const start)
{
    pthread_once(&jtab_once, jtab_init);
    struct cur c = {(const unsigned char *)(r + 1), (const unsigned char *)r + r->len};
    const unsigned char *addr, *host, *ident;
    if (!take(&c, r->client_addr_len, &addr) || !take(&c, r->server_host_len, &host) ||
        !take(&c, r->identity_len, &ident))
        return 0;
    const struct type_def *td = &soth_ev_schema[r->type];
    char *o = start;
    /* The common fields (docs/events.md), in this order. */
    o = w_key(o, &jtab.head[r->type], "{\"v\":1,\"type\":\"", soth_ev_type_names[r->type],
              "\",\"gseq\":");
    o = w_u64(o, r->gseq);
    memcpy(o, ",\"flow_id\":", 11);
    o = w_u64(o + 11, r->flow_id);
    memcpy(o, ",\"seq\":", 7);
    o = w_u64(o + 7, r->seq);
    memcpy(o, ",\"ts_ns\":", 9);
    o = w_u64(o + 9, r->ts_ns);
    memcpy(o, ",\"worker\":", 10);
    o += 10;
    if (r->worker == SOTH_EV_WORKER_BRIDGE) {
        memcpy(o, "-1", 2); /* a flow reported over the bridge (docs/bridge.md) */
        o += 2;
    } else {
        o = w_u64(o, r->worker);
    }
    memcpy(o, ",\"client_addr\":", 15);
    o = w_str(o + 15, addr, r->client_addr_len);
    memcpy(o, ",\"server_host\":", 15);
    o = w_str(o + 15, host, r->server_host_len);
    memcpy(o, ",\"server_port\":", 15);
    o = w_u64(o + 15, r->server_port);
    unsigned proto = r->protocol < SOTH_PROTO_COUNT ? r->protocol : SOTH_PROTO_TCP;
    o = w_key(o, &jtab.proto[proto], ",\"protocol\":\"", soth_protocol_names[proto], "\"");
    if (r->identity_len > 0) {
        memcpy(o, ",\"identity\":", 12);
        o = w_str(o + 12, ident, r->identity_len);
    }
    /* The type's own fields, as the schema lists them. */
    for (unsigned i = 0; i < td->n; i++) {
        const struct field_def *fd = &td->f[i];
        const struct jkey *k = &jtab.key[r->type][i];
#define KEY() (o = w_key(o, k, ",\"", fd->name, fd->kind == FK_ENUM ? "\":\"" : "\":"))
        uint64_t u;
        uint32_t n;
        const unsigned char *p;
        switch (fd->kind) {
        case FK_U64:
            if (!take_u64(&c, &u))
                goto bad;
            KEY();
            o = w_u64(o, u);
            break;
        case FK_OMITU64:
            if (!take_u64(&c, &u))
                goto bad;
            if (u != UINT64_MAX) {
                KEY();
                o = w_u64(o, u);
            }
            break;
        case FK_I64N:
            if (!take_u64(&c, &u))
                goto bad;
            KEY();
            if ((int64_t)u < 0) {
                memcpy(o, "null", 4);
                o += 4;
            } else {
                o = w_u64(o, u);
            }
            break;
        case FK_BOOL:
            if (!take_u64(&c, &u))
                goto bad;
            KEY();
            memcpy(o, u ? "true" : "false", 5);
            o += u ? 4 : 5;
            break;
        case FK_ENUM:
            if (!take_u64(&c, &u) || u >= fd->n_names)
                goto bad;
            KEY(); /* with the opening quote */
            o = w_cstr(o, fd->names[u]);
            *o++ = '"';
            break;
        case FK_STR:
        case FK_B64:
        case FK_OPTSTR:
        case FK_OMITSTR:
        case FK_JSON:
            if (!take_u32(&c, &n))
                goto bad;
            if (n == NULL_LEN) {
                if (fd->kind == FK_STR || fd->kind == FK_B64)
                    goto bad;
                if (fd->kind == FK_OPTSTR) {
                    KEY();
                    memcpy(o, "null", 4);
                    o += 4;
                }
                break;
            }
            if (!take(&c, n, &p))
                goto bad;
            KEY();
            if (fd->kind == FK_B64) {
                o = w_b64(o, p, n);
            } else if (fd->kind == FK_JSON) {
                if (json_valid(p, n)) {
                    o = w_json(o, p, n);
                } else {
                    /* A producer bug: keep the bytes, unambiguously (docs/events.md). */
                    memcpy(o, "null,\"", 6);
                    o = w_cstr(o + 6, fd->name);
                    memcpy(o, "_invalid_b64\":", 14);
                    o = w_b64(o + 14, p, n);
                }
            } else {
                o = w_str(o, p, n);
            }
            break;
        case FK_HDRS:
        case FK_STRLIST:
        case FK_OPTLIST: {
            uint32_t cnt;
            if (!take_u32(&c, &cnt) || cnt > r->len)
                goto bad;
            if (fd->kind == FK_OPTLIST && cnt == 0)
                break;
            KEY();
            *o++ = '[';
            bool hdrs = fd->kind == FK_HDRS;
            for (uint32_t q = 0; q < cnt; q++) {
                if (q)
                    *o++ = ',';
                if (hdrs)
                    *o++ = '[';
                if (!take_u32(&c, &n) || !take(&c, n, &p))
                    goto bad;
                o = w_str(o, p, n);
                if (hdrs) {
                    if (!take_u32(&c, &n) || !take(&c, n, &p))
                        goto bad;
                    *o++ = ',';
                    o = w_str(o, p, n);
                    *o++ = ']';
                }
            }
            *o++ = ']';
            break;
        }
        default:
            goto bad;
        }
#undef KEY
    }
    memcpy(o, "}\n", 2);
    o += 2;
    return (size_t)(o - start);
bad:
    return 0;
}

int soth_ev_rec_to_json(const struct ev_rec *r, size_t avail, struct jbuf *out)
{
    if (!ev_ok(r, avail))
        return -1;
    size_t n = ev_json(r, jbuf_room(out, ev_bound(r, &soth_ev_schema[r->type])));
    if (n == 0)
        return -1; /* nothing was committed: out->len is unchanged */
    out->len += n;
    return 0;
}

size_t soth_ev_rec_json_at(const struct ev_rec *r, char *dst)
{
    return ev_json(r, dst);
}

/* ==========================================================================================
 * the telemetry thread's view of tls_handshake_failed (learning, core/learn.c)
 * ========================================================================================== */

int soth_ev_rec_tls_failed(struct ev_rec *r, size_t avail, struct soth_ev_tls_failure *out,
                           unsigned char **counts)
{
    if (avail < sizeof(*r) || r->len < sizeof(*r) || r->len > avail ||
        r->type != SOTH_EV_TLS_HANDSHAKE_FAILED)
        return -1;
    struct cur c = {(const unsigned char *)(r + 1), (const unsigned char *)r + r->len};
    const unsigned char *host, *p;
    uint64_t side, reason, provider;
    uint32_t n;
    /* Schema order: side, tls_failure_reason, tls_failure_source, tls_ops_provider, detail,
     * host_failure_count, global_failure_count. */
    if (!take(&c, r->client_addr_len, &p) || !take(&c, r->server_host_len, &host) ||
        !take(&c, r->identity_len, &p) || !take_u64(&c, &side) || !take_u64(&c, &reason) ||
        !take_u32(&c, &n) || !take(&c, n, &p) || !take_u64(&c, &provider) || !take_u32(&c, &n) ||
        !take(&c, n, &p) || !take(&c, 16, &p))
        return -1;
    if (side >= SOTH_LEG_COUNT || reason >= SOTH_TLSF_COUNT || provider >= SOTH_TLSP_COUNT)
        return -1;
    out->flow_id = r->flow_id;
    out->worker = r->worker;
    out->host = soth_iov((const char *)host, r->server_host_len);
    out->port = r->server_port;
    out->side = soth_leg_of(side);
    out->reason = (enum soth_tls_failure)reason;
    out->provider = (enum soth_tls_provider)provider;
    *counts = (unsigned char *)p; /* the record is the caller's: the two u64 counts live here */
    return 0;
}

/* ==========================================================================================
 * the JSON encoders, for the exchange assembler (exchange.c)
 * ========================================================================================== */

void soth_json_str(struct jbuf *b, const void *p, size_t n)
{
    pthread_once(&jtab_once, jtab_init); /* for w_b64 */
    char *o = jbuf_room(b, 6 * n + 2);
    b->len += (size_t)(w_str(o, p, n) - o);
}

void soth_json_b64(struct jbuf *b, const void *p, size_t n)
{
    pthread_once(&jtab_once, jtab_init);
    char *o = jbuf_room(b, (n + 2) / 3 * 4 + 2);
    b->len += (size_t)(w_b64(o, p, n) - o);
}

void soth_json_u64(struct jbuf *b, uint64_t x)
{
    char *o = jbuf_room(b, 20);
    b->len += (size_t)(w_u64(o, x) - o);
}

bool soth_json_valid(const void *p, size_t n)
{
    return json_valid(p, n);
}

void soth_json_text(struct jbuf *b, const void *p, size_t n)
{
    char *o = jbuf_room(b, n);
    b->len += (size_t)(w_json(o, p, n) - o);
}

size_t soth_ev_producer_trim(struct soth_ev_producer *pr)
{
    /* The consumer reads only [head, pub_tail) and releases bytes by moving head past them;
     * [tail, head + cap) is neither written (we are the producer, here) nor read. */
    if (pr == NULL)
        return 0;
    uint64_t head = atomic_load_explicit(&pr->head, memory_order_acquire);
    pr->head_cache = head;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t from = (pr->tail + page - 1) & ~(page - 1);
    uint64_t to = (head + pr->cap) & ~(page - 1);
    size_t given = 0;
    while (from < to) {
        uint64_t off = from & pr->mask;
        uint64_t n = to - from < pr->cap - off ? to - from : pr->cap - off;
        if (madvise(pr->data + off, n, MADV_DONTNEED) == 0)
            given += n;
        from += n;
    }
    return given;
}
