/*
 * CONNECT decisions: ignore_hosts (POSIX ERE on "host:port", mitmproxy semantics) -> TLS
 * learning -> rules (label globs, first match) -> default. A compiled policy owns copies of
 * everything it needs, so it may outlive the config snapshot it was built from; deciding
 * never allocates.
 */
#include "soth/policy.h"

#include <regex.h>
#include <string.h>

/* enum soth_decision_reason numbering (soth/observe.h); tests/policy checks they match. */
enum {
    REASON_IGNORE_HOSTS = 0,
    REASON_POLICY_RULE = 1,
    REASON_TLS_LEARNING = 2,
    REASON_DEFAULT = 3,
    REASON_HTTP3_PASSTHROUGH = 4, /* decided by core for UDP/443; listed for the numbering */
};

struct prule {
    struct soth_iov glob; /* host glob without the port, into soth_policy.strings */
    int port;             /* -1 = any */
    enum soth_action action;
    struct soth_iov text; /* the rule as written, into soth_policy.strings */
};

struct soth_policy {
    regex_t *ignore;
    size_t n_ignore; /* compiled entries of ignore[] */
    struct prule *rules;
    size_t n_rules;
    char *strings; /* globs and texts of all rules, back to back */
    enum soth_action dflt;
    /* routes[i]: rule i's route (its own, else the default); routes[n_rules]: the default */
    struct soth_route *routes;
    unsigned refs; /* soth_policy_ref / soth_policy_free (one worker's, not atomic) */
};

static void set_err(char *err, size_t err_len, const char *what)
{
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s", what);
}

static size_t str_len(const char *s)
{
    return s != NULL ? strlen(s) : 0;
}

/* Each rule's effective route, then the default (docs/config.md "Routes"). */
static int copy_routes(struct soth_policy *p, const struct soth_config *cfg)
{
    p->routes = calloc(cfg->n_rules + 1, sizeof(*p->routes));
    if (p->routes == NULL)
        return SOTH_E_NOMEM;
    for (size_t i = 0; i <= cfg->n_rules; i++) {
        const struct soth_route *src = &cfg->default_route;
        if (i < cfg->n_rules && cfg->rules[i].route_text != NULL)
            src = &cfg->rules[i].route;
        if (soth_route_copy(&p->routes[i], src) < 0)
            return SOTH_E_NOMEM;
    }
    return 0;
}

struct soth_policy *soth_policy_new(const struct soth_config *cfg, char *err, size_t err_len)
{
    struct soth_policy *p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto fail_nomem;
    p->dflt = cfg->policy_default;

    size_t total = 0;
    for (size_t i = 0; i < cfg->n_rules; i++)
        total += str_len(cfg->rules[i].host) + str_len(cfg->rules[i].text);
    p->rules = calloc(cfg->n_rules ? cfg->n_rules : 1, sizeof(*p->rules));
    p->strings = malloc(total ? total : 1);
    if (p->rules == NULL || p->strings == NULL)
        goto fail_nomem;
    char *s = p->strings;
    for (size_t i = 0; i < cfg->n_rules; i++) {
        const struct soth_rule *r = &cfg->rules[i];
        struct prule *d = &p->rules[i];
        size_t gl = str_len(r->host), tl = str_len(r->text);
        if (gl > 0)
            memcpy(s, r->host, gl);
        d->glob = soth_iov(s, gl);
        s += gl;
        if (tl > 0)
            memcpy(s, r->text, tl);
        d->text = soth_iov(s, tl);
        s += tl;
        d->port = r->port >= 1 && r->port <= 65535 ? r->port : -1;
        d->action = r->action;
    }
    p->n_rules = cfg->n_rules;
    p->refs = 1;
    if (copy_routes(p, cfg) < 0)
        goto fail_nomem;

    p->ignore = calloc(cfg->n_ignore_hosts ? cfg->n_ignore_hosts : 1, sizeof(regex_t));
    if (p->ignore == NULL)
        goto fail_nomem;
    for (size_t i = 0; i < cfg->n_ignore_hosts; i++) {
        int rc = regcomp(&p->ignore[i], cfg->ignore_hosts[i], REG_EXTENDED | REG_NOSUB | REG_ICASE);
        if (rc != 0) {
            char why[128];
            regerror(rc, &p->ignore[i], why, sizeof(why));
            if (err != NULL && err_len > 0)
                snprintf(err, err_len, "config: ignore_hosts[%zu]: invalid regular expression: %s",
                         i, why);
            soth_policy_free(p);
            return NULL;
        }
        p->n_ignore++;
    }
    return p;

fail_nomem:
    soth_policy_free(p);
    set_err(err, err_len, "policy: out of memory");
    return NULL;
}

struct soth_policy *soth_policy_ref(struct soth_policy *p)
{
    p->refs++;
    return p;
}

void soth_policy_free(struct soth_policy *p)
{
    if (p == NULL || (p->refs > 1 && --p->refs > 0))
        return;
    if (p->routes != NULL)
        for (size_t i = 0; i <= p->n_rules; i++)
            soth_route_dispose(&p->routes[i]);
    free(p->routes);
    for (size_t i = 0; i < p->n_ignore; i++)
        regfree(&p->ignore[i]);
    free(p->ignore);
    free(p->rules);
    free(p->strings);
    free(p);
}

/* ---- globs ------------------------------------------------------------------------------- */

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* ASCII-only and NUL-safe (strncasecmp stops at NUL and follows the locale). */
static bool label_eq(const char *a, size_t al, const char *b, size_t bl)
{
    if (al != bl)
        return false;
    for (size_t i = 0; i < al; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

/* Length of the label starting at pos (pos <= s.len). */
static size_t label_len(struct soth_iov s, size_t pos)
{
    const char *dot = memchr(s.base + pos, '.', s.len - pos);
    return dot != NULL ? (size_t)(dot - (s.base + pos)) : s.len - pos;
}

/*
 * Labels are walked left to right by start offset; the offset after the last label is
 * s.len + 1. '*' is a "one label, then any number of labels" pair, so the classic wildcard
 * walk (remember the last star, on a mismatch let it take one more label) stays linear in
 * the number of labels times the glob's labels, and correct for that reason.
 */
bool soth_policy_glob_match(struct soth_iov g, struct soth_iov h)
{
    /* One trailing dot (an absolute name) is ignored on both sides. */
    if (h.len > 0 && h.base[h.len - 1] == '.')
        h.len--;
    if (g.len > 0 && g.base[g.len - 1] == '.')
        g.len--;
    if (g.len == 0 || h.len == 0)
        return false;

    size_t gi = 0, hi = 0;
    size_t star_g = SIZE_MAX, star_h = 0; /* glob after the last star, host it resumes at */
    while (hi <= h.len) {
        size_t hl = label_len(h, hi);
        if (gi <= g.len) {
            size_t gl = label_len(g, gi);
            if (gl == 1 && g.base[gi] == '*') {
                /* The star's mandatory label is host label hi. */
                gi += gl + 1;
                hi += hl + 1;
                star_g = gi;
                star_h = hi;
                continue;
            }
            if (label_eq(g.base + gi, gl, h.base + hi, hl)) {
                gi += gl + 1;
                hi += hl + 1;
                continue;
            }
        }
        if (star_g == SIZE_MAX || star_h > h.len)
            return false;
        /* The last star takes one more host label; retry the glob after it. */
        star_h += label_len(h, star_h) + 1;
        hi = star_h;
        gi = star_g;
    }
    /* Host used up: the glob must be too (a star left over needs a label it cannot get). */
    return gi > g.len;
}

/* ---- decisions --------------------------------------------------------------------------- */

/*
 * "host:port" for ignore_hosts, IPv6 literals in brackets ("[::1]:443", as a URL authority
 * and as the events' client_addr, docs/events.md), one trailing dot dropped. Returns the length, or
 * 0 when the host does not fit (it then matches no ignore_hosts entry).
 */
static size_t host_port_text(char *buf, size_t cap, struct soth_iov host, uint16_t port)
{
    if (host.len > 0 && host.base[host.len - 1] == '.')
        host.len--;
    bool v6 = host.len > 0 && memchr(host.base, ':', host.len) != NULL;
    if (host.len + 2 + 6 > cap)
        return 0;
    size_t n = 0;
    if (v6)
        buf[n++] = '[';
    if (host.len > 0)
        memcpy(buf + n, host.base, host.len);
    n += host.len;
    if (v6)
        buf[n++] = ']';
    buf[n++] = ':';
    char digits[5];
    size_t nd = 0;
    do {
        digits[nd++] = (char)('0' + port % 10);
        port /= 10;
    } while (port > 0);
    while (nd > 0)
        buf[n++] = digits[--nd];
    return n;
}

/* The first rule that applies to host:port, or p->n_rules when none does. */
static size_t first_rule(const struct soth_policy *p, struct soth_iov host, uint16_t port)
{
    for (size_t i = 0; i < p->n_rules; i++) {
        const struct prule *r = &p->rules[i];
        if (r->port >= 0 && r->port != port)
            continue;
        if (soth_policy_glob_match(r->glob, host))
            return i;
    }
    return p->n_rules;
}

/* ignore_hosts and TLS learning change the action, not the way out: the route of the rule
 * that would have applied, else the default (docs/config.md "Routes"). */
static const struct soth_route *route_of(const struct soth_policy *p, struct soth_iov host,
                                         uint16_t port)
{
    return &p->routes[first_rule(p, host, port)];
}

struct soth_policy_decision soth_policy_decide(const struct soth_policy *p, struct soth_iov host,
                                               uint16_t port, const struct soth_learning_view *lv)
{
    struct soth_policy_decision d = {
        .action = p->dflt, .reason = REASON_DEFAULT, .route = &p->routes[p->n_rules]};
    if (p->n_ignore > 0) {
        char buf[SOTH_POLICY_MAX_HOST + 16];
        size_t n = host_port_text(buf, sizeof(buf), host, port);
        /* REG_STARTEND: the exact bytes, no NUL terminator needed and none honoured. */
        regmatch_t m = {.rm_so = 0, .rm_eo = (regoff_t)n};
        for (size_t i = 0; n > 0 && i < p->n_ignore; i++) {
            if (regexec(&p->ignore[i], buf, 1, &m, REG_STARTEND) == 0) {
                d.action = SOTH_ACTION_TUNNEL;
                d.reason = REASON_IGNORE_HOSTS;
                d.route = route_of(p, host, port);
                return d;
            }
        }
    }
    if (lv != NULL && lv->is_pinned != NULL && lv->is_pinned(lv->ctx, host, port)) {
        d.action = SOTH_ACTION_TUNNEL;
        d.reason = REASON_TLS_LEARNING;
        d.route = route_of(p, host, port);
        return d;
    }
    size_t i = first_rule(p, host, port);
    if (i < p->n_rules) {
        const struct prule *r = &p->rules[i];
        d.action = r->action;
        d.reason = REASON_POLICY_RULE;
        d.rule = r->text;
        d.route = &p->routes[i];
    }
    return d;
}
