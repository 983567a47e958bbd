/*
 * Config loading (core/base/config.c): golden error lines for invalid configs, effective JSON
 * for valid ones, precedence defaults < file < command line, host:port parsing, default paths,
 * reference counting and the SIGHUP publication slot.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/config.h"

/* ---- helpers */

static unsigned refs_of(struct soth_config *c);

/** Writes text to a fresh temporary file named from the mkstemp template in path. */
static void write_tmp(char *path, const char *text)
{
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
}

/** Replaces the contents of an existing file (as an operator editing before SIGHUP). */
static void rewrite(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    cr_assert_eq(fputs(text, f) >= 0, 1);
    fclose(f);
}

static json_t *parse_json(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    cr_assert_not_null(j, "bad JSON in test (%d:%d %s): %s", je.line, je.column, je.text, text);
    return j;
}

static json_t *effective_of(const struct soth_config *c)
{
    char *js = soth_config_to_json(c);
    cr_assert_not_null(js);
    json_t *j = parse_json(js);
    free(js);
    return j;
}

static json_t *effective(const char *text)
{
    char err[512] = "";
    struct soth_config *c = NULL;
    int rc = soth_config_load_text(text, strlen(text), &c, err, sizeof(err));
    cr_assert_eq(rc, 0, "rejected %s: %s", text, err);
    json_t *j = effective_of(c);
    soth_config_unref(c);
    return j;
}

static void expect_json_eq(json_t *got, json_t *want, const char *what)
{
    char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
    cr_expect(json_equal(got, want), "%s\n got  %s\n want %s", what, g, w);
    free(g);
    free(w);
}

/* The embedded defaults (docs/config.md), as --check-config prints them for an empty file. */
static const char *const defaults_json =
    "{\"listen\":\"127.0.0.1:8080\",\"mode\":\"regular\",\"workers\":0,\"busy_poll_us\":0,"
    "\"wake_batch_us\":50,\"ignore_hosts\":[],"
    "\"policy\":{\"default\":\"intercept\",\"default_route\":\"direct\",\"rules\":[]},"
    "\"identities\":{\"require\":false,\"users\":[],\"networks\":[]},\"http2_enabled\":true,"
    "\"http2_max_header_list_size\":65536,\"http3_passthrough\":true,"
    "\"quic\":{\"idle_ms\":30000,\"max_flows\":65536},"
    "\"upstream_pool\":{\"enabled\":true,\"max_idle\":32,\"idle_ms\":4000,"
    "\"max_requests\":1000},"
    "\"tls\":{\"ca_dir\":null,\"ca_cert\":null,\"ca_key\":null,\"leaf_cache_size\":4096,"
    "\"leaf_validity_days\":30,\"ca_rotate_after_days\":0,\"upstream_verify\":true,"
    "\"upstream_ca_file\":null,\"keylog_file\":null,\"learning\":{\"enabled\":true,\"failure_"
    "threshold\":3,"
    "\"window_s\":300}},"
    "\"events\":{\"ring_path\":null,\"ring_size_mb\":64,\"body_capture_bytes\":4096,"
    "\"ws_turn_idle_ms\":30000,\"sinks\":[]},"
    "\"timeouts\":{\"connect_ms\":10000,\"tls_handshake_ms\":10000,"
    "\"request_header_ms\":10000,\"response_header_ms\":60000,\"idle_ms\":120000,\"drain_ms\":5000,"
    "\"upstream_idle_ms\":5000}"
    ","
    "\"metrics\":{\"listen\":null},\"resolve\":{},\"bridge\":{\"listen\":null},"
    "\"soth\":{\"bundle\":null}}";

/** defaults_json with the keys of patch (a JSON object text) merged in, recursively. */
static json_t *defaults_with(const char *patch)
{
    json_t *d = parse_json(defaults_json);
    json_t *p = parse_json(patch);
    cr_assert_eq(json_object_update_recursive(d, p), 0);
    json_decref(p);
    return d;
}

/* ---- invalid configs: the exact line each must produce */

struct bad_case {
    const char *json;
    const char *error;
};

static const struct bad_case bad_cases[] = {
    /* top level and unknown keys at every level */
    {"[]", "config: (top level): expected object, got array"},
    {"{\"bogus\": 1}", "config: bogus: unknown key"},
    {"{\"Listen\": \"127.0.0.1:1\"}", "config: Listen: unknown key"},
    {"{\"tls\": {\"foo\": 1}}", "config: tls.foo: unknown key"},
    {"{\"tls\": {\"learning\": {\"x\": 1}}}", "config: tls.learning.x: unknown key"},
    {"{\"policy\": {\"rulez\": []}}", "config: policy.rulez: unknown key"},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"block\", \"why\": 1}]}}",
     "config: policy.rules[0].why: unknown key"},
    {"{\"events\": {\"sink\": []}}", "config: events.sink: unknown key"},
    {"{\"events\": {\"sinks\": [{\"type\": \"uds\", \"path\": \"/s\", \"mode\": 1}]}}",
     "config: events.sinks[0].mode: unknown key"},
    {"{\"timeouts\": {\"read_ms\": 1}}", "config: timeouts.read_ms: unknown key"},
    {"{\"metrics\": {\"port\": 1}}", "config: metrics.port: unknown key"},
    /* one line whatever the key holds */
    {"{\"a\\nb\": 1}", "config: a\\x0ab: unknown key"},
    {"{\"tls\": {\"\\u001b[31m\": 1}}", "config: tls.\\x1b[31m: unknown key"},

    /* integers: type, lower and upper bounds */
    {"{\"tls\": {\"leaf_cache_size\": -3}}",
     "config: tls.leaf_cache_size: expected integer >= 0, got -3"},
    {"{\"tls\": {\"leaf_cache_size\": \"big\"}}",
     "config: tls.leaf_cache_size: expected integer >= 0, got \"big\""},
    {"{\"tls\": {\"leaf_cache_size\": 1000001}}",
     "config: tls.leaf_cache_size: expected integer <= 1000000, got 1000001"},
    {"{\"tls\": {\"leaf_validity_days\": -3}}",
     "config: tls.leaf_validity_days: expected integer >= 1, got -3"},
    {"{\"tls\": {\"leaf_validity_days\": 0}}",
     "config: tls.leaf_validity_days: expected integer >= 1, got 0"},
    {"{\"tls\": {\"leaf_validity_days\": 826}}",
     "config: tls.leaf_validity_days: expected integer <= 825, got 826"},
    {"{\"tls\": {\"ca_rotate_after_days\": -1}}",
     "config: tls.ca_rotate_after_days: expected integer >= 0, got -1"},
    {"{\"tls\": {\"ca_rotate_after_days\": 36501}}",
     "config: tls.ca_rotate_after_days: expected integer <= 36500, got 36501"},
    {"{\"tls\": {\"learning\": {\"failure_threshold\": 0}}}",
     "config: tls.learning.failure_threshold: expected integer >= 1, got 0"},
    {"{\"tls\": {\"learning\": {\"window_s\": 0}}}",
     "config: tls.learning.window_s: expected integer >= 1, got 0"},
    {"{\"tls\": {\"learning\": {\"window_s\": 2592001}}}",
     "config: tls.learning.window_s: expected integer <= 2592000, got 2592001"},
    {"{\"workers\": 5000}", "config: workers: expected integer <= 1024, got 5000"},
    {"{\"workers\": -1}", "config: workers: expected integer >= 0, got -1"},
    {"{\"workers\": 1.5}", "config: workers: expected integer >= 0, got 1.5"},
    {"{\"workers\": 2.0}", "config: workers: expected integer >= 0, got 2.0"},
    {"{\"workers\": null}", "config: workers: expected integer >= 0, got null"},
    {"{\"workers\": \"4\"}", "config: workers: expected integer >= 0, got \"4\""},
    {"{\"workers\": true}", "config: workers: expected integer >= 0, got true"},
    {"{\"workers\": 99999999999999999999}",
     "config: (text): line 1, column 32: too big integer near '99999999999999999999'"},
    {"{\"http2_max_header_list_size\": 10}",
     "config: http2_max_header_list_size: expected integer >= 1024, got 10"},
    {"{\"http2_max_header_list_size\": 16777217}",
     "config: http2_max_header_list_size: expected integer <= 16777216, got 16777217"},
    {"{\"events\": {\"ring_size_mb\": 0}}",
     "config: events.ring_size_mb: expected integer >= 1, got 0"},
    {"{\"events\": {\"ring_size_mb\": 65537}}",
     "config: events.ring_size_mb: expected integer <= 65536, got 65537"},
    {"{\"events\": {\"body_capture_bytes\": -1}}",
     "config: events.body_capture_bytes: expected integer >= 0, got -1"},
    {"{\"events\": {\"body_capture_bytes\": 16777217}}",
     "config: events.body_capture_bytes: expected integer <= 16777216, got 16777217"},
    {"{\"events\": {\"ws_turn_idle_ms\": 0}}",
     "config: events.ws_turn_idle_ms: expected integer >= 1, got 0"},
    {"{\"events\": {\"ws_turn_idle_ms\": 3600001}}",
     "config: events.ws_turn_idle_ms: expected integer <= 3600000, got 3600001"},
    {"{\"events\": {\"ws_turn_idle_ms\": \"30s\"}}",
     "config: events.ws_turn_idle_ms: expected integer >= 1, got \"30s\""},
    {"{\"timeouts\": {\"connect_ms\": 0}}",
     "config: timeouts.connect_ms: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"tls_handshake_ms\": 0}}",
     "config: timeouts.tls_handshake_ms: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"request_header_ms\": 0}}",
     "config: timeouts.request_header_ms: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"response_header_ms\": 0}}",
     "config: timeouts.response_header_ms: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"response_header_ms\": 3600001}}",
     "config: timeouts.response_header_ms: expected integer <= 3600000, got 3600001"},
    {"{\"timeouts\": {\"idle_ms\": 0}}", "config: timeouts.idle_ms: expected integer >= 1, got 0"},
    {"{\"timeouts\": {\"drain_ms\": -1}}",
     "config: timeouts.drain_ms: expected integer >= 0, got -1"},
    {"{\"timeouts\": {\"connect_ms\": 86400001}}",
     "config: timeouts.connect_ms: expected integer <= 86400000, got 86400001"},

    /* booleans */
    {"{\"http2_enabled\": \"yes\"}", "config: http2_enabled: expected boolean, got string"},
    {"{\"busy_poll_us\": 10001}", "config: busy_poll_us: expected integer <= 10000, got 10001"},
    {"{\"busy_poll_us\": -1}", "config: busy_poll_us: expected integer >= 0, got -1"},
    {"{\"wake_batch_us\": 1001}", "config: wake_batch_us: expected integer <= 1000, got 1001"},
    {"{\"http3_passthrough\": 1}", "config: http3_passthrough: expected boolean, got integer"},
    {"{\"quic\": {\"idle_ms\": 0}}", "config: quic.idle_ms: expected integer >= 1, got 0"},
    {"{\"quic\": {\"max_flows\": 4194305}}",
     "config: quic.max_flows: expected integer <= 4194304, got 4194305"},
    {"{\"quic\": {\"flows\": 1}}", "config: quic.flows: unknown key"},
    {"{\"upstream_pool\": {\"enabled\": 1}}",
     "config: upstream_pool.enabled: expected boolean, got integer"},
    {"{\"upstream_pool\": {\"max_idle\": 65537}}",
     "config: upstream_pool.max_idle: expected integer <= 65536, got 65537"},
    {"{\"upstream_pool\": {\"idle_ms\": 0}}",
     "config: upstream_pool.idle_ms: expected integer >= 1, got 0"},
    {"{\"upstream_pool\": {\"max_requests\": 0}}",
     "config: upstream_pool.max_requests: expected integer >= 1, got 0"},
    {"{\"upstream_pool\": {\"size\": 1}}", "config: upstream_pool.size: unknown key"},
    {"{\"upstream_pool\": true}", "config: upstream_pool: expected object, got boolean"},
    {"{\"tls\": {\"upstream_verify\": null}}",
     "config: tls.upstream_verify: expected boolean, got null"},
    {"{\"tls\": {\"learning\": {\"enabled\": 0}}}",
     "config: tls.learning.enabled: expected boolean, got integer"},

    /* objects where objects belong */
    {"{\"tls\": []}", "config: tls: expected object, got array"},
    {"{\"tls\": {\"learning\": true}}", "config: tls.learning: expected object, got boolean"},
    {"{\"events\": null}", "config: events: expected object, got null"},
    {"{\"timeouts\": 5}", "config: timeouts: expected object, got integer"},
    {"{\"metrics\": []}", "config: metrics: expected object, got array"},
    {"{\"policy\": \"block\"}", "config: policy: expected object, got string"},

    /* strings or null */
    {"{\"tls\": {\"ca_dir\": 5}}", "config: tls.ca_dir: expected string or null, got integer"},
    {"{\"tls\": {\"ca_dir\": \"\"}}", "config: tls.ca_dir: expected a non-empty string, got \"\""},
    {"{\"tls\": {\"upstream_ca_file\": []}}",
     "config: tls.upstream_ca_file: expected string or null, got array"},
    {"{\"tls\": {\"keylog_file\": 1}}",
     "config: tls.keylog_file: expected string or null, got integer"},
    {"{\"events\": {\"ring_path\": false}}",
     "config: events.ring_path: expected string or null, got boolean"},

    /* ca_cert and ca_key go together */
    {"{\"tls\": {\"ca_cert\": \"/x.pem\"}}",
     "config: tls.ca_key: tls.ca_cert and tls.ca_key must be given together"},
    {"{\"tls\": {\"ca_key\": \"/x.key\"}}",
     "config: tls.ca_cert: tls.ca_cert and tls.ca_key must be given together"},
    {"{\"tls\": {\"ca_cert\": \"/x.pem\", \"ca_key\": null}}",
     "config: tls.ca_key: tls.ca_cert and tls.ca_key must be given together"},

    /* listen */
    {"{\"listen\": \"nonsense\"}", "config: listen: expected HOST:PORT, got \"nonsense\""},
    {"{\"listen\": \"\"}", "config: listen: expected HOST:PORT, got \"\""},
    {"{\"listen\": \":8080\"}", "config: listen: expected HOST:PORT, got \":8080\""},
    {"{\"listen\": \"127.0.0.1:\"}", "config: listen: port must be an integer 0..65535, got \"\""},
    {"{\"listen\": \"127.0.0.1:99999\"}",
     "config: listen: port must be an integer 0..65535, got \"99999\""},
    {"{\"listen\": \"127.0.0.1:65536\"}",
     "config: listen: port must be an integer 0..65535, got \"65536\""},
    {"{\"listen\": \"127.0.0.1:-1\"}",
     "config: listen: port must be an integer 0..65535, got \"-1\""},
    {"{\"listen\": \"127.0.0.1:+80\"}",
     "config: listen: port must be an integer 0..65535, got \"+80\""},
    {"{\"listen\": \"127.0.0.1:080\"}",
     "config: listen: port must be an integer 0..65535, got \"080\""},
    {"{\"listen\": \"127.0.0.1:http\"}",
     "config: listen: port must be an integer 0..65535, got \"http\""},
    {"{\"listen\": \"localhost:80\"}",
     "config: listen: expected a numeric IPv4 or [IPv6] address, got \"localhost:80\""},
    {"{\"listen\": \"[::1:80\"}", "config: listen: expected [IPV6]:PORT, got \"[::1:80\""},
    {"{\"listen\": \"[::1]\"}", "config: listen: expected [IPV6]:PORT, got \"[::1]\""},
    {"{\"listen\": \"::1:80\"}",
     "config: listen: an IPv6 address needs brackets: expected [IPV6]:PORT, got \"::1:80\""},
    {"{\"listen\": \"[1.2.3.4]:80\"}", "config: listen: invalid IPv6 address in \"[1.2.3.4]:80\""},
    {"{\"listen\": \"[::g]:80\"}", "config: listen: invalid IPv6 address in \"[::g]:80\""},
    {"{\"listen\": \"1.2.3 .4:80\"}", "config: listen: invalid host in \"1.2.3 .4:80\""},
    {"{\"listen\": 8080}", "config: listen: expected string \"HOST:PORT\", got integer"},

    /* mode */
    {"{\"mode\": \"sideways\"}",
     "config: mode: expected regular, transparent, socks5 or reverse:SCHEME://HOST:PORT, got "
     "\"sideways\""},
    {"{\"mode\": \"Regular\"}",
     "config: mode: expected regular, transparent, socks5 or reverse:SCHEME://HOST:PORT, got "
     "\"Regular\""},
    {"{\"mode\": \"reverse\"}",
     "config: mode: expected regular, transparent, socks5 or reverse:SCHEME://HOST:PORT, got "
     "\"reverse\""},
    {"{\"mode\": \"reverse:ftp://x\"}",
     "config: mode: expected reverse:http://HOST[:PORT] or reverse:https://HOST[:PORT], got "
     "\"reverse:ftp://x\""},
    {"{\"mode\": \"reverse:http://\"}",
     "config: mode: missing upstream host in \"reverse:http://\""},
    {"{\"mode\": \"reverse:https://a/b\"}",
     "config: mode: reverse upstream takes no path, got \"reverse:https://a/b\""},
    {"{\"mode\": \"reverse:https://a:0\"}",
     "config: mode: upstream port must be 1..65535 in \"reverse:https://a:0\""},
    {"{\"mode\": \"reverse:https://a:70000\"}",
     "config: mode: port must be an integer 0..65535, got \"70000\""},
    {"{\"mode\": \"reverse:http://::1\"}",
     "config: mode: an IPv6 address needs brackets: expected [IPV6]:PORT, got \"::1\""},
    {"{\"mode\": 1}", "config: mode: expected string, got integer"},

    /* ignore_hosts */
    {"{\"ignore_hosts\": [\"ok\", \"(unclosed\"]}",
     "config: ignore_hosts[1]: invalid regular expression: Unmatched ( or \\("},
    {"{\"ignore_hosts\": [\"a\", \"b\", \"x{2,1}\"]}",
     "config: ignore_hosts[2]: invalid regular expression: Invalid content of \\{\\}"},
    {"{\"ignore_hosts\": [\"[z-a]\"]}",
     "config: ignore_hosts[0]: invalid regular expression: Invalid range end"},
    {"{\"ignore_hosts\": [\"a*?\"]}",
     "config: ignore_hosts[0]: invalid regular expression: adjacent repetition operators at "
     "offset 2 (undefined in POSIX ERE)"},
    {"{\"ignore_hosts\": [\"a{2}{3}\"]}",
     "config: ignore_hosts[0]: invalid regular expression: adjacent repetition operators at "
     "offset 4 (undefined in POSIX ERE)"},
    /* fuzz finding: glibc regcomp copies repeated operands while parsing; these exhaust
     * memory (or take ages) inside regcomp unless refused before it runs */
    {"{\"ignore_hosts\": [\"^(a|b)up+++++++++++++++++++++++++++++++++++++stre+\"]}",
     "config: ignore_hosts[0]: invalid regular expression: adjacent repetition operators at "
     "offset 9 (undefined in POSIX ERE)"},
    {"{\"ignore_hosts\": [\"((a{1,99}){1,99}){1,99}\"]}",
     "config: ignore_hosts[0]: invalid regular expression: too large once repetitions are "
     "expanded (over 10000 nodes)"},
    {"{\"ignore_hosts\": [\"(a{,9999}){,9999}\"]}",
     "config: ignore_hosts[0]: invalid regular expression: too large once repetitions are "
     "expanded (over 10000 nodes)"},
    {"{\"ignore_hosts\": [\"(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
     "(a))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))\"]}",
     "config: ignore_hosts[0]: invalid regular expression: groups nested deeper than 64"},
    {"{\"ignore_hosts\": [\"x{\"]}",
     "config: ignore_hosts[0]: invalid regular expression: Unmatched \\{"},
    {"{\"ignore_hosts\": [\"a\\\\\"]}",
     "config: ignore_hosts[0]: invalid regular expression: Trailing backslash"},
    {"{\"ignore_hosts\": \"x\"}", "config: ignore_hosts: expected array, got string"},
    {"{\"ignore_hosts\": [1]}", "config: ignore_hosts[0]: expected string, got integer"},

    /* policy */
    {"{\"policy\": {\"rules\": [{\"host\": \"a*.com\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: '*' must be a whole label in \"a*.com\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"**.com\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: '*' must be a whole label in \"**.com\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a b\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: invalid character ' ' in \"a b\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a/b\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: invalid character '/' in \"a/b\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a..com\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: empty label in \"a..com\""},
    {"{\"policy\": {\"rules\": [{\"host\": \".a.com\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: empty label in \".a.com\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com..\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: empty label in \"a.com..\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: empty host in \"\""},
    {"{\"policy\": {\"rules\": [{\"host\": \":443\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: empty host in \":443\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com:0\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: port must be 1..65535 in \"a.com:0\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com:65536\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: port must be 1..65535 in "
     "\"a.com:65536\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com:\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: port must be 1..65535 in \"a.com:\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"::1\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: invalid character ':' in \"::1\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"[1.2.3.4]\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: invalid IPv6 address in \"[1.2.3.4]\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"[::1]x\", \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: invalid host glob: expected [IPV6] or [IPV6]:PORT in "
     "\"[::1]x\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"allow\"}]}}",
     "config: policy.rules[0].action: expected \"intercept\", \"tunnel\" or \"block\", got "
     "\"allow\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": 1}]}}",
     "config: policy.rules[0].action: expected \"intercept\", \"tunnel\" or \"block\", got 1"},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\"}]}}",
     "config: policy.rules[0].action: missing required key"},
    /* routes (docs/config.md "Routes"): the value is never quoted, it may hold a password */
    {"{\"policy\": {\"default_route\": 1}}",
     "config: policy.default_route: expected string, got integer"},
    {"{\"policy\": {\"default_route\": \"socks5://p:1\"}}",
     "config: policy.default_route: expected \"direct\" or "
     "\"upstream:http://[USER:PASSWORD@]HOST:PORT\""},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"tunnel\", "
     "\"route\": \"upstream:http://alice:s3cret@proxy.test\"}]}}",
     "config: policy.rules[0].route: missing \":PORT\" after the upstream proxy host"},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"tunnel\", "
     "\"route\": \"upstream:http://alice:s3cret%zz@proxy.test:3128\"}]}}",
     "config: policy.rules[0].route: password: only unreserved characters, sub-delims and %XX "
     "escapes (no control bytes) are allowed"},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"tunnel\", "
     "\"route\": \"upstream:http://proxy.test:0\"}]}}",
     "config: policy.rules[0].route: port: expected 1..65535"},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.com\", \"action\": \"block\"}, "
     "{\"action\": \"block\"}]}}",
     "config: policy.rules[1].host: missing required key"},
    {"{\"policy\": {\"rules\": [{\"host\": 5, \"action\": \"block\"}]}}",
     "config: policy.rules[0].host: expected string, got integer"},
    {"{\"policy\": {\"rules\": [\"a.com\"]}}",
     "config: policy.rules[0]: expected object, got string"},
    {"{\"policy\": {\"rules\": {}}}", "config: policy.rules: expected array, got object"},
    {"{\"policy\": {\"default\": \"drop\"}}",
     "config: policy.default: expected \"intercept\", \"tunnel\" or \"block\", got \"drop\""},
    {"{\"policy\": {\"default\": null}}",
     "config: policy.default: expected \"intercept\", \"tunnel\" or \"block\", got null"},

    /* events.sinks */
    {"{\"events\": {\"sinks\": [{\"type\": \"kafka\", \"path\": \"/x\"}]}}",
     "config: events.sinks[0].type: expected \"jsonl\", \"uds\" or \"nats\", got \"kafka\""},
    {"{\"events\": {\"sinks\": [{\"path\": \"/x\"}]}}",
     "config: events.sinks[0].type: missing required key"},
    {"{\"events\": {\"sinks\": [{\"type\": \"jsonl\"}]}}",
     "config: events.sinks[0].path: missing required key"},
    {"{\"events\": {\"sinks\": [{\"type\": \"jsonl\", \"path\": \"\"}]}}",
     "config: events.sinks[0].path: expected a non-empty string, got \"\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"jsonl\", \"path\": null}]}}",
     "config: events.sinks[0].path: expected a non-empty string, got null"},
    {"{\"events\": {\"sinks\": [{\"type\": \"uds\", \"path\": "
     "\"/run/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaa.sock\"}]}}",
     "config: events.sinks[0].path: Unix socket path longer than 107 bytes"},
    {"{\"events\": {\"sinks\": [{\"type\": \"jsonl\", \"path\": \"/x\", \"format\": \"xml\"}]}}",
     "config: events.sinks[0].format: expected \"event\" or \"exchange\", got \"xml\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"uds\", \"path\": \"/x\", \"format\": 1}]}}",
     "config: events.sinks[0].format: expected \"event\" or \"exchange\", got 1"},
    {"{\"events\": {\"sinks\": [5]}}", "config: events.sinks[0]: expected object, got integer"},
    {"{\"events\": {\"sinks\": {}}}", "config: events.sinks: expected array, got object"},
    /* events.sinks[] of type nats (docs/sinks.md) */
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"path\": \"/x\"}]}}",
     "config: events.sinks[0].path: unknown key"},
    {"{\"events\": {\"sinks\": [{\"type\": \"jsonl\", \"path\": \"/x\", \"url\": \"nats://a\"}]}}",
     "config: events.sinks[0].url: unknown key"},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"url\": \"http://127.0.0.1:4222\"}]}}",
     "config: events.sinks[0].url: expected nats://HOST[:PORT] or tls://HOST[:PORT] "
     "(comma-separated), got \"http://127.0.0.1:4222\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"url\": \"nats://127.0.0.1:99999\"}]}}",
     "config: events.sinks[0].url: expected nats://HOST[:PORT] or tls://HOST[:PORT] "
     "(comma-separated), got \"nats://127.0.0.1:99999\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"url\": \"nats://a:4222,nats://\"}]}}",
     "config: events.sinks[0].url: expected nats://HOST[:PORT] or tls://HOST[:PORT] "
     "(comma-separated), got \"nats://\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"url\": \"nats://h/x\"}]}}",
     "config: events.sinks[0].url: expected nats://HOST[:PORT] or tls://HOST[:PORT] "
     "(comma-separated), got \"nats://h/x\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"url\": \"\"}]}}",
     "config: events.sinks[0].url: expected a non-empty string, got \"\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"subject\": \"soth.*\"}]}}",
     "config: events.sinks[0].subject: expected a NATS subject (dot-separated tokens, no "
     "spaces, '*' or '>'), got \"soth.*\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"subject\": \"a..b\"}]}}",
     "config: events.sinks[0].subject: expected a NATS subject (dot-separated tokens, no "
     "spaces, '*' or '>'), got \"a..b\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"stream\": \"A.B\"}]}}",
     "config: events.sinks[0].stream: expected a stream name (no spaces, '.', '*', '>', '/' or "
     "'\\'), got \"A.B\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"format\": \"xml\"}]}}",
     "config: events.sinks[0].format: expected \"event\" or \"exchange\", got \"xml\""},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"max_pending_mb\": 0}]}}",
     "config: events.sinks[0].max_pending_mb: expected integer >= 1, got 0"},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"max_pending_mb\": 65537}]}}",
     "config: events.sinks[0].max_pending_mb: expected integer <= 65536, got 65537"},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"tls_cert_file\": \"/c.pem\"}]}}",
     "config: events.sinks[0].tls_key_file: tls_cert_file and tls_key_file go together"},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"password\": \"p\"}]}}",
     "config: events.sinks[0].user: user and password go together"},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"user\": \"u\", \"password\": \"p\", "
     "\"creds_file\": \"/x.creds\"}]}}",
     "config: events.sinks[0].creds_file: creds_file and user/password are exclusive"},
    {"{\"events\": {\"sinks\": [{\"type\": \"nats\", \"creds_file\": 5}]}}",
     "config: events.sinks[0].creds_file: expected a non-empty string, got 5"},

    /* metrics.listen */
    {"{\"metrics\": {\"listen\": \"x\"}}", "config: metrics.listen: expected HOST:PORT, got \"x\""},
    {"{\"metrics\": {\"listen\": \"localhost:9100\"}}",
     "config: metrics.listen: expected a numeric IPv4 or [IPv6] address, got \"localhost:9100\""},
    {"{\"metrics\": {\"listen\": \"127.0.0.1:65536\"}}",
     "config: metrics.listen: port must be an integer 0..65535, got \"65536\""},
    {"{\"bridge\": {\"listen\": 3}}",
     "config: bridge.listen: expected a Unix socket path (1..107 bytes) or null, got integer"},
    {"{\"bridge\": {\"socket\": \"/x\"}}", "config: bridge.socket: unknown key"},
    {"{\"soth\": 1}", "config: soth: expected object, got integer"},
    {"{\"soth\": {\"bundel\": \"/b.json\"}}", "config: soth.bundel: unknown key"},
    {"{\"soth\": {\"bundle\": 3}}", "config: soth.bundle: expected string or null, got integer"},
    {"{\"soth\": {\"bundle\": \"\"}}",
     "config: soth.bundle: expected a non-empty string, got \"\""},
    {"{\"metrics\": {\"listen\": 9100}}",
     "config: metrics.listen: expected string \"HOST:PORT\" or null, got integer"},

    /* resolve */
    {"{\"resolve\": {\"origin.test\": \"not-an-ip\"}}",
     "config: resolve.origin.test: expected a numeric IPv4 or IPv6 address, got \"not-an-ip\""},
    {"{\"resolve\": {\"origin.test\": \"[::1]\"}}",
     "config: resolve.origin.test: expected a numeric IPv4 or IPv6 address, got \"[::1]\""},
    {"{\"resolve\": {\"origin.test\": \"127.0.0.1:80\"}}",
     "config: resolve.origin.test: expected a numeric IPv4 or IPv6 address, got "
     "\"127.0.0.1:80\""},
    {"{\"resolve\": {\"origin.test\": 1}}",
     "config: resolve.origin.test: expected a numeric IPv4 or IPv6 address, got 1"},
    {"{\"resolve\": {\"a b\": \"127.0.0.1\"}}",
     "config: resolve.a b: invalid host name: invalid character ' ' in \"a b\""},
    {"{\"resolve\": {\"*.x\": \"127.0.0.1\"}}",
     "config: resolve.*.x: invalid host name: expected a DNS name, got \"*.x\""},
    {"{\"resolve\": {\"\": \"127.0.0.1\"}}",
     "config: resolve.: invalid host name: empty host in \"\""},
    {"{\"resolve\": []}", "config: resolve: expected object, got array"},

    /* JSON syntax: jansson's position and message */
    {"{\"listen\": \"127.0.0.1:1\", \"listen\": \"127.0.0.1:2\"}",
     "config: (text): line 1, column 34: duplicate object key near '\"listen\"'"},
    {"{", "config: (text): line 1, column 1: string or '}' expected near end of file"},
    {"", "config: (text): line 1, column 0: '[' or '{' expected near end of file"},
    {"null", "config: (text): line 1, column 4: '[' or '{' expected near 'null'"},
    {"{}\n{}", "config: (text): line 2, column 1: end of file expected near '{'"},
    {"{\"workers\": 1,}", "config: (text): line 1, column 15: string or '}' expected near '}'"},
    {"{\n  \"tls\": {\n    \"ca_dir\": \"a\\u0000b\"\n  }\n}",
     "config: (text): line 3, column 24: \\u0000 is not allowed without JSON_ALLOW_NUL near "
     "'\"a\\u0000b\"'"},
};

Test(config, invalid_configs_name_the_key)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        char err[512] = "";
        struct soth_config *c = (struct soth_config *)&err; /* must be reset to NULL */
        int rc = soth_config_load_text(bad_cases[i].json, strlen(bad_cases[i].json), &c, err,
                                       sizeof(err));
        cr_expect_eq(rc, SOTH_E_CONFIG, "case %zu accepted: %s", i, bad_cases[i].json);
        cr_expect_str_eq(err, bad_cases[i].error, "case %zu: %s", i, bad_cases[i].json);
        cr_expect_null(strchr(err, '\n'), "case %zu: error is more than one line", i);
        if (rc == 0)
            soth_config_unref(c);
        else
            cr_expect_null(c, "case %zu: *out not NULL on failure", i);
    }
}

Test(config, error_is_truncated_not_overflowed)
{
    const char *text = "{\"tls\": {\"leaf_cache_size\": -3}}";
    char err[24];
    memset(err, 'X', sizeof(err));
    struct soth_config *c = NULL;
    cr_expect_eq(soth_config_load_text(text, strlen(text), &c, err, 16), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "config: tls.lea");
    cr_expect_eq(err[16], 'X');
    /* an escape sequence is never cut in half */
    const char *nl = "{\"\\n\\n\\n\": 1}";
    cr_expect_eq(soth_config_load_text(nl, strlen(nl), &c, err, 14), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "config: \\x0a");
    cr_expect_eq(soth_config_load_text(text, strlen(text), &c, err, 0), SOTH_E_CONFIG);
    cr_expect_null(c);
}

/* ---- valid configs: effective JSON */

Test(config, defaults_are_spec_defaults)
{
    json_t *got = effective("{}");
    json_t *want = parse_json(defaults_json);
    expect_json_eq(got, want, "{}");
    json_decref(got);
    json_decref(want);

    char err[256];
    struct soth_config *c = NULL;
    cr_assert_eq(soth_config_load(NULL, NULL, &c, err, sizeof(err)), 0, "%s", err);
    got = effective_of(c);
    want = parse_json(defaults_json);
    expect_json_eq(got, want, "no file, no flags");
    json_decref(got);
    json_decref(want);
    cr_expect_eq(c->listen.addr.ss_family, AF_INET);
    cr_expect_eq(c->listen.port, 8080);
    cr_expect_eq(c->mode, SOTH_MODE_REGULAR);
    cr_expect_null(c->tls.ca_dir);
    cr_expect_null(c->events.ring_path);
    cr_expect_null(c->metrics.listen_text);
    cr_expect_eq(c->n_rules, 0);
    cr_expect_eq(c->n_ignore_hosts, 0);
    soth_config_unref(c);
}

Test(config, effective_json_has_spec_key_order)
{
    char err[256];
    struct soth_config *c = NULL;
    cr_assert_eq(soth_config_load_text("{}", 2, &c, err, sizeof(err)), 0);
    char *js = soth_config_to_json(c);
    soth_config_unref(c);
    /* Keys in the order of docs/config.md's table, each once. */
    static const char *const order[] = {"\"listen\"",
                                        "\"mode\"",
                                        "\"workers\"",
                                        "\"busy_poll_us\"",
                                        "\"wake_batch_us\"",
                                        "\"ignore_hosts\"",
                                        "\"policy\"",
                                        "\"default\"",
                                        "\"default_route\"",
                                        "\"rules\"",
                                        "\"http2_enabled\"",
                                        "\"http2_max_header_list_size\"",
                                        "\"http3_passthrough\"",
                                        "\"tls\"",
                                        "\"ca_dir\"",
                                        "\"ca_cert\"",
                                        "\"ca_key\"",
                                        "\"leaf_cache_size\"",
                                        "\"leaf_validity_days\"",
                                        "\"ca_rotate_after_days\"",
                                        "\"upstream_verify\"",
                                        "\"upstream_ca_file\"",
                                        "\"keylog_file\"",
                                        "\"learning\"",
                                        "\"enabled\"",
                                        "\"failure_threshold\"",
                                        "\"window_s\"",
                                        "\"events\"",
                                        "\"ring_path\"",
                                        "\"ring_size_mb\"",
                                        "\"body_capture_bytes\"",
                                        "\"ws_turn_idle_ms\"",
                                        "\"sinks\"",
                                        "\"timeouts\"",
                                        "\"connect_ms\"",
                                        "\"tls_handshake_ms\"",
                                        "\"request_header_ms\"",
                                        "\"response_header_ms\"",
                                        "\"idle_ms\"",
                                        "\"drain_ms\"",
                                        "\"upstream_idle_ms\"",
                                        "\"metrics\"",
                                        "\"resolve\"",
                                        "\"bridge\"",
                                        "\"soth\""};
    const char *at = js;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        const char *p = strstr(at, order[i]);
        cr_expect_not_null(p, "%s missing or out of order in\n%s", order[i], js);
        if (p)
            at = p + strlen(order[i]);
    }
    /* pretty: indented, one key a line */
    cr_expect_not_null(strstr(js, "{\n  \"listen\": \"127.0.0.1:8080\",\n  \"mode\""), "%s", js);
    free(js);
}

struct good_case {
    const char *json;
    const char *want; /* merged into the defaults; NULL = the input itself */
};

static const struct good_case good_cases[] = {
    {"{\"listen\": \"0.0.0.0:0\"}", NULL},
    {"{\"listen\": \"[::]:65535\"}", NULL},
    {"{\"listen\": \"[fe80::1]:1\"}", NULL},
    {"{\"mode\": \"transparent\"}", NULL},
    {"{\"mode\": \"socks5\"}", NULL},
    {"{\"mode\": \"reverse:http://origin.test\"}", NULL},
    {"{\"mode\": \"reverse:https://[::1]:8443\"}", NULL},
    {"{\"mode\": \"reverse:https://origin.test/\"}", NULL},
    {"{\"workers\": 1024}", NULL},
    {"{\"ignore_hosts\": [\"^.*\\\\.apple\\\\.com:443$\", \"^10\\\\.\", \"\"]}", NULL},
    {"{\"ignore_hosts\": [\"(a{1,99}){1,99}\", \"a{,3}b{2,}c{3}\", \"[]a]+x\", "
     "\"[[:alpha:]]{2,3}\","
     " \"((((a))))*\", \"(a|b)*c?\", \"(((a+)+)+)+x\", \"a\\\\{1,2}+\", \"[x*+]+\", "
     "\"([[.-.]]|[=e=])+\"]}",
     NULL},
    {"{\"policy\": {\"default\": \"block\", \"rules\": []}}", NULL},
    {"{\"policy\": {\"rules\": [{\"host\": \"*\", \"action\": \"tunnel\"},"
     "{\"host\": \"*:443\", \"action\": \"intercept\"},"
     "{\"host\": \"api.*.example\", \"action\": \"block\"},"
     "{\"host\": \"*.*.example\", \"action\": \"block\"},"
     "{\"host\": \"example.com.\", \"action\": \"block\"},"
     "{\"host\": \"10.0.0.1:8080\", \"action\": \"block\"},"
     "{\"host\": \"[::1]\", \"action\": \"block\"},"
     "{\"host\": \"[2001:db8::1]:443\", \"action\": \"block\"},"
     "{\"host\": \"Under_score-9.EXAMPLE:65535\", \"action\": \"tunnel\"}]}}",
     NULL},
    /* policy keys may come alone */
    {"{\"policy\": {\"rules\": [{\"action\": \"block\", \"host\": \"a.b\"}]}}",
     "{\"policy\": {\"rules\": [{\"host\": \"a.b\", \"action\": \"block\"}]}}"},
    {"{\"policy\": {\"default\": \"tunnel\"}}", NULL},
    /* routes: a rule without one takes default_route; credentials print as USER:(set) */
    {"{\"policy\": {\"default_route\": \"upstream:http://[::1]:3128\", \"rules\": ["
     "{\"host\": \"a.b\", \"action\": \"tunnel\", \"route\": \"direct\"},"
     "{\"host\": \"c.d\", \"action\": \"intercept\", \"route\": \"upstream:http://p.test:8080\"},"
     "{\"host\": \"e.f\", \"action\": \"block\"}]}}",
     NULL},
    {"{\"policy\": {\"rules\": [{\"host\": \"a.b\", \"action\": \"tunnel\", "
     "\"route\": \"upstream:http://al%40ice:pa%3Ass@10.0.0.1:3128/\"}]}}",
     "{\"policy\": {\"rules\": [{\"host\": \"a.b\", \"action\": \"tunnel\", "
     "\"route\": \"upstream:http://al%40ice:(set)@10.0.0.1:3128\"}]}}"},
    {"{\"tls\": {\"leaf_cache_size\": 0, \"ca_rotate_after_days\": 0}}", NULL},
    {"{\"tls\": {\"leaf_cache_size\": 1000000, \"leaf_validity_days\": 825,"
     " \"ca_rotate_after_days\": 36500}}",
     NULL},
    {"{\"tls\": {\"ca_cert\": \"/etc/ca.pem\", \"ca_key\": \"/etc/ca.key\"}}", NULL},
    {"{\"tls\": {\"ca_cert\": null, \"ca_key\": null, \"ca_dir\": null}}", NULL},
    {"{\"tls\": {\"learning\": {\"enabled\": false}}}", NULL},
    {"{\"tls\": {\"learning\": {}}}", "{}"},
    {"{\"tls\": {}, \"events\": {}, \"timeouts\": {}, \"metrics\": {}, \"policy\": {}}", "{}"},
    {"{\"events\": {\"ring_path\": \"/dev/shm/x.ring\", \"sinks\": [{\"type\": \"uds\","
     " \"path\": \"/run/s.sock\", \"format\": \"exchange\"}, {\"type\": \"jsonl\", \"path\":"
     " \"rel/e.jsonl\", \"format\": \"event\"}]}}",
     NULL},
    {"{\"events\": {\"ring_size_mb\": 1, \"body_capture_bytes\": 0}}", NULL},
    {"{\"events\": {\"ws_turn_idle_ms\": 1}}", NULL},
    {"{\"events\": {\"ws_turn_idle_ms\": 3600000}}", NULL},
    {"{\"timeouts\": {\"drain_ms\": 0, \"idle_ms\": 86400000}}", NULL},
    {"{\"metrics\": {\"listen\": \"[::1]:9100\"}}", NULL},
    {"{\"metrics\": {\"listen\": null}}", NULL},
    {"{\"resolve\": {\"origin.test\": \"127.0.0.1\", \"v6.test\": \"::1\","
     " \"mapped.test\": \"::ffff:127.0.0.1\", \"dot.test.\": \"127.0.0.2\"}}",
     NULL},
    {"{\"http2_enabled\": false, \"http2_max_header_list_size\": 1024,"
     " \"http3_passthrough\": false}",
     NULL},
    /* whitespace, UTF-8 and escapes are JSON's business */
    {"\n\t{ \"listen\" :\r\n\"127.0.0.1:1\" }  \n", "{\"listen\": \"127.0.0.1:1\"}"},
    {"{\"events\": {\"ring_path\": \"/tmp/\\u00e9v\\u00e9nements.ring\"}}", NULL},
};

Test(config, valid_configs_effective_json)
{
    for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]); i++) {
        json_t *got = effective(good_cases[i].json);
        json_t *want = defaults_with(good_cases[i].want ? good_cases[i].want : good_cases[i].json);
        char what[32];
        snprintf(what, sizeof(what), "case %zu", i);
        expect_json_eq(got, want, what);
        json_decref(got);
        json_decref(want);
    }
}

Test(config, effective_json_loads_back_to_itself)
{
    for (size_t i = 0; i < sizeof(good_cases) / sizeof(good_cases[0]); i++) {
        char err[256];
        struct soth_config *c = NULL, *c2 = NULL;
        const char *t = good_cases[i].json;
        cr_assert_eq(soth_config_load_text(t, strlen(t), &c, err, sizeof(err)), 0, "%s", err);
        char *js = soth_config_to_json(c);
        cr_assert_eq(soth_config_load_text(js, strlen(js), &c2, err, sizeof(err)), 0,
                     "case %zu: %s\n%s", i, err, js);
        char *js2 = soth_config_to_json(c2);
        cr_expect_str_eq(js, js2, "case %zu", i);
        free(js);
        free(js2);
        soth_config_unref(c);
        soth_config_unref(c2);
    }
}

Test(config, spec_example_round_trips)
{
    const char *text =
        "{\"listen\":\"[::1]:8443\",\"mode\":\"reverse:https://origin.test:9443\",\"workers\":2,"
        "\"busy_poll_us\":200,\"wake_batch_us\":40,"
        "\"ignore_hosts\":[\"^.*\\\\.internal:443$\"],"
        "\"policy\":{\"default\":\"tunnel\",\"default_route\":\"upstream:http://[::1]:3128\","
        "\"rules\":[{\"host\":\"*.bank.example\",\"action\":\"tunnel\",\"route\":\"direct\"},"
        "{\"host\":\"ads.example:443\",\"action\":\"block\"}]},"
        "\"identities\":{\"require\":false,\"users\":[],\"networks\":[]},"
        "\"http2_enabled\":false,\"http2_max_header_list_size\":32768,\"http3_passthrough\":false,"
        "\"quic\":{\"idle_ms\":1500,\"max_flows\":4194304},"
        "\"upstream_pool\":{\"enabled\":false,\"max_idle\":0,\"idle_ms\":3600000,"
        "\"max_requests\":10000000},"
        "\"tls\":{\"ca_dir\":\"/var/lib/soth\",\"ca_cert\":\"/c.pem\",\"ca_key\":\"/c.key\","
        "\"leaf_cache_size\":0,\"leaf_validity_days\":7,\"ca_rotate_after_days\":90,"
        "\"upstream_verify\":false,\"upstream_ca_file\":\"/u.pem\","
        "\"keylog_file\":\"/k.log\","
        "\"learning\":{\"enabled\":false,\"failure_threshold\":5,\"window_s\":60}},"
        "\"events\":{\"ring_path\":\"/tmp/r.ring\",\"ring_size_mb\":8,\"body_capture_bytes\":0,"
        "\"ws_turn_idle_ms\":250,\"sinks\":[{\"type\":\"jsonl\",\"path\":\"/tmp/"
        "e.jsonl\",\"format\":\"event\"},{\"type\":\"uds\","
        "\"path\":\"/tmp/e.sock\",\"format\":\"exchange\"}]},"
        "\"timeouts\":{\"connect_ms\":1,\"tls_handshake_ms\":2,\"request_header_ms\":3,"
        "\"response_header_ms\":5,\"idle_ms\":4,\"drain_ms\":0,"
        "\"upstream_idle_ms\":0},\"metrics\":{\"listen\":\"127.0.0."
        "1:9100\"},"
        "\"resolve\":{\"origin.test\":\"127.0.0.1\",\"v6.test\":\"::1\"},"
        "\"bridge\":{\"listen\":\"/run/soth-mitm/bridge.sock\"},"
        "\"soth\":{\"bundle\":\"/etc/soth/bundle.json\"}}";
    json_t *got = effective(text);
    json_t *want = parse_json(text);
    expect_json_eq(got, want, "full config");
    json_decref(got);
    json_decref(want);
}

Test(config, parsed_fields)
{
    char err[256];
    struct soth_config *c = NULL;
    const char *text =
        "{\"mode\":\"reverse:https://origin.test\",\"listen\":\"[::1]:0\","
        "\"policy\":{\"rules\":[{\"host\":\"*.x.example:8443\",\"action\":\"block\"},"
        "{\"host\":\"[::1]:443\",\"action\":\"tunnel\"},{\"host\":\"a.b\",\"action\":"
        "\"intercept\"}]},"
        "\"events\":{\"sinks\":[{\"type\":\"uds\",\"path\":\"/s\"}]},"
        "\"metrics\":{\"listen\":\"127.0.0.1:9100\"},\"resolve\":{\"o.test\":\"10.0.0.1\"}}";
    cr_assert_eq(soth_config_load_text(text, strlen(text), &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(c->mode, SOTH_MODE_REVERSE);
    cr_expect(c->reverse_tls);
    cr_expect_str_eq(c->reverse_host, "origin.test");
    cr_expect_eq(c->reverse_port, 443);
    cr_expect_str_eq(c->mode_text, "reverse:https://origin.test");
    cr_expect_eq(c->listen.addr.ss_family, AF_INET6);
    cr_expect_eq(c->listen.addr_len, sizeof(struct sockaddr_in6));
    cr_expect_eq(c->listen.port, 0);
    cr_expect_eq(c->n_rules, 3);
    cr_expect_str_eq(c->rules[0].host, "*.x.example");
    cr_expect_eq(c->rules[0].port, 8443);
    cr_expect_str_eq(c->rules[0].text, "*.x.example:8443");
    cr_expect_eq(c->rules[0].action, SOTH_ACTION_BLOCK);
    cr_expect_str_eq(c->rules[1].host, "::1");
    cr_expect_eq(c->rules[1].port, 443);
    cr_expect_str_eq(c->rules[1].text, "[::1]:443");
    cr_expect_eq(c->rules[1].action, SOTH_ACTION_TUNNEL);
    cr_expect_str_eq(c->rules[2].host, "a.b");
    cr_expect_eq(c->rules[2].port, -1);
    cr_expect_eq(c->events.n_sinks, 1);
    cr_expect_eq(c->events.sinks[0].type, SOTH_SINK_UDS);
    cr_expect_str_eq(c->events.sinks[0].path, "/s");
    cr_expect_eq(c->metrics.listen.port, 9100);
    cr_expect_eq(c->metrics.listen.addr.ss_family, AF_INET);
    cr_expect_eq(c->n_resolve, 1);
    cr_expect_str_eq(c->resolve[0].name, "o.test");
    cr_expect_str_eq(c->resolve[0].addr, "10.0.0.1");
    soth_config_unref(c);

    const char *plain = "{\"mode\":\"reverse:http://[::1]\"}";
    cr_assert_eq(soth_config_load_text(plain, strlen(plain), &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_not(c->reverse_tls);
    cr_expect_str_eq(c->reverse_host, "::1");
    cr_expect_eq(c->reverse_port, 80);
    soth_config_unref(c);
}

/* ---- precedence: defaults < file < command line */

static const struct soth_cli_overrides no_cli = {.workers = -1};

Test(config, file_overrides_defaults_and_flags_override_file)
{
    char path[] = "/tmp/soth-cfg-XXXXXX";
    write_tmp(path, "{\"listen\":\"127.0.0.1:1111\",\"workers\":3,\"mode\":\"transparent\","
                    "\"tls\":{\"ca_dir\":\"/file/ca\"},\"events\":{\"ring_path\":\"/file.ring\"},"
                    "\"metrics\":{\"listen\":\"127.0.0.1:9000\"},\"http2_enabled\":false}");
    char err[256];
    struct soth_config *c = NULL;

    /* file alone: file values, defaults elsewhere */
    cr_assert_eq(soth_config_load(path, &no_cli, &c, err, sizeof(err)), 0, "%s", err);
    json_t *got = effective_of(c);
    json_t *want =
        defaults_with("{\"listen\":\"127.0.0.1:1111\",\"workers\":3,\"mode\":\"transparent\","
                      "\"tls\":{\"ca_dir\":\"/file/ca\"},\"events\":{\"ring_path\":\"/file.ring\"},"
                      "\"metrics\":{\"listen\":\"127.0.0.1:9000\"},\"http2_enabled\":false}");
    expect_json_eq(got, want, "file only");
    json_decref(got);
    json_decref(want);
    soth_config_unref(c);

    /* every flag beats the file; what no flag names stays from the file */
    struct soth_cli_overrides cli = {.listen = "[::1]:2222",
                                     .mode = "reverse:https://o.test:8443",
                                     .workers = 0,
                                     .ca_dir = "/flag/ca",
                                     .event_ring = "/flag.ring",
                                     .metrics = "127.0.0.1:9999"};
    cr_assert_eq(soth_config_load(path, &cli, &c, err, sizeof(err)), 0, "%s", err);
    got = effective_of(c);
    want =
        defaults_with("{\"listen\":\"[::1]:2222\",\"workers\":0,"
                      "\"mode\":\"reverse:https://o.test:8443\","
                      "\"tls\":{\"ca_dir\":\"/flag/ca\"},\"events\":{\"ring_path\":\"/flag.ring\"},"
                      "\"metrics\":{\"listen\":\"127.0.0.1:9999\"},\"http2_enabled\":false}");
    expect_json_eq(got, want, "file + every flag");
    json_decref(got);
    json_decref(want);
    cr_expect_eq(c->listen.port, 2222);
    cr_expect_eq(c->listen.addr.ss_family, AF_INET6);
    cr_expect_eq(c->mode, SOTH_MODE_REVERSE);
    cr_expect_eq(c->reverse_port, 8443);
    cr_expect_eq(c->metrics.listen.port, 9999);
    soth_config_unref(c);

    /* flags without a file override the defaults */
    struct soth_cli_overrides some = {.workers = 7, .event_ring = "/x.ring"};
    cr_assert_eq(soth_config_load(NULL, &some, &c, err, sizeof(err)), 0, "%s", err);
    got = effective_of(c);
    want = defaults_with("{\"workers\":7,\"events\":{\"ring_path\":\"/x.ring\"}}");
    expect_json_eq(got, want, "flags only");
    json_decref(got);
    json_decref(want);
    soth_config_unref(c);

    /* non-ASCII paths are fine as long as they are UTF-8 */
    struct soth_cli_overrides utf8 = {.workers = -1,
                                      .ca_dir = "/\xc3\xa9t\xc3\xa9/\xf0\x9f\x94\x91"};
    cr_assert_eq(soth_config_load(NULL, &utf8, &c, err, sizeof(err)), 0, "%s", err);
    got = effective_of(c);
    want = defaults_with("{\"tls\":{\"ca_dir\":\"/\\u00e9t\\u00e9/\\ud83d\\udd11\"}}");
    expect_json_eq(got, want, "UTF-8 flag");
    json_decref(got);
    json_decref(want);
    soth_config_unref(c);

    /* NULL overrides == none given */
    cr_assert_eq(soth_config_load(path, NULL, &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(c->workers, 3);
    soth_config_unref(c);
    unlink(path);
}

Test(config, flag_fixes_what_the_file_got_wrong_only_if_file_is_valid)
{
    /* The file is validated on its own: a flag does not excuse a bad file value. */
    char path[] = "/tmp/soth-cfg-XXXXXX";
    write_tmp(path, "{\"listen\":\"nonsense\"}");
    char err[256];
    struct soth_config *c = NULL;
    struct soth_cli_overrides cli = {.listen = "127.0.0.1:1", .workers = -1};
    cr_expect_eq(soth_config_load(path, &cli, &c, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "config: listen: expected HOST:PORT, got \"nonsense\"");
    cr_expect_null(c);
    unlink(path);
}

struct bad_flag {
    struct soth_cli_overrides cli;
    const char *error;
};

static const struct bad_flag bad_flags[] = {
    {{.listen = "nonsense", .workers = -1},
     "config: --listen: expected HOST:PORT, got \"nonsense\""},
    {{.listen = "localhost:80", .workers = -1},
     "config: --listen: expected a numeric IPv4 or [IPv6] address, got \"localhost:80\""},
    {{.listen = "127.0.0.1:65536", .workers = -1},
     "config: --listen: port must be an integer 0..65535, got \"65536\""},
    {{.listen = "", .workers = -1}, "config: --listen: expected a non-empty value"},
    {{.mode = "reverse:ftp://x", .workers = -1},
     "config: --mode: expected reverse:http://HOST[:PORT] or reverse:https://HOST[:PORT], got "
     "\"reverse:ftp://x\""},
    {{.mode = "bridge", .workers = -1},
     "config: --mode: expected regular, transparent, socks5 or reverse:SCHEME://HOST:PORT, got "
     "\"bridge\""},
    {{.workers = 1025}, "config: --workers: expected integer <= 1024, got 1025"},
    {{.ca_dir = "", .workers = -1}, "config: --ca-dir: expected a non-empty value"},
    {{.ca_dir = "/tmp/\xff", .workers = -1}, "config: --ca-dir: expected UTF-8 text"},
    {{.event_ring = "", .workers = -1}, "config: --event-ring: expected a non-empty value"},
    {{.metrics = "nope", .workers = -1}, "config: --metrics: expected HOST:PORT, got \"nope\""},
    {{.metrics = "[::1]:x", .workers = -1},
     "config: --metrics: port must be an integer 0..65535, got \"x\""},
    {{.mode = "reverse:http://\xc0\xaf", .workers = -1}, "config: --mode: expected UTF-8 text"},
    {{.event_ring = "/r\xed\xa0\x80", .workers = -1}, "config: --event-ring: expected UTF-8 text"},
    {{.event_ring = "/r\xf4\x90\x80\x80", .workers = -1},
     "config: --event-ring: expected UTF-8 text"},
    {{.event_ring = "/r\xe2\x82", .workers = -1}, "config: --event-ring: expected UTF-8 text"},
    {{.listen = "127.0.0.1:1\n2", .workers = -1},
     "config: --listen: port must be an integer 0..65535, got \"1\\x0a2\""},
};

Test(config, bad_flags_name_the_flag)
{
    for (size_t i = 0; i < sizeof(bad_flags) / sizeof(bad_flags[0]); i++) {
        char err[256] = "";
        struct soth_config *c = NULL;
        cr_expect_eq(soth_config_load(NULL, &bad_flags[i].cli, &c, err, sizeof(err)), SOTH_E_CONFIG,
                     "case %zu accepted", i);
        cr_expect_str_eq(err, bad_flags[i].error, "case %zu", i);
        cr_expect_null(c);
    }
}

Test(config, file_errors)
{
    char err[512];
    struct soth_config *c = NULL;
    cr_expect_eq(soth_config_load("/nonexistent/soth.json", NULL, &c, err, sizeof(err)),
                 SOTH_E_CONFIG);
    cr_expect_str_eq(err, "config: /nonexistent/soth.json: unable to open /nonexistent/soth.json: "
                          "No such file or directory");
    cr_expect_null(c);

    char path[] = "/tmp/soth-cfg-XXXXXX";
    write_tmp(path, "{\n  \"listen\": \"127.0.0.1:1\",\n  \"mode\": \"regular\",,\n}\n");
    cr_expect_eq(soth_config_load(path, NULL, &c, err, sizeof(err)), SOTH_E_CONFIG);
    char want[512];
    snprintf(want, sizeof(want), "config: %s: line 3, column 21: string or '}' expected near ','",
             path);
    cr_expect_str_eq(err, want);
    unlink(path);

    char empty[] = "/tmp/soth-cfg-XXXXXX";
    write_tmp(empty, "");
    cr_expect_eq(soth_config_load(empty, NULL, &c, err, sizeof(err)), SOTH_E_CONFIG);
    snprintf(want, sizeof(want),
             "config: %s: line 1, column 0: '[' or '{' expected near end of file", empty);
    cr_expect_str_eq(err, want);
    unlink(empty);

    cr_expect_eq(soth_config_load("/tmp", NULL, &c, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect(strncmp(err, "config: /tmp: ", 14) == 0, "%s", err);
    cr_expect_null(c);
}

/* ---- bundles (docs/bundles.md): laid over the file, re-read on reload */

static const char bundle_a[] =
    "{\"bundle_version\":1,\"ignore_hosts\":[\"^ign:\"],\"rules\":["
    "{\"id\":\"bank\",\"hosts\":[\"*.bank.test\",\"b.test:443\"],\"action\":\"tunnel\"}],"
    "\"defaults\":{\"action\":\"block\"}}";
static const char bundle_b[] =
    "{\"bundle_version\":1,\"rules\":[{\"id\":\"ads\",\"hosts\":[\"ads.test\"],"
    "\"action\":\"block\"}],\"defaults\":{\"action\":\"tunnel\"}}";

Test(config, bundle_replaces_ignore_hosts_and_policy)
{
    char bpath[] = "/tmp/soth-bundle-XXXXXX", b2[] = "/tmp/soth-bundle-XXXXXX";
    char cpath[] = "/tmp/soth-cfg-XXXXXX";
    write_tmp(bpath, bundle_a);
    write_tmp(b2, bundle_b);
    char text[512];
    snprintf(text, sizeof(text),
             "{\"ignore_hosts\":[\"^file:\"],\"policy\":{\"default\":\"intercept\","
             "\"rules\":[{\"host\":\"x.test\",\"action\":\"block\"}]},"
             "\"resolve\":{\"o.test\":\"::1\"},\"soth\":{\"bundle\":\"%s\"}}",
             bpath);
    write_tmp(cpath, text);
    char err[256];
    struct soth_config *c = NULL;
    cr_assert_eq(soth_config_load(cpath, NULL, &c, err, sizeof(err)), 0, "%s", err);
    json_t *got = effective_of(c);
    char want_text[512];
    snprintf(want_text, sizeof(want_text),
             "{\"ignore_hosts\":[\"^ign:\"],\"policy\":{\"default\":\"block\",\"rules\":["
             "{\"host\":\"*.bank.test\",\"action\":\"tunnel\",\"id\":\"bank#1\"},"
             "{\"host\":\"b.test:443\",\"action\":\"tunnel\",\"id\":\"bank#2\"}]},"
             "\"resolve\":{\"o.test\":\"::1\"},\"soth\":{\"bundle\":\"%s\"}}",
             bpath);
    json_t *want = defaults_with(want_text);
    expect_json_eq(got, want, "soth.bundle over the file");
    json_decref(got);
    json_decref(want);
    cr_expect_eq(c->n_rules, 2);
    cr_expect_eq(c->rules[1].port, 443);
    soth_config_unref(c);

    /* --bundle wins over soth.bundle, and is what the effective config names */
    struct soth_cli_overrides cli = {.workers = -1, .bundle = b2};
    cr_assert_eq(soth_config_load(cpath, &cli, &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_str_eq(c->soth.bundle, b2);
    cr_expect_eq(c->policy_default, SOTH_ACTION_TUNNEL);
    cr_expect_eq(c->n_rules, 1);
    cr_expect_eq(c->n_ignore_hosts, 0);
    soth_config_unref(c);

    /* --bundle without a config file */
    cr_assert_eq(soth_config_load(NULL, &cli, &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(c->n_rules, 1);
    soth_config_unref(c);

    /* a bad bundle is the bundle's error line; nothing is loaded */
    rewrite(b2, "{\"bundle_version\":1,\"rules\":[{\"id\":\"a\",\"hosts\":[\"a*\"],"
                "\"action\":\"block\"}]}");
    c = (struct soth_config *)err;
    cr_expect_eq(soth_config_load(cpath, &cli, &c, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_null(c);
    cr_expect_str_eq(err, "bundle: rules[0].hosts[0]: invalid host glob: '*' must be a whole "
                          "label in \"a*\"");

    /* text loads (tests, fuzzing) never read the file soth.bundle names */
    const char *t = "{\"soth\":{\"bundle\":\"/nonexistent/bundle.json\"}}";
    cr_assert_eq(soth_config_load_text(t, strlen(t), &c, err, sizeof(err)), 0, "%s", err);
    cr_expect_str_eq(c->soth.bundle, "/nonexistent/bundle.json");
    cr_expect_eq(c->n_rules, 0);
    soth_config_unref(c);
    unlink(bpath);
    unlink(b2);
    unlink(cpath);
}

Test(config, reload_rereads_the_bundle)
{
    char bpath[] = "/tmp/soth-bundle-XXXXXX";
    write_tmp(bpath, bundle_a);
    struct soth_cli_overrides cli = {.workers = -1, .bundle = bpath};
    char err[256];
    struct soth_config *cur = NULL, *next = NULL;
    cr_assert_eq(soth_config_load(NULL, &cli, &cur, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(cur->policy_default, SOTH_ACTION_BLOCK);

    rewrite(bpath, bundle_b);
    bool restart = true;
    cr_assert_eq(soth_config_reload(cur, NULL, &cli, &next, &restart, err, sizeof(err)), 0, "%s",
                 err);
    cr_expect_not(restart);
    cr_expect_eq(next->policy_default, SOTH_ACTION_TUNNEL);
    cr_expect_eq(next->n_rules, 1);
    cr_expect_str_eq(next->rules[0].host, "ads.test");
    cr_expect_eq(next->n_ignore_hosts, 0);
    cr_expect_str_eq(next->soth.bundle, bpath);
    soth_config_unref(next);

    /* a bad bundle: the error, no snapshot, cur untouched */
    rewrite(bpath, "{\"bundle_version\":1,\"rules\":[{\"id\":\"a\",\"hosts\":[\"a.test\"],"
                   "\"acton\":\"block\"}]}");
    next = (struct soth_config *)err;
    cr_expect_eq(soth_config_reload(cur, NULL, &cli, &next, NULL, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_null(next);
    cr_expect_str_eq(err, "bundle: rules[0].acton: unknown key");
    cr_expect_eq(cur->policy_default, SOTH_ACTION_BLOCK);
    cr_expect_eq(cur->n_rules, 2);
    soth_config_unref(cur);
    unlink(bpath);
}

/* ---- SIGHUP reload: policy from the file, startup-only settings from the running snapshot */

Test(config, reload_takes_policy_and_keeps_startup_settings)
{
    char path[] = "/tmp/soth-cfg-XXXXXX";
    write_tmp(path, "{\"listen\":\"127.0.0.1:0\",\"workers\":2,\"ignore_hosts\":[\"^a:\"],"
                    "\"policy\":{\"default\":\"intercept\"},\"timeouts\":{\"idle_ms\":1000},"
                    "\"events\":{\"ring_size_mb\":8}}");
    struct soth_cli_overrides cli = {.mode = "reverse:https://origin.test:9443", .workers = -1};
    char err[256];
    struct soth_config *cur = NULL, *next = NULL;
    cr_assert_eq(soth_config_load(path, &cli, &cur, err, sizeof(err)), 0, "%s", err);
    cur->listen.port = 41234; /* what the engine records after bind() on port 0 */

    /* only reloadable keys change: no restart needed */
    rewrite(path, "{\"listen\":\"127.0.0.1:0\",\"workers\":2,\"ignore_hosts\":[\"^b:\"],"
                  "\"policy\":{\"default\":\"block\",\"rules\":[{\"host\":\"*.x\","
                  "\"action\":\"tunnel\"}]},\"timeouts\":{\"idle_ms\":2000},"
                  "\"resolve\":{\"o.test\":\"::1\"},\"events\":{\"ring_size_mb\":8}}");
    bool restart = true;
    cr_assert_eq(soth_config_reload(cur, path, &cli, &next, &restart, err, sizeof(err)), 0, "%s",
                 err);
    cr_expect_not(restart);
    json_t *got = effective_of(next);
    json_t *want = defaults_with(
        "{\"listen\":\"127.0.0.1:0\",\"workers\":2,\"mode\":\"reverse:https://origin.test:9443\","
        "\"ignore_hosts\":[\"^b:\"],\"policy\":{\"default\":\"block\",\"rules\":[{\"host\":\"*.x\","
        "\"action\":\"tunnel\"}]},\"timeouts\":{\"idle_ms\":2000},"
        "\"resolve\":{\"o.test\":\"::1\"},\"events\":{\"ring_size_mb\":8}}");
    expect_json_eq(got, want, "policy-only reload");
    json_decref(got);
    json_decref(want);
    cr_expect_eq(next->listen.port, 41234);
    cr_expect_eq(next->mode, SOTH_MODE_REVERSE);
    cr_expect_eq(next->reverse_port, 9443);
    cr_expect_eq(next->n_rules, 1);
    soth_config_unref(next);

    /* startup-only keys change too: kept from cur, and reported */
    rewrite(path, "{\"listen\":\"127.0.0.1:9\",\"workers\":5,\"mode\":\"transparent\","
                  "\"tls\":{\"leaf_cache_size\":1},\"policy\":{\"default\":\"tunnel\"}}");
    struct soth_cli_overrides no_flags = {.workers = -1};
    cr_assert_eq(soth_config_reload(cur, path, &no_flags, &next, &restart, err, sizeof(err)), 0,
                 "%s", err);
    cr_expect(restart);
    cr_expect_eq(next->policy_default, SOTH_ACTION_TUNNEL);
    cr_expect_eq(next->n_ignore_hosts, 0);
    cr_expect_eq(next->timeouts.idle_ms, 120000);
    cr_expect_str_eq(next->listen_text, "127.0.0.1:0");
    cr_expect_eq(next->listen.port, 41234);
    cr_expect_eq(next->workers, 2);
    cr_expect_eq(next->mode, SOTH_MODE_REVERSE);
    cr_expect_str_eq(next->reverse_host, "origin.test");
    cr_expect_eq(next->tls.leaf_cache_size, 4096);
    cr_expect_eq(next->events.ring_size_mb, 8);
    soth_config_unref(next);

    /* an invalid file is an error, as at startup; cur is untouched */
    rewrite(path, "{\"policy\":{\"default\":\"drop\"}}");
    next = cur;
    cr_expect_eq(soth_config_reload(cur, path, &cli, &next, NULL, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err,
                     "config: policy.default: expected \"intercept\", \"tunnel\" or \"block\", "
                     "got \"drop\"");
    cr_expect_null(next);
    cr_expect_eq(refs_of(cur), 1);
    cr_expect_eq(cur->n_ignore_hosts, 1);
    soth_config_unref(cur);
    unlink(path);
}

/* ---- host:port */

struct hp_case {
    const char *text;
    int family; /* AF_INET, AF_INET6, AF_UNSPEC for a name, -1 = rejected */
    const char *host;
    int port;
};

static const struct hp_case hp_cases[] = {
    {"127.0.0.1:8080", AF_INET, "127.0.0.1", 8080},
    {"0.0.0.0:0", AF_INET, "0.0.0.0", 0},
    {"255.255.255.255:65535", AF_INET, "255.255.255.255", 65535},
    {"[::1]:443", AF_INET6, "::1", 443},
    {"[::]:1", AF_INET6, "::", 1},
    {"[2001:db8::a:b]:8443", AF_INET6, "2001:db8::a:b", 8443},
    {"[::ffff:127.0.0.1]:80", AF_INET6, "::ffff:127.0.0.1", 80},
    {"example.com:80", AF_UNSPEC, "example.com", 80},
    {"localhost:1", AF_UNSPEC, "localhost", 1},
    {"1.2.3:80", AF_UNSPEC, "1.2.3", 80}, /* not a dotted quad: a name */
    {"::1:443", -1, NULL, 0},
    {"[::1]", -1, NULL, 0},
    {"[::1]443", -1, NULL, 0},
    {"[::1:443", -1, NULL, 0},
    {"[]:443", -1, NULL, 0},
    {"[1.2.3.4]:80", -1, NULL, 0},
    {"[fe80::1%eth0]:80", -1, NULL, 0},
    {"[example.com]:80", -1, NULL, 0},
    {"a:", -1, NULL, 0},
    {":80", -1, NULL, 0},
    {"a", -1, NULL, 0},
    {"", -1, NULL, 0},
    {"a:08", -1, NULL, 0},
    {"a:65536", -1, NULL, 0},
    {"a:99999999999999999999", -1, NULL, 0},
    {"a:-1", -1, NULL, 0},
    {"a:+1", -1, NULL, 0},
    {"a: 1", -1, NULL, 0},
    {"a:1 ", -1, NULL, 0},
    {"a:0x10", -1, NULL, 0},
    {"a b:1", -1, NULL, 0},
    {"user@a:1", -1, NULL, 0},
    {"a/b:1", -1, NULL, 0},
};

Test(config, hostport)
{
    for (size_t i = 0; i < sizeof(hp_cases) / sizeof(hp_cases[0]); i++) {
        const struct hp_case *t = &hp_cases[i];
        char err[256] = "";
        struct soth_hostport hp;
        memset(&hp, 0xa5, sizeof(hp));
        int rc = soth_hostport_parse(t->text, &hp, err, sizeof(err));
        if (t->family < 0) {
            cr_expect_eq(rc, SOTH_E_CONFIG, "\"%s\" accepted", t->text);
            cr_expect_gt(strlen(err), 0, "\"%s\": no reason", t->text);
            cr_expect_null(hp.host, "\"%s\": host left behind", t->text);
            cr_expect_eq(hp.addr_len, 0);
            soth_hostport_dispose(&hp); /* a no-op, and safe */
            continue;
        }
        cr_expect_eq(rc, 0, "\"%s\" rejected: %s", t->text, err);
        if (rc != 0)
            continue;
        cr_expect_str_eq(hp.host, t->host, "\"%s\"", t->text);
        cr_expect_eq(hp.port, t->port, "\"%s\"", t->text);
        cr_expect_eq(hp.addr.ss_family, t->family, "\"%s\"", t->text);
        if (t->family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&hp.addr;
            cr_expect_eq(hp.addr_len, sizeof(*s4));
            cr_expect_eq(ntohs(s4->sin_port), t->port);
        } else if (t->family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&hp.addr;
            cr_expect_eq(hp.addr_len, sizeof(*s6));
            cr_expect_eq(ntohs(s6->sin6_port), t->port);
        } else {
            cr_expect_eq(hp.addr_len, 0);
        }
        soth_hostport_dispose(&hp);
        cr_expect_null(hp.host);
    }
}

Test(config, hostport_messages)
{
    char err[256];
    struct soth_hostport hp;
    cr_expect_eq(soth_hostport_parse("a:65536", &hp, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "port must be an integer 0..65535, got \"65536\"");
    cr_expect_eq(soth_hostport_parse("::1:443", &hp, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "an IPv6 address needs brackets: expected [IPV6]:PORT, got \"::1:443\"");
    cr_expect_eq(soth_hostport_parse("[::1]", &hp, err, sizeof(err)), SOTH_E_CONFIG);
    cr_expect_str_eq(err, "expected [IPV6]:PORT, got \"[::1]\"");
}

/* ---- default paths */

Test(config, default_paths_follow_xdg)
{
    setenv("XDG_RUNTIME_DIR", "/run/user/42", 1);
    setenv("XDG_DATA_HOME", "/home/u/.data", 1);
    char *r = soth_config_default_ring_path(), *d = soth_config_default_ca_dir();
    cr_expect_str_eq(r, "/run/user/42/soth-mitm/events.ring");
    cr_expect_str_eq(d, "/home/u/.data/soth-mitm");
    free(r);
    free(d);

    char want[64];
    snprintf(want, sizeof(want), "/tmp/soth-mitm-%u/events.ring", (unsigned)getuid());
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("XDG_DATA_HOME");
    setenv("HOME", "/home/u", 1);
    r = soth_config_default_ring_path();
    d = soth_config_default_ca_dir();
    cr_expect_str_eq(r, want);
    cr_expect_str_eq(d, "/home/u/.local/share/soth-mitm");
    free(r);
    free(d);

    /* relative or empty XDG values are ignored (XDG Base Directory spec) */
    setenv("XDG_RUNTIME_DIR", "run", 1);
    setenv("XDG_DATA_HOME", "", 1);
    setenv("HOME", "/home/v/", 1);
    r = soth_config_default_ring_path();
    d = soth_config_default_ca_dir();
    cr_expect_str_eq(r, want);
    cr_expect_str_eq(d, "/home/v/.local/share/soth-mitm");
    free(r);
    free(d);

    /* no HOME: the password database */
    unsetenv("HOME");
    d = soth_config_default_ca_dir();
    cr_expect_not_null(d);
    cr_expect(d[0] == '/', "%s", d);
    cr_expect_not_null(strstr(d, "/.local/share/soth-mitm"), "%s", d);
    free(d);
}

/* ---- reference counting and the publication slot */

static struct soth_config *load_or_die(const char *text)
{
    char err[256];
    struct soth_config *c = NULL;
    cr_assert_eq(soth_config_load_text(text, strlen(text), &c, err, sizeof(err)), 0, "%s", err);
    return c;
}

static unsigned refs_of(struct soth_config *c)
{
    return atomic_load(&c->refs);
}

Test(config, ref_unref)
{
    struct soth_config *c = load_or_die("{\"ignore_hosts\":[\"x\"],\"resolve\":{\"a\":\"::1\"}}");
    cr_expect_eq(refs_of(c), 1);
    struct soth_config *r = soth_config_ref(c);
    cr_expect_eq(r, c);
    cr_expect_eq(refs_of(c), 2);
    soth_config_unref(c);
    cr_expect_str_eq(r->ignore_hosts[0], "x"); /* still alive: one reference left */
    soth_config_unref(r);                      /* freed: ASan reports a leak otherwise */
    soth_config_unref(NULL);
}

#define REF_THREADS 4
#define REF_ROUNDS  20000

/* Criterion asserts belong to the test's thread: threads count what they saw go wrong. */
static atomic_uint thread_failures;

static void *ref_churn(void *arg)
{
    struct soth_config *c = arg;
    for (int i = 0; i < REF_ROUNDS; i++) {
        struct soth_config *r = soth_config_ref(c);
        if (r->timeouts.idle_ms != 7)
            atomic_fetch_add(&thread_failures, 1);
        soth_config_unref(r);
    }
    soth_config_unref(c); /* the thread's own reference */
    return NULL;
}

Test(config, ref_unref_across_threads)
{
    struct soth_config *c = load_or_die("{\"timeouts\":{\"idle_ms\":7}}");
    pthread_t t[REF_THREADS];
    for (int i = 0; i < REF_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, ref_churn, soth_config_ref(c)), 0);
    for (int i = 0; i < REF_THREADS; i++)
        pthread_join(t[i], NULL);
    cr_expect_eq(atomic_load(&thread_failures), 0);
    cr_expect_eq(refs_of(c), 1);
    soth_config_unref(c);
}

Test(config, slot_hands_over_the_newest_snapshot)
{
    struct soth_config_slot slot;
    soth_config_slot_init(&slot);
    cr_expect_null(soth_config_slot_take(&slot));

    struct soth_config *a = load_or_die("{\"workers\":1}");
    struct soth_config *b = load_or_die("{\"workers\":2}");
    struct soth_config *keep_a = soth_config_ref(a); /* to watch a's count */

    soth_config_slot_publish(&slot, a); /* takes a's reference */
    cr_expect_eq(refs_of(keep_a), 2);
    soth_config_slot_publish(&slot, b); /* a was never taken: dropped */
    cr_expect_eq(refs_of(keep_a), 1);
    struct soth_config *got = soth_config_slot_take(&slot);
    cr_expect_eq(got, b);
    cr_expect_eq(got->workers, 2);
    cr_expect_null(soth_config_slot_take(&slot), "taken twice");
    soth_config_unref(got);
    soth_config_unref(keep_a);

    /* dispose releases what is pending */
    struct soth_config *d = load_or_die("{}");
    struct soth_config *keep_d = soth_config_ref(d);
    soth_config_slot_publish(&slot, d);
    soth_config_slot_dispose(&slot);
    cr_expect_eq(refs_of(keep_d), 1);
    cr_expect_null(soth_config_slot_take(&slot));
    soth_config_unref(keep_d);
    soth_config_slot_publish(&slot, NULL); /* clearing an empty slot is fine */
}

/* A reloader publishing to two workers while they switch at their safe points. */

#define SLOT_WORKERS 2
#define SLOT_RELOADS 300

struct slot_worker {
    struct soth_config_slot slot;
    struct soth_config *cfg; /* the snapshot the worker runs on (one reference) */
    atomic_bool stop;
    unsigned switches;
    unsigned last_seen;
};

static void *slot_worker_main(void *arg)
{
    struct slot_worker *w = arg;
    for (;;) {
        bool stopping = atomic_load(&w->stop);
        /* safe point */
        struct soth_config *n = soth_config_slot_take(&w->slot);
        if (n != NULL) {
            /* snapshots arrive in publication order, never older than the one in use */
            if (n->workers < w->last_seen)
                atomic_fetch_add(&thread_failures, 1);
            w->last_seen = n->workers;
            soth_config_unref(w->cfg);
            w->cfg = n;
            w->switches++;
        }
        /* "request handling": read the snapshot without locks */
        if (w->cfg->timeouts.connect_ms != 1000 + w->cfg->workers)
            atomic_fetch_add(&thread_failures, 1);
        if (stopping)
            break;
    }
    return NULL;
}

Test(config, slot_reload_stress)
{
    struct slot_worker ws[SLOT_WORKERS];
    pthread_t t[SLOT_WORKERS];
    struct soth_config *first = load_or_die("{\"workers\":0,\"timeouts\":{\"connect_ms\":1000}}");
    for (int i = 0; i < SLOT_WORKERS; i++) {
        soth_config_slot_init(&ws[i].slot);
        ws[i].cfg = soth_config_ref(first);
        atomic_init(&ws[i].stop, false);
        ws[i].switches = 0;
        ws[i].last_seen = 0;
        cr_assert_eq(pthread_create(&t[i], NULL, slot_worker_main, &ws[i]), 0);
    }
    struct soth_config *last = NULL;
    for (unsigned r = 1; r <= SLOT_RELOADS; r++) {
        char text[128];
        snprintf(text, sizeof(text), "{\"workers\":%u,\"timeouts\":{\"connect_ms\":%u}}", r,
                 1000 + r);
        struct soth_config *n = load_or_die(text);
        for (int i = 0; i < SLOT_WORKERS; i++)
            soth_config_slot_publish(&ws[i].slot, soth_config_ref(n));
        if (r == SLOT_RELOADS)
            last = soth_config_ref(n);
        soth_config_unref(n); /* the reloader's own reference */
    }
    for (int i = 0; i < SLOT_WORKERS; i++)
        atomic_store(&ws[i].stop, true);
    for (int i = 0; i < SLOT_WORKERS; i++) {
        pthread_join(t[i], NULL);
        /* the last look after stop saw the final snapshot */
        cr_expect_eq(ws[i].cfg, last, "worker %d did not end on the newest snapshot", i);
        cr_expect_geq(ws[i].switches, 1);
        soth_config_slot_dispose(&ws[i].slot);
        soth_config_unref(ws[i].cfg);
    }
    cr_expect_eq(atomic_load(&thread_failures), 0);
    /* Every other snapshot was freed by its last unref (ASan: no leaks); these two remain. */
    cr_expect_eq(refs_of(last), 1);
    cr_expect_eq(refs_of(first), 1);
    soth_config_unref(last);
    soth_config_unref(first);
}

Test(config, nats_sink_defaults_and_fields)
{
    /* Defaults (docs/config.md): the effective config prints every key, the password never. */
    json_t *got = effective("{\"events\":{\"sinks\":[{\"type\":\"nats\"}]}}");
    json_t *want = parse_json(
        "{\"type\":\"nats\",\"url\":\"nats://127.0.0.1:4222\",\"subject\":\"soth.events\","
        "\"stream\":\"SOTH_EVENTS\",\"format\":\"event\",\"max_pending_mb\":64,"
        "\"tls_ca_file\":null,\"tls_cert_file\":null,\"tls_key_file\":null,\"creds_file\":null,"
        "\"user\":null,\"password\":null}");
    expect_json_eq(json_array_get(json_object_get(json_object_get(got, "events"), "sinks"), 0),
                   want, "nats defaults");
    json_decref(got);
    json_decref(want);

    char err[256];
    struct soth_config *c = NULL;
    const char *text =
        "{\"events\":{\"sinks\":[{\"type\":\"nats\",\"url\":\"tls://u:p@nats.example:4443,"
        "nats://[::1],nats://10.0.0.2:4222\",\"subject\":\"fleet.host-1\",\"stream\":\"FLEET\","
        "\"format\":\"event\",\"max_pending_mb\":2,\"tls_ca_file\":\"/ca.pem\","
        "\"tls_cert_file\":\"/c.pem\",\"tls_key_file\":\"/c.key\",\"user\":\"me\","
        "\"password\":\"secret\"}]}}";
    cr_assert_eq(soth_config_load_text(text, strlen(text), &c, err, sizeof(err)), 0, "%s", err);
    const struct soth_sink_cfg *s = &c->events.sinks[0];
    cr_expect_eq(s->type, SOTH_SINK_NATS);
    cr_expect_str_eq(s->url, "tls://u:p@nats.example:4443,nats://[::1],nats://10.0.0.2:4222");
    cr_expect_str_eq(s->subject, "fleet.host-1");
    cr_expect_str_eq(s->stream, "FLEET");
    cr_expect_eq(s->max_pending_mb, 2);
    cr_expect_str_eq(s->tls_ca_file, "/ca.pem");
    cr_expect_str_eq(s->tls_cert_file, "/c.pem");
    cr_expect_str_eq(s->tls_key_file, "/c.key");
    cr_expect_null(s->creds_file);
    cr_expect_str_eq(s->user, "me");
    cr_expect_str_eq(s->password, "secret");
    char *dump = soth_config_to_json(c);
    cr_expect(strstr(dump, "secret") == NULL, "password printed: %s", dump);
    free(dump);
    soth_config_unref(c);

    /* "format": "exchange" (docs/sinks.md): taken, and printed back. */
    got = effective("{\"events\":{\"sinks\":[{\"type\":\"nats\",\"format\":\"exchange\"}]}}");
    json_t *sk0 = json_array_get(json_object_get(json_object_get(got, "events"), "sinks"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(sk0, "format")), "exchange");
    json_decref(got);
}
