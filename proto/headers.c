/* Header field lookup (soth/proto/headers.h). */
#include "soth/proto/headers.h"

#include <string.h>

struct soth_iov soth_header_get(const struct soth_header *h, size_t n, const char *name)
{
    size_t k = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (soth_iov_eq_ci(h[i].name, name, k))
            return h[i].value;
    return SOTH_IOV_NULL;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

struct soth_iov soth_iov_trim_ows(struct soth_iov v)
{
    while (v.len > 0 && is_ows(v.base[0])) {
        v.base++;
        v.len--;
    }
    while (v.len > 0 && is_ows(v.base[v.len - 1]))
        v.len--;
    return v;
}

/* The part of v before the first `stop` byte (all of v when there is none). */
static struct soth_iov until(struct soth_iov v, char stop)
{
    const char *e = v.len > 0 ? memchr(v.base, stop, v.len) : NULL;
    if (e != NULL)
        v.len = (size_t)(e - v.base);
    return v;
}

bool soth_media_type_is(struct soth_iov value, const char *type)
{
    if (value.base == NULL)
        return false;
    return soth_iov_is_ci(soth_iov_trim_ows(until(value, ';')), type);
}

bool soth_list_has(struct soth_iov value, const char *token)
{
    size_t k = strlen(token);
    while (value.len > 0) {
        struct soth_iov el = until(value, ',');
        size_t used = el.len < value.len ? el.len + 1 : el.len;
        value.base += used;
        value.len -= used;
        el = soth_iov_trim_ows(until(el, ';'));
        if (soth_iov_eq_ci(el, token, k))
            return true;
    }
    return false;
}

/* The end of the list element starting at v.base: the next comma outside a quoted string. */
static size_t element_len(struct soth_iov v)
{
    bool quoted = false;
    for (size_t i = 0; i < v.len; i++) {
        char c = v.base[i];
        if (quoted && c == '\\')
            i++; /* quoted-pair (RFC 9110 5.6.4) */
        else if (c == '"')
            quoted = !quoted;
        else if (c == ',' && !quoted)
            return i;
    }
    return v.len; /* the last element, or an unterminated quoted string */
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/*
 * Whether an Alt-Svc entry's protocol-id (the token before "=", percent-encoded ALPN,
 * RFC 7838 3) is "h3" or "h3-...". ALPN ids are compared byte for byte: "H3" is another one.
 */
static bool alt_is_h3(struct soth_iov entry)
{
    struct soth_iov id = soth_iov_trim_ows(until(until(entry, ';'), '='));
    char dec[3];
    size_t n = 0, i = 0;
    while (i < id.len && n < sizeof(dec)) {
        int hi = -1, lo = -1;
        if (id.base[i] == '%' && i + 2 < id.len) {
            hi = hex_digit(id.base[i + 1]);
            lo = hex_digit(id.base[i + 2]);
        }
        if (hi >= 0 && lo >= 0) {
            dec[n++] = (char)(hi << 4 | lo);
            i += 3;
        } else {
            dec[n++] = id.base[i++];
        }
    }
    if (n < 2 || dec[0] != 'h' || dec[1] != '3')
        return false;
    if (n == 2)
        return i == id.len; /* exactly "h3" */
    return dec[2] == '-';
}

ssize_t soth_alt_svc_strip(struct soth_iov value, char *out, size_t cap, struct soth_iov *removed,
                           size_t max, size_t *n_removed)
{
    size_t len = 0, nrem = 0;
    const char *prev_end = NULL; /* end of the last non-empty entry */
    struct soth_iov rest = value;

    if (cap < value.len)
        return SOTH_E_TOO_LARGE;
    while (rest.base != NULL && rest.len > 0) {
        size_t k = element_len(rest);
        struct soth_iov el = soth_iov_trim_ows(soth_iov(rest.base, k));
        size_t used = k < rest.len ? k + 1 : k;
        rest.base += used;
        rest.len -= used;
        if (el.len == 0)
            continue;
        if (alt_is_h3(el)) {
            if (nrem < max)
                removed[nrem] = el;
            nrem++;
        } else {
            /* the separator that preceded this entry (comma and whitespace) comes along */
            if (len > 0) {
                size_t sep = (size_t)(el.base - prev_end);
                memcpy(out + len, prev_end, sep);
                len += sep;
            }
            memcpy(out + len, el.base, el.len);
            len += el.len;
        }
        prev_end = el.base + el.len;
    }
    *n_removed = nrem;
    if (nrem == 0) {
        if (value.len > 0)
            memcpy(out, value.base, value.len);
        return (ssize_t)value.len;
    }
    return (ssize_t)len;
}
