/*
 * The failure taxonomy (tls_failure_reason of docs/events.md): wolfSSL errors, the peer's alerts
 * and what we had sent, mapped onto unknown_ca / cert_validation / handshake / timeout / eof /
 * reset / other. docs/tls.md has the table.
 */
#include "tls_int.h"

#include <stdio.h>
#include <string.h>

static const char *alert_name(int code)
{
    switch (code) {
    case 0:
        return "close_notify";
    case 10:
        return "unexpected_message";
    case 20:
        return "bad_record_mac";
    case 22:
        return "record_overflow";
    case 40:
        return "handshake_failure";
    case 42:
        return "bad_certificate";
    case 43:
        return "unsupported_certificate";
    case 44:
        return "certificate_revoked";
    case 45:
        return "certificate_expired";
    case 46:
        return "certificate_unknown";
    case 47:
        return "illegal_parameter";
    case 48:
        return "unknown_ca";
    case 49:
        return "access_denied";
    case 50:
        return "decode_error";
    case 51:
        return "decrypt_error";
    case 70:
        return "protocol_version";
    case 71:
        return "insufficient_security";
    case 80:
        return "internal_error";
    case 86:
        return "inappropriate_fallback";
    case 90:
        return "user_canceled";
    case 109:
        return "missing_extension";
    case 110:
        return "unsupported_extension";
    case 112:
        return "unrecognized_name";
    case 116:
        return "certificate_required";
    case 120:
        return "no_application_protocol";
    default:
        return "alert";
    }
}

/* A fatal alert the peer sent us, by the side that received it. */
static enum soth_tls_fail classify_alert(enum soth_leg side, int code)
{
    switch (code) {
    case 0:
        return SOTH_TLS_FAIL_EOF; /* close_notify in the middle of the handshake */
    case 80:
    case 90:
        return SOTH_TLS_FAIL_OTHER;
    case 48:
        /* From a client: it does not trust our CA. From an origin: about our (absent)
         * client certificate, which is a handshake matter. */
        return side == SOTH_LEG_CLIENT ? SOTH_TLS_FAIL_UNKNOWN_CA : SOTH_TLS_FAIL_HANDSHAKE;
    case 42:
    case 43:
    case 44:
    case 45:
    case 46:
        return side == SOTH_LEG_CLIENT ? SOTH_TLS_FAIL_CERT_VALIDATION : SOTH_TLS_FAIL_HANDSHAKE;
    default:
        return SOTH_TLS_FAIL_HANDSHAKE;
    }
}

/* Our own verification of the origin's certificate. */
static bool classify_verify_error(int e, enum soth_tls_fail *out)
{
    switch (e) {
    case ASN_NO_SIGNER_E: /* no trusted issuer: self-signed, private CA, incomplete chain */
    case ASN_SELF_SIGNED_E:
        *out = SOTH_TLS_FAIL_UNKNOWN_CA;
        return true;
    case ASN_AFTER_DATE_E:
    case ASN_BEFORE_DATE_E:
    case DOMAIN_NAME_MISMATCH:
    case IPADDR_MISMATCH:
    case ASN_SIG_CONFIRM_E:
    case ASN_SIG_OID_E:
    case ASN_SIG_KEY_E:
    case ASN_SIG_HASH_E:
    case ASN_PATHLEN_INV_E:
    case ASN_PATHLEN_SIZE_E:
    case ASN_NAME_INVALID_E:
    case ASN_CRIT_EXT_E:
    case ASN_UNKNOWN_OID_E:
    case CRL_CERT_REVOKED:
    case OCSP_CERT_REVOKED:
    case VERIFY_CERT_ERROR:
    case EXTKEYUSE_AUTH_E:
    case KEYUSE_SIGNATURE_E:
        *out = SOTH_TLS_FAIL_CERT_VALIDATION;
        return true;
    default:
        return false;
    }
}

static enum soth_tls_fail classify_error(int e)
{
    switch (e) {
    case MEMORY_E:
    case MEMORY_ERROR:
    case WOLFSSL_CBIO_ERR_GENERAL:
        return SOTH_TLS_FAIL_OTHER;
    case SOCKET_PEER_CLOSED_E:
    case WOLFSSL_ERROR_ZERO_RETURN:
        return SOTH_TLS_FAIL_EOF;
    case SOCKET_ERROR_E:
        return SOTH_TLS_FAIL_RESET;
    default:
        /* Version mismatch, no shared cipher/group, parse and MAC errors: the handshake. */
        return SOTH_TLS_FAIL_HANDSHAKE;
    }
}

static bool received_fatal_alert(const struct soth_tls_conn *c, int *code)
{
    WOLFSSL_ALERT_HISTORY h;
    if (c->ssl == NULL)
        return false;
    memset(&h, 0, sizeof(h));
    wolfSSL_get_alert_history(c->ssl, &h);
    if (h.last_rx.code < 0) {
        if (c->clear_alert < 0)
            return false;
        *code = c->clear_alert; /* a cleartext alert wolfSSL could not parse (conn.c) */
        return true;
    }
    /* close_notify is a warning-level alert but still ends a handshake. */
    if (h.last_rx.level != 2 && h.last_rx.code != 0)
        return false;
    *code = h.last_rx.code;
    return true;
}

int soth_tls_conn_failure(const struct soth_tls_conn *c, enum soth_tls_fail *reason, char *detail,
                          size_t detail_len)
{
    char tmp[8];
    int alert = -1;
    enum soth_tls_fail r;

    if (c->state != CONN_FAILED)
        return SOTH_E_STATE;
    if (detail == NULL || detail_len == 0) {
        detail = tmp;
        detail_len = sizeof(tmp);
    }
    int e = c->fail_ret;
    bool got_alert = received_fatal_alert(c, &alert);

    if (c->side == SOTH_LEG_UPSTREAM && classify_verify_error(e, &r)) {
        long v = c->ssl != NULL ? wolfSSL_get_verify_result(c->ssl) : 0;
        if (v != 0 && strncmp(wolfSSL_X509_verify_cert_error_string(v), "unknown", 7) == 0)
            v = 0;
        snprintf(detail, detail_len, "upstream certificate rejected: %s (%d)%s%s%s%s",
                 tls_wolf_err_name(e), e, v != 0 ? ", " : "",
                 v != 0 ? wolfSSL_X509_verify_cert_error_string(v) : "",
                 c->rejected != NULL ? ": " : "", c->rejected != NULL ? c->rejected : "");
    } else if (got_alert) {
        r = classify_alert(c->side, alert);
        snprintf(detail, detail_len, "alert %d %s received from the %s", alert, alert_name(alert),
                 c->side == SOTH_LEG_CLIENT ? "client" : "upstream");
    } else if (c->side == SOTH_LEG_CLIENT && e == PARSE_ERROR && c->sent_server_hello &&
               c->state != CONN_ESTABLISHED) {
        /*
         * A TLS 1.3 client that rejects our certificate answers our flight with an encrypted
         * alert (unknown_ca from curl/OpenSSL 3.0) that wolfSSL 5.5.4 fails to parse at this
         * point of the server handshake (-306, seen in tests/integration/test_tls.py): the same
         * rejection as the alert-less hang-up below.
         */
        r = SOTH_TLS_FAIL_UNKNOWN_CA;
        snprintf(detail, detail_len,
                 "client answered our certificate with a record wolfSSL could not parse "
                 "(wolfSSL %d %s): TLS 1.3 alert",
                 e, tls_wolf_err_name(e));
    } else {
        r = classify_error(e);
        char buf[WOLFSSL_MAX_ERROR_SZ];
        wolfSSL_ERR_error_string_n((unsigned long)(e < 0 ? -e : e), buf, sizeof(buf));
        snprintf(detail, detail_len, "wolfSSL %d %s: %s", e, tls_wolf_err_name(e), buf);
    }
    if (reason != NULL)
        *reason = r;
    return 0;
}

enum soth_tls_fail soth_tls_conn_classify_transport(const struct soth_tls_conn *c,
                                                    enum soth_tls_transport kind, char *detail,
                                                    size_t detail_len)
{
    static const char *const kind_names[] = {"closed the connection", "reset the connection",
                                             "timed out"};
    char tmp[8];
    int alert = -1;
    const char *peer = c->side == SOTH_LEG_CLIENT ? "client" : "upstream";

    if (detail == NULL || detail_len == 0) {
        detail = tmp;
        detail_len = sizeof(tmp);
    }
    if (c->state == CONN_FAILED) {
        enum soth_tls_fail r = SOTH_TLS_FAIL_OTHER;
        soth_tls_conn_failure(c, &r, detail, detail_len);
        return r;
    }
    if (kind != SOTH_TLS_TRANSPORT_TIMEOUT && received_fatal_alert(c, &alert) && alert != 0) {
        snprintf(detail, detail_len, "alert %d %s received from the %s", alert, alert_name(alert),
                 peer);
        return classify_alert(c->side, alert);
    }
    if (kind != SOTH_TLS_TRANSPORT_TIMEOUT && c->side == SOTH_LEG_CLIENT && c->sent_server_hello &&
        c->state != CONN_ESTABLISHED && !soth_tls_conn_resumed(c)) {
        /* TLS 1.3 clients (and some 1.2 ones) that reject our certificate just hang up. */
        snprintf(detail, detail_len, "client %s after our certificate without an alert",
                 kind_names[kind]);
        return SOTH_TLS_FAIL_UNKNOWN_CA;
    }
    switch (kind) {
    case SOTH_TLS_TRANSPORT_EOF:
        snprintf(detail, detail_len, "%s %s during the handshake", peer, kind_names[kind]);
        return SOTH_TLS_FAIL_EOF;
    case SOTH_TLS_TRANSPORT_RESET:
        snprintf(detail, detail_len, "%s %s during the handshake", peer, kind_names[kind]);
        return SOTH_TLS_FAIL_RESET;
    case SOTH_TLS_TRANSPORT_TIMEOUT:
    default:
        snprintf(detail, detail_len, "%s handshake %s", peer,
                 kind_names[SOTH_TLS_TRANSPORT_TIMEOUT]);
        return SOTH_TLS_FAIL_TIMEOUT;
    }
}
