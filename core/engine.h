/*
 * Private to core/: the process-wide engine (core/engine.c): the workers, the resolver thread,
 * the observe subsystem, the CA and TLS learning.
 */
#ifndef SOTH_CORE_ENGINE_H
#define SOTH_CORE_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>

#include "soth/config.h"
#include "soth/core.h"
#include "soth/observe.h"
#include "soth/tls.h"

struct worker;
struct soth_learn;
struct soth_policy;

struct soth_engine {
    struct soth_config *cfg;
    struct soth_observe *obs;
    unsigned n_workers;
    struct worker *workers;
    pthread_mutex_t start_mu; /* start-up only */
    pthread_cond_t start_cv;
    unsigned n_ready;
    struct soth_tls_ca *ca;
    pthread_t resolver;
    int resolver_efd;
    _Atomic int resolver_stop;
    struct soth_learn *learn;   /* core/learn.c */
    struct soth_bridge *bridge; /* core/bridge.c; NULL when bridge.listen is unset */
    /* Budget counters (docs/soth.md "Budgets"): the current table (held by the engine),
     * which each worker's next policy holds; a table outlives the policies (and through them
     * the flows) that count in it, and is freed at the next reload after its last user went.
     * budget_mu guards both fields (reloads, metrics, a worker taking a new policy: never
     * per request). */
    pthread_mutex_t budget_mu;
    struct soth_budget *budget;
    struct engine_budget *budgets; /* tables not freed yet, newest first */
};

/** Give p (a worker's new policy) the current budget table. Any thread. */
void engine_budget_attach(struct soth_engine *e, struct soth_policy *p);

#endif
