/*
 * The stream observers of the HTTP layer (core/app_obs.c), driven through both versions in
 * memory: HTTP/1.1 with raw request/response bytes, HTTP/2 with an nghttp2 client (the user
 * agent) and an nghttp2 server (the origin) as in test_app_h2.c. The layer's clock is a fake
 * one (app_env.clock_ns), so idle turns are checked to the millisecond. The flow's events go
 * through a real observe subsystem into a ring file and are read back as their JSON.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "app.h"
#include "soth/observe.h"

#define CAP 4096 /* events.body_capture_bytes of these tests */

struct bytes {
    char *p;
    size_t len, cap;
};

static void b_add(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n)
            c *= 2;
        b->p = realloc(b->p, c);
        cr_assert_not_null(b->p);
        b->cap = c;
    }
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void b_str(struct bytes *b, const char *s)
{
    b_add(b, s, strlen(s));
}

/* ---- the harness: one flow, its layer, what the layer sends each leg */

#define MAXS 16 /* HTTP/2 streams of one test */

struct ustream { /* the user agent's view of an HTTP/2 stream */
    int32_t sid;
    struct bytes out; /* DATA still to send */
    size_t rd;
    bool eof;
    struct bytes in; /* DATA received */
    int status;
};

struct ostream { /* the origin's view */
    int32_t sid;
    struct bytes out;
    size_t rd;
    bool eof;
    struct bytes in;
    bool sse;
};

struct t {
    char dir[64], ring[128];
    struct soth_config cfg;
    struct soth_observe *o;
    struct soth_ev_producer *prod;
    struct soth_ev_flow ev;
    struct app *a;
    struct bytes to[2]; /* sent by the layer toward SOTH_LEG_CLIENT / SOTH_LEG_UPSTREAM */
    uint64_t now_ns;    /* the fake clock */
    int rc;
    json_t *events;
    /* HTTP/2 */
    nghttp2_session *ua, *origin;
    size_t sent[2]; /* bytes of to[] already given to the sessions */
    struct ustream us[MAXS];
    size_t nus;
    struct ostream os[MAXS];
    size_t nos;
    bool origin_sse;        /* the origin answers every request with an event stream */
    const char *origin_ext; /* its WebSocket answers' sec-websocket-extensions, or NULL */
};

static struct t *T;

static int env_send(void *ctx, unsigned side, const char *p, size_t n)
{
    struct t *t = ctx;
    b_add(&t->to[side], p, n);
    return 0;
}

static uint64_t fake_clock(void *ctx)
{
    return ((struct t *)ctx)->now_ns;
}

/* timeouts.response_header_ms of the next t_setup (0: none, as for most tests here). */
static uint32_t setup_response_header_ms;

static struct t *t_setup(enum app_kind kind, uint32_t idle_ms)
{
    struct t *t = calloc(1, sizeof(*t));
    T = t;
    snprintf(t->dir, sizeof(t->dir), "/tmp/soth-appobs-XXXXXX");
    cr_assert_not_null(mkdtemp(t->dir));
    snprintf(t->ring, sizeof(t->ring), "%s/ev.ring", t->dir);
    struct soth_config *c = &t->cfg;
    atomic_init(&c->refs, 1);
    c->events.ring_path = t->ring;
    c->events.ring_size_mb = 64;
    c->events.body_capture_bytes = CAP;
    c->events.ws_turn_idle_ms = idle_ms;
    c->timeouts.request_header_ms = 10000;
    c->timeouts.response_header_ms = setup_response_header_ms;
    c->http2_enabled = true;
    c->http2_max_header_list_size = 65536;
    char err[256];
    t->o = soth_observe_new(c, 1, err, sizeof(err));
    cr_assert_not_null(t->o, "%s", err);
    cr_assert_eq(soth_observe_start(t->o), 0);
    t->prod = soth_observe_producer(t->o, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
    sin.sin_addr.s_addr = htonl(0x7f000001);
    soth_ev_flow_init(&t->ev, t->prod, 9, 0, (struct sockaddr *)&sin, sizeof(sin));
    soth_ev_flow_set_server(&t->ev, SOTH_IOV_LIT("origin.test"), 443);
    soth_ev_connect_received(&t->ev, SOTH_IOV_LIT("CONNECT"), SOTH_IOV_LIT("origin.test:443"));
    soth_ev_connect_decision(&t->ev, SOTH_ACTION_INTERCEPT, SOTH_REASON_DEFAULT, SOTH_IOV_NULL);
    t->now_ns = 1000000000000ull; /* 1000 s */
    struct app_env env = {.cfg = c,
                          .ev = &t->ev,
                          .client_tls = true,
                          .ctx = t,
                          .send = env_send,
                          .clock_ns = fake_clock};
    t->a = app_new(kind, &env);
    cr_assert_not_null(t->a);
    return t;
}

static void t_teardown(void)
{
    struct t *t = T;
    if (t == NULL)
        return;
    app_free(t->a);
    nghttp2_session_del(t->ua);
    nghttp2_session_del(t->origin);
    soth_observe_free(t->o);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", t->dir);
    cr_expect_eq(system(cmd), 0);
    for (size_t i = 0; i < MAXS; i++) {
        free(t->us[i].out.p);
        free(t->us[i].in.p);
        free(t->os[i].out.p);
        free(t->os[i].in.p);
    }
    free(t->to[0].p);
    free(t->to[1].p);
    json_decref(t->events);
    free(t);
    T = NULL;
    app_thread_done();
}

TestSuite(app_obs, .fini = t_teardown, .timeout = 120);

static void input(struct t *t, unsigned side, const void *p, size_t n)
{
    int rc = app_input(t->a, side, p, n);
    cr_assert(rc == APP_AGAIN, "app_input: %d", rc);
}

/* Advance the fake clock by ms. */
static void later(struct t *t, uint64_t ms)
{
    t->now_ns += ms * 1000000u;
}

/* The wall-clock time the events give to a layer clock reading is that reading plus a fixed
 * offset per stream: differences are exact. */

/* ---- events */

static json_t *t_events(struct t *t)
{
    if (t->events != NULL)
        return t->events;
    app_abort(t->a, SOTH_OUTCOME_RESET);
    soth_ev_stream_closed(&t->ev, app_close_reason(t->a), 0, 0);
    soth_ev_flush(t->prod);
    soth_observe_stop(t->o);
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(t->ring, err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    soth_ring_reader_seek(r, true);
    struct bytes txt = {0};
    soth_ring_reader_poll(r, NULL, (void (*)(void *, const char *, size_t))b_add, &txt);
    soth_ring_reader_free(r);
    json_t *arr = json_array();
    const char *p = txt.p, *end = txt.p + txt.len;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        cr_assert_not_null(nl);
        json_error_t je;
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, &je);
        cr_assert_not_null(j, "bad JSON %s", je.text);
        json_array_append_new(arr, j);
        p = nl + 1;
    }
    free(txt.p);
    t->events = arr;
    return arr;
}

static const char *s_of(json_t *e, const char *k)
{
    const char *v = json_string_value(json_object_get(e, k));
    return v != NULL ? v : "";
}

static long long i_of(json_t *e, const char *k)
{
    return json_integer_value(json_object_get(e, k));
}

/* Events of `type` on stream sid (0: any), in order, into out[]; returns how many. */
static size_t pick(struct t *t, const char *type, uint32_t sid, json_t **out, size_t max)
{
    size_t n = 0, i;
    json_t *e;
    json_array_foreach(t_events(t), i, e)
    {
        if (strcmp(s_of(e, "type"), type) != 0)
            continue;
        if (sid != 0 && i_of(e, "stream_id") != (long long)sid)
            continue;
        if (n < max)
            out[n] = e;
        n++;
    }
    return n;
}

/* data_b64 of e decoded equals want[0..n). */
static void expect_b64(json_t *e, const void *want, size_t n)
{
    const char *b = s_of(e, "data_b64");
    size_t bl = strlen(b);
    unsigned char *out = malloc(bl + 4);
    size_t k = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < bl && b[i] != '='; i++) {
        const char *al = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *q = strchr(al, b[i]);
        cr_assert_not_null(q);
        acc = (acc << 6) | (unsigned)(q - al);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (unsigned char)(acc >> bits);
        }
    }
    cr_assert_eq(k, n, "data_b64 has %zu bytes, want %zu", k, n);
    cr_assert_eq(memcmp(out, want, n), 0, "data_b64 differs");
    free(out);
}

static void expect_msg(json_t *e, const char *dir, int opcode, const void *payload, size_t len)
{
    cr_assert_str_eq(s_of(e, "direction"), dir);
    cr_assert_eq(i_of(e, "opcode"), opcode);
    cr_assert_eq(i_of(e, "len"), (long long)len, "len %lld, want %zu", i_of(e, "len"), len);
    size_t keep = len < CAP ? len : CAP;
    expect_b64(e, payload, keep);
    cr_assert_eq(json_is_true(json_object_get(e, "truncated")), len > CAP);
}

/* ---- WebSocket frames and permessage-deflate (RFC 6455 5.2, RFC 7692 7.2.1) */

static void frame(struct bytes *b, unsigned b0, const void *payload, size_t n, bool mask)
{
    unsigned char h[14];
    size_t k = 0;
    h[k++] = (unsigned char)b0;
    unsigned m = mask ? 0x80 : 0;
    if (n < 126) {
        h[k++] = (unsigned char)(m | n);
    } else if (n < 65536) {
        h[k++] = (unsigned char)(m | 126);
        h[k++] = (unsigned char)(n >> 8);
        h[k++] = (unsigned char)n;
    } else {
        h[k++] = (unsigned char)(m | 127);
        for (int i = 7; i >= 0; i--)
            h[k++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    static const unsigned char key[4] = {0xa1, 0xb2, 0xc3, 0xd4};
    if (mask) {
        memcpy(h + k, key, 4);
        k += 4;
    }
    b_add(b, h, k);
    const unsigned char *p = payload;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = mask ? p[i] ^ key[i & 3] : p[i];
        b_add(b, &c, 1);
    }
}

struct deflater {
    z_stream zs;
    bool takeover;
};

static void deflater_init(struct deflater *d, int bits, bool takeover)
{
    memset(d, 0, sizeof(*d));
    cr_assert_eq(
        deflateInit2(&d->zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY),
        Z_OK);
    d->takeover = takeover;
}

/* A compressed text frame (RSV1) of msg into b. Returns the payload length. */
static size_t deflate_frame(struct deflater *d, struct bytes *b, const void *msg, size_t len,
                            bool mask)
{
    size_t cap = len + len / 2 + 64;
    unsigned char *out = malloc(cap);
    d->zs.next_in = (Bytef *)(uintptr_t)msg;
    d->zs.avail_in = (uInt)len;
    d->zs.next_out = out;
    d->zs.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&d->zs, Z_SYNC_FLUSH), Z_OK);
    size_t n = cap - d->zs.avail_out - 4; /* without 00 00 ff ff */
    if (!d->takeover)
        deflateReset(&d->zs);
    frame(b, 0xc1, out, n, mask);
    free(out);
    return n;
}

/* ---- HTTP/1.1 */

static const char ws_request[] = "GET /chat HTTP/1.1\r\nHost: origin.test\r\nUpgrade: websocket\r\n"
                                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n\r\n";

/* Upgrade to WebSocket; `ext` is the 101's Sec-WebSocket-Extensions (NULL: none). After it,
 * to[] is empty, so to[] holds exactly what the layer relays. */
static void h1_upgrade(struct t *t, const char *ext)
{
    input(t, SOTH_LEG_CLIENT, ws_request, sizeof(ws_request) - 1);
    struct bytes r = {0};
    b_str(&r, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
    if (ext != NULL) {
        b_str(&r, "Sec-WebSocket-Extensions: ");
        b_str(&r, ext);
        b_str(&r, "\r\n");
    }
    b_str(&r, "\r\n");
    input(t, SOTH_LEG_UPSTREAM, r.p, r.len);
    free(r.p);
    cr_assert_gt(t->to[SOTH_LEG_CLIENT].len, 0, "the 101 went to the client");
    t->to[0].len = t->to[1].len = 0;
}

/* Send wire bytes from `side` through the layer, checking they are relayed unchanged. */
static void relay(struct t *t, unsigned side, struct bytes *wire)
{
    struct bytes *out = &t->to[side ^ 1];
    size_t before = out->len;
    input(t, side, wire->p, wire->len);
    cr_assert_eq(out->len - before, wire->len, "relayed %zu of %zu bytes", out->len - before,
                 wire->len);
    cr_assert_eq(memcmp(out->p + before, wire->p, wire->len), 0, "relayed bytes changed");
    wire->len = 0;
}

Test(app_obs, h1_websocket_messages_and_turns_bytes_unchanged)
{
    struct t *t = t_setup(APP_H1, 30000);
    h1_upgrade(t, NULL);
    struct bytes w = {0};
    frame(&w, 0x81, "hello", 5, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    later(t, 7);
    frame(&w, 0x81, "hi there", 8, false);
    relay(t, SOTH_LEG_UPSTREAM, &w);
    later(t, 3);
    char bin[5000];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (char)(i * 13);
    frame(&w, 0x82, bin, sizeof(bin), true); /* next client message: direction change */
    relay(t, SOTH_LEG_CLIENT, &w);
    frame(&w, 0x88, "\x03\xe8", 2, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    free(w.p);

    json_t *m[8], *ts[4], *tc[4];
    cr_assert_eq(pick(t, "ws_message", 1, m, 8), 4);
    expect_msg(m[0], "client_to_server", 1, "hello", 5);
    expect_msg(m[1], "server_to_client", 1, "hi there", 8);
    expect_msg(m[2], "client_to_server", 2, bin, sizeof(bin));
    expect_msg(m[3], "client_to_server", 8, "\x03\xe8", 2);
    cr_assert_eq(pick(t, "ws_turn_started", 1, ts, 4), 2);
    cr_assert_eq(pick(t, "ws_turn_completed", 1, tc, 4), 2);
    cr_assert_str_eq(s_of(tc[0], "flush_reason"), "direction_change");
    cr_assert_eq(i_of(tc[0], "ended_ns") - i_of(tc[0], "started_ns"), 10000000);
    cr_assert_eq(i_of(tc[0], "client_bytes"), 5);
    cr_assert_eq(i_of(tc[0], "server_bytes"), 8);
    cr_assert_str_eq(s_of(tc[1], "flush_reason"), "close");
    cr_assert_eq(i_of(tc[1], "client_bytes"), (long long)sizeof(bin) + 2);
    cr_assert_eq(i_of(tc[1], "started_ns"), i_of(tc[0], "ended_ns"));
}

Test(app_obs, h1_idle_turn_completes_by_timer_without_another_message)
{
    struct t *t = t_setup(APP_H1, 1000);
    h1_upgrade(t, NULL);
    cr_assert_eq(app_deadline(t->a), 0, "no turn open, no timer");
    struct bytes w = {0};
    frame(&w, 0x81, "ping?", 5, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    uint64_t first = t->now_ns;
    later(t, 200);
    frame(&w, 0x81, "pong!", 5, false);
    relay(t, SOTH_LEG_UPSTREAM, &w);
    uint64_t last = t->now_ns;
    uint64_t due = (last + 1000000000u) / 1000000u;
    cr_assert_eq(app_deadline(t->a), due, "the gap counts from the turn's last message");
    cr_assert_eq(app_timer(t->a, due - 1), APP_AGAIN);
    cr_assert_eq(app_deadline(t->a), due, "one ms early: the turn stays open");
    cr_assert_eq(app_timer(t->a, due), APP_AGAIN);
    cr_assert_eq(app_deadline(t->a), 0, "the turn completed");
    /* a later message starts the next turn, which the flow's end completes */
    t->now_ns = due * 1000000u + 5000000000u;
    frame(&w, 0x81, "again", 5, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    cr_assert_neq(app_deadline(t->a), 0);
    free(w.p);

    json_t *tc[4], *m[4];
    cr_assert_eq(pick(t, "ws_turn_completed", 1, tc, 4), 2);
    cr_assert_str_eq(s_of(tc[0], "flush_reason"), "idle");
    cr_assert_eq(i_of(tc[0], "ended_ns") - i_of(tc[0], "started_ns"), (long long)(last - first));
    cr_assert_eq(i_of(tc[0], "client_frames"), 1);
    cr_assert_eq(i_of(tc[0], "server_frames"), 1);
    cr_assert_eq(i_of(tc[1], "turn_id"), 2);
    cr_assert_str_eq(s_of(tc[1], "flush_reason"), "close");
    /* the idle completion came when the timer ran: before the next message's events */
    cr_assert_eq(pick(t, "ws_message", 1, m, 4), 3);
    cr_assert_lt(i_of(tc[0], "seq"), i_of(m[2], "seq"));
}

Test(app_obs, h1_idle_turn_completes_when_a_late_message_comes_first)
{
    /* The worker's timer may run after the next message arrived: the result is the same. */
    struct t *t = t_setup(APP_H1, 1000);
    h1_upgrade(t, NULL);
    struct bytes w = {0};
    frame(&w, 0x81, "a", 1, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    later(t, 1500);
    frame(&w, 0x81, "b", 1, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    free(w.p);
    json_t *tc[4];
    cr_assert_eq(pick(t, "ws_turn_completed", 1, tc, 4), 2);
    cr_assert_str_eq(s_of(tc[0], "flush_reason"), "idle");
    cr_assert_eq(i_of(tc[0], "ended_ns"), i_of(tc[0], "started_ns"));
    cr_assert_eq(i_of(tc[1], "started_ns") - i_of(tc[0], "ended_ns"), 1500000000);
}

Test(app_obs, h1_head_deadline_and_turn_deadline_share_the_timer)
{
    struct t *t = t_setup(APP_H1, 1000);
    static const char part[] = "GET / HTTP/1.1\r\nHost: a";
    input(t, SOTH_LEG_CLIENT, part, sizeof(part) - 1);
    uint64_t due = t->now_ns / 1000000u + 10000;
    cr_assert_eq(app_deadline(t->a), due);
    cr_assert_eq(app_timer(t->a, due - 1), APP_AGAIN);
    cr_assert_eq(app_timer(t->a, due), APP_DONE);
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_IDLE_TIMEOUT);
    cr_assert(t->to[SOTH_LEG_CLIENT].len > 12 &&
              memcmp(t->to[SOTH_LEG_CLIENT].p, "HTTP/1.1 408", 12) == 0);
}

Test(app_obs, h1_frames_sent_before_the_101_start_no_head_deadline)
{
    /* A client that sends its first frame right behind the upgrade request: the frame waits
     * in the layer for the 101 and is no request head (found by fuzz_app_h1: the flow used to
     * end with idle_timeout request_header_ms later). */
    struct t *t = t_setup(APP_H1, 1000);
    struct bytes w = {0};
    input(t, SOTH_LEG_CLIENT, ws_request, sizeof(ws_request) - 1);
    later(t, 1);
    frame(&w, 0x81, "eager", 5, true);
    input(t, SOTH_LEG_CLIENT, w.p, w.len);
    w.len = 0;
    later(t, 50);
    static const char r101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\n\r\n";
    input(t, SOTH_LEG_UPSTREAM, r101, sizeof(r101) - 1);
    uint64_t turn_due = t->now_ns / 1000000u + 1000;
    cr_assert_eq(app_deadline(t->a), turn_due, "only the turn's idle deadline");
    later(t, 20000);
    cr_assert_eq(app_timer(t->a, t->now_ns / 1000000u), APP_AGAIN);
    cr_assert_eq(app_deadline(t->a), 0);
    frame(&w, 0x81, "later", 5, false);
    relay(t, SOTH_LEG_UPSTREAM, &w);
    free(w.p);
    json_t *m[4];
    cr_assert_eq(pick(t, "ws_message", 1, m, 4), 2);
    expect_msg(m[0], "client_to_server", 1, "eager", 5);
}

Test(app_obs, h1_permessage_deflate_inflated_per_direction_rules)
{
    /* Client: context takeover, 10-bit window; server: no context takeover. */
    struct t *t = t_setup(APP_H1, 30000);
    h1_upgrade(t, "permessage-deflate; server_no_context_takeover; client_max_window_bits=10");
    struct deflater dc, ds;
    deflater_init(&dc, 10, true);
    deflater_init(&ds, 15, false);
    const char *c[] = {"the same words again and again and again",
                       "the same words again and again, and once more",
                       "{\"role\": \"user\", \"content\": \"the same words again\"}"};
    const char *s[] = {"an answer, an answer, an answer", "an answer, an answer again"};
    struct bytes w = {0};
    size_t wire_len[3];
    for (int i = 0; i < 3; i++) {
        wire_len[i] = deflate_frame(&dc, &w, c[i], strlen(c[i]), true);
        relay(t, SOTH_LEG_CLIENT, &w);
        if (i < 2) {
            deflate_frame(&ds, &w, s[i], strlen(s[i]), false);
            relay(t, SOTH_LEG_UPSTREAM, &w);
        }
    }
    cr_assert_lt(wire_len[1], strlen(c[1]) / 2, "message 2 refers back into message 1");
    /* an uncompressed message in between is reported as it is */
    frame(&w, 0x81, "plain", 5, true);
    relay(t, SOTH_LEG_CLIENT, &w);
    free(w.p);
    deflateEnd(&dc.zs);
    deflateEnd(&ds.zs);

    json_t *m[8], *pp[4];
    cr_assert_eq(pick(t, "ws_message", 1, m, 8), 6);
    expect_msg(m[0], "client_to_server", 1, c[0], strlen(c[0]));
    expect_msg(m[1], "server_to_client", 1, s[0], strlen(s[0]));
    expect_msg(m[2], "client_to_server", 1, c[1], strlen(c[1]));
    expect_msg(m[3], "server_to_client", 1, s[1], strlen(s[1]));
    expect_msg(m[4], "client_to_server", 1, c[2], strlen(c[2]));
    expect_msg(m[5], "client_to_server", 1, "plain", 5);
    /* the inflated JSON message is parsed like an uncompressed one */
    cr_assert_eq(pick(t, "payload_parsed", 1, pp, 4), 1);
    cr_assert_str_eq(s_of(json_object_get(pp[0], "value"), "role"), "user");
    json_t *tc[4];
    pick(t, "ws_turn_completed", 1, tc, 4);
    cr_assert_eq(i_of(tc[0], "client_bytes"), (long long)strlen(c[0]), "inflated bytes");
}

Test(app_obs, h1_permessage_deflate_over_the_bound)
{
    /* A client message inflating past 8 MiB is cut there; with context takeover the
     * direction's window is lost, so its next compressed message is shown as sent. The
     * server side has no context takeover: its next message after a cut one inflates. */
    struct t *t = t_setup(APP_H1, 30000);
    h1_upgrade(t, "permessage-deflate; server_no_context_takeover");
    size_t big = 9u << 20;
    char *zeros = calloc(1, big);
    struct deflater dc, ds;
    deflater_init(&dc, 15, true);
    deflater_init(&ds, 15, false);
    struct bytes w = {0};
    size_t bomb = deflate_frame(&dc, &w, zeros, big, true);
    cr_assert_lt(bomb, 16384);
    relay(t, SOTH_LEG_CLIENT, &w);
    size_t after = deflate_frame(&dc, &w, "after", 5, true);
    /* what the wire carries: the compressed payload */
    unsigned char wire_payload[64];
    cr_assert_lt(after, sizeof(wire_payload));
    for (size_t i = 0; i < after; i++)
        wire_payload[i] = (unsigned char)w.p[w.len - after + i] ^
                          (unsigned char[]) { 0xa1, 0xb2, 0xc3, 0xd4 }[i & 3];
    relay(t, SOTH_LEG_CLIENT, &w);
    deflate_frame(&ds, &w, zeros, big, false);
    relay(t, SOTH_LEG_UPSTREAM, &w);
    deflate_frame(&ds, &w, "fine", 4, false);
    relay(t, SOTH_LEG_UPSTREAM, &w);
    free(w.p);
    deflateEnd(&dc.zs);
    deflateEnd(&ds.zs);

    json_t *m[8];
    cr_assert_eq(pick(t, "ws_message", 1, m, 8), 4);
    cr_assert_eq(i_of(m[0], "len"), 8 << 20);
    cr_assert(json_is_true(json_object_get(m[0], "truncated")));
    expect_b64(m[0], zeros, CAP);
    /* window lost: reported as on the wire */
    cr_assert_eq(i_of(m[1], "len"), (long long)after);
    expect_b64(m[1], wire_payload, after);
    cr_assert_eq(i_of(m[2], "len"), 8 << 20);
    expect_msg(m[3], "server_to_client", 1, "fine", 4);
    free(zeros);
}

static void sse_response(struct t *t, unsigned id)
{
    char req[128];
    int n = snprintf(req, sizeof(req), "GET /events/%u HTTP/1.1\r\nHost: origin.test\r\n\r\n", id);
    input(t, SOTH_LEG_CLIENT, req, (size_t)n);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8"
                               "\r\nTransfer-Encoding: chunked\r\n\r\n";
    input(t, SOTH_LEG_UPSTREAM, head, sizeof(head) - 1);
    char ev[128], chunk[160];
    int en = snprintf(ev, sizeof(ev), "id: %u\ndata: {\"n\": %u}\n\n", id, id);
    int cn = snprintf(chunk, sizeof(chunk), "%x\r\n%s\r\n", en, ev);
    input(t, SOTH_LEG_UPSTREAM, chunk, (size_t)cn);
    static const char unfinished[] = "9\r\ndata: cut\r\n0\r\n\r\n";
    input(t, SOTH_LEG_UPSTREAM, unfinished, sizeof(unfinished) - 1);
}

Test(app_obs, h1_sse_each_response_observed)
{
    struct t *t = t_setup(APP_H1, 30000);
    for (unsigned id = 1; id <= 3; id++)
        sse_response(t, id);
    json_t *e[8], *pp[8];
    cr_assert_eq(pick(t, "sse_event", 0, e, 8), 3, "the unfinished events are discarded");
    for (unsigned i = 0; i < 3; i++) {
        cr_assert_eq(i_of(e[i], "stream_id"), i + 1);
        cr_assert_str_eq(s_of(e[i], "event"), "message");
        char want[32];
        snprintf(want, sizeof(want), "{\"n\": %u}", i + 1);
        cr_assert_str_eq(s_of(e[i], "data"), want);
    }
    cr_assert_eq(pick(t, "payload_parsed", 0, pp, 8), 3);
    json_t *last = json_array_get(t_events(t), json_array_size(t_events(t)) - 1);
    cr_assert_str_eq(s_of(last, "protocol"), "sse");
}

Test(app_obs, h1_compressed_event_stream_not_parsed)
{
    struct t *t = t_setup(APP_H1, 30000);
    static const char req[] = "GET /e HTTP/1.1\r\nHost: origin.test\r\n\r\n";
    input(t, SOTH_LEG_CLIENT, req, sizeof(req) - 1);
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Content-Encoding: gzip\r\nContent-Length: 14\r\n\r\n"
                               "data: x\n\n12345";
    input(t, SOTH_LEG_UPSTREAM, resp, sizeof(resp) - 1);
    json_t *e[2];
    cr_assert_eq(pick(t, "sse_event", 0, e, 2), 0);
}

/* ---- HTTP/2: an nghttp2 user agent and origin around the layer */

static struct ustream *us_of(struct t *t, int32_t sid)
{
    for (size_t i = 0; i < t->nus; i++)
        if (t->us[i].sid == sid)
            return &t->us[i];
    return NULL;
}

static struct ostream *os_of(struct t *t, int32_t sid)
{
    for (size_t i = 0; i < t->nos; i++)
        if (t->os[i].sid == sid)
            return &t->os[i];
    return NULL;
}

static ssize_t read_bytes(struct bytes *b, size_t *rd, bool eof, uint8_t *buf, size_t len,
                          uint32_t *flags)
{
    size_t n = b->len - *rd;
    if (n == 0 && !eof)
        return NGHTTP2_ERR_DEFERRED;
    if (n > len)
        n = len;
    memcpy(buf, b->p + *rd, n);
    *rd += n;
    if (eof && *rd == b->len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static ssize_t ua_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)s, (void)sid, (void)ud;
    struct ustream *u = src->ptr;
    return read_bytes(&u->out, &u->rd, u->eof, buf, len, flags);
}

static ssize_t or_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)s, (void)sid, (void)ud;
    struct ostream *o = src->ptr;
    return read_bytes(&o->out, &o->rd, o->eof, buf, len, flags);
}

static int ua_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)s, (void)flags;
    struct ustream *u = us_of(ud, f->hd.stream_id);
    if (u != NULL && namelen == 7 && memcmp(name, ":status", 7) == 0)
        u->status = atoi((const char *)value); /* nghttp2 NUL-terminates values */
    (void)valuelen;
    return 0;
}

static int ua_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *p, size_t n,
                   void *ud)
{
    (void)s, (void)flags;
    struct ustream *u = us_of(ud, sid);
    if (u != NULL)
        b_add(&u->in, p, n);
    return 0;
}

static int or_begin(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    struct t *t = ud;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        cr_assert_lt(t->nos, MAXS);
        t->os[t->nos++].sid = f->hd.stream_id;
    }
    return 0;
}

static int or_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *p, size_t n,
                   void *ud)
{
    (void)s, (void)flags;
    struct ostream *o = os_of(ud, sid);
    if (o != NULL)
        b_add(&o->in, p, n);
    return 0;
}

/* The origin answers a request head at once: 200, and an event stream or a WebSocket. */
static int or_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct t *t = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct ostream *o = os_of(t, f->hd.stream_id);
    nghttp2_nv sse[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                        {(uint8_t *)"content-type", (uint8_t *)"text/event-stream", 12, 17, 0}};
    const char *ext = t->origin_ext != NULL ? t->origin_ext : "";
    nghttp2_nv ws[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
        {(uint8_t *)"sec-websocket-extensions", (uint8_t *)(uintptr_t)ext, 24, strlen(ext), 0}};
    nghttp2_data_provider dp = {.source.ptr = o, .read_callback = or_read};
    o->sse = t->origin_sse;
    cr_assert_eq(nghttp2_submit_response(s, f->hd.stream_id, o->sse ? sse : ws,
                                         o->sse ? 2 : (t->origin_ext != NULL ? 2 : 1), &dp),
                 0);
    return 0;
}

/* Move bytes between the sessions and the layer until nothing moves. */
static void pump(struct t *t)
{
    for (int round = 0; round < 10000; round++) {
        bool moved = false;
        const uint8_t *p;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(t->ua, &p)) > 0) {
            input(t, SOTH_LEG_CLIENT, p, (size_t)n);
            moved = true;
        }
        cr_assert_geq(n, 0);
        while ((n = nghttp2_session_mem_send(t->origin, &p)) > 0) {
            input(t, SOTH_LEG_UPSTREAM, p, (size_t)n);
            moved = true;
        }
        cr_assert_geq(n, 0);
        for (unsigned side = 0; side < 2; side++) {
            struct bytes *b = &t->to[side];
            if (t->sent[side] < b->len) {
                nghttp2_session *s = side == SOTH_LEG_CLIENT ? t->ua : t->origin;
                ssize_t k = nghttp2_session_mem_recv(s, (const uint8_t *)b->p + t->sent[side],
                                                     b->len - t->sent[side]);
                cr_assert_eq(k, (ssize_t)(b->len - t->sent[side]), "mem_recv: %zd", k);
                t->sent[side] = b->len;
                moved = true;
            }
        }
        if (!moved)
            return;
    }
    cr_assert_fail("pump did not settle");
}

static void h2_setup(struct t *t)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, ua_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, ua_data);
    cr_assert_eq(nghttp2_session_client_new(&t->ua, cb, t), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, or_begin);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, or_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, or_frame_recv);
    cr_assert_eq(nghttp2_session_server_new(&t->origin, cb, t), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry ua_iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    cr_assert_eq(nghttp2_submit_settings(t->ua, NGHTTP2_FLAG_NONE, ua_iv, 1), 0);
    nghttp2_settings_entry or_iv[] = {{NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
                                      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    cr_assert_eq(nghttp2_submit_settings(t->origin, NGHTTP2_FLAG_NONE, or_iv, 2), 0);
    pump(t);
    cr_assert_eq(
        nghttp2_session_get_remote_settings(t->ua, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL), 1,
        "the layer offers extended CONNECT once the origin does");
}

/* Open a stream: an extended CONNECT for websocket, or a GET. */
static struct ustream *h2_open(struct t *t, bool websocket)
{
    cr_assert_lt(t->nus, MAXS);
    struct ustream *u = &t->us[t->nus++];
    nghttp2_nv ws[] = {{(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, 0},
                       {(uint8_t *)":protocol", (uint8_t *)"websocket", 9, 9, 0},
                       {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
                       {(uint8_t *)":path", (uint8_t *)"/chat", 5, 5, 0},
                       {(uint8_t *)":authority", (uint8_t *)"origin.test", 10, 11, 0}};
    nghttp2_nv get[] = {{(uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0},
                        {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
                        {(uint8_t *)":path", (uint8_t *)"/events", 5, 7, 0},
                        {(uint8_t *)":authority", (uint8_t *)"origin.test", 10, 11, 0}};
    nghttp2_data_provider dp = {.source.ptr = u, .read_callback = ua_read};
    u->sid = nghttp2_submit_request(t->ua, NULL, websocket ? ws : get, websocket ? 5 : 4,
                                    websocket ? &dp : NULL, NULL);
    cr_assert_gt(u->sid, 0);
    return u;
}

static void ua_send(struct t *t, struct ustream *u, const struct bytes *b)
{
    b_add(&u->out, b->p, b->len);
    nghttp2_session_resume_data(t->ua, u->sid);
}

static void or_send(struct t *t, struct ostream *o, const void *p, size_t n, bool eof)
{
    b_add(&o->out, p, n);
    o->eof = eof;
    nghttp2_session_resume_data(t->origin, o->sid);
}

Test(app_obs, h2_six_concurrent_websockets_all_observed)
{
    struct t *t = t_setup(APP_H2, 30000);
    h2_setup(t);
    struct ustream *u[6];
    for (int i = 0; i < 6; i++)
        u[i] = h2_open(t, true);
    pump(t);
    cr_assert_eq(t->nos, 6);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(u[i]->status, 200);
    /* all six open at once: a message each way on every stream */
    struct bytes w = {0};
    char msg[32];
    for (int i = 0; i < 6; i++) {
        int n = snprintf(msg, sizeof(msg), "hello %d", u[i]->sid);
        frame(&w, 0x81, msg, (size_t)n, true);
        ua_send(t, u[i], &w);
        w.len = 0;
    }
    pump(t);
    for (int i = 0; i < 6; i++) {
        struct ostream *o = os_of(t, u[i]->sid);
        cr_assert_not_null(o);
        cr_assert_gt(o->in.len, 0);
        frame(&w, 0x81, "answer", 6, false);
        or_send(t, o, w.p, w.len, false);
        w.len = 0;
    }
    pump(t);
    free(w.p);
    for (int i = 0; i < 6; i++) {
        json_t *m[4], *tc[2];
        uint32_t sid = (uint32_t)u[i]->sid;
        cr_assert_eq(pick(t, "ws_message", sid, m, 4), 2, "stream %u observed", sid);
        int n = snprintf(msg, sizeof(msg), "hello %d", u[i]->sid);
        expect_msg(m[0], "client_to_server", 1, msg, (size_t)n);
        expect_msg(m[1], "server_to_client", 1, "answer", 6);
        cr_assert_eq(pick(t, "ws_turn_completed", sid, tc, 2), 1);
        cr_assert_str_eq(s_of(tc[0], "flush_reason"), "close"); /* the flow's end */
    }
}

Test(app_obs, h2_six_concurrent_event_streams_all_observed)
{
    struct t *t = t_setup(APP_H2, 30000);
    t->origin_sse = true;
    h2_setup(t);
    struct ustream *u[6];
    for (int i = 0; i < 6; i++)
        u[i] = h2_open(t, false);
    pump(t);
    cr_assert_eq(t->nos, 6);
    char ev[64];
    for (int round = 0; round < 2; round++) {
        for (int i = 5; i >= 0; i--) { /* interleaved, in reverse order */
            int n = snprintf(ev, sizeof(ev), "event: tick\ndata: %d.%d\n\n", u[i]->sid, round);
            or_send(t, os_of(t, u[i]->sid), ev, (size_t)n, round == 1);
        }
        pump(t);
    }
    for (int i = 0; i < 6; i++) {
        json_t *e[4];
        uint32_t sid = (uint32_t)u[i]->sid;
        cr_assert_eq(pick(t, "sse_event", sid, e, 4), 2, "stream %u observed", sid);
        for (int r = 0; r < 2; r++) {
            snprintf(ev, sizeof(ev), "%d.%d", u[i]->sid, r);
            cr_assert_str_eq(s_of(e[r], "event"), "tick");
            cr_assert_str_eq(s_of(e[r], "data"), ev);
        }
    }
}

Test(app_obs, h2_websocket_idle_timers_per_stream)
{
    struct t *t = t_setup(APP_H2, 500);
    h2_setup(t);
    struct ustream *a = h2_open(t, true), *b = h2_open(t, true);
    pump(t);
    struct bytes w = {0};
    frame(&w, 0x81, "to a", 4, true);
    ua_send(t, a, &w);
    w.len = 0;
    pump(t);
    uint64_t due_a = t->now_ns / 1000000u + 500;
    later(t, 100);
    frame(&w, 0x81, "to b", 4, true);
    ua_send(t, b, &w);
    w.len = 0;
    pump(t);
    cr_assert_eq(app_deadline(t->a), due_a, "the earliest turn's deadline");
    cr_assert_eq(app_timer(t->a, due_a), APP_AGAIN);
    cr_assert_eq(app_deadline(t->a), due_a + 100, "then the other one's");
    cr_assert_eq(app_timer(t->a, due_a + 100), APP_AGAIN);
    cr_assert_eq(app_deadline(t->a), 0);
    free(w.p);
    json_t *tc[2];
    cr_assert_eq(pick(t, "ws_turn_completed", (uint32_t)a->sid, tc, 2), 1);
    cr_assert_str_eq(s_of(tc[0], "flush_reason"), "idle");
    cr_assert_eq(pick(t, "ws_turn_completed", (uint32_t)b->sid, tc, 2), 1);
    cr_assert_str_eq(s_of(tc[0], "flush_reason"), "idle");
}

Test(app_obs, h2_websocket_permessage_deflate)
{
    struct t *t = t_setup(APP_H2, 30000);
    t->origin_ext = "permessage-deflate";
    h2_setup(t);
    struct ustream *u = h2_open(t, true);
    pump(t);
    struct deflater dc, ds;
    deflater_init(&dc, 15, true);
    deflater_init(&ds, 15, true);
    const char *c[] = {"a question about deflate and HTTP/2", "a question about deflate again"};
    struct bytes w = {0};
    for (int i = 0; i < 2; i++) {
        deflate_frame(&dc, &w, c[i], strlen(c[i]), true);
        ua_send(t, u, &w);
        w.len = 0;
        pump(t);
        deflate_frame(&ds, &w, c[i], strlen(c[i]), false);
        or_send(t, os_of(t, u->sid), w.p, w.len, false);
        w.len = 0;
        pump(t);
    }
    cr_assert_eq(u->in.len, os_of(t, u->sid)->out.len, "relayed unchanged");
    cr_assert_eq(memcmp(u->in.p, os_of(t, u->sid)->out.p, u->in.len), 0);
    free(w.p);
    deflateEnd(&dc.zs);
    deflateEnd(&ds.zs);
    json_t *m[4];
    cr_assert_eq(pick(t, "ws_message", (uint32_t)u->sid, m, 4), 4);
    for (int i = 0; i < 2; i++) {
        expect_msg(m[2 * i], "client_to_server", 1, c[i], strlen(c[i]));
        expect_msg(m[2 * i + 1], "server_to_client", 1, c[i], strlen(c[i]));
    }
}

/* ---- HTTP/1.1: upstream failures before the response head (docs/answers.md) */

static const char get_req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

static bool client_got(struct t *t, const char *status_line)
{
    size_t n = strlen(status_line);
    return t->to[SOTH_LEG_CLIENT].len >= n && memcmp(t->to[SOTH_LEG_CLIENT].p, status_line, n) == 0;
}

static void expect_completed(struct t *t, const char *outcome, const char *reason)
{
    json_t *x[2];
    cr_assert_eq(pick(t, "exchange_completed", 1, x, 2), 1);
    cr_assert_str_eq(s_of(x[0], "outcome"), outcome);
    json_t *r = json_object_get(x[0], "reason");
    if (reason == NULL)
        cr_assert_null(r, "no reason expected");
    else
        cr_assert_str_eq(json_string_value(r), reason);
}

Test(app_obs, h1_response_head_late_gets_504)
{
    setup_response_header_ms = 500;
    struct t *t = t_setup(APP_H1, 30000);
    setup_response_header_ms = 0;
    cr_assert_eq(app_deadline(t->a), 0, "no request, no timer");
    input(t, SOTH_LEG_CLIENT, get_req, sizeof(get_req) - 1);
    uint64_t due = t->now_ns / 1000000u + 500;
    cr_assert_eq(app_deadline(t->a), due, "from the end of the request");
    cr_assert_eq(app_timer(t->a, due - 1), APP_AGAIN);
    cr_assert(!client_got(t, "HTTP/1.1 504"));
    cr_assert_eq(app_timer(t->a, due), APP_DONE);
    cr_assert(client_got(t, "HTTP/1.1 504 Gateway Timeout\r\n"));
    cr_assert_eq(app_close_reason(t->a), SOTH_CLOSE_IDLE_TIMEOUT);
    expect_completed(t, "timeout", "upstream_timeout");
}

Test(app_obs, h1_response_head_in_time_stops_the_timer)
{
    setup_response_header_ms = 500;
    struct t *t = t_setup(APP_H1, 30000);
    setup_response_header_ms = 0;
    input(t, SOTH_LEG_CLIENT, get_req, sizeof(get_req) - 1);
    later(t, 499);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab";
    input(t, SOTH_LEG_UPSTREAM, head, sizeof(head) - 1);
    cr_assert_eq(app_deadline(t->a), 0, "a slow body is idle_ms's business");
    input(t, SOTH_LEG_UPSTREAM, "cd", 2);
    expect_completed(t, "complete", NULL);
}

Test(app_obs, h1_upstream_eof_and_reset_before_head_get_502)
{
    for (int reset = 0; reset < 2; reset++) {
        struct t *t = t_setup(APP_H1, 30000);
        /* a request whose body is still uploading counts too */
        static const char post[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab";
        input(t, SOTH_LEG_CLIENT, post, sizeof(post) - 1);
        cr_assert_eq(app_eof(t->a, SOTH_LEG_UPSTREAM, reset), APP_DONE);
        cr_assert(client_got(t, "HTTP/1.1 502 Bad Gateway\r\n"));
        cr_assert_eq(app_close_reason(t->a), reset ? SOTH_CLOSE_RELAY_ERROR : SOTH_CLOSE_RELAY_EOF);
        expect_completed(t, "upstream_aborted", reset ? "upstream_reset" : "upstream_eof");
        t_teardown();
    }
}

Test(app_obs, h1_upstream_eof_after_head_truncates_without_answer)
{
    struct t *t = t_setup(APP_H1, 30000);
    input(t, SOTH_LEG_CLIENT, get_req, sizeof(get_req) - 1);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
    input(t, SOTH_LEG_UPSTREAM, head, sizeof(head) - 1);
    cr_assert_eq(app_eof(t->a, SOTH_LEG_UPSTREAM, false), APP_DONE);
    cr_assert(client_got(t, "HTTP/1.1 200 OK\r\n"));
    const struct bytes *o = &t->to[SOTH_LEG_CLIENT];
    for (size_t i = 0; i + 12 <= o->len; i++)
        cr_assert(memcmp(o->p + i, "HTTP/1.1 502", 12) != 0, "no answer after the head");
    expect_completed(t, "upstream_aborted", "upstream_eof");
}

Test(app_obs, h1_no_request_in_flight_upstream_eof_is_quiet)
{
    struct t *t = t_setup(APP_H1, 30000);
    cr_assert_eq(app_eof(t->a, SOTH_LEG_UPSTREAM, false), APP_DONE);
    cr_assert_eq(t->to[SOTH_LEG_CLIENT].len, 0, "nothing to answer");
}
