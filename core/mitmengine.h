/*
 * Private to core/: `--engine mitmproxy` (docs/bridge.md, "The mitmproxy engine"): mitmdump
 * runs as a child process with the bridge addon and options translated from the config;
 * soth-mitm itself runs only the bridge, the telemetry thread, the ring, sinks and metrics.
 */
#ifndef SOTH_CORE_MITMENGINE_H
#define SOTH_CORE_MITMENGINE_H

#include <stddef.h>

#include "soth/config.h"

/**
 * Refuse what mitmdump cannot honour: a key set to a value other than its default that has no
 * mitmproxy counterpart. Returns 0, or -1 with one line in err:
 * "config: KEY: not supported by --engine mitmproxy" (the caller exits 2).
 */
int soth_mitmengine_check(const struct soth_config *cfg, char *err, size_t err_len);

/**
 * Run the engine until SIGTERM/SIGINT or until mitmdump exits: private runtime directory (CA
 * for mitmdump, policy file, bridge socket unless bridge.listen is set), soth_engine_start,
 * mitmdump, the readiness line, signals. cfg has been checked with soth_mitmengine_check; the
 * function may set cfg->bridge.listen (cfg must have one reference). cli: the flags, for
 * SIGHUP. Returns the process exit status (0 clean, 1 runtime failure).
 */
int soth_mitmengine_run(struct soth_config *cfg, const struct soth_cli_overrides *cli);

#endif
