/*
 * QUIC client Initial reader (docs/http3.md, "What the proxy reads"): SNI and ALPN of a QUIC
 * flow from the client's Initial packets, for QUIC v1 (RFC 9000, RFC 9001) and v2 (RFC 9369).
 *
 * Only the client's Initial packets are ever decrypted: their keys derive from the Destination
 * Connection ID any on-path observer sees (RFC 9001 5.2). Header protection is removed, the
 * payload is opened with AES-128-GCM, the frames are walked, and the CRYPTO frames are
 * reassembled by offset (out of order, overlapping, over several packets and datagrams) until
 * the ClientHello is complete; soth_tls_parse_client_hello_msg() reads it. 0-RTT, Handshake
 * and 1-RTT packets and everything the server sends are never opened.
 *
 * The state is one caller-owned struct per QUIC flow, used until the hello is read; feeding
 * never allocates. Lives in soth_tls because it needs wolfSSL's crypto and the ClientHello
 * parser, both inside this module.
 */
#ifndef SOTH_QUIC_H
#define SOTH_QUIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "soth/base.h"
#include "soth/tls.h"

/* ---- results beyond enum soth_err (next to SOTH_TLS_E_NOT_TLS) */
enum {
    SOTH_QUIC_DONE = 0,              /* the ClientHello is complete: q->ch is filled */
    SOTH_QUIC_E_NOT_INITIAL = -1101, /* first datagram: no long-header Initial of v1 or v2 */
};

#define SOTH_QUIC_V1 0x00000001u /* RFC 9000 */
#define SOTH_QUIC_V2 0x6b3343cfu /* RFC 9369 */

#define SOTH_QUIC_HELLO_MAX  16384 /* reassembly bound for the ClientHello (header included) */
#define SOTH_QUIC_PACKET_MAX 2048  /* longest Initial packet read (larger: SOTH_E_TOO_LARGE) */
#define SOTH_QUIC_CID_MAX    20    /* RFC 9000 17.2: connection IDs of v1 and v2 */

/**
 * One QUIC flow's reader, caller-owned, until the hello is read (about 18.5 KiB). Not moved or
 * copied after SOTH_QUIC_DONE: q->ch points into it.
 */
struct soth_quic_hello {
    /* Private: reassembly of the CRYPTO stream of the Initial packet number space */
    uint8_t buf[SOTH_QUIC_HELLO_MAX];      /* stream bytes [0, SOTH_QUIC_HELLO_MAX) */
    uint8_t have[SOTH_QUIC_HELLO_MAX / 8]; /* bitmap: which bytes of buf arrived */
    uint32_t contig;                       /* bytes [0, contig) all arrived */
    uint32_t need;                         /* hello length (header included) once known, else 0 */
    int64_t largest_pn;                    /* largest Initial packet number opened, -1 = none */
    int rc;                                /* sticky result: SOTH_E_INCOMPLETE while reading */
    bool keyed;                            /* keys derived: the first Initial was opened */
    uint8_t dcid_len;
    uint8_t dcid[SOTH_QUIC_CID_MAX]; /* DCID of the first Initial: what the keys derive from */
    uint8_t key[16];                 /* client Initial AEAD key (AES-128-GCM) */
    uint8_t iv[12];                  /* client Initial AEAD IV */
    uint8_t hp[16];                  /* client Initial header protection key (AES-128) */

    /* Out, valid after SOTH_QUIC_DONE */
    uint32_t version;                /* SOTH_QUIC_V1 or SOTH_QUIC_V2 */
    unsigned initial_packets;        /* Initial packets with CRYPTO frames the hello took */
    struct soth_tls_client_hello ch; /* sni / alpn iovs point into buf */
};

/**
 * A cheap look at a datagram, no crypto: does it start with a long-header Initial packet of
 * QUIC v1 or v2 whose lengths fit (the shape soth_quic_hello_feed() wants first)? Lets a caller
 * skip setting up a reader for datagrams that can never be a QUIC flow's first one.
 */
bool soth_quic_is_initial(const void *dgram, size_t len);

/** Ready q for a new flow (no allocation). */
void soth_quic_hello_init(struct soth_quic_hello *q);

/**
 * Feed one client-to-server UDP datagram, in arrival order. Packets coalesced in a datagram
 * are walked (RFC 9000 12.2): Initial packets are opened, 0-RTT and Handshake packets skipped,
 * a short-header packet or trailing bytes that are no packet of the flow's version end the
 * datagram. The first datagram must start with an Initial; it fixes the version and the DCID
 * the keys derive from (RFC 9001 5.2). A later Initial that does not open (wrong keys, a
 * corrupted or forged packet) is dropped as RFC 9001 5.5 asks, not an error.
 *
 * Returns
 *  - SOTH_QUIC_DONE: the ClientHello is complete; q->version, q->initial_packets and q->ch
 *    are filled;
 *  - SOTH_E_INCOMPLETE: feed the next datagram;
 *  - SOTH_QUIC_E_NOT_INITIAL: the first datagram is no long-header Initial of QUIC v1 or v2
 *    (another version, a short header, 0-RTT/Handshake first, garbage);
 *  - SOTH_E_MALFORMED: the first Initial does not open, or an opened Initial breaks RFC 9000
 *    (a frame type not allowed in Initial packets, bad lengths, reserved bits set, CRYPTO bytes
 *    that differ where frames overlap), or the hello is no valid ClientHello;
 *  - SOTH_E_TOO_LARGE: a hello over SOTH_QUIC_HELLO_MAX, or an Initial packet over
 *    SOTH_QUIC_PACKET_MAX.
 * Every result but SOTH_E_INCOMPLETE is final: later feeds return it again without reading.
 */
int soth_quic_hello_feed(struct soth_quic_hello *q, const void *dgram, size_t len);

#endif
