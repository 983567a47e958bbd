/*
 * libFuzzer: the proxy request head parser (proto/connect.c).
 * Input: 2 bytes of settings (mode, limits), then the head bytes.
 * Checks, beyond "no crash, no out-of-bounds read" (every prefix is parsed from its own exact
 * heap copy so ASan sees a read past its end):
 *  - prefix property: every prefix gives SOTH_E_INCOMPLETE or the whole input's result and
 *    reason code; a success gives the same head from the prefix as from the whole;
 *  - a success respects the limits and every iov lies inside the input;
 *  - lenient mode accepts everything strict mode accepts, with the same head.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/connect.h"

static struct soth_proxy_head whole_h, part_h, len_h;

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

struct span {
    const char *buf;
    size_t len;
};

/* Same bytes at the same offset of their inputs, or both the same static text ("/"). */
static bool same_iov(struct soth_iov a, struct span as, struct soth_iov b, struct span bs)
{
    if (a.len != b.len)
        return false;
    if (a.len == 0)
        return true;
    bool a_in = a.base >= as.buf && a.base + a.len <= as.buf + as.len;
    bool b_in = b.base >= bs.buf && b.base + b.len <= bs.buf + bs.len;
    if (a_in != b_in)
        return false;
    if (a_in)
        return a.base - as.buf == b.base - bs.buf;
    return memcmp(a.base, b.base, a.len) == 0;
}

static bool same_head(const struct soth_proxy_head *a, struct span as,
                      const struct soth_proxy_head *b, struct span bs)
{
    if (!same_iov(a->method, as, b->method, bs) || !same_iov(a->target, as, b->target, bs) ||
        !same_iov(a->version, as, b->version, bs) || !same_iov(a->host, as, b->host, bs) ||
        !same_iov(a->scheme, as, b->scheme, bs) || !same_iov(a->path, as, b->path, bs))
        return false;
    if (a->port != b->port || a->is_connect != b->is_connect ||
        a->host_is_ipv6 != b->host_is_ipv6 || a->line_len != b->line_len ||
        a->head_len != b->head_len || a->n_headers != b->n_headers)
        return false;
    for (size_t i = 0; i < a->n_headers; i++)
        if (!same_iov(a->headers[i].name, as, b->headers[i].name, bs) ||
            !same_iov(a->headers[i].value, as, b->headers[i].value, bs))
            return false;
    return true;
}

static bool inside(struct soth_iov v, const char *lo, size_t len)
{
    return v.len == 0 || (v.base >= lo && v.base + v.len <= lo + len);
}

static void check_success(const struct soth_proxy_head *h, const char *buf, size_t size, ssize_t rc,
                          const struct soth_head_limits *lim)
{
    CHECK((size_t)rc <= size && (size_t)rc == h->head_len);
    CHECK(h->head_len <= lim->max_head);
    CHECK(h->line_len <= h->head_len && h->line_len <= lim->max_line + 2);
    CHECK(h->n_headers <= lim->max_headers && h->n_headers <= SOTH_HEAD_MAX_HEADERS);
    CHECK(h->port != 0 && h->host.len > 0 && h->method.len > 0);
    CHECK(h->version.len == 8 && memcmp(h->version.base, "HTTP/1.", 7) == 0);
    CHECK(h->is_connect == (h->scheme.len == 0));
    CHECK(h->is_connect || (h->path.len > 0 && h->path.base[0] == '/'));
    struct soth_iov in[] = {h->method, h->target, h->version, h->host, h->scheme};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++)
        CHECK(inside(in[i], buf, (size_t)rc));
    CHECK(inside(h->host, h->target.base, h->target.len));
    for (size_t i = 0; i < h->n_headers; i++) {
        CHECK(inside(h->headers[i].name, buf, (size_t)rc) && h->headers[i].name.len > 0);
        CHECK(inside(h->headers[i].value, buf, (size_t)rc));
        for (size_t k = 0; k < h->headers[i].value.len; k++) {
            unsigned char c = (unsigned char)h->headers[i].value.base[k];
            CHECK(c >= 0x20 || c == '\t');
            CHECK(c != 0x7f);
        }
    }
    /* host: no control bytes, no brackets, no colon unless IPv6 */
    for (size_t k = 0; k < h->host.len; k++) {
        unsigned char c = (unsigned char)h->host.base[k];
        CHECK(c > 0x20 && c < 0x7f && c != '[' && c != ']');
        CHECK(c != ':' || h->host_is_ipv6);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    enum soth_head_mode mode = data[0] & 1 ? SOTH_HEAD_LENIENT : SOTH_HEAD_STRICT;
    struct soth_head_limits lim = {0};
    if (data[0] & 2) {
        lim.max_line = 8u + (data[1] & 0x3f) * 4u;
        lim.max_head = 16u + (size_t)(data[1] >> 2) * 16u;
        lim.max_headers = 1u + (data[0] >> 3);
    }
    struct soth_head_limits eff = {
        .max_line = lim.max_line ? lim.max_line : 8192,
        .max_head = lim.max_head ? lim.max_head : 65536,
        .max_headers = lim.max_headers && lim.max_headers < SOTH_HEAD_MAX_HEADERS
                           ? lim.max_headers
                           : SOTH_HEAD_MAX_HEADERS,
    };
    const char *buf = (const char *)data + 2;
    size -= 2;

    const char *wcode = NULL, *wdetail = NULL;
    ssize_t whole = soth_proxy_head_parse(buf, size, mode, &lim, &whole_h, &wcode, &wdetail);
    if (whole >= 0) {
        CHECK(wcode == NULL && wdetail == NULL);
        check_success(&whole_h, buf, size, whole, &eff);
    } else if (whole == SOTH_E_INCOMPLETE) {
        CHECK(wcode == NULL);
    } else {
        CHECK(whole == SOTH_E_MALFORMED || whole == SOTH_E_TOO_LARGE);
        CHECK(wcode != NULL && wdetail != NULL && wcode[0] != '\0');
    }

    /* Prefix property, each prefix in an exact-size copy. Bounded: the step grows. */
    for (size_t n = 0; n < size; n += 1 + n / 8) {
        char *pre = malloc(n ? n : 1);
        if (pre == NULL)
            return 0;
        memcpy(pre, buf, n);
        const char *code = NULL, *detail = NULL;
        ssize_t rc = soth_proxy_head_parse(pre, n, mode, &lim, &part_h, &code, &detail);
        if (rc != SOTH_E_INCOMPLETE) {
            CHECK(rc == whole);
            if (rc < 0)
                CHECK(strcmp(code, wcode) == 0);
            else
                CHECK(
                    same_head(&part_h, (struct span){pre, n}, &whole_h, (struct span){buf, size}));
        }
        free(pre);
    }

    /* Lenient is a superset of strict, with the same result. */
    if (mode == SOTH_HEAD_STRICT && whole >= 0) {
        const char *code = NULL, *detail = NULL;
        ssize_t rc =
            soth_proxy_head_parse(buf, size, SOTH_HEAD_LENIENT, &lim, &len_h, &code, &detail);
        CHECK(rc == whole);
        CHECK(same_head(&len_h, (struct span){buf, size}, &whole_h, (struct span){buf, size}));
    }
    return 0;
}
