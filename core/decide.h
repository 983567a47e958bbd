/*
 * Private to core/: what the proxy does with a flow's target (docs/config.md "policy"): the
 * policy's decision, TLS learning's override of it, the connect_decision and
 * tls_learning_audit events, and what a block does (403, or a close in transparent mode).
 */
#ifndef SOTH_CORE_DECIDE_H
#define SOTH_CORE_DECIDE_H

#include <stdbool.h>

#include "soth/base.h"
#include "soth/config.h"

#include "flow.h"
#include "worker.h"

/**
 * Apply the policy (and TLS learning) to the flow's target: emits connect_decision (and
 * tls_learning_audit when learning changed it), sets f->action, and returns it; *rule is the
 * matching rule's name (empty for the default).
 */
enum soth_action flow_decide(struct worker *w, struct flow *f, struct soth_iov *rule);

/** The flow's identity (soth_policy number): set, and carried by its events from now on. */
void flow_set_identity(struct worker *w, struct flow *f, int identity);

/** One request of an intercepted or plain flow against its budget (docs/soth.md "Budgets"):
 *  true when it may go (counted); false over budget, with budget_exceeded emitted and
 *  *retry_s the Retry-After seconds. */
bool flow_budget_request(struct worker *w, struct flow *f, uint32_t stream_id, uint32_t *retry_s);

/** A block decision: 403 naming the rule (a close in transparent mode, nothing to answer); a
 *  flow over its budget gets 429 with Retry-After instead. */
void flow_block(struct worker *w, struct flow *f, struct soth_iov rule);

/** The flow intercepts TLS: decided so, with a TLS context to do it, for a flow that can
 *  carry TLS (a CONNECT, or reverse and transparent modes). */
static inline bool flow_intercepting(const struct worker *w, const struct flow *f)
{
    return (f->is_connect || f->is_reverse || f->is_transparent || f->is_socks) &&
           f->action == SOTH_ACTION_INTERCEPT && w->tls != NULL;
}

#endif
