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

#define GBUF_FIRST 4096

int soth_gbuf_put(struct soth_gbuf *b, const void *p, size_t n, size_t max)
{
    if (n == 0)
        return 0;
    if (n > max || b->len > max - n)
        return SOTH_E_TOO_LARGE;
    size_t need = b->len + n;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : GBUF_FIRST;
        while (cap < need)
            cap = cap > max / 2 ? max : cap * 2;
        if (cap > max)
            cap = max;
        char *np = realloc(b->p, cap);
        if (np == NULL)
            return SOTH_E_NOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len = need;
    return 0;
}

void soth_gbuf_consume(struct soth_gbuf *b, size_t n)
{
    SOTH_BUG_ON(n > b->len);
    if (n < b->len)
        memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void soth_gbuf_free(struct soth_gbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
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

size_t soth_utf8_seq_len(const void *p, size_t n)
{
    const unsigned char *s = p;
    if (n == 0)
        return 0;
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0; /* continuation byte, 0xc0/0xc1 (always overlong) or 0xf5..0xff */
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* Overlong 3- and 4-byte forms, surrogates, and above U+10FFFF (0xf4 0x90..). */
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

bool soth_utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = soth_utf8_seq_len(s + i, n - i);
        if (l == 0)
            return false;
        i += l;
    }
    return true;
}
