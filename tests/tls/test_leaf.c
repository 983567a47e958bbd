/*
 * Leaf minting, checked by a real verifier: each leaf and the CA go to files and
 * `openssl verify` decides (hostname / IP checks included), not our own parser.
 */
#include "tls_test_util.h"

static struct tu_env env;

static void setup(void)
{
    tu_env_init(&env);
}

static void teardown(void)
{
    tu_env_dispose(&env);
    soth_tls_global_cleanup();
}

TestSuite(tls_leaf, .init = setup, .fini = teardown, .timeout = 120);

/* Mint a leaf for name into <dir>/leaf-<tag>.pem (via openssl x509 -inform der). */
static void write_leaf(struct soth_tls_ctx *t, const char *dir, const char *name, const char *tag)
{
    uint8_t der[2048];
    ssize_t n = soth_tls_leaf_mint(t, soth_iov(name, strlen(name)), der, sizeof(der));
    cr_assert_gt(n, 0, "mint %s: %zd", name, n);
    char path[512], cmd[1200];
    snprintf(path, sizeof(path), "%s/leaf-%s.der", dir, tag);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(der, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "openssl x509 -inform der -in '%s' -out '%s/leaf-%s.pem'", path, dir,
             tag);
    cr_assert_eq(tu_sh(cmd), 0);
}

/* 0 when `openssl verify` accepts leaf-<tag>.pem for the check (e.g. "-verify_hostname x"). */
static int verify(const char *dir, const char *tag, const char *check)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd),
             "openssl verify -x509_strict -purpose sslserver -CAfile '%s/" SOTH_TLS_CA_CERT_FILE
             "' %s '%s/leaf-%s.pem' >/dev/null 2>&1",
             dir, check, dir, tag);
    return tu_sh(cmd);
}

Test(tls_leaf, domain_name_verifies_and_other_names_do_not)
{
    write_leaf(env.t, env.dir, "www.Example.TEST", "dom");
    cr_assert_eq(verify(env.dir, "dom", "-verify_hostname www.example.test"), 0);
    cr_assert_neq(verify(env.dir, "dom", "-verify_hostname other.example.test"), 0);
    cr_assert_neq(verify(env.dir, "dom", "-verify_hostname example.test"), 0);
    /* CN carries the name too */
    char cmd[600];
    snprintf(cmd, sizeof(cmd),
             "openssl x509 -in '%s/leaf-dom.pem' -noout -subject | grep -q 'CN = www.example.test'",
             env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
}

Test(tls_leaf, wildcard_covers_one_label)
{
    write_leaf(env.t, env.dir, "*.wild.test", "wild");
    cr_assert_eq(verify(env.dir, "wild", "-verify_hostname a.wild.test"), 0);
    cr_assert_eq(verify(env.dir, "wild", "-verify_hostname zz-9.wild.test"), 0);
    cr_assert_neq(verify(env.dir, "wild", "-verify_hostname wild.test"), 0);
    cr_assert_neq(verify(env.dir, "wild", "-verify_hostname a.b.wild.test"), 0);
}

Test(tls_leaf, ipv4_and_ipv6_literals_get_ip_sans)
{
    write_leaf(env.t, env.dir, "127.0.0.1", "v4");
    cr_assert_eq(verify(env.dir, "v4", "-verify_ip 127.0.0.1"), 0);
    cr_assert_neq(verify(env.dir, "v4", "-verify_ip 127.0.0.2"), 0);
    cr_assert_neq(verify(env.dir, "v4", "-verify_hostname 127.0.0.1.example"), 0);
    write_leaf(env.t, env.dir, "[2001:DB8::7]", "v6");
    cr_assert_eq(verify(env.dir, "v6", "-verify_ip 2001:db8::7"), 0);
    cr_assert_eq(verify(env.dir, "v6", "-verify_ip 2001:0db8:0:0:0:0:0:7"), 0);
    cr_assert_neq(verify(env.dir, "v6", "-verify_ip 2001:db8::8"), 0);
    write_leaf(env.t, env.dir, "::1", "lo6");
    cr_assert_eq(verify(env.dir, "lo6", "-verify_ip ::1"), 0);
}

Test(tls_leaf, validity_backdated_and_bounded_serial_random)
{
    write_leaf(env.t, env.dir, "v.example.test", "a");
    write_leaf(env.t, env.dir, "v.example.test", "b");
    char cmd[1200];
    /* valid now, still valid in 29 days, expired in 31 (leaf_validity_days 30, backdated 1 h) */
    snprintf(cmd, sizeof(cmd),
             "openssl x509 -in '%s/leaf-a.pem' -noout -checkend 2505600 >/dev/null", env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
    snprintf(cmd, sizeof(cmd),
             "openssl x509 -in '%s/leaf-a.pem' -noout -checkend 2678400 >/dev/null", env.dir);
    cr_assert_neq(tu_sh(cmd), 0);
    /* notBefore is in the past by about an hour */
    snprintf(
        cmd, sizeof(cmd),
        "/usr/bin/python3 -c \"import ssl,sys,time; import subprocess as s; "
        "d=s.check_output(['openssl','x509','-in','%s/leaf-a.pem','-noout','-startdate']).decode()"
        ".split('=',1)[1].strip(); t=ssl.cert_time_to_seconds(d); "
        "sys.exit(0 if 3000 < time.time()-t < 4000 else 1)\"",
        env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
    /* two leaves for one name: different serials */
    snprintf(cmd, sizeof(cmd),
             "test \"$(openssl x509 -in '%s/leaf-a.pem' -noout -serial)\" != "
             "\"$(openssl x509 -in '%s/leaf-b.pem' -noout -serial)\"",
             env.dir, env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
    /* EKU serverAuth, AKI = the CA's SKI */
    snprintf(cmd, sizeof(cmd),
             "openssl x509 -in '%s/leaf-a.pem' -noout -ext extendedKeyUsage | grep -q 'Server "
             "Authentication' && test \"$(openssl x509 -in '%s/leaf-a.pem' -noout -ext "
             "authorityKeyIdentifier | tail -1 | tr -d ' ')\" = \"$(openssl x509 -in "
             "'%s/" SOTH_TLS_CA_CERT_FILE
             "' -noout -ext subjectKeyIdentifier | tail -1 | tr -d ' ')\"",
             env.dir, env.dir, env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
}

Test(tls_leaf, invalid_names_are_refused)
{
    uint8_t der[2048];
    const char *bad[] = {"", "a b", "a..b", "x.", "*.", "a.*.b", "\xc3\xa9.test", "1.2.3.4:80"};
    for (size_t i = 0; i < SOTH_ARRAY_LEN(bad); i++)
        cr_expect_eq(soth_tls_leaf_mint(env.t, soth_iov(bad[i], strlen(bad[i])), der, sizeof(der)),
                     SOTH_E_MALFORMED, "%s", bad[i]);
    char longname[300];
    memset(longname, 'a', sizeof(longname));
    cr_expect_eq(soth_tls_leaf_mint(env.t, soth_iov(longname, sizeof(longname)), der, sizeof(der)),
                 SOTH_E_MALFORMED);
    cr_expect_eq(soth_tls_leaf_mint(env.t, SOTH_IOV_LIT("ok.test"), der, 100), SOTH_E_TOO_LARGE);
}

Test(tls_leaf, long_name_without_cn_still_verifies)
{
    /* 4 labels of 60 chars: too long for a CN (64), the SAN carries it */
    char name[256];
    size_t off = 0;
    for (int l = 0; l < 4; l++) {
        memset(name + off, 'a' + l, 60);
        off += 60;
        name[off++] = '.';
    }
    memcpy(name + off, "test", 5);
    write_leaf(env.t, env.dir, name, "long");
    char check[300];
    snprintf(check, sizeof(check), "-verify_hostname %s", name);
    cr_assert_eq(verify(env.dir, "long", check), 0);
}

Test(tls_leaf, operator_rsa_ca_signs_leaves)
{
    char cmd[1500], err[256];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -keyout op.key -out op.pem "
             "-days 30 -subj '/CN=Operator Test CA' -addext basicConstraints=critical,CA:TRUE "
             "-addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1",
             env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
    char cert[400], key[400];
    snprintf(cert, sizeof(cert), "%s/op.pem", env.dir);
    snprintf(key, sizeof(key), "%s/op.key", env.dir);
    struct soth_tls_ca_params cp = {.ca_cert = cert, .ca_key = key};
    struct soth_tls_ca *ca;
    enum soth_tls_ca_origin how;
    cr_assert_eq(soth_tls_ca_load_or_create(&cp, &ca, &how, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(how, SOTH_TLS_CA_LOADED);
    struct soth_tls_ctx_params tp = {
        .ca = ca, .leaf_validity_days = 7, .leaf_cache_size = 4, .upstream_verify = false};
    struct soth_tls_ctx *t;
    cr_assert_eq(soth_tls_ctx_new(&tp, &t, err, sizeof(err)), 0, "%s", err);
    write_leaf(t, env.dir, "rsa.example.test", "rsa");
    snprintf(cmd, sizeof(cmd),
             "openssl verify -x509_strict -CAfile '%s/op.pem' -verify_hostname rsa.example.test "
             "'%s/leaf-rsa.pem' >/dev/null",
             env.dir, env.dir);
    cr_assert_eq(tu_sh(cmd), 0);
    soth_tls_ctx_free(t);
    soth_tls_ca_free(ca);
}
