/* The proxy's own HTTP answers on a flow (core/answer.h): send, FIN, linger; the bytes come from
 * soth_h1_write_answer (proto/h1_write.c). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "soth/proto/h1.h"

#include "answer.h"
#include "conn.h"
#include "flow.h"
#include "iobuf.h"
#include "leg.h"
#include "timer.h"
#include "worker.h"

void flow_answer(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                 const char *body, size_t body_len, enum soth_close_reason reason)
{
    flow_answer_hdr(w, f, status, phrase, NULL, body, body_len, reason);
}

void flow_answer_hdr(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                     const char *extra, const char *body, size_t body_len,
                     enum soth_close_reason reason)
{
    struct conn *c = &f->c[SOTH_LEG_CLIENT];
    f->answer_reason = (uint8_t)reason;
    flow_set_state(f, FS_ANSWER);
    char *a = chunk_get(&w->io);
    ssize_t n = SOTH_E_NOMEM;
    if (a != NULL)
        n = soth_h1_write_answer_hdr(a, SOTH_BUF_SIZE, status, phrase, extra, true, body, body_len);
    if (n < 0) {
        if (a != NULL)
            chunk_put(&w->io, a);
        flow_close(w, f, reason);
        return;
    }
    struct soth_tls_conn *t = f->tls[SOTH_LEG_CLIENT];
    if (t != NULL) {
        /* Inside the client's TLS session (an upstream TLS failure): then close_notify. */
        int rc = leg_uncork(w, f, SOTH_LEG_CLIENT);
        if (rc == 0)
            rc = soth_tls_conn_write(t, a, (size_t)n) < 0 ? SOTH_E_TLS : 0;
        chunk_put(&w->io, a);
        if (rc < 0) {
            flow_close(w, f, reason);
            return;
        }
        soth_tls_conn_shutdown(t);
        if (!leg_queue_tls(w, f, SOTH_LEG_CLIENT)) {
            flow_close(w, f, reason);
            return;
        }
    } else {
        conn_queue(&w->segs, c, a, 0, (uint32_t)n, SEG_CHUNK); /* a chunk always has a seg */
    }
    c->shut_pending = true;
    timer_set(&w->timers, &f->timer, now_ms() + SOTH_ANSWER_MS);
    conn_try_send(w, f, SOTH_LEG_CLIENT);
}

void flow_answer_text(struct worker *w, struct flow *f, unsigned status, const char *phrase,
                      enum soth_close_reason reason, const char *fmt, ...)
{
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(body))
        n = sizeof(body) - 1;
    flow_answer(w, f, status, phrase, body, (size_t)n, reason);
}

bool answer_established(struct worker *w, struct flow *f)
{
    static char established[] = "HTTP/1.1 200 Connection Established\r\n\r\n";
    /* The client queue is empty here: nothing from the upstream has been read yet. */
    if (!conn_queue(&w->segs, &f->c[SOTH_LEG_CLIENT], established, 0, sizeof(established) - 1,
                    SEG_STATIC))
        return false;
    conn_try_send(w, f, SOTH_LEG_CLIENT);
    return true;
}

void answer_fin_sent(struct worker *w, struct flow *f)
{
    flow_set_state(f, FS_LINGER);
    if (f->c[SOTH_LEG_CLIENT].eof_in) {
        answer_end(w, f);
        return;
    }
    timer_set(&w->timers, &f->timer, now_ms() + SOTH_LINGER_MS);
    conn_arm_recv(w, f, SOTH_LEG_CLIENT);
}

void answer_end(struct worker *w, struct flow *f)
{
    flow_close(w, f, (enum soth_close_reason)f->answer_reason);
}
