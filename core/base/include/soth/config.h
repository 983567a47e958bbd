/*
 * The effective configuration (SPEC "Config file"), loaded once into an immutable,
 * reference-counted snapshot. Workers read it without locks; SIGHUP builds a new snapshot
 * and publishes it (see struct soth_config_slot); a worker switches at its next safe
 * point and drops its reference to the old one.
 */
#ifndef SOTH_CONFIG_H
#define SOTH_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum soth_mode { SOTH_MODE_REGULAR = 0, SOTH_MODE_REVERSE, SOTH_MODE_TRANSPARENT, SOTH_MODE_COUNT };
enum soth_action {
    SOTH_ACTION_INTERCEPT = 0,
    SOTH_ACTION_TUNNEL,
    SOTH_ACTION_BLOCK,
    SOTH_ACTION_COUNT
};
enum soth_sink_type { SOTH_SINK_JSONL = 0, SOTH_SINK_UDS, SOTH_SINK_COUNT };

extern const char *const soth_mode_names[SOTH_MODE_COUNT];     /* "regular", ... */
extern const char *const soth_action_names[SOTH_ACTION_COUNT]; /* "intercept", ... */
extern const char *const soth_sink_type_names[SOTH_SINK_COUNT];

/** A parsed HOST:PORT (listen, metrics.listen). host is the text as given (no brackets). */
struct soth_hostport {
    char *host;
    uint16_t port;
    struct sockaddr_storage addr; /* numeric host resolved with AI_NUMERICHOST, else AF_UNSPEC */
    socklen_t addr_len;           /* 0 when host is a name, not a literal address */
};

struct soth_rule {
    char *host; /* glob text as given, e.g. "*.bank.example" (without the port) */
    int port;   /* -1 = any port */
    enum soth_action action;
    char *text; /* the rule as written in the config ("ads.example:443"), for events */
};

struct soth_sink_cfg {
    enum soth_sink_type type;
    char *path;
};

struct soth_resolve_entry {
    char *name;
    char *addr; /* numeric IPv4 or IPv6 address text */
};

struct soth_config {
    atomic_uint refs;

    struct soth_hostport listen;
    char *listen_text; /* as written: "127.0.0.1:8080" */
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
    struct soth_rule *rules;
    size_t n_rules;

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
        struct soth_sink_cfg *sinks;
        size_t n_sinks;
    } events;

    struct {
        uint32_t connect_ms, tls_handshake_ms, request_header_ms, idle_ms, drain_ms;
    } timeouts;

    struct {
        char *listen_text; /* NULL = no metrics endpoint */
        struct soth_hostport listen;
    } metrics;

    struct soth_resolve_entry *resolve;
    size_t n_resolve;
};

/** Command-line overrides; NULL / 0 fields mean "not given". */
struct soth_cli_overrides {
    const char *listen;
    const char *mode;
    int workers; /* -1 = not given */
    const char *ca_dir;
    const char *event_ring;
    const char *metrics;
};

/**
 * Build the effective config: embedded defaults, then the JSON file at `path` (NULL = none),
 * then `cli` (may be NULL). On success returns 0 and *out (refs = 1). On failure returns
 * SOTH_E_CONFIG and writes one line "config: <key.path>: <what is wrong>" (no newline) into
 * err (err_len bytes), e.g. "config: tls.leaf_cache_size: expected integer >= 1, got -3".
 */
int soth_config_load(const char *path, const struct soth_cli_overrides *cli,
                     struct soth_config **out, char *err, size_t err_len);

/** As soth_config_load, from JSON text in memory, without overrides (tests, fuzzing). */
int soth_config_load_text(const char *text, size_t len, struct soth_config **out, char *err,
                          size_t err_len);

/** The effective config as pretty JSON text (malloc'ed, caller frees); every SPEC key present. */
char *soth_config_to_json(const struct soth_config *cfg);

/** Default paths, resolved from the environment (malloc'ed strings). */
char *soth_config_default_ca_dir(void);
char *soth_config_default_ring_path(void);

/** Reference counting for SIGHUP snapshots. */
struct soth_config *soth_config_ref(struct soth_config *cfg);
void soth_config_unref(struct soth_config *cfg);

/**
 * Parse "HOST:PORT", "[v6]:PORT" into hp (strings malloc'ed). Returns 0 or SOTH_E_CONFIG with
 * a reason in err.
 */
int soth_hostport_parse(const char *text, struct soth_hostport *hp, char *err, size_t err_len);
void soth_hostport_dispose(struct soth_hostport *hp);

#endif
