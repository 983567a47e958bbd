/*
 * libFuzzer: the SOTH bundle compiler (docs/bundles.md) on arbitrary bytes, in memory.
 *  - a rejection is one "bundle: " line without control bytes and leaves *out NULL;
 *  - an acceptance is deterministic (the same bytes compile to the same text, redacted or
 *    not), is a JSON object of identities / ignore_hosts / policy only, and the part this
 *    build's config loader knows (the fragment without identities, routes and budgets) loads
 *    as a config: the compiler never passes a glob, regex or action the loader refuses.
 * ASan/UBSan catch the rest, LeakSanitizer the leaks.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/base.h"
#include "soth/bundle.h"
#include "soth/config.h"

static void check_error_line(const char *err, const char *out)
{
    if (strncmp(err, "bundle: ", 8) != 0 || out != NULL)
        __builtin_trap();
    for (const unsigned char *p = (const unsigned char *)err; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            __builtin_trap();
}

static void check_loads(const char *out)
{
    json_t *f = json_loads(out, 0, NULL);
    if (!json_is_object(f))
        __builtin_trap();
    const char *k;
    json_t *v;
    json_object_foreach(f, k, v)
    {
        if (strcmp(k, "identities") != 0 && strcmp(k, "ignore_hosts") != 0 &&
            strcmp(k, "policy") != 0)
            __builtin_trap();
    }
    json_object_del(f, "identities");
    json_t *pol = json_object_get(f, "policy");
    json_object_del(pol, "default_route");
    json_t *rules = json_object_get(pol, "rules");
    size_t i;
    json_array_foreach(rules, i, v)
    {
        json_object_del(v, "identities");
        json_object_del(v, "route");
        json_object_del(v, "budget");
    }
    size_t n_rules = json_array_size(rules);
    char *text = json_dumps(f, 0);
    json_decref(f);
    if (text == NULL)
        return; /* out of memory */
    char err[512];
    struct soth_config *c = NULL;
    if (soth_config_load_text(text, strlen(text), &c, err, sizeof(err)) != 0)
        __builtin_trap();
    if (c->n_rules != n_rules)
        __builtin_trap();
    soth_config_unref(c);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    char *out = (char *)err; /* must come back NULL on failure */
    if (soth_bundle_compile_text((const char *)data, size, 0, &out, err, sizeof(err)) != 0) {
        check_error_line(err, out);
        char *red = (char *)err;
        if (soth_bundle_compile_text((const char *)data, size, SOTH_BUNDLE_F_REDACT, &red, err,
                                     sizeof(err)) == 0)
            __builtin_trap();
        return 0;
    }
    char *again = NULL, *red = NULL;
    if (soth_bundle_compile_text((const char *)data, size, 0, &again, err, sizeof(err)) != 0 ||
        strcmp(out, again) != 0)
        __builtin_trap();
    if (soth_bundle_compile_text((const char *)data, size, SOTH_BUNDLE_F_REDACT, &red, err,
                                 sizeof(err)) != 0)
        __builtin_trap();
    check_loads(out);
    free(out);
    free(again);
    free(red);
    return 0;
}
