/* libFuzzer: the JSON config loader on arbitrary text (no files). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/base.h"
#include "soth/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct soth_config *c = NULL;
    if (soth_config_load_text((const char *)data, size, &c, err, sizeof(err)) == 0) {
        char *js = soth_config_to_json(c);
        /* The effective config must load again to the same effective config. */
        struct soth_config *c2 = NULL;
        if (js == NULL || soth_config_load_text(js, strlen(js), &c2, err, sizeof(err)) != 0)
            __builtin_trap();
        char *js2 = soth_config_to_json(c2);
        if (strcmp(js, js2) != 0)
            __builtin_trap();
        free(js);
        free(js2);
        soth_config_unref(c2);
        soth_config_unref(c);
    }
    return 0;
}
