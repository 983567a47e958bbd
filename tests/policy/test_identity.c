/* Identities and budgets (policy/policy.c, policy/budget.c; docs/soth.md): CIDRs, Basic
 * credentials, the constant-time digest compare, identity resolution, rules limited to
 * identities, and the budget window. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <string.h>

#include "soth/config.h"
#include "soth/policy.h"

static struct soth_iov S(const char *s) {
    return soth_iov(s, strlen(s));
}

static bool
iov_is(struct soth_iov v, const char *s)
{
    return v.len == strlen(s) && memcmp(v.base, s, v.len) == 0;
}

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        cr_assert_eq(inet_pton(AF_INET6, ip, &s->sin6_addr), 1);
    } else {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        cr_assert_eq(inet_pton(AF_INET, ip, &s->sin_addr), 1);
    }
    return ss;
}

Test(identity, cidr_match_table)
{
    static const struct {
        const char *cidr, *ip;
        bool in;
    } t[] = {
        {"10.20.0.0/16", "10.20.0.1", true},
        {"10.20.0.0/16", "10.20.255.255", true},
        {"10.20.0.0/16", "10.21.0.0", false},
        {"10.20.0.0/15", "10.21.3.4", true},
        {"127.0.0.0/8", "127.9.9.9", true},
        {"127.0.0.0/8", "128.0.0.1", false},
        {"0.0.0.0/0", "203.0.113.9", true},
        {"192.0.2.7", "192.0.2.7", true},
        {"192.0.2.7/32", "192.0.2.8", false},
        {"10.0.0.0/8", "::ffff:10.1.2.3", true},
        {"10.0.0.0/8", "::1", false},
        {"fd00:20::/32", "fd00:20:1::5", true},
        {"fd00:20::/32", "fd00:21::5", false},
        {"::1/128", "::1", true},
        {"::1/128", "127.0.0.1", false},
        {"::/0", "2001:db8::1", true},
        {"2001:db8::/33", "2001:db8:7fff::", true},
        {"2001:db8::/33", "2001:db8:8000::", false},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct soth_cidr c;
        char why[160];
        cr_assert_eq(soth_cidr_parse(t[i].cidr, &c, why, sizeof(why)), 0, "%s: %s", t[i].cidr, why);
        struct sockaddr_storage a = addr(t[i].ip);
        cr_expect_eq(soth_cidr_contains(&c, (struct sockaddr *)&a), t[i].in, "%s in %s", t[i].ip,
                     t[i].cidr);
    }
}

Test(identity, cidr_parse_refuses)
{
    static const char *const bad[] = {"",           "10.20.0.1/16", "10.0.0.0/33", "::/129",
                                      "10.0.0.0/",  "10.0.0.0/08",  "10.0.0/8",    "x/8",
                                      "fd00::1/64", "10.0.0.0/-1",  "10.0.0.0/8/8"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct soth_cidr c;
        char why[160];
        cr_expect_lt(soth_cidr_parse(bad[i], &c, why, sizeof(why)), 0, "%s accepted", bad[i]);
    }
}

Test(identity, basic_parse)
{
    char buf[128];
    struct soth_iov u, p;
    /* "alice:secret" */
    cr_assert_eq(soth_policy_basic_parse(S("Basic YWxpY2U6c2VjcmV0"), buf, sizeof(buf), &u, &p), 0);
    cr_expect(iov_is(u, "alice") && iov_is(p, "secret"));
    /* scheme case-insensitive, padding, a password holding ':' , an empty password */
    cr_assert_eq(soth_policy_basic_parse(S("bAsIc  YTpiOmM="), buf, sizeof(buf), &u, &p), 0);
    cr_expect(iov_is(u, "a") && iov_is(p, "b:c"));
    cr_assert_eq(soth_policy_basic_parse(S("Basic YTo="), buf, sizeof(buf), &u, &p), 0);
    cr_expect(iov_is(u, "a") && p.len == 0);
    static const char *const bad[] = {"",
                                      "Basic",
                                      "Basic ",
                                      "Bearer YWxpY2U6c2VjcmV0",
                                      "BasicYWxpY2U6c2VjcmV0",
                                      "Basic YWxpY2U",          /* not a multiple of 4 */
                                      "Basic YWxpY2U6c2Vj=mV0", /* data after '=' */
                                      "Basic YWxpY2U*c2VjcmV0",
                                      "Basic YWxpY2U=", /* "alice": no colon */
                                      "Basic ====",
                                      "Basic =YWE"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_lt(soth_policy_basic_parse(S(bad[i]), buf, sizeof(buf), &u, &p), 0, "%s", bad[i]);
    cr_expect_eq(soth_policy_basic_parse(S("Basic YWxpY2U6c2VjcmV0"), buf, 8, &u, &p),
                 SOTH_E_TOO_LARGE);
}

Test(identity, digest_compare)
{
    uint8_t a[32], b[32];
    memset(a, 0x5a, sizeof(a));
    memcpy(b, a, sizeof(b));
    cr_expect(soth_policy_digest_eq(a, b));
    for (size_t i = 0; i < 32; i++) {
        b[i] ^= 1;
        cr_expect(!soth_policy_digest_eq(a, b), "byte %zu", i);
        b[i] ^= 1;
    }
}

static struct soth_config *load(const char *json)
{
    struct soth_config *c = NULL;
    char err[256] = "";
    cr_assert_eq(soth_config_load_text(json, strlen(json), &c, err, sizeof(err)), 0, "%s", err);
    return c;
}

/* sha256("secret") and sha256("hunter2") */
#define SECRET  "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
#define HUNTER2 "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"

static const char *const ids_cfg =
    "{\"identities\":{\"users\":[{\"id\":\"team-a\",\"user\":\"alice\",\"password_sha256\":"
    "\"" SECRET "\"},{\"id\":\"team-b\",\"user\":\"bob\",\"password_sha256\":\"" HUNTER2 "\"}],"
    "\"networks\":[{\"id\":\"farm\",\"cidrs\":[\"10.20.0.0/16\",\"fd00:20::/32\"]},"
    "{\"id\":\"lo\",\"cidrs\":[\"127.0.0.0/8\"]}]},"
    "\"policy\":{\"default\":\"tunnel\",\"rules\":["
    "{\"id\":\"a-only\",\"host\":\"api.test\",\"action\":\"intercept\",\"identities\":[\"team-a\"],"
    "\"budget\":{\"requests\":3,\"window_s\":8}},"
    "{\"host\":\"api.test\",\"action\":\"block\",\"identities\":[\"anonymous\",\"farm\"]}]}}";

Test(identity, identify_and_rules)
{
    struct soth_config *c = load(ids_cfg);
    char err[256];
    struct soth_policy *p = soth_policy_new(c, err, sizeof(err));
    cr_assert_not_null(p, "%s", err);
    struct sockaddr_storage far = addr("192.0.2.1"), farm = addr("10.20.3.4"),
                            farm6 = addr("fd00:20::9"), lo = addr("127.0.0.1");
    int id = -1;
    cr_expect_eq(
        soth_policy_identify(p, S("Basic YWxpY2U6c2VjcmV0"), (struct sockaddr *)&farm, &id),
        SOTH_IDENT_OK);
    cr_expect(iov_is(soth_policy_identity_name(p, id), "team-a"));
    /* bob with alice's password: bad; falls back to the network */
    cr_expect_eq(
        soth_policy_identify(p, S("Basic Ym9iOnNlY3JldA=="), (struct sockaddr *)&farm6, &id),
        SOTH_IDENT_BAD_CREDS);
    cr_expect(iov_is(soth_policy_identity_name(p, id), "farm"));
    cr_expect_eq(soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&lo, &id),
                 SOTH_IDENT_OK);
    cr_expect(iov_is(soth_policy_identity_name(p, id), "lo"));
    cr_expect_eq(soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&far, &id),
                 SOTH_IDENT_OK);
    cr_expect_eq(id, SOTH_IDENTITY_ANONYMOUS);
    cr_expect(iov_is(soth_policy_identity_name(p, id), "anonymous"));

    /* Rules limited to identities: team-a intercepts, anonymous and farm are blocked by the
     * second rule (index "1", no id), lo gets the default. */
    int a, farm_id, lo_id;
    soth_policy_identify(p, S("Basic YWxpY2U6c2VjcmV0"), NULL, &a);
    soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&farm, &farm_id);
    soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&lo, &lo_id);
    struct soth_policy_decision d = soth_policy_decide_for(p, S("api.test"), 443, a, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_INTERCEPT);
    cr_expect(iov_is(d.rule_id, "a-only"));
    cr_expect_eq(d.budget_slot, 0);
    d = soth_policy_decide_for(p, S("api.test"), 443, farm_id, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    cr_expect(iov_is(d.rule_id, "1"));
    cr_expect_eq(d.budget_slot, -1);
    d = soth_policy_decide(p, S("api.test"), 443, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_BLOCK);
    d = soth_policy_decide_for(p, S("api.test"), 443, lo_id, NULL);
    cr_expect_eq(d.action, SOTH_ACTION_TUNNEL);
    cr_expect_eq(d.rule_index, -1);
    cr_expect_eq(d.rule_id.len, 0);
    soth_policy_free(p);
    soth_config_unref(c);
}

Test(identity, require)
{
    struct soth_config *c = load(
        "{\"identities\":{\"require\":true,\"users\":[{\"id\":\"team-a\",\"user\":\"alice\","
        "\"password_sha256\":\"" SECRET "\"}],\"networks\":[{\"id\":\"lo\",\"cidrs\":[\"127.0.0.0/"
        "8\"]}]}}");
    struct soth_policy *p = soth_policy_new(c, NULL, 0);
    cr_assert_not_null(p);
    struct sockaddr_storage lo = addr("127.0.0.1"), far = addr("192.0.2.1");
    int id;
    cr_expect_eq(soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&lo, &id),
                 SOTH_IDENT_OK);
    cr_expect_eq(soth_policy_identify(p, SOTH_IOV_NULL, (struct sockaddr *)&far, &id),
                 SOTH_IDENT_REQUIRED);
    /* bad credentials never fall back to the network under require */
    cr_expect_eq(soth_policy_identify(p, S("Basic YWxpY2U6d3Jvbmc="), (struct sockaddr *)&lo, &id),
                 SOTH_IDENT_REQUIRED);
    cr_expect_eq(soth_policy_identify(p, S("Basic YWxpY2U6c2VjcmV0"), (struct sockaddr *)&far, &id),
                 SOTH_IDENT_OK);
    soth_policy_free(p);
    soth_config_unref(c);
}

Test(identity, config_errors)
{
    static const struct {
        const char *json, *err;
    } t[] = {
        {"{\"identities\":{\"users\":[{\"id\":\"a\",\"user\":\"u\",\"password_sha256\":\"" SECRET
         "\"},{\"id\":\"b\",\"user\":\"u\",\"password_sha256\":\"zz\"}]}}",
         "config: identities.users[1].user: user \"u\" is already defined in identities.users[0]"},
        {"{\"identities\":{\"users\":[{\"id\":\"a\",\"user\":\"u\",\"password_sha256\":\"abc\"}]}}",
         "config: identities.users[0].password_sha256: expected 64 hex digits (the SHA-256 of the "
         "password)"},
        {"{\"identities\":{\"users\":[{\"id\":\"anonymous\",\"user\":\"u\",\"password_sha256\":"
         "\"" SECRET "\"}]}}",
         "config: identities.users[0].id: \"anonymous\" is reserved (the identity of a client "
         "nothing names)"},
        {"{\"identities\":{\"networks\":[{\"id\":\"n\",\"cidrs\":[\"10.0.0.1/8\"]}]}}",
         "config: identities.networks[0].cidrs[0]: host bits set in \"10.0.0.1/8\" (write the "
         "network address)"},
        {"{\"identities\":{\"networks\":[{\"id\":\"n\",\"cidrs\":[\"10.0.0.0/8\"]},{\"id\":\"n\","
         "\"cidrs\":[\"::1\"]}]}}",
         "config: identities.networks[1].id: id \"n\" is already defined in "
         "identities.networks[0]"},
        {"{\"policy\":{\"rules\":[{\"host\":\"a\",\"action\":\"block\",\"identities\":[\"x\"]}]}}",
         "config: policy.rules[0].identities[0]: no identity \"x\" in identities.users or "
         "identities.networks"},
        {"{\"policy\":{\"rules\":[{\"host\":\"a\",\"action\":\"block\",\"budget\":{\"window_s\":"
         "5}}]}}",
         "config: policy.rules[0].budget: expected \"requests\", \"bytes\" or both"},
        {"{\"policy\":{\"rules\":[{\"host\":\"a\",\"action\":\"block\",\"id\":\"r\"},{\"host\":"
         "\"b\",\"action\":\"block\",\"id\":\"r\"}]}}",
         "config: policy.rules[1].id: id \"r\" is already used by policy.rules[0]"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct soth_config *c = NULL;
        char err[300] = "";
        cr_expect_lt(soth_config_load_text(t[i].json, strlen(t[i].json), &c, err, sizeof(err)), 0);
        cr_expect_str_eq(err, t[i].err);
        soth_config_unref(c);
    }
}

Test(identity, config_round_trip_keeps_only_the_hash)
{
    struct soth_config *c = load(ids_cfg);
    char *txt = soth_config_to_json(c);
    cr_assert_not_null(txt);
    cr_expect_not_null(strstr(txt, SECRET));
    struct soth_config *c2 = load(txt);
    char *txt2 = soth_config_to_json(c2);
    cr_expect_str_eq(txt, txt2);
    free(txt);
    free(txt2);
    soth_config_unref(c);
    soth_config_unref(c2);
}

/* ---- budget window math */

Test(budget, sliding_window_and_retry_after)
{
    struct soth_config *c = load(ids_cfg);
    struct soth_policy *p = soth_policy_new(c, NULL, 0);
    cr_assert_not_null(p);
    struct soth_budget *b = soth_budget_new(p, 2);
    cr_assert_not_null(b);
    int a;
    soth_policy_identify(p, S("Basic YWxpY2U6c2VjcmV0"), NULL, &a);
    /* requests 3 per 8 s: sub-windows of 1000 ms */
    uint64_t t0 = 1000000;
    uint32_t ra = 0;
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0, true, &ra), SOTH_BUDGET_OK);
    cr_expect_eq(soth_budget_admit(b, 1, a, 0, t0 + 2500, true, &ra), SOTH_BUDGET_OK);
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 3000, true, &ra), SOTH_BUDGET_OK);
    /* the 4th within the window, on either worker, is refused */
    cr_expect_eq(soth_budget_admit(b, 1, a, 0, t0 + 3001, true, &ra), SOTH_BUDGET_REQUESTS);
    /* the oldest count (sub-window t0) leaves at t0 + 8000: 4999 ms -> 5 s */
    cr_expect_eq(ra, 5);
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 7999, true, &ra), SOTH_BUDGET_REQUESTS);
    cr_expect_eq(ra, 1);
    /* another identity has its own count */
    cr_expect_eq(soth_budget_admit(b, 0, SOTH_IDENTITY_ANONYMOUS, 0, t0 + 3001, true, &ra),
                 SOTH_BUDGET_OK);
    /* the first count left: one more fits, then full again */
    cr_expect_eq(soth_budget_admit(b, 1, a, 0, t0 + 8000, true, &ra), SOTH_BUDGET_OK);
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 8001, true, &ra), SOTH_BUDGET_REQUESTS);
    /* a CONNECT that only checks (count_request false) does not count */
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 11000, false, &ra), SOTH_BUDGET_OK);
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 11000, true, &ra), SOTH_BUDGET_OK);
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 11000, true, &ra), SOTH_BUDGET_OK);
    cr_expect_eq(soth_budget_admit(b, 0, a, 0, t0 + 11000, true, &ra), SOTH_BUDGET_REQUESTS);
    cr_expect_eq(soth_budget_rejections(b, 0), 4);
    cr_expect_str_eq(soth_budget_rule(b, 0), "a-only");
    cr_expect(soth_budget_fits(b, p));
    soth_budget_free(b);
    soth_policy_free(p);
    soth_config_unref(c);
}

/* A table's users: its maker, and every policy holding it until the policy's last reference
 * goes (core/engine.c frees a table at 0). */
Test(budget, policies_hold_their_table_until_their_last_reference)
{
    struct soth_config *c = load(ids_cfg);
    struct soth_policy *p = soth_policy_new(c, NULL, 0), *q = soth_policy_new(c, NULL, 0);
    cr_assert(p != NULL && q != NULL);
    struct soth_budget *b = soth_budget_new(p, 1), *b2 = soth_budget_new(p, 1);
    cr_assert(b != NULL && b2 != NULL);
    cr_expect_eq(soth_budget_users(b), 1);
    soth_policy_set_budget(p, b);
    soth_policy_set_budget(q, b);
    cr_expect_eq(soth_budget_users(b), 3);
    cr_expect_eq(soth_policy_budget_table(p), b);
    soth_policy_set_budget(q, b2); /* q moves to another table */
    cr_expect_eq(soth_budget_users(b), 2);
    cr_expect_eq(soth_budget_users(b2), 2);
    soth_budget_release(b); /* the maker lets go */
    soth_policy_ref(p);     /* a flow's reference */
    soth_policy_free(p);
    cr_expect_eq(soth_budget_users(b), 1, "a flow still holds p");
    soth_policy_free(p);
    cr_expect_eq(soth_budget_users(b), 0);
    soth_policy_free(q);
    cr_expect_eq(soth_budget_users(b2), 1);
    soth_budget_free(b);
    soth_budget_free(b2);
    soth_config_unref(c);
}

Test(budget, bytes_limit_lets_the_crossing_transfer_finish)
{
    struct soth_config *c = load("{\"policy\":{\"rules\":[{\"host\":\"*\",\"action\":\"tunnel\","
                                 "\"budget\":{\"bytes\":1000,\"window_s\":4}}]}}");
    struct soth_policy *p = soth_policy_new(c, NULL, 0);
    struct soth_budget *b = soth_budget_new(p, 1);
    cr_assert_not_null(b);
    uint64_t t = 50000;
    cr_expect_eq(soth_budget_admit(b, 0, 0, 0, t, true, NULL), SOTH_BUDGET_OK);
    soth_budget_add_bytes(b, 0, 0, 0, t, 999);
    cr_expect_eq(soth_budget_admit(b, 0, 0, 0, t, true, NULL), SOTH_BUDGET_OK);
    soth_budget_add_bytes(b, 0, 0, 0, t + 10, 5000); /* crosses: it was admitted, it counts */
    cr_expect_eq(soth_budget_admit(b, 0, 0, 0, t + 20, true, NULL), SOTH_BUDGET_BYTES);
    cr_expect_eq(soth_budget_admit(b, 0, 0, 0, t + 4000, true, NULL), SOTH_BUDGET_OK);
    soth_budget_free(b);
    soth_policy_free(p);
    soth_config_unref(c);
}
