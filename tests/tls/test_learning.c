/*
 * Learning state: per-host rolling failure counts, the threshold within the window, pins
 * that expire, the authoritative-provider rule, snapshots read through the policy-shaped
 * is_pinned callback and handed over through the per-worker slot.
 */
#include "soth/tls.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#define S 1000000000ull

static struct soth_tls_learning *mk(uint32_t thr, uint32_t win)
{
    struct soth_tls_learning_params p = {
        .enabled = true, .failure_threshold = thr, .window_s = win};
    struct soth_tls_learning *l;
    cr_assert_eq(soth_tls_learning_new(&p, &l), 0);
    return l;
}

static struct soth_tls_learning_result rec(struct soth_tls_learning *l, const char *host,
                                           enum soth_leg side, enum soth_tls_fail why,
                                           enum soth_tls_signal_provider prov, uint64_t now)
{
    struct soth_tls_learning_result r;
    cr_assert_eq(
        soth_tls_learning_record(l, soth_iov(host, strlen(host)), 443, side, why, prov, now, &r),
        0);
    return r;
}

Test(tls_learning, threshold_within_window_pins_then_expires)
{
    uint64_t t0 = 1000 * S;
    struct soth_tls_learning *l = mk(3, 300);
    struct soth_tls_learning_result r;
    r = rec(l, "pinned.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA,
            SOTH_TLS_PROVIDER_NATIVE, t0);
    cr_assert(r.counted && !r.applied && !r.ignored);
    cr_assert_eq(r.host_failure_count, 1);
    r = rec(l, "PINNED.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_CERT_VALIDATION,
            SOTH_TLS_PROVIDER_MITMPROXY, t0 + 10 * S);
    cr_assert_not(r.applied);
    cr_assert_not(
        soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("pinned.example"), 443, t0 + 11 * S));
    r = rec(l, "pinned.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA,
            SOTH_TLS_PROVIDER_NATIVE, t0 + 20 * S);
    cr_assert(r.applied, "third failure within the window pins");
    cr_assert_eq(r.host_failure_count, 3);
    cr_assert_eq(r.global_failure_count, 3);
    cr_assert(soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("pinned.example"), 443, t0 + 21 * S));
    cr_assert_not(
        soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("pinned.example"), 8443, t0 + 21 * S));
    cr_assert_not(
        soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("other.example"), 443, t0 + 21 * S));
    /* the pin lasts one window, then the host is intercepted (and learned) again */
    cr_assert(soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("pinned.example"), 443, t0 + 310 * S));
    cr_assert_not(
        soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("pinned.example"), 443, t0 + 321 * S));
    r = rec(l, "pinned.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA,
            SOTH_TLS_PROVIDER_NATIVE, t0 + 330 * S);
    cr_assert_not(r.applied, "a new round starts from zero");
    soth_tls_learning_free(l);
}

Test(tls_learning, failures_spread_beyond_the_window_do_not_pin)
{
    uint64_t t0 = 5000 * S;
    struct soth_tls_learning *l = mk(3, 60);
    for (int i = 0; i < 10; i++) {
        struct soth_tls_learning_result r =
            rec(l, "slow.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA,
                SOTH_TLS_PROVIDER_NATIVE, t0 + (uint64_t)i * 40 * S);
        cr_assert_not(r.applied, "failure %d", i);
        cr_assert_leq(r.host_failure_count, 2);
    }
    soth_tls_learning_free(l);
}

Test(tls_learning, only_client_side_ca_rejections_pin)
{
    uint64_t t0 = 100 * S;
    struct soth_tls_learning *l = mk(2, 300);
    enum soth_tls_fail other[] = {SOTH_TLS_FAIL_HANDSHAKE, SOTH_TLS_FAIL_EOF, SOTH_TLS_FAIL_RESET,
                                  SOTH_TLS_FAIL_TIMEOUT, SOTH_TLS_FAIL_OTHER};
    for (size_t i = 0; i < 5; i++) {
        struct soth_tls_learning_result r =
            rec(l, "h.example", SOTH_LEG_CLIENT, other[i], SOTH_TLS_PROVIDER_NATIVE, t0 + i * S);
        cr_assert(r.counted && !r.applied);
    }
    /* upstream-side verification failures are the origin's fault: no pin */
    for (int i = 0; i < 3; i++)
        cr_assert_not(rec(l, "h.example", SOTH_LEG_UPSTREAM, SOTH_TLS_FAIL_UNKNOWN_CA,
                          SOTH_TLS_PROVIDER_NATIVE, t0 + 10 * S)
                          .applied);
    struct soth_tls_learning_result r =
        rec(l, "h.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE,
            t0 + 11 * S);
    cr_assert_eq(r.host_failure_count, 9);
    soth_tls_learning_free(l);
}

Test(tls_learning, non_authoritative_provider_is_ignored)
{
    uint64_t t0 = 100 * S;
    struct soth_tls_learning *l = mk(1, 300);
    struct soth_tls_learning_result r = rec(
        l, "x.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_HUDSUCKER, t0);
    cr_assert(r.ignored);
    cr_assert_not(r.counted);
    cr_assert_not(r.applied);
    cr_assert_eq(r.global_failure_count, 0);
    cr_assert_not(soth_tls_learning_is_pinned_at(l, SOTH_IOV_LIT("x.example"), 443, t0 + S));
    r = rec(l, "x.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_MITMPROXY,
            t0 + S);
    cr_assert(r.applied && !r.ignored);
    soth_tls_learning_free(l);
}

Test(tls_learning, disabled_counts_but_never_pins)
{
    struct soth_tls_learning_params p = {.enabled = false, .failure_threshold = 1, .window_s = 300};
    struct soth_tls_learning *l;
    cr_assert_eq(soth_tls_learning_new(&p, &l), 0);
    struct soth_tls_learning_result r =
        rec(l, "d.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE, S);
    cr_assert(r.counted && !r.applied);
    cr_assert_eq(r.host_failure_count, 1);
    soth_tls_learning_free(l);
}

Test(tls_learning, bounded_host_table)
{
    struct soth_tls_learning_params p = {
        .enabled = true, .failure_threshold = 5, .window_s = 300, .max_hosts = 8};
    struct soth_tls_learning *l;
    cr_assert_eq(soth_tls_learning_new(&p, &l), 0);
    char h[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(h, sizeof(h), "h%d.example", i);
        rec(l, h, SOTH_LEG_CLIENT, SOTH_TLS_FAIL_EOF, SOTH_TLS_PROVIDER_NATIVE, S);
    }
    struct soth_tls_learning_result r =
        rec(l, "h0.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_EOF, SOTH_TLS_PROVIDER_NATIVE, S);
    cr_assert_eq(r.host_failure_count, 1, "h0 was dropped as the oldest");
    cr_assert_eq(r.global_failure_count, 1001);
    soth_tls_learning_free(l);
}

/* ---- snapshots through the slot, read from another thread */
struct reader {
    struct soth_tls_learning_slot *slot;
    int seen_pinned;
};

static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    struct soth_tls_learning_snapshot *view = NULL;
    for (int i = 0; i < 2000000 && rd->seen_pinned == 0; i++) {
        struct soth_tls_learning_snapshot *n = soth_tls_learning_slot_take(rd->slot);
        if (n != NULL) {
            soth_tls_learning_snapshot_unref(view);
            view = n;
        }
        if (soth_tls_learning_is_pinned(view, SOTH_IOV_LIT("App.Example"), 443))
            rd->seen_pinned = 1;
    }
    soth_tls_learning_snapshot_unref(view);
    return NULL;
}

Test(tls_learning, snapshot_is_immutable_and_reaches_a_worker)
{
    uint64_t now = soth_mono_ns();
    struct soth_tls_learning *l = mk(2, 300);
    struct soth_tls_learning_snapshot *empty = soth_tls_learning_snapshot_new(l, now);
    cr_assert_not(soth_tls_learning_is_pinned(empty, SOTH_IOV_LIT("app.example"), 443));
    cr_assert_not(soth_tls_learning_is_pinned(NULL, SOTH_IOV_LIT("app.example"), 443));

    struct soth_tls_learning_slot slot;
    soth_tls_learning_slot_init(&slot);
    struct reader rd = {.slot = &slot};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reader_main, &rd), 0);
    soth_tls_learning_slot_publish(&slot, soth_tls_learning_snapshot_ref(empty));
    rec(l, "app.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE, now);
    rec(l, "app.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE,
        now + 1);
    struct soth_tls_learning_snapshot *pinned = soth_tls_learning_snapshot_new(l, now + 2);
    soth_tls_learning_slot_publish(&slot, pinned);
    pthread_join(th, NULL);
    cr_assert_eq(rd.seen_pinned, 1);
    /* the old snapshot did not change */
    cr_assert_not(soth_tls_learning_is_pinned(empty, SOTH_IOV_LIT("app.example"), 443));
    soth_tls_learning_snapshot_unref(empty);
    soth_tls_learning_slot_dispose(&slot);
    soth_tls_learning_free(l);

    /* a pin in a snapshot expires by the clock even without a newer snapshot */
    l = mk(1, 1);
    uint64_t past = soth_mono_ns() - 5 * S;
    rec(l, "gone.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE,
        past);
    struct soth_tls_learning_snapshot *s = soth_tls_learning_snapshot_new(l, past);
    cr_assert_not(soth_tls_learning_is_pinned(s, SOTH_IOV_LIT("gone.example"), 443));
    soth_tls_learning_snapshot_unref(s);
    soth_tls_learning_free(l);
}

Test(tls_learning, authoritative_providers)
{
    cr_assert(soth_tls_learning_provider_is_authoritative(SOTH_TLS_PROVIDER_NATIVE));
    cr_assert(soth_tls_learning_provider_is_authoritative(SOTH_TLS_PROVIDER_MITMPROXY));
    cr_assert_not(soth_tls_learning_provider_is_authoritative(SOTH_TLS_PROVIDER_HUDSUCKER));
    cr_assert_not(soth_tls_learning_provider_is_authoritative(SOTH_TLS_PROVIDER_COUNT));
}

Test(tls_learning, lookup_gives_the_pin_for_the_audit)
{
    uint64_t t0 = 50 * S;
    struct soth_tls_learning *l = mk(2, 10);
    rec(l, "a.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE, t0);
    struct soth_tls_learning_result r =
        rec(l, "a.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_CERT_VALIDATION,
            SOTH_TLS_PROVIDER_MITMPROXY, t0 + S);
    cr_assert(r.applied);
    /* another host, pinned too: snapshots hold several pins, sorted by hash */
    for (int i = 0; i < 2; i++)
        rec(l, "b.example", SOTH_LEG_CLIENT, SOTH_TLS_FAIL_UNKNOWN_CA, SOTH_TLS_PROVIDER_NATIVE,
            t0 + 2 * S);
    struct soth_tls_learning_snapshot *s = soth_tls_learning_snapshot_new(l, t0 + 2 * S);
    cr_assert_eq(soth_tls_learning_snapshot_pins(s), 2);
    cr_assert_eq(soth_tls_learning_snapshot_pins(NULL), 0);

    struct soth_tls_learning_pin pin;
    memset(&pin, 0xa5, sizeof(pin));
    cr_assert(soth_tls_learning_lookup(s, SOTH_IOV_LIT("A.EXAMPLE"), 443, t0 + 3 * S, &pin));
    cr_assert_eq(pin.provider, SOTH_TLS_PROVIDER_MITMPROXY, "the signal that applied the pin");
    cr_assert_eq(pin.failures, 2);
    cr_assert_eq(pin.until_ns, t0 + S + 10 * S);
    cr_assert(soth_tls_learning_lookup(s, SOTH_IOV_LIT("b.example"), 443, t0 + 3 * S, NULL));
    cr_assert_not(soth_tls_learning_lookup(s, SOTH_IOV_LIT("a.example"), 444, t0 + 3 * S, &pin));
    cr_assert_not(soth_tls_learning_lookup(s, SOTH_IOV_LIT("c.example"), 443, t0 + 3 * S, &pin));
    /* the snapshot is immutable, but its pins end on time */
    cr_assert_not(soth_tls_learning_lookup(s, SOTH_IOV_LIT("a.example"), 443, t0 + 11 * S, &pin));
    cr_assert(soth_tls_learning_lookup(s, SOTH_IOV_LIT("b.example"), 443, t0 + 11 * S, NULL));
    cr_assert_not(soth_tls_learning_lookup(NULL, SOTH_IOV_LIT("a.example"), 443, t0, NULL));
    soth_tls_learning_snapshot_unref(s);
    soth_tls_learning_free(l);
}
