/*
 * Private to core/: service manager notification (docs/operating.md, "Readiness
 * notification"). The systemd notify protocol, written directly against $NOTIFY_SOCKET.
 */
#ifndef SOTH_CORE_NOTIFY_H
#define SOTH_CORE_NOTIFY_H

enum soth_notify_state {
    SOTH_NOTIFY_READY = 0, /* every listener is up; again when a reload is done */
    SOTH_NOTIFY_RELOADING, /* SIGHUP: re-reading the config */
    SOTH_NOTIFY_STOPPING,  /* SIGTERM/SIGINT: the drain begins */
    SOTH_NOTIFY_COUNT
};

/**
 * Tell the service manager about a state change: one datagram ("READY=1", "RELOADING=1" with
 * "MONOTONIC_USEC=", "STOPPING=1") to the AF_UNIX socket named by $NOTIFY_SOCKET (an absolute
 * path, or '@' for the abstract namespace). Does nothing and returns 0 when the variable is
 * unset or empty. Returns 0 when sent, or -errno (logged as a warning once per call).
 * Main thread only: it reads the environment.
 */
int soth_notify(enum soth_notify_state st);

#endif
