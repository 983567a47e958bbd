/*
 * libFuzzer target for the HTTP/1.1 version of the HTTP layer (core/app_h1.c through
 * core/app.c, with its stream observers core/app_obs.c): what the worker does with a flow's
 * plaintext, minus sockets and TLS.
 *
 * Input (the format of fuzz_h1, so its seeds apply): byte 0 = flags and PRNG seed, then the
 * client byte stream, "~~~~", the upstream byte stream.
 *   flags bits 0-1  events.body_capture_bytes: 0, 7, 100 or 4096; http3_passthrough false
 *                   with 7 and 4096 (Alt-Svc without HTTP/3 entries)
 *   flags bit 2     the client leg is TLS (scheme https)
 *   flags bit 3     regular-mode plain HTTP (origin_form: absolute-form rewritten)
 *   flags bits 4-5  how it ends: EOF upstream then client, client then upstream, a reset,
 *                   or app_shutdown; app_abort always follows
 *   flags bit 6     the layer's clock (app_env.clock_ns) jumps 0..2047 ms before each piece
 *                   instead of 0..3 ms (events.ws_turn_idle_ms is 100, request_header_ms 10 s)
 *   flags bit 7     the whole client stream first, then the upstream's (a request, or frames
 *                   behind an upgrade request, wait in the layer for the answer)
 * An odd input length also sets app_env.keep_upstream (docs/http1.md "Upstream connection
 * pool"); app_upstream_reusable is asked once the streams are in.
 * The two streams go to app_input alternately in random pieces (1..64 bytes) until both are
 * consumed or the layer is done; before each piece the timers due are run (app_deadline,
 * app_timer), as the worker does; send() discards.
 *
 * Checks, beyond "no crash, leak or UB": the event calls app.c makes (intercepted with the
 * linker's --wrap, then passed on to the real producer, whose ring a telemetry thread drains)
 * obey the ordering invariants 4-6 of docs/events.md: request ids 1, 2, 3, ...; request_headers
 * first on a stream; response_headers once, after it; body chunks contiguous from 0, after their
 * head, never after their trailers; captured bytes = min(len, what is left of body_capture_bytes),
 * truncated exactly when something was not captured; exchange_completed once, last, with byte
 * counts equal to the chunk totals (not after a 101 or a CONNECT: relayed bytes are counted but not
 * reported as chunks); no response body to HEAD/204/304; after app_abort every stream that
 * started has completed; no event of the flow after that. WebSocket and SSE events: see
 * app_obs_check.h, and no turn is open when the exchange completes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "soth/config.h"
#include "soth/observe.h"

#define MAX_IDS 4096

#define FAIL()                                                                                     \
    do {                                                                                           \
        fprintf(stderr, "fuzz_app_h1: check at line %d failed\n", __LINE__);                       \
        abort();                                                                                   \
    } while (0)
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            FAIL();                                                                                \
    } while (0)

#include "app_obs_check.h"

struct msg {
    uint64_t off, captured;
    bool trailers;
};

struct stream {
    bool req, resp, done, no_resp_body, relay;
    struct msg m[2]; /* 0 request, 1 response */
    struct obs_st obs;
};

static struct {
    struct soth_observe *obs;
    struct soth_ev_producer *prod;
    struct soth_config *cfg[4];
    struct soth_ev_flow flow;
    uint64_t next_flow_id;
    bool active; /* inside an input: events are checked */
    bool closed; /* app_abort returned: no further event of the flow */
    uint64_t cap;
    bool strip; /* http3_passthrough false in the run's configuration */
    uint32_t last_id;
    uint64_t now_ns; /* the layer's clock */
    struct stream st[MAX_IDS + 1];
} G;

static struct stream *stream_of(uint32_t id)
{
    CHECK(id >= 1);
    return id <= MAX_IDS ? &G.st[id] : NULL;
}

static struct obs_st *obs_st_of(struct soth_ev_flow *f, uint32_t stream_id)
{
    CHECK(f == &G.flow && G.active && !G.closed);
    CHECK(stream_id >= 1 && stream_id <= G.last_id);
    struct stream *s = stream_of(stream_id);
    if (s == NULL)
        return NULL;
    CHECK(s->req && s->resp && !s->done);
    return &s->obs;
}

static uint64_t obs_capture(void)
{
    return G.cap;
}

/* ---- the event calls the layer makes, checked, then handed to the real producer */

void __real_soth_ev_request_headers(struct soth_ev_flow *f, uint32_t stream_id,
                                    struct soth_iov method, struct soth_iov scheme,
                                    struct soth_iov authority, struct soth_iov path,
                                    struct soth_iov http_version, const struct soth_header *hdrs,
                                    size_t n_hdrs);
void __real_soth_ev_response_headers(struct soth_ev_flow *f, uint32_t stream_id, unsigned status,
                                     struct soth_iov http_version, const struct soth_header *hdrs,
                                     size_t n_hdrs, const struct soth_iov *alt_svc_removed,
                                     size_t n_alt_svc_removed);
void __real_soth_ev_trailers(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                             const struct soth_header *hdrs, size_t n_hdrs);
void __real_soth_ev_body_chunk(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                               uint64_t offset, uint64_t len, struct soth_iov data, bool truncated);
void __real_soth_ev_exchange_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                       enum soth_outcome outcome, uint64_t request_bytes,
                                       uint64_t response_bytes);

void __wrap_soth_ev_request_headers(struct soth_ev_flow *f, uint32_t stream_id,
                                    struct soth_iov method, struct soth_iov scheme,
                                    struct soth_iov authority, struct soth_iov path,
                                    struct soth_iov http_version, const struct soth_header *hdrs,
                                    size_t n_hdrs);
void __wrap_soth_ev_response_headers(struct soth_ev_flow *f, uint32_t stream_id, unsigned status,
                                     struct soth_iov http_version, const struct soth_header *hdrs,
                                     size_t n_hdrs, const struct soth_iov *alt_svc_removed,
                                     size_t n_alt_svc_removed);
void __wrap_soth_ev_trailers(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                             const struct soth_header *hdrs, size_t n_hdrs);
void __wrap_soth_ev_body_chunk(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                               uint64_t offset, uint64_t len, struct soth_iov data, bool truncated);
void __wrap_soth_ev_exchange_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                       enum soth_outcome outcome, uint64_t request_bytes,
                                       uint64_t response_bytes);

static bool iov_is(struct soth_iov v, const char *s)
{
    return v.len == strlen(s) && memcmp(v.base, s, v.len) == 0;
}

void __wrap_soth_ev_request_headers(struct soth_ev_flow *f, uint32_t stream_id,
                                    struct soth_iov method, struct soth_iov scheme,
                                    struct soth_iov authority, struct soth_iov path,
                                    struct soth_iov http_version, const struct soth_header *hdrs,
                                    size_t n_hdrs)
{
    CHECK(f == &G.flow && G.active && !G.closed);
    CHECK(stream_id == G.last_id + 1); /* invariant 6 */
    G.last_id = stream_id;
    CHECK(iov_is(http_version, "1.1") || iov_is(http_version, "1.0"));
    CHECK(method.len > 0);
    for (size_t i = 0; i < n_hdrs; i++)
        CHECK(hdrs[i].name.len > 0);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        memset(s, 0, sizeof(*s));
        s->req = true;
        s->no_resp_body = iov_is(method, "HEAD");
        s->relay = iov_is(method, "CONNECT");
    }
    __real_soth_ev_request_headers(f, stream_id, method, scheme, authority, path, http_version,
                                   hdrs, n_hdrs);
}

void __wrap_soth_ev_response_headers(struct soth_ev_flow *f, uint32_t stream_id, unsigned status,
                                     struct soth_iov http_version, const struct soth_header *hdrs,
                                     size_t n_hdrs, const struct soth_iov *alt_svc_removed,
                                     size_t n_alt_svc_removed)
{
    CHECK(f == &G.flow && G.active && !G.closed);
    CHECK(stream_id >= 1 && stream_id <= G.last_id);
    CHECK(status >= 100 && status <= 999);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done && !s->resp); /* invariant 4; interim heads are not events */
        s->resp = true;
        if (status == 204 || status == 304 || status < 200)
            s->no_resp_body = true;
        if (status == 101)
            s->relay = true;
    }
    alt_svc_removed_check(G.strip, hdrs, n_hdrs, alt_svc_removed, n_alt_svc_removed);
    __real_soth_ev_response_headers(f, stream_id, status, http_version, hdrs, n_hdrs,
                                    alt_svc_removed, n_alt_svc_removed);
}

void __wrap_soth_ev_trailers(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                             const struct soth_header *hdrs, size_t n_hdrs)
{
    CHECK(f == &G.flow && G.active && !G.closed);
    CHECK(stream_id >= 1 && stream_id <= G.last_id);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done);
        if (dir == SOTH_LEG_UPSTREAM)
            CHECK(s->resp);
        struct msg *m = &s->m[dir == SOTH_LEG_UPSTREAM];
        CHECK(!m->trailers);
        m->trailers = true;
    }
    __real_soth_ev_trailers(f, dir, stream_id, hdrs, n_hdrs);
}

void __wrap_soth_ev_body_chunk(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                               uint64_t offset, uint64_t len, struct soth_iov data, bool truncated)
{
    CHECK(f == &G.flow && G.active && !G.closed);
    CHECK(stream_id >= 1 && stream_id <= G.last_id);
    CHECK(len >= 1 && data.len <= len);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        bool resp = dir == SOTH_LEG_UPSTREAM;
        struct msg *m = &s->m[resp];
        CHECK(s->req && !s->done && !m->trailers);
        if (resp)
            CHECK(s->resp && !s->no_resp_body);
        CHECK(offset == m->off); /* invariant 5 */
        uint64_t room = G.cap > m->captured ? G.cap - m->captured : 0;
        CHECK(data.len == (len < room ? len : room));
        m->off += len;
        m->captured += data.len;
        CHECK(m->captured <= G.cap);
        CHECK(truncated == (m->captured < m->off));
    }
    __real_soth_ev_body_chunk(f, dir, stream_id, offset, len, data, truncated);
}

void __wrap_soth_ev_exchange_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                       enum soth_outcome outcome, uint64_t request_bytes,
                                       uint64_t response_bytes)
{
    CHECK(f == &G.flow && G.active && !G.closed);
    CHECK(stream_id >= 1 && stream_id <= G.last_id);
    CHECK((unsigned)outcome < SOTH_OUTCOME_COUNT);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done);
        s->done = true;
        CHECK(obs_st_closed(&s->obs)); /* the open turn completes before the exchange */
        if (!s->relay) {
            CHECK(request_bytes == s->m[0].off);
            CHECK(response_bytes == s->m[1].off);
        }
    }
    __real_soth_ev_exchange_completed(f, stream_id, outcome, request_bytes, response_bytes);
}

/* ---- driver */

static int discard(void *ctx, unsigned side, const char *p, size_t n)
{
    (void)ctx;
    CHECK(side <= 1 && (n == 0 || p != NULL));
    return 0;
}

static uint64_t clock_ns(void *ctx)
{
    (void)ctx;
    return G.now_ns;
}

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void setup(void)
{
    char dir[] = "/tmp/fuzz_app_h1.XXXXXX";
    if (mkdtemp(dir) == NULL)
        FAIL();
    static const unsigned caps[4] = {0, 7, 100, 4096};
    char err[256], text[512];
    for (int i = 0; i < 4; i++) {
        int n = snprintf(text, sizeof(text),
                         "{\"events\": {\"ring_path\": \"%s/events.ring\", \"ring_size_mb\": 1, "
                         "\"body_capture_bytes\": %u, \"ws_turn_idle_ms\": 100}, "
                         "\"http3_passthrough\": %s}",
                         dir, caps[i], i & 1 ? "false" : "true");
        if (soth_config_load_text(text, (size_t)n, &G.cfg[i], err, sizeof(err)) != 0) {
            fprintf(stderr, "fuzz_app_h1: %s\n", err);
            FAIL();
        }
    }
    /* The producer's own per-record cap is the largest; the glue bounds each message. */
    G.obs = soth_observe_new(G.cfg[3], 1, err, sizeof(err));
    if (G.obs == NULL || soth_observe_start(G.obs) != 0) {
        fprintf(stderr, "fuzz_app_h1: observe: %s\n", err);
        FAIL();
    }
    G.prod = soth_observe_producer(G.obs, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (G.obs == NULL)
        setup();
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    uint32_t seed = data[0] | 0x100u;
    const char *in = (const char *)data + 1;
    size_t n = size - 1, cn = n, un = 0;
    const char *up = NULL;
    for (size_t i = 0; i + 4 <= n; i++) {
        if (memcmp(in + i, "~~~~", 4) == 0) {
            cn = i;
            up = in + i + 4;
            un = n - i - 4;
            break;
        }
    }

    const struct soth_config *cfg = G.cfg[flags & 3];
    G.cap = cfg->events.body_capture_bytes;
    G.strip = !cfg->http3_passthrough;
    G.last_id = 0;
    G.closed = false;
    memset(G.st, 0, sizeof(G.st));
    soth_ev_flow_init(&G.flow, G.prod, ++G.next_flow_id, 0, NULL, 0);
    soth_ev_flow_set_server(&G.flow, SOTH_IOV_LIT("origin.test"), 443);
    soth_ev_connect_received(&G.flow, SOTH_IOV_LIT("CONNECT"), SOTH_IOV_LIT("origin.test:443"));
    soth_ev_connect_decision(&G.flow, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    struct app_env env = {
        .cfg = cfg,
        .ev = &G.flow,
        .m = soth_observe_metrics(G.obs, 0),
        .client_tls = (flags & 4) != 0,
        .origin_form = (flags & 8) != 0,
        .ctx = NULL,
        .send = discard,
        .clock_ns = clock_ns,
        .keep_upstream = (size & 1) != 0,
    };
    G.now_ns = 1000000000000ull;
    struct app *a = app_new(APP_H1, &env);
    CHECK(a != NULL);
    G.active = true;

    size_t cp = 0, upos = 0;
    uint32_t cseed = seed ^ 0x5bd1e995u; /* the clock's own sequence: pieces as without it */
    int rc = APP_AGAIN;
    for (int guard = 0; rc == APP_AGAIN && (cp < cn || upos < un) && guard < 100000; guard++) {
        unsigned side = rnd(&seed) & 1;
        if (side == 0 && cp >= cn)
            side = 1;
        else if (side == 1 && upos >= un)
            side = 0;
        if (flags & 0x80)
            side = cp < cn ? 0 : 1;
        size_t piece = 1 + rnd(&seed) % 64;
        G.now_ns += (uint64_t)(rnd(&cseed) % ((flags & 0x40) ? 2048 : 4)) * 1000000u;
        uint64_t now_ms = G.now_ns / 1000000u, due = app_deadline(a);
        if (due != 0 && due <= now_ms) {
            rc = app_timer(a, now_ms);
            CHECK(rc == APP_AGAIN || rc == APP_DONE || rc < 0);
            if (rc != APP_AGAIN)
                break;
            CHECK(app_deadline(a) == 0 || app_deadline(a) > now_ms); /* nothing left due */
        }
        if (side == 0) {
            size_t k = cn - cp < piece ? cn - cp : piece;
            rc = app_input(a, 0, in + cp, k);
            cp += k;
        } else {
            size_t k = un - upos < piece ? un - upos : piece;
            rc = app_input(a, 1, up + upos, k);
            upos += k;
        }
        CHECK(rc == APP_AGAIN || rc == APP_DONE || rc < 0);
        (void)app_read_paused(a, side);
        (void)app_want_write(a, side);
    }
    if (rc == APP_AGAIN) {
        switch ((flags >> 4) & 3) {
        case 0:
            rc = app_eof(a, SOTH_LEG_UPSTREAM, false);
            if (rc == APP_AGAIN || rc == APP_HALF_CLOSE)
                rc = app_eof(a, SOTH_LEG_CLIENT, false);
            break;
        case 1:
            rc = app_eof(a, SOTH_LEG_CLIENT, false);
            if (rc == APP_AGAIN || rc == APP_HALF_CLOSE)
                rc = app_eof(a, SOTH_LEG_UPSTREAM, false);
            break;
        case 2:
            rc = app_eof(a, rnd(&seed) & 1, true);
            break;
        default:
            rc = app_shutdown(a);
            break;
        }
        CHECK(rc == APP_AGAIN || rc == APP_DONE || rc == APP_HALF_CLOSE || rc < 0);
    }
    (void)app_close_reason(a);
    uint32_t carried;
    (void)app_upstream_reusable(a, &carried);
    CHECK(carried <= G.last_id);
    app_abort(a, SOTH_OUTCOME_RESET);
    app_abort(a, SOTH_OUTCOME_RESET); /* idempotent */
    G.closed = true;
    for (uint32_t id = 1; id <= G.last_id && id <= MAX_IDS; id++)
        CHECK(G.st[id].done); /* every exchange that started has ended */
    app_free(a);
    G.active = false;
    soth_ev_stream_closed(&G.flow, SOTH_CLOSE_CLIENT_EOF, cn, un);
    soth_ev_flush(G.prod);
    return 0;
}
