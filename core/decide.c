/* The policy decision for a flow's target, TLS learning's part in it, and a block (core/decide.h).
 */
#include <stdio.h>

#include "answer.h"
#include "decide.h"
#include "flow.h"
#include "learn.h"
#include "worker.h"

static bool learning_never(void *ctx, struct soth_iov host, uint16_t port)
{
    return false;
}

/** TLS learning changed this flow's decision to tunnel: say so in the flow. */
static void learning_applied(struct worker *w, struct flow *f)
{
    struct soth_iov host = soth_iov(f->ev.server_host, f->ev.server_host_len);
    struct soth_tls_learning_pin pin = {.provider = SOTH_TLS_PROVIDER_NATIVE};
    uint64_t now = soth_mono_ns();
    /* is_pinned said yes a moment ago; a pin ending in between leaves the defaults. */
    soth_tls_learning_lookup(w->learn_view, host, f->ev.server_port, now, &pin);
    char why[160];
    int n = snprintf(why, sizeof(why),
                     "failure_threshold_reached: %u client-side unknown_ca/cert_validation "
                     "failures within the window; tunnelled for %llu ms more",
                     pin.failures,
                     (unsigned long long)(pin.until_ns > now ? (pin.until_ns - now) / 1000000 : 0));
    soth_ev_tls_learning_audit(&f->ev, true, soth_iov(why, (size_t)n), host,
                               (enum soth_tls_provider)pin.provider);
}

enum soth_action flow_decide(struct worker *w, struct flow *f, struct soth_iov *rule)
{
    struct soth_learning_view lv = {.is_pinned = learning_never, .ctx = NULL};
    if (w->learn_on) {
        /* Takes a snapshot the aggregator published since the last decision, if any. */
        lv.is_pinned = soth_tls_learning_is_pinned;
        lv.ctx = soth_learn_view(w);
    }
    struct soth_policy_decision d = soth_policy_decide(
        w->policy, soth_iov(f->ev.server_host, f->ev.server_host_len), f->ev.server_port, &lv);
    soth_ev_connect_decision(&f->ev, d.action, (enum soth_decision_reason)d.reason, d.rule);
    f->action = (uint8_t)d.action;
    *rule = d.rule;
    if (d.action != SOTH_ACTION_BLOCK && soth_route_is_upstream(d.route)) {
        /* The route outlives a reload with the flow's reference to the policy holding it. */
        f->route = d.route;
        f->route_pol = soth_policy_ref(w->policy);
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "route %s", d.route->text);
    }
    if (d.reason == SOTH_REASON_TLS_LEARNING)
        learning_applied(w, f);
    return d.action;
}

void flow_block(struct worker *w, struct flow *f, struct soth_iov rule)
{
    if (w->cfg->mode == SOTH_MODE_TRANSPARENT) {
        flow_close(w, f, SOTH_CLOSE_BLOCKED);
        return;
    }
    if (rule.len > 0)
        flow_answer_text(w, f, 403, "Forbidden", SOTH_CLOSE_BLOCKED,
                         "soth-mitm: %.*s:%u is blocked by policy rule \"%.*s\"\n",
                         (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port,
                         (int)rule.len, rule.base);
    else
        flow_answer_text(w, f, 403, "Forbidden", SOTH_CLOSE_BLOCKED,
                         "soth-mitm: %.*s:%u is blocked by the default policy\n",
                         (int)f->ev.server_host_len, f->ev.server_host, f->ev.server_port);
}
