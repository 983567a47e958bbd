/*
 * soth/proto/socks5.h: what a SOCKS5 client sends the proxy in socks5 mode (RFC 1928;
 * docs/socks5.md): the method greeting, then one request. Incremental: bytes may arrive one at
 * a time, the parser keeps what it needs in its own object (at most one domain name) and never
 * allocates. The replies the proxy sends are built here too, so the engine only queues bytes.
 *
 *   greeting  VER(5) NMETHODS(1..255) METHODS[NMETHODS]
 *   request   VER(5) CMD RSV(0) ATYP DST.ADDR DST.PORT
 *             ATYP 1: 4 bytes IPv4; 3: LEN(1..255) then a domain name; 4: 16 bytes IPv6
 *   reply     VER(5) REP RSV(0) ATYP BND.ADDR BND.PORT
 *
 * Only the method "no authentication required" (0x00) is offered: a greeting without it is
 * answered X'05 FF' (no acceptable methods). Only CONNECT is served: BIND and UDP ASSOCIATE are
 * refused with REP 0x07 once the request is complete.
 */
#ifndef SOTH_PROTO_SOCKS5_H
#define SOTH_PROTO_SOCKS5_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

#define SOTH_SOCKS5_VERSION       5
#define SOTH_SOCKS5_METHOD_NOAUTH 0x00
#define SOTH_SOCKS5_METHOD_NONE   0xff /* no acceptable methods (RFC 1928 3) */

enum soth_socks5_cmd {
    SOTH_SOCKS5_CMD_CONNECT = 1,
    SOTH_SOCKS5_CMD_BIND = 2,
    SOTH_SOCKS5_CMD_UDP_ASSOCIATE = 3,
};

enum soth_socks5_atyp {
    SOTH_SOCKS5_ATYP_IPV4 = 1,
    SOTH_SOCKS5_ATYP_DOMAIN = 3,
    SOTH_SOCKS5_ATYP_IPV6 = 4,
};

/** REP values of a reply (RFC 1928 6). */
enum soth_socks5_rep {
    SOTH_SOCKS5_REP_SUCCEEDED = 0x00,
    SOTH_SOCKS5_REP_GENERAL_FAILURE = 0x01,
    SOTH_SOCKS5_REP_NOT_ALLOWED = 0x02, /* connection not allowed by ruleset */
    SOTH_SOCKS5_REP_NET_UNREACHABLE = 0x03,
    SOTH_SOCKS5_REP_HOST_UNREACHABLE = 0x04,
    SOTH_SOCKS5_REP_REFUSED = 0x05,
    SOTH_SOCKS5_REP_TTL_EXPIRED = 0x06,
    SOTH_SOCKS5_REP_CMD_NOT_SUPPORTED = 0x07,
    SOTH_SOCKS5_REP_ATYP_NOT_SUPPORTED = 0x08,
};

enum soth_socks5_stage {
    SOTH_SOCKS5_GREETING = 0, /* reading the method greeting */
    SOTH_SOCKS5_REQUEST,      /* greeting answered: reading the request */
    SOTH_SOCKS5_DONE,         /* a CONNECT request is complete */
    SOTH_SOCKS5_FAILED,       /* refused: send reply_len bytes of reply, then close */
};

/** What a call to soth_socks5_feed completed. */
enum soth_socks5_event {
    SOTH_SOCKS5_EV_NONE = 0, /* every byte consumed, the message is not complete yet */
    SOTH_SOCKS5_EV_GREETING, /* greeting complete: send soth_socks5_method_reply() */
    SOTH_SOCKS5_EV_REQUEST,  /* CONNECT request complete: target in atyp/addr/port */
};

/** The parser's state; soth_socks5_init sets every field. */
struct soth_socks5 {
    uint8_t stage;           /* enum soth_socks5_stage */
    uint8_t step;            /* field being read inside the current message (private) */
    uint8_t left;            /* bytes still expected of that field (private) */
    bool noauth;             /* the greeting offered method 0x00 */
    uint8_t cmd;             /* the request's CMD */
    uint8_t atyp;            /* enum soth_socks5_atyp */
    uint8_t addr_len;        /* bytes of addr: 4, 16, or the domain's length */
    uint8_t reply_len;       /* FAILED: bytes of reply to send */
    uint16_t port;           /* DST.PORT, host order */
    uint8_t addr[255];       /* DST.ADDR (network order for IPv4/IPv6, the name for a domain) */
    uint8_t reply[10];       /* FAILED: the refusal (method reply X'05 FF', or a request reply) */
    const char *reason_code; /* FAILED: stable snake_case code (static) */
    const char *detail;      /* FAILED: a short sentence (static) */
};

/** Ready for a greeting. */
void soth_socks5_init(struct soth_socks5 *s);

/**
 * Feed p[0..len). Returns the bytes consumed: the call stops right after a greeting or a
 * request completes (*ev says which; bytes after a request belong to the connection), else
 * consumes everything with *ev = SOTH_SOCKS5_EV_NONE. Returns SOTH_E_MALFORMED when the input is
 * refused (stage FAILED; reply, reason_code and detail set), decided at the first byte that
 * makes it so, except that the command, the domain and the port are judged once the request
 * is complete (an unsupported command is answered after the whole request, RFC 1928 6).
 * After DONE it consumes nothing; after FAILED it returns SOTH_E_MALFORMED again. The result
 * never depends on how the input was split.
 *
 * Reason codes:
 *   "socks5_bad_version"          VER other than 5 (greeting: X'05 FF'; request: REP 0x01)
 *   "socks5_no_acceptable_method" NMETHODS 0, or no method the proxy offers (X'05 FF')
 *   "socks5_bad_request"          RSV other than 0 (REP 0x01)
 *   "socks5_bad_address_type"     ATYP other than 1, 3, 4 (REP 0x08)
 *   "bad_target"                  a domain that is empty or not a host name (the rules of
 *                                 soth/proto/connect.h; IPv6 text is taken as IPv6) (REP 0x01)
 *   "invalid_port"                DST.PORT 0 (REP 0x01)
 *   "socks5_command_not_supported" CMD other than CONNECT (REP 0x07)
 */
ssize_t soth_socks5_feed(struct soth_socks5 *s, const char *p, size_t len,
                         enum soth_socks5_event *ev);

/** The method selection message for a completed greeting: X'05 00'. */
static inline void soth_socks5_method_reply(uint8_t out[2])
{
    out[0] = SOTH_SOCKS5_VERSION;
    out[1] = SOTH_SOCKS5_METHOD_NOAUTH;
}

/**
 * Write a reply into out: VER REP RSV ATYP BND.ADDR BND.PORT for the bound address addr
 * (addr_len 4 for IPv4 or 16 for IPv6, network order; port in host order). addr NULL writes
 * 0.0.0.0:0 (failures). Returns its length: 10 or 22.
 */
size_t soth_socks5_reply(uint8_t out[22], enum soth_socks5_rep rep, const uint8_t *addr,
                         size_t addr_len, uint16_t port);

/**
 * The request's host as text into out: a domain as sent (or an IPv6 literal sent as a domain,
 * as written), an IPv4 address dotted, an IPv6 address without brackets (*is_ipv6 set).
 * Returns its length (at most 255). Only after SOTH_SOCKS5_EV_REQUEST.
 */
size_t soth_socks5_host(const struct soth_socks5 *s, char out[256], bool *is_ipv6);

#endif
