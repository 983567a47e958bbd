/*
 * soth/proto/ws.h: WebSocket frame parser and turn aggregator (proto/ws.c).
 * Design notes: docs/streaming.md ("WebSocket").
 */
#ifndef SOTH_PROTO_WS_H
#define SOTH_PROTO_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/*
 * WebSocket (RFC 6455) frames, observed on the bytes the proxy relays after a 101. One parser
 * per direction; it never modifies or keeps the relayed bytes (the caller forwards them
 * unchanged), it only reports each message with a bounded, unmasked copy of its first bytes.
 * A message is a data message (text/binary, possibly fragmented into continuation frames) or
 * a control frame (close/ping/pong); control frames interleaved inside a fragmented message
 * are reported as they complete, before the data message they interrupt. Results never depend
 * on how the input is split. Design notes and the turn model: docs/streaming.md.
 *
 * Memory: one block of soth_ws_size(limits) bytes per direction (the capture buffer is inside
 * it); nothing is allocated while feeding. Not thread-safe.
 */

struct soth_ws; /* opaque */

/*
 * A parser reads the frames one leg sends (enum soth_leg, soth/base.h): SOTH_LEG_CLIENT for
 * client_to_server frames, which must be masked, SOTH_LEG_UPSTREAM for server_to_client
 * frames, which must not be (RFC 6455 5.1).
 */

/** Opcodes (RFC 6455 5.2). */
enum {
    SOTH_WS_OP_CONT = 0x0,
    SOTH_WS_OP_TEXT = 0x1,
    SOTH_WS_OP_BINARY = 0x2,
    SOTH_WS_OP_CLOSE = 0x8,
    SOTH_WS_OP_PING = 0x9,
    SOTH_WS_OP_PONG = 0xa,
};

/** Why a parser stopped: stable codes, soth_ws_error_name() gives the snake_case text. */
enum soth_ws_error {
    SOTH_WS_OK = 0,
    SOTH_WS_E_UNMASKED,           /* "unmasked_client_frame": client frame without MASK */
    SOTH_WS_E_MASKED,             /* "masked_server_frame": server frame with MASK */
    SOTH_WS_E_RSV,                /* "reserved_bits": RSV2/RSV3, or RSV1 without
                                     permessage-deflate or on a continuation/control frame */
    SOTH_WS_E_OPCODE,             /* "bad_opcode": reserved opcode 3-7 or 0xb-0xf */
    SOTH_WS_E_CONTROL_TOO_LONG,   /* "control_too_long": control payload over 125 bytes */
    SOTH_WS_E_CONTROL_FRAGMENTED, /* "fragmented_control": control frame without FIN */
    SOTH_WS_E_UNEXPECTED_CONT,    /* "unexpected_continuation": no message to continue */
    SOTH_WS_E_EXPECTED_CONT,      /* "expected_continuation": new data frame inside a
                                     fragmented message */
    SOTH_WS_E_BAD_LENGTH,         /* "bad_length": 64-bit length with the top bit set */
    SOTH_WS_E_TOO_LARGE,          /* "message_too_large": over limits.max_message */
    SOTH_WS_E_BAD_CLOSE,          /* "bad_close_payload": close payload of 1 byte, or a
                                     status code that may not be sent (RFC 6455 7.4) */
    SOTH_WS_E_AFTER_CLOSE,        /* "frame_after_close": a frame after this side's Close */
    SOTH_WS_ERROR_COUNT
};
/** Stable snake_case name ("ok", "unmasked_client_frame", ...); "unknown" when out of range. */
const char *soth_ws_error_name(enum soth_ws_error e);

/** Limits. Pass NULL for the defaults in brackets. */
struct soth_ws_limits {
    uint64_t max_message; /* payload bytes of one message, all fragments [64 MiB]; 0: default */
    uint32_t capture;     /* payload bytes copied (unmasked) per message, exactly this many:
                             0 captures nothing [4096] */
};

/** One complete message, valid only during on_message. */
struct soth_ws_msg {
    enum soth_leg dir;    /* the leg that sent it */
    unsigned opcode;      /* of its first frame: TEXT, BINARY, CLOSE, PING or PONG */
    uint64_t len;         /* payload bytes, all fragments (compressed size when compressed) */
    struct soth_iov data; /* the first min(len, capture) payload bytes, unmasked */
    bool truncated;       /* data.len < len */
    bool compressed;      /* RSV1 on its first frame with permessage-deflate: data is the
                             compressed payload (RFC 7692) */
    uint32_t frames;      /* frames it took: 1 + continuations (1 for control frames) */
    int close_code;       /* CLOSE: the status code, -1 when the payload is empty; else -1 */
    struct soth_iov close_reason; /* CLOSE: the reason text (up to 123 bytes), else empty */
};

struct soth_ws_cbs {
    void *ctx;
    /** A message completed. Runs inside soth_ws_feed; must not call back into the parser. */
    void (*on_message)(void *ctx, const struct soth_ws_msg *m);
    /**
     * Optional (NULL: not called): payload bytes of the data message in progress (text or
     * binary, all its fragments) as they arrive, unmasked, every byte rather than only the
     * captured prefix; `compressed` as the message's RSV1 under permessage-deflate. The last
     * call for a message comes before its on_message. Runs inside soth_ws_feed; must not call
     * back into the parser.
     */
    void (*on_payload)(void *ctx, bool compressed, const char *p, size_t n);
};

/** Bytes needed for a parser with these limits (NULL: defaults). */
size_t soth_ws_size(const struct soth_ws_limits *limits);

/**
 * Initialise a parser for the frames leg `dir` sends, in caller-owned memory of
 * soth_ws_size(limits) bytes aligned for any type. `deflate`: permessage-deflate was
 * negotiated (Sec-WebSocket-Extensions in the 101), so RSV1 marks a compressed message.
 * `cbs` and `limits` are copied (limits may be NULL). Returns the parser (== mem). There is
 * nothing to dispose: the memory may be reused or freed at any time.
 */
struct soth_ws *soth_ws_init(void *mem, enum soth_leg dir, bool deflate,
                             const struct soth_ws_limits *limits, const struct soth_ws_cbs *cbs);

/**
 * Parse relayed bytes (read-only). on_message runs for every message completed in them.
 * Returns len, or after a protocol violation SOTH_E_MALFORMED (SOTH_E_TOO_LARGE for
 * message_too_large) with soth_ws_error() set; the parser is then stopped and every later
 * feed returns the same error without looking at its bytes. The violation is detected at the
 * first byte that makes the stream invalid (header checks as soon as the header byte holding
 * the field arrives, close payload checks at the end of the close frame), so any split gives
 * the same messages and the same error.
 * Not checked: UTF-8 validity of text and close reasons, minimal length encoding.
 */
ssize_t soth_ws_feed(struct soth_ws *w, const char *data, size_t len);

/** The violation that stopped the parser, SOTH_WS_OK while it runs. */
enum soth_ws_error soth_ws_error(const struct soth_ws *w);
/** Stream offset (bytes fed before it) of the frame header that broke the protocol. */
uint64_t soth_ws_error_offset(const struct soth_ws *w);
/** True when a frame or a fragmented message is partly received (EOF now would cut it). */
bool soth_ws_in_frame(const struct soth_ws *w);

/*
 * Turn aggregator: groups the messages of one WebSocket connection into conversational turns.
 * Pure logic: the caller passes every message of both directions in relay order with a
 * timestamp; callbacks report turn starts and ends.
 *  - A turn starts with a data message (text/binary) when no turn is open; its sender is the
 *    initiator. Messages from the other side are the turn's answer. The first data message of
 *    the initiator after an answer (the direction change back) ends the turn with
 *    DIRECTION_CHANGE and starts the next one (same timestamp).
 *  - Ping and pong frames are counted in the open turn but never start or end one.
 *  - A close frame is counted in the open turn, which then ends with CLOSE; after a close (or
 *    soth_ws_turns_end) nothing starts any more.
 *  - IDLE: with idle_ns > 0, an open turn whose last message is idle_ns or more older than the
 *    next message (or than `now` of soth_ws_turns_tick) ends with IDLE; the next data message
 *    starts a new turn.
 *  - soth_ws_turns_end (connection closed: CLOSE, or a parser error: ERROR) ends the open turn,
 *    so no turn is ever left open.
 * Counters: frames and payload bytes per direction of the messages counted in the turn.
 * started_ns: timestamp of the first message; ended_ns: of the message that changed direction,
 * of the close frame or of the end call, and for IDLE the turn's last message.
 */
enum soth_ws_flush {
    SOTH_WS_FLUSH_DIRECTION_CHANGE = 0, /* same order as the flush_reason names (docs/events.md) */
    SOTH_WS_FLUSH_CLOSE,
    SOTH_WS_FLUSH_ERROR,
    SOTH_WS_FLUSH_IDLE,
    SOTH_WS_FLUSH_COUNT
};

struct soth_ws_turn {
    uint64_t id;                                            /* 1, 2, 3, ... per connection */
    enum soth_leg initiator;                                /* sender of the first message */
    uint64_t frames[SOTH_LEG_COUNT], bytes[SOTH_LEG_COUNT]; /* by the leg that sent them */
    uint64_t started_ns, ended_ns;
    enum soth_ws_flush reason; /* meaningful in on_end */
};

struct soth_ws_turn_cbs {
    void *ctx;
    void (*on_start)(void *ctx, const struct soth_ws_turn *t);
    void (*on_end)(void *ctx, const struct soth_ws_turn *t);
};

/** Caller-owned state; fields are private to proto/ws.c. */
struct soth_ws_turns {
    struct soth_ws_turn_cbs cbs;
    uint64_t idle_ns; /* 0: no idle flush */
    uint64_t last_ns; /* timestamp of the last message counted */
    bool open;        /* cur is a turn in progress */
    bool answered;    /* the other side spoke in cur */
    bool closed;      /* no turn starts any more */
    struct soth_ws_turn cur;
};

/** Start with no turn; cbs copied (members may be NULL). */
void soth_ws_turns_init(struct soth_ws_turns *t, uint64_t idle_ns,
                        const struct soth_ws_turn_cbs *cbs);
/** Account one message (from soth_ws_feed's on_message) at now_ns. Callbacks fire before it
 *  returns: an end (idle or direction change) first, then a start; emit the message after. */
void soth_ws_turns_message(struct soth_ws_turns *t, const struct soth_ws_msg *m, uint64_t now_ns);
/** Idle check at now_ns: ends the open turn with IDLE when it has been idle long enough.
 *  Returns true when it did. */
bool soth_ws_turns_tick(struct soth_ws_turns *t, uint64_t now_ns);
/** End the open turn (if any) with `reason` at now_ns; no turn starts afterwards. */
void soth_ws_turns_end(struct soth_ws_turns *t, enum soth_ws_flush reason, uint64_t now_ns);

#endif
