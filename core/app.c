/*
 * The HTTP layer of a flow (core/app.h): the version is chosen once, in app_new, by its ops
 * table (app_h1.c, app_h2.c); every call goes through it. The timers of the layer are the
 * version's own (the HTTP/1.1 request head deadline) and the stream observers' (idle
 * WebSocket turns, core/app_obs.c).
 */
#include <stdlib.h>
#include <string.h>

#include "app_int.h"
#include "app_payload.h"

/* The configuration the layer uses, read once: defaults of docs/config.md without one. */
static void conf_of(const struct soth_config *cfg, struct app_conf *c)
{
    if (cfg == NULL) {
        *c = (struct app_conf){.capture = 4096,
                               .ws_turn_idle_ms = 30000,
                               .request_header_ms = 10000,
                               .response_header_ms = 60000,
                               .upstream_idle_ms = 5000};
        return;
    }
    *c = (struct app_conf){
        .capture = cfg->events.body_capture_bytes,
        .ws_turn_idle_ms = cfg->events.ws_turn_idle_ms,
        .request_header_ms = cfg->timeouts.request_header_ms,
        .response_header_ms = cfg->timeouts.response_header_ms,
        .h2_max_header_list_size = cfg->http2_max_header_list_size,
        .strip_h3_alt_svc = !cfg->http3_passthrough,
        .upstream_idle_ms = cfg->timeouts.upstream_idle_ms,
    };
}

struct app *app_new(enum app_kind kind, const struct app_env *env)
{
    const struct app_ops *ops = kind == APP_H2 ? &app_h2_ops : &app_h1_ops;
    struct app_conf conf;
    conf_of(env->cfg, &conf);
    return ops->create(env, &conf);
}

void app_free(struct app *a)
{
    if (a != NULL)
        a->ops->dispose(a);
}

void app_thread_done(void)
{
    app_h1_thread_done();
    app_h2_thread_done();
    app_obs_thread_done();
}

int app_input(struct app *a, unsigned side, const char *p, size_t n)
{
    return a->ops->input(a, side, p, n);
}

int app_eof(struct app *a, unsigned side, bool reset)
{
    return a->ops->eof(a, side, reset);
}

void app_abort(struct app *a, enum soth_outcome outcome)
{
    a->ops->abort(a, outcome);
}

int app_hold(struct app *a, unsigned side, bool hold)
{
    return a->ops->hold(a, side, hold);
}

uint64_t app_deadline(const struct app *a)
{
    uint64_t v = a->ops->deadline(a);
    uint64_t o = app_obs_deadline(a);
    if (v == 0 || (o != 0 && o < v))
        return o;
    return v;
}

int app_timer(struct app *a, uint64_t now_ms)
{
    int rc = a->ops->timer(a, now_ms);
    if (rc != APP_AGAIN)
        return rc;
    app_obs_timer(a, now_ms);
    return APP_AGAIN;
}

bool app_is_h2(const struct app *a)
{
    return a->ops->h2;
}

bool app_read_paused(const struct app *a, unsigned side)
{
    return a->ops->read_paused(a, side);
}

bool app_want_write(const struct app *a, unsigned side)
{
    return a->ops->want_write(a, side);
}

int app_shutdown(struct app *a)
{
    return a->ops->shutdown(a);
}

enum soth_close_reason app_close_reason(const struct app *a)
{
    return a->ops->close_reason(a);
}

bool app_upstream_retryable(const struct app *a)
{
    return a->ops->upstream_retryable(a);
}

enum app_upstream_want app_upstream_want(struct app *a)
{
    enum app_upstream_want w = (enum app_upstream_want)a->up_want;
    a->up_want = APP_UP_NONE;
    return w;
}

int app_upstream_opened(struct app *a, bool ok)
{
    return a->ops->upstream_opened(a, ok);
}

bool app_upstream_reusable(const struct app *a, uint32_t *requests)
{
    *requests = 0;
    return a->ops->upstream_reusable(a, requests);
}
