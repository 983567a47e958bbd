/*
 * Our server conns against Debian's python ssl (OpenSSL 3) over loopback: a client that
 * trusts our CA with check_hostname=True succeeds, one that does not fails with an unknown-CA
 * verification error, and a ticket issued by one worker context resumes on another (the
 * shared ticket key). And our side of a handshake with such a client takes no lock.
 */
#include <dlfcn.h>
#include <pthread.h>

#include "tls_sock.h"

/* Counted on the thread that sets `counting` (docs/performance.md, "Atomics and locks
 * reachable from the data path"): this binary's pthread_mutex_lock goes before libc's. */
static _Thread_local bool counting;
static _Thread_local unsigned n_locks;

int pthread_mutex_lock(pthread_mutex_t *m)
{
    static int (*real)(pthread_mutex_t *);
    if (real == NULL)
        real = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
    if (counting)
        n_locks++;
    return real(m);
}

#define PEERS "/usr/bin/python3 tests/tls/tls_peers.py"

static struct tu_env env;

static void setup(void)
{
    tu_env_init(&env);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s/ca.pem'", env.ca_pem, env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
}

static void teardown(void)
{
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}

TestSuite(tls_interop, .init = setup, .fini = teardown, .timeout = 120);

/* Serve one connection on ls with ctx t: handshake, read "ping", answer "pong". */
static bool serve_one(int ls, struct soth_tls_ctx *t, bool *resumed)
{
    int fd = tu_accept(ls, 10000);
    struct soth_tls_conn *c;
    cr_assert_eq(soth_tls_conn_new_server(t, SOTH_IOV_LIT("origin.test"), SOTH_IOV_NULL, &c), 0);
    enum soth_tls_transport k;
    counting = true;
    bool ok = tu_sock_handshake(fd, c, 5000, &k) == TU_DONE;
    counting = false;
    if (ok) {
        char ping[4];
        ok = tu_sock_read(fd, c, ping, 4, 5000) == 4 && memcmp(ping, "ping", 4) == 0;
        soth_tls_conn_write(c, "pong", 4);
        soth_tls_conn_shutdown(c);
        tu_flush(fd, c);
        if (resumed != NULL)
            *resumed = soth_tls_conn_resumed(c);
    }
    close(fd);
    soth_tls_conn_free(c);
    return ok;
}

static int run_client(const char *kind, uint16_t port, char *out, size_t cap,
                      struct soth_tls_ctx *t, int ls)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), PEERS " client %s %u '%s' 2>&1", kind, port, env.dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    serve_one(ls, t, NULL);
    out[0] = '\0';
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(tls_interop, python_trusting_our_ca_verifies_hostname)
{
    uint16_t port;
    int ls = tu_listen(&port);
    char out[512];
    cr_assert_eq(run_client("trusting", port, out, sizeof(out), env.t, ls), 0, "%s", out);
    cr_assert(strstr(out, "pong TLSv1.3") != NULL, "%s", out);
    close(ls);
}

/* OpenSSL's client sends a legacy session id (middlebox compatibility): wolfSSL 5.5.4 then
 * copied the session it had made a ticket for into its global cache, under the cache row's
 * mutex, with the cache "off" (tls/ctx.c). No lock, no shared state: only the ticket. */
Test(tls_interop, our_side_of_a_handshake_takes_no_lock)
{
    uint16_t port;
    int ls = tu_listen(&port);
    char out[512];
    n_locks = 0;
    cr_assert_eq(run_client("trusting", port, out, sizeof(out), env.t, ls), 0, "%s", out);
    cr_assert(strstr(out, "pong TLSv1.3") != NULL, "%s", out);
    cr_assert_eq(n_locks, 0, "our server conn's handshake took %u locks", n_locks);
    close(ls);
}

Test(tls_interop, python_without_our_ca_fails_unknown_ca)
{
    uint16_t port;
    int ls = tu_listen(&port);
    char out[512];
    cr_assert_eq(run_client("default", port, out, sizeof(out), env.t, ls), 3, "%s", out);
    cr_assert(strstr(out, "VERIFY unable to get local issuer certificate") != NULL, "%s", out);
    close(ls);
}

Test(tls_interop, ticket_from_one_worker_resumes_on_another)
{
    char err[256];
    struct soth_tls_ctx_params tp = {
        .ca = env.ca, .leaf_validity_days = 30, .leaf_cache_size = 8, .upstream_verify = false};
    struct soth_tls_ctx *t2;
    cr_assert_eq(soth_tls_ctx_new(&tp, &t2, err, sizeof(err)), 0, "%s", err);
    uint16_t p1, p2;
    int l1 = tu_listen(&p1), l2 = tu_listen(&p2);
    char cmd[600], out[512];
    snprintf(cmd, sizeof(cmd), PEERS " client resume %u,%u '%s' 2>&1", p1, p2, env.dir);
    FILE *p = popen(cmd, "r");
    bool r1 = true, r2 = false;
    cr_assert(serve_one(l1, env.t, &r1));
    cr_assert(serve_one(l2, t2, &r2));
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    cr_assert_not(r1);
    cr_assert(r2, "worker B did not resume worker A's session: %s", out);
    cr_assert(strstr(out, "reused False") != NULL && strstr(out, "reused True") != NULL, "%s", out);
    close(l1);
    close(l2);
    soth_tls_ctx_free(t2);
}
