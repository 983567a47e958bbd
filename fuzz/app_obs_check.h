/*
 * Checks of the stream observers' events (core/app_obs.c) for fuzz_app_h1.c and
 * fuzz_app_h2.c: the event calls are wrapped by the linker (--wrap) like the exchange events.
 * The includer defines CHECK(c) and, before including this, the per-stream state lookup
 *   static struct obs_st *obs_st_of(struct soth_ev_flow *f, uint32_t stream_id);
 * which checks that the flow may emit now and that the stream has its response head and is
 * not complete, and returns the stream's observer state (NULL: not tracked), and
 *   static uint64_t obs_capture(void);  (events.body_capture_bytes of the run)
 * Checked: ws_message data is at most the capture (and 256 KiB), truncated exactly when
 * data is shorter than len; turns of a stream are numbered 1, 2, 3, ..., a start only when
 * none is open, a completion only of the open one with a known flush reason and started_ns
 * <= ended_ns; sse_event has an event type. The includer checks at exchange_completed that
 * no turn is open (obs_st_closed).
 */
#ifndef SOTH_FUZZ_APP_OBS_CHECK_H
#define SOTH_FUZZ_APP_OBS_CHECK_H

#include "soth/observe.h"

struct obs_st {
    uint64_t turns; /* turns started */
    bool turn_open;
};

static struct obs_st *obs_st_of(struct soth_ev_flow *f, uint32_t stream_id);
static uint64_t obs_capture(void);

static bool obs_st_closed(const struct obs_st *o)
{
    return !o->turn_open;
}

/*
 * response_headers' alt_svc_removed (docs/http3.md, "Forcing clients back to TCP"): only with
 * http3_passthrough false (strip), at most 16 entries, each an "h3..." alternative lying inside
 * the value of an Alt-Svc field of the head as the origin sent it (hdrs).
 */
static void alt_svc_removed_check(bool strip, const struct soth_header *hdrs, size_t n,
                                  const struct soth_iov *rem, size_t n_rem)
{
    CHECK(n_rem <= 16);
    CHECK(strip || n_rem == 0);
    for (size_t k = 0; k < n_rem; k++) {
        bool inside = false;
        for (size_t i = 0; i < n && !inside; i++)
            inside = soth_iov_is_ci(hdrs[i].name, "alt-svc") && rem[k].base >= hdrs[i].value.base &&
                     rem[k].base + rem[k].len <= hdrs[i].value.base + hdrs[i].value.len;
        CHECK(inside && rem[k].len >= 2);
    }
}

void __real_soth_ev_ws_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                               unsigned opcode, uint64_t len, struct soth_iov data, bool truncated);
void __real_soth_ev_ws_turn_started(struct soth_ev_flow *f, uint32_t stream_id, uint64_t turn_id,
                                    enum soth_leg initiator);
void __real_soth_ev_ws_turn_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                      const struct soth_ws_turn_stats *st);
void __real_soth_ev_sse_event(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov event,
                              struct soth_iov id, int64_t retry, struct soth_iov data);
void __wrap_soth_ev_ws_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                               unsigned opcode, uint64_t len, struct soth_iov data, bool truncated);
void __wrap_soth_ev_ws_turn_started(struct soth_ev_flow *f, uint32_t stream_id, uint64_t turn_id,
                                    enum soth_leg initiator);
void __wrap_soth_ev_ws_turn_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                      const struct soth_ws_turn_stats *st);
void __wrap_soth_ev_sse_event(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov event,
                              struct soth_iov id, int64_t retry, struct soth_iov data);

void __wrap_soth_ev_ws_message(struct soth_ev_flow *f, uint32_t stream_id, enum soth_leg dir,
                               unsigned opcode, uint64_t len, struct soth_iov data, bool truncated)
{
    (void)obs_st_of(f, stream_id);
    CHECK(dir == SOTH_LEG_CLIENT || dir == SOTH_LEG_UPSTREAM);
    CHECK(opcode == 1 || opcode == 2 || opcode == 8 || opcode == 9 || opcode == 10);
    CHECK(data.len <= len && data.len <= obs_capture() && data.len <= (256u << 10));
    CHECK(data.len == 0 || data.base != NULL);
    CHECK(truncated == (data.len < len));
    __real_soth_ev_ws_message(f, stream_id, dir, opcode, len, data, truncated);
}

void __wrap_soth_ev_ws_turn_started(struct soth_ev_flow *f, uint32_t stream_id, uint64_t turn_id,
                                    enum soth_leg initiator)
{
    struct obs_st *o = obs_st_of(f, stream_id);
    CHECK(initiator == SOTH_LEG_CLIENT || initiator == SOTH_LEG_UPSTREAM);
    if (o != NULL) {
        CHECK(!o->turn_open);
        CHECK(turn_id == o->turns + 1);
        o->turns = turn_id;
        o->turn_open = true;
    }
    __real_soth_ev_ws_turn_started(f, stream_id, turn_id, initiator);
}

void __wrap_soth_ev_ws_turn_completed(struct soth_ev_flow *f, uint32_t stream_id,
                                      const struct soth_ws_turn_stats *st)
{
    struct obs_st *o = obs_st_of(f, stream_id);
    CHECK((unsigned)st->flush_reason <= SOTH_FLUSH_IDLE);
    CHECK(st->started_ns <= st->ended_ns);
    CHECK(st->client_frames + st->server_frames >= 1);
    if (o != NULL) {
        CHECK(o->turn_open && st->turn_id == o->turns);
        o->turn_open = false;
    }
    __real_soth_ev_ws_turn_completed(f, stream_id, st);
}

void __wrap_soth_ev_sse_event(struct soth_ev_flow *f, uint32_t stream_id, struct soth_iov event,
                              struct soth_iov id, int64_t retry, struct soth_iov data)
{
    (void)obs_st_of(f, stream_id);
    CHECK(event.len > 0);
    CHECK(retry >= -1);
    __real_soth_ev_sse_event(f, stream_id, event, id, retry, data);
}

#endif
