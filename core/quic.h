/*
 * Private to core/: QUIC passthrough (docs/http3.md). In transparent mode with
 * http3_passthrough, each worker also owns a UDP socket on the listen port that receives what
 * nftables diverts to it with tproxy (original destination in a control message), a table of
 * QUIC flows keyed by (client address and port, original destination), and per relayed flow
 * two connected UDP sockets: one toward the origin, one bound (IP_TRANSPARENT) to the
 * original destination and connected to the client, so replies leave with the address and
 * port the client sent to. Datagrams are relayed unchanged, from the provided buffer they were
 * received into (no copy, no allocation per datagram). Only the client's Initial packets are
 * read, to take SNI and ALPN for the policy.
 *
 * The worker calls: quic_init at set-up, quic_on_cqe for its QUIC ops, quic_turn once per loop
 * turn (timers, buffers back to the kernel), quic_stop when it stops accepting,
 * quic_shutdown when the remaining flows must end, quic_dispose at teardown.
 */
#ifndef SOTH_CORE_QUIC_H
#define SOTH_CORE_QUIC_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

struct worker;

/**
 * Set up QUIC for the worker when the config asks for it (transparent mode,
 * http3_passthrough); otherwise a no-op. 0, or -errno with one line in err (a bind failure
 * is a start-up error). Without the privilege for IP_TRANSPARENT the worker runs without UDP
 * and logs it once (returns 0).
 */
int quic_init(struct worker *w, char *err, size_t err_len);
/** Release what quic_init set up, after the ring is gone (no CQE can arrive). */
void quic_dispose(struct worker *w);

/** A completion of one of the QUIC ops (OP_QUIC_*, core/worker.h). */
void quic_on_cqe(struct worker *w, struct io_uring_cqe *cqe);

/** Once per loop turn: idle flows end, returned buffers go back to the kernel, receives that
 *  ran out of buffers are re-armed. */
void quic_turn(struct worker *w);

/** True while QUIC flows have deadlines (the loop must wake to run them). */
bool quic_timed(const struct worker *w);

/** Stop receiving new flows: the UDP socket leaves the SO_REUSEPORT group. */
void quic_stop(struct worker *w);

/** End every QUIC flow with reason shutdown (idempotent). */
void quic_shutdown(struct worker *w);

/** QUIC flows not yet freed (closing ones included). */
uint32_t quic_live(const struct worker *w);

#endif
