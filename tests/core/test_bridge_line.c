/*
 * core/bridge_line.c (docs/bridge.md): bridge lines into flow events, read back through a real
 * event ring as soth-mitm-tail prints them; refusals and their counters; bounds.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge_line.h"

struct env {
    char dir[64];
    char ring[128];
    struct soth_config cfg;
    struct soth_observe *o;
    struct soth_bline *b;
    struct soth_bridge_metrics *bm;
};

static void env_init(struct env *e, bool learning, uint32_t max_conns)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/soth-bline-XXXXXX");
    cr_assert_not_null(mkdtemp(e->dir));
    snprintf(e->ring, sizeof(e->ring), "%s/ev.ring", e->dir);
    atomic_init(&e->cfg.refs, 1);
    e->cfg.events.ring_path = e->ring;
    e->cfg.events.ring_size_mb = 4;
    e->cfg.events.body_capture_bytes = 4;
    char err[256];
    e->o = soth_observe_new(&e->cfg, 1, err, sizeof(err));
    cr_assert_not_null(e->o, "%s", err);
    cr_assert_eq(soth_observe_start(e->o), 0);
    e->bm = soth_observe_bridge_counters(e->o);
    struct soth_bline_params p = {.prod = soth_observe_bridge_producer(e->o),
                                  .m = soth_observe_bridge_metrics(e->o),
                                  .bm = e->bm,
                                  .learning_enabled = learning,
                                  .body_capture_bytes = 4,
                                  .idle_ms = 1000,
                                  .max_conns = max_conns};
    e->b = soth_bline_new(&p);
    cr_assert_not_null(e->b);
}

static int line(struct env *e, const char *s)
{
    int rc = soth_bline_handle(e->b, s, strlen(s), 1000000000ull);
    soth_ev_flush(soth_observe_bridge_producer(e->o));
    return rc;
}

static void collect(void *ctx, const char *l, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(l, len, 0, &je);
    cr_assert_not_null(j, "%s", je.text);
    json_array_append_new(ctx, j);
}

/** Free the bridge (open flows end with shutdown), stop observe, return every event. */
static json_t *env_events(struct env *e)
{
    soth_bline_free(e->b);
    soth_ev_flush(soth_observe_bridge_producer(e->o));
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

static const char *str(json_t *ev, const char *k)
{
    const char *s = json_string_value(json_object_get(ev, k));
    return s ? s : "(none)";
}

static long long num(json_t *ev, const char *k)
{
    return json_integer_value(json_object_get(ev, k));
}

static void expect_types(json_t *arr, const char *const *want, size_t n)
{
    for (size_t i = 0; i < n && i < json_array_size(arr); i++)
        cr_assert_str_eq(str(json_array_get(arr, i), "type"), want[i], "event %zu", i);
    cr_assert_eq(json_array_size(arr), n, "%zu events", json_array_size(arr));
}

#define TLS_OP(hook, conn, extra)                                                                  \
    "{\"kind\":\"tls_op\",\"provider\":\"mitmproxy\",\"hook\":\"" hook "\",\"conn\":" conn         \
    ",\"client_addr\":\"127.0.0.1:5000\",\"server_host\":\"origin.test\",\"server_port\":443,"     \
    "\"sni\":\"origin.test\"" extra "}"

Test(bridge_tls_op, a_failing_conn_becomes_a_flow)
{
    struct env e;
    env_init(&e, true, 0);
    cr_assert_eq(line(&e, TLS_OP("tls_clienthello", "\"c1\"", "")), 0);
    cr_assert_eq(line(&e, TLS_OP("tls_start_client", "\"c1\"", "")), 0);
    cr_assert_eq(
        line(&e, TLS_OP("tls_failed_client", "\"c1\"",
                        ",\"error\":\"The client does not trust the proxy's certificate for "
                        "origin.test (tlsv1 alert unknown ca)\"")),
        0);
    cr_assert_eq(line(&e, TLS_OP("client_disconnected", "\"c1\"", "")), 0);
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received", "connect_decision",
                                       "tls_handshake_started", "tls_handshake_failed",
                                       "stream_closed"};
    expect_types(arr, want, 5);
    json_t *ev;
    size_t i;
    json_array_foreach(arr, i, ev)
    {
        cr_assert_eq(num(ev, "worker"), -1);
        cr_assert_eq((uint64_t)json_integer_value(json_object_get(ev, "flow_id")) >> 48, 0x7fff);
        cr_assert_str_eq(str(ev, "client_addr"), "127.0.0.1:5000");
        cr_assert_str_eq(str(ev, "server_host"), "origin.test");
        cr_assert_eq(num(ev, "seq"), (long long)i);
    }
    cr_assert(json_is_null(json_object_get(json_array_get(arr, 0), "method")));
    cr_assert_str_eq(str(json_array_get(arr, 0), "target"), "origin.test:443");
    cr_assert_str_eq(str(json_array_get(arr, 1), "decision"), "intercept");
    cr_assert_str_eq(str(json_array_get(arr, 1), "reason"), "default");
    json_t *f = json_array_get(arr, 3);
    cr_assert_str_eq(str(f, "side"), "client");
    cr_assert_str_eq(str(f, "tls_failure_reason"), "unknown_ca");
    cr_assert_str_eq(str(f, "tls_failure_source"), "client");
    cr_assert_str_eq(str(f, "tls_ops_provider"), "mitmproxy");
    cr_assert(strstr(str(f, "detail"), "tlsv1 alert unknown ca") != NULL);
    cr_assert_str_eq(str(json_array_get(arr, 4), "reason_code"), "client_eof");
    json_decref(arr);
}

Test(bridge_tls_op, hudsucker_failures_are_audited_ignored)
{
    struct env e;
    env_init(&e, true, 0);
    cr_assert_eq(line(&e, "{\"kind\":\"tls_op\",\"provider\":\"hudsucker\",\"hook\":"
                          "\"tls_failed_client\",\"conn\":9,\"server_host\":\"h.test\","
                          "\"server_port\":443,\"error\":\"connection closed\"}"),
                 0);
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received",      "connect_decision",
                                       "tls_handshake_started", "tls_handshake_failed",
                                       "tls_learning_audit",    "stream_closed"};
    expect_types(arr, want, 6);
    cr_assert_str_eq(str(json_array_get(arr, 3), "tls_ops_provider"), "hudsucker");
    cr_assert_str_eq(str(json_array_get(arr, 3), "tls_failure_reason"), "eof");
    cr_assert_str_eq(str(json_array_get(arr, 4), "decision"), "ignored");
    cr_assert_str_eq(str(json_array_get(arr, 4), "signal_provider"), "hudsucker");
    cr_assert_str_eq(str(json_array_get(arr, 5), "reason_code"), "shutdown");
    json_decref(arr);
}

Test(bridge_tls_op, established_carries_the_optional_fields_and_refuses_a_second_start)
{
    struct env e;
    env_init(&e, false, 0);
    cr_assert_eq(line(&e, TLS_OP("tls_start_server", "5", "")), 0);
    cr_assert_eq(line(&e, TLS_OP("tls_established_server", "\"5\"",
                                 ",\"tls_version\":\"TLSv1.3\",\"cipher\":"
                                 "\"TLS_AES_256_GCM_SHA384\",\"alpn\":\"h2\"")),
                 0);
    cr_assert_eq(line(&e, TLS_OP("tls_start_server", "5", "")), SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, TLS_OP("tls_failed_server", "5", "")), SOTH_BRIDGE_R_ORDER);
    /* an engine without the values sends null: as if absent */
    cr_assert_eq(line(&e, TLS_OP("tls_established_client", "5",
                                 ",\"tls_version\":null,\"cipher\":null,\"alpn\":null,"
                                 "\"error\":null")),
                 0);
    cr_assert_eq(atomic_load(&e.bm->refused[SOTH_BRIDGE_R_ORDER]), 2);
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received",      "connect_decision",
                                       "tls_handshake_started", "tls_handshake_succeeded",
                                       "tls_handshake_started", "tls_handshake_succeeded",
                                       "stream_closed"};
    expect_types(arr, want, 7);
    json_t *s = json_array_get(arr, 3);
    cr_assert_str_eq(str(s, "side"), "upstream");
    cr_assert_str_eq(str(s, "tls_version"), "TLSv1.3");
    cr_assert_str_eq(str(s, "alpn"), "h2");
    s = json_array_get(arr, 5);
    cr_assert_str_eq(str(s, "side"), "client");
    cr_assert_str_eq(str(s, "tls_version"), "");
    cr_assert(json_is_null(json_object_get(s, "alpn")));
    json_decref(arr);
}

#define EV(conn, rest) "{\"kind\":\"event\",\"conn\":" conn ",\"type\":" rest "}"

/* A flow opened as every engine opens one: connect_received for a.test:443, then the decision
 * (`decision`, `reason`); `conn` is the line's conn value as JSON. */
static void open_flow(struct env *e, const char *conn, const char *decision, const char *reason)
{
    char l[512];
    snprintf(l, sizeof(l),
             EV("%s", "\"connect_received\",\"method\":\"CONNECT\",\"target\":\"a.test:443\""),
             conn);
    cr_assert_eq(line(e, l), 0, "%s", l);
    snprintf(l, sizeof(l), EV("%s", "\"connect_decision\",\"decision\":\"%s\",\"reason\":\"%s\""),
             conn, decision, reason);
    cr_assert_eq(line(e, l), 0, "%s", l);
}

Test(bridge_event, a_whole_exchange_and_refusals_out_of_order)
{
    struct env e;
    env_init(&e, false, 0);
    /* nothing before connect_received */
    cr_assert_eq(line(&e, EV("1", "\"connect_decision\",\"decision\":\"intercept\","
                                  "\"reason\":\"default\"")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, EV("1", "\"connect_received\",\"method\":\"CONNECT\",\"target\":"
                                  "\"a.test:443\",\"server_host\":\"a.test\",\"server_port\":443,"
                                  "\"client_addr\":\"127.0.0.1:7\"")),
                 0);
    /* client_disconnected before the decision is no disorder: nothing happens */
    cr_assert_eq(line(&e, TLS_OP("client_disconnected", "1", "")), 0);
    cr_assert_eq(line(&e, TLS_OP("tls_clienthello", "1", "")), SOTH_BRIDGE_R_ORDER);
    /* request before the decision */
    cr_assert_eq(line(&e, EV("1", "\"request_headers\",\"stream_id\":1,\"method\":\"GET\","
                                  "\"scheme\":\"https\",\"authority\":\"a.test\",\"path\":\"/\","
                                  "\"http_version\":\"1.1\",\"headers\":[]")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, EV("1", "\"connect_decision\",\"decision\":\"intercept\","
                                  "\"reason\":\"default\"")),
                 0);
    cr_assert_eq(line(&e, EV("1", "\"connect_decision\",\"decision\":\"intercept\","
                                  "\"reason\":\"default\"")),
                 SOTH_BRIDGE_R_ORDER);
    /* a TLS end without its start */
    cr_assert_eq(line(&e, EV("1", "\"tls_handshake_succeeded\",\"side\":\"client\","
                                  "\"tls_version\":\"TLSv1.3\",\"cipher\":\"X\",\"alpn\":null")),
                 SOTH_BRIDGE_R_ORDER);
    /* HTTP/1 ids start at 1 */
    cr_assert_eq(line(&e, EV("1", "\"request_headers\",\"stream_id\":2,\"method\":\"GET\","
                                  "\"scheme\":null,\"authority\":null,\"path\":\"/\","
                                  "\"http_version\":\"1.1\",\"headers\":[]")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, EV("1", "\"request_headers\",\"stream_id\":1,\"method\":\"GET\","
                                  "\"scheme\":\"https\",\"authority\":\"a.test\",\"path\":\"/\","
                                  "\"http_version\":\"1.1\",\"headers\":[[\"host\",\"a.test\"],"
                                  "[\"x\",{\"b64\":\"/w==\"}]]")),
                 0);
    /* a response body before the response head */
    cr_assert_eq(line(&e, EV("1", "\"response_body_chunk\",\"stream_id\":1,\"offset\":0,"
                                  "\"len\":3,\"data_b64\":\"YWJj\",\"truncated\":false")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, EV("1", "\"response_headers\",\"stream_id\":1,\"status\":200,"
                                  "\"http_version\":\"1.1\",\"headers\":[]")),
                 0);
    cr_assert_eq(line(&e, EV("1", "\"response_body_chunk\",\"stream_id\":1,\"offset\":0,"
                                  "\"len\":3,\"data_b64\":\"YWJj\",\"truncated\":false")),
                 0);
    /* not contiguous */
    cr_assert_eq(line(&e, EV("1", "\"response_body_chunk\",\"stream_id\":1,\"offset\":4,"
                                  "\"len\":3,\"data_b64\":\"YWJj\",\"truncated\":false")),
                 SOTH_BRIDGE_R_ORDER);
    /* capture budget 4: 1 more byte captured, truncated recomputed */
    cr_assert_eq(line(&e, EV("1", "\"response_body_chunk\",\"stream_id\":1,\"offset\":3,"
                                  "\"len\":3,\"data_b64\":\"ZGVm\",\"truncated\":false")),
                 0);
    /* schema: bad base64, data longer than len, unknown outcome */
    cr_assert_eq(line(&e, EV("1", "\"response_body_chunk\",\"stream_id\":1,\"offset\":6,"
                                  "\"len\":3,\"data_b64\":\"Y!Jj\",\"truncated\":false")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("1", "\"response_body_chunk\",\"stream_id\":1,\"offset\":6,"
                                  "\"len\":1,\"data_b64\":\"YWJj\",\"truncated\":false")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("1", "\"exchange_completed\",\"stream_id\":1,\"outcome\":\"fine\","
                                  "\"request_bytes\":0,\"response_bytes\":6")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("1", "\"exchange_completed\",\"stream_id\":1,\"outcome\":"
                                  "\"complete\",\"request_bytes\":0,\"response_bytes\":6")),
                 0);
    cr_assert_eq(line(&e, EV("1", "\"response_headers\",\"stream_id\":1,\"status\":200,"
                                  "\"http_version\":\"1.1\",\"headers\":[]")),
                 SOTH_BRIDGE_R_ORDER);
    /* tls_op lines of an event-driven conn add TLS events; client_disconnected does not close */
    cr_assert_eq(line(&e, TLS_OP("tls_start_client", "1", "")), 0);
    cr_assert_eq(line(&e, TLS_OP("client_disconnected", "1", "")), 0);
    cr_assert_eq(line(&e, EV("1", "\"stream_closed\",\"reason_code\":\"client_eof\"")), 0);
    cr_assert_eq(line(&e, EV("1", "\"stream_closed\",\"reason_code\":\"client_eof\"")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(atomic_load(&e.bm->refused[SOTH_BRIDGE_R_ORDER]), 10);
    cr_assert_eq(atomic_load(&e.bm->refused[SOTH_BRIDGE_R_SCHEMA]), 3);
    json_t *arr = env_events(&e);
    static const char *const want[] = {
        "connect_received",   "connect_decision",      "request_headers",
        "response_headers",   "response_body_chunk",   "response_body_chunk",
        "exchange_completed", "tls_handshake_started", "stream_closed"};
    expect_types(arr, want, 9);
    json_t *rh = json_array_get(arr, 2);
    json_t *h1 = json_array_get(json_object_get(rh, "headers"), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(h1, 1), "b64")), "/w==");
    json_t *c2 = json_array_get(arr, 5);
    cr_assert_str_eq(str(c2, "data_b64"), "ZA==");
    cr_assert(json_is_true(json_object_get(c2, "truncated")));
    cr_assert_eq(num(json_array_get(arr, 6), "response_bytes"), 6);
    cr_assert_str_eq(str(json_array_get(arr, 0), "client_addr"), "127.0.0.1:7");
    json_decref(arr);
}

/* payload_parsed carries its value or its error, never the other (a fuzzer-found regression:
 * the value was dropped and, with an error, stale stack bytes were emitted as the value). */
Test(bridge_event, payload_parsed_carries_its_value_or_its_error)
{
    struct env e;
    env_init(&e, false, 0);
    open_flow(&e, "7", "intercept", "default");
    cr_assert_eq(line(&e, EV("7", "\"request_headers\",\"stream_id\":1,\"method\":\"POST\","
                                  "\"scheme\":\"https\",\"authority\":\"a.test\",\"path\":\"/\","
                                  "\"http_version\":\"1.1\",\"headers\":[]")),
                 0);
    cr_assert_eq(
        line(&e, EV("7", "\"payload_parsed\",\"stream_id\":1,\"direction\":"
                         "\"client_to_server\",\"decoders\":[\"gzip\",\"json\"],"
                         "\"sanitized\":false,\"format\":\"json\",\"value\":{\"a\":[1,2]}")),
        0);
    cr_assert_eq(line(&e, EV("7", "\"response_headers\",\"stream_id\":1,\"status\":200,"
                                  "\"http_version\":\"1.1\",\"headers\":[]")),
                 0);
    cr_assert_eq(line(&e, EV("7", "\"payload_parsed\",\"stream_id\":1,\"direction\":"
                                  "\"server_to_client\",\"decoders\":[\"json\"],\"sanitized\":"
                                  "true,\"format\":null,\"error\":\"json: bad token\"")),
                 0);
    /* both, or neither */
    cr_assert_eq(line(&e, EV("7", "\"payload_parsed\",\"stream_id\":1,\"direction\":"
                                  "\"server_to_client\",\"decoders\":[],\"sanitized\":false,"
                                  "\"format\":null,\"value\":1,\"error\":\"x\"")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("7", "\"payload_parsed\",\"stream_id\":1,\"direction\":"
                                  "\"server_to_client\",\"decoders\":[],\"sanitized\":false,"
                                  "\"format\":null")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("7", "\"exchange_completed\",\"stream_id\":1,\"outcome\":"
                                  "\"complete\",\"request_bytes\":0,\"response_bytes\":0")),
                 0);
    cr_assert_eq(line(&e, EV("7", "\"stream_closed\",\"reason_code\":\"client_eof\"")), 0);
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received",   "connect_decision", "request_headers",
                                       "payload_parsed",     "response_headers", "payload_parsed",
                                       "exchange_completed", "stream_closed"};
    expect_types(arr, want, 8);
    json_t *v = json_array_get(arr, 3);
    cr_assert_str_eq(str(v, "direction"), "client_to_server");
    cr_assert_eq(json_array_size(json_object_get(v, "decoders")), 2);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(v, "decoders"), 1)), "json");
    cr_assert_str_eq(str(v, "format"), "json");
    json_t *want_value = json_pack("{s:[i,i]}", "a", 1, 2);
    cr_assert(json_equal(json_object_get(v, "value"), want_value), "value: %s",
              json_dumps(json_object_get(v, "value"), JSON_ENCODE_ANY));
    json_decref(want_value);
    cr_assert_null(json_object_get(v, "error"));
    json_t *x = json_array_get(arr, 5);
    cr_assert_str_eq(str(x, "error"), "json: bad token");
    cr_assert(json_is_true(json_object_get(x, "sanitized")));
    cr_assert(json_is_null(json_object_get(x, "format")));
    cr_assert_null(json_object_get(x, "value"));
    cr_assert_null(json_object_get(x, "value_invalid_b64"));
    json_decref(arr);
}

Test(bridge_event, a_tunnelled_connect_has_no_tls_or_http_events)
{
    struct env e;
    env_init(&e, false, 0);
    open_flow(&e, "\"t\"", "tunnel", "ignore_hosts");
    cr_assert_eq(line(&e, EV("\"t\"", "\"request_headers\",\"stream_id\":1,\"method\":\"GET\","
                                      "\"scheme\":null,\"authority\":null,\"path\":\"/\","
                                      "\"http_version\":\"1.1\",\"headers\":[]")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, TLS_OP("tls_start_client", "\"t\"", "")), SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, EV("\"t\"", "\"stream_closed\",\"reason_code\":\"relay_eof\","
                                      "\"protocol\":\"http3\"")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("\"t\"", "\"stream_closed\",\"reason_code\":\"relay_eof\"")), 0);
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received", "connect_decision", "stream_closed"};
    expect_types(arr, want, 3);
    json_decref(arr);
}

Test(bridge_event, identity_and_route_of_the_decision_go_on_every_later_event)
{
    struct env e;
    env_init(&e, false, 0);
    cr_assert_eq(line(&e, EV("\"i\"", "\"connect_received\",\"method\":\"CONNECT\",\"target\":"
                                      "\"a.test:443\"")),
                 0);
    cr_assert_eq(line(&e, EV("\"i\"", "\"connect_decision\",\"decision\":\"tunnel\","
                                      "\"reason\":\"default\",\"identity\":\"\"")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("\"i\"", "\"budget_exceeded\",\"stream_id\":0,\"rule\":\"r\","
                                      "\"limit\":\"requests\",\"window_s\":5")),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("\"i\"", "\"connect_decision\",\"decision\":\"tunnel\","
                                      "\"reason\":\"default\",\"identity\":\"team-a\","
                                      "\"route\":\"direct\"")),
                 0);
    cr_assert_eq(line(&e, EV("\"i\"", "\"stream_closed\",\"reason_code\":\"relay_eof\"")), 0);
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received", "connect_decision", "stream_closed"};
    expect_types(arr, want, 3);
    cr_expect_null(json_object_get(json_array_get(arr, 0), "identity"));
    cr_expect_str_eq(str(json_array_get(arr, 1), "identity"), "team-a");
    cr_expect_str_eq(str(json_array_get(arr, 1), "route"), "direct");
    cr_expect_str_eq(str(json_array_get(arr, 2), "identity"), "team-a");
    json_decref(arr);
}

Test(bridge_event, open_streams_and_turns_are_ended_before_stream_closed)
{
    struct env e;
    env_init(&e, false, 0);
    open_flow(&e, "\"w\"", "intercept", "default");
    cr_assert_eq(line(&e, EV("\"w\"", "\"request_headers\",\"stream_id\":1,\"method\":\"GET\","
                                      "\"scheme\":\"https\",\"authority\":\"a.test\",\"path\":"
                                      "\"/ws\",\"http_version\":\"1.1\",\"headers\":[]")),
                 0);
    cr_assert_eq(line(&e, EV("\"w\"", "\"ws_turn_started\",\"stream_id\":1,\"turn_id\":1,"
                                      "\"initiator\":\"client_to_server\"")),
                 SOTH_BRIDGE_R_ORDER);
    cr_assert_eq(line(&e, EV("\"w\"", "\"response_headers\",\"stream_id\":1,\"status\":101,"
                                      "\"http_version\":\"1.1\",\"headers\":[]")),
                 0);
    cr_assert_eq(line(&e, EV("\"w\"", "\"ws_turn_started\",\"stream_id\":1,\"turn_id\":1,"
                                      "\"initiator\":\"client_to_server\"")),
                 0);
    cr_assert_eq(line(&e, EV("\"w\"", "\"stream_closed\",\"reason_code\":\"relay_eof\"")), 0);
    json_t *arr = env_events(&e);
    static const char *const want[] = {
        "connect_received", "connect_decision",  "request_headers",    "response_headers",
        "ws_turn_started",  "ws_turn_completed", "exchange_completed", "stream_closed"};
    expect_types(arr, want, 8);
    cr_assert_str_eq(str(json_array_get(arr, 5), "flush_reason"), "close");
    cr_assert_str_eq(str(json_array_get(arr, 6), "outcome"), "upstream_aborted");
    json_decref(arr);
}

Test(bridge_refusals, bad_lines_are_counted_and_say_whether_they_close)
{
    struct env e;
    env_init(&e, false, 0);
    cr_assert_eq(line(&e, "garbage"), SOTH_BRIDGE_R_BAD_JSON);
    cr_assert_eq(line(&e, "[1,2]"), SOTH_BRIDGE_R_NOT_OBJECT);
    cr_assert_eq(line(&e, "{\"kind\":\"other\",\"conn\":1}"), SOTH_BRIDGE_R_UNKNOWN_KIND);
    cr_assert_eq(line(&e, "{\"conn\":1}"), SOTH_BRIDGE_R_UNKNOWN_KIND);
    cr_assert_eq(line(&e, "{\"kind\":\"tls_op\",\"provider\":\"mitmproxy\",\"hook\":\"nope\","
                          "\"conn\":1}"),
                 SOTH_BRIDGE_R_UNKNOWN_HOOK);
    cr_assert_eq(line(&e, "{\"kind\":\"tls_op\",\"provider\":\"native\",\"hook\":"
                          "\"tls_start_client\",\"conn\":1}"),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, "{\"kind\":\"tls_op\",\"provider\":\"mitmproxy\",\"hook\":"
                          "\"tls_start_client\",\"conn\":-1}"),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, "{\"kind\":\"tls_op\",\"provider\":\"mitmproxy\",\"hook\":"
                          "\"tls_start_client\",\"conn\":1,\"server_port\":70000}"),
                 SOTH_BRIDGE_R_SCHEMA);
    cr_assert_eq(line(&e, EV("1", "\"tls_learning_audit\"")), SOTH_BRIDGE_R_SCHEMA);
    char *big = malloc(SOTH_BRIDGE_LINE_MAX + 2);
    memset(big, ' ', SOTH_BRIDGE_LINE_MAX + 1);
    cr_assert_eq(soth_bline_handle(e.b, big, SOTH_BRIDGE_LINE_MAX + 1, 1),
                 SOTH_BRIDGE_R_LINE_TOO_LONG);
    free(big);
    cr_assert(soth_bline_refusal_closes(SOTH_BRIDGE_R_BAD_JSON));
    cr_assert(soth_bline_refusal_closes(SOTH_BRIDGE_R_NOT_OBJECT));
    cr_assert(soth_bline_refusal_closes(SOTH_BRIDGE_R_LINE_TOO_LONG));
    cr_assert(!soth_bline_refusal_closes(SOTH_BRIDGE_R_ORDER));
    cr_assert(!soth_bline_refusal_closes(SOTH_BRIDGE_R_SCHEMA));
    cr_assert_eq(atomic_load(&e.bm->lines), 10);
    cr_assert_eq(atomic_load(&e.bm->refused[SOTH_BRIDGE_R_SCHEMA]), 4);
    json_t *arr = env_events(&e);
    cr_assert_eq(json_array_size(arr), 0, "a refused line emits nothing");
    json_decref(arr);
}

Test(bridge_bounds, the_conn_table_is_bounded_and_reused)
{
    struct env e;
    env_init(&e, false, 4);
    char l[512];
    for (int i = 0; i < 4; i++) {
        snprintf(l, sizeof(l), TLS_OP("tls_clienthello", "%d", ""), i);
        cr_assert_eq(line(&e, l), 0);
    }
    cr_assert_eq(line(&e, TLS_OP("tls_clienthello", "99", "")), SOTH_BRIDGE_R_TOO_MANY_CONNS);
    cr_assert_eq(atomic_load(&e.bm->flows), 4);
    cr_assert_eq(line(&e, TLS_OP("client_disconnected", "2", "")), 0);
    cr_assert_eq(line(&e, TLS_OP("tls_clienthello", "99", "")), 0);
    static const int open_ones[] = {0, 1, 3, 99};
    for (int i = 0; i < 4; i++) {
        snprintf(l, sizeof(l), TLS_OP("client_disconnected", "%d", ""), open_ones[i]);
        cr_assert_eq(line(&e, l), 0);
    }
    cr_assert_eq(atomic_load(&e.bm->flows), 0);
    /* churn: many conns through a table of 4, the hash stays consistent */
    for (int i = 1000; i < 21000; i++) {
        snprintf(l, sizeof(l), TLS_OP("tls_clienthello", "%d", ""), i);
        cr_assert_eq(line(&e, l), 0, "conn %d", i);
        snprintf(l, sizeof(l), TLS_OP("client_disconnected", "%d", ""), i);
        cr_assert_eq(line(&e, l), 0);
        if (i % 3 == 0) {
            snprintf(l, sizeof(l), TLS_OP("client_disconnected", "%d", ""), (i * 7) % 3);
            cr_assert_eq(line(&e, l), 0);
            snprintf(l, sizeof(l), TLS_OP("tls_clienthello", "%d", ""), (i * 7) % 3);
            cr_assert_eq(line(&e, l), 0);
        }
    }
    cr_assert_leq(soth_bline_open_flows(e.b), 4);
    json_decref(env_events(&e));
}

Test(bridge_bounds, idle_conns_end_with_idle_timeout)
{
    struct env e;
    env_init(&e, false, 0);
    cr_assert_eq(line(&e, TLS_OP("tls_start_client", "1", "")), 0);
    soth_bline_expire(e.b, 1000000000ull + 999000000ull);
    cr_assert_eq(soth_bline_open_flows(e.b), 1);
    soth_bline_expire(e.b, 1000000000ull + 1000000000ull);
    cr_assert_eq(soth_bline_open_flows(e.b), 0);
    soth_ev_flush(soth_observe_bridge_producer(e.o));
    json_t *arr = env_events(&e);
    static const char *const want[] = {"connect_received", "connect_decision",
                                       "tls_handshake_started", "stream_closed"};
    expect_types(arr, want, 4);
    cr_assert_str_eq(str(json_array_get(arr, 3), "reason_code"), "idle_timeout");
    json_decref(arr);
}

Test(bridge_refusals, every_prefix_of_a_line_is_handled)
{
    struct env e;
    env_init(&e, false, 0);
    const char *good = EV("\"p\"", "\"connect_received\",\"method\":{\"b64\":\"Q09OTkVDVA==\"},"
                                   "\"target\":\"a.test:443\"");
    for (size_t n = 0; n < strlen(good); n++)
        cr_assert_neq(soth_bline_handle(e.b, good, n, 1), 0, "prefix %zu accepted", n);
    cr_assert_eq(soth_bline_handle(e.b, good, strlen(good), 1), 0);
    json_t *arr = env_events(&e);
    cr_assert_str_eq(str(json_array_get(arr, 0), "method"), "CONNECT");
    json_decref(arr);
}
