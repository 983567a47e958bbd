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
