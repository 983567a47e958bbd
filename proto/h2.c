/*
 * The HTTP/2 relay (docs/http2.md): an nghttp2 server session toward the client, an nghttp2 client
 * session toward the upstream, both driven only through nghttp2_session_mem_recv/mem_send.
 *
 * Streams: every client stream gets a slot (struct h2s) that is the stream user data on both
 * sessions and the source of both data providers. Request/response heads are collected per
 * leg (a header block is contiguous on its connection, RFC 9113 4.3, so one collector per
 * leg suffices), checked against max_header_list_size (nghttp2 1.52 does not enforce it on
 * receive), then submitted on the other leg. A request or response head is lent to nghttp2
 * rather than copied (NGHTTP2_NV_FLAG_NO_COPY_*): the collector's bytes go with the HEADERS
 * frame until nghttp2 reports it sent or dropped, and the collector starts a new buffer
 * (struct lent below).
 *
 * Flow control (nghttpx's pattern): both sessions run with no_auto_window_update. DATA is
 * copied into the slot's chunk list; the other leg's data provider hands it out with
 * NGHTTP2_DATA_FLAG_NO_COPY, and send_data_callback copies it into that leg's output chunk and
 * only then calls nghttp2_session_consume on the receiving leg. So the receiving leg's
 * windows reopen exactly as fast as the other leg drains, and the bytes held per direction
 * never exceed the connection window we advertise on the receiving leg. docs/http2.md has
 * the whole bound and the outcome table.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <nghttp2/nghttp2.h>

#include "soth/blockcache.h"
#include "soth/proto/h2.h"
#include "soth/proto/headers.h"

#define OUT_CAP     SOTH_H2_OUT_BYTES
#define FRAME_HD    9
#define CHUNK_BYTES SOTH_H2_CHUNK_BYTES
#define CHUNK_DATA  (CHUNK_BYTES - 2 * sizeof(void *))

#define DEF_MAX_HEADER_LIST   65536
#define DEF_MAX_STREAMS       100
#define DEF_INITIAL_WINDOW    65535
#define DEF_CONN_WINDOW       (1u << 20)
#define DEF_MAX_SETTINGS      32
#define DEF_MAX_CONTINUATIONS 8
#define DEF_RST_BURST         1000
#define DEF_RST_RATE          33
#define H2_MAX_WINDOW         ((1u << 31) - 1)
#define H2_DEFAULT_WINDOW     65535u /* RFC 9113 6.9.2: in force until SETTINGS are acked */
#define HEADER_FIELD_OVERHEAD 32     /* RFC 9113 6.5.2 */
#define HPACK_TABLE           4096u /* RFC 9113 6.5.2: SETTINGS_HEADER_TABLE_SIZE's initial value */

/* ---- body buffers: per-stream lists of fixed chunks from a per-relay free list */

struct chunk {
    struct chunk *next;
    uint32_t rd, wr; /* read and write offsets in data[] */
    char data[CHUNK_DATA];
};

_Static_assert(sizeof(struct chunk) <= CHUNK_BYTES, "a chunk larger than a lent buffer");

struct cbuf {
    struct chunk *head, *tail;
    size_t len; /* bytes held */
};

/* ---- header blocks */

struct hfield {
    uint32_t noff, nlen, voff, vlen; /* into hblock.bytes */
    uint8_t flags;                   /* NGHTTP2_NV_FLAG_NO_INDEX kept */
};

struct hblock {
    char *bytes; /* a struct lent, then the fields' bytes from LENT_HDR on */
    size_t len, cap;
    size_t hint; /* capacity to start the next buffer with (a lent one's use) */
    struct hfield *f;
    size_t n, fcap;
    nghttp2_nv *nv; /* built at the end of the block */
    size_t nvcap;
    struct soth_header *hdr; /* regular fields, for the callbacks */
    size_t hdrcap;
    size_t list_size; /* RFC 9113 size: name + value + 32 per field */
    bool over;        /* list_size went over max_header_list_size */
};

/* A head's bytes lent to nghttp2 with the HEADERS frame submitted from them: nghttp2 keeps
 * pointers into them (NGHTTP2_NV_FLAG_NO_COPY_*) until it has serialized the frame, so they
 * stay on the sending leg's list until on_frame_send / on_frame_not_send names a frame whose
 * first field lies in them, or the relay is freed (nghttp2_session_del frees queued frames
 * without callbacks). The header sits at the start of the collector's buffer. */
struct lent {
    struct lent *next;
    size_t cap; /* bytes of the whole buffer, header included */
};
#define LENT_HDR        sizeof(struct lent)
#define LENT_FIRST_HINT 512 /* a first head's buffer; grown by doubling */

/* A finished block: views into the hblock arrays. */
struct hview {
    nghttp2_nv *nv;
    size_t n;
    struct soth_header *hdr;
    size_t nh;
    struct soth_iov method, scheme, authority, path, protocol, status;
};

/* Trailers held until the body before them has been forwarded (nghttp2_submit_trailer must
 * follow the last DATA). One allocation: the nv array then the bytes. */
struct trailers {
    size_t n;
    size_t size; /* allocation size, counted in soth_h2_relay.trailer_bytes */
    nghttp2_nv nv[];
};

/* ---- page blocks: nghttp2's per-session buffers an idle relay gives back
 *
 * While a session is made (leg_init), its allocations of a page or more are page-aligned
 * blocks from libc (posix_memalign), remembered here and freed with free(): nghttp2 1.52
 * makes two, the outbound frame buffer (one chunk of 16 KiB + 10 bytes, kept for the session's
 * life; a frame is serialized into it and handed out by nghttp2_session_mem_send, dead once
 * the next call returns 0) and the stream map's table (256 buckets of 16 bytes, all zero when
 * the map is empty). soth_h2_relay_release hands their pages back to the kernel. */
#define PB_PAGE     4096u
#define PB_MAX      4u
#define PB_FRAMEBUF (16384u + FRAME_HD + 1u) /* nghttp2's NGHTTP2_FRAMEBUF_CHUNKLEN */

struct pblock {
    char *p;  /* page-aligned, from the thread's slabs (or posix_memalign) */
    size_t n; /* bytes nghttp2 asked for */
};

/*
 * Where page blocks come from: slabs of anonymous memory of this thread (mmap), not the heap,
 * so that the sessions' big buffers never sit between the heap's small objects (with them
 * there, the small chunks glibc's per-thread cache keeps after a burst pin pages that
 * malloc_trim could otherwise give back: docs/performance.md, "Memory after bursts"). A freed
 * block goes onto its size's free list; beyond PBT_WARM of them its pages go back to the kernel
 * at once (they read as zeros and fault back in when reused), and soth_h2_thread_trim gives
 * back the warm ones too. Slabs are never unmapped: address space only, bounded by the most
 * blocks ever in use at once. Sanitizer (and BC_OFF) builds take posix_memalign, which their
 * checks see.
 */
#define PBT_SLAB    (256u * 1024u)
#define PBT_CLASSES 8u  /* blocks of 1 to 8 pages; larger ones take posix_memalign */
#define PBT_WARM    32u /* free blocks per class kept resident */

struct pbt_class {
    char **v; /* free blocks; those at index >= PBT_WARM have been given back */
    size_t n, cap;
};

static __thread struct {
    char *cur; /* the unused part of the newest slab */
    size_t left;
    struct pbt_class cls[PBT_CLASSES];
} pbt;

/* The pages of a block of n bytes from the slabs, 0 when it takes posix_memalign instead. */
static size_t pbt_pages(size_t n)
{
    size_t pages = (n + PB_PAGE - 1) / PB_PAGE;
    return pages <= PBT_CLASSES && soth_bc_enabled() ? pages : 0;
}

static char *pbt_get(size_t pages)
{
    struct pbt_class *c = &pbt.cls[pages - 1];
    if (c->n > 0)
        return c->v[--c->n];
    size_t need = pages * PB_PAGE;
    if (pbt.left < need) {
        void *s = mmap(NULL, PBT_SLAB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED)
            return NULL;
        pbt.cur = s;
        pbt.left = PBT_SLAB;
    }
    char *p = pbt.cur;
    pbt.cur += need;
    pbt.left -= need;
    return p;
}

/* Onto its free list (without room there, it is only given back to the kernel: lost to
 * reuse, not to memory). */
static void pbt_put(char *p, size_t pages)
{
    struct pbt_class *c = &pbt.cls[pages - 1];
    if (c->n >= PBT_WARM)
        (void)madvise(p, pages * PB_PAGE, MADV_DONTNEED);
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        char **v = realloc(c->v, cap * sizeof(*v));
        if (v == NULL) {
            (void)madvise(p, pages * PB_PAGE, MADV_DONTNEED);
            return;
        }
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = p;
}

void soth_h2_thread_trim(void)
{
    for (size_t k = 0; k < PBT_CLASSES; k++) {
        struct pbt_class *c = &pbt.cls[k];
        for (size_t i = 0; i < c->n && i < PBT_WARM; i++)
            (void)madvise(c->v[i], (k + 1) * PB_PAGE, MADV_DONTNEED);
    }
}

/* ---- streams */

#define S_C_OPEN         0x00001u  /* the client-leg stream is alive in the server session */
#define S_U_OPEN         0x00002u  /* the upstream stream is submitted and not closed */
#define S_U_ABANDONED    0x00004u  /* we reset the upstream stream: nothing more is reported */
#define S_REQ_EOF        0x00008u  /* END_STREAM received from the client */
#define S_RESP_EOF       0x00010u  /* END_STREAM received from the upstream */
#define S_RESP_HEAD      0x00020u  /* a final head (relayed or ours) was submitted to the client */
#define S_RESP_DONE      0x00040u  /* the response END_STREAM reached the client's output */
#define S_FINAL_RECV     0x00080u  /* a final (non-1xx) response head came from the upstream */
#define S_C_RST_RECV     0x00100u  /* the client sent RST_STREAM */
#define S_U_RST_RECV     0x00200u  /* the upstream sent RST_STREAM */
#define S_C_RST_OURS     0x00400u  /* we submitted RST_STREAM toward the client */
#define S_U_RST_OURS     0x00800u  /* we submitted RST_STREAM toward the upstream */
#define S_REQ_DISCARD    0x01000u  /* request data is dropped (and consumed) on arrival */
#define S_RESP_DISCARD   0x02000u  /* response data is dropped (and consumed) on arrival */
#define S_RST_AFTER_RESP 0x04000u  /* RST_STREAM(NO_ERROR) the client once the response ended */
#define S_OUTCOME        0x08000u  /* outcome decided (the first cause wins) */
#define S_REPORTED       0x10000u  /* on_stream_end fired */
#define S_REFUSED        0x20000u  /* answered by the relay (431): never forwarded */
#define S_U_REF          0x40000u  /* the upstream session may still use this slot */
#define S_RESP_HEAD_OUT  0x80000u  /* the final head left toward the client */
#define S_RST_PENDING    0x100000u /* RST_STREAM toward the client waits for the head */

struct h2s {
    struct h2s *next, *prev;              /* active list in creation (= client stream id) order */
    int32_t cid, uid;                     /* client-leg and upstream-leg stream ids (uid 0: none) */
    uint32_t f;                           /* S_* */
    struct cbuf buf[SOTH_LEG_COUNT];      /* by the leg that sent the bytes */
    struct trailers *trl[SOTH_LEG_COUNT]; /* pending trailers, by the leg that sent them */
    uint64_t bytes[SOTH_LEG_COUNT];       /* body bytes reported, by the leg that sent them */
    enum soth_h2_outcome outcome;
    uint32_t error_code;
    const char *detail;
    uint32_t c_rst_code, u_rst_code; /* codes of RST_STREAM received */
    uint32_t rst_pending;            /* code for S_RST_PENDING */
};

/* ---- client frame scan
 *
 * Stream states nghttp2 forgets: with no closed streams kept (no RFC 7540 priority tree),
 * nghttp2 ignores DATA and HEADERS on a closed stream, accepts nothing about a stream id
 * below one already used, and skips PRIORITY frames unread. The relay reads the 9-byte
 * header of every client frame (and a PRIORITY frame's 5-byte payload) before nghttp2 does and
 * remembers, for the last SCAN_IDS client stream ids, whether the client opened the stream
 * and whether it closed its side (END_STREAM or RST_STREAM): docs/http2.md, "Stream states". */
#define SCAN_IDS        1024 /* client stream ids remembered (odd ones: SCAN_IDS / 2 bits) */
#define SCAN_WORDS      (SCAN_IDS / 2 / 64)
#define CLIENT_MAGIC    24 /* RFC 9113 3.4 */
#define PRIORITY_LEN    5
#define FT_DATA         0x0
#define FT_HEADERS      0x1
#define FT_PRIORITY     0x2
#define FT_RST_STREAM   0x3
#define FT_CONTINUATION 0x9
#define FF_END_STREAM   0x1
#define FF_END_HEADERS  0x4
#define FF_PADDED       0x8
/* Frames that carry nothing (PRIORITY, DATA without data or END_STREAM) cost the relay and
 * nghttp2 work but no flow-control window: at most this many more of them than frames that
 * carry something (HEADERS, DATA with data), docs/http2.md "Stream states". */
#define SCAN_IDLE_MAX 1000

struct scan {
    uint32_t magic_left; /* client magic bytes still to pass over */
    uint32_t skip;       /* payload bytes of the current frame not read */
    uint8_t hd[FRAME_HD + PRIORITY_LEN];
    uint8_t have, need; /* bytes in hd, bytes wanted there before deciding */
    bool in_block;      /* inside a header block: only CONTINUATION may come (nghttp2 checks) */
    uint32_t max_id;    /* highest stream id the client opened with HEADERS */
    uint32_t idle;      /* frames carrying nothing, less those carrying something (>= 0) */
    uint64_t opened[SCAN_WORDS], closed[SCAN_WORDS]; /* by (id >> 1) % (SCAN_IDS / 2) */
};

/* ---- legs */

enum leg_state {
    LEG_LIVE = 0, /* reading and writing */
    LEG_FAILING,  /* fatal error: no more reading, the terminating GOAWAY still goes out */
    LEG_DEAD,     /* no I/O at all (transport gone, or terminating GOAWAY flushed) */
    LEG_PARKED,   /* upstream only: its session ended while idle (soth_h2_relay_park); a new
                     one is made by soth_h2_relay_unpark */
    LEG_STATE_COUNT,
};

struct leg {
    struct soth_h2_relay *r;
    nghttp2_session *s;
    enum soth_leg side;
    enum leg_state st;
    uint32_t goaway_ours; /* graceful GOAWAYs we submitted and not yet seen sent */
    bool goaway_sent;     /* we submitted a graceful GOAWAY on this leg */
    bool term_sent;       /* the terminating GOAWAY was just serialized: emit, then DEAD */
    bool failed;          /* the leg ended on a connection error (terminating GOAWAY) */
    bool goaway_recv;     /* the peer sent GOAWAY */
    bool held;            /* soth_h2_relay_hold: flush leaves this leg's output alone */
    bool drained;         /* the last nghttp2_session_mem_send returned 0 */
    struct hblock hb;
    bool hb_on;             /* the block being received is on a stream we relay: collect it */
    int32_t hb_sid;         /* that block's stream */
    struct lent *lent;      /* heads lent to this leg's session, not yet sent or dropped, */
    struct lent **lent_end; /* oldest first (frames leave in that order): &last->next */
    size_t out_len;
    char *out; /* coalesced output for cbs.out (OUT_CAP bytes): when lent, only while out_len > 0 */
};

struct soth_h2_relay {
    struct soth_h2_cbs cbs;
    struct soth_h2_settings set; /* defaults resolved */
    struct soth_h2_mem umem;
    nghttp2_mem nmem;
    struct h2s *head, *tail; /* active slots */
    struct h2s *free_slots;
    uint32_t slot_cap;
    struct chunk *free_chunks;
    size_t n_chunks, max_chunks;
    size_t trailer_bytes, trailer_budget; /* trailers held for streams, and their cap */
    struct soth_h2_stats st;
    bool refuse_new;    /* upstream GOAWAY/gone, client GOAWAY, shutdown */
    bool connect_proto; /* SETTINGS_ENABLE_CONNECT_PROTOCOL sent to the client */
    bool nomem;         /* an allocation failed inside a callback */
    bool lend;          /* cbs.buf_get / buf_put lend output buffers and body chunks */
    int out_err;        /* first error returned by cbs.out */
    struct scan scan;   /* client frames, before nghttp2 reads them */
    void *lctx;         /* umem's context for nghttp2's allocations */
    bool pb_on;         /* a session is being made: its large allocations are page blocks */
    bool up_on;         /* ... and it is the upstream leg's: its small ones go to up_page */
    uint8_t n_pb;
    struct pblock pb[PB_MAX];
    char *up_page; /* the upstream session's page (below), NULL when there is none; the bytes
                      handed out of it are st.up_page_bytes */
    char *alt;     /* strip_h3_alt_svc: rewritten Alt-Svc values (grown, kept) */
    size_t altcap;
    /* docs/http2.md "Idle upstream connection": a request came while the upstream leg was
     * parked; nghttp2 paused in its head and the client bytes it did not read wait here,
     * the first stash_scanned of them already seen by the scan */
    bool waking;
    struct cbuf stash;
    size_t stash_scanned;
    struct leg leg[SOTH_LEG_COUNT];
};

static const char *const outcome_names[SOTH_H2_OUTCOME_COUNT] = {
    [SOTH_H2_COMPLETE] = "complete",
    [SOTH_H2_CLIENT_ABORTED] = "client_aborted",
    [SOTH_H2_UPSTREAM_ABORTED] = "upstream_aborted",
    [SOTH_H2_RESET] = "reset",
};

const char *soth_h2_outcome_name(enum soth_h2_outcome o)
{
    if ((unsigned)o >= SOTH_H2_OUTCOME_COUNT)
        return "?";
    return outcome_names[o];
}

/* ---- allocation */

static void *libc_malloc(size_t n, void *ctx)
{
    (void)ctx;
    return malloc(n);
}
static void libc_free(void *p, void *ctx)
{
    (void)ctx;
    free(p);
}
static void *libc_calloc(size_t a, size_t b, void *ctx)
{
    (void)ctx;
    return calloc(a, b);
}
static void *libc_realloc(void *p, size_t n, void *ctx)
{
    (void)ctx;
    return realloc(p, n);
}

static const struct soth_h2_mem libc_mem = {NULL,        libc_malloc,  libc_free,
                                            libc_calloc, libc_realloc, NULL};

static void *ralloc(struct soth_h2_relay *r, size_t n)
{
    return r->umem.malloc_fn(n, r->umem.ctx);
}

static void rfree(struct soth_h2_relay *r, void *p)
{
    if (p != NULL)
        r->umem.free_fn(p, r->umem.ctx);
}

/* nghttp2's allocator: the relay's, with page blocks while a session is made. */
static void *pb_new(struct soth_h2_relay *r, size_t n)
{
    /* From libc, not the relay's allocator: memalign puts what it skips to reach the page
     * boundary back on malloc's free lists, where a block of our own allocator rounded up by
     * hand would keep it, and the page of its header resident. */
    void *p = NULL;
    size_t pages = pbt_pages(n);
    if (r->n_pb == PB_MAX)
        return r->umem.malloc_fn(n, r->lctx);
    if (pages > 0)
        p = pbt_get(pages);
    else if (posix_memalign(&p, PB_PAGE, n) != 0)
        p = NULL;
    if (p == NULL)
        return r->umem.malloc_fn(n, r->lctx);
    r->pb[r->n_pb++] = (struct pblock){p, n};
    r->st.page_bytes += n;
    return p;
}

/*
 * The upstream session's page: while the upstream leg's session is made, its small
 * allocations (the session struct, 2,928 bytes in nghttp2 1.52, and what fits after it: one
 * HPACK ring buffer of 1 KiB) are carved from one page of the thread's slabs instead of the
 * heap, and that page goes back whole when the session is deleted (an idle upstream is closed
 * after timeouts.upstream_idle_ms, docs/http2.md "Idle upstream connection"). On the heap they
 * left holes amid the client legs' live objects that malloc_trim could not give back
 * (docs/http2.md "Memory"). Frees into the page are ignored; nghttp2 reallocates none of these
 * objects. Sanitizer and BC_OFF builds have no slabs and keep the heap.
 */
static bool in_up_page(const struct soth_h2_relay *r, const void *p)
{
    return (uintptr_t)p - (uintptr_t)r->up_page < PB_PAGE;
}

static void *up_page_take(struct soth_h2_relay *r, size_t n)
{
    size_t need = n == 0 ? 16u : (n + 15u) & ~(size_t)15u; /* never the page's end */
    if (r->up_page == NULL && (pbt_pages(1) == 0 || (r->up_page = pbt_get(1)) == NULL))
        return NULL;
    if (need > PB_PAGE - r->st.up_page_bytes)
        return NULL;
    void *p = r->up_page + r->st.up_page_bytes;
    r->st.up_page_bytes += need;
    return p;
}

/* After the upstream session is deleted (its frees into the page were ignored). */
static void up_page_drop(struct soth_h2_relay *r)
{
    if (r->up_page != NULL)
        pbt_put(r->up_page, 1);
    r->up_page = NULL;
    r->st.up_page_bytes = 0;
}

static struct pblock *pb_find(struct soth_h2_relay *r, const void *p)
{
    for (unsigned i = 0; i < r->n_pb; i++)
        if (r->pb[i].p == p)
            return &r->pb[i];
    return NULL;
}

static void pb_del(struct soth_h2_relay *r, struct pblock *b)
{
    r->st.page_bytes -= b->n;
    size_t pages = pbt_pages(b->n);
    if (pages > 0)
        pbt_put(b->p, pages);
    else
        free(b->p);
    *b = r->pb[--r->n_pb];
}

/* The slow paths, out of line: nghttp2 allocates and frees some 50 times per request, and the
 * fast paths below stay a test and a jump to the relay's allocator. */
static __attribute__((noinline)) void *pb_malloc(struct soth_h2_relay *r, size_t n, bool zero)
{
    void *p;
    if (n < PB_PAGE) {
        if (r->up_on && (p = up_page_take(r, n)) != NULL) {
            if (zero)
                memset(p, 0, n);
            return p;
        }
        return zero ? r->umem.calloc_fn(1, n, r->lctx) : r->umem.malloc_fn(n, r->lctx);
    }
    p = pb_new(r, n);
    if (p != NULL && zero)
        memset(p, 0, n);
    return p;
}

static __attribute__((noinline)) void pb_free(struct soth_h2_relay *r, void *p)
{
    if (in_up_page(r, p))
        return;
    struct pblock *b = pb_find(r, p);
    if (b != NULL)
        pb_del(r, b);
    else if (p != NULL)
        r->umem.free_fn(p, r->lctx);
}

static __attribute__((noinline)) void *pb_realloc(struct soth_h2_relay *r, struct pblock *b,
                                                  size_t n)
{
    /* Not done by nghttp2 1.52 (its frame buffer grows by chunks); kept correct anyway. */
    void *q = r->umem.malloc_fn(n, r->lctx);
    if (q == NULL)
        return NULL;
    memcpy(q, b->p, n < b->n ? n : b->n);
    pb_del(r, b);
    return q;
}

static bool page_aligned(const void *p)
{
    return ((uintptr_t)p & (PB_PAGE - 1)) == 0;
}

static void *n_malloc(size_t n, void *ctx)
{
    struct soth_h2_relay *r = ctx;
    if (__builtin_expect(r->pb_on, 0))
        return pb_malloc(r, n, false);
    return r->umem.malloc_fn(n, r->lctx);
}

static void n_free(void *p, void *ctx)
{
    struct soth_h2_relay *r = ctx;
    if (__builtin_expect(page_aligned(p) || in_up_page(r, p), 0)) /* NULL included */
        pb_free(r, p);
    else
        r->umem.free_fn(p, r->lctx);
}

static void *n_calloc(size_t a, size_t b, void *ctx)
{
    struct soth_h2_relay *r = ctx;
    size_t n;
    if (__builtin_expect(r->pb_on, 0) && !__builtin_mul_overflow(a, b, &n))
        return pb_malloc(r, n, true);
    return r->umem.calloc_fn(a, b, r->lctx);
}

static void *n_realloc(void *p, size_t n, void *ctx)
{
    struct soth_h2_relay *r = ctx;
    if (p == NULL)
        return n_malloc(n, ctx);
    if (__builtin_expect(in_up_page(r, p), 0)) {
        /* Not done by nghttp2 1.52 (as pb_realloc); the old object's size is not known. */
        void *q = r->umem.malloc_fn(n, r->lctx);
        size_t room = PB_PAGE - (size_t)((char *)p - r->up_page);
        if (q != NULL)
            memcpy(q, p, n < room ? n : room);
        return q;
    }
    struct pblock *b = page_aligned(p) ? pb_find(r, p) : NULL;
    if (__builtin_expect(b != NULL, 0))
        return pb_realloc(r, b, n);
    return r->umem.realloc_fn(p, n, r->lctx);
}

static bool all_zero(const char *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Grow *p (elements of `elem` bytes) to hold `need`, doubling; never above `max` elements. */
static int grow(struct soth_h2_relay *r, void **p, size_t *cap, size_t need, size_t elem,
                size_t max)
{
    if (need <= *cap)
        return 0;
    if (need > max)
        return SOTH_E_TOO_LARGE;
    size_t n = *cap < 16 ? 16 : *cap * 2;
    if (n < need)
        n = need;
    if (n > max)
        n = max;
    void *q = r->umem.realloc_fn(*p, n * elem, r->umem.ctx);
    if (q == NULL)
        return SOTH_E_NOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* ---- chunk buffers */

static struct chunk *chunk_get(struct soth_h2_relay *r)
{
    struct chunk *c = r->free_chunks;
    if (c != NULL) {
        r->free_chunks = c->next;
    } else {
        /* Flow control keeps the live count under max_chunks; reaching it means a peer
         * got past nghttp2's window checks, which we treat as an error on that stream. */
        if (r->n_chunks >= r->max_chunks)
            return NULL;
        c = r->lend ? r->cbs.buf_get(r->cbs.ctx, CHUNK_BYTES) : ralloc(r, sizeof(*c));
        if (c == NULL)
            return NULL;
        r->n_chunks++;
        r->st.chunk_bytes += sizeof(*c);
    }
    c->next = NULL;
    c->rd = c->wr = 0;
    return c;
}

static void chunk_put(struct soth_h2_relay *r, struct chunk *c)
{
    if (r->lend) { /* back to the lender: an idle relay holds no chunk */
        r->n_chunks--;
        r->st.chunk_bytes -= sizeof(*c);
        r->cbs.buf_put(r->cbs.ctx, c, CHUNK_BYTES);
        return;
    }
    c->next = r->free_chunks;
    r->free_chunks = c;
}

static int cbuf_append(struct soth_h2_relay *r, struct cbuf *b, const uint8_t *p, size_t n)
{
    while (n > 0) {
        struct chunk *t = b->tail;
        if (t == NULL || t->wr == CHUNK_DATA) {
            struct chunk *c = chunk_get(r);
            if (c == NULL)
                return SOTH_E_NOMEM;
            if (t == NULL)
                b->head = c;
            else
                t->next = c;
            b->tail = t = c;
        }
        size_t k = CHUNK_DATA - t->wr;
        if (k > n)
            k = n;
        memcpy(t->data + t->wr, p, k);
        t->wr += (uint32_t)k;
        b->len += k;
        p += k;
        n -= k;
    }
    return 0;
}

/* Copy n (<= b->len) bytes out of b into dst, releasing emptied chunks. */
static void cbuf_pop(struct soth_h2_relay *r, struct cbuf *b, char *dst, size_t n)
{
    SOTH_BUG_ON(n > b->len);
    while (n > 0) {
        struct chunk *h = b->head;
        size_t k = h->wr - h->rd;
        if (k > n)
            k = n;
        memcpy(dst, h->data + h->rd, k);
        h->rd += (uint32_t)k;
        b->len -= k;
        dst += k;
        n -= k;
        if (h->rd == h->wr && (h->wr == CHUNK_DATA || b->len == 0)) {
            b->head = h->next;
            if (b->head == NULL)
                b->tail = NULL;
            chunk_put(r, h);
        }
    }
}

/* Release everything; returns the bytes dropped. */
static size_t cbuf_drop(struct soth_h2_relay *r, struct cbuf *b)
{
    size_t n = b->len;
    while (b->head != NULL) {
        struct chunk *h = b->head;
        b->head = h->next;
        chunk_put(r, h);
    }
    b->tail = NULL;
    b->len = 0;
    return n;
}

/* ---- header blocks */

static void hb_reset(struct hblock *hb)
{
    hb->len = LENT_HDR;
    hb->n = 0;
    hb->list_size = 0;
    hb->over = false;
}

static void hb_free(struct soth_h2_relay *r, struct hblock *hb)
{
    rfree(r, hb->bytes);
    rfree(r, hb->f);
    rfree(r, hb->nv);
    rfree(r, hb->hdr);
    memset(hb, 0, sizeof(*hb));
}

/* Mark v's fields as lent: every name, and every value still in hb's bytes (a rewritten
 * Alt-Svc value lives in r->alt, reused by the next response, and is copied). Names came
 * through nghttp2's receive checks, lowercase, as NO_COPY_NAME requires. */
static void nv_lend(const struct hblock *hb, struct hview *v)
{
    uintptr_t lo = (uintptr_t)hb->bytes, hi = lo + hb->len;
    for (size_t i = 0; i < v->n; i++) {
        nghttp2_nv *nv = &v->nv[i];
        nv->flags |= NGHTTP2_NV_FLAG_NO_COPY_NAME;
        if ((uintptr_t)nv->value >= lo && (uintptr_t)nv->value < hi)
            nv->flags |= NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    }
}

/* The HEADERS frame built from hb was submitted on leg `to`: its bytes go to that leg's lent
 * list, and hb starts a new buffer with its next block. */
static void hb_lend(struct hblock *hb, struct leg *to)
{
    struct lent *b = (struct lent *)(void *)hb->bytes;
    b->cap = hb->cap;
    b->next = NULL;
    *to->lent_end = b;
    to->lent_end = &b->next;
    hb->hint = hb->len;
    hb->bytes = NULL;
    hb->cap = 0;
}

/* nghttp2 is done with a HEADERS frame on l (sent or dropped): give back the lent bytes its
 * first field points into, if it came from a lent head. */
static void lent_done(struct soth_h2_relay *r, struct leg *l, const nghttp2_frame *frame)
{
    /* A lent head starts with a pseudo-header; trailers (copied) do not. */
    if (l->lent == NULL || frame->headers.nvlen == 0 || frame->headers.nva[0].namelen == 0 ||
        frame->headers.nva[0].name[0] != ':')
        return;
    uintptr_t p = (uintptr_t)frame->headers.nva[0].name;
    for (struct lent **pp = &l->lent; *pp != NULL; pp = &(*pp)->next) {
        struct lent *b = *pp;
        if (p >= (uintptr_t)b && p < (uintptr_t)b + b->cap) {
            *pp = b->next;
            if (l->lent_end == &b->next)
                l->lent_end = pp;
            rfree(r, b);
            return;
        }
    }
}

static void lent_free_all(struct soth_h2_relay *r, struct leg *l)
{
    while (l->lent != NULL) {
        struct lent *b = l->lent;
        l->lent = b->next;
        rfree(r, b);
    }
    l->lent_end = &l->lent;
}

static int hb_add(struct soth_h2_relay *r, struct hblock *hb, const uint8_t *name, size_t nlen,
                  const uint8_t *value, size_t vlen, uint8_t flags)
{
    size_t limit = r->set.max_header_list_size;
    hb->list_size += nlen + vlen + HEADER_FIELD_OVERHEAD;
    if (hb->over)
        return 0;
    if (hb->list_size > limit) {
        /* Keep decoding (the HPACK state must stay in sync) but store nothing more. */
        hb->over = true;
        return 0;
    }
    /* list_size <= limit bounds both arrays: bytes <= limit, fields <= limit / 32. A buffer
     * after a lent one starts at the size that one used. */
    size_t need = hb->len + nlen + vlen, max = limit + LENT_HDR;
    if (hb->bytes == NULL) {
        size_t start = hb->hint > LENT_FIRST_HINT ? hb->hint : LENT_FIRST_HINT;
        if (need < start)
            need = start < max ? start : max;
    }
    int rc = grow(r, (void **)&hb->bytes, &hb->cap, need, 1, max);
    if (rc == 0)
        rc = grow(r, (void **)&hb->f, &hb->fcap, hb->n + 1, sizeof(*hb->f),
                  limit / HEADER_FIELD_OVERHEAD + 1);
    if (rc < 0)
        return rc;
    struct hfield *f = &hb->f[hb->n++];
    f->noff = (uint32_t)hb->len;
    f->nlen = (uint32_t)nlen;
    memcpy(hb->bytes + hb->len, name, nlen);
    hb->len += nlen;
    f->voff = (uint32_t)hb->len;
    f->vlen = (uint32_t)vlen;
    memcpy(hb->bytes + hb->len, value, vlen);
    hb->len += vlen;
    f->flags = flags & NGHTTP2_NV_FLAG_NO_INDEX;
    return 0;
}

static bool iov_eq(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(p, lit, l) == 0;
}

/* Connection-specific fields (RFC 9113 8.2.2). nghttp2's messaging checks already refuse
 * them on receive; filtering again keeps the relay safe if that ever changes. */
static bool conn_specific(const char *n, size_t nl, const char *v, size_t vl)
{
    switch (nl) {
    case 2:
        return iov_eq(n, nl, "te") && !iov_eq(v, vl, "trailers");
    case 7:
        return iov_eq(n, nl, "upgrade");
    case 10:
        return iov_eq(n, nl, "connection") || iov_eq(n, nl, "keep-alive");
    case 16:
        return iov_eq(n, nl, "proxy-connection");
    case 17:
        return iov_eq(n, nl, "transfer-encoding");
    default:
        return false;
    }
}

/* Build the nv array (pseudo-headers first, as received) and the regular-field view. */
static int hb_finish(struct soth_h2_relay *r, struct hblock *hb, struct hview *v)
{
    memset(v, 0, sizeof(*v));
    size_t max = r->set.max_header_list_size / HEADER_FIELD_OVERHEAD + 1;
    int rc = grow(r, (void **)&hb->nv, &hb->nvcap, hb->n, sizeof(*hb->nv), max);
    if (rc == 0)
        rc = grow(r, (void **)&hb->hdr, &hb->hdrcap, hb->n, sizeof(*hb->hdr), max);
    if (rc < 0)
        return rc;
    v->nv = hb->nv;
    v->hdr = hb->hdr;
    for (size_t i = 0; i < hb->n; i++) {
        const struct hfield *f = &hb->f[i];
        const char *n = hb->bytes + f->noff, *val = hb->bytes + f->voff;
        struct soth_iov iv = soth_iov(val, f->vlen);
        if (f->nlen > 0 && n[0] == ':') {
            if (iov_eq(n, f->nlen, ":method"))
                v->method = iv;
            else if (iov_eq(n, f->nlen, ":scheme"))
                v->scheme = iv;
            else if (iov_eq(n, f->nlen, ":authority"))
                v->authority = iv;
            else if (iov_eq(n, f->nlen, ":path"))
                v->path = iv;
            else if (iov_eq(n, f->nlen, ":protocol"))
                v->protocol = iv;
            else if (iov_eq(n, f->nlen, ":status"))
                v->status = iv;
        } else {
            if (conn_specific(n, f->nlen, val, f->vlen))
                continue;
            v->hdr[v->nh++] = (struct soth_header){soth_iov(n, f->nlen), iv};
        }
        v->nv[v->n++] = (nghttp2_nv){(uint8_t *)n, (uint8_t *)val, f->nlen, f->vlen, f->flags};
    }
    return 0;
}

/*
 * strip_h3_alt_svc (docs/http3.md, "Forcing clients back to TCP"): v's nv array, what is
 * relayed, loses the HTTP/3 entries of its Alt-Svc fields (soth_alt_svc_strip), and a field
 * left without entries is dropped; v->hdr, what the callback reports, stays as received. The
 * new values go to r->alt, grown per connection and kept (nghttp2 copies them when the head is
 * submitted: nv_lend lends only what lies in the block). removed[0 .. max) gets the removed entries
 * (iovs into the block). Returns how many entries were removed in all, or SOTH_E_NOMEM.
 */
static ssize_t alt_svc_strip(struct soth_h2_relay *r, struct hview *v, struct soth_iov *removed,
                             size_t max)
{
    size_t need = 0, off = 0, nrem = 0, k = 0;
    bool any = false;
    if (!r->set.strip_h3_alt_svc)
        return 0;
    for (size_t i = 0; i < v->n; i++) {
        if (iov_eq((const char *)v->nv[i].name, v->nv[i].namelen, "alt-svc")) {
            any = true;
            need += v->nv[i].valuelen;
        }
    }
    if (!any)
        return 0;
    int rc = grow(r, (void **)&r->alt, &r->altcap, need + 1, 1, need + 1); /* never NULL */
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < v->n; i++) {
        nghttp2_nv nv = v->nv[i];
        if (iov_eq((const char *)nv.name, nv.namelen, "alt-svc")) {
            size_t n = 0, got = nrem < max ? nrem : max;
            ssize_t len =
                soth_alt_svc_strip(soth_iov((const char *)nv.value, nv.valuelen), r->alt + off,
                                   r->altcap - off, removed + got, max - got, &n);
            SOTH_BUG_ON(len < 0); /* r->alt holds every Alt-Svc value */
            if (n > 0) {
                nrem += n;
                if (len == 0)
                    continue;
                nv.value = (uint8_t *)r->alt + off;
                nv.valuelen = (size_t)len;
                off += (size_t)len;
            }
        }
        v->nv[k++] = nv;
    }
    v->n = k;
    return (ssize_t)nrem;
}

static struct trailers *trailers_copy(struct soth_h2_relay *r, const struct hview *v)
{
    size_t bytes = 0;
    for (size_t i = 0; i < v->n; i++)
        bytes += v->nv[i].namelen + v->nv[i].valuelen;
    size_t size = sizeof(struct trailers) + v->n * sizeof(nghttp2_nv) + bytes;
    /* Trailers wait for the body before them; HPACK lets a peer send many large ones for
     * a few bytes, so what all streams hold together is capped. */
    if (r->trailer_bytes + size > r->trailer_budget)
        return NULL;
    struct trailers *t = ralloc(r, size);
    if (t == NULL)
        return NULL;
    r->trailer_bytes += size;
    uint8_t *p = (uint8_t *)(t->nv + v->n);
    t->n = v->n;
    t->size = size;
    for (size_t i = 0; i < v->n; i++) {
        const nghttp2_nv *s = &v->nv[i];
        t->nv[i] = (nghttp2_nv){p, p + s->namelen, s->namelen, s->valuelen, s->flags};
        memcpy(p, s->name, s->namelen);
        memcpy(p + s->namelen, s->value, s->valuelen);
        p += s->namelen + s->valuelen;
    }
    return t;
}

static void trailers_free(struct soth_h2_relay *r, struct trailers **tp)
{
    if (*tp == NULL)
        return;
    r->trailer_bytes -= (*tp)->size;
    rfree(r, *tp);
    *tp = NULL;
}

/* ---- slots */

static struct h2s *slot_new(struct soth_h2_relay *r)
{
    if (r->st.streams >= r->slot_cap)
        return NULL;
    struct h2s *s = r->free_slots;
    if (s != NULL) {
        r->free_slots = s->next;
    } else {
        s = ralloc(r, sizeof(*s));
        if (s == NULL)
            return NULL;
    }
    memset(s, 0, sizeof(*s));
    s->prev = r->tail;
    if (r->tail != NULL)
        r->tail->next = s;
    else
        r->head = s;
    r->tail = s;
    r->st.streams++;
    if (r->st.streams > r->st.streams_peak)
        r->st.streams_peak = r->st.streams;
    return s;
}

static void slot_free(struct soth_h2_relay *r, struct h2s *s)
{
    r->st.buffered[SOTH_LEG_CLIENT] -= cbuf_drop(r, &s->buf[SOTH_LEG_CLIENT]);
    r->st.buffered[SOTH_LEG_UPSTREAM] -= cbuf_drop(r, &s->buf[SOTH_LEG_UPSTREAM]);
    trailers_free(r, &s->trl[0]);
    trailers_free(r, &s->trl[1]);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        r->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        r->tail = s->prev;
    s->next = r->free_slots;
    r->free_slots = s;
    r->st.streams--;
}

/* The free stream slots, back to the allocator; returns their bytes. */
static size_t slots_free_all(struct soth_h2_relay *r)
{
    size_t got = 0;
    while (r->free_slots != NULL) {
        struct h2s *s = r->free_slots;
        r->free_slots = s->next;
        rfree(r, s);
        got += sizeof(*s);
    }
    return got;
}

static struct h2s *slot_by_uid(struct soth_h2_relay *r, int32_t uid)
{
    for (struct h2s *s = r->head; s != NULL; s = s->next)
        if (s->uid == uid && (s->f & S_U_REF))
            return s;
    return NULL;
}

static void set_outcome(struct h2s *s, enum soth_h2_outcome o, uint32_t code, const char *detail)
{
    if (s->f & S_OUTCOME)
        return;
    s->f |= S_OUTCOME;
    s->outcome = o;
    s->error_code = o == SOTH_H2_COMPLETE ? 0 : code;
    s->detail = detail;
}

/* Report the end once nothing more can be reported for the stream (client leg closed, and
 * the upstream stream closed or abandoned); free the slot once neither session uses it. */
static void maybe_end(struct soth_h2_relay *r, struct h2s *s)
{
    if (!(s->f & S_REPORTED) && !(s->f & S_C_OPEN) &&
        (!(s->f & S_U_OPEN) || (s->f & S_U_ABANDONED))) {
        s->f |= S_REPORTED;
        set_outcome(s, SOTH_H2_RESET, NGHTTP2_INTERNAL_ERROR, "relay_error");
        if (r->cbs.on_stream_end != NULL) {
            struct soth_h2_stream_end e = {
                .outcome = s->outcome,
                .request_bytes = s->bytes[SOTH_LEG_CLIENT],
                .response_bytes = s->bytes[SOTH_LEG_UPSTREAM],
                .error_code = s->error_code,
                .detail = s->detail,
            };
            r->cbs.on_stream_end(r->cbs.ctx, s->cid, &e);
        }
    }
    if ((s->f & S_REPORTED) && !(s->f & (S_C_OPEN | S_U_REF)))
        slot_free(r, s);
}

/* ---- flow control helpers */

static bool leg_alive(const struct leg *l)
{
    return l->st == LEG_LIVE || l->st == LEG_FAILING;
}

/* Give bytes we will never forward back to the receiving leg's windows. */
static void consume(struct soth_h2_relay *r, enum soth_leg side, int32_t sid, size_t n)
{
    struct leg *l = &r->leg[side];
    if (n == 0 || l->st != LEG_LIVE || sid <= 0)
        return;
    if (nghttp2_session_consume(l->s, sid, n) != 0)
        r->nomem = true; /* only NOMEM is possible here: the leg fails at the next feed */
}

/* Drop the request body held for s: nothing of it will be forwarded any more. */
static void drop_request(struct soth_h2_relay *r, struct h2s *s)
{
    size_t n = cbuf_drop(r, &s->buf[SOTH_LEG_CLIENT]);
    r->st.buffered[SOTH_LEG_CLIENT] -= n;
    consume(r, SOTH_LEG_CLIENT, s->cid, n);
    trailers_free(r, &s->trl[SOTH_LEG_CLIENT]);
    s->f |= S_REQ_DISCARD;
}

static void drop_response(struct soth_h2_relay *r, struct h2s *s)
{
    size_t n = cbuf_drop(r, &s->buf[SOTH_LEG_UPSTREAM]);
    r->st.buffered[SOTH_LEG_UPSTREAM] -= n;
    if (s->uid > 0)
        consume(r, SOTH_LEG_UPSTREAM, s->uid, n);
    trailers_free(r, &s->trl[SOTH_LEG_UPSTREAM]);
    s->f |= S_RESP_DISCARD;
}

/* Error codes that describe one hop (framing, flow control, HPACK) say nothing about the
 * stream to the other leg: they become INTERNAL_ERROR. Application-level codes pass. */
static uint32_t map_code(uint32_t code)
{
    switch (code) {
    case NGHTTP2_NO_ERROR:
    case NGHTTP2_INTERNAL_ERROR:
    case NGHTTP2_REFUSED_STREAM:
    case NGHTTP2_CANCEL:
    case NGHTTP2_CONNECT_ERROR:
    case NGHTTP2_ENHANCE_YOUR_CALM:
    case NGHTTP2_INADEQUATE_SECURITY:
    case NGHTTP2_HTTP_1_1_REQUIRED:
        return code;
    default:
        return NGHTTP2_INTERNAL_ERROR;
    }
}

static void rst_client(struct soth_h2_relay *r, struct h2s *s, uint32_t code)
{
    if (!(s->f & S_C_OPEN) || (s->f & S_C_RST_OURS))
        return;
    s->f |= S_C_RST_OURS;
    drop_response(r, s);
    if ((s->f & S_RESP_HEAD) && !(s->f & S_RESP_HEAD_OUT)) {
        /* nghttp2 drops a queued HEADERS once RST_STREAM is submitted for its stream: let
         * the relayed head out first, then reset (on_frame_send). */
        s->f |= S_RST_PENDING;
        s->rst_pending = code;
        return;
    }
    if (r->leg[SOTH_LEG_CLIENT].st == LEG_LIVE &&
        nghttp2_submit_rst_stream(r->leg[SOTH_LEG_CLIENT].s, NGHTTP2_FLAG_NONE, s->cid, code) != 0)
        r->nomem = true;
}

/* Abandon the upstream stream: RST_STREAM it, drop both bodies, report nothing more from it. */
static void rst_upstream(struct soth_h2_relay *r, struct h2s *s, uint32_t code)
{
    if (!(s->f & S_U_OPEN) || (s->f & S_U_ABANDONED))
        return;
    s->f |= S_U_ABANDONED | S_U_RST_OURS;
    drop_request(r, s);
    drop_response(r, s);
    if (r->leg[SOTH_LEG_UPSTREAM].st == LEG_LIVE &&
        nghttp2_submit_rst_stream(r->leg[SOTH_LEG_UPSTREAM].s, NGHTTP2_FLAG_NONE, s->uid, code) !=
            0)
        r->nomem = true;
}

static const nghttp2_nv nv_431[] = {
    {(uint8_t *)":status", (uint8_t *)"431", 7, 3, NGHTTP2_NV_FLAG_NONE},
    {(uint8_t *)"content-length", (uint8_t *)"0", 14, 1, NGHTTP2_NV_FLAG_NONE},
};
static const nghttp2_nv nv_502[] = {
    {(uint8_t *)":status", (uint8_t *)"502", 7, 3, NGHTTP2_NV_FLAG_NONE},
    {(uint8_t *)"content-length", (uint8_t *)"0", 14, 1, NGHTTP2_NV_FLAG_NONE},
};
static const nghttp2_nv nv_504[] = {
    {(uint8_t *)":status", (uint8_t *)"504", 7, 3, NGHTTP2_NV_FLAG_NONE},
    {(uint8_t *)"content-length", (uint8_t *)"0", 14, 1, NGHTTP2_NV_FLAG_NONE},
};

/* Answer the client ourselves (431/502, no body), or reset when a head already went out. */
static void answer_client(struct soth_h2_relay *r, struct h2s *s, const nghttp2_nv *nv, size_t n,
                          uint32_t rst_code)
{
    if (!(s->f & S_C_OPEN) || (s->f & S_C_RST_OURS))
        return;
    drop_response(r, s);
    if (s->f & S_RESP_HEAD) {
        rst_client(r, s, rst_code);
        return;
    }
    s->f |= S_RESP_HEAD;
    if (!(s->f & S_REQ_EOF))
        s->f |= S_RST_AFTER_RESP; /* RFC 9113 8.1: stop the request body with NO_ERROR */
    if (r->leg[SOTH_LEG_CLIENT].st == LEG_LIVE &&
        nghttp2_submit_response(r->leg[SOTH_LEG_CLIENT].s, s->cid, nv, n, NULL) != 0)
        rst_client(r, s, rst_code);
}

static void goaway_graceful(struct soth_h2_relay *r, enum soth_leg side, uint32_t code)
{
    struct leg *l = &r->leg[side];
    if (l->st != LEG_LIVE || l->goaway_sent)
        return;
    l->goaway_sent = true;
    /* Toward the client: the streams it opened so far may finish. Toward the upstream: we
     * accept no pushes, so the last peer-initiated stream is 0. */
    int32_t last = side == SOTH_LEG_CLIENT ? nghttp2_session_get_last_proc_stream_id(l->s) : 0;
    if (nghttp2_submit_goaway(l->s, NGHTTP2_FLAG_NONE, last, code, NULL, 0) == 0)
        l->goaway_ours++;
    else
        r->nomem = true;
}

/* ---- stream closure on each leg */

static void client_stream_closed(struct soth_h2_relay *r, struct h2s *s, uint32_t code)
{
    if (!(s->f & S_C_OPEN))
        return;
    s->f &= ~S_C_OPEN;
    drop_response(r, s);
    if (s->f & S_C_RST_RECV)
        set_outcome(s, SOTH_H2_CLIENT_ABORTED, s->c_rst_code, "client_rst_stream");
    else
        set_outcome(s, SOTH_H2_RESET, code, "client_stream_error");
    /* A complete exchange whose request body is still being forwarded keeps its upstream
     * stream; anything else abandons it. */
    if (!((s->f & S_RESP_DONE) && (s->f & S_REQ_EOF))) {
        uint32_t up = (s->f & S_C_RST_RECV) ? map_code(s->c_rst_code) : NGHTTP2_CANCEL;
        rst_upstream(r, s, up);
    }
    maybe_end(r, s);
}

static void upstream_stream_closed(struct soth_h2_relay *r, struct h2s *s, uint32_t code)
{
    if (!(s->f & S_U_OPEN))
        return;
    s->f &= ~(S_U_OPEN | S_U_REF);
    drop_request(r, s);
    if (s->f & S_U_ABANDONED) {
        maybe_end(r, s);
        return;
    }
    bool rst = (s->f & S_U_RST_RECV) != 0;
    uint32_t rcode = rst ? s->u_rst_code : code;
    if ((s->f & S_RESP_EOF) && rcode == NGHTTP2_NO_ERROR) {
        /* The whole response arrived: deliver the rest; stop a request body still coming. */
        if ((s->f & S_C_OPEN) && !(s->f & S_REQ_EOF)) {
            s->f |= S_RST_AFTER_RESP;
            if (s->f & S_RESP_DONE)
                rst_client(r, s, NGHTTP2_NO_ERROR);
        }
    } else if (rst) {
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, rcode, "upstream_rst_stream");
        rst_client(r, s, map_code(rcode));
    } else if (code == NGHTTP2_REFUSED_STREAM) {
        /* Not processed by the upstream (GOAWAY): the client may retry elsewhere. */
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, code, "upstream_refused");
        rst_client(r, s, NGHTTP2_REFUSED_STREAM);
    } else {
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, code, "upstream_stream_error");
        answer_client(r, s, nv_502, SOTH_ARRAY_LEN(nv_502), NGHTTP2_INTERNAL_ERROR);
    }
    maybe_end(r, s);
}

/* A leg is gone (transport closed, or its terminating GOAWAY flushed). */
static void leg_down(struct soth_h2_relay *r, enum soth_leg side, enum soth_h2_outcome o,
                     const char *detail)
{
    struct leg *l = &r->leg[side];
    if (l->st == LEG_DEAD)
        return;
    l->st = LEG_DEAD;
    l->out_len = 0;
    if (side == SOTH_LEG_UPSTREAM)
        r->refuse_new = true;
    for (struct h2s *s = r->head, *next; s != NULL; s = next) {
        next = s->next;
        if (side == SOTH_LEG_CLIENT) {
            /* Nobody is left to answer: cancel every upstream stream, including complete
             * exchanges still forwarding a request body. */
            if (s->f & S_C_OPEN) {
                s->f &= ~S_C_OPEN;
                drop_response(r, s);
                set_outcome(s, o, 0, detail);
            }
            rst_upstream(r, s, NGHTTP2_CANCEL);
        } else {
            if (!(s->f & S_U_OPEN))
                continue;
            s->f &= ~(S_U_OPEN | S_U_REF);
            drop_request(r, s);
            if (!(s->f & S_U_ABANDONED)) {
                if (s->f & S_RESP_EOF) {
                    if ((s->f & S_C_OPEN) && !(s->f & S_REQ_EOF)) {
                        s->f |= S_RST_AFTER_RESP;
                        if (s->f & S_RESP_DONE)
                            rst_client(r, s, NGHTTP2_NO_ERROR);
                    }
                } else {
                    set_outcome(s, o, 0, detail);
                    answer_client(r, s, nv_502, SOTH_ARRAY_LEN(nv_502), NGHTTP2_INTERNAL_ERROR);
                }
            }
        }
        maybe_end(r, s);
    }
    if (side == SOTH_LEG_CLIENT)
        goaway_graceful(r, SOTH_LEG_UPSTREAM, NGHTTP2_NO_ERROR);
    else
        goaway_graceful(r, SOTH_LEG_CLIENT, NGHTTP2_NO_ERROR);
}

/* nghttp2 reported a fatal error on this leg: queue the terminating GOAWAY. */
static void leg_terminate(struct soth_h2_relay *r, enum soth_leg side, uint32_t code)
{
    struct leg *l = &r->leg[side];
    if (l->st != LEG_LIVE)
        return;
    l->failed = true;
    if (nghttp2_session_terminate_session(l->s, code) != 0) {
        leg_down(r, side, side == SOTH_LEG_CLIENT ? SOTH_H2_RESET : SOTH_H2_UPSTREAM_ABORTED,
                 "relay_error");
        return;
    }
    l->st = LEG_FAILING;
}

/* ---- nghttp2 callbacks */

static struct h2s *stream_of(struct leg *l, int32_t sid)
{
    return nghttp2_session_get_stream_user_data(l->s, sid);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct leg *l = ud;
    struct soth_h2_relay *r = l->r;
    (void)session;
    hb_reset(&l->hb);
    l->hb_sid = frame->hd.stream_id;
    if (l->side != SOTH_LEG_CLIENT || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* A block is contiguous (RFC 9113 4.3): its stream is looked up once, not per field. */
        l->hb_on = stream_of(l, frame->hd.stream_id) != NULL;
        return 0;
    }
    l->hb_on = false;
    struct h2s *s = NULL;
    enum leg_state ust = r->leg[SOTH_LEG_UPSTREAM].st;
    if (!r->refuse_new && (ust == LEG_LIVE || ust == LEG_PARKED))
        s = slot_new(r);
    if (s == NULL) {
        /* Not processed at all: the client may retry (RFC 9113 8.7). */
        r->st.streams_refused++;
        if (nghttp2_submit_rst_stream(l->s, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                      NGHTTP2_REFUSED_STREAM) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    }
    s->cid = frame->hd.stream_id;
    s->f = S_C_OPEN;
    r->st.streams_total++;
    if (nghttp2_session_set_stream_user_data(l->s, s->cid, s) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    l->hb_on = true;
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct leg *l = ud;
    (void)session;
    (void)frame;
    if (!l->hb_on)
        return 0;
    int rc = hb_add(l->r, &l->hb, name, namelen, value, valuelen, flags);
    if (rc < 0) {
        /* Out of memory for this block: nghttp2 resets the stream (INTERNAL_ERROR) and calls
         * no callback for the rest of the block. */
        l->hb.over = true;
        l->hb_on = false;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    struct soth_h2_relay *r = l->r;
    if (l->side == SOTH_LEG_CLIENT && r->leg[SOTH_LEG_UPSTREAM].st == LEG_PARKED && !r->waking) {
        /* A request for a parked upstream: nghttp2 stops here (the field is ours already) and
         * the rest waits for the new connection (soth_h2_relay_unpark). */
        r->waking = true;
        return NGHTTP2_ERR_PAUSE;
    }
    return 0;
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *ud);

static void request_head(struct soth_h2_relay *r, struct h2s *s, const nghttp2_frame *frame)
{
    struct leg *l = &r->leg[SOTH_LEG_CLIENT];
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    struct hview v;
    if (l->hb.over) {
        /* docs/answers.md: request headers over the limit get 431; the connection carries on. */
        s->f |= S_REFUSED;
        drop_request(r, s);
        set_outcome(s, SOTH_H2_RESET, 0, "request_headers_too_large");
        answer_client(r, s, nv_431, SOTH_ARRAY_LEN(nv_431), NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (r->refuse_new || r->leg[SOTH_LEG_UPSTREAM].st != LEG_LIVE) {
        /* The upstream went away (or announced GOAWAY) while this head was arriving:
         * nothing was forwarded, so the client may retry (RFC 9113 8.7). */
        s->f |= S_REFUSED;
        drop_request(r, s);
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, NGHTTP2_REFUSED_STREAM, "upstream_gone");
        rst_client(r, s, NGHTTP2_REFUSED_STREAM);
        return;
    }
    if (hb_finish(r, &l->hb, &v) < 0) {
        s->f |= S_REFUSED;
        drop_request(r, s);
        set_outcome(s, SOTH_H2_RESET, NGHTTP2_INTERNAL_ERROR, "relay_nomem");
        rst_client(r, s, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (r->cbs.on_request_head != NULL) {
        struct soth_h2_request req = {
            .method = v.method,
            .scheme = v.scheme,
            .authority = v.authority,
            .path = v.path,
            .protocol = v.protocol,
            .headers = v.hdr,
            .n_headers = v.nh,
            .end_stream = end,
        };
        r->cbs.on_request_head(r->cbs.ctx, s->cid, &req);
    }
    uint32_t retry =
        r->cbs.on_request_admit != NULL ? r->cbs.on_request_admit(r->cbs.ctx, s->cid) : 0;
    if (retry > 0) {
        char ra[12];
        int rn = snprintf(ra, sizeof(ra), "%u", retry);
        const nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"429", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"retry-after", (uint8_t *)ra, 11, (size_t)rn, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"content-length", (uint8_t *)"0", 14, 1, NGHTTP2_NV_FLAG_NONE},
        };
        s->f |= S_REFUSED;
        drop_request(r, s);
        set_outcome(s, SOTH_H2_COMPLETE, 0, NULL);
        answer_client(r, s, nv, SOTH_ARRAY_LEN(nv), NGHTTP2_INTERNAL_ERROR);
        return;
    }
    nghttp2_data_provider prov = {.source.ptr = s, .read_callback = read_body};
    struct leg *u = &r->leg[SOTH_LEG_UPSTREAM];
    nv_lend(&l->hb, &v);
    int32_t uid = nghttp2_submit_request(u->s, NULL, v.nv, v.n, end ? NULL : &prov, s);
    if (uid >= 0)
        hb_lend(&l->hb, u);
    if (uid < 0) {
        s->f |= S_REFUSED;
        drop_request(r, s);
        set_outcome(s, SOTH_H2_RESET, NGHTTP2_REFUSED_STREAM, "upstream_submit_failed");
        rst_client(r, s, NGHTTP2_REFUSED_STREAM);
        return;
    }
    s->uid = uid;
    s->f |= S_U_OPEN | S_U_REF;
}

static void response_head(struct soth_h2_relay *r, struct h2s *s, const nghttp2_frame *frame)
{
    struct leg *l = &r->leg[SOTH_LEG_UPSTREAM];
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    struct hview v;
    if ((s->f & (S_U_ABANDONED | S_RESP_DISCARD)) || !(s->f & S_C_OPEN))
        return;
    if (l->hb.over || hb_finish(r, &l->hb, &v) < 0) {
        /* 502-class: the client gets a 502, the upstream stream is reset. */
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, 0,
                    l->hb.over ? "response_headers_too_large" : "relay_nomem");
        rst_upstream(r, s, NGHTTP2_INTERNAL_ERROR);
        answer_client(r, s, nv_502, SOTH_ARRAY_LEN(nv_502), NGHTTP2_INTERNAL_ERROR);
        return;
    }
    int status = 0;
    for (size_t i = 0; i < v.status.len; i++)
        status = status * 10 + (v.status.base[i] - '0'); /* nghttp2 checked: 3 digits */
    if (status < 100) {
        /* "000".."099" pass nghttp2's check: a malformed response (RFC 9113 8.1.1, RFC 9110
         * 15), never relayed: the upstream stream is reset, the client gets a 502. */
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, NGHTTP2_PROTOCOL_ERROR, "response_bad_status");
        rst_upstream(r, s, NGHTTP2_PROTOCOL_ERROR);
        answer_client(r, s, nv_502, SOTH_ARRAY_LEN(nv_502), NGHTTP2_INTERNAL_ERROR);
        return;
    }
    struct leg *c = &r->leg[SOTH_LEG_CLIENT];
    struct soth_iov removed[SOTH_H2_ALT_SVC_MAX];
    ssize_t nrem = alt_svc_strip(r, &v, removed, SOTH_H2_ALT_SVC_MAX);
    if (nrem < 0) {
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, 0, "relay_nomem");
        rst_upstream(r, s, NGHTTP2_INTERNAL_ERROR);
        answer_client(r, s, nv_502, SOTH_ARRAY_LEN(nv_502), NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (status >= 100 && status < 200) {
        /* Interim response (100-continue, 103): relayed as is, not reported. Copied, not
         * lent: an origin may send any number of them while the client leg is held, and a
         * copy is their size where a lent buffer is at least LENT_FIRST_HINT. */
        if (nghttp2_submit_headers(c->s, NGHTTP2_FLAG_NONE, s->cid, NULL, v.nv, v.n, NULL) < 0)
            r->nomem = true;
        return;
    }
    nv_lend(&l->hb, &v);
    s->f |= S_FINAL_RECV;
    if (r->cbs.on_response_head != NULL) {
        struct soth_h2_response resp = {
            .status = status,
            .headers = v.hdr,
            .n_headers = v.nh,
            .end_stream = end,
            .alt_svc_removed = removed,
            .n_alt_svc_removed =
                (size_t)nrem < SOTH_H2_ALT_SVC_MAX ? (size_t)nrem : SOTH_H2_ALT_SVC_MAX,
        };
        r->cbs.on_response_head(r->cbs.ctx, s->cid, &resp);
    }
    nghttp2_data_provider prov = {.source.ptr = s, .read_callback = read_body};
    if (nghttp2_submit_response(c->s, s->cid, v.nv, v.n, end ? NULL : &prov) != 0) {
        set_outcome(s, SOTH_H2_RESET, NGHTTP2_INTERNAL_ERROR, "relay_nomem");
        rst_upstream(r, s, NGHTTP2_CANCEL);
        rst_client(r, s, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    hb_lend(&l->hb, c);
    s->f |= S_RESP_HEAD;
}

static void trailers_in(struct soth_h2_relay *r, struct h2s *s, enum soth_leg dir)
{
    struct leg *l = &r->leg[dir];
    uint32_t discard = dir == SOTH_LEG_CLIENT ? S_REQ_DISCARD : S_RESP_DISCARD;
    if (s->f & discard)
        return;
    struct hview v;
    struct trailers *t = NULL;
    if (!l->hb.over && hb_finish(r, &l->hb, &v) == 0)
        t = trailers_copy(r, &v);
    if (t == NULL) {
        /* over the list limit, over the trailer budget, or out of memory */
        if (dir == SOTH_LEG_CLIENT)
            set_outcome(s, SOTH_H2_RESET, NGHTTP2_INTERNAL_ERROR, "request_trailers_too_large");
        else
            set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, NGHTTP2_INTERNAL_ERROR,
                        "response_trailers_too_large");
        rst_upstream(r, s, NGHTTP2_CANCEL);
        rst_client(r, s, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    trailers_free(r, &s->trl[dir]);
    s->trl[dir] = t;
    if (r->cbs.on_trailers != NULL)
        r->cbs.on_trailers(r->cbs.ctx, dir, s->cid, v.hdr, v.nh);
}

/* Wake the other leg's data provider for s (no-op if it is not deferred). */
static void wake(struct soth_h2_relay *r, struct h2s *s, enum soth_leg dir)
{
    if (dir == SOTH_LEG_CLIENT) {
        if ((s->f & S_U_OPEN) && !(s->f & S_U_ABANDONED) &&
            r->leg[SOTH_LEG_UPSTREAM].st == LEG_LIVE)
            nghttp2_session_resume_data(r->leg[SOTH_LEG_UPSTREAM].s, s->uid);
    } else {
        if ((s->f & S_C_OPEN) && r->leg[SOTH_LEG_CLIENT].st == LEG_LIVE)
            nghttp2_session_resume_data(r->leg[SOTH_LEG_CLIENT].s, s->cid);
    }
}

static void upstream_settings(struct soth_h2_relay *r)
{
    struct leg *c = &r->leg[SOTH_LEG_CLIENT];
    if (r->connect_proto || c->st != LEG_LIVE)
        return;
    if (nghttp2_session_get_remote_settings(r->leg[SOTH_LEG_UPSTREAM].s,
                                            NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) != 1)
        return;
    /* RFC 8441: offer extended CONNECT to the client only when the origin supports it. */
    nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    if (nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, &iv, 1) == 0)
        r->connect_proto = true;
    else
        r->nomem = true;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct leg *l = ud;
    struct soth_h2_relay *r = l->r;
    bool client = l->side == SOTH_LEG_CLIENT;
    struct h2s *s = frame->hd.stream_id > 0 ? stream_of(l, frame->hd.stream_id) : NULL;
    (void)session;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        l->hb_on = false; /* the block is complete: no field is collected until the next */
        if (s == NULL)
            return 0;
        if (client) {
            if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
                request_head(r, s, frame);
            else
                trailers_in(r, s, SOTH_LEG_CLIENT);
        } else {
            if (!(s->f & S_FINAL_RECV))
                response_head(r, s, frame);
            else
                trailers_in(r, s, SOTH_LEG_UPSTREAM);
        }
        SOTH_FALLTHROUGH;
    case NGHTTP2_DATA:
        if (s == NULL || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            return 0;
        if (client) {
            s->f |= S_REQ_EOF;
            wake(r, s, SOTH_LEG_CLIENT);
            if (r->cbs.on_request_end != NULL)
                r->cbs.on_request_end(r->cbs.ctx, s->cid);
        } else {
            s->f |= S_RESP_EOF;
            wake(r, s, SOTH_LEG_UPSTREAM);
        }
        return 0;
    case NGHTTP2_RST_STREAM:
        if (s == NULL)
            return 0;
        if (client) {
            s->f |= S_C_RST_RECV;
            s->c_rst_code = frame->rst_stream.error_code;
        } else {
            s->f |= S_U_RST_RECV;
            s->u_rst_code = frame->rst_stream.error_code;
        }
        return 0;
    case NGHTTP2_GOAWAY:
        r->refuse_new = true;
        l->goaway_recv = true;
        if (client) {
            /* An error code here is about the client hop; the upstream only learns that no
             * more requests come. (Ours are always NO_ERROR, which on_frame_send relies on
             * to tell them from nghttp2's terminating GOAWAYs.) */
            goaway_graceful(r, SOTH_LEG_UPSTREAM, NGHTTP2_NO_ERROR);
        } else {
            /* Streams above last_stream_id are closed by nghttp2 with REFUSED_STREAM and
             * reset toward the client one by one; the others may finish. */
            goaway_graceful(r, SOTH_LEG_CLIENT, NGHTTP2_NO_ERROR);
        }
        return 0;
    case NGHTTP2_SETTINGS:
        if (!client && !(frame->hd.flags & NGHTTP2_FLAG_ACK))
            upstream_settings(r);
        return 0;
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud)
{
    struct leg *l = ud;
    struct soth_h2_relay *r = l->r;
    enum soth_leg dir = l->side;
    struct h2s *s = stream_of(l, sid);
    (void)flags;
    bool forward =
        s != NULL && (dir == SOTH_LEG_CLIENT
                          ? (s->f & (S_REQ_DISCARD | S_U_ABANDONED)) == 0 && (s->f & S_U_OPEN)
                          : (s->f & (S_RESP_DISCARD | S_U_ABANDONED)) == 0 && (s->f & S_C_OPEN));
    if (!forward) {
        /* Nobody will read it: give the window back at once. */
        if (nghttp2_session_consume(session, sid, len) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    }
    if (cbuf_append(r, &s->buf[dir], data, len) < 0) {
        if (nghttp2_session_consume(session, sid, len) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        if (dir == SOTH_LEG_CLIENT)
            set_outcome(s, SOTH_H2_RESET, NGHTTP2_INTERNAL_ERROR, "relay_buffer_exhausted");
        else
            set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, NGHTTP2_INTERNAL_ERROR,
                        "relay_buffer_exhausted");
        rst_upstream(r, s, NGHTTP2_CANCEL);
        rst_client(r, s, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    r->st.buffered[dir] += len;
    if (r->st.buffered[dir] > r->st.buffered_peak[dir])
        r->st.buffered_peak[dir] = r->st.buffered[dir];
    s->bytes[dir] += len;
    if (r->cbs.on_data != NULL)
        r->cbs.on_data(r->cbs.ctx, dir, s->cid, (const char *)data, len);
    wake(r, s, dir);
    return 0;
}

/* Data provider of both legs: source.ptr is the slot; the direction follows the session. */
static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
    struct leg *l = ud;
    struct h2s *s = source->ptr;
    enum soth_leg dir = soth_leg_other(l->side); /* the leg that sent what l now sends */
    uint32_t eof = dir == SOTH_LEG_CLIENT ? S_REQ_EOF : S_RESP_EOF;
    uint32_t discard = dir == SOTH_LEG_CLIENT ? S_REQ_DISCARD : S_RESP_DISCARD;
    struct cbuf *b = &s->buf[dir];
    (void)buf;
    if (s->f & discard)
        return NGHTTP2_ERR_DEFERRED; /* a reset is on its way: never fake an END_STREAM */
    /* A DATA frame plus its header must fit one output chunk. */
    size_t n = b->len;
    if (n > length)
        n = length;
    if (n > OUT_CAP - FRAME_HD)
        n = OUT_CAP - FRAME_HD;
    if (n > 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == b->len && (s->f & eof)) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        struct trailers *t = s->trl[dir];
        if (t != NULL) {
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            int rc = nghttp2_submit_trailer(session, sid, t->nv, t->n);
            trailers_free(l->r, &s->trl[dir]);
            if (rc != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return (ssize_t)n;
    }
    if (n == 0)
        return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

/* The leg's output buffer, lent (cbs.buf_get) or its own, before bytes go in. A failure
 * loses output: the transports must be closed (out_err). */
static int out_ready(struct soth_h2_relay *r, struct leg *l)
{
    if (l->out != NULL)
        return 0;
    l->out = r->lend ? r->cbs.buf_get(r->cbs.ctx, OUT_CAP) : ralloc(r, OUT_CAP);
    if (l->out == NULL) {
        if (r->out_err == 0)
            r->out_err = SOTH_E_NOMEM;
        return SOTH_E_NOMEM;
    }
    return 0;
}

/* An empty lent output buffer goes back: an idle leg holds none (docs/http2.md, "Memory"). */
static void out_release(struct soth_h2_relay *r, struct leg *l)
{
    if (r->lend && l->out != NULL && l->out_len == 0) {
        r->cbs.buf_put(r->cbs.ctx, l->out, OUT_CAP);
        l->out = NULL;
    }
}

static int out_emit(struct soth_h2_relay *r, struct leg *l)
{
    if (l->out_len == 0)
        return 0;
    size_t n = l->out_len;
    l->out_len = 0;
    int rc = r->out_err;
    if (l->st != LEG_DEAD && r->out_err >= 0) {
        rc = r->cbs.out(r->cbs.ctx, l->side, l->out, n);
        if (rc < 0)
            r->out_err = rc;
    }
    out_release(r, l);
    return rc < 0 ? rc : 0;
}

static int out_append(struct soth_h2_relay *r, struct leg *l, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (l->out_len == OUT_CAP) {
            int rc = out_emit(r, l);
            if (rc < 0)
                return rc;
        }
        int rc = out_ready(r, l);
        if (rc < 0)
            return rc;
        size_t k = OUT_CAP - l->out_len;
        if (k > n)
            k = n;
        memcpy(l->out + l->out_len, p, k);
        l->out_len += k;
        p += k;
        n -= k;
    }
    return 0;
}

/* NO_COPY DATA: frame header and payload go straight from the slot into the output chunk;
 * only now are the bytes handed on, so only now does the receiving leg get its window back. */
static int send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                     size_t length, nghttp2_data_source *source, void *ud)
{
    struct leg *l = ud;
    struct soth_h2_relay *r = l->r;
    struct h2s *s = source->ptr;
    enum soth_leg dir = soth_leg_other(l->side); /* the leg that sent what l now sends */
    (void)session;
    SOTH_BUG_ON(frame->data.padlen != 0); /* we never pad */
    if (l->out_len + FRAME_HD + length > OUT_CAP && out_emit(r, l) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (out_ready(r, l) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(l->out + l->out_len, framehd, FRAME_HD);
    l->out_len += FRAME_HD;
    cbuf_pop(r, &s->buf[dir], l->out + l->out_len, length);
    l->out_len += length;
    r->st.buffered[dir] -= length;
    if (dir == SOTH_LEG_CLIENT)
        consume(r, SOTH_LEG_CLIENT, s->cid, length);
    else
        consume(r, SOTH_LEG_UPSTREAM, s->uid, length);
    return 0;
}

/* A 1xx head we relayed (":status" comes first in what we submit). */
static bool is_interim(const nghttp2_frame *frame)
{
    const nghttp2_headers *h = &frame->headers;
    return h->nvlen > 0 && h->nva[0].namelen == 7 && h->nva[0].valuelen == 3 &&
           memcmp(h->nva[0].name, ":status", 7) == 0 && h->nva[0].value[0] == '1';
}

static void frame_sent(struct leg *l, const nghttp2_frame *frame)
{
    struct soth_h2_relay *r = l->r;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        if (frame->goaway.error_code == NGHTTP2_NO_ERROR && l->goaway_ours > 0) {
            l->goaway_ours--;
            return;
        }
        /* The terminating GOAWAY (nghttp2's answer to a connection error, or ours after a
         * fatal feed): pump emits its bytes, then the leg is finished. */
        l->term_sent = true;
        l->failed = true;
        return;
    }
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        l->side != SOTH_LEG_CLIENT)
        return;
    struct h2s *s = stream_of(l, frame->hd.stream_id);
    if (s == NULL)
        return;
    if (frame->hd.type == NGHTTP2_HEADERS && (s->f & S_RESP_HEAD) && !(s->f & S_RESP_HEAD_OUT) &&
        !is_interim(frame)) {
        s->f |= S_RESP_HEAD_OUT;
        if (s->f & S_RST_PENDING) {
            s->f &= ~S_RST_PENDING;
            if (nghttp2_submit_rst_stream(l->s, NGHTTP2_FLAG_NONE, s->cid, s->rst_pending) != 0)
                r->nomem = true;
            return;
        }
    }
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return;
    s->f |= S_RESP_DONE;
    set_outcome(s, SOTH_H2_COMPLETE, 0, "complete");
    if ((s->f & S_RST_AFTER_RESP) && !(s->f & S_REQ_EOF))
        rst_client(r, s, NGHTTP2_NO_ERROR);
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct leg *l = ud;
    (void)session;
    frame_sent(l, frame);
    if (frame->hd.type == NGHTTP2_HEADERS)
        lent_done(l->r, l, frame); /* after frame_sent: is_interim reads the fields */
    return 0;
}

static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int lib_error,
                             void *ud)
{
    struct leg *l = ud;
    (void)session;
    (void)lib_error;
    if (frame->hd.type == NGHTTP2_HEADERS)
        lent_done(l->r, l, frame); /* the frame was never serialized */
    /* A queued request that never left (GOAWAY received, or cancelled by our RST_STREAM):
     * nghttp2 never opened the stream, so on_stream_close will not come. */
    if (l->side != SOTH_LEG_UPSTREAM || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2s *s = stream_of(l, frame->hd.stream_id);
    if (s == NULL)
        s = slot_by_uid(l->r, frame->hd.stream_id);
    if (s != NULL)
        upstream_stream_closed(l->r, s, NGHTTP2_REFUSED_STREAM);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t code, void *ud)
{
    struct leg *l = ud;
    struct h2s *s = stream_of(l, sid);
    (void)session;
    /* A block that ends in a stream error (a malformed or refused head) gets no on_frame_recv:
     * the stream's close ends it (soth_h2_relay_release waits for no block half received). */
    if (l->hb_on && sid == l->hb_sid)
        l->hb_on = false;
    if (s == NULL)
        return 0;
    if (l->side == SOTH_LEG_CLIENT)
        client_stream_closed(l->r, s, code);
    else
        upstream_stream_closed(l->r, s, code);
    return 0;
}

/* ---- public API */

static int leg_init(struct soth_h2_relay *r, enum soth_leg side)
{
    struct leg *l = &r->leg[side];
    l->r = r;
    l->side = side;
    l->st = LEG_LIVE;
    l->lent_end = &l->lent;
    const struct soth_h2_settings *set = &r->set;

    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return SOTH_E_NOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data);

    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return SOTH_E_NOMEM;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_settings(opt, set->max_settings);
    nghttp2_option_set_max_continuations(opt, set->max_continuations);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    /* A header list at our limit must also fit when we send it on the other leg. */
    nghttp2_option_set_max_send_header_block_length(opt, set->max_header_list_size + 65536);
    if (side == SOTH_LEG_CLIENT) {
        nghttp2_option_set_stream_reset_rate_limit(opt, set->rst_burst, set->rst_rate);
    } else {
        /* Before the origin's SETTINGS arrive, open no more streams than RFC 9113 5.1.2
         * suggests every server allows. */
        nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
    }
    r->pb_on = true;
    r->up_on = side == SOTH_LEG_UPSTREAM;
    int rc = side == SOTH_LEG_CLIENT ? nghttp2_session_server_new3(&l->s, cb, l, opt, &r->nmem)
                                     : nghttp2_session_client_new3(&l->s, cb, l, opt, &r->nmem);
    r->pb_on = false;
    r->up_on = false;
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0)
        return SOTH_E_NOMEM;

    nghttp2_settings_entry iv[6];
    size_t n = 0;
    iv[n++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, set->max_header_list_size};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, set->initial_window};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1};
    if (side == SOTH_LEG_CLIENT) {
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                           set->max_concurrent_streams};
    } else {
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0};
        /* The protocol's default, said out loud (docs/http2.md, "Limits and protections"): nginx
         * answers any SETTINGS_HEADER_TABLE_SIZE by shrinking its encoder's table to 0 (it inserts
         * every response field and never refers to one), so our decoder stops storing and
         * evicting them. Other servers see no change. */
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, HPACK_TABLE};
    }
    if (nghttp2_submit_settings(l->s, NGHTTP2_FLAG_NONE, iv, n) != 0)
        return SOTH_E_NOMEM;
    if (set->connection_window > H2_DEFAULT_WINDOW &&
        nghttp2_session_set_local_window_size(l->s, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)set->connection_window) != 0)
        return SOTH_E_NOMEM;
    return 0;
}

static uint32_t or_default(uint32_t v, uint32_t d)
{
    return v != 0 ? v : d;
}

struct soth_h2_relay *soth_h2_relay_new(const struct soth_h2_cbs *cbs,
                                        const struct soth_h2_settings *s)
{
    static const struct soth_h2_settings zero;
    if (cbs == NULL || cbs->out == NULL)
        return NULL;
    if (s == NULL)
        s = &zero;
    const struct soth_h2_mem *m = s->mem != NULL ? s->mem : &libc_mem;
    struct soth_h2_relay *r = m->malloc_fn(sizeof(*r), m->ctx);
    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->cbs = *cbs;
    r->lend = cbs->buf_get != NULL && cbs->buf_put != NULL;
    r->umem = *m;
    r->lctx = m->lib_ctx != NULL ? m->lib_ctx : m->ctx;
    r->nmem = (nghttp2_mem){r, n_malloc, n_free, n_calloc, n_realloc};
    r->set = *s;
    r->set.mem = NULL;
    r->scan.magic_left = CLIENT_MAGIC;
    r->set.max_header_list_size = or_default(s->max_header_list_size, DEF_MAX_HEADER_LIST);
    r->set.max_concurrent_streams = or_default(s->max_concurrent_streams, DEF_MAX_STREAMS);
    r->set.initial_window = or_default(s->initial_window, DEF_INITIAL_WINDOW);
    r->set.connection_window = or_default(s->connection_window, DEF_CONN_WINDOW);
    r->set.max_settings = or_default(s->max_settings, DEF_MAX_SETTINGS);
    r->set.max_continuations = or_default(s->max_continuations, DEF_MAX_CONTINUATIONS);
    r->set.rst_burst = or_default(s->rst_burst, DEF_RST_BURST);
    r->set.rst_rate = or_default(s->rst_rate, DEF_RST_RATE);
    if (r->set.initial_window > H2_MAX_WINDOW)
        r->set.initial_window = H2_MAX_WINDOW;
    if (r->set.connection_window > H2_MAX_WINDOW)
        r->set.connection_window = H2_MAX_WINDOW;
    if (r->set.max_header_list_size > (1u << 24))
        r->set.max_header_list_size = 1u << 24;

    /* Slots outlive their client stream while an upstream RST_STREAM or a queued request
     * is pending: allow twice the concurrency, then refuse. */
    uint32_t mcs = r->set.max_concurrent_streams;
    r->slot_cap = mcs > (1u << 20) ? (1u << 21) : mcs * 2 + 16;
    /* Bytes held per direction never exceed the receiving leg's connection window (before
     * our WINDOW_UPDATE lands the RFC default of 65535 applies, hence the max). */
    size_t bound =
        r->set.connection_window > H2_DEFAULT_WINDOW ? r->set.connection_window : H2_DEFAULT_WINDOW;
    r->st.buffer_bound[SOTH_LEG_CLIENT] = bound;
    r->st.buffer_bound[SOTH_LEG_UPSTREAM] = bound;
    r->trailer_budget = 4 * (size_t)r->set.max_header_list_size;
    /* A list holding b bytes spans at most b / CHUNK_DATA + 2 chunks (partial head and
     * tail); each slot has two lists. */
    r->max_chunks = 2 * (bound / CHUNK_DATA) + 4 * (size_t)r->slot_cap + 2;

    if (leg_init(r, SOTH_LEG_CLIENT) < 0 || leg_init(r, SOTH_LEG_UPSTREAM) < 0) {
        soth_h2_relay_free(r);
        return NULL;
    }
    return r;
}

void soth_h2_relay_free(struct soth_h2_relay *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        /* nghttp2_session_del fires no callbacks. */
        if (r->leg[i].s != NULL)
            nghttp2_session_del(r->leg[i].s);
        if (i == SOTH_LEG_UPSTREAM)
            up_page_drop(r);
        hb_free(r, &r->leg[i].hb);
        lent_free_all(r, &r->leg[i]);
        if (r->leg[i].out != NULL) {
            if (r->lend)
                r->cbs.buf_put(r->cbs.ctx, r->leg[i].out, OUT_CAP);
            else
                rfree(r, r->leg[i].out);
        }
    }
    rfree(r, r->alt);
    cbuf_drop(r, &r->stash);
    while (r->head != NULL)
        slot_free(r, r->head);
    slots_free_all(r);
    while (r->free_chunks != NULL) {
        struct chunk *c = r->free_chunks;
        r->free_chunks = c->next;
        rfree(r, c);
    }
    struct soth_h2_mem m = r->umem;
    m.free_fn(r, m.ctx);
}

/* A 31-bit stream id (the reserved bit dropped), big-endian. */
static uint32_t get31(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]) & 0x7fffffffu;
}

static bool scan_bit(const uint64_t *set, uint32_t id)
{
    uint32_t i = (id >> 1) % (SCAN_IDS / 2);
    return (set[i / 64] >> (i % 64)) & 1;
}

static void scan_put(uint64_t *set, uint32_t id, bool on)
{
    uint32_t i = (id >> 1) % (SCAN_IDS / 2);
    if (on)
        set[i / 64] |= (uint64_t)1 << (i % 64);
    else
        set[i / 64] &= ~((uint64_t)1 << (i % 64));
}

/* id is a client stream id at or below max_id and still remembered. */
static bool scan_known(const struct scan *sc, uint32_t id)
{
    return (id & 1) && id <= sc->max_id && sc->max_id - id < SCAN_IDS;
}

/* HEADERS opening stream id > max_id: the ids skipped are closed without ever being opened
 * (RFC 9113 5.1.1). */
static void scan_open(struct scan *sc, uint32_t id)
{
    if ((id - sc->max_id) / 2 >= SCAN_IDS / 2) {
        memset(sc->opened, 0, sizeof(sc->opened));
        memset(sc->closed, 0, sizeof(sc->closed));
    } else {
        for (uint32_t k = sc->max_id + 2; k < id; k += 2) {
            scan_put(sc->opened, k, false);
            scan_put(sc->closed, k, false);
        }
    }
    scan_put(sc->opened, id, true);
    scan_put(sc->closed, id, false);
    sc->max_id = id;
}

enum scan_verdict {
    SCAN_PASS = 0,     /* nghttp2 reads the frame */
    SCAN_CONN_ERROR,   /* connection error: *code */
    SCAN_STREAM_ERROR, /* stream error on an open stream (else a connection error): *code */
};

/* A frame header (plus a PRIORITY payload) is complete: judge it, then note what it does to
 * its stream. */
static enum scan_verdict scan_frame(struct scan *sc, uint32_t *code)
{
    const uint8_t *h = sc->hd;
    uint32_t len = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
    uint8_t type = h[3], flags = h[4];
    uint32_t id = get31(h + 5);
    if (sc->in_block || type == FT_CONTINUATION) {
        /* Anything but the block's CONTINUATIONs is nghttp2's PROTOCOL_ERROR (RFC 9113 4.3). */
        sc->in_block = type == FT_CONTINUATION && !(flags & FF_END_HEADERS);
        return SCAN_PASS;
    }
    if (type == FT_HEADERS && !(flags & FF_END_HEADERS))
        sc->in_block = true;
    /* The flood budget (SCAN_IDLE_MAX). A padded DATA frame's data is what its padding leaves;
     * a pad length past the payload is nghttp2's PROTOCOL_ERROR. */
    uint32_t data_len = len;
    if (type == FT_DATA && (flags & FF_PADDED))
        data_len = len >= 1 && len - 1 > h[FRAME_HD] ? len - 1 - h[FRAME_HD] : 0;
    if (type == FT_PRIORITY || (type == FT_DATA && data_len == 0 && !(flags & FF_END_STREAM))) {
        if (++sc->idle > SCAN_IDLE_MAX) {
            *code = NGHTTP2_ENHANCE_YOUR_CALM;
            return SCAN_CONN_ERROR;
        }
    } else if ((type == FT_HEADERS || (type == FT_DATA && data_len > 0)) && sc->idle > 0) {
        sc->idle--;
    }
    switch (type) {
    case FT_DATA:
    case FT_HEADERS:
        if (id > sc->max_id && type == FT_HEADERS && (id & 1)) {
            scan_open(sc, id); /* nghttp2 judges a new stream (and stream 0, even ids) */
        } else if (scan_known(sc, id)) {
            if (!scan_bit(sc->opened, id)) {
                /* never opened, closed by a higher id: HEADERS is a stream id going back
                 * (5.1.1), DATA a frame on a closed stream (5.1) */
                *code = type == FT_HEADERS ? NGHTTP2_PROTOCOL_ERROR : NGHTTP2_STREAM_CLOSED;
                return SCAN_CONN_ERROR;
            }
            if (scan_bit(sc->closed, id)) {
                /* the client ended or reset the stream (5.1: half-closed (remote) or closed);
                 * frames after a reset of ours are not here: nghttp2 ignores those */
                *code = NGHTTP2_STREAM_CLOSED;
                return SCAN_CONN_ERROR;
            }
        }
        if ((flags & FF_END_STREAM) && scan_known(sc, id))
            scan_put(sc->closed, id, true);
        return SCAN_PASS;
    case FT_PRIORITY:
        if (id == 0) {
            *code = NGHTTP2_PROTOCOL_ERROR; /* 6.3 */
            return SCAN_CONN_ERROR;
        }
        if (len == PRIORITY_LEN) {
            if (get31(h + FRAME_HD) == id) {
                *code = NGHTTP2_PROTOCOL_ERROR; /* 5.3.1 */
                return SCAN_STREAM_ERROR;
            }
        }
        return SCAN_PASS; /* a wrong length is nghttp2's FRAME_SIZE_ERROR */
    case FT_RST_STREAM:
        if (scan_known(sc, id))
            scan_put(sc->closed, id, true);
        return SCAN_PASS;
    default:
        return SCAN_PASS;
    }
}

static ssize_t leg_recv(struct soth_h2_relay *r, enum soth_leg from, const char *data, size_t len)
{
    struct leg *l = &r->leg[from];
    ssize_t n = nghttp2_session_mem_recv(l->s, (const uint8_t *)data, len);
    if (n < 0 || r->nomem) {
        bool nomem = n == NGHTTP2_ERR_NOMEM || n == NGHTTP2_ERR_CALLBACK_FAILURE || r->nomem;
        r->nomem = false;
        uint32_t code = NGHTTP2_INTERNAL_ERROR;
        if (n == NGHTTP2_ERR_BAD_CLIENT_MAGIC)
            code = NGHTTP2_PROTOCOL_ERROR;
        else if (n == NGHTTP2_ERR_FLOODED)
            code = NGHTTP2_ENHANCE_YOUR_CALM;
        leg_terminate(r, from, code);
        return nomem ? SOTH_E_NOMEM : SOTH_E_MALFORMED;
    }
    return n;
}

/* A stream error the scan found (PRIORITY depending on itself): RST_STREAM when the stream is
 * open; RST_STREAM must not name an idle stream (RFC 9113 6.4) and a closed one has nothing
 * left to reset, so otherwise the connection ends. */
static void scan_stream_error(struct soth_h2_relay *r, uint32_t id, uint32_t code)
{
    struct leg *l = &r->leg[SOTH_LEG_CLIENT];
    nghttp2_stream *st = nghttp2_session_find_stream(l->s, (int32_t)id);
    nghttp2_stream_proto_state ps =
        st != NULL ? nghttp2_stream_get_state(st) : NGHTTP2_STREAM_STATE_CLOSED;
    if (ps != NGHTTP2_STREAM_STATE_OPEN && ps != NGHTTP2_STREAM_STATE_HALF_CLOSED_LOCAL &&
        ps != NGHTTP2_STREAM_STATE_HALF_CLOSED_REMOTE) {
        leg_terminate(r, SOTH_LEG_CLIENT, code);
        return;
    }
    struct h2s *s = stream_of(l, (int32_t)id);
    if (s == NULL) {
        if (nghttp2_submit_rst_stream(l->s, NGHTTP2_FLAG_NONE, (int32_t)id, code) != 0)
            r->nomem = true;
        return;
    }
    set_outcome(s, SOTH_H2_RESET, code, "client_stream_error");
    rst_upstream(r, s, NGHTTP2_CANCEL);
    rst_client(r, s, code);
}

/* Client bytes held while the upstream reconnects: what flow control lets the client send
 * (the connection window) and this much besides (frames outside flow control, framing). */
#define STASH_SLACK (256u * 1024u)

/*
 * nghttp2 reads the client's data[*fed, end). A request for the parked upstream pauses it
 * (on_header): what it did not read of data[*fed, len) goes to the stash, the part before
 * `scanned` marked as seen by the scan. Returns 0 (all read), 1 (paused) or a negative error.
 */
static int client_recv(struct soth_h2_relay *r, const char *data, size_t *fed, size_t end,
                       size_t scanned, size_t len)
{
    bool was = r->waking;
    ssize_t n = leg_recv(r, SOTH_LEG_CLIENT, data + *fed, end - *fed);
    if (n < 0)
        return (int)n;
    if (was || !r->waking) {
        *fed = end;
        return 0;
    }
    size_t at = *fed + (size_t)n;
    if (cbuf_append(r, &r->stash, (const uint8_t *)data + at, len - at) < 0)
        return SOTH_E_NOMEM;
    r->stash_scanned = scanned - at;
    *fed = len;
    return 1;
}

/* Client bytes: scanned frame by frame (struct scan), handed to nghttp2 in one piece unless a
 * frame needs an answer nghttp2 would not give; then the bytes before that frame go first. */
static ssize_t client_feed(struct soth_h2_relay *r, const char *data, size_t len)
{
    struct scan *sc = &r->scan;
    struct leg *l = &r->leg[SOTH_LEG_CLIENT];
    size_t off = 0, fed = 0, start = 0;
    bool parked = r->leg[SOTH_LEG_UPSTREAM].st == LEG_PARKED;
    while (off < len) {
        if (sc->magic_left > 0) {
            size_t k = len - off < sc->magic_left ? len - off : sc->magic_left;
            sc->magic_left -= (uint32_t)k;
            off += k;
            continue;
        }
        if (sc->skip > 0) {
            size_t k = len - off < sc->skip ? len - off : sc->skip;
            sc->skip -= (uint32_t)k;
            off += k;
            continue;
        }
        if (sc->have == 0) {
            start = off;
            sc->need = FRAME_HD;
            /* Parked upstream: nghttp2 reads up to each frame the scan is about to see, so a
             * request that pauses it (on_header) leaves scanned and unscanned bytes apart. */
            if (parked && start > fed) {
                int rc = client_recv(r, data, &fed, start, start, len);
                if (rc != 0)
                    return rc < 0 ? rc : (ssize_t)len;
            }
        }
        size_t want = (size_t)(sc->need - sc->have);
        size_t k = len - off < want ? len - off : want;
        memcpy(sc->hd + sc->have, data + off, k);
        sc->have += (uint8_t)k;
        off += k;
        if (sc->have < sc->need)
            break;
        uint32_t flen = (uint32_t)sc->hd[0] << 16 | (uint32_t)sc->hd[1] << 8 | sc->hd[2];
        if (sc->need == FRAME_HD && sc->hd[3] == FT_PRIORITY && flen == PRIORITY_LEN) {
            sc->need = FRAME_HD + PRIORITY_LEN; /* judged on its payload */
            continue;
        }
        if (sc->need == FRAME_HD && sc->hd[3] == FT_DATA && (sc->hd[4] & FF_PADDED) && flen >= 1) {
            sc->need = FRAME_HD + 1; /* the pad length: how much is data */
            continue;
        }
        sc->skip = flen - (uint32_t)(sc->have - FRAME_HD);
        sc->have = 0;
        uint32_t code = 0;
        enum scan_verdict v = scan_frame(sc, &code);
        if (v == SCAN_PASS)
            continue;
        /* Everything before this frame first (its header may have begun in an earlier feed:
         * nghttp2 holds that part, harmlessly). */
        if (start > fed) {
            ssize_t n = leg_recv(r, SOTH_LEG_CLIENT, data + fed, start - fed);
            if (n < 0)
                return n;
            fed = start;
        }
        if (l->st != LEG_LIVE)
            return (ssize_t)len;
        uint32_t id = get31(sc->hd + 5);
        if (v == SCAN_STREAM_ERROR) {
            scan_stream_error(r, id, code);
        } else {
            leg_terminate(r, SOTH_LEG_CLIENT, code);
        }
        if (l->st != LEG_LIVE)
            return (ssize_t)len; /* the rest is never read */
    }
    if (fed < len) {
        int rc = client_recv(r, data, &fed, len, len, len);
        if (rc < 0)
            return rc;
    }
    return (ssize_t)len;
}

ssize_t soth_h2_relay_feed(struct soth_h2_relay *r, enum soth_leg from, const char *data,
                           size_t len)
{
    struct leg *l = &r->leg[from];
    if (l->st != LEG_LIVE)
        return SOTH_E_CLOSED;
    if (from == SOTH_LEG_CLIENT && r->waking) {
        /* The upstream reconnects: everything waits behind the paused request (the worker
         * pauses the client's reads meanwhile; what was already on its way is bounded by the
         * connection window and STASH_SLACK). */
        if (r->stash.len + len > r->st.buffer_bound[SOTH_LEG_CLIENT] + STASH_SLACK) {
            leg_terminate(r, SOTH_LEG_CLIENT, NGHTTP2_ENHANCE_YOUR_CALM);
            return SOTH_E_MALFORMED;
        }
        return cbuf_append(r, &r->stash, (const uint8_t *)data, len) < 0 ? SOTH_E_NOMEM
                                                                         : (ssize_t)len;
    }
    if (from == SOTH_LEG_CLIENT)
        return client_feed(r, data, len);
    return leg_recv(r, from, data, len);
}

/* Pull everything nghttp2 has for this leg into the output chunk. */
static int pump(struct soth_h2_relay *r, struct leg *l, bool *progress)
{
    for (;;) {
        if (!leg_alive(l))
            return 0;
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(l->s, &p);
        if (n < 0) {
            /* Fatal inside nghttp2 (NOMEM) or our output failed: the leg cannot go on. */
            int rc = r->out_err < 0 ? r->out_err : SOTH_E_NOMEM;
            l->failed = true;
            leg_down(r, l->side,
                     l->side == SOTH_LEG_CLIENT ? SOTH_H2_RESET : SOTH_H2_UPSTREAM_ABORTED,
                     "relay_error");
            return rc;
        }
        l->drained = n == 0;
        if (n == 0)
            return 0;
        *progress = true;
        int rc = out_append(r, l, p, (size_t)n);
        if (rc < 0)
            return rc;
        if (l->term_sent) {
            rc = out_emit(r, l);
            if (l->side == SOTH_LEG_CLIENT)
                leg_down(r, SOTH_LEG_CLIENT, SOTH_H2_RESET, "client_protocol_error");
            else
                leg_down(r, SOTH_LEG_UPSTREAM, SOTH_H2_UPSTREAM_ABORTED, "upstream_protocol_error");
            return rc;
        }
    }
}

int soth_h2_relay_flush(struct soth_h2_relay *r)
{
    int rc = 0;
    if (r->out_err < 0)
        return r->out_err; /* bytes were lost: the transports must be closed */
    /* Sending on one leg consumes on the other (WINDOW_UPDATE to send there), which may in
     * turn release DATA the first leg can send: a few rounds settle it. */
    for (int round = 0; round < 8; round++) {
        bool progress = false;
        for (int i = 0; i < 2 && rc == 0; i++)
            if (!r->leg[i].held)
                rc = pump(r, &r->leg[i], &progress);
        if (r->nomem) {
            r->nomem = false;
            leg_terminate(r, SOTH_LEG_CLIENT, NGHTTP2_INTERNAL_ERROR);
            leg_terminate(r, SOTH_LEG_UPSTREAM, NGHTTP2_INTERNAL_ERROR);
            progress = true;
            if (rc == 0)
                rc = SOTH_E_NOMEM;
        }
        if (!progress)
            break;
    }
    for (int i = 0; i < 2; i++) {
        int e = r->leg[i].held ? 0 : out_emit(r, &r->leg[i]);
        if (rc == 0)
            rc = e;
    }
    return rc;
}

void soth_h2_relay_hold(struct soth_h2_relay *r, enum soth_leg side, bool hold)
{
    r->leg[side].held = hold;
}

bool soth_h2_relay_want_read(const struct soth_h2_relay *r, enum soth_leg side)
{
    const struct leg *l = &r->leg[side];
    return l->st == LEG_LIVE && nghttp2_session_want_read(l->s);
}

bool soth_h2_relay_want_write(const struct soth_h2_relay *r, enum soth_leg side)
{
    const struct leg *l = &r->leg[side];
    return leg_alive(l) && (l->out_len > 0 || nghttp2_session_want_write(l->s));
}

bool soth_h2_relay_failed(const struct soth_h2_relay *r, enum soth_leg side)
{
    return r->leg[side].failed;
}

bool soth_h2_relay_goaway_received(const struct soth_h2_relay *r, enum soth_leg side)
{
    return r->leg[side].goaway_recv;
}

void soth_h2_relay_eof(struct soth_h2_relay *r, enum soth_leg side, bool reset)
{
    if (side == SOTH_LEG_CLIENT)
        leg_down(r, side, reset ? SOTH_H2_RESET : SOTH_H2_CLIENT_ABORTED,
                 reset ? "client_reset" : "client_eof");
    else
        leg_down(r, side, reset ? SOTH_H2_RESET : SOTH_H2_UPSTREAM_ABORTED,
                 reset ? "upstream_reset" : "upstream_eof");
}

void soth_h2_relay_shutdown(struct soth_h2_relay *r)
{
    r->refuse_new = true;
    goaway_graceful(r, SOTH_LEG_CLIENT, NGHTTP2_NO_ERROR);
    goaway_graceful(r, SOTH_LEG_UPSTREAM, NGHTTP2_NO_ERROR);
}

bool soth_h2_relay_timeout(struct soth_h2_relay *r, int32_t stream_id)
{
    for (struct h2s *s = r->head; s != NULL; s = s->next) {
        if (s->cid != stream_id || (s->f & S_REPORTED))
            continue;
        if (!(s->f & S_C_OPEN) || (s->f & (S_FINAL_RECV | S_RESP_HEAD | S_OUTCOME)))
            return false;
        set_outcome(s, SOTH_H2_UPSTREAM_ABORTED, NGHTTP2_CANCEL, "upstream_timeout");
        rst_upstream(r, s, NGHTTP2_CANCEL);
        answer_client(r, s, nv_504, SOTH_ARRAY_LEN(nv_504), NGHTTP2_INTERNAL_ERROR);
        return true;
    }
    return false;
}

/* No stream, nothing queued, held, lent or half received on a live leg (a parked upstream
 * leg has nothing at all). */
static bool quiet(const struct soth_h2_relay *r)
{
    if (r->head != NULL || r->out_err < 0 || r->nomem || r->waking)
        return false;
    for (int i = 0; i < 2; i++) {
        const struct leg *l = &r->leg[i];
        if (i == SOTH_LEG_UPSTREAM && l->st == LEG_PARKED)
            continue;
        /* drained and nothing queued since: nghttp2 will not read its frame buffer again
         * before it serializes the next frame into it */
        if (l->st != LEG_LIVE || l->held || !l->drained || l->out_len > 0 || l->lent != NULL ||
            l->hb_on || nghttp2_session_want_write(l->s))
            return false;
    }
    return true;
}

size_t soth_h2_relay_release(struct soth_h2_relay *r)
{
    if (!quiet(r))
        return 0;
    size_t got = 0;
    for (unsigned i = 0; i < r->n_pb; i++) {
        struct pblock *b = &r->pb[i];
        size_t span = b->n & ~(size_t)(PB_PAGE - 1); /* whole pages; the frame buffer's last
                                                        10 bytes are touched only by frames
                                                        of 16 KiB and more */
        if ((b->n == PB_FRAMEBUF || all_zero(b->p, span)) &&
            madvise(b->p, span, MADV_DONTNEED) == 0)
            got += span;
    }
    for (int i = 0; i < 2; i++) {
        struct hblock *hb = &r->leg[i].hb;
        got += hb->cap + hb->fcap * sizeof(*hb->f) + hb->nvcap * sizeof(*hb->nv) +
               hb->hdrcap * sizeof(*hb->hdr);
        hb_free(r, hb);
    }
    got += r->altcap;
    rfree(r, r->alt);
    r->alt = NULL;
    r->altcap = 0;
    return got + slots_free_all(r);
}

int soth_h2_relay_park(struct soth_h2_relay *r)
{
    struct leg *u = &r->leg[SOTH_LEG_UPSTREAM];
    if (!quiet(r) || u->st != LEG_LIVE || r->refuse_new || u->goaway_sent || u->goaway_recv ||
        r->leg[SOTH_LEG_CLIENT].goaway_recv)
        return 0;
    /* GOAWAY(NO_ERROR, last stream 0: we accept no pushes), out before the session goes. */
    if (nghttp2_submit_goaway(u->s, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0) != 0)
        return SOTH_E_NOMEM;
    u->goaway_ours++;
    bool progress = false;
    int rc = pump(r, u, &progress);
    if (rc == 0)
        rc = out_emit(r, u);
    if (rc < 0)
        return rc;
    nghttp2_session_del(u->s); /* frees its page blocks through n_free */
    u->s = NULL;
    up_page_drop(r);
    hb_free(r, &u->hb);
    if (u->out != NULL && !r->lend) {
        rfree(r, u->out);
        u->out = NULL;
    }
    u->st = LEG_PARKED;
    u->goaway_sent = false;
    u->goaway_ours = 0;
    u->drained = false;
    r->st.upstream_parked++;
    return 1;
}

bool soth_h2_relay_parked(const struct soth_h2_relay *r)
{
    return r->leg[SOTH_LEG_UPSTREAM].st == LEG_PARKED;
}

bool soth_h2_relay_waking(const struct soth_h2_relay *r)
{
    return r->waking;
}

int soth_h2_relay_unpark(struct soth_h2_relay *r, bool ok)
{
    struct leg *u = &r->leg[SOTH_LEG_UPSTREAM];
    if (u->st != LEG_PARKED)
        ok = false; /* gone meanwhile (an EOF, the relay's end): a waiting request is refused */
    else if (ok) {
        int rc = leg_init(r, SOTH_LEG_UPSTREAM);
        if (rc < 0) {
            if (u->s != NULL)
                nghttp2_session_del(u->s);
            u->s = NULL;
            up_page_drop(r);
            u->st = LEG_PARKED;
            ok = false;
        } else {
            r->st.upstream_unparked++;
        }
    }
    if (!ok && u->st == LEG_PARKED) /* the waiting request is refused (REFUSED_STREAM) */
        leg_down(r, SOTH_LEG_UPSTREAM, SOTH_H2_UPSTREAM_ABORTED, "upstream_reconnect_failed");
    if (!r->waking)
        return 0;
    /* The scanned bytes straight to nghttp2 (even none: a head paused at its last field
     * completes with an empty read), the rest through the scan. */
    r->waking = false;
    char buf[CHUNK_DATA];
    size_t scanned = r->stash_scanned;
    r->stash_scanned = 0;
    bool first = true;
    while ((scanned > 0 || first) && r->leg[SOTH_LEG_CLIENT].st == LEG_LIVE) {
        size_t k = scanned < sizeof(buf) ? scanned : sizeof(buf);
        cbuf_pop(r, &r->stash, buf, k);
        scanned -= k;
        first = false;
        ssize_t n = leg_recv(r, SOTH_LEG_CLIENT, buf, k);
        if (n < 0) {
            cbuf_drop(r, &r->stash);
            return (int)n;
        }
    }
    while (r->stash.len > 0 && r->leg[SOTH_LEG_CLIENT].st == LEG_LIVE) {
        size_t k = r->stash.len < sizeof(buf) ? r->stash.len : sizeof(buf);
        cbuf_pop(r, &r->stash, buf, k);
        ssize_t n = client_feed(r, buf, k);
        if (n < 0) {
            cbuf_drop(r, &r->stash);
            return (int)n;
        }
    }
    cbuf_drop(r, &r->stash);
    return 0;
}

void soth_h2_relay_stats(const struct soth_h2_relay *r, struct soth_h2_stats *out)
{
    *out = r->st;
}
