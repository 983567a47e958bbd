/* Bytes toward one leg of a flow, through its TLS session when it has one (core/leg.h). */
#include <string.h>

#include "conn.h"
#include "decide.h"
#include "flow.h"
#include "iobuf.h"
#include "leg.h"
#include "worker.h"

/* Ciphertext straight from wolfSSL's record buffer into the leg's send queue (owned chunks of
 * the worker): the one copy out of wolfSSL (docs/tls.md, "Memory I/O"). */
static int leg_sink(struct flow *f, unsigned side, const void *p, size_t n)
{
    return conn_queue_copy(&f->w->segs, &f->c[side], p, n) ? 0 : SOTH_E_NOMEM;
}

static int leg_sink_client(void *ctx, const void *p, size_t n)
{
    return leg_sink(ctx, SOTH_LEG_CLIENT, p, n);
}

static int leg_sink_upstream(void *ctx, const void *p, size_t n)
{
    return leg_sink(ctx, SOTH_LEG_UPSTREAM, p, n);
}

/* Room for a whole record at the end of the leg's send queue, which wolfSSL encrypts in place:
 * the record's only copy is the one encryption makes (docs/tls.md, "Memory I/O"). */
static void *leg_reserve_client(void *ctx, size_t n)
{
    struct flow *f = ctx;
    return conn_reserve(&f->w->segs, &f->c[SOTH_LEG_CLIENT], n);
}

static void leg_commit_client(void *ctx, size_t n)
{
    struct flow *f = ctx;
    conn_commit(&f->w->segs, &f->c[SOTH_LEG_CLIENT], n);
}

static void *leg_reserve_upstream(void *ctx, size_t n)
{
    struct flow *f = ctx;
    return conn_reserve(&f->w->segs, &f->c[SOTH_LEG_UPSTREAM], n);
}

static void leg_commit_upstream(void *ctx, size_t n)
{
    struct flow *f = ctx;
    conn_commit(&f->w->segs, &f->c[SOTH_LEG_UPSTREAM], n);
}

bool leg_queue_tls(struct worker *w, struct flow *f, unsigned side)
{
    struct soth_tls_conn *t = f->tls[side];
    struct soth_iov iov;
    size_t n;
    if (t == NULL)
        return true;
    if (leg_uncork(w, f, side) < 0)
        return false;
    /* What the conn queued before it had a sink (its first flight, a conn from the pool). */
    while ((n = soth_tls_conn_out(t, &iov)) > 0) {
        if (!conn_queue_copy(&w->segs, &f->c[side], iov.base, n))
            return false;
        soth_tls_conn_out_consume(t, n);
    }
    /* Once established, its ciphertext lands in f->c[side] as it is written, after what is
     * queued there, so order holds (handshake flights keep the queue: a failure there stays a
     * handshake failure). flow.c clears the sink when the conn outlives the flow. */
    if (soth_tls_conn_sink_ctx(t) != f && soth_tls_conn_is_established(t)) {
        bool client = side == SOTH_LEG_CLIENT;
        soth_tls_conn_set_sink(t, client ? leg_sink_client : leg_sink_upstream, f);
        soth_tls_conn_set_sink_room(t, client ? leg_reserve_client : leg_reserve_upstream,
                                    client ? leg_commit_client : leg_commit_upstream);
    }
    return true;
}

int leg_close_notify(struct worker *w, struct flow *f, unsigned side)
{
    int rc = leg_uncork(w, f, side);
    soth_tls_conn_shutdown(f->tls[side]);
    return rc;
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

void leg_replay_free(struct worker *w, struct flow *f)
{
    for (unsigned i = 0; i < FLOW_REPLAY_CHUNKS; i++) {
        if (f->replay[i] != NULL)
            chunk_put(&w->io, f->replay[i]);
        f->replay[i] = NULL;
    }
    f->replay_len = 0;
}

/* Keep plaintext sent upstream for a retry, in owned chunks of the worker (no malloc once they
 * are pooled). False: more than FLOW_REPLAY_MAX or no chunk to be had. */
static bool replay_put(struct worker *w, struct flow *f, const char *p, size_t n)
{
    if (n > FLOW_REPLAY_MAX - f->replay_len)
        return false;
    while (n > 0) {
        unsigned i = f->replay_len / SOTH_BUF_SIZE;
        uint32_t off = f->replay_len % SOTH_BUF_SIZE;
        if (f->replay[i] == NULL && (f->replay[i] = chunk_get(&w->io)) == NULL)
            return false;
        size_t k = SOTH_BUF_SIZE - off < n ? SOTH_BUF_SIZE - off : n;
        memcpy(f->replay[i] + off, p, k);
        f->replay_len += (uint32_t)k;
        p += k;
        n -= k;
    }
    return true;
}

/* Plaintext into a TLS leg: small writes wait in the worker's cork for the leg's flush, so a
 * head and a small body leave as one record (docs/performance.md "Records per response"). */
static int leg_write_tls(struct worker *w, struct flow *f, unsigned side, const char *p, size_t n)
{
    struct leg_cork *k = &w->cork;
    if (k->f != NULL && (k->f != f || k->side != side)) {
        /* Another leg's bytes go first. Every pass flushes its legs, so this is a flow's
         * other leg; another flow's would be sent on the spot. */
        struct flow *o = k->f;
        unsigned os = k->side;
        int rc = leg_uncork(w, o, os);
        if (o != f && rc == 0)
            conn_try_send(w, o, os);
        if (rc < 0 && o == f)
            return rc;
    }
    if (n <= LEG_CORK_WRITE && soth_tls_conn_is_established(f->tls[side])) {
        if (n > LEG_CORK_CAP - k->len) {
            int rc = leg_uncork(w, f, side);
            if (rc < 0)
                return rc;
        }
        memcpy(k->buf + k->len, p, n);
        k->len += (uint32_t)n;
        k->f = f;
        k->side = (uint8_t)side;
        return 0;
    }
    int rc = leg_uncork(w, f, side);
    if (rc < 0)
        return rc;
    return soth_tls_conn_write(f->tls[side], p, n) < 0 ? SOTH_E_TLS : 0;
}

int leg_send(void *ctx, unsigned side, const char *p, size_t n)
{
    struct flow *f = ctx;
    if (side == SOTH_LEG_UPSTREAM && f->up_pooled && !f->up_heard && !f->up_retried &&
        !f->up_replay_over && !replay_put(f->w, f, p, n)) {
        f->up_replay_over = true; /* no retry then (docs/http1.md "Upstream connection pool") */
        leg_replay_free(f->w, f);
    }
    if (side == SOTH_LEG_UPSTREAM && f->up_redial != UP_REDIAL_NONE) {
        if (f->up_wake || !up_redialing(f->up_redial))
            return SOTH_E_CLOSED; /* a parked leg: the HTTP/2 layer has no session for it */
        return f->up_replay_over ? SOTH_E_NOMEM : 0; /* sent from the replay once it is up */
    }
    if (f->tls[side] != NULL)
        return leg_write_tls(f->w, f, side, p, n);
    return conn_queue_copy(&f->w->segs, &f->c[side], p, n) ? 0 : SOTH_E_NOMEM;
}
