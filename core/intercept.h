/*
 * Private to core/: the TLS interception sequence of a flow with an intercept decision, up to
 * the relay (core/relay.c). Regular-mode CONNECT: upstream TCP connect, "200 Connection
 * Established", the client's ClientHello gathered in f->head and peeked (SNI, ALPN),
 * handshake with the upstream offering the client's ALPN (FS_TLS_UP), then the client
 * handshake with our leaf for the name and the ALPN the upstream chose (FS_TLS_DOWN, ALPN
 * mirroring), then relay_start. Reverse and transparent modes gather the client's first bytes
 * the same way; a plain HTTP client goes to the relay's HTTP layer instead (docs/architecture.md
 * "Flow states").
 *
 * An upstream whose handshake fails still gives the client its TLS session with our leaf, then
 * 502 naming the reason (f->answer). Both legs' TLS sessions (f->tls[]) are soth_tls_conn
 * objects (tls/) driven through memory.
 *
 * The FS_HELLO, FS_TLS_UP and FS_TLS_DOWN entries of the completion table (core/flow_io.c)
 * are here: intercept_data, intercept_eof, intercept_recv_error, intercept_timeout.
 */
#ifndef SOTH_CORE_INTERCEPT_H
#define SOTH_CORE_INTERCEPT_H

#include <stdint.h>

struct worker;
struct flow;

/** FS_HELLO (upstream connected): when enough of the ClientHello is in f->head, start the
 *  upstream handshake (or the relay for a plain client, a tunnel for what is not TLS). */
void intercept_hello(struct worker *w, struct flow *f);

/** Client bytes before the client handshake starts (any state up to FS_HELLO): gathered as the
 *  ClientHello in f->head, a plain client's beyond it kept aside, bounded, with reads paused.
 *  The caller keeps its buffer. */
void intercept_hello_bytes(struct worker *w, struct flow *f, const char *p, uint32_t len);

/**
 * A handshake or the ClientHello failed on side: transport is the enum soth_tls_transport that
 * ended it (EOF, reset, timeout), or -1 when TLS itself failed. Emits the learning signal and
 * tls_handshake_failed, then 502 to the client for an upstream failure, else closes the flow.
 */
void intercept_failed(struct worker *w, struct flow *f, unsigned side, int transport);

/* ---- FS_HELLO, FS_TLS_UP, FS_TLS_DOWN completions (core/flow_io.c) */

/** Ciphertext (or the ClientHello) from side in provided buffer bid (ownership taken). */
void intercept_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len);
/** side sent FIN: the awaited handshake failed, or the flow ends (client_eof/relay_eof). */
void intercept_eof(struct worker *w, struct flow *f, unsigned side);
/** side's recv failed: likewise, with a reset. */
void intercept_recv_error(struct worker *w, struct flow *f, unsigned side);
/** tls_handshake_ms passed: the awaited handshake failed with a timeout. */
void intercept_timeout(struct worker *w, struct flow *f);

#endif
