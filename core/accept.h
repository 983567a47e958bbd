/*
 * Private to core/: new connections on a worker's listening socket (multishot accept): a flow
 * per connection, set up for the mode. Regular mode reads the proxy request head (core/head.c);
 * reverse and transparent modes know the target at accept (the configured origin, or the
 * original destination of a redirected connection, SO_ORIGINAL_DST), decide and go to the
 * upstream at once (docs/architecture.md "Flow states").
 */
#ifndef SOTH_CORE_ACCEPT_H
#define SOTH_CORE_ACCEPT_H

#include <liburing.h>

struct worker;

/** Arm the multishot accept unless it is armed or the worker is stopping. */
void accept_arm(struct worker *w);
/** An accept CQE: a new connection (res = its fd) or the multishot's end (re-armed). */
void accept_on_cqe(struct worker *w, struct io_uring_cqe *cqe);

#endif
