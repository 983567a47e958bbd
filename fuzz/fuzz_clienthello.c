/*
 * ClientHello peek: any bytes. Checks beyond "no crash": the result is one of the documented
 * codes; a success consumes at most the input and its iovs lie inside the input or scratch;
 * every strict prefix of an accepted input is INCOMPLETE (the stateless-resume property);
 * re-framing the hello into 1-byte records (with scratch) yields the same fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/tls.h"

static char scratch[SOTH_TLS_MAX_HELLO];
static uint8_t reframed[6 * SOTH_TLS_MAX_HELLO];

static void check_iov(struct soth_iov v, const uint8_t *in, size_t len)
{
    if (v.len == 0)
        return;
    const char *a = v.base, *b = (const char *)in;
    bool in_input = a >= b && a + v.len <= b + len;
    bool in_scratch = a >= scratch && a + v.len <= scratch + sizeof(scratch);
    if (!in_input && !in_scratch)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct soth_tls_client_hello h;
    memset(&h, 0, sizeof(h));
    h.scratch = scratch;
    h.scratch_cap = sizeof(scratch);
    ssize_t r = soth_tls_peek_client_hello(data, size, &h);
    if (r < 0) {
        if (r != SOTH_E_INCOMPLETE && r != SOTH_E_MALFORMED && r != SOTH_E_TOO_LARGE &&
            r != SOTH_TLS_E_NOT_TLS)
            abort();
        return 0;
    }
    if ((size_t)r > size || h.n_alpn > SOTH_TLS_MAX_ALPN)
        abort();
    check_iov(h.sni, data, size);
    for (size_t i = 0; i < h.n_alpn; i++) {
        check_iov(h.alpn[i], data, size);
        if (h.alpn[i].len == 0)
            abort();
    }
    /* a few strict prefixes (all of them would be quadratic) */
    size_t probes[] = {0, 1, 5, (size_t)r / 2, (size_t)r - 1};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        struct soth_tls_client_hello p;
        memset(&p, 0, sizeof(p));
        p.scratch = scratch;
        p.scratch_cap = sizeof(scratch);
        if (probes[i] < (size_t)r &&
            soth_tls_peek_client_hello(data, probes[i], &p) != SOTH_E_INCOMPLETE)
            abort();
    }
    /* single-record hellos: re-frame into 1-byte records, expect the same answer */
    size_t rlen = ((size_t)data[3] << 8) | data[4];
    if ((size_t)r == 5 + rlen && h.hello_len <= rlen && h.hello_len * 6 <= sizeof(reframed)) {
        size_t n = 0;
        for (size_t i = 0; i < h.hello_len; i++) {
            reframed[n++] = 22;
            reframed[n++] = data[1];
            reframed[n++] = data[2];
            reframed[n++] = 0;
            reframed[n++] = 1;
            reframed[n++] = data[5 + i];
        }
        char sni[256];
        size_t sni_len = h.sni.len;
        if (sni_len > sizeof(sni))
            abort();
        memcpy(sni, h.sni.base, sni_len);
        struct soth_tls_client_hello q;
        memset(&q, 0, sizeof(q));
        q.scratch = scratch;
        q.scratch_cap = sizeof(scratch);
        if (soth_tls_peek_client_hello(reframed, n, &q) != (ssize_t)n)
            abort();
        if (q.has_sni != h.has_sni || q.sni.len != sni_len || memcmp(q.sni.base, sni, sni_len) ||
            q.n_alpn != h.n_alpn || q.max_version != h.max_version ||
            q.legacy_version != h.legacy_version)
            abort();
    }
    return 0;
}
