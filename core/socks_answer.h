/*
 * Private to core/: the SOCKS5 replies on a socks5-mode flow (docs/socks5.md, "Replies"), at
 * the points where a CONNECT gets the HTTP answers of core/answer.c: the method selection, the
 * success reply once the upstream is connected (upstream.c, where a CONNECT is answered 200),
 * and the refusals (a refused greeting or request, a block, an upstream that cannot be
 * reached), each followed by our FIN and the linger of core/answer.c (FS_ANSWER, FS_LINGER).
 */
#ifndef SOTH_CORE_SOCKS_ANSWER_H
#define SOTH_CORE_SOCKS_ANSWER_H

#include <stdbool.h>

#include "soth/observe.h"
#include "soth/proto/socks5.h"

struct worker;
struct flow;

/** X'05 00' (no authentication required) toward the client. False when it could not be
 *  queued. */
bool socks_method(struct worker *w, struct flow *f);

/** A refused greeting: X'05 FF', FIN, linger, then close (parse_failed). */
void socks_refuse_greeting(struct worker *w, struct flow *f);

/** A refusal with rep and the bound address 0.0.0.0:0, FIN, linger, then close with reason.
 *  Releases the parser's chunk (f->head) when the flow still holds it. */
void socks_refuse(struct worker *w, struct flow *f, enum soth_socks5_rep rep,
                  enum soth_close_reason reason);

/** The upstream is connected: the success reply with the upstream socket's local address.
 *  False when it could not be queued. */
bool socks_established(struct worker *w, struct flow *f);

/** The upstream could not be reached (err a -errno, or timeout): the matching refusal
 *  (docs/socks5.md), then close (upstream_connect_failed). */
void socks_failed(struct worker *w, struct flow *f, int err, bool timeout);

#endif
