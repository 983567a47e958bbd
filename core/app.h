/*
 * Private to core/: the HTTP layer of one flow. The worker hands it the plaintext each leg
 * sent (decrypted when intercepting) and it hands back, through env->send, the plaintext to
 * deliver to each leg, emitting the flow's HTTP events on the way. Two versions behind one
 * interface: HTTP/1.1 (proto/h1.c, core/app_h1.c) and HTTP/2 (proto/h2.c, core/app_h2.c),
 * with the WebSocket/SSE observation of either (core/app_obs.c) and payload decoding
 * (core/app_payload.c). Knows nothing about sockets, io_uring or TLS, so tests and fuzz
 * targets drive it directly. Layout: docs/architecture.md; streaming: docs/streaming.md.
 */
#ifndef SOTH_CORE_APP_H
#define SOTH_CORE_APP_H

#include <stdbool.h>
#include <stddef.h>

#include "soth/base.h"
#include "soth/config.h"
#include "soth/observe.h"

enum app_kind { APP_H1 = 0, APP_H2 };

struct app_env {
    /* Read by app_new only (a reload may free it later): events.body_capture_bytes,
     * events.ws_turn_idle_ms, timeouts.request_header_ms, http2_max_header_list_size. NULL:
     * the defaults of docs/config.md. */
    const struct soth_config *cfg;
    struct soth_ev_flow *ev; /* the flow's events */
    struct soth_metrics *m;  /* requests{protocol}; may be NULL */
    bool client_tls;         /* the client leg is TLS: requests have scheme "https" */
    bool origin_form;        /* regular-mode plain HTTP: absolute-form targets go to the
                                upstream in origin-form, without Proxy-* fields */
    /* origin_form through an upstream HTTP proxy (docs/config.md "Routes"): requests stay in
     * absolute-form, with proxy_auth (may be empty; must outlive the layer) as their
     * Proxy-Authorization */
    bool upstream_proxy;
    struct soth_iov proxy_auth;
    /* docs/http1.md "Upstream connection pool": the upstream connection may outlive the
     * client's (HTTP/1.1: a request's Connection: close stays with us) */
    bool keep_upstream;
    /* docs/http2.md "Idle upstream connection": the worker can close the upstream connection
     * of an idle HTTP/2 layer and make a new one when a request comes (app_upstream_want) */
    bool upstream_parkable;
    void *ctx;
    /** Plaintext toward `side`. Returns 0 or a negative error (the layer then fails). */
    int (*send)(void *ctx, unsigned side, const char *p, size_t n);
    /** The monotonic clock (ns) of the layer's timers and event times; NULL: soth_mono_ns.
     *  Tests pass a fake one; app_deadline and app_timer use the same clock in ms. */
    uint64_t (*clock_ns)(void *ctx);
    /** docs/soth.md "Budgets": may request stream_id go? true = counted, go; false = over
     *  budget (budget_exceeded emitted), answer 429 with Retry-After *retry_s. NULL: no
     *  budget. */
    bool (*budget)(void *ctx, uint32_t stream_id, uint32_t *retry_s);
    /** docs/soth.md "Budgets": n body bytes relayed (either way). NULL: no budget. */
    void (*budget_bytes)(void *ctx, uint64_t n);
};

/* What app_input / app_eof / app_hold / app_timer return besides a negative error. */
#define APP_AGAIN 0 /* go on */
#define APP_DONE                                                                                   \
    1 /* the layer is finished: deliver what was sent, then close the flow with                    \
         app_close_reason() */
#define APP_HALF_CLOSE                                                                             \
    2 /* app_eof only: pass the FIN on to the other leg (byte relay after an                       \
         upgrade) and keep reading that leg */
/* A negative return (SOTH_E_*): the flow must close now with app_close_reason(); whatever the
 * layer already sent (an error answer) should still be flushed first when possible. */

struct app;

/** One per flow; env is copied. NULL on allocation failure. */
struct app *app_new(enum app_kind kind, const struct app_env *env);
/** Frees the layer; fires no events (call app_abort first if exchanges may be in flight). */
void app_free(struct app *a);
/** Free the calling thread's kept buffers (HTTP/1.1 sections, stream observers), as a worker
 *  exits, and all of them when it goes quiet: a free list kept warm through a quiet stretch
 *  pins pages all over the heap (docs/performance.md, "Memory after bursts"). */
void app_thread_done(void);

/**
 * Plaintext received from `side`. The layer consumes everything: what it cannot process yet
 * (HTTP/1.1 pipelining beyond its bound, bytes behind an upgrade request) it keeps in a
 * bounded stash and app_read_paused(side) turns true until the other leg moves it on.
 */
int app_input(struct app *a, unsigned side, const char *p, size_t n);

/** `side` sent EOF (reset false) or reset the transport (reset true). */
int app_eof(struct app *a, unsigned side, bool reset);

/**
 * The flow closes for a reason the layer did not see (timeout, shutdown, relay error):
 * end every exchange in flight with `outcome`. Idempotent.
 */
void app_abort(struct app *a, enum soth_outcome outcome);

/**
 * Backpressure from the worker: the send queue toward `side` went over its high watermark
 * (hold true) or back under the low one (hold false). HTTP/2 stops producing output for that
 * side (flow control then stops the sender); HTTP/1.1 ignores it (the worker pauses the
 * source leg's reads instead). Returns like app_input.
 */
int app_hold(struct app *a, unsigned side, bool hold);

/**
 * The layer's next timer, in ms of its monotonic clock (env->clock_ns / 1e6, the worker's
 * now_ms), or 0 when none is armed: the HTTP/1.1 request head in progress must be complete
 * by its first byte + timeouts.request_header_ms; a response head must begin within
 * timeouts.response_header_ms of its request's end; an open WebSocket turn ends when
 * events.ws_turn_idle_ms pass without a message. Ask again after every call into the layer.
 */
uint64_t app_deadline(const struct app *a);

/**
 * Run the timers due at now_ms: a late HTTP/1.1 request head gets 408 (when nothing else is
 * on its way to the client) and ends the flow (APP_DONE, close reason idle_timeout); a late
 * response head gets 504 (HTTP/1.1: then the flow ends likewise; HTTP/2: on its stream); idle
 * WebSocket turns complete (ws_turn_completed, flush_reason idle). Returns like app_input.
 */
int app_timer(struct app *a, uint64_t now_ms);

/** HTTP/2 (holds output per leg; never pause its reads) rather than HTTP/1.1. */
bool app_is_h2(const struct app *a);

/** True while reads from `side` must stay paused (stash not empty). */
bool app_read_paused(const struct app *a, unsigned side);

/** Whether the layer has output it could not produce yet for `side` (HTTP/2 held data). */
bool app_want_write(const struct app *a, unsigned side);

/** Graceful drain (SIGTERM): HTTP/2 sends GOAWAY; HTTP/1.1 closes after the current exchange. */
int app_shutdown(struct app *a);

/** Close reason for the flow once app_input/app_eof returned APP_DONE or an error. */
enum soth_close_reason app_close_reason(const struct app *a);

/**
 * Whether the upstream connection may carry another client's requests now that the layer is
 * done (docs/http1.md "Upstream connection pool"): HTTP/1.1 with nothing in flight, its
 * response decoder between messages, no response that closed the connection, no answer of
 * ours, no connection-bound authentication (NTLM, Negotiate). *requests: requests it carried
 * for this flow. HTTP/2: never.
 */
bool app_upstream_reusable(const struct app *a, uint32_t *requests);
/** Whether the upstream connection may be replaced and what was sent on it sent again
 *  (docs/http1.md "Upstream connection pool"; HTTP/2: never). */
bool app_upstream_retryable(const struct app *a);

/* docs/http2.md "Idle upstream connection" (HTTP/2 with env.upstream_parkable only). */
enum app_upstream_want {
    APP_UP_NONE = 0,
    APP_UP_CLOSE, /* the layer ended its upstream session (its GOAWAY is sent): close the
                     connection (close_notify, FIN) and keep none */
    APP_UP_OPEN,  /* a request waits for a new upstream connection (the same address, name
                     and an offer of h2): make it, then app_upstream_opened */
};
/** What the layer wants done with the upstream connection; each want is returned once.
 *  Ask after every call into the layer. */
enum app_upstream_want app_upstream_want(struct app *a);
/** The new upstream connection is up (ok, with ALPN h2) or could not be made: the layer
 *  goes on with what waited (refused when not ok). Returns like app_input. */
int app_upstream_opened(struct app *a, bool ok);

#endif
