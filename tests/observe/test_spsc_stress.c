/*
 * SPSC rings under concurrency (ctest label "tsan": run in the -DSOTH_TSAN=ON build too).
 * N producer threads x M events through the telemetry thread: nothing lost that was not counted
 * as dropped, per-flow order kept, every stream_closed present and reporting its flow's gaps.
 * The million-event variant is bench/observe (bench_observe --stress).
 */
#include <pthread.h>

#include "obs_test.h"

#define N_PROD 4
#ifndef STRESS_EVENTS
#define STRESS_EVENTS 40000u /* per producer; small enough for TSan on 2 cores */
#endif
#define FLOWS_PER_PROD 8

struct prod_arg {
    struct soth_observe *o;
    unsigned idx;
    unsigned events;
};

static void *producer(void *arg)
{
    struct prod_arg *a = arg;
    struct soth_ev_producer *p = soth_observe_producer(a->o, a->idx);
    struct soth_ev_flow f[FLOWS_PER_PROD];
    for (unsigned k = 0; k < FLOWS_PER_PROD; k++)
        soth_ev_flow_init(&f[k], p, (uint64_t)a->idx << 32 | k, a->idx, NULL, 0);
    char pad[200];
    memset(pad, 'p', sizeof(pad));
    for (unsigned i = 0; i < a->events; i++) {
        /* Sizes vary so records wrap the rings at every offset; flows interleave. */
        soth_ev_connect_parse_failed(&f[i % FLOWS_PER_PROD], S("n"),
                                     soth_iov(pad, i % sizeof(pad)));
        if (i % 64 == 0)
            soth_ev_flush(p);
    }
    for (unsigned k = 0; k < FLOWS_PER_PROD; k++)
        soth_ev_stream_closed(&f[k], SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    return NULL;
}

struct flow_state {
    uint64_t id;
    int64_t next_seq;
    int64_t seen;
    bool closed;
};

/** Check the invariants over the whole file; returns the number of events in it. */
static size_t check_file(const char *ring, unsigned n_prod, unsigned flows, uint64_t dropped)
{
    struct text t = ring_text(ring, NULL);
    json_t *arr = text_parse(&t);
    free(t.p);
    struct flow_state *fs = calloc((size_t)n_prod * flows, sizeof(*fs));
    json_int_t last_gseq = 0;
    size_t n = json_array_size(arr);
    size_t closed = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(arr, i);
        const char *type = json_string_value(json_object_get(ev, "type"));
        cr_assert_str_neq(type, "ring_overrun", "the file must hold everything");
        json_int_t gseq = json_integer_value(json_object_get(ev, "gseq"));
        cr_assert_eq(gseq, last_gseq + 1, "gseq must be dense in the file");
        last_gseq = gseq;
        uint64_t fid = (uint64_t)json_integer_value(json_object_get(ev, "flow_id"));
        unsigned w = (unsigned)(fid >> 32), k = (unsigned)(fid & 0xffffffff);
        cr_assert(w < n_prod && k < flows, "flow_id %llu", (unsigned long long)fid);
        cr_assert_eq((unsigned)json_integer_value(json_object_get(ev, "worker")), w);
        struct flow_state *s = &fs[w * flows + k];
        cr_assert(!s->closed, "an event after stream_closed");
        json_int_t seq = json_integer_value(json_object_get(ev, "seq"));
        cr_assert_geq(seq, s->next_seq, "per-flow order broken");
        s->next_seq = seq + 1;
        if (strcmp(type, "stream_closed") == 0) {
            s->closed = true;
            closed++;
            /* The flow's stream_closed reports exactly the seq gaps it had. */
            cr_assert_eq(json_integer_value(json_object_get(ev, "events_dropped")), seq - s->seen);
        }
        s->seen++;
    }
    cr_expect_eq(closed, (size_t)n_prod * flows, "stream_closed is never dropped");
    uint64_t gaps = 0;
    for (size_t i = 0; i < (size_t)n_prod * flows; i++)
        gaps += (uint64_t)(fs[i].next_seq - fs[i].seen);
    cr_expect_eq(gaps, dropped, "seq gaps %llu, dropped counted %llu", (unsigned long long)gaps,
                 (unsigned long long)dropped);
    free(fs);
    json_decref(arr);
    return n;
}

static uint64_t dropped_total(struct soth_observe *o, unsigned n)
{
    uint64_t d = 0;
    for (unsigned i = 0; i < n; i++)
        d += atomic_load(&soth_observe_metrics(o, i)->events_dropped);
    return d;
}

static void run_producers(struct soth_observe *o, unsigned events)
{
    pthread_t t[N_PROD];
    struct prod_arg args[N_PROD];
    for (unsigned i = 0; i < N_PROD; i++) {
        args[i] = (struct prod_arg){o, i, events};
        cr_assert_eq(pthread_create(&t[i], NULL, producer, &args[i]), 0);
    }
    for (unsigned i = 0; i < N_PROD; i++)
        pthread_join(t[i], NULL);
}

Test(spsc, producers_keep_order_and_count_drops, .timeout = 300)
{
    struct obs_env e;
    obs_env_init(&e, 64);
    struct soth_observe *o = obs_new(&e, N_PROD);
    cr_assert_eq(soth_observe_start(o), 0);
    run_producers(o, STRESS_EVENTS);
    soth_observe_stop(o);
    uint64_t dropped = dropped_total(o, N_PROD);
    size_t seen = check_file(e.ring, N_PROD, FLOWS_PER_PROD, dropped);
    cr_expect_eq(seen + dropped, (size_t)N_PROD * (STRESS_EVENTS + FLOWS_PER_PROD),
                 "seen %zu + dropped %llu", seen, (unsigned long long)dropped);
    soth_observe_free(o);
    obs_env_dispose(&e);
}

/* The telemetry thread starts late: the rings fill, producers drop (and never block). */
Test(spsc, full_rings_drop_and_count, .timeout = 300)
{
    struct obs_env e;
    obs_env_init(&e, 64);
    struct soth_observe *o = obs_new(&e, N_PROD);
    run_producers(o, 60000); /* about 7 MB per producer: more than the ring's share */
    uint64_t dropped = dropped_total(o, N_PROD);
    cr_expect_gt(dropped, 0, "the rings must overflow for this test to mean anything");
    cr_assert_eq(soth_observe_start(o), 0);
    soth_observe_stop(o);
    size_t seen = check_file(e.ring, N_PROD, FLOWS_PER_PROD, dropped);
    cr_expect_eq(seen + dropped, (size_t)N_PROD * (60000 + FLOWS_PER_PROD));
    soth_observe_free(o);
    obs_env_dispose(&e);
}

/* Many open flows, a stalled consumer, a full ring: every flow still gets its stream_closed. */
Test(spsc, stream_closed_survives_a_full_ring, .timeout = 300)
{
    enum { FLOWS = 4000 };
    struct obs_env e;
    obs_env_init(&e, 32);
    struct soth_observe *o = obs_new(&e, 1);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow *f = calloc(FLOWS, sizeof(*f));
    char host[SOTH_EV_HOST_MAX];
    memset(host, 'h', sizeof(host));
    for (unsigned k = 0; k < FLOWS; k++) {
        /* Longest address and host: the biggest stream_closed there is. */
        struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(65535)};
        memset(&s6.sin6_addr, 0xfe, sizeof(s6.sin6_addr));
        soth_ev_flow_init(&f[k], p, k, 0, (struct sockaddr *)&s6, sizeof(s6));
        soth_ev_flow_set_server(&f[k], soth_iov(host, sizeof(host)), 443);
    }
    char pad[1000];
    memset(pad, 'q', sizeof(pad));
    for (unsigned i = 0; i < 40000; i++)
        soth_ev_connect_parse_failed(&f[i % FLOWS], S("x"), soth_iov(pad, sizeof(pad)));
    soth_ev_flush(p);
    uint64_t dropped = atomic_load(&soth_observe_metrics(o, 0)->events_dropped);
    cr_expect_gt(dropped, 0);
    for (unsigned k = 0; k < FLOWS; k++)
        soth_ev_stream_closed(&f[k], SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    cr_expect_eq(atomic_load(&soth_observe_metrics(o, 0)->events_dropped), dropped,
                 "a stream_closed was dropped");
    cr_assert_eq(soth_observe_start(o), 0);
    soth_observe_stop(o);
    /* check_file's flow layout: worker 0, flows 0..FLOWS-1. */
    size_t seen = check_file(e.ring, 1, FLOWS, dropped);
    cr_expect_eq(seen + dropped, 40000u + FLOWS);
    free(f);
    soth_observe_free(o);
    obs_env_dispose(&e);
}
