/*
 * Private to core/: the proxy request head of a regular-mode flow (FS_HEAD): parsed where it
 * landed in its provided buffer or, split over reads, gathered in one chunk (SOTH_HEAD_MAX);
 * connect_received, the decision, then the upstream. Plain HTTP in absolute form goes to the
 * HTTP layer (intercept) or to the upstream in origin form without Proxy-* fields (tunnel);
 * a bad head is answered 400 or 431, a head that does not arrive in time 408
 * (docs/config.md timeouts.request_header_ms).
 *
 * The FS_HEAD entries of the completion table (core/flow_io.c) are here: head_data, head_eof,
 * head_timeout.
 */
#ifndef SOTH_CORE_HEAD_H
#define SOTH_CORE_HEAD_H

#include <stdint.h>

#include "iobuf.h"

#define SOTH_HEAD_MAX SOTH_BUF_SIZE /* a split proxy head is gathered into one chunk */

struct worker;
struct flow;

/** Client bytes in provided buffer bid (ownership taken). */
void head_data(struct worker *w, struct flow *f, unsigned side, unsigned bid, uint32_t len);
/** The client left (FIN or reset) before its request head: client_eof. */
void head_eof(struct worker *w, struct flow *f, unsigned side);
/** request_header_ms passed: connect_parse_failed, then 408. */
void head_timeout(struct worker *w, struct flow *f);

#endif
