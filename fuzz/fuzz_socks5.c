/*
 * libFuzzer: the SOCKS5 greeting and request parser (proto/socks5.c).
 * Input: 1 byte of settings (the size of the pieces the second run is fed in, 1..16), then the
 * client's bytes. Checks, beyond "no crash, no out-of-bounds read" (each piece is fed from its
 * own exact heap copy so ASan sees a read past its end):
 *  - split independence: fed whole and fed in pieces, the same events at the same offsets, the
 *    same stage, target, reply and reason code;
 *  - a refusal carries a reply of 2 bytes (X'05 FF', greeting) or 10 (request, REP not 0),
 *    a reason code and a detail; a completed request is a CONNECT with a port and a host that
 *    prints within 255 bytes; nothing is consumed past the request.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "soth/proto/socks5.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

struct run {
    long greeting_at, request_at;
    bool failed;
    struct soth_socks5 s;
};

static void feed(const uint8_t *in, size_t n, size_t piece, struct run *r)
{
    soth_socks5_init(&r->s);
    r->greeting_at = r->request_at = -1;
    r->failed = false;
    size_t off = 0;
    while (off < n) {
        size_t end = off + piece < n ? off + piece : n;
        char *copy = malloc(end - off);
        CHECK(copy != NULL);
        memcpy(copy, in + off, end - off);
        size_t at = 0;
        bool stop = false;
        while (at < end - off && !stop) {
            enum soth_socks5_event ev;
            ssize_t rc = soth_socks5_feed(&r->s, copy + at, end - off - at, &ev);
            if (rc < 0) {
                CHECK(rc == SOTH_E_MALFORMED && r->s.stage == SOTH_SOCKS5_FAILED);
                r->failed = true;
                stop = true;
                break;
            }
            CHECK((size_t)rc <= end - off - at);
            at += (size_t)rc;
            if (ev == SOTH_SOCKS5_EV_GREETING) {
                CHECK(r->greeting_at == -1 && r->s.stage == SOTH_SOCKS5_REQUEST);
                r->greeting_at = (long)(off + at);
            } else if (ev == SOTH_SOCKS5_EV_REQUEST) {
                CHECK(r->request_at == -1 && r->s.stage == SOTH_SOCKS5_DONE);
                r->request_at = (long)(off + at);
                stop = true;
            } else {
                CHECK(at == end - off);
            }
        }
        free(copy);
        if (stop)
            return;
        off = end;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = 1 + (data[0] & 15);
    data++;
    size--;
    static struct run whole, part;
    feed(data, size, size ? size : 1, &whole);
    feed(data, size, piece, &part);

    CHECK(whole.greeting_at == part.greeting_at && whole.request_at == part.request_at);
    CHECK(whole.failed == part.failed && whole.s.stage == part.s.stage);
    if (whole.failed) {
        const struct soth_socks5 *a = &whole.s, *b = &part.s;
        CHECK(a->reason_code != NULL && a->detail != NULL && a->detail[0] != '\0');
        CHECK(strcmp(a->reason_code, b->reason_code) == 0);
        CHECK(a->reply_len == b->reply_len && memcmp(a->reply, b->reply, a->reply_len) == 0);
        CHECK(a->reply[0] == SOTH_SOCKS5_VERSION);
        if (a->reply_len == 2)
            CHECK(a->reply[1] == SOTH_SOCKS5_METHOD_NONE && whole.greeting_at == -1);
        else
            CHECK(a->reply_len == 10 && a->reply[1] != 0 && whole.greeting_at > 0);
    }
    if (whole.request_at >= 0) {
        const struct soth_socks5 *a = &whole.s, *b = &part.s;
        CHECK(a->cmd == SOTH_SOCKS5_CMD_CONNECT && a->port != 0);
        CHECK(a->atyp == b->atyp && a->addr_len == b->addr_len && a->port == b->port);
        CHECK(memcmp(a->addr, b->addr, a->addr_len) == 0);
        char host[256];
        bool v6;
        size_t n = soth_socks5_host(a, host, &v6);
        CHECK(n > 0 && n <= 255 && strlen(host) == n);
        enum soth_socks5_event ev;
        struct soth_socks5 done = *a;
        CHECK(soth_socks5_feed(&done, "\x05", 1, &ev) == 0 && ev == SOTH_SOCKS5_EV_NONE);
    }
    return 0;
}
