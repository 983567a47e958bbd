/*
 * Config loading when memory runs out: every allocation the loader makes (its own and
 * jansson's) fails in turn, N = 0, 1, 2, ... The load must then fail cleanly with one
 * "config: ..." line and free everything (ASan), or succeed with the same effective config;
 * soth_config_to_json must return NULL or the complete text, never a partial one.
 * config.c is compiled into this test with its allocator calls redirected (STYLE section 8).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <pwd.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long budget = -1; /* allocations left before failing; -1 = unlimited */
static long failures;
static bool json_fails; /* jansson's allocations draw from the budget too */

static bool take(void)
{
    if (budget < 0)
        return true;
    if (budget == 0) {
        failures++;
        return false;
    }
    budget--;
    return true;
}

static void *t_malloc(size_t n)
{
    return take() ? malloc(n) : NULL;
}

static void *t_calloc(size_t n, size_t size)
{
    return take() ? calloc(n, size) : NULL;
}

static char *t_strdup(const char *s)
{
    return take() ? strdup(s) : NULL;
}

static char *t_strndup(const char *s, size_t n)
{
    return take() ? strndup(s, n) : NULL;
}

/* jansson reports some of its allocation failures as syntax errors ("string or '}' expected"),
 * so the exact reason is only checked while jansson itself is spared. */
static void *json_malloc(size_t n)
{
    return json_fails ? t_malloc(n) : malloc(n);
}

#define malloc  t_malloc
#define calloc  t_calloc
#define strdup  t_strdup
#define strndup t_strndup
#include "../../core/base/config.c"
#include "../../core/base/route.c"
#undef malloc
#undef calloc
#undef strdup
#undef strndup

static const char *const full =
    "{\"listen\":\"[::1]:8443\",\"mode\":\"reverse:https://origin.test:9443\",\"workers\":2,"
    "\"ignore_hosts\":[\"^.*\\\\.internal:443$\",\"^a$\"],"
    "\"policy\":{\"default\":\"tunnel\",\"rules\":[{\"host\":\"*.bank.example\","
    "\"action\":\"tunnel\"},{\"host\":\"ads.example:443\",\"action\":\"block\"}]},"
    "\"http2_enabled\":false,\"http2_max_header_list_size\":32768,\"http3_passthrough\":false,"
    "\"tls\":{\"ca_dir\":\"/var/lib/soth\",\"ca_cert\":\"/c.pem\",\"ca_key\":\"/c.key\","
    "\"leaf_cache_size\":0,\"leaf_validity_days\":7,\"ca_rotate_after_days\":90,"
    "\"upstream_verify\":false,\"upstream_ca_file\":\"/u.pem\","
    "\"learning\":{\"enabled\":false,\"failure_threshold\":5,\"window_s\":60}},"
    "\"events\":{\"ring_path\":\"/tmp/r.ring\",\"ring_size_mb\":8,\"body_capture_bytes\":0,"
    "\"sinks\":[{\"type\":\"jsonl\",\"path\":\"/tmp/e.jsonl\"},{\"type\":\"uds\","
    "\"path\":\"/tmp/e.sock\"}]},"
    "\"timeouts\":{\"connect_ms\":1,\"tls_handshake_ms\":2,\"request_header_ms\":3,"
    "\"idle_ms\":4,\"drain_ms\":0},\"metrics\":{\"listen\":\"127.0.0.1:9100\"},"
    "\"resolve\":{\"origin.test\":\"127.0.0.1\",\"v6.test\":\"::1\"}}";

static void init_alloc(void)
{
    /* jansson's own allocations (parse tree, dumps) draw from the same budget */
    json_set_alloc_funcs(json_malloc, free);
}

TestSuite(config_oom, .init = init_alloc);

static char *reference_json(const struct soth_cli_overrides *cli, const char *path)
{
    char err[512];
    struct soth_config *c = NULL;
    budget = -1;
    int rc = path ? soth_config_load(path, cli, &c, err, sizeof(err))
                  : soth_config_load_text(full, strlen(full), &c, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    char *js = soth_config_to_json(c);
    cr_assert_not_null(js);
    soth_config_unref(c);
    return js;
}

/* Loads with budget n; returns true once the load (and to_json) went through. */
static bool load_with_budget(long n, const struct soth_cli_overrides *cli, const char *path,
                             const char *want)
{
    char err[512] = "";
    struct soth_config *c = NULL;
    failures = 0;
    budget = n;
    int rc = path ? soth_config_load(path, cli, &c, err, sizeof(err))
                  : soth_config_load_text(full, strlen(full), &c, err, sizeof(err));
    budget = -1;
    if (rc != 0) {
        cr_assert_eq(rc, SOTH_E_CONFIG, "budget %ld", n);
        cr_assert_null(c);
        cr_assert(strncmp(err, "config: ", 8) == 0, "budget %ld: %s", n, err);
        cr_assert_null(strchr(err, '\n'));
        /* The reason is the exhaustion, not an invented validation error. */
        if (!json_fails)
            cr_assert(strstr(err, ": out of memory") != NULL, "budget %ld: %s", n, err);
        return false;
    }
    cr_assert_eq(failures, 0, "budget %ld: an allocation failed but the load succeeded", n);
    char *js = soth_config_to_json(c);
    cr_assert_str_eq(js, want, "budget %ld", n);
    free(js);
    soth_config_unref(c);
    return true;
}

Test(config_oom, load_text_fails_cleanly_at_every_allocation)
{
    char *want = reference_json(NULL, NULL);
    long n = 0;
    while (!load_with_budget(n, NULL, NULL, want))
        cr_assert_lt(++n, 100000, "no end in sight");
    cr_expect_gt(n, 30, "suspiciously few allocations: %ld", n);
    json_fails = true;
    n = 0;
    while (!load_with_budget(n, NULL, NULL, want))
        cr_assert_lt(++n, 100000, "no end in sight");
    free(want);
}

Test(config_oom, load_file_with_flags_fails_cleanly_at_every_allocation)
{
    char path[] = "/tmp/soth-cfg-oom-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, full, strlen(full)), (ssize_t)strlen(full));
    close(fd);
    struct soth_cli_overrides cli = {.listen = "127.0.0.1:1",
                                     .mode = "transparent",
                                     .workers = 3,
                                     .ca_dir = "/ca",
                                     .event_ring = "/r.ring",
                                     .metrics = "[::1]:2"};
    char *want = reference_json(&cli, path);
    for (int pass = 0; pass < 2; pass++) {
        json_fails = pass == 1;
        long n = 0;
        while (!load_with_budget(n, &cli, path, want))
            cr_assert_lt(++n, 100000, "no end in sight");
    }
    free(want);
    unlink(path);
}

/* --bundle (docs/bundles.md): the bundle compiled and laid over the file. bundle.c keeps the
 * real allocator here (test_bundle_oom fails its own); jansson's allocations, which do all of
 * the laying over, fail in the second pass. */
Test(config_oom, load_with_bundle_fails_cleanly_at_every_allocation)
{
    char path[] = "/tmp/soth-cfg-oom-XXXXXX", bpath[] = "/tmp/soth-bundle-oom-XXXXXX";
    const char *bundle = "{\"bundle_version\":1,\"ignore_hosts\":[\"^i:\"],\"rules\":["
                         "{\"id\":\"r\",\"hosts\":[\"*.a\",\"b:443\"],\"action\":\"tunnel\"}],"
                         "\"defaults\":{\"action\":\"block\"}}";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, full, strlen(full)), (ssize_t)strlen(full));
    close(fd);
    fd = mkstemp(bpath);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, bundle, strlen(bundle)), (ssize_t)strlen(bundle));
    close(fd);
    struct soth_cli_overrides cli = {.workers = -1, .bundle = bpath};
    char *want = reference_json(&cli, path);
    cr_assert_not_null(strstr(want, "\"b:443\""));
    for (int pass = 0; pass < 2; pass++) {
        json_fails = pass == 1;
        for (long n = 0;; n++) {
            cr_assert_lt(n, 100000, "no end in sight");
            char err[512] = "";
            struct soth_config *c = NULL;
            failures = 0;
            budget = n;
            int rc = soth_config_load(path, &cli, &c, err, sizeof(err));
            budget = -1;
            if (rc != 0) {
                cr_assert_eq(rc, SOTH_E_CONFIG, "budget %ld", n);
                cr_assert_null(c);
                cr_assert(strncmp(err, "config: ", 8) == 0 || strncmp(err, "bundle: ", 8) == 0,
                          "budget %ld: %s", n, err);
                cr_assert_null(strchr(err, '\n'));
                if (!json_fails)
                    cr_assert(strstr(err, ": out of memory") != NULL, "budget %ld: %s", n, err);
                continue;
            }
            cr_assert_eq(failures, 0, "budget %ld: an allocation failed, the load succeeded", n);
            char *js = soth_config_to_json(c);
            cr_assert_str_eq(js, want, "budget %ld", n);
            free(js);
            soth_config_unref(c);
            break;
        }
    }
    free(want);
    unlink(path);
    unlink(bpath);
}

Test(config_oom, to_json_is_complete_or_null)
{
    char err[512];
    struct soth_config *c = NULL;
    cr_assert_eq(soth_config_load_text(full, strlen(full), &c, err, sizeof(err)), 0, "%s", err);
    char *want = soth_config_to_json(c);
    cr_assert_not_null(want);
    json_fails = true;
    for (long n = 0;; n++) {
        cr_assert_lt(n, 100000);
        failures = 0;
        budget = n;
        char *js = soth_config_to_json(c);
        budget = -1;
        if (js == NULL) {
            cr_assert_gt(failures, 0);
            continue;
        }
        cr_assert_eq(failures, 0, "budget %ld: allocation failed, text returned anyway", n);
        cr_assert_str_eq(js, want);
        free(js);
        break;
    }
    free(want);
    soth_config_unref(c);
}

Test(config_oom, default_paths)
{
    setenv("XDG_DATA_HOME", "/d", 1);
    budget = 0;
    char *d = soth_config_default_ca_dir();
    char *r = soth_config_default_ring_path();
    budget = -1;
    cr_expect_null(d);
    cr_expect_null(r);
}

Test(config_oom, reload_fails_cleanly_at_every_allocation)
{
    char err[512];
    struct soth_config *cur = NULL;
    cr_assert_eq(soth_config_load_text(full, strlen(full), &cur, err, sizeof(err)), 0, "%s", err);
    char path[] = "/tmp/soth-cfg-oom-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *text = "{\"listen\":\"127.0.0.1:1\",\"ignore_hosts\":[\"^x:\"],"
                       "\"policy\":{\"rules\":[{\"host\":\"*.y\",\"action\":\"block\"}]}}";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct soth_config *next = NULL;
    bool restart = false;
    cr_assert_eq(soth_config_reload(cur, path, NULL, &next, &restart, err, sizeof(err)), 0);
    char *want = soth_config_to_json(next);
    soth_config_unref(next);
    cr_expect(restart);
    for (int pass = 0; pass < 2; pass++) {
        json_fails = pass == 1;
        for (long n = 0;; n++) {
            cr_assert_lt(n, 100000);
            failures = 0;
            budget = n;
            next = cur; /* must come back NULL on failure */
            int rc = soth_config_reload(cur, path, NULL, &next, &restart, err, sizeof(err));
            budget = -1;
            if (rc != 0) {
                cr_assert_eq(rc, SOTH_E_CONFIG);
                cr_assert_null(next);
                cr_assert(strncmp(err, "config: ", 8) == 0, "%s", err);
                if (!json_fails)
                    cr_assert(strstr(err, ": out of memory") != NULL, "budget %ld: %s", n, err);
                continue;
            }
            cr_assert_eq(failures, 0, "budget %ld", n);
            char *js = soth_config_to_json(next);
            cr_assert_str_eq(js, want);
            free(js);
            soth_config_unref(next);
            break;
        }
    }
    json_fails = false;
    free(want);
    soth_config_unref(cur);
    unlink(path);
}
