/*
 * Private to the HTTP layer (core/app*.c): what the dispatcher (app.c) shares with the two
 * versions (app_h1.c, app_h2.c), the stream observers (app_obs.c) and payload decoding
 * (app_payload.c). Every version's struct starts with a struct app; the version is chosen
 * once, in app_new, by its ops table.
 */
#ifndef SOTH_CORE_APP_INT_H
#define SOTH_CORE_APP_INT_H

#include "app.h"
#include "app_obs.h"

#define APP_WS_CAPTURE_MAX (256u << 10) /* capture per WebSocket message and direction, at most */

/** Configuration the layer reads, copied at app_new (a reload does not change a live flow). */
struct app_conf {
    uint32_t capture;            /* events.body_capture_bytes */
    uint32_t ws_turn_idle_ms;    /* events.ws_turn_idle_ms; 0: no idle flush */
    uint32_t request_header_ms;  /* timeouts.request_header_ms; 0: no head deadline */
    uint32_t response_header_ms; /* timeouts.response_header_ms; 0: no response deadline */
    uint32_t h2_max_header_list_size;
    bool strip_h3_alt_svc;     /* http3_passthrough false: no HTTP/3 in Alt-Svc (docs/http3.md) */
    uint32_t upstream_idle_ms; /* timeouts.upstream_idle_ms; 0: the upstream stays open */
};

/**
 * One version of HTTP. All members are set; a version without a notion (HTTP/1.1 holds, HTTP/2
 * timers) implements it as a no-op. Return values as in app.h.
 */
struct app_ops {
    const char *name;
    bool h2; /* app_is_h2 */
    struct app *(*create)(const struct app_env *env, const struct app_conf *conf);
    void (*dispose)(struct app *a); /* frees the version's state and the struct */
    int (*input)(struct app *a, unsigned side, const char *p, size_t n);
    int (*eof)(struct app *a, unsigned side, bool reset);
    void (*abort)(struct app *a, enum soth_outcome outcome);
    int (*hold)(struct app *a, unsigned side, bool hold);
    uint64_t (*deadline)(const struct app *a); /* the version's own timer (ms), 0: none */
    int (*timer)(struct app *a, uint64_t now_ms);
    bool (*read_paused)(const struct app *a, unsigned side);
    bool (*want_write)(const struct app *a, unsigned side);
    int (*shutdown)(struct app *a);
    enum soth_close_reason (*close_reason)(const struct app *a);
    bool (*upstream_reusable)(const struct app *a, uint32_t *requests);
    bool (*upstream_retryable)(const struct app *a);
    int (*upstream_opened)(struct app *a, bool ok);
};

/** The part every version shares; first member of struct app_h1 / app_h2. */
struct app {
    const struct app_ops *ops;
    struct app_env env; /* env.cfg is NULL once app_new returned */
    struct app_conf conf;
    struct app_payload *pl; /* payload decoding (core/app_payload.c), NULL until needed */
    struct app_obs_set obs; /* WebSocket / SSE observers of its streams (core/app_obs.c) */
    uint8_t up_want;        /* enum app_upstream_want, not yet taken */
};

extern const struct app_ops app_h1_ops;
extern const struct app_ops app_h2_ops;

/** Set up the shared part (a version's create calls it first). Inline here, so the versions
 *  depend on the observers and payload code below them, never on the dispatcher above. */
static inline void app_base_init(struct app *a, const struct app_ops *ops,
                                 const struct app_env *env, const struct app_conf *conf)
{
    a->ops = ops;
    a->env = *env;
    a->env.cfg = NULL; /* may be freed by a reload while the flow lives: conf has what counts */
    a->conf = *conf;
    a->pl = NULL;
    app_obs_init(&a->obs);
}

struct app_payload;
void app_pl_free(struct app_payload *pl); /* core/app_payload.h */

/** Release the shared part (a version's dispose calls it). */
static inline void app_base_dispose(struct app *a)
{
    app_obs_dispose(a);
    app_pl_free(a->pl);
    a->pl = NULL;
}

/** The layer's monotonic clock, ns. */
static inline uint64_t app_clock_ns(const struct app *a)
{
    return a->env.clock_ns != NULL ? a->env.clock_ns(a->env.ctx) : soth_mono_ns();
}

/** HTTP/1.1: free the calling thread's section buffers (app_thread_done). */
void app_h1_thread_done(void);
/** HTTP/2: free the calling thread's stream tables, output buffers and body chunks. */
void app_h2_thread_done(void);

#endif
