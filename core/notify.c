/*
 * Readiness notification to systemd (docs/operating.md, "Readiness notification"): the
 * protocol of sd_notify(3) written directly, one datagram per state change, so the binary
 * needs no libsystemd.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "notify.h"
#include "soth/base.h"

static int notify_send(const char *path, const char *msg, size_t msg_len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    /* Only absolute paths and abstract names, as sd_notify(3); "vsock:" is not supported. */
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len > sizeof(sa.sun_path) - 1)
        return -EINVAL;
    memcpy(sa.sun_path, path, len);
    socklen_t sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: the name is exactly the bytes after the NUL */
    else
        sa_len += 1; /* a path name: include its terminating NUL */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -errno;
    int rc = 0;
    if (sendto(fd, msg, msg_len, MSG_NOSIGNAL, (const struct sockaddr *)&sa, sa_len) == -1)
        rc = -errno;
    close(fd);
    return rc;
}

int soth_notify(enum soth_notify_state st)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    char msg[64];
    int n;
    switch (st) {
    case SOTH_NOTIFY_READY:
        n = snprintf(msg, sizeof(msg), "READY=1");
        break;
    case SOTH_NOTIFY_RELOADING: {
        /* systemd 253+ wants the reload's start time beside RELOADING=1 (sd_notify(3)). */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        unsigned long long usec =
            (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000;
        n = snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
        break;
    }
    case SOTH_NOTIFY_STOPPING:
        n = snprintf(msg, sizeof(msg), "STOPPING=1");
        break;
    default:
        return -EINVAL;
    }
    int rc = notify_send(path, msg, (size_t)n);
    if (rc < 0)
        SOTH_LOG(SOTH_LOG_WARN, -1, 0, "NOTIFY_SOCKET %s: sendto: %s", path, strerror(-rc));
    return rc;
}
