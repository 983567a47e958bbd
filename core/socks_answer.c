/* The SOCKS5 replies on a flow (core/socks_answer.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>

#include "soth/proto/socks5.h"

#include "answer.h"
#include "conn.h"
#include "flow.h"
#include "iobuf.h"
#include "socks_answer.h"
#include "timer.h"
#include "worker.h"

/* Static bytes for conn_queue (SEG_STATIC): the method selection and every refusal, each
 * with the bound address 0.0.0.0:0 (RFC 1928 6). */
static char method_noauth[2] = {SOTH_SOCKS5_VERSION, SOTH_SOCKS5_METHOD_NOAUTH};
static char method_none[2] = {SOTH_SOCKS5_VERSION, (char)SOTH_SOCKS5_METHOD_NONE};
#define REFUSAL(rep)                                                                               \
    {                                                                                              \
        SOTH_SOCKS5_VERSION, rep, 0, SOTH_SOCKS5_ATYP_IPV4, 0, 0, 0, 0, 0, 0                       \
    }
static char refusals[9][10] = {REFUSAL(0), REFUSAL(1), REFUSAL(2), REFUSAL(3), REFUSAL(4),
                               REFUSAL(5), REFUSAL(6), REFUSAL(7), REFUSAL(8)};

/** Our refusal, then FIN and the linger of core/answer.c (FS_ANSWER), so the client reads it
 *  before the close instead of a reset. */
static void refuse(struct worker *w, struct flow *f, char *bytes, uint32_t len,
                   enum soth_close_reason reason)
{
    struct conn *c = &f->c[SOTH_LEG_CLIENT];
    if (f->head != NULL) {
        chunk_put(&w->io, f->head);
        f->head = NULL;
    }
    f->answer_reason = (uint8_t)reason;
    flow_set_state(f, FS_ANSWER);
    if (!conn_queue(&w->segs, c, bytes, 0, len, SEG_STATIC)) {
        flow_close(w, f, reason);
        return;
    }
    c->shut_pending = true;
    timer_set(&w->timers, &f->timer, now_ms() + SOTH_ANSWER_MS);
    conn_try_send(w, f, SOTH_LEG_CLIENT);
}

void socks_refuse(struct worker *w, struct flow *f, enum soth_socks5_rep rep,
                  enum soth_close_reason reason)
{
    refuse(w, f, refusals[rep], sizeof(refusals[rep]), reason);
}

bool socks_established(struct worker *w, struct flow *f)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    uint8_t out[22];
    size_t n;
    if (getsockname(f->c[SOTH_LEG_UPSTREAM].fd, (struct sockaddr *)&ss, &sl) == 0 &&
        ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        n = soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, a->sin6_addr.s6_addr, 16,
                              ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        n = soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, (const uint8_t *)&a->sin_addr, 4,
                              ntohs(a->sin_port));
    } else {
        n = soth_socks5_reply(out, SOTH_SOCKS5_REP_SUCCEEDED, NULL, 0, 0);
    }
    /* The client queue is empty here: nothing from the upstream has been read yet. */
    if (!conn_queue_copy(&w->segs, &f->c[SOTH_LEG_CLIENT], (const char *)out, n))
        return false;
    conn_try_send(w, f, SOTH_LEG_CLIENT);
    return true;
}

void socks_failed(struct worker *w, struct flow *f, int err, bool timeout)
{
    enum soth_socks5_rep rep = SOTH_SOCKS5_REP_GENERAL_FAILURE;
    if (timeout)
        rep = SOTH_SOCKS5_REP_TTL_EXPIRED;
    else if (err == -ECONNREFUSED)
        rep = SOTH_SOCKS5_REP_REFUSED;
    else if (err == -ENETUNREACH)
        rep = SOTH_SOCKS5_REP_NET_UNREACHABLE;
    else if (err == -EHOSTUNREACH || err == -ENOENT || err == -ETIMEDOUT)
        rep = SOTH_SOCKS5_REP_HOST_UNREACHABLE; /* also a name that does not resolve */
    socks_refuse(w, f, rep, SOTH_CLOSE_UPSTREAM_CONNECT_FAILED);
}

void socks_refuse_greeting(struct worker *w, struct flow *f)
{
    refuse(w, f, method_none, sizeof(method_none), SOTH_CLOSE_PARSE_FAILED);
}

bool socks_method(struct worker *w, struct flow *f)
{
    if (!conn_queue(&w->segs, &f->c[SOTH_LEG_CLIENT], method_noauth, 0, sizeof(method_noauth),
                    SEG_STATIC))
        return false;
    conn_try_send(w, f, SOTH_LEG_CLIENT);
    return true;
}
