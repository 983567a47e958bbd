/* soth-mitm-tail: print the binary event ring as JSON lines (docs/cli.md, docs/event-ring.md). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "soth/exchange.h"
#include "soth/observe.h"

static const char usage[] =
    "usage: soth-mitm-tail [--from-start] [--once] [--type T[,T...]] [--flow ID] PATH\n"
    "       soth-mitm-tail --exchanges [--from-start] [--once] PATH\n"
    "Prints each event of the soth-mitm event ring at PATH as one JSON line, following new\n"
    "events until interrupted.\n"
    "  --exchanges    print exchanges assembled from the events instead (docs/exchanges.md)\n"
    "  --from-start   first print what the ring still holds\n"
    "  --once         exit after printing what is there now\n"
    "  --type T,...   only these event types\n"
    "  --flow ID      only this flow_id\n"
    "  --help         this text\n";

#define POLL_MS         2   /* follow: how often the writer position is looked at when idle */
#define REOPEN_CHECK_MS 500 /* follow: how often PATH is checked for a new ring file */

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void emit_line(void *ctx, const char *line, size_t len)
{
    (void)ctx;
    fwrite(line, 1, len, stdout);
}

static void emit_exchange(void *ctx, const struct soth_xasm_out *x)
{
    emit_line(ctx, x->json, x->len);
}

static size_t poll_once(struct soth_ring_reader *r, const struct soth_ring_filter *flt,
                        struct soth_xasm *x)
{
    if (x == NULL)
        return soth_ring_reader_poll(r, flt, emit_line, NULL);
    return soth_ring_reader_poll_exchanges(r, x);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"from-start", no_argument, NULL, 's'},
        {"once", no_argument, NULL, 'o'},
        {"type", required_argument, NULL, 't'},
        {"flow", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {"exchanges", no_argument, NULL, 'x'},
        {NULL, 0, NULL, 0},
    };
    struct soth_ring_filter flt = {0};
    bool from_start = false, once = false, exchanges = false;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            from_start = true;
            break;
        case 'o':
            once = true;
            break;
        case 't': {
            const char *p = optarg;
            for (;;) {
                size_t n = strcspn(p, ",");
                int t = soth_ev_type_from_name(p, n);
                if (t < 0) {
                    fprintf(stderr, "soth-mitm-tail: --type: unknown event type \"%.*s\"\n", (int)n,
                            p);
                    return 2;
                }
                flt.type_mask |= 1ull << t;
                p += n;
                if (*p != ',')
                    break;
                p++;
            }
            break;
        }
        case 'f': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-' || optarg[0] == '+') {
                fprintf(stderr,
                        "soth-mitm-tail: --flow: expected an unsigned integer, got \"%s\"\n",
                        optarg);
                return 2;
            }
            flt.has_flow = true;
            flt.flow_id = v;
            break;
        }
        case 'x':
            exchanges = true;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fprintf(stderr, "soth-mitm-tail: unknown or incomplete option \"%s\"\n%s",
                    argv[optind - 1], usage);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fputs(usage, stderr);
        return 2;
    }
    if (exchanges && (flt.type_mask || flt.has_flow)) {
        fprintf(stderr, "soth-mitm-tail: --exchanges takes no --type or --flow\n");
        return 2;
    }
    const char *path = argv[optind];
    char err[512];
    struct stat st0;
    bool have_id = stat(path, &st0) == 0;
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "soth-mitm-tail: %s\n", err);
        return 1;
    }
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_DFL);
    soth_ring_reader_seek(r, from_start);
    struct soth_xasm *x = NULL;
    if (exchanges) {
        /* Captured bytes are already bounded by the proxy's events.body_capture_bytes. */
        struct soth_xasm_cfg xc = {.body_capture_bytes = UINT32_MAX};
        x = soth_xasm_new(&xc, emit_exchange, NULL);
        if (x == NULL) {
            fprintf(stderr, "soth-mitm-tail: out of memory\n");
            soth_ring_reader_free(r);
            return 1;
        }
    }
    unsigned idle = 0;
    while (!stop) {
        size_t n = poll_once(r, &flt, x);
        if (n > 0)
            fflush(stdout);
        if (once)
            break;
        if (n > 0) {
            idle = 0;
            continue;
        }
        struct timespec ts = {0, POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
        /* A restarted proxy renames a new ring over PATH: follow it, as tail -F does. */
        if (++idle % (REOPEN_CHECK_MS / POLL_MS) != 0)
            continue;
        struct stat st;
        if (stat(path, &st) != 0 || (have_id && st.st_ino == st0.st_ino && st.st_dev == st0.st_dev))
            continue;
        struct soth_ring_reader *nr = soth_ring_reader_open(path, err, sizeof(err));
        if (nr == NULL)
            continue;
        poll_once(r, &flt, x);
        /* A new run numbers its flows afresh: what the old one left open is printed as it is. */
        if (x != NULL)
            soth_xasm_flush(x);
        fflush(stdout);
        soth_ring_reader_free(r);
        r = nr;
        st0 = st;
        have_id = true;
        soth_ring_reader_seek(r, true);
    }
    fflush(stdout);
    soth_xasm_free(x);
    soth_ring_reader_free(r);
    return 0;
}
