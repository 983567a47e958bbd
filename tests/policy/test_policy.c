/* Policy decisions and host globs (policy/policy.c), through the public header. */
#include <criterion/criterion.h>
#include <string.h>

#include "soth/observe.h"
#include "soth/policy.h"

static struct soth_iov S(const char *s) {
    return soth_iov(s, strlen(s));
}

static bool
iov_is(struct soth_iov v, const char *s)
{
    if (s == NULL)
        return v.base == NULL && v.len == 0;
    return v.len == strlen(s) && memcmp(v.base, s, v.len) == 0;
}

/* ---- globs ------------------------------------------------------------------------------- */

Test(policy_glob, table)
{
    static const struct {
        const char *glob, *host;
        bool match;
    } t[] = {
        /* exact names, case, trailing dots */
        {"example.com", "example.com", true},
        {"example.com", "EXAMPLE.Com", true},
        {"EXAMPLE.COM", "example.com", true},
        {"example.com", "example.com.", true},
        {"example.com.", "example.com", true},
        {"example.com.", "example.com.", true},
        {"example.com", "example.com..", false},
        {"example.com", "www.example.com", false},
        {"www.example.com", "example.com", false},
        {"example.com", "example.co", false},
        {"example.co", "example.com", false},
        {"example.com", "exampleXcom", false},
        {"a.com", "b.com", false},
        {"x.y", "x.y.z", false},
        {"127.0.0.1", "127.0.0.1", true},
        {"127.0.0.1", "127.0.0.10", false},
        {"::1", "::1", true},
        /* leading star: one or more labels */
        {"*.example.com", "a.example.com", true},
        {"*.example.com", "A.EXAMPLE.COM", true},
        {"*.example.com", "a.b.example.com", true},
        {"*.example.com", "a.b.c.d.example.com", true},
        {"*.example.com", "example.com", false},
        {"*.example.com", ".example.com", true}, /* an empty label is still a label */
        {"*.example.com", "aexample.com", false},
        {"*.example.com", "a.example.com.", true},
        {"*.example.com", "a.example.org", false},
        {"*.com", "x.com", true},
        {"*.0.0.1", "127.0.0.1", true},
        /* "*" alone and other placements */
        {"*", "anything", true},
        {"*", "a.b.c", true},
        {"*", "x.", true},
        {"*.", "x", true},
        {"*.*", "a.b", true},
        {"*.*", "a", false},
        {"a.*", "a.b", true},
        {"a.*", "a.b.c", true},
        {"a.*", "a", false},
        {"a.*.c", "a.b.c", true},
        {"a.*.c", "a.b.x.c", true},
        {"a.*.c", "a.c", false},
        {"a.*.c.*.e", "a.b.c.d.c.x.e", true},
        {"*.b.*", "b.b.b", true},
        {"*.b.*", "a.b", false},
        {"*.*.*", "a.b", false},
        {"*.a.a.a", "a.a.a.a.a", true},
        {"*.a.b", "a.a.b.a.b", true},
        {"*.a.b", "a.b.a.b.c", false},
        /* '*' inside a label is a plain byte */
        {"a*.com", "ab.com", false},
        {"a*.com", "a*.com", true},
        {"**.com", "a.com", false},
        /* empty sides */
        {"", "", false},
        {"a.com", "", false},
        {"", "a.com", false},
        {"*", "", false},
        {".", ".", false},
        {"*", ".", false},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++)
        cr_expect_eq(soth_policy_glob_match(S(t[i].glob), S(t[i].host)), t[i].match,
                     "glob \"%s\" host \"%s\": expected %s", t[i].glob, t[i].host,
                     t[i].match ? "match" : "no match");
}

Test(policy_glob, not_nul_terminated_and_nul_safe)
{
    /* iovs into a larger buffer: bytes after len must not count */
    const char *buf = "a.example.com.evil";
    cr_expect(soth_policy_glob_match(S("*.example.com"), soth_iov(buf, 13)));
    cr_expect_not(soth_policy_glob_match(S("*.example.com"), soth_iov(buf, 18)));
    /* NUL bytes compare as bytes, they do not end the label */
    cr_expect_not(soth_policy_glob_match(soth_iov("a\0x", 3), soth_iov("a\0y", 3)));
    cr_expect(soth_policy_glob_match(soth_iov("a\0x", 3), soth_iov("A\0X", 3)));
}

Test(policy_glob, many_labels_stay_fast)
{
    /* A glob full of stars against a long host: linear walk, not exponential backtracking */
    static char glob[1024], host[1024];
    size_t g = 0, h = 0;
    for (int i = 0; i < 100; i++) {
        glob[g++] = '*';
        glob[g++] = '.';
    }
    memcpy(glob + g, "zz", 2);
    g += 2;
    for (int i = 0; i < 300; i++) {
        host[h++] = 'a';
        host[h++] = '.';
    }
    memcpy(host + h, "zy", 2);
    h += 2;
    cr_expect_not(soth_policy_glob_match(soth_iov(glob, g), soth_iov(host, h)));
    host[h - 1] = 'z';
    cr_expect(soth_policy_glob_match(soth_iov(glob, g), soth_iov(host, h)));
}

/* ---- decisions --------------------------------------------------------------------------- */

struct lv_log {
    int calls;
    char host[64];
    uint16_t port;
    const char *pinned; /* the one pinned host */
};

static bool lv_pinned(void *ctx, struct soth_iov host, uint16_t port)
{
    struct lv_log *l = ctx;
    l->calls++;
    size_t n = host.len < sizeof(l->host) - 1 ? host.len : sizeof(l->host) - 1;
    memcpy(l->host, host.base, n);
    l->host[n] = '\0';
    l->port = port;
    return l->pinned != NULL && iov_is(host, l->pinned);
}

static struct soth_policy *policy(char **ignore, size_t n_ignore, struct soth_rule *rules,
                                  size_t n_rules, enum soth_action dflt)
{
    struct soth_config *cfg = calloc(1, sizeof(*cfg));
    cr_assert_not_null(cfg);
    cfg->ignore_hosts = ignore;
    cfg->n_ignore_hosts = n_ignore;
    cfg->rules = rules;
    cfg->n_rules = n_rules;
    cfg->policy_default = dflt;
    char err[256] = "";
    struct soth_policy *p = soth_policy_new(cfg, err, sizeof(err));
    cr_assert_not_null(p, "%s", err);
    free(cfg);
    return p;
}

Test(policy, reasons_use_the_observe_numbering)
{
    char *ignore[] = {"^ignored\\.test:"};
    struct soth_rule rules[] = {
        {.host = "ruled.test", .port = -1, .action = SOTH_ACTION_BLOCK, .text = "ruled.test"},
    };
    struct soth_policy *p = policy(ignore, 1, rules, 1, SOTH_ACTION_INTERCEPT);
    struct lv_log log = {.pinned = "learned.test"};
    struct soth_learning_view lv = {.is_pinned = lv_pinned, .ctx = &log};
    static const struct {
        const char *host;
        enum soth_decision_reason reason;
        const char *name;
    } t[] = {
        {"ignored.test", SOTH_REASON_IGNORE_HOSTS, "ignore_hosts"},
        {"learned.test", SOTH_REASON_TLS_LEARNING, "tls_learning"},
        {"ruled.test", SOTH_REASON_POLICY_RULE, "policy_rule"},
        {"other.test", SOTH_REASON_DEFAULT, "default"},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++) {
        struct soth_policy_decision d = soth_policy_decide(p, S(t[i].host), 443, &lv);
        cr_expect_eq(d.reason, (int)t[i].reason, "%s", t[i].host);
        cr_assert(d.reason >= 0 && d.reason < SOTH_REASON_COUNT);
        cr_expect_str_eq(soth_decision_reason_names[d.reason], t[i].name);
    }
    soth_policy_free(p);
}

Test(policy, precedence_ignore_learning_rules_default)
{
    char *ignore[] = {"^i\\.com:443$", "^\\[::1\\]:"};
    struct soth_rule rules[] = {
        {.host = "*.bank.com", .port = -1, .action = SOTH_ACTION_TUNNEL, .text = "*.bank.com"},
        {.host = "ads.com", .port = 443, .action = SOTH_ACTION_BLOCK, .text = "ads.com:443"},
        {.host = "*.com", .port = -1, .action = SOTH_ACTION_BLOCK, .text = "*.com"},
        {.host = "i.com", .port = -1, .action = SOTH_ACTION_INTERCEPT, .text = "i.com"},
        {.host = "b.com", .port = -1, .action = SOTH_ACTION_BLOCK, .text = "b.com"},
    };
    struct soth_policy *p = policy(ignore, 2, rules, 5, SOTH_ACTION_INTERCEPT);
    struct lv_log log = {.pinned = "b.com"};
    struct soth_learning_view lv = {.is_pinned = lv_pinned, .ctx = &log};
    struct soth_policy_decision d;

    /* ignore_hosts beats a pinned host and a rule; learning is not even asked */
    log.pinned = "i.com";
    d = soth_policy_decide(p, S("i.com"), 443, &lv);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.reason, SOTH_REASON_IGNORE_HOSTS);
    cr_expect(iov_is(d.rule, NULL));
    cr_expect_eq(log.calls, 0);
    d = soth_policy_decide(p, S("::1"), 8443, &lv);
    cr_expect_eq(d.reason, SOTH_REASON_IGNORE_HOSTS);

    /* the regex sees the port: i.com:80 is not ignored; learning pinned it */
    d = soth_policy_decide(p, S("i.com"), 80, &lv);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.reason, SOTH_REASON_TLS_LEARNING);
    cr_expect_eq(log.calls, 1);
    cr_expect_str_eq(log.host, "i.com");
    cr_expect_eq(log.port, 80);

    /* learning beats a block rule */
    log.pinned = "b.com";
    d = soth_policy_decide(p, S("b.com"), 443, &lv);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.reason, SOTH_REASON_TLS_LEARNING);
    /* ... and without learning the rule applies: "*.com" comes first */
    d = soth_policy_decide(p, S("b.com"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    cr_expect(iov_is(d.rule, "*.com"));
    struct soth_learning_view no_cb = {.is_pinned = NULL};
    d = soth_policy_decide(p, S("b.com"), 443, &no_cb);
    cr_expect_eq(d.reason, SOTH_REASON_POLICY_RULE);

    /* first match wins, ports filter */
    d = soth_policy_decide(p, S("x.bank.com"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect(iov_is(d.rule, "*.bank.com"));
    d = soth_policy_decide(p, S("ads.com"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    cr_expect(iov_is(d.rule, "ads.com:443"));
    d = soth_policy_decide(p, S("ads.com"), 80, NULL); /* port differs: falls to "*.com" */
    cr_expect(iov_is(d.rule, "*.com"));
    d = soth_policy_decide(p, S("i.com"), 80, NULL); /* "*.com" before "i.com" */
    cr_expect(iov_is(d.rule, "*.com"));
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);

    /* default */
    d = soth_policy_decide(p, S("example.org"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_INTERCEPT);
    cr_expect_eq(d.reason, SOTH_REASON_DEFAULT);
    cr_expect(iov_is(d.rule, NULL));
    soth_policy_free(p);
}

Test(policy, default_action_is_configurable)
{
    for (int a = 0; a < SOTH_ACTION_COUNT; a++) {
        struct soth_policy *p = policy(NULL, 0, NULL, 0, (enum soth_action)a);
        struct soth_policy_decision d = soth_policy_decide(p, S("h"), 1, NULL);
        cr_expect_eq(d.action, (enum soth_action)a);
        cr_expect_eq(d.reason, SOTH_REASON_DEFAULT);
        soth_policy_free(p);
    }
}

Test(policy, ignore_hosts_matches_host_port_text)
{
    char *ignore[] = {
        "example\\.org",       /* unanchored: a search, as mitmproxy does */
        "^[^:]*\\.pinned:",    /* any port */
        "^10\\.0\\.0\\.1:22$", /* one port */
        "^\\[2001:db8::1\\]:443$", "^upper\\.test:443$", "^dot\\.test:443$",
    };
    struct soth_policy *p = policy(ignore, SOTH_ARRAY_LEN(ignore), NULL, 0, SOTH_ACTION_BLOCK);
    static const struct {
        const char *host;
        uint16_t port;
        bool ignored;
    } t[] = {
        {"www.example.org", 443, true}, {"example.org.evil", 80, true}, {"example.com", 443, false},
        {"a.pinned", 1, true},          {"a.pinned", 65535, true},      {"a.pinned.x", 443, false},
        {"10.0.0.1", 22, true},         {"10.0.0.1", 220, false},       {"10.0.0.1", 2, false},
        {"2001:db8::1", 443, true},     {"2001:db8::1", 80, false},     {"UPPER.Test", 443, true},
        {"dot.test.", 443, true},       {"dot.test..", 443, false},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++) {
        struct soth_policy_decision d = soth_policy_decide(p, S(t[i].host), t[i].port, NULL);
        cr_expect_eq(d.reason == SOTH_REASON_IGNORE_HOSTS, t[i].ignored, "%s:%u", t[i].host,
                     t[i].port);
        cr_expect_eq(d.action, t[i].ignored ? SOTH_ACTION_TUNNEL : SOTH_ACTION_BLOCK);
    }
    /* only host.len bytes count, and hosts longer than the limit match nothing */
    const char *buf = "www.example.orgX";
    cr_expect_eq(soth_policy_decide(p, soth_iov(buf, 11), 443, NULL).reason, SOTH_REASON_DEFAULT);
    static char longhost[SOTH_POLICY_MAX_HOST + 20];
    memset(longhost, 'a', sizeof(longhost));
    memcpy(longhost, "example.org.", 12);
    cr_expect_eq(soth_policy_decide(p, soth_iov(longhost, SOTH_POLICY_MAX_HOST), 443, NULL).reason,
                 SOTH_REASON_IGNORE_HOSTS);
    cr_expect_eq(soth_policy_decide(p, soth_iov(longhost, sizeof(longhost)), 443, NULL).reason,
                 SOTH_REASON_DEFAULT);
    soth_policy_free(p);
}

Test(policy, rules_are_copied_and_outlive_the_config)
{
    struct soth_rule *rules = calloc(2, sizeof(*rules));
    rules[0] = (struct soth_rule){.host = strdup("*.bank.example"),
                                  .port = -1,
                                  .action = SOTH_ACTION_TUNNEL,
                                  .text = strdup("*.bank.example")};
    rules[1] = (struct soth_rule){.host = strdup("ads.example"),
                                  .port = 443,
                                  .action = SOTH_ACTION_BLOCK,
                                  .text = strdup("ads.example:443")};
    char *ig = strdup("^skip\\.example:");
    struct soth_policy *p = policy(&ig, 1, rules, 2, SOTH_ACTION_INTERCEPT);
    for (int i = 0; i < 2; i++) {
        memset(rules[i].host, 'X', strlen(rules[i].host));
        memset(rules[i].text, 'X', strlen(rules[i].text));
        free(rules[i].host);
        free(rules[i].text);
    }
    free(rules);
    free(ig);
    struct soth_policy_decision d = soth_policy_decide(p, S("ads.example"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    cr_expect(iov_is(d.rule, "ads.example:443"));
    d = soth_policy_decide(p, S("www.bank.example"), 8443, NULL);
    cr_expect(iov_is(d.rule, "*.bank.example"));
    cr_expect_eq(soth_policy_decide(p, S("skip.example"), 1, NULL).reason,
                 SOTH_REASON_IGNORE_HOSTS);
    /* pure: asking again gives the same answer */
    for (int i = 0; i < 3; i++) {
        struct soth_policy_decision e = soth_policy_decide(p, S("www.bank.example"), 8443, NULL);
        cr_expect_eq(e.action, d.action);
        cr_expect_eq(e.reason, d.reason);
        cr_expect_eq(e.rule.base, d.rule.base);
    }
    soth_policy_free(p);
}

Test(policy, bad_regex_is_reported)
{
    char *ignore[] = {"^ok$", "(x"};
    struct soth_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.ignore_hosts = ignore;
    cfg.n_ignore_hosts = 2;
    char err[128] = "";
    cr_expect_null(soth_policy_new(&cfg, err, sizeof(err)));
    cr_expect(strncmp(err, "config: ignore_hosts[1]: invalid regular expression", 51) == 0, "%s",
              err);
    cr_expect_null(soth_policy_new(&cfg, NULL, 0));
    soth_policy_free(NULL);
}

/* docs/config.md "Routes": a rule's route, else the default; ignore_hosts and learning keep
 * the route of the rule that would have matched; the routes outlive the config, and a
 * reference keeps them past soth_policy_free. */
Test(policy, routes_follow_rules_default_and_overrides)
{
    struct soth_route via_a, via_d;
    char err[128];
    cr_assert_eq(soth_route_parse("upstream:http://u:p@a.proxy:3128", &via_a, err, sizeof(err)), 0);
    cr_assert_eq(soth_route_parse("upstream:http://[::1]:8080", &via_d, err, sizeof(err)), 0);
    char *ignore[] = {"^ignored\\.egress\\.test:"};
    struct soth_rule rules[] = {
        {.host = "*.egress.test",
         .port = -1,
         .action = SOTH_ACTION_INTERCEPT,
         .text = "*.egress.test",
         .route_text = "upstream:http://a.proxy:3128",
         .route = via_a},
        {.host = "direct.test", .port = -1, .action = SOTH_ACTION_TUNNEL, .text = "direct.test"},
    };
    struct soth_config *cfg = calloc(1, sizeof(*cfg));
    cr_assert_not_null(cfg);
    cfg->ignore_hosts = ignore;
    cfg->n_ignore_hosts = 1;
    cfg->rules = rules;
    cfg->n_rules = 2;
    cfg->policy_default = SOTH_ACTION_TUNNEL;
    cfg->default_route = via_d;
    struct soth_policy *p = soth_policy_new(cfg, err, sizeof(err));
    cr_assert_not_null(p, "%s", err);
    free(cfg);
    soth_route_dispose(&via_a);
    soth_route_dispose(&via_d);
    struct lv_log log = {.pinned = "pinned.egress.test"};
    struct soth_learning_view lv = {.is_pinned = lv_pinned, .ctx = &log};
    static const struct {
        const char *host;
        const char *route;
        bool auth;
    } t[] = {
        {"api.egress.test", "upstream:http://a.proxy:3128", true},     /* the rule's */
        {"ignored.egress.test", "upstream:http://a.proxy:3128", true}, /* ignore_hosts */
        {"pinned.egress.test", "upstream:http://a.proxy:3128", true},  /* learning */
        {"direct.test", "upstream:http://[::1]:8080", false}, /* a rule without one: default */
        {"other.test", "upstream:http://[::1]:8080", false},  /* no rule */
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++) {
        struct soth_policy_decision d = soth_policy_decide(p, S(t[i].host), 443, &lv);
        cr_assert_not_null(d.route, "%s", t[i].host);
        cr_expect_str_eq(d.route->text, t[i].route, "%s", t[i].host);
        cr_expect_eq(d.route->proxy_auth != NULL, t[i].auth, "%s", t[i].host);
    }
    struct soth_policy_decision d = soth_policy_decide(p, S("api.egress.test"), 443, &lv);
    cr_expect_str_eq(d.route->proxy_auth, "Basic dTpw");
    /* a flow's reference keeps the route after the worker drops the policy */
    struct soth_policy *held = soth_policy_ref(p);
    soth_policy_free(p);
    cr_expect_str_eq(d.route->host, "a.proxy");
    cr_expect_eq(d.route->port, 3128);
    soth_policy_free(held);
}
