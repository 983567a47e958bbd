/*
 * policy.c keeps private copies of enum soth_decision_reason (modules do not include each
 * other's headers); this suite reaches them by including the source and checks they match
 * soth/observe.h, at compile time and at run time.
 */
#include <criterion/criterion.h>

#include "soth/observe.h"

#include "../../policy/policy.c"
#include "../../policy/budget.c" /* the budget table a policy holds */

_Static_assert((int)REASON_IGNORE_HOSTS == (int)SOTH_REASON_IGNORE_HOSTS, "ignore_hosts numbering");
_Static_assert((int)REASON_POLICY_RULE == (int)SOTH_REASON_POLICY_RULE, "policy_rule numbering");
_Static_assert((int)REASON_TLS_LEARNING == (int)SOTH_REASON_TLS_LEARNING, "tls_learning numbering");
_Static_assert((int)REASON_DEFAULT == (int)SOTH_REASON_DEFAULT, "default numbering");
_Static_assert((int)REASON_HTTP3_PASSTHROUGH == (int)SOTH_REASON_HTTP3_PASSTHROUGH,
               "http3 numbering");
_Static_assert(SOTH_REASON_COUNT == 5, "a new decision reason needs a policy constant");

Test(policy_reasons, private_constants_match_observe)
{
    static const struct {
        int mine;
        enum soth_decision_reason theirs;
        const char *name;
    } t[] = {
        {REASON_IGNORE_HOSTS, SOTH_REASON_IGNORE_HOSTS, "ignore_hosts"},
        {REASON_POLICY_RULE, SOTH_REASON_POLICY_RULE, "policy_rule"},
        {REASON_TLS_LEARNING, SOTH_REASON_TLS_LEARNING, "tls_learning"},
        {REASON_DEFAULT, SOTH_REASON_DEFAULT, "default"},
        {REASON_HTTP3_PASSTHROUGH, SOTH_REASON_HTTP3_PASSTHROUGH, "http3_passthrough"},
    };
    for (size_t i = 0; i < SOTH_ARRAY_LEN(t); i++) {
        cr_expect_eq(t[i].mine, (int)t[i].theirs, "%s", t[i].name);
        cr_expect_str_eq(soth_decision_reason_names[t[i].mine], t[i].name);
    }
}
