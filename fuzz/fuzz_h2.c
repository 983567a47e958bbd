/*
 * libFuzzer: the HTTP/2 relay (proto/h2.c) fed arbitrary bytes on both legs.
 *
 * Input: one flags byte, then records.
 *   flags bit 0  prepend a valid client preface + SETTINGS + three requests on the client leg
 *   flags bit 1  prepend a valid origin SETTINGS + SETTINGS ACK on the upstream leg
 *   flags bit 2  small limits (16 KiB header lists, 10 streams, 64 KiB windows)
 *   record: op byte: bit 0 side (0 client, 1 upstream), bits 1-2 op:
 *     0 feed: 2 length bytes (big endian), then that many bytes (cut at the end of input)
 *     1 flush only; with bit 3: soth_h2_relay_release first (an idle relay gives back
 *       memory; a busy one must refuse); with bit 4: on the client side soth_h2_relay_park
 *       (an idle relay ends its upstream session; a busy one must refuse), on the upstream
 *       side soth_h2_relay_unpark, the new connection up when bit 5 is set, else failed
 *     2 transport EOF on side (bit 3: reset)
 *     3 toggle hold on side; with bit 3: graceful shutdown instead
 *   every record is followed by a flush.
 * At the end both transports close. Checks, beyond "no crash, no leak, no UB":
 *  - per stream, callbacks come in the documented order and on_stream_end comes exactly
 *    once, with byte counts equal to the on_data sums;
 *  - out chunks are 1..16 KiB; buffered bytes never exceed the stated bound;
 *  - relay memory (nghttp2 included) stays under a fixed ceiling;
 *  - after both EOFs no stream slot and no buffered byte is left.
 * Seeds: fuzz/corpus/h2/ (recorded from tests/proto/test_h2.c with SOTH_H2_CORPUS_DIR).
 */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/h2.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_h2.c:%d: CHECK(%s) failed\n", __LINE__, #c);                     \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define MEM_CEILING (24u << 20) /* well above the documented bound for the settings used */
#define NREC        4096

struct mem {
    size_t cur, peak;
};

struct hdr {
    size_t n;
    size_t pad;
};

static void *m_malloc(size_t n, void *ctx)
{
    struct mem *m = ctx;
    struct hdr *h = malloc(sizeof(*h) + n);
    if (h == NULL)
        return NULL;
    h->n = n;
    m->cur += n;
    if (m->cur > m->peak)
        m->peak = m->cur;
    CHECK(m->cur <= MEM_CEILING);
    return h + 1;
}

static void m_free(void *p, void *ctx)
{
    struct mem *m = ctx;
    if (p == NULL)
        return;
    struct hdr *h = (struct hdr *)p - 1;
    m->cur -= h->n;
    free(h);
}

static void *m_calloc(size_t a, size_t b, void *ctx)
{
    void *p = m_malloc(a * b, ctx);
    if (p != NULL)
        memset(p, 0, a * b);
    return p;
}

static void *m_realloc(void *p, size_t n, void *ctx)
{
    if (p == NULL)
        return m_malloc(n, ctx);
    struct hdr *h = (struct hdr *)p - 1;
    void *q = m_malloc(n, ctx);
    if (q == NULL)
        return NULL;
    memcpy(q, p, h->n < n ? h->n : n);
    m_free(p, ctx);
    return q;
}

struct srec {
    int32_t cid;   /* 0: free */
    uint8_t state; /* 1 open, 2 ended */
    bool head, resp_head;
    uint64_t bytes[2];
};

static struct {
    struct srec rec[NREC];
    bool full; /* the table overflowed: records may be missing */
    struct soth_h2_relay *r;
} F;

static struct srec *rec_get(int32_t cid, bool create)
{
    CHECK(cid > 0 && (cid & 1));
    size_t i = ((size_t)cid * 2654435761u) % NREC;
    for (size_t k = 0; k < NREC; k++, i = (i + 1) % NREC) {
        if (F.rec[i].cid == cid)
            return &F.rec[i];
        if (F.rec[i].cid == 0) {
            if (!create)
                return NULL;
            F.rec[i].cid = cid;
            F.rec[i].state = 1;
            return &F.rec[i];
        }
    }
    F.full = true;
    return NULL;
}

static int cb_out(void *ctx, enum soth_leg to, const char *p, size_t n)
{
    (void)ctx;
    CHECK(to == SOTH_LEG_CLIENT || to == SOTH_LEG_UPSTREAM);
    CHECK(p != NULL && n > 0 && n <= 16384);
    /* touch every byte so ASan sees a bad pointer */
    volatile char sink = 0;
    for (size_t i = 0; i < n; i++)
        sink ^= p[i];
    (void)sink;
    return 0;
}

static void cb_req(void *ctx, int32_t sid, const struct soth_h2_request *q)
{
    (void)ctx;
    struct srec *s = rec_get(sid, true);
    CHECK(q->n_headers == 0 || q->headers != NULL);
    if (s == NULL)
        return;
    CHECK(s->state == 1 && !s->head);
    s->head = true;
}

static void cb_resp(void *ctx, int32_t sid, const struct soth_h2_response *p)
{
    (void)ctx;
    CHECK(p->status >= 200 && p->status <= 999);
    struct srec *s = rec_get(sid, false);
    CHECK(s != NULL || F.full);
    if (s == NULL)
        return;
    CHECK(s->state == 1 && s->head && !s->resp_head);
    s->resp_head = true;
}

static void cb_data(void *ctx, enum soth_leg dir, int32_t sid, const char *p, size_t n)
{
    (void)ctx;
    CHECK(n > 0 && p != NULL);
    struct srec *s = rec_get(sid, false);
    CHECK(s != NULL || F.full);
    if (s == NULL)
        return;
    CHECK(s->state == 1 && s->head);
    if (dir == SOTH_LEG_UPSTREAM)
        CHECK(s->resp_head);
    s->bytes[dir] += n;
}

static void cb_trailers(void *ctx, enum soth_leg dir, int32_t sid, const struct soth_header *h,
                        size_t n)
{
    (void)ctx;
    (void)h;
    (void)n;
    struct srec *s = rec_get(sid, false);
    if (s == NULL)
        return;
    CHECK(s->state == 1 && s->head);
    if (dir == SOTH_LEG_UPSTREAM)
        CHECK(s->resp_head);
}

static void cb_end(void *ctx, int32_t sid, const struct soth_h2_stream_end *e)
{
    (void)ctx;
    CHECK((unsigned)e->outcome < SOTH_H2_OUTCOME_COUNT && e->detail != NULL);
    struct srec *s = rec_get(sid, true);
    if (s == NULL)
        return;
    CHECK(s->state == 1);
    s->state = 2;
    CHECK(e->request_bytes == s->bytes[SOTH_LEG_CLIENT]);
    CHECK(e->response_bytes == s->bytes[SOTH_LEG_UPSTREAM]);
}

/* A client preface, SETTINGS and three requests (GET; POST with a body; POST with trailers),
 * made once by a real nghttp2 client session. */
static uint8_t ua_blob[4096];
static size_t ua_blob_len;

static ssize_t ua_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    (void)ud;
    size_t n = len < 20 ? len : 20;
    memset(buf, 'b', n);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (src->ptr != NULL) {
        static const nghttp2_nv t[] = {{(uint8_t *)"x-t", (uint8_t *)"1", 3, 1, 0}};
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_submit_trailer(s, sid, t, 1);
    }
    return (ssize_t)n;
}

static void make_ua_blob(void)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session *s;
    CHECK(nghttp2_session_callbacks_new(&cb) == 0);
    CHECK(nghttp2_session_client_new(&s, cb, NULL) == 0);
    nghttp2_session_callbacks_del(cb);
    CHECK(nghttp2_submit_settings(s, 0, NULL, 0) == 0);
#define NV(n_, v_) {(uint8_t *)(n_), (uint8_t *)(v_), sizeof(n_) - 1, sizeof(v_) - 1, 0}
    nghttp2_nv get[] = {NV(":method", "GET"), NV(":scheme", "https"),
                        NV(":authority", "origin.test"), NV(":path", "/"), NV("accept", "*/*")};
    nghttp2_nv post[] = {NV(":method", "POST"), NV(":scheme", "https"),
                         NV(":authority", "origin.test"), NV(":path", "/up"), NV("te", "trailers")};
#undef NV
    nghttp2_data_provider p1 = {.source.ptr = NULL, .read_callback = ua_body};
    nghttp2_data_provider p2 = {.source.ptr = "t", .read_callback = ua_body};
    CHECK(nghttp2_submit_request(s, NULL, get, 5, NULL, NULL) > 0);
    CHECK(nghttp2_submit_request(s, NULL, post, 4, &p1, NULL) > 0);
    CHECK(nghttp2_submit_request(s, NULL, post, 5, &p2, NULL) > 0);
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(s, &p)) > 0) {
        CHECK(ua_blob_len + (size_t)n <= sizeof(ua_blob));
        memcpy(ua_blob + ua_blob_len, p, (size_t)n);
        ua_blob_len += (size_t)n;
    }
    nghttp2_session_del(s);
}

static const uint8_t origin_blob[] = {
    0, 0, 6, NGHTTP2_SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, /* MAX_CONCURRENT 100 */
    0, 0, 0, NGHTTP2_SETTINGS, 1, 0, 0, 0, 0,                     /* ACK */
};

static void feed(enum soth_leg side, const uint8_t *p, size_t n)
{
    ssize_t rc = soth_h2_relay_feed(F.r, side, (const char *)p, n);
    CHECK(rc == (ssize_t)n || rc == SOTH_E_MALFORMED || rc == SOTH_E_CLOSED || rc == SOTH_E_NOMEM);
}

static void check_stats(void)
{
    struct soth_h2_stats st;
    soth_h2_relay_stats(F.r, &st);
    for (int d = 0; d < 2; d++) {
        CHECK(st.buffered[d] <= st.buffer_bound[d]);
        CHECK(st.buffered_peak[d] <= st.buffer_bound[d]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    if (!init) {
        make_ua_blob();
        init = true;
    }
    if (size < 1)
        return 0;
    memset(&F, 0, sizeof(F));
    struct mem m = {0};
    struct soth_h2_mem hook = {&m, m_malloc, m_free, m_calloc, m_realloc, NULL};
    uint8_t flags = data[0];
    struct soth_h2_settings set = {.mem = &hook};
    if (flags & 4) {
        set.max_header_list_size = 16384;
        set.max_concurrent_streams = 10;
        set.initial_window = 65535;
        set.connection_window = 65535;
    } else {
        set.connection_window = 256 * 1024;
    }
    struct soth_h2_cbs cbs = {
        .out = cb_out,
        .on_request_head = cb_req,
        .on_response_head = cb_resp,
        .on_data = cb_data,
        .on_trailers = cb_trailers,
        .on_stream_end = cb_end,
    };
    F.r = soth_h2_relay_new(&cbs, &set);
    CHECK(F.r != NULL);
    bool held[2] = {false, false};
    soth_h2_relay_flush(F.r);
    if (flags & 1)
        feed(SOTH_LEG_CLIENT, ua_blob, ua_blob_len);
    if (flags & 2)
        feed(SOTH_LEG_UPSTREAM, origin_blob, sizeof(origin_blob));
    soth_h2_relay_flush(F.r);

    size_t i = 1;
    while (i < size) {
        uint8_t op = data[i++];
        enum soth_leg side = (op & 1) ? SOTH_LEG_UPSTREAM : SOTH_LEG_CLIENT;
        switch ((op >> 1) & 3) {
        case 0: {
            size_t len = 0;
            if (i + 2 <= size)
                len = ((size_t)data[i] << 8) | data[i + 1];
            i += 2;
            if (i > size)
                i = size;
            if (len > size - i)
                len = size - i;
            if (len > 0) {
                /* an exact-size heap copy so reads past the end are caught */
                uint8_t *copy = malloc(len);
                memcpy(copy, data + i, len);
                feed(side, copy, len);
                free(copy);
            }
            i += len;
            break;
        }
        case 1:
            if (op & 8)
                (void)soth_h2_relay_release(F.r);
            if ((op & 16) && side == SOTH_LEG_CLIENT) {
                struct soth_h2_stats st;
                soth_h2_relay_stats(F.r, &st);
                int rc = soth_h2_relay_park(F.r);
                CHECK(rc == 0 || rc == 1 || rc == SOTH_E_NOMEM);
                CHECK(rc != 1 || st.streams == 0);
                CHECK(rc != 1 || soth_h2_relay_parked(F.r));
            } else if (op & 16) {
                int rc = soth_h2_relay_unpark(F.r, (op & 32) != 0);
                CHECK(rc == 0 || rc == SOTH_E_MALFORMED || rc == SOTH_E_NOMEM);
                CHECK(!soth_h2_relay_parked(F.r) && !soth_h2_relay_waking(F.r));
            }
            break;
        case 2:
            soth_h2_relay_eof(F.r, side, (op & 8) != 0);
            CHECK(!soth_h2_relay_want_read(F.r, side));
            CHECK(soth_h2_relay_feed(F.r, side, "x", 1) == SOTH_E_CLOSED);
            break;
        case 3:
            if (op & 8) {
                soth_h2_relay_shutdown(F.r);
            } else {
                held[side] = !held[side];
                soth_h2_relay_hold(F.r, side, held[side]);
            }
            break;
        }
        soth_h2_relay_flush(F.r);
        check_stats();
    }
    soth_h2_relay_hold(F.r, SOTH_LEG_CLIENT, false);
    soth_h2_relay_hold(F.r, SOTH_LEG_UPSTREAM, false);
    soth_h2_relay_flush(F.r);
    soth_h2_relay_eof(F.r, SOTH_LEG_CLIENT, false);
    soth_h2_relay_eof(F.r, SOTH_LEG_UPSTREAM, true);
    soth_h2_relay_flush(F.r);
    struct soth_h2_stats st;
    soth_h2_relay_stats(F.r, &st);
    CHECK(st.streams == 0);
    CHECK(st.buffered[0] == 0 && st.buffered[1] == 0);
    for (size_t k = 0; k < NREC; k++)
        CHECK(F.rec[k].cid == 0 || F.rec[k].state == 2);
    soth_h2_relay_free(F.r);
    CHECK(m.cur == 0);
    return 0;
}
