/*
 * libFuzzer: Proxy-Authorization Basic credentials (soth_policy_basic_parse) and identity
 * resolution (soth_policy_identify, docs/soth.md "Identity"). Input: a header value.
 * Differential: the parser must agree with a plain reference decoder (strict base64 with
 * padding only at the end, split at the first ':'); identify must name team-a exactly for
 * "alice:secret" and never crash or read past the value (copied to an exact-size buffer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/config.h"
#include "soth/policy.h"

static struct soth_policy *policy(void)
{
    static struct soth_policy *p;
    if (p != NULL)
        return p;
    static const char cfg[] =
        "{\"identities\":{\"users\":[{\"id\":\"team-a\",\"user\":\"alice\",\"password_sha256\":"
        "\"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"}],"
        "\"networks\":[{\"id\":\"lo\",\"cidrs\":[\"127.0.0.0/8\"]}]}}";
    struct soth_config *c = NULL;
    char err[256];
    if (soth_config_load_text(cfg, sizeof(cfg) - 1, &c, err, sizeof(err)) < 0)
        abort();
    p = soth_policy_new(c, err, sizeof(err));
    soth_config_unref(c);
    if (p == NULL)
        abort();
    return p;
}

static int b64(unsigned char c)
{
    const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *q = c != 0 ? strchr(a, c) : NULL;
    return q != NULL ? (int)(q - a) : -1;
}

/* Reference: 1 and the decoded user/pass on success, 0 on malformed input. */
static int ref(const char *v, size_t n, char *out, size_t *on)
{
    size_t i = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    if (n - i < 6 || strncasecmp(v + i, "basic", 5) != 0 || (v[i + 5] != ' ' && v[i + 5] != '\t'))
        return 0;
    i += 6;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (n > i && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == i || (n - i) % 4 != 0)
        return 0;
    size_t o = 0, pad = 0;
    uint32_t acc = 0;
    for (size_t k = i; k < n; k++) {
        int x;
        if (v[k] == '=') {
            if (n - k > 2 || (k - i) % 4 < 2)
                return 0;
            x = 0;
            pad++;
        } else {
            if (pad > 0)
                return 0;
            x = b64((unsigned char)v[k]);
            if (x < 0)
                return 0;
        }
        acc = acc << 6 | (uint32_t)x;
        if ((k - i) % 4 == 3) {
            out[o++] = (char)(acc >> 16);
            out[o++] = (char)(acc >> 8);
            out[o++] = (char)acc;
            acc = 0;
        }
    }
    o -= pad;
    if (memchr(out, ':', o) == NULL)
        return 0;
    *on = o;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *v = malloc(size ? size : 1);
    if (v == NULL)
        return 0;
    if (size)
        memcpy(v, data, size);
    struct soth_iov val = soth_iov(v, size);
    char buf[4096], rbuf[4096];
    struct soth_iov u, p;
    size_t rn = 0;
    int rc = soth_policy_basic_parse(val, buf, sizeof(buf), &u, &p);
    int want = ref(v, size, rbuf, &rn);
    if ((rc == 0) != (want == 1))
        abort();
    if (rc == 0) {
        if (u.len + 1 + p.len != rn || memcmp(u.base, rbuf, u.len) != 0 || rbuf[u.len] != ':' ||
            memcmp(p.base, rbuf + u.len + 1, p.len) != 0)
            abort();
    }
    int id = -1;
    enum soth_ident_result r = soth_policy_identify(policy(), val, NULL, &id);
    struct soth_iov name = soth_policy_identity_name(policy(), id);
    bool alice = rc == 0 && u.len == 5 && memcmp(u.base, "alice", 5) == 0 && p.len == 6 &&
                 memcmp(p.base, "secret", 6) == 0;
    if (alice != (r == SOTH_IDENT_OK && name.len == 6 && memcmp(name.base, "team-a", 6) == 0))
        abort();
    free(v);
    return 0;
}
