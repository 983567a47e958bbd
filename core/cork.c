/* The worker's cork of small plaintext writes toward one TLS leg (core/leg.h). Apart from
 * core/leg.c so that core/conn.c, which flushes it before a leg's send, links without the rest
 * of the engine (soth_core_pieces). */
#include "soth/base.h"
#include "soth/tls.h"

#include "flow.h"
#include "leg.h"
#include "worker.h"

int leg_uncork(struct worker *w, struct flow *f, unsigned side)
{
    struct leg_cork *k = &w->cork;
    if (k->f != f || k->side != side)
        return 0;
    uint32_t n = k->len;
    k->f = NULL;
    k->len = 0;
    if (f->tls[side] == NULL)
        return 0; /* the session is gone with what was written into it */
    return soth_tls_conn_write(f->tls[side], k->buf, n) < 0 ? SOTH_E_TLS : 0;
}

bool leg_cork_drop(struct worker *w, struct flow *f)
{
    struct leg_cork *k = &w->cork;
    if (k->f != f)
        return false;
    bool up = k->side == SOTH_LEG_UPSTREAM;
    k->f = NULL;
    k->len = 0;
    return up;
}
