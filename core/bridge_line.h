/*
 * The pure part of the bridge (docs/bridge.md): one line in, the conn's flow events out through
 * one producer. No sockets, no threads, no clock of its own (the caller passes the monotonic
 * time), so unit tests and the fuzz target drive it directly. Private to core/.
 */
#ifndef SOTH_CORE_BRIDGE_LINE_H
#define SOTH_CORE_BRIDGE_LINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "soth/observe.h"

#define SOTH_BRIDGE_LINE_MAX    (1u << 20) /* bytes before the '\n' */
#define SOTH_BRIDGE_CONNS_MAX   65536u
#define SOTH_BRIDGE_STREAMS_MAX 32u /* open streams per conn */
#define SOTH_BRIDGE_CONN_ID_MAX 128u

struct soth_bline;

struct soth_bline_params {
    struct soth_ev_producer *prod;  /* the bridge's producer (worker -1); NULL in tests = none */
    struct soth_metrics *m;         /* tls_failures, by side and reason; may be NULL */
    struct soth_bridge_metrics *bm; /* lines, refused, flows; may be NULL */
    bool learning_enabled;          /* tls.learning.enabled: the audits of docs/tls.md */
    uint32_t body_capture_bytes;    /* events.body_capture_bytes */
    uint32_t idle_ms;               /* timeouts.idle_ms: a conn silent this long closes */
    uint32_t max_conns;             /* 0 = SOTH_BRIDGE_CONNS_MAX */
};

/** NULL on out of memory. */
struct soth_bline *soth_bline_new(const struct soth_bline_params *p);
/** Ends every open flow (stream_closed shutdown) and frees. NULL is fine. */
void soth_bline_free(struct soth_bline *b);

/**
 * Handle one line (without its '\n'; any bytes). Returns 0 when the line was accepted, else the
 * enum soth_bridge_refusal it was refused for (counted in bm; nothing emitted). now_ns: the
 * monotonic clock. Does not flush the producer.
 */
int soth_bline_handle(struct soth_bline *b, const char *line, size_t len, uint64_t now_ns);

/**
 * Count a refusal (lines the caller refuses itself, connections over the client limit) and log
 * it, at most one log line per second (docs/bridge.md). Returns reason.
 */
int soth_bline_refuse(struct soth_bline *b, int reason, const char *why, uint64_t now_ns);

/** Close the flows silent since before now_ns - idle_ms (stream_closed idle_timeout). */
void soth_bline_expire(struct soth_bline *b, uint64_t now_ns);

/** Flows open now. */
size_t soth_bline_open_flows(const struct soth_bline *b);

/** Whether a refusal closes the client that sent the line (docs/bridge.md). */
static inline bool soth_bline_refusal_closes(int reason)
{
    return reason == SOTH_BRIDGE_R_LINE_TOO_LONG || reason == SOTH_BRIDGE_R_BAD_JSON ||
           reason == SOTH_BRIDGE_R_NOT_OBJECT || reason == SOTH_BRIDGE_R_TOO_MANY_CLIENTS;
}

#endif
