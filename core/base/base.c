#include "soth/base.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

int soth_log_level = SOTH_LOG_INFO;

void soth_bug(const char *file, int line, const char *what)
{
    fprintf(stderr, "soth-mitm: BUG at %s:%d: %s\n", file, line, what);
    abort();
}

const char *soth_strerror(int err)
{
    switch (err) {
    case SOTH_E_INCOMPLETE:
        return "incomplete input";
    case SOTH_E_MALFORMED:
        return "malformed input";
    case SOTH_E_TOO_LARGE:
        return "input too large";
    case SOTH_E_NOMEM:
        return "out of memory";
    case SOTH_E_CONFIG:
        return "invalid configuration";
    case SOTH_E_STATE:
        return "invalid state";
    case SOTH_E_TLS:
        return "TLS failure";
    case SOTH_E_CLOSED:
        return "closed";
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}

void soth_log_write(int lvl, int worker, uint64_t flow_id, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[1024];
    int n;
    if (worker >= 0 && flow_id)
        n = snprintf(line, sizeof(line), "soth-mitm: %s: w%d flow %llu: ", names[lvl], worker,
                     (unsigned long long)flow_id);
    else if (worker >= 0)
        n = snprintf(line, sizeof(line), "soth-mitm: %s: w%d: ", names[lvl], worker);
    else
        n = snprintf(line, sizeof(line), "soth-mitm: %s: ", names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    /* One write per line so lines from different threads do not interleave. */
    ssize_t w = write(2, line, len);
    (void)w;
}

uint64_t soth_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t soth_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
