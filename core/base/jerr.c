/* Error lines of the config loader and the bundle compiler (core/base/jerr.h). */
#include "jerr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/base.h"

int soth_jerr_vfail(struct soth_jerr *e, const char *what, const char *path, const char *fmt,
                    va_list ap)
{
    char raw[1024];
    int n = snprintf(raw, sizeof(raw), "%s: %s: ", what, path);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(raw))
        vsnprintf(raw + n, sizeof(raw) - (size_t)n, fmt, ap);
    if (e->buf == NULL || e->len == 0)
        return SOTH_E_CONFIG;
    /* One line whatever the keys and values hold (a newline in a key, say): control bytes are
     * escaped. */
    size_t o = 0;
    for (const unsigned char *r = (const unsigned char *)raw; *r; r++) {
        char esc[5];
        size_t k = 1;
        esc[0] = (char)*r;
        if (*r < 0x20 || *r == 0x7f)
            k = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", *r);
        if (o + k >= e->len)
            break;
        memcpy(e->buf + o, esc, k);
        o += k;
    }
    e->buf[o] = '\0';
    return SOTH_E_CONFIG;
}

const char *soth_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "value";
}

void soth_json_brief(const json_t *v, char *out, size_t cap)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (s == NULL) {
        snprintf(out, cap, "?");
        return;
    }
    if (strlen(s) > 40)
        snprintf(out, cap, "%.37s...", s);
    else
        snprintf(out, cap, "%s", s);
    free(s);
}
