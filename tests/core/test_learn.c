/*
 * core/learn.c: the test-hook signal syntax, the worker's view of published snapshots, and the
 * flow signal path (tls_handshake_failed, plus tls_learning_audit "ignored" for
 * non-authoritative providers).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "learn.h"

static int parse(const char *s, struct soth_learn_signal *out)
{
    return soth_learn_parse_signal(s, strlen(s), out);
}

Test(learn_signal, parses_spec_words)
{
    struct soth_learn_signal s;
    cr_assert_eq(parse("origin.test 443 client unknown_ca native", &s), 0);
    cr_assert_eq(s.host_len, 11);
    cr_assert_eq(memcmp(s.host, "origin.test", 11), 0);
    cr_assert_eq(s.port, 443);
    cr_assert_eq(s.side, SOTH_LEG_CLIENT);
    cr_assert_eq(s.reason, SOTH_TLSF_UNKNOWN_CA);
    cr_assert_eq(s.provider, SOTH_TLSP_NATIVE);
    cr_assert_eq(parse("::1 65535 upstream cert_validation hudsucker", &s), 0);
    cr_assert_eq(s.port, 65535);
    cr_assert_eq(s.side, SOTH_LEG_UPSTREAM);
    cr_assert_eq(s.reason, SOTH_TLSF_CERT_VALIDATION);
    cr_assert_eq(s.provider, SOTH_TLSP_HUDSUCKER);
    cr_assert_eq(parse("h 1 client other mitmproxy", &s), 0);
    cr_assert_eq(s.provider, SOTH_TLSP_MITMPROXY);
}

Test(learn_signal, rejects_malformed)
{
    static const char *bad[] = {
        "",
        "origin.test",
        "origin.test 443 client unknown_ca",
        "origin.test 443 client unknown_ca native extra",
        "origin.test  443 client unknown_ca native",
        " origin.test 443 client unknown_ca native",
        "origin.test 443 client unknown_ca native ",
        "origin.test 0 client unknown_ca native",
        "origin.test 65536 client unknown_ca native",
        "origin.test 123456 client unknown_ca native",
        "origin.test 44a client unknown_ca native",
        "origin.test -1 client unknown_ca native",
        "origin.test 443 server unknown_ca native",
        "origin.test 443 client Unknown_ca native",
        "origin.test 443 client unknown_ca NATIVE",
        "origin.test 443 client unknown_ca nativ",
    };
    struct soth_learn_signal s;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(parse(bad[i], &s), SOTH_E_MALFORMED, "accepted \"%s\"", bad[i]);
    /* every proper prefix of a good signal is malformed */
    const char *good = "origin.test 443 client unknown_ca native";
    for (size_t n = 0; n < strlen(good); n++)
        cr_assert_eq(soth_learn_parse_signal(good, n, &s), SOTH_E_MALFORMED, "prefix %zu", n);
    char longhost[400];
    memset(longhost, 'a', 300);
    snprintf(longhost + 300, sizeof(longhost) - 300, " 443 client unknown_ca native");
    cr_assert_eq(parse(longhost, &s), SOTH_E_MALFORMED);
}

/* ---- worker side */

Test(learn_view, takes_the_newest_snapshot_and_releases_the_old)
{
    struct worker *w = calloc(1, sizeof(*w));
    soth_tls_learning_slot_init(&w->learn_slot);
    cr_assert_null(soth_learn_view(w));

    struct soth_tls_learning_params p = {.enabled = true, .failure_threshold = 1, .window_s = 60};
    struct soth_tls_learning *l;
    cr_assert_eq(soth_tls_learning_new(&p, &l), 0);
    uint64_t now = soth_mono_ns();
    struct soth_tls_learning_snapshot *empty = soth_tls_learning_snapshot_new(l, now);
    soth_tls_learning_slot_publish(&w->learn_slot, empty);
    cr_assert_eq(soth_learn_view(w), empty);
    cr_assert_eq(soth_learn_view(w), empty, "no newer snapshot: the view stays");

    struct soth_tls_learning_result r;
    cr_assert_eq(soth_tls_learning_record(l, SOTH_IOV_LIT("p.example"), 443, SOTH_LEG_CLIENT,
                                          SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE, now,
                                          &r),
                 0);
    cr_assert(r.applied);
    /* Two publications before the worker looks: it gets the newest, the skipped one is freed
     * by the slot (ASan/LSan would see a leak otherwise). */
    soth_tls_learning_slot_publish(&w->learn_slot, soth_tls_learning_snapshot_new(l, now));
    struct soth_tls_learning_snapshot *newest = soth_tls_learning_snapshot_new(l, now);
    soth_tls_learning_slot_publish(&w->learn_slot, newest);
    struct soth_tls_learning_snapshot *v = soth_learn_view(w);
    cr_assert_eq(v, newest);
    cr_assert(soth_tls_learning_is_pinned(v, SOTH_IOV_LIT("p.example"), 443));
    cr_assert_not(soth_tls_learning_is_pinned(v, SOTH_IOV_LIT("q.example"), 443));

    soth_tls_learning_snapshot_unref(w->learn_view);
    soth_tls_learning_slot_dispose(&w->learn_slot);
    soth_tls_learning_free(l);
    free(w);
}

/* ---- the flow signal path, read back through a real event ring */

struct ring_env {
    char dir[64];
    char ring[128];
    struct soth_config cfg;
    struct soth_observe *o;
};

static void ring_env_init(struct ring_env *e)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/soth-learn-XXXXXX");
    cr_assert_not_null(mkdtemp(e->dir));
    snprintf(e->ring, sizeof(e->ring), "%s/ev.ring", e->dir);
    atomic_init(&e->cfg.refs, 1);
    e->cfg.events.ring_path = e->ring;
    e->cfg.events.ring_size_mb = 1;
    e->cfg.events.body_capture_bytes = 4096;
    char err[256];
    e->o = soth_observe_new(&e->cfg, 1, err, sizeof(err));
    cr_assert_not_null(e->o, "%s", err);
    cr_assert_eq(soth_observe_start(e->o), 0);
}

static void collect(void *ctx, const char *line, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(line, len, 0, &je);
    cr_assert_not_null(j, "%s", je.text);
    json_array_append_new(ctx, j);
}

/** Stop the telemetry thread and return every event as a JSON array. */
static json_t *ring_env_events(struct ring_env *e)
{
    soth_observe_stop(e->o);
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(e->ring, err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    soth_ring_reader_seek(r, true);
    json_t *arr = json_array();
    soth_ring_reader_poll(r, NULL, collect, arr);
    soth_ring_reader_free(r);
    soth_observe_free(e->o);
    unlink(e->ring);
    rmdir(e->dir);
    return arr;
}

static void signal_flow(struct worker *w, struct soth_observe *o, uint64_t id,
                        enum soth_tls_provider prov)
{
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, soth_observe_producer(o, 0), id, 0, NULL, 0);
    soth_ev_flow_set_server(&f, SOTH_IOV_LIT("pin.example"), 443);
    soth_ev_connect_received(&f, SOTH_IOV_LIT("CONNECT"), SOTH_IOV_LIT("pin.example:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    soth_learn_flow_signal(w, &f, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA, prov, SOTH_IOV_LIT("tls"),
                           SOTH_IOV_LIT("alert 48"));
    soth_ev_stream_closed(&f, SOTH_CLOSE_TLS_FAILED, 0, 0);
    soth_ev_flush(f.prod);
}

static const char *str(json_t *ev, const char *k)
{
    return json_string_value(json_object_get(ev, k));
}

Test(learn_flow_signal, audits_non_authoritative_providers_only)
{
    struct ring_env e;
    ring_env_init(&e);
    struct worker w = {.learn_on = true};
    signal_flow(&w, e.o, 1, SOTH_TLSP_NATIVE);
    signal_flow(&w, e.o, 2, SOTH_TLSP_MITMPROXY);
    signal_flow(&w, e.o, 3, SOTH_TLSP_HUDSUCKER);
    w.learn_on = false; /* tls.learning.enabled: false: no audit at all */
    signal_flow(&w, e.o, 4, SOTH_TLSP_HUDSUCKER);
    json_t *arr = ring_env_events(&e);

    static const char *const want[][2] = {
        {"connect_received", NULL},
        {"connect_decision", NULL},
        {"tls_handshake_failed", "native"},
        {"stream_closed", NULL},
        {"connect_received", NULL},
        {"connect_decision", NULL},
        {"tls_handshake_failed", "mitmproxy"},
        {"stream_closed", NULL},
        {"connect_received", NULL},
        {"connect_decision", NULL},
        {"tls_handshake_failed", "hudsucker"},
        {"tls_learning_audit", "ignored"},
        {"stream_closed", NULL},
        {"connect_received", NULL},
        {"connect_decision", NULL},
        {"tls_handshake_failed", "hudsucker"},
        {"stream_closed", NULL},
    };
    size_t n = sizeof(want) / sizeof(want[0]);
    cr_assert_eq(json_array_size(arr), n);
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(arr, i);
        cr_assert_str_eq(str(ev, "type"), want[i][0], "event %zu", i);
        if (strcmp(want[i][0], "tls_handshake_failed") == 0) {
            cr_assert_str_eq(str(ev, "tls_ops_provider"), want[i][1]);
            cr_assert_str_eq(str(ev, "side"), "client");
            cr_assert_str_eq(str(ev, "tls_failure_reason"), "unknown_ca");
            cr_assert_str_eq(str(ev, "detail"), "alert 48");
        } else if (strcmp(want[i][0], "tls_learning_audit") == 0) {
            cr_assert_str_eq(str(ev, "decision"), want[i][1]);
            cr_assert_str_eq(str(ev, "host"), "pin.example");
            cr_assert_str_eq(str(ev, "signal_provider"), "hudsucker");
            cr_assert_str_eq(str(ev, "reason"), "provider_not_authoritative");
        }
    }
    json_decref(arr);
}
