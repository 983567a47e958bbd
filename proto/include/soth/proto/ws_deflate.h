/*
 * soth_proto: permessage-deflate (RFC 7692) for observing WebSocket messages. The relay
 * forwards the compressed frames untouched; this inflates a copy of each compressed message
 * so its events can show the text as the endpoint's application gets it. Design notes:
 * docs/streaming.md ("permessage-deflate").
 *
 * One inflater per direction of a WebSocket. Context takeover (RFC 7692 7.2.3): unless the
 * response said <side>_no_context_takeover, a side's compressor keeps its LZ77 window across
 * messages, so every compressed message of that direction must be inflated, in order, to
 * inflate the next one. Bounds: the window is the negotiated <side>_max_window_bits (at most
 * 2^15 bytes); a message inflates to at most `max_output` bytes and is cut there; of its
 * output only the first `capture` bytes are kept. A cut or corrupt message loses the window
 * of a direction with context takeover: its later compressed messages are not inflated.
 */
#ifndef SOTH_PROTO_WS_DEFLATE_H
#define SOTH_PROTO_WS_DEFLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "soth/base.h"

/** permessage-deflate as the accepting response negotiated it; arrays by enum soth_ws_dir. */
struct soth_pmd {
    bool on;                /* the response accepted permessage-deflate */
    bool no_takeover[2];    /* [client] client_no_context_takeover, [server] server_... */
    uint8_t window_bits[2]; /* [client] client_max_window_bits, [server] server_...: 8..15 */
};

/**
 * Parse the Sec-WebSocket-Extensions value of the response that accepted the WebSocket (101,
 * or 2xx to an extended CONNECT). out->on when an element is permessage-deflate (the first
 * one counts); its parameters set no_takeover and window_bits (15 when absent). A parameter
 * that RFC 7692 7.1 does not allow is ignored: the endpoints fail such a connection
 * themselves, and the frames are then still parsed with the defaults.
 */
void soth_pmd_parse(struct soth_iov ext, struct soth_pmd *out);

struct soth_ws_inflate; /* opaque; zlib inside */

/** How a compressed message came out (soth_ws_inflate_end). */
enum soth_ws_inflate_status {
    SOTH_WSZ_OK = 0, /* inflated completely */
    SOTH_WSZ_OVER,   /* inflated to more than max_output bytes: cut at max_output */
    SOTH_WSZ_ERROR,  /* not a valid deflate stream (or out of memory): nothing to show */
    SOTH_WSZ_LOST,   /* not inflated: an earlier message lost this direction's window */
    SOTH_WSZ_COUNT
};

struct soth_ws_inflated {
    enum soth_ws_inflate_status status;
    uint64_t len;         /* OK: inflated length; OVER: max_output; else 0 */
    struct soth_iov data; /* the first min(len, capture) inflated bytes (OK and OVER) */
};

/**
 * An inflater keeping `capture` bytes of each message's output, cutting a message at
 * `max_output` (>= capture) bytes. NULL when out of memory. Call soth_ws_inflate_reset before
 * the first message.
 */
struct soth_ws_inflate *soth_ws_inflate_new(uint32_t capture, uint64_t max_output);
/** Frees it (NULL is fine). */
void soth_ws_inflate_free(struct soth_ws_inflate *z);
/** The capture it was made with (to decide whether a kept one can be reused). */
uint32_t soth_ws_inflate_capture(const struct soth_ws_inflate *z);

/**
 * Start a direction whose compressor uses a 2^window_bits window (8..15) and keeps it across
 * messages when `takeover`. Also how a kept inflater is reused for another WebSocket: its
 * allocations stay. Returns 0, or SOTH_E_NOMEM (then every message ends as ERROR).
 */
int soth_ws_inflate_reset(struct soth_ws_inflate *z, unsigned window_bits, bool takeover);

/** Compressed payload bytes of the message in progress, in order (any split). */
void soth_ws_inflate_feed(struct soth_ws_inflate *z, const char *p, size_t n);

/**
 * The message ended: appends the 0x00 0x00 0xff 0xff the sender removed (RFC 7692 7.2.2),
 * reports the result in *out (data valid until the next feed or reset) and readies the
 * inflater for the direction's next compressed message.
 */
void soth_ws_inflate_end(struct soth_ws_inflate *z, struct soth_ws_inflated *out);

#endif
