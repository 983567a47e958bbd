/* Drive a soth_tls_conn over a real socket, as the engine will (tests only, blocking+poll). */
#ifndef SOTH_TLS_SOCK_H
#define SOTH_TLS_SOCK_H

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include "tls_test_util.h"

enum tu_outcome { TU_DONE = 0, TU_TLS_FAILED, TU_TRANSPORT };

static inline long tu_ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send all queued ciphertext; false when the peer is gone (EPIPE / ECONNRESET). */
static inline bool tu_flush(int fd, struct soth_tls_conn *c)
{
    struct soth_iov iov;
    while (soth_tls_conn_out(c, &iov) > 0) {
        ssize_t n = send(fd, iov.base, iov.len, MSG_NOSIGNAL);
        if (n == -1) {
            soth_tls_conn_out_consume(c, soth_tls_conn_out_pending(c));
            return false;
        }
        soth_tls_conn_out_consume(c, (size_t)n);
    }
    return true;
}

/* Handshake c over fd within timeout_ms. On TU_TRANSPORT *kind says what happened. */
static inline enum tu_outcome tu_sock_handshake(int fd, struct soth_tls_conn *c, int timeout_ms,
                                                enum soth_tls_transport *kind)
{
    char buf[16384];
    long deadline = tu_ms_now() + timeout_ms;
    for (int guard = 0; guard < 10000; guard++) {
        int r = soth_tls_conn_handshake(c);
        cr_assert_eq(soth_tls_conn_feed_done(c), 0);
        bool sent = tu_flush(fd, c);
        if (r == 0)
            return TU_DONE;
        if (r != SOTH_E_INCOMPLETE)
            return TU_TLS_FAILED;
        if (!sent) {
            *kind = SOTH_TLS_TRANSPORT_RESET;
            return TU_TRANSPORT;
        }
        long left = deadline - tu_ms_now();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) == 0) {
            *kind = SOTH_TLS_TRANSPORT_TIMEOUT;
            return TU_TRANSPORT;
        }
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0) {
            *kind = SOTH_TLS_TRANSPORT_EOF;
            return TU_TRANSPORT;
        }
        if (n == -1) {
            *kind = errno == ECONNRESET ? SOTH_TLS_TRANSPORT_RESET : SOTH_TLS_TRANSPORT_EOF;
            return TU_TRANSPORT;
        }
        if (getenv("TU_DEBUG")) {
            fprintf(stderr, "recv %zd:", n);
            for (ssize_t i = 0; i < n && i < 16; i++)
                fprintf(stderr, " %02x", (unsigned char)buf[i]);
            fprintf(stderr, "\n");
        }
        cr_assert_eq(soth_tls_conn_feed(c, buf, (size_t)n), 0);
    }
    *kind = SOTH_TLS_TRANSPORT_TIMEOUT;
    return TU_TRANSPORT;
}

/* Read plaintext into out (cap) until n bytes, EOF or timeout; returns bytes read. */
static inline size_t tu_sock_read(int fd, struct soth_tls_conn *c, char *out, size_t want,
                                  int timeout_ms)
{
    char buf[16384];
    size_t got = 0;
    long deadline = tu_ms_now() + timeout_ms;
    while (got < want) {
        ssize_t r = soth_tls_conn_read(c, out + got, want - got);
        cr_assert_eq(soth_tls_conn_feed_done(c), 0);
        tu_flush(fd, c);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r != SOTH_E_INCOMPLETE)
            break;
        long left = deadline - tu_ms_now();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        cr_assert_eq(soth_tls_conn_feed(c, buf, (size_t)n), 0);
    }
    return got;
}

/* A loopback listener on an ephemeral port. */
static inline int tu_listen(uint16_t *port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(s, 8), 0);
    socklen_t l = sizeof(a);
    getsockname(s, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return s;
}

static inline int tu_accept(int ls, int timeout_ms)
{
    struct pollfd p = {.fd = ls, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, timeout_ms), 1, "no client connected");
    return accept4(ls, NULL, NULL, SOCK_CLOEXEC);
}

static inline int tu_connect(uint16_t port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(port)};
    cr_assert_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    return s;
}

#endif
