/*
 * nats-read: print every message of a JetStream stream, oldest first, one line each:
 *
 *     <stream seq> <subject> <Nats-Msg-Id>[ <payload>]
 *
 * usage: nats-read URL STREAM SUBJECT_FILTER [--payload]
 *
 * A test helper for tests/integration/test_nats_sink.py (Debian has no Python NATS client).
 * Reads through a temporary pull consumer that acknowledges nothing, so the stream is left as
 * it was. Exit 0 after the last message the stream held when it started, 1 on an error.
 */
#include <nats/nats.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what, natsStatus s)
{
    const char *t = nats_GetLastError(NULL);
    fprintf(stderr, "nats-read: %s: %s\n", what, t && *t ? t : natsStatus_GetText(s));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: nats-read URL STREAM SUBJECT_FILTER [--payload]\n");
        return 2;
    }
    const char *url = argv[1], *stream = argv[2], *filter = argv[3];
    bool payload = argc > 4 && strcmp(argv[4], "--payload") == 0;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s != NATS_OK)
        return fail("connect", s);
    s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK)
        s = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
    if (s != NATS_OK)
        return fail("stream info", s);
    uint64_t last = si->State.LastSeq, first = si->State.FirstSeq, msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    fprintf(stderr, "nats-read: %s holds %llu messages (seq %llu..%llu)\n", stream,
            (unsigned long long)msgs, (unsigned long long)first, (unsigned long long)last);
    if (msgs == 0)
        goto out;
    char durable[64];
    snprintf(durable, sizeof(durable), "nats_read_%d", (int)getpid());
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Config.AckPolicy = js_AckNone;
    so.Config.DeliverPolicy = js_DeliverAll;
    so.Config.MaxRequestBatch = 0;
    s = js_PullSubscribe(&sub, js, filter, durable, NULL, &so, &jerr);
    if (s != NATS_OK)
        return fail("pull subscribe", s);
    uint64_t seen = 0;
    bool done = false;
    while (!done) {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, 4096, 5000, &jerr);
        if (s == NATS_TIMEOUT) {
            fprintf(stderr, "nats-read: no more messages after %llu (expected up to seq %llu)\n",
                    (unsigned long long)seen, (unsigned long long)last);
            break;
        }
        if (s != NATS_OK)
            return fail("fetch", s);
        for (int i = 0; i < list.Count; i++) {
            natsMsg *m = list.Msgs[i];
            jsMsgMetaData *meta = NULL;
            const char *id = NULL;
            if (natsMsg_GetMetaData(&meta, m) != NATS_OK)
                return fail("metadata", NATS_ERR);
            if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) != NATS_OK)
                id = "-";
            uint64_t seq = meta->Sequence.Stream;
            printf("%llu %s %s", (unsigned long long)seq, natsMsg_GetSubject(m), id);
            if (payload) {
                putchar(' ');
                fwrite(natsMsg_GetData(m), 1, (size_t)natsMsg_GetDataLength(m), stdout);
            }
            putchar('\n');
            jsMsgMetaData_Destroy(meta);
            seen++;
            if (seq >= last)
                done = true;
        }
        natsMsgList_Destroy(&list);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    js_DeleteConsumer(js, stream, durable, NULL, &jerr);
out:
    fflush(stdout);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}
