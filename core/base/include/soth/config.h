/*
 * The effective configuration (docs/config.md), loaded once into an immutable,
 * reference-counted snapshot. Workers read it without locks; SIGHUP builds a new snapshot
 * and publishes it to each worker (see struct soth_config_slot); a worker switches at its
 * next safe point and drops its reference to the old one. docs/config.md lists every key.
 */
#ifndef SOTH_CONFIG_H
#define SOTH_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "soth/route.h"

enum soth_mode {
    SOTH_MODE_REGULAR = 0,
    SOTH_MODE_REVERSE,
    SOTH_MODE_TRANSPARENT,
    SOTH_MODE_SOCKS5,
    SOTH_MODE_COUNT
};
enum soth_action {
    SOTH_ACTION_INTERCEPT = 0,
    SOTH_ACTION_TUNNEL,
    SOTH_ACTION_BLOCK,
    SOTH_ACTION_COUNT
};
enum soth_sink_type { SOTH_SINK_JSONL = 0, SOTH_SINK_UDS, SOTH_SINK_NATS, SOTH_SINK_COUNT };
/** What a sink gets (docs/sinks.md): event lines, or exchanges (docs/exchanges.md). */
enum soth_sink_format { SOTH_SINK_FMT_EVENT = 0, SOTH_SINK_FMT_EXCHANGE, SOTH_SINK_FMT_COUNT };

extern const char *const soth_mode_names[SOTH_MODE_COUNT];     /* "regular", ... */
extern const char *const soth_action_names[SOTH_ACTION_COUNT]; /* "intercept", ... */
extern const char *const soth_sink_type_names[SOTH_SINK_COUNT];
extern const char *const soth_sink_format_names[SOTH_SINK_FMT_COUNT]; /* "event", "exchange" */

/** A parsed HOST:PORT (listen, metrics.listen). host is the text as given (no brackets). */
struct soth_hostport {
    char *host;
    uint16_t port;
    struct sockaddr_storage addr; /* numeric host resolved with AI_NUMERICHOST, else AF_UNSPEC */
    socklen_t addr_len;           /* 0 when host is a name, not a literal address */
};

/** A rule's budget (docs/config.md "identities"); 0 = no limit of that kind. */
struct soth_budget_cfg {
    uint64_t requests;
    uint64_t bytes;
    uint32_t window_s; /* 1..86400 when requests or bytes is set, else 0 */
};

struct soth_rule {
    char *host; /* glob text as given, e.g. "*.bank.example" (without the port) */
    int port;   /* -1 = any port */
    enum soth_action action;
    char *text;        /* the rule as written in the config ("ads.example:443"), for events */
    char *id;          /* `id` as written, NULL when none (events then carry the rule's index) */
    char **identities; /* identity ids the rule is limited to ("anonymous" included); none =
                          every identity */
    size_t n_identities;
    struct soth_budget_cfg budget;
    /* "direct" or "upstream:http://HOST:PORT", never credentials; NULL = no `route` key (the
     * rule takes policy.default_route) */
    char *route_text;
    struct soth_route route; /* parsed, credentials included; all zero when route_text is NULL */
};

/** identities.users[] (docs/config.md): Basic credentials that name an identity. */
struct soth_identity_user {
    char *id;
    char *user;
    uint8_t password_sha256[32]; /* SHA-256 of the password (never the password itself) */
};

/** One CIDR of identities.networks[].cidrs: family AF_INET or AF_INET6, network bytes. */
struct soth_cidr {
    int family;
    uint8_t prefix; /* 0..32 or 0..128 */
    uint8_t addr[16];
};

struct soth_identity_net {
    char *id;
    struct soth_cidr *cidrs;
    size_t n_cidrs;
    char **cidr_texts; /* as written, for the effective config */
};

/** Longest identity id (bytes); events carry it on every record. */
#define SOTH_IDENTITY_MAX 64

struct soth_identities {
    bool require;
    struct soth_identity_user *users;
    size_t n_users;
    struct soth_identity_net *networks;
    size_t n_networks;
};

struct soth_sink_cfg {
    enum soth_sink_type type;
    enum soth_sink_format format; /* every type; default event */
    char *path;                   /* jsonl, uds */
    /* nats (docs/sinks.md): NULL strings are "not set" */
    char *url;     /* one or more nats:// or tls:// URLs, comma-separated */
    char *subject; /* events go to <subject>.<type> */
    char *stream;  /* JetStream stream, created when missing */
    uint32_t max_pending_mb;
    char *tls_ca_file, *tls_cert_file, *tls_key_file; /* cert and key go together */
    char *creds_file;                                 /* or user + password, not both */
    char *user, *password;
};

struct soth_resolve_entry {
    char *name;
    char *addr; /* numeric IPv4 or IPv6 address text */
};

/** Which engine carries the traffic (--engine, docs/bridge.md). */
enum soth_engine_kind { SOTH_ENGINE_NATIVE = 0, SOTH_ENGINE_MITMPROXY };

struct soth_config {
    atomic_uint refs;

    struct soth_hostport listen;
    char *listen_text; /* as written: "127.0.0.1:8080"; port 0 = kernel picks */
    enum soth_mode mode;
    char *mode_text; /* as written: "reverse:https://origin.test:443" */
    /* reverse mode only */
    bool reverse_tls; /* scheme https */
    char *reverse_host;
    uint16_t reverse_port;

    unsigned workers; /* as configured; 0 = one per online CPU */

    char **ignore_hosts; /* POSIX ERE sources, validated with regcomp at load */
    size_t n_ignore_hosts;
    enum soth_action policy_default;
    struct soth_route default_route; /* policy.default_route (docs/config.md "Routes") */
    struct soth_rule *rules;
    size_t n_rules;
    struct soth_identities identities; /* docs/config.md "identities" */

    uint32_t busy_poll_us;  /* a loaded worker watches its rings this long before it sleeps */
    uint32_t wake_batch_us; /* a loaded worker lets completions gather this long (Linux 6.12) */

    bool http2_enabled;
    uint32_t http2_max_header_list_size;
    bool http3_passthrough;

    struct {
        char *ca_dir; /* NULL = default ($XDG_DATA_HOME/soth-mitm, ~/.local/share/soth-mitm) */
        char *ca_cert, *ca_key;   /* both or neither */
        uint32_t leaf_cache_size; /* 0 disables the cache */
        uint32_t leaf_validity_days;
        uint32_t ca_rotate_after_days; /* 0 disables rotation */
        bool upstream_verify;
        char *upstream_ca_file;
        char *keylog_file; /* NULL = none (SSLKEYLOGFILE applies then; docs/tls.md "Key log") */
        struct {
            bool enabled;
            uint32_t failure_threshold;
            uint32_t window_s;
        } learning;
    } tls;

    struct {
        char *ring_path; /* NULL = default ($XDG_RUNTIME_DIR/soth-mitm/events.ring, ...) */
        uint32_t ring_size_mb;
        uint32_t body_capture_bytes;
        uint32_t ws_turn_idle_ms; /* a WebSocket turn silent this long ends (flush idle) */
        struct soth_sink_cfg *sinks;
        size_t n_sinks;
    } events;

    struct {
        uint32_t connect_ms, tls_handshake_ms, request_header_ms, idle_ms, drain_ms;
        uint32_t response_header_ms; /* first byte of a response head after a request */
        uint32_t upstream_idle_ms;   /* an intercepted HTTP/2 connection's upstream connection
                                        closes after this long without a stream, and reopens
                                        for the next request (docs/http2.md); 0: never */
    } timeouts;

    struct {
        uint32_t idle_ms;   /* a QUIC flow silent this long ends (docs/http3.md) */
        uint32_t max_flows; /* QUIC flows per worker; a new one above is dropped */
    } quic;

    /* docs/config.md "upstream_pool": idle HTTP/1.1 upstream TLS connections kept per worker
     * in reverse https mode (core/upool.c); restart-only */
    struct {
        bool enabled;
        uint32_t max_idle;     /* idle connections per worker (0 = none kept) */
        uint32_t idle_ms;      /* an idle connection older than this is closed */
        uint32_t max_requests; /* requests one connection carries before it is closed */
    } upstream_pool;

    struct {
        char *listen_text; /* NULL = no metrics endpoint */
        struct soth_hostport listen;
    } metrics;

    struct soth_resolve_entry *resolve;
    size_t n_resolve;

    /* docs/bridge.md: reports from other TLS engines over a Unix socket (NULL = off) */
    struct {
        char *listen;
    } bridge;
    /* --engine (docs/bridge.md): the native engine, or mitmdump as a child behind the bridge */
    enum soth_engine_kind engine;
    /* docs/bundles.md: the SOTH bundle compiled into identities, ignore_hosts and policy */
    struct {
        char *bundle; /* soth.bundle or --bundle; NULL = none */
    } soth;
};

/** Upper bound of `workers` / --workers (0 = one per online CPU). */
#define SOTH_CONFIG_MAX_WORKERS 1024

/** Command-line overrides; NULL fields (and workers -1) mean "not given". */
struct soth_cli_overrides {
    const char *listen;
    const char *mode;
    int workers; /* -1 = not given */
    const char *ca_dir;
    const char *event_ring;
    const char *metrics;
    const char *engine; /* "soth-mitm" | "mitmproxy" */
    const char *bundle; /* --bundle FILE: replaces soth.bundle */
};

/**
 * Build the effective config: embedded defaults, then the JSON file at `path` (NULL = none),
 * then `cli` (may be NULL). On success returns 0 and *out (refs = 1). On failure returns
 * SOTH_E_CONFIG and writes one line "config: <key.path>: <what is wrong>" (no newline) into
 * err (err_len bytes), e.g. "config: tls.leaf_cache_size: expected integer >= 1, got -3".
 */
int soth_config_load(const char *path, const struct soth_cli_overrides *cli,
                     struct soth_config **out, char *err, size_t err_len);

/**
 * As soth_config_load, from JSON text in memory (need not be NUL-terminated), without
 * overrides (tests, fuzzing; touches no file). JSON syntax errors read
 * "config: (text): line L, column C: <jansson message>".
 */
int soth_config_load_text(const char *text, size_t len, struct soth_config **out, char *err,
                          size_t err_len);

/**
 * The snapshot to publish on SIGHUP. Loads `path` with `cli` like soth_config_load (pass the
 * same flags as at startup) and validates it the same way, then keeps from `cur`, the running
 * snapshot, everything that only takes effect at startup, so the new snapshot describes what
 * actually runs: listen (including a port the kernel chose), mode, workers, http2_*,
 * http3_passthrough, tls, events, metrics. Only ignore_hosts, policy, identities, resolve and
 * timeouts come from the file. *restart_needed (may be NULL) is set when the file or flags also
 * change a startup-only setting, so the caller can log that it waits for a restart. Returns 0 and
 * *out (refs = 1), or SOTH_E_CONFIG with the error line in err and *out NULL; `cur` is not modified
 * either way.
 */
int soth_config_reload(const struct soth_config *cur, const char *path,
                       const struct soth_cli_overrides *cli, struct soth_config **out,
                       bool *restart_needed, char *err, size_t err_len);

/**
 * The effective config as pretty JSON text (malloc'ed, caller frees; NULL when out of
 * memory): every key of docs/config.md in its order, null where unset; a route's password is
 * printed as "(set)" (so such a text loads back with that password). tls.ca_dir and
 * events.ring_path are printed as configured (null = the default path below). The text loads back
 * to the same config.
 */
char *soth_config_to_json(const struct soth_config *cfg);

/**
 * Default paths, resolved from the environment at each call (malloc'ed strings, caller
 * frees; NULL when out of memory). CA dir: $XDG_DATA_HOME/soth-mitm, else
 * $HOME/.local/share/soth-mitm. Ring: $XDG_RUNTIME_DIR/soth-mitm/events.ring, else
 * /tmp/soth-mitm-$UID/events.ring. An XDG variable that is not an absolute path is ignored
 * (XDG Base Directory spec).
 */
char *soth_config_default_ca_dir(void);
char *soth_config_default_ring_path(void);

/**
 * Reference counting. A snapshot is immutable once loaded; every holder (the main thread,
 * each worker, anything that must outlive a reload) owns one reference. ref returns cfg with
 * one more reference (atomic, any thread). unref drops one (NULL is a no-op); the last unref
 * frees the snapshot and everything it points to, on whichever thread makes it.
 */
struct soth_config *soth_config_ref(struct soth_config *cfg);
void soth_config_unref(struct soth_config *cfg);

/**
 * SIGHUP publication slot: a one-entry, lock-free mailbox holding the newest snapshot a
 * consumer has not yet taken. Give each worker its own slot (the ctl_cfg idea of core/).
 *
 * Rule: whoever moves a pointer out of the slot owns the reference that came with it. Both
 * sides only ever atomically exchange the pointer, so no snapshot is read after its last
 * unref and none leaks:
 *  - the reloader builds a new snapshot, then for each worker slot calls
 *    soth_config_slot_publish(slot, soth_config_ref(cfg)), wakes the worker, and finally
 *    drops its own reference with soth_config_unref(cfg);
 *  - a worker keeps one reference to the snapshot it runs on (w->cfg). At a safe point (the
 *    top of its loop, never in the middle of a callback that holds pointers into w->cfg)
 *    it calls soth_config_slot_take(); on non-NULL it builds what it derives from the config
 *    (policy), swaps w->cfg, and unrefs the old one. Flows that keep pointers into a
 *    snapshot past the safe point take their own reference;
 *  - the old snapshot is freed by its last unref (the last worker to switch, or the main
 *    thread), never by the publisher while a worker may still read it.
 * Two reloads before a worker looks: the second publish unrefs the untaken first one, so
 * the worker only ever sees the newest. Exchanges are acq_rel: everything written while
 * building the snapshot is visible to the thread that takes it.
 */
struct soth_config_slot {
    _Atomic(struct soth_config *) pending; /* newest untaken snapshot, owns a ref; or NULL */
};

/** Empty slot. */
void soth_config_slot_init(struct soth_config_slot *slot);

/** Put cfg in the slot, taking over the caller's reference (cfg may be NULL to clear). An
 *  untaken snapshot already there is unreferenced. Any thread; lock-free. */
void soth_config_slot_publish(struct soth_config_slot *slot, struct soth_config *cfg);

/** Take the pending snapshot out of the slot: returns it with the reference it carried
 *  (the caller must unref it eventually), or NULL when nothing new was published. */
struct soth_config *soth_config_slot_take(struct soth_config_slot *slot);

/** Drop whatever is still pending (shutdown). The slot may be reused after init. */
void soth_config_slot_dispose(struct soth_config_slot *slot);

/**
 * Checks the bundle compiler (soth/bundle.h) shares with the loader, so a bundle and a config
 * accept the same text: a policy.rules[].host glob, and an ignore_hosts regular expression
 * (with the guard against regcomp blow-up). Return 0, or -1 with the reason in why.
 */
int soth_config_check_glob(const char *glob, char *why, size_t why_len);
int soth_config_check_regex(const char *re, char *why, size_t why_len);

/**
 * Parse "HOST:PORT" or "[IPV6]:PORT" (port 0..65535, decimal, no leading zero) into hp.
 * HOST is a name or an IPv4 literal; a bracketed host must be an IPv6 literal. Numeric hosts
 * fill hp->addr/addr_len (port included); names leave addr_len 0. On success hp->host is
 * malloc'ed (release with soth_hostport_dispose). Returns 0, or SOTH_E_CONFIG with a reason
 * (without the "config: key:" prefix) in err and hp zeroed (dispose is then a no-op).
 */
/**
 * Parse an IPv4 or IPv6 CIDR ("10.20.0.0/16", "fd00:20::/32"; a bare address is a /32 or
 * /128). Host bits must be zero. Returns 0, or SOTH_E_CONFIG with a reason in err.
 */
int soth_cidr_parse(const char *text, struct soth_cidr *out, char *err, size_t err_len);

/** Does the CIDR hold the address (AF_INET / AF_INET6; an IPv4-mapped IPv6 address is
 *  matched as IPv4)? */
bool soth_cidr_contains(const struct soth_cidr *c, const struct sockaddr *sa);

int soth_hostport_parse(const char *text, struct soth_hostport *hp, char *err, size_t err_len);
void soth_hostport_dispose(struct soth_hostport *hp);

#endif
