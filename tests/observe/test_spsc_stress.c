/* SPSC rings under concurrency (run under TSan as well: ctest label "tsan"). */
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

/* ---- producers x telemetry: nothing lost that was not counted ----------------------------- */

#define N_PROD 4
#ifndef STRESS_EVENTS
#define STRESS_EVENTS 50000
#endif

struct prod_arg {
    struct soth_observe *o;
    unsigned idx;
};

static void *producer(void *arg)
{
    struct prod_arg *a = arg;
    struct soth_ev_producer *p = soth_observe_producer(a->o, a->idx);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 1000 + a->idx, a->idx, NULL, 0);
    char pad[300];
    memset(pad, 'p', sizeof(pad));
    for (unsigned i = 0; i < STRESS_EVENTS; i++) {
        /* Sizes vary so records wrap the rings at every offset. */
        soth_ev_connect_parse_failed(&f, S("n"), soth_iov(pad, i % sizeof(pad)));
        if (i % 64 == 0)
            soth_ev_flush(p);
    }
    soth_ev_stream_closed(&f, SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    return NULL;
}

Test(observe_tsan, producers_keep_order_and_count_drops, .timeout = 300)
{
    struct soth_config *cfg = test_cfg(256);
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, N_PROD, err, sizeof(err));
    cr_assert_not_null(o, "%s", err);
    cr_assert_eq(soth_observe_start(o), 0);
    pthread_t t[N_PROD];
    struct prod_arg args[N_PROD];
    for (unsigned i = 0; i < N_PROD; i++) {
        args[i] = (struct prod_arg){o, i};
        pthread_create(&t[i], NULL, producer, &args[i]);
    }
    for (unsigned i = 0; i < N_PROD; i++)
        pthread_join(t[i], NULL);
    soth_observe_stop(o);
    uint64_t dropped = 0;
    for (unsigned i = 0; i < N_PROD; i++)
        dropped += atomic_load(&soth_observe_metrics(o, i)->events_dropped);
    struct lines l = read_all(cfg->events.ring_path);
    soth_observe_free(o);
    cr_expect_eq(l.overruns, 0);
    long long next_seq[N_PROD] = {0};
    json_int_t seen_w[N_PROD] = {0};
    size_t seen = 0, closed = 0;
    json_int_t last_gseq = 0;
    for (size_t i = 0; i < json_array_size(l.arr); i++) {
        json_t *e = json_array_get(l.arr, i);
        unsigned w = (unsigned)json_integer_value(json_object_get(e, "worker"));
        json_int_t seq = json_integer_value(json_object_get(e, "seq"));
        json_int_t gseq = json_integer_value(json_object_get(e, "gseq"));
        cr_assert_eq(gseq, last_gseq + 1, "gseq must be dense in the file");
        last_gseq = gseq;
        cr_assert_geq(seq, next_seq[w], "per-producer order broken");
        next_seq[w] = seq + 1;
        if (strcmp(json_string_value(json_object_get(e, "type")), "stream_closed") == 0) {
            closed++;
            /* The flow's stream_closed reports exactly the seq gaps it had. */
            cr_expect_eq(json_integer_value(json_object_get(e, "events_dropped")), seq - seen_w[w]);
        }
        seen_w[w]++;
        seen++;
    }
    cr_expect_eq(closed, N_PROD, "stream_closed is never dropped");
    cr_expect_eq(seen + dropped, (size_t)N_PROD * (STRESS_EVENTS + 1), "seen %zu + dropped %llu",
                 seen, (unsigned long long)dropped);
    json_decref(l.arr);
    free(l.raw);
    free_cfg(cfg);
}
