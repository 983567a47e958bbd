/*
 * The process: listening sockets (one SO_REUSEPORT socket per worker, bound here so errors
 * are reported before anything starts), worker threads pinned one per CPU, the resolver
 * thread, the observe subsystem, and the control paths (reload, flush, stop) that reach
 * workers through their eventfd.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge.h"
#include "engine.h"
#include "learn.h"
#include "resolver.h"
#include "spsc.h"
#include "worker.h"

static int listen_socket(const struct sockaddr_storage *addr, socklen_t len, char *err,
                         size_t err_len)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1) {
        snprintf(err, err_len, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) {
        snprintf(err, err_len, "setsockopt(SO_REUSEPORT): %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (bind(fd, (const struct sockaddr *)addr, len) == -1) {
        snprintf(err, err_len, "bind: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) == -1) {
        snprintf(err, err_len, "listen: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/** CPUs this process may run on, in order; workers are pinned round-robin over them. */
static int allowed_cpus(int *cpus, int cap)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof(set), &set) == -1)
        return 0;
    for (int c = 0; c < CPU_SETSIZE && n < cap; c++)
        if (CPU_ISSET(c, &set))
            cpus[n++] = c;
    return n;
}

/* ---- budgets (docs/soth.md "Budgets") */

struct engine_budget {
    struct soth_budget *b;
    struct engine_budget *next;
};

/** Make the budget table for p current (main thread): the current one when it fits, else a
 *  new one (none when p has no budget). Workers pick it up with their next policy. Tables
 *  no policy holds any more are freed here, so reloads that change the budgets do not pile
 *  them up. */
static void engine_budget_use(struct soth_engine *e, const struct soth_policy *p)
{
    pthread_mutex_lock(&e->budget_mu);
    if (e->budget == NULL || !soth_budget_fits(e->budget, p)) {
        struct soth_budget *b = soth_budget_new(p, e->n_workers); /* held by the engine */
        struct engine_budget *eb = b != NULL ? malloc(sizeof(*eb)) : NULL;
        if (eb == NULL) {
            soth_budget_free(b);
            b = NULL;
        } else {
            eb->b = b;
            eb->next = e->budgets;
            e->budgets = eb;
        }
        soth_budget_release(e->budget);
        e->budget = b;
    }
    for (struct engine_budget **pp = &e->budgets; *pp != NULL;) {
        struct engine_budget *eb = *pp;
        if (soth_budget_users(eb->b) == 0) { /* not current: that one the engine holds */
            *pp = eb->next;
            soth_budget_free(eb->b);
            free(eb);
        } else {
            pp = &eb->next;
        }
    }
    pthread_mutex_unlock(&e->budget_mu);
}

/* Every table, once every policy is gone (the workers') or was never given one. */
static void engine_budget_dispose(struct soth_engine *e)
{
    while (e->budgets != NULL) {
        struct engine_budget *eb = e->budgets;
        e->budgets = eb->next;
        soth_budget_free(eb->b);
        free(eb);
    }
    e->budget = NULL;
    pthread_mutex_destroy(&e->budget_mu);
}

void engine_budget_attach(struct soth_engine *e, struct soth_policy *p)
{
    pthread_mutex_lock(&e->budget_mu);
    soth_policy_set_budget(p, e->budget);
    pthread_mutex_unlock(&e->budget_mu);
}

/* soth_budget_rejections_total{rule} (docs/metrics.md), from the current table. */
static void budget_metrics(void *ctx, struct soth_metrics_out *o)
{
    struct soth_engine *e = ctx;
    pthread_mutex_lock(&e->budget_mu);
    struct soth_budget *b = e->budget;
    soth_metrics_out_type(o, "soth_budget_rejections_total", "counter",
                          "Requests and tunnels refused with 429 over a budget, by rule.");
    for (int s = 0; s < soth_budget_n_slots(b); s++) {
        char l[200];
        const char *r = soth_budget_rule(b, s);
        size_t k = (size_t)snprintf(l, sizeof(l), "{rule=\"");
        for (; *r && k + 4 < sizeof(l); r++) {
            if (*r == '"' || *r == '\\')
                l[k++] = '\\';
            l[k++] = *r == '\n' ? ' ' : *r;
        }
        snprintf(l + k, sizeof(l) - k, "\"}");
        soth_metrics_out_line(o, "soth_budget_rejections_total", l, soth_budget_rejections(b, s));
    }
    pthread_mutex_unlock(&e->budget_mu);
}

struct soth_engine *soth_engine_start(struct soth_config *cfg, char *err, size_t err_len)
{
    struct soth_engine *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&e->budget_mu, NULL);
    e->cfg = soth_config_ref(cfg);
    int cpus[1024];
    int n_cpus = allowed_cpus(cpus, 1024);
    unsigned n = cfg->workers;
    if (n == 0)
        n = n_cpus > 0 ? (unsigned)n_cpus : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (n == 0)
        n = 1;
    /* --engine mitmproxy (docs/bridge.md): mitmdump carries the traffic; this process runs
     * only observe, learning, the telemetry thread and the bridge: no worker, no listener. */
    bool native = cfg->engine != SOTH_ENGINE_MITMPROXY;
    if (!native)
        n = 0;
    e->n_workers = n;
    pthread_mutex_init(&e->start_mu, NULL);
    pthread_cond_init(&e->start_cv, NULL);

    if (native && cfg->listen.addr_len == 0) {
        snprintf(err, err_len, "listen: %s is not a numeric address", cfg->listen.host);
        goto fail_engine;
    }
    /* TLS: the CA once per process (file I/O at start-up only), a context per worker. */
    if (soth_tls_global_init() < 0) {
        snprintf(err, err_len, "TLS library initialisation failed");
        goto fail_engine;
    }
    char *ca_dir = cfg->tls.ca_dir ? strdup(cfg->tls.ca_dir) : soth_config_default_ca_dir();
    struct soth_tls_ca_params cap = {.ca_dir = ca_dir,
                                     .ca_cert = cfg->tls.ca_cert,
                                     .ca_key = cfg->tls.ca_key,
                                     .rotate_after_days = cfg->tls.ca_rotate_after_days};
    int crc = soth_tls_ca_load_or_create(&cap, &e->ca, NULL, err, err_len);
    free(ca_dir);
    if (crc < 0)
        goto fail_engine;
    /* The key log (docs/tls.md, "Key log"): tls.keylog_file, else SSLKEYLOGFILE. */
    const char *klog = cfg->tls.keylog_file;
    if (klog == NULL && getenv("SSLKEYLOGFILE") != NULL && getenv("SSLKEYLOGFILE")[0] != '\0')
        klog = getenv("SSLKEYLOGFILE");
    if (klog != NULL) {
        if (soth_tls_keylog_open(klog, err, err_len) < 0)
            goto fail_engine;
        SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                 "TLS key log on (%s): the secrets of every intercepted connection go to %s; "
                 "whoever reads it can decrypt captured traffic",
                 cfg->tls.keylog_file != NULL ? "tls.keylog_file" : "SSLKEYLOGFILE", klog);
    }
    e->obs = soth_observe_new(cfg, n, err, err_len);
    if (e->obs == NULL)
        goto fail_engine;

    e->workers = calloc(n ? n : 1, sizeof(struct worker));
    if (e->workers == NULL) {
        snprintf(err, err_len, "out of memory");
        goto fail_obs;
    }
    struct sockaddr_storage addr = cfg->listen.addr;
    socklen_t alen = cfg->listen.addr_len;
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &e->workers[i];
        w->idx = i;
        w->cpu = n_cpus > 0 ? cpus[i % (unsigned)n_cpus] : -1;
        w->eng = e;
        w->listen_fd = -1;
        w->efd = -1;
    }
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &e->workers[i];
        w->listen_fd = listen_socket(&addr, alen, err, err_len);
        if (w->listen_fd < 0)
            goto fail_sockets;
        if (i == 0) {
            /* Port 0: every worker joins the port the first socket got. */
            socklen_t l = sizeof(addr);
            getsockname(w->listen_fd, (struct sockaddr *)&addr, &l);
        }
        w->cfg = soth_config_ref(cfg);
        w->policy = soth_policy_new(cfg, err, err_len);
        if (w->policy == NULL)
            goto fail_sockets;
        struct soth_tls_ctx_params tp = {.ca = e->ca,
                                         .leaf_validity_days = cfg->tls.leaf_validity_days,
                                         .leaf_cache_size = cfg->tls.leaf_cache_size,
                                         .upstream_verify = cfg->tls.upstream_verify,
                                         .upstream_ca_file = cfg->tls.upstream_ca_file,
                                         .http2_enabled = cfg->http2_enabled};
        if (soth_tls_ctx_new(&tp, &w->tls, err, err_len) < 0)
            goto fail_sockets;
        w->prod = soth_observe_producer(e->obs, i);
        w->m = soth_observe_metrics(e->obs, i);
        w->rq = soth_spsc_new(sizeof(struct resolve_req), 256);
        w->rs = soth_spsc_new(sizeof(struct resolve_resp), 256);
        if (w->rq == NULL || w->rs == NULL) {
            snprintf(err, err_len, "out of memory");
            goto fail_sockets;
        }
    }
    if (n > 0 && cfg->listen.addr.ss_family == AF_INET)
        cfg->listen.port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
    else if (n > 0)
        cfg->listen.port = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);

    if (n > 0)
        engine_budget_use(e, e->workers[0].policy);
    for (unsigned i = 0; i < n; i++)
        engine_budget_attach(e, e->workers[i].policy); /* before the workers run */
    soth_observe_set_metrics_source(e->obs, budget_metrics, e);

    /* TLS learning: the aggregator hooks into the telemetry thread, so before it starts. */
    if (soth_learn_init(e, err, err_len) < 0)
        goto fail_sockets;
    int rc = soth_observe_start(e->obs);
    if (rc < 0) {
        snprintf(err, err_len, "telemetry thread: %s", soth_strerror(rc));
        goto fail_sockets;
    }
    if (soth_learn_inject_env(e, err, err_len) < 0)
        goto fail_observe_started;
    /* The bridge emits through its own producer, drained by the telemetry thread (running). */
    if (cfg->bridge.listen != NULL) {
        e->bridge = soth_bridge_start(e, soth_observe_bridge_producer(e->obs), err, err_len);
        if (e->bridge == NULL)
            goto fail_observe_started;
    }
    rc = soth_resolver_start(e);
    if (rc < 0) {
        snprintf(err, err_len, "resolver thread: %s", soth_strerror(rc));
        goto fail_observe_started;
    }
    unsigned started = 0;
    for (; started < n; started++) {
        rc = pthread_create(&e->workers[started].thr, NULL, soth_worker_main, &e->workers[started]);
        if (rc != 0) {
            snprintf(err, err_len, "worker thread: %s", strerror(rc));
            break;
        }
        /* "soth-worker-N" in ps/top -H and /proc/PID/task/TID/comm (docs/performance.md,
         * "Allocations per request" finds the workers by it) */
        char name[16];
        snprintf(name, sizeof(name), "soth-worker-%u", started % 1000);
        pthread_setname_np(e->workers[started].thr, name);
    }
    pthread_mutex_lock(&e->start_mu);
    while (e->n_ready < started)
        pthread_cond_wait(&e->start_cv, &e->start_mu);
    pthread_mutex_unlock(&e->start_mu);
    bool failed = started < n;
    for (unsigned i = 0; i < started; i++) {
        if (e->workers[i].setup_err < 0 && !failed) {
            snprintf(err, err_len, "worker %u: %s", i, e->workers[i].setup_msg);
            failed = true;
        }
    }
    if (failed) {
        for (unsigned i = 0; i < started; i++) {
            atomic_store(&e->workers[i].ctl_stop, 1);
            if (e->workers[i].setup_err == 0)
                soth_worker_wake(&e->workers[i]);
        }
        for (unsigned i = 0; i < started; i++)
            pthread_join(e->workers[i].thr, NULL);
        soth_resolver_stop(e);
        for (unsigned i = 0; i < started; i++)
            if (e->workers[i].efd >= 0)
                close(e->workers[i].efd);
        goto fail_observe_started;
    }
    return e;

fail_observe_started:
    soth_bridge_stop(e->bridge);
    e->bridge = NULL;
    soth_observe_stop(e->obs);
fail_sockets:
    soth_learn_dispose(e); /* the telemetry thread (its only other user) has stopped */
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &e->workers[i];
        if (w->listen_fd >= 0)
            close(w->listen_fd);
        soth_policy_free(w->policy);
        soth_tls_ctx_free(w->tls);
        soth_spsc_free(w->rq);
        soth_spsc_free(w->rs);
        if (w->cfg)
            soth_config_unref(w->cfg);
    }
    free(e->workers);
fail_obs:
    soth_observe_free(e->obs);
fail_engine:
    engine_budget_dispose(e);
    soth_tls_ca_free(e->ca);
    soth_config_unref(e->cfg);
    free(e);
    return NULL;
}

unsigned soth_engine_workers(const struct soth_engine *e)
{
    return e->n_workers;
}

const char *soth_engine_ring_path(const struct soth_engine *e)
{
    return soth_observe_ring_path(e->obs);
}

void soth_engine_reload(struct soth_engine *e, struct soth_config *cfg)
{
    /* Budgets: the same (identity, budget) layout keeps its table and counts; another gets a
     * new one, published before the config so a worker switching sees it. */
    char perr[256];
    struct soth_policy *p = soth_policy_new(cfg, perr, sizeof(perr));
    if (p != NULL) {
        engine_budget_use(e, p);
        soth_policy_free(p);
    }
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct soth_config *old = atomic_exchange(&e->workers[i].ctl_cfg, soth_config_ref(cfg));
        if (old)
            soth_config_unref(old);
        soth_worker_wake(&e->workers[i]);
    }
    soth_config_unref(cfg);
}

void soth_engine_flush_leaves(struct soth_engine *e)
{
    for (unsigned i = 0; i < e->n_workers; i++) {
        atomic_store(&e->workers[i].ctl_flush, 1);
        soth_worker_wake(&e->workers[i]);
    }
}

void soth_engine_stop(struct soth_engine *e)
{
    for (unsigned i = 0; i < e->n_workers; i++) {
        atomic_store(&e->workers[i].ctl_stop, 1);
        soth_worker_wake(&e->workers[i]);
    }
    for (unsigned i = 0; i < e->n_workers; i++)
        pthread_join(e->workers[i].thr, NULL);
    soth_resolver_stop(e);
    for (unsigned i = 0; i < e->n_workers; i++) {
        if (e->workers[i].efd >= 0)
            close(e->workers[i].efd); /* every writer (main, resolver) is done */
        e->workers[i].efd = -1;
    }
    soth_bridge_stop(e->bridge); /* its shutdown closes go out before observe drains */
    e->bridge = NULL;
    soth_observe_stop(e->obs);
    soth_learn_dispose(e); /* after the workers and the telemetry thread (the aggregator) */
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct worker *w = &e->workers[i];
        struct soth_config *pending = atomic_exchange(&w->ctl_cfg, NULL);
        if (pending)
            soth_config_unref(pending);
        soth_spsc_free(w->rq);
        soth_spsc_free(w->rs);
        soth_config_unref(w->cfg);
    }
    free(e->workers);
    soth_observe_free(e->obs);
    engine_budget_dispose(e);
    soth_tls_ca_free(e->ca);
    soth_config_unref(e->cfg);
    pthread_mutex_destroy(&e->start_mu);
    pthread_cond_destroy(&e->start_cv);
    free(e);
}
