/*
 * CONNECT decisions: ignore_hosts (POSIX ERE on "host:port", mitmproxy semantics; IPv6 hosts
 * as "[addr]:port") -> TLS learning -> rules (glob, first match) -> default.
 */
#include "soth/policy.h"

#include <regex.h>
#include <string.h>
#include <strings.h>

/* enum soth_decision_reason numbering (soth/observe.h); tests check they match. */
enum {
    REASON_IGNORE_HOSTS = 0,
    REASON_POLICY_RULE = 1,
    REASON_TLS_LEARNING = 2,
    REASON_DEFAULT = 3,
};

struct soth_policy {
    size_t n_ignore;
    regex_t *ignore;
    size_t n_rules;
    struct soth_rule *rules; /* borrowed from the config snapshot */
    enum soth_action dflt;
    const struct soth_config *cfg;
};

struct soth_policy *soth_policy_new(const struct soth_config *cfg, char *err, size_t err_len)
{
    struct soth_policy *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    p->ignore = calloc(cfg->n_ignore_hosts ? cfg->n_ignore_hosts : 1, sizeof(regex_t));
    if (p->ignore == NULL) {
        free(p);
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_ignore_hosts; i++) {
        int rc = regcomp(&p->ignore[i], cfg->ignore_hosts[i], REG_EXTENDED | REG_NOSUB | REG_ICASE);
        if (rc != 0) {
            char why[128];
            regerror(rc, &p->ignore[i], why, sizeof(why));
            snprintf(err, err_len, "config: ignore_hosts[%zu]: invalid regular expression: %s", i,
                     why);
            soth_policy_free(p);
            return NULL;
        }
        p->n_ignore++;
    }
    p->rules = cfg->rules;
    p->n_rules = cfg->n_rules;
    p->dflt = cfg->policy_default;
    p->cfg = cfg;
    return p;
}

void soth_policy_free(struct soth_policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n_ignore; i++)
        regfree(&p->ignore[i]);
    free(p->ignore);
    free(p);
}

bool soth_policy_glob_match(struct soth_iov g, struct soth_iov h)
{
    /* A trailing dot (absolute name) is ignored on both. */
    if (h.len > 0 && h.base[h.len - 1] == '.')
        h.len--;
    if (g.len > 0 && g.base[g.len - 1] == '.')
        g.len--;
    if (g.len == 0 || h.len == 0)
        return false;
    /* Compare labels right to left; a leading '*' takes one or more remaining labels. */
    size_t gi = g.len, hi = h.len;
    for (;;) {
        size_t gs = gi, hs = hi;
        while (gs > 0 && g.base[gs - 1] != '.')
            gs--;
        if (gi - gs == 1 && g.base[gs] == '*')
            return gs == 0 && hi > 0;
        while (hs > 0 && h.base[hs - 1] != '.')
            hs--;
        if (gi - gs != hi - hs || strncasecmp(g.base + gs, h.base + hs, gi - gs) != 0)
            return false;
        if (gs == 0 || hs == 0)
            return gs == 0 && hs == 0;
        gi = gs - 1;
        hi = hs - 1;
    }
}

struct soth_policy_decision soth_policy_decide(const struct soth_policy *p, struct soth_iov host,
                                               uint16_t port, const struct soth_learning_view *lv)
{
    struct soth_policy_decision d = {.action = p->dflt, .reason = REASON_DEFAULT};
    if (p->n_ignore > 0) {
        char buf[300];
        bool v6 = memchr(host.base, ':', host.len) != NULL;
        int n = snprintf(buf, sizeof(buf), "%s%.*s%s:%u", v6 ? "[" : "", (int)host.len, host.base,
                         v6 ? "]" : "", port);
        if (n > 0 && (size_t)n < sizeof(buf)) {
            for (size_t i = 0; i < p->n_ignore; i++) {
                if (regexec(&p->ignore[i], buf, 0, NULL, 0) == 0) {
                    d.action = SOTH_ACTION_TUNNEL;
                    d.reason = REASON_IGNORE_HOSTS;
                    return d;
                }
            }
        }
    }
    if (lv != NULL && lv->is_pinned != NULL && lv->is_pinned(lv->ctx, host, port)) {
        d.action = SOTH_ACTION_TUNNEL;
        d.reason = REASON_TLS_LEARNING;
        return d;
    }
    for (size_t i = 0; i < p->n_rules; i++) {
        const struct soth_rule *r = &p->rules[i];
        if (r->port >= 0 && r->port != port)
            continue;
        if (!soth_policy_glob_match(soth_iov(r->host, strlen(r->host)), host))
            continue;
        d.action = r->action;
        d.reason = REASON_POLICY_RULE;
        d.rule = soth_iov(r->text, strlen(r->text));
        return d;
    }
    return d;
}
