/* Bytes toward one leg of a flow, through its TLS session when it has one (core/leg.h). */
#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "leg.h"
#include "worker.h"

bool leg_queue_tls(struct worker *w, struct flow *f, unsigned side)
{
    struct soth_tls_conn *t = f->tls[side];
    struct soth_iov iov;
    size_t n;
    while (t != NULL && (n = soth_tls_conn_out(t, &iov)) > 0) {
        if (!conn_queue_copy(&w->segs, &f->c[side], iov.base, n))
            return false;
        soth_tls_conn_out_consume(t, n);
    }
    return true;
}

bool leg_flush(struct worker *w, struct flow *f, unsigned side)
{
    if (!leg_queue_tls(w, f, side))
        return false;
    conn_try_send(w, f, side);
    return true;
}

bool leg_budget(void *ctx, uint32_t stream_id, uint32_t *retry_s)
{
    struct flow *f = ctx;
    return flow_budget_request(f->w, f, stream_id, retry_s);
}

void leg_budget_bytes(void *ctx, uint64_t n)
{
    struct flow *f = ctx;
    soth_budget_add_bytes(f->bgt, f->w->idx, f->identity, f->budget_slot, now_ms(), n);
}

int leg_send(void *ctx, unsigned side, const char *p, size_t n)
{
    struct flow *f = ctx;
    if (f->tls[side] != NULL)
        return soth_tls_conn_write(f->tls[side], p, n) < 0 ? SOTH_E_TLS : 0;
    return conn_queue_copy(&f->w->segs, &f->c[side], p, n) ? 0 : SOTH_E_NOMEM;
}
