/* Config loading: golden error lines for invalid configs, effective JSON for valid ones. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <string.h>

#include <unistd.h>

#include "soth/base.h"
#include "soth/config.h"

struct bad_case {
    const char *json;
    const char *error;
};

static const struct bad_case bad_cases[] = {
    {"[]", "config: (top level): expected object, got array"},
    {"{\"bogus\": 1}", "config: bogus: unknown key"},
    {"{\"tls\": {\"foo\": 1}}", "config: tls.foo: unknown key"},
    {"{\"tls\": {\"learning\": {\"x\": 1}}}", "config: tls.learning.x: unknown key"},
    {"{\"tls\": {\"leaf_validity_days\": -3}}",
     "config: tls.leaf_validity_days: expected integer >= 1, got -3"},
    {"{\"tls\": {\"leaf_cache_size\": -3}}",
     "config: tls.leaf_cache_size: expected integer >= 0, got -3"},
    {"{\"tls\": {\"leaf_cache_size\": \"big\"}}",
     "config: tls.leaf_cache_size: expected integer >= 0, got \"big\""},
    {"{\"workers\": 5000}", "config: workers: expected integer <= 1024, got 5000"},
    {"{\"workers\": 1.5}", "config: workers: expected integer >= 0, got 1.5"},
    {"{\"http2_enabled\": \"yes\"}", "config: http2_enabled: expected boolean, got string"},
    {"{\"listen\": \"nonsense\"}", "config: listen: expected HOST:PORT, got \"nonsense\""},
    {"{\"listen\": \"127.0.0.1:99999\"}",
     "config: listen: port must be an integer 0..65535, got \"99999\""},
    {"{\"listen\": \"localhost:80\"}",
     "config: listen: expected a numeric IPv4 or [IPv6] address, got \"localhost:80\""},
    {"{\"listen\": \"[::1:80\"}", "config: listen: expected [IPV6]:PORT, got \"[::1:80\""},
    {"{\"listen\": 8080}", "config: listen: expected string \"HOST:PORT\", got integer"},
    {"{\"mode\": \"sideways\"}",
     "config: mode: expected regular, transparent or reverse:SCHEME://HOST:PORT, got "
     "\"sideways\""},
    {"{\"mode\": \"reverse:ftp://x\"}",
     "config: mode: expected reverse:http://HOST[:PORT] or reverse:https://HOST[:PORT], got "
     "\"reverse:ftp://x\""},
    {"{\"tls\": {\"ca_cert\": \"/x.pem\"}}",
     "config: tls.ca_key: tls.ca_cert and tls.ca_key must be given together"},
    {"{\"tls\": {\"ca_key\": \"/x.key\"}}",
     "config: tls.ca_cert: tls.ca_cert and tls.ca_key must be given together"},
    {"{\"ignore_hosts\": [\"ok\", \"(unclosed\"]}",
     "config: ignore_hosts[1]: invalid regular expression: Unmatched ( or \\("},
    {"{\"ignore_hosts\": \"x\"}", "config: ignore_hosts: expected array, got string"},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.*.com\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: '*' must be the whole leftmost label in "
     "\"a.*.com\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a b\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: invalid character ' ' in \"a b\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com:0\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: port must be 1..65535 in \"a.com:0\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"allow\"}]}}",
     "config: policy.rules[0].action: expected \"intercept\", \"tunnel\" or \"block\", got "
     "\"allow\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\"}]}}",
     "config: policy.rules[0].action: missing"},
    {"{\"policy\": {\"default\": \"drop\"}}",
     "config: policy.default: expected \"intercept\", \"tunnel\" or \"block\", got \"drop\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"kafka\", \"path\": \"/x\"}]}}",
     "config: events.sinks[0].type: expected \"jsonl\" or \"uds\", got \"kafka\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"jsonl\"}]}}", "config: events.sinks[0].path: missing"},
    {"{\"events\": {\"ring_size_mb\": 0}}",
     "config: events.ring_size_mb: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"idle_ms\": 0}}", "config: timeouts.idle_ms: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"drain_ms\": -1}}",
     "config: timeouts.drain_ms: expected integer >= 0, got -1"},
    {"{\"metrics\": {\"listen\": \"x\"}}", "config: metrics.listen: expected HOST:PORT, got \"x\""},
    {"{\"resolve\": {\"origin.test\": \"not-an-ip\"}}",
     "config: resolve.origin.test: expected a numeric IPv4 or IPv6 address, got \"not-an-ip\""},
    {"{\"http2_max_header_list_size\": 10}",
     "config: http2_max_header_list_size: expected integer >= 1024, got 10"},
    {"{\"listen\": \"127.0.0.1:1\", \"listen\": \"127.0.0.1:2\"}",
     "config: (text): line 1, column 34: duplicate object key near '\"listen\"'"},
    {"{", "config: (text): line 1, column 1: string or '}' expected near end of file"},
};

Test(config, invalid_configs_name_the_key)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        char err[512] = "";
        struct soth_config *c = NULL;
        int rc = soth_config_load_text(bad_cases[i].json, strlen(bad_cases[i].json), &c, err,
                                       sizeof(err));
        cr_expect_eq(rc, SOTH_E_CONFIG, "case %zu accepted: %s", i, bad_cases[i].json);
        cr_expect_str_eq(err, bad_cases[i].error, "case %zu: %s", i, bad_cases[i].json);
        cr_expect_null(c);
    }
}

static json_t *effective(const char *text)
{
    char err[512];
    struct soth_config *c = NULL;
    int rc = soth_config_load_text(text, strlen(text), &c, err, sizeof(err));
    cr_assert_eq(rc, 0, "rejected: %s", err);
    char *js = soth_config_to_json(c);
    json_error_t je;
    json_t *j = json_loads(js, 0, &je);
    cr_assert_not_null(j, "effective JSON does not parse: %s", je.text);
    free(js);
    soth_config_unref(c);
    return j;
}

Test(config, defaults_are_spec_defaults)
{
    json_t *got = effective("{}");
    json_error_t je;
    json_t *want = json_loads(
        "{\"listen\":\"127.0.0.1:8080\",\"mode\":\"regular\",\"workers\":0,\"ignore_hosts\":[],"
        "\"policy\":{\"default\":\"intercept\",\"rules\":[]},\"http2_enabled\":true,"
        "\"http2_max_header_list_size\":65536,\"http3_passthrough\":true,"
        "\"tls\":{\"ca_dir\":null,\"ca_cert\":null,\"ca_key\":null,\"leaf_cache_size\":4096,"
        "\"leaf_validity_days\":30,\"ca_rotate_after_days\":0,\"upstream_verify\":true,"
        "\"upstream_ca_file\":null,\"learning\":{\"enabled\":true,\"failure_threshold\":3,"
        "\"window_s\":300}},"
        "\"events\":{\"ring_path\":null,\"ring_size_mb\":64,\"body_capture_bytes\":4096,"
        "\"sinks\":[]},"
        "\"timeouts\":{\"connect_ms\":10000,\"tls_handshake_ms\":10000,"
        "\"request_header_ms\":10000,\"idle_ms\":120000,\"drain_ms\":5000},"
        "\"metrics\":{\"listen\":null},\"resolve\":{}}",
        0, &je);
    cr_assert_not_null(want, "%s", je.text);
    char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
    cr_expect(json_equal(got, want), "got %s\nwant %s", g, w);
    free(g);
    free(w);
    json_decref(got);
    json_decref(want);
}

Test(config, spec_example_round_trips)
{
    const char *text =
        "{\"listen\":\"[::1]:8443\",\"mode\":\"reverse:https://origin.test:9443\",\"workers\":2,"
        "\"ignore_hosts\":[\"^.*\\\\.internal:443$\"],"
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
    json_t *got = effective(text);
    json_error_t je;
    json_t *want = json_loads(text, 0, &je);
    cr_assert_not_null(want);
    char *g = json_dumps(got, JSON_SORT_KEYS);
    cr_expect(json_equal(got, want), "got %s", g);
    free(g);
    json_decref(got);
    json_decref(want);
}

Test(config, parsed_fields)
{
    char err[256];
    struct soth_config *c = NULL;
    const char *text = "{\"mode\":\"reverse:https://origin.test\",\"listen\":\"[::1]:0\","
                       "\"policy\":{\"rules\":[{\"host\":\"*.x.example:8443\",\"action\":"
                       "\"block\"}]}}";
    cr_assert_eq(soth_config_load_text(text, strlen(text), &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(c->mode, SOTH_MODE_REVERSE);
    cr_expect(c->reverse_tls);
    cr_expect_str_eq(c->reverse_host, "origin.test");
    cr_expect_eq(c->reverse_port, 443);
    cr_expect_eq(c->listen.addr.ss_family, AF_INET6);
    cr_expect_eq(c->n_rules, 1);
    cr_expect_str_eq(c->rules[0].host, "*.x.example");
    cr_expect_eq(c->rules[0].port, 8443);
    cr_expect_str_eq(c->rules[0].text, "*.x.example:8443");
    cr_expect_eq(c->rules[0].action, SOTH_ACTION_BLOCK);
    struct soth_config *r = soth_config_ref(c);
    soth_config_unref(c);
    cr_expect_eq(r->reverse_port, 443); /* still alive: one reference left */
    soth_config_unref(r);
}

Test(config, cli_overrides_file_and_are_validated)
{
    char path[] = "/tmp/soth-cfg-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *text = "{\"listen\":\"127.0.0.1:1111\",\"workers\":3}";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char err[256];
    struct soth_config *c = NULL;
    struct soth_cli_overrides cli = {.listen = "127.0.0.1:2222",
                                     .workers = -1,
                                     .event_ring = "/tmp/x.ring",
                                     .mode = "transparent"};
    cr_assert_eq(soth_config_load(path, &cli, &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(c->listen.port, 2222);
    cr_expect_eq(c->workers, 3);
    cr_expect_str_eq(c->events.ring_path, "/tmp/x.ring");
    cr_expect_eq(c->mode, SOTH_MODE_TRANSPARENT);
    soth_config_unref(c);
    struct soth_cli_overrides bad = {.metrics = "nope", .workers = -1};
    cr_expect_eq(soth_config_load(path, &bad, &c, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "config: --metrics: expected HOST:PORT, got \"nope\"");
    unlink(path);
    cr_expect_eq(soth_config_load(path, NULL, &c, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect(strstr(err, "unable to open") != NULL, "%s", err);
}

Test(config, hostport)
{
    char err[256];
    struct soth_hostport hp;
    cr_assert_eq(soth_hostport_parse("[::1]:443", &hp, err, sizeof(err)), 0);
    cr_expect_str_eq(hp.host, "::1");
    cr_expect_eq(hp.port, 443);
    cr_expect_eq(hp.addr.ss_family, AF_INET6);
    soth_hostport_dispose(&hp);
    cr_assert_eq(soth_hostport_parse("example.com:80", &hp, err, sizeof(err)), 0);
    cr_expect_eq(hp.addr_len, 0); /* a name, not a literal */
    soth_hostport_dispose(&hp);
    cr_expect_eq(soth_hostport_parse("::1:443", &hp, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_eq(soth_hostport_parse("a:", &hp, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_eq(soth_hostport_parse("a:08", &hp, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_eq(soth_hostport_parse(":80", &hp, err, sizeof(err)), SOTH_E_CONFIG);
}

Test(config, default_paths_follow_xdg)
{
    setenv("XDG_RUNTIME_DIR", "/run/user/42", 1);
    setenv("XDG_DATA_HOME", "/home/u/.data", 1);
    char *r = soth_config_default_ring_path(), *d = soth_config_default_ca_dir();
    cr_expect_str_eq(r, "/run/user/42/soth-mitm/events.ring");
    cr_expect_str_eq(d, "/home/u/.data/soth-mitm");
    free(r);
    free(d);
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("XDG_DATA_HOME");
    setenv("HOME", "/home/u", 1);
    r = soth_config_default_ring_path();
    d = soth_config_default_ca_dir();
    char want[64];
    snprintf(want, sizeof(want), "/tmp/soth-mitm-%u/events.ring", (unsigned)getuid());
    cr_expect_str_eq(r, want);
    cr_expect_str_eq(d, "/home/u/.local/share/soth-mitm");
    free(r);
    free(d);
}
