/*
 * Private to core/: a flow's upstream connection: resolve the target (without blocking, else
 * through the resolver thread), connect it (bounded by timeouts.connect_ms), and what the
 * connection brings: FS_HELLO for an intercepted flow (core/intercept.c), else FS_RELAY
 * (core/relay.c); a failure answers 502 or 504 (a close in transparent mode).
 *
 * The FS_RESOLVING and FS_CONNECTING entries of the completion table (core/flow_io.c) are
 * here: upstream_data, upstream_eof, upstream_timeout.
 */
#ifndef SOTH_CORE_UPSTREAM_H
#define SOTH_CORE_UPSTREAM_H

#include <stdint.h>

struct worker;
struct flow;
struct resolve_resp;

/** The target is in f->ev (server host and port) and f->upstream_port: resolve, then connect
 *  (FS_RESOLVING or FS_CONNECTING), or fail the flow. */
void upstream_start(struct worker *w, struct flow *f);
/** Connect to f->upstream_addr (FS_CONNECTING), or fail the flow. */
void upstream_connect(struct worker *w, struct flow *f);
/** The socket and connect SQE of upstream_connect (OP_CONNECT on the upstream side), without
 *  its state and timer (the pool's retry, core/relay.c, keeps its own). 0 or -errno. */
int upstream_dial(struct worker *w, struct flow *f);
/** docs/http1.md "Upstream connection pool": the flow's upstream leg may come from, and go
 *  back to, the worker's pool (reverse https mode, direct, intercepted, pool enabled). */
bool upstream_poolable(const struct worker *w, const struct flow *f);
/** The resolver thread's answer for a flow (ignored when the flow is gone or moved on). */
void upstream_resolved(struct worker *w, const struct resolve_resp *rs);
/** The connect CQE (res as the kernel gave it). */
void upstream_connected(struct worker *w, struct flow *f, int res);

/* ---- FS_RESOLVING, FS_CONNECTING completions (core/flow_io.c) */

/** Client bytes before the upstream is up (ownership of bid taken): kept for the ClientHello
 *  peek, fed to the HTTP layer, or queued for the upstream. */
void upstream_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len);
/** The client's FIN before the upstream is up: passed on once it is. */
void upstream_eof(struct worker *w, struct flow *f, unsigned side);
/** connect_ms passed: 504 (the connect is cancelled). */
void upstream_timeout(struct worker *w, struct flow *f);

/* ---- FS_PROXY completions (core/flow_io.c): our CONNECT to an upstream proxy is out and its
 * answer is read (docs/config.md "Routes"); a 2xx carries on as if connected to the target,
 * anything else (or nothing within timeouts.connect_ms) answers 502 naming the proxy. */

/** Client bytes as upstream_data; the proxy's answer from the upstream (ownership of bid). */
void proxy_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len);
/** The client's FIN as upstream_eof; the proxy's: 502. */
void proxy_eof(struct worker *w, struct flow *f, unsigned side);
void proxy_recv_error(struct worker *w, struct flow *f, unsigned side);
void proxy_send_error(struct worker *w, struct flow *f, unsigned side);
/** connect_ms passed without the proxy's answer: 502. */
void proxy_timeout(struct worker *w, struct flow *f);

#endif
