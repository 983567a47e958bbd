/*
 * Event pipeline benchmark:
 *   1. producer: events/s one worker builds into its SPSC ring (batches that fit the ring,
 *      drained between batches, so only the producer's own cost is timed);
 *   2. pipeline: events/s from one producer through the telemetry thread into the ring file
 *      (sustained; events the ring could not take are counted as dropped, as in production);
 *   3. reader: JSON lines/s that soth-mitm-tail's reader renders from the ring file.
 * Typical event: connect_decision with a rule (about 130 bytes in the ring).
 *
 *   ev_bench [EVENTS]      (default 5,000,000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "soth/observe.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t lines;
static void count_line(void *ctx, const char *line, size_t len)
{
    (void)ctx;
    (void)line;
    (void)len;
    lines++;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 5000000ul;
    char dir[] = "/tmp/soth-evbench-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    char path[64];
    snprintf(path, sizeof(path), "%s/ev.ring", dir);
    struct soth_config *cfg = calloc(1, sizeof(*cfg));
    atomic_init(&cfg->refs, 1);
    cfg->events.ring_path = path;
    cfg->events.ring_size_mb = 1024;
    char err[256];
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    if (o == NULL || soth_observe_start(o) != 0) {
        fprintf(stderr, "ev_bench: %s\n", err);
        return 1;
    }
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 1, 0, NULL, 0);
    soth_ev_flow_set_server(&f, soth_iov("origin.example", 14), 443);
    struct soth_iov rule = soth_iov("*.example", 9);

    /* 1. producer cost only */
    double t_prod = 0;
    unsigned long done = 0;
    const unsigned long batch = 20000; /* ~2.6 MB: fits the 4 MiB ring */
    while (done < n) {
        double t0 = now_s();
        for (unsigned long i = 0; i < batch; i++)
            soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE, rule);
        soth_ev_flush(p);
        t_prod += now_s() - t0;
        done += batch;
        /* let the telemetry thread drain before the next timed batch */
        usleep(20000);
    }
    unsigned long dropped1 = atomic_load(&soth_observe_metrics(o, 0)->events_dropped);

    /* 2. sustained pipeline: producer flushing every 64 events, like a busy worker */
    double t0 = now_s();
    for (unsigned long i = 0; i < n; i++) {
        soth_ev_connect_decision(&f, SOTH_ACTION_INTERCEPT, SOTH_REASON_POLICY_RULE, rule);
        if ((i & 63) == 63)
            soth_ev_flush(p);
    }
    soth_ev_flush(p);
    soth_observe_stop(o);
    double t_pipe = now_s() - t0;
    unsigned long dropped2 = atomic_load(&soth_observe_metrics(o, 0)->events_dropped) - dropped1;

    /* 3. reader: render everything the file holds as JSON lines */
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    soth_ring_reader_seek(r, true);
    double t1 = now_s();
    soth_ring_reader_poll(r, NULL, count_line, NULL);
    double t_read = now_s() - t1;
    soth_ring_reader_free(r);
    soth_observe_free(o);
    unlink(path);
    rmdir(dir);
    free(cfg);

    printf("| stage | events | seconds | events/s | dropped |\n| --- | --- | --- | --- | --- |\n");
    printf("| producer into its SPSC ring | %lu | %.3f | %.2fM | %lu |\n", n, t_prod,
           (double)n / t_prod / 1e6, dropped1);
    printf("| producer -> telemetry -> ring file (sustained) | %lu | %.3f | %.2fM | %lu |\n", n,
           t_pipe, (double)(n - dropped2) / t_pipe / 1e6, dropped2);
    printf("| ring file -> JSON lines (tail's reader) | %zu | %.3f | %.2fM | - |\n", lines, t_read,
           (double)lines / t_read / 1e6);
    return 0;
}
