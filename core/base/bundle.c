/*
 * SOTH bundle v1 -> config fragment (docs/bundles.md). Validation names the JSON path of the
 * first problem: "bundle: <json path>: <what>". The output is built with jansson and dumped
 * with sorted keys, so the same bundle always gives the same bytes.
 */
#include "soth/bundle.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/config.h"
#include "jerr.h"
#include "soth/route.h"

/* ---- errors */

static int fail(struct soth_jerr *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct soth_jerr *e, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = soth_jerr_vfail(e, "bundle", path, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- JSON helpers */

/* JSON paths in errors; a very long one is cut (the message stays one line). */
static void path_fmt(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void path_fmt(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

static void path_key(char *out, size_t cap, const char *parent, const char *key)
{
    path_fmt(out, cap, "%s%s%.128s", parent, parent[0] ? "." : "", key);
}

static void path_idx(char *out, size_t cap, const char *parent, size_t i)
{
    path_fmt(out, cap, "%s[%zu]", parent, i);
}

static int expect_object(struct soth_jerr *e, const char *path, const json_t *v)
{
    if (!json_is_object(v))
        return fail(e, path, "expected object, got %s", soth_json_type_name(v));
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
            char p[320];
            path_key(p, sizeof(p), parent, k);
            return fail(e, p, "unknown key");
        }
    }
    return 0;
}

/** obj[key] that must be present (error names parent.key). */
static int required(struct soth_jerr *e, const char *parent, const json_t *obj, const char *key,
                    json_t **out)
{
    *out = json_object_get(obj, key);
    if (*out == NULL) {
        char p[320];
        path_key(p, sizeof(p), parent, key);
        return fail(e, p, "missing required key");
    }
    return 0;
}

static int expect_array(struct soth_jerr *e, const char *path, const json_t *v, bool nonempty)
{
    if (!json_is_array(v))
        return fail(e, path, "expected array, got %s", soth_json_type_name(v));
    if (nonempty && json_array_size(v) == 0)
        return fail(e, path, "expected a non-empty array, got []");
    return 0;
}

static int expect_string(struct soth_jerr *e, const char *path, const json_t *v)
{
    if (!json_is_string(v))
        return fail(e, path, "expected string, got %s", soth_json_type_name(v));
    return 0;
}

static int get_int(struct soth_jerr *e, const char *path, const json_t *v, long long min,
                   long long max, long long *out)
{
    char b[64];
    if (!json_is_integer(v)) {
        soth_json_brief(v, b, sizeof(b));
        return fail(e, path, "expected integer >= %lld, got %s", min, b);
    }
    long long x = (long long)json_integer_value(v);
    if (x < min)
        return fail(e, path, "expected integer >= %lld, got %lld", min, x);
    if (x > max)
        return fail(e, path, "expected integer <= %lld, got %lld", max, x);
    *out = x;
    return 0;
}

/* Insertions remember a failure in e (jansson frees v on failure, NULL included). */
static void put(struct soth_jerr *e, json_t *obj, const char *key, json_t *v)
{
    if (json_object_set_new(obj, key, v) != 0)
        e->oom = true;
}

static void push(struct soth_jerr *e, json_t *arr, json_t *v)
{
    if (json_array_append_new(arr, v) != 0)
        e->oom = true;
}

/* ---- values */

#define ID_MAX 128

/** An id: 1..ID_MAX printable ASCII bytes, no space; rule ids also no '#' (see "#<n>"). */
static int check_id(struct soth_jerr *e, const char *path, const json_t *v, bool rule)
{
    int rc;
    if ((rc = expect_string(e, path, v)))
        return rc;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    bool ok = n >= 1 && n <= ID_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] > 0x20 && s[i] < 0x7f && !(rule && s[i] == '#');
    if (!ok)
        return fail(e, path, "expected an id of 1..%d printable ASCII characters without spaces%s",
                    ID_MAX, rule ? " or '#'" : "");
    return 0;
}

/** A Basic-auth user name: 1..255 printable ASCII bytes, no space, no ':' (RFC 7617). */
static bool user_ok(const char *s, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == ':')
            return false;
    return true;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/** A decimal without sign or leading zero, <= max; -1 if not. */
static long parse_dec(const char *s, size_t n, long max)
{
    if (n == 0 || n > 6 || (s[0] == '0' && n > 1))
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

/**
 * "ADDRESS/PREFIX", IPv4 or IPv6, with no host bits set. Writes the canonical text
 * (inet_ntop form) into out. Returns 0, or -1 with the reason in why.
 */
static int parse_cidr(const char *s, char *out, size_t cap, char *why, size_t why_len)
{
    const char *slash = strchr(s, '/');
    char addr[INET6_ADDRSTRLEN + 1];
    size_t alen = slash ? (size_t)(slash - s) : 0;
    if (slash == NULL || alen == 0 || alen >= sizeof(addr)) {
        snprintf(why, why_len, "expected ADDRESS/PREFIX, got \"%.80s\"", s);
        return -1;
    }
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    unsigned char a[16];
    int af = memchr(addr, ':', alen) ? AF_INET6 : AF_INET;
    int bits = af == AF_INET6 ? 128 : 32;
    if (inet_pton(af, addr, a) != 1) {
        snprintf(why, why_len, "invalid %s address in \"%.80s\"", af == AF_INET6 ? "IPv6" : "IPv4",
                 s);
        return -1;
    }
    long prefix = parse_dec(slash + 1, strlen(slash + 1), bits);
    if (prefix < 0) {
        snprintf(why, why_len, "prefix must be 0..%d in \"%.80s\"", bits, s);
        return -1;
    }
    unsigned char net[16];
    memcpy(net, a, sizeof(net));
    for (int i = (int)prefix; i < bits; i++)
        net[i / 8] &= (unsigned char)~(0x80u >> (i % 8));
    char canon[INET6_ADDRSTRLEN];
    if (inet_ntop(af, net, canon, sizeof(canon)) == NULL) {
        snprintf(why, why_len, "invalid address in \"%.80s\"", s);
        return -1;
    }
    if (memcmp(net, a, (size_t)bits / 8) != 0) {
        snprintf(why, why_len, "host bits set in \"%.80s\" (the network is %s/%ld)", s, canon,
                 prefix);
        return -1;
    }
    snprintf(out, cap, "%s/%ld", canon, prefix);
    return 0;
}

static const char *const actions[] = {"intercept", "tunnel", "block", NULL};

static int check_action(struct soth_jerr *e, const char *path, const json_t *v)
{
    if (json_is_string(v))
        for (size_t i = 0; actions[i]; i++)
            if (strcmp(json_string_value(v), actions[i]) == 0)
                return 0;
    char b[64];
    soth_json_brief(v, b, sizeof(b));
    return fail(e, path, "expected \"intercept\", \"tunnel\" or \"block\", got %s", b);
}

/** Route at path into *out (a new JSON string). */
static int compile_route(struct soth_jerr *e, const char *path, const json_t *v, unsigned flags,
                         json_t **out)
{
    int rc;
    if ((rc = expect_string(e, path, v)))
        return rc;
    /* Never echo the value: it may carry a password. */
    size_t n = json_string_length(v);
    if (n > 1024)
        return fail(e, path, "longer than 1024 bytes");
    /* One route grammar for bundles and config (docs/config.md "Routes"): soth_route_parse. */
    struct soth_route r;
    char why[240];
    int prc = soth_route_parse(json_string_value(v), &r, why, sizeof(why));
    if (prc == SOTH_E_NOMEM) {
        e->oom = true;
        return prc;
    }
    if (prc != 0)
        return fail(e, path, "%s", why);
    const char *text = (flags & SOTH_BUNDLE_F_REDACT) ? r.shown : r.written;
    *out = json_string(text);
    soth_route_dispose(&r);
    if (*out == NULL)
        e->oom = true;
    return 0;
}

/* ---- sections */

struct bctx {
    struct soth_jerr *e;
    unsigned flags;
    json_t *ident_ids; /* id -> path of its definition */
    json_t *users;     /* user name -> path of its definition */
    json_t *rule_ids;  /* id -> path */
    json_t *out;       /* the fragment */
};

/** Remember key in set (value: where); on a repeat return the earlier path, else NULL. */
static const char *seen(struct bctx *b, json_t *set, const char *key, const char *where)
{
    json_t *prev = json_object_get(set, key);
    if (prev)
        return json_string_value(prev);
    put(b->e, set, key, json_string(where));
    return NULL;
}

static int compile_identity(struct bctx *b, const char *p, const json_t *id, json_t *users,
                            json_t *networks)
{
    static const char *const keys[] = {"id", "proxy_users", "cidrs", NULL};
    struct soth_jerr *e = b->e;
    int rc;
    char pk[400], pi[420];
    json_t *v;
    if ((rc = expect_object(e, p, id)) || (rc = check_keys(e, p, id, keys)) ||
        (rc = required(e, p, id, "id", &v)))
        return rc;
    path_key(pk, sizeof(pk), p, "id");
    if ((rc = check_id(e, pk, v, false)))
        return rc;
    const char *name = json_string_value(v);
    if (strcmp(name, "anonymous") == 0)
        return fail(e, pk, "\"anonymous\" is reserved (clients without an identity)");
    const char *prev = seen(b, b->ident_ids, name, pk);
    if (prev)
        return fail(e, pk, "duplicate id \"%s\" (also %s)", name, prev);
    json_t *pu = json_object_get(id, "proxy_users");
    json_t *cidrs = json_object_get(id, "cidrs");
    if (pu == NULL && cidrs == NULL)
        return fail(e, p, "expected \"proxy_users\" or \"cidrs\" (or both)");
    if (pu) {
        static const char *const ukeys[] = {"user", "password_sha256", NULL};
        path_key(pk, sizeof(pk), p, "proxy_users");
        if ((rc = expect_array(e, pk, pu, true)))
            return rc;
        for (size_t i = 0; i < json_array_size(pu); i++) {
            char pu_i[410];
            path_idx(pu_i, sizeof(pu_i), pk, i);
            json_t *u = json_array_get(pu, i), *user, *hash;
            if ((rc = expect_object(e, pu_i, u)) || (rc = check_keys(e, pu_i, u, ukeys)) ||
                (rc = required(e, pu_i, u, "user", &user)) ||
                (rc = required(e, pu_i, u, "password_sha256", &hash)))
                return rc;
            path_key(pi, sizeof(pi), pu_i, "user");
            if ((rc = expect_string(e, pi, user)))
                return rc;
            /* User names are half a credential: errors never echo them. */
            if (!user_ok(json_string_value(user), json_string_length(user)))
                return fail(e, pi,
                            "expected a user name of 1..255 printable ASCII characters without "
                            "spaces or ':'");
            prev = seen(b, b->users, json_string_value(user), pi);
            if (prev)
                return fail(e, pi, "duplicate user (also %s)", prev);
            path_key(pi, sizeof(pi), pu_i, "password_sha256");
            if ((rc = expect_string(e, pi, hash)))
                return rc;
            const char *h = json_string_value(hash);
            size_t hl = json_string_length(hash);
            bool ok = hl == 64;
            for (size_t k = 0; ok && k < hl; k++)
                ok = is_hex(h[k]);
            /* Not echoed either: it may be a password pasted by mistake. */
            if (!ok)
                return fail(e, pi,
                            "expected 64 hex digits (the SHA-256 of the password), got %zu "
                            "characters%s",
                            hl, hl == 64 ? " that are not all hex digits" : "");
            char lower[65];
            for (size_t k = 0; k < 64; k++)
                lower[k] = (char)(h[k] >= 'A' && h[k] <= 'F' ? h[k] - 'A' + 'a' : h[k]);
            lower[64] = '\0';
            json_t *o = json_object();
            if (o == NULL) {
                e->oom = true;
                return 0;
            }
            put(e, o, "id", json_string(name));
            put(e, o, "user", json_string(json_string_value(user)));
            put(e, o, "password_sha256", json_string(lower));
            push(e, users, o);
        }
    }
    if (cidrs) {
        path_key(pk, sizeof(pk), p, "cidrs");
        if ((rc = expect_array(e, pk, cidrs, true)))
            return rc;
        json_t *list = json_array();
        json_t *o = json_object();
        if (list == NULL || o == NULL) {
            json_decref(list);
            json_decref(o);
            e->oom = true;
            return 0;
        }
        put(e, o, "id", json_string(name));
        put(e, o, "cidrs", list);
        push(e, networks, o);
        if (e->oom) /* list went with o */
            return 0;
        for (size_t i = 0; i < json_array_size(cidrs); i++) {
            path_idx(pi, sizeof(pi), pk, i);
            json_t *c = json_array_get(cidrs, i);
            if ((rc = expect_string(e, pi, c)))
                return rc;
            char canon[INET6_ADDRSTRLEN + 8], why[240];
            if (parse_cidr(json_string_value(c), canon, sizeof(canon), why, sizeof(why)) < 0)
                return fail(e, pi, "invalid CIDR: %s", why);
            push(e, list, json_string(canon));
        }
    }
    return 0;
}

static int compile_budget(struct soth_jerr *e, const char *p, const json_t *v, json_t **out)
{
    static const char *const keys[] = {"requests", "bytes", "window_s", NULL};
    /* Limits: requests fit 32 bits, bytes stay exact in any JSON reader (2^53 - 1), the
     * window is at most a day. */
    static const struct {
        const char *key;
        long long max;
    } lim[] = {{"requests", 4294967295LL}, {"bytes", 9007199254740991LL}, {"window_s", 86400}};
    int rc;
    json_t *w;
    if ((rc = expect_object(e, p, v)) || (rc = check_keys(e, p, v, keys)))
        return rc;
    if (json_object_get(v, "requests") == NULL && json_object_get(v, "bytes") == NULL)
        return fail(e, p, "expected \"requests\" or \"bytes\" (or both)");
    if ((rc = required(e, p, v, "window_s", &w)))
        return rc;
    *out = json_object();
    if (*out == NULL) {
        e->oom = true;
        return 0;
    }
    for (size_t i = 0; i < sizeof(lim) / sizeof(*lim); i++) {
        json_t *x = json_object_get(v, lim[i].key);
        if (x == NULL)
            continue;
        char pk[400];
        long long n = 0;
        path_key(pk, sizeof(pk), p, lim[i].key);
        if ((rc = get_int(e, pk, x, 1, lim[i].max, &n)))
            return rc;
        put(e, *out, lim[i].key, json_integer((json_int_t)n));
    }
    return 0;
}

static int compile_rule(struct bctx *b, const char *p, const json_t *r, json_t *rules)
{
    static const char *const keys[] = {"id",     "hosts", "action", "identities",
                                       "budget", "route", NULL};
    struct soth_jerr *e = b->e;
    int rc;
    char pk[400], pi[420];
    json_t *id, *hosts, *action;
    if ((rc = expect_object(e, p, r)) || (rc = check_keys(e, p, r, keys)) ||
        (rc = required(e, p, r, "id", &id)))
        return rc;
    path_key(pk, sizeof(pk), p, "id");
    if ((rc = check_id(e, pk, id, true)))
        return rc;
    const char *prev = seen(b, b->rule_ids, json_string_value(id), pk);
    if (prev)
        return fail(e, pk, "duplicate id \"%s\" (also %s)", json_string_value(id), prev);
    if ((rc = required(e, p, r, "hosts", &hosts)))
        return rc;
    path_key(pk, sizeof(pk), p, "hosts");
    if ((rc = expect_array(e, pk, hosts, true)))
        return rc;
    /* Each host pattern becomes a policy rule with id "<id>#<n>" when there are several: that
     * id must fit the config's 1..ID_MAX bytes too, or the compiled bundle would not load. */
    size_t nh = json_array_size(hosts);
    if (nh > 1) {
        int ln = snprintf(NULL, 0, "%s#%zu", json_string_value(id), nh);
        if (ln < 0 || ln > ID_MAX) {
            path_key(pk, sizeof(pk), p, "id");
            return fail(e, pk,
                        "with %zu host patterns the compiled rule ids (\"<id>#%zu\") are over %d "
                        "bytes: shorten the id",
                        nh, nh, ID_MAX);
        }
    }
    for (size_t i = 0; i < nh; i++) {
        path_idx(pi, sizeof(pi), pk, i);
        json_t *h = json_array_get(hosts, i);
        if ((rc = expect_string(e, pi, h)))
            return rc;
        char why[240];
        if (soth_config_check_glob(json_string_value(h), why, sizeof(why)) < 0)
            return fail(e, pi, "invalid host glob: %s", why);
    }
    if ((rc = required(e, p, r, "action", &action)))
        return rc;
    path_key(pk, sizeof(pk), p, "action");
    if ((rc = check_action(e, pk, action)))
        return rc;
    json_t *ids = json_object_get(r, "identities");
    if (ids) {
        path_key(pk, sizeof(pk), p, "identities");
        if ((rc = expect_array(e, pk, ids, true)))
            return rc;
        for (size_t i = 0; i < json_array_size(ids); i++) {
            path_idx(pi, sizeof(pi), pk, i);
            json_t *x = json_array_get(ids, i);
            if ((rc = check_id(e, pi, x, false)))
                return rc;
            const char *s = json_string_value(x);
            if (strcmp(s, "anonymous") != 0 && json_object_get(b->ident_ids, s) == NULL)
                return fail(e, pi, "unknown identity \"%s\" (not in identities[].id)", s);
            for (size_t k = 0; k < i; k++)
                if (strcmp(s, json_string_value(json_array_get(ids, k))) == 0)
                    return fail(e, pi, "\"%s\" listed twice", s);
        }
    }
    json_t *budget = NULL, *route = NULL, *v;
    if ((v = json_object_get(r, "budget"))) {
        path_key(pk, sizeof(pk), p, "budget");
        if ((rc = compile_budget(e, pk, v, &budget)))
            goto out;
    }
    if ((v = json_object_get(r, "route"))) {
        path_key(pk, sizeof(pk), p, "route");
        if ((rc = compile_route(e, pk, v, b->flags, &route)))
            goto out;
    }
    /* One policy rule per host pattern, in order (docs/bundles.md "Compile mapping"). */
    size_t n = json_array_size(hosts);
    for (size_t i = 0; i < n && !e->oom; i++) {
        json_t *o = json_object();
        if (o == NULL) {
            e->oom = true;
            break;
        }
        char rid[ID_MAX + 32];
        if (n == 1)
            snprintf(rid, sizeof(rid), "%s", json_string_value(id));
        else
            snprintf(rid, sizeof(rid), "%s#%zu", json_string_value(id), i + 1);
        put(e, o, "id", json_string(rid));
        put(e, o, "host", json_string(json_string_value(json_array_get(hosts, i))));
        put(e, o, "action", json_string(json_string_value(action)));
        if (ids)
            put(e, o, "identities", json_deep_copy(ids));
        if (budget)
            put(e, o, "budget", json_deep_copy(budget));
        if (route)
            put(e, o, "route", json_deep_copy(route));
        push(e, rules, o);
    }
out:
    json_decref(budget);
    json_decref(route);
    return rc;
}

static int compile_root(struct bctx *b, const json_t *root)
{
    static const char *const keys[] = {
        "bundle_version", "bundle_id", "require_identity", "identities",
        "ignore_hosts",   "rules",     "defaults",         NULL};
    struct soth_jerr *e = b->e;
    int rc;
    char pi[420];
    json_t *v;
    if (!json_is_object(root))
        return fail(e, "(top level)", "expected object, got %s", soth_json_type_name(root));
    /* The version first: a newer bundle fails on it, not on the keys it adds. */
    if ((rc = required(e, "", root, "bundle_version", &v)))
        return rc;
    if (!json_is_integer(v) || json_integer_value(v) != 1) {
        char bb[64];
        soth_json_brief(v, bb, sizeof(bb));
        return fail(e, "bundle_version", "expected 1, got %s", bb);
    }
    if ((rc = check_keys(e, "", root, keys)))
        return rc;
    if ((v = json_object_get(root, "bundle_id"))) {
        if ((rc = expect_string(e, "bundle_id", v)))
            return rc;
        if (json_string_length(v) == 0)
            return fail(e, "bundle_id", "expected a non-empty string, got \"\"");
    }
    json_t *req = json_object_get(root, "require_identity");
    if (req && !json_is_boolean(req))
        return fail(e, "require_identity", "expected boolean, got %s", soth_json_type_name(req));

    json_t *idents = json_object_get(root, "identities");
    if (idents || req) {
        json_t *io = json_object(), *users = json_array(), *networks = json_array();
        put(e, io, "require", json_boolean(req && json_is_true(req)));
        put(e, io, "users", users);
        put(e, io, "networks", networks);
        put(e, b->out, "identities", io);
        if (e->oom)
            return 0;
        if (idents) {
            if ((rc = expect_array(e, "identities", idents, false)))
                return rc;
            for (size_t i = 0; i < json_array_size(idents); i++) {
                path_idx(pi, sizeof(pi), "identities", i);
                if ((rc = compile_identity(b, pi, json_array_get(idents, i), users, networks)))
                    return rc;
            }
        }
    }

    json_t *ign = json_array();
    put(e, b->out, "ignore_hosts", ign);
    if (e->oom)
        return 0;
    if ((v = json_object_get(root, "ignore_hosts"))) {
        if ((rc = expect_array(e, "ignore_hosts", v, false)))
            return rc;
        for (size_t i = 0; i < json_array_size(v); i++) {
            path_idx(pi, sizeof(pi), "ignore_hosts", i);
            json_t *s = json_array_get(v, i);
            if ((rc = expect_string(e, pi, s)))
                return rc;
            char why[240];
            if (soth_config_check_regex(json_string_value(s), why, sizeof(why)) < 0)
                return fail(e, pi, "%s", why);
            push(e, ign, json_string(json_string_value(s)));
        }
    }

    json_t *pol = json_object(), *rules = json_array();
    put(e, pol, "rules", rules);
    put(e, b->out, "policy", pol);
    if (e->oom)
        return 0;
    if ((v = json_object_get(root, "rules"))) {
        if ((rc = expect_array(e, "rules", v, false)))
            return rc;
        for (size_t i = 0; i < json_array_size(v); i++) {
            path_idx(pi, sizeof(pi), "rules", i);
            if ((rc = compile_rule(b, pi, json_array_get(v, i), rules)))
                return rc;
        }
    }

    /* defaults: policy.default (intercept when not given, as in the config) and the route. */
    json_t *defaults = json_object_get(root, "defaults");
    json_t *action = NULL;
    if (defaults) {
        static const char *const dkeys[] = {"action", "route", NULL};
        if ((rc = expect_object(e, "defaults", defaults)) ||
            (rc = check_keys(e, "defaults", defaults, dkeys)))
            return rc;
        if ((action = json_object_get(defaults, "action")) &&
            (rc = check_action(e, "defaults.action", action)))
            return rc;
        if ((v = json_object_get(defaults, "route"))) {
            json_t *route = NULL;
            if ((rc = compile_route(e, "defaults.route", v, b->flags, &route)))
                return rc;
            put(e, pol, "default_route", route);
        }
    }
    put(e, pol, "default", json_string(action ? json_string_value(action) : "intercept"));
    return 0;
}

static int json_fail(struct soth_jerr *e, const char *what, const json_error_t *je)
{
    if (json_error_code(je) == json_error_out_of_memory || je->text[0] == '\0')
        return fail(e, what, "out of memory");
    if (je->line <= 0)
        return fail(e, what, "%s", je->text);
    return fail(e, what, "line %d, column %d: %s", je->line, je->column, je->text);
}

static int compile(const char *text, size_t len, const char *what, unsigned flags, char **json_out,
                   struct soth_jerr *e)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return json_fail(e, what, &je);
    struct bctx b = {.e = e, .flags = flags};
    b.ident_ids = json_object();
    b.users = json_object();
    b.rule_ids = json_object();
    b.out = json_object();
    int rc = 0;
    if (b.ident_ids == NULL || b.users == NULL || b.rule_ids == NULL || b.out == NULL)
        e->oom = true;
    else
        rc = compile_root(&b, root);
    if (rc == 0 && !e->oom) {
        *json_out = json_dumps(b.out, JSON_INDENT(2) | JSON_SORT_KEYS);
        if (*json_out == NULL)
            e->oom = true;
    }
    if (e->oom) {
        free(*json_out);
        *json_out = NULL;
        rc = fail(e, "(bundle)", "out of memory");
    }
    json_decref(b.ident_ids);
    json_decref(b.users);
    json_decref(b.rule_ids);
    json_decref(b.out);
    json_decref(root);
    return rc;
}

int soth_bundle_compile_text(const char *text, size_t len, unsigned flags, char **json_out,
                             char *err, size_t err_len)
{
    struct soth_jerr e = {err, err_len, false};
    *json_out = NULL;
    if (len > SOTH_BUNDLE_MAX_BYTES)
        return fail(&e, "(text)", "larger than %u bytes", SOTH_BUNDLE_MAX_BYTES);
    return compile(text, len, "(text)", flags, json_out, &e);
}

int soth_bundle_compile(const char *path, unsigned flags, char **json_out, char *err,
                        size_t err_len)
{
    struct soth_jerr e = {err, err_len, false};
    *json_out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return fail(&e, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(&e, path, "not a regular file");
    }
    if ((unsigned long long)st.st_size > SOTH_BUNDLE_MAX_BYTES) {
        close(fd);
        return fail(&e, path, "larger than %u bytes", SOTH_BUNDLE_MAX_BYTES);
    }
    /* Read up to one byte past the limit: the file may grow between fstat and read. */
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return fail(&e, path, "out of memory");
    }
    for (;;) {
        if (len == cap) {
            if (cap > SOTH_BUNDLE_MAX_BYTES)
                break;
            size_t ncap = cap * 2 > SOTH_BUNDLE_MAX_BYTES + 1 ? SOTH_BUNDLE_MAX_BYTES + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                close(fd);
                return fail(&e, path, "out of memory");
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            int err_no = errno;
            free(buf);
            close(fd);
            return fail(&e, path, "cannot read: %s", strerror(err_no));
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    int rc;
    if (len > SOTH_BUNDLE_MAX_BYTES)
        rc = fail(&e, path, "larger than %u bytes", SOTH_BUNDLE_MAX_BYTES);
    else
        rc = compile(buf, len, path, flags, json_out, &e);
    free(buf);
    return rc;
}
