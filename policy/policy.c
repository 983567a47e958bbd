/*
 * CONNECT decisions: ignore_hosts (POSIX ERE on "host:port", mitmproxy semantics) -> TLS
 * learning -> rules (label globs, first match) -> default. A compiled policy owns copies of
 * everything it needs, so it may outlive the config snapshot it was built from; deciding
 * never allocates.
 */
#include "soth/policy.h"

#include <regex.h>
#include <stdio.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/sha256.h>

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
    /* docs/config.md "identities" (struct pident) */
    struct soth_iov id; /* `id`, or the index in decimal */
    int *idents;        /* identity numbers the rule is limited to, NULL = every one */
    size_t n_idents;
    int budget_slot; /* -1 = no budget */
};

struct puser {
    char *user;
    size_t user_len;
    uint8_t sha[32];
    int identity;
};

struct pnet {
    struct soth_cidr cidr;
    int identity;
};

/* Identities and budgets of a compiled policy (docs/config.md "identities"). */
struct pident {
    bool require;
    char **names; /* identity number -> id; names[0] = "anonymous" */
    int n_names;
    struct puser *users;
    size_t n_users;
    struct pnet *nets; /* every CIDR, in config order */
    size_t n_nets;
    struct soth_budget_cfg *budgets;
    int *budget_rule; /* budget slot -> rule index */
    int n_budgets;
    char *ids; /* rule ids in decimal for rules without one, back to back */
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
    struct pident id;
    struct soth_budget *budget; /* held: the table this policy's flows count in */
};

static int ident_build(struct soth_policy *p, const struct soth_config *cfg);
static void ident_free(struct soth_policy *p);

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
    if (copy_routes(p, cfg) < 0 || ident_build(p, cfg) < 0)
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

void soth_policy_set_budget(struct soth_policy *p, struct soth_budget *b)
{
    soth_budget_hold(b);
    soth_budget_release(p->budget);
    p->budget = b;
}

struct soth_budget *soth_policy_budget_table(const struct soth_policy *p)
{
    return p->budget;
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
    soth_budget_release(p->budget);
    if (p->routes != NULL)
        for (size_t i = 0; i <= p->n_rules; i++)
            soth_route_dispose(&p->routes[i]);
    free(p->routes);
    for (size_t i = 0; i < p->n_ignore; i++)
        regfree(&p->ignore[i]);
    free(p->ignore);
    ident_free(p);
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
static bool rule_has_identity(const struct prule *r, int identity)
{
    if (r->idents == NULL)
        return true;
    for (size_t k = 0; k < r->n_idents; k++)
        if (r->idents[k] == identity)
            return true;
    return false;
}

/* The first rule for host:port that this identity may use (docs/config.md "identities"). */
static size_t first_rule(const struct soth_policy *p, struct soth_iov host, uint16_t port,
                         int identity)
{
    for (size_t i = 0; i < p->n_rules; i++) {
        const struct prule *r = &p->rules[i];
        if (r->port >= 0 && r->port != port)
            continue;
        if (!rule_has_identity(r, identity))
            continue;
        if (soth_policy_glob_match(r->glob, host))
            return i;
    }
    return p->n_rules;
}

/* ignore_hosts and TLS learning change the action, not the way out: the route of the rule
 * that would have applied, else the default (docs/config.md "Routes"). */
static const struct soth_route *route_of(const struct soth_policy *p, struct soth_iov host,
                                         uint16_t port, int identity)
{
    return &p->routes[first_rule(p, host, port, identity)];
}

struct soth_policy_decision soth_policy_decide(const struct soth_policy *p, struct soth_iov host,
                                               uint16_t port, const struct soth_learning_view *lv)
{
    return soth_policy_decide_for(p, host, port, SOTH_IDENTITY_ANONYMOUS, lv);
}

struct soth_policy_decision soth_policy_decide_for(const struct soth_policy *p,
                                                   struct soth_iov host, uint16_t port,
                                                   int identity,
                                                   const struct soth_learning_view *lv)
{
    struct soth_policy_decision d = {.action = p->dflt,
                                     .reason = REASON_DEFAULT,
                                     .rule_index = -1,
                                     .budget_slot = -1,
                                     .route = &p->routes[p->n_rules]};
    if (p->n_ignore > 0) {
        char buf[SOTH_POLICY_MAX_HOST + 16];
        size_t n = host_port_text(buf, sizeof(buf), host, port);
        /* REG_STARTEND: the exact bytes, no NUL terminator needed and none honoured. */
        regmatch_t m = {.rm_so = 0, .rm_eo = (regoff_t)n};
        for (size_t i = 0; n > 0 && i < p->n_ignore; i++) {
            if (regexec(&p->ignore[i], buf, 1, &m, REG_STARTEND) == 0) {
                d.action = SOTH_ACTION_TUNNEL;
                d.reason = REASON_IGNORE_HOSTS;
                d.route = route_of(p, host, port, identity);
                return d;
            }
        }
    }
    if (lv != NULL && lv->is_pinned != NULL && lv->is_pinned(lv->ctx, host, port)) {
        d.action = SOTH_ACTION_TUNNEL;
        d.reason = REASON_TLS_LEARNING;
        d.route = route_of(p, host, port, identity);
        return d;
    }
    size_t i = first_rule(p, host, port, identity);
    if (i < p->n_rules) {
        const struct prule *r = &p->rules[i];
        d.action = r->action;
        d.reason = REASON_POLICY_RULE;
        d.rule = r->text;
        d.rule_id = r->id;
        d.rule_index = (int)i;
        d.budget_slot = r->budget_slot;
        d.route = &p->routes[i];
    }
    return d;
}

/* ---- identities and budgets (docs/config.md "identities") -------------------------------- */

static int ident_number(struct pident *id, const char *name)
{
    for (int i = 0; i < id->n_names; i++)
        if (strcmp(id->names[i], name) == 0)
            return i;
    return -1;
}

static int ident_add(struct pident *id, const char *name)
{
    int n = ident_number(id, name);
    if (n >= 0)
        return n;
    char *c = strdup(name);
    if (c == NULL)
        return -1;
    id->names[id->n_names] = c;
    return id->n_names++;
}

static int ident_build(struct soth_policy *p, const struct soth_config *cfg)
{
    struct pident *id = &p->id;
    const struct soth_identities *ci = &cfg->identities;
    size_t n_cidrs = 0;
    for (size_t i = 0; i < ci->n_networks; i++)
        n_cidrs += ci->networks[i].n_cidrs;
    id->require = ci->require;
    id->names = calloc(1 + ci->n_users + ci->n_networks, sizeof(*id->names));
    id->users = calloc(ci->n_users ? ci->n_users : 1, sizeof(*id->users));
    id->nets = calloc(n_cidrs ? n_cidrs : 1, sizeof(*id->nets));
    id->budgets = calloc(cfg->n_rules ? cfg->n_rules : 1, sizeof(*id->budgets));
    id->budget_rule = calloc(cfg->n_rules ? cfg->n_rules : 1, sizeof(*id->budget_rule));
    id->ids = calloc(cfg->n_rules ? cfg->n_rules : 1, 12);
    if (id->names == NULL || id->users == NULL || id->nets == NULL || id->budgets == NULL ||
        id->budget_rule == NULL || id->ids == NULL)
        return -1;
    if (ident_add(id, "anonymous") < 0)
        return -1;
    for (size_t i = 0; i < ci->n_users; i++) {
        struct puser *u = &id->users[id->n_users];
        u->identity = ident_add(id, ci->users[i].id);
        u->user = strdup(ci->users[i].user);
        if (u->identity < 0 || u->user == NULL)
            return -1;
        u->user_len = strlen(u->user);
        memcpy(u->sha, ci->users[i].password_sha256, 32);
        id->n_users++;
    }
    for (size_t i = 0; i < ci->n_networks; i++) {
        int n = ident_add(id, ci->networks[i].id);
        if (n < 0)
            return -1;
        for (size_t k = 0; k < ci->networks[i].n_cidrs; k++)
            id->nets[id->n_nets++] = (struct pnet){ci->networks[i].cidrs[k], n};
    }
    for (size_t i = 0; i < cfg->n_rules; i++) {
        const struct soth_rule *r = &cfg->rules[i];
        struct prule *d = &p->rules[i];
        d->budget_slot = -1;
        if (r->id != NULL) {
            char *c = strdup(r->id);
            if (c == NULL)
                return -1;
            d->id = soth_iov(c, strlen(c));
        } else {
            char *c = id->ids + 12 * i;
            int n = snprintf(c, 12, "%zu", i);
            d->id = soth_iov(c, (size_t)n);
        }
        if (r->n_identities > 0) {
            d->idents = calloc(r->n_identities, sizeof(*d->idents));
            if (d->idents == NULL)
                return -1;
            for (size_t k = 0; k < r->n_identities; k++) {
                int n = ident_number(id, r->identities[k]);
                if (n >= 0) /* the config checked that it exists */
                    d->idents[d->n_idents++] = n;
            }
        }
        if (r->budget.window_s > 0) {
            d->budget_slot = id->n_budgets;
            id->budgets[id->n_budgets] = r->budget;
            id->budget_rule[id->n_budgets] = (int)i;
            id->n_budgets++;
        }
    }
    return 0;
}

static void ident_free(struct soth_policy *p)
{
    struct pident *id = &p->id;
    for (size_t i = 0; p->rules != NULL && i < p->n_rules; i++) {
        struct prule *r = &p->rules[i];
        if (r->id.base != NULL &&
            (id->ids == NULL || r->id.base < id->ids || r->id.base >= id->ids + 12 * p->n_rules))
            free((char *)r->id.base);
        free(r->idents);
    }
    for (int i = 0; id->names != NULL && i < id->n_names; i++)
        free(id->names[i]);
    for (size_t i = 0; i < id->n_users; i++)
        free(id->users[i].user);
    free(id->names);
    free(id->users);
    free(id->nets);
    free(id->budgets);
    free(id->budget_rule);
    free(id->ids);
}

struct soth_iov soth_policy_identity_name(const struct soth_policy *p, int identity)
{
    if (identity < 0 || identity >= p->id.n_names)
        identity = SOTH_IDENTITY_ANONYMOUS;
    const char *n = p->id.names[identity];
    return soth_iov(n, strlen(n));
}

int soth_policy_n_identities(const struct soth_policy *p)
{
    return p->id.n_names;
}

int soth_policy_n_budgets(const struct soth_policy *p)
{
    return p->id.n_budgets;
}

const struct soth_budget_cfg *soth_policy_budget(const struct soth_policy *p, int slot)
{
    return &p->id.budgets[slot];
}

struct soth_iov soth_policy_budget_rule(const struct soth_policy *p, int slot)
{
    return p->rules[p->id.budget_rule[slot]].id;
}

bool soth_policy_digest_eq(const uint8_t a[32], const uint8_t b[32])
{
    volatile uint8_t acc = 0;
    for (size_t i = 0; i < 32; i++)
        acc |= (uint8_t)(a[i] ^ b[i]);
    return acc == 0;
}

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int soth_policy_basic_parse(struct soth_iov v, char *buf, size_t cap, struct soth_iov *user,
                            struct soth_iov *pass)
{
    size_t i = 0;
    while (i < v.len && (v.base[i] == ' ' || v.base[i] == '\t'))
        i++;
    if (v.len - i < 6 || lower((unsigned char)v.base[i]) != 'b' ||
        !label_eq(v.base + i, 5, "basic", 5) || (v.base[i + 5] != ' ' && v.base[i + 5] != '\t'))
        return SOTH_E_MALFORMED;
    i += 6;
    while (i < v.len && (v.base[i] == ' ' || v.base[i] == '\t'))
        i++;
    size_t end = v.len;
    while (end > i && (v.base[end - 1] == ' ' || v.base[end - 1] == '\t'))
        end--;
    size_t n = end - i;
    if (n == 0 || n % 4 != 0)
        return SOTH_E_MALFORMED;
    if (n / 4 * 3 > cap)
        return SOTH_E_TOO_LARGE;
    size_t o = 0;
    for (size_t k = i; k < end; k += 4) {
        int q[4];
        size_t pad = 0;
        for (size_t j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)v.base[k + j];
            if (c == '=' && k + 4 == end && j >= 2) {
                q[j] = 0;
                pad++;
                continue;
            }
            if (pad > 0)
                return SOTH_E_MALFORMED; /* data after '=' */
            q[j] = b64_val(c);
            if (q[j] < 0)
                return SOTH_E_MALFORMED;
        }
        uint32_t w =
            (uint32_t)q[0] << 18 | (uint32_t)q[1] << 12 | (uint32_t)q[2] << 6 | (uint32_t)q[3];
        buf[o++] = (char)(w >> 16);
        if (pad < 2)
            buf[o++] = (char)(w >> 8);
        if (pad < 1)
            buf[o++] = (char)w;
    }
    const char *colon = memchr(buf, ':', o);
    if (colon == NULL)
        return SOTH_E_MALFORMED;
    *user = soth_iov(buf, (size_t)(colon - buf));
    *pass = soth_iov(colon + 1, o - (size_t)(colon - buf) - 1);
    return 0;
}

/* The user whose name and password hash match, in time independent of which user it is and
 * of where a hash differs: every user is compared. */
static int check_user(const struct pident *id, struct soth_iov user, struct soth_iov pass)
{
    uint8_t d[WC_SHA256_DIGEST_SIZE];
    if (wc_Sha256Hash((const byte *)pass.base, (word32)pass.len, d) != 0)
        return -1;
    int found = -1;
    for (size_t i = 0; i < id->n_users; i++) {
        const struct puser *u = &id->users[i];
        bool name = u->user_len == user.len && memcmp(u->user, user.base, user.len) == 0;
        bool pw = soth_policy_digest_eq(u->sha, d);
        if (name & pw)
            found = u->identity;
    }
    return found;
}

enum soth_ident_result soth_policy_identify(const struct soth_policy *p,
                                            struct soth_iov proxy_authorization,
                                            const struct sockaddr *client, int *identity)
{
    const struct pident *id = &p->id;
    bool bad = false;
    *identity = SOTH_IDENTITY_ANONYMOUS;
    if (proxy_authorization.base != NULL) {
        char buf[768];
        struct soth_iov user, pass;
        int n = -1;
        if (soth_policy_basic_parse(proxy_authorization, buf, sizeof(buf), &user, &pass) == 0)
            n = check_user(id, user, pass);
        memset(buf, 0, sizeof(buf)); /* no password left on the stack */
        if (n > 0) {
            *identity = n;
            return SOTH_IDENT_OK;
        }
        bad = true;
        if (id->require)
            return SOTH_IDENT_REQUIRED;
    }
    for (size_t i = 0; i < id->n_nets; i++) {
        if (soth_cidr_contains(&id->nets[i].cidr, client)) {
            *identity = id->nets[i].identity;
            return bad ? SOTH_IDENT_BAD_CREDS : SOTH_IDENT_OK;
        }
    }
    if (id->require)
        return SOTH_IDENT_REQUIRED;
    return bad ? SOTH_IDENT_BAD_CREDS : SOTH_IDENT_OK;
}
