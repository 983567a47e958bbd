/*
 * Private to core/: a socks5-mode flow before its target is known (FS_SOCKS; docs/socks5.md):
 * the client's greeting and request read with the parser of soth/proto/socks5.h (its state in
 * an owned chunk, f->head, until the request is complete), connect_received, the decision,
 * then the upstream, as for a CONNECT (core/head.c). The replies are core/socks_answer.c.
 *
 * The FS_SOCKS entries of the completion table (core/flow_io.c) are here: socks_data,
 * socks_eof, socks_timeout.
 */
#ifndef SOTH_CORE_SOCKS_H
#define SOTH_CORE_SOCKS_H

#include <stdbool.h>
#include <stdint.h>

struct worker;
struct flow;

/** A new socks5-mode connection: FS_SOCKS, bounded by timeouts.request_header_ms. */
void socks_begin(struct worker *w, struct flow *f);

/* ---- FS_SOCKS completions (core/flow_io.c) */

/** Client bytes in provided buffer bid (ownership taken). */
void socks_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len);
/** The client left (FIN or reset) before its request: client_eof. */
void socks_eof(struct worker *w, struct flow *f, unsigned side);
/** request_header_ms passed: connect_parse_failed, then close (idle_timeout). */
void socks_timeout(struct worker *w, struct flow *f);

#endif
