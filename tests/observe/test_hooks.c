/*
 * Telemetry hooks: the telemetry thread shows every tls_handshake_failed event to
 * on_tls_failed in gseq order (the learning aggregator, core/learn.c) and writes the counts it
 * returns into the event, in the ring file and in the sinks alike; on_tick runs on its loop and
 * after soth_observe_wake.
 */
#include <pthread.h>

#include "obs_test.h"

struct seen {
    unsigned calls, ticks;
    uint64_t flow_id[8];
    unsigned worker[8];
    char host[8][64];
    uint16_t port[8];
    enum soth_leg side[8];
    enum soth_tls_failure reason[8];
    enum soth_tls_provider provider[8];
};

static void on_failed(void *ctx, const struct soth_ev_tls_failure *ev, uint32_t *hc, uint32_t *gc)
{
    struct seen *s = ctx;
    unsigned i = s->calls++;
    cr_assert_lt(i, 8);
    s->flow_id[i] = ev->flow_id;
    s->worker[i] = ev->worker;
    snprintf(s->host[i], sizeof(s->host[i]), "%.*s", (int)ev->host.len, ev->host.base);
    s->port[i] = ev->port;
    s->side[i] = ev->side;
    s->reason[i] = ev->reason;
    s->provider[i] = ev->provider;
    *hc = 10 + i;
    *gc = 4000000000u + i; /* the full u32 range survives */
}

static void on_tick(void *ctx)
{
    __atomic_add_fetch(&((struct seen *)ctx)->ticks, 1, __ATOMIC_RELAXED);
}

static void fail_flow(struct soth_ev_producer *p, uint64_t id, unsigned worker, const char *host,
                      uint16_t port, enum soth_leg side, enum soth_tls_failure why,
                      enum soth_tls_provider prov)
{
    struct soth_ev_flow f;
    flow_v4(&f, p, id, worker);
    soth_ev_flow_set_server(&f, S(host), port);
    soth_ev_connect_received(&f, S("CONNECT"), S("x:1"));
    soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    soth_ev_tls_handshake_started(&f, side, S(host));
    soth_ev_tls_handshake_failed(&f, side, why, S("tls"), prov, S("alert 48 unknown_ca"), 0, 0);
    soth_ev_stream_closed(&f, SOTH_CLOSE_TLS_FAILED, 0, 0);
    soth_ev_flush(p);
}

Test(observe_hooks, tls_failed_counts_go_into_the_events)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    obs_env_add_sink(&e, SOTH_SINK_JSONL, "ev.jsonl");
    struct soth_observe *o = obs_new(&e, 2);
    struct seen seen = {0};
    struct soth_observe_hooks h = {.on_tls_failed = on_failed, .on_tick = on_tick, .ctx = &seen};
    soth_observe_set_hooks(o, &h);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p0 = soth_observe_producer(o, 0), *p1 = soth_observe_producer(o, 1);
    fail_flow(p0, 1, 0, "pinned.example", 443, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA,
              SOTH_TLSP_NATIVE);
    usleep(20000); /* gseq order across workers follows the drain: keep the order known */
    fail_flow(p1, 2, 1, "up.example", 8443, SOTH_LEG_UPSTREAM, SOTH_TLSF_CERT_VALIDATION,
              SOTH_TLSP_HUDSUCKER);
    usleep(20000);
    fail_flow(p0, 3, 0, "[::1]", 443, SOTH_LEG_CLIENT, SOTH_TLSF_EOF, SOTH_TLSP_MITMPROXY);
    usleep(20000);
    unsigned ticks = __atomic_load_n(&seen.ticks, __ATOMIC_RELAXED);
    soth_observe_wake(o);
    for (int i = 0; i < 200 && __atomic_load_n(&seen.ticks, __ATOMIC_RELAXED) == ticks; i++)
        usleep(1000);
    cr_assert_gt(__atomic_load_n(&seen.ticks, __ATOMIC_RELAXED), ticks, "wake runs on_tick");
    soth_observe_stop(o);

    cr_assert_eq(seen.calls, 3);
    cr_assert_eq(seen.flow_id[0], 1);
    cr_assert_eq(seen.worker[0], 0);
    cr_assert_str_eq(seen.host[0], "pinned.example");
    cr_assert_eq(seen.port[0], 443);
    cr_assert_eq(seen.side[0], SOTH_LEG_CLIENT);
    cr_assert_eq(seen.reason[0], SOTH_TLSF_UNKNOWN_CA);
    cr_assert_eq(seen.provider[0], SOTH_TLSP_NATIVE);
    cr_assert_eq(seen.flow_id[1], 2);
    cr_assert_eq(seen.worker[1], 1);
    cr_assert_str_eq(seen.host[1], "up.example");
    cr_assert_eq(seen.port[1], 8443);
    cr_assert_eq(seen.side[1], SOTH_LEG_UPSTREAM);
    cr_assert_eq(seen.reason[1], SOTH_TLSF_CERT_VALIDATION);
    cr_assert_eq(seen.provider[1], SOTH_TLSP_HUDSUCKER);
    cr_assert_str_eq(seen.host[2], "[::1]");
    cr_assert_eq(seen.reason[2], SOTH_TLSF_EOF);
    cr_assert_eq(seen.provider[2], SOTH_TLSP_MITMPROXY);

    /* The ring file and the jsonl sink both carry the hook's counts. */
    struct soth_ring_filter flt = {.type_mask = 1ull << SOTH_EV_TLS_HANDSHAKE_FAILED};
    struct text t = ring_text(e.ring, &flt);
    json_t *arr = text_parse(&t);
    cr_assert_eq(json_array_size(arr), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *ev = json_array_get(arr, i);
        cr_assert_eq(json_integer_value(json_object_get(ev, "flow_id")), (json_int_t)i + 1);
        cr_assert_eq(json_integer_value(json_object_get(ev, "host_failure_count")),
                     (json_int_t)(10 + i));
        cr_assert_eq(json_integer_value(json_object_get(ev, "global_failure_count")),
                     (json_int_t)(4000000000u + i));
        cr_assert_str_eq(json_string_value(json_object_get(ev, "detail")), "alert 48 unknown_ca");
    }
    json_decref(arr);
    free(t.p);
    soth_observe_free(o);

    char path[192];
    snprintf(path, sizeof(path), "%s/ev.jsonl", e.dir);
    FILE *fp = fopen(path, "r");
    cr_assert_not_null(fp);
    char line[4096];
    unsigned n = 0;
    while (fgets(line, sizeof(line), fp) != NULL) {
        if (strstr(line, "\"tls_handshake_failed\"") == NULL)
            continue;
        char want[64];
        snprintf(want, sizeof(want), "\"host_failure_count\":%u", 10 + n);
        cr_assert_not_null(strstr(line, want), "%s", line);
        n++;
    }
    fclose(fp);
    cr_assert_eq(n, 3);
    obs_env_dispose(&e);
}

Test(observe_hooks, without_hooks_counts_stay_as_emitted)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_flow f;
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    flow_v4(&f, p, 7, 0);
    soth_ev_flow_set_server(&f, S("h.example"), 443);
    soth_ev_connect_received(&f, S("CONNECT"), S("h.example:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    soth_ev_tls_handshake_failed(&f, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA, S("tls"),
                                 SOTH_TLSP_NATIVE, S("d"), 5, 6);
    soth_ev_stream_closed(&f, SOTH_CLOSE_TLS_FAILED, 0, 0);
    soth_ev_flush(p);
    soth_observe_stop(o);
    struct soth_ring_filter flt = {.type_mask = 1ull << SOTH_EV_TLS_HANDSHAKE_FAILED};
    struct text t = ring_text(e.ring, &flt);
    cr_assert_not_null(strstr(t.p, "\"host_failure_count\":5,\"global_failure_count\":6"), "%s",
                       t.p);
    free(t.p);
    soth_observe_free(o);
    obs_env_dispose(&e);
}
