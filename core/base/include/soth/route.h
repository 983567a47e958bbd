/*
 * How the proxy reaches a flow's target (docs/config.md "Routes"): `direct`, or through an
 * HTTP proxy, `upstream:http://[USER:PASSWORD@]HOST:PORT`. Parsed once at config load; the
 * credentials live only in `written` and `proxy_auth`, which are never printed or logged.
 */
#ifndef SOTH_ROUTE_H
#define SOTH_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum soth_route_kind { SOTH_ROUTE_DIRECT = 0, SOTH_ROUTE_UPSTREAM_HTTP, SOTH_ROUTE_KIND_COUNT };

/** Longest route text accepted (bytes); longer ones are a config error. */
#define SOTH_ROUTE_MAX_TEXT 1024
/** Longest user name and password (bytes each, as written, escapes included). */
#define SOTH_ROUTE_MAX_CRED 255
/** Longest upstream proxy host name (bytes, without brackets), as DNS allows. */
#define SOTH_ROUTE_MAX_HOST 253

struct soth_route {
    enum soth_route_kind kind;
    char *text;    /* without credentials: "direct" or "upstream:http://HOST:PORT" (events, logs) */
    char *shown;   /* for the printed config: text with "USER:(set)@" when credentials are set */
    char *written; /* as written, credentials included: never print or log it */
    char *host;    /* upstream: name, IPv4 or IPv6 literal (no brackets); else NULL */
    bool host_is_ipv6;
    uint16_t port;    /* upstream: 1..65535 */
    char *proxy_auth; /* upstream with credentials: "Basic <base64(user:password)>", else NULL */
    size_t text_len;  /* strlen(text) */
    size_t host_len;  /* strlen(host) */
    size_t proxy_auth_len;
};

/**
 * Parse a route: "direct", or "upstream:http://" [USER [":" PASSWORD] "@"] HOST ":" PORT with
 * an optional "/" at the end. USER and PASSWORD are URL userinfo (RFC 3986 3.2.1: unreserved,
 * sub-delims and %XX escapes, decoded here); the decoded user must hold no ':' and neither may
 * hold a control byte (RFC 7617). HOST is a name (letters, digits, '-', '.', '_'), an IPv4
 * literal or an IPv6 literal in brackets; PORT is 1..65535 and required. USER and PASSWORD are
 * at most SOTH_ROUTE_MAX_CRED bytes each as written, so `shown` (USER:(set)@) stays parseable. On
 * success returns 0 and fills out (release with soth_route_dispose); on failure returns
 * SOTH_E_CONFIG with the reason in err (never quoting a credential) and out zeroed (dispose is a
 * no-op).
 */
int soth_route_parse(const char *text, struct soth_route *out, char *err, size_t err_len);
/** A deep copy of src into dst (0, or SOTH_E_NOMEM with dst zeroed). */
int soth_route_copy(struct soth_route *dst, const struct soth_route *src);
void soth_route_dispose(struct soth_route *r);

/** Is this route through an upstream proxy? */
static inline bool soth_route_is_upstream(const struct soth_route *r)
{
    return r != NULL && r->kind == SOTH_ROUTE_UPSTREAM_HTTP;
}

#endif
