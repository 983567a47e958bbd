/*
 * A real nats-server -js for the observe tests that publish to one (nats_tsan, nats_exchange,
 * nats_lines) and bench/nats/sink_bench: where the binary is, a free loopback port, start and
 * wait, kill. Failures are reported through CHECK (check.h: define CHECK_NAME before including).
 */
#ifndef SOTH_TESTS_NATS_SERVER_H
#define SOTH_TESTS_NATS_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static const char *server_bin(void)
{
    static const char *const where[] = {"/usr/sbin/nats-server", "/usr/bin/nats-server",
                                        "/usr/local/bin/nats-server"};
    for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    return NULL;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "bind");
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static pid_t server_start(const char *bin, int port, const char *store)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", port);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
        execl(bin, bin, "-js", "-a", "127.0.0.1", "-p", p, "-sd", store, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 400 && !port_open(port); i++)
        usleep(25000);
    CHECK(port_open(port), "nats-server did not start");
    return pid;
}

/* inline: sink_bench stops its server with SIGTERM and does not use this. */
static inline void server_kill(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

#endif
