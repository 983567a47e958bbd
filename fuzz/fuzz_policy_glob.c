/*
 * libFuzzer: host glob matching (soth_policy_glob_match). Input: glob NUL host.
 * Differential: the linear matcher must agree with a plain recursive definition of the
 * documented semantics (labels split on '.', a "*" label takes one or more labels, other
 * labels compare ASCII case-insensitively, one trailing dot ignored, empty sides never match).
 * Glob and host are copied to exact-size buffers so ASan sees any read past their ends.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/policy.h"

#define MAX_LABELS 24 /* the reference is exponential in stars: keep it small */

struct labels {
    size_t n;
    struct soth_iov l[MAX_LABELS];
};

static bool split(struct soth_iov s, struct labels *out)
{
    out->n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= s.len; i++) {
        if (i == s.len || s.base[i] == '.') {
            if (out->n == MAX_LABELS)
                return false;
            out->l[out->n++] = soth_iov(s.base + start, i - start);
            start = i + 1;
        }
    }
    return true;
}

static bool eq_nocase(struct soth_iov a, struct soth_iov b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++) {
        unsigned char x = (unsigned char)a.base[i], y = (unsigned char)b.base[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

static bool ref(const struct labels *g, size_t gi, const struct labels *h, size_t hi)
{
    if (gi == g->n)
        return hi == h->n;
    if (g->l[gi].len == 1 && g->l[gi].base[0] == '*') {
        for (size_t k = hi + 1; k <= h->n; k++)
            if (ref(g, gi + 1, h, k))
                return true;
        return false;
    }
    return hi < h->n && eq_nocase(g->l[gi], h->l[hi]) && ref(g, gi + 1, h, hi + 1);
}

static int ref_match(struct soth_iov g, struct soth_iov h)
{
    if (g.len > 0 && g.base[g.len - 1] == '.')
        g.len--;
    if (h.len > 0 && h.base[h.len - 1] == '.')
        h.len--;
    if (g.len == 0 || h.len == 0)
        return 0;
    struct labels gl, hl;
    if (!split(g, &gl) || !split(h, &hl))
        return -1; /* too many labels for the reference */
    size_t stars = 0;
    for (size_t i = 0; i < gl.n; i++)
        stars += gl.l[i].len == 1 && gl.l[i].base[0] == '*';
    if (stars > 6)
        return -1;
    return ref(&gl, 0, &hl, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = memchr(data, 0, size);
    if (sep == NULL)
        return 0;
    size_t gl = (size_t)(sep - data), hl = size - gl - 1;
    char *g = malloc(gl ? gl : 1), *h = malloc(hl ? hl : 1);
    if (g == NULL || h == NULL)
        goto out;
    memcpy(g, data, gl);
    memcpy(h, sep + 1, hl);
    bool m = soth_policy_glob_match(soth_iov(g, gl), soth_iov(h, hl));
    int r = ref_match(soth_iov(g, gl), soth_iov(h, hl));
    if (r >= 0 && m != (r == 1))
        __builtin_trap();
    /* A glob matches itself unless it has a "*" label (which needs at least one label). */
    if (gl > 0 && memchr(g, '*', gl) == NULL && !(gl == 1 && g[0] == '.') &&
        !soth_policy_glob_match(soth_iov(g, gl), soth_iov(g, gl)))
        __builtin_trap();
out:
    free(g);
    free(h);
    return 0;
}
