/*
 * The bridge (docs/bridge.md): reports from another TLS engine (mitmproxy through its addon)
 * over a Unix stream socket, one JSON object per line. Each `conn` of the engine becomes a flow
 * of soth-mitm's own event stream (worker -1), its TLS failures count and feed TLS learning
 * like native ones. Runs on a thread of its own; never touches a worker.
 */
#ifndef SOTH_CORE_BRIDGE_H
#define SOTH_CORE_BRIDGE_H

#include "engine.h"

struct soth_bridge;

/**
 * Bind cfg->bridge.listen (mode 0600) and start the bridge thread, emitting through prod (the
 * producer reserved for the bridge: its events carry worker -1). e gives learning and metrics.
 * NULL with one line in err.
 */
struct soth_bridge *soth_bridge_start(struct soth_engine *e, struct soth_ev_producer *prod,
                                      char *err, size_t err_len);
/** Close the listener and every client, end open flows (stream_closed shutdown), join. */
void soth_bridge_stop(struct soth_bridge *b);

#endif
