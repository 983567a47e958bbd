/*
 * soth_proto: looking up HTTP header fields in a parsed head (an array of struct soth_header,
 * soth/base.h, as the HTTP/1.1 and HTTP/2 parsers report it). One lookup for everyone: field
 * names compare ASCII case-insensitively (RFC 9110 5.1), values are as the parser kept them
 * (without surrounding whitespace).
 */
#ifndef SOTH_PROTO_HEADERS_H
#define SOTH_PROTO_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "soth/base.h"

/**
 * The value of the first field named `name` (a lower-case literal such as "content-type"),
 * or SOTH_IOV_NULL (base NULL) when the head has none. An empty field gives a non-NULL base
 * and length 0.
 */
struct soth_iov soth_header_get(const struct soth_header *h, size_t n, const char *name);

/**
 * Whether a Content-Type value names the media type `type` (a lower-case "type/subtype"):
 * compared case-insensitively, parameters (";" and after) and whitespace before them ignored
 * (RFC 9110 8.3.1). "text/event-stream; charset=utf-8" is "text/event-stream".
 */
bool soth_media_type_is(struct soth_iov value, const char *type);

/**
 * Whether a comma-separated field value (RFC 9110 5.6.1: Connection, Upgrade,
 * Content-Encoding, Sec-WebSocket-Extensions, ...) has an element whose first token is
 * `token` (case-insensitive; whitespace and parameters after ";" ignored).
 */
bool soth_list_has(struct soth_iov value, const char *token);

/** v without optional whitespace (SP, HTAB) at both ends (RFC 9110 5.6.3). */
struct soth_iov soth_iov_trim_ows(struct soth_iov v);

/**
 * HTTP/3 alternatives out of an Alt-Svc field value (RFC 7838 3), for http3_passthrough: false
 * (docs/http3.md, "Forcing clients back to TCP"): every entry whose protocol-id, percent-decoded,
 * is "h3" or starts with "h3-" is removed; other entries stay as they were, with the separators
 * that preceded them. Entries are split at commas outside quoted strings; "clear" and entries
 * of other protocols are kept.
 *
 * Writes the value to send into out (cap >= value.len is always enough: it never grows) and
 * returns its length: 0 when no entry is left (drop the field). removed receives up to max
 * removed entries (iovs into value, without surrounding whitespace, parameters included);
 * *n_removed counts them all, and 0 means out holds value unchanged.
 * Returns SOTH_E_TOO_LARGE when cap < value.len.
 */
ssize_t soth_alt_svc_strip(struct soth_iov value, char *out, size_t cap, struct soth_iov *removed,
                           size_t max, size_t *n_removed);

#endif
