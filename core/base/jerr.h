/*
 * One error line for the config loader and the bundle compiler (docs/config.md and
 * docs/bundles.md, "Errors"): "<what>: <json path>: <reason>", control bytes escaped so the
 * line stays one line whatever keys and values hold. Internal to core/base.
 */
#ifndef SOTH_BASE_JERR_H
#define SOTH_BASE_JERR_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

struct soth_jerr {
    char *buf; /* where the line goes; len 0 = nowhere */
    size_t len;
    bool oom; /* an allocation failed; the caller reports "out of memory" once it returns */
};

/** Write "<what>: <path>: <fmt...>" into e->buf; returns SOTH_E_CONFIG. */
int soth_jerr_vfail(struct soth_jerr *e, const char *what, const char *path, const char *fmt,
                    va_list ap) __attribute__((format(printf, 4, 0)));

/** "object", "array", "string", "integer", "number", "boolean", "null". */
const char *soth_json_type_name(const json_t *v);

/** A short rendering of a JSON value for error messages (never for secrets). */
void soth_json_brief(const json_t *v, char *out, size_t cap);

#endif
