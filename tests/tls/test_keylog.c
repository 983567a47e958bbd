/*
 * The key log (docs/tls.md, "Key log") over in-memory conns: both conns of a TLS 1.3
 * handshake write their five secrets, lines are well formed, the file is 0600 under a
 * permissive umask; nothing is written while the log is off. (Decryption of real captures with
 * these lines: tests/integration/test_keylog.py.)
 */
#include "tls_test_util.h"

#include <ctype.h>
#include <sys/stat.h>

static int handshake_pair(struct tu_env *env)
{
    struct soth_tls_conn *cli, *srv;
    cr_assert_eq(soth_tls_conn_new_client(env->t, SOTH_IOV_LIT("kl.example.test"), NULL, 0, &cli),
                 0);
    cr_assert_eq(
        soth_tls_conn_new_server(env->t, SOTH_IOV_LIT("kl.example.test"), SOTH_IOV_NULL, &srv), 0);
    int rc = tu_handshake(cli, srv);
    soth_tls_conn_free(cli);
    soth_tls_conn_free(srv);
    return rc;
}

static size_t read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return n;
}

Test(keylog, tls13_pair_writes_five_secrets_per_conn, .timeout = 60)
{
    struct tu_env env;
    char path[512], err[256];
    static char text[8192];
    tu_env_init(&env);
    snprintf(path, sizeof(path), "%s/keys.log", env.dir);

    /* Off: nothing happens. */
    cr_assert(!soth_tls_keylog_enabled());
    cr_assert_eq(handshake_pair(&env), 0);

    mode_t old = umask(0);
    int rc = soth_tls_keylog_open(path, err, sizeof(err));
    umask(old);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert(soth_tls_keylog_enabled());
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    cr_assert_eq(handshake_pair(&env), 0);
    soth_tls_keylog_close();
    cr_assert(!soth_tls_keylog_enabled());
    cr_assert_eq(handshake_pair(&env), 0); /* after close: nothing more */

    read_file(path, text, sizeof(text));
    static const char *const labels[] = {
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"};
    int count[5] = {0};
    char first_random[65] = "";
    int lines = 0, same_random = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        lines++;
        char label[64], cr[80], secret[160];
        cr_assert_eq(sscanf(line, "%63s %79s %159s", label, cr, secret), 3, "%s", line);
        cr_assert_eq(strlen(cr), 64, "%s", line);
        cr_assert_eq(strlen(secret), 64, "%s", line); /* SHA-256 suites: 32-byte secrets */
        for (const char *p = cr; *p; p++)
            cr_assert(isxdigit((unsigned char)*p) && !isupper((unsigned char)*p));
        bool known = false;
        for (int i = 0; i < 5; i++)
            if (strcmp(label, labels[i]) == 0) {
                count[i]++;
                known = true;
            }
        cr_assert(known, "%s", label);
        if (first_random[0] == '\0')
            memcpy(first_random, cr, 65);
        same_random += strcmp(first_random, cr) == 0;
    }
    /* One handshake while on, two conns: each secret twice, both under one client random
     * (both ends of the same connection here). */
    cr_assert_eq(lines, 10);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(count[i], 2, "%s", labels[i]);
    cr_assert_eq(same_random, 10);
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}

Test(keylog, unopenable_path_is_refused)
{
    char err[256];
    cr_assert_lt(soth_tls_keylog_open("/nonexistent-dir/k.log", err, sizeof(err)), 0);
    cr_assert(strstr(err, "tls.keylog_file: cannot open /nonexistent-dir/k.log") != NULL, "%s",
              err);
    cr_assert_lt(soth_tls_keylog_open("/tmp", err, sizeof(err)), 0);
    cr_assert(!soth_tls_keylog_enabled());
}
