/* The SOCKS5 greeting and request, byte by byte, and the replies (soth/proto/socks5.h). */
#include <arpa/inet.h>
#include <string.h>

#include "soth/proto/connect.h"
#include "soth/proto/socks5.h"

/* Fields, in wire order, of each message (struct soth_socks5.step). */
enum {
    G_VER = 0,
    G_NMETHODS,
    G_METHODS,
};
enum {
    R_VER = 0,
    R_CMD,
    R_RSV,
    R_ATYP,
    R_DOMAIN_LEN,
    R_ADDR,
    R_PORT_HI,
    R_PORT_LO,
};

void soth_socks5_init(struct soth_socks5 *s)
{
    memset(s, 0, sizeof(*s));
    s->stage = SOTH_SOCKS5_GREETING;
    s->step = G_VER;
}

size_t soth_socks5_reply(uint8_t out[22], enum soth_socks5_rep rep, const uint8_t *addr,
                         size_t addr_len, uint16_t port)
{
    static const uint8_t any[4];
    if (addr == NULL || (addr_len != 4 && addr_len != 16)) {
        addr = any;
        addr_len = 4;
        port = 0;
    }
    out[0] = SOTH_SOCKS5_VERSION;
    out[1] = (uint8_t)rep;
    out[2] = 0;
    out[3] = addr_len == 4 ? SOTH_SOCKS5_ATYP_IPV4 : SOTH_SOCKS5_ATYP_IPV6;
    memcpy(out + 4, addr, addr_len);
    out[4 + addr_len] = (uint8_t)(port >> 8);
    out[5 + addr_len] = (uint8_t)port;
    return 6 + addr_len;
}

static ssize_t refuse_greeting(struct soth_socks5 *s, const char *code, const char *detail)
{
    s->stage = SOTH_SOCKS5_FAILED;
    s->reply[0] = SOTH_SOCKS5_VERSION;
    s->reply[1] = SOTH_SOCKS5_METHOD_NONE;
    s->reply_len = 2;
    s->reason_code = code;
    s->detail = detail;
    return SOTH_E_MALFORMED;
}

static ssize_t refuse_request(struct soth_socks5 *s, enum soth_socks5_rep rep, const char *code,
                              const char *detail)
{
    uint8_t r[22];
    s->stage = SOTH_SOCKS5_FAILED;
    s->reply_len = (uint8_t)soth_socks5_reply(r, rep, NULL, 0, 0);
    memcpy(s->reply, r, s->reply_len);
    s->reason_code = code;
    s->detail = detail;
    return SOTH_E_MALFORMED;
}

/* A domain is checked by the proxy's one authority parser (soth/proto/connect.h), so it is
 * held to the rules of a CONNECT host: no resolver may read as an address ("127.1") a name
 * the policy saw as text. IPv6 text is taken as an IPv6 address: every byte one of an
 * address's own (inet_pton would stop at a NUL), then inet_pton. */
static bool domain_ok(const uint8_t *h, size_t n)
{
    if (memchr(h, ':', n) != NULL) {
        char tmp[256];
        struct in6_addr a6;
        for (size_t i = 0; i < n; i++)
            if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f') ||
                  (h[i] >= 'A' && h[i] <= 'F') || h[i] == ':' || h[i] == '.'))
                return false;
        memcpy(tmp, h, n);
        tmp[n] = '\0';
        return inet_pton(AF_INET6, tmp, &a6) == 1;
    }
    struct soth_authority a;
    if (soth_authority_parse(soth_iov(h, n), false, 1, &a, NULL, NULL) < 0)
        return false;
    return a.host.len == n && !a.host_is_ipv6; /* the whole text is the host: no '[' */
}

static ssize_t greeting_byte(struct soth_socks5 *s, uint8_t c, enum soth_socks5_event *ev)
{
    switch (s->step) {
    case G_VER:
        if (c != SOTH_SOCKS5_VERSION)
            return refuse_greeting(s, "socks5_bad_version", "greeting version is not 5");
        s->step = G_NMETHODS;
        return 0;
    case G_NMETHODS:
        if (c == 0)
            return refuse_greeting(s, "socks5_no_acceptable_method", "greeting offers no method");
        s->left = c;
        s->step = G_METHODS;
        return 0;
    default: /* G_METHODS */
        if (c == SOTH_SOCKS5_METHOD_NOAUTH)
            s->noauth = true;
        if (--s->left > 0)
            return 0;
        if (!s->noauth)
            return refuse_greeting(s, "socks5_no_acceptable_method",
                                   "greeting does not offer \"no authentication required\"");
        s->stage = SOTH_SOCKS5_REQUEST;
        s->step = R_VER;
        *ev = SOTH_SOCKS5_EV_GREETING;
        return 0;
    }
}

static ssize_t request_done(struct soth_socks5 *s, enum soth_socks5_event *ev)
{
    if (s->atyp == SOTH_SOCKS5_ATYP_DOMAIN) {
        if (!domain_ok(s->addr, s->addr_len))
            return refuse_request(s, SOTH_SOCKS5_REP_GENERAL_FAILURE, "bad_target",
                                  "request domain is not a host name");
    }
    if (s->cmd != SOTH_SOCKS5_CMD_CONNECT)
        return refuse_request(s, SOTH_SOCKS5_REP_CMD_NOT_SUPPORTED, "socks5_command_not_supported",
                              "only CONNECT is supported");
    if (s->port == 0)
        return refuse_request(s, SOTH_SOCKS5_REP_GENERAL_FAILURE, "invalid_port",
                              "request port is 0");
    s->stage = SOTH_SOCKS5_DONE;
    *ev = SOTH_SOCKS5_EV_REQUEST;
    return 0;
}

static ssize_t request_byte(struct soth_socks5 *s, uint8_t c, enum soth_socks5_event *ev)
{
    switch (s->step) {
    case R_VER:
        if (c != SOTH_SOCKS5_VERSION)
            return refuse_request(s, SOTH_SOCKS5_REP_GENERAL_FAILURE, "socks5_bad_version",
                                  "request version is not 5");
        s->step = R_CMD;
        return 0;
    case R_CMD:
        s->cmd = c;
        s->step = R_RSV;
        return 0;
    case R_RSV:
        if (c != 0)
            return refuse_request(s, SOTH_SOCKS5_REP_GENERAL_FAILURE, "socks5_bad_request",
                                  "request reserved byte is not 0");
        s->step = R_ATYP;
        return 0;
    case R_ATYP:
        s->atyp = c;
        if (c == SOTH_SOCKS5_ATYP_IPV4 || c == SOTH_SOCKS5_ATYP_IPV6) {
            s->addr_len = c == SOTH_SOCKS5_ATYP_IPV4 ? 4 : 16;
            s->left = s->addr_len;
            s->step = R_ADDR;
        } else if (c == SOTH_SOCKS5_ATYP_DOMAIN) {
            s->step = R_DOMAIN_LEN;
        } else {
            return refuse_request(s, SOTH_SOCKS5_REP_ATYP_NOT_SUPPORTED, "socks5_bad_address_type",
                                  "request address type is not 1, 3 or 4");
        }
        return 0;
    case R_DOMAIN_LEN:
        if (c == 0)
            return refuse_request(s, SOTH_SOCKS5_REP_GENERAL_FAILURE, "bad_target",
                                  "request domain is empty");
        s->addr_len = c;
        s->left = c;
        s->step = R_ADDR;
        return 0;
    case R_ADDR:
        s->addr[s->addr_len - s->left] = c;
        if (--s->left == 0)
            s->step = R_PORT_HI;
        return 0;
    case R_PORT_HI:
        s->port = (uint16_t)(c << 8);
        s->step = R_PORT_LO;
        return 0;
    default: /* R_PORT_LO */
        s->port |= c;
        return request_done(s, ev);
    }
}

ssize_t soth_socks5_feed(struct soth_socks5 *s, const char *p, size_t len,
                         enum soth_socks5_event *ev)
{
    *ev = SOTH_SOCKS5_EV_NONE;
    size_t i = 0;
    while (i < len && *ev == SOTH_SOCKS5_EV_NONE) {
        ssize_t rc;
        if (s->stage == SOTH_SOCKS5_GREETING)
            rc = greeting_byte(s, (uint8_t)p[i], ev);
        else if (s->stage == SOTH_SOCKS5_REQUEST)
            rc = request_byte(s, (uint8_t)p[i], ev);
        else
            break;
        if (rc < 0)
            return rc;
        i++;
    }
    if (s->stage == SOTH_SOCKS5_FAILED)
        return SOTH_E_MALFORMED;
    return (ssize_t)i;
}

size_t soth_socks5_host(const struct soth_socks5 *s, char out[256], bool *is_ipv6)
{
    *is_ipv6 = false;
    if (s->atyp == SOTH_SOCKS5_ATYP_DOMAIN) {
        memcpy(out, s->addr, s->addr_len);
        out[s->addr_len] = '\0';
        *is_ipv6 = memchr(s->addr, ':', s->addr_len) != NULL;
        return s->addr_len;
    }
    int af = s->atyp == SOTH_SOCKS5_ATYP_IPV6 ? AF_INET6 : AF_INET;
    *is_ipv6 = af == AF_INET6;
    if (inet_ntop(af, s->addr, out, 256) == NULL)
        return 0;
    return strlen(out);
}
