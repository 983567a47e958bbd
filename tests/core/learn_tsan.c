/*
 * TSan lane (plain program: Criterion cannot start under ThreadSanitizer): the learning
 * plumbing of core/learn.c across real threads, without sockets. Two "worker" threads emit
 * client-side unknown_ca failures through soth_learn_flow_signal into their event rings while
 * taking snapshots (soth_learn_view) and asking policy's question (is_pinned); the telemetry
 * thread aggregates through the observe hooks and publishes into the workers' slots; a third
 * thread injects flowless signals through soth_engine_tls_signal. Each worker must come to see
 * its host pinned. Exit 0 on success.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "learn.h"

#define N_WORKERS 2
#define THRESHOLD 50

static struct soth_engine eng;

struct wargs {
    unsigned idx;
    const char *host;
    int seen;
};

static void *worker_main(void *arg)
{
    struct wargs *a = arg;
    struct worker *w = &eng.workers[a->idx];
    struct soth_ev_producer *p = soth_observe_producer(eng.obs, a->idx);
    struct soth_iov host = soth_iov(a->host, strlen(a->host));
    for (uint64_t i = 0; i < 200000 && !a->seen; i++) {
        if (i < 4 * THRESHOLD) {
            struct soth_ev_flow f;
            soth_ev_flow_init(&f, p, (uint64_t)a->idx << 32 | i, a->idx, NULL, 0);
            soth_ev_flow_set_server(&f, host, 443);
            soth_ev_connect_received(&f, SOTH_IOV_LIT("CONNECT"), host);
            soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
            soth_learn_flow_signal(w, &f, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA,
                                   soth_learn_native_provider(w), SOTH_IOV_LIT("tls"),
                                   SOTH_IOV_LIT("alert 48"));
            soth_ev_stream_closed(&f, SOTH_CLOSE_TLS_FAILED, 0, 0);
            soth_ev_flush(p);
        }
        struct soth_tls_learning_snapshot *v = soth_learn_view(w);
        if (soth_tls_learning_is_pinned(v, host, 443))
            a->seen = 1;
        else if (i >= 4 * THRESHOLD)
            usleep(100);
    }
    return NULL;
}

static void *injector_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < THRESHOLD; i++) {
        int rc;
        do {
            rc = soth_engine_tls_signal(&eng, SOTH_IOV_LIT("injected.example"), 8443,
                                        SOTH_LEG_CLIENT, SOTH_TLSF_CERT_VALIDATION,
                                        SOTH_TLSP_MITMPROXY);
        } while (rc == -EAGAIN);
        if (rc != SOTH_TLS_SIGNAL_QUEUED)
            abort();
        if (i < 3 && soth_engine_tls_signal(&eng, SOTH_IOV_LIT("injected.example"), 8443,
                                            SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA,
                                            SOTH_TLSP_HUDSUCKER) != SOTH_TLS_SIGNAL_IGNORED)
            abort();
    }
    return NULL;
}

int main(void)
{
    char dir[] = "/tmp/soth-learn-tsan-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    char ring[128];
    snprintf(ring, sizeof(ring), "%s/ev.ring", dir);
    struct soth_config *cfg = calloc(1, sizeof(*cfg));
    atomic_init(&cfg->refs, 1);
    cfg->events.ring_path = ring;
    cfg->events.ring_size_mb = 4;
    cfg->events.body_capture_bytes = 4096;
    cfg->tls.learning.enabled = true;
    cfg->tls.learning.failure_threshold = THRESHOLD;
    cfg->tls.learning.window_s = 300;
    char err[256];
    eng.cfg = cfg;
    eng.n_workers = N_WORKERS;
    eng.workers = calloc(N_WORKERS, sizeof(struct worker));
    eng.obs = soth_observe_new(cfg, N_WORKERS, err, sizeof(err));
    if (eng.workers == NULL || eng.obs == NULL || soth_learn_init(&eng, err, sizeof(err)) < 0 ||
        soth_observe_start(eng.obs) < 0) {
        fprintf(stderr, "learn_tsan: set-up: %s\n", err);
        return 1;
    }
    struct wargs a[N_WORKERS] = {{0, "w0.example", 0}, {1, "w1.example", 0}};
    pthread_t th[N_WORKERS], inj;
    for (unsigned i = 0; i < N_WORKERS; i++)
        pthread_create(&th[i], NULL, worker_main, &a[i]);
    pthread_create(&inj, NULL, injector_main, NULL);
    for (unsigned i = 0; i < N_WORKERS; i++)
        pthread_join(th[i], NULL);
    pthread_join(inj, NULL);
    /* The injected pin reaches the workers too (at their next view). */
    int injected = 0;
    for (int i = 0; i < 5000 && !injected; i++) {
        for (unsigned k = 0; k < N_WORKERS; k++)
            soth_learn_view(&eng.workers[k]);
        injected = soth_tls_learning_is_pinned(eng.workers[0].learn_view,
                                               SOTH_IOV_LIT("injected.example"), 8443) &&
                   soth_tls_learning_is_pinned(eng.workers[1].learn_view,
                                               SOTH_IOV_LIT("injected.example"), 8443);
        usleep(1000);
    }
    soth_observe_stop(eng.obs);
    soth_learn_dispose(&eng);
    soth_observe_free(eng.obs);
    free(eng.workers);
    free(cfg);
    unlink(ring);
    rmdir(dir);
    int ok = a[0].seen && a[1].seen && injected;
    printf("learn_tsan: worker pins seen %d %d, injected pin seen %d: %s\n", a[0].seen, a[1].seen,
           injected, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
