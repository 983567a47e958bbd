/*
 * The ring file and its reader: exact overrun accounting when lapped, seeking to the end,
 * reading from the oldest record after wrapping, and corrupted images (never a crash, never
 * invalid JSON).
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "obs_test.h"

#define N_LAP_EVENTS 20000u

static void emit_n(struct soth_ev_producer *p, struct soth_ev_flow *f, unsigned n, unsigned pad)
{
    char buf[512];
    memset(buf, 'x', sizeof(buf));
    for (unsigned i = 0; i < n; i++) {
        soth_ev_connect_parse_failed(f, S("lap"), soth_iov(buf, (i * 7 + pad) % sizeof(buf)));
        if (i % 32 == 0)
            soth_ev_flush(p);
    }
    soth_ev_flush(p);
}

struct check {
    uint64_t first, last, events, overruns, lost;
    bool contiguous;
};

static void check_line(void *ctx, const char *line, size_t len)
{
    struct check *c = ctx;
    json_error_t je;
    json_t *j = json_loadb(line, len, 0, &je);
    cr_assert_not_null(j, "invalid line (%s): %.*s", je.text, (int)len, line);
    cr_assert_eq(line[len - 1], '\n');
    const char *type = json_string_value(json_object_get(j, "type"));
    if (strcmp(type, "ring_overrun") == 0) {
        c->overruns++;
        c->lost += (uint64_t)json_integer_value(json_object_get(j, "lost"));
    } else {
        uint64_t g = (uint64_t)json_integer_value(json_object_get(j, "gseq"));
        if (c->events == 0)
            c->first = g;
        else if (g != c->last + 1)
            c->contiguous = false;
        c->last = g;
        c->events++;
    }
    json_decref(j);
}

Test(ring, lapped_reader_reports_exact_loss)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    char err[256];
    struct soth_ring_reader *stalled = soth_ring_reader_open(e.ring, err, sizeof(err));
    cr_assert_not_null(stalled, "%s", err);
    soth_ring_reader_seek(stalled, true);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 1, 0, NULL, 0);
    emit_n(p, &f, N_LAP_EVENTS, 0); /* about 4 MB through a 1 MB ring */
    soth_observe_stop(o);
    uint64_t dropped = atomic_load(&soth_observe_metrics(o, 0)->events_dropped);
    uint64_t written = N_LAP_EVENTS - dropped;

    /* A reader that started at 0 and never looked: one overrun, then everything still held. */
    struct check c = {.contiguous = true};
    soth_ring_reader_poll(stalled, NULL, check_line, &c);
    cr_expect_eq(c.overruns, 1);
    cr_expect(c.contiguous);
    cr_expect_eq(c.last, written);
    cr_expect_eq(c.lost, c.first - 1, "lost %llu, first gseq %llu", (unsigned long long)c.lost,
                 (unsigned long long)c.first);
    cr_expect_eq(c.lost + c.events, written);
    cr_expect_gt(c.lost, written / 2, "the ring must actually have lapped");
    /* Nothing new: nothing printed, no second overrun. */
    struct check c2 = {.contiguous = true};
    cr_expect_eq(soth_ring_reader_poll(stalled, NULL, check_line, &c2), 0);
    soth_ring_reader_free(stalled);

    /* A new reader from the start: what the ring holds, no overrun (nothing lost to it). */
    struct check c3 = {.contiguous = true};
    struct soth_ring_reader *fresh = soth_ring_reader_open(e.ring, err, sizeof(err));
    cr_assert_not_null(fresh, "%s", err);
    soth_ring_reader_seek(fresh, true);
    soth_ring_reader_poll(fresh, NULL, check_line, &c3);
    soth_ring_reader_free(fresh);
    cr_expect_eq(c3.overruns, 0);
    cr_expect(c3.contiguous);
    cr_expect_eq(c3.first, c.first);
    cr_expect_eq(c3.last, written);
    soth_observe_free(o);
    obs_env_dispose(&e);
}

/** Poll r until `want` event lines arrived (or 10 s passed). */
static void poll_until(struct soth_ring_reader *r, struct check *c, uint64_t want)
{
    for (int i = 0; i < 10000 && c->events < want; i++) {
        soth_ring_reader_poll(r, NULL, check_line, c);
        if (c->events < want)
            usleep(1000);
    }
    cr_assert_eq(c->events, want);
}

Test(ring, seek_to_end_prints_only_new_events)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 1, 0, NULL, 0);
    char err[256];
    struct soth_ring_reader *a = soth_ring_reader_open(e.ring, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    soth_ring_reader_seek(a, true);
    emit_n(p, &f, 10, 0);
    struct check ca = {.contiguous = true};
    poll_until(a, &ca, 10);

    struct soth_ring_reader *b = soth_ring_reader_open(e.ring, err, sizeof(err));
    cr_assert_not_null(b, "%s", err);
    soth_ring_reader_seek(b, false);
    struct check cb = {.contiguous = true};
    cr_expect_eq(soth_ring_reader_poll(b, NULL, check_line, &cb), 0);
    emit_n(p, &f, 10, 0);
    poll_until(b, &cb, 10);
    cr_expect_eq(cb.overruns, 0);
    cr_expect_eq(cb.first, 11);
    cr_expect_eq(cb.last, 20);
    cr_expect(cb.contiguous);
    soth_ring_reader_free(a);
    soth_ring_reader_free(b);
    soth_observe_free(o);
    obs_env_dispose(&e);
}

Test(ring, filters_by_type_and_flow)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f1, f2;
    soth_ev_flow_init(&f1, p, 1, 0, NULL, 0);
    soth_ev_flow_init(&f2, p, 2, 0, NULL, 0);
    soth_ev_connect_received(&f1, S("CONNECT"), S("a:1"));
    soth_ev_connect_received(&f2, S("CONNECT"), S("b:1"));
    soth_ev_stream_closed(&f1, SOTH_CLOSE_CLIENT_EOF, 0, 0);
    soth_ev_stream_closed(&f2, SOTH_CLOSE_CLIENT_EOF, 0, 0);
    soth_ev_flush(p);
    soth_observe_stop(o);
    struct soth_ring_filter by_type = {.type_mask = 1ull << SOTH_EV_STREAM_CLOSED};
    struct text t = ring_text(e.ring, &by_type);
    cr_expect_eq(t.lines, 2);
    cr_expect(strstr(t.p, "connect_received") == NULL);
    free(t.p);
    struct soth_ring_filter by_flow = {.has_flow = true, .flow_id = 2};
    t = ring_text(e.ring, &by_flow);
    cr_expect_eq(t.lines, 2);
    cr_expect(strstr(t.p, "\"flow_id\":1,") == NULL);
    free(t.p);
    struct soth_ring_filter both = {
        .type_mask = 1ull << SOTH_EV_CONNECT_RECEIVED, .has_flow = true, .flow_id = 1};
    t = ring_text(e.ring, &both);
    cr_expect_eq(t.lines, 1);
    cr_expect(strstr(t.p, "\"target\":\"a:1\"") != NULL);
    free(t.p);
    soth_observe_free(o);
    obs_env_dispose(&e);
}

/* ---- corrupted images ----------------------------------------------------------------------- */

static void any_line(void *ctx, const char *line, size_t len)
{
    size_t *n = ctx;
    cr_assert_gt(len, 0);
    cr_assert_eq(line[len - 1], '\n');
    json_error_t je;
    /* Integers as reals: a corrupted u64 may exceed what jansson's json_int_t holds. */
    json_t *j = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    cr_assert_not_null(j, "invalid JSON from a corrupted ring (%s): %.*s", je.text, (int)len, line);
    cr_assert(json_is_object(j));
    json_decref(j);
    (*n)++;
}

Test(ring, rejects_bad_headers)
{
    static uint64_t img[(4096 + 65536) / 8];
    char err[256];
    cr_expect_null(soth_ring_reader_from_memory(img, 100, err, sizeof(err)));
    cr_expect_null(soth_ring_reader_from_memory(img, sizeof(img), err, sizeof(err)));
    cr_expect(strstr(err, "magic") != NULL, "%s", err);
    img[0] = 0x474e495248544f53ull;
    uint32_t v2[2] = {2, 4096};
    memcpy(&img[1], v2, 8);
    img[2] = 65536;
    cr_expect_null(soth_ring_reader_from_memory(img, sizeof(img), err, sizeof(err)));
    cr_expect(strstr(err, "version 2") != NULL, "%s", err);
    uint32_t v1[2] = {1, 4096};
    memcpy(&img[1], v1, 8);
    img[2] = 65535; /* not a power of two */
    cr_expect_null(soth_ring_reader_from_memory(img, sizeof(img), err, sizeof(err)));
    img[2] = 131072; /* larger than the image */
    cr_expect_null(soth_ring_reader_from_memory(img, sizeof(img), err, sizeof(err)));
    img[2] = 65536;
    cr_expect_null(
        soth_ring_reader_from_memory((char *)img + 1, sizeof(img) - 8, err, sizeof(err)));
    struct soth_ring_reader *r = soth_ring_reader_from_memory(img, sizeof(img), err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    /* Positions no writer publishes: bounded, nothing printed, no crash. */
    img[3] = ~0ull; /* write_pos */
    img[4] = 8;     /* oldest */
    size_t n = 0;
    soth_ring_reader_seek(r, true);
    soth_ring_reader_poll(r, NULL, any_line, &n);
    img[3] = 1u << 20;
    img[4] = (1u << 20) - 65536 + 8;
    soth_ring_reader_seek(r, true);
    soth_ring_reader_poll(r, NULL, any_line, &n);
    soth_ring_reader_poll(r, NULL, any_line, &n);
    soth_ring_reader_free(r);
}

Test(ring, flipped_bytes_never_crash_or_print_invalid_json, .timeout = 120)
{
    struct obs_env e;
    obs_env_init(&e, 1);
    struct soth_observe *o = obs_new(&e, 1);
    cr_assert_eq(soth_observe_start(o), 0);
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    flow_v4(&f, p, 5, 0);
    struct soth_header h[] = {{S("a"), S("b")}, {S("c"), S("\xff")}};
    struct soth_iov decs[] = {S("gzip")};
    for (unsigned i = 0; i < 300; i++) {
        soth_ev_request_headers(&f, i, S("GET"), S("https"), S("x"), S("/"), S("2"), h, 2);
        soth_ev_payload_parsed(&f, i, SOTH_LEG_CLIENT, decs, 1, true, S("json"),
                               S("{\"k\":[1,{\"z\":null}]}"), SOTH_IOV_NULL);
        soth_ev_sse_event(&f, i, S("e"), S("i"), 5, S("d"));
    }
    soth_ev_flush(p);
    soth_observe_stop(o);
    int fd = open(e.ring, O_RDONLY);
    cr_assert_geq(fd, 0);
    struct stat st;
    fstat(fd, &st);
    char *orig = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    cr_assert_neq(orig, MAP_FAILED);
    /* Only the used part of the data area matters; keep the copies small. */
    size_t len = 4096 + 256 * 1024;
    char *img = aligned_alloc(4096, len);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    size_t total = 0;
    for (unsigned round = 0; round < 200; round++) {
        memcpy(img, orig, len);
        uint64_t cap = 256 * 1024;
        memcpy(img + 16, &cap, 8); /* pretend the image is the whole ring */
        for (unsigned k = 0; k < 1 + round % 16; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = 4096 + (seed >> 33) % 60000; /* where the records are */
            if (round % 7 == 0)
                at = 24 + (seed >> 20) % 24; /* write_pos / oldest / last_gseq */
            img[at] = (char)(seed >> 13);
        }
        char err[256];
        struct soth_ring_reader *r = soth_ring_reader_from_memory(img, len, err, sizeof(err));
        cr_assert_not_null(r, "%s", err);
        soth_ring_reader_seek(r, true);
        soth_ring_reader_poll(r, NULL, any_line, &total);
        soth_ring_reader_free(r);
    }
    cr_expect_gt(total, 0);
    free(img);
    munmap(orig, (size_t)st.st_size);
    soth_observe_free(o);
    obs_env_dispose(&e);
}
