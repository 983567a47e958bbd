/*
 * The NATS protocol reader of the NATS sink's publishing connection (observe/nats_proto.c,
 * docs/sinks.md "Cost"): operations fed whole, byte by byte, split at every offset; the
 * JetStream acks.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "../../observe/nats_proto.c"

static const char STREAM[] =
    "INFO {\"server_id\":\"N\",\"headers\":true,\"max_payload\":1048576}\r\n"
    "MSG _INBOX.r.1.64 1 33\r\n{\"stream\":\"SOTH_EVENTS\",\"seq\":64}\r\n"
    "PING\r\n"
    "HMSG _INBOX.r.1.65 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    "+OK\r\n"
    "msg _INBOX.r.1.66 1 81\r\n"
    "{\"error\":{\"code\":503,\"err_code\":10077,\"description\":\"maximum messages "
    "exceeded\"}}\r\n"
    "PONG\r\n"
    "-ERR 'Stale Connection'\r\n";

static const enum nats_op_kind KINDS[] = {NATS_OP_INFO, NATS_OP_MSG, NATS_OP_PING, NATS_OP_MSG,
                                          NATS_OP_OK,   NATS_OP_MSG, NATS_OP_PONG, NATS_OP_ERR};
static const enum nats_ack ACKS[] = {NATS_ACK_RETRY, NATS_ACK_OK,    NATS_ACK_RETRY,
                                     NATS_ACK_RETRY, NATS_ACK_RETRY, NATS_ACK_REFUSED,
                                     NATS_ACK_RETRY, NATS_ACK_RETRY};
#define N_OPS (sizeof(KINDS) / sizeof(KINDS[0]))

/* Feed STREAM in chunks of `step` bytes (0: at `split`, then the rest) as the sink does: parse
 * what is complete, keep the rest. Checks every operation and its ack reading. */
static void feed(size_t step, size_t split)
{
    char buf[sizeof(STREAM)];
    size_t have = 0, fed = 0, total = sizeof(STREAM) - 1, k = 0;
    while (fed < total || have > 0) {
        size_t add = step ? step : (fed == 0 ? split : total - fed);
        if (add > total - fed)
            add = total - fed;
        memcpy(buf + have, STREAM + fed, add);
        have += add;
        fed += add;
        size_t off = 0;
        for (;;) {
            struct nats_op op;
            ssize_t r = nats_proto_parse(buf + off, have - off, &op);
            if (r == SOTH_E_INCOMPLETE)
                break;
            cr_assert_gt(r, 0, "at op %zu", k);
            cr_assert_lt(k, N_OPS);
            cr_assert_eq(op.kind, KINDS[k], "op %zu", k);
            cr_assert_eq(nats_proto_ack(&op), ACKS[k], "op %zu", k);
            if (k == 1) {
                uint64_t g = 0;
                cr_assert(nats_proto_subject_tail(op.subj, op.subj_len, &g));
                cr_assert_eq(g, 64);
                cr_assert_null(op.reply);
            }
            off += (size_t)r;
            k++;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        if (fed == total && off == 0)
            break;
    }
    cr_assert_eq(k, N_OPS);
    cr_assert_eq(have, 0);
}

Test(nats_proto, whole_byte_by_byte_and_split_everywhere)
{
    feed(sizeof(STREAM), 0);
    feed(1, 0);
    for (size_t s = 1; s < sizeof(STREAM) - 1; s++)
        feed(0, s);
}

Test(nats_proto, msg_fields_and_reply)
{
    const char in[] = "MSG a.b 7 _INBOX.x.42 5\r\nhello\r\n";
    struct nats_op op;
    cr_assert_eq(nats_proto_parse(in, sizeof(in) - 1, &op), (ssize_t)(sizeof(in) - 1));
    cr_assert_eq(op.subj_len, 3);
    cr_assert_eq(memcmp(op.subj, "a.b", 3), 0);
    cr_assert_eq(op.reply_len, 11);
    cr_assert_eq(op.data_len, 5);
    cr_assert_eq(memcmp(op.data, "hello", 5), 0);
    cr_assert_null(op.hdr);
}

Test(nats_proto, refuses_malformed)
{
    static const char *const bad[] = {
        "MSG a 1\r\n",             /* no length */
        "MSG a 1 x 2 3\r\n",       /* too many arguments */
        "MSG a 1 -3\r\n",          /* not a number */
        "MSG a 1 3\r\nabcXY",      /* payload not followed by CRLF */
        "HMSG a 1 9 3\r\nabc\r\n", /* header longer than the total */
        "MSG a 1 99999999999\r\n", /* over any payload */
        "BOGUS\r\n",               /* unknown operation */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct nats_op op;
        cr_assert_eq(nats_proto_parse(bad[i], strlen(bad[i]), &op), SOTH_E_MALFORMED, "%s", bad[i]);
    }
    /* A control line that never ends is refused once it is over the bound. */
    static char longline[NATS_PROTO_LINE_MAX + 1];
    memset(longline, 'I', sizeof(longline));
    struct nats_op op;
    cr_assert_eq(nats_proto_parse(longline, sizeof(longline), &op), SOTH_E_MALFORMED);
    cr_assert_eq(nats_proto_parse(longline, 100, &op), SOTH_E_INCOMPLETE);
}

Test(nats_proto, acks)
{
    struct nats_op op = {.kind = NATS_OP_MSG};
    const char *dup = "{\"stream\":\"S\", \"seq\" : 9, \"duplicate\":true}";
    op.data = dup;
    op.data_len = strlen(dup);
    cr_assert_eq(nats_proto_ack(&op), NATS_ACK_OK);
    const char *zero = "{\"error\":{\"code\":500,\"err_code\":0,\"description\":\"x\"}}";
    op.data = zero;
    op.data_len = strlen(zero);
    cr_assert_eq(nats_proto_ack(&op), NATS_ACK_RETRY);
    const char *junk = "{\"stream\":\"S\"}";
    op.data = junk;
    op.data_len = strlen(junk);
    cr_assert_eq(nats_proto_ack(&op), NATS_ACK_RETRY);
    uint64_t v;
    const char *info = "{\"headers\":true,\"max_payload\":8388608,\"tls_required\":false}";
    cr_assert(nats_proto_json_u64(info, strlen(info), "max_payload", &v));
    cr_assert_eq(v, 8388608);
    cr_assert(nats_proto_json_true(info, strlen(info), "headers"));
    cr_assert_not(nats_proto_json_true(info, strlen(info), "tls_required"));
    cr_assert_not(nats_proto_subject_tail("a.b.", 4, &v));
}
