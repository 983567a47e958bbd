/*
 * Reading the ring file (soth-mitm-tail, tests, the ring_reader fuzz target). A reader maps the
 * file read-only and never writes to it, so any number of readers never slow the writer. Lap
 * detection: the writer publishes `oldest` before it overwrites bytes; a reader that copied a
 * record from below `oldest` (checked after the copy) discards the copy and reports an overrun.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "observe_int.h"
#include "soth/exchange.h"

struct soth_ring_reader {
    const struct ring_hdr *hdr;
    const char *data;
    uint64_t cap;
    size_t map_len;
    bool mapped;
    uint64_t pos;
    uint64_t last_gseq; /* 0 = nothing read yet */
    bool lapped;        /* an overrun is pending report */
    char *rec;          /* private copy of the record being decoded */
    struct jbuf line;
};

static int reader_init(struct soth_ring_reader *r, const void *base, size_t len, char *err,
                       size_t err_len)
{
    const struct ring_hdr *h = base;
    if ((uintptr_t)base % REC_ALIGN != 0) {
        snprintf(err, err_len, "event ring image is not 8-byte aligned");
        return -1;
    }
    if (len < RING_HDR_SIZE || h->magic != RING_MAGIC) {
        snprintf(err, err_len, "not a soth-mitm event ring (bad magic)");
        return -1;
    }
    if (h->version != RING_VERSION) {
        snprintf(err, err_len, "event ring version %u, this reader knows %u", h->version,
                 RING_VERSION);
        return -1;
    }
    if (h->hdr_size != RING_HDR_SIZE || h->capacity == 0 ||
        (h->capacity & (h->capacity - 1)) != 0 || h->capacity > len - RING_HDR_SIZE) {
        snprintf(err, err_len, "event ring header is inconsistent");
        return -1;
    }
    r->hdr = h;
    r->data = (const char *)base + RING_HDR_SIZE;
    r->cap = h->capacity;
    r->rec = malloc(REC_MAX);
    if (r->rec == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    return 0;
}

struct soth_ring_reader *soth_ring_reader_open(const char *path, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        snprintf(err, err_len, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == -1 || st.st_size < (off_t)RING_HDR_SIZE) {
        snprintf(err, err_len, "%s: not a soth-mitm event ring (too small)", path);
        close(fd);
        return NULL;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(err, err_len, "%s: mmap: %s", path, strerror(errno));
        return NULL;
    }
    struct soth_ring_reader *r = calloc(1, sizeof(*r));
    if (r == NULL || reader_init(r, m, (size_t)st.st_size, err, err_len) < 0) {
        munmap(m, (size_t)st.st_size);
        free(r);
        return NULL;
    }
    r->map_len = (size_t)st.st_size;
    r->mapped = true;
    return r;
}

struct soth_ring_reader *soth_ring_reader_from_memory(const void *buf, size_t len, char *err,
                                                      size_t err_len)
{
    struct soth_ring_reader *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    if (reader_init(r, buf, len, err, err_len) < 0) {
        free(r);
        return NULL;
    }
    return r;
}

void soth_ring_reader_free(struct soth_ring_reader *r)
{
    if (r == NULL)
        return;
    if (r->mapped)
        munmap((void *)r->hdr, r->map_len);
    free(r->rec);
    jbuf_free(&r->line);
    free(r);
}

/** First 8 bytes of the record at data offset off: len (low 32 bits) and type. */
static void rec_peek(const struct soth_ring_reader *r, uint64_t off, uint32_t *len, uint16_t *type)
{
    uint64_t w = __atomic_load_n((const uint64_t *)(const void *)(r->data + off), __ATOMIC_ACQUIRE);
    *len = (uint32_t)w;
    *type = (uint16_t)(w >> 32);
}

/* The writer stores record bytes as 8-byte release stores (telemetry.c ring_copy_in); acquire
 * loads here order the `oldest` check after the copy (seqlock; docs/event-ring.md). */
static void rec_copy_out(char *dst, const char *src, size_t len)
{
    const uint64_t *s = (const uint64_t *)(const void *)src;
    for (size_t i = 0; i < len / 8; i++) {
        uint64_t w = __atomic_load_n(&s[i], __ATOMIC_ACQUIRE);
        memcpy(dst + 8 * i, &w, 8);
    }
}

void soth_ring_reader_seek(struct soth_ring_reader *r, bool from_start)
{
    r->lapped = false;
    if (!from_start) {
        /*
         * write_pos first: the writer stores last_gseq before write_pos, so the gseq loaded next
         * is at least that of the record ending at pos, and the first record read is never
         * mistaken for a gap.
         */
        r->pos = atomic_load_explicit(&r->hdr->write_pos, memory_order_acquire);
        r->last_gseq = atomic_load_explicit(&r->hdr->last_gseq, memory_order_acquire);
        return;
    }
    /* From the oldest record held: what was overwritten before we came is not a lap of ours. */
    r->pos = atomic_load_explicit(&r->hdr->oldest, memory_order_acquire);
    r->last_gseq = 0;
    uint64_t wp = atomic_load_explicit(&r->hdr->write_pos, memory_order_acquire);
    for (uint64_t p = r->pos; p < wp && wp - p <= r->cap;) {
        uint64_t off = p & (r->cap - 1);
        if (off % REC_ALIGN != 0 || off + REC_ALIGN > r->cap)
            break;
        uint32_t len;
        uint16_t type;
        rec_peek(r, off, &len, &type);
        if (len < REC_ALIGN || len % REC_ALIGN || off + len > r->cap)
            break;
        if (type != REC_PAD && len >= sizeof(struct ev_rec)) {
            uint64_t g = __atomic_load_n((const uint64_t *)(const void *)(r->data + off + 8),
                                         __ATOMIC_RELAXED);
            r->last_gseq = g ? g - 1 : 0;
            break;
        }
        p += len;
    }
}

static bool wanted(const struct soth_ring_filter *flt, const struct ev_rec *rec)
{
    if (flt == NULL)
        return true;
    if (flt->type_mask && !(flt->type_mask & (1ull << rec->type)))
        return false;
    if (flt->has_flow && rec->flow_id != flt->flow_id)
        return false;
    return true;
}

/* Records to JSON lines (emit), or, with x set, into an exchange assembler (overruns are
 * then seen by the assembler as seq gaps, docs/exchanges.md). */
static size_t poll_impl(struct soth_ring_reader *r, const struct soth_ring_filter *flt,
                        void (*emit)(void *ctx, const char *line, size_t len), void *ctx,
                        struct soth_xasm *x)
{
    size_t n_out = 0;
    uint64_t wp = atomic_load_explicit(&r->hdr->write_pos, memory_order_acquire);
    bool reloaded = false;
    while (r->pos < wp) {
        uint64_t oldest = atomic_load_explicit(&r->hdr->oldest, memory_order_acquire);
        if (oldest > wp && !reloaded) {
            /* Our wp is stale: the writer went on (and past us) while we were printing. */
            wp = atomic_load_explicit(&r->hdr->write_pos, memory_order_acquire);
            reloaded = true;
            continue;
        }
        if (oldest > wp || wp - oldest > r->cap) {
            /* The writer never publishes this: a corrupted file. Bound the work and stop. */
            r->pos = wp;
            break;
        }
        reloaded = false;
        if (r->pos < oldest) {
            r->pos = oldest;
            r->lapped = true;
            continue;
        }
        uint64_t off = r->pos & (r->cap - 1);
        uint32_t len = 0;
        uint16_t type = 0;
        if (off % REC_ALIGN == 0 && off + REC_ALIGN <= r->cap)
            rec_peek(r, off, &len, &type);
        bool sane = len >= REC_ALIGN && len % REC_ALIGN == 0 && off + len <= r->cap &&
                    (type == REC_PAD || (len >= sizeof(struct ev_rec) && len <= REC_MAX));
        if (sane && type != REC_PAD)
            rec_copy_out(r->rec, r->data + off, len);
        /* The copy is only good if the writer had not begun to overwrite it (seqlock). */
        oldest = atomic_load_explicit(&r->hdr->oldest, memory_order_acquire);
        if (r->pos < oldest) {
            r->pos = oldest;
            r->lapped = true;
            continue;
        }
        if (!sane) {
            /* Only a corrupted file gets here: skip to what the writer wrote last. */
            r->pos = wp;
            r->lapped = true;
            break;
        }
        r->pos += len;
        if (type == REC_PAD)
            continue;
        struct ev_rec *rec = (struct ev_rec *)r->rec;
        if (x != NULL) {
            r->lapped = false;
            if (rec->gseq > r->last_gseq)
                r->last_gseq = rec->gseq;
            if (rec->type < SOTH_EV_TYPE_COUNT && soth_xasm_feed(x, rec, len) == 0)
                n_out++;
            continue;
        }
        if (r->lapped || rec->gseq > r->last_gseq + 1) {
            uint64_t lost = rec->gseq > r->last_gseq ? rec->gseq - r->last_gseq - 1 : 0;
            char line[96];
            int ln = snprintf(line, sizeof(line), "{\"type\":\"ring_overrun\",\"lost\":%llu}\n",
                              (unsigned long long)lost);
            emit(ctx, line, (size_t)ln);
            n_out++;
            r->lapped = false;
        }
        if (rec->gseq > r->last_gseq)
            r->last_gseq = rec->gseq;
        if (rec->type >= SOTH_EV_TYPE_COUNT || !wanted(flt, rec))
            continue; /* an unknown type comes only from a corrupted file */
        r->line.len = 0;
        if (soth_ev_rec_to_json(rec, len, &r->line) == 0) {
            emit(ctx, r->line.p, r->line.len);
            n_out++;
        }
    }
    return n_out;
}

size_t soth_ring_reader_poll(struct soth_ring_reader *r, const struct soth_ring_filter *flt,
                             void (*emit)(void *ctx, const char *line, size_t len), void *ctx)
{
    return poll_impl(r, flt, emit, ctx, NULL);
}

size_t soth_ring_reader_poll_exchanges(struct soth_ring_reader *r, struct soth_xasm *x)
{
    return poll_impl(r, NULL, NULL, NULL, x);
}
