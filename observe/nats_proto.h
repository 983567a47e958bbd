/*
 * The part of the NATS client protocol the NATS sink speaks itself (docs/sinks.md, "Cost"):
 * what a server sends on a publishing connection, one operation at a time, and the JetStream
 * publish acks. Private to observe/; no I/O, no allocation.
 */
#ifndef SOTH_NATS_PROTO_H
#define SOTH_NATS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum nats_op_kind {
    NATS_OP_INFO = 0, /* arg: the JSON object */
    NATS_OP_MSG,      /* subj, reply, hdr (HMSG only), data */
    NATS_OP_PING,
    NATS_OP_PONG,
    NATS_OP_OK,
    NATS_OP_ERR, /* arg: the server's text, quotes included */
    NATS_OP_COUNT
};

struct nats_op {
    enum nats_op_kind kind;
    const char *arg; /* INFO, -ERR */
    size_t arg_len;
    const char *subj; /* MSG, HMSG */
    size_t subj_len;
    const char *reply; /* MSG, HMSG: NULL when there is none */
    size_t reply_len;
    const char *hdr; /* HMSG: the header block ("NATS/1.0 ...\r\n...\r\n\r\n"); else NULL */
    size_t hdr_len;
    const char *data; /* MSG, HMSG: the payload */
    size_t data_len;
};

/** Longest control line accepted (INFO of a large cluster included). */
#define NATS_PROTO_LINE_MAX 32768u

/**
 * Parse the operation at the start of p[0..n). Returns the bytes it takes (> 0, pointers in
 * op point into p), SOTH_E_INCOMPLETE when more bytes are needed, or SOTH_E_MALFORMED (the
 * connection is not worth keeping: unknown operation, bad numbers, a control line over
 * NATS_PROTO_LINE_MAX).
 */
ssize_t nats_proto_parse(const char *p, size_t n, struct nats_op *op);

enum nats_ack { NATS_ACK_OK = 0, NATS_ACK_RETRY, NATS_ACK_REFUSED };

/**
 * What a reply to a JetStream publish says: stored (a PubAck, duplicate or not), refused by
 * JetStream (an API error with a non-zero err_code: counted, not re-sent), or anything else
 * (no responders while JetStream starts, a status header, something unreadable): re-send.
 */
enum nats_ack nats_proto_ack(const struct nats_op *op);

/** The decimal number that ends subject s (after its last '.'): false when there is none. */
bool nats_proto_subject_tail(const char *s, size_t len, uint64_t *out);

/** Value of the numeric field `"key":N` of a JSON object text: false when missing. */
bool nats_proto_json_u64(const char *json, size_t len, const char *key, uint64_t *out);

/** Is the JSON field `"key":true` in the object text? */
bool nats_proto_json_true(const char *json, size_t len, const char *key);

#endif
