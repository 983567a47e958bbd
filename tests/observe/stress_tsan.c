/*
 * SPSC rings under ThreadSanitizer: N producer threads x M events through the telemetry thread
 * into the ring file, then every event read back. Nothing is lost that was not counted as
 * dropped, per-producer order holds, stream_closed is never dropped and reports each flow's
 * drops. A plain program (Criterion's process arena does not start under TSan): exit 0 = pass.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soth/observe.h"

#define CHECK_NAME "stress_tsan"
#include "check.h"

#define N_PROD 4
#define EVENTS 200000

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
    for (unsigned i = 0; i < EVENTS; i++) {
        soth_ev_connect_parse_failed(&f, soth_iov("n", 1), soth_iov(pad, i % sizeof(pad)));
        if (i % 64 == 0)
            soth_ev_flush(p);
    }
    soth_ev_stream_closed(&f, SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    return NULL;
}

struct tally {
    long long next_seq[N_PROD];
    unsigned long long seen[N_PROD];
    unsigned long long total, closed, last_gseq;
};

static unsigned long long field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    CHECK(p != NULL, "no %s in %s", key, line);
    return strtoull(p + strlen(key), NULL, 10);
}

static void on_line(void *ctx, const char *text, size_t len)
{
    struct tally *t = ctx;
    CHECK(len > 0 && text[len - 1] == '\n', "line without newline");
    /* The reader's line is not NUL-terminated: copy it for the string functions below. */
    static char line[4096];
    CHECK(len < sizeof(line), "line of %zu bytes", len);
    memcpy(line, text, len);
    line[len] = '\0';
    CHECK(strstr(line, "ring_overrun") == NULL, "the ring file was lapped");
    unsigned w = (unsigned)field(line, "\"worker\":");
    long long seq = (long long)field(line, "\"seq\":");
    unsigned long long gseq = field(line, "\"gseq\":");
    CHECK(w < N_PROD, "worker %u", w);
    CHECK(gseq == t->last_gseq + 1, "gseq %llu after %llu", gseq, t->last_gseq);
    t->last_gseq = gseq;
    CHECK(seq >= t->next_seq[w], "producer %u: seq %lld after %lld", w, seq, t->next_seq[w]);
    t->next_seq[w] = seq + 1;
    if (strstr(line, "\"type\":\"stream_closed\"")) {
        t->closed++;
        CHECK(field(line, "\"events_dropped\":") == (unsigned long long)seq - t->seen[w],
              "events_dropped does not match the seq gaps of producer %u", w);
    }
    t->seen[w]++;
    t->total++;
}

int main(void)
{
    char dir[] = "/tmp/soth-tsan-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[64];
    snprintf(path, sizeof(path), "%s/ev.ring", dir);
    struct soth_config *cfg = calloc(1, sizeof(*cfg));
    atomic_init(&cfg->refs, 1);
    cfg->events.ring_path = path;
    cfg->events.ring_size_mb = 512;
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, N_PROD, err, sizeof(err));
    CHECK(o != NULL, "%s", err);
    CHECK(soth_observe_start(o) == 0, "start");
    pthread_t th[N_PROD];
    struct prod_arg args[N_PROD];
    for (unsigned i = 0; i < N_PROD; i++) {
        args[i] = (struct prod_arg){o, i};
        pthread_create(&th[i], NULL, producer, &args[i]);
    }
    for (unsigned i = 0; i < N_PROD; i++)
        pthread_join(th[i], NULL);
    soth_observe_stop(o);
    unsigned long long dropped = 0;
    for (unsigned i = 0; i < N_PROD; i++)
        dropped += atomic_load(&soth_observe_metrics(o, i)->events_dropped);
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    CHECK(r != NULL, "%s", err);
    soth_ring_reader_seek(r, true);
    struct tally t = {0};
    soth_ring_reader_poll(r, NULL, on_line, &t);
    soth_ring_reader_free(r);
    soth_observe_free(o);
    CHECK(t.closed == N_PROD, "stream_closed seen %llu times", t.closed);
    CHECK(t.total + dropped == (unsigned long long)N_PROD * (EVENTS + 1),
          "seen %llu + dropped %llu != emitted %llu", t.total, dropped,
          (unsigned long long)N_PROD * (EVENTS + 1));
    printf("stress_tsan: %u producers x %u events: %llu through, %llu dropped and counted\n",
           N_PROD, EVENTS, t.total, dropped);
    unlink(path);
    rmdir(dir);
    free(cfg);
    return 0;
}
