/* tls.h mirrors observe.h's event enums without including it: the values must match. */
#include "soth/observe.h"
#include "soth/tls.h"

#include <criterion/criterion.h>
#include <string.h>

Test(tls_enums, failure_reasons_match_observe)
{
    cr_assert_eq((int)SOTH_TLS_FAIL_UNKNOWN_CA, (int)SOTH_TLSF_UNKNOWN_CA);
    cr_assert_eq((int)SOTH_TLS_FAIL_CERT_VALIDATION, (int)SOTH_TLSF_CERT_VALIDATION);
    cr_assert_eq((int)SOTH_TLS_FAIL_HANDSHAKE, (int)SOTH_TLSF_HANDSHAKE);
    cr_assert_eq((int)SOTH_TLS_FAIL_TIMEOUT, (int)SOTH_TLSF_TIMEOUT);
    cr_assert_eq((int)SOTH_TLS_FAIL_EOF, (int)SOTH_TLSF_EOF);
    cr_assert_eq((int)SOTH_TLS_FAIL_RESET, (int)SOTH_TLSF_RESET);
    cr_assert_eq((int)SOTH_TLS_FAIL_OTHER, (int)SOTH_TLSF_OTHER);
    cr_assert_eq((int)SOTH_TLS_FAIL_COUNT, (int)SOTH_TLSF_COUNT);
    for (int i = 0; i < SOTH_TLS_FAIL_COUNT; i++)
        cr_assert_str_eq(soth_tls_fail_names[i], soth_tls_failure_names[i]);
}

Test(tls_enums, providers_match_observe)
{
    cr_assert_eq((int)SOTH_TLS_PROVIDER_NATIVE, (int)SOTH_TLSP_NATIVE);
    cr_assert_eq((int)SOTH_TLS_PROVIDER_MITMPROXY, (int)SOTH_TLSP_MITMPROXY);
    cr_assert_eq((int)SOTH_TLS_PROVIDER_HUDSUCKER, (int)SOTH_TLSP_HUDSUCKER);
    cr_assert_eq((int)SOTH_TLS_PROVIDER_COUNT, (int)SOTH_TLSP_COUNT);
}
