/* A worker's provided-buffer ring and its pool of owned chunks (core/iobuf.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "iobuf.h"

/* A free chunk carries this tag after its link, so a chunk returned twice stops loudly instead
 * of being handed to two owners. */
static const uint64_t CHUNK_FREE_TAG = 0x9e3779b97f4a7c15ull;

int iobuf_init(struct iobuf *io)
{
    io->max_chunks = SOTH_MAX_CHUNKS;
    size_t ring_bytes = SOTH_BUF_COUNT * sizeof(struct io_uring_buf);
    void *br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED)
        return -errno;
    io->br = br;
    io_uring_buf_ring_init(io->br);
    void *bufs = mmap(NULL, (size_t)SOTH_BUF_COUNT * SOTH_BUF_SIZE, PROT_READ | PROT_WRITE,
                      MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (bufs == MAP_FAILED)
        return -errno;
    io->bufs = bufs;
    return 0;
}

void iobuf_fill(struct iobuf *io)
{
    for (unsigned i = 0; i < SOTH_BUF_COUNT; i++)
        buf_put(io, buf_take(io, i));
    iobuf_publish(io);
}

void iobuf_dispose(struct iobuf *io)
{
    if (io->bufs != NULL)
        munmap(io->bufs, (size_t)SOTH_BUF_COUNT * SOTH_BUF_SIZE);
    io->bufs = NULL;
    if (io->br != NULL)
        munmap(io->br, SOTH_BUF_COUNT * sizeof(struct io_uring_buf));
    io->br = NULL;
    while (io->free_chunks != NULL) {
        char *c = io->free_chunks;
        memcpy(&io->free_chunks, c, sizeof(char *));
        free(c);
    }
}

size_t iobuf_trim(struct iobuf *io, uint32_t keep_chunks, bool ring_too)
{
    size_t given = 0;
    /* Keep the first keep_chunks of the free list (the most recently returned), free the rest. */
    char *c = io->free_chunks, *last = NULL;
    for (uint32_t kept = 0; c != NULL && kept < keep_chunks; kept++) {
        last = c;
        memcpy(&c, c, sizeof(char *));
    }
    if (last == NULL) {
        io->free_chunks = NULL;
    } else {
        char *none = NULL;
        memcpy(last, &none, sizeof(none));
    }
    while (c != NULL) {
        char *next;
        memcpy(&next, c, sizeof(next));
        free(c);
        io->n_chunks--;
        given += SOTH_CHUNK_SIZE;
        c = next;
    }
    if (!ring_too)
        return given;
    /* One madvise per run of buffers that are not ours. */
    for (unsigned i = 0; i < SOTH_BUF_COUNT;) {
        if (io->bid_ours[i]) {
            i++;
            continue;
        }
        unsigned j = i;
        while (j < SOTH_BUF_COUNT && !io->bid_ours[j])
            j++;
        size_t len = (size_t)(j - i) * SOTH_BUF_SIZE;
        if (madvise(buf_addr(io, i), len, MADV_DONTNEED) == 0)
            given += len;
        i = j;
    }
    return given;
}

char *chunk_get(struct iobuf *io)
{
    char *c = io->free_chunks;
    if (c != NULL) {
        memcpy(&io->free_chunks, c, sizeof(char *));
        memset(c + sizeof(char *), 0, sizeof(CHUNK_FREE_TAG));
        return c;
    }
    if (io->n_chunks >= io->max_chunks)
        return NULL;
    c = malloc(SOTH_CHUNK_SIZE);
    if (c != NULL) {
        io->n_chunks++;
        memset(c + sizeof(char *), 0, sizeof(CHUNK_FREE_TAG));
    }
    return c;
}

void chunk_put(struct iobuf *io, char *c)
{
    uint64_t tag;
    memcpy(&tag, c + sizeof(char *), sizeof(tag));
    SOTH_BUG_ON(tag == CHUNK_FREE_TAG);
    memcpy(c, &io->free_chunks, sizeof(char *));
    memcpy(c + sizeof(char *), &CHUNK_FREE_TAG, sizeof(tag));
    io->free_chunks = c;
}
