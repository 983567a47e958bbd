/* The policy decision for a flow's target, TLS learning's part in it, and a block (core/decide.h).
 */
#include <stdio.h>
#include <string.h>

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
    bool required = false;
    if (!f->identity_set) {
        /* No proxy head named one (SOCKS5, transparent, reverse): the client's network. */
        int id = SOTH_IDENTITY_ANONYMOUS;
        required = soth_policy_identify(w->policy, SOTH_IOV_NULL,
                                        f->peer_len ? (struct sockaddr *)&f->peer : NULL,
                                        &id) == SOTH_IDENT_REQUIRED;
        flow_set_identity(w, f, id);
    }
    struct soth_policy_decision d =
        soth_policy_decide_for(w->policy, soth_iov(f->ev.server_host, f->ev.server_host_len),
                               f->ev.server_port, f->identity, &lv);
    /* route: without credentials (docs/events.md); blocked flows go nowhere but say the route
     * their rule names, like every other decision. */
    soth_ev_connect_decision_route(&f->ev, d.action, (enum soth_decision_reason)d.reason, d.rule_id,
                                   soth_iov(d.route->text, d.route->text_len));
    f->action = (uint8_t)d.action;
    *rule = d.rule;
    if (d.action != SOTH_ACTION_BLOCK && soth_route_is_upstream(d.route)) {
        /* The route outlives a reload with the flow's reference to the policy holding it. */
        f->route = d.route;
        f->pol = soth_policy_ref(w->policy);
        SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, f->ev.flow_id, "route %s", d.route->text);
    }
    if (d.reason == SOTH_REASON_TLS_LEARNING)
        learning_applied(w, f);
    f->bgt = soth_policy_budget_table(w->policy);
    f->budget_slot = (int16_t)(f->bgt != NULL ? d.budget_slot : -1);
    if (f->bgt != NULL && f->pol == NULL) /* the table lives while the policy holding it does */
        f->pol = soth_policy_ref(w->policy);
    if (required) {
        /* identities.require without a proxy head to answer 407 on: no identity, no flow. */
        f->action = SOTH_ACTION_BLOCK;
        return SOTH_ACTION_BLOCK;
    }
    if (d.action != SOTH_ACTION_BLOCK && f->budget_slot >= 0) {
        /* docs/soth.md "Budgets": a tunnel counts once; an intercepted flow's requests count
         * one by one in the HTTP layer, its CONNECT only has to find the budget open. */
        uint32_t retry = 0;
        enum soth_budget_limit lim =
            soth_budget_admit(f->bgt, w->idx, f->identity, f->budget_slot, now_ms(),
                              d.action == SOTH_ACTION_TUNNEL, &retry);
        if (lim != SOTH_BUDGET_OK) {
            const struct soth_budget_cfg *bc = soth_policy_budget(w->policy, f->budget_slot);
            soth_ev_budget_exceeded(&f->ev, 0, d.rule_id, (int)lim, bc->window_s);
            f->budget_retry_s = retry;
            f->action = SOTH_ACTION_BLOCK;
            return SOTH_ACTION_BLOCK;
        }
    }
    return d.action;
}

void flow_set_identity(struct worker *w, struct flow *f, int identity)
{
    f->identity = (int16_t)identity;
    f->identity_set = true;
    soth_ev_flow_set_identity(&f->ev, soth_policy_identity_name(w->policy, identity));
}

bool flow_budget_request(struct worker *w, struct flow *f, uint32_t stream_id, uint32_t *retry_s)
{
    if (f->budget_slot < 0)
        return true;
    enum soth_budget_limit lim =
        soth_budget_admit(f->bgt, w->idx, f->identity, f->budget_slot, now_ms(), true, retry_s);
    if (lim == SOTH_BUDGET_OK)
        return true;
    /* The flow may have outlived a reload: its budget is named by the table it counts in. */
    const char *rule = soth_budget_rule(f->bgt, f->budget_slot);
    soth_ev_budget_exceeded(&f->ev, stream_id, soth_iov(rule, strlen(rule)), (int)lim,
                            soth_budget_window_s(f->bgt, f->budget_slot));
    return false;
}

void flow_block(struct worker *w, struct flow *f, struct soth_iov rule)
{
    if (f->budget_retry_s > 0 && !f->is_socks && w->cfg->mode != SOTH_MODE_TRANSPARENT) {
        char extra[48], body[200];
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", f->budget_retry_s);
        int n = snprintf(body, sizeof(body), "soth-mitm: budget of rule \"%.*s\" exhausted\n",
                         (int)rule.len, rule.base);
        flow_answer_hdr(w, f, 429, "Too Many Requests", extra, body,
                        n > 0 && (size_t)n < sizeof(body) ? (size_t)n : 0, SOTH_CLOSE_BLOCKED);
        return;
    }
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
