/*
 * A "format": "exchange" NATS sink (docs/sinks.md, "Exchanges") against a real nats-server on a
 * loopback port, with more flows open at once than the exchange assembler tracks (16,384,
 * docs/exchanges.md "Bounds"): the flows it pushes out are published as partial exchanges, with
 * "-p" after their message id, and the rest of each, emitted later under the same exchange_id,
 * is stored too (not taken for a copy). The stream must hold exactly the exchanges an assembler
 * over the ring file gives (what soth-mitm-tail --exchanges prints), in order, each under
 * <run id>-x-<flow_id>-<stream_id>[-p]. A plain program: exit 0 = pass, 77 = skipped (no
 * nats-server).
 */
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "soth/exchange.h"
#include "soth/observe.h"

#define CHECK_NAME "nats_exchange"
#include "check.h"
#include "nats_server.h"

#define FLOWS 16400 /* 16 more than the assembler tracks */
#define MAX_X 70000

/* What the ring gives: "<id tail> <json>" per exchange, in order. */
static char *want[MAX_X];
static size_t n_want, n_partial;

static void collect(void *ctx, const struct soth_xasm_out *x)
{
    (void)ctx;
    CHECK(n_want < MAX_X, "too many exchanges");
    char *s = malloc(x->len + 64);
    CHECK(s != NULL, "oom");
    int n = snprintf(s, 64, "x-%llu-%u%s ", (unsigned long long)x->flow_id, x->stream_id,
                     x->partial ? "-p" : "");
    memcpy(s + n, x->json, x->len - 1); /* without the newline */
    s[n + x->len - 1] = '\0';
    want[n_want++] = s;
    n_partial += x->partial;
}

int main(void)
{
    const char *bin = server_bin();
    if (bin == NULL) {
        fprintf(stderr, "nats_exchange: no nats-server (ci/setup.sh installs it): skipped\n");
        return 77;
    }
    char dir[] = "/tmp/soth-nats-x-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char store[128], ring[128], json[512], url[64];
    snprintf(store, sizeof(store), "%s/store", dir);
    snprintf(ring, sizeof(ring), "%s/ev.ring", dir);
    int port = free_port();
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    pid_t srv = server_start(bin, port, store);

    snprintf(json, sizeof(json),
             "{\"events\":{\"ring_path\":\"%s\",\"sinks\":[{\"type\":\"nats\",\"url\":\"%s\","
             "\"subject\":\"nx\",\"stream\":\"NX\",\"format\":\"exchange\"}]},"
             "\"timeouts\":{\"drain_ms\":20000}}",
             ring, url);
    char err[512];
    struct soth_config *cfg = NULL;
    CHECK(soth_config_load_text(json, strlen(json), &cfg, err, sizeof(err)) == 0, "%s", err);
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    CHECK(o != NULL, "%s", err);
    CHECK(soth_observe_start(o) == 0, "start");

    /* Every flow opens an exchange; only then do they finish, oldest first. */
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ev_flow *f = calloc(FLOWS, sizeof(*f));
    CHECK(f != NULL, "oom");
    struct soth_header h = {{"host", 4}, {"a.example", 9}};
    for (unsigned i = 0; i < FLOWS; i++) {
        soth_ev_flow_init(&f[i], p, 1000 + i, 0, NULL, 0);
        soth_ev_flow_set_server(&f[i], soth_iov("a.example", 9), 443);
        soth_ev_flow_set_protocol(&f[i], SOTH_PROTO_HTTP1);
        soth_ev_request_headers(&f[i], 1, soth_iov("GET", 3), soth_iov("https", 5),
                                soth_iov("a.example", 9), soth_iov("/", 1), soth_iov("1.1", 3), &h,
                                1);
        if (i % 256 == 255) {
            soth_ev_flush(p);
            usleep(2000); /* let the telemetry thread keep up: no event dropped */
        }
    }
    for (unsigned i = 0; i < FLOWS; i++) {
        soth_ev_exchange_completed(&f[i], 1, SOTH_OUTCOME_COMPLETE, 0, 0);
        soth_ev_stream_closed(&f[i], SOTH_CLOSE_CLIENT_EOF, 100, 100);
        if (i % 256 == 255) {
            soth_ev_flush(p);
            usleep(2000);
        }
    }
    soth_ev_flush(p);
    soth_observe_stop(o); /* publishes what is left and waits for its acks */
    CHECK(atomic_load(&soth_observe_metrics(o, 0)->events_dropped) == 0, "events dropped");
    CHECK(soth_observe_sink_dropped(o) == 0, "the sink dropped exchanges");

    struct soth_ring_reader *r = soth_ring_reader_open(ring, err, sizeof(err));
    CHECK(r != NULL, "%s", err);
    struct soth_xasm_cfg xc = {.body_capture_bytes = 4096};
    struct soth_xasm *x = soth_xasm_new(&xc, collect, NULL);
    soth_ring_reader_seek(r, true);
    soth_ring_reader_poll_exchanges(r, x);
    soth_xasm_free(x);
    soth_ring_reader_free(r);
    CHECK(n_partial > 0, "no exchange was emitted partial");

    /* The stream, in order: "<id after the run id> <payload>". */
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    CHECK(natsConnection_ConnectTo(&nc, url) == NATS_OK, "connect");
    CHECK(natsConnection_JetStream(&js, nc, NULL) == NATS_OK, "jetstream");
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "NX";
    so.Config.AckPolicy = js_AckNone;
    so.Config.DeliverPolicy = js_DeliverAll;
    CHECK(js_PullSubscribe(&sub, js, "nx.>", "reader", NULL, &so, &jerr) == NATS_OK, "subscribe");
    size_t got = 0, both = 0;
    char run[20] = "";
    while (got < n_want) {
        natsMsgList list = {0};
        if (natsSubscription_Fetch(&list, sub, 1024, 5000, &jerr) != NATS_OK)
            break;
        for (int i = 0; i < list.Count; i++, got++) {
            natsMsg *m = list.Msgs[i];
            const char *id = NULL;
            CHECK(natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK, "no message id");
            CHECK(strcmp(natsMsg_GetSubject(m), "nx.exchange") == 0, "subject %s",
                  natsMsg_GetSubject(m));
            CHECK(strlen(id) > 17 && id[16] == '-', "message id %s", id);
            if (run[0] == '\0')
                memcpy(run, id, 16);
            CHECK(memcmp(run, id, 16) == 0, "two run ids: %s", id);
            CHECK(got < n_want, "more exchanges in the stream than in the ring");
            size_t il = strlen(id + 17);
            const char *w = want[got];
            CHECK(strncmp(w, id + 17, il) == 0 && w[il] == ' ' &&
                      (size_t)natsMsg_GetDataLength(m) == strlen(w + il + 1) &&
                      memcmp(natsMsg_GetData(m), w + il + 1, strlen(w + il + 1)) == 0,
                  "message %zu: %s, want %.80s", got, id, w);
            /* A partial one followed later by the rest under the same exchange id. */
            if (il > 2 && strcmp(id + 17 + il - 2, "-p") == 0)
                for (size_t k = got + 1; k < n_want; k++)
                    if (strncmp(want[k], id + 17, il - 2) == 0 && want[k][il - 2] == ' ') {
                        both++;
                        break;
                    }
        }
        natsMsgList_Destroy(&list);
    }
    fprintf(stderr,
            "nats_exchange: %zu exchanges (%zu partial, %zu of them completed later) in "
            "the stream as the ring gives them\n",
            got, n_partial, both);
    CHECK(got == n_want, "the stream holds %zu exchanges, the ring gives %zu", got, n_want);
    CHECK(both > 0, "no partial exchange was completed later");
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    soth_observe_free(o);
    soth_config_unref(cfg);
    free(f);
    for (size_t i = 0; i < n_want; i++)
        free(want[i]);
    server_kill(srv);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "rm");
    return 0;
}
