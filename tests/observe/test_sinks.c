/*
 * Sinks (jsonl, uds) carry exactly the ring's JSON lines; a consumer that stops reading loses
 * lines (counted) without stalling anything; GET /metrics sums the per-worker counters.
 */
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "obs_test.h"

static void emit_some(struct soth_ev_producer *p, unsigned flows)
{
    for (unsigned k = 0; k < flows; k++) {
        struct soth_ev_flow f;
        flow_v4(&f, p, 100 + k, 0);
        soth_ev_flow_set_server(&f, S("origin.test"), 443);
        struct soth_header h[] = {{S("x-k"), S("\xff")}};
        soth_ev_connect_received(&f, S("CONNECT"), S("origin.test:443"));
        soth_ev_request_headers(&f, 1, S("GET"), S("https"), S("origin.test"), S("/"), S("1.1"), h,
                                1);
        soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 1, 2);
        soth_ev_flush(p);
    }
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp, "%s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap + 1);
        }
        size_t r = fread(buf + n, 1, 4096, fp);
        n += r;
        if (r == 0)
            break;
    }
    fclose(fp);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int uds_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect %s", path);
    return fd;
}

/** Read until EOF (bounded by a 10 s poll timeout). */
static char *read_to_eof(int fd, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&pfd, 1, 10000), 1, "uds sink: no EOF");
        buf = realloc(buf, n + 65536 + 1);
        ssize_t r = recv(fd, buf + n, 65536, 0);
        cr_assert_geq(r, 0);
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

Test(sinks, jsonl_and_uds_carry_the_ring_lines)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    obs_env_add_sink(&e, SOTH_SINK_JSONL, "logs/events.jsonl");
    obs_env_add_sink(&e, SOTH_SINK_UDS, "events.sock");
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    int c1 = uds_connect(e.cfg->events.sinks[1].path);
    int c2 = uds_connect(e.cfg->events.sinks[1].path);
    usleep(300000); /* the telemetry thread accepts them (it wakes on the listening socket) */
    emit_some(soth_observe_producer(o, 0), 50);
    soth_observe_stop(o);
    struct text ring = ring_text(e.ring, NULL);
    cr_assert_eq(ring.lines, 150);
    size_t n;
    char *file = read_file(e.cfg->events.sinks[0].path, &n);
    cr_expect(n == ring.len && memcmp(file, ring.p, n) == 0, "jsonl differs from the ring");
    cr_expect_eq(soth_observe_sink_dropped(o), 0);
    soth_observe_free(o); /* closes the uds clients: EOF */
    for (int k = 0; k < 2; k++) {
        char *got = read_to_eof(k ? c2 : c1, &n);
        cr_expect(n == ring.len && memcmp(got, ring.p, n) == 0, "uds client %d: %zu bytes", k, n);
        free(got);
    }
    close(c1);
    close(c2);
    free(file);
    free(ring.p);
    obs_env_dispose(&e);
}

Test(sinks, jsonl_appends)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    obs_env_add_sink(&e, SOTH_SINK_JSONL, "events.jsonl");
    for (int run = 0; run < 2; run++) {
        struct soth_observe *o = obs_new(&e, 1);
        cr_assert_eq(soth_observe_start(o), 0);
        emit_some(soth_observe_producer(o, 0), 2);
        soth_observe_free(o);
    }
    size_t n;
    char *file = read_file(e.cfg->events.sinks[0].path, &n);
    struct text t = {.p = file, .len = n};
    json_t *arr = text_parse(&t);
    cr_expect_eq(json_array_size(arr), 12);
    json_decref(arr);
    free(file);
    obs_env_dispose(&e);
}

Test(sinks, stuck_uds_client_loses_lines_not_events, .timeout = 120)
{
    struct obs_env e;
    obs_env_init(&e, 64);
    obs_env_add_sink(&e, SOTH_SINK_UDS, "events.sock");
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    int stuck = uds_connect(e.cfg->events.sinks[0].path); /* never reads */
    usleep(300000);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 1, 0, NULL, 0);
    char body[3000];
    memset(body, 'b', sizeof(body));
    enum { N = 20000 }; /* about 80 MB of JSON for a client that takes none */
    for (unsigned i = 0; i < N; i++) {
        soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, 1, (uint64_t)i * sizeof(body), sizeof(body),
                           soth_iov(body, sizeof(body)), false);
        if (i % 16 == 0)
            soth_ev_flush(p);
        if (i % 256 == 0)
            usleep(20000); /* stay under the producer ring: this test is about the sink */
    }
    soth_ev_flush(p);
    soth_observe_stop(o);
    uint64_t dropped = atomic_load(&soth_observe_metrics(o, 0)->events_dropped);
    struct soth_ring_filter none = {.has_flow = true, .flow_id = 999};
    struct text t = ring_text(e.ring, &none); /* only overruns would print */
    cr_expect_eq(t.lines, 0, "%s", t.p);
    free(t.p);
    cr_expect_gt(soth_observe_sink_dropped(o), (uint64_t)N / 2, "sink dropped %llu",
                 (unsigned long long)soth_observe_sink_dropped(o));
    cr_expect_lt(dropped, (uint64_t)N / 10, "the telemetry thread must have kept up: %llu",
                 (unsigned long long)dropped);
    soth_observe_free(o);
    close(stuck);
    obs_env_dispose(&e);
}

/* ---- metrics ------------------------------------------------------------------------------- */

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static char *http_get(uint16_t port, const char *req)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    size_t n;
    char *resp = read_to_eof(fd, &n);
    close(fd);
    return resp;
}

static long long metric(const char *text, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p += nl) {
        if ((p == text || p[-1] == '\n') && p[nl] == ' ')
            return atoll(p + nl + 1);
    }
    cr_assert_fail("metric %s missing in:\n%s", name, text);
    return -1;
}

Test(metrics, scrape_sums_workers)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    uint16_t port = free_port();
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
    char err[128];
    cr_assert_eq(soth_hostport_parse(listen, &e.cfg->metrics.listen, err, sizeof(err)), 0, "%s",
                 err);
    e.cfg->metrics.listen_text = strdup(listen);
    struct soth_observe *o = obs_new(&e, 2);
    cr_assert_eq(soth_observe_start(o), 0);
    for (unsigned w = 0; w < 2; w++) {
        struct soth_metrics *m = soth_observe_metrics(o, w);
        SOTH_METRIC_ADD(m->connections_total, 3 + w);
        SOTH_METRIC_ADD(m->active_connections, 1);
        SOTH_METRIC_ADD(m->bytes_client_to_server, 100);
        SOTH_METRIC_ADD(m->bytes_server_to_client, 1000 * (w + 1));
        SOTH_METRIC_ADD(m->requests[SOTH_PROTO_HTTP2], 7);
        SOTH_METRIC_ADD(m->tls_failures[SOTH_LEG_UPSTREAM][SOTH_TLSF_CERT_VALIDATION], 1);
        SOTH_METRIC_ADD(m->leaf_cache_hits, 10);
        SOTH_METRIC_ADD(m->leaf_cache_misses, 2);
        SOTH_METRIC_ADD(m->events_dropped, 5);
        SOTH_METRIC_ADD(m->waits_polled, 4 + w);
        SOTH_METRIC_ADD(m->waits_blocked, 1);
        SOTH_METRIC_ADD(m->waits_batched, 30 + w);
        SOTH_METRIC_ADD(m->busy_poll_ns, 500000002u + w);
    }
    SOTH_METRIC_ADD(soth_observe_metrics(o, 1)->active_connections, -1);
    char *r = http_get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert(strncmp(r, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", r);
    cr_expect(strstr(r, "Content-Type: text/plain; version=0.0.4\r\n") != NULL);
    const char *body = strstr(r, "\r\n\r\n") + 4;
    cr_expect_eq(metric(body, "soth_connections_total"), 7);
    cr_expect_eq(metric(body, "soth_active_connections"), 1);
    cr_expect_eq(metric(body, "soth_bytes_total{direction=\"client_to_server\"}"), 200);
    cr_expect_eq(metric(body, "soth_bytes_total{direction=\"server_to_client\"}"), 3000);
    cr_expect_eq(metric(body, "soth_requests_total{protocol=\"http2\"}"), 14);
    cr_expect_eq(metric(body, "soth_requests_total{protocol=\"http1\"}"), 0);
    cr_expect_eq(
        metric(body,
               "soth_tls_handshake_failures_total{side=\"upstream\",reason=\"cert_validation\"}"),
        2);
    cr_expect_eq(
        metric(body, "soth_tls_handshake_failures_total{side=\"client\",reason=\"unknown_ca\"}"),
        0);
    cr_expect_eq(metric(body, "soth_leaf_cache_hits_total"), 20);
    cr_expect_eq(metric(body, "soth_leaf_cache_misses_total"), 4);
    cr_expect_eq(metric(body, "soth_events_dropped_total"), 10);
    cr_expect_eq(metric(body, "soth_worker_waits_total{result=\"polled\"}"), 9);
    cr_expect_eq(metric(body, "soth_worker_waits_total{result=\"blocked\"}"), 2);
    cr_expect_eq(metric(body, "soth_worker_waits_total{result=\"batched\"}"), 61);
    /* seconds with the nanoseconds as the fraction: 500000002 + 500000003 ns */
    cr_expect(strstr(body, "\nsoth_busy_poll_seconds_total 1.000000005\n") != NULL, "%s", body);
    /* Per sink (soth_sink_dropped_total{sink="jsonl:0"}, ...): none configured here. */
    cr_expect(strstr(body, "# TYPE soth_sink_dropped_total counter\n") != NULL);
    cr_expect(strstr(body, "\nsoth_sink_dropped_total") == NULL);
    cr_expect(strstr(body, "# TYPE soth_active_connections gauge\n") != NULL);
    free(r);
    r = http_get(port, "GET /other HTTP/1.1\r\n\r\n");
    cr_expect(strncmp(r, "HTTP/1.1 404 ", 13) == 0, "%s", r);
    free(r);
    soth_observe_free(o);
    soth_hostport_dispose(&e.cfg->metrics.listen);
    obs_env_dispose(&e);
}

Test(metrics, busy_port_is_an_error)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    listen(fd, 1);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    char listen_text[32];
    snprintf(listen_text, sizeof(listen_text), "127.0.0.1:%u", ntohs(a.sin_port));
    char err[256];
    cr_assert_eq(soth_hostport_parse(listen_text, &e.cfg->metrics.listen, err, sizeof(err)), 0);
    e.cfg->metrics.listen_text = strdup(listen_text);
    cr_expect_null(soth_observe_new(e.cfg, 1, err, sizeof(err)));
    cr_expect(strstr(err, "metrics.listen") != NULL, "%s", err);
    close(fd);
    soth_hostport_dispose(&e.cfg->metrics.listen);
    obs_env_dispose(&e);
}
