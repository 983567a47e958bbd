/*
 * tls/failure_mitm.c: mitmproxy's TLS failure texts (mitmproxy 8.1's proxy/layers/tls.py
 * wording, OpenSSL's alert and X509 verify strings inside them) into the native classes of
 * docs/tls.md, "Failure taxonomy" (the table in docs/bridge.md).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "soth/tls.h"

static const struct {
    enum soth_leg side;
    const char *text;
    enum soth_tls_fail want;
} cases[] = {
    /* client side: our certificate refused */
    {SOTH_LEG_CLIENT,
     "The client does not trust the proxy's certificate for origin.test (tlsv1 alert unknown ca)",
     SOTH_TLS_FAIL_UNKNOWN_CA},
    {SOTH_LEG_CLIENT,
     "The client does not trust the proxy's certificate for origin.test (sslv3 alert bad "
     "certificate)",
     SOTH_TLS_FAIL_CERT_VALIDATION},
    {SOTH_LEG_CLIENT,
     "The client does not trust the proxy's certificate for origin.test (OpenSSL "
     "Error([('SSL routines', '', 'sslv3 alert certificate unknown')]))",
     SOTH_TLS_FAIL_CERT_VALIDATION},
    {SOTH_LEG_CLIENT,
     "The client disconnected during the handshake. If this happens consistently for "
     "origin.test, this may indicate that the client does not trust the proxy's certificate.",
     SOTH_TLS_FAIL_UNKNOWN_CA},
    {SOTH_LEG_CLIENT, "connection closed early", SOTH_TLS_FAIL_EOF},
    {SOTH_LEG_CLIENT,
     "Client and mitmproxy cannot agree on a TLS version to use. You may need to adjust "
     "mitmproxy's tls_version_client_min option.",
     SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_CLIENT, "Cannot parse ClientHello: 474554202f20485454502f312e310d0a",
     SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_CLIENT,
     "The client may not trust the proxy's certificate for origin.test (OpenSSL "
     "Error([('SSL routines', '', 'no shared cipher')]))",
     SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_CLIENT,
     "The client may not trust the proxy's certificate for origin.test (OpenSSL "
     "Error([('SSL routines', '', 'unexpected eof while reading')]))",
     SOTH_TLS_FAIL_EOF},
    {SOTH_LEG_CLIENT,
     "The client may not trust the proxy's certificate for origin.test (OpenSSL "
     "Error([('SSL routines', '', 'tlsv1 alert internal error')]))",
     SOTH_TLS_FAIL_OTHER},
    /* a host name never matches a needle: only the part in parentheses counts */
    {SOTH_LEG_CLIENT,
     "The client may not trust the proxy's certificate for timeout.reset.test (something new)",
     SOTH_TLS_FAIL_OTHER},
    {SOTH_LEG_CLIENT,
     "The client does not trust the proxy's certificate for origin.test (a future wording)",
     SOTH_TLS_FAIL_UNKNOWN_CA},
    /* upstream side */
    {SOTH_LEG_UPSTREAM, "Certificate verify failed: unable to get local issuer certificate",
     SOTH_TLS_FAIL_UNKNOWN_CA},
    {SOTH_LEG_UPSTREAM, "Certificate verify failed: self signed certificate",
     SOTH_TLS_FAIL_UNKNOWN_CA},
    {SOTH_LEG_UPSTREAM, "Certificate verify failed: self-signed certificate in certificate chain",
     SOTH_TLS_FAIL_UNKNOWN_CA},
    {SOTH_LEG_UPSTREAM, "Certificate verify failed: certificate has expired",
     SOTH_TLS_FAIL_CERT_VALIDATION},
    {SOTH_LEG_UPSTREAM, "Certificate verify failed: Hostname mismatch",
     SOTH_TLS_FAIL_CERT_VALIDATION},
    {SOTH_LEG_UPSTREAM, "Certificate verify failed: certificate is not yet valid",
     SOTH_TLS_FAIL_CERT_VALIDATION},
    {SOTH_LEG_UPSTREAM, "tlsv1 alert unknown ca", SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_UPSTREAM, "sslv3 alert bad certificate", SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_UPSTREAM, "The remote server does not speak TLS.", SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_UPSTREAM,
     "The remote server and mitmproxy cannot agree on a TLS version to use. You may need to "
     "adjust mitmproxy's tls_version_server_min option.",
     SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_UPSTREAM, "OpenSSL Error([('SSL routines', '', 'sslv3 alert handshake failure')])",
     SOTH_TLS_FAIL_HANDSHAKE},
    {SOTH_LEG_UPSTREAM, "connection closed", SOTH_TLS_FAIL_EOF},
    {SOTH_LEG_UPSTREAM, "[Errno 104] Connection reset by peer", SOTH_TLS_FAIL_RESET},
    {SOTH_LEG_UPSTREAM, "TimeoutError: timed out", SOTH_TLS_FAIL_TIMEOUT},
    {SOTH_LEG_UPSTREAM, "", SOTH_TLS_FAIL_OTHER},
    {SOTH_LEG_UPSTREAM, "something nobody wrote yet", SOTH_TLS_FAIL_OTHER},
};

Test(tls_failure_mitm, classifies_mitmproxy_texts)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum soth_tls_fail got =
            soth_tls_classify_mitmproxy(cases[i].side, cases[i].text, strlen(cases[i].text));
        cr_expect_eq(got, cases[i].want, "\"%s\" (%s): got %s, want %s", cases[i].text,
                     cases[i].side == SOTH_LEG_CLIENT ? "client" : "upstream",
                     soth_tls_fail_names[got], soth_tls_fail_names[cases[i].want]);
    }
}

Test(tls_failure_mitm, any_bytes_are_safe)
{
    cr_assert_eq(soth_tls_classify_mitmproxy(SOTH_LEG_CLIENT, NULL, 0), SOTH_TLS_FAIL_OTHER);
    char buf[64];
    for (int i = 0; i < 64; i++)
        buf[i] = (char)(i * 37);
    for (size_t n = 0; n <= sizeof(buf); n++)
        (void)soth_tls_classify_mitmproxy(SOTH_LEG_UPSTREAM, buf, n);
    /* the client-trust prefix without its parenthesis */
    const char *t = "The client does not trust the proxy's certificate for x";
    cr_assert_eq(soth_tls_classify_mitmproxy(SOTH_LEG_CLIENT, t, strlen(t)),
                 SOTH_TLS_FAIL_UNKNOWN_CA);
    t = "The client may not trust the proxy's certificate for x";
    cr_assert_eq(soth_tls_classify_mitmproxy(SOTH_LEG_CLIENT, t, strlen(t)), SOTH_TLS_FAIL_OTHER);
}
