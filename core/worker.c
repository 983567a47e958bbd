/*
 * A worker's thread (core/worker.h): set-up (io_uring, buffers, flow table), pinning, the loop,
 * CQE dispatch and the control eventfd. The loop: publish returned buffers, submit and wait,
 * dispatch every CQE by the op packed in its user_data (accept, a flow's recv/send/shutdown/
 * connect, the eventfd), run due timers, flush the event batch. What a CQE means for a flow is
 * core/flow_io.c's; nothing here knows flow states beyond the shutdown sweep.
 */
#include <errno.h>
#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "accept.h"
#include "app.h"
#include "conn.h"
#include "engine.h"
#include "flow.h"
#include "flow_io.h"
#include "flowtab.h"
#include "head.h"
#include "iobuf.h"
#include "quic.h"
#include "relay.h"
#include "resolver.h"
#include "spsc.h"
#include "timer.h"
#include "upstream.h"
#include "worker.h"
#include "soth/blockcache.h"

/* ------------------------------------------------------------------------------------------
 * control: shutdown, reload, resolver answers
 * ------------------------------------------------------------------------------------------ */

static void arm_eventfd(struct worker *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_read(sqe, w->efd, &w->efd_val, sizeof(w->efd_val), 0);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_EVENTFD, 0, 0, 0));
}

static void worker_begin_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    w->stop_deadline_ms = now_ms() + w->cfg->timeouts.drain_ms;
    if (w->accept_armed) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel64(sqe, ud_pack(OP_ACCEPT, 0, 0, 0), 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0, 0, 0));
    }
    /* Leave the SO_REUSEPORT group now, so new clients are refused instead of queued. */
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_close(sqe, w->listen_fd);
    io_uring_sqe_set_data64(sqe, ud_pack(OP_CLOSE, 0, 0, 0));
    w->listen_fd = -1;
    quic_stop(w);
    upool_close_all(&w->pool);
    /* Connections still waiting for a first request have nothing in flight: close them now. */
    for (uint32_t i = 0; i < w->ft.hw; i++) {
        struct flow *f = &w->ft.flows[i];
        if (flow_is_live(f) && ((f->state == FS_HEAD && f->head == NULL) || f->state == FS_SOCKS))
            flow_close(w, f, SOTH_CLOSE_SHUTDOWN);
        else if (flow_is_live(f) && f->state == FS_RELAY && f->app != NULL && !f->app_done)
            relay_after(w, f, SOTH_LEG_CLIENT, app_shutdown(f->app)); /* idle keep-alive: close */
    }
}

static void on_eventfd(struct worker *w)
{
    struct resolve_resp rs;
    while (soth_spsc_pop(w->rs, &rs))
        upstream_resolved(w, &rs);
    struct soth_config *ncfg = atomic_exchange(&w->ctl_cfg, NULL);
    if (ncfg != NULL) {
        char err[256];
        struct soth_policy *np = soth_policy_new(ncfg, err, sizeof(err));
        if (np == NULL) {
            SOTH_LOG(SOTH_LOG_ERROR, (int)w->idx, 0, "reload: %s", err);
            soth_config_unref(ncfg);
        } else {
            /* Flows keep their decisions; new CONNECTs see the new policy. Its budget table
             * was made current by soth_engine_reload before the config (core/engine.c). */
            engine_budget_attach(w->eng, np);
            soth_policy_free(w->policy);
            w->policy = np;
            soth_config_unref(w->cfg);
            w->cfg = ncfg;
        }
    }
    if (atomic_exchange(&w->ctl_flush, 0) && w->tls != NULL)
        soth_tls_leaf_cache_flush(w->tls);
    if (atomic_load(&w->ctl_stop))
        worker_begin_stop(w);
    arm_eventfd(w);
}

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum soth_op op = ud_op(ud);
    switch (op) {
    case OP_ACCEPT:
        accept_on_cqe(w, cqe);
        return;
    case OP_EVENTFD:
        on_eventfd(w);
        return;
    case OP_QUIC_LISTEN:
    case OP_QUIC_RECV:
        /* a datagram counts as a receive of no connection: QUIC relays only make batching
         * rarer (worker_wait) */
        w->poll.recvs++;
        quic_on_cqe(w, cqe);
        return;
    case OP_QUIC_SEND:
        quic_on_cqe(w, cqe);
        return;
    case OP_CLOSE:
    case OP_CANCEL:
        return;
    default:
        break;
    }
    uint32_t slot = ud_slot(ud);
    SOTH_BUG_ON(slot >= w->ft.hw);
    struct flow *f = flow_table_find(&w->ft, slot, ud_gen(ud));
    unsigned side = ud_side(ud);
    if (f == NULL) {
        /* Cannot happen for tracked ops (freed only at pending == 0); keep buffers safe. */
        if (cqe->flags & IORING_CQE_F_BUFFER)
            buf_put(&w->io, buf_take(&w->io, cqe->flags >> IORING_CQE_BUFFER_SHIFT));
        return;
    }
    switch (op) {
    case OP_RECV:
        w->poll.recvs++; /* how far apart each flow's receives are (worker_wait) */
        if (f->seen_epoch != w->poll.epoch) {
            f->seen_epoch = w->poll.epoch;
            w->poll.active++;
        }
        flow_on_recv(w, f, side, cqe);
        break;
    case OP_SEND:
        flow_on_send(w, f, side, cqe->res);
        break;
    case OP_CONNECT:
        f->pending--;
        if (f->up_redial == UP_REDIAL_CONNECT)
            relay_redial_connected(w, f, cqe->res); /* a pooled leg's retry (core/relay.c) */
        else if (f->up_dialing)
            relay_park_connected(w, f); /* a failed wake's connect (core/relay.c) */
        else
            upstream_connected(w, f, cqe->res);
        break;
    case OP_SHUTDOWN:
        flow_on_shutdown(w, f, side, cqe->res);
        break;
    case OP_POLL:
        relay_redial_poll(w, f, cqe->res); /* the client during a pooled leg's retry */
        break;
    default:
        SOTH_BUG_ON(1);
    }
    flow_maybe_free(w, f);
}

/* ------------------------------------------------------------------------------------------
 * giving memory back after bursts (docs/performance.md, "Memory after bursts")
 * ------------------------------------------------------------------------------------------ */

#define TRIM_CHECK_MS    1000u  /* how often a worker looks at whether it became quiet */
#define TRIM_QUIET_MS    10000u /* quiet this long before a trim */
#define TRIM_GAP_MS      30000u /* at least this long between two trims of one worker */
#define TRIM_BUSY_BUFS   64u    /* more buffers received in one check (1 MiB/s): busy */
#define TRIM_FEW_LIVE    32u    /* up to this many live flows never count as busy */
#define TRIM_DIRTY_FLOWS 64u    /* flow slots used above the last trim: worth a trim */
#define TRIM_DIRTY_BUFS  256u   /* buffers received since the last trim (4 MiB): the same */
#define TRIM_KEEP_CHUNKS 0u     /* owned chunks kept pooled (see app_thread_done) */
/* Idle HTTP/2 upstream connections closed since the last trim (each frees ~12 KiB of TLS and
 * HTTP/2 state amid live connections' memory, docs/http2.md "Idle upstream connection"): worth
 * a trim even while many (idle) flows are live. */
#define TRIM_DIRTY_PARKS 256u
/* Quiet this long is enough once TRIM_DIRTY_PARKS upstreams closed: those connections are
 * idle by definition (their own closing is the last traffic), and what they freed is only
 * given back by the trim. */
#define TRIM_QUIET_PARKED_MS 2000u

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Something a trim would give back was used since the last one: the flow table grew (hw is
 * the peak of live flows since then: a slot is taken only when every used one is live) or a
 * burst of received bytes went through the provided buffers. */
static bool trim_dirty(const struct worker *w)
{
    return w->ft.hw > w->trim.hw_trim + TRIM_DIRTY_FLOWS ||
           w->io.published - w->trim.pub_trim >= TRIM_DIRTY_BUFS;
}

/*
 * Give back what the worker holds beyond what its live flows use: every pooled chunk and kept
 * buffer, the blocks of its block cache, the free slots at the top of the flow table, the event
 * ring's read pages, the receive buffers the kernel holds, then malloc_trim(0) for the pages
 * glibc's arenas hold free.
 *
 * The provided buffers in the ring (not ours) are advised only when the kernel cannot be
 * writing into one of them now: with IORING_SETUP_DEFER_TASKRUN a multishot recv picks a
 * buffer and copies into it only in task work that runs inside this thread's own
 * io_uring_enter (socket recvs are never punted to io-wq: no IOSQE_ASYNC, sockets poll), and
 * the CQE naming the buffer is posted before that enter returns (to the CQ, or to the overflow
 * list, which IORING_SQ_CQ_OVERFLOW shows). So when the CQ is empty and has no overflow,
 * every buffer the kernel wrote into is ours (bid_ours) or was handed back after use, and the
 * rest hold nothing: MADV_DONTNEED drops their pages and the next recv into one faults in a
 * zeroed page. Without DEFER_TASKRUN task work may run at any return to user mode, so the
 * ring's buffers are left alone.
 */
static void worker_trim(struct worker *w, uint64_t now)
{
    uint64_t cpu0 = thread_cpu_ns();
    bool ring =
        w->trim.ring_ok && io_uring_cq_ready(&w->ring) == 0 && !io_uring_cq_has_overflow(&w->ring);
    size_t given = iobuf_trim(&w->io, TRIM_KEEP_CHUNKS, ring);
    given += flow_table_shrink(&w->ft, 0);
    given += soth_ev_producer_trim(w->prod);
    app_thread_done();
    if (w->tls != NULL)
        soth_tls_ctx_trim(w->tls);
    given += soth_bc_cached_bytes();
    soth_bc_trim(); /* wolfSSL's and nghttp2's blocks this thread keeps (soth/blockcache.h) */
    uint64_t cpu1 = thread_cpu_ns();
    int released = malloc_trim(0);
    uint64_t cpu2 = thread_cpu_ns();
    w->trim.n++;
    w->trim.last_ms = now;
    w->trim.hw_trim = w->ft.hw;
    w->trim.parks_trim = w->trim.parks;
    if (ring || !w->trim.ring_ok) /* else the receive buffers are due again after TRIM_GAP_MS */
        w->trim.pub_trim = w->io.published;
    w->trim.quiet_since_ms = 0;
    SOTH_LOG(SOTH_LOG_INFO, (int)w->idx, 0,
             "quiet: gave memory back (trim %u: %zu KiB advised or freed%s, malloc_trim %s, "
             "%llu us CPU, %llu us of it in malloc_trim)",
             w->trim.n, given / 1024, ring ? " incl. the receive buffers" : "",
             released ? "released pages" : "had nothing",
             (unsigned long long)((cpu2 - cpu0) / 1000u),
             (unsigned long long)((cpu2 - cpu1) / 1000u));
}

/* Once a second (from the loop, never per request): is the worker quiet, and has it been for
 * TRIM_QUIET_MS since it last used memory a trim would give back? Quiet: few bytes received
 * in the last second and the live flows either few or at most half their peak. */
static void trim_check(struct worker *w, uint64_t now)
{
    w->trim.next_ms = now + TRIM_CHECK_MS;
    uint64_t pub = w->io.published;
    uint32_t live = w->ft.n_live;
    bool parked = w->trim.parks - w->trim.parks_trim >= TRIM_DIRTY_PARKS;
    bool busy = pub - w->trim.pub_last > TRIM_BUSY_BUFS ||
                (!parked && live > TRIM_FEW_LIVE && live > w->ft.hw / 2) || w->stopping;
    w->trim.pub_last = pub;
    if (busy) {
        w->trim.quiet_since_ms = 0;
        return;
    }
    if (w->trim.quiet_since_ms == 0)
        w->trim.quiet_since_ms = now;
    uint64_t quiet_ms = parked ? TRIM_QUIET_PARKED_MS : TRIM_QUIET_MS;
    if (now - w->trim.quiet_since_ms >= quiet_ms && now - w->trim.last_ms >= TRIM_GAP_MS &&
        (trim_dirty(w) || parked))
        worker_trim(w, now);
}

/* ------------------------------------------------------------------------------------------
 * set-up and the loop
 * ------------------------------------------------------------------------------------------ */

/* A batched wait ends early once this many completions are in (else at wake_batch_us). */
#define BATCH_NR 16
/* While batching is off, every this many waits is batched anyway to see what it would bring. */
#define BATCH_PROBE 64
/* Batching only while each active flow's receives come at least this many wake_batch_us
 * apart: holding one up by wake_batch_us then costs its exchange little, where a few clients
 * each sending the next request at once would wait on every hop (docs/performance.md). */
#define BATCH_FLOW_GAP 10
#define BATCH_EPOCH_NS 1000000u /* the shortest activity epoch over which that is measured */

#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15) /* Linux 6.12: newer than Debian 12's headers */
#endif

static int ring_setup(struct worker *w)
{
    struct io_uring_params p;
    const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    /* With busy polling or wake batching, TASKRUN_FLAG: the kernel marks the SQ ring's flags
     * when completions wait for us to enter, which is what worker_wait looks at before it
     * watches or batches. Only then: with it, liburing's
     * io_uring_submit also runs deferred completions (get_sqe's flush of a full SQ). */
    unsigned taskrun =
        w->cfg->busy_poll_us > 0 || w->cfg->wake_batch_us > 0 ? IORING_SETUP_TASKRUN_FLAG : 0;
    int rc = -EINVAL;
    for (size_t i = 0; i < SOTH_ARRAY_LEN(flag_sets); i++) {
        memset(&p, 0, sizeof(p));
        p.flags = flag_sets[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
        if (flag_sets[i] != 0)
            p.flags |= taskrun; /* TASKRUN_FLAG needs DEFER_TASKRUN or COOP_TASKRUN */
        p.cq_entries = 16384;
        rc = io_uring_queue_init_params(2048, &w->ring, &p);
        if (rc == 0) {
            SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, 0, "io_uring flags 0x%x", p.flags);
            break;
        }
    }
    if (rc < 0)
        return rc;

    rc = iobuf_init(&w->io);
    if (rc < 0)
        return rc;
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)w->io.br, .ring_entries = SOTH_BUF_COUNT, .bgid = SOTH_BGID};
    rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0)
        return rc;
    iobuf_fill(&w->io);
    w->trim.ring_ok = (w->ring.flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    /* Wake batching needs the kernel's min_wait (Linux 6.12) and, to save wake-ups, deferred
     * completions: the kernel wakes a deferred-taskrun waiter only once as many completions
     * as it waits for are in (docs/performance.md, "Batching the wake-ups"). */
    if (w->cfg->wake_batch_us > 0) {
        if ((p.features & IORING_FEAT_MIN_TIMEOUT) && w->trim.ring_ok) {
            w->poll.batch_ns = (uint64_t)w->cfg->wake_batch_us * 1000u;
            /* long enough for the flow gap it measures to reach BATCH_FLOW_GAP windows */
            w->poll.epoch_len_ns = 2 * BATCH_FLOW_GAP * w->poll.batch_ns;
            if (w->poll.epoch_len_ns < BATCH_EPOCH_NS)
                w->poll.epoch_len_ns = BATCH_EPOCH_NS;
            w->poll.per_batch = 2 * 16; /* the yield rule starts satisfied */
        } else
            SOTH_LOG(SOTH_LOG_DEBUG, (int)w->idx, 0,
                     "wake_batch_us: this kernel has no io_uring min_wait with deferred task "
                     "runs (Linux 6.12); waking per completion");
    }
    w->trim.pub_trim = w->trim.pub_last = w->io.published; /* the fill is not a burst */

    rc = flow_table_init(&w->ft);
    if (rc < 0)
        return rc;
    rc = seg_pool_init(&w->segs, &w->io, SOTH_SEGS);
    if (rc < 0)
        return rc;
    w->efd = eventfd(0, EFD_CLOEXEC);
    if (w->efd == -1)
        return -errno;
    return 0;
}

static void pin_cpu(struct worker *w)
{
    if (w->cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) == -1)
        SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0, "sched_setaffinity(cpu %d): %s", w->cpu,
                 strerror(errno));
}

static void worker_teardown(struct worker *w)
{
    io_uring_queue_exit(&w->ring);
    quic_dispose(w);
    flow_table_dispose(&w->ft);
    seg_pool_dispose(&w->segs);
    iobuf_dispose(&w->io);
    /* w->efd stays open: other threads may still write to it (soth_worker_wake); the engine
     * closes it after joining every thread. */
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    w->listen_fd = -1;
    soth_policy_free(w->policy);
    w->policy = NULL;
    upool_dispose(&w->pool); /* pooled connections point into the TLS context */
    soth_tls_ctx_free(w->tls);
    w->tls = NULL;
}

static void signal_ready(struct worker *w, int err)
{
    struct soth_engine *e = w->eng;
    pthread_mutex_lock(&e->start_mu);
    w->setup_err = err;
    e->n_ready++;
    pthread_cond_broadcast(&e->start_cv);
    pthread_mutex_unlock(&e->start_mu);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Work the kernel holds for us without a CQE in the ring yet: deferred completions
 * (IORING_SQ_TASKRUN, set with IORING_SETUP_TASKRUN_FLAG) or an overflowed CQ. */
static inline bool ring_pending(const struct worker *w)
{
    return io_uring_cq_ready(&w->ring) > 0 ||
           (IO_URING_READ_ONCE(*w->ring.sq.kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW));
}

/* Submit what the pass queued and wait for BATCH_NR completions, but no longer than
 * wake_batch_us if at least one is in (and no longer than ts in any case): the kernel's
 * min_wait. liburing 2.3 has no call that passes min_wait (its io_uring_getevents_arg names
 * that field pad), so the SQ tail is published as io_uring_submit publishes it (io_uring(7))
 * and the kernel entered directly. An untimed wait gets a 1 s bound: min_wait without a
 * timeout would end at min_wait even with nothing in. */
static int wait_batched(struct worker *w, struct __kernel_timespec *ts)
{
    struct io_uring_sq *sq = &w->ring.sq;
    unsigned tail = sq->sqe_tail;
    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    unsigned submit = tail - IO_URING_READ_ONCE(*sq->khead);
    struct __kernel_timespec second = {.tv_sec = 1};
    struct io_uring_getevents_arg arg = {
        .sigmask = 0,
        .sigmask_sz = _NSIG / 8,
        .pad = (uint32_t)(w->poll.batch_ns / 1000u), /* min_wait_usec since Linux 6.12 */
        .ts = (uint64_t)(uintptr_t)(ts != NULL ? ts : &second)};
    return io_uring_enter2((unsigned)w->ring.ring_fd, submit, BATCH_NR,
                           IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, (sigset_t *)&arg,
                           sizeof(arg));
}

/* Submit what the pass queued and wait for the next completion (at most ts when timed).
 *
 * A worker that sleeps is woken by the CPU that received its packet (an inter-processor
 * interrupt, and on a virtual machine the host waking a halted vCPU), which costs that CPU and
 * the request more than the work it wakes us for (docs/performance.md, "Waking the worker").
 * Two ways to wake less, both only for a loaded worker (its recent waits shorter than the
 * option on average; the average counts only waits that had to wait, work already there is no
 * wait, and a wait that ends in a sleep counts its whole length, so a quiet worker stops after
 * its first long wait):
 *
 * - busy_poll_us: the worker first watches its rings for up to that long before it sleeps.
 *   The watch reads memory only (ring_pending, the clock through the vDSO); the queued SQEs
 *   are submitted before it, and what it sees is collected by the usual wait, which returns at
 *   once.
 * - wake_batch_us (docs/performance.md, "Batching the wake-ups"): the wait lets completions
 *   gather for up to that long (wait_batched), so that one wake-up, ended by our own CPU's
 *   timer, collects several. Loaded here means waits shorter than twice the option; and only
 *   while the active flows' receives come BATCH_FLOW_GAP windows apart or more on average
 *   (flow_gap_ns: a few clients each sending the next request at once would wait a window on
 *   every hop) and batched waits bring two receives or more on average (per_batch, looked at
 *   again every BATCH_PROBE waits while off); never with work already in by the SQ ring's
 *   mark (it would be held up). The completions the wait's own submit posts (sends) are held
 *   with the rest: they are not what a request waits for. */
static int worker_wait(struct worker *w, struct io_uring_cqe **cqe, struct __kernel_timespec *ts)
{
    uint64_t window = w->poll.window_ns, batch = w->poll.batch_ns;
    bool ready = ring_pending(w);
    w->poll.batched = false;
    if ((window == 0 && batch == 0) || ready) {
        if (!ready)
            SOTH_METRIC_ADD(w->m->waits_blocked, 1);
        return io_uring_submit_and_wait_timeout(&w->ring, cqe, 1, ts, NULL);
    }
    uint64_t t0 = soth_mono_ns(), t = t0;
    struct __kernel_timespec left;
    bool watched = window != 0 && w->poll.gap_ns < window;
    if (watched) {
        if (io_uring_sq_ready(&w->ring) > 0)
            io_uring_submit(&w->ring);
        while (!ring_pending(w) && t - t0 < window) {
            cpu_relax();
            t = soth_mono_ns();
        }
        SOTH_METRIC_ADD(w->m->busy_poll_ns, t - t0);
        if (ts != NULL) { /* the timers' deadline does not move by the watch */
            int64_t ns = ts->tv_sec * 1000000000ll + ts->tv_nsec - (int64_t)(t - t0);
            ns = ns > 0 ? ns : 0;
            left = (struct __kernel_timespec){.tv_sec = ns / 1000000000ll,
                                              .tv_nsec = ns % 1000000000ll};
            ts = &left;
        }
    }
    bool batched = batch != 0 && w->poll.gap_ns < 2 * batch &&
                   w->poll.flow_gap_ns >= BATCH_FLOW_GAP * batch &&
                   (w->poll.per_batch >= 2 * 16 || ++w->poll.probe >= BATCH_PROBE) &&
                   !(watched && ring_pending(w));
    int rc;
    if (batched) {
        w->poll.probe = 0;
        w->poll.batched = true;
        rc = wait_batched(w, ts);
        /* A kernel that announced min_wait and refuses it: do without. (With SQEs submitted
         * the kernel reports the count instead and returns without waiting, so this shows on
         * a wait that had nothing to submit; the pass before it then simply did not wait.) */
        if (rc == -EINVAL) {
            SOTH_LOG(SOTH_LOG_WARN, (int)w->idx, 0,
                     "wake_batch_us: the kernel refused io_uring's min_wait; waking per "
                     "completion");
            w->poll.batch_ns = 0;
            w->poll.batched = false;
            rc = io_uring_submit_and_wait_timeout(&w->ring, cqe, 1, ts, NULL);
        }
    } else {
        rc = io_uring_submit_and_wait_timeout(&w->ring, cqe, 1, ts, NULL);
    }
    uint64_t t1 = soth_mono_ns();
    /* polled: the watch saw the work and the wait then collected it without sleeping (the mark
     * can outlive the work it announced; the wait then slept, and counts as blocked) */
    if (batched)
        SOTH_METRIC_ADD(w->m->waits_batched, 1);
    else if (watched && t - t0 < window && t1 - t < window)
        SOTH_METRIC_ADD(w->m->waits_polled, 1);
    else
        SOTH_METRIC_ADD(w->m->waits_blocked, 1);
    w->poll.gap_ns = w->poll.gap_ns - w->poll.gap_ns / 8 + (t1 - t0) / 8;
    if (batch != 0 && t1 - w->poll.epoch_ns >= w->poll.epoch_len_ns) {
        /* each active flow's receives were this far apart on average (the epoch's length
         * bounded to a second: a product that cannot overflow) */
        uint64_t d = t1 - w->poll.epoch_ns < 1000000000u ? t1 - w->poll.epoch_ns : 1000000000u;
        w->poll.flow_gap_ns = w->poll.recvs > 0 ? d * w->poll.active / w->poll.recvs : 0;
        w->poll.epoch++;
        w->poll.epoch_ns = t1;
        w->poll.active = w->poll.recvs = 0;
    }
    return rc;
}

void *soth_worker_main(void *arg)
{
    struct worker *w = arg;
    pin_cpu(w);
    w->efd = -1;
    int rc = ring_setup(w);
    if (rc < 0) {
        snprintf(w->setup_msg, sizeof(w->setup_msg), "io_uring set-up: %s", soth_strerror(rc));
        signal_ready(w, rc);
        worker_teardown(w);
        return NULL;
    }
    w->head_limits.max_line = 8192;
    w->head_limits.max_head = SOTH_HEAD_MAX;
    timer_wheel_init(&w->timers, now_ms());
    rc = quic_init(w, w->setup_msg, sizeof(w->setup_msg));
    if (rc < 0) {
        signal_ready(w, rc);
        worker_teardown(w);
        return NULL;
    }
    const struct soth_config *c = w->cfg;
    bool pool = c->mode == SOTH_MODE_REVERSE && c->reverse_tls && c->upstream_pool.enabled;
    rc = upool_init(&w->pool, pool ? c->upstream_pool.max_idle : 0, c->upstream_pool.idle_ms,
                    c->upstream_pool.max_requests, w->m);
    if (rc < 0) {
        snprintf(w->setup_msg, sizeof(w->setup_msg), "upstream pool: %s", soth_strerror(rc));
        signal_ready(w, rc);
        worker_teardown(w);
        return NULL;
    }
    w->poll.window_ns = (uint64_t)c->busy_poll_us * 1000u;
    w->poll.gap_ns = 1000000000u; /* not polling until the waits have been short */
    accept_arm(w);
    arm_eventfd(w);
    io_uring_submit(&w->ring);
    signal_ready(w, 0);

    for (;;) {
        if (iobuf_publish(&w->io))
            conn_wake_waiters(w);
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000};
        bool timed = w->timers.n > 0 || w->stopping || quic_timed(w);
        if (!timed && (trim_dirty(w) || w->pool.n > 0)) {
            /* nothing else would wake us: look again in a second whether to trim (and sweep
             * the upstream pool) */
            ts = (struct __kernel_timespec){.tv_sec = TRIM_CHECK_MS / 1000};
            timed = true;
        }
        rc = worker_wait(w, &cqe, timed ? &ts : NULL);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            SOTH_LOG(SOTH_LOG_ERROR, (int)w->idx, 0, "io_uring_submit_and_wait: %s",
                     soth_strerror(rc));
            break;
        }
        unsigned head, n = 0;
        uint32_t recvs0 = w->poll.recvs;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            handle_cqe(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        if (w->poll.batched) { /* the receives batching brought (x16, 1/8 weight); not the
                                * sends' completions, which the wait's own submit posts */
            uint32_t r = w->poll.recvs - recvs0;
            w->poll.per_batch =
                w->poll.per_batch - w->poll.per_batch / 8 + (r < 4096 ? r : 4096) * 2;
        }
        uint64_t now = now_ms();
        timer_run(&w->timers, now, flow_on_timer, w);
        quic_turn(w);
        if (w->stopping) {
            if (now_ms() >= w->stop_deadline_ms) {
                for (uint32_t i = 0; i < w->ft.hw; i++) {
                    struct flow *f = &w->ft.flows[i];
                    if (flow_is_live(f) && f->state != FS_CLOSING)
                        flow_close(w, f, SOTH_CLOSE_SHUTDOWN);
                }
            }
            /* QUIC flows have no end of their own but idleness: they end with the TCP ones. */
            if (w->ft.n_live == 0 || now_ms() >= w->stop_deadline_ms)
                quic_shutdown(w);
        }
        soth_ev_flush(w->prod);
        if (w->stopping && w->ft.n_live == 0 && quic_live(w) == 0)
            break;
        if (now >= w->trim.next_ms)
            trim_check(w, now);
        if (w->pool.n > 0 && now >= w->pool.next_sweep_ms) {
            upool_sweep(&w->pool, now); /* once a second (docs/http1.md) */
            w->pool.next_sweep_ms = now + 1000;
        }
    }
    soth_ev_flush(w->prod);
    /* Let the last closes reach the kernel. */
    io_uring_submit(&w->ring);
    worker_teardown(w);
    app_thread_done();
    return NULL;
}
