/* Process-wide set-up, the start-up self check and name helpers. */
#include "tls_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "soth/blockcache.h"

/*
 * The session-ticket key: drawn once before workers start, then read-only. Every server
 * WOLFSSL_CTX of every worker encrypts tickets with it (ticket callback in conn.c), so a
 * client resumes on whichever worker it lands. It lives only in memory: a restart invalidates
 * outstanding tickets (clients fall back to a full handshake).
 */
static struct tls_ticket_key g_ticket_key;
static bool g_inited;

const struct tls_ticket_key *tls_ticket_key(void)
{
    return &g_ticket_key;
}

int soth_tls_global_init(void)
{
    WC_RNG rng;

    if (g_inited)
        return 0;
    /* wolfSSL grows and shrinks a connection's record buffers around every record it reads or
     * writes: from a per-thread block cache those are no malloc per request
     * (docs/performance.md, "Allocations per request"). Set before anything is allocated. */
    if (wolfSSL_SetAllocators(soth_bc_malloc, soth_bc_free, soth_bc_realloc) != 0)
        return SOTH_E_TLS;
    if (wolfSSL_Init() != WOLFSSL_SUCCESS)
        return SOTH_E_TLS;
    if (wc_InitRng(&rng) != 0)
        return SOTH_E_TLS;
    int rc = wc_RNG_GenerateBlock(&rng, g_ticket_key.name, sizeof(g_ticket_key.name));
    if (rc == 0)
        rc = wc_RNG_GenerateBlock(&rng, g_ticket_key.key, sizeof(g_ticket_key.key));
    wc_FreeRng(&rng);
    if (rc != 0)
        return SOTH_E_TLS;
    g_inited = true;
    return 0;
}

void soth_tls_global_cleanup(void)
{
    if (!g_inited)
        return;
    wolfSSL_Cleanup();
    memset(&g_ticket_key, 0, sizeof(g_ticket_key));
    g_inited = false;
}

void soth_tls_self_check(struct soth_tls_caps *caps, char *line, size_t line_len)
{
#ifdef WOLFSSL_AESNI
    caps->aesni_built = true;
#else
    caps->aesni_built = false;
#endif
#ifdef WOLFSSL_SP_X86_64_ASM
    caps->sp_asm_built = true;
#else
    caps->sp_asm_built = false;
#endif
    caps->aesni_cpu = __builtin_cpu_supports("aes");
    caps->version = wolfSSL_lib_version();
    if (line == NULL || line_len == 0)
        return;
    snprintf(line, line_len, "wolfSSL %s: AES-GCM %s, P-256 %s", caps->version,
             caps->aesni_built && caps->aesni_cpu ? "AES-NI"
             : caps->aesni_built                  ? "portable C (this CPU lacks AES-NI)"
                                                  : "portable C (built without AES-NI)",
             caps->sp_asm_built ? "SP x86-64 assembly" : "generic C");
}

const char *const soth_tls_fail_names[SOTH_TLS_FAIL_COUNT] = {
    [SOTH_TLS_FAIL_UNKNOWN_CA] = "unknown_ca",
    [SOTH_TLS_FAIL_CERT_VALIDATION] = "cert_validation",
    [SOTH_TLS_FAIL_HANDSHAKE] = "handshake",
    [SOTH_TLS_FAIL_TIMEOUT] = "timeout",
    [SOTH_TLS_FAIL_EOF] = "eof",
    [SOTH_TLS_FAIL_RESET] = "reset",
    [SOTH_TLS_FAIL_OTHER] = "other",
};

/* ---- names */

int tls_name_normalise(struct soth_iov name, char *out, size_t *out_len)
{
    const char *p = name.base;
    size_t n = name.len;

    if (n >= 2 && p[0] == '[' && p[n - 1] == ']') {
        p++;
        n -= 2;
    }
    if (n == 0 || n > SOTH_TLS_MAX_NAME_LEN + 2)
        return SOTH_E_MALFORMED;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        out[i] = ch;
    }
    out[n] = '\0';
    *out_len = n;
    return 0;
}

int tls_name_ip(const char *name, size_t len, uint8_t ip[16])
{
    char tmp[64];

    if (len == 0 || len >= sizeof(tmp))
        return 0;
    memcpy(tmp, name, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET, tmp, ip) == 1)
        return 4;
    if (inet_pton(AF_INET6, tmp, ip) == 1)
        return 16;
    return 0;
}

bool tls_name_is_dns(const char *name, size_t len, bool allow_wildcard)
{
    size_t label = 0;

    if (len == 0 || len > SOTH_TLS_MAX_NAME_LEN)
        return false;
    if (allow_wildcard && len > 2 && name[0] == '*' && name[1] == '.') {
        name += 2;
        len -= 2;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (ch == '.') {
            if (label == 0)
                return false; /* empty label */
            label = 0;
            continue;
        }
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        if (!ok || ++label > 63)
            return false;
    }
    return label > 0; /* no trailing dot */
}

const char *tls_wolf_err_name(int err)
{
    switch (err) {
    case ASN_NO_SIGNER_E:
        return "ASN_NO_SIGNER_E";
    case ASN_AFTER_DATE_E:
        return "ASN_AFTER_DATE_E";
    case ASN_BEFORE_DATE_E:
        return "ASN_BEFORE_DATE_E";
    case ASN_SIG_CONFIRM_E:
        return "ASN_SIG_CONFIRM_E";
    case ASN_SELF_SIGNED_E:
        return "ASN_SELF_SIGNED_E";
    case ASN_PATHLEN_INV_E:
        return "ASN_PATHLEN_INV_E";
    case DOMAIN_NAME_MISMATCH:
        return "DOMAIN_NAME_MISMATCH";
    case IPADDR_MISMATCH:
        return "IPADDR_MISMATCH";
    case VERIFY_CERT_ERROR:
        return "VERIFY_CERT_ERROR";
    case FATAL_ERROR:
        return "FATAL_ERROR";
    case VERSION_ERROR:
        return "VERSION_ERROR";
    case MATCH_SUITE_ERROR:
        return "MATCH_SUITE_ERROR";
    case SOCKET_PEER_CLOSED_E:
        return "SOCKET_PEER_CLOSED_E";
    case SOCKET_ERROR_E:
        return "SOCKET_ERROR_E";
    case UNKNOWN_ALPN_PROTOCOL_NAME_E:
        return "UNKNOWN_ALPN_PROTOCOL_NAME_E";
    case PARSE_ERROR:
        return "PARSE_ERROR";
    case BUFFER_ERROR:
        return "BUFFER_ERROR";
    case ECC_CURVE_ERROR:
        return "ECC_CURVE_ERROR";
    case BAD_KEY_SHARE_DATA:
        return "BAD_KEY_SHARE_DATA";
    case SIG_VERIFY_E:
        return "SIG_VERIFY_E";
    case VERIFY_FINISHED_ERROR:
        return "VERIFY_FINISHED_ERROR";
    case VERIFY_MAC_ERROR:
        return "VERIFY_MAC_ERROR";
    case DECRYPT_ERROR:
        return "DECRYPT_ERROR";
    case OUT_OF_ORDER_E:
        return "OUT_OF_ORDER_E";
    case EXT_MISSING:
        return "EXT_MISSING";
    case NO_PEER_CERT:
        return "NO_PEER_CERT";
    case MEMORY_E:
        return "MEMORY_E";
    default:
        return "wolfSSL error";
    }
}
