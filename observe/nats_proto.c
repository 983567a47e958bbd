/*
 * The NATS client protocol, server side of a publishing connection (docs/sinks.md, "Cost"):
 * https://docs.nats.io/reference/reference-protocols/nats-protocol. Control lines end in
 * CRLF; MSG and HMSG carry a payload of the announced length followed by CRLF.
 */
#include "nats_proto.h"

#include <string.h>

#include "soth/base.h"

#define PAYLOAD_MAX (64u << 20) /* far above any server's max_payload */
#define ARGS_MAX    5

static bool word_is(const char *w, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = w[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (c != name[i])
            return false;
    }
    return true;
}

static bool parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    if (len == 0 || len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/** Split line[0..len) on blanks into at most ARGS_MAX words: how many, or -1 for more. */
static int split(const char *line, size_t len, const char **w, size_t *wl)
{
    int k = 0;
    size_t i = 0;
    for (;;) {
        while (i < len && is_space(line[i]))
            i++;
        if (i == len)
            return k;
        if (k == ARGS_MAX)
            return -1;
        size_t s = i;
        while (i < len && !is_space(line[i]))
            i++;
        w[k] = line + s;
        wl[k] = i - s;
        k++;
    }
}

ssize_t nats_proto_parse(const char *p, size_t n, struct nats_op *op)
{
    size_t lim = n < NATS_PROTO_LINE_MAX ? n : NATS_PROTO_LINE_MAX;
    const char *nl = memchr(p, '\n', lim);
    if (nl == NULL)
        return n >= NATS_PROTO_LINE_MAX ? SOTH_E_MALFORMED : SOTH_E_INCOMPLETE;
    size_t line_len = (size_t)(nl - p);
    size_t taken = line_len + 1;
    if (line_len > 0 && p[line_len - 1] == '\r')
        line_len--;
    memset(op, 0, sizeof(*op));
    size_t nl_op = 0;
    while (nl_op < line_len && !is_space(p[nl_op]))
        nl_op++;
    const char *rest = p + nl_op;
    size_t rest_len = line_len - nl_op;
    while (rest_len > 0 && is_space(*rest)) {
        rest++;
        rest_len--;
    }
    if (word_is(p, nl_op, "PING")) {
        op->kind = NATS_OP_PING;
        return (ssize_t)taken;
    }
    if (word_is(p, nl_op, "PONG")) {
        op->kind = NATS_OP_PONG;
        return (ssize_t)taken;
    }
    if (word_is(p, nl_op, "+OK")) {
        op->kind = NATS_OP_OK;
        return (ssize_t)taken;
    }
    if (word_is(p, nl_op, "-ERR") || word_is(p, nl_op, "INFO")) {
        op->kind = p[0] == '-' ? NATS_OP_ERR : NATS_OP_INFO;
        op->arg = rest;
        op->arg_len = rest_len;
        return (ssize_t)taken;
    }
    bool hmsg = word_is(p, nl_op, "HMSG");
    if (!hmsg && !word_is(p, nl_op, "MSG"))
        return SOTH_E_MALFORMED;
    const char *w[ARGS_MAX];
    size_t wl[ARGS_MAX];
    int k = split(rest, rest_len, w, wl);
    int base = hmsg ? 4 : 3; /* subject sid [reply] [hdr len] total len */
    if (k != base && k != base + 1)
        return SOTH_E_MALFORMED;
    uint64_t total, hlen = 0, sid;
    if (!parse_u64(w[1], wl[1], UINT64_MAX / 2, &sid) ||
        !parse_u64(w[k - 1], wl[k - 1], PAYLOAD_MAX, &total))
        return SOTH_E_MALFORMED;
    if (hmsg && (!parse_u64(w[k - 2], wl[k - 2], total, &hlen) || hlen < 4))
        return SOTH_E_MALFORMED;
    op->kind = NATS_OP_MSG;
    op->subj = w[0];
    op->subj_len = wl[0];
    if (k == base + 1) {
        op->reply = w[2];
        op->reply_len = wl[2];
    }
    if (n - taken < total + 2)
        return SOTH_E_INCOMPLETE;
    const char *body = p + taken;
    if (body[total] != '\r' || body[total + 1] != '\n')
        return SOTH_E_MALFORMED;
    if (hmsg) {
        op->hdr = body;
        op->hdr_len = (size_t)hlen;
    }
    op->data = body + hlen;
    op->data_len = (size_t)(total - hlen);
    return (ssize_t)(taken + total + 2);
}

/** Where the value of `"key":` starts (blanks skipped), or NULL. */
static const char *json_value(const char *json, size_t len, const char *key)
{
    size_t kl = strlen(key);
    const char *end = json + len;
    for (const char *s = json; s + kl + 2 <= end; s++) {
        s = memchr(s, '"', (size_t)(end - s));
        if (s == NULL || s + kl + 2 > end)
            return NULL;
        if (memcmp(s + 1, key, kl) != 0 || s[kl + 1] != '"')
            continue;
        const char *v = s + kl + 2;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
            v++;
        if (v == end || *v != ':')
            continue;
        v++;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
            v++;
        return v;
    }
    return NULL;
}

bool nats_proto_json_u64(const char *json, size_t len, const char *key, uint64_t *out)
{
    const char *v = json_value(json, len, key);
    if (v == NULL)
        return false;
    const char *end = json + len, *d = v;
    while (d < end && *d >= '0' && *d <= '9')
        d++;
    return parse_u64(v, (size_t)(d - v), UINT64_MAX / 10, out);
}

bool nats_proto_json_true(const char *json, size_t len, const char *key)
{
    const char *v = json_value(json, len, key);
    return v != NULL && (size_t)(json + len - v) >= 4 && memcmp(v, "true", 4) == 0;
}

enum nats_ack nats_proto_ack(const struct nats_op *op)
{
    if (op->kind != NATS_OP_MSG)
        return NATS_ACK_RETRY;
    /* A status header ("NATS/1.0 503": no responders) is no answer from JetStream. */
    if (op->hdr != NULL && op->hdr_len > 8 && op->hdr[8] == ' ')
        return NATS_ACK_RETRY;
    const char *d = op->data;
    size_t n = op->data_len;
    if (json_value(d, n, "error") != NULL) {
        uint64_t code;
        return nats_proto_json_u64(d, n, "err_code", &code) && code != 0 ? NATS_ACK_REFUSED
                                                                         : NATS_ACK_RETRY;
    }
    uint64_t seq;
    return json_value(d, n, "stream") != NULL && nats_proto_json_u64(d, n, "seq", &seq)
               ? NATS_ACK_OK
               : NATS_ACK_RETRY;
}

bool nats_proto_subject_tail(const char *s, size_t len, uint64_t *out)
{
    size_t i = len;
    while (i > 0 && s[i - 1] != '.')
        i--;
    return parse_u64(s + i, len - i, UINT64_MAX / 10, out);
}
