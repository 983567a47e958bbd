/*
 * STUB, deleted when the QUIC Initial parser lands in proto/: the parser's interface, so that
 * core/quic.c builds before it. The stub recognises nothing (every datagram is "not an
 * Initial").
 */
#ifndef SOTH_CORE_QUIC_HELLO_STUB_H
#define SOTH_CORE_QUIC_HELLO_STUB_H

#include <stddef.h>
#include <stdint.h>

#include "soth/base.h"
#include "soth/tls.h"

#define SOTH_QUIC_HELLO_MAX     16384
#define SOTH_QUIC_DONE          0
#define SOTH_QUIC_E_NOT_INITIAL (-1100)

struct soth_quic_hello {
    uint32_t version;
    unsigned initial_packets;
    struct soth_tls_client_hello ch;
};

void soth_quic_hello_init(struct soth_quic_hello *q);
int soth_quic_hello_feed(struct soth_quic_hello *q, const void *dgram, size_t len);

#endif
