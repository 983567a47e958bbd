/*
 * Private to core/: the proxy's own HTTP answers (403 blocked, 400/431 bad head, 408 head
 * timeout, 502/504 upstream failures, 200 to a CONNECT), sent on a flow and ended gracefully
 * (the bytes come from soth_h1_write_answer in proto/h1_write.c, which the HTTP layer uses too):
 * send, our FIN, then wait (bounded) for the client's FIN so it reads the whole answer instead of a
 * reset.
 */
#ifndef SOTH_CORE_ANSWER_H
#define SOTH_CORE_ANSWER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "soth/observe.h"

#define SOTH_LINGER_MS 1000u /* after our answer and FIN: wait this long for the client's FIN */
#define SOTH_ANSWER_MS 5000u /* bound on sending our own answer */

struct worker;
struct flow;

/**
 * Answer the client and end the flow with reason once done (FS_ANSWER, then FS_LINGER after
 * our FIN; stream_closed when the client's FIN arrives or SOTH_LINGER_MS passes). Inside the
 * client's TLS session when it has one, then close_notify. Closes at once when the answer
 * cannot be queued.
 */
void flow_answer(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                 const char *body, size_t body_len, enum soth_close_reason reason);
/** flow_answer with extra field lines ("Name: value\r\n"..., docs/answers.md: 407, 429). */
void flow_answer_hdr(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                     const char *extra, const char *body, size_t body_len,
                     enum soth_close_reason reason);
/** flow_answer with a printf-formatted body (at most 511 bytes). */
void flow_answer_text(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                      enum soth_close_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/** "200 Connection Established" toward a CONNECT client (static bytes, no chunk). False when
 *  it could not be queued. */
bool answer_established(struct worker *w, struct flow *f);

/** FS_ANSWER: our answer and FIN are out; wait for the client's FIN (FS_LINGER), bounded. */
void answer_fin_sent(struct worker *w, struct flow *f);

/** FS_ANSWER or FS_LINGER is over (client FIN, reset, or the bound): close with the answer's
 *  reason. */
void answer_end(struct worker *w, struct flow *f);

#endif
