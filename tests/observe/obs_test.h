/* Helpers shared by the observe suites: hand-built configs, reading a ring back as JSON. */
#ifndef SOTH_OBS_TEST_H
#define SOTH_OBS_TEST_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soth/observe.h"

struct obs_env {
    char dir[64];
    char ring[128];
    struct soth_config *cfg;
};

/** A config built by hand (not through the loader) with its ring in a fresh temp dir. */
static inline void obs_env_init(struct obs_env *e, uint32_t ring_mb)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/soth-obs-XXXXXX");
    cr_assert_not_null(mkdtemp(e->dir));
    snprintf(e->ring, sizeof(e->ring), "%s/sub/ev.ring", e->dir);
    e->cfg = calloc(1, sizeof(*e->cfg));
    cr_assert_not_null(e->cfg);
    atomic_init(&e->cfg->refs, 1);
    e->cfg->events.ring_path = strdup(e->ring);
    e->cfg->events.ring_size_mb = ring_mb;
    e->cfg->events.body_capture_bytes = 4096;
}

static inline void obs_env_add_sink(struct obs_env *e, enum soth_sink_type t, const char *name)
{
    struct soth_config *c = e->cfg;
    c->events.sinks = realloc(c->events.sinks, (c->events.n_sinks + 1) * sizeof(*c->events.sinks));
    char path[192];
    snprintf(path, sizeof(path), "%s/%s", e->dir, name);
    memset(&c->events.sinks[c->events.n_sinks], 0, sizeof(*c->events.sinks));
    c->events.sinks[c->events.n_sinks].type = t;
    c->events.sinks[c->events.n_sinks].path = strdup(path);
    c->events.n_sinks++;
}

static inline void obs_env_dispose(struct obs_env *e)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
    cr_expect_eq(system(cmd), 0);
    for (size_t i = 0; i < e->cfg->events.n_sinks; i++)
        free(e->cfg->events.sinks[i].path);
    free(e->cfg->events.sinks);
    free(e->cfg->events.ring_path);
    free(e->cfg->metrics.listen_text);
    free(e->cfg);
}

static inline struct soth_observe *obs_new(struct obs_env *e, unsigned workers)
{
    char err[256];
    struct soth_observe *o = soth_observe_new(e->cfg, workers, err, sizeof(err));
    cr_assert_not_null(o, "%s", err);
    return o;
}

/** Raw text of lines, growable. */
struct text {
    char *p;
    size_t len;
    size_t lines;
    size_t cap;
};

static inline void text_emit(void *ctx, const char *line, size_t len)
{
    struct text *t = ctx;
    if (t->len + len + 1 > t->cap) {
        t->cap = (t->len + len + 1) * 2;
        t->p = realloc(t->p, t->cap);
    }
    memcpy(t->p + t->len, line, len);
    t->len += len;
    t->p[t->len] = '\0';
    t->lines++;
}

/** Everything the ring file holds, from the oldest record, as JSON lines. */
static inline struct text ring_text(const char *path, const struct soth_ring_filter *flt)
{
    char err[256];
    struct soth_ring_reader *r = soth_ring_reader_open(path, err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    soth_ring_reader_seek(r, true);
    struct text t = {0};
    soth_ring_reader_poll(r, flt, text_emit, &t);
    soth_ring_reader_free(r);
    if (t.p == NULL)
        t.p = calloc(1, 1);
    return t;
}

/** Parse every line (strictly: the JSON must be valid); returns a JSON array. */
static inline json_t *text_parse(const struct text *t)
{
    json_t *arr = json_array();
    const char *p = t->p, *end = t->p + t->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        cr_assert_not_null(nl, "unterminated line");
        json_error_t je;
        json_t *j = json_loadb(p, (size_t)(nl - p), JSON_ALLOW_NUL, &je);
        cr_assert_not_null(j, "bad JSON (%s): %.*s", je.text, (int)(nl - p), p);
        json_array_append_new(arr, j);
        p = nl + 1;
    }
    return arr;
}

/** Replace the digits after `"key":` by 0 in place-built copy (ts_ns, duration_ns vary). */
static inline void zero_field(char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    size_t pl = strlen(pat);
    for (char *p = strstr(s, pat); p != NULL; p = strstr(p + pl, pat)) {
        char *d = p + pl;
        char *e = d;
        while (*e >= '0' && *e <= '9')
            e++;
        if (e == d)
            continue;
        *d = '0';
        memmove(d + 1, e, strlen(e) + 1);
    }
}

static inline struct soth_iov S(const char *s) {
    return soth_iov(s, strlen(s));
}

static inline void
flow_v4(struct soth_ev_flow *f, struct soth_ev_producer *p, uint64_t id, unsigned worker)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
    sin.sin_addr.s_addr = htonl(0x7f000001);
    soth_ev_flow_init(f, p, id, worker, (struct sockaddr *)&sin, sizeof(sin));
}

#endif
