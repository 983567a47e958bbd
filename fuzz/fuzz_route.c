/*
 * libFuzzer: the route parser (soth_route_parse, docs/config.md "Routes") on arbitrary text.
 *  - a rejection leaves the route zeroed and gives a printable one-line reason (a fixed
 *    text: the input may hold a password);
 *  - an acceptance is self-consistent: `text` and `shown` parse back to the same host, port
 *    and kind, `text` has no credentials, `shown` no password, and a copy equals the original.
 * ASan/UBSan catch the rest, LeakSanitizer the leaks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/base.h"
#include "soth/route.h"

static void same_target(const struct soth_route *a, const struct soth_route *b)
{
    if (a->kind != b->kind || a->port != b->port || a->host_is_ipv6 != b->host_is_ipv6 ||
        strcmp(a->text, b->text) != 0)
        __builtin_trap();
    if ((a->host == NULL) != (b->host == NULL) ||
        (a->host != NULL && strcmp(a->host, b->host) != 0))
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > SOTH_ROUTE_MAX_TEXT + 8)
        return 0;
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char err[256];
    struct soth_route r;
    if (soth_route_parse(s, &r, err, sizeof(err)) != 0) {
        if (r.text != NULL || r.written != NULL || r.proxy_auth != NULL || err[0] == '\0')
            __builtin_trap();
        for (const unsigned char *p = (const unsigned char *)err; *p; p++)
            if (*p < 0x20 || *p == 0x7f)
                __builtin_trap();
        free(s);
        return 0;
    }
    if (strcmp(r.written, s) != 0 || strlen(r.text) != r.text_len)
        __builtin_trap();
    if (r.kind == SOTH_ROUTE_UPSTREAM_HTTP &&
        (r.host == NULL || strlen(r.host) != r.host_len || r.port == 0))
        __builtin_trap();
    if (r.proxy_auth != NULL &&
        (strncmp(r.proxy_auth, "Basic ", 6) != 0 || strlen(r.proxy_auth) != r.proxy_auth_len))
        __builtin_trap();
    if (strchr(r.text, '@') != NULL)
        __builtin_trap(); /* the text for events and logs holds no credentials */
    struct soth_route t, sh, c;
    if (soth_route_parse(r.text, &t, err, sizeof(err)) != 0 || t.proxy_auth != NULL)
        __builtin_trap();
    same_target(&r, &t);
    if (soth_route_parse(r.shown, &sh, err, sizeof(err)) != 0)
        __builtin_trap();
    same_target(&r, &sh);
    if ((sh.proxy_auth != NULL) != (r.proxy_auth != NULL) || strcmp(sh.shown, r.shown) != 0)
        __builtin_trap();
    if (soth_route_copy(&c, &r) == 0) {
        same_target(&r, &c);
        if ((c.proxy_auth == NULL) != (r.proxy_auth == NULL) ||
            (c.proxy_auth != NULL && strcmp(c.proxy_auth, r.proxy_auth) != 0))
            __builtin_trap();
        soth_route_dispose(&c);
    }
    soth_route_dispose(&sh);
    soth_route_dispose(&t);
    soth_route_dispose(&r);
    free(s);
    return 0;
}
