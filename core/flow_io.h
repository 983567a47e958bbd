/*
 * Private to core/: a flow's completions, as the worker's loop hands them over: recv (bytes,
 * FIN, error), send, shutdown, and the flow's deadline. What every state does the same is done
 * here; what a state makes of it is one table of per-state handlers (core/flow_io.c) pointing
 * into the room that owns the state.
 */
#ifndef SOTH_CORE_FLOW_IO_H
#define SOTH_CORE_FLOW_IO_H

#include <liburing.h>

struct worker;
struct flow;
struct timer_entry;

/** A recv CQE for side (multishot: more may follow while IORING_CQE_F_MORE is set). */
void flow_on_recv(struct worker *w, struct flow *f, unsigned side, struct io_uring_cqe *cqe);
/** A sendmsg toward side completed with res (bytes sent or -errno). */
void flow_on_send(struct worker *w, struct flow *f, unsigned side, int res);
/** Our FIN toward side (shutdown SHUT_WR) completed. */
void flow_on_shutdown(struct worker *w, struct flow *f, unsigned side, int res);
/** timer_run callback (ctx is the worker): the flow's deadline passed; the flow may be freed. */
void flow_on_timer(void *ctx, struct timer_entry *t);

#endif
