/*
 * mitmproxy's TLS failure texts (the `error` of a bridge `tls_failed_*` line, which is
 * mitmproxy's conn.error) mapped onto the native failure classes (docs/tls.md, "Failure
 * taxonomy"; the table is in docs/bridge.md). The texts come from mitmproxy's TLS layers
 * (proxy/layers/tls.py: on_handshake_error and its client-side rewording, the "Certificate
 * verify failed: <X509 verify error string>" of an upstream rejection, "OpenSSL Error([...])"
 * for any other OpenSSL error) and OpenSSL's alert and error strings inside them.
 */
#include <stdbool.h>
#include <string.h>

#include "soth/tls.h"

#define C SOTH_TLS_FAIL_CERT_VALIDATION
#define U SOTH_TLS_FAIL_UNKNOWN_CA
#define H SOTH_TLS_FAIL_HANDSHAKE
#define E SOTH_TLS_FAIL_EOF
#define R SOTH_TLS_FAIL_RESET
#define T SOTH_TLS_FAIL_TIMEOUT
#define O SOTH_TLS_FAIL_OTHER

/* First match wins (case-insensitive substring); the class by side: client, upstream. */
static const struct {
    const char *needle;
    unsigned char cls[SOTH_LEG_COUNT];
} table[] = {
    /* Our certificate refused by the client (alert 48), or, upstream, the origin refusing a
     * client certificate (native: handshake). */
    {"alert unknown ca", {U, H}},
    /* Alerts 42-46 (bad_certificate, unsupported_certificate, certificate_revoked,
     * certificate_expired, certificate_unknown). */
    {"alert bad certificate", {C, H}},
    {"alert unsupported certificate", {C, H}},
    {"alert certificate revoked", {C, H}},
    {"alert certificate expired", {C, H}},
    {"alert certificate unknown", {C, H}},
    /* Upstream verification: an unknown issuer (self-signed, private CA, incomplete chain) is
     * unknown_ca as wolfSSL's ASN_NO_SIGNER_E / ASN_SELF_SIGNED_E; everything else about the
     * certificate is cert_validation. */
    {"unable to get local issuer certificate", {U, U}},
    {"unable to get issuer certificate", {U, U}},
    {"unable to verify the first certificate", {U, U}},
    {"self signed certificate", {U, U}},
    {"self-signed certificate", {U, U}},
    {"certificate verify failed", {C, C}},
    {"hostname mismatch", {C, C}},
    {"ip address mismatch", {C, C}},
    /* The client hung up during our handshake (mitmproxy rewords "connection closed" on the
     * client side): natively, a close right after our certificate flight is unknown_ca. */
    {"client disconnected during the handshake", {U, E}},
    /* Close notify, internal error, user canceled: as the native alert table. */
    {"alert close notify", {E, E}},
    {"alert internal error", {O, O}},
    {"alert user canceled", {O, O}},
    {"connection closed", {E, E}}, /* also "connection closed early" */
    {"unexpected eof", {E, E}},
    {"eof occurred", {E, E}},
    {"reset by peer", {R, R}},
    {"connection reset", {R, R}},
    {"broken pipe", {R, R}},
    {"timed out", {T, T}},
    {"timeout", {T, T}},
    /* Version, cipher, protocol: handshake. */
    {"cannot agree on a tls version", {H, H}},
    {"does not speak tls", {H, H}},
    {"cannot parse clienthello", {H, H}},
    {"no shared cipher", {H, H}},
    {"wrong version number", {H, H}},
    {"unsupported protocol", {H, H}},
    {"no protocols available", {H, H}},
    {"no suitable", {H, H}},
    {"no application protocol", {H, H}},
    {"bad record mac", {H, H}},
    {"decryption failed", {H, H}},
    {"record layer failure", {H, H}},
    {"http request", {H, H}}, /* OpenSSL's "http request": plain HTTP on a TLS port */
    {"alert", {H, H}},        /* any other alert (40, 47, 50, 70, 71, 109, 112, 116, 120 ...) */
};

static bool contains_ci(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++) {
        size_t k = 0;
        while (k < n) {
            char c = hay[i + k];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != needle[k])
                break;
            k++;
        }
        if (k == n)
            return true;
    }
    return false;
}

enum soth_tls_fail soth_tls_classify_mitmproxy(enum soth_leg side, const char *text, size_t len)
{
    if (side >= SOTH_LEG_COUNT)
        side = SOTH_LEG_CLIENT;
    /* "The client does not trust the proxy's certificate for HOST (ERR)" and "... may not
     * trust ...": classify ERR only, so that a host name never matches a needle. "does not
     * trust" with an ERR we do not know is still our certificate refused. */
    static const char trust[] = "the proxy's certificate for ";
    bool does_not = false;
    for (size_t i = 0; text != NULL && i + sizeof(trust) - 1 <= len; i++) {
        if (contains_ci(text + i, sizeof(trust) - 1, trust)) {
            does_not = contains_ci(text, i, "does not trust");
            const char *p = memchr(text + i, '(', len - i);
            if (p == NULL)
                return does_not && side == SOTH_LEG_CLIENT ? SOTH_TLS_FAIL_UNKNOWN_CA
                                                           : SOTH_TLS_FAIL_OTHER;
            len -= (size_t)(p - text);
            text = p;
            break;
        }
    }
    if (text == NULL)
        return SOTH_TLS_FAIL_OTHER;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (contains_ci(text, len, table[i].needle))
            return (enum soth_tls_fail)table[i].cls[side];
    return does_not && side == SOTH_LEG_CLIENT ? SOTH_TLS_FAIL_UNKNOWN_CA : SOTH_TLS_FAIL_OTHER;
}
