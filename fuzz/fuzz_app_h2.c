/*
 * libFuzzer target for the HTTP/2 version of the HTTP layer (core/app_h2.c through core/app.c):
 * what the worker does with an HTTP/2 flow's plaintext, minus sockets and TLS, with the
 * relay, the events and the streaming hooks (gRPC, SSE, WebSocket over HTTP/2) all real.
 *
 * Input (the format of fuzz_h2, so its seeds in fuzz/corpus/h2/ apply): one flags byte, then
 * records.
 *   flags bit 0  prepend a valid client preface + SETTINGS + three requests on the client leg
 *   flags bit 1  prepend a valid origin SETTINGS + SETTINGS ACK on the upstream leg
 *   flags bit 2  small limits (events.body_capture_bytes 7, http2_max_header_list_size 4096)
 *                and http3_passthrough true (without: false, Alt-Svc loses HTTP/3 entries)
 *   record: op byte: bit 0 side (0 client, 1 upstream), bits 1-2 op:
 *     0 app_input: 2 length bytes (big endian), then that many bytes (cut at the end)
 *     1 app_hold(side, false); with bit 3: the layer's clock (app_env.clock_ns) advances
 *       (op >> 4) x 100 ms and the timers due run (app_deadline, app_timer), as in the
 *       worker (events.ws_turn_idle_ms is 100)
 *     2 app_eof(side, bit 3 = reset)
 *     3 app_hold(side, true); with bit 3: app_shutdown instead
 * The upstream may be parked (app_env.upstream_parkable, timeouts.upstream_idle_ms 300): when
 * the layer asks for a new upstream connection (app_upstream_want), the next record's bit 5
 * says whether it came up (app_upstream_opened); upstream bytes after it are the new one's.
 * At the end: app_eof on both sides, then app_abort(timeout), as the worker's flow_close.
 *
 * Checks, beyond "no crash, leak or UB": the event calls app_h2.c makes (intercepted with the
 * linker's --wrap, then passed on to the real producer) obey the ordering invariants 4-6 of
 * docs/events.md for HTTP/2: request_headers (http_version "2", odd positive stream id, never
 * reused) first on a stream; response_headers once, after it; body chunks contiguous from 0, after
 * their head, not after their trailers; captured bytes = min(len, what is left of
 * body_capture_bytes), truncated exactly when something was not captured; exchange_completed once,
 * last, with byte counts equal to the chunk totals; no event after a call returned APP_DONE or an
 * error, except that app_abort may still end streams; after app_abort every stream that started has
 * completed. send() chunks are 1..16 KiB. WebSocket and SSE events: see app_obs_check.h, and no
 * turn is open when the stream's exchange completes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "soth/config.h"
#include "soth/observe.h"

#define MAX_SID (1u << 16) /* streams tracked: ids 1, 3, ... below this */

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_app_h2.c:%d: CHECK(%s) failed\n", __LINE__, #c);                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#include "app_obs_check.h"

struct msg {
    uint64_t off, captured;
    bool trailers;
};

struct stream {
    bool req, resp, done;
    struct msg m[2];
    struct obs_st obs;
};

static struct {
    struct soth_observe *obs;
    struct soth_ev_producer *prod;
    struct soth_config *cfg[2];
    struct soth_ev_flow flow;
    uint64_t next_flow_id;
    bool active;
    uint64_t cap;
    bool strip;        /* http3_passthrough false in the run's configuration */
    uint64_t now_ns;   /* the layer's clock */
    struct stream *st; /* by stream id / 2 */
} G;

static struct stream *stream_of(uint32_t id)
{
    CHECK(id >= 1 && (id & 1));
    return id < MAX_SID ? &G.st[id / 2] : NULL;
}

static struct obs_st *obs_st_of(struct soth_ev_flow *f, uint32_t stream_id)
{
    CHECK(f == &G.flow && G.active);
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

void __wrap_soth_ev_request_headers(struct soth_ev_flow *f, uint32_t stream_id,
                                    struct soth_iov method, struct soth_iov scheme,
                                    struct soth_iov authority, struct soth_iov path,
                                    struct soth_iov http_version, const struct soth_header *hdrs,
                                    size_t n_hdrs)
{
    CHECK(f == &G.flow && G.active);
    CHECK(http_version.len == 1 && http_version.base[0] == '2');
    for (size_t i = 0; i < n_hdrs; i++)
        CHECK(hdrs[i].name.len > 0 && hdrs[i].name.base[0] != ':');
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(!s->req); /* an id is never reused */
        s->req = true;
    }
    __real_soth_ev_request_headers(f, stream_id, method, scheme, authority, path, http_version,
                                   hdrs, n_hdrs);
}

void __wrap_soth_ev_response_headers(struct soth_ev_flow *f, uint32_t stream_id, unsigned status,
                                     struct soth_iov http_version, const struct soth_header *hdrs,
                                     size_t n_hdrs, const struct soth_iov *alt_svc_removed,
                                     size_t n_alt_svc_removed)
{
    CHECK(f == &G.flow && G.active);
    CHECK(status >= 200 && status <= 999); /* 1xx heads are relayed, not reported */
    CHECK(http_version.len == 1 && http_version.base[0] == '2');
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done && !s->resp);
        s->resp = true;
    }
    alt_svc_removed_check(G.strip, hdrs, n_hdrs, alt_svc_removed, n_alt_svc_removed);
    __real_soth_ev_response_headers(f, stream_id, status, http_version, hdrs, n_hdrs,
                                    alt_svc_removed, n_alt_svc_removed);
}

void __wrap_soth_ev_trailers(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                             const struct soth_header *hdrs, size_t n_hdrs)
{
    CHECK(f == &G.flow && G.active);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done);
        if (dir == SOTH_LEG_UPSTREAM)
            CHECK(s->resp);
        CHECK(!s->m[dir].trailers);
        s->m[dir].trailers = true;
    }
    __real_soth_ev_trailers(f, dir, stream_id, hdrs, n_hdrs);
}

void __wrap_soth_ev_body_chunk(struct soth_ev_flow *f, enum soth_leg dir, uint32_t stream_id,
                               uint64_t offset, uint64_t len, struct soth_iov data, bool truncated)
{
    CHECK(f == &G.flow && G.active);
    CHECK(len >= 1 && data.len <= len);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done);
        if (dir == SOTH_LEG_UPSTREAM)
            CHECK(s->resp);
        struct msg *m = &s->m[dir];
        CHECK(!m->trailers);
        CHECK(offset == m->off); /* invariant 5 */
        uint64_t room = G.cap > m->captured ? G.cap - m->captured : 0;
        CHECK(data.len == (len < room ? len : room));
        CHECK(truncated == (data.len < len));
        m->off += len;
        m->captured += data.len;
    }
    __real_soth_ev_body_chunk(f, dir, stream_id, offset, len, data, truncated);
}

void __wrap_soth_ev_exchange_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                       enum soth_outcome outcome, uint64_t request_bytes,
                                       uint64_t response_bytes)
{
    CHECK(f == &G.flow && G.active);
    CHECK(outcome < SOTH_OUTCOME_COUNT);
    struct stream *s = stream_of(stream_id);
    if (s != NULL) {
        CHECK(s->req && !s->done);     /* request_headers first, exchange_completed once */
        CHECK(obs_st_closed(&s->obs)); /* the open turn completes before the exchange */
        s->done = true;
        CHECK(request_bytes == s->m[0].off && response_bytes == s->m[1].off);
    }
    __real_soth_ev_exchange_completed(f, stream_id, outcome, request_bytes, response_bytes);
}

/* ---- the harness */

static int on_send(void *ctx, unsigned side, const char *p, size_t n)
{
    (void)ctx, (void)p;
    CHECK(side <= 1 && n >= 1 && n <= 16384);
    return 0;
}

static uint64_t clock_ns(void *ctx)
{
    (void)ctx;
    return G.now_ns;
}

static struct soth_config *make_cfg(uint32_t capture, uint32_t max_header_list)
{
    struct soth_config *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    atomic_init(&c->refs, 1);
    c->events.ring_size_mb = 1;
    c->events.body_capture_bytes = capture;
    c->events.ws_turn_idle_ms = 100;
    c->http2_enabled = true;
    c->http2_max_header_list_size = max_header_list;
    c->timeouts.upstream_idle_ms = 300;
    return c;
}

static void setup(void)
{
    char dir[] = "/tmp/soth-fuzz-apph2-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char ring[64];
    snprintf(ring, sizeof(ring), "%s/ev.ring", dir);
    G.cfg[0] = make_cfg(4096, 65536);
    G.cfg[1] = make_cfg(7, 4096);
    G.cfg[1]->http3_passthrough = true; /* cfg[0]: false, Alt-Svc without HTTP/3 entries */
    G.cfg[0]->events.ring_path = ring;
    char err[256];
    G.obs = soth_observe_new(G.cfg[0], 1, err, sizeof(err));
    CHECK(G.obs != NULL);
    G.cfg[0]->events.ring_path = NULL;
    CHECK(soth_observe_start(G.obs) == 0);
    G.prod = soth_observe_producer(G.obs, 0);
    G.st = calloc(MAX_SID / 2, sizeof(*G.st));
    CHECK(G.st != NULL);
    unlink(ring);
    rmdir(dir);
}

static const char preface_client[] =
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    /* SETTINGS (empty) */
    "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    /* HEADERS stream 1, END_STREAM|END_HEADERS: GET https://a/ (static table indexes) */
    "\x00\x00\x05\x01\x05\x00\x00\x00\x01\x82\x87\x84\x41\x00"
    /* HEADERS stream 3, END_HEADERS: POST https://a/ then DATA "hello" END_STREAM */
    "\x00\x00\x05\x01\x04\x00\x00\x00\x03\x83\x87\x84\x41\x00"
    "\x00\x00\x05\x00\x01\x00\x00\x00\x03hello"
    /* HEADERS stream 5, END_STREAM|END_HEADERS: GET https://a/index.html */
    "\x00\x00\x05\x01\x05\x00\x00\x00\x05\x82\x87\x85\x41\x00";
static const char preface_origin[] = "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                                     "\x00\x00\x00\x04\x01\x00\x00\x00\x00";

/* The layer said it is finished (or failed): the worker feeds it nothing more. */
static bool settle(int rc)
{
    CHECK(rc == APP_AGAIN || rc == APP_DONE || rc < 0);
    return rc != APP_AGAIN;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (G.obs == NULL)
        setup();
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    data++, size--;
    struct soth_config *cfg = G.cfg[(flags >> 2) & 1];
    G.cap = cfg->events.body_capture_bytes;
    G.strip = !cfg->http3_passthrough;
    memset(G.st, 0, (MAX_SID / 2) * sizeof(*G.st));
    soth_ev_flow_init(&G.flow, G.prod, ++G.next_flow_id, 0, NULL, 0);
    soth_ev_connect_received(&G.flow, SOTH_IOV_LIT("CONNECT"), SOTH_IOV_LIT("a:443"));
    soth_ev_connect_decision(&G.flow, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    G.active = true;
    struct app_env env = {.cfg = cfg,
                          .ev = &G.flow,
                          .client_tls = true,
                          .send = on_send,
                          .clock_ns = clock_ns,
                          .upstream_parkable = true};
    G.now_ns = 1000000000000ull;
    struct app *a = app_new(APP_H2, &env);
    CHECK(a != NULL);
    CHECK(G.flow.protocol == SOTH_PROTO_HTTP2);
    bool done = false;
    if (flags & 1)
        done = settle(app_input(a, SOTH_LEG_CLIENT, preface_client, sizeof(preface_client) - 1));
    if ((flags & 2) && !done)
        done = settle(app_input(a, SOTH_LEG_UPSTREAM, preface_origin, sizeof(preface_origin) - 1));
    size_t i = 0;
    bool wake = false;
    while (i < size && !done) {
        uint8_t op = data[i++];
        unsigned side = op & 1;
        if (wake) {
            wake = false;
            done = settle(app_upstream_opened(a, (op & 32) != 0));
            if (done)
                break;
        }
        switch ((op >> 1) & 3) {
        case 0: {
            size_t n = 0;
            if (i + 2 <= size)
                n = ((size_t)data[i] << 8) | data[i + 1];
            i += 2;
            if (i > size)
                i = size;
            if (n > size - i)
                n = size - i;
            done = settle(app_input(a, side, (const char *)data + i, n));
            i += n;
            break;
        }
        case 1:
            if (op & 8) {
                G.now_ns += (uint64_t)(op >> 4) * 100000000u;
                uint64_t now_ms = G.now_ns / 1000000u, due = app_deadline(a);
                if (due != 0 && due <= now_ms) {
                    done = settle(app_timer(a, now_ms));
                    CHECK(done || app_deadline(a) == 0 || app_deadline(a) > now_ms);
                }
                break;
            }
            done = settle(app_hold(a, side, false));
            break;
        case 2:
            done = settle(app_eof(a, side, (op >> 3) & 1));
            break;
        default:
            if (op & 8)
                done = settle(app_shutdown(a));
            else
                done = settle(app_hold(a, side, true));
            break;
        }
        (void)app_want_write(a, side);
        enum app_upstream_want want = app_upstream_want(a);
        CHECK(app_upstream_want(a) == APP_UP_NONE); /* said once */
        if (want == APP_UP_OPEN)
            wake = true;
    }
    if (!done && !settle(app_eof(a, SOTH_LEG_UPSTREAM, false)))
        (void)app_eof(a, SOTH_LEG_CLIENT, false);
    app_abort(a, SOTH_OUTCOME_TIMEOUT);
    app_abort(a, SOTH_OUTCOME_RESET); /* idempotent */
    CHECK(app_close_reason(a) < SOTH_CLOSE_COUNT);
    for (uint32_t k = 0; k < MAX_SID / 2; k++)
        CHECK(!G.st[k].req || G.st[k].done); /* every stream that started has ended */
    G.active = false;
    app_free(a);
    soth_ev_stream_closed(&G.flow, SOTH_CLOSE_CLIENT_EOF, 0, 0);
    soth_ev_flush(G.prod);
    return 0;
}
