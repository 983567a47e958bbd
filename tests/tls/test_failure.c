/*
 * The failure taxonomy (docs/tls.md) against real peers: python ssl, curl and
 * openssl s_client as clients of our server conns; python ssl servers (certificates from
 * python cryptography) as origins of our client conns; raw sockets for EOF, reset and stall.
 * Prints the confusion table and requires >= 95% in the expected class.
 */
#include "tls_sock.h"

#define OK_CLASS SOTH_TLS_FAIL_COUNT /* "handshake succeeded" column */
#define PEERS    "/usr/bin/python3 tests/tls/tls_peers.py"

static struct tu_env env;
static char peer_dir[256];

static void setup(void)
{
    tu_env_init(&env);
    tu_mkdtemp(peer_dir, sizeof(peer_dir));
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), PEERS " gen '%s' && cp '%s' '%s/ca.pem'", peer_dir, env.ca_pem,
             peer_dir);
    cr_assert_eq(tu_sh(cmd), 0);
}

static void teardown(void)
{
    tu_rmdir(peer_dir);
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}

TestSuite(tls_failure, .init = setup, .fini = teardown, .timeout = 300);

static int classify(struct soth_tls_conn *c, enum tu_outcome o, enum soth_tls_transport kind,
                    char *detail, size_t cap)
{
    enum soth_tls_fail r;
    switch (o) {
    case TU_DONE:
        snprintf(detail, cap, "handshake succeeded");
        return OK_CLASS;
    case TU_TLS_FAILED:
        cr_assert_eq(soth_tls_conn_failure(c, &r, detail, cap), 0);
        return (int)r;
    case TU_TRANSPORT:
    default:
        return (int)soth_tls_conn_classify_transport(c, kind, detail, cap);
    }
}

/* Our client conn against a python origin of the given kind. */
static int run_upstream(const char *kind, int timeout_ms, char *detail, size_t cap)
{
    char cmd[1024], line[64];
    snprintf(cmd, sizeof(cmd), PEERS " server %s '%s'", kind, peer_dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(line, sizeof(line), p), "peer %s printed no port", kind);
    int fd = tu_connect((uint16_t)atoi(line));

    char err[256], root[400];
    snprintf(root, sizeof(root), "%s/root.pem", peer_dir);
    struct soth_tls_ctx_params tp = {.ca = env.ca,
                                     .leaf_validity_days = 30,
                                     .leaf_cache_size = 4,
                                     .upstream_verify = true,
                                     .upstream_ca_file = root,
                                     .http2_enabled = true};
    struct soth_tls_ctx *t;
    cr_assert_eq(soth_tls_ctx_new(&tp, &t, err, sizeof(err)), 0, "%s", err);
    struct soth_tls_conn *c;
    cr_assert_eq(soth_tls_conn_new_client(t, SOTH_IOV_LIT("origin.test"), NULL, 0, &c), 0);
    enum soth_tls_transport k = SOTH_TLS_TRANSPORT_EOF;
    enum tu_outcome o = tu_sock_handshake(fd, c, timeout_ms, &k);
    int cls = classify(c, o, k, detail, cap);
    if (o == TU_DONE) {
        soth_tls_conn_write(c, "x", 1);
        tu_flush(fd, c);
    }
    close(fd);
    pclose(p);
    soth_tls_conn_free(c);
    soth_tls_ctx_free(t);
    return cls;
}

/* Our server conn (leaf for origin.test) against a client command ("%d" = port). */
static int run_client(const char *cmd_fmt, int timeout_ms, char *detail, size_t cap)
{
    uint16_t port;
    int ls = tu_listen(&port);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), cmd_fmt, port, peer_dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int fd = tu_accept(ls, 10000);
    struct soth_tls_conn *c;
    cr_assert_eq(soth_tls_conn_new_server(env.t, SOTH_IOV_LIT("origin.test"), SOTH_IOV_NULL, &c),
                 0);
    enum soth_tls_transport k = SOTH_TLS_TRANSPORT_EOF;
    enum tu_outcome o = tu_sock_handshake(fd, c, timeout_ms, &k);
    int cls = classify(c, o, k, detail, cap);
    if (o == TU_DONE) {
        char ping[4];
        if (tu_sock_read(fd, c, ping, 4, 3000) == 4) {
            soth_tls_conn_write(c, "pong", 4);
            tu_flush(fd, c);
        }
    }
    close(fd);
    close(ls);
    char out[256] = "";
    while (fgets(out, sizeof(out), p) != NULL)
        ;
    pclose(p);
    soth_tls_conn_free(c);
    return cls;
}

struct fixture {
    const char *name;
    int expect;
    bool upstream;
    const char *arg; /* upstream: server kind; client: command format */
    int timeout_ms;
};

static const struct fixture FIX[] = {
    /* clients of our server conns */
    {"client trusts our CA (control)", OK_CLASS, false, PEERS " client trusting %d '%s'", 5000},
    {"python default context (no CA)", SOTH_TLS_FAIL_UNKNOWN_CA, false,
     PEERS " client default %d '%s'", 5000},
    {"curl without --cacert", SOTH_TLS_FAIL_UNKNOWN_CA, false,
     "curl -s -o /dev/null --max-time 5 --resolve origin.test:%d:127.0.0.1 "
     "https://origin.test:%1$d/ #%2$s",
     5000},
    {"openssl s_client -verify_return_error", SOTH_TLS_FAIL_UNKNOWN_CA, false,
     "openssl s_client -connect 127.0.0.1:%d -servername origin.test -verify_return_error "
     "-CAfile /etc/ssl/certs/ca-certificates.crt </dev/null >/dev/null 2>&1 #%s",
     5000},
    {"client wants another name", SOTH_TLS_FAIL_CERT_VALIDATION, false,
     PEERS " client wronghost %d '%s'", 5000},
    {"client closes after our certificate", SOTH_TLS_FAIL_UNKNOWN_CA, false,
     PEERS " client close_after_cert %d '%s'", 5000},
    {"client TLS 1.1 only", SOTH_TLS_FAIL_HANDSHAKE, false, PEERS " client tls11 %d '%s'", 5000},
    {"client no shared cipher", SOTH_TLS_FAIL_HANDSHAKE, false, PEERS " client nocipher %d '%s'",
     5000},
    {"client garbage hello", SOTH_TLS_FAIL_HANDSHAKE, false, PEERS " client garbage %d '%s'", 5000},
    {"client EOF mid-hello", SOTH_TLS_FAIL_EOF, false, PEERS " client eof %d '%s'", 5000},
    {"client RST mid-hello", SOTH_TLS_FAIL_RESET, false, PEERS " client reset %d '%s'", 5000},
    {"client stalls", SOTH_TLS_FAIL_TIMEOUT, false, PEERS " client stall %d '%s'", 500},
    /* origins of our client conns */
    {"origin good (control)", OK_CLASS, true, "good", 5000},
    {"origin self-signed", SOTH_TLS_FAIL_UNKNOWN_CA, true, "selfsigned", 5000},
    {"origin expired", SOTH_TLS_FAIL_CERT_VALIDATION, true, "expired", 5000},
    {"origin wrong host", SOTH_TLS_FAIL_CERT_VALIDATION, true, "wronghost", 5000},
    {"origin incomplete chain", SOTH_TLS_FAIL_UNKNOWN_CA, true, "incomplete", 5000},
    {"origin TLS 1.1 only", SOTH_TLS_FAIL_HANDSHAKE, true, "tls11", 5000},
    {"origin no shared cipher", SOTH_TLS_FAIL_HANDSHAKE, true, "nocipher", 5000},
    {"origin requires a client cert", SOTH_TLS_FAIL_HANDSHAKE, true, "clientcert", 5000},
    {"origin EOF mid-handshake", SOTH_TLS_FAIL_EOF, true, "eof", 5000},
    {"origin RST mid-handshake", SOTH_TLS_FAIL_RESET, true, "reset", 5000},
    {"origin stalls", SOTH_TLS_FAIL_TIMEOUT, true, "stall", 500},
};

static const char *class_name(int c)
{
    return c == OK_CLASS ? "ok" : soth_tls_fail_names[c];
}

Test(tls_failure, corpus_lands_in_expected_classes)
{
    int table[OK_CLASS + 1][OK_CLASS + 1];
    memset(table, 0, sizeof(table));
    size_t right = 0, n = SOTH_ARRAY_LEN(FIX);
    for (size_t i = 0; i < n; i++) {
        char detail[256] = "";
        int got = FIX[i].upstream
                      ? run_upstream(FIX[i].arg, FIX[i].timeout_ms, detail, sizeof(detail))
                      : run_client(FIX[i].arg, FIX[i].timeout_ms, detail, sizeof(detail));
        table[FIX[i].expect][got]++;
        right += got == FIX[i].expect;
        printf("%-40s expect %-15s got %-15s %s  [%s]\n", FIX[i].name, class_name(FIX[i].expect),
               class_name(got), got == FIX[i].expect ? "  " : "XX", detail);
    }
    printf("\nconfusion (rows: expected, columns: classified)\n%-16s", "");
    for (int c = 0; c <= OK_CLASS; c++)
        printf("%6.6s ", class_name(c));
    printf("\n");
    for (int r = 0; r <= OK_CLASS; r++) {
        printf("%-16s", class_name(r));
        for (int c = 0; c <= OK_CLASS; c++)
            printf("%6d ", table[r][c]);
        printf("\n");
    }
    printf("%zu/%zu = %.1f%% in the expected class\n", right, n, 100.0 * (double)right / (double)n);
    fflush(stdout);
    cr_assert_geq(right * 100, n * 95, "%zu/%zu classified as expected", right, n);
}
