/*
 * TLS learning in the engine (docs/tls.md "Learning"): the aggregator runs on the telemetry
 * thread (observe hooks), workers read immutable snapshots from their own slot. Private to
 * core/.
 */
#ifndef SOTH_CORE_LEARN_H
#define SOTH_CORE_LEARN_H

#include "engine.h"
#include "worker.h"

/** One TLS ops signal (host copied). */
struct soth_learn_signal {
    uint16_t port;
    uint8_t host_len;
    uint8_t side;     /* enum soth_leg */
    uint8_t reason;   /* enum soth_tls_failure */
    uint8_t provider; /* enum soth_tls_provider */
    char host[SOTH_EV_HOST_MAX];
};

/**
 * Parse one test-hook signal "HOST PORT SIDE REASON PROVIDER" (the words of docs/events.md, one
 * space between fields, e.g. "origin.test 443 client unknown_ca native"). Pure. 0 or
 * SOTH_E_MALFORMED.
 */
int soth_learn_parse_signal(const char *text, size_t len, struct soth_learn_signal *out);

/**
 * Set up learning for a started-but-not-running engine: writer state, worker slots and views,
 * the observe hooks (call before soth_observe_start), the test hooks from the environment
 * (SOTH_TEST_TLS_PROVIDER; SOTH_TEST_TLS_SIGNALS is applied by soth_learn_inject_env once the
 * telemetry thread runs). 0, or -1 with one line in err.
 */
int soth_learn_init(struct soth_engine *e, char *err, size_t err_len);
/** Queue the SOTH_TEST_TLS_SIGNALS signals (after soth_observe_start). 0 or -1 with err. */
int soth_learn_inject_env(struct soth_engine *e, char *err, size_t err_len);
/** After workers and the telemetry thread stopped: release snapshots, slots and state. */
void soth_learn_dispose(struct soth_engine *e);

/* ---- worker side (the worker's own thread) */

/**
 * The worker's current learning view, taking a newer snapshot from its slot if the aggregator
 * published one (one relaxed load when nothing changed). NULL = nothing learned yet.
 */
struct soth_tls_learning_snapshot *soth_learn_view(struct worker *w);

/**
 * The signal API for a flow: emits tls_handshake_failed for ev (the telemetry thread fills in
 * host_failure_count / global_failure_count and records the signal) and, when learning is on
 * and provider is not authoritative, tls_learning_audit "ignored" in the same flow. Native
 * failures (worker.c) and the future mitmproxy bridge both report through here.
 */
void soth_learn_flow_signal(struct worker *w, struct soth_ev_flow *ev, enum soth_leg side,
                            enum soth_tls_failure reason, enum soth_tls_provider provider,
                            struct soth_iov source, struct soth_iov detail);

/**
 * The emitting part of soth_learn_flow_signal, for any producer's flow (the bridge thread's
 * too): tls_handshake_failed, then tls_learning_audit "ignored" when learning_on and provider
 * is not authoritative. Runs on the thread that owns ev's producer.
 */
void soth_learn_emit_failure(struct soth_ev_flow *ev, bool learning_on, enum soth_leg side,
                             enum soth_tls_failure reason, enum soth_tls_provider provider,
                             struct soth_iov source, struct soth_iov detail);

/** The provider the worker reports its own handshakes as: native (test hook aside). */
static inline enum soth_tls_provider soth_learn_native_provider(const struct worker *w)
{
    return (enum soth_tls_provider)w->learn_provider;
}

#endif
