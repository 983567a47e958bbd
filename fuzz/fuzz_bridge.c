/*
 * libFuzzer: arbitrary bytes as bridge lines (docs/bridge.md) through the line handling of
 * core/bridge_line.c into a real producer. Lines are split at '\n'; each line's clock advances
 * 100 ms, idle expiry runs along, and the end frees the state (open flows end with shutdown).
 * It must never crash, hang or leak, whatever the lines say. A small conn table (8) makes the
 * bounds reachable. The observe subsystem is created once; its ring file is unlinked at once
 * (the mapping stays), so nothing is left behind.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge_line.h"

static struct soth_observe *obs;

static void setup(void)
{
    static struct soth_config cfg;
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/soth-fuzz-bridge-%d.ring", (int)getpid());
    atomic_init(&cfg.refs, 1);
    cfg.events.ring_path = path;
    cfg.events.ring_size_mb = 1;
    cfg.events.body_capture_bytes = 16;
    soth_log_level = SOTH_LOG_ERROR; /* refusals log warnings: not what is being tested */
    char err[256];
    obs = soth_observe_new(&cfg, 1, err, sizeof(err));
    if (obs == NULL || soth_observe_start(obs) < 0)
        abort();
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (obs == NULL)
        setup();
    struct soth_bline_params p = {.prod = soth_observe_bridge_producer(obs),
                                  .m = soth_observe_bridge_metrics(obs),
                                  .bm = soth_observe_bridge_counters(obs),
                                  .learning_enabled = size % 2 == 0,
                                  .body_capture_bytes = 16,
                                  .idle_ms = 1000,
                                  .max_conns = 8};
    struct soth_bline *b = soth_bline_new(&p);
    if (b == NULL)
        return 0;
    uint64_t now = 1000000000ull;
    const char *s = (const char *)data;
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && s[i] != '\n')
            continue;
        /* A copy of exactly the line: reads past it are caught by ASan. */
        size_t len = i - start;
        char *line = malloc(len ? len : 1);
        memcpy(line, s + start, len);
        soth_bline_handle(b, line, len, now);
        free(line);
        now += 100000000ull;
        soth_bline_expire(b, now);
        soth_ev_flush(p.prod);
        start = i + 1;
    }
    if (soth_bline_open_flows(b) > 8)
        __builtin_trap();
    soth_bline_free(b);
    soth_ev_flush(p.prod);
    return 0;
}
