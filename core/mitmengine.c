/*
 * --engine mitmproxy (docs/bridge.md, "The mitmproxy engine"): mitmdump as a child process
 * behind the bridge. Start-up only code plus one thread relaying mitmdump's output to our log;
 * nothing here runs on a worker.
 */
#include "mitmengine.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "soth/base.h"
#include "soth/core.h"
#include "soth/tls.h"

#include "notify.h"

#define READY_TIMEOUT_MS 30000 /* mitmdump starts in 2-3 s; a loaded machine gets more */
#define TAIL_LEN         2048  /* mitmdump's last output, quoted when it dies early */

/* ---- refusing what mitmdump cannot do */

int soth_mitmengine_check(const struct soth_config *cfg, char *err, size_t err_len)
{
    struct soth_config *d = NULL;
    char derr[256];
    if (soth_config_load_text("{}", 2, &d, derr, sizeof(derr)) < 0) {
        snprintf(err, err_len, "config: (defaults): %s", derr);
        return -1;
    }
    const char *key = NULL;
    const char *why = "";
    if (cfg->workers != d->workers)
        key = "workers", why = " (mitmdump is one process)";
    else if (cfg->busy_poll_us != d->busy_poll_us)
        key = "busy_poll_us", why = " (no workers of ours carry the traffic)";
    else if (cfg->wake_batch_us != d->wake_batch_us)
        key = "wake_batch_us", why = " (no workers of ours carry the traffic)";
    else if (cfg->http2_max_header_list_size != d->http2_max_header_list_size)
        key = "http2_max_header_list_size";
    else if (cfg->mode == SOTH_MODE_TRANSPARENT && cfg->http3_passthrough)
        key = "http3_passthrough", why = " (no QUIC relay; set it to false)";
    else if (cfg->quic.idle_ms != d->quic.idle_ms)
        key = "quic.idle_ms";
    else if (cfg->quic.max_flows != d->quic.max_flows)
        key = "quic.max_flows";
    else if (cfg->tls.leaf_cache_size != d->tls.leaf_cache_size)
        key = "tls.leaf_cache_size";
    else if (cfg->tls.leaf_validity_days != d->tls.leaf_validity_days)
        key = "tls.leaf_validity_days";
    else if (cfg->tls.ca_rotate_after_days != d->tls.ca_rotate_after_days)
        key = "tls.ca_rotate_after_days";
    else if (cfg->events.ws_turn_idle_ms != d->events.ws_turn_idle_ms)
        key = "events.ws_turn_idle_ms", why = " (no WebSocket turns from mitmproxy)";
    else if (cfg->timeouts.connect_ms != d->timeouts.connect_ms)
        key = "timeouts.connect_ms";
    else if (cfg->timeouts.tls_handshake_ms != d->timeouts.tls_handshake_ms)
        key = "timeouts.tls_handshake_ms";
    else if (cfg->timeouts.request_header_ms != d->timeouts.request_header_ms)
        key = "timeouts.request_header_ms";
    else if (cfg->timeouts.response_header_ms != d->timeouts.response_header_ms)
        key = "timeouts.response_header_ms";
    if (key == NULL &&
        (cfg->identities.require || cfg->identities.n_users > 0 || cfg->identities.n_networks > 0))
        key = "identities", why = " (identities and budgets are the native engine's)";
    for (size_t i = 0; key == NULL && i < cfg->n_rules; i++)
        if (cfg->rules[i].n_identities > 0 || cfg->rules[i].budget.window_s > 0)
            key = "policy", why = " (rules with identities or a budget)";
    if (key == NULL && (cfg->mode == SOTH_MODE_TRANSPARENT || cfg->mode == SOTH_MODE_SOCKS5)) {
        /* The addon can refuse a request (403) but not close a connection before mitmproxy
         * relays it: block needs a request to answer. */
        bool block = cfg->policy_default == SOTH_ACTION_BLOCK;
        for (size_t i = 0; i < cfg->n_rules; i++)
            block = block || cfg->rules[i].action == SOTH_ACTION_BLOCK;
        if (block)
            key = "policy", why = " (block in transparent and socks5 modes)";
    }
    if (key == NULL) {
        /* docs/config.md "Routes": mitmproxy would go direct, around the upstream proxy. */
        bool routed = soth_route_is_upstream(&cfg->default_route);
        for (size_t i = 0; i < cfg->n_rules; i++)
            routed = routed || soth_route_is_upstream(&cfg->rules[i].route);
        if (routed)
            key = "policy", why = " (routes through an upstream proxy)";
    }
    soth_config_unref(d);
    if (key == NULL)
        return 0;
    snprintf(err, err_len, "config: %s: not supported by --engine mitmproxy%s", key, why);
    return -1;
}

/* ---- the private runtime directory */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *dir)
{
    if (dir[0] != '\0')
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Next to the event ring file (events.ring_path, else $XDG_RUNTIME_DIR/soth-mitm, else
 * /tmp/soth-mitm-$UID): a directory this process may write, as the ring must be there. */
static int make_private_dir(const struct soth_config *cfg, char *out, size_t out_len, char *err,
                            size_t err_len)
{
    char *ring = cfg->events.ring_path != NULL ? strdup(cfg->events.ring_path)
                                               : soth_config_default_ring_path();
    if (ring == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    char *slash = strrchr(ring, '/');
    const char *parent = ring;
    if (slash == NULL)
        parent = ".";
    else if (slash == ring)
        parent = "/";
    else
        *slash = '\0';
    if (mkdir(parent, 0700) == -1 && errno != EEXIST) {
        snprintf(err, err_len, "mkdir %s: %s", parent, strerror(errno));
        free(ring);
        return -1;
    }
    int n = snprintf(out, out_len, "%s/mitmproxy.XXXXXX", parent);
    free(ring);
    if (n < 0 || (size_t)n >= out_len) {
        snprintf(err, err_len, "runtime directory path too long");
        return -1;
    }
    /* sun_path holds 108 bytes: leave room for "/bridge.sock" */
    if (cfg->bridge.listen == NULL && n > 90) {
        snprintf(err, err_len,
                 "%.*s: too long a path for the bridge socket in it: set bridge.listen", n, out);
        return -1;
    }
    if (mkdtemp(out) == NULL) {
        snprintf(err, err_len, "mkdtemp %s: %s", out, strerror(errno));
        return -1;
    }
    return 0;
}

static int append_file(FILE *out, const char *path, char *err, size_t err_len)
{
    FILE *in = fopen(path, "re");
    if (in == NULL) {
        snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char buf[4096];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    if (ferror(in))
        rc = -1;
    fclose(in);
    if (rc < 0)
        snprintf(err, err_len, "cannot copy %s: %s", path, strerror(errno));
    return rc;
}

/* mitmproxy reads its CA from CONFDIR/mitmproxy-ca.pem: the key and the certificate in one
 * PEM file. Built from soth-mitm's CA (generated on first run, as the native engine does). */
static int write_mitm_ca(const struct soth_config *cfg, const char *confdir, char *err,
                         size_t err_len)
{
    if (mkdir(confdir, 0700) == -1) {
        snprintf(err, err_len, "mkdir %s: %s", confdir, strerror(errno));
        return -1;
    }
    char *ca_dir = cfg->tls.ca_dir ? strdup(cfg->tls.ca_dir) : soth_config_default_ca_dir();
    if (ca_dir == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    struct soth_tls_ca_params cap = {.ca_dir = ca_dir,
                                     .ca_cert = cfg->tls.ca_cert,
                                     .ca_key = cfg->tls.ca_key,
                                     .rotate_after_days = cfg->tls.ca_rotate_after_days};
    struct soth_tls_ca *ca = NULL;
    int rc = soth_tls_global_init();
    if (rc == 0)
        rc = soth_tls_ca_load_or_create(&cap, &ca, NULL, err, err_len);
    else
        snprintf(err, err_len, "TLS library initialisation failed");
    if (rc < 0) {
        free(ca_dir);
        return -1;
    }
    soth_tls_ca_free(ca);
    char cert[4096], key[4096], path[4096];
    if (cfg->tls.ca_cert != NULL) {
        snprintf(cert, sizeof(cert), "%s", cfg->tls.ca_cert);
        snprintf(key, sizeof(key), "%s", cfg->tls.ca_key);
    } else {
        snprintf(cert, sizeof(cert), "%s/%s", ca_dir, SOTH_TLS_CA_CERT_FILE);
        snprintf(key, sizeof(key), "%s/%s", ca_dir, SOTH_TLS_CA_KEY_FILE);
    }
    free(ca_dir);
    snprintf(path, sizeof(path), "%s/mitmproxy-ca.pem", confdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
        snprintf(err, err_len, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    FILE *out = fdopen(fd, "w");
    if (out == NULL) {
        close(fd);
        snprintf(err, err_len, "fdopen: %s", strerror(errno));
        return -1;
    }
    rc = append_file(out, key, err, err_len);
    if (rc == 0)
        rc = append_file(out, cert, err, err_len);
    if (fclose(out) != 0 && rc == 0) {
        snprintf(err, err_len, "cannot write %s: %s", path, strerror(errno));
        rc = -1;
    }
    return rc;
}

/* The policy file the addon reads (soth_policy): the effective config itself; the addon takes
 * ignore_hosts, policy and resolve from it. Written to a temporary name and renamed, so the
 * addon never reads half a file after a reload. */
static int write_policy(const struct soth_config *cfg, const char *path, char *err, size_t err_len)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    char *json = soth_config_to_json(cfg);
    if (json == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd != -1) {
        size_t len = strlen(json), off = 0;
        while (off < len) {
            ssize_t w = write(fd, json + off, len - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        rc = off == len ? 0 : -1;
        close(fd);
    }
    free(json);
    if (rc == 0 && rename(tmp, path) == -1)
        rc = -1;
    if (rc < 0)
        snprintf(err, err_len, "cannot write %s: %s", path, strerror(errno));
    return rc;
}

/* ---- finding mitmdump and the addon */

static int find_on_path(const char *name, char *out, size_t out_len)
{
    const char *path = getenv("PATH");
    if (path == NULL || path[0] == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path != '\0') {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        if (len > 0 && len + strlen(name) + 2 <= out_len) {
            memcpy(out, path, len);
            out[len] = '/';
            memcpy(out + len + 1, name, strlen(name) + 1);
            if (access(out, X_OK) == 0)
                return 0;
        }
        path += len;
        if (*path == ':')
            path++;
    }
    return -1;
}

/* $SOTH_MITM_ADDON; else the source tree's copy when this binary is the build tree's; else the
 * installed one (docs/bridge.md, "The mitmproxy engine"). */
static const char *find_addon(void)
{
    const char *env = getenv("SOTH_MITM_ADDON");
    if (env != NULL && env[0] != '\0')
        return env;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        size_t blen = strlen(SOTH_BUILD_DIR);
        if (strncmp(exe, SOTH_BUILD_DIR, blen) == 0 && exe[blen] == '/' &&
            access(SOTH_ADDON_SOURCE, R_OK) == 0)
            return SOTH_ADDON_SOURCE;
    }
    return SOTH_ADDON_INSTALLED;
}

/* ---- mitmdump's output: relayed to our log, its tail kept for a failure message */

struct child_out {
    int fd;
    pthread_mutex_t mu;
    char tail[TAIL_LEN];
    size_t tail_len;
};

static void tail_add(struct child_out *o, const char *line, size_t len)
{
    pthread_mutex_lock(&o->mu);
    if (len + 1 > TAIL_LEN) {
        line += len - (TAIL_LEN - 1);
        len = TAIL_LEN - 1;
    }
    if (o->tail_len + len + 1 > TAIL_LEN) {
        size_t drop = o->tail_len + len + 1 - TAIL_LEN;
        memmove(o->tail, o->tail + drop, o->tail_len - drop);
        o->tail_len -= drop;
    }
    memcpy(o->tail + o->tail_len, line, len);
    o->tail[o->tail_len + len] = '\n';
    o->tail_len += len + 1;
    pthread_mutex_unlock(&o->mu);
}

static void *relay_output(void *arg)
{
    struct child_out *o = arg;
    char buf[8192];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(o->fd, buf + have, sizeof(buf) - have);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', have - (size_t)(start - buf))) != NULL) {
            size_t len = (size_t)(nl - start);
            if (len > 0) {
                SOTH_LOG(SOTH_LOG_INFO, -1, 0, "mitmdump: %.*s", (int)len, start);
                tail_add(o, start, len);
            }
            start = nl + 1;
        }
        have -= (size_t)(start - buf);
        memmove(buf, start, have);
        if (have == sizeof(buf)) { /* an endless line: log it in pieces */
            SOTH_LOG(SOTH_LOG_INFO, -1, 0, "mitmdump: %.*s", (int)have, buf);
            have = 0;
        }
    }
    return NULL;
}

/* ---- the child */

struct child {
    pid_t pid;
    int status;
    bool reaped;
};

extern char **environ;

/* The child's environment, built before fork (after it, in a threaded process, only
 * async-signal-safe calls): ours without the key log variables, plus what mitmdump needs. */
static char **child_env(const char *keylog)
{
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = calloc(n + 3, sizeof(char *));
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "SSLKEYLOGFILE=", 14) != 0 &&
            strncmp(environ[i], "MITMPROXY_SSLKEYLOGFILE=", 24) != 0 &&
            strncmp(environ[i], "PYTHONUNBUFFERED=", 17) != 0)
            env[k++] = environ[i];
    env[k++] = "PYTHONUNBUFFERED=1";
    if (keylog != NULL) {
        size_t len = strlen("MITMPROXY_SSLKEYLOGFILE=") + strlen(keylog) + 1;
        char *kv = malloc(len);
        if (kv == NULL) {
            free(env);
            return NULL;
        }
        snprintf(kv, len, "MITMPROXY_SSLKEYLOGFILE=%s", keylog);
        env[k++] = kv;
    }
    env[k] = NULL;
    return env;
}

static pid_t spawn(char *const argv[], char *const envp[], int out_fd, pid_t parent)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* child: die with soth-mitm, even when it is killed without a chance to stop us */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    int null = open("/dev/null", O_RDONLY);
    if (null != -1)
        dup2(null, 0);
    dup2(out_fd, 1);
    dup2(out_fd, 2);
    execve(argv[0], argv, envp);
    static const char msg[] = "exec mitmdump failed\n";
    ssize_t w = write(2, msg, sizeof(msg) - 1);
    (void)w;
    _exit(127);
}

static bool child_exited(struct child *c)
{
    if (c->reaped)
        return true;
    int st;
    pid_t r = waitpid(c->pid, &st, WNOHANG);
    if (r == c->pid) {
        c->reaped = true;
        c->status = st;
    }
    return c->reaped;
}

static void child_stop(struct child *c, uint32_t wait_ms)
{
    if (child_exited(c))
        return;
    kill(c->pid, SIGTERM);
    for (uint32_t t = 0; t < wait_ms; t += 20) {
        if (child_exited(c))
            return;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    SOTH_LOG(SOTH_LOG_WARN, -1, 0, "mitmdump did not exit within %u ms: killing it", wait_ms);
    kill(c->pid, SIGKILL);
    int st;
    if (waitpid(c->pid, &st, 0) == c->pid) {
        c->reaped = true;
        c->status = st;
    }
}

static void describe_status(int st, char *out, size_t len)
{
    if (WIFEXITED(st))
        snprintf(out, len, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(out, len, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(out, len, "status %d", st);
}

/* Ready once a socket listens on the port: read from /proc/net/tcp{,6} rather than by
 * connecting, which mitmproxy would report as a client (a flow of the event stream). */
static bool port_listens(const struct soth_hostport *hp, uint16_t port)
{
    const char *path = hp->addr.ss_family == AF_INET6 ? "/proc/net/tcp6" : "/proc/net/tcp";
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        char local[64];
        unsigned st;
        if (sscanf(line, " %*u: %63s %*s %x", local, &st) != 2 || st != 0x0A)
            continue;
        const char *colon = strrchr(local, ':');
        found = colon != NULL && strtoul(colon + 1, NULL, 16) == port;
    }
    fclose(f);
    return found;
}

/* Port 0 ("the kernel picks"): mitmdump must be told a port, so take one the kernel hands out
 * now and pass it on (another process could take it in between; then mitmdump fails to bind
 * and start-up fails with its message). */
static int pick_port(const struct soth_hostport *hp, uint16_t *port, char *err, size_t err_len)
{
    struct sockaddr_storage a = hp->addr;
    socklen_t alen = hp->addr_len;
    int fd = socket(a.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1 || bind(fd, (struct sockaddr *)&a, alen) == -1 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) == -1) {
        snprintf(err, err_len, "bind: %s", strerror(errno));
        if (fd != -1)
            close(fd);
        return -1;
    }
    close(fd);
    *port = ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port
                                          : ((struct sockaddr_in *)&a)->sin_port);
    return 0;
}

/* ---- run */

#define MAX_ARGS 48

int soth_mitmengine_run(struct soth_config *cfg, const struct soth_cli_overrides *cli)
{
    char err[512];
    char dir[4096] = "", confdir[4200], policy[4200], sock[4200];
    char mitmdump[4096];
    int rc = 1;
    struct soth_engine *e = NULL;
    struct child ch = {.pid = -1};
    struct child_out out = {.fd = -1};
    pthread_mutex_init(&out.mu, NULL);
    pthread_t relay;
    bool relay_started = false;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGCHLD);
    /* Blocked before any thread starts, so every thread inherits the mask. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cfg->listen.addr_len == 0) {
        fprintf(stderr, "soth-mitm: listen: %s is not a numeric address\n", cfg->listen.host);
        return 1;
    }
    if (find_on_path("mitmdump", mitmdump, sizeof(mitmdump)) < 0) {
        fprintf(stderr, "soth-mitm: --engine mitmproxy: mitmdump not found on PATH "
                        "(install mitmproxy)\n");
        return 1;
    }
    const char *addon = find_addon();
    if (access(addon, R_OK) != 0) {
        fprintf(stderr, "soth-mitm: --engine mitmproxy: cannot read the addon %s: %s\n", addon,
                strerror(errno));
        return 1;
    }
    if (make_private_dir(cfg, dir, sizeof(dir), err, sizeof(err)) < 0) {
        fprintf(stderr, "soth-mitm: %s\n", err);
        return 1;
    }
    snprintf(confdir, sizeof(confdir), "%s/confdir", dir);
    snprintf(policy, sizeof(policy), "%s/policy.json", dir);
    snprintf(sock, sizeof(sock), "%s/bridge.sock", dir);
    if (write_mitm_ca(cfg, confdir, err, sizeof(err)) < 0 ||
        write_policy(cfg, policy, err, sizeof(err)) < 0) {
        fprintf(stderr, "soth-mitm: %s\n", err);
        goto out_dir;
    }
    if (cfg->bridge.listen == NULL) {
        cfg->bridge.listen = strdup(sock);
        if (cfg->bridge.listen == NULL) {
            fprintf(stderr, "soth-mitm: out of memory\n");
            goto out_dir;
        }
    }
    uint16_t port = cfg->listen.port;
    if (port == 0) {
        if (pick_port(&cfg->listen, &port, err, sizeof(err)) < 0) {
            fprintf(stderr, "soth-mitm: %s\n", err);
            goto out_dir;
        }
        /* the running config describes what runs (docs/config.md, "Reload") */
        cfg->listen.port = port;
        if (cfg->listen.addr.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&cfg->listen.addr)->sin6_port = htons(port);
        else
            ((struct sockaddr_in *)&cfg->listen.addr)->sin_port = htons(port);
    }

    /* The bridge, telemetry, ring, sinks and metrics; no workers for this engine. */
    e = soth_engine_start(cfg, err, sizeof(err));
    if (e == NULL) {
        fprintf(stderr, "soth-mitm: %s\n", err);
        goto out_dir;
    }

    char a_port[16], a_bridge[4200], a_policy[4300], a_conf[4300], a_cap[64], a_mode[600], a_h2[32],
        a_insecure[32], a_trusted[4200], a_strip[48];
    snprintf(a_port, sizeof(a_port), "%u", port);
    snprintf(a_bridge, sizeof(a_bridge), "soth_bridge=%s", cfg->bridge.listen);
    snprintf(a_policy, sizeof(a_policy), "soth_policy=%s", policy);
    snprintf(a_conf, sizeof(a_conf), "confdir=%s", confdir);
    snprintf(a_cap, sizeof(a_cap), "soth_body_capture_bytes=%u", cfg->events.body_capture_bytes);
    snprintf(a_mode, sizeof(a_mode), "soth_mode=%s", cfg->mode_text);
    snprintf(a_h2, sizeof(a_h2), "http2=%s", cfg->http2_enabled ? "true" : "false");
    snprintf(a_insecure, sizeof(a_insecure), "ssl_insecure=%s",
             cfg->tls.upstream_verify ? "false" : "true");
    snprintf(a_strip, sizeof(a_strip), "soth_strip_alt_svc_h3=%s",
             cfg->http3_passthrough ? "false" : "true");
    const char *mode = cfg->mode == SOTH_MODE_REVERSE ? cfg->mode_text + strlen("reverse:") : NULL;
    char a_rev[600];
    if (mode != NULL)
        snprintf(a_rev, sizeof(a_rev), "reverse:%s", mode);
    char *argv[MAX_ARGS];
    int n = 0;
    argv[n++] = mitmdump;
    argv[n++] = "--listen-host";
    argv[n++] = cfg->listen.host;
    argv[n++] = "--listen-port";
    argv[n++] = a_port;
    argv[n++] = "--mode";
    argv[n++] = mode != NULL ? a_rev : (char *)soth_mode_names[cfg->mode];
    argv[n++] = "-s";
    argv[n++] = (char *)addon;
    argv[n++] = "--set";
    argv[n++] = a_conf;
    argv[n++] = "--set";
    argv[n++] = a_bridge;
    argv[n++] = "--set";
    argv[n++] = a_policy;
    argv[n++] = "--set";
    argv[n++] = a_cap;
    argv[n++] = "--set";
    argv[n++] = a_mode;
    argv[n++] = "--set";
    argv[n++] = a_strip;
    argv[n++] = "--set";
    argv[n++] = a_h2;
    argv[n++] = "--set";
    argv[n++] = a_insecure;
    if (cfg->tls.upstream_ca_file != NULL) {
        snprintf(a_trusted, sizeof(a_trusted), "ssl_verify_upstream_trusted_ca=%s",
                 cfg->tls.upstream_ca_file);
        argv[n++] = "--set";
        argv[n++] = a_trusted;
    }
    /* mitmdump's own flow log would duplicate the event stream: warnings and errors only */
    argv[n++] = "--set";
    argv[n++] = "flow_detail=0";
    argv[n++] = "--set";
    argv[n++] = "termlog_verbosity=warn";
    argv[n] = NULL;

    const char *klog = cfg->tls.keylog_file;
    if (klog == NULL && getenv("SSLKEYLOGFILE") != NULL && getenv("SSLKEYLOGFILE")[0] != '\0')
        klog = getenv("SSLKEYLOGFILE");
    char **envp = child_env(klog);
    int pfd[2];
    if (envp == NULL || pipe2(pfd, O_CLOEXEC) == -1) {
        fprintf(stderr, "soth-mitm: pipe: %s\n", strerror(errno));
        goto out_engine;
    }
    ch.pid = spawn(argv, envp, pfd[1], getpid());
    close(pfd[1]);
    if (klog != NULL) /* the last entry is the one child_env allocated */
        for (size_t i = 0; envp[i] != NULL; i++)
            if (envp[i + 1] == NULL)
                free(envp[i]);
    free(envp);
    out.fd = pfd[0];
    if (ch.pid == -1) {
        fprintf(stderr, "soth-mitm: fork: %s\n", strerror(errno));
        close(out.fd);
        goto out_engine;
    }
    relay_started = pthread_create(&relay, NULL, relay_output, &out) == 0;
    SOTH_LOG(SOTH_LOG_INFO, -1, 0, "engine mitmproxy: %s (pid %d) with %s, bridge %s", mitmdump,
             (int)ch.pid, addon, cfg->bridge.listen);

    /* Ready when mitmdump accepts on the listen address. */
    bool ready = false;
    for (int t = 0; t < READY_TIMEOUT_MS && !ready; t += 50) {
        if (child_exited(&ch))
            break;
        ready = port_listens(&cfg->listen, port);
        if (!ready) {
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (!ready) {
        char how[64] = "did not listen within 30 s";
        if (!child_exited(&ch))
            child_stop(&ch, 3000);
        else
            describe_status(ch.status, how, sizeof(how));
        if (relay_started) {
            pthread_join(relay, NULL);
            relay_started = false;
        }
        pthread_mutex_lock(&out.mu);
        fprintf(stderr, "soth-mitm: mitmdump %s; its last output:\n%.*s", how, (int)out.tail_len,
                out.tail);
        pthread_mutex_unlock(&out.mu);
        goto out_engine;
    }
    const char *h = cfg->listen.host;
    bool v6 = strchr(h, ':') != NULL;
    fprintf(stderr, "soth-mitm: listening on %s%s%s:%u (mode %s, 0 workers, events %s)\n",
            v6 ? "[" : "", h, v6 ? "]" : "", port, cfg->mode_text, soth_engine_ring_path(e));
    fflush(stderr);
    soth_notify(SOTH_NOTIFY_READY);

    for (;;) {
        struct timespec tick = {1, 0};
        int sig = sigtimedwait(&set, NULL, &tick);
        if (child_exited(&ch)) {
            char how[64];
            describe_status(ch.status, how, sizeof(how));
            SOTH_LOG(SOTH_LOG_ERROR, -1, 0, "mitmdump exited unexpectedly (%s): stopping", how);
            rc = 1;
            break;
        }
        if (sig == -1 || sig == SIGCHLD)
            continue;
        if (sig == SIGHUP) {
            /* The addon re-reads its policy file when it changes: no restart of mitmdump, no
             * connection dropped. */
            soth_notify(SOTH_NOTIFY_RELOADING);
            const char *path = getenv("SOTH_MITM_CONFIG_PATH");
            struct soth_config *ncfg = NULL;
            bool restart = false;
            if (soth_config_reload(cfg, path, cli, &ncfg, &restart, err, sizeof(err)) < 0 ||
                soth_mitmengine_check(ncfg, err, sizeof(err)) < 0 ||
                write_policy(ncfg, policy, err, sizeof(err)) < 0) {
                SOTH_LOG(SOTH_LOG_ERROR, -1, 0, "reload failed, keeping the old policy: %s", err);
            } else {
                SOTH_LOG(SOTH_LOG_INFO, -1, 0, "SIGHUP: policy reloaded from %s",
                         path ? path : "(defaults)");
                if (restart)
                    SOTH_LOG(SOTH_LOG_WARN, -1, 0,
                             "reload: some changed keys take effect only after a restart");
                soth_engine_reload(e, ncfg);
                ncfg = NULL;
            }
            soth_config_unref(ncfg);
            soth_notify(SOTH_NOTIFY_READY);
            continue;
        }
        if (sig == SIGUSR1) {
            SOTH_LOG(SOTH_LOG_INFO, -1, 0, "SIGUSR1: mitmproxy keeps its own leaf cache");
            continue;
        }
        SOTH_LOG(SOTH_LOG_INFO, -1, 0, "%s: stopping mitmdump (up to %u ms)",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->timeouts.drain_ms + 5000);
        soth_notify(SOTH_NOTIFY_STOPPING);
        rc = 0;
        break;
    }
    child_stop(&ch, cfg->timeouts.drain_ms + 5000);

out_engine:
    if (ch.pid > 0)
        child_stop(&ch, 3000);
    if (relay_started)
        pthread_join(relay, NULL);
    if (out.fd != -1)
        close(out.fd);
    if (e != NULL)
        soth_engine_stop(e);
out_dir:
    rm_tree(dir);
    pthread_mutex_destroy(&out.mu);
    return rc;
}
