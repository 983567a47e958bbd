/*
 * TLS learning (pinning bypass) wired into the engine. docs/tls.md "Learning" has the design;
 * in short:
 *  - every tls_handshake_failed event is a learning signal. Workers emit it with zero counts;
 *    the telemetry thread, which already reads every event in gseq order, runs on_tls_failed
 *    below before writing the record: soth_tls_learning_record() counts it and the exact
 *    host/global counts go into the record. Workers never see the writer state.
 *  - when a signal pins a host, the aggregator builds one immutable snapshot and publishes a
 *    reference into every worker's slot. A worker takes it at its next flow decision (one
 *    relaxed load per decision when nothing changed) and asks it through policy's
 *    soth_learning_view. No locks, no shared counters on the data path.
 *  - signals without a flow (soth_engine_tls_signal: a bridge thread, the test hook) queue
 *    under a mutex that only those threads and the telemetry thread's on_tick take.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "learn.h"

#define INJECT_MAX 256 /* flowless signals queued between two telemetry ticks */

struct soth_learn {
    struct soth_engine *e;
    struct soth_tls_learning *l; /* telemetry thread only, once running */
    bool enabled;                /* tls.learning.enabled: pins and audits */
    bool dirty;                  /* a snapshot could not be built: retry at the next tick */

    pthread_mutex_t mu; /* guards q / n_q: flowless signals only, never a worker */
    _Atomic uint32_t pending;
    uint32_t n_q;
    struct soth_learn_signal q[INJECT_MAX];
};

/* ------------------------------------------------------------------------------------------
 * parsing (test hook)
 * ------------------------------------------------------------------------------------------ */

static int name_index(const char *const *names, int n, const char *p, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], p, len) == 0)
            return i;
    return -1;
}

int soth_learn_parse_signal(const char *text, size_t len, struct soth_learn_signal *out)
{
    struct soth_iov f[5];
    size_t nf = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && text[i] != ' ')
            continue;
        if (i == start || nf == 5)
            return SOTH_E_MALFORMED; /* an empty field, or more than five */
        f[nf++] = soth_iov(text + start, i - start);
        start = i + 1;
    }
    if (nf != 5 || f[0].len >= sizeof(out->host) || f[1].len > 5)
        return SOTH_E_MALFORMED;
    unsigned long port = 0;
    for (size_t k = 0; k < f[1].len; k++) {
        if (f[1].base[k] < '0' || f[1].base[k] > '9')
            return SOTH_E_MALFORMED;
        port = port * 10 + (unsigned long)(f[1].base[k] - '0');
    }
    int side = name_index(soth_leg_names, SOTH_LEG_COUNT, f[2].base, f[2].len);
    int reason = name_index(soth_tls_failure_names, SOTH_TLSF_COUNT, f[3].base, f[3].len);
    int prov = name_index(soth_tls_provider_names, SOTH_TLSP_COUNT, f[4].base, f[4].len);
    if (port == 0 || port > 65535 || side < 0 || reason < 0 || prov < 0)
        return SOTH_E_MALFORMED;
    memset(out, 0, sizeof(*out));
    memcpy(out->host, f[0].base, f[0].len);
    out->host_len = (uint8_t)f[0].len;
    out->port = (uint16_t)port;
    out->side = (uint8_t)side;
    out->reason = (uint8_t)reason;
    out->provider = (uint8_t)prov;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * the aggregator (telemetry thread)
 * ------------------------------------------------------------------------------------------ */

static void publish(struct soth_learn *L, uint64_t now_ns)
{
    struct soth_tls_learning_snapshot *s = soth_tls_learning_snapshot_new(L->l, now_ns);
    if (s == NULL) {
        L->dirty = true;
        return;
    }
    L->dirty = false;
    for (unsigned i = 0; i < L->e->n_workers; i++)
        soth_tls_learning_slot_publish(&L->e->workers[i].learn_slot,
                                       soth_tls_learning_snapshot_ref(s));
    soth_tls_learning_snapshot_unref(s);
}

/** Count one signal; publish a snapshot when it pinned the host. */
static void record(struct soth_learn *L, struct soth_iov host, uint16_t port, enum soth_leg side,
                   enum soth_tls_failure reason, enum soth_tls_provider provider,
                   uint32_t *host_count, uint32_t *global_count)
{
    uint64_t now = soth_mono_ns();
    struct soth_tls_learning_result res;
    int rc =
        soth_tls_learning_record(L->l, host, port, soth_leg_of(side), (enum soth_tls_fail)reason,
                                 (enum soth_tls_signal_provider)provider, now, &res);
    if (rc < 0)
        return; /* a name learning cannot key (over 253 bytes, bad bytes): counts stay 0 */
    *host_count = res.host_failure_count;
    *global_count = res.global_failure_count;
    if (res.applied) {
        SOTH_LOG(SOTH_LOG_INFO, -1, 0,
                 "tls learning: %.*s:%u pinned to tunnel (%u client certificate rejections, "
                 "signal from %s)",
                 (int)host.len, host.base, port, res.host_failure_count,
                 soth_tls_provider_names[provider]);
        publish(L, now);
    }
}

static void on_tls_failed(void *ctx, const struct soth_ev_tls_failure *ev, uint32_t *host_count,
                          uint32_t *global_count)
{
    record(ctx, ev->host, ev->port, ev->side, ev->reason, ev->provider, host_count, global_count);
}

static void on_tick(void *ctx)
{
    struct soth_learn *L = ctx;
    if (L->dirty)
        publish(L, soth_mono_ns());
    if (atomic_load_explicit(&L->pending, memory_order_relaxed) == 0)
        return;
    struct soth_learn_signal q[INJECT_MAX];
    pthread_mutex_lock(&L->mu);
    uint32_t n = L->n_q;
    memcpy(q, L->q, n * sizeof(q[0]));
    L->n_q = 0;
    atomic_store_explicit(&L->pending, 0, memory_order_relaxed);
    pthread_mutex_unlock(&L->mu);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t hc = 0, gc = 0;
        record(L, soth_iov(q[i].host, q[i].host_len), q[i].port, q[i].side, q[i].reason,
               q[i].provider, &hc, &gc);
    }
}

/* ------------------------------------------------------------------------------------------
 * the public signal API (any thread but a worker's)
 * ------------------------------------------------------------------------------------------ */

int soth_engine_tls_signal(struct soth_engine *e, struct soth_iov host, uint16_t port,
                           enum soth_leg side, enum soth_tls_failure reason,
                           enum soth_tls_provider provider)
{
    struct soth_learn *L = e->learn;
    if (host.len == 0 || host.len >= SOTH_EV_HOST_MAX || side >= SOTH_LEG_COUNT ||
        reason >= SOTH_TLSF_COUNT || provider >= SOTH_TLSP_COUNT)
        return -EINVAL;
    if (!soth_tls_learning_provider_is_authoritative((enum soth_tls_signal_provider)provider)) {
        /* The guardrail needs no state: nothing is queued, nothing changes. */
        SOTH_LOG(SOTH_LOG_INFO, -1, 0,
                 "tls learning: ignored a signal for %.*s:%u from %s (not authoritative)",
                 (int)host.len, host.base, port, soth_tls_provider_names[provider]);
        return SOTH_TLS_SIGNAL_IGNORED;
    }
    pthread_mutex_lock(&L->mu);
    if (L->n_q == INJECT_MAX) {
        pthread_mutex_unlock(&L->mu);
        return -EAGAIN;
    }
    struct soth_learn_signal *s = &L->q[L->n_q++];
    memcpy(s->host, host.base, host.len);
    s->host_len = (uint8_t)host.len;
    s->port = port;
    s->side = (uint8_t)side;
    s->reason = (uint8_t)reason;
    s->provider = (uint8_t)provider;
    atomic_store_explicit(&L->pending, 1, memory_order_relaxed);
    pthread_mutex_unlock(&L->mu);
    soth_observe_wake(e->obs);
    return SOTH_TLS_SIGNAL_QUEUED;
}

/* ------------------------------------------------------------------------------------------
 * set-up and tear-down (main thread)
 * ------------------------------------------------------------------------------------------ */

int soth_learn_init(struct soth_engine *e, char *err, size_t err_len)
{
    const struct soth_config *cfg = e->cfg;
    struct soth_learn *L = calloc(1, sizeof(*L));
    if (L == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    L->e = e;
    L->enabled = cfg->tls.learning.enabled;
    pthread_mutex_init(&L->mu, NULL);
    struct soth_tls_learning_params p = {.enabled = cfg->tls.learning.enabled,
                                         .failure_threshold = cfg->tls.learning.failure_threshold,
                                         .window_s = cfg->tls.learning.window_s};
    if (soth_tls_learning_new(&p, &L->l) < 0) {
        pthread_mutex_destroy(&L->mu);
        free(L);
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    e->learn = L;

    /* Test hook (docs/tls.md): report the worker's own handshake failures as this provider. */
    enum soth_tls_provider prov = SOTH_TLSP_NATIVE;
    const char *tp = getenv("SOTH_TEST_TLS_PROVIDER");
    if (tp != NULL && *tp != '\0') {
        int i = name_index(soth_tls_provider_names, SOTH_TLSP_COUNT, tp, strlen(tp));
        if (i < 0) {
            snprintf(err, err_len, "SOTH_TEST_TLS_PROVIDER: unknown provider \"%s\"", tp);
            return -1;
        }
        prov = (enum soth_tls_provider)i;
        SOTH_LOG(SOTH_LOG_WARN, -1, 0, "test hook: TLS failures reported as provider %s", tp);
    }
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct worker *w = &e->workers[i];
        soth_tls_learning_slot_init(&w->learn_slot);
        w->learn_view = NULL;
        w->learn_on = L->enabled;
        w->learn_provider = (uint8_t)prov;
    }
    struct soth_observe_hooks h = {.on_tls_failed = on_tls_failed, .on_tick = on_tick, .ctx = L};
    soth_observe_set_hooks(e->obs, &h);
    return 0;
}

int soth_learn_inject_env(struct soth_engine *e, char *err, size_t err_len)
{
    const char *v = getenv("SOTH_TEST_TLS_SIGNALS");
    if (v == NULL || *v == '\0')
        return 0;
    SOTH_LOG(SOTH_LOG_WARN, -1, 0, "test hook: injecting TLS signals: %s", v);
    /* "SIGNAL;SIGNAL;...", each as soth_learn_parse_signal. */
    for (const char *p = v; *p != '\0';) {
        const char *end = strchr(p, ';');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        struct soth_learn_signal s;
        if (soth_learn_parse_signal(p, len, &s) < 0) {
            snprintf(err, err_len, "SOTH_TEST_TLS_SIGNALS: bad signal \"%.*s\"", (int)len, p);
            return -1;
        }
        int rc = soth_engine_tls_signal(e, soth_iov(s.host, s.host_len), s.port,
                                        soth_leg_of(s.side), (enum soth_tls_failure)s.reason,
                                        (enum soth_tls_provider)s.provider);
        if (rc < 0) {
            snprintf(err, err_len, "SOTH_TEST_TLS_SIGNALS: %s", soth_strerror(rc));
            return -1;
        }
        p += len;
        if (*p == ';')
            p++;
    }
    return 0;
}

void soth_learn_dispose(struct soth_engine *e)
{
    struct soth_learn *L = e->learn;
    if (L == NULL)
        return;
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct worker *w = &e->workers[i];
        soth_tls_learning_snapshot_unref(w->learn_view);
        w->learn_view = NULL;
        soth_tls_learning_slot_dispose(&w->learn_slot);
    }
    soth_tls_learning_free(L->l);
    pthread_mutex_destroy(&L->mu);
    free(L);
    e->learn = NULL;
}

/* ------------------------------------------------------------------------------------------
 * worker side
 * ------------------------------------------------------------------------------------------ */

struct soth_tls_learning_snapshot *soth_learn_view(struct worker *w)
{
    struct soth_tls_learning_snapshot *s = soth_tls_learning_slot_take(&w->learn_slot);
    if (s != NULL) {
        soth_tls_learning_snapshot_unref(w->learn_view);
        w->learn_view = s;
    }
    return w->learn_view;
}

void soth_learn_emit_failure(struct soth_ev_flow *ev, bool learning_on, enum soth_leg side,
                             enum soth_tls_failure reason, enum soth_tls_provider provider,
                             struct soth_iov source, struct soth_iov detail)
{
    /* Counts are filled in by the telemetry thread (on_tls_failed) before the record is
     * written: zero here. */
    soth_ev_tls_handshake_failed(ev, side, reason, source, provider, detail, 0, 0);
    if (learning_on &&
        !soth_tls_learning_provider_is_authoritative((enum soth_tls_signal_provider)provider))
        soth_ev_tls_learning_audit(ev, false, SOTH_IOV_LIT("provider_not_authoritative"),
                                   soth_iov(ev->server_host, ev->server_host_len), provider);
}

void soth_learn_flow_signal(struct worker *w, struct soth_ev_flow *ev, enum soth_leg side,
                            enum soth_tls_failure reason, enum soth_tls_provider provider,
                            struct soth_iov source, struct soth_iov detail)
{
    soth_learn_emit_failure(ev, w->learn_on, side, reason, provider, source, detail);
}
