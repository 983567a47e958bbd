/*
 * The key log (docs/tls.md, "Key log"): NSS key log lines for both legs of every intercepted
 * connection, so a capture can be decrypted (Wireshark / tshark). Off unless tls.keylog_file
 * or SSLKEYLOGFILE names a file; then each conn asks wolfSSL for its secrets (conn.c).
 */
#include "tls_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Set before workers start, read-only afterwards (as the ticket key, tls.c). */
static int g_keylog_fd = -1;

int soth_tls_keylog_open(const char *path, char *err, size_t err_len)
{
#ifndef HAVE_SECRET_CALLBACK
    snprintf(err, err_len,
             "tls.keylog_file: this wolfSSL build lacks HAVE_SECRET_CALLBACK (rerun ci/setup.sh)");
    (void)path;
    return SOTH_E_TLS;
#endif
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        snprintf(err, err_len, "tls.keylog_file: cannot open %s: %s", path, strerror(errno));
        return SOTH_E_CONFIG;
    }
    struct stat st;
    /* Secrets: owner only, also for a file that existed with a wider mode. */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        ((st.st_mode & 0077) != 0 && fchmod(fd, 0600) < 0)) {
        snprintf(err, err_len, "tls.keylog_file: %s: not a regular file we can make 0600", path);
        close(fd);
        return SOTH_E_CONFIG;
    }
    soth_tls_keylog_close();
    g_keylog_fd = fd;
    return 0;
}

void soth_tls_keylog_close(void)
{
    if (g_keylog_fd >= 0)
        close(g_keylog_fd);
    g_keylog_fd = -1;
}

bool soth_tls_keylog_enabled(void)
{
    return g_keylog_fd >= 0;
}

static char *hex(char *o, const uint8_t *p, size_t n)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        *o++ = d[p[i] >> 4];
        *o++ = d[p[i] & 15];
    }
    return o;
}

/*
 * One line, one write(2): the file is opened O_APPEND, so the kernel appends each write
 * whole at the end of the file; lines from several workers never interleave (a line is at
 * most about 230 bytes).
 */
void tls_keylog_line(const char *label, const uint8_t *client_random, const uint8_t *secret,
                     size_t secret_len)
{
    char line[40 + 2 * 32 + 2 * 64 + 2];
    size_t l = strlen(label);
    if (g_keylog_fd < 0 || l > 39 || secret_len > 64)
        return;
    memcpy(line, label, l);
    char *o = line + l;
    *o++ = ' ';
    o = hex(o, client_random, 32);
    *o++ = ' ';
    o = hex(o, secret, secret_len);
    *o++ = '\n';
    ssize_t w;
    do
        w = write(g_keylog_fd, line, (size_t)(o - line));
    while (w < 0 && errno == EINTR);
    /* A failed write (disk full) loses a line, never the connection. */
}

#ifdef HAVE_SECRET_CALLBACK
/* wolfSSL's TLS 1.3 secret callback (conn.c installs it per conn while the log is on). */
int tls_keylog_tls13(WOLFSSL *ssl, int id, const unsigned char *secret, int secret_sz, void *ctx)
{
    const char *label;
    uint8_t cr[32];
    (void)ctx;
    switch (id) {
    case CLIENT_EARLY_TRAFFIC_SECRET:
        label = "CLIENT_EARLY_TRAFFIC_SECRET";
        break;
    case CLIENT_HANDSHAKE_TRAFFIC_SECRET:
        label = "CLIENT_HANDSHAKE_TRAFFIC_SECRET";
        break;
    case SERVER_HANDSHAKE_TRAFFIC_SECRET:
        label = "SERVER_HANDSHAKE_TRAFFIC_SECRET";
        break;
    case CLIENT_TRAFFIC_SECRET:
        label = "CLIENT_TRAFFIC_SECRET_0";
        break;
    case SERVER_TRAFFIC_SECRET:
        label = "SERVER_TRAFFIC_SECRET_0";
        break;
    case EARLY_EXPORTER_SECRET:
        label = "EARLY_EXPORTER_SECRET";
        break;
    case EXPORTER_SECRET:
        label = "EXPORTER_SECRET";
        break;
    default:
        return 0;
    }
    if (secret_sz <= 0 || wolfSSL_get_client_random(ssl, cr, sizeof(cr)) != sizeof(cr))
        return 0;
    tls_keylog_line(label, cr, secret, (size_t)secret_sz);
    return 0;
}
#endif

/* After a completed handshake: TLS 1.2's one line (its master secret), then the arrays go. */
void tls_keylog_handshake_done(WOLFSSL *ssl)
{
    if (wolfSSL_version(ssl) == TLS1_2_VERSION) {
        unsigned char *ms, *sr, *cr;
        unsigned int ms_len, sr_len, cr_len;
        if (wolfSSL_get_keys(ssl, &ms, &ms_len, &sr, &sr_len, &cr, &cr_len) == WOLFSSL_SUCCESS &&
            cr_len == 32)
            tls_keylog_line("CLIENT_RANDOM", cr, ms, ms_len);
    }
    wolfSSL_FreeArrays(ssl);
}
