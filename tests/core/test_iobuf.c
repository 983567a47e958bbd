/* core/iobuf.c: owned chunks are pooled and bounded, provided buffers go back to the ring
 * exactly once; handing either back twice stops the process (it would give bytes to two
 * owners). No io_uring: the ring is plain memory until a worker registers it. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "iobuf.h"

static struct iobuf io;

static void setup(void)
{
    memset(&io, 0, sizeof(io));
    cr_assert_eq(iobuf_init(&io), 0);
}

static void teardown(void)
{
    iobuf_dispose(&io);
}

TestSuite(iobuf, .init = setup, .fini = teardown);

Test(iobuf, chunks_are_reused_and_bounded)
{
    io.max_chunks = 2;
    char *a = chunk_get(&io);
    char *b = chunk_get(&io);
    cr_assert(a != NULL && b != NULL && a != b);
    cr_assert_null(chunk_get(&io), "went past max_chunks");
    memset(a, 'x', SOTH_BUF_SIZE);
    chunk_put(&io, a);
    char *c = chunk_get(&io);
    cr_assert_eq(c, a, "a returned chunk is handed out again");
    cr_assert_eq(io.n_chunks, 2, "reuse allocated nothing");
    chunk_put(&io, b);
    chunk_put(&io, c);
}

Test(iobuf, chunk_returned_twice_stops, .signal = SIGABRT)
{
    char *a = chunk_get(&io);
    chunk_put(&io, a);
    chunk_put(&io, a);
}

Test(iobuf, fill_gives_every_buffer_to_the_ring)
{
    iobuf_fill(&io);
    cr_assert_eq(io.br->tail, SOTH_BUF_COUNT);
    cr_assert_eq(io.br_added, 0);
    for (unsigned i = 0; i < SOTH_BUF_COUNT; i++) {
        cr_assert_eq(io.bid_ours[i], 0);
        cr_assert_eq(io.br->bufs[i].bid, i);
        cr_assert_eq(io.br->bufs[i].addr, (uint64_t)(uintptr_t)buf_addr(&io, i));
        cr_assert_eq(io.br->bufs[i].len, SOTH_BUF_SIZE);
    }
    cr_assert_eq(buf_addr(&io, 1) - buf_addr(&io, 0), SOTH_BUF_SIZE);
}

Test(iobuf, a_taken_buffer_goes_back_once_and_is_published)
{
    iobuf_fill(&io);
    uint16_t tail = io.br->tail;
    cr_assert_eq(buf_take(&io, 7), 7);
    cr_assert_eq(buf_take(&io, 9), 9);
    cr_assert_eq(io.bid_ours[7], 1);
    buf_put(&io, 9);
    buf_put(&io, 7);
    cr_assert_eq(io.bid_ours[7], 0);
    cr_assert_eq(io.br->tail, tail, "visible to the kernel before publishing");
    cr_assert(iobuf_publish(&io));
    cr_assert_eq(io.br->tail, (uint16_t)(tail + 2));
    unsigned mask = SOTH_BUF_COUNT - 1;
    cr_assert_eq(io.br->bufs[tail & mask].bid, 9);
    cr_assert_eq(io.br->bufs[(tail + 1) & mask].bid, 7);
    cr_assert_not(iobuf_publish(&io), "nothing new to publish");
}

Test(iobuf, buffer_returned_twice_stops, .signal = SIGABRT)
{
    iobuf_fill(&io);
    buf_put(&io, buf_take(&io, 3));
    buf_put(&io, 3);
}

Test(iobuf, buffer_taken_twice_stops, .signal = SIGABRT)
{
    iobuf_fill(&io);
    buf_take(&io, 3);
    buf_take(&io, 3);
}
