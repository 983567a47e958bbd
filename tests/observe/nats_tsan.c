/*
 * The NATS sink's threads under ThreadSanitizer (docs/sinks.md): two producer threads through
 * the telemetry thread into a nats sink whose bound (1 MiB) is far too small, while a real
 * nats-server on a loopback port is killed and started again. The telemetry thread drops the
 * oldest queued events while the sink thread copies out, libnats' threads report acks and the
 * lost connection. At the end every event the workers wrote is either in the stream or counted
 * in the sink's drops, exactly. A plain program (Criterion's arena does not start under TSan):
 * exit 0 = pass, 77 = skipped (no nats-server).
 */
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "soth/observe.h"

#define CHECK_NAME "nats_tsan"
#include "check.h"
#include "nats_server.h"

#define N_PROD 2
#define EVENTS 60000

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
    char pad[200];
    memset(pad, 'p', sizeof(pad));
    for (unsigned i = 0; i < EVENTS; i++) {
        soth_ev_connect_parse_failed(&f, soth_iov("n", 1), soth_iov(pad, sizeof(pad)));
        if (i % 64 == 0)
            soth_ev_flush(p);
        if (i % 512 == 0)
            usleep(2000); /* spread the load over the outage */
    }
    soth_ev_stream_closed(&f, SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    return NULL;
}

static uint64_t stream_msgs(int port)
{
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    CHECK(natsConnection_ConnectTo(&nc, url) == NATS_OK, "connect to read the stream");
    CHECK(natsConnection_JetStream(&js, nc, NULL) == NATS_OK, "jetstream");
    CHECK(js_GetStreamInfo(&si, js, "TSAN", NULL, &jerr) == NATS_OK, "stream info");
    uint64_t n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

int main(void)
{
    const char *bin = server_bin();
    if (bin == NULL) {
        fprintf(stderr, "nats_tsan: no nats-server (ci/setup.sh installs it): skipped\n");
        return 77;
    }
    char dir[] = "/tmp/soth-nats-tsan-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char store[128], ring[128], json[512];
    snprintf(store, sizeof(store), "%s/store", dir);
    snprintf(ring, sizeof(ring), "%s/ev.ring", dir);
    int port = free_port();
    pid_t srv = server_start(bin, port, store);

    snprintf(json, sizeof(json),
             "{\"events\":{\"ring_path\":\"%s\",\"sinks\":[{\"type\":\"nats\",\"url\":"
             "\"nats://127.0.0.1:%d\",\"subject\":\"tsan\",\"stream\":\"TSAN\","
             "\"max_pending_mb\":1}]},\"timeouts\":{\"drain_ms\":20000}}",
             ring, port);
    char err[512];
    struct soth_config *cfg = NULL;
    CHECK(soth_config_load_text(json, strlen(json), &cfg, err, sizeof(err)) == 0, "%s", err);
    struct soth_observe *o = soth_observe_new(cfg, N_PROD, err, sizeof(err));
    CHECK(o != NULL, "%s", err);
    CHECK(soth_observe_start(o) == 0, "start");

    pthread_t t[N_PROD];
    struct prod_arg args[N_PROD];
    for (unsigned i = 0; i < N_PROD; i++) {
        args[i] = (struct prod_arg){.o = o, .idx = i};
        pthread_create(&t[i], NULL, producer, &args[i]);
    }
    usleep(300000);
    server_kill(srv); /* mid-load: the sink holds what it can, drops the oldest past 1 MiB */
    sleep(1);
    srv = server_start(bin, port, store);
    for (unsigned i = 0; i < N_PROD; i++)
        pthread_join(t[i], NULL);
    soth_observe_stop(o); /* publishes what is left and waits for its acks */

    uint64_t written = 0;
    for (unsigned i = 0; i < N_PROD; i++)
        written += EVENTS + 1 - atomic_load(&soth_observe_metrics(o, i)->events_dropped);
    uint64_t dropped = soth_observe_sink_dropped(o);
    uint64_t stored = stream_msgs(port);
    fprintf(stderr, "nats_tsan: %llu events written, %llu in the stream, %llu dropped\n",
            (unsigned long long)written, (unsigned long long)stored, (unsigned long long)dropped);
    CHECK(dropped > 0, "1 MiB should not hold the outage");
    CHECK(stored + dropped == written, "stream %llu + dropped %llu != written %llu",
          (unsigned long long)stored, (unsigned long long)dropped, (unsigned long long)written);
    soth_observe_free(o);
    soth_config_unref(cfg);
    server_kill(srv);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "rm");
    return 0;
}
