/* Private to observe/: record layout, schema, rings, ring file. See docs/event-ring.md. */
#ifndef SOTH_OBSERVE_INT_H
#define SOTH_OBSERVE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "soth/observe.h"

/*
 * One event record, the same bytes in a worker's SPSC ring, in the ring file and in what the
 * reader decodes. Followed by client_addr, server_host and the type's fields (schema below),
 * padded to a multiple of 8.
 */
struct ev_rec {
    uint32_t len;  /* whole record in bytes, multiple of 8 */
    uint16_t type; /* enum soth_ev_type, or REC_PAD */
    uint16_t worker;
    uint64_t gseq; /* set by the telemetry thread */
    uint64_t pos;  /* ring file: the record's own position (lap detection) */
    uint64_t flow_id;
    uint64_t ts_ns;
    uint32_t seq;
    uint16_t server_port;
    uint8_t protocol;
    uint8_t client_addr_len;
    uint8_t server_host_len;
    uint8_t identity_len; /* 0 = no identity yet; its bytes follow server_host */
    uint8_t pad[6];
};
_Static_assert(sizeof(struct ev_rec) == 56, "record header is part of the file format");

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the ring file is little-endian");

#define REC_PAD   0xffff
#define REC_ALIGN 8u
#define REC_MAX   (1u << 20) /* no single record is larger (capped captures keep far below) */

/* Field kinds of the compact encoding. */
enum fk {
    FK_U64 = 0, /* 8 bytes */
    FK_I64N,    /* 8 bytes signed; negative = JSON null */
    FK_BOOL,    /* 8 bytes */
    FK_ENUM,    /* 8 bytes index into names */
    FK_STR,     /* u32 len + bytes: JSON string */
    FK_OPTSTR,  /* u32 len (0xffffffff = null) + bytes */
    FK_OMITSTR, /* as OPTSTR, but a null is left out of the JSON object */
    FK_B64,     /* u32 len + bytes: JSON base64 string */
    FK_JSON,    /* u32 len (0xffffffff = absent: left out) + JSON text, copied verbatim */
    FK_HDRS,    /* u32 count, then per field u32 len + name, u32 len + value */
    FK_STRLIST, /* u32 count, then u32 len + bytes each */
    FK_OMITU64, /* 8 bytes; all ones = left out of the JSON object */
    FK_OPTLIST, /* as STRLIST, but an empty list is left out of the JSON object */
};

#define NULL_LEN 0xffffffffu

struct field_def {
    const char *name;
    uint8_t kind;
    const char *const *names; /* FK_ENUM */
    uint32_t n_names;
};

#define EV_MAX_FIELDS 12
struct type_def {
    struct field_def f[EV_MAX_FIELDS];
    unsigned n;
};
extern const struct type_def soth_ev_schema[SOTH_EV_TYPE_COUNT];

/* A growable output buffer for JSON (tail and sinks; never on a worker). */
struct jbuf {
    char *p;
    size_t len, cap;
};
void jbuf_put(struct jbuf *b, const void *p, size_t n);
void jbuf_free(struct jbuf *b);

/**
 * Append one record as a JSON line (with '\n'). Returns 0, or -1 when the record is malformed
 * (bounds are checked: records may come from a file someone else wrote).
 */
int soth_ev_rec_to_json(const struct ev_rec *r, size_t avail, struct jbuf *out);
/**
 * The same line written straight into room of the caller's (a sink's queue): the room
 * soth_ev_rec_json_bound asks for (0: a malformed record), then soth_ev_rec_json_at writes the
 * line there and returns its length with the '\n' (0: malformed, nothing to keep).
 */
size_t soth_ev_rec_json_bound(const struct ev_rec *r, size_t avail);
size_t soth_ev_rec_json_at(const struct ev_rec *r, char *dst);

/**
 * Decode a tls_handshake_failed record for the telemetry hook (bounds checked like
 * soth_ev_rec_to_json); *counts points at its host_failure_count and global_failure_count
 * (two unaligned little-endian u64) so the consumer can fill them in before writing the record.
 * Returns 0, or -1 for another type or a malformed record. out->host points into r.
 */
int soth_ev_rec_tls_failed(struct ev_rec *r, size_t avail, struct soth_ev_tls_failure *out,
                           unsigned char **counts);

/* The encoders of soth_ev_rec_to_json, for the exchange assembler (docs/events.md, "Bytes in
 * JSON"): a string or {"b64":...}; base64 in quotes; a decimal number; a strict RFC 8259 check
 * of JSON text; valid JSON text copied with its newlines turned into spaces. */
void soth_json_str(struct jbuf *b, const void *p, size_t n);
void soth_json_b64(struct jbuf *b, const void *p, size_t n);
void soth_json_u64(struct jbuf *b, uint64_t x);
bool soth_json_valid(const void *p, size_t n);
void soth_json_text(struct jbuf *b, const void *p, size_t n);

/* ---- the per-worker SPSC ring */
struct soth_ev_producer {
    /* producer (worker) side */
    _Alignas(SOTH_CACHELINE) uint64_t tail; /* next write position (private) */
    uint64_t head_cache;                    /* last seen consumer position */
    uint64_t cap, mask;
    char *data;
    struct soth_observe *obs;
    struct soth_metrics *m;
    unsigned worker;
    uint32_t body_cap;   /* events.body_capture_bytes */
    uint64_t open_flows; /* flows initialised and not yet closed (stream_closed reserve) */
    /* published positions */
    _Alignas(SOTH_CACHELINE) _Atomic uint64_t pub_tail; /* written by the producer */
    _Alignas(SOTH_CACHELINE) _Atomic uint64_t head;     /* written by the consumer */
};

/* ---- the ring file */
#define RING_MAGIC       0x474e495248544f53ull /* "SOTHRING" little-endian */
#define RING_VERSION     1u
#define RING_HDR_SIZE    4096u
#define RING_CHUNK_SHIFT 16 /* 64 KiB: granularity at which the writer gives up old records */

struct ring_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t capacity;          /* data area bytes (power of two) */
    _Atomic uint64_t write_pos; /* end of the last complete record (monotonic bytes) */
    _Atomic uint64_t oldest;    /* start of the oldest record not being overwritten */
    _Atomic uint64_t last_gseq; /* gseq of the last complete record */
    uint64_t start_ns;          /* when the writer created the file */
};

/* ---- the subsystem */
struct sink;

struct soth_observe {
    void (*metrics_fn)(void *ctx, struct soth_metrics_out *o); /* extra metrics, or NULL */
    void *metrics_ctx;
    unsigned n_workers;
    unsigned n_prods; /* n_workers + 1: the last producer is the bridge's (worker -1) */
    struct soth_ev_producer *prods;
    struct soth_metrics *metrics;

    char *ring_path;
    int ring_fd;
    struct ring_hdr *hdr;
    char *ring_data;
    uint64_t ring_cap;
    uint64_t gseq;
    /* writer-private state of the ring file (published in the header once per batch) */
    uint64_t wpos, oldest, last_gseq;
    uint64_t next_mark;    /* next chunk boundary that no record start has reached yet */
    uint64_t *chunk_first; /* per chunk: first record start at or after its boundary */
    uint64_t n_chunks;

    struct sink *sinks;
    size_t n_sinks;
    struct jbuf line;
    char run_id[24];   /* 16 hex digits, random per run: NATS message ids (docs/sinks.md) */
    uint32_t drain_ms; /* timeouts.drain_ms: how long a NATS sink may take to flush at stop */

    struct soth_bridge_metrics bridge; /* written by the bridge thread, read at scrape */
    struct soth_observe_hooks hooks;   /* set before start; run on the telemetry thread */
    struct soth_xasm *xasm;            /* exchanges for "format":"exchange" sinks, else NULL */

    int efd;
    _Atomic int sleeping;
    _Atomic int stop;
    bool started;
    pthread_t thr;

    int metrics_fd;
    _Atomic int metrics_stop;
    pthread_t metrics_thr;
    bool metrics_started;
};

/* A bounds-checked cursor over a record's bytes (the JSON encoder and the exchange assembler). */
struct cur {
    const unsigned char *p, *end;
};

static inline bool take(struct cur *c, size_t n, const unsigned char **out)
{
    if ((size_t)(c->end - c->p) < n)
        return false;
    *out = c->p;
    c->p += n;
    return true;
}

static inline bool take_u32(struct cur *c, uint32_t *x)
{
    const unsigned char *p;
    if (!take(c, 4, &p))
        return false;
    memcpy(x, p, 4);
    return true;
}

static inline bool take_u64(struct cur *c, uint64_t *x)
{
    const unsigned char *p;
    if (!take(c, 8, &p))
        return false;
    memcpy(x, p, 8);
    return true;
}

#endif
