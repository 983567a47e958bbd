/*
 * core/conn.c send queues: segments carry provided buffers, owned chunks or static text toward a
 * socket; what is sent or dropped goes back where it came from; the high and low marks that
 * pause and resume the source. No io_uring instance: only the queue functions, and the one
 * socket option a leg sets (TCP_QUICKACK) on a loopback pair.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

static struct iobuf io;
static struct seg_pool pool;
static struct conn c;

static void setup(void)
{
    memset(&io, 0, sizeof(io));
    cr_assert_eq(iobuf_init(&io), 0);
    iobuf_fill(&io);
    cr_assert_eq(seg_pool_init(&pool, &io, 64), 0);
    conn_init(&c);
}

static void teardown(void)
{
    conn_q_clear(&pool, &c);
    seg_pool_dispose(&pool);
    iobuf_dispose(&io);
}

TestSuite(conn, .init = setup, .fini = teardown);

static unsigned free_segs(void)
{
    unsigned n = 0;
    for (struct seg *s = pool.free; s != NULL; s = s->next)
        n++;
    return n;
}

/* The bytes queued toward c, in order. */
static size_t queued(char *out, size_t cap)
{
    size_t n = 0;
    for (struct seg *s = c.q_first; s != NULL; s = s->next) {
        cr_assert_leq(n + s->len, cap);
        memcpy(out + n, s->base + s->off, s->len);
        n += s->len;
    }
    return n;
}

static char text[] = "static answer";

Test(conn, high_mark_by_segments)
{
    for (unsigned i = 0; i < SOTH_OUTQ_PAUSE - 1; i++)
        cr_assert(conn_queue(&pool, &c, text, 0, 1, SEG_STATIC));
    cr_assert_not(over_high(&c));
    cr_assert(conn_queue(&pool, &c, text, 0, 1, SEG_STATIC));
    cr_assert(over_high(&c), "%u segments queued and not over the mark", c.q_count);
    cr_assert_not(under_low(&c));
}

Test(conn, high_and_low_marks_by_bytes)
{
    static char big[SOTH_HIGH_WM];
    cr_assert(conn_queue(&pool, &c, big, 0, SOTH_HIGH_WM - 1, SEG_STATIC));
    cr_assert_not(over_high(&c));
    cr_assert(conn_queue(&pool, &c, text, 0, 1, SEG_STATIC));
    cr_assert(over_high(&c));
    /* Sent down to just above the low mark: still not resumed. */
    conn_q_sent(&pool, &c, SOTH_HIGH_WM - SOTH_LOW_WM - 1);
    cr_assert_eq(c.q_bytes, SOTH_LOW_WM + 1);
    cr_assert_not(over_high(&c));
    cr_assert_not(under_low(&c));
    conn_q_sent(&pool, &c, 1);
    cr_assert(under_low(&c));
}

Test(conn, low_mark_needs_few_segments_too)
{
    for (unsigned i = 0; i < SOTH_OUTQ_PAUSE / 2; i++)
        conn_queue(&pool, &c, text, 0, 1, SEG_STATIC);
    cr_assert_not(under_low(&c), "6 small segments: the count keeps the source paused");
    conn_q_sent(&pool, &c, 1);
    cr_assert(under_low(&c));
}

Test(conn, partial_send_advances_within_a_segment)
{
    conn_queue(&pool, &c, text, 0, 6, SEG_STATIC); /* "static" */
    conn_queue(&pool, &c, text, 6, 7, SEG_STATIC); /* " answer" */
    conn_q_sent(&pool, &c, 4);
    cr_assert_eq(c.q_count, 2);
    cr_assert_eq(c.q_bytes, 9);
    char out[32];
    size_t n = queued(out, sizeof(out));
    cr_assert_eq(n, 9);
    cr_assert_eq(memcmp(out, "ic answer", 9), 0);
    conn_q_sent(&pool, &c, 5);
    cr_assert_eq(c.q_count, 1);
    cr_assert_eq(c.q_first, c.q_last);
    conn_q_sent(&pool, &c, 4);
    cr_assert_eq(c.q_count, 0);
    cr_assert_null(c.q_first);
    cr_assert_null(c.q_last);
    cr_assert_eq(free_segs(), 64, "every segment back in the pool");
}

Test(conn, provided_buffers_go_back_to_the_ring_when_sent)
{
    unsigned a = buf_take(&io, 10), b = buf_take(&io, 11);
    memcpy(buf_addr(&io, a), "hello ", 6);
    memcpy(buf_addr(&io, b), "world", 5);
    cr_assert(conn_queue(&pool, &c, buf_addr(&io, a), 0, 6, (int32_t)a));
    cr_assert(conn_queue(&pool, &c, buf_addr(&io, b), 0, 5, (int32_t)b));
    conn_q_sent(&pool, &c, 7); /* all of a, 1 byte of b */
    cr_assert_eq(io.bid_ours[a], 0, "a sent buffer is the ring's again");
    cr_assert_eq(io.bid_ours[b], 1, "a buffer partly sent is still ours");
    cr_assert_eq(io.br_added, 1);
    conn_q_clear(&pool, &c); /* dropped (the flow closed): returned all the same */
    cr_assert_eq(io.bid_ours[b], 0);
    cr_assert_eq(io.br_added, 2);
}

Test(conn, copies_append_to_the_last_chunk_unless_it_is_being_sent)
{
    cr_assert(conn_queue_copy(&pool, &c, "HTTP/1.1 200 ", 13));
    cr_assert(conn_queue_copy(&pool, &c, "OK\r\n", 4));
    cr_assert_eq(c.q_count, 1, "two small copies share one chunk");
    cr_assert_eq(io.n_chunks, 1);
    c.send_inflight = true; /* the chunk's bytes are in a sendmsg: leave them be */
    cr_assert(conn_queue_copy(&pool, &c, "\r\n", 2));
    cr_assert_eq(c.q_count, 2);
    c.send_inflight = false;
    char out[32];
    size_t n = queued(out, sizeof(out));
    cr_assert_eq(n, 19);
    cr_assert_eq(memcmp(out, "HTTP/1.1 200 OK\r\n\r\n", 19), 0);
}

Test(conn, a_large_copy_spans_chunks_and_chunks_are_reused)
{
    static char big[3 * SOTH_CHUNK_SIZE + 100];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)(i * 7);
    cr_assert(conn_queue_copy(&pool, &c, big, sizeof(big)));
    cr_assert_eq(c.q_count, 4);
    cr_assert_eq(c.q_bytes, sizeof(big));
    static char out[sizeof(big)];
    cr_assert_eq(queued(out, sizeof(out)), sizeof(big));
    cr_assert_eq(memcmp(out, big, sizeof(big)), 0);
    conn_q_sent(&pool, &c, sizeof(big));
    cr_assert(conn_queue_copy(&pool, &c, big, sizeof(big)));
    cr_assert_eq(io.n_chunks, 4, "sent chunks were reused, not allocated again");
}

Test(conn, a_copy_fails_when_chunks_run_out)
{
    io.max_chunks = 1;
    static char big[SOTH_CHUNK_SIZE + 1];
    cr_assert_not(conn_queue_copy(&pool, &c, big, sizeof(big)));
    cr_assert_eq(c.q_bytes, SOTH_CHUNK_SIZE, "what fitted stays queued");
}

/* A TLS record of 16 KiB of plaintext with its header and tag fits one chunk. */
#define RECORD (16384 + 5 + 1 + 16)

Test(conn, reserved_room_is_queued_when_committed)
{
    /* Room at the end of the last chunk, written in place. */
    cr_assert(conn_queue_copy(&pool, &c, "abc", 3));
    char *r = conn_reserve(&pool, &c, 100);
    cr_assert_not_null(r);
    memcpy(r, "defgh", 5);
    conn_commit(&pool, &c, 5);
    cr_assert_eq(c.q_count, 1);
    cr_assert_eq(c.q_bytes, 8);
    static char pad[600];
    memset(pad, 'p', sizeof(pad));
    cr_assert(conn_queue_copy(&pool, &c, pad, sizeof(pad)));

    /* A whole record does not fit what is left: a new chunk, queued only when committed. */
    r = conn_reserve(&pool, &c, RECORD);
    cr_assert_not_null(r);
    cr_assert_eq(c.q_count, 1, "queued before it was committed");
    memset(r, 'R', RECORD);
    conn_commit(&pool, &c, RECORD);
    cr_assert_eq(c.q_count, 2);
    cr_assert_eq(c.q_bytes, 8 + sizeof(pad) + RECORD);

    /* Room given back (the record could not be built): nothing queued, the chunk pooled. */
    uint32_t chunks = io.n_chunks;
    cr_assert_not_null(conn_reserve(&pool, &c, RECORD));
    conn_commit(&pool, &c, 0);
    cr_assert_eq(c.q_count, 2);
    cr_assert_not_null(conn_reserve(&pool, &c, RECORD));
    cr_assert_eq(io.n_chunks, chunks + 1, "the chunk given back was not reused");
    conn_commit(&pool, &c, 0);

    /* The last chunk is being sent: new room, not its end. Over a chunk, or out of chunks:
     * none. */
    c.send_inflight = true;
    r = conn_reserve(&pool, &c, 10);
    cr_assert_not_null(r);
    memcpy(r, "ij", 2);
    conn_commit(&pool, &c, 2);
    cr_assert_eq(c.q_count, 3);
    cr_assert_null(conn_reserve(&pool, &c, SOTH_CHUNK_SIZE + 1));
    io.max_chunks = io.n_chunks;
    cr_assert_null(conn_reserve(&pool, &c, RECORD));
    c.send_inflight = false;

    static char out[8 + sizeof(pad) + RECORD + 2], want[sizeof(out)];
    memcpy(want, "abcdefgh", 8);
    memset(want + 8, 'p', sizeof(pad));
    memset(want + 8 + sizeof(pad), 'R', RECORD);
    memcpy(want + 8 + sizeof(pad) + RECORD, "ij", 2);
    cr_assert_eq(queued(out, sizeof(out)), sizeof(out));
    cr_assert(memcmp(out, want, sizeof(out)) == 0);
}

Test(conn, static_text_can_run_out_of_segments)
{
    seg_pool_dispose(&pool);
    cr_assert_eq(seg_pool_init(&pool, &io, 2), 0);
    cr_assert(conn_queue(&pool, &c, text, 0, 1, SEG_STATIC));
    cr_assert(conn_queue(&pool, &c, text, 0, 1, SEG_STATIC));
    cr_assert_not(conn_queue(&pool, &c, text, 0, 1, SEG_STATIC));
    cr_assert_eq(c.q_count, 2);
}

Test(conn, a_chunk_without_a_segment_is_a_bug, .signal = SIGABRT)
{
    seg_pool_dispose(&pool);
    cr_assert_eq(seg_pool_init(&pool, &io, 1), 0);
    conn_queue(&pool, &c, text, 0, 1, SEG_STATIC);
    conn_queue(&pool, &c, chunk_get(&io), 0, 1, SEG_CHUNK);
}

/* A connected loopback TCP pair: *ours and *peer. */
static void tcp_pair(int *ours, int *peer)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(l, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(l, 1), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &len), 0);
    *ours = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(*ours, (struct sockaddr *)&a, sizeof(a)), 0);
    *peer = accept(l, NULL, NULL);
    cr_assert_geq(*peer, 0);
    close(l);
}

/* TCP_QUICKACK reads back 0 while the kernel treats the socket as interactive (it delays
 * ACKs, hoping to send them with its next reply), 1 otherwise. */
static int quickack(int fd)
{
    int v = -1;
    socklen_t len = sizeof(v);
    cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &v, &len), 0);
    return v;
}

/* docs/performance.md, "Delayed ACKs of a response": a socket that answered what it received
 * (an upstream leg sending requests, as the kernel sees it) becomes interactive and would
 * delay the ACK the origin's next full-sized segment waits for; once 64 KiB arrived since our
 * last send the leg takes it out of that mode, not before, and only once. */
Test(conn, a_bulk_of_received_bytes_leaves_the_interactive_mode)
{
    int ours, peer;
    tcp_pair(&ours, &peer);
    char b[64];
    for (int i = 0; i < 4; i++) { /* request and response, at once each time */
        cr_assert_eq(write(ours, "GET", 3), 3);
        cr_assert_eq(read(peer, b, sizeof(b)), 3);
        cr_assert_eq(write(peer, "200", 3), 3);
        cr_assert_eq(read(ours, b, sizeof(b)), 3);
        cr_assert_eq(write(ours, "GET", 3), 3); /* a reply within the ACK delay */
        cr_assert_eq(read(peer, b, sizeof(b)), 3);
    }
    cr_assert_eq(quickack(ours), 0, "the kernel did not treat the socket as interactive");
    c.fd = ours;
    conn_note_recv(&c, SOTH_QUICKACK_AFTER - 1);
    cr_assert_eq(quickack(ours), 0);
    conn_note_recv(&c, 1);
    cr_assert_eq(quickack(ours), 1);
    cr_assert_eq(c.rx_since_tx, SOTH_QUICKACK_AFTER);
    /* interactive again (a reply); more received bytes without a send of ours in between
     * change nothing: one system call per bulk */
    cr_assert_eq(write(peer, "200", 3), 3);
    cr_assert_eq(read(ours, b, sizeof(b)), 3);
    cr_assert_eq(write(ours, "GET", 3), 3);
    cr_assert_eq(quickack(ours), 0);
    conn_note_recv(&c, 16384);
    cr_assert_eq(quickack(ours), 0);
    cr_assert_eq(c.rx_since_tx, SOTH_QUICKACK_AFTER);
    c.fd = -1;
    close(ours);
    close(peer);
}
