/*
 * Private to core/: a worker's memory for bytes in flight. Two kinds of 16 KiB buffers:
 * - provided buffers: SOTH_BUF_COUNT of them in a ring the kernel picks from for multishot
 *   recv; a buffer is ours from its recv completion (buf_take) until buf_put hands it back;
 * - owned chunks: malloc'ed on first use, pooled, at most max_chunks; they hold copies (our
 *   own answers, ciphertext, a head split over reads). A quiet worker frees pooled chunks down
 *   to a floor and gives back the pages of provided buffers the kernel holds (iobuf_trim,
 *   docs/performance.md "Memory after bursts").
 * Handing either back twice would give the same bytes to two owners (for a provided buffer,
 * the kernel writing into bytes still queued), so both are bug stops (SOTH_BUG_ON).
 */
#ifndef SOTH_CORE_IOBUF_H
#define SOTH_CORE_IOBUF_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "soth/base.h"

#define SOTH_BUF_SIZE  16384u /* one provided recv buffer */
#define SOTH_BUF_COUNT 2048u  /* provided buffers in the worker's ring (power of 2) */
#define SOTH_BGID      0
/* One owned chunk: a provided buffer's worth and room for a whole TLS record around 16 KiB of
 * plaintext (its header, tag and padding), so wolfSSL can build a full record in one
 * (docs/tls.md, "Memory I/O"). */
#define SOTH_CHUNK_SIZE (SOTH_BUF_SIZE + 512u)
#define SOTH_MAX_CHUNKS 8192u /* owned chunks: 132 MiB worst case */

struct iobuf {
    struct io_uring_buf_ring *br;     /* the provided-buffer ring, registered by the worker */
    char *bufs;                       /* SOTH_BUF_COUNT x SOTH_BUF_SIZE */
    unsigned br_added;                /* buffers added since the last iobuf_publish */
    uint64_t published;               /* buffers handed back to the ring since the start */
    uint8_t bid_ours[SOTH_BUF_COUNT]; /* 1 while a provided buffer is ours */
    char *free_chunks;                /* singly linked through the first pointer of each chunk */
    uint32_t n_chunks;                /* chunks allocated so far */
    uint32_t max_chunks;
};

/**
 * Map the ring and the provided buffers (the ring stays empty until iobuf_fill), no chunks
 * yet, max_chunks = SOTH_MAX_CHUNKS. 0 or -errno; iobuf_dispose undoes a partial set-up.
 * io must be zeroed before.
 */
int iobuf_init(struct iobuf *io);
/** Hand every provided buffer to the ring and publish them (once, after registration). */
void iobuf_fill(struct iobuf *io);
/** Unmap the ring and buffers, free every pooled chunk (chunks still lent are the caller's). */
void iobuf_dispose(struct iobuf *io);

/**
 * Give memory back (a quiet worker, core/worker.c): free pooled chunks beyond keep_chunks, and
 * when ring_too, MADV_DONTNEED the provided buffers that are not ours (in the ring, holding no
 * bytes of ours): their pages are zero-filled again when the kernel next receives into them.
 * The caller guarantees that the kernel cannot be writing into a buffer of the ring at that
 * moment (core/worker.c, worker_trim). Returns the bytes advised or freed.
 */
size_t iobuf_trim(struct iobuf *io, uint32_t keep_chunks, bool ring_too);

/** An owned chunk of SOTH_CHUNK_SIZE bytes, or NULL at max_chunks (or when malloc fails). */
char *chunk_get(struct iobuf *io);
/** Return a chunk from chunk_get; returning it twice is a bug stop. */
void chunk_put(struct iobuf *io, char *c);

/* inline definitions */

static inline char *buf_addr(const struct iobuf *io, unsigned bid)
{
    return io->bufs + (size_t)bid * SOTH_BUF_SIZE;
}

/** A recv completed into provided buffer bid: it is ours until buf_put. Returns bid. */
static inline unsigned buf_take(struct iobuf *io, unsigned bid)
{
    SOTH_BUG_ON(bid >= SOTH_BUF_COUNT || io->bid_ours[bid]);
    io->bid_ours[bid] = 1;
    return bid;
}

/** Give provided buffer bid back to the ring (visible to the kernel at iobuf_publish). */
static inline void buf_put(struct iobuf *io, unsigned bid)
{
    SOTH_BUG_ON(bid >= SOTH_BUF_COUNT || !io->bid_ours[bid]);
    io->bid_ours[bid] = 0;
    io_uring_buf_ring_add(io->br, buf_addr(io, bid), SOTH_BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(SOTH_BUF_COUNT), (int)io->br_added);
    io->br_added++;
}

/** Publish the buffers returned since the last call: one release store per loop turn. True
 *  when there were any (recvs that ran dry may be re-armed). */
static inline bool iobuf_publish(struct iobuf *io)
{
    if (io->br_added == 0)
        return false;
    io_uring_buf_ring_advance(io->br, (int)io->br_added);
    io->published += io->br_added;
    io->br_added = 0;
    return true;
}

#endif
