/*
 * Exchanges assembled from events (docs/exchanges.md): hand-built event sequences go through
 * the real emitters, the telemetry thread and the ring file, then through the assembler; the
 * exchange lines are compared with tests/observe/golden/<name>.jsonl (the exchanges the rules of
 * docs/exchanges.md give for those events). Only the wall-clock started_ns / ended_ns of each
 * exchange are zeroed before comparing. SOTH_GOLDEN_WRITE=1 rewrites the golden files.
 */
#include "obs_test.h"
#include "soth/exchange.h"

struct run {
    struct obs_env env;
    struct soth_observe *o;
    struct soth_ev_producer *p;
    uint64_t next_flow;
};

static void run_init(struct run *r)
{
    obs_env_init(&r->env, 4);
    r->env.cfg->events.body_capture_bytes = 8;
    r->o = obs_new(&r->env, 1);
    cr_assert_eq(soth_observe_start(r->o), 0);
    r->p = soth_observe_producer(r->o, 0);
    r->next_flow = 1;
}

static void flow(struct run *r, struct soth_ev_flow *f)
{
    flow_v4(f, r->p, r->next_flow++, 0);
    soth_ev_flow_set_server(f, S("origin.test"), 443);
}

static void intercepted(struct soth_ev_flow *f, const char *alpn, enum soth_protocol proto)
{
    soth_ev_connect_received(f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(f, SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE, S("*.test"));
    soth_ev_flow_set_protocol(f, SOTH_PROTO_TLS);
    soth_ev_tls_handshake_started(f, SOTH_LEG_UPSTREAM, S("origin.test"));
    soth_ev_tls_handshake_succeeded(f, SOTH_LEG_UPSTREAM, S("TLSv1.3"), S("TLS_AES_256_GCM_SHA384"),
                                    S(alpn));
    soth_ev_tls_handshake_started(f, SOTH_LEG_CLIENT, S("origin.test"));
    soth_ev_tls_handshake_succeeded(f, SOTH_LEG_CLIENT, S("TLSv1.3"), S("TLS_AES_128_GCM_SHA256"),
                                    S(alpn));
    soth_ev_flow_set_protocol(f, proto);
}

static void collect(void *ctx, const struct soth_xasm_out *x)
{
    text_emit(ctx, x->json, x->len);
}

/** Zero the digits after the first `"key":` at or after *from (in place). */
static void zero_after(char *from, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    char *p = strstr(from, pat);
    if (p == NULL)
        return;
    char *d = p + strlen(pat), *e = d;
    while (*e >= '0' && *e <= '9')
        e++;
    if (e == d)
        return;
    *d = '0';
    memmove(d + 1, e, strlen(e) + 1);
}

/** Zero each exchange's own started_ns / ended_ns (after "outcome"), not the ws turns'. */
static void zero_times(char *s)
{
    for (char *o = strstr(s, "\"outcome\":"); o != NULL; o = strstr(o + 1, "\"outcome\":")) {
        zero_after(o, "started_ns");
        zero_after(o, "ended_ns");
    }
}

static struct text exchanges(const char *ring, const struct soth_xasm_cfg *xc)
{
    char err[256];
    struct soth_ring_reader *rd = soth_ring_reader_open(ring, err, sizeof(err));
    cr_assert_not_null(rd, "%s", err);
    soth_ring_reader_seek(rd, true);
    struct text t = {0};
    struct soth_xasm *x = soth_xasm_new(xc, collect, &t);
    cr_assert_not_null(x);
    soth_ring_reader_poll_exchanges(rd, x);
    size_t nf, ns;
    soth_xasm_counts(x, &nf, &ns);
    cr_expect_eq(nf, 0, "every flow ended: nothing left open");
    soth_xasm_free(x);
    soth_ring_reader_free(rd);
    if (t.p == NULL)
        t.p = calloc(1, 1);
    json_decref(text_parse(&t)); /* every line is strictly valid JSON */
    zero_times(t.p);
    t.len = strlen(t.p);
    return t;
}

static void run_check(struct run *r, const char *name)
{
    soth_ev_flush(r->p);
    soth_observe_stop(r->o);
    struct soth_xasm_cfg xc = {.body_capture_bytes = 8};
    struct text t = exchanges(r->env.ring, &xc);
    soth_observe_free(r->o);
    char path[256];
    snprintf(path, sizeof(path), "tests/observe/golden/%s.jsonl", name);
    if (getenv("SOTH_GOLDEN_WRITE")) {
        FILE *fp = fopen(path, "w");
        cr_assert_not_null(fp);
        fwrite(t.p, 1, t.len, fp);
        fclose(fp);
    }
    FILE *fp = fopen(path, "r");
    cr_assert_not_null(fp, "%s missing", path);
    char want[1 << 16];
    size_t n = fread(want, 1, sizeof(want) - 1, fp);
    fclose(fp);
    want[n] = '\0';
    cr_expect_str_eq(t.p, want, "%s", name);
    free(t.p);
    obs_env_dispose(&r->env);
}

Test(exchange, h1_get_with_bodies)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "http/1.1", SOTH_PROTO_HTTP1);
    struct soth_header rq[] = {{S("Host"), S("origin.test")}, {S("Content-Length"), S("11")}};
    struct soth_header rs[] = {{S("Content-Type"), S("text/plain")}};
    soth_ev_request_headers(&f, 1, S("POST"), S("https"), S("origin.test"), S("/up?x=1"), S("1.1"),
                            rq, 2);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 1, 0, 6, S("hello "), false);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 1, 6, 5, S("wo"), true); /* capture bound 8 */
    soth_ev_response_headers(&f, 1, 200, S("1.1"), rs, 1, NULL, 0);
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, 0, 2, S("ok"), false);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 11, 2);
    /* A second request on the connection, without bodies, and one the flow's end cuts. */
    soth_ev_request_headers(&f, 2, S("GET"), S("https"), S("origin.test"), S("/"), S("1.1"), rq, 1);
    soth_ev_response_headers(&f, 2, 404, S("1.1"), NULL, 0, NULL, 0);
    soth_ev_exchange_completed(&f, 2, SOTH_OUTCOME_COMPLETE, 0, 0);
    soth_ev_request_headers(&f, 3, S("GET"), S("https"), S("origin.test"), S("/slow"), S("1.1"), rq,
                            1);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 100, 200);
    run_check(&r, "h1_get_with_bodies");
}

Test(exchange, h2_two_streams)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "h2", SOTH_PROTO_HTTP2);
    struct soth_header rq[] = {{S("accept"), S("*/*")}};
    struct soth_header tr[] = {{S("x-checksum"), S("abc")}};
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/a"), S("2"), rq, 1);
    soth_ev_request_headers(&f, 3, S("PUT"), S("https"), S("origin.test"), S("/b"), S("2"), rq, 1);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 3, 0, 3, S("abc"), false);
    soth_ev_trailers(&f, SOTH_LEG_CLIENT, 3, tr, 1);
    soth_ev_response_headers(&f, 3, 201, S("2"), NULL, 0, NULL, 0);
    soth_ev_exchange_completed(&f, 3, SOTH_OUTCOME_COMPLETE, 3, 0);
    soth_ev_response_headers(&f, 1, 200, S("2"), rq, 1, NULL, 0);
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, 0, 4, S("data"), false);
    soth_ev_trailers(&f, SOTH_LEG_UPSTREAM, 1, tr, 1);
    soth_ev_exchange_reason(&f, "upstream_rst_stream");
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_UPSTREAM_ABORTED, 0, 4);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    run_check(&r, "h2_two_streams");
}

Test(exchange, grpc_unary_with_trailers)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "h2", SOTH_PROTO_HTTP2);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_GRPC);
    struct soth_header rq[] = {{S("content-type"), S("application/grpc")}};
    struct soth_header tr[] = {{S("grpc-status"), S("5")}, {S("grpc-message"), S("not found")}};
    struct soth_iov decs[] = {S("grpc"), S("msgpack")};
    soth_ev_request_headers(&f, 1, S("POST"), S("https"), S("origin.test"),
                            S("/pkg.v1.Greeter/SayHello"), S("2"), rq, 1);
    soth_ev_body_chunk(&f, SOTH_LEG_CLIENT, 1, 0, 7, S("\0\0\0\0\x02hi"), false);
    soth_ev_grpc_message(&f, 1, SOTH_LEG_CLIENT, false, 2, S("hi"), false);
    soth_ev_payload_parsed(&f, 1, SOTH_LEG_CLIENT, decs, 2, false, S("msgpack"),
                           S("{\"name\":\"x\"}"), soth_iov(NULL, 0));
    soth_ev_response_headers(&f, 1, 200, S("2"), rq, 1, NULL, 0);
    soth_ev_grpc_message(&f, 1, SOTH_LEG_UPSTREAM, true, 300, S("zz"), true);
    soth_ev_payload_parsed(&f, 1, SOTH_LEG_UPSTREAM, decs, 1, false, soth_iov(NULL, 0),
                           soth_iov(NULL, 0), S("grpc: truncated"));
    soth_ev_trailers(&f, SOTH_LEG_UPSTREAM, 1, tr, 2);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 7, 305);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    run_check(&r, "grpc_unary_with_trailers");
}

Test(exchange, ws_session_with_turns)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "http/1.1", SOTH_PROTO_HTTP1);
    struct soth_header rq[] = {{S("Upgrade"), S("websocket")}};
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/ws"), S("1.1"), rq,
                            1);
    soth_ev_response_headers(&f, 1, 101, S("1.1"), rq, 1, NULL, 0);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_WEBSOCKET);
    soth_ev_ws_turn_started(&f, 1, 1, SOTH_LEG_CLIENT);
    soth_ev_ws_message(&f, 1, SOTH_LEG_CLIENT, 1, 4, S("ping"), false);
    soth_ev_ws_message(&f, 1, SOTH_LEG_UPSTREAM, 1, 4, S("pong"), false);
    struct soth_ws_turn_stats st = {.turn_id = 1,
                                    .initiator = SOTH_LEG_CLIENT,
                                    .client_frames = 1,
                                    .server_frames = 1,
                                    .client_bytes = 4,
                                    .server_bytes = 4,
                                    .started_ns = 1000,
                                    .ended_ns = 2000,
                                    .flush_reason = SOTH_FLUSH_CLOSE};
    soth_ev_ws_message(&f, 1, SOTH_LEG_CLIENT, 8, 2, S("\x03\xe8"), false);
    soth_ev_ws_turn_completed(&f, 1, &st);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 0, 0);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    run_check(&r, "ws_session_with_turns");
}

Test(exchange, sse_stream)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "h2", SOTH_PROTO_HTTP2);
    struct soth_header rs[] = {{S("content-type"), S("text/event-stream")}};
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/events"), S("2"),
                            NULL, 0);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_SSE);
    soth_ev_response_headers(&f, 1, 200, S("2"), rs, 1, NULL, 0);
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, 0, 20, S("data: a"), true);
    soth_ev_sse_event(&f, 1, S("message"), S("1"), 3000, S("a"));
    soth_ev_sse_event(&f, 1, S("tick"), soth_iov(NULL, 0), -1, S("b\nc"));
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 0, 20);
    soth_ev_stream_closed(&f, SOTH_CLOSE_RELAY_EOF, 1, 2);
    run_check(&r, "sse_stream");
}

Test(exchange, flows_that_never_reach_http)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    /* blocked */
    flow(&r, &f);
    soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_BLOCK, SOTH_REASON_POLICY_RULE, S("origin.test"));
    soth_ev_stream_closed(&f, SOTH_CLOSE_BLOCKED, 40, 0);
    /* tunnelled */
    flow(&r, &f);
    soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_TUNNEL, SOTH_REASON_DEFAULT, soth_iov(NULL, 0));
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 4000, 9000);
    /* TLS failure on the client side */
    flow(&r, &f);
    soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, soth_iov(NULL, 0));
    soth_ev_tls_handshake_started(&f, SOTH_LEG_UPSTREAM, S("origin.test"));
    soth_ev_tls_handshake_succeeded(&f, SOTH_LEG_UPSTREAM, S("TLSv1.2"),
                                    S("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"), soth_iov(NULL, 0));
    soth_ev_tls_handshake_started(&f, SOTH_LEG_CLIENT, S("origin.test"));
    soth_ev_tls_handshake_failed(&f, SOTH_LEG_CLIENT, SOTH_TLSF_UNKNOWN_CA, S("tls"),
                                 SOTH_TLSP_NATIVE, S("alert 48"), 1, 1);
    soth_ev_stream_closed(&f, SOTH_CLOSE_TLS_FAILED, 300, 3000);
    /* a bad proxy request */
    flow(&r, &f);
    soth_ev_connect_parse_failed(&f, S("missing_port"), S("no port"));
    soth_ev_stream_closed(&f, SOTH_CLOSE_PARSE_FAILED, 20, 0);
    run_check(&r, "never_http");
}

Test(exchange, flow_that_loses_events)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "http/1.1", SOTH_PROTO_HTTP1);
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/"), S("1.1"), NULL,
                            0);
    f.seq += 2; /* two events lost under overload (the producer counts them the same way) */
    f.dropped += 2;
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 0, 10);
    f.seq += 1; /* the next request's head lost: its exchange starts with a body chunk */
    f.dropped += 1;
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 2, 0, 3, S("abc"), false);
    soth_ev_exchange_completed(&f, 2, SOTH_OUTCOME_COMPLETE, 0, 3);
    f.seq += 4; /* whole exchanges lost between two others */
    f.dropped += 4;
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    run_check(&r, "loses_events");
}

Test(exchange, future_fields_and_bounds)
{
    /* Items beyond max_items are counted, never collected without bound. */
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "h2", SOTH_PROTO_SSE);
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/e"), S("2"), NULL,
                            0);
    for (int i = 0; i < 10; i++)
        soth_ev_sse_event(&f, 1, S("message"), soth_iov(NULL, 0), -1, S("x"));
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 0, 0);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_flush(r.p);
    soth_observe_stop(r.o);
    struct soth_xasm_cfg xc = {.body_capture_bytes = 8, .max_items = 3};
    struct text t = exchanges(r.env.ring, &xc);
    cr_expect_eq(t.lines, 1);
    cr_expect_not_null(strstr(t.p, "\"events_dropped\":0,\"items_dropped\":7}"), "%s", t.p);
    free(t.p);
    soth_observe_free(r.o);
    obs_env_dispose(&r.env);
}

Test(exchange, bounded_flows_evict_the_oldest)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f[5];
    for (int i = 0; i < 5; i++) {
        flow(&r, &f[i]);
        soth_ev_connect_received(&f[i], S("CONNECT"), S("origin.test:443"));
    }
    for (int i = 0; i < 5; i++)
        soth_ev_stream_closed(&f[i], SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_flush(r.p);
    soth_observe_stop(r.o);
    char err[256];
    struct soth_ring_reader *rd = soth_ring_reader_open(r.env.ring, err, sizeof(err));
    cr_assert_not_null(rd);
    soth_ring_reader_seek(rd, true);
    struct text t = {0};
    struct soth_xasm_cfg xc = {.max_flows = 2};
    struct soth_xasm *x = soth_xasm_new(&xc, collect, &t);
    soth_ring_reader_poll_exchanges(rd, x);
    size_t nf, ns;
    soth_xasm_counts(x, &nf, &ns);
    cr_expect_eq(nf, 0);
    /* With room for two flows, flows 1-4 are evicted as they are (partial) when later ones
     * come; their stream_closed then starts them again with the events before it missing
     * (events_dropped 1); flow 5 ends whole. */
    json_t *a = text_parse(&t);
    size_t partial = 0, dropped = 0;
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *e = json_array_get(a, i);
        partial += json_is_true(json_object_get(e, "partial"));
        dropped += json_integer_value(json_object_get(e, "events_dropped")) > 0;
    }
    cr_expect_eq(partial, 4, "%s", t.p);
    cr_expect_eq(dropped, 4, "%s", t.p);
    cr_expect_eq(json_array_size(a), 9, "%s", t.p);
    json_decref(a);
    free(t.p);
    soth_xasm_free(x);
    soth_ring_reader_free(rd);
    soth_observe_free(r.o);
    obs_env_dispose(&r.env);
}

Test(exchange, jsonl_sink_with_format_exchange_writes_the_same_lines)
{
    struct run r;
    obs_env_init(&r.env, 4);
    r.env.cfg->events.body_capture_bytes = 8;
    obs_env_add_sink(&r.env, SOTH_SINK_JSONL, "x.jsonl");
    r.env.cfg->events.sinks[0].format = SOTH_SINK_FMT_EXCHANGE;
    obs_env_add_sink(&r.env, SOTH_SINK_JSONL, "e.jsonl");
    r.o = obs_new(&r.env, 1);
    cr_assert_eq(soth_observe_start(r.o), 0);
    r.p = soth_observe_producer(r.o, 0);
    r.next_flow = 1;
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "h2", SOTH_PROTO_HTTP2);
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/a"), S("2"), NULL,
                            0);
    soth_ev_response_headers(&f, 1, 200, S("2"), NULL, 0, NULL, 0);
    soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, 0, 12, S("0123456789ab"), false);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 0, 12);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    flow(&r, &f);
    soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(&f, SOTH_ACTION_TUNNEL, SOTH_REASON_DEFAULT, soth_iov(NULL, 0));
    soth_ev_stream_closed(&f, SOTH_CLOSE_RELAY_EOF, 1, 2);
    soth_ev_flush(r.p);
    soth_observe_stop(r.o);
    soth_observe_free(r.o);

    char path[192];
    snprintf(path, sizeof(path), "%s/x.jsonl", r.env.dir);
    FILE *fp = fopen(path, "r");
    cr_assert_not_null(fp);
    char got[1 << 16];
    size_t n = fread(got, 1, sizeof(got) - 1, fp);
    fclose(fp);
    got[n] = '\0';
    /* The events sink beside it still gets events, and only events. */
    snprintf(path, sizeof(path), "%s/e.jsonl", r.env.dir);
    fp = fopen(path, "r");
    cr_assert_not_null(fp);
    char ev[1 << 16];
    size_t en = fread(ev, 1, sizeof(ev) - 1, fp);
    fclose(fp);
    ev[en] = '\0';
    cr_expect_null(strstr(ev, "exchange_id"));
    cr_expect_not_null(strstr(ev, "\"type\":\"stream_closed\""));

    /* What soth-mitm-tail --exchanges assembles from the ring, times included. */
    char err[256];
    struct soth_ring_reader *rd = soth_ring_reader_open(r.env.ring, err, sizeof(err));
    cr_assert_not_null(rd, "%s", err);
    soth_ring_reader_seek(rd, true);
    struct text t = {0};
    struct soth_xasm_cfg xc = {.body_capture_bytes = UINT32_MAX};
    struct soth_xasm *x = soth_xasm_new(&xc, collect, &t);
    soth_ring_reader_poll_exchanges(rd, x);
    soth_xasm_free(x);
    soth_ring_reader_free(rd);
    cr_expect_eq(t.lines, 2);
    cr_expect_str_eq(got, t.p);
    /* The sink bounds the capture by events.body_capture_bytes (8 here). */
    cr_expect_not_null(
        strstr(got, "\"bytes\":12,\"captured_b64\":\"MDEyMzQ1Njc=\",\"truncated\":true"), "%s",
        got);
    free(t.p);
    obs_env_dispose(&r.env);
}

Test(exchange, the_least_recently_active_flow_is_evicted)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow a, b, c;
    flow(&r, &a);
    flow(&r, &b);
    flow(&r, &c);
    soth_ev_connect_received(&a, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_received(&b, S("CONNECT"), S("origin.test:443"));
    soth_ev_connect_decision(&a, SOTH_ACTION_TUNNEL, SOTH_REASON_DEFAULT, soth_iov(NULL, 0));
    soth_ev_connect_received(&c, S("CONNECT"), S("origin.test:443")); /* evicts b, not a */
    soth_ev_stream_closed(&a, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_stream_closed(&b, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_stream_closed(&c, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_flush(r.p);
    soth_observe_stop(r.o);
    char err[256];
    struct soth_ring_reader *rd = soth_ring_reader_open(r.env.ring, err, sizeof(err));
    cr_assert_not_null(rd);
    soth_ring_reader_seek(rd, true);
    struct text t = {0};
    struct soth_xasm_cfg xc = {.max_flows = 2};
    struct soth_xasm *x = soth_xasm_new(&xc, collect, &t);
    soth_ring_reader_poll_exchanges(rd, x);
    json_t *arr = text_parse(&t);
    cr_assert_eq(json_array_size(arr), 4, "%s", t.p);
    json_t *first = json_array_get(arr, 0);
    cr_expect_eq(json_integer_value(json_object_get(first, "flow_id")), 2, "%s", t.p);
    cr_expect(json_is_true(json_object_get(first, "partial")), "%s", t.p);
    json_t *fa = json_array_get(arr, 1);
    cr_expect_eq(json_integer_value(json_object_get(fa, "flow_id")), 1);
    cr_expect_str_eq(json_string_value(json_object_get(fa, "decision")), "tunnel");
    cr_expect_eq(json_integer_value(json_object_get(fa, "events_dropped")), 0);
    json_decref(arr);
    free(t.p);
    soth_xasm_free(x);
    soth_ring_reader_free(rd);
    soth_observe_free(r.o);
    obs_env_dispose(&r.env);
}

Test(exchange, a_reader_starting_mid_run_reports_what_it_missed)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow f;
    flow(&r, &f);
    intercepted(&f, "h2", SOTH_PROTO_HTTP2);
    soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/a"), S("2"), NULL,
                            0);
    soth_ev_flush(r.p);
    char err[256];
    struct soth_ring_reader *rd = soth_ring_reader_open(r.env.ring, err, sizeof(err));
    cr_assert_not_null(rd, "%s", err);
    /* Wait until the telemetry thread wrote the first 7 events, then start at the end. */
    struct text seen = {0};
    for (int i = 0; i < 2000 && seen.lines < 7; i++) {
        usleep(1000);
        free(seen.p);
        seen = ring_text(r.env.ring, NULL);
    }
    cr_assert_eq(seen.lines, 7);
    free(seen.p);
    soth_ring_reader_seek(rd, false);
    soth_ev_response_headers(&f, 1, 200, S("2"), NULL, 0, NULL, 0);
    soth_ev_exchange_completed(&f, 1, SOTH_OUTCOME_COMPLETE, 0, 0);
    soth_ev_request_headers(&f, 3, S("GET"), S("https"), S("origin.test"), S("/b"), S("2"), NULL,
                            0);
    soth_ev_exchange_completed(&f, 3, SOTH_OUTCOME_COMPLETE, 0, 0);
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_flush(r.p);
    soth_observe_stop(r.o);
    struct text t = {0};
    struct soth_xasm_cfg xc = {0};
    struct soth_xasm *x = soth_xasm_new(&xc, collect, &t);
    soth_ring_reader_poll_exchanges(rd, x);
    json_t *arr = text_parse(&t);
    cr_assert_eq(json_array_size(arr), 2, "%s", t.p);
    json_t *a = json_array_get(arr, 0), *b = json_array_get(arr, 1);
    /* Stream 1: its request, the decision and the TLS events were before the start. */
    cr_expect_eq(json_integer_value(json_object_get(a, "stream_id")), 1);
    cr_expect(json_is_null(json_object_get(a, "request")), "%s", t.p);
    cr_expect(json_is_null(json_object_get(a, "decision")), "%s", t.p);
    cr_expect(json_is_null(json_object_get(a, "tls")), "%s", t.p);
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(a, "response"), "status")),
                 200);
    cr_expect_eq(json_integer_value(json_object_get(a, "events_dropped")), 7);
    /* Stream 3 was seen whole; the missed events are accounted for by stream 1 alone. */
    cr_expect_eq(json_integer_value(json_object_get(b, "stream_id")), 3);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(b, "request"), "path")),
                     "/b");
    cr_expect_eq(json_integer_value(json_object_get(b, "events_dropped")), 0);
    json_decref(arr);
    free(t.p);
    soth_xasm_free(x);
    soth_ring_reader_free(rd);
    soth_observe_free(r.o);
    obs_env_dispose(&r.env);
}

Test(exchange, the_bytes_bound_evicts_the_least_recently_active_flow)
{
    struct run r;
    run_init(&r);
    struct soth_ev_flow a, b;
    flow(&r, &a);
    flow(&r, &b);
    struct soth_header h[] = {{S("x-pad"), S("0123456789012345678901234567890123456789")}};
    soth_ev_request_headers(&a, 1, S("GET"), S("https"), S("origin.test"), S("/a"), S("2"), h, 1);
    soth_ev_request_headers(&b, 1, S("GET"), S("https"), S("origin.test"), S("/b"), S("2"), h, 1);
    soth_ev_stream_closed(&a, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_stream_closed(&b, SOTH_CLOSE_CLIENT_EOF, 1, 2);
    soth_ev_flush(r.p);
    soth_observe_stop(r.o);
    char err[256];
    struct soth_ring_reader *rd = soth_ring_reader_open(r.env.ring, err, sizeof(err));
    cr_assert_not_null(rd);
    soth_ring_reader_seek(rd, true);
    struct text t = {0};
    struct soth_xasm_cfg xc = {.max_bytes = 80}; /* room for one request head (53 bytes) */
    struct soth_xasm *x = soth_xasm_new(&xc, collect, &t);
    soth_ring_reader_poll_exchanges(rd, x);
    json_t *arr = text_parse(&t);
    /* a's exchange is emitted as it was when b's head came; then a's stream_closed (a flow
     * whose beginning was missed, no HTTP seen: stream 0) and b's cut exchange. */
    cr_assert_eq(json_array_size(arr), 3, "%s", t.p);
    json_t *first = json_array_get(arr, 0);
    cr_expect_eq(json_integer_value(json_object_get(first, "flow_id")), 1);
    cr_expect(json_is_true(json_object_get(first, "partial")), "%s", t.p);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(first, "request"), "path")),
                     "/a");
    json_t *last = json_array_get(arr, 2);
    cr_expect_eq(json_integer_value(json_object_get(last, "flow_id")), 2);
    cr_expect_str_eq(json_string_value(json_object_get(last, "outcome")), "client_eof");
    json_decref(arr);
    free(t.p);
    soth_xasm_free(x);
    soth_ring_reader_free(rd);
    soth_observe_free(r.o);
    obs_env_dispose(&r.env);
}
