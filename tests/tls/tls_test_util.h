/* Helpers shared by the tls test suites (header-only, static functions). */
#ifndef SOTH_TLS_TEST_UTIL_H
#define SOTH_TLS_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "soth/tls.h"

/* A fresh temporary directory (removed by tu_rmdir). */
static inline void tu_mkdtemp(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/soth-tls-test-XXXXXX");
    cr_assert_not_null(mkdtemp(out));
}

static inline void tu_rmdir(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* Run a shell command, return its exit status (-1 if it did not exit normally). */
static inline int tu_sh(const char *cmd)
{
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* A CA generated into dir and a worker context trusting it upstream. */
struct tu_env {
    char dir[256];
    char ca_pem[320];
    struct soth_tls_ca *ca;
    struct soth_tls_ctx *t;
};

static inline void tu_env_init_ex(struct tu_env *e, uint32_t cache_size, bool http2)
{
    char err[256];
    memset(e, 0, sizeof(*e));
    cr_assert_eq(soth_tls_global_init(), 0);
    tu_mkdtemp(e->dir, sizeof(e->dir));
    struct soth_tls_ca_params cp = {.ca_dir = e->dir};
    cr_assert_eq(soth_tls_ca_load_or_create(&cp, &e->ca, NULL, err, sizeof(err)), 0, "%s", err);
    snprintf(e->ca_pem, sizeof(e->ca_pem), "%s", soth_tls_ca_cert_path(e->ca));
    struct soth_tls_ctx_params tp = {
        .ca = e->ca,
        .leaf_validity_days = 30,
        .leaf_cache_size = cache_size,
        .upstream_verify = true,
        .upstream_ca_file = e->ca_pem,
        .http2_enabled = http2,
    };
    cr_assert_eq(soth_tls_ctx_new(&tp, &e->t, err, sizeof(err)), 0, "%s", err);
}

static inline void tu_env_init(struct tu_env *e)
{
    tu_env_init_ex(e, 64, true);
}

static inline void tu_env_dispose(struct tu_env *e)
{
    soth_tls_ctx_free(e->t);
    soth_tls_ca_free(e->ca);
    tu_rmdir(e->dir);
}

/* Move every queued byte from one conn to the other, as an engine would (borrow, drive, end). */
static inline void tu_move(struct soth_tls_conn *from, struct soth_tls_conn *to)
{
    struct soth_iov iov;
    while (soth_tls_conn_out(from, &iov) > 0) {
        cr_assert_eq(soth_tls_conn_feed(to, iov.base, iov.len), 0);
        if (!soth_tls_conn_is_established(to))
            (void)soth_tls_conn_handshake(to);
        cr_assert_eq(soth_tls_conn_feed_done(to), 0);
        soth_tls_conn_out_consume(from, iov.len);
    }
}

/* Drive a client/server pair to completion; returns 0 or the first failure code. */
static inline int tu_handshake(struct soth_tls_conn *cli, struct soth_tls_conn *srv)
{
    for (int i = 0; i < 50; i++) {
        int a = soth_tls_conn_handshake(cli);
        if (a < 0 && a != SOTH_E_INCOMPLETE)
            return a;
        tu_move(cli, srv);
        int b = soth_tls_conn_handshake(srv);
        if (b < 0 && b != SOTH_E_INCOMPLETE)
            return b;
        tu_move(srv, cli);
        if (soth_tls_conn_is_established(cli) && soth_tls_conn_is_established(srv))
            return 0;
    }
    return SOTH_E_STATE;
}

static inline bool tu_iov_eq(struct soth_iov a, const char *s)
{
    return a.len == strlen(s) && memcmp(a.base, s, a.len) == 0;
}

#endif
