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
    c = malloc(SOTH_BUF_SIZE);
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
