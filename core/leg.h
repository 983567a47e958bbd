/*
 * Private to core/: bytes toward one leg of a flow, whatever it speaks. A leg with a TLS
 * session (f->tls[side], intercepting) takes plaintext into the session and its ciphertext
 * into the socket's send queue; a plain leg takes the bytes into the queue as they are.
 */
#ifndef SOTH_CORE_LEG_H
#define SOTH_CORE_LEG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct worker;
struct flow;

/*
 * docs/performance.md "Records per response": the small plaintext writes an HTTP layer makes
 * toward one TLS leg while it handles one input (an HTTP/1.1 head, then its body, chunk framing)
 * are gathered here and encrypted as one record when the leg is flushed, instead of one record
 * each. One per worker: a pass writes toward one leg at a time, and a write toward another leg
 * encrypts what is gathered first.
 */
#define LEG_CORK_CAP   16384u /* a whole TLS record's plaintext */
#define LEG_CORK_WRITE 4096u  /* larger writes are encrypted as they come */

struct leg_cork {
    struct flow *f; /* owner, NULL when empty */
    uint8_t side;
    uint32_t len;
    char buf[LEG_CORK_CAP];
};

/** Move the ciphertext f->tls[side] has ready into side's send queue (nothing is sent yet).
 *  False when chunks ran out. */
bool leg_queue_tls(struct worker *w, struct flow *f, unsigned side);
/** close_notify into side's TLS session, after what the worker's cork holds for it. Returns
 *  leg_uncork's result (a failure there fails the session's shutdown too). */
int leg_close_notify(struct worker *w, struct flow *f, unsigned side);

/** leg_queue_tls, then send what is queued toward side. False when chunks ran out. */
bool leg_flush(struct worker *w, struct flow *f, unsigned side);

/** The HTTP layer's app_env.send (ctx is the flow): plaintext toward side, through its TLS
 *  session when it has one; queued, not sent (leg_flush). 0 or a negative SOTH_E_*. */
int leg_send(void *ctx, unsigned side, const char *p, size_t n);
/** Encrypt what the worker's cork holds for f's side (if anything) into its TLS session, ahead
 *  of any other output of that session (every path that writes, shuts down or sends on a TLS
 *  leg calls it first). 0 or a negative SOTH_E_*. */
int leg_uncork(struct worker *w, struct flow *f, unsigned side);
/** The flow ends: drop what its cork holds (nothing of it would be sent). True if it held
 *  bytes toward the upstream. */
bool leg_cork_drop(struct worker *w, struct flow *f);
/** Drop a pooled leg's replay (docs/http1.md "Upstream connection pool"). */
void leg_replay_free(struct worker *w, struct flow *f);
/** app_env.budget for a flow (core/decide.c flow_budget_request). */
bool leg_budget(void *ctx, uint32_t stream_id, uint32_t *retry_s);
/** app_env.budget_bytes for a flow: body bytes against its budget. */
void leg_budget_bytes(void *ctx, uint64_t n);

#endif
