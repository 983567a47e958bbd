/*
 * soth_base: what every module needs and nothing more: errors, logging, time,
 * byte spans and a few macros. Leaves (tls, proto, policy, observe) and core link it.
 */
#ifndef SOTH_BASE_H
#define SOTH_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SOTH_VERSION_STRING "0.1.0"

#define SOTH_LIKELY(x)    __builtin_expect(!!(x), 1)
#define SOTH_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#define SOTH_FALLTHROUGH  __attribute__((fallthrough))
#define SOTH_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SOTH_CACHELINE    64

/** Abort with file:line when an invariant is broken (haproxy BUG_ON). Never for peer input. */
#define SOTH_BUG_ON(cond)                                                                          \
    do {                                                                                           \
        if (SOTH_UNLIKELY(cond))                                                                   \
            soth_bug(__FILE__, __LINE__, #cond);                                                   \
    } while (0)
_Noreturn void soth_bug(const char *file, int line, const char *what);

/** A borrowed byte span: never NUL-terminated on the data path. */
struct soth_iov {
    const char *base;
    size_t len;
};
#define SOTH_IOV_LIT(s) ((struct soth_iov){(s), sizeof(s) - 1})
#define SOTH_IOV_NULL   ((struct soth_iov){NULL, 0})
static inline struct soth_iov soth_iov(const void *p, size_t len)
{
    return (struct soth_iov){(const char *)p, len};
}

/** a starts with the n bytes at b, ASCII letters compared without case. */
static inline bool soth_iov_prefix_ci(struct soth_iov a, const char *b, size_t n)
{
    if (a.len < n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.base[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x |= 0x20;
        if (y >= 'A' && y <= 'Z')
            y |= 0x20;
        if (x != y)
            return false;
    }
    return true;
}

/** a equals the n bytes at b, ASCII letters compared without case (header names, hosts). */
static inline bool soth_iov_eq_ci(struct soth_iov a, const char *b, size_t n)
{
    return a.len == n && soth_iov_prefix_ci(a, b, n);
}

/** a equals the C string lit, ASCII letters compared without case. */
static inline bool soth_iov_is_ci(struct soth_iov a, const char *lit)
{
    return soth_iov_eq_ci(a, lit, strlen(lit));
}

/** a starts with the C string lit, ASCII letters compared without case. */
static inline bool soth_iov_starts_ci(struct soth_iov a, const char *lit)
{
    return soth_iov_prefix_ci(a, lit, strlen(lit));
}

/** One header field, borrowed (shared by the parsers and the event producer API). */
struct soth_header {
    struct soth_iov name, value;
};

/*
 * A bounded free list of equally sized malloc'd buffers (at least a pointer each), linked
 * through each buffer's first pointer, for buffers lent only while in use: get pops one or
 * mallocs `size` bytes; put keeps up to `keep` and frees the rest; drain frees all. One owner
 * thread (a worker); no locks.
 */
struct soth_buf_pool {
    void *head;
    uint32_t n, keep;
};

static inline void *soth_buf_pool_get(struct soth_buf_pool *p, size_t size)
{
    void *m = p->head;
    if (m == NULL)
        return malloc(size);
    memcpy(&p->head, m, sizeof(void *));
    p->n--;
    return m;
}

static inline void soth_buf_pool_put(struct soth_buf_pool *p, void *m)
{
    if (p->n >= p->keep) {
        free(m);
        return;
    }
    memcpy(m, &p->head, sizeof(void *));
    p->head = m;
    p->n++;
}

/** Free kept buffers until at most `floor` are left (a quiet worker giving memory back). */
static inline void soth_buf_pool_trim(struct soth_buf_pool *p, uint32_t floor)
{
    while (p->n > floor && p->head != NULL) {
        void *m = p->head;
        memcpy(&p->head, m, sizeof(void *));
        free(m);
        p->n--;
    }
}

static inline void soth_buf_pool_drain(struct soth_buf_pool *p)
{
    soth_buf_pool_trim(p, 0);
    p->n = 0;
}

/* ---- legs: the two connections of a flow (docs/architecture.md) */
/**
 * Which connection of a flow: the client leg (toward the user agent; the proxy is its server)
 * or the upstream leg (toward the origin; the proxy is its client). Every module names a side
 * with it. It also gives a message's direction, by the leg that sent it: the client leg sends
 * client_to_server, the upstream leg server_to_client (docs/events.md). The values are the
 * event wire values: never renumber.
 */
enum soth_leg { SOTH_LEG_CLIENT = 0, SOTH_LEG_UPSTREAM = 1, SOTH_LEG_COUNT };

/** The other leg: where bytes received on `l` are forwarded. */
static inline enum soth_leg soth_leg_other(enum soth_leg l)
{
    return l == SOTH_LEG_CLIENT ? SOTH_LEG_UPSTREAM : SOTH_LEG_CLIENT;
}

/** The leg an integer holds (an index, a packed bit, a stored byte). The value must be a leg:
 *  anything else is a bug and aborts; check input from outside (< SOTH_LEG_COUNT) first. */
static inline enum soth_leg soth_leg_of(unsigned v)
{
    SOTH_BUG_ON(v >= SOTH_LEG_COUNT);
    return v == 0 ? SOTH_LEG_CLIENT : SOTH_LEG_UPSTREAM;
}

/* ---- UTF-8 (RFC 3629 3): the one validator shared by event JSON and the payload decoders. */
/**
 * Length (1..4) of the well-formed UTF-8 sequence that starts p[0..n), or 0 when it is not
 * one: n == 0, a continuation or never-valid lead byte (0x80..0xc1, 0xf5..0xff), a sequence
 * cut short by n or by a byte that is not a continuation, an overlong form, a surrogate
 * (U+D800..U+DFFF) or a code point above U+10FFFF. ASCII is 1.
 */
size_t soth_utf8_seq_len(const void *p, size_t n);
/** True when p[0..n) is well-formed UTF-8 from end to end (true for n == 0). */
bool soth_utf8_valid(const void *p, size_t n);

/*
 * A growable byte buffer holding at most a caller-given `max` bytes: what one side sent that
 * cannot be processed yet (HTTP/1.1 bytes behind a blocked exchange, a client's bytes read
 * while its upstream connects). put appends (the allocation doubles from 4 KiB, never past
 * max); consume drops bytes from the front; free releases the memory. Zero-initialise it
 * ({0}) before the first put. One owner; no locks.
 */
struct soth_gbuf {
    char *p;
    size_t len; /* bytes held, from p[0] */
    size_t cap; /* bytes allocated */
};

/**
 * Append n bytes. Returns 0; SOTH_E_TOO_LARGE when len + n would pass max (nothing is
 * appended); SOTH_E_NOMEM when the allocation failed (nothing is appended, what is held stays).
 */
int soth_gbuf_put(struct soth_gbuf *b, const void *p, size_t n, size_t max);
/** Drop the first n bytes (n <= len); the memory is kept for later puts. */
void soth_gbuf_consume(struct soth_gbuf *b, size_t n);
/** Release the memory; the buffer is empty and usable again. */
void soth_gbuf_free(struct soth_gbuf *b);

/* ---- errors: syscall-like functions return >= 0 or -errno; project codes from -1000 down. */
enum soth_err {
    SOTH_E_INCOMPLETE = -1000, /* parser needs more bytes */
    SOTH_E_MALFORMED = -1001,  /* peer input is not valid */
    SOTH_E_TOO_LARGE = -1002,  /* input over a configured bound */
    SOTH_E_NOMEM = -1003,      /* pool or arena exhausted */
    SOTH_E_CONFIG = -1004,     /* invalid configuration */
    SOTH_E_STATE = -1005,      /* operation not valid in this state */
    SOTH_E_TLS = -1006,        /* TLS library failure */
    SOTH_E_CLOSED = -1007,     /* peer or flow already closed */
};
/** Text for a -errno or a soth_err code. Never NULL. */
const char *soth_strerror(int err);

/* ---- logging: for operators, never the product (events are). */
enum soth_log_level { SOTH_LOG_ERROR = 0, SOTH_LOG_WARN, SOTH_LOG_INFO, SOTH_LOG_DEBUG };
/** Set once at start-up before threads start; read-only afterwards. */
extern int soth_log_level;
void soth_log_write(int lvl, int worker, uint64_t flow_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/** Arguments are evaluated only when the level is enabled. worker < 0 / flow 0 = none. */
#define SOTH_LOG(lvl, worker, flow, ...)                                                           \
    do {                                                                                           \
        if (SOTH_UNLIKELY((lvl) <= soth_log_level))                                                \
            soth_log_write((lvl), (worker), (flow), __VA_ARGS__);                                  \
    } while (0)

/* ---- time */
/** Wall clock, ns since the Unix epoch (event ts_ns). */
uint64_t soth_now_ns(void);
/** Monotonic clock in ns (durations, timeouts). */
uint64_t soth_mono_ns(void);

#endif
