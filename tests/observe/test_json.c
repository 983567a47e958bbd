/*
 * Golden JSON for every event type of docs/events.md (exact lines, field names and order), through
 * the real path: producer -> SPSC ring -> telemetry thread -> ring file -> reader. Hostile bytes
 * included.
 */
#include "obs_test.h"

/** Emit, stop, and return the ring as text with ts_ns / duration_ns zeroed. */
static struct text run_and_read(struct obs_env *e, struct soth_observe *o)
{
    soth_observe_stop(o);
    struct text t = ring_text(e->ring, NULL);
    soth_observe_free(o);
    zero_field(t.p, "ts_ns");
    zero_field(t.p, "duration_ns");
    t.len = strlen(t.p);
    return t;
}

static const char *line_at(const struct text *t, size_t i, size_t *len)
{
    const char *p = t->p;
    for (size_t k = 0; k < i; k++) {
        p = strchr(p, '\n');
        cr_assert_not_null(p, "no line %zu in:\n%s", i, t->p);
        p++;
    }
    const char *nl = strchr(p, '\n');
    cr_assert_not_null(nl, "no line %zu in:\n%s", i, t->p);
    *len = (size_t)(nl - p);
    return p;
}

struct golden {
    const char *type, *proto, *fields;
};

Test(json, golden_every_event_type)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    flow_v4(&f, p, 77, 0);
    soth_ev_flow_set_server(&f, S("origin.test"), 443);
    struct soth_header rq[] = {{S("host"), S("origin.test")}, {S("accept"), S("*/*")}};
    struct soth_header tr[] = {{S("x-t"), S("1")}};
    struct soth_header rs[] = {{S("content-type"), S("text/plain")}};
    struct soth_header alt[] = {{S("Alt-Svc"), S("h3=\":443\"; ma=60, h2=\":443\", h3-29=\":1\"")}};
    struct soth_iov removed[] = {S("h3=\":443\"; ma=60"), S("h3-29=\":1\"")};
    struct soth_iov decs[] = {S("gzip"), S("grpc")};
    struct soth_ws_turn_stats st = {.turn_id = 3,
                                    .initiator = SOTH_LEG_UPSTREAM,
                                    .client_frames = 1,
                                    .server_frames = 2,
                                    .client_bytes = 10,
                                    .server_bytes = 20,
                                    .started_ns = 100,
                                    .ended_ns = 200,
                                    .flush_reason = SOTH_FLUSH_DIRECTION_CHANGE};

    soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_parse_failed(&f, S("bad_header"), S("line 2: \"x\""));
    soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE, S("*.test"));
    soth_ev_connect_decision(&f, SOTH_ACTION_TUNNEL, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_TLS);
    soth_ev_tls_handshake_started(&f, SOTH_LEG_UPSTREAM, S("origin.test"));
    soth_ev_tls_handshake_succeeded(&f, SOTH_LEG_UPSTREAM, S("TLSv1.3"),
                                    S("TLS_AES_128_GCM_SHA256"), S("h2"));
    soth_ev_tls_handshake_failed(&f, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA, S("alert"),
                                 SOTH_TLSP_NATIVE, S("alert 48"), 2, 5);
    soth_ev_tls_learning_audit(&f, true, S("threshold"), S("origin.test"), SOTH_TLSP_MITMPROXY);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_HTTP2);
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/x"), S("2"), rq, 2);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 1, 0, 3, S("abc"), false);
    soth_ev_trailers(&f, SOTH_LEG_CLIENT, 1, tr, 1);
    soth_ev_response_headers(&f, 1, 200, S("2"), rs, 1, NULL, 0);
    soth_ev_response_headers(&f, 1, 200, S("1.1"), alt, 1, removed, 2);
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, 0, 5000, S("hello"), true);
    soth_ev_trailers(&f, SOTH_LEG_UPSTREAM, 1, NULL, 0);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 3, 5000);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_WEBSOCKET);
    soth_ev_ws_message(&f, 3, SOTH_LEG_CLIENT, 1, 2, S("hi"), false);
    soth_ev_ws_turn_started(&f, 3, 3, SOTH_LEG_UPSTREAM);
    soth_ev_ws_turn_completed(&f, 3, &st);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_SSE);
    soth_ev_sse_event(&f, 5, S("tick"), SOTH_IOV_NULL, -1, S("line1\nline2"));
    soth_ev_sse_event(&f, 5, SOTH_IOV_NULL, S("7"), 3000, S(""));
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_GRPC);
    soth_ev_grpc_message(&f, 7, SOTH_LEG_UPSTREAM, true, 9, S("\x01\x02"), false);
    soth_ev_payload_parsed(&f, 7, SOTH_LEG_UPSTREAM, decs, 2, true, S("json"), S("{\"a\": [1, 2]}"),
                           SOTH_IOV_NULL);
    soth_ev_payload_parsed(&f, 7, SOTH_LEG_CLIENT, NULL, 0, false, SOTH_IOV_NULL, SOTH_IOV_NULL,
                           S("truncated msgpack"));
    struct soth_iov alpn[] = {S("h3"), S("h3-29")};
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_HTTP3);
    soth_ev_quic_client_hello(&f, S("0x00000001"), S("origin.test"), alpn, 2, 2);
    soth_ev_quic_client_hello(&f, S("0x6b3343cf"), SOTH_IOV_NULL, NULL, 0, 1);
    soth_ev_budget_exceeded(&f, 7, S("r1"), 1, 60);
    soth_ev_stream_closed_dgrams(&f, SOTH_CLOSE_IDLE_TIMEOUT, 11, 22, 3, 4);
    soth_ev_connect_received(&f, S("late"), S("x")); /* after stream_closed: never written */
    soth_ev_flush(p);
    struct text t = run_and_read(&e, o);

    static const struct golden g[] = {
        {"connect_received", "tcp", ",\"method\":\"CONNECT\",\"target\":\"origin.test:443\""},
        {"connect_parse_failed", "tcp",
         ",\"reason_code\":\"bad_header\",\"detail\":\"line 2: \\\"x\\\"\""},
        {"connect_decision", "tcp",
         ",\"decision\":\"intercept\",\"reason\":\"policy_rule\",\"rule\":\"*.test\""},
        {"connect_decision", "tcp", ",\"decision\":\"tunnel\",\"reason\":\"default\""},
        {"tls_handshake_started", "tls", ",\"side\":\"upstream\",\"sni\":\"origin.test\""},
        {"tls_handshake_succeeded", "tls",
         ",\"side\":\"upstream\",\"tls_version\":\"TLSv1.3\",\"cipher\":\"TLS_AES_128_GCM_SHA256\","
         "\"alpn\":\"h2\""},
        {"tls_handshake_failed", "tls",
         ",\"side\":\"client\",\"tls_failure_reason\":\"unknown_ca\",\"tls_failure_source\":"
         "\"alert\",\"tls_ops_provider\":\"native\",\"detail\":\"alert 48\","
         "\"host_failure_count\":2,\"global_failure_count\":5"},
        {"tls_learning_audit", "tls",
         ",\"decision\":\"applied\",\"reason\":\"threshold\",\"host\":\"origin.test\","
         "\"signal_provider\":\"mitmproxy\""},
        {"request_headers", "http2",
         ",\"stream_id\":1,\"method\":\"GET\",\"scheme\":\"https\",\"authority\":\"origin.test\","
         "\"path\":\"/x\",\"http_version\":\"2\",\"headers\":[[\"host\",\"origin.test\"],"
         "[\"accept\",\"*/*\"]]"},
        {"request_body_chunk", "http2",
         ",\"stream_id\":1,\"offset\":0,\"len\":3,\"data_b64\":\"YWJj\",\"truncated\":false"},
        {"request_trailers", "http2", ",\"stream_id\":1,\"headers\":[[\"x-t\",\"1\"]]"},
        {"response_headers", "http2",
         ",\"stream_id\":1,\"status\":200,\"http_version\":\"2\",\"headers\":[[\"content-type\","
         "\"text/plain\"]]"},
        {"response_headers", "http2",
         ",\"stream_id\":1,\"status\":200,\"http_version\":\"1.1\",\"headers\":[[\"Alt-Svc\","
         "\"h3=\\\":443\\\"; ma=60, h2=\\\":443\\\", h3-29=\\\":1\\\"\"]],\"alt_svc_removed\":["
         "\"h3=\\\":443\\\"; ma=60\",\"h3-29=\\\":1\\\"\"]"},
        {"response_body_chunk", "http2",
         ",\"stream_id\":1,\"offset\":0,\"len\":5000,\"data_b64\":\"aGVsbG8=\",\"truncated\":true"},
        {"response_trailers", "http2", ",\"stream_id\":1,\"headers\":[]"},
        {"exchange_completed", "http2",
         ",\"stream_id\":1,\"outcome\":\"complete\",\"request_bytes\":3,\"response_bytes\":5000"},
        {"ws_message", "websocket",
         ",\"stream_id\":3,\"direction\":\"client_to_server\",\"opcode\":1,\"len\":2,\"data_b64\":"
         "\"aGk=\",\"truncated\":false"},
        {"ws_turn_started", "websocket",
         ",\"stream_id\":3,\"turn_id\":3,\"initiator\":\"server_to_client\""},
        {"ws_turn_completed", "websocket",
         ",\"stream_id\":3,\"turn_id\":3,\"initiator\":\"server_to_client\",\"client_frames\":1,"
         "\"server_frames\":2,\"client_bytes\":10,\"server_bytes\":20,\"started_ns\":100,"
         "\"ended_ns\":200,\"flush_reason\":\"direction_change\""},
        {"sse_event", "sse",
         ",\"stream_id\":5,\"event\":\"tick\",\"id\":null,\"retry\":null,\"data\":"
         "\"line1\\nline2\""},
        {"sse_event", "sse",
         ",\"stream_id\":5,\"event\":null,\"id\":\"7\",\"retry\":3000,\"data\":\"\""},
        {"grpc_message", "grpc",
         ",\"stream_id\":7,\"direction\":\"server_to_client\",\"compressed\":true,\"length\":9,"
         "\"data_b64\":\"AQI=\",\"truncated\":false"},
        {"payload_parsed", "grpc",
         ",\"stream_id\":7,\"direction\":\"server_to_client\",\"decoders\":[\"gzip\",\"grpc\"],"
         "\"sanitized\":true,\"format\":\"json\",\"value\":{\"a\": [1, 2]}"},
        {"payload_parsed", "grpc",
         ",\"stream_id\":7,\"direction\":\"client_to_server\",\"decoders\":[],\"sanitized\":false,"
         "\"format\":null,\"error\":\"truncated msgpack\""},
        {"quic_client_hello", "http3",
         ",\"quic_version\":\"0x00000001\",\"sni\":\"origin.test\",\"alpn\":[\"h3\","
         "\"h3-29\"],\"initial_packets\":2"},
        {"quic_client_hello", "http3",
         ",\"quic_version\":\"0x6b3343cf\",\"sni\":null,\"alpn\":[],\"initial_packets\":1"},
        {"budget_exceeded", "http3",
         ",\"stream_id\":7,\"rule\":\"r1\",\"limit\":\"requests\",\"window_s\":60"},
        {"stream_closed", "http3",
         ",\"reason_code\":\"idle_timeout\",\"bytes_client_to_server\":11,"
         "\"bytes_server_to_client\":22,\"duration_ns\":0,\"events_dropped\":0,"
         "\"datagrams_client_to_server\":3,\"datagrams_server_to_client\":4"},
    };
    size_t n = sizeof(g) / sizeof(g[0]);
    cr_assert_eq(t.lines, n, "got %zu lines:\n%s", t.lines, t.p);
    bool seen[SOTH_EV_TYPE_COUNT] = {false};
    for (size_t i = 0; i < n; i++) {
        char want[1024];
        snprintf(want, sizeof(want),
                 "{\"v\":1,\"type\":\"%s\",\"gseq\":%zu,\"flow_id\":77,\"seq\":%zu,\"ts_ns\":0,"
                 "\"worker\":0,\"client_addr\":\"127.0.0.1:40000\",\"server_host\":"
                 "\"origin.test\",\"server_port\":443,\"protocol\":\"%s\"%s}",
                 g[i].type, i + 1, i, g[i].proto, g[i].fields);
        size_t len;
        const char *got = line_at(&t, i, &len);
        cr_expect(len == strlen(want) && memcmp(got, want, len) == 0,
                  "line %zu\n got: %.*s\nwant: %s", i, (int)len, got, want);
        seen[soth_ev_type_from_name(g[i].type, strlen(g[i].type))] = true;
    }
    for (int i = 0; i < SOTH_EV_TYPE_COUNT; i++)
        cr_expect(seen[i], "no golden line for %s", soth_ev_type_names[i]);
    json_decref(text_parse(&t)); /* and every line is strict JSON */
    free(t.p);
    obs_env_dispose(&e);
}

Test(json, hostile_bytes_are_lossless_and_valid)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(8443)};
    inet_pton(AF_INET6, "::1", &s6.sin6_addr);
    soth_ev_flow_init(&f, p, 9, 0, (struct sockaddr *)&s6, sizeof(s6));
    soth_ev_flow_set_server(&f, soth_iov("ev\xffil", 5), 8080);
    struct soth_header h[] = {
        {S("X-Hostile\xff"), soth_iov("a\0\"\\\n\r\t\x01\x1f\x7f", 10)},
        {S("caf\xc3\xa9"), S("\xe2\x80\xa8\xf0\x9f\x98\x80")}, /* valid UTF-8 stays as is */
        {S("overlong"), S("\xc0\xaf")},
        {S("surrogate"), S("\xed\xa0\x80")},
        {S("too-big"), S("\xf4\x90\x80\x80")},
        {S("truncated"), S("\xe2\x82")},
        {soth_iov("", 0), soth_iov("\0\xff", 2)},
    };
    soth_ev_request_headers(&f, 1, S("GET"), SOTH_IOV_NULL, SOTH_IOV_NULL, S("/\xff"), S("1.1"), h,
                            SOTH_ARRAY_LEN(h));
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 0, 0);
    soth_ev_flush(p);
    struct text t = run_and_read(&e, o);
    cr_assert_eq(t.lines, 2, "%s", t.p);
    const char *want =
        "{\"v\":1,\"type\":\"request_headers\",\"gseq\":1,\"flow_id\":9,\"seq\":0,\"ts_ns\":0,"
        "\"worker\":0,\"client_addr\":\"[::1]:8443\",\"server_host\":{\"b64\":\"ZXb/aWw=\"},"
        "\"server_port\":8080,\"protocol\":\"tcp\",\"stream_id\":1,\"method\":\"GET\","
        "\"scheme\":null,\"authority\":null,\"path\":{\"b64\":\"L/8=\"},\"http_version\":\"1.1\","
        "\"headers\":[[{\"b64\":\"WC1Ib3N0aWxl/w==\"},\"a\\u0000\\\"\\\\\\n\\r\\t\\u0001\\u001f"
        "\\u007f\"],[\"caf\xc3\xa9\",\"\xe2\x80\xa8\xf0\x9f\x98\x80\"],[\"overlong\",{\"b64\":"
        "\"wK8=\"}],[\"surrogate\",{\"b64\":\"7aCA\"}],[\"too-big\",{\"b64\":\"9JCAgA==\"}],"
        "[\"truncated\",{\"b64\":\"4oI=\"}],[\"\",{\"b64\":\"AP8=\"}]]}\n";
    cr_expect(strncmp(t.p, want, strlen(want)) == 0, "\n got: %s\nwant: %s", t.p, want);
    json_t *arr = text_parse(&t);
    /* Decoded by a strict parser, the escaped value is exactly the original bytes. */
    json_t *hv =
        json_array_get(json_array_get(json_object_get(json_array_get(arr, 0), "headers"), 0), 1);
    cr_assert_eq(json_string_length(hv), 10);
    cr_expect_eq(memcmp(json_string_value(hv), "a\0\"\\\n\r\t\x01\x1f\x7f", 10), 0);
    json_decref(arr);
    free(t.p);
    obs_env_dispose(&e);
}

Test(json, invalid_value_json_is_kept_aside)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 3, 0, NULL, 0);
    soth_ev_payload_parsed(&f, 1, SOTH_LEG_CLIENT, NULL, 0, false, S("json"), S("{bad"),
                           SOTH_IOV_NULL);
    soth_ev_payload_parsed(&f, 1, SOTH_LEG_CLIENT, NULL, 0, false, S("json"), S("[1,\n2]\r\n"),
                           SOTH_IOV_NULL);
    soth_ev_payload_parsed(&f, 1, SOTH_LEG_CLIENT, NULL, 0, false, S("json"), S("\"\xff\""),
                           SOTH_IOV_NULL);
    soth_ev_flush(p);
    struct text t = run_and_read(&e, o);
    cr_assert_eq(t.lines, 3, "%s", t.p);
    cr_expect(strstr(t.p, "\"value\":null,\"value_invalid_b64\":\"e2JhZA==\"}\n") != NULL, "%s",
              t.p);
    /* JSON whitespace newlines must not split the line. */
    cr_expect(strstr(t.p, "\"value\":[1, 2]  }\n") != NULL, "%s", t.p);
    cr_expect(strstr(t.p, "\"value\":null,\"value_invalid_b64\":\"Iv8i\"}\n") != NULL, "%s", t.p);
    json_decref(text_parse(&t));
    free(t.p);
    obs_env_dispose(&e);
}

Test(json, client_addr_host_and_bodies_are_bounded)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    e.cfg->events.body_capture_bytes = 4;
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 4, 0, NULL, 0);
    char host[400];
    memset(host, 'h', sizeof(host));
    soth_ev_flow_set_server(&f, soth_iov(host, sizeof(host)), 1);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 1, 0, 10, S("0123456789"), false);
    soth_ev_ws_message(&f, 1, SOTH_LEG_UPSTREAM, 2, 10, S("0123456789"), false);
    soth_ev_grpc_message(&f, 1, SOTH_LEG_UPSTREAM, false, 10, S("0123"), false);
    soth_ev_flush(p);
    struct text t = run_and_read(&e, o);
    json_t *arr = text_parse(&t);
    cr_assert_eq(json_array_size(arr), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *ev = json_array_get(arr, i);
        cr_expect_str_eq(json_string_value(json_object_get(ev, "client_addr")), "");
        cr_expect_eq(json_string_length(json_object_get(ev, "server_host")), SOTH_EV_HOST_MAX);
        cr_expect_str_eq(json_string_value(json_object_get(ev, "data_b64")), "MDEyMw==");
        /* Cut by the capture bound: truncated, whatever the caller said; exactly 4: not. */
        cr_expect_eq(json_is_true(json_object_get(ev, "truncated")), i < 2, "event %zu", i);
    }
    json_decref(arr);
    free(t.p);
    obs_env_dispose(&e);
}

Test(json, type_names_round_trip)
{
    for (int i = 0; i < SOTH_EV_TYPE_COUNT; i++) {
        const char *n = soth_ev_type_names[i];
        cr_expect_eq(soth_ev_type_from_name(n, strlen(n)), i);
    }
    cr_expect_eq(soth_ev_type_from_name("stream_close", 12), -1);
    cr_expect_eq(soth_ev_type_from_name("stream_closedx", 14), -1);
    cr_expect_eq(soth_ev_type_from_name("", 0), -1);
}
