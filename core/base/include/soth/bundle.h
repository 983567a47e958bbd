/*
 * SOTH bundles (docs/bundles.md): a bundle v1 file compiled into the config keys it stands
 * for (identities, ignore_hosts, policy). The compiled text is what
 * `soth-mitm --check-bundle FILE` prints and what `--bundle FILE` / `soth.bundle` lays over the
 * config before the config loader validates the whole.
 */
#ifndef SOTH_BUNDLE_H
#define SOTH_BUNDLE_H

#include <stddef.h>

/** Largest bundle file read (bytes); a larger one is an error. */
#define SOTH_BUNDLE_MAX_BYTES (16u * 1024 * 1024)

/** Route passwords printed as "(set)" instead of their value (for --check-bundle output). */
#define SOTH_BUNDLE_F_REDACT 0x1u

/**
 * Compile the bundle file at `path`. On success returns 0 and *json_out, the compiled config
 * fragment as JSON text (malloc'ed, caller frees; keys sorted, two-space indent, no trailing
 * newline): the same bundle bytes always give the same text. On failure returns SOTH_E_CONFIG,
 * *json_out NULL, and one line "bundle: <json path>: <what>" (no newline, control bytes
 * escaped) in err (err_len bytes; err may be NULL when err_len is 0), e.g.
 * "bundle: rules[2].acton: unknown key". `flags`: SOTH_BUNDLE_F_*.
 */
int soth_bundle_compile(const char *path, unsigned flags, char **json_out, char *err,
                        size_t err_len);

/**
 * As soth_bundle_compile, from bundle text in memory (need not be NUL-terminated; tests,
 * fuzzing). JSON syntax errors read "bundle: (text): line L, column C: <jansson message>".
 */
int soth_bundle_compile_text(const char *text, size_t len, unsigned flags, char **json_out,
                             char *err, size_t err_len);

#endif
