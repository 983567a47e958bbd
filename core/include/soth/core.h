/*
 * soth_core: the engine. Per-core workers, each a pinned thread running its own io_uring loop
 * (accept, recv, send, connect, close, timeouts) and owning its flows and buffers. It drives the
 * leaves: policy (decisions), proto (parsers), tls (interception) and observe (events).
 */
#ifndef SOTH_CORE_H
#define SOTH_CORE_H

#include "soth/config.h"
#include "soth/observe.h"

struct soth_engine;

/**
 * Start workers for cfg (takes a reference). Returns NULL with one line in err. When it returns,
 * every listener is bound and accepting.
 */
struct soth_engine *soth_engine_start(struct soth_config *cfg, char *err, size_t err_len);
/** Number of workers running. */
unsigned soth_engine_workers(const struct soth_engine *e);
/** The event ring path in use. */
const char *soth_engine_ring_path(const struct soth_engine *e);
/** Ask every worker to reload policy from cfg (takes a reference). Safe from the main thread. */
void soth_engine_reload(struct soth_engine *e, struct soth_config *cfg);
/** Ask every worker to drop its leaf-certificate cache at its next safe point (SIGUSR1). */
void soth_engine_flush_leaves(struct soth_engine *e);
/** soth_engine_tls_signal results (negative values are -errno). */
enum { SOTH_TLS_SIGNAL_QUEUED = 0, SOTH_TLS_SIGNAL_IGNORED = 1 };

/**
 * Report a TLS handshake failure seen by a TLS ops provider outside the engine's own flows
 * (the mitmproxy bridge; tests through SOTH_TEST_TLS_SIGNALS, docs/tls.md). Any thread except
 * a worker; never blocks on a worker. A signal from an authoritative provider (native,
 * mitmproxy) is queued for the learning aggregator (telemetry thread), which counts it for the
 * host and globally and may pin host:port to tunnel; returns SOTH_TLS_SIGNAL_QUEUED. Any other
 * provider changes nothing: SOTH_TLS_SIGNAL_IGNORED (logged; the tls_learning_audit "ignored"
 * event exists only for signals that belong to a flow, soth_learn_flow_signal in core).
 * -EINVAL for an empty or over-long host or an out-of-range enum, -EAGAIN when 256 signals are
 * already waiting for the aggregator.
 */
int soth_engine_tls_signal(struct soth_engine *e, struct soth_iov host, uint16_t port,
                           enum soth_leg side, enum soth_tls_failure reason,
                           enum soth_tls_provider provider);
/**
 * Graceful stop: stop accepting, let flows finish within timeouts.drain_ms, close the rest with
 * reason "shutdown", join workers, flush events. Then frees e.
 */
void soth_engine_stop(struct soth_engine *e);

/** The soth-mitm program (docs/cli.md). Returns the exit status. */
int soth_cli_main(int argc, char **argv);

#endif
