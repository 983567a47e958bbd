/*
 * libFuzzer: the config loader on arbitrary bytes, in memory (no files).
 *  - as JSON config text: a rejection is one "config: " line and leaves *out NULL; an
 *    acceptance prints an effective config that loads back to the very same text;
 *  - as a command-line value for every flag, and for soth_hostport_parse: same rules.
 * ASan/UBSan catch the rest, LeakSanitizer the leaks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/base.h"
#include "soth/config.h"

static void check_error_line(const char *err, const struct soth_config *c)
{
    if (strncmp(err, "config: ", 8) != 0 || c != NULL)
        __builtin_trap();
    for (const unsigned char *p = (const unsigned char *)err; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            __builtin_trap();
}

static void check_round_trip(struct soth_config *c)
{
    char err[512];
    char *js = soth_config_to_json(c);
    struct soth_config *c2 = NULL;
    if (js == NULL || soth_config_load_text(js, strlen(js), &c2, err, sizeof(err)) != 0)
        __builtin_trap();
    char *js2 = soth_config_to_json(c2);
    if (js2 == NULL || strcmp(js, js2) != 0)
        __builtin_trap();
    free(js);
    free(js2);
    /* hand it over through a slot, as SIGHUP does */
    struct soth_config_slot slot;
    soth_config_slot_init(&slot);
    soth_config_slot_publish(&slot, soth_config_ref(c2));
    struct soth_config *t = soth_config_slot_take(&slot);
    if (t != c2 || soth_config_slot_take(&slot) != NULL)
        __builtin_trap();
    soth_config_unref(t);
    soth_config_slot_dispose(&slot);
    soth_config_unref(c2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct soth_config *c = (struct soth_config *)err; /* must come back NULL on failure */
    if (soth_config_load_text((const char *)data, size, &c, err, sizeof(err)) == 0) {
        check_round_trip(c);
        soth_config_unref(c);
    } else {
        check_error_line(err, c);
    }

    /* The same bytes (up to the first NUL) as a flag value. */
    if (size > 4096)
        return 0;
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    struct soth_hostport hp;
    if (soth_hostport_parse(s, &hp, err, sizeof(err)) == 0) {
        if (hp.host == NULL || (hp.addr_len != 0 && hp.addr.ss_family == AF_UNSPEC))
            __builtin_trap();
    } else if (hp.host != NULL || err[0] == '\0') {
        __builtin_trap();
    }
    soth_hostport_dispose(&hp);
    for (int flag = 0; flag < 6; flag++) {
        struct soth_cli_overrides cli = {.workers = -1};
        switch (flag) {
        case 0:
            cli.listen = s;
            break;
        case 1:
            cli.mode = s;
            break;
        case 2:
            cli.ca_dir = s;
            break;
        case 3:
            cli.event_ring = s;
            break;
        case 4:
            cli.metrics = s;
            break;
        default:
            cli.workers = size ? data[0] * 8 : 0; /* 0..2040: both sides of the limit */
            break;
        }
        c = NULL;
        if (soth_config_load(NULL, &cli, &c, err, sizeof(err)) == 0) {
            check_round_trip(c);
            soth_config_unref(c);
        } else {
            check_error_line(err, c);
        }
    }
    free(s);
    return 0;
}
