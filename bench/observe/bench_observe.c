/*
 * bench_observe: throughput of the event path, stage by stage.
 *   1. producer -> SPSC ring: one worker building events in its ring (the consumer is played by
 *      the bench: it just frees the ring between timed batches);
 *   2. producer -> telemetry thread -> ring file: end to end, the producer paced so that it does
 *      not drop (the telemetry thread is the bottleneck being measured);
 *   3. ring file -> JSON lines: the reader soth-mitm-tail uses, writing to /dev/null;
 *   --stress: N producers x M events through the telemetry thread, verified (million scale);
 *   --stage json: the JSON encoder alone (soth_ev_rec_to_json, what the telemetry thread runs
 *      for jsonl/uds/nats sinks) over the events of bench/nats's small HTTP/1.1 request
 *      (request_headers, response_headers with nginx's 8 headers, a 100-byte
 *      response_body_chunk, exchange_completed), --events encodes; run it under callgrind with
 *      --toggle-collect=soth_ev_rec_to_json for instructions per event;
 *   --stage exchange: records a ring of --flows realistic intercepted HTTP/1.1 flows once
 *      (3 keep-alive exchanges each, 64 flows open at a time), then times the exchange
 *      assembler over it (what soth-mitm-tail --exchanges and "format": "exchange" sinks run,
 *      docs/exchanges.md) next to plain event JSON of the same ring (soth-mitm-tail).
 * Two event shapes: "small" (connect_decision, ~130 bytes) and "headers" (request_headers with
 * 8 fields, ~450 bytes). Output: one line per measurement.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "observe_int.h"
#include "soth/exchange.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/** CPU time of a thread (immune to the other jobs sharing this machine's cores). */
static double thread_cpu_s(pthread_t t)
{
    clockid_t cid;
    struct timespec ts;
    if (pthread_getcpuclockid(t, &cid) != 0 || clock_gettime(cid, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct soth_iov S(const char *s) {
    return soth_iov(s, strlen(s));
}

static const struct soth_header hdrs[] = {
    {{"host", 4}, {"api.example.com", 15}},
    {{"user-agent", 10}, {"curl/7.88.1", 11}},
    {{"accept", 6}, {"application/json", 16}},
    {{"accept-encoding", 15}, {"gzip, deflate, br", 17}},
    {{"authorization", 13},
     {"Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo", 73}},
    {{"content-type", 12}, {"application/json", 16}},
    {{"x-request-id", 12}, {"9f1c0b9e-3f4a-4c7e-8d7e-1b2c3d4e5f60", 36}},
    {{"content-length", 14}, {"42", 2}},
};

enum shape { SMALL, HEADERS };

static void emit_one(struct soth_ev_flow *f, enum shape sh, unsigned i)
{
    if (sh == SMALL)
        soth_ev_connect_decision(f, SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE,
                                 S("*.example.com"));
    else
        soth_ev_request_headers(f, i, S("POST"), S("https"), S("api.example.com"),
                                S("/v1/items?page=2"), S("2"), hdrs, 8);
}

static void flow_setup(struct soth_ev_flow *f, struct soth_ev_producer *p, uint64_t id, unsigned w)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(51234)};
    sin.sin_addr.s_addr = htonl(0x7f000001);
    soth_ev_flow_init(f, p, id, w, (struct sockaddr *)&sin, sizeof(sin));
    soth_ev_flow_set_server(f, S("api.example.com"), 443);
}

static struct soth_config *make_cfg(const char *path, uint32_t mb)
{
    struct soth_config *c = calloc(1, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->events.ring_path = strdup(path);
    c->events.ring_size_mb = mb;
    c->events.body_capture_bytes = 4096;
    return c;
}

static void free_cfg(struct soth_config *c)
{
    free(c->events.ring_path);
    free(c);
}

static const char *shape_name(enum shape sh)
{
    return sh == SMALL ? "small" : "headers";
}

/* ---- 1. into the SPSC ring ---- */
static void bench_producer(const char *path, enum shape sh, unsigned long total)
{
    struct soth_config *cfg = make_cfg(path, 1);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    if (o == NULL) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    flow_setup(&f, p, 1, 0);
    const unsigned batch = 8192;
    double busy = 0, cpu = 0;
    unsigned long done = 0;
    while (done < total) {
        double c0 = thread_cpu_s(pthread_self());
        double t0 = now_s();
        for (unsigned i = 0; i < batch; i++) {
            emit_one(&f, sh, i);
            if ((i & 31) == 31)
                soth_ev_flush(p);
        }
        soth_ev_flush(p);
        busy += now_s() - t0;
        cpu += thread_cpu_s(pthread_self()) - c0;
        done += batch;
        /* Play the consumer: everything published is taken at once (not timed). */
        atomic_store_explicit(&p->head, atomic_load(&p->pub_tail), memory_order_release);
    }
    uint64_t dropped = atomic_load(&p->m->events_dropped);
    printf("spsc_ring      %-7s %6.2f M events/s wall, %6.2f M events/CPU-s (%5.1f ns CPU/event)"
           "  [1 producer, %lu events, %llu dropped, flush every 32]\n",
           shape_name(sh), (double)done / busy / 1e6, (double)done / cpu / 1e6,
           cpu * 1e9 / (double)done, done, (unsigned long long)dropped);
    soth_observe_free(o);
    free_cfg(cfg);
}

/* ---- 2. through the telemetry thread ---- */
static double bench_telemetry(const char *path, enum shape sh, unsigned long total, uint32_t mb)
{
    struct soth_config *cfg = make_cfg(path, mb);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    if (o == NULL) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    if (soth_observe_start(o) != 0)
        exit(1);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    flow_setup(&f, p, 1, 0);
    double tc0 = thread_cpu_s(o->thr), pc0 = thread_cpu_s(pthread_self());
    double t0 = now_s();
    for (unsigned long i = 0; i < total; i++) {
        emit_one(&f, sh, (unsigned)i);
        if ((i & 31) == 31) {
            soth_ev_flush(p);
            /* Pace: never more than half the ring outstanding (measure the consumer). */
            while (p->tail - atomic_load_explicit(&p->head, memory_order_acquire) > p->cap / 2)
                __builtin_ia32_pause();
        }
    }
    soth_ev_flush(p);
    while (atomic_load_explicit(&o->hdr->last_gseq, memory_order_acquire) +
               atomic_load(&p->m->events_dropped) <
           total)
        usleep(50);
    double dt = now_s() - t0;
    double tcpu = thread_cpu_s(o->thr) - tc0, pcpu = thread_cpu_s(pthread_self()) - pc0;
    uint64_t dropped = atomic_load(&p->m->events_dropped);
    printf("telemetry      %-7s %6.2f M events/s wall, %6.2f M events/CPU-s (%5.1f ns CPU/event)"
           "  [telemetry thread CPU; producer used %.0f%% of a core; %u MiB ring file, %lu "
           "events, %llu dropped]\n",
           shape_name(sh), (double)total / dt / 1e6, (double)total / tcpu / 1e6,
           tcpu * 1e9 / (double)total, 100 * pcpu / dt, mb, total, (unsigned long long)dropped);
    soth_observe_stop(o);
    soth_observe_free(o);
    free_cfg(cfg);
    return dt;
}

/* ---- 3. JSON lines out of the file ---- */
struct sink_ctx {
    FILE *out;
    unsigned long lines;
    unsigned long bytes;
};

static void to_null(void *ctx, const char *line, size_t len)
{
    struct sink_ctx *s = ctx;
    fwrite(line, 1, len, s->out);
    s->lines++;
    s->bytes += len;
}

static void bench_reader(const char *path, const char *label)
{
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    struct sink_ctx s = {.out = fopen("/dev/null", "w")};
    static char buf[1 << 16];
    setvbuf(s.out, buf, _IOFBF, sizeof(buf));
    soth_ring_reader_seek(r, true);
    double c0 = thread_cpu_s(pthread_self());
    double t0 = now_s();
    soth_ring_reader_poll(r, NULL, to_null, &s);
    fflush(s.out);
    double dt = now_s() - t0, cpu = thread_cpu_s(pthread_self()) - c0;
    printf("tail_json      %-7s %6.2f M lines/s  wall, %6.2f M lines/CPU-s  (%5.1f ns CPU/line)"
           "   [%lu lines, %.0f MB of JSON to /dev/null]\n",
           label, (double)s.lines / dt / 1e6, (double)s.lines / cpu / 1e6,
           cpu * 1e9 / (double)s.lines, s.lines, (double)s.bytes / 1e6);
    fclose(s.out);
    soth_ring_reader_free(r);
}

/* ---- --stage exchange: the exchange assembler over a recorded ring ---- */

#define XB_OPEN      64 /* flows open at a time (interleaved, as a busy worker's) */
#define XB_EXCHANGES 3  /* keep-alive exchanges per flow */

static const struct soth_header resp_hdrs[] = {
    {{"content-type", 12}, {"application/json", 16}},
    {{"content-length", 14}, {"512", 3}},
    {{"date", 4}, {"Fri, 04 Dec 2026 12:00:00 GMT", 29}},
    {{"server", 6}, {"nginx/1.22.1", 12}},
    {{"cache-control", 13}, {"no-store", 8}},
    {{"x-request-id", 12}, {"9f1c0b9e-3f4a-4c7e-8d7e-1b2c3d4e5f60", 36}},
};

/** Record `flows` flows into the ring file through the telemetry thread; returns the events. */
static uint64_t xb_record(const char *path, unsigned long flows)
{
    struct soth_config *cfg = make_cfg(path, 1024);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    if (o == NULL || soth_observe_start(o) != 0) {
        fprintf(stderr, "%s\n", o == NULL ? err : "start failed");
        exit(1);
    }
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    static struct soth_ev_flow f[XB_OPEN];
    static char req_body[42], resp_body[512];
    memset(req_body, 'q', sizeof(req_body));
    memset(resp_body, 'r', sizeof(resp_body));
    uint64_t emitted = 0;
    for (unsigned long base = 0; base < flows; base += XB_OPEN) {
        unsigned n = flows - base < XB_OPEN ? (unsigned)(flows - base) : XB_OPEN;
        for (unsigned i = 0; i < n; i++) {
            flow_setup(&f[i], p, base + i + 1, 0);
            soth_ev_connect_received(&f[i], S("CONNECT"), S("api.example.com:443"));
            soth_ev_connect_decision(&f[i], SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE,
                                     S("*.example.com"));
            soth_ev_tls_handshake_started(&f[i], SOTH_LEG_CLIENT, S("api.example.com"));
            soth_ev_tls_handshake_started(&f[i], SOTH_LEG_UPSTREAM, S("api.example.com"));
            soth_ev_tls_handshake_succeeded(&f[i], SOTH_LEG_UPSTREAM, S("TLSv1.3"),
                                            S("TLS_AES_256_GCM_SHA384"), S("http/1.1"));
            soth_ev_tls_handshake_succeeded(&f[i], SOTH_LEG_CLIENT, S("TLSv1.3"),
                                            S("TLS_AES_128_GCM_SHA256"), S("http/1.1"));
            soth_ev_flow_set_protocol(&f[i], SOTH_PROTO_HTTP1);
            emitted += 6;
        }
        soth_ev_flush(p);
        for (unsigned x = 1; x <= XB_EXCHANGES; x++) {
            for (unsigned i = 0; i < n; i++) {
                soth_ev_request_headers(&f[i], x, S("POST"), S("https"), S("api.example.com"),
                                        S("/v1/items?page=2"), S("1.1"), hdrs, 8);
                soth_ev_body_chunk(&f[i], SOTH_LEG_CLIENT, x, 0, sizeof(req_body),
                                   soth_iov(req_body, sizeof(req_body)), false);
                soth_ev_response_headers(&f[i], x, 200, S("1.1"), resp_hdrs, 6, NULL, 0);
                soth_ev_body_chunk(&f[i], SOTH_LEG_UPSTREAM, x, 0, sizeof(resp_body),
                                   soth_iov(resp_body, sizeof(resp_body)), false);
                soth_ev_exchange_completed(&f[i], x, SOTH_OUTCOME_COMPLETE, sizeof(req_body),
                                           sizeof(resp_body));
                emitted += 5;
            }
            soth_ev_flush(p);
            /* Pace: never more than half the producer ring outstanding (no drops). */
            while (p->tail - atomic_load_explicit(&p->head, memory_order_acquire) > p->cap / 2)
                usleep(20);
        }
        for (unsigned i = 0; i < n; i++)
            soth_ev_stream_closed(&f[i], SOTH_CLOSE_CLIENT_EOF, 4096, 8192);
        emitted += n;
        soth_ev_flush(p);
    }
    while (atomic_load_explicit(&o->hdr->last_gseq, memory_order_acquire) +
               atomic_load(&p->m->events_dropped) <
           emitted)
        usleep(50);
    uint64_t dropped = atomic_load(&p->m->events_dropped);
    soth_observe_stop(o);
    soth_observe_free(o);
    free_cfg(cfg);
    if (dropped != 0) {
        fprintf(stderr, "bench_observe: %llu events dropped while recording\n",
                (unsigned long long)dropped);
        exit(1);
    }
    return emitted;
}

static void xb_emit(void *ctx, const struct soth_xasm_out *x)
{
    struct sink_ctx *s = ctx;
    fwrite(x->json, 1, x->len, s->out); /* as soth-mitm-tail --exchanges prints them */
    s->lines++;
    s->bytes += x->len;
}

static int bench_exchange(const char *path, unsigned long flows)
{
    double t0 = now_s();
    uint64_t events = xb_record(path, flows);
    printf("exchange_ring  %lu flows x %u exchanges: %llu events recorded in %.1f s\n", flows,
           XB_EXCHANGES, (unsigned long long)events, now_s() - t0);
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct sink_ctx s = {.out = fopen("/dev/null", "w")};
    static char buf[1 << 16];
    setvbuf(s.out, buf, _IOFBF, sizeof(buf));
    struct soth_xasm_cfg xc = {.body_capture_bytes = 4096};
    struct soth_xasm *x = soth_xasm_new(&xc, xb_emit, &s);
    soth_ring_reader_seek(r, true);
    double c0 = thread_cpu_s(pthread_self());
    t0 = now_s();
    size_t fed = soth_ring_reader_poll_exchanges(r, x);
    fflush(s.out);
    double dt = now_s() - t0, cpu = thread_cpu_s(pthread_self()) - c0;
    soth_xasm_free(x);
    soth_ring_reader_free(r);
    fclose(s.out);
    bool ok = fed == events && s.lines == (uint64_t)flows * XB_EXCHANGES;
    printf("exchanges      %6.3f M exchanges/s wall, %6.3f M exchanges/CPU-s (%6.0f ns "
           "CPU/exchange); %5.2f M events/s wall, %5.2f M events/CPU-s  [%lu exchanges from %zu "
           "events, %.0f MB of JSON to /dev/null]%s\n",
           (double)s.lines / dt / 1e6, (double)s.lines / cpu / 1e6, cpu * 1e9 / (double)s.lines,
           (double)fed / dt / 1e6, (double)fed / cpu / 1e6, s.lines, fed, (double)s.bytes / 1e6,
           ok ? "" : "  COUNT MISMATCH");
    /* The comparison: the same ring printed as events. */
    bench_reader(path, "flows");
    return ok ? 0 : 1;
}

/* ---- --stage json: the encoder alone ---- */

static int bench_json(const char *path, unsigned long total)
{
    static const struct soth_header req[] = {{{"host", 4}, {"127.0.0.1:44321", 15}}};
    static const struct soth_header resp[] = {
        {{"server", 6}, {"nginx/1.22.1", 12}},
        {{"date", 4}, {"Fri, 04 Dec 2026 12:00:00 GMT", 29}},
        {{"content-type", 12}, {"application/octet-stream", 24}},
        {{"content-length", 14}, {"100", 3}},
        {{"last-modified", 13}, {"Fri, 04 Dec 2026 11:00:00 GMT", 29}},
        {{"connection", 10}, {"keep-alive", 10}},
        {{"etag", 4}, {"\"6751a3f0-64\"", 13}},
        {{"accept-ranges", 13}, {"bytes", 5}},
    };
    static char body[100];
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (char)('a' + i % 26);
    struct soth_config *cfg = make_cfg(path, 16);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    if (o == NULL || soth_observe_start(o) != 0) {
        fprintf(stderr, "%s\n", o == NULL ? err : "start failed");
        return 1;
    }
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    flow_setup(&f, p, 281474976710657ull, 0);
    soth_ev_flow_set_protocol(&f, SOTH_PROTO_HTTP1);
    enum { N_REQ = 64 };
    for (unsigned i = 1; i <= N_REQ; i++) {
        soth_ev_request_headers(&f, i, S("GET"), S("https"), S("127.0.0.1:44321"), S("/100b"),
                                S("1.1"), req, 1);
        soth_ev_response_headers(&f, i, 200, S("1.1"), resp, 8, NULL, 0);
        soth_ev_body_chunk(&f, SOTH_LEG_UPSTREAM, i, 0, sizeof(body), soth_iov(body, sizeof(body)),
                           false);
        soth_ev_exchange_completed(&f, i, SOTH_OUTCOME_COMPLETE, 0, sizeof(body));
    }
    soth_ev_stream_closed(&f, SOTH_CLOSE_CLIENT_EOF, 4096, 8192);
    soth_ev_flush(p);
    uint64_t n_rec = 4 * N_REQ + 1;
    while (atomic_load_explicit(&o->hdr->last_gseq, memory_order_acquire) < n_rec)
        usleep(50);
    /* The records as the ring file holds them (gseq set), copied out once. */
    static _Alignas(8) unsigned char recs[1 << 20];
    size_t off[4 * N_REQ + 1], used = 0;
    const unsigned char *data = (const unsigned char *)o->ring_data;
    uint64_t pos = 0;
    for (uint64_t k = 0; k < n_rec;) {
        const struct ev_rec *r = (const struct ev_rec *)(data + pos);
        if (r->type != REC_PAD) {
            memcpy(recs + used, r, r->len);
            off[k++] = used;
            used += (r->len + 7u) & ~7u;
        }
        pos += r->len;
    }
    soth_observe_stop(o);
    struct jbuf line = {0};
    size_t bytes = 0;
    double c0 = thread_cpu_s(pthread_self());
    for (unsigned long i = 0; i < total; i++) {
        const struct ev_rec *r = (const struct ev_rec *)(recs + off[i % (4 * N_REQ)]);
        line.len = 0;
        if (soth_ev_rec_to_json(r, r->len, &line) != 0)
            return 1;
        bytes += line.len;
    }
    double cpu = thread_cpu_s(pthread_self()) - c0;
    printf("json_encode    %6.2f M events/CPU-s (%5.1f ns CPU/event, %.0f bytes/event)  [%lu "
           "events of a small HTTP/1.1 request]\n",
           (double)total / cpu / 1e6, cpu * 1e9 / (double)total, (double)bytes / (double)total,
           total);
    if (getenv("BENCH_JSON_PRINT") != NULL)
        for (unsigned k = 0; k < 5; k++) {
            const struct ev_rec *r = (const struct ev_rec *)(recs + off[k]);
            line.len = 0;
            soth_ev_rec_to_json(r, r->len, &line);
            fwrite(line.p, 1, line.len, stdout);
        }
    jbuf_free(&line);
    soth_observe_free(o);
    free_cfg(cfg);
    return 0;
}

/* ---- --stress: N producers x M events, verified ---- */
struct stress_arg {
    struct soth_observe *o;
    unsigned idx;
    unsigned long events;
};

static void *stress_producer(void *arg)
{
    struct stress_arg *a = arg;
    struct soth_ev_producer *p = soth_observe_producer(a->o, a->idx);
    struct soth_ev_flow f;
    flow_setup(&f, p, (uint64_t)a->idx + 1, a->idx);
    for (unsigned long i = 0; i < a->events; i++) {
        emit_one(&f, SMALL, (unsigned)i);
        if ((i & 63) == 63)
            soth_ev_flush(p);
    }
    soth_ev_stream_closed(&f, SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    return NULL;
}

struct verify {
    unsigned n;
    uint64_t last_gseq, total, closed, bad;
    int64_t next_seq[64], seen[64];
};

static uint64_t num_after(const char *line, size_t len, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl < len; i++)
        if (memcmp(line + i, key, kl) == 0)
            return strtoull(line + i + kl, NULL, 10);
    return UINT64_MAX;
}

static void verify_line(void *ctx, const char *line, size_t len)
{
    struct verify *v = ctx;
    uint64_t g = num_after(line, len, "\"gseq\":");
    uint64_t w = num_after(line, len, "\"worker\":");
    uint64_t seq = num_after(line, len, "\"seq\":");
    if (g != v->last_gseq + 1 || w >= v->n || (int64_t)seq < v->next_seq[w]) {
        v->bad++;
        return;
    }
    v->last_gseq = g;
    v->next_seq[w] = (int64_t)seq + 1;
    if (len > 40 && memmem(line, len, "\"type\":\"stream_closed\"", 22) != NULL) {
        v->closed++;
        if ((int64_t)num_after(line, len, "\"events_dropped\":") != (int64_t)seq - v->seen[w])
            v->bad++;
    }
    v->seen[w]++;
    v->total++;
}

static int bench_stress(const char *path, unsigned n, unsigned long m)
{
    struct soth_config *cfg = make_cfg(path, 1024);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, n, err, sizeof(err));
    if (o == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    soth_observe_start(o);
    pthread_t t[64];
    struct stress_arg a[64];
    double t0 = now_s();
    for (unsigned i = 0; i < n; i++) {
        a[i] = (struct stress_arg){o, i, m};
        pthread_create(&t[i], NULL, stress_producer, &a[i]);
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    soth_observe_stop(o);
    double dt = now_s() - t0;
    uint64_t dropped = 0;
    for (unsigned i = 0; i < n; i++)
        dropped += atomic_load(&soth_observe_metrics(o, i)->events_dropped);
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    static struct verify v;
    v.n = n;
    soth_ring_reader_seek(r, true);
    soth_ring_reader_poll(r, NULL, verify_line, &v);
    soth_ring_reader_free(r);
    soth_observe_free(o);
    free_cfg(cfg);
    bool ok = v.bad == 0 && v.closed == n && v.total + dropped == (uint64_t)n * (m + 1);
    printf("stress         %u producers x %lu events: %.2f s, %llu through, %llu dropped and "
           "counted, order/gaps/stream_closed %s\n",
           n, m, dt, (unsigned long long)v.total, (unsigned long long)dropped,
           ok ? "verified" : "FAILED");
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    unsigned long events = 5000000;
    unsigned stress_n = 0;
    unsigned long stress_m = 1000000;
    const char *dir = "/tmp";
    const char *stage = "all"; /* spsc, telemetry, tail (needs telemetry), exchange or all */
    unsigned long flows = 100000;
    static const struct option opts[] = {{"events", required_argument, NULL, 'e'},
                                         {"stress", required_argument, NULL, 's'},
                                         {"stress-events", required_argument, NULL, 'm'},
                                         {"dir", required_argument, NULL, 'd'},
                                         {"stage", required_argument, NULL, 'g'},
                                         {"flows", required_argument, NULL, 'f'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'e':
            events = strtoul(optarg, NULL, 10);
            break;
        case 's':
            stress_n = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'm':
            stress_m = strtoul(optarg, NULL, 10);
            break;
        case 'd':
            dir = optarg;
            break;
        case 'g':
            stage = optarg;
            break;
        case 'f':
            flows = strtoul(optarg, NULL, 10);
            break;
        default:
            fprintf(
                stderr,
                "usage: bench_observe [--events N] [--dir DIR] [--stage "
                "spsc|telemetry|exchange|json|all] [--flows N] [--stress N [--stress-events M]]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/bench-observe-%d.ring", dir, (int)getpid());
    if (stress_n > 0) {
        if (stress_n > 64)
            stress_n = 64;
        int rc = bench_stress(path, stress_n, stress_m);
        unlink(path);
        return rc;
    }
    if (strcmp(stage, "json") == 0) {
        int rc = bench_json(path, events);
        unlink(path);
        return rc;
    }
    if (strcmp(stage, "exchange") == 0) {
        int rc = bench_exchange(path, flows);
        unlink(path);
        return rc;
    }
    for (enum shape sh = SMALL; sh <= HEADERS; sh++) {
        if (strcmp(stage, "all") == 0 || strcmp(stage, "spsc") == 0)
            bench_producer(path, sh, events);
        if (strcmp(stage, "spsc") == 0)
            continue;
        /* The file holds everything for stage 3: 2M small (~130 B) or 1M headers (~480 B). */
        unsigned long n = sh == SMALL ? events * 2 / 5 : events / 5;
        bench_telemetry(path, sh, n, 512);
        if (strcmp(stage, "telemetry") != 0)
            bench_reader(path, shape_name(sh));
        unlink(path);
    }
    return 0;
}
