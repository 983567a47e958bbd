/*
 * The NATS sink's own thread in isolation (docs/sinks.md, "Cost"): events of a fixed size go
 * into one nats sink (nats_sink_reserve/commit, as the telemetry thread writes them, with a
 * nats_sink_kick per millisecond's batch) at a fixed rate, for a fixed time, to a real
 * nats-server -js on a loopback port; then the sink thread's CPU time (the scheduler's run
 * time, /proc/self/task/TID/schedstat; user and kernel split from .../stat) per event.
 * Under `valgrind --tool=callgrind --separate-threads=yes` the soth-nats thread's profile gives
 * its instructions per event.
 *
 *     build/bench/nats/sink_bench [RATE events/s = 20000] [SECONDS = 5] [BYTES = 400]
 *
 * At the end it waits for every event's ack and checks that none was dropped.
 */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sink_nats.h"

#define CHECK_NAME "sink_bench"
#include "../../tests/observe/check.h"
#include "../../tests/observe/nats_server.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/** The tid of this process's thread named comm, or -1. */
static int find_thread(const char *comm)
{
    DIR *d = opendir("/proc/self/task");
    int tid = -1;
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        char p[300], c[32] = "";
        snprintf(p, sizeof(p), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(p, "r");
        if (f == NULL)
            continue;
        if (fgets(c, sizeof(c), f) != NULL && strncmp(c, comm, strlen(comm)) == 0)
            tid = atoi(e->d_name);
        fclose(f);
    }
    if (d != NULL)
        closedir(d);
    return tid;
}

struct tcpu {
    double run_s, user_s, sys_s;
};

static struct tcpu thread_cpu(int tid)
{
    struct tcpu t = {0};
    char p[96], buf[1024];
    snprintf(p, sizeof(p), "/proc/self/task/%d/schedstat", tid);
    FILE *f = fopen(p, "r");
    unsigned long long ns = 0;
    if (f != NULL) {
        if (fscanf(f, "%llu", &ns) == 1)
            t.run_s = (double)ns / 1e9;
        fclose(f);
    }
    snprintf(p, sizeof(p), "/proc/self/task/%d/stat", tid);
    f = fopen(p, "r");
    if (f != NULL) {
        if (fgets(buf, sizeof(buf), f) != NULL) {
            char *s = strrchr(buf, ')');
            unsigned long long ut = 0, st = 0;
            /* after ")": state(3) ... utime is field 14, stime 15 */
            if (s != NULL && sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                                    &ut, &st) == 2) {
                t.user_s = (double)ut / (double)sysconf(_SC_CLK_TCK);
                t.sys_s = (double)st / (double)sysconf(_SC_CLK_TCK);
            }
        }
        fclose(f);
    }
    return t;
}

int main(int argc, char **argv)
{
    unsigned rate = argc > 1 ? (unsigned)atoi(argv[1]) : 20000;
    unsigned seconds = argc > 2 ? (unsigned)atoi(argv[2]) : 5;
    unsigned bytes = argc > 3 ? (unsigned)atoi(argv[3]) : 400;
    CHECK(rate >= 1000 && seconds >= 1 && bytes >= 16 && bytes <= 65536, "bad arguments");
    const char *bin = server_bin();
    if (bin == NULL) {
        fprintf(stderr, "sink_bench: no nats-server\n");
        return 77;
    }
    char store[] = "/tmp/sink_bench.XXXXXX";
    CHECK(mkdtemp(store) != NULL, "mkdtemp");
    int port = free_port();
    pid_t srv = server_start(bin, port, store);

    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    struct soth_sink_cfg cfg = {.type = SOTH_SINK_NATS,
                                .format = SOTH_SINK_FMT_EVENT,
                                .url = url,
                                .subject = "bench",
                                .stream = "BENCH",
                                .max_pending_mb = 64};
    char err[512];
    struct nats_sink *ns = nats_sink_new(&cfg, 0, "0123456789abcdef", 10000, err, sizeof(err));
    CHECK(ns != NULL, "nats_sink_new: %s", err);
    CHECK(nats_sink_start(ns) == 0, "nats_sink_start");
    int tid = -1;
    for (int i = 0; i < 200 && tid < 0; i++, usleep(5000))
        tid = find_thread("soth-nats");
    CHECK(tid > 0, "no soth-nats thread");

    /* A JSON object of `bytes` bytes, like an event line. */
    char *json = malloc(bytes);
    CHECK(json != NULL, "malloc");
    memset(json, 'a', bytes);
    memcpy(json, "{\"v\":1,\"s\":\"", 12);
    memcpy(json + bytes - 2, "\"}", 2);

    uint64_t per_ms = rate / 1000, gseq = 0;
    usleep(200000);
    struct tcpu c0 = thread_cpu(tid);
    uint64_t t0 = now_ns(), next = t0;
    for (uint64_t ms = 0; ms < (uint64_t)seconds * 1000; ms++) {
        for (uint64_t i = 0; i < per_ms; i++) {
            unsigned type = (unsigned)(gseq % 4);
            char *p = nats_sink_reserve(ns, bytes);
            if (p != NULL) {
                memcpy(p, json, bytes);
                nats_sink_commit(ns, type, ++gseq, bytes);
            } else {
                nats_sink_put(ns, type, ++gseq, json, bytes);
            }
        }
        nats_sink_kick(ns);
        next += 1000000u;
        uint64_t n = now_ns();
        if (next > n) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(next - n)};
            nanosleep(&ts, NULL);
        }
    }
    double wall = (double)(now_ns() - t0) / 1e9;
    /* Until every event is acknowledged (at most 10 s), counting that time too. */
    for (int i = 0; i < 1000 && nats_sink_pending(ns) > 0; i++)
        usleep(10000);
    struct tcpu c1 = thread_cpu(tid);
    uint64_t pending = nats_sink_pending(ns), dropped = nats_sink_dropped(ns);
    nats_sink_stop(ns);
    nats_sink_free(ns);
    kill(srv, SIGTERM);
    waitpid(srv, NULL, 0);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf %s", store);
    if (system(rm) != 0)
        fprintf(stderr, "sink_bench: could not remove %s\n", store);

    double ev = (double)gseq;
    printf("events %llu (%.0f/s over %.2f s, %u bytes): soth-nats thread %.3f us/event "
           "(user %.3f, kernel %.3f by utime/stime), %.1f%% of a CPU; dropped %llu, pending "
           "%llu\n",
           (unsigned long long)gseq, ev / wall, wall, bytes, (c1.run_s - c0.run_s) * 1e6 / ev,
           (c1.user_s - c0.user_s) * 1e6 / ev, (c1.sys_s - c0.sys_s) * 1e6 / ev,
           (c1.run_s - c0.run_s) * 100 / wall, (unsigned long long)dropped,
           (unsigned long long)pending);
    free(json);
    return dropped == 0 && pending == 0 ? 0 : 1;
}
