/*
 * Private to core/: a flow's relay, once both legs are up (FS_RELAY). Plaintext goes through
 * the flow's HTTP layer (core/app.h) when it has one, decrypted from and encrypted into each
 * TLS leg; otherwise bytes are relayed as they are (a tunnel: provided buffers queued toward
 * the other socket, or records decrypted and re-encrypted). Also the layer's end: flush,
 * close_notify and FIN both legs, close once the client's FIN arrives.
 *
 * The FS_RELAY entries of the completion table (core/flow_io.c) are here: relay_data,
 * relay_eof, relay_recv_error, relay_send_error, relay_fin_sent, relay_timeout.
 */
#ifndef SOTH_CORE_RELAY_H
#define SOTH_CORE_RELAY_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "soth/base.h"

struct worker;
struct flow;

/** An ALPN protocol id is exactly s (ALPN ids compare byte for byte, RFC 7301 3.1). */
static inline bool alpn_is(struct soth_iov a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && memcmp(a.base, s, n) == 0;
}

/**
 * Both legs are up (handshakes done where TLS is spoken): FS_RELAY, the HTTP layer when the
 * flow intercepts and the client leg's ALPN is one it speaks, reads on both legs, and whatever
 * arrived early (bytes kept in f->head and f->pre, records behind a handshake) is moved on.
 */
void relay_start(struct worker *w, struct flow *f);

/** A client's first bytes kept aside (f->head, then f->pre) go upstream as they are, are
 *  released, and the client's reads resume: the flow relays bytes from here on. */
void relay_release_head(struct worker *w, struct flow *f);

/**
 * After the HTTP layer ran on bytes from `from` (rc as app_input returned): flush both legs,
 * end the flow when the layer is done, and apply backpressure. No-op outside FS_RELAY or once
 * the layer finished.
 */
void relay_after(struct worker *w, struct flow *f, unsigned from, int rc);

/**
 * Regular-mode plain HTTP before the upstream is up: the HTTP layer takes the client's bytes
 * (queued for the upstream until it connects). The flow is in FS_RESOLVING/FS_CONNECTING; an
 * early end of the layer (an error answer) moves it to FS_RELAY to be finished there.
 */
void relay_plain_head(struct worker *w, struct flow *f, const char *p, uint32_t len);

/** Both directions finished (FIN seen both ways and our FINs sent, or the HTTP layer done and
 *  everything delivered): close normally. No-op outside FS_RELAY. */
void relay_check_done(struct worker *w, struct flow *f);

/**
 * Bytes toward side were sent: once that queue is under the low mark, an HTTP/2 layer holding
 * output for side produces again and the source leg (side ^ 1) reads again, unless the HTTP
 * layer keeps it paused. Any state. False when the flow left FS_RELAY meanwhile.
 */
bool relay_drained(struct worker *w, struct flow *f, unsigned side);

/* ---- FS_RELAY completions (core/flow_io.c) */

/** Bytes from side in provided buffer bid (ownership taken). Also FS_RESOLVING and
 *  FS_CONNECTING bytes of a flow neither intercepting nor parsing HTTP: queued ahead. */
void relay_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len);
/** side sent FIN: the HTTP layer sees it, or it is passed on (close_notify first on TLS). */
void relay_eof(struct worker *w, struct flow *f, unsigned side);
/** side's recv failed (reset): with an HTTP layer, it ends its exchanges and names the
 *  reason; else relay_error. */
void relay_recv_error(struct worker *w, struct flow *f, unsigned side);
/** A send toward side failed (reset, broken pipe): likewise. */
void relay_send_error(struct worker *w, struct flow *f, unsigned side);
/** Our FIN toward side went out. */
void relay_fin_sent(struct worker *w, struct flow *f, unsigned side);
/** The deadline passed: a request head overdue (408 by the HTTP layer), idle, or the
 *  layer's finish taking too long. */
void relay_timeout(struct worker *w, struct flow *f);

/*
 * docs/http1.md "Upstream connection pool", retry of a pooled leg (f->up_redial set): the
 * upstream side's completions go here instead of the state's handlers.
 */
struct io_uring_cqe;
/** A recv completion on the upstream socket. */
void relay_redial_recv(struct worker *w, struct flow *f, struct io_uring_cqe *cqe);
/** A send completion on the upstream socket. */
void relay_redial_sent(struct worker *w, struct flow *f, int res);
/** The fresh connection's connect completed with res. */
void relay_redial_connected(struct worker *w, struct flow *f, int res);
/** Nothing in flight on the old socket any more: close it and connect. */
void relay_redial_step(struct worker *w, struct flow *f);
/** The retry failed: the old connection's end (the HTTP layer's 502). */
void relay_redial_fail(struct worker *w, struct flow *f);
/** A failed wake's connect completed (docs/http2.md "Idle upstream connection"): the parked
 *  socket may close now. */
void relay_park_connected(struct worker *w, struct flow *f);
/** The client's OP_POLL completed with res (revents, or -ECANCELED): a reset while the retry
 *  runs ends the flow as a client reset does. */
void relay_redial_poll(struct worker *w, struct flow *f, int res);

#endif
