/*
 * Tunnel benchmark client + origin in one program (blocking sockets, threads: it is the load,
 * not the product). Measures, through a proxy (CONNECT) or directly:
 *   throughput: one stream of N bytes client -> origin (origin discards, answers when done)
 *   churn:      new connection per exchange (CONNECT, 200, 1-byte echo, close), C threads
 *
 *   tunnel_bench throughput BYTES [PROXY_HOST PROXY_PORT]
 *   tunnel_bench churn SECONDS THREADS [PROXY_HOST PROXY_PORT]
 * Prints one line: "<mode> <metric> <value>".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int origin_fd;
static uint16_t origin_port;
static const char *proxy_host;
static uint16_t proxy_port;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static int dial(const char *host, uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == -1)
        die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/** A connection to the origin, through the proxy's CONNECT when one is given. */
static int open_target(void)
{
    if (proxy_host == NULL)
        return dial("127.0.0.1", origin_port);
    int fd = dial(proxy_host, proxy_port);
    char req[128];
    int n = snprintf(req, sizeof(req), "CONNECT 127.0.0.1:%u HTTP/1.1\r\n\r\n", origin_port);
    if (write(fd, req, (size_t)n) != n)
        die("write CONNECT");
    char buf[256];
    size_t got = 0;
    while (got < 4 || memcmp(buf + got - 4, "\r\n\r\n", 4) != 0) {
        ssize_t r = read(fd, buf + got, 1);
        if (r <= 0)
            die("read CONNECT answer");
        got++;
        if (got == sizeof(buf))
            die("CONNECT answer too long");
    }
    if (memcmp(buf, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, "CONNECT refused: %.*s\n", (int)got, buf);
        exit(1);
    }
    return fd;
}

static void *origin_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char mode;
    if (read(fd, &mode, 1) != 1)
        goto out;
    if (mode == 'e') { /* churn: echo one byte */
        if (write(fd, &mode, 1) != 1)
            goto out;
    } else { /* throughput: count until EOF, answer with the count */
        uint64_t total = 1;
        char *local = malloc(1 << 16);
        ssize_t r;
        while ((r = read(fd, local, 1 << 16)) > 0)
            total += (uint64_t)r;
        free(local);
        if (write(fd, &total, sizeof(total)) != sizeof(total))
            goto out;
    }
out:
    close(fd);
    return NULL;
}

static void *origin_main(void *arg)
{
    for (;;) {
        int c = accept(origin_fd, NULL, NULL);
        if (c < 0)
            continue;
        pthread_t t;
        pthread_create(&t, NULL, origin_conn, (void *)(intptr_t)c);
        pthread_detach(t);
    }
    return NULL;
}

static atomic_ulong churn_done;
static double churn_end;

static void *churn_thread(void *arg)
{
    while (now_s() < churn_end) {
        int fd = open_target();
        char b = 'e';
        if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1 || b != 'e')
            die("churn exchange");
        close(fd);
        atomic_fetch_add(&churn_done, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tunnel_bench throughput BYTES [PHOST PPORT] | churn SECONDS "
                        "THREADS [PHOST PPORT]\n");
        return 2;
    }
    origin_fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(origin_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(origin_fd, (struct sockaddr *)&a, sizeof(a)) == -1 || listen(origin_fd, 4096) == -1)
        die("origin listen");
    socklen_t l = sizeof(a);
    getsockname(origin_fd, (struct sockaddr *)&a, &l);
    origin_port = ntohs(a.sin_port);
    pthread_t ot;
    pthread_create(&ot, NULL, origin_main, NULL);

    if (strcmp(argv[1], "throughput") == 0) {
        uint64_t bytes = strtoull(argv[2], NULL, 10);
        if (argc >= 5) {
            proxy_host = argv[3];
            proxy_port = (uint16_t)atoi(argv[4]);
        }
        int fd = open_target();
        char *buf = malloc(1 << 20);
        memset(buf, 'x', 1 << 20);
        buf[0] = 't';
        double t0 = now_s();
        uint64_t left = bytes;
        while (left > 0) {
            size_t n = left < (1 << 20) ? left : (1 << 20);
            ssize_t w = write(fd, buf, n);
            if (w <= 0)
                die("write");
            left -= (uint64_t)w;
            buf[0] = 'x';
        }
        shutdown(fd, SHUT_WR);
        uint64_t total = 0;
        if (read(fd, &total, sizeof(total)) != sizeof(total))
            die("read total");
        double dt = now_s() - t0;
        if (total != bytes) {
            fprintf(stderr, "byte count mismatch: sent %llu, origin got %llu\n",
                    (unsigned long long)bytes, (unsigned long long)total);
            return 1;
        }
        printf("throughput MB/s %.1f\n", (double)bytes / dt / 1e6);
        free(buf);
        close(fd);
        return 0;
    }
    if (strcmp(argv[1], "churn") == 0 && argc >= 4) {
        double secs = atof(argv[2]);
        int threads = atoi(argv[3]);
        if (argc >= 6) {
            proxy_host = argv[4];
            proxy_port = (uint16_t)atoi(argv[5]);
        }
        churn_end = now_s() + secs;
        pthread_t *ts = calloc((size_t)threads, sizeof(pthread_t));
        double t0 = now_s();
        for (int i = 0; i < threads; i++)
            pthread_create(&ts[i], NULL, churn_thread, NULL);
        for (int i = 0; i < threads; i++)
            pthread_join(ts[i], NULL);
        double dt = now_s() - t0;
        printf("churn conn/s %.0f\n", (double)atomic_load(&churn_done) / dt);
        printf("churn count %lu\n", atomic_load(&churn_done));
        free(ts);
        return 0;
    }
    fprintf(stderr, "bad arguments\n");
    return 2;
}
