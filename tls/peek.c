/*
 * ClientHello peek (RFC 8446 4.1.2, RFC 6066 3, RFC 7301 3.1): SNI, ALPN and versions from
 * the first bytes of a client connection, before any TLS object exists. Stateless: the
 * record headers are walked on every call and the hello is parsed once it is complete.
 */
#include "tls_int.h"

#include <string.h>

#define REC_HDR         5
#define REC_MAX         16384 /* RFC 8446 5.1: TLSPlaintext.length <= 2^14 */
#define CT_HANDSHAKE    22
#define HS_CLIENT_HELLO 1
#define EXT_SNI         0
#define EXT_ALPN        16
#define EXT_VERSIONS    43

static int parse_sni(struct rd e, struct soth_tls_client_hello *h)
{
    uint16_t list_len;
    struct rd list;
    if (!rd_u16(&e, &list_len) || list_len != e.n || list_len == 0)
        return SOTH_E_MALFORMED;
    list = e;
    bool seen = false;
    while (list.n > 0) {
        uint8_t type;
        uint16_t len;
        struct rd name;
        if (!rd_u8(&list, &type) || !rd_u16(&list, &len) || !rd_sub(&list, len, &name))
            return SOTH_E_MALFORMED;
        if (type != 0)
            continue; /* unknown name types are skipped (RFC 6066 3) */
        if (seen || name.n == 0)
            return SOTH_E_MALFORMED; /* one host_name only, never empty */
        seen = true;
        /*
         * A name that is not a DNS name ("127.0.0.1:8443" from clients that send the Host
         * header, an IP literal RFC 6066 forbids) is ignored like an absent SNI: the leaf is
         * for the CONNECT host, as mitmproxy and squid do.
         */
        if (!tls_name_is_dns((const char *)name.p, name.n, false))
            continue;
        h->has_sni = true;
        h->sni = soth_iov(name.p, name.n);
    }
    return 0;
}

static int parse_alpn(struct rd e, struct soth_tls_client_hello *h)
{
    uint16_t list_len;
    if (!rd_u16(&e, &list_len) || list_len != e.n || list_len < 2)
        return SOTH_E_MALFORMED;
    h->has_alpn = true;
    while (e.n > 0) {
        uint8_t len;
        struct rd proto;
        if (!rd_u8(&e, &len) || len == 0 || !rd_sub(&e, len, &proto))
            return SOTH_E_MALFORMED;
        if (h->n_alpn == SOTH_TLS_MAX_ALPN) {
            h->alpn_truncated = true;
            continue;
        }
        h->alpn[h->n_alpn++] = soth_iov(proto.p, proto.n);
    }
    return 0;
}

static int parse_versions(struct rd e, struct soth_tls_client_hello *h)
{
    uint8_t len;
    if (!rd_u8(&e, &len) || len != e.n || len < 2 || (len & 1) != 0)
        return SOTH_E_MALFORMED;
    h->has_supported_versions = true;
    uint16_t best = 0;
    while (e.n > 0) {
        uint16_t v;
        rd_u16(&e, &v);
        if ((v & 0x0f0f) == 0x0a0a)
            continue; /* GREASE (RFC 8701) */
        if (v > best)
            best = v;
    }
    if (best != 0)
        h->max_version = best;
    return 0;
}

/* body: the ClientHello message without its 4-byte handshake header. */
static int parse_hello(const uint8_t *body, size_t len, struct soth_tls_client_hello *h)
{
    struct rd r = {body, len};
    uint8_t sid_len, comp_len;
    uint16_t suites_len, ext_len;
    uint32_t seen = 0;

    if (!rd_u16(&r, &h->legacy_version) || !rd_skip(&r, 32))
        return SOTH_E_MALFORMED;
    if ((h->legacy_version >> 8) != 3)
        return SOTH_E_MALFORMED;
    h->max_version = h->legacy_version;
    if (!rd_u8(&r, &sid_len) || sid_len > 32 || !rd_skip(&r, sid_len))
        return SOTH_E_MALFORMED;
    if (!rd_u16(&r, &suites_len) || suites_len < 2 || (suites_len & 1) != 0)
        return SOTH_E_MALFORMED;
    h->ciphers = soth_iov(r.p, suites_len);
    if (!rd_skip(&r, suites_len))
        return SOTH_E_MALFORMED;
    if (!rd_u8(&r, &comp_len) || comp_len < 1 || !rd_skip(&r, comp_len))
        return SOTH_E_MALFORMED;
    if (r.n == 0)
        return 0; /* TLS 1.2 allows a hello without extensions */
    if (!rd_u16(&r, &ext_len) || ext_len != r.n)
        return SOTH_E_MALFORMED;
    h->exts = soth_iov(r.p, ext_len);
    while (r.n > 0) {
        uint16_t type, elen;
        struct rd e;
        int rc = 0;
        if (!rd_u16(&r, &type) || !rd_u16(&r, &elen) || !rd_sub(&r, elen, &e))
            return SOTH_E_MALFORMED;
        uint32_t bit = type == EXT_SNI ? 1u : type == EXT_ALPN ? 2u : type == EXT_VERSIONS ? 4u : 0;
        if (bit != 0) {
            if (seen & bit)
                return SOTH_E_MALFORMED; /* RFC 8446 4.2: no extension twice */
            seen |= bit;
        }
        if (type == EXT_SNI)
            rc = parse_sni(e, h);
        else if (type == EXT_ALPN)
            rc = parse_alpn(e, h);
        else if (type == EXT_VERSIONS)
            rc = parse_versions(e, h);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * The 4-byte handshake header of a ClientHello: *need = the whole message length (header
 * included), or SOTH_E_MALFORMED (another message type, too short for the fixed fields) /
 * SOTH_E_TOO_LARGE (over SOTH_TLS_MAX_HELLO).
 */
static int hello_header(const uint8_t hdr[4], size_t *need)
{
    if (hdr[0] != HS_CLIENT_HELLO)
        return SOTH_E_MALFORMED;
    size_t mlen = ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    if (mlen + 4 > SOTH_TLS_MAX_HELLO)
        return SOTH_E_TOO_LARGE;
    if (mlen < 2 + 32 + 1 + 2 + 2 + 1 + 1)
        return SOTH_E_MALFORMED;
    *need = mlen + 4;
    return 0;
}

ssize_t soth_tls_peek_client_hello(const void *buf, size_t len, struct soth_tls_client_hello *info)
{
    const uint8_t *b = buf;
    size_t off = 0;     /* start of the current record */
    size_t hs_have = 0; /* handshake bytes seen so far */
    size_t hs_need = 0; /* 4 + hello length, once known */
    uint8_t hdr[4];     /* the handshake header may itself straddle records */
    const uint8_t *msg = NULL;
    struct soth_tls_client_hello h;

    if (len == 0)
        return SOTH_E_INCOMPLETE;
    if (b[0] != CT_HANDSHAKE)
        return SOTH_TLS_E_NOT_TLS;
    if (len >= 2 && b[1] != 3)
        return SOTH_TLS_E_NOT_TLS;

    memset(&h, 0, sizeof(h));
    h.scratch = info->scratch;
    h.scratch_cap = info->scratch_cap;

    for (;;) {
        if (len - off < REC_HDR) {
            /* Validate what we have of the header so garbage fails early. */
            if (len - off >= 1 && b[off] != CT_HANDSHAKE)
                return SOTH_E_MALFORMED;
            if (len - off >= 2 && b[off + 1] != 3)
                return SOTH_E_MALFORMED;
            return SOTH_E_INCOMPLETE;
        }
        if (b[off] != CT_HANDSHAKE || b[off + 1] != 3)
            return SOTH_E_MALFORMED; /* anything but handshake records before the hello ends */
        size_t rlen = ((size_t)b[off + 3] << 8) | b[off + 4];
        if (rlen == 0 || rlen > REC_MAX)
            return SOTH_E_MALFORMED;
        if (off == 0)
            h.record_version = (uint16_t)((b[1] << 8) | b[2]);
        const uint8_t *frag = b + off + REC_HDR;
        size_t avail = len - off - REC_HDR;
        if (avail > rlen)
            avail = rlen;

        /* The 4-byte handshake header, possibly from several records. */
        size_t i = 0;
        while (hs_have < 4 && i < avail)
            hdr[hs_have++] = frag[i++];
        if (hs_have == 4 && hs_need == 0) {
            int rc = hello_header(hdr, &hs_need);
            if (rc < 0)
                return rc;
            if (off == 0 && rlen >= hs_need) {
                /* The usual case: the whole hello in the first record, parsed in place. */
                if (avail < rlen)
                    return SOTH_E_INCOMPLETE; /* the whole record: the engine replays it */
                msg = frag;
                hs_have = hs_need;
                off += REC_HDR + rlen;
                break;
            }
            if (h.scratch == NULL || h.scratch_cap < hs_need)
                return SOTH_E_TOO_LARGE;
            memcpy(h.scratch, hdr, 4);
        }
        if (hs_need != 0) {
            size_t take = avail - i;
            if (take > hs_need - hs_have)
                take = hs_need - hs_have;
            if (hs_have >= 4)
                memcpy(h.scratch + hs_have, frag + i, take);
            hs_have += take;
        }
        if (avail < rlen)
            return SOTH_E_INCOMPLETE;
        off += REC_HDR + rlen;
        if (hs_need != 0 && hs_have == hs_need) {
            msg = (const uint8_t *)h.scratch;
            break;
        }
    }

    int rc = parse_hello(msg + 4, hs_need - 4, &h);
    if (rc < 0)
        return rc;
    h.hello_len = hs_need;
    *info = h;
    return (ssize_t)off;
}

ssize_t soth_tls_parse_client_hello_msg(const void *msg, size_t len,
                                        struct soth_tls_client_hello *info)
{
    const uint8_t *m = msg;
    size_t need = 0;
    struct soth_tls_client_hello h;

    if (len == 0)
        return SOTH_E_INCOMPLETE;
    if (m[0] != HS_CLIENT_HELLO)
        return SOTH_E_MALFORMED; /* known from the first byte: fail early */
    if (len < 4)
        return SOTH_E_INCOMPLETE;
    int rc = hello_header(m, &need);
    if (rc < 0)
        return rc;
    if (len < need)
        return SOTH_E_INCOMPLETE;
    memset(&h, 0, sizeof(h));
    h.scratch = info->scratch;
    h.scratch_cap = info->scratch_cap;
    rc = parse_hello(m + 4, need - 4, &h);
    if (rc < 0)
        return rc;
    h.hello_len = need;
    *info = h;
    return (ssize_t)need;
}
