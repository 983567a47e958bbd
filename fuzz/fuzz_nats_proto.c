/*
 * libFuzzer: arbitrary bytes as what a NATS server sends on the NATS sink's publishing
 * connection (observe/nats_proto.c, docs/sinks.md "Cost"), parsed as the sink does: one
 * operation after another from the start, the rest kept when it is incomplete. Every operation
 * must lie inside the input, and the ack reading must take any payload.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../observe/nats_proto.c"

static void inside(const char *p, size_t n, const char *q, size_t len)
{
    if (q == NULL ? len != 0 : q < p || q + len > p + n)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly `size` bytes, so that ASan sees any read past the end. */
    char *p = malloc(size ? size : 1);
    memcpy(p, data, size);
    size_t off = 0;
    while (off < size) {
        struct nats_op op;
        ssize_t r = nats_proto_parse(p + off, size - off, &op);
        if (r <= 0) {
            if (r != SOTH_E_INCOMPLETE && r != SOTH_E_MALFORMED)
                __builtin_trap();
            break;
        }
        if ((size_t)r > size - off || op.kind >= NATS_OP_COUNT)
            __builtin_trap();
        const char *q = p + off;
        size_t n = (size_t)r;
        inside(q, n, op.arg, op.arg_len);
        inside(q, n, op.subj, op.subj_len);
        inside(q, n, op.reply, op.reply_len);
        inside(q, n, op.hdr, op.hdr_len);
        inside(q, n, op.data, op.data_len);
        uint64_t v;
        enum nats_ack a = nats_proto_ack(&op);
        if (a != NATS_ACK_OK && a != NATS_ACK_RETRY && a != NATS_ACK_REFUSED)
            __builtin_trap();
        if (op.subj != NULL)
            (void)nats_proto_subject_tail(op.subj, op.subj_len, &v);
        if (op.arg != NULL) {
            (void)nats_proto_json_u64(op.arg, op.arg_len, "max_payload", &v);
            (void)nats_proto_json_true(op.arg, op.arg_len, "headers");
        }
        off += n;
    }
    free(p);
    return 0;
}
