/*
 * soth/proto/sse.h: the text/event-stream parser (proto/sse.c).
 * Design notes: docs/streaming.md ("Server-sent events").
 */
#ifndef SOTH_PROTO_SSE_H
#define SOTH_PROTO_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "soth/base.h"

/*
 * Server-sent events (WHATWG HTML, "Server-sent events", 9.2.6 Interpreting an event stream):
 * an incremental text/event-stream parser fed the response body after transfer decoding.
 * Lines end with CRLF, LF or CR (a CR at the end of one piece followed by LF at the start of
 * the next is one line end); one UTF-8 BOM at the stream start is skipped; lines starting
 * with ':' are comments; fields "event", "data", "id", "retry" as the spec says (unknown
 * fields ignored, one space after the colon dropped, a line without colon is a field with an
 * empty value). A blank line dispatches the event when its data buffer is not empty (the last
 * LF of the data removed); "id" persists across events (the last event ID buffer), "id" with a
 * NUL is ignored, "retry" only of ASCII digits (at most 18) is taken. The bytes are only read:
 * the caller forwards them at once (no added latency).
 * At stream end the pending, undispatched event is discarded, as the spec says ("If the file
 * ends in the middle of an event, before the final empty line, the incomplete event is not
 * dispatched"): soth_sse_finish() reports whether one was.
 * Bounds: data keeps max_data bytes, event type and id 256 bytes each; beyond that the event
 * is still dispatched, with what fits and `truncated` set (cut at a UTF-8 boundary), and
 * parsing goes on normally. Memory: soth_sse_size() bytes, nothing allocated while feeding.
 */

struct soth_sse; /* opaque */

#define SOTH_SSE_FIELD_MAX 256 /* bytes kept of an event type or id */

struct soth_sse_limits {
    uint32_t max_data; /* data bytes kept per event [65536]; 0: default */
};

/** A dispatched event, valid only during on_event. */
struct soth_sse_event {
    struct soth_iov event; /* event type buffer; empty means "message" */
    struct soth_iov id;    /* last event ID buffer (persists across events); may be empty */
    int64_t retry;         /* a valid "retry" field in this event's lines, else -1 */
    struct soth_iov data;  /* data buffer without its final LF (at most max_data bytes) */
    uint64_t data_len;     /* full length of the data (> data.len when truncated) */
    bool truncated;        /* data, event or id did not fit */
};

struct soth_sse_cbs {
    void *ctx;
    /** An event was dispatched. Runs inside soth_sse_feed; must not call back. */
    void (*on_event)(void *ctx, const struct soth_sse_event *ev);
};

size_t soth_sse_size(const struct soth_sse_limits *limits);
/** Initialise (or restart, for a new stream) in caller memory of soth_sse_size(limits) bytes
 *  aligned for any type; cbs and limits copied (limits may be NULL). Returns the parser. */
struct soth_sse *soth_sse_init(void *mem, const struct soth_sse_limits *limits,
                               const struct soth_sse_cbs *cbs);
/** Parse body bytes; on_event fires for every event completed. Never fails: returns len. */
ssize_t soth_sse_feed(struct soth_sse *s, const char *data, size_t len);
/** The stream ended: discard the incomplete event, if any (returns true then); the parser is
 *  back at a stream start. */
bool soth_sse_finish(struct soth_sse *s);
/** Events dispatched so far, and of those truncated. */
uint64_t soth_sse_events(const struct soth_sse *s);
uint64_t soth_sse_truncated(const struct soth_sse *s);

#endif
