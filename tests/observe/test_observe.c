/*
 * Event rings end to end: producers (workers) -> telemetry thread -> ring file -> reader JSON.
 * Concurrency cases run under TSan too (ctest label "tsan").
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soth/observe.h"

static char tmpdir[64];

static struct soth_config *test_cfg(uint32_t ring_mb)
{
    struct soth_config *c = calloc(1, sizeof(*c));
    atomic_init(&c->refs, 1);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/soth-obs-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    char path[128];
    snprintf(path, sizeof(path), "%s/ev.ring", tmpdir);
    c->events.ring_path = strdup(path);
    c->events.ring_size_mb = ring_mb;
    c->events.body_capture_bytes = 4096;
    return c;
}

static void free_cfg(struct soth_config *c)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    cr_expect_eq(system(cmd), 0);
    free(c->events.ring_path);
    free(c);
}

struct lines {
    json_t *arr;
    size_t overruns;
    uint64_t lost;
    char *raw;
    size_t raw_len;
};

static void collect(void *ctx, const char *line, size_t len)
{
    struct lines *l = ctx;
    if (json_array_size(l->arr) > 1000)
        goto parse; /* big runs: keep the parsed events only */
    l->raw = realloc(l->raw, l->raw_len + len + 1);
    memcpy(l->raw + l->raw_len, line, len);
    l->raw_len += len;
    l->raw[l->raw_len] = '\0';
parse:;
    json_error_t je;
    json_t *j = json_loadb(line, len, JSON_ALLOW_NUL, &je);
    cr_assert_not_null(j, "bad JSON line (%s): %.*s", je.text, (int)len, line);
    if (strcmp(json_string_value(json_object_get(j, "type")), "ring_overrun") == 0) {
        l->overruns++;
        l->lost += (uint64_t)json_integer_value(json_object_get(j, "lost"));
    }
    json_array_append_new(l->arr, j);
}

static struct lines read_all(const char *path)
{
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    soth_ring_reader_seek(r, true);
    struct lines l = {.arr = json_array()};
    soth_ring_reader_poll(r, NULL, collect, &l);
    soth_ring_reader_free(r);
    return l;
}

static struct soth_iov S(const char *s) {
    return soth_iov(s, strlen(s));
}

/* ---- golden JSON for every event type ---------------------------------------------------- */

Test(observe, json_for_every_event_type)
{
    struct soth_config *cfg = test_cfg(1);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    cr_assert_not_null(o, "%s", err);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
    sin.sin_addr.s_addr = htonl(0x7f000001);
    soth_ev_flow_init(&f, p, 77, 0, (struct sockaddr *)&sin, sizeof(sin));
    soth_ev_flow_set_server(&f, S("origin.test"), 443);
    struct soth_header h[] = {{S("Host"), S("origin.test")},
                              {S("X-Hostile\xff"), {"a\0\"\n\x01", 5}}};
    struct soth_iov decs[] = {S("gzip"), S("grpc")};
    struct soth_ws_turn_stats st = {.turn_id = 3,
                                    .initiator = SOTH_LEG_UPSTREAM,
                                    .client_frames = 1,
                                    .server_frames = 2,
                                    .client_bytes = 10,
                                    .server_bytes = 20,
                                    .started_ns = 100,
                                    .ended_ns = 200,
                                    .flush_reason = SOTH_FLUSH_IDLE};
    soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE, S("*.test"));
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_TLS);
    soth_ev_tls_handshake_started(&f, SOTH_LEG_UPSTREAM, S("origin.test"));
    soth_ev_tls_handshake_succeeded(&f, SOTH_LEG_UPSTREAM, S("TLSv1.3"),
                                    S("TLS_AES_128_GCM_SHA256"), S("h2"));
    soth_ev_tls_handshake_failed(&f, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA, S("alert"),
                                 SOTH_TLSP_NATIVE, S("alert 48"), 2, 5);
    soth_ev_tls_learning_audit(&f, true, S("threshold"), S("origin.test"), SOTH_TLSP_NATIVE);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_HTTP2);
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/x"), S("2"), h, 2);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 1, 0, 3, S("abc"), false);
    soth_ev_trailers(&f, SOTH_LEG_CLIENT, 1, h, 1);
    soth_ev_response_headers(&f, 1, 200, S("2"), h, 1, NULL, 0);
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, 0, 5000, S("hello"), true);
    soth_ev_trailers(&f, SOTH_LEG_UPSTREAM, 1, NULL, 0);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 3, 5000);
    soth_ev_ws_message(&f, 3, SOTH_LEG_CLIENT, 1, 2, S("hi"), false);
    soth_ev_ws_turn_started(&f, 3, 3, SOTH_LEG_UPSTREAM);
    soth_ev_ws_turn_completed(&f, 3, &st);
    soth_ev_sse_event(&f, 5, S("tick"), soth_iov(NULL, 0), -1, S("line1\nline2"));
    soth_ev_grpc_message(&f, 7, SOTH_LEG_UPSTREAM, true, 9, S("\x01\x02"), false);
    soth_ev_payload_parsed(&f, 7, SOTH_LEG_UPSTREAM, decs, 2, true, S("json"), S("{\"a\":[1,2]}"),
                           soth_iov(NULL, 0));
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 11, 22);
    soth_ev_connect_received(&f, S("late"), S("x")); /* after stream_closed: never written */
    soth_ev_flush(p);
    soth_observe_stop(o);
    struct lines l = read_all(cfg->events.ring_path);
    soth_observe_free(o);

    const char *expect[] = {
        "{\"type\":\"connect_received\",\"method\":\"CONNECT\",\"target\":\"origin.test:443\","
        "\"protocol\":\"tcp\"}",
        "{\"type\":\"connect_decision\",\"decision\":\"intercept\",\"reason\":\"policy_rule\","
        "\"rule\":\"*.test\"}",
        "{\"type\":\"tls_handshake_started\",\"side\":\"upstream\",\"sni\":\"origin.test\","
        "\"protocol\":\"tls\"}",
        "{\"type\":\"tls_handshake_succeeded\",\"side\":\"upstream\",\"tls_version\":\"TLSv1.3\","
        "\"cipher\":\"TLS_AES_128_GCM_SHA256\",\"alpn\":\"h2\"}",
        "{\"type\":\"tls_handshake_failed\",\"side\":\"client\",\"tls_failure_reason\":"
        "\"unknown_ca\",\"tls_failure_source\":\"alert\",\"tls_ops_provider\":\"native\","
        "\"detail\":\"alert 48\",\"host_failure_count\":2,\"global_failure_count\":5}",
        "{\"type\":\"tls_learning_audit\",\"decision\":\"applied\",\"reason\":\"threshold\","
        "\"host\":\"origin.test\",\"signal_provider\":\"native\"}",
        "{\"type\":\"request_headers\",\"stream_id\":1,\"method\":\"GET\",\"scheme\":\"https\","
        "\"authority\":\"origin.test\",\"path\":\"/x\",\"http_version\":\"2\",\"protocol\":"
        "\"http2\"}",
        "{\"type\":\"request_body_chunk\",\"stream_id\":1,\"offset\":0,\"len\":3,\"data_b64\":"
        "\"YWJj\",\"truncated\":false}",
        "{\"type\":\"request_trailers\",\"stream_id\":1,\"headers\":[[\"Host\",\"origin.test\"]]}",
        "{\"type\":\"response_headers\",\"stream_id\":1,\"status\":200,\"http_version\":\"2\"}",
        "{\"type\":\"response_body_chunk\",\"stream_id\":1,\"offset\":0,\"len\":5000,"
        "\"data_b64\":\"aGVsbG8=\",\"truncated\":true}",
        "{\"type\":\"response_trailers\",\"stream_id\":1,\"headers\":[]}",
        "{\"type\":\"exchange_completed\",\"stream_id\":1,\"outcome\":\"complete\","
        "\"request_bytes\":3,\"response_bytes\":5000}",
        "{\"type\":\"ws_message\",\"stream_id\":3,\"direction\":\"client_to_server\",\"opcode\":1,"
        "\"len\":2,\"data_b64\":\"aGk=\",\"truncated\":false}",
        "{\"type\":\"ws_turn_started\",\"stream_id\":3,\"turn_id\":3,\"initiator\":"
        "\"server_to_client\"}",
        "{\"type\":\"ws_turn_completed\",\"stream_id\":3,\"turn_id\":3,\"initiator\":"
        "\"server_to_client\",\"client_frames\":1,\"server_frames\":2,\"client_bytes\":10,"
        "\"server_bytes\":20,\"started_ns\":100,\"ended_ns\":200,\"flush_reason\":\"idle\"}",
        "{\"type\":\"sse_event\",\"stream_id\":5,\"event\":\"tick\",\"id\":null,\"retry\":null,"
        "\"data\":\"line1\\nline2\"}",
        "{\"type\":\"grpc_message\",\"stream_id\":7,\"direction\":\"server_to_client\","
        "\"compressed\":true,\"length\":9,\"data_b64\":\"AQI=\",\"truncated\":false}",
        "{\"type\":\"payload_parsed\",\"stream_id\":7,\"direction\":\"server_to_client\","
        "\"decoders\":[\"gzip\",\"grpc\"],\"sanitized\":true,\"format\":\"json\","
        "\"value\":{\"a\":[1,2]}}",
        "{\"type\":\"stream_closed\",\"reason_code\":\"client_eof\",\"bytes_client_to_server\":11,"
        "\"bytes_server_to_client\":22,\"events_dropped\":0}",
    };
    size_t n = sizeof(expect) / sizeof(expect[0]);
    cr_assert_eq(json_array_size(l.arr), n, "got %zu lines:\n%s", json_array_size(l.arr), l.raw);
    for (size_t i = 0; i < n; i++) {
        json_t *got = json_array_get(l.arr, i);
        json_error_t je;
        json_t *want = json_loads(expect[i], 0, &je);
        cr_assert_not_null(want, "expectation %zu: %s", i, je.text);
        const char *k;
        json_t *v;
        json_object_foreach(want, k, v)
        {
            json_t *g = json_object_get(got, k);
            char *gs = json_dumps(got, 0);
            cr_expect(g != NULL && json_equal(g, v), "event %zu field %s: %s", i, k, gs);
            free(gs);
        }
        /* Every event carries the common fields. */
        cr_expect_eq(json_integer_value(json_object_get(got, "v")), 1);
        cr_expect_eq(json_integer_value(json_object_get(got, "seq")), (json_int_t)i);
        cr_expect_eq(json_integer_value(json_object_get(got, "gseq")), (json_int_t)i + 1);
        cr_expect_eq(json_integer_value(json_object_get(got, "flow_id")), 77);
        cr_expect_str_eq(json_string_value(json_object_get(got, "client_addr")), "127.0.0.1:40000");
        cr_expect_str_eq(json_string_value(json_object_get(got, "server_host")), "origin.test");
        cr_expect_eq(json_integer_value(json_object_get(got, "server_port")), 443);
        cr_expect_gt(json_integer_value(json_object_get(got, "ts_ns")), 1600000000000000000ll);
        json_decref(want);
    }
    /* connect_decision without a rule leaves the field out. */
    /* Hostile header bytes: invalid UTF-8 as {"b64":...}, control bytes escaped. */
    cr_expect(strstr(l.raw, "[{\"b64\":\"WC1Ib3N0aWxl/w==\"},\"a\\u0000\\\"\\n\\u0001\"]") != NULL,
              "%s", l.raw);
    json_decref(l.arr);
    free(l.raw);
    free_cfg(cfg);
}

Test(observe, utf8_is_kept_and_invalid_bytes_escaped)
{
    struct soth_config *cfg = test_cfg(1);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    cr_assert_not_null(o, "%s", err);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, soth_observe_producer(o, 0), 1, 0, NULL, 0);
    /* valid 2/3/4-byte UTF-8, an overlong encoding, a surrogate, a truncated sequence */
    soth_ev_connect_parse_failed(&f, S("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), S("\xc0\xaf|"));
    soth_ev_connect_received(&f, S("x"), S("\xed\xa0\x80")); /* UTF-8-encoded surrogate */
    soth_ev_connect_received(&f, S("x"), S("\xe2\x82"));     /* truncated sequence */
    soth_ev_stream_closed(&f, SOTH_CLOSE_PARSE_FAILED, 0, 0);
    soth_ev_flush(soth_observe_producer(o, 0));
    soth_observe_stop(o);
    struct lines l = read_all(cfg->events.ring_path);
    soth_observe_free(o);
    /* Valid UTF-8 stays a string; the first invalid sequence turns the value into base64. */
    cr_expect(strstr(l.raw, "\"reason_code\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"") != NULL,
              "%s", l.raw);
    cr_expect(strstr(l.raw, "\"detail\":{\"b64\":\"wK98\"}") != NULL, "%s", l.raw);
    cr_expect(strstr(l.raw, "\"target\":{\"b64\":\"7aCA\"}") != NULL, "%s", l.raw);
    cr_expect(strstr(l.raw, "\"target\":{\"b64\":\"4oI=\"}") != NULL, "%s", l.raw);
    json_decref(l.arr);
    free(l.raw);
    free_cfg(cfg);
}

/* ---- a reader racing the writer across many laps ------------------------------------------ */

struct race {
    struct soth_observe *o;
    const char *path;
    _Atomic int done;
    uint64_t written;
};

static void *race_writer(void *arg)
{
    struct race *r = arg;
    struct soth_ev_producer *p = soth_observe_producer(r->o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 5, 0, NULL, 0);
    char pad[500];
    memset(pad, 'z', sizeof(pad));
    for (unsigned i = 0; i < 200000; i++) {
        soth_ev_connect_parse_failed(&f, S("lap"), soth_iov(pad, (i * 7) % sizeof(pad)));
        if (i % 16 == 0)
            soth_ev_flush(p);
    }
    soth_ev_flush(p);
    soth_observe_stop(r->o);
    atomic_store(&r->done, 1);
    return NULL;
}

struct race_check {
    uint64_t last_gseq, seen, lost, overruns;
    uint64_t pending_lost;
    bool have_pending;
};

static void race_line(void *ctx, const char *line, size_t len)
{
    struct race_check *c = ctx;
    json_error_t je;
    json_t *j = json_loadb(line, len, 0, &je);
    cr_assert_not_null(j, "torn or invalid line: %.*s", (int)len, line);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (strcmp(type, "ring_overrun") == 0) {
        c->overruns++;
        c->pending_lost = (uint64_t)json_integer_value(json_object_get(j, "lost"));
        c->have_pending = true;
    } else {
        cr_assert_str_eq(type, "connect_parse_failed");
        cr_assert_str_eq(json_string_value(json_object_get(j, "reason_code")), "lap");
        uint64_t g = (uint64_t)json_integer_value(json_object_get(j, "gseq"));
        uint64_t gap = g - c->last_gseq - 1;
        if (c->have_pending) {
            cr_assert_eq(c->pending_lost, gap, "overrun count %llu, gseq gap %llu",
                         (unsigned long long)c->pending_lost, (unsigned long long)gap);
            c->lost += gap;
            c->have_pending = false;
        } else {
            cr_assert_eq(gap, 0, "gseq jumped without an overrun report");
        }
        c->last_gseq = g;
        c->seen++;
    }
    json_decref(j);
}

Test(observe, reader_racing_writer_never_tears, .timeout = 120)
{
    struct soth_config *cfg = test_cfg(1);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    cr_assert_not_null(o, "%s", err);
    struct soth_ring_reader *rd = soth_ring_reader_open(cfg->events.ring_path, err, sizeof(err));
    cr_assert_not_null(rd, "%s", err);
    soth_ring_reader_seek(rd, true);
    cr_assert_eq(soth_observe_start(o), 0);
    struct race r = {.o = o, .path = cfg->events.ring_path};
    pthread_t t;
    pthread_create(&t, NULL, race_writer, &r);
    struct race_check c = {0};
    unsigned slow = 0;
    while (!atomic_load(&r.done)) {
        soth_ring_reader_poll(rd, NULL, race_line, &c);
        /* Now and then fall behind on purpose so the writer laps us. */
        if (++slow % 50 == 0)
            usleep(20000);
    }
    soth_ring_reader_poll(rd, NULL, race_line, &c);
    pthread_join(t, NULL);
    soth_ring_reader_free(rd);
    /* Events the producer dropped on a full SPSC ring never got a gseq: not the reader's loss. */
    uint64_t dropped = atomic_load(&soth_observe_metrics(o, 0)->events_dropped);
    soth_observe_free(o);
    cr_expect_eq(c.seen + c.lost + dropped, 200000, "seen %llu lost %llu dropped %llu",
                 (unsigned long long)c.seen, (unsigned long long)c.lost,
                 (unsigned long long)dropped);
    cr_expect_gt(c.overruns, 0, "the test must actually lap the reader");
    cr_expect_gt(c.seen, 0);
    free_cfg(cfg);
}
