/*
 * soth_observe: the event stream (docs/events.md, docs/event-ring.md) and metrics
 * (docs/metrics.md).
 *
 * Producer side (a worker): each worker owns one SPSC ring. Emitting an event builds a compact
 * binary record directly in that ring (no malloc), stamps flow_id/seq/ts and the flow's
 * context, and stays invisible to the consumer until soth_ev_flush() publishes the batch with
 * a release store. A full ring drops the event and counts it: the flow's seq still advances
 * and stream_closed reports events_dropped. Room for stream_closed is always reserved.
 *
 * Consumer side: one telemetry thread drains all rings, assigns gseq, writes the mmap'ed ring
 * file (docs/event-ring.md) and the sinks. soth-mitm-tail reads the file.
 *
 * Threading: soth_ev_* functions on one producer are called only by its worker thread.
 */
#ifndef SOTH_OBSERVE_H
#define SOTH_OBSERVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "soth/base.h"
#include "soth/config.h"

/* ---- Vocabularies: each enum maps 1:1 onto docs/events.md strings (tables in observe). */
enum soth_ev_type {
    SOTH_EV_CONNECT_RECEIVED = 0,
    SOTH_EV_CONNECT_PARSE_FAILED,
    SOTH_EV_CONNECT_DECISION,
    SOTH_EV_TLS_HANDSHAKE_STARTED,
    SOTH_EV_TLS_HANDSHAKE_SUCCEEDED,
    SOTH_EV_TLS_HANDSHAKE_FAILED,
    SOTH_EV_TLS_LEARNING_AUDIT,
    SOTH_EV_REQUEST_HEADERS,
    SOTH_EV_REQUEST_BODY_CHUNK,
    SOTH_EV_REQUEST_TRAILERS,
    SOTH_EV_RESPONSE_HEADERS,
    SOTH_EV_RESPONSE_BODY_CHUNK,
    SOTH_EV_RESPONSE_TRAILERS,
    SOTH_EV_EXCHANGE_COMPLETED,
    SOTH_EV_WS_MESSAGE,
    SOTH_EV_WS_TURN_STARTED,
    SOTH_EV_WS_TURN_COMPLETED,
    SOTH_EV_SSE_EVENT,
    SOTH_EV_GRPC_MESSAGE,
    SOTH_EV_PAYLOAD_PARSED,
    SOTH_EV_STREAM_CLOSED,
    SOTH_EV_QUIC_CLIENT_HELLO, /* added after stream_closed: type numbers never change */
    SOTH_EV_BUDGET_EXCEEDED,   /* docs/events.md; appended, as every new type */
    SOTH_EV_TYPE_COUNT
};
extern const char *const soth_ev_type_names[SOTH_EV_TYPE_COUNT];
/** Type from its name (docs/events.md), or -1. */
int soth_ev_type_from_name(const char *name, size_t len);

enum soth_protocol {
    SOTH_PROTO_TCP = 0,
    SOTH_PROTO_TLS,
    SOTH_PROTO_HTTP1,
    SOTH_PROTO_HTTP2,
    SOTH_PROTO_WEBSOCKET,
    SOTH_PROTO_SSE,
    SOTH_PROTO_GRPC,
    SOTH_PROTO_HTTP3,
    SOTH_PROTO_COUNT
};
extern const char *const soth_protocol_names[SOTH_PROTO_COUNT];

enum soth_close_reason {
    SOTH_CLOSE_BLOCKED = 0,
    SOTH_CLOSE_PARSE_FAILED,
    SOTH_CLOSE_UPSTREAM_CONNECT_FAILED,
    SOTH_CLOSE_TLS_FAILED,
    SOTH_CLOSE_CLIENT_EOF,
    SOTH_CLOSE_RELAY_EOF,
    SOTH_CLOSE_RELAY_ERROR,
    SOTH_CLOSE_IDLE_TIMEOUT,
    SOTH_CLOSE_SHUTDOWN,
    SOTH_CLOSE_UPSTREAM_PROXY_FAILED, /* docs/config.md "Routes": the upstream proxy refused */
    SOTH_CLOSE_COUNT
};
extern const char *const soth_close_reason_names[SOTH_CLOSE_COUNT];

enum soth_decision_reason {
    SOTH_REASON_IGNORE_HOSTS = 0,
    SOTH_REASON_POLICY_RULE,
    SOTH_REASON_TLS_LEARNING,
    SOTH_REASON_DEFAULT,
    SOTH_REASON_HTTP3_PASSTHROUGH,
    SOTH_REASON_COUNT
};
extern const char *const soth_decision_reason_names[SOTH_REASON_COUNT];

/** The `side` words ("client", "upstream") by enum soth_leg (soth/base.h). */
extern const char *const soth_leg_names[SOTH_LEG_COUNT];

enum soth_tls_failure {
    SOTH_TLSF_UNKNOWN_CA = 0,
    SOTH_TLSF_CERT_VALIDATION,
    SOTH_TLSF_HANDSHAKE,
    SOTH_TLSF_TIMEOUT,
    SOTH_TLSF_EOF,
    SOTH_TLSF_RESET,
    SOTH_TLSF_OTHER,
    SOTH_TLSF_COUNT
};
extern const char *const soth_tls_failure_names[SOTH_TLSF_COUNT];

enum soth_tls_provider {
    SOTH_TLSP_NATIVE = 0,
    SOTH_TLSP_MITMPROXY,
    SOTH_TLSP_HUDSUCKER,
    SOTH_TLSP_COUNT
};
extern const char *const soth_tls_provider_names[SOTH_TLSP_COUNT];

enum soth_outcome {
    SOTH_OUTCOME_COMPLETE = 0,
    SOTH_OUTCOME_CLIENT_ABORTED,
    SOTH_OUTCOME_UPSTREAM_ABORTED,
    SOTH_OUTCOME_RESET,
    SOTH_OUTCOME_TIMEOUT,
    SOTH_OUTCOME_COUNT
};
extern const char *const soth_outcome_names[SOTH_OUTCOME_COUNT];

/** The `direction` and `initiator` words by the leg that sent the message: the client leg
 *  "client_to_server", the upstream leg "server_to_client". Every `dir` and `initiator`
 *  below is that leg. */
extern const char *const soth_direction_names[SOTH_LEG_COUNT];

enum soth_flush_reason {
    SOTH_FLUSH_DIRECTION_CHANGE = 0,
    SOTH_FLUSH_CLOSE,
    SOTH_FLUSH_ERROR,
    SOTH_FLUSH_IDLE,
    SOTH_FLUSH_COUNT
};
extern const char *const soth_flush_reason_names[SOTH_FLUSH_COUNT];

/* struct soth_header (one borrowed field) is in soth/base.h. */

struct soth_observe;     /* the subsystem: rings, telemetry thread, ring file, sinks, metrics */
struct soth_ev_producer; /* one worker's end of its SPSC ring */

/** The `worker` of flows reported over the bridge (printed as -1, docs/bridge.md). */
#define SOTH_EV_WORKER_BRIDGE 0xffffu
/**
 * Flow ids of bridge flows: 0x7fff << 48 | n, n from 1; workers use (worker + 1) << 48 | n with
 * at most SOTH_CONFIG_MAX_WORKERS workers. Below 2^63, so consumers that read JSON integers as
 * int64 (jansson, many others) read every flow id.
 */
#define SOTH_EV_BRIDGE_FLOW_ID(n) (((uint64_t)0x7fffu << 48) | ((uint64_t)(n)&0xffffffffffffull))

#define SOTH_EV_HOST_MAX     255
#define SOTH_EV_ADDR_MAX     64
#define SOTH_EV_IDENTITY_MAX 64 /* an identity id (docs/config.md "identities") */

/**
 * Per-flow event context, embedded in the caller's flow struct (no allocation). Every event
 * of the flow carries these fields. Set with soth_ev_flow_init, then update host/port/protocol
 * as they become known.
 */
struct soth_ev_flow {
    struct soth_ev_producer *prod;
    uint64_t flow_id;
    uint64_t start_mono_ns; /* for stream_closed duration_ns */
    uint32_t seq;           /* seq of the next event */
    uint32_t dropped;       /* events of this flow dropped so far */
    uint16_t worker;
    uint16_t server_port;
    uint8_t protocol; /* enum soth_protocol */
    uint8_t client_addr_len;
    uint8_t server_host_len;
    bool closed;          /* stream_closed emitted: nothing may follow */
    const char *x_reason; /* static cause for the next exchange_completed `reason`, or NULL */
    char client_addr[SOTH_EV_ADDR_MAX]; /* "ip:port" or "[v6]:port" */
    char server_host[SOTH_EV_HOST_MAX];
    uint8_t identity_len; /* 0 until the identity is known (connect_decision) */
    char identity[SOTH_EV_IDENTITY_MAX];
};

/* ---- lifecycle (main thread) */

/**
 * Create the subsystem for n_workers producers: maps the ring file (cfg events.ring_path or the
 * default), opens sinks, binds metrics.listen if set. Returns NULL with one line in err.
 */
struct soth_observe *soth_observe_new(const struct soth_config *cfg, unsigned n_workers, char *err,
                                      size_t err_len);
/** Start the telemetry (and metrics) thread. 0 or -errno. */
int soth_observe_start(struct soth_observe *obs);
/**
 * Drain every queued event to the ring file and sinks, stop threads. Call after workers stop:
 * events a worker built but did not flush are published and written too.
 */
void soth_observe_stop(struct soth_observe *obs);
void soth_observe_free(struct soth_observe *obs);
/** The ring file path in use. */
const char *soth_observe_ring_path(const struct soth_observe *obs);
struct soth_ev_producer *soth_observe_producer(struct soth_observe *obs, unsigned worker);
/**
 * The producer reserved for the bridge thread (docs/bridge.md): one more SPSC ring, drained like
 * the workers'; its flows carry worker SOTH_EV_WORKER_BRIDGE. Single-thread like every producer.
 */
struct soth_ev_producer *soth_observe_bridge_producer(struct soth_observe *obs);

/* ---- telemetry hooks (how core's learning aggregator sees the event stream) */

/** A tls_handshake_failed event as the telemetry thread reads it (a learning signal). */
struct soth_ev_tls_failure {
    uint64_t flow_id;
    unsigned worker;
    struct soth_iov host; /* the flow's server_host (SNI when the client sent one); borrowed */
    uint16_t port;
    enum soth_leg side;
    enum soth_tls_failure reason;
    enum soth_tls_provider provider;
};

/**
 * Callbacks run on the telemetry thread (never on a worker). on_tls_failed sees every
 * tls_handshake_failed record in gseq order before it is written to the ring file and sinks;
 * the counts it stores replace the record's host_failure_count / global_failure_count (which
 * workers emit as 0). on_tick runs once per telemetry loop iteration: after each drained batch
 * and at least every 100 ms while idle, or sooner after soth_observe_wake(). Any member may be
 * NULL.
 */
struct soth_observe_hooks {
    void (*on_tls_failed)(void *ctx, const struct soth_ev_tls_failure *ev,
                          uint32_t *host_failure_count, uint32_t *global_failure_count);
    void (*on_tick)(void *ctx);
    void *ctx;
};
/** Where extra metric lines go (soth_observe_set_metrics_source). */
struct soth_metrics_out;
/** One "# HELP"/"# TYPE" pair, then lines `name{labels} value` (labels "" or "{k=\"v\"}"). */
void soth_metrics_out_type(struct soth_metrics_out *o, const char *name, const char *type,
                           const char *help);
void soth_metrics_out_line(struct soth_metrics_out *o, const char *name, const char *labels,
                           uint64_t v);
/** Metrics another module keeps (budget rejections, docs/metrics.md): fn runs on the metrics
 *  thread for every scrape, after the built-in ones. Main thread, before soth_observe_start. */
void soth_observe_set_metrics_source(struct soth_observe *obs,
                                     void (*fn)(void *ctx, struct soth_metrics_out *o), void *ctx);

/** Install hooks (main thread, before soth_observe_start). */
void soth_observe_set_hooks(struct soth_observe *obs, const struct soth_observe_hooks *h);
/** Wake the telemetry thread so on_tick runs soon (any thread; a write on an eventfd). */
void soth_observe_wake(struct soth_observe *obs);

/* ---- producer API (worker thread only) */

/**
 * Initialise a flow context; client may be NULL. Does not emit anything. The flow counts as open
 * (room for its stream_closed is reserved in the ring) until soth_ev_stream_closed: every
 * initialised flow must end with exactly one (docs/events.md, ordering invariant 2).
 */
void soth_ev_flow_init(struct soth_ev_flow *f, struct soth_ev_producer *prod, uint64_t flow_id,
                       unsigned worker, const struct sockaddr *client, socklen_t client_len);
void soth_ev_flow_set_server(struct soth_ev_flow *f, struct soth_iov host, uint16_t port);
/** Set client_addr from text ("ip:port" as another engine reported it; cut at 63 bytes). */
void soth_ev_flow_set_client_text(struct soth_ev_flow *f, struct soth_iov addr);
/** Set the flow's identity (docs/events.md `identity`): every event from now on carries it.
 *  Cut at SOTH_EV_IDENTITY_MAX bytes. */
void soth_ev_flow_set_identity(struct soth_ev_flow *f, struct soth_iov id);
static inline void soth_ev_flow_set_protocol(struct soth_ev_flow *f, enum soth_protocol p)
{
    f->protocol = (uint8_t)p;
}

void soth_ev_connect_received(struct soth_ev_flow *f, struct soth_iov method,
                              struct soth_iov target);
void soth_ev_connect_parse_failed(struct soth_ev_flow *f, struct soth_iov reason_code,
                                  struct soth_iov detail);
/** rule: the matching rule's text, or SOTH_IOV_NULL (field omitted). */
void soth_ev_connect_decision(struct soth_ev_flow *f, enum soth_action decision,
                              enum soth_decision_reason reason, struct soth_iov rule);
/** As soth_ev_connect_decision, with the route ("direct", "upstream:http://HOST:PORT";
 *  SOTH_IOV_NULL leaves the field out, as for flows of another engine). */
void soth_ev_connect_decision_route(struct soth_ev_flow *f, enum soth_action decision,
                                    enum soth_decision_reason reason, struct soth_iov rule,
                                    struct soth_iov route);
/** budget_exceeded (docs/events.md): stream_id 0 for a CONNECT or a plain request head. */
void soth_ev_budget_exceeded(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov rule,
                             int limit, uint32_t window_s);
void soth_ev_tls_handshake_started(struct soth_ev_flow *f, enum soth_leg side, struct soth_iov sni);
void soth_ev_tls_handshake_succeeded(struct soth_ev_flow *f, enum soth_leg side,
                                     struct soth_iov tls_version, struct soth_iov cipher,
                                     struct soth_iov alpn);
/** As above, with the client's JA4 / the origin's JA4S (SOTH_IOV_NULL: field omitted) and, for
 *  a pooled upstream connection, the requests it carried before (UINT64_MAX: omitted). */
void soth_ev_tls_handshake_started_fp(struct soth_ev_flow *f, enum soth_leg side,
                                      struct soth_iov sni, struct soth_iov ja4);
void soth_ev_tls_handshake_succeeded_fp(struct soth_ev_flow *f, enum soth_leg side,
                                        struct soth_iov tls_version, struct soth_iov cipher,
                                        struct soth_iov alpn, struct soth_iov ja4s,
                                        uint64_t reused);
void soth_ev_tls_handshake_failed(struct soth_ev_flow *f, enum soth_leg side,
                                  enum soth_tls_failure reason, struct soth_iov source,
                                  enum soth_tls_provider provider, struct soth_iov detail,
                                  uint32_t host_failure_count, uint32_t global_failure_count);
void soth_ev_tls_learning_audit(struct soth_ev_flow *f, bool applied, struct soth_iov reason,
                                struct soth_iov host, enum soth_tls_provider signal_provider);
/** http_version: "1.0", "1.1" or "2". Headers are copied into the record in wire order. */
void soth_ev_request_headers(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov method,
                             struct soth_iov scheme, struct soth_iov authority,
                             struct soth_iov path, struct soth_iov http_version,
                             const struct soth_header *hdrs, size_t n_hdrs);
/** alt_svc_removed: the Alt-Svc entries the proxy took out of the head it forwarded
 *  (docs/http3.md, "Forcing clients back to TCP"); n_alt_svc_removed 0 leaves the field out.
 *  hdrs stay as the origin sent them. */
void soth_ev_response_headers(struct soth_ev_flow *f, uint32_t stream_id, unsigned status,
                              struct soth_iov http_version, const struct soth_header *hdrs,
                              size_t n_hdrs, const struct soth_iov *alt_svc_removed,
                              size_t n_alt_svc_removed);
/** Trailers: sent by the client leg = request_trailers, by the upstream = response_trailers. */
void soth_ev_trailers(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                      const struct soth_header *hdrs, size_t n_hdrs);
/**
 * A body chunk: offset/len count message-body bytes (de-chunked); data holds the captured
 * bytes (already bounded by the caller to body_capture_bytes per message; data.len may be
 * less than len), truncated says capture stopped.
 */
void soth_ev_body_chunk(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                        uint64_t offset, uint64_t len, struct soth_iov data, bool truncated);
/** The cause the next soth_ev_exchange_completed of this flow reports in its `reason` field
 *  (docs/events.md): a static snake_case string (kept by pointer), consumed by that call. */
void soth_ev_exchange_reason(struct soth_ev_flow *f, const char *reason);
void soth_ev_exchange_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                enum soth_outcome outcome, uint64_t request_bytes,
                                uint64_t response_bytes);
void soth_ev_ws_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                        unsigned opcode, uint64_t len, struct soth_iov data, bool truncated);
void soth_ev_ws_turn_started(struct soth_ev_flow *f, uint32_t stream_id, uint64_t turn_id,
                             enum soth_leg initiator);
struct soth_ws_turn_stats {
    uint64_t turn_id;
    enum soth_leg initiator;
    uint64_t client_frames, server_frames, client_bytes, server_bytes;
    uint64_t started_ns, ended_ns;
    enum soth_flush_reason flush_reason;
};
void soth_ev_ws_turn_completed(struct soth_ev_flow *f, uint32_t stream_id,
                               const struct soth_ws_turn_stats *st);
/** retry < 0: field is null. */
void soth_ev_sse_event(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov event,
                       struct soth_iov id, int64_t retry, struct soth_iov data);
void soth_ev_grpc_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                          bool compressed, uint32_t length, struct soth_iov data, bool truncated);
/** decoders: comma-free names in order applied. value_json is JSON text; or error set. */
void soth_ev_payload_parsed(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                            const struct soth_iov *decoders, size_t n_decoders, bool sanitized,
                            struct soth_iov format, struct soth_iov value_json,
                            struct soth_iov error);
/** The flow's last event; never dropped. Marks f closed. */
void soth_ev_stream_closed(struct soth_ev_flow *f, enum soth_close_reason reason,
                           uint64_t bytes_client_to_server, uint64_t bytes_server_to_client);
/** stream_closed of a QUIC flow: also the datagrams relayed each way (docs/events.md). */
void soth_ev_stream_closed_dgrams(struct soth_ev_flow *f, enum soth_close_reason reason,
                                  uint64_t bytes_client_to_server, uint64_t bytes_server_to_client,
                                  uint64_t datagrams_client_to_server,
                                  uint64_t datagrams_server_to_client);
/**
 * A QUIC flow's ClientHello (docs/http3.md): quic_version as text ("0x00000001"), sni
 * (SOTH_IOV_NULL = none), the ALPN list in the client's order, and how many Initial packets
 * carried it.
 */
void soth_ev_quic_client_hello(struct soth_ev_flow *f, struct soth_iov quic_version,
                               struct soth_iov sni, const struct soth_iov *alpn, size_t n_alpn,
                               uint64_t initial_packets);

/** Publish the events built since the last flush (one release store; wakes an idle consumer). */
void soth_ev_flush(struct soth_ev_producer *prod);

/**
 * The producer's thread, after soth_ev_flush: MADV_DONTNEED the whole pages of its ring that
 * the consumer has read past and no record occupies, so a quiet worker gives back what a burst
 * of events touched (docs/performance.md, "Memory after bursts"). Returns the bytes advised.
 */
size_t soth_ev_producer_trim(struct soth_ev_producer *prod);

/* ---- reading the ring file (soth-mitm-tail, tests, fuzzing; any process) */

struct soth_ring_reader;
/** Which events a reader prints: type_mask bit (1 << type), 0 = all; flow filter. */
struct soth_ring_filter {
    uint64_t type_mask;
    bool has_flow;
    uint64_t flow_id;
};
/** Map a ring file read-only. NULL with one line in err. */
struct soth_ring_reader *soth_ring_reader_open(const char *path, char *err, size_t err_len);
/** A reader over a ring image in memory (buf must outlive the reader). */
struct soth_ring_reader *soth_ring_reader_from_memory(const void *buf, size_t len, char *err,
                                                      size_t err_len);
void soth_ring_reader_free(struct soth_ring_reader *r);
/** Start at the oldest record still held (from_start) or at the writer's position. */
void soth_ring_reader_seek(struct soth_ring_reader *r, bool from_start);
/**
 * Emit every record written since the last call as one JSON line each (docs/events.md,
 * '\n' terminated); a lap is reported as {"type":"ring_overrun","lost":N} before the next record.
 * Returns the number of lines emitted.
 */
size_t soth_ring_reader_poll(struct soth_ring_reader *r, const struct soth_ring_filter *flt,
                             void (*emit)(void *ctx, const char *line, size_t len), void *ctx);

/* ---- metrics: per-worker counters, single writer, summed at scrape time. */
struct soth_metrics {
    _Atomic uint64_t connections_total;
    _Atomic int64_t active_connections;
    _Atomic uint64_t bytes_client_to_server, bytes_server_to_client;
    _Atomic uint64_t requests[SOTH_PROTO_COUNT];
    _Atomic uint64_t tls_failures[SOTH_LEG_COUNT][SOTH_TLSF_COUNT];
    _Atomic uint64_t leaf_cache_hits, leaf_cache_misses;
    _Atomic uint64_t events_dropped;
    _Atomic uint64_t quic_flows[SOTH_ACTION_COUNT + 1]; /* by decision: intercept (unused),
                                                         * tunnel, block, then dropped */
    _Atomic uint64_t quic_datagrams[SOTH_LEG_COUNT];    /* by the leg that sent them */
    /* docs/metrics.md: soth_upstream_pool_total by result (core/upool.h enum upool_result:
     * hit, miss, stale, expired, evicted, closed_max_requests, retried) and idle connections
     * kept */
    _Atomic uint64_t upstream_pool[7];
    _Atomic int64_t upstream_pool_idle;
    /* docs/metrics.md: soth_worker_waits_total (work seen by the busy poll's watch, the
     * kernel's wait entered, or entered batched) and soth_busy_poll_seconds_total (ns here) */
    _Atomic uint64_t waits_polled, waits_blocked, busy_poll_ns, waits_batched;
} __attribute__((aligned(SOTH_CACHELINE)));

/** The worker's counters (owned by obs). */
struct soth_metrics *soth_observe_metrics(struct soth_observe *obs, unsigned worker);
/** The bridge producer's counters (events_dropped, tls_failures), summed like a worker's. */
struct soth_metrics *soth_observe_bridge_metrics(struct soth_observe *obs);

/** Why the bridge refused a line (docs/bridge.md, "Refusals and bounds"). */
enum soth_bridge_refusal {
    SOTH_BRIDGE_R_LINE_TOO_LONG = 0,
    SOTH_BRIDGE_R_BAD_JSON,
    SOTH_BRIDGE_R_NOT_OBJECT,
    SOTH_BRIDGE_R_UNKNOWN_KIND,
    SOTH_BRIDGE_R_UNKNOWN_HOOK,
    SOTH_BRIDGE_R_SCHEMA,
    SOTH_BRIDGE_R_ORDER,
    SOTH_BRIDGE_R_TOO_MANY_CONNS,
    SOTH_BRIDGE_R_TOO_MANY_STREAMS,
    SOTH_BRIDGE_R_TOO_MANY_CLIENTS,
    SOTH_BRIDGE_R_COUNT
};
extern const char *const soth_bridge_refusal_names[SOTH_BRIDGE_R_COUNT];

/** The bridge's own metrics (docs/metrics.md): written by the bridge thread only. */
struct soth_bridge_metrics {
    _Atomic uint64_t lines;
    _Atomic uint64_t refused[SOTH_BRIDGE_R_COUNT];
    _Atomic uint64_t clients; /* gauge */
    _Atomic uint64_t flows;   /* gauge */
};
/** The bridge's counters (owned by obs, rendered at /metrics). */
struct soth_bridge_metrics *soth_observe_bridge_counters(struct soth_observe *obs);

/** Event lines the sinks dropped because a consumer fell behind (any thread). */
uint64_t soth_observe_sink_dropped(struct soth_observe *obs);

/** Single-writer add: a relaxed load+store, no locked instruction. */
#define SOTH_METRIC_ADD(field, n)                                                                  \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),    \
                          memory_order_relaxed)

#endif
