/*
 * A reader racing the writer across many laps of a small ring file (plain program so that it
 * runs under ThreadSanitizer too; exit 0 = pass). Every printed event is checked against what
 * its producer wrote for that seq (a torn copy mixing two records cannot pass), and each
 * {"type":"ring_overrun","lost":N} must equal the gseq gap that follows it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soth/observe.h"

#define CHECK_NAME "race_tsan"
#include "check.h"

#define EVENTS 120000u

struct race {
    struct soth_observe *o;
    _Atomic int done;
};

/* What the producer writes as `detail` for event i: length and byte both depend on i. */
static size_t detail_len(unsigned i)
{
    return (i * 7u) % 700u;
}

static char detail_byte(unsigned i)
{
    return (char)('a' + i % 26u);
}

static void *writer(void *arg)
{
    struct race *r = arg;
    struct soth_ev_producer *p = soth_observe_producer(r->o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 5, 0, NULL, 0);
    char buf[700];
    for (unsigned i = 0; i < EVENTS; i++) {
        memset(buf, detail_byte(i), detail_len(i));
        soth_ev_connect_parse_failed(&f, soth_iov("lap", 3), soth_iov(buf, detail_len(i)));
        if (i % 16 == 0)
            soth_ev_flush(p);
        if (i % 256 == 0)
            usleep(2000); /* mostly stay under the producer ring: this test is about the file */
    }
    soth_ev_flush(p);
    soth_observe_stop(r->o);
    atomic_store(&r->done, 1);
    return NULL;
}

struct check {
    unsigned long long last_gseq, seen, lost, overruns, pending_lost;
    int have_pending;
    char line[4096];
};

static unsigned long long field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    CHECK(p != NULL, "no %s in %s", key, line);
    return strtoull(p + strlen(key), NULL, 10);
}

static void on_line(void *ctx, const char *text, size_t len)
{
    struct check *c = ctx;
    CHECK(len > 0 && len < sizeof(c->line) && text[len - 1] == '\n', "bad line length %zu", len);
    memcpy(c->line, text, len);
    c->line[len] = '\0';
    const char *line = c->line;
    if (strncmp(line, "{\"type\":\"ring_overrun\",\"lost\":", 30) == 0) {
        CHECK(!c->have_pending, "two overruns in a row: %s", line);
        c->overruns++;
        c->pending_lost = strtoull(line + 30, NULL, 10);
        c->have_pending = 1;
        return;
    }
    unsigned long long g = field(line, "\"gseq\":");
    unsigned seq = (unsigned)field(line, "\"seq\":");
    CHECK(seq < EVENTS, "seq %u", seq);
    /* The record's own content must be the one its producer wrote for this seq. */
    const char *d = strstr(line, "\"detail\":\"");
    CHECK(d != NULL, "no detail: %s", line);
    d += 10;
    size_t n = 0;
    while (d[n] == detail_byte(seq))
        n++;
    CHECK(n == detail_len(seq) && d[n] == '"', "torn event (seq %u): %s", seq, line);
    CHECK(strstr(line, "\"reason_code\":\"lap\"") != NULL, "torn event: %s", line);
    unsigned long long gap = g - c->last_gseq - 1;
    if (c->have_pending) {
        CHECK(c->pending_lost == gap, "overrun said %llu, gseq gap is %llu", c->pending_lost, gap);
        c->lost += gap;
        c->have_pending = 0;
    } else {
        CHECK(gap == 0, "gseq jumped by %llu without an overrun report", gap);
    }
    c->last_gseq = g;
    c->seen++;
}

int main(void)
{
    char dir[] = "/tmp/soth-race-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[64];
    snprintf(path, sizeof(path), "%s/ev.ring", dir);
    struct soth_config *cfg = calloc(1, sizeof(*cfg));
    atomic_init(&cfg->refs, 1);
    cfg->events.ring_path = path;
    cfg->events.ring_size_mb = 1; /* about 45 MB go through it: dozens of laps */
    cfg->events.body_capture_bytes = 4096;
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    CHECK(o != NULL, "%s", err);
    struct soth_ring_reader *rd = soth_ring_reader_open(path, err, sizeof(err));
    CHECK(rd != NULL, "%s", err);
    soth_ring_reader_seek(rd, 1);
    CHECK(soth_observe_start(o) == 0, "start");
    struct race r = {.o = o};
    pthread_t t;
    pthread_create(&t, NULL, writer, &r);
    static struct check c;
    unsigned polls = 0;
    while (!atomic_load(&r.done)) {
        soth_ring_reader_poll(rd, NULL, on_line, &c);
        /* Now and then fall behind on purpose so that the writer laps us. */
        if (++polls % 64 == 0)
            usleep(20000);
    }
    soth_ring_reader_poll(rd, NULL, on_line, &c);
    pthread_join(t, NULL);
    soth_ring_reader_free(rd);
    unsigned long long dropped = atomic_load(&soth_observe_metrics(o, 0)->events_dropped);
    soth_observe_free(o);
    /* Events the producer dropped on a full SPSC ring never got a gseq: not the reader's loss. */
    CHECK(dropped < EVENTS / 2, "the producer dropped %llu events (test pacing)", dropped);
    CHECK(!c.have_pending, "an overrun with nothing after it");
    CHECK(c.seen + c.lost == EVENTS - dropped, "seen %llu + lost %llu + dropped %llu != %u", c.seen,
          c.lost, dropped, EVENTS);
    CHECK(c.overruns > 0, "the reader was never lapped: the test proves nothing");
    CHECK(c.last_gseq == EVENTS - dropped, "last gseq %llu", c.last_gseq);
    printf("race_tsan: %u events, %llu printed intact, %llu overruns reporting %llu lost, %llu "
           "dropped by the producer\n",
           EVENTS, c.seen, c.overruns, c.lost, dropped);
    unlink(path);
    rmdir(dir);
    free(cfg);
    return 0;
}
