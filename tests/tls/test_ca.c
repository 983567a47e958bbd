/* CA load / first-run generation / reuse / rotation, file modes, operator files. */
#include "tls_test_util.h"

#include <sys/stat.h>

static char dir[256];

static void setup(void)
{
    cr_assert_eq(soth_tls_global_init(), 0);
    tu_mkdtemp(dir, sizeof(dir));
}

static void teardown(void)
{
    tu_rmdir(dir);
    soth_tls_global_cleanup();
}

TestSuite(tls_ca, .init = setup, .fini = teardown, .timeout = 60);

static mode_t mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    return st.st_mode & 07777;
}

Test(tls_ca, first_run_creates_then_reuses)
{
    char cadir[400], err[256], path[500];
    snprintf(cadir, sizeof(cadir), "%s/sub/ca", dir);
    struct soth_tls_ca_params p = {.ca_dir = cadir};
    struct soth_tls_ca *ca, *ca2;
    enum soth_tls_ca_origin how;
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_CREATED);
    cr_assert_eq(mode_of(cadir), 0700);
    snprintf(path, sizeof(path), "%s/" SOTH_TLS_CA_KEY_FILE, cadir);
    cr_assert_eq(mode_of(path), 0600);
    snprintf(path, sizeof(path), "%s/" SOTH_TLS_CA_CERT_FILE, cadir);
    cr_assert_str_eq(soth_tls_ca_cert_path(ca), path);

    /* A real verifier's view: self-signed, CA:TRUE critical, keyCertSign, P-256, 10 years. */
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "openssl verify -x509_strict -CAfile '%s' '%s' >/dev/null && "
             "openssl x509 -in '%s' -noout -text | grep -q 'CA:TRUE' && "
             "openssl x509 -in '%s' -noout -text | grep -q 'Certificate Sign' && "
             "openssl x509 -in '%s' -noout -text | grep -q 'prime256v1' && "
             "openssl x509 -in '%s' -noout -checkend 311040000 >/dev/null && "
             "! openssl x509 -in '%s' -noout -checkend 317000000 >/dev/null",
             path, path, path, path, path, path, path);
    cr_assert_eq(tu_sh(cmd), 0);

    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca2, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_LOADED);
    struct soth_iov a = soth_tls_ca_cert_der(ca), b = soth_tls_ca_cert_der(ca2);
    cr_assert_eq(a.len, b.len);
    cr_assert(memcmp(a.base, b.base, a.len) == 0, "the same CA across restarts");
    soth_tls_ca_free(ca);
    soth_tls_ca_free(ca2);
}

Test(tls_ca, rotation_keeps_old_cert_for_reading)
{
    char err[256], path[500];
    struct soth_tls_ca_params p = {.ca_dir = dir, .rotate_after_days = 30};
    struct soth_tls_ca *ca, *ca2;
    enum soth_tls_ca_origin how;
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0, "%s", err);
    int64_t nb = soth_tls_ca_not_before(ca);
    /* 29 days later: kept */
    p.now_s = nb + 3600 + 29 * 86400;
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca2, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_LOADED);
    soth_tls_ca_free(ca2);
    /* 31 days later: rotated, old cert readable under a dated name, key gone */
    p.now_s = nb + 3600 + 31 * 86400;
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca2, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_ROTATED);
    struct soth_iov a = soth_tls_ca_cert_der(ca), b = soth_tls_ca_cert_der(ca2);
    cr_assert(a.len != b.len || memcmp(a.base, b.base, a.len) != 0);
    char cmd[1200];
    snprintf(
        cmd, sizeof(cmd),
        "set -e; cd '%s'; n=$(ls soth-mitm-ca.*.pem | wc -l); test $n -eq 1; "
        "openssl x509 -in soth-mitm-ca.*.pem -noout; ls soth-mitm-ca.*.key 2>/dev/null && exit 1; "
        "test -f " SOTH_TLS_CA_KEY_FILE,
        dir);
    cr_assert_eq(tu_sh(cmd), 0);
    snprintf(path, sizeof(path), "%s/" SOTH_TLS_CA_KEY_FILE, dir);
    cr_assert_eq(mode_of(path), 0600);
    soth_tls_ca_free(ca);
    soth_tls_ca_free(ca2);
    /* rotation 0 never rotates */
    p.rotate_after_days = 0;
    p.now_s = nb + 3650LL * 86400;
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca2, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_LOADED);
    soth_tls_ca_free(ca2);
}

Test(tls_ca, operator_files_and_their_errors)
{
    char cmd[1200], err[256], cert[400], key[400], other[400];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout op.key -out op.pem -days 30 -subj '/CN=Op CA' "
             "-addext basicConstraints=critical,CA:TRUE >/dev/null 2>&1 && "
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key "
             ">/dev/null 2>&1",
             dir);
    cr_assert_eq(tu_sh(cmd), 0);
    snprintf(cert, sizeof(cert), "%s/op.pem", dir);
    snprintf(key, sizeof(key), "%s/op.key", dir);
    snprintf(other, sizeof(other), "%s/other.key", dir);
    struct soth_tls_ca *ca = NULL;
    enum soth_tls_ca_origin how;

    struct soth_tls_ca_params p = {
        .ca_cert = cert, .ca_key = key, .rotate_after_days = 1, .now_s = 4000000000LL};
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_LOADED, "operator CAs are never rotated");
    soth_tls_ca_free(ca);

    p = (struct soth_tls_ca_params){.ca_cert = cert};
    cr_assert_lt(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0);
    cr_assert_str_eq(err, "tls.ca_cert: ca_cert and ca_key go together");

    p = (struct soth_tls_ca_params){.ca_cert = cert, .ca_key = other};
    cr_assert_lt(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0);
    cr_assert(strstr(err, "does not match") != NULL, "%s", err);

    p = (struct soth_tls_ca_params){.ca_cert = "/nonexistent/ca.pem", .ca_key = key};
    cr_assert_lt(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0);
    cr_assert(strstr(err, "tls.ca_cert: cannot read /nonexistent/ca.pem") == err, "%s", err);

    p = (struct soth_tls_ca_params){.ca_cert = key, .ca_key = key};
    cr_assert_lt(soth_tls_ca_load_or_create(&p, &ca, &how, err, sizeof(err)), 0);
    cr_assert(strstr(err, "no PEM certificate") != NULL, "%s", err);
}

Test(tls_ca, half_a_ca_dir_is_an_error)
{
    char err[256], path[500];
    struct soth_tls_ca_params p = {.ca_dir = dir};
    struct soth_tls_ca *ca;
    cr_assert_eq(soth_tls_ca_load_or_create(&p, &ca, NULL, err, sizeof(err)), 0, "%s", err);
    soth_tls_ca_free(ca);
    snprintf(path, sizeof(path), "%s/" SOTH_TLS_CA_KEY_FILE, dir);
    cr_assert_eq(unlink(path), 0);
    cr_assert_lt(soth_tls_ca_load_or_create(&p, &ca, NULL, err, sizeof(err)), 0);
    cr_assert(strstr(err, "has only one of") != NULL, "%s", err);
}
