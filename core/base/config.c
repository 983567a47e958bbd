/* Placeholder: replaced by the config loader (issue 2). */
#include "soth/config.h"
#include "soth/base.h"
#include <string.h>

int soth_config_load(const char *path, const struct soth_cli_overrides *cli,
                     struct soth_config **out, char *err, size_t err_len)
{
    snprintf(err, err_len, "config: not implemented");
    return SOTH_E_CONFIG;
}
