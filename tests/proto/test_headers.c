/* Header field lookup (proto/headers.c): one lookup for every HTTP layer. */
#include <criterion/criterion.h>

#include "soth/proto/headers.h"

#define H(n, v)                                                                                    \
    {                                                                                              \
        SOTH_IOV_LIT(n), SOTH_IOV_LIT(v)                                                           \
    }

static const struct soth_header hd[] = {
    H("Host", "a.test"),
    H("Content-Type", "text/event-stream; charset=utf-8"),
    H("X-Empty", ""),
    H("content-type", "second"),
};

Test(headers, get_first_field_case_insensitively)
{
    struct soth_iov v = soth_header_get(hd, 4, "content-type");
    cr_assert(soth_iov_is_ci(v, "text/event-stream; charset=utf-8"));
    v = soth_header_get(hd, 4, "host");
    cr_assert(soth_iov_is_ci(v, "a.test"));
}

Test(headers, absent_is_null_empty_is_not)
{
    cr_assert_null(soth_header_get(hd, 4, "content-length").base);
    cr_assert_null(soth_header_get(hd, 0, "host").base);
    struct soth_iov e = soth_header_get(hd, 4, "x-empty");
    cr_assert_not_null(e.base);
    cr_assert_eq(e.len, 0);
    cr_assert_null(soth_header_get(hd, 4, "content").base, "whole names only");
}

Test(headers, media_type_ignores_case_parameters_and_whitespace)
{
    cr_assert(soth_media_type_is(SOTH_IOV_LIT("text/event-stream"), "text/event-stream"));
    cr_assert(
        soth_media_type_is(SOTH_IOV_LIT("Text/Event-Stream;charset=utf-8"), "text/event-stream"));
    cr_assert(soth_media_type_is(SOTH_IOV_LIT(" text/event-stream \t; x=y"), "text/event-stream"));
    cr_assert(!soth_media_type_is(SOTH_IOV_LIT("text/event-streams"), "text/event-stream"));
    cr_assert(!soth_media_type_is(SOTH_IOV_LIT("text/event"), "text/event-stream"));
    cr_assert(!soth_media_type_is(SOTH_IOV_NULL, "text/event-stream"));
}

Test(headers, list_has_element)
{
    cr_assert(soth_list_has(SOTH_IOV_LIT("websocket"), "websocket"));
    cr_assert(soth_list_has(SOTH_IOV_LIT("WebSocket"), "websocket"));
    cr_assert(soth_list_has(SOTH_IOV_LIT("keep-alive, Upgrade"), "upgrade"));
    cr_assert(soth_list_has(SOTH_IOV_LIT("x, permessage-deflate; client_max_window_bits"),
                            "permessage-deflate"));
    cr_assert(!soth_list_has(SOTH_IOV_LIT("websockets"), "websocket"));
    cr_assert(!soth_list_has(SOTH_IOV_LIT(""), "websocket"));
    cr_assert(!soth_list_has(SOTH_IOV_NULL, "websocket"));
}
