/* Policy decisions and host globs. */
#include <criterion/criterion.h>
#include <string.h>

#include "soth/observe.h"
#include "soth/policy.h"

static struct soth_iov S(const char *s) {
    return soth_iov(s, strlen(s));
}

Test(policy, reason_numbering_matches_observe)
{
    struct soth_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    char err[128];
    struct soth_policy *p = soth_policy_new(&cfg, err, sizeof(err));
    struct soth_policy_decision d = soth_policy_decide(p, S("a"), 1, NULL);
    cr_expect_eq(d.reason, SOTH_REASON_DEFAULT);
    soth_policy_free(p);
    cr_expect_eq(SOTH_REASON_IGNORE_HOSTS, 0);
    cr_expect_eq(SOTH_REASON_POLICY_RULE, 1);
    cr_expect_eq(SOTH_REASON_TLS_LEARNING, 2);
}

Test(policy, glob_table)
{
    static const struct {
        const char *glob, *host;
        bool match;
    } t[] = {
        {"example.com", "example.com", true},
        {"example.com", "EXAMPLE.com", true},
        {"example.com", "example.com.", true},
        {"example.com", "www.example.com", false},
        {"*.example.com", "a.example.com", true},
        {"*.example.com", "a.b.example.com", true},
        {"*.example.com", "example.com", false},
        {"*.example.com", "aexample.com", false},
        {"*", "anything", true},
        {"*", "a.b.c", true},
        {"a.com", "b.com", false},
        {"a.com", "", false},
        {"*.com", "x.com", true},
        {"x.y", "x.y.z", false},
        {"127.0.0.1", "127.0.0.1", true},
        {"*.0.0.1", "127.0.0.1", true},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        cr_expect_eq(soth_policy_glob_match(S(t[i].glob), S(t[i].host)), t[i].match, "%s vs %s",
                     t[i].glob, t[i].host);
}

static bool pinned_b(void *ctx, struct soth_iov host, uint16_t port)
{
    (void)ctx;
    return host.len == 5 && memcmp(host.base, "b.com", 5) == 0;
}

Test(policy, precedence_ignore_learning_rules_default)
{
    char *ignore[] = {"^i\\.com:443$", "^\\[::1\\]:"};
    struct soth_rule rules[] = {
        {.host = "*.bank.com", .port = -1, .action = SOTH_ACTION_TUNNEL, .text = "*.bank.com"},
        {.host = "ads.com", .port = 443, .action = SOTH_ACTION_BLOCK, .text = "ads.com:443"},
        {.host = "*.com", .port = -1, .action = SOTH_ACTION_BLOCK, .text = "*.com"},
        {.host = "i.com", .port = -1, .action = SOTH_ACTION_BLOCK, .text = "i.com"},
    };
    struct soth_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.ignore_hosts = ignore;
    cfg.n_ignore_hosts = 2;
    cfg.rules = rules;
    cfg.n_rules = 4;
    cfg.policy_default = SOTH_ACTION_INTERCEPT;
    char err[128];
    struct soth_policy *p = soth_policy_new(&cfg, err, sizeof(err));
    cr_assert_not_null(p, "%s", err);
    struct soth_learning_view lv = {.is_pinned = pinned_b};
    struct soth_policy_decision d;

    d = soth_policy_decide(p, S("i.com"), 443, &lv);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.reason, SOTH_REASON_IGNORE_HOSTS);
    d = soth_policy_decide(p, S("::1"), 8443, &lv);
    cr_expect_eq(d.reason, SOTH_REASON_IGNORE_HOSTS);
    d = soth_policy_decide(p, S("i.com"), 80, &lv); /* regex is on host:port */
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    cr_expect_eq(d.reason, SOTH_REASON_POLICY_RULE);
    d = soth_policy_decide(p, S("b.com"), 443, &lv);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.reason, SOTH_REASON_TLS_LEARNING);
    d = soth_policy_decide(p, S("x.bank.com"), 443, &lv);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.rule.len, strlen("*.bank.com"));
    d = soth_policy_decide(p, S("ads.com"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    cr_expect(memcmp(d.rule.base, "ads.com:443", 11) == 0);
    d = soth_policy_decide(p, S("ads.com"), 80, NULL); /* falls to "*.com" */
    cr_expect(memcmp(d.rule.base, "*.com", 5) == 0);
    d = soth_policy_decide(p, S("example.org"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_INTERCEPT);
    cr_expect_eq(d.reason, SOTH_REASON_DEFAULT);
    cr_expect_null(d.rule.base);
    soth_policy_free(p);
}

Test(policy, bad_regex_is_reported)
{
    char *ignore[] = {"(x"};
    struct soth_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.ignore_hosts = ignore;
    cfg.n_ignore_hosts = 1;
    char err[128];
    cr_expect_null(soth_policy_new(&cfg, err, sizeof(err)));
    cr_expect(strstr(err, "ignore_hosts[0]") != NULL, "%s", err);
}
