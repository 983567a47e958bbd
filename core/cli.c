/* The soth-mitm program: command line, config, signals (docs/cli.md). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/bundle.h"
#include "soth/config.h"
#include "soth/core.h"
#include "soth/tls.h"

#include "mitmengine.h"
#include "notify.h"

static const char usage[] =
    "usage: soth-mitm [--config FILE] [--listen HOST:PORT] [--mode MODE] [--workers N]\n"
    "                 [--ca-dir DIR] [--event-ring PATH] [--metrics HOST:PORT]\n"
    "                 [--bundle FILE]\n"
    "       soth-mitm --check-config FILE\n"
    "       soth-mitm --check-bundle FILE\n"
    "       soth-mitm --version | --help\n"
    "\n"
    "A TLS-intercepting HTTP proxy: per-core io_uring workers, structured event stream.\n"
    "\n"
    "  --config FILE        JSON config (docs/config.md); flags override it\n"
    "  --listen HOST:PORT   listen address [127.0.0.1:8080]\n"
    "  --mode MODE          regular | transparent | socks5 | reverse:SCHEME://HOST:PORT\n"
    "                       [regular]\n"
    "  --workers N          worker threads, one per core; 0 = one per online CPU [0]\n"
    "  --ca-dir DIR         where the CA lives [$XDG_DATA_HOME/soth-mitm]\n"
    "  --event-ring PATH    binary event ring file [$XDG_RUNTIME_DIR/soth-mitm/events.ring]\n"
    "  --metrics HOST:PORT  serve GET /metrics (Prometheus text)\n"
    "  --engine ENGINE      soth-mitm (native) | mitmproxy (mitmdump as a child, docs/bridge.md)\n"
    "                       [soth-mitm]\n"
    "  --bundle FILE        SOTH bundle (docs/bundles.md): replaces identities, ignore_hosts\n"
    "                       and policy of the config; re-read on SIGHUP\n"
    "  --check-config FILE  validate FILE, print the effective config as JSON, exit 0 or 2\n"
    "  --check-bundle FILE  compile the bundle FILE, print the config it gives as JSON,\n"
    "                       exit 0 or 2\n"
    "  --log-level LEVEL    error | warn | info | debug [info]\n"
    "  --version            print the version\n"
    "  --help               this text\n"
    "\n"
    "Read events with: soth-mitm-tail PATH\n";

enum {
    OPT_CONFIG = 256,
    OPT_LISTEN,
    OPT_MODE,
    OPT_WORKERS,
    OPT_CA_DIR,
    OPT_EVENT_RING,
    OPT_METRICS,
    OPT_CHECK,
    OPT_VERSION,
    OPT_HELP,
    OPT_LOG_LEVEL,
    OPT_ENGINE,
    OPT_BUNDLE,
    OPT_CHECK_BUNDLE
};

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "soth-mitm: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see soth-mitm --help)\n");
    return 2;
}

static int parse_workers(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > 1024)
        return -1;
    *out = (int)v;
    return 0;
}

static int run(struct soth_config *cfg, const struct soth_cli_overrides *cli)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    /* Blocked before any thread starts, so every thread inherits the mask. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    struct soth_tls_caps caps;
    soth_tls_self_check(&caps, err, sizeof(err));
    SOTH_LOG(caps.aesni_built && caps.aesni_cpu ? SOTH_LOG_INFO : SOTH_LOG_WARN, -1, 0, "%s", err);
    struct soth_engine *e = soth_engine_start(cfg, err, sizeof(err));
    if (e == NULL) {
        fprintf(stderr, "soth-mitm: %s\n", err);
        return 1;
    }
    const char *h = cfg->listen.host;
    bool v6 = strchr(h, ':') != NULL;
    fprintf(stderr, "soth-mitm: listening on %s%s%s:%u (mode %s, %u workers, events %s)\n",
            v6 ? "[" : "", h, v6 ? "]" : "", cfg->listen.port, cfg->mode_text,
            soth_engine_workers(e), soth_engine_ring_path(e));
    fflush(stderr);
    soth_notify(SOTH_NOTIFY_READY);

    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        if (sig == -1) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (sig == SIGHUP) {
            soth_notify(SOTH_NOTIFY_RELOADING);
            const char *path = getenv("SOTH_MITM_CONFIG_PATH");
            const char *bundle = cli->bundle ? cli->bundle : cfg->soth.bundle;
            SOTH_LOG(SOTH_LOG_INFO, -1, 0, "SIGHUP: reloading policy from %s%s%s",
                     path ? path : "(defaults)", bundle ? " and bundle " : "",
                     bundle ? bundle : "");
            struct soth_config *ncfg = NULL;
            bool restart = false;
            /* Same file, same command-line flags: only the reloadable keys may change. */
            if (soth_config_reload(cfg, path, cli, &ncfg, &restart, err, sizeof(err)) < 0) {
                SOTH_LOG(SOTH_LOG_ERROR, -1, 0, "reload failed, keeping the old policy: %s", err);
                soth_notify(SOTH_NOTIFY_READY);
                continue;
            }
            if (restart)
                SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                         "reload: some changed keys take effect only after a restart");
            soth_engine_reload(e, ncfg);
            soth_notify(SOTH_NOTIFY_READY);
            continue;
        }
        if (sig == SIGUSR1) {
            SOTH_LOG(SOTH_LOG_INFO, -1, 0, "SIGUSR1: flushing leaf certificate caches");
            soth_engine_flush_leaves(e);
            continue;
        }
        SOTH_LOG(SOTH_LOG_INFO, -1, 0, "%s: draining (up to %u ms)",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->timeouts.drain_ms);
        soth_notify(SOTH_NOTIFY_STOPPING);
        break;
    }
    soth_engine_stop(e);
    return 0;
}

int soth_cli_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, OPT_CONFIG},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"mode", required_argument, NULL, OPT_MODE},
        {"workers", required_argument, NULL, OPT_WORKERS},
        {"ca-dir", required_argument, NULL, OPT_CA_DIR},
        {"event-ring", required_argument, NULL, OPT_EVENT_RING},
        {"metrics", required_argument, NULL, OPT_METRICS},
        {"check-config", required_argument, NULL, OPT_CHECK},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"engine", required_argument, NULL, OPT_ENGINE},
        {"bundle", required_argument, NULL, OPT_BUNDLE},
        {"check-bundle", required_argument, NULL, OPT_CHECK_BUNDLE},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct soth_cli_overrides cli = {.workers = -1};
    const char *config_path = NULL, *check_path = NULL, *check_bundle = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            config_path = optarg;
            break;
        case OPT_LISTEN:
            cli.listen = optarg;
            break;
        case OPT_MODE:
            cli.mode = optarg;
            break;
        case OPT_WORKERS:
            if (parse_workers(optarg, &cli.workers) < 0)
                return bad_usage("--workers: expected an integer 0..1024, got \"%s\"", optarg);
            break;
        case OPT_CA_DIR:
            cli.ca_dir = optarg;
            break;
        case OPT_EVENT_RING:
            cli.event_ring = optarg;
            break;
        case OPT_METRICS:
            cli.metrics = optarg;
            break;
        case OPT_CHECK:
            check_path = optarg;
            break;
        case OPT_BUNDLE:
            cli.bundle = optarg;
            break;
        case OPT_CHECK_BUNDLE:
            check_bundle = optarg;
            break;
        case OPT_ENGINE:
            if (strcmp(optarg, "soth-mitm") != 0 && strcmp(optarg, "mitmproxy") != 0)
                return bad_usage("--engine: expected soth-mitm or mitmproxy, got \"%s\"", optarg);
            cli.engine = optarg;
            break;
        case OPT_LOG_LEVEL: {
            static const char *const names[] = {"error", "warn", "info", "debug"};
            int lvl = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(optarg, names[i]) == 0)
                    lvl = i;
            if (lvl < 0)
                return bad_usage("--log-level: expected error|warn|info|debug, got \"%s\"", optarg);
            soth_log_level = lvl;
            break;
        }
        case OPT_VERSION:
            printf("soth-mitm %s\n", SOTH_VERSION_STRING);
            return 0;
        case OPT_HELP:
            fputs(usage, stdout);
            return 0;
        default:
            return bad_usage("unknown or incomplete option \"%s\"", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad_usage("unexpected argument \"%s\"", argv[optind]);

    char err[512];
    struct soth_config *cfg = NULL;
    if (check_bundle != NULL) {
        /* docs/bundles.md: the bundle alone, route passwords not printed */
        char *json = NULL;
        if (soth_bundle_compile(check_bundle, SOTH_BUNDLE_F_REDACT, &json, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        printf("%s\n", json);
        free(json);
        return 0;
    }
    if (check_path != NULL) {
        if (soth_config_load(check_path, &cli, &cfg, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        if (cfg->engine == SOTH_ENGINE_MITMPROXY &&
            soth_mitmengine_check(cfg, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            soth_config_unref(cfg);
            return 2;
        }
        char *json = soth_config_to_json(cfg);
        if (json)
            printf("%s\n", json);
        free(json);
        soth_config_unref(cfg);
        return 0;
    }
    if (soth_config_load(config_path, &cli, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    /* SIGHUP re-reads the same file. */
    if (config_path)
        setenv("SOTH_MITM_CONFIG_PATH", config_path, 1);
    int rc;
    if (cfg->engine == SOTH_ENGINE_MITMPROXY) {
        /* docs/bridge.md, "The mitmproxy engine" */
        if (soth_mitmengine_check(cfg, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            soth_config_unref(cfg);
            return 2;
        }
        rc = soth_mitmengine_run(cfg, &cli);
    } else {
        rc = run(cfg, &cli);
    }
    soth_config_unref(cfg);
    return rc;
}
