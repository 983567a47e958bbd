/*
 * TLS load generator for bench/tls/run.py and soak.py (OpenSSL client, blocking sockets, one
 * thread per concurrent connection). Every connection is a full handshake: no session cache,
 * no tickets.
 *
 *   tls_load hs  -c HOST:PORT [-x ORIGIN_HOST:PORT] -n NAME -a CAFILE [-t THREADS] [-s SECONDS]
 *                [-N COUNT] [-k FIRST] [-M MODULO] [-u PATH]
 *       connections of: TCP connect to -c, (with -x) "CONNECT ORIGIN_HOST:PORT" and its 200,
 *       TLS handshake with SNI NAME verified against CAFILE (host name checked), one
 *       "GET PATH" answered with a Content-Length body, close_notify, close. Runs until
 *       SECONDS pass or COUNT connections were made. NAME may hold one "%u": it is replaced by
 *       a connection counter starting at FIRST, so that every connection names a new host
 *       (with -M, one of MODULO names drawn by a hash of that counter: names repeat in random
 *       order, so a cache smaller than MODULO both hits and evicts).
 *   tls_load get -c HOST:PORT [-x ORIGIN_HOST:PORT] -n NAME -a CAFILE -u PATH
 *       one connection downloading PATH; reports bytes and MB/s (1 MB = 10^6 bytes).
 *
 * Output: "<mode> <key> <value>" lines (count, errors, seconds, per_s / bytes, MB/s, cipher).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct opts {
    const char *mode;
    struct sockaddr_in target;
    const char *connect_to; /* CONNECT authority, NULL for a direct connection */
    const char *name;       /* SNI and Host, may hold one %u */
    const char *path;
    unsigned threads;
    double seconds;
    unsigned long count;
    unsigned first;
    unsigned long modulo; /* names cycle through FIRST .. FIRST+MODULO-1 (0: never repeat) */
};

static struct opts o;
static SSL_CTX *ctx;
static atomic_ulong started;
static atomic_ulong done;
static atomic_ulong errors;
static atomic_int err_logged;
static double deadline;
static char cipher[64];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail_once(const char *what, unsigned long id)
{
    if (atomic_fetch_add(&err_logged, 1) < 5) {
        char e[256];
        ERR_error_string_n(ERR_peek_last_error(), e, sizeof(e));
        fprintf(stderr, "tls_load: conn %lu: %s (errno %d, %s)\n", id, what, errno, e);
    }
    ERR_clear_error();
}

static int tcp_open(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&o.target, sizeof(o.target)) == -1) {
        close(fd);
        return -1;
    }
    return fd;
}

/* CONNECT and its answer; the proxy sends nothing after the head until we speak TLS. */
static bool proxy_connect(int fd)
{
    char req[512];
    int n = snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", o.connect_to,
                     o.connect_to);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return false;
    char head[1024];
    size_t len = 0;
    while (len < sizeof(head) - 1) {
        ssize_t r = recv(fd, head + len, sizeof(head) - 1 - len, 0);
        if (r <= 0)
            return false;
        len += (size_t)r;
        head[len] = '\0';
        if (strstr(head, "\r\n\r\n"))
            return strncmp(head, "HTTP/1.1 200", 12) == 0 &&
                   strstr(head, "\r\n\r\n") + 4 == head + len;
    }
    return false;
}

/* Reads the response head and its Content-Length body; returns body bytes or -1. */
static long long read_response(SSL *ssl, char *buf, size_t cap)
{
    size_t len = 0;
    char *end = NULL;
    while (!end) {
        if (len >= cap - 1)
            return -1;
        int r = SSL_read(ssl, buf + len, (int)(cap - 1 - len));
        if (r <= 0)
            return -1;
        len += (size_t)r;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0)
        return -1;
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (!cl || cl > end)
        return -1;
    long long want = strtoll(cl + 17, NULL, 10);
    long long have = (long long)(buf + len - (end + 4));
    while (have < want) {
        int r = SSL_read(ssl, buf, (int)cap);
        if (r <= 0)
            return -1;
        have += r;
    }
    return have == want ? have : -1;
}

/* splitmix64's finaliser: a well-spread permutation of the counter. */
static uint64_t mix(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static unsigned long name_index(unsigned long id)
{
    if (o.modulo == 0)
        return (unsigned long)o.first + id;
    return (unsigned long)(mix((uint64_t)o.first + id) % o.modulo);
}

/* One connection; returns body bytes received or -1. */
static long long one_conn(unsigned long id, char *buf, size_t cap)
{
    char name[256];
    const char *pct = strstr(o.name, "%u");
    if (pct)
        snprintf(name, sizeof(name), "%.*s%lu%s", (int)(pct - o.name), o.name, name_index(id),
                 pct + 2);
    else
        snprintf(name, sizeof(name), "%s", o.name);
    long long body = -1;
    int fd = tcp_open();
    if (fd < 0) {
        fail_once("connect", id);
        return -1;
    }
    if (o.connect_to && !proxy_connect(fd)) {
        fail_once("CONNECT", id);
        close(fd);
        return -1;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, name);
    SSL_set1_host(ssl, name);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        fail_once("handshake", id);
        goto out;
    }
    if (id == 0)
        snprintf(cipher, sizeof(cipher), "%s/%s", SSL_get_version(ssl),
                 SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                     o.path, name);
    if (SSL_write(ssl, req, n) != n) {
        fail_once("write", id);
        goto out;
    }
    body = read_response(ssl, buf, cap);
    if (body < 0)
        fail_once("response", id);
    else
        SSL_shutdown(ssl); /* our close_notify; the peer's is not awaited */
out:
    SSL_free(ssl);
    close(fd);
    return body;
}

static void *hs_thread(void *arg)
{
    size_t cap = 16384;
    char *buf = malloc(cap);
    while (now_s() < deadline) {
        unsigned long id = atomic_fetch_add(&started, 1);
        if (id >= o.count)
            break;
        if (one_conn(id, buf, cap) < 0)
            atomic_fetch_add(&errors, 1);
        else
            atomic_fetch_add(&done, 1);
    }
    free(buf);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: tls_load hs|get -c HOST:PORT [-x HOST:PORT] -n NAME -a CAFILE"
                    " [-t THREADS] [-s SECONDS] [-N COUNT] [-k FIRST] [-M MODULO] [-u PATH]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    o.mode = argv[1];
    o.path = "/";
    o.threads = 8;
    o.seconds = 5;
    o.count = 1000000000ul;
    const char *ca = NULL, *target = NULL;
    int c;
    optind = 2;
    while ((c = getopt(argc, argv, "c:x:n:a:t:s:N:k:M:u:")) != -1) {
        switch (c) {
        case 'c':
            target = optarg;
            break;
        case 'x':
            o.connect_to = optarg;
            break;
        case 'n':
            o.name = optarg;
            break;
        case 'a':
            ca = optarg;
            break;
        case 't':
            o.threads = (unsigned)atoi(optarg);
            break;
        case 's':
            o.seconds = atof(optarg);
            break;
        case 'N':
            o.count = strtoul(optarg, NULL, 10);
            break;
        case 'k':
            o.first = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'M':
            o.modulo = strtoul(optarg, NULL, 10);
            break;
        case 'u':
            o.path = optarg;
            break;
        default:
            usage();
        }
    }
    if (!target || !o.name || !ca || o.threads == 0 || o.threads > 1024)
        usage();
    const char *colon = strrchr(target, ':');
    if (!colon)
        usage();
    char host[64];
    snprintf(host, sizeof(host), "%.*s", (int)(colon - target), target);
    o.target.sin_family = AF_INET;
    o.target.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &o.target.sin_addr) != 1)
        usage();

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    /* Read whole socket buffers, not a 5-byte header and then one record per read(2). */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 1 << 17);
    /* AES-128-GCM first on both versions: the bulk figure is AES-GCM. */
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384");
    SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        fprintf(stderr, "tls_load: cannot load CA %s\n", ca);
        return 1;
    }

    if (strcmp(o.mode, "hs") == 0) {
        pthread_t *th = calloc(o.threads, sizeof(*th));
        double t0 = now_s();
        deadline = t0 + o.seconds;
        for (unsigned i = 0; i < o.threads; i++)
            pthread_create(&th[i], NULL, hs_thread, NULL);
        for (unsigned i = 0; i < o.threads; i++)
            pthread_join(th[i], NULL);
        double dt = now_s() - t0;
        unsigned long n = atomic_load(&done);
        printf("hs count %lu\nhs errors %lu\nhs seconds %.3f\nhs per_s %.1f\nhs cipher %s\n", n,
               atomic_load(&errors), dt, (double)n / dt, cipher[0] ? cipher : "-");
        free(th);
    } else if (strcmp(o.mode, "get") == 0) {
        size_t cap = 1 << 18;
        char *buf = malloc(cap);
        double t0 = now_s();
        long long bytes = one_conn(0, buf, cap);
        double dt = now_s() - t0;
        free(buf);
        if (bytes < 0)
            return 1;
        printf("get bytes %lld\nget seconds %.3f\nget MB/s %.1f\nget cipher %s\n", bytes, dt,
               (double)bytes / dt / 1e6, cipher);
    } else {
        usage();
    }
    SSL_CTX_free(ctx);
    return 0;
}
