/*
 * The bundle compiler when memory runs out (core/base/bundle.c, docs/bundles.md): every
 * allocation it makes (its own and jansson's) fails in turn, N = 0, 1, 2, ... The compile must
 * then fail cleanly with one "bundle: " line and *out NULL, freeing everything (ASan), or
 * succeed with exactly the text an unconstrained compile gives. bundle.c is compiled into this
 * test with its allocator calls redirected (STYLE section 8); the config loader it calls for
 * glob and regex checks comes from soth_base.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long alloc_budget = -1; /* allocations left before failing; -1 = unlimited */
static long failures;

static bool take(void)
{
    if (alloc_budget < 0)
        return true;
    if (alloc_budget == 0) {
        failures++;
        return false;
    }
    alloc_budget--;
    return true;
}

static void *t_malloc(size_t n)
{
    return take() ? malloc(n) : NULL;
}

static void *t_realloc(void *p, size_t n)
{
    return take() ? realloc(p, n) : NULL;
}

#define malloc  t_malloc
#define realloc t_realloc
#include "../../core/base/bundle.c"
#undef malloc
#undef realloc

/* Every bundle feature: identities of both kinds, ignore_hosts, several hosts per rule,
 * identities, alloc_budget, routes with and without credentials, defaults. */
static const char *const full =
    "{\"bundle_version\":1,\"bundle_id\":\"b\",\"require_identity\":true,"
    "\"identities\":[{\"id\":\"team-a\",\"proxy_users\":[{\"user\":\"alice\","
    "\"password_sha256\":\"5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8\"}],"
    "\"cidrs\":[\"10.1.0.0/16\"]},{\"id\":\"farm\",\"cidrs\":[\"fd00:20::/32\",\"0.0.0.0/0\"]}],"
    "\"ignore_hosts\":[\"^a\\\\.example:443$\"],"
    "\"rules\":[{\"id\":\"llm\",\"hosts\":[\"*.openai.example\",\"api.x:443\"],"
    "\"identities\":[\"team-a\",\"anonymous\"],\"action\":\"intercept\","
    "\"budget\":{\"requests\":600,\"bytes\":104857600,\"window_s\":60},"
    "\"route\":\"upstream:http://bob:pw@p.internal:3128\"},"
    "{\"id\":\"bank\",\"hosts\":[\"*.bank.example\"],\"action\":\"tunnel\"}],"
    "\"defaults\":{\"action\":\"tunnel\",\"route\":\"upstream:http://[fd00::1]:8080\"}}";

static void init_alloc(void)
{
    json_set_alloc_funcs(t_malloc, free);
}

TestSuite(bundle_oom, .init = init_alloc);

static void check_failure(int rc, const char *out, const char *err, long n)
{
    cr_assert_eq(rc, SOTH_E_CONFIG, "alloc_budget %ld", n);
    cr_assert_null(out, "alloc_budget %ld", n);
    cr_assert(strncmp(err, "bundle: ", 8) == 0, "alloc_budget %ld: %s", n, err);
    cr_assert_null(strchr(err, '\n'));
}

Test(bundle_oom, compile_text_fails_cleanly_at_every_allocation)
{
    for (unsigned flags = 0; flags <= SOTH_BUNDLE_F_REDACT; flags += SOTH_BUNDLE_F_REDACT) {
        char err[512] = "";
        char *want = NULL;
        alloc_budget = -1;
        cr_assert_eq(soth_bundle_compile_text(full, strlen(full), flags, &want, err, sizeof(err)),
                     0, "%s", err);
        long n;
        for (n = 0; n < 100000; n++) {
            char *out = (char *)err;
            failures = 0;
            alloc_budget = n;
            int rc = soth_bundle_compile_text(full, strlen(full), flags, &out, err, sizeof(err));
            alloc_budget = -1;
            if (rc != 0) {
                check_failure(rc, out, err, n);
                continue;
            }
            cr_assert_eq(failures, 0,
                         "alloc_budget %ld: an allocation failed but the compile succeeded", n);
            cr_assert_str_eq(out, want, "alloc_budget %ld", n);
            free(out);
            break;
        }
        cr_assert_gt(n, 50, "the compile should need many allocations, took %ld", n);
        free(want);
    }
}

Test(bundle_oom, compile_file_fails_cleanly_at_every_allocation)
{
    char path[] = "/tmp/soth-bundle-oom-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, full, strlen(full)), (ssize_t)strlen(full));
    close(fd);
    char err[512] = "";
    char *want = NULL;
    alloc_budget = -1;
    cr_assert_eq(soth_bundle_compile(path, 0, &want, err, sizeof(err)), 0, "%s", err);
    for (long n = 0; n < 100000; n++) {
        char *out = (char *)err;
        alloc_budget = n;
        int rc = soth_bundle_compile(path, 0, &out, err, sizeof(err));
        alloc_budget = -1;
        if (rc != 0) {
            check_failure(rc, out, err, n);
            if (n == 0) { /* the file buffer itself */
                char want_err[128];
                snprintf(want_err, sizeof(want_err), "bundle: %s: out of memory", path);
                cr_assert_str_eq(err, want_err);
            }
            continue;
        }
        cr_assert_str_eq(out, want);
        free(out);
        break;
    }
    free(want);
    unlink(path);
}
