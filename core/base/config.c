/*
 * Config loading (docs/config.md): embedded defaults < JSON file < command line.
 * Validation names the key path of the first problem: "config: <key.path>: <what>".
 */
#include "soth/config.h"
#include "jerr.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <pwd.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/bundle.h"

const char *const soth_mode_names[SOTH_MODE_COUNT] = {"regular", "reverse", "transparent",
                                                      "socks5"};
const char *const soth_action_names[SOTH_ACTION_COUNT] = {"intercept", "tunnel", "block"};
const char *const soth_sink_type_names[SOTH_SINK_COUNT] = {"jsonl", "uds", "nats"};
const char *const soth_sink_format_names[SOTH_SINK_FMT_COUNT] = {"event", "exchange"};

/* ---- errors */

static int fail(struct soth_jerr *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct soth_jerr *e, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = soth_jerr_vfail(e, "config", path, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- small helpers */

/** strdup that remembers a failure in e; load_common turns it into "out of memory". */
static char *sdup(struct soth_jerr *e, const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        e->oom = true;
    return d;
}

/** calloc(n, size) for an array of n >= 0 items (never NULL for n == 0 unless OOM). */
static void *array_new(struct soth_jerr *e, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        e->oom = true;
    return p;
}

static void path_join(char *out, size_t cap, const char *parent, const char *key)
{
    if (parent[0])
        snprintf(out, cap, "%s.%s", parent, key);
    else
        snprintf(out, cap, "%s", key);
}

static int get_uint(struct soth_jerr *e, const char *path, const json_t *v, long long min,
                    long long max, uint32_t *out)
{
    char b[64];
    if (!json_is_integer(v)) {
        soth_json_brief(v, b, sizeof(b));
        return fail(e, path, "expected integer >= %lld, got %s", min, b);
    }
    json_int_t x = json_integer_value(v);
    if (x < min)
        return fail(e, path, "expected integer >= %lld, got %lld", min, (long long)x);
    if (x > max)
        return fail(e, path, "expected integer <= %lld, got %lld", max, (long long)x);
    *out = (uint32_t)x;
    return 0;
}

static int get_bool(struct soth_jerr *e, const char *path, const json_t *v, bool *out)
{
    if (!json_is_boolean(v))
        return fail(e, path, "expected boolean, got %s", soth_json_type_name(v));
    *out = json_is_true(v);
    return 0;
}

/** A string or null (null keeps *out NULL). Replaces *out. */
static int get_str_or_null(struct soth_jerr *e, const char *path, const json_t *v, char **out)
{
    if (json_is_null(v)) {
        free(*out);
        *out = NULL;
        return 0;
    }
    if (!json_is_string(v))
        return fail(e, path, "expected string or null, got %s", soth_json_type_name(v));
    if (json_string_length(v) == 0)
        return fail(e, path, "expected a non-empty string, got \"\"");
    free(*out);
    *out = sdup(e, json_string_value(v));
    return 0;
}

static int check_keys(struct soth_jerr *e, const char *parent, const json_t *obj,
                      const char *const *keys)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool known = false;
        for (size_t i = 0; keys[i]; i++)
            if (strcmp(k, keys[i]) == 0)
                known = true;
        if (!known) {
            char p[256];
            path_join(p, sizeof(p), parent, k);
            return fail(e, p, "unknown key");
        }
    }
    return 0;
}

static int expect_object(struct soth_jerr *e, const char *path, const json_t *v)
{
    if (!json_is_object(v))
        return fail(e, path, "expected object, got %s", soth_json_type_name(v));
    return 0;
}

/* ---- host:port */

/** A decimal port 0..65535 without sign, spaces or leading zeros; -1 if not one. */
static long parse_port(const char *s, size_t len)
{
    if (len == 0 || len > 5 || (s[0] == '0' && len > 1))
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? v : -1;
}

int soth_hostport_parse(const char *text, struct soth_hostport *hp, char *err, size_t err_len)
{
    memset(hp, 0, sizeof(*hp));
    const char *colon;
    const char *host;
    size_t host_len;
    bool bracketed = text[0] == '[';
    if (bracketed) {
        const char *rb = strchr(text, ']');
        if (rb == NULL || rb[1] != ':') {
            snprintf(err, err_len, "expected [IPV6]:PORT, got \"%s\"", text);
            return SOTH_E_CONFIG;
        }
        host = text + 1;
        host_len = (size_t)(rb - host);
        colon = rb + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon != NULL && memchr(text, ':', (size_t)(colon - text)) != NULL) {
            snprintf(err, err_len,
                     "an IPv6 address needs brackets: expected [IPV6]:PORT, got \"%s\"", text);
            return SOTH_E_CONFIG;
        }
        host = text;
        host_len = colon ? (size_t)(colon - text) : 0;
    }
    if (colon == NULL || host_len == 0) {
        snprintf(err, err_len, "expected HOST:PORT, got \"%s\"", text);
        return SOTH_E_CONFIG;
    }
    if (host_len > 253) {
        snprintf(err, err_len, "host longer than 253 bytes");
        return SOTH_E_CONFIG;
    }
    long port = parse_port(colon + 1, strlen(colon + 1));
    if (port < 0) {
        snprintf(err, err_len, "port must be an integer 0..65535, got \"%s\"", colon + 1);
        return SOTH_E_CONFIG;
    }
    for (size_t i = 0; i < host_len; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c <= ' ' || c >= 0x7f || c == '/' || c == '[' || c == ']' || c == '@' || c == '%') {
            snprintf(err, err_len, "invalid host in \"%s\"", text);
            return SOTH_E_CONFIG;
        }
    }
    char *h = strndup(host, host_len);
    if (h == NULL) {
        snprintf(err, err_len, "out of memory");
        return SOTH_E_CONFIG;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)&hp->addr;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&hp->addr;
    if (bracketed) {
        if (inet_pton(AF_INET6, h, &s6->sin6_addr) != 1) {
            snprintf(err, err_len, "invalid IPv6 address in \"%s\"", text);
            free(h);
            memset(hp, 0, sizeof(*hp));
            return SOTH_E_CONFIG;
        }
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        hp->addr_len = sizeof(*s6);
    } else if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        hp->addr_len = sizeof(*s4);
    }
    hp->host = h;
    hp->port = (uint16_t)port;
    return 0;
}

void soth_hostport_dispose(struct soth_hostport *hp)
{
    free(hp->host);
    hp->host = NULL;
    hp->addr_len = 0;
}

/*
 * ---- rule globs (policy.rules[].host), as soth_policy_glob_match reads them: labels of
 * [A-Za-z0-9-_] or a label that is exactly "*" (one or more whole labels, anywhere), one
 * optional trailing dot, or a bracketed IPv6 literal; then an optional ":PORT" 1..65535.
 */

static int glob_check(const char *glob, char *why, size_t why_len, char **host_out, int *port_out)
{
    size_t len = strlen(glob);
    const char *host = glob;
    size_t host_len;
    const char *port = NULL;
    *port_out = -1;
    *host_out = NULL;
    if (glob[0] == '[') {
        const char *rb = strchr(glob, ']');
        if (rb == NULL || (rb[1] != '\0' && rb[1] != ':')) {
            snprintf(why, why_len, "expected [IPV6] or [IPV6]:PORT in \"%s\"", glob);
            return -1;
        }
        host = glob + 1;
        host_len = (size_t)(rb - host);
        port = rb[1] == ':' ? rb + 2 : NULL;
        char v6[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        bool ok = host_len > 0 && host_len < sizeof(v6);
        if (ok) {
            memcpy(v6, host, host_len);
            v6[host_len] = '\0';
            ok = inet_pton(AF_INET6, v6, &a6) == 1;
        }
        if (!ok) {
            snprintf(why, why_len, "invalid IPv6 address in \"%s\"", glob);
            return -1;
        }
    } else {
        const char *colon = strrchr(glob, ':');
        host_len = colon ? (size_t)(colon - glob) : len;
        port = colon ? colon + 1 : NULL;
        if (host_len == 0) {
            snprintf(why, why_len, "empty host in \"%s\"", glob);
            return -1;
        }
        if (host_len > 253) {
            snprintf(why, why_len, "host longer than 253 bytes");
            return -1;
        }
        size_t label = 0;  /* bytes in the current label */
        bool star = false; /* the current label contains '*' */
        for (size_t i = 0; i <= host_len; i++) {
            char c = i < host_len ? glob[i] : '.';
            if (c == '.') {
                /* One trailing dot is the root label: "example.com." */
                bool trailing = i == host_len && i > 1 && glob[i - 1] == '.' && glob[i - 2] != '.';
                if (label == 0 && !trailing) {
                    snprintf(why, why_len, "empty label in \"%s\"", glob);
                    return -1;
                }
                if (star && label != 1) {
                    snprintf(why, why_len, "'*' must be a whole label in \"%s\"", glob);
                    return -1;
                }
                if (label > 63) {
                    snprintf(why, why_len, "label longer than 63 bytes in \"%s\"", glob);
                    return -1;
                }
                label = 0;
                star = false;
                continue;
            }
            if (c == '*') {
                star = true;
            } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '-' || c == '_')) {
                if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x7f)
                    snprintf(why, why_len, "invalid byte 0x%02x in \"%s\"", (unsigned char)c, glob);
                else
                    snprintf(why, why_len, "invalid character '%c' in \"%s\"", c, glob);
                return -1;
            }
            label++;
        }
    }
    if (port) {
        long p = parse_port(port, strlen(port));
        if (p < 1) {
            snprintf(why, why_len, "port must be 1..65535 in \"%s\"", glob);
            return -1;
        }
        *port_out = (int)p;
    }
    *host_out = strndup(host, host_len);
    if (*host_out == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    return 0;
}

/** A DNS name as `resolve` keys it: labels of [A-Za-z0-9-_], one optional trailing dot. */
static bool host_name_ok(const char *name, char *why, size_t why_len)
{
    char *host = NULL;
    int port;
    /* The glob grammar without '*' and ':' is exactly that. */
    if (strpbrk(name, "*:[") != NULL) {
        snprintf(why, why_len, "expected a DNS name, got \"%s\"", name);
        return false;
    }
    if (glob_check(name, why, why_len, &host, &port) < 0)
        return false;
    free(host);
    return true;
}

/*
 * ---- ignore_hosts regexes: guard regcomp against blow-up.
 * glibc's regcomp expands every repetition by copying its operand ("a{1,100}" is 100 copies
 * of "a", "x+" is "xx*"), while parsing, so "(a{1,99}){1,99}..." or "a++++...+" exhausts
 * memory before any error is found (the config fuzzer hit it). Estimate the expanded size
 * the same way and refuse patterns over REGEX_MAX_NODES. Adjacent repetition operators
 * ("a**", "a+?") are refused too: POSIX leaves them undefined, and "+?" or "*?" is a PCRE
 * habit (lazy match) that means something else here. The syntax proper is regcomp's.
 */

#define REGEX_MAX_NODES 10000
#define REGEX_MAX_DEPTH 64

/** Past a bracket expression starting at p ('['), or NULL if it is not terminated. */
static const char *skip_bracket(const char *p)
{
    const char *q = p + 1;
    if (*q == '^')
        q++;
    if (*q == ']') /* a leading ']' is literal */
        q++;
    while (*q && *q != ']') {
        if (*q == '[' && (q[1] == ':' || q[1] == '=' || q[1] == '.')) {
            char close[3] = {q[1], ']', '\0'};
            const char *end = strstr(q + 2, close);
            if (end == NULL)
                return NULL;
            q = end + 2;
        } else {
            q++;
        }
    }
    return *q == ']' ? q + 1 : NULL;
}

/** Decimal digits at *q (capped, glibc refuses counts over RE_DUP_MAX anyway). */
static unsigned long read_count(const char **q, bool *any)
{
    unsigned long v = 0;
    *any = false;
    while (**q >= '0' && **q <= '9') {
        if (v < 100000)
            v = v * 10 + (unsigned long)(**q - '0');
        (*q)++;
        *any = true;
    }
    return v;
}

/** An interval "{m}", "{m,}", "{m,n}" or "{,n}" at p: its length (0 if not one) and how many
 *  copies of its operand it makes. */
static size_t parse_interval(const char *p, unsigned long *copies)
{
    const char *q = p + 1;
    bool has_m, has_n = false, comma = false;
    unsigned long m = read_count(&q, &has_m), n = 0;
    if (*q == ',') { /* glibc reads "{,n}" as "{0,n}" */
        comma = true;
        q++;
        n = read_count(&q, &has_n);
    }
    if (*q != '}' || (!has_m && !has_n))
        return 0;
    unsigned long k = !comma ? m : has_n ? (n > m ? n : m) : m + 1;
    *copies = k ? k : 1;
    return (size_t)(q + 1 - p);
}

static int regex_guard(const char *re, char *why, size_t why_len)
{
    unsigned long saved[REGEX_MAX_DEPTH]; /* size of each enclosing group so far */
    unsigned long outer = 0;              /* sum of saved[] */
    unsigned long size = 0;               /* the current group so far */
    unsigned long last = 0;               /* the last atom, what a repetition copies */
    size_t depth = 0;
    bool repeated = false; /* the previous token was a repetition operator */
    const char *p = re;
    while (*p) {
        unsigned long copies = 0;
        size_t len = 0;
        if (*p == '*' || *p == '+' || *p == '?') {
            copies = 2;
            len = 1;
        } else if (*p == '{') {
            len = parse_interval(p, &copies);
        }
        if (len > 0) {
            if (repeated) {
                snprintf(why, why_len,
                         "invalid regular expression: adjacent repetition operators at offset %zu "
                         "(undefined in POSIX ERE)",
                         (size_t)(p - re));
                return -1;
            }
            repeated = true;
            if (copies > REGEX_MAX_NODES + 1UL)
                copies = REGEX_MAX_NODES + 1UL;
            size += last * (copies - 1);
            last *= copies;
            p += len;
        } else {
            repeated = false;
            switch (*p) {
            case '\\':
                p += p[1] ? 2 : 1;
                size++;
                last = 1;
                break;
            case '[': {
                const char *end = skip_bracket(p);
                if (end == NULL)
                    return 0; /* regcomp says what is unterminated */
                p = end;
                size++;
                last = 1;
                break;
            }
            case '(':
                if (depth == REGEX_MAX_DEPTH) {
                    snprintf(why, why_len,
                             "invalid regular expression: groups nested deeper than %d",
                             REGEX_MAX_DEPTH);
                    return -1;
                }
                saved[depth++] = size;
                outer += size;
                size = 0;
                last = 0;
                p++;
                break;
            case ')':
                if (depth > 0) {
                    unsigned long group = size + 1;
                    depth--;
                    outer -= saved[depth];
                    size = saved[depth] + group;
                    last = group;
                } else {
                    size++;
                    last = 1;
                }
                p++;
                break;
            case '|':
                size++;
                last = 0;
                p++;
                break;
            default:
                size++;
                last = 1;
                p++;
                break;
            }
        }
        if (outer + size > REGEX_MAX_NODES) {
            snprintf(why, why_len,
                     "invalid regular expression: too large once repetitions are expanded "
                     "(over %d nodes)",
                     REGEX_MAX_NODES);
            return -1;
        }
    }
    return 0;
}

/* ---- defaults */

static void config_free(struct soth_config *c);
static void identities_free(struct soth_identities *ids);
static void rule_identity_free(struct soth_rule *r);

/** malloc'ed a + b + c. */
static char *cat3(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

/** An XDG base directory variable, used only when absolute (XDG Base Directory spec). */
static const char *xdg_dir(const char *var)
{
    const char *v = getenv(var);
    return v && v[0] == '/' ? v : NULL;
}

char *soth_config_default_ca_dir(void)
{
    const char *d = xdg_dir("XDG_DATA_HOME");
    if (d)
        return cat3(d, "/soth-mitm", "");
    const char *home = getenv("HOME");
    char pwbuf[1024];
    if (home == NULL || home[0] == '\0') {
        /* No HOME (a service manager, say): the user database knows it. */
        struct passwd pw, *res = NULL;
        if (getpwuid_r(getuid(), &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res && res->pw_dir)
            home = res->pw_dir;
        else
            home = "/";
    }
    bool slash = home[strlen(home) - 1] == '/';
    return cat3(home, slash ? "" : "/", ".local/share/soth-mitm");
}

char *soth_config_default_ring_path(void)
{
    const char *d = xdg_dir("XDG_RUNTIME_DIR");
    if (d)
        return cat3(d, "/soth-mitm/events.ring", "");
    char uid[32];
    snprintf(uid, sizeof(uid), "%u", (unsigned)getuid());
    return cat3("/tmp/soth-mitm-", uid, "/events.ring");
}

/** The embedded defaults (docs/config.md). NULL when out of memory. */
static struct soth_config *config_defaults(void)
{
    struct soth_config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    atomic_init(&c->refs, 1);
    char why[64];
    c->listen_text = strdup("127.0.0.1:8080");
    c->mode_text = strdup("regular");
    if (c->listen_text == NULL || c->mode_text == NULL ||
        soth_hostport_parse(c->listen_text, &c->listen, why, sizeof(why)) < 0) {
        config_free(c);
        return NULL;
    }
    c->mode = SOTH_MODE_REGULAR;
    c->workers = 0;
    c->busy_poll_us = 0;
    c->wake_batch_us = 50; /* inert before Linux 6.12 (docs/config.md) */
    c->policy_default = SOTH_ACTION_INTERCEPT;
    if (soth_route_parse("direct", &c->default_route, why, sizeof(why)) < 0) {
        config_free(c);
        return NULL;
    }
    c->http2_enabled = true;
    c->http2_max_header_list_size = 65536;
    c->http3_passthrough = true;
    c->tls.leaf_cache_size = 4096;
    c->tls.leaf_validity_days = 30;
    c->tls.ca_rotate_after_days = 0;
    c->tls.upstream_verify = true;
    c->tls.learning.enabled = true;
    c->tls.learning.failure_threshold = 3;
    c->tls.learning.window_s = 300;
    c->events.ring_size_mb = 64;
    c->events.body_capture_bytes = 4096;
    c->events.ws_turn_idle_ms = 30000;
    c->timeouts.connect_ms = 10000;
    c->timeouts.tls_handshake_ms = 10000;
    c->timeouts.request_header_ms = 10000;
    c->timeouts.response_header_ms = 60000;
    c->timeouts.idle_ms = 120000;
    c->timeouts.drain_ms = 5000;
    c->timeouts.upstream_idle_ms = 5000;
    c->quic.idle_ms = 30000;
    c->quic.max_flows = 65536;
    c->upstream_pool.enabled = true;
    c->upstream_pool.max_idle = 32;
    c->upstream_pool.idle_ms = 4000;
    c->upstream_pool.max_requests = 1000;
    return c;
}

static void config_free(struct soth_config *c)
{
    if (c == NULL)
        return;
    soth_hostport_dispose(&c->listen);
    free(c->listen_text);
    free(c->mode_text);
    free(c->reverse_host);
    for (size_t i = 0; i < c->n_ignore_hosts; i++)
        free(c->ignore_hosts[i]);
    free(c->ignore_hosts);
    for (size_t i = 0; i < c->n_rules; i++) {
        free(c->rules[i].host);
        free(c->rules[i].text);
        free(c->rules[i].route_text);
        soth_route_dispose(&c->rules[i].route);
        rule_identity_free(&c->rules[i]);
    }
    soth_route_dispose(&c->default_route);
    free(c->rules);
    identities_free(&c->identities);
    free(c->tls.ca_dir);
    free(c->tls.ca_cert);
    free(c->tls.ca_key);
    free(c->tls.upstream_ca_file);
    free(c->tls.keylog_file);
    free(c->events.ring_path);
    for (size_t i = 0; i < c->events.n_sinks; i++) {
        struct soth_sink_cfg *sk = &c->events.sinks[i];
        char *strs[] = {sk->path,        sk->url,           sk->subject,      sk->stream,
                        sk->tls_ca_file, sk->tls_cert_file, sk->tls_key_file, sk->creds_file,
                        sk->user,        sk->password};
        for (size_t k = 0; k < sizeof(strs) / sizeof(strs[0]); k++)
            free(strs[k]);
    }
    free(c->events.sinks);
    free(c->metrics.listen_text);
    free(c->bridge.listen);
    free(c->soth.bundle);
    soth_hostport_dispose(&c->metrics.listen);
    for (size_t i = 0; i < c->n_resolve; i++) {
        free(c->resolve[i].name);
        free(c->resolve[i].addr);
    }
    free(c->resolve);
    free(c);
}

struct soth_config *soth_config_ref(struct soth_config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void soth_config_unref(struct soth_config *cfg)
{
    if (cfg && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
        config_free(cfg);
}

/* ---- SIGHUP publication slot (rules in config.h) */

void soth_config_slot_init(struct soth_config_slot *slot)
{
    atomic_init(&slot->pending, NULL);
}

void soth_config_slot_publish(struct soth_config_slot *slot, struct soth_config *cfg)
{
    /* acq_rel: release makes the snapshot's contents visible to the taker; acquire pairs
     * with the previous publisher so an untaken snapshot is complete before we free it. */
    struct soth_config *old = atomic_exchange_explicit(&slot->pending, cfg, memory_order_acq_rel);
    soth_config_unref(old);
}

struct soth_config *soth_config_slot_take(struct soth_config_slot *slot)
{
    /* A plain load first keeps the common "nothing new" case a read of a shared line. */
    if (atomic_load_explicit(&slot->pending, memory_order_relaxed) == NULL)
        return NULL;
    return atomic_exchange_explicit(&slot->pending, NULL, memory_order_acq_rel);
}

void soth_config_slot_dispose(struct soth_config_slot *slot)
{
    soth_config_unref(atomic_exchange_explicit(&slot->pending, NULL, memory_order_acq_rel));
}

/* ---- sections */

static int set_listen(struct soth_jerr *e, struct soth_config *c, const char *path,
                      const char *text)
{
    char why[200];
    struct soth_hostport hp;
    if (soth_hostport_parse(text, &hp, why, sizeof(why)) < 0)
        return fail(e, path, "%s", why);
    if (hp.addr_len == 0) {
        soth_hostport_dispose(&hp);
        return fail(e, path, "expected a numeric IPv4 or [IPv6] address, got \"%s\"", text);
    }
    soth_hostport_dispose(&c->listen);
    c->listen = hp;
    free(c->listen_text);
    c->listen_text = sdup(e, text);
    return 0;
}

static int set_metrics(struct soth_jerr *e, struct soth_config *c, const char *path,
                       const char *text)
{
    soth_hostport_dispose(&c->metrics.listen);
    free(c->metrics.listen_text);
    c->metrics.listen_text = NULL;
    if (text == NULL)
        return 0;
    char why[200];
    struct soth_hostport hp;
    if (soth_hostport_parse(text, &hp, why, sizeof(why)) < 0)
        return fail(e, path, "%s", why);
    if (hp.addr_len == 0) {
        soth_hostport_dispose(&hp);
        return fail(e, path, "expected a numeric IPv4 or [IPv6] address, got \"%s\"", text);
    }
    c->metrics.listen = hp;
    c->metrics.listen_text = sdup(e, text);
    return 0;
}

static int set_mode(struct soth_jerr *e, struct soth_config *c, const char *path, const char *text)
{
    free(c->reverse_host);
    c->reverse_host = NULL;
    c->reverse_tls = false;
    c->reverse_port = 0;
    if (strcmp(text, "regular") == 0) {
        c->mode = SOTH_MODE_REGULAR;
    } else if (strcmp(text, "transparent") == 0) {
        c->mode = SOTH_MODE_TRANSPARENT;
    } else if (strcmp(text, "socks5") == 0) {
        c->mode = SOTH_MODE_SOCKS5;
    } else if (strncmp(text, "reverse:", 8) == 0) {
        const char *url = text + 8;
        bool tls;
        if (strncmp(url, "https://", 8) == 0) {
            tls = true;
            url += 8;
        } else if (strncmp(url, "http://", 7) == 0) {
            tls = false;
            url += 7;
        } else {
            return fail(e, path,
                        "expected reverse:http://HOST[:PORT] or reverse:https://HOST[:PORT], "
                        "got \"%s\"",
                        text);
        }
        size_t ulen = strcspn(url, "/");
        if (url[ulen] == '/' && url[ulen + 1] != '\0')
            return fail(e, path, "reverse upstream takes no path, got \"%s\"", text);
        char auth[300];
        if (ulen == 0 || ulen >= sizeof(auth) - 8)
            return fail(e, path, "missing upstream host in \"%s\"", text);
        memcpy(auth, url, ulen);
        auth[ulen] = '\0';
        /* Default port when none is given (an IPv6 literal must be bracketed). */
        bool has_port = auth[0] == '[' ? strstr(auth, "]:") != NULL : strchr(auth, ':') != NULL;
        if (!has_port)
            snprintf(auth + ulen, sizeof(auth) - ulen, ":%u", tls ? 443u : 80u);
        char why[200];
        struct soth_hostport hp;
        if (soth_hostport_parse(auth, &hp, why, sizeof(why)) < 0)
            return fail(e, path, "%s", why);
        if (hp.port == 0) {
            soth_hostport_dispose(&hp);
            return fail(e, path, "upstream port must be 1..65535 in \"%s\"", text);
        }
        c->mode = SOTH_MODE_REVERSE;
        c->reverse_tls = tls;
        c->reverse_host = hp.host;
        c->reverse_port = hp.port;
    } else {
        return fail(
            e, path,
            "expected regular, transparent, socks5 or reverse:SCHEME://HOST:PORT, got \"%s\"",
            text);
    }
    free(c->mode_text);
    c->mode_text = sdup(e, text);
    return 0;
}

/* ---- identities (docs/config.md "identities"): users with a password hash, networks */

static bool identity_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SOTH_IDENTITY_MAX)
        return false;
    for (const char *p = s; *p; p++) {
        char ch = *p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == '@' || ch == ':'))
            return false;
    }
    return true;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int soth_cidr_parse(const char *text, struct soth_cidr *out, char *err, size_t err_len)
{
    char buf[64];
    memset(out, 0, sizeof(*out));
    size_t n = strlen(text);
    if (n == 0 || n >= sizeof(buf)) {
        snprintf(err, err_len, "expected an IPv4 or IPv6 CIDR, got \"%.80s\"", text);
        return SOTH_E_CONFIG;
    }
    memcpy(buf, text, n + 1);
    char *slash = strchr(buf, '/');
    long prefix = -1;
    if (slash != NULL) {
        *slash = '\0';
        const char *d = slash + 1;
        if (*d == '\0' || strlen(d) > 3 || (d[0] == '0' && d[1] != '\0')) {
            snprintf(err, err_len, "bad prefix length in \"%s\"", text);
            return SOTH_E_CONFIG;
        }
        prefix = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9') {
                snprintf(err, err_len, "bad prefix length in \"%s\"", text);
                return SOTH_E_CONFIG;
            }
            prefix = prefix * 10 + (*d - '0');
        }
    }
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (prefix < 0)
            prefix = 32;
        if (prefix > 32) {
            snprintf(err, err_len, "prefix length above 32 in \"%s\"", text);
            return SOTH_E_CONFIG;
        }
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        if (prefix < 0)
            prefix = 128;
        if (prefix > 128) {
            snprintf(err, err_len, "prefix length above 128 in \"%s\"", text);
            return SOTH_E_CONFIG;
        }
    } else {
        snprintf(err, err_len, "expected an IPv4 or IPv6 CIDR, got \"%s\"", text);
        return SOTH_E_CONFIG;
    }
    out->prefix = (uint8_t)prefix;
    size_t bytes = out->family == AF_INET ? 4 : 16;
    for (size_t i = 0; i < bytes; i++) {
        unsigned keep = prefix >= (long)(8 * (i + 1)) ? 8u
                        : prefix > (long)(8 * i)      ? (unsigned)(prefix - (long)(8 * i))
                                                      : 0u;
        uint8_t mask = keep == 8 ? 0xff : (uint8_t)(0xff00u >> keep);
        if ((out->addr[i] & (uint8_t)~mask) != 0) {
            snprintf(err, err_len, "host bits set in \"%s\" (write the network address)", text);
            return SOTH_E_CONFIG;
        }
    }
    return 0;
}

bool soth_cidr_contains(const struct soth_cidr *c, const struct sockaddr *sa)
{
    const uint8_t *a;
    int fam;
    if (sa == NULL)
        return false;
    if (sa->sa_family == AF_INET) {
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        fam = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        fam = AF_INET6;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (c->family == AF_INET && memcmp(a, mapped, 12) == 0) {
            a += 12;
            fam = AF_INET;
        }
    } else {
        return false;
    }
    if (fam != c->family)
        return false;
    unsigned full = c->prefix / 8u, rest = c->prefix % 8u;
    if (memcmp(a, c->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (a[full] & mask) == (c->addr[full] & mask);
}

static bool identity_defined(const struct soth_identities *ids, const char *id)
{
    for (size_t i = 0; i < ids->n_users; i++)
        if (strcmp(ids->users[i].id, id) == 0)
            return true;
    for (size_t i = 0; i < ids->n_networks; i++)
        if (strcmp(ids->networks[i].id, id) == 0)
            return true;
    return false;
}

static int get_u64(struct soth_jerr *e, const char *path, const json_t *v, long long min,
                   long long max, long long *out)
{
    char b[64];
    if (!json_is_integer(v)) {
        soth_json_brief(v, b, sizeof(b));
        return fail(e, path, "expected integer >= %lld, got %s", min, b);
    }
    json_int_t x = json_integer_value(v);
    if (x < min)
        return fail(e, path, "expected integer >= %lld, got %lld", min, (long long)x);
    if (x > max)
        return fail(e, path, "expected integer <= %lld, got %lld", max, (long long)x);
    *out = (long long)x;
    return 0;
}

static int load_identity_id(struct soth_jerr *e, const char *pk, const json_t *v, char **out)
{
    if (!json_is_string(v) || !identity_id_ok(json_string_value(v))) {
        char b[64];
        soth_json_brief(v, b, sizeof(b));
        return fail(e, pk, "expected an id of 1..%d letters, digits or \"-_.@:\", got %s",
                    SOTH_IDENTITY_MAX, b);
    }
    if (strcmp(json_string_value(v), "anonymous") == 0)
        return fail(e, pk, "\"anonymous\" is reserved (the identity of a client nothing names)");
    *out = sdup(e, json_string_value(v));
    return 0;
}

static int load_identity_users(struct soth_jerr *e, struct soth_identities *ids,
                               const json_t *users)
{
    static const char *const keys[] = {"id", "user", "password_sha256", NULL};
    int rc;
    if (!json_is_array(users))
        return fail(e, "identities.users", "expected array, got %s", soth_json_type_name(users));
    size_t n = json_array_size(users);
    ids->users = array_new(e, n, sizeof(*ids->users));
    if (ids->users == NULL)
        return fail(e, "identities.users", "out of memory");
    for (size_t i = 0; i < n; i++) {
        char p[64], pk[96];
        snprintf(p, sizeof(p), "identities.users[%zu]", i);
        const json_t *u = json_array_get(users, i);
        if ((rc = expect_object(e, p, u)) || (rc = check_keys(e, p, u, keys)))
            return rc;
        struct soth_identity_user *d = &ids->users[ids->n_users++];
        const json_t *v;
        snprintf(pk, sizeof(pk), "%s.id", p);
        if ((v = json_object_get(u, "id")) == NULL)
            return fail(e, pk, "missing required key");
        if ((rc = load_identity_id(e, pk, v, &d->id)))
            return rc;
        snprintf(pk, sizeof(pk), "%s.user", p);
        if ((v = json_object_get(u, "user")) == NULL)
            return fail(e, pk, "missing required key");
        const char *name = json_is_string(v) ? json_string_value(v) : NULL;
        /* RFC 7617: the user-id cannot hold a colon; control bytes would not survive a header */
        bool ok = name != NULL && name[0] != '\0' && strlen(name) <= 255 && !strchr(name, ':');
        for (const char *q = name; ok && *q; q++)
            ok = (unsigned char)*q >= 0x20 && *q != 0x7f;
        if (!ok)
            return fail(e, pk, "expected a user name of 1..255 bytes without ':' or control bytes");
        for (size_t k = 0; k + 1 < ids->n_users; k++)
            if (strcmp(ids->users[k].user, name) == 0)
                return fail(e, pk, "user \"%s\" is already defined in identities.users[%zu]", name,
                            k);
        d->user = sdup(e, name);
        snprintf(pk, sizeof(pk), "%s.password_sha256", p);
        if ((v = json_object_get(u, "password_sha256")) == NULL)
            return fail(e, pk, "missing required key");
        /* The message never echoes the value: it is a password hash. */
        const char *hx = json_is_string(v) ? json_string_value(v) : "";
        ok = strlen(hx) == 64;
        for (size_t k = 0; ok && k < 32; k++) {
            int hi = hexval(hx[2 * k]), lo = hexval(hx[2 * k + 1]);
            ok = hi >= 0 && lo >= 0;
            if (ok)
                d->password_sha256[k] = (uint8_t)(hi << 4 | lo);
        }
        if (!ok)
            return fail(e, pk, "expected 64 hex digits (the SHA-256 of the password)");
    }
    return 0;
}

static int load_identity_networks(struct soth_jerr *e, struct soth_identities *ids,
                                  const json_t *nets)
{
    static const char *const keys[] = {"id", "cidrs", NULL};
    int rc;
    if (!json_is_array(nets))
        return fail(e, "identities.networks", "expected array, got %s", soth_json_type_name(nets));
    size_t n = json_array_size(nets);
    ids->networks = array_new(e, n, sizeof(*ids->networks));
    if (ids->networks == NULL)
        return fail(e, "identities.networks", "out of memory");
    for (size_t i = 0; i < n; i++) {
        char p[64], pk[96];
        snprintf(p, sizeof(p), "identities.networks[%zu]", i);
        const json_t *o = json_array_get(nets, i);
        if ((rc = expect_object(e, p, o)) || (rc = check_keys(e, p, o, keys)))
            return rc;
        struct soth_identity_net *d = &ids->networks[ids->n_networks++];
        const json_t *v;
        snprintf(pk, sizeof(pk), "%s.id", p);
        if ((v = json_object_get(o, "id")) == NULL)
            return fail(e, pk, "missing required key");
        if ((rc = load_identity_id(e, pk, v, &d->id)))
            return rc;
        for (size_t k = 0; d->id != NULL && k + 1 < ids->n_networks; k++)
            if (strcmp(ids->networks[k].id, d->id) == 0)
                return fail(e, pk, "id \"%s\" is already defined in identities.networks[%zu]",
                            d->id, k);
        snprintf(pk, sizeof(pk), "%s.cidrs", p);
        if ((v = json_object_get(o, "cidrs")) == NULL)
            return fail(e, pk, "missing required key");
        if (!json_is_array(v) || json_array_size(v) == 0)
            return fail(e, pk, "expected a non-empty array of CIDRs, got %s",
                        soth_json_type_name(v));
        size_t nc = json_array_size(v);
        d->cidrs = array_new(e, nc, sizeof(*d->cidrs));
        d->cidr_texts = array_new(e, nc, sizeof(*d->cidr_texts));
        if (d->cidrs == NULL || d->cidr_texts == NULL)
            return fail(e, pk, "out of memory");
        for (size_t k = 0; k < nc; k++) {
            char ck[128], why[160];
            snprintf(ck, sizeof(ck), "%s[%zu]", pk, k);
            const json_t *c = json_array_get(v, k);
            if (!json_is_string(c))
                return fail(e, ck, "expected string, got %s", soth_json_type_name(c));
            if (soth_cidr_parse(json_string_value(c), &d->cidrs[k], why, sizeof(why)) < 0)
                return fail(e, ck, "%s", why);
            d->cidr_texts[k] = sdup(e, json_string_value(c));
            d->n_cidrs++;
        }
    }
    return 0;
}

static int load_identities(struct soth_jerr *e, struct soth_config *c, const json_t *v)
{
    static const char *const keys[] = {"require", "users", "networks", NULL};
    int rc;
    if ((rc = expect_object(e, "identities", v)) || (rc = check_keys(e, "identities", v, keys)))
        return rc;
    const json_t *x;
    if ((x = json_object_get(v, "require")) &&
        (rc = get_bool(e, "identities.require", x, &c->identities.require)))
        return rc;
    if ((x = json_object_get(v, "users")) && (rc = load_identity_users(e, &c->identities, x)))
        return rc;
    if ((x = json_object_get(v, "networks")) && (rc = load_identity_networks(e, &c->identities, x)))
        return rc;
    return 0;
}

/* policy.rules[]: id, identities, budget (docs/config.md "identities"). Identities are loaded
 * first, so a rule can only name one that exists. */
static int load_rule_identity_keys(struct soth_jerr *e, const struct soth_config *c, const char *p,
                                   const json_t *r, struct soth_rule *rule, size_t idx)
{
    char pk[112];
    int rc;
    const json_t *v;
    if ((v = json_object_get(r, "id"))) {
        snprintf(pk, sizeof(pk), "%s.id", p);
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 128)
            return fail(e, pk, "expected a string of 1..128 bytes, got %s", soth_json_type_name(v));
        for (size_t k = 0; k < idx; k++)
            if (c->rules[k].id != NULL && strcmp(c->rules[k].id, json_string_value(v)) == 0)
                return fail(e, pk, "id \"%s\" is already used by policy.rules[%zu]",
                            json_string_value(v), k);
        rule->id = sdup(e, json_string_value(v));
    }
    if ((v = json_object_get(r, "identities"))) {
        snprintf(pk, sizeof(pk), "%s.identities", p);
        if (!json_is_array(v) || json_array_size(v) == 0)
            return fail(e, pk, "expected a non-empty array of identity ids, got %s",
                        soth_json_type_name(v));
        size_t n = json_array_size(v);
        rule->identities = array_new(e, n, sizeof(*rule->identities));
        if (rule->identities == NULL)
            return fail(e, pk, "out of memory");
        for (size_t k = 0; k < n; k++) {
            char ik[140];
            snprintf(ik, sizeof(ik), "%s[%zu]", pk, k);
            const json_t *s = json_array_get(v, k);
            if (!json_is_string(s))
                return fail(e, ik, "expected string, got %s", soth_json_type_name(s));
            const char *id = json_string_value(s);
            if (strcmp(id, "anonymous") != 0 && !identity_defined(&c->identities, id))
                return fail(e, ik, "no identity \"%s\" in identities.users or identities.networks",
                            id);
            rule->identities[rule->n_identities++] = sdup(e, id);
        }
    }
    if ((v = json_object_get(r, "budget"))) {
        static const char *const bkeys[] = {"requests", "bytes", "window_s", NULL};
        snprintf(pk, sizeof(pk), "%s.budget", p);
        if ((rc = expect_object(e, pk, v)) || (rc = check_keys(e, pk, v, bkeys)))
            return rc;
        const json_t *x;
        long long req = 0, bytes = 0, win = 0;
        char bk[140];
        if ((x = json_object_get(v, "requests"))) {
            snprintf(bk, sizeof(bk), "%s.requests", pk);
            if ((rc = get_u64(e, bk, x, 1, 1000000000LL, &req)))
                return rc;
        }
        if ((x = json_object_get(v, "bytes"))) {
            snprintf(bk, sizeof(bk), "%s.bytes", pk);
            if ((rc = get_u64(e, bk, x, 1, 1LL << 50, &bytes)))
                return rc;
        }
        snprintf(bk, sizeof(bk), "%s.window_s", pk);
        if ((x = json_object_get(v, "window_s")) == NULL)
            return fail(e, bk, "missing required key");
        if ((rc = get_u64(e, bk, x, 1, 86400, &win)))
            return rc;
        if (req == 0 && bytes == 0)
            return fail(e, pk, "expected \"requests\", \"bytes\" or both");
        rule->budget.requests = (uint64_t)req;
        rule->budget.bytes = (uint64_t)bytes;
        rule->budget.window_s = (uint32_t)win;
    }
    return 0;
}

static void identities_free(struct soth_identities *ids)
{
    for (size_t i = 0; i < ids->n_users; i++) {
        free(ids->users[i].id);
        free(ids->users[i].user);
    }
    free(ids->users);
    for (size_t i = 0; i < ids->n_networks; i++) {
        free(ids->networks[i].id);
        free(ids->networks[i].cidrs);
        for (size_t k = 0; k < ids->networks[i].n_cidrs; k++)
            free(ids->networks[i].cidr_texts[k]);
        free(ids->networks[i].cidr_texts);
    }
    free(ids->networks);
}

static void rule_identity_free(struct soth_rule *r)
{
    free(r->id);
    for (size_t k = 0; k < r->n_identities; k++)
        free(r->identities[k]);
    free(r->identities);
}

static int parse_action(struct soth_jerr *e, const char *path, const json_t *v,
                        enum soth_action *out)
{
    if (json_is_string(v)) {
        for (int i = 0; i < SOTH_ACTION_COUNT; i++) {
            if (strcmp(json_string_value(v), soth_action_names[i]) == 0) {
                *out = (enum soth_action)i;
                return 0;
            }
        }
    }
    char b[64];
    soth_json_brief(v, b, sizeof(b));
    return fail(e, path, "expected \"intercept\", \"tunnel\" or \"block\", got %s", b);
}

/* A route (docs/config.md "Routes"): the text as parsed by soth_route_parse (core/base/route.c).
 * The error never quotes the value: it may hold a password. */
static int parse_route(struct soth_jerr *e, const char *path, const json_t *v,
                       struct soth_route *out)
{
    if (!json_is_string(v))
        return fail(e, path, "expected string, got %s", soth_json_type_name(v));
    char why[200];
    struct soth_route r;
    if (soth_route_parse(json_string_value(v), &r, why, sizeof(why)) < 0)
        return fail(e, path, "%s", why);
    soth_route_dispose(out);
    *out = r;
    return 0;
}

static int load_policy(struct soth_jerr *e, struct soth_config *c, const json_t *pol)
{
    static const char *const keys[] = {"default", "default_route", "rules", NULL};
    static const char *const rule_keys[] = {"host",   "action", "id", "identities",
                                            "budget", "route",  NULL};
    int rc;
    if ((rc = expect_object(e, "policy", pol)) || (rc = check_keys(e, "policy", pol, keys)))
        return rc;
    json_t *v = json_object_get(pol, "default");
    if (v && (rc = parse_action(e, "policy.default", v, &c->policy_default)))
        return rc;
    v = json_object_get(pol, "default_route");
    if (v && (rc = parse_route(e, "policy.default_route", v, &c->default_route)))
        return rc;
    json_t *rules = json_object_get(pol, "rules");
    if (rules == NULL)
        return 0;
    if (!json_is_array(rules))
        return fail(e, "policy.rules", "expected array, got %s", soth_json_type_name(rules));
    size_t n = json_array_size(rules);
    c->rules = array_new(e, n, sizeof(*c->rules));
    if (c->rules == NULL)
        return fail(e, "policy.rules", "out of memory");
    for (size_t i = 0; i < n; i++) {
        char p[64], pk[80];
        snprintf(p, sizeof(p), "policy.rules[%zu]", i);
        json_t *r = json_array_get(rules, i);
        if ((rc = expect_object(e, p, r)) || (rc = check_keys(e, p, r, rule_keys)))
            return rc;
        json_t *h = json_object_get(r, "host");
        snprintf(pk, sizeof(pk), "%s.host", p);
        if (h == NULL)
            return fail(e, pk, "missing required key");
        if (!json_is_string(h))
            return fail(e, pk, "expected string, got %s", soth_json_type_name(h));
        struct soth_rule *rule = &c->rules[c->n_rules];
        char why[200];
        if (glob_check(json_string_value(h), why, sizeof(why), &rule->host, &rule->port) < 0)
            return fail(e, pk, "invalid host glob: %s", why);
        rule->text = sdup(e, json_string_value(h));
        c->n_rules++;
        json_t *a = json_object_get(r, "action");
        snprintf(pk, sizeof(pk), "%s.action", p);
        if (a == NULL)
            return fail(e, pk, "missing required key");
        if ((rc = parse_action(e, pk, a, &rule->action)))
            return rc;
        json_t *rt = json_object_get(r, "route");
        snprintf(pk, sizeof(pk), "%s.route", p);
        if (rt && (rc = parse_route(e, pk, rt, &rule->route)))
            return rc;
        if (rt)
            rule->route_text = sdup(e, rule->route.text);
        if ((rc = load_rule_identity_keys(e, c, p, r, rule, i)))
            return rc;
    }
    return 0;
}

static int load_tls(struct soth_jerr *e, struct soth_config *c, const json_t *t)
{
    static const char *const keys[] = {"ca_dir",
                                       "ca_cert",
                                       "ca_key",
                                       "leaf_cache_size",
                                       "leaf_validity_days",
                                       "ca_rotate_after_days",
                                       "upstream_verify",
                                       "upstream_ca_file",
                                       "keylog_file",
                                       "learning",
                                       NULL};
    static const char *const lkeys[] = {"enabled", "failure_threshold", "window_s", NULL};
    int rc;
    if ((rc = expect_object(e, "tls", t)) || (rc = check_keys(e, "tls", t, keys)))
        return rc;
    json_t *v;
    if ((v = json_object_get(t, "ca_dir")) &&
        (rc = get_str_or_null(e, "tls.ca_dir", v, &c->tls.ca_dir)))
        return rc;
    if ((v = json_object_get(t, "ca_cert")) &&
        (rc = get_str_or_null(e, "tls.ca_cert", v, &c->tls.ca_cert)))
        return rc;
    if ((v = json_object_get(t, "ca_key")) &&
        (rc = get_str_or_null(e, "tls.ca_key", v, &c->tls.ca_key)))
        return rc;
    if ((v = json_object_get(t, "leaf_cache_size")) &&
        (rc = get_uint(e, "tls.leaf_cache_size", v, 0, 1000000, &c->tls.leaf_cache_size)))
        return rc;
    if ((v = json_object_get(t, "leaf_validity_days")) &&
        (rc = get_uint(e, "tls.leaf_validity_days", v, 1, 825, &c->tls.leaf_validity_days)))
        return rc;
    if ((v = json_object_get(t, "ca_rotate_after_days")) &&
        (rc = get_uint(e, "tls.ca_rotate_after_days", v, 0, 36500, &c->tls.ca_rotate_after_days)))
        return rc;
    if ((v = json_object_get(t, "upstream_verify")) &&
        (rc = get_bool(e, "tls.upstream_verify", v, &c->tls.upstream_verify)))
        return rc;
    if ((v = json_object_get(t, "upstream_ca_file")) &&
        (rc = get_str_or_null(e, "tls.upstream_ca_file", v, &c->tls.upstream_ca_file)))
        return rc;
    if ((v = json_object_get(t, "keylog_file")) &&
        (rc = get_str_or_null(e, "tls.keylog_file", v, &c->tls.keylog_file)))
        return rc;
    json_t *l = json_object_get(t, "learning");
    if (l) {
        if ((rc = expect_object(e, "tls.learning", l)) ||
            (rc = check_keys(e, "tls.learning", l, lkeys)))
            return rc;
        if ((v = json_object_get(l, "enabled")) &&
            (rc = get_bool(e, "tls.learning.enabled", v, &c->tls.learning.enabled)))
            return rc;
        if ((v = json_object_get(l, "failure_threshold")) &&
            (rc = get_uint(e, "tls.learning.failure_threshold", v, 1, 1000000,
                           &c->tls.learning.failure_threshold)))
            return rc;
        if ((v = json_object_get(l, "window_s")) &&
            (rc =
                 get_uint(e, "tls.learning.window_s", v, 1, 86400 * 30, &c->tls.learning.window_s)))
            return rc;
    }
    return 0;
}

/*
 * ---- events.sinks[] (docs/config.md, docs/sinks.md)
 */

/** A NATS subject we publish under: dot-separated tokens of printable ASCII, no wildcards. */
static bool nats_subject_ok(const char *s)
{
    size_t tok = 0;
    for (const char *q = s;; q++) {
        if (*q == '.' || *q == '\0') {
            if (tok == 0)
                return false;
            if (*q == '\0')
                return true;
            tok = 0;
            continue;
        }
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f || *q == '*' || *q == '>')
            return false;
        tok++;
    }
}

/** A JetStream stream name: printable ASCII without '.', '*', '>', '/', '\\'. */
static bool nats_stream_ok(const char *s)
{
    if (*s == '\0' || strlen(s) > 255)
        return false;
    for (const char *q = s; *q; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f || strchr(".*>/\\", *q))
            return false;
    return true;
}

/**
 * One server URL as the NATS client takes it: nats://HOST[:PORT] or tls://HOST[:PORT], with an
 * optional USER[:PASSWORD]@ before the host; HOST a name, IPv4 or [IPv6]; PORT 1..65535.
 */
static bool nats_url_ok(const char *u, size_t len)
{
    const char *end = u + len;
    if (len > 7 && strncmp(u, "nats://", 7) == 0)
        u += 7;
    else if (len > 6 && strncmp(u, "tls://", 6) == 0)
        u += 6;
    else
        return false;
    const char *at = memchr(u, '@', (size_t)(end - u));
    if (at != NULL)
        u = at + 1;
    char hp[300];
    if (end - u <= 0 || (size_t)(end - u) >= sizeof(hp))
        return false;
    memcpy(hp, u, (size_t)(end - u));
    hp[end - u] = '\0';
    if (strpbrk(hp, "/?#") != NULL)
        return false;
    /* HOST alone: the client's default port 4222. */
    char with_port[320];
    bool has_port = hp[0] == '[' ? strstr(hp, "]:") != NULL : strchr(hp, ':') != NULL;
    snprintf(with_port, sizeof(with_port), has_port ? "%s" : "%s:4222", hp);
    struct soth_hostport h = {0};
    char why[128];
    if (soth_hostport_parse(with_port, &h, why, sizeof(why)) < 0)
        return false;
    bool ok = h.port != 0;
    if (ok && h.addr_len == 0)
        ok = host_name_ok(h.host, why, sizeof(why));
    soth_hostport_dispose(&h);
    return ok;
}

/** A non-empty string into *out (replacing it). */
static int get_str(struct soth_jerr *e, const char *path, const json_t *v, char **out)
{
    if (!json_is_string(v) || json_string_length(v) == 0) {
        char b[64];
        soth_json_brief(v, b, sizeof(b));
        return fail(e, path, "expected a non-empty string, got %s", b);
    }
    free(*out);
    *out = sdup(e, json_string_value(v));
    return 0;
}

static int load_sink_format(struct soth_jerr *e, const char *p, const json_t *s,
                            struct soth_sink_cfg *sk);

static int load_sink_nats(struct soth_jerr *e, const char *p, const json_t *s,
                          struct soth_sink_cfg *sk)
{
    static const char *const keys[] = {
        "type",        "url",           "subject",      "stream",     "format", "max_pending_mb",
        "tls_ca_file", "tls_cert_file", "tls_key_file", "creds_file", "user",   "password",
        NULL};
    struct {
        const char *key;
        char **out;
    } strs[] = {{"url", &sk->url},
                {"subject", &sk->subject},
                {"stream", &sk->stream},
                {"tls_ca_file", &sk->tls_ca_file},
                {"tls_cert_file", &sk->tls_cert_file},
                {"tls_key_file", &sk->tls_key_file},
                {"creds_file", &sk->creds_file},
                {"user", &sk->user},
                {"password", &sk->password}};
    char pk[96];
    int rc;
    if ((rc = check_keys(e, p, s, keys)))
        return rc;
    sk->url = sdup(e, "nats://127.0.0.1:4222");
    sk->subject = sdup(e, "soth.events");
    sk->stream = sdup(e, "SOTH_EVENTS");
    sk->max_pending_mb = 64;
    json_t *v;
    for (size_t k = 0; k < sizeof(strs) / sizeof(strs[0]); k++) {
        snprintf(pk, sizeof(pk), "%s.%s", p, strs[k].key);
        if ((v = json_object_get(s, strs[k].key)) && (rc = get_str(e, pk, v, strs[k].out)))
            return rc;
    }
    if (e->oom)
        return 0; /* reported by the caller */
    if ((rc = load_sink_format(e, p, s, sk)))
        return rc;
    snprintf(pk, sizeof(pk), "%s.max_pending_mb", p);
    if ((v = json_object_get(s, "max_pending_mb")) &&
        (rc = get_uint(e, pk, v, 1, 65536, &sk->max_pending_mb)))
        return rc;
    snprintf(pk, sizeof(pk), "%s.url", p);
    for (const char *u = sk->url;;) {
        const char *comma = strchr(u, ',');
        size_t ul = comma ? (size_t)(comma - u) : strlen(u);
        if (!nats_url_ok(u, ul))
            return fail(e, pk,
                        "expected nats://HOST[:PORT] or tls://HOST[:PORT] (comma-separated), "
                        "got \"%.*s\"",
                        (int)(ul > 200 ? 200 : ul), u);
        if (comma == NULL)
            break;
        u = comma + 1;
    }
    snprintf(pk, sizeof(pk), "%s.subject", p);
    if (!nats_subject_ok(sk->subject))
        return fail(e, pk,
                    "expected a NATS subject (dot-separated tokens, no spaces, '*' or '>'), "
                    "got \"%s\"",
                    sk->subject);
    snprintf(pk, sizeof(pk), "%s.stream", p);
    if (!nats_stream_ok(sk->stream))
        return fail(e, pk,
                    "expected a stream name (no spaces, '.', '*', '>', '/' or '\\'), got \"%s\"",
                    sk->stream);
    if ((sk->tls_cert_file == NULL) != (sk->tls_key_file == NULL)) {
        snprintf(pk, sizeof(pk), "%s.%s", p, sk->tls_cert_file ? "tls_key_file" : "tls_cert_file");
        return fail(e, pk, "tls_cert_file and tls_key_file go together");
    }
    if ((sk->user == NULL) != (sk->password == NULL)) {
        snprintf(pk, sizeof(pk), "%s.%s", p, sk->user ? "password" : "user");
        return fail(e, pk, "user and password go together");
    }
    if (sk->creds_file != NULL && sk->user != NULL) {
        snprintf(pk, sizeof(pk), "%s.creds_file", p);
        return fail(e, pk, "creds_file and user/password are exclusive");
    }
    return 0;
}

/** `format` of a jsonl or uds sink: "event" (default) or "exchange" (docs/sinks.md). */
static int load_sink_format(struct soth_jerr *e, const char *p, const json_t *s,
                            struct soth_sink_cfg *sk)
{
    json_t *v = json_object_get(s, "format");
    if (v == NULL)
        return 0;
    for (int k = 0; k < SOTH_SINK_FMT_COUNT && json_is_string(v); k++)
        if (strcmp(json_string_value(v), soth_sink_format_names[k]) == 0) {
            sk->format = (enum soth_sink_format)k;
            return 0;
        }
    char pk[96], b[64];
    snprintf(pk, sizeof(pk), "%s.format", p);
    soth_json_brief(v, b, sizeof(b));
    return fail(e, pk, "expected \"event\" or \"exchange\", got %s", b);
}

static int load_sink(struct soth_jerr *e, const char *p, const json_t *s, struct soth_sink_cfg *sk)
{
    static const char *const keys[] = {"type", "path", "format", NULL};
    char pk[96];
    int rc;
    if ((rc = expect_object(e, p, s)))
        return rc;
    json_t *t = json_object_get(s, "type");
    snprintf(pk, sizeof(pk), "%s.type", p);
    if (t == NULL)
        return fail(e, pk, "missing required key");
    bool ok = false;
    for (int k = 0; k < SOTH_SINK_COUNT && json_is_string(t); k++) {
        if (strcmp(json_string_value(t), soth_sink_type_names[k]) == 0) {
            sk->type = (enum soth_sink_type)k;
            ok = true;
        }
    }
    if (!ok) {
        char b[64];
        soth_json_brief(t, b, sizeof(b));
        return fail(e, pk, "expected \"jsonl\", \"uds\" or \"nats\", got %s", b);
    }
    if (sk->type == SOTH_SINK_NATS)
        return load_sink_nats(e, p, s, sk);
    if ((rc = check_keys(e, p, s, keys)))
        return rc;
    if ((rc = load_sink_format(e, p, s, sk)))
        return rc;
    json_t *pa = json_object_get(s, "path");
    snprintf(pk, sizeof(pk), "%s.path", p);
    if (pa == NULL)
        return fail(e, pk, "missing required key");
    if (!json_is_string(pa) || json_string_length(pa) == 0) {
        char b[64];
        soth_json_brief(pa, b, sizeof(b));
        return fail(e, pk, "expected a non-empty string, got %s", b);
    }
    if (sk->type == SOTH_SINK_UDS && json_string_length(pa) >= 108)
        return fail(e, pk, "Unix socket path longer than 107 bytes");
    sk->path = sdup(e, json_string_value(pa));
    return 0;
}

static int load_events(struct soth_jerr *e, struct soth_config *c, const json_t *ev)
{
    static const char *const keys[] = {"ring_path",       "ring_size_mb", "body_capture_bytes",
                                       "ws_turn_idle_ms", "sinks",        NULL};
    int rc;
    if ((rc = expect_object(e, "events", ev)) || (rc = check_keys(e, "events", ev, keys)))
        return rc;
    json_t *v;
    if ((v = json_object_get(ev, "ring_path")) &&
        (rc = get_str_or_null(e, "events.ring_path", v, &c->events.ring_path)))
        return rc;
    if ((v = json_object_get(ev, "ring_size_mb")) &&
        (rc = get_uint(e, "events.ring_size_mb", v, 1, 65536, &c->events.ring_size_mb)))
        return rc;
    if ((v = json_object_get(ev, "body_capture_bytes")) &&
        (rc = get_uint(e, "events.body_capture_bytes", v, 0, 16 * 1024 * 1024,
                       &c->events.body_capture_bytes)))
        return rc;
    if ((v = json_object_get(ev, "ws_turn_idle_ms")) &&
        (rc = get_uint(e, "events.ws_turn_idle_ms", v, 1, 3600000, &c->events.ws_turn_idle_ms)))
        return rc;
    json_t *sinks = json_object_get(ev, "sinks");
    if (sinks == NULL)
        return 0;
    if (!json_is_array(sinks))
        return fail(e, "events.sinks", "expected array, got %s", soth_json_type_name(sinks));
    size_t n = json_array_size(sinks);
    c->events.sinks = array_new(e, n, sizeof(*c->events.sinks));
    if (c->events.sinks == NULL)
        return fail(e, "events.sinks", "out of memory");
    for (size_t i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof(p), "events.sinks[%zu]", i);
        struct soth_sink_cfg *sk = &c->events.sinks[c->events.n_sinks];
        rc = load_sink(e, p, json_array_get(sinks, i), sk);
        c->events.n_sinks++; /* counted even when half-loaded: free releases what is set */
        if (rc)
            return rc;
    }
    return 0;
}

static int load_timeouts(struct soth_jerr *e, struct soth_config *c, const json_t *t)
{
    static const char *const keys[] = {
        "connect_ms", "tls_handshake_ms", "request_header_ms", "response_header_ms",
        "idle_ms",    "drain_ms",         "upstream_idle_ms",  NULL};
    uint32_t *fields[] = {&c->timeouts.connect_ms,        &c->timeouts.tls_handshake_ms,
                          &c->timeouts.request_header_ms, &c->timeouts.response_header_ms,
                          &c->timeouts.idle_ms,           &c->timeouts.drain_ms,
                          &c->timeouts.upstream_idle_ms};
    int rc;
    if ((rc = expect_object(e, "timeouts", t)) || (rc = check_keys(e, "timeouts", t, keys)))
        return rc;
    for (size_t i = 0; keys[i]; i++) {
        json_t *v = json_object_get(t, keys[i]);
        char p[64];
        snprintf(p, sizeof(p), "timeouts.%s", keys[i]);
        /* drain_ms may be 0 (close at once), upstream_idle_ms 0 (never); the others must
         * allow some time. */
        long long min =
            strcmp(keys[i], "drain_ms") == 0 || strcmp(keys[i], "upstream_idle_ms") == 0 ? 0 : 1;
        long long max = strcmp(keys[i], "response_header_ms") == 0 ? 3600000 : 86400000;
        if (v && (rc = get_uint(e, p, v, min, max, fields[i])))
            return rc;
    }
    return 0;
}

static int load_quic(struct soth_jerr *e, struct soth_config *c, const json_t *q)
{
    static const char *const keys[] = {"idle_ms", "max_flows", NULL};
    int rc;
    json_t *v;
    if ((rc = expect_object(e, "quic", q)) || (rc = check_keys(e, "quic", q, keys)))
        return rc;
    if ((v = json_object_get(q, "idle_ms")) &&
        (rc = get_uint(e, "quic.idle_ms", v, 1, 86400000, &c->quic.idle_ms)))
        return rc;
    /* A flow's slot is 23 bits of a completion's user_data (core/worker.h). */
    if ((v = json_object_get(q, "max_flows")) &&
        (rc = get_uint(e, "quic.max_flows", v, 1, 4194304, &c->quic.max_flows)))
        return rc;
    return 0;
}

static int load_upstream_pool(struct soth_jerr *e, struct soth_config *c, const json_t *q)
{
    static const char *const keys[] = {"enabled", "max_idle", "idle_ms", "max_requests", NULL};
    int rc;
    json_t *v;
    if ((rc = expect_object(e, "upstream_pool", q)) ||
        (rc = check_keys(e, "upstream_pool", q, keys)))
        return rc;
    if ((v = json_object_get(q, "enabled")) &&
        (rc = get_bool(e, "upstream_pool.enabled", v, &c->upstream_pool.enabled)))
        return rc;
    if ((v = json_object_get(q, "max_idle")) &&
        (rc = get_uint(e, "upstream_pool.max_idle", v, 0, 65536, &c->upstream_pool.max_idle)))
        return rc;
    if ((v = json_object_get(q, "idle_ms")) &&
        (rc = get_uint(e, "upstream_pool.idle_ms", v, 1, 3600000, &c->upstream_pool.idle_ms)))
        return rc;
    if ((v = json_object_get(q, "max_requests")) &&
        (rc = get_uint(e, "upstream_pool.max_requests", v, 1, 10000000,
                       &c->upstream_pool.max_requests)))
        return rc;
    return 0;
}

static int load_json(struct soth_jerr *e, struct soth_config *c, const json_t *root)
{
    static const char *const keys[] = {"listen",
                                       "mode",
                                       "workers",
                                       "busy_poll_us",
                                       "wake_batch_us",
                                       "ignore_hosts",
                                       "policy",
                                       "http2_enabled",
                                       "http2_max_header_list_size",
                                       "http3_passthrough",
                                       "quic",
                                       "upstream_pool",
                                       "tls",
                                       "events",
                                       "timeouts",
                                       "metrics",
                                       "resolve",
                                       "bridge",
                                       "soth",
                                       "identities",
                                       NULL};
    int rc;
    if (!json_is_object(root))
        return fail(e, "(top level)", "expected object, got %s", soth_json_type_name(root));
    if ((rc = check_keys(e, "", root, keys)))
        return rc;
    json_t *v;
    if ((v = json_object_get(root, "listen"))) {
        if (!json_is_string(v))
            return fail(e, "listen", "expected string \"HOST:PORT\", got %s",
                        soth_json_type_name(v));
        if ((rc = set_listen(e, c, "listen", json_string_value(v))))
            return rc;
    }
    if ((v = json_object_get(root, "mode"))) {
        if (!json_is_string(v))
            return fail(e, "mode", "expected string, got %s", soth_json_type_name(v));
        if ((rc = set_mode(e, c, "mode", json_string_value(v))))
            return rc;
    }
    if ((v = json_object_get(root, "workers")) &&
        (rc = get_uint(e, "workers", v, 0, SOTH_CONFIG_MAX_WORKERS, &c->workers)))
        return rc;
    if ((v = json_object_get(root, "busy_poll_us")) &&
        (rc = get_uint(e, "busy_poll_us", v, 0, 10000, &c->busy_poll_us)))
        return rc;
    if ((v = json_object_get(root, "wake_batch_us")) &&
        (rc = get_uint(e, "wake_batch_us", v, 0, 1000, &c->wake_batch_us)))
        return rc;
    if ((v = json_object_get(root, "ignore_hosts"))) {
        if (!json_is_array(v))
            return fail(e, "ignore_hosts", "expected array, got %s", soth_json_type_name(v));
        size_t n = json_array_size(v);
        c->ignore_hosts = array_new(e, n, sizeof(char *));
        if (c->ignore_hosts == NULL)
            return fail(e, "ignore_hosts", "out of memory");
        for (size_t i = 0; i < n; i++) {
            char p[64];
            snprintf(p, sizeof(p), "ignore_hosts[%zu]", i);
            json_t *s = json_array_get(v, i);
            if (!json_is_string(s))
                return fail(e, p, "expected string, got %s", soth_json_type_name(s));
            char why[160];
            if (regex_guard(json_string_value(s), why, sizeof(why)) < 0)
                return fail(e, p, "%s", why);
            regex_t re;
            int rrc = regcomp(&re, json_string_value(s), REG_EXTENDED | REG_NOSUB | REG_ICASE);
            if (rrc != 0) {
                regerror(rrc, &re, why, sizeof(why));
                return fail(e, p, "invalid regular expression: %s", why);
            }
            regfree(&re);
            c->ignore_hosts[c->n_ignore_hosts++] = sdup(e, json_string_value(s));
        }
    }
    if ((v = json_object_get(root, "identities")) && (rc = load_identities(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "policy")) && (rc = load_policy(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "http2_enabled")) &&
        (rc = get_bool(e, "http2_enabled", v, &c->http2_enabled)))
        return rc;
    if ((v = json_object_get(root, "http2_max_header_list_size")) &&
        (rc = get_uint(e, "http2_max_header_list_size", v, 1024, 16 * 1024 * 1024,
                       &c->http2_max_header_list_size)))
        return rc;
    if ((v = json_object_get(root, "http3_passthrough")) &&
        (rc = get_bool(e, "http3_passthrough", v, &c->http3_passthrough)))
        return rc;
    if ((v = json_object_get(root, "quic")) && (rc = load_quic(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "upstream_pool")) && (rc = load_upstream_pool(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "tls")) && (rc = load_tls(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "events")) && (rc = load_events(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "timeouts")) && (rc = load_timeouts(e, c, v)))
        return rc;
    if ((v = json_object_get(root, "metrics"))) {
        static const char *const mkeys[] = {"listen", NULL};
        if ((rc = expect_object(e, "metrics", v)) || (rc = check_keys(e, "metrics", v, mkeys)))
            return rc;
        json_t *l = json_object_get(v, "listen");
        if (l && !json_is_null(l)) {
            if (!json_is_string(l))
                return fail(e, "metrics.listen", "expected string \"HOST:PORT\" or null, got %s",
                            soth_json_type_name(l));
            if ((rc = set_metrics(e, c, "metrics.listen", json_string_value(l))))
                return rc;
        } else if (l) {
            set_metrics(e, c, "metrics.listen", NULL);
        }
    }
    if ((v = json_object_get(root, "bridge"))) {
        static const char *const bkeys[] = {"listen", NULL};
        if ((rc = expect_object(e, "bridge", v)) || (rc = check_keys(e, "bridge", v, bkeys)))
            return rc;
        json_t *l = json_object_get(v, "listen");
        if (l && !json_is_null(l)) {
            if (!json_is_string(l) || json_string_length(l) == 0 ||
                json_string_length(l) >= sizeof(((struct sockaddr_un *)0)->sun_path))
                return fail(e, "bridge.listen",
                            "expected a Unix socket path (1..107 bytes) or null, got %s",
                            json_is_string(l) ? "a string of that length" : soth_json_type_name(l));
            free(c->bridge.listen);
            c->bridge.listen = sdup(e, json_string_value(l));
        } else if (l) {
            free(c->bridge.listen);
            c->bridge.listen = NULL;
        }
    }
    if ((v = json_object_get(root, "soth"))) {
        static const char *const skeys[] = {"bundle", NULL};
        if ((rc = expect_object(e, "soth", v)) || (rc = check_keys(e, "soth", v, skeys)))
            return rc;
        json_t *b = json_object_get(v, "bundle");
        if (b && (rc = get_str_or_null(e, "soth.bundle", b, &c->soth.bundle)))
            return rc;
    }
    if ((v = json_object_get(root, "resolve"))) {
        if (!json_is_object(v))
            return fail(e, "resolve", "expected object, got %s", soth_json_type_name(v));
        size_t n = json_object_size(v);
        c->resolve = array_new(e, n, sizeof(*c->resolve));
        if (c->resolve == NULL)
            return fail(e, "resolve", "out of memory");
        const char *k;
        json_t *a;
        json_object_foreach(v, k, a)
        {
            char p[300];
            snprintf(p, sizeof(p), "resolve.%s", k);
            unsigned char tmp[16];
            if (!json_is_string(a) || (inet_pton(AF_INET, json_string_value(a), tmp) != 1 &&
                                       inet_pton(AF_INET6, json_string_value(a), tmp) != 1)) {
                char b[64];
                soth_json_brief(a, b, sizeof(b));
                return fail(e, p, "expected a numeric IPv4 or IPv6 address, got %s", b);
            }
            char why[160];
            if (!host_name_ok(k, why, sizeof(why)))
                return fail(e, p, "invalid host name: %s", why);
            c->resolve[c->n_resolve].name = sdup(e, k);
            c->resolve[c->n_resolve].addr = sdup(e, json_string_value(a));
            c->n_resolve++;
        }
    }
    return 0;
}

/** Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points > U+10FFFF). */
static bool utf8_ok(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s++;
        size_t n;
        unsigned cp, min;
        if (c < 0x80)
            continue;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        for (size_t i = 0; i < n; i++, s++) {
            if ((*s & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (*s & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
    }
    return true;
}

/** A command-line string value: non-empty UTF-8 (the effective config is JSON). */
static int check_cli_text(struct soth_jerr *e, const char *flag, const char *v)
{
    if (v[0] == '\0')
        return fail(e, flag, "expected a non-empty value");
    if (!utf8_ok((const unsigned char *)v))
        return fail(e, flag, "expected UTF-8 text");
    return 0;
}

static int apply_cli(struct soth_jerr *e, struct soth_config *c,
                     const struct soth_cli_overrides *cli)
{
    int rc;
    if (cli->listen && ((rc = check_cli_text(e, "--listen", cli->listen)) ||
                        (rc = set_listen(e, c, "--listen", cli->listen))))
        return rc;
    if (cli->mode && ((rc = check_cli_text(e, "--mode", cli->mode)) ||
                      (rc = set_mode(e, c, "--mode", cli->mode))))
        return rc;
    if (cli->workers >= 0) {
        if (cli->workers > SOTH_CONFIG_MAX_WORKERS)
            return fail(e, "--workers", "expected integer <= %d, got %d", SOTH_CONFIG_MAX_WORKERS,
                        cli->workers);
        c->workers = (unsigned)cli->workers;
    }
    if (cli->ca_dir) {
        if ((rc = check_cli_text(e, "--ca-dir", cli->ca_dir)))
            return rc;
        free(c->tls.ca_dir);
        c->tls.ca_dir = sdup(e, cli->ca_dir);
    }
    if (cli->event_ring) {
        if ((rc = check_cli_text(e, "--event-ring", cli->event_ring)))
            return rc;
        free(c->events.ring_path);
        c->events.ring_path = sdup(e, cli->event_ring);
    }
    if (cli->metrics && ((rc = check_cli_text(e, "--metrics", cli->metrics)) ||
                         (rc = set_metrics(e, c, "--metrics", cli->metrics))))
        return rc;
    if (cli->engine) {
        if (strcmp(cli->engine, "soth-mitm") == 0)
            c->engine = SOTH_ENGINE_NATIVE;
        else if (strcmp(cli->engine, "mitmproxy") == 0)
            c->engine = SOTH_ENGINE_MITMPROXY;
        else
            return fail(e, "--engine", "expected soth-mitm or mitmproxy, got \"%s\"", cli->engine);
    }
    return 0;
}

static int finish(struct soth_jerr *e, struct soth_config *c)
{
    if ((c->tls.ca_cert == NULL) != (c->tls.ca_key == NULL))
        return fail(e, c->tls.ca_cert ? "tls.ca_key" : "tls.ca_cert",
                    "tls.ca_cert and tls.ca_key must be given together");
    return 0;
}

/*
 * The bundle (docs/bundles.md): --bundle, else soth.bundle of the file, compiled and laid over
 * root: its identities, ignore_hosts and policy replace the file's (keys the bundle leaves out
 * take their defaults). *eff is root itself when there is no bundle, else a new object
 * (caller decrefs) that load_json then validates like any config.
 */
static int apply_bundle(struct soth_jerr *e, json_t *root, const struct soth_cli_overrides *cli,
                        json_t **eff)
{
    *eff = root;
    if (root && !json_is_object(root))
        return 0; /* load_json reports it */
    const char *path = cli ? cli->bundle : NULL;
    if (path == NULL)
        path = json_string_value(json_object_get(json_object_get(root, "soth"), "bundle"));
    if (path == NULL)
        return 0;
    char *text = NULL;
    if (soth_bundle_compile(path, 0, &text, e->buf, e->len) < 0)
        return SOTH_E_CONFIG;
    json_t *frag = json_loads(text, 0, NULL);
    free(text);
    json_t *r = root ? json_deep_copy(root) : json_object();
    json_t *so = json_object_get(r, "soth");
    if (r && so == NULL && json_object_set_new(r, "soth", so = json_object()) != 0)
        so = NULL;
    static const char *const replaced[] = {"identities", "ignore_hosts", "policy"};
    for (size_t i = 0; r && i < sizeof(replaced) / sizeof(*replaced); i++)
        (void)json_object_del(r, replaced[i]); /* -1 when absent */
    /* soth.bundle names what runs; a "soth" that is no object is load_json's to report. */
    if (frag == NULL || r == NULL || so == NULL || json_object_update(r, frag) != 0 ||
        (json_is_object(so) && json_object_set_new(so, "bundle", json_string(path)) != 0)) {
        json_decref(frag);
        json_decref(r);
        return fail(e, "(config)", "out of memory");
    }
    json_decref(frag);
    *eff = r;
    return 0;
}

static int load_common(json_t *root, const struct soth_cli_overrides *cli, bool bundle,
                       struct soth_config **out, struct soth_jerr *e)
{
    *out = NULL;
    json_t *eff = root;
    int rc = bundle ? apply_bundle(e, root, cli, &eff) : 0;
    if (rc < 0)
        return rc;
    struct soth_config *c = config_defaults();
    if (c == NULL) {
        if (eff != root)
            json_decref(eff);
        return fail(e, "(config)", "out of memory");
    }
    if (eff)
        rc = load_json(e, c, eff);
    if (eff != root)
        json_decref(eff);
    if (rc == 0 && cli)
        rc = apply_cli(e, c, cli);
    if (rc == 0)
        rc = finish(e, c);
    /* A failed copy leaves a NULL behind; whatever else went wrong, that is the cause. */
    if (e->oom)
        rc = fail(e, "(config)", "out of memory");
    if (rc < 0) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/** jansson's complaint about the text named `what` (a path, or "(text)"). */
static int json_fail(struct soth_jerr *e, const char *what, const json_error_t *je)
{
    /* jansson leaves the text empty when its very first allocation fails. */
    if (json_error_code(je) == json_error_out_of_memory || je->text[0] == '\0')
        return fail(e, what, "out of memory");
    if (je->line <= 0) /* cannot open or read: the message says so */
        return fail(e, what, "%s", je->text);
    return fail(e, what, "line %d, column %d: %s", je->line, je->column, je->text);
}

int soth_config_load(const char *path, const struct soth_cli_overrides *cli,
                     struct soth_config **out, char *err, size_t err_len)
{
    struct soth_jerr e = {err, err_len, false};
    json_t *root = NULL;
    *out = NULL;
    if (path != NULL) {
        json_error_t je;
        root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        if (root == NULL)
            return json_fail(&e, path, &je);
    }
    int rc = load_common(root, cli, true, out, &e);
    json_decref(root);
    return rc;
}

int soth_config_load_text(const char *text, size_t len, struct soth_config **out, char *err,
                          size_t err_len)
{
    struct soth_jerr e = {err, err_len, false};
    json_error_t je;
    *out = NULL;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return json_fail(&e, "(text)", &je);
    int rc = load_common(root, NULL, false, out, &e);
    json_decref(root);
    return rc;
}

/* ---- SIGHUP reload */

static char *config_to_json(const struct soth_config *c, bool secrets);

/* Free a text that may hold credentials, without leaving them in freed memory. */
static void free_secret_text(char *s)
{
    if (s == NULL)
        return;
    volatile char *v = s;
    while (*v)
        *v++ = '\0';
    free(s);
}

int soth_config_reload(const struct soth_config *cur, const char *path,
                       const struct soth_cli_overrides *cli, struct soth_config **out,
                       bool *restart_needed, char *err, size_t err_len)
{
    /* What a reload may change; the rest is carried over from the running snapshot. */
    static const char *const reloadable[] = {"ignore_hosts", "policy",     "resolve",
                                             "timeouts",     "identities", "soth"};
    struct soth_jerr e = {err, err_len, false};
    struct soth_config *next = NULL;
    *out = NULL;
    int rc = soth_config_load(path, cli, &next, err, err_len);
    if (rc < 0)
        return rc;
    /* Merge through the effective JSON, which loads back to the same config (a tested and
     * fuzzed property): a deep copy without a second copy of every field's ownership rules. */
    char *cur_text = config_to_json(cur, true);
    char *next_text = config_to_json(next, true);
    json_t *merged = cur_text ? json_loads(cur_text, 0, NULL) : NULL;
    json_t *wanted = next_text ? json_loads(next_text, 0, NULL) : NULL;
    free_secret_text(cur_text);
    free_secret_text(next_text);
    soth_config_unref(next);
    rc = 0;
    for (size_t i = 0; rc == 0 && merged && wanted && i < sizeof(reloadable) / sizeof(*reloadable);
         i++) {
        json_t *w = json_object_get(wanted, reloadable[i]);
        if (w) /* a key this build does not print is not there to copy */
            rc = json_object_set(merged, reloadable[i], w);
    }
    if (merged == NULL || wanted == NULL || rc != 0) {
        rc = fail(&e, "(config)", "out of memory");
    } else {
        if (restart_needed)
            *restart_needed = !json_equal(merged, wanted);
        rc = load_common(merged, NULL, false, out, &e); /* the bundle is in it already */
    }
    if (rc == 0) {
        /* The listener's real address: the kernel picks the port for "HOST:0". */
        (*out)->listen.port = cur->listen.port;
        (*out)->listen.addr = cur->listen.addr;
        (*out)->listen.addr_len = cur->listen.addr_len;
    }
    json_decref(merged);
    json_decref(wanted);
    return rc;
}

/* ---- effective config as JSON */

/* Every insertion is checked: out of memory must give NULL, never a JSON text missing a key.
 * Both take over v (jansson frees it on failure, NULL included). */
static void put(bool *ok, json_t *obj, const char *key, json_t *v)
{
    if (json_object_set_new(obj, key, v) != 0)
        *ok = false;
}

static void push(bool *ok, json_t *arr, json_t *v)
{
    if (json_array_append_new(arr, v) != 0)
        *ok = false;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* Only keys that are set, so a config without identities prints as before. The password
 * hash is printed (it is what the file holds), never anything else of a credential. */
static void rule_identity_to_json(bool *ok, json_t *rule, const struct soth_rule *r)
{
    if (r->id != NULL)
        put(ok, rule, "id", json_string(r->id));
    if (r->n_identities > 0) {
        json_t *a = json_array();
        for (size_t k = 0; k < r->n_identities; k++)
            push(ok, a, json_string(r->identities[k]));
        put(ok, rule, "identities", a);
    }
    if (r->budget.window_s > 0) {
        json_t *b = json_object();
        if (r->budget.requests > 0)
            put(ok, b, "requests", json_integer((json_int_t)r->budget.requests));
        if (r->budget.bytes > 0)
            put(ok, b, "bytes", json_integer((json_int_t)r->budget.bytes));
        put(ok, b, "window_s", json_integer(r->budget.window_s));
        put(ok, rule, "budget", b);
    }
}

static json_t *identities_to_json(bool *ok, const struct soth_identities *ids)
{
    json_t *o = json_object();
    put(ok, o, "require", json_boolean(ids->require));
    json_t *us = json_array();
    for (size_t i = 0; i < ids->n_users; i++) {
        const struct soth_identity_user *u = &ids->users[i];
        char hx[65];
        for (size_t k = 0; k < 32; k++)
            snprintf(hx + 2 * k, 3, "%02x", u->password_sha256[k]);
        json_t *x = json_object();
        put(ok, x, "id", json_string(u->id));
        put(ok, x, "user", json_string(u->user));
        put(ok, x, "password_sha256", json_string(hx));
        push(ok, us, x);
    }
    put(ok, o, "users", us);
    json_t *ns = json_array();
    for (size_t i = 0; i < ids->n_networks; i++) {
        const struct soth_identity_net *n = &ids->networks[i];
        json_t *x = json_object(), *cs = json_array();
        put(ok, x, "id", json_string(n->id));
        for (size_t k = 0; k < n->n_cidrs; k++)
            push(ok, cs, json_string(n->cidr_texts[k]));
        put(ok, x, "cidrs", cs);
        push(ok, ns, x);
    }
    put(ok, o, "networks", ns);
    return o;
}

static json_t *route_json(const struct soth_route *r, bool secrets)
{
    return json_string(secrets ? r->written : r->shown);
}

/* secrets: routes as written, credentials included (the reload's deep copy only); else
 * with the password as "(set)" (what --check-config prints). */
static char *config_to_json(const struct soth_config *c, bool secrets)
{
    bool ok = true;
    json_t *r = json_object();
    put(&ok, r, "listen", json_string(c->listen_text));
    put(&ok, r, "mode", json_string(c->mode_text));
    put(&ok, r, "workers", json_integer(c->workers));
    put(&ok, r, "busy_poll_us", json_integer(c->busy_poll_us));
    put(&ok, r, "wake_batch_us", json_integer(c->wake_batch_us));
    json_t *ih = json_array();
    for (size_t i = 0; i < c->n_ignore_hosts; i++)
        push(&ok, ih, json_string(c->ignore_hosts[i]));
    put(&ok, r, "ignore_hosts", ih);
    json_t *pol = json_object();
    put(&ok, pol, "default", json_string(soth_action_names[c->policy_default]));
    put(&ok, pol, "default_route", route_json(&c->default_route, secrets));
    json_t *rules = json_array();
    for (size_t i = 0; i < c->n_rules; i++) {
        json_t *rule = json_object();
        put(&ok, rule, "host", json_string(c->rules[i].text));
        put(&ok, rule, "action", json_string(soth_action_names[c->rules[i].action]));
        if (c->rules[i].route_text != NULL)
            put(&ok, rule, "route", route_json(&c->rules[i].route, secrets));
        rule_identity_to_json(&ok, rule, &c->rules[i]);
        push(&ok, rules, rule);
    }
    put(&ok, pol, "rules", rules);
    put(&ok, r, "policy", pol);
    put(&ok, r, "identities", identities_to_json(&ok, &c->identities));
    put(&ok, r, "http2_enabled", json_boolean(c->http2_enabled));
    put(&ok, r, "http2_max_header_list_size", json_integer(c->http2_max_header_list_size));
    put(&ok, r, "http3_passthrough", json_boolean(c->http3_passthrough));
    json_t *quic = json_object();
    put(&ok, quic, "idle_ms", json_integer(c->quic.idle_ms));
    put(&ok, quic, "max_flows", json_integer(c->quic.max_flows));
    put(&ok, r, "quic", quic);
    json_t *upool = json_object();
    put(&ok, upool, "enabled", json_boolean(c->upstream_pool.enabled));
    put(&ok, upool, "max_idle", json_integer(c->upstream_pool.max_idle));
    put(&ok, upool, "idle_ms", json_integer(c->upstream_pool.idle_ms));
    put(&ok, upool, "max_requests", json_integer(c->upstream_pool.max_requests));
    put(&ok, r, "upstream_pool", upool);
    json_t *tls = json_object();
    put(&ok, tls, "ca_dir", str_or_null(c->tls.ca_dir));
    put(&ok, tls, "ca_cert", str_or_null(c->tls.ca_cert));
    put(&ok, tls, "ca_key", str_or_null(c->tls.ca_key));
    put(&ok, tls, "leaf_cache_size", json_integer(c->tls.leaf_cache_size));
    put(&ok, tls, "leaf_validity_days", json_integer(c->tls.leaf_validity_days));
    put(&ok, tls, "ca_rotate_after_days", json_integer(c->tls.ca_rotate_after_days));
    put(&ok, tls, "upstream_verify", json_boolean(c->tls.upstream_verify));
    put(&ok, tls, "upstream_ca_file", str_or_null(c->tls.upstream_ca_file));
    put(&ok, tls, "keylog_file", str_or_null(c->tls.keylog_file));
    json_t *learn = json_object();
    put(&ok, learn, "enabled", json_boolean(c->tls.learning.enabled));
    put(&ok, learn, "failure_threshold", json_integer(c->tls.learning.failure_threshold));
    put(&ok, learn, "window_s", json_integer(c->tls.learning.window_s));
    put(&ok, tls, "learning", learn);
    put(&ok, r, "tls", tls);
    json_t *ev = json_object();
    put(&ok, ev, "ring_path", str_or_null(c->events.ring_path));
    put(&ok, ev, "ring_size_mb", json_integer(c->events.ring_size_mb));
    put(&ok, ev, "body_capture_bytes", json_integer(c->events.body_capture_bytes));
    put(&ok, ev, "ws_turn_idle_ms", json_integer(c->events.ws_turn_idle_ms));
    json_t *sinks = json_array();
    for (size_t i = 0; i < c->events.n_sinks; i++) {
        const struct soth_sink_cfg *sk = &c->events.sinks[i];
        json_t *s = json_object();
        put(&ok, s, "type", json_string(soth_sink_type_names[sk->type]));
        if (sk->type != SOTH_SINK_NATS) {
            put(&ok, s, "path", json_string(sk->path));
            put(&ok, s, "format", json_string(soth_sink_format_names[sk->format]));
            push(&ok, sinks, s);
            continue;
        }
        put(&ok, s, "url", json_string(sk->url));
        put(&ok, s, "subject", json_string(sk->subject));
        put(&ok, s, "stream", json_string(sk->stream));
        put(&ok, s, "format", json_string(soth_sink_format_names[sk->format]));
        put(&ok, s, "max_pending_mb", json_integer(sk->max_pending_mb));
        put(&ok, s, "tls_ca_file", str_or_null(sk->tls_ca_file));
        put(&ok, s, "tls_cert_file", str_or_null(sk->tls_cert_file));
        put(&ok, s, "tls_key_file", str_or_null(sk->tls_key_file));
        put(&ok, s, "creds_file", str_or_null(sk->creds_file));
        put(&ok, s, "user", str_or_null(sk->user));
        /* The effective config is printed (--check-config): the password is not. */
        put(&ok, s, "password", sk->password ? json_string("(set)") : json_null());
        push(&ok, sinks, s);
    }
    put(&ok, ev, "sinks", sinks);
    put(&ok, r, "events", ev);
    json_t *to = json_object();
    put(&ok, to, "connect_ms", json_integer(c->timeouts.connect_ms));
    put(&ok, to, "tls_handshake_ms", json_integer(c->timeouts.tls_handshake_ms));
    put(&ok, to, "request_header_ms", json_integer(c->timeouts.request_header_ms));
    put(&ok, to, "response_header_ms", json_integer(c->timeouts.response_header_ms));
    put(&ok, to, "idle_ms", json_integer(c->timeouts.idle_ms));
    put(&ok, to, "drain_ms", json_integer(c->timeouts.drain_ms));
    put(&ok, to, "upstream_idle_ms", json_integer(c->timeouts.upstream_idle_ms));
    put(&ok, r, "timeouts", to);
    json_t *m = json_object();
    put(&ok, m, "listen", str_or_null(c->metrics.listen_text));
    put(&ok, r, "metrics", m);
    json_t *res = json_object();
    for (size_t i = 0; i < c->n_resolve; i++)
        put(&ok, res, c->resolve[i].name, json_string(c->resolve[i].addr));
    put(&ok, r, "resolve", res);
    json_t *br = json_object();
    put(&ok, br, "listen", str_or_null(c->bridge.listen));
    put(&ok, r, "bridge", br);
    json_t *so = json_object();
    put(&ok, so, "bundle", str_or_null(c->soth.bundle));
    put(&ok, r, "soth", so);
    char *s = ok ? json_dumps(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(r);
    return s;
}

char *soth_config_to_json(const struct soth_config *c)
{
    return config_to_json(c, false);
}

/* ---- checks shared with the bundle compiler (core/base/bundle.c) */

int soth_config_check_glob(const char *glob, char *why, size_t why_len)
{
    char *host = NULL;
    int port;
    if (glob_check(glob, why, why_len, &host, &port) < 0)
        return -1;
    free(host);
    return 0;
}

int soth_config_check_regex(const char *re, char *why, size_t why_len)
{
    if (regex_guard(re, why, why_len) < 0)
        return -1;
    regex_t rx;
    int rrc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB | REG_ICASE);
    if (rrc != 0) {
        char m[160];
        regerror(rrc, &rx, m, sizeof(m));
        snprintf(why, why_len, "invalid regular expression: %s", m);
        return -1;
    }
    regfree(&rx);
    return 0;
}
