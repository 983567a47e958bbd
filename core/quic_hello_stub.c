/* STUB, deleted when the QUIC Initial parser lands in proto/ (core/quic_hello_stub.h). */
#include <string.h>

#include "quic_hello_stub.h"

void soth_quic_hello_init(struct soth_quic_hello *q)
{
    memset(q, 0, sizeof(*q));
}

int soth_quic_hello_feed(struct soth_quic_hello *q, const void *dgram, size_t len)
{
    (void)q;
    (void)dgram;
    (void)len;
    return SOTH_QUIC_E_NOT_INITIAL;
}
