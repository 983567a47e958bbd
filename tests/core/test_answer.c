/* core/answer.c soth_h1_write_answer(): the bytes of the proxy's own answers, and its bound. */
#include <criterion/criterion.h>
#include <string.h>

#include "soth/proto/h1.h"

#define HEAD403                                                                                    \
    "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"                 \
    "Connection: close\r\n\r\n"

Test(answer, formats_status_headers_and_body)
{
    char out[256];
    ssize_t n = soth_h1_write_answer(out, sizeof(out), 403, "Forbidden", "blocked now\n", 12);
    const char want[] = HEAD403 "blocked now\n";
    cr_assert_eq(n, (ssize_t)sizeof(want) - 1);
    cr_assert_eq(memcmp(out, want, (size_t)n), 0, "got %.*s", (int)n, out);
}

Test(answer, empty_body)
{
    char out[256];
    ssize_t n = soth_h1_write_answer(out, sizeof(out), 408, "Request Timeout", NULL, 0);
    const char want[] = "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                        "Content-Length: 0\r\nConnection: close\r\n\r\n";
    cr_assert_eq(n, (ssize_t)sizeof(want) - 1);
    cr_assert_eq(memcmp(out, want, (size_t)n), 0);
}

Test(answer, body_bytes_are_copied_as_they_are)
{
    char out[256];
    const char body[] = {'a', '\0', '%', 's', '\r'};
    ssize_t n = soth_h1_write_answer(out, sizeof(out), 502, "Bad Gateway", body, sizeof(body));
    cr_assert_gt(n, 0);
    cr_assert_eq(memcmp(out + n - (ssize_t)sizeof(body), body, sizeof(body)), 0);
    cr_assert_not_null(strstr(out, "Content-Length: 5\r\n"));
}

Test(answer, refuses_what_does_not_fit)
{
    const size_t len = sizeof(HEAD403) - 1 + 12;
    char out[256];
    cr_assert_eq(soth_h1_write_answer(out, len, 403, "Forbidden", "blocked now\n", 12),
                 (ssize_t)len, "exactly cap bytes fit");
    cr_assert_eq(soth_h1_write_answer(out, len - 1, 403, "Forbidden", "blocked now\n", 12),
                 SOTH_E_TOO_LARGE);
    cr_assert_eq(soth_h1_write_answer(out, 10, 403, "Forbidden", "", 0), SOTH_E_TOO_LARGE,
                 "a head cut short");
    cr_assert_eq(soth_h1_write_answer(out, sizeof(out), 403, "Forbidden", out, (size_t)-1),
                 SOTH_E_TOO_LARGE);
}
