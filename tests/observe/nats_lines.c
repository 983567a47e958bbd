/*
 * A NATS sink next to a jsonl sink (docs/sinks.md, "Cost"): the telemetry thread encodes each
 * event straight into the NATS sink's queue, the jsonl sink takes the line from there, and
 * near the queue's end (or when it is close to full) both take it from a line buffer instead.
 * With a 1 MiB bound the queue laps many times under events of many sizes (strings with
 * escapes and bytes that are not UTF-8 among them), so both ways are taken. Every message in
 * the stream must be its event's jsonl line without the newline, byte for byte, on the subject
 * <subject>.<type> with the id <run id>-<gseq>; and stream + drops = events written, exactly.
 * A plain program: exit 0 = pass, 77 = skipped (no nats-server).
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
#include <time.h>
#include <unistd.h>

#include "soth/observe.h"

#define CHECK_NAME "nats_lines"
#include "check.h"
#include "nats_server.h"

#define EVENTS  12000u
#define Q_BYTES (768u << 10) /* the queue of a 1 MiB sink: three quarters */

/* The jsonl file's lines by gseq (gseq 1..EVENTS + 1). */
static char *lines[EVENTS + 2];
static size_t line_len[EVENTS + 2];

static void count_line(void *ctx, const char *line, size_t len)
{
    (void)line;
    (void)len;
    (*(uint64_t *)ctx)++;
}

/* Wait (at most 10 s) until the telemetry thread has written `upto` records to the ring file:
 * the test paces its load by the consumer, not by the clock, so a slow run (TSan, a busy CI
 * machine) fills the sink's queue, never the worker's ring. */
static void wait_drained(struct soth_ring_reader *r, uint64_t *seen, uint64_t upto)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        soth_ring_reader_poll(r, NULL, count_line, seen);
        if (*seen >= upto)
            return;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10)
            return; /* the drop check below then says what happened */
        usleep(1000);
    }
}

static uint64_t gseq_of(const char *line, size_t n)
{
    const char *g = memmem(line, n, "\"gseq\":", 7);
    CHECK(g != NULL, "no gseq in %.80s", line);
    return strtoull(g + 7, NULL, 10);
}

static size_t read_jsonl(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "open %s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    while ((len = getline(&buf, &cap, f)) > 0) {
        CHECK(buf[len - 1] == '\n', "a line without its newline");
        uint64_t g = gseq_of(buf, (size_t)len);
        CHECK(g >= 1 && g <= EVENTS + 1 && lines[g] == NULL, "gseq %llu", (unsigned long long)g);
        lines[g] = malloc((size_t)len);
        CHECK(lines[g] != NULL, "oom");
        memcpy(lines[g], buf, (size_t)len - 1);
        line_len[g] = (size_t)len - 1;
        n++;
    }
    free(buf);
    fclose(f);
    return n;
}

int main(void)
{
    const char *bin = server_bin();
    if (bin == NULL) {
        fprintf(stderr, "nats_lines: no nats-server (ci/setup.sh installs it): skipped\n");
        return 77;
    }
    char dir[] = "/tmp/soth-nats-lines-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char store[128], ring[128], jsonl[128], json[768], url[64];
    snprintf(store, sizeof(store), "%s/store", dir);
    snprintf(ring, sizeof(ring), "%s/ev.ring", dir);
    snprintf(jsonl, sizeof(jsonl), "%s/ev.jsonl", dir);
    int port = free_port();
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    pid_t srv = server_start(bin, port, store);

    snprintf(json, sizeof(json),
             "{\"events\":{\"ring_path\":\"%s\",\"sinks\":["
             "{\"type\":\"nats\",\"url\":\"%s\",\"subject\":\"nl\",\"stream\":\"NL\","
             "\"max_pending_mb\":1},{\"type\":\"jsonl\",\"path\":\"%s\"}]},"
             "\"timeouts\":{\"drain_ms\":20000}}",
             ring, url, jsonl);
    char err[512];
    struct soth_config *cfg = NULL;
    CHECK(soth_config_load_text(json, strlen(json), &cfg, err, sizeof(err)) == 0, "%s", err);
    struct soth_observe *o = soth_observe_new(cfg, 1, err, sizeof(err));
    CHECK(o != NULL, "%s", err);
    CHECK(soth_observe_start(o) == 0, "start");

    /* Details of 0..1499 bytes: plain ASCII, some with quotes and newlines (escaped), some
     * with bytes that are not UTF-8 (the encoder's slow path). */
    struct soth_ev_producer *p = soth_observe_producer(o, 0);
    struct soth_ring_reader *rr = soth_ring_reader_open(ring, err, sizeof(err));
    CHECK(rr != NULL, "%s", err);
    soth_ring_reader_seek(rr, true);
    uint64_t seen = 0;
    struct soth_ev_flow f;
    soth_ev_flow_init(&f, p, 4242, 0, NULL, 0);
    static char detail[1500];
    for (unsigned i = 0; i < EVENTS; i++) {
        size_t n = (i * 37u) % sizeof(detail);
        memset(detail, 'a' + (int)(i % 26), n);
        if (i % 5 == 1 && n > 2) {
            detail[n / 2] = '"';
            detail[n - 1] = '\n';
        }
        if (i % 7 == 3 && n > 1)
            detail[0] = (char)0xff;
        soth_ev_connect_parse_failed(&f, soth_iov("n", 1), soth_iov(detail, n));
        if (i % 64 == 63) {
            soth_ev_flush(p);
            usleep(1000); /* give the sink's queue time to drain: it is to lap, not to drop */
            wait_drained(rr, &seen, i + 1);
        }
    }
    soth_ev_stream_closed(&f, SOTH_CLOSE_SHUTDOWN, 0, 0);
    soth_ev_flush(p);
    soth_observe_stop(o); /* publishes what is left and waits for its acks */
    soth_ring_reader_free(rr);
    CHECK(atomic_load(&soth_observe_metrics(o, 0)->events_dropped) == 0, "events dropped");
    uint64_t written = EVENTS + 1;
    uint64_t dropped = soth_observe_sink_dropped(o);
    size_t n_lines = read_jsonl(jsonl);
    CHECK(n_lines == written, "the jsonl sink holds %zu lines of %llu", n_lines,
          (unsigned long long)written);

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    CHECK(natsConnection_ConnectTo(&nc, url) == NATS_OK, "connect");
    CHECK(natsConnection_JetStream(&js, nc, NULL) == NATS_OK, "jetstream");
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = "NL";
    so.Config.AckPolicy = js_AckNone;
    so.Config.DeliverPolicy = js_DeliverAll;
    CHECK(js_PullSubscribe(&sub, js, "nl.>", "reader", NULL, &so, &jerr) == NATS_OK, "subscribe");
    uint64_t got = 0, bytes = 0, last = 0;
    char run[20] = "";
    while (got < written) {
        natsMsgList list = {0};
        if (natsSubscription_Fetch(&list, sub, 1024, 5000, &jerr) != NATS_OK)
            break;
        for (int i = 0; i < list.Count; i++, got++) {
            natsMsg *m = list.Msgs[i];
            const char *id = NULL;
            CHECK(natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK, "no message id");
            CHECK(strlen(id) > 17 && id[16] == '-', "message id %s", id);
            if (run[0] == '\0')
                memcpy(run, id, 16);
            CHECK(memcmp(run, id, 16) == 0, "two run ids: %s", id);
            char *end = NULL;
            uint64_t g = strtoull(id + 17, &end, 10);
            CHECK(*end == '\0' && g >= 1 && g <= written && lines[g] != NULL, "message id %s", id);
            CHECK(g > last, "gseq %llu after %llu", (unsigned long long)g,
                  (unsigned long long)last);
            last = g;
            const char *type = g == written ? "stream_closed" : "connect_parse_failed";
            char subj[64];
            snprintf(subj, sizeof(subj), "nl.%s", type);
            CHECK(strcmp(natsMsg_GetSubject(m), subj) == 0, "gseq %llu on %s",
                  (unsigned long long)g, natsMsg_GetSubject(m));
            CHECK((size_t)natsMsg_GetDataLength(m) == line_len[g] &&
                      memcmp(natsMsg_GetData(m), lines[g], line_len[g]) == 0,
                  "gseq %llu: the message is %.*s, the jsonl line %.*s", (unsigned long long)g,
                  natsMsg_GetDataLength(m) > 120 ? 120 : natsMsg_GetDataLength(m),
                  natsMsg_GetData(m), (int)(line_len[g] > 120 ? 120 : line_len[g]), lines[g]);
            bytes += line_len[g];
        }
        natsMsgList_Destroy(&list);
    }
    fprintf(stderr,
            "nats_lines: %llu events, %llu in the stream as the jsonl sink has them (%.1f "
            "laps of the queue), %llu dropped\n",
            (unsigned long long)written, (unsigned long long)got, (double)bytes / Q_BYTES,
            (unsigned long long)dropped);
    CHECK(got + dropped == written, "stream %llu + dropped %llu != written %llu",
          (unsigned long long)got, (unsigned long long)dropped, (unsigned long long)written);
    CHECK(bytes > 4ull * Q_BYTES, "the queue did not lap");
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    soth_observe_free(o);
    soth_config_unref(cfg);
    for (size_t g = 0; g < EVENTS + 2; g++)
        free(lines[g]);
    server_kill(srv);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "rm");
    return 0;
}
