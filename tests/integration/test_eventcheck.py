"""The shared ordering checker itself: good sequences pass, each kind of bad one fails.

No proxy involved: events are built here the way soth-mitm-tail prints them.
"""
import base64
import copy
import unittest

from eventcheck import EventOrderError, body_of, by_stream, check_events


class Gen:
    """Builds one flow's events with consecutive seq/gseq and the common fields."""

    def __init__(self, flow_id=7, gseq0=100, protocol="http1"):
        self.flow_id = flow_id
        self.gseq = gseq0
        self.seq = 0
        self.protocol = protocol
        self.evs = []

    def ev(self, type_, **fields):
        e = {"v": 1, "type": type_, "gseq": self.gseq, "flow_id": self.flow_id, "seq": self.seq,
             "ts_ns": 1700000000000000000 + self.seq, "worker": 0,
             "client_addr": "127.0.0.1:40000", "server_host": "origin.test",
             "server_port": 443, "protocol": fields.pop("protocol", self.protocol)}
        if type_ == "connect_decision":
            self.identity = "anonymous"  # docs/events.md: identity from connect_decision on
        if getattr(self, "identity", None) is not None:
            e["identity"] = self.identity
        e.update(fields)
        self.gseq += 1
        self.seq += 1
        self.evs.append(e)
        return e

    def start(self, method="CONNECT", decision="intercept"):
        self.ev("connect_received", method=method, target="origin.test:443")
        self.ev("connect_decision", decision=decision, reason="default")
        return self

    def req(self, sid, method="GET", version="1.1"):
        return self.ev("request_headers", stream_id=sid, method=method, scheme="https",
                       authority="origin.test", path="/", http_version=version,
                       headers=[["Host", "origin.test"]])

    def resp(self, sid, status=200, version="1.1"):
        return self.ev("response_headers", stream_id=sid, status=status, http_version=version,
                       headers=[["Content-Length", "0"]])

    def chunk(self, sid, direction, offset, data, length=None, truncated=False):
        return self.ev(f"{direction}_body_chunk", stream_id=sid, offset=offset,
                       len=len(data) if length is None else length,
                       data_b64=base64.b64encode(data).decode(), truncated=truncated)

    def trailers(self, sid, direction):
        return self.ev(f"{direction}_trailers", stream_id=sid, headers=[["X-T", "1"]])

    def done(self, sid, outcome="complete", req=0, resp=0):
        return self.ev("exchange_completed", stream_id=sid, outcome=outcome, request_bytes=req,
                       response_bytes=resp)

    def close(self, reason="client_eof", dropped=0):
        return self.ev("stream_closed", reason_code=reason, bytes_client_to_server=0,
                       bytes_server_to_client=0, duration_ns=1, events_dropped=dropped)


def good_flow():
    """Two keep-alive exchanges: a POST with a chunked body and trailers, then a GET."""
    g = Gen().start()
    g.ev("tls_handshake_started", side="upstream", sni="origin.test", protocol="tls")
    g.ev("tls_handshake_succeeded", side="upstream", tls_version="TLSv1.3",
         cipher="TLS_AES_128_GCM_SHA256", alpn="http/1.1", protocol="tls")
    g.req(1, "POST")
    g.chunk(1, "request", 0, b"hello ")
    g.chunk(1, "request", 6, b"world")
    g.trailers(1, "request")
    g.resp(1, 100)
    g.resp(1, 200)
    g.chunk(1, "response", 0, b"ok")
    g.trailers(1, "response")
    g.done(1, req=11, resp=2)
    g.req(2)
    g.resp(2, 304)
    g.done(2)
    g.close()
    return g.evs


def mutate(evs, fn):
    """A deep copy of evs changed by fn, with seq/gseq renumbered per flow (so that only the
    intended defect remains)."""
    out = copy.deepcopy(evs)
    fn(out)
    seqs = {}
    for i, e in enumerate(out):
        e["gseq"] = 100 + i
        e["seq"] = seqs.get(e["flow_id"], 0)
        seqs[e["flow_id"]] = e["seq"] + 1
    return out


def find(evs, type_, sid=None, nth=0):
    hits = [i for i, e in enumerate(evs)
            if e["type"] == type_ and (sid is None or e.get("stream_id") == sid)]
    return hits[nth]


def move_before(evs, i, j):
    """Move event i to just before event j."""
    e = evs.pop(i)
    evs.insert(j if j < i else j - 1, e)


class GoodSequences(unittest.TestCase):
    def test_good_flow_passes(self):
        flows = check_events(good_flow())
        self.assertEqual(len(flows), 1)

    def test_handshake_abandoned_when_the_other_side_leaves(self):
        # The client went away (or the proxy shut down) while the upstream handshake ran:
        # the handshake has no end event, the close reason says why (docs/events.md).
        for reason in ("client_eof", "relay_error", "shutdown"):
            g = Gen().start()
            g.ev("tls_handshake_started", side="upstream", sni="origin.test", protocol="tls")
            g.close(reason)
            check_events(g.evs)

    def test_two_interleaved_flows_and_overrun_marker(self):
        a = Gen(flow_id=1).start()
        b = Gen(flow_id=2).start()
        a.req(1)
        b.req(1)
        a.resp(1)
        b.resp(1)
        a.done(1)
        b.done(1)
        a.close()
        b.close()
        evs = []
        for x, y in zip(a.evs, b.evs):
            evs += [x, y]
        for i, e in enumerate(evs):
            e["gseq"] = i + 1
        evs.insert(3, {"type": "ring_overrun", "lost": 0})
        check_events(evs)

    def test_h2_any_positive_ids(self):
        g = Gen(protocol="http2").start()
        g.req(3, version="2")
        g.req(1, version="2")
        g.resp(1, version="2")
        g.resp(3, version="2")
        g.done(3)
        g.done(1)
        g.close()
        check_events(g.evs)

    def test_capture_truncated_across_chunks(self):
        g = Gen().start()
        g.req(1, "POST")
        g.chunk(1, "request", 0, b"a" * 3000)
        g.chunk(1, "request", 3000, b"b" * 1096, length=2000, truncated=True)
        g.chunk(1, "request", 5000, b"", length=10, truncated=True)
        g.resp(1)
        g.done(1, req=5010)
        g.close()
        check_events(g.evs)
        cap, total = body_of(by_stream(g.evs)[1], "request")
        self.assertEqual((len(cap), total), (4096, 5010))

    def test_capture_zero_budget(self):
        g = Gen().start()
        g.req(1, "POST")
        g.chunk(1, "request", 0, b"", length=5, truncated=True)
        g.resp(1)
        g.done(1, req=5)
        g.close()
        check_events(g.evs, body_capture_bytes=0)

    def test_websocket_relay_bytes_not_matched_to_chunks(self):
        g = Gen().start()
        g.req(1)
        g.resp(1, 101)
        g.ev("ws_message", stream_id=1, direction="client_to_server", opcode=1, len=2,
             data_b64="aGk=", truncated=False, protocol="websocket")
        g.done(1, req=8, resp=4)
        g.close()
        check_events(g.evs)

    def test_dropped_events_relax_stream_checks(self):
        evs = good_flow()
        i = find(evs, "request_headers", 2)
        del evs[i]  # dropped: a seq gap, and stream_closed says so
        evs[-1]["events_dropped"] = 1
        check_events(evs)

    def test_ring_lost_the_beginning(self):
        evs = good_flow()[5:]
        evs[-1]["events_dropped"] = 0
        check_events(evs)

    def test_open_flow_allowed_when_not_required(self):
        evs = good_flow()[:-1]
        check_events(evs, require_closed=False)
        with self.assertRaises(EventOrderError):
            check_events(evs)


class BadSequences(unittest.TestCase):
    """Each case breaks exactly one rule of a good flow; the checker must refuse it."""

    # What the checker must say for each case (so that it fails for the intended reason).
    EXPECT = {
        "test_missing_common_field": "missing field client_addr",
        "test_decision_without_identity": "connect_decision without identity",
        "test_empty_identity": "identity must be a non-empty string",
        "test_bad_version": "v must be 1",
        "test_unknown_type": "unknown event type",
        "test_unknown_protocol": "unknown protocol",
        "test_bad_outcome": "exchange_completed.outcome",
        "test_bad_headers_shape": "request_headers.headers must be a list",
        "test_bad_base64": "not valid base64",
        "test_bool_is_not_an_int": "offset must be a non-negative integer",
        "test_close_reason_vocabulary": "stream_closed.reason_code",
        "test_reason_on_complete_exchange": "reason on a complete exchange",
        "test_reason_not_a_string": "reason must be a non-empty string",
        "test_events_dropped_without_gap": "events_dropped 2 != seq gaps 0",
        "test_flow_starts_with_decision": "flow must start with connect_received",
        "test_second_connect_received": "connect_received that is not the flow's first",
        "test_event_after_stream_closed": "event after stream_closed",
        "test_two_stream_closed": "event after stream_closed",
        "test_no_stream_closed": "has no stream_closed",
        "test_tls_before_decision": "before connect_decision",
        "test_http_without_decision": "before connect_decision",
        "test_second_decision": "second connect_decision",
        "test_http_after_block": "block decision",
        "test_tls_after_tunnel": "tls_handshake_started in a flow with a tunnel decision",
        "test_http_in_tunnelled_connect": "request_headers in a flow with a tunnel decision",
        "test_body_before_request_headers": "request_body_chunk on stream 1 before its "
                                            "request_headers",
        "test_request_trailers_before_request_headers": "request_trailers on stream 1 before",
        "test_response_headers_before_request_headers": "response_headers on stream 2 before",
        "test_response_body_before_response_headers": "response_body_chunk before the final",
        "test_response_body_after_only_interim_head": "response_body_chunk before the final",
        "test_response_trailers_before_response_headers": "response_trailers before the final",
        "test_event_after_exchange_completed": "response_trailers after exchange_completed",
        "test_two_exchange_completed": "exchange_completed after exchange_completed",
        "test_stream_without_exchange_completed": "stream 2 has no exchange_completed",
        "test_two_final_responses": "response_headers after the final response",
        "test_second_request_headers": "second request_headers on stream 1",
        "test_exchange_completed_alone": "exchange_completed on stream 2 before its "
                                         "request_headers",
        "test_body_chunk_after_trailers": "request body chunk after its trailers",
        "test_response_body_to_head": "response body to HEAD",
        "test_response_body_to_204": "status 204",
        "test_status_out_of_range": "status 99 out of range",
        "test_offset_not_from_zero": "body offset 1 != expected 0",
        "test_offset_gap": "body offset 7 != expected 6",
        "test_offset_overlap": "body offset 5 != expected 6",
        "test_zero_length_chunk": "len 0",
        "test_captured_more_than_len": "captured 2 bytes of a 1-byte chunk",
        "test_capture_over_budget": "captured 6 bytes, expected 1",
        "test_capture_short_of_budget": "captured 3 bytes, expected 5",
        "test_truncated_without_loss": "truncated True but 6 of 6",
        "test_request_bytes_mismatch": "request_bytes 12 != 11",
        "test_response_bytes_mismatch": "response_bytes 1 != 0",
        "test_h1_ids_start_at_one": "HTTP/1 stream_id 2, expected 1",
        "test_h1_ids_skip": "HTTP/1 stream_id 3, expected 2",
        "test_h1_ids_repeat": "request_headers after exchange_completed on stream 1",
        "test_h1_and_h2_mixed": "HTTP/1.x and HTTP/2 exchanges on one connection",
        "test_tls_end_without_start": "tls_handshake_succeeded on side upstream without",
        "test_tls_started_never_ends": "side upstream started but never ended",
        "test_tls_two_ends": "tls_handshake_failed on side upstream after its end",
        "test_tls_second_start": "second tls_handshake_started on side upstream",
    }

    def bad(self, fn, why, **kw):
        evs = mutate(good_flow(), fn)
        with self.assertRaises(EventOrderError, msg=why) as cm:
            check_events(evs, **kw)
        msg = str(cm.exception)
        self.assertIn(self.EXPECT[self._testMethodName], msg, why)
        return msg

    # -- schema
    def test_missing_common_field(self):
        self.bad(lambda e: e[3].pop("client_addr"), "client_addr missing")

    def test_decision_without_identity(self):
        self.bad(lambda e: e[find(e, "connect_decision")].pop("identity"), "no identity")

    def test_empty_identity(self):
        self.bad(lambda e: e[3].update(identity=""), "empty identity")

    def test_bad_version(self):
        self.bad(lambda e: e[3].update(v=2), "v != 1")

    def test_unknown_type(self):
        self.bad(lambda e: e[3].update(type="request_head"), "unknown type")

    def test_unknown_protocol(self):
        self.bad(lambda e: e[3].update(protocol="spdy"), "unknown protocol")

    def test_bad_outcome(self):
        self.bad(lambda e: e[find(e, "exchange_completed")].update(outcome="ok"), "outcome")

    def test_bad_headers_shape(self):
        self.bad(lambda e: e[find(e, "request_headers")].update(headers={"Host": "x"}),
                 "headers as dict")

    def test_bad_base64(self):
        self.bad(lambda e: e[find(e, "request_body_chunk")].update(data_b64="!!"), "base64")

    def test_bool_is_not_an_int(self):
        self.bad(lambda e: e[find(e, "request_body_chunk")].update(offset=False), "bool")

    def test_close_reason_vocabulary(self):
        self.bad(lambda e: e[-1].update(reason_code="eof"), "reason_code")

    def test_reason_on_complete_exchange(self):
        self.bad(lambda e: e[find(e, "exchange_completed")].update(reason="upstream_eof"),
                 "a reason only for what did not complete")

    def test_reason_not_a_string(self):
        self.bad(lambda e: e[find(e, "exchange_completed")].update(outcome="timeout",
                                                                   reason=None), "reason null")

    # -- invariant 1
    def test_gseq_not_increasing(self):
        evs = good_flow()
        evs[4]["gseq"] = evs[3]["gseq"]
        with self.assertRaisesRegex(EventOrderError, 'gseq not strictly increasing'):
            check_events(evs)

    def test_seq_backwards(self):
        evs = good_flow()
        evs[4]["seq"] = 2
        with self.assertRaisesRegex(EventOrderError, 'seq went backwards'):
            check_events(evs)

    def test_seq_gap_without_events_dropped(self):
        evs = good_flow()
        del evs[4]
        with self.assertRaises(EventOrderError) as cm:
            check_events(evs)
        self.assertIn("events_dropped 0 != seq gaps 1", str(cm.exception))

    def test_events_dropped_without_gap(self):
        self.bad(lambda e: e[-1].update(events_dropped=2), "events_dropped 2, no gap")

    # -- invariant 2
    def test_flow_starts_with_decision(self):
        self.bad(lambda e: e.pop(0), "first event is connect_decision")

    def test_second_connect_received(self):
        self.bad(lambda e: e.insert(5, dict(e[0])), "second connect_received")

    def test_event_after_stream_closed(self):
        self.bad(lambda e: e.append(dict(e[-2])), "after stream_closed")

    def test_two_stream_closed(self):
        self.bad(lambda e: e.append(dict(e[-1])), "two stream_closed")

    def test_no_stream_closed(self):
        self.bad(lambda e: e.pop(), "never closed")

    # -- invariant 3
    def test_tls_before_decision(self):
        self.bad(lambda e: move_before(e, 2, 1), "tls before connect_decision")

    def test_http_without_decision(self):
        self.bad(lambda e: e.pop(1), "no connect_decision")

    def test_second_decision(self):
        self.bad(lambda e: e.insert(4, dict(e[1])), "second decision")

    def test_http_after_block(self):
        self.bad(lambda e: e[1].update(decision="block"), "HTTP events in a blocked flow")

    def test_tls_after_tunnel(self):
        self.bad(lambda e: e[1].update(decision="tunnel"), "TLS events in a tunnelled flow")

    # -- TLS handshakes: started, then exactly one end, per side
    def test_tls_end_without_start(self):
        self.bad(lambda e: e.pop(2), "succeeded without started")

    def test_tls_started_never_ends(self):
        # The upstream itself closed while its handshake ran: that is a failure to report.
        def fn(e):
            e.pop(3)
            e[-1].update(reason_code="relay_eof")
        self.bad(fn, "started, then the upstream closed")

    def test_tls_two_ends(self):
        def fn(e):
            f = dict(e[3])
            f.update(type="tls_handshake_failed", tls_failure_reason="eof",
                     tls_failure_source="upstream", tls_ops_provider="native", detail="x",
                     host_failure_count=1, global_failure_count=1)
            e.insert(4, f)
        self.bad(fn, "succeeded and failed")

    def test_tls_second_start(self):
        self.bad(lambda e: e.insert(4, dict(e[2])), "a second handshake on one side")

    def test_http_in_tunnelled_connect(self):
        def fn(e):
            e[1].update(decision="tunnel")
            del e[2:4]
        self.bad(fn, "HTTP events in a tunnelled CONNECT")

    # -- invariant 4
    def test_body_before_request_headers(self):
        self.bad(lambda e: move_before(e, find(e, "request_body_chunk"),
                                       find(e, "request_headers")), "req body first")

    def test_request_trailers_before_request_headers(self):
        def fn(e):
            i = find(e, "request_trailers")
            t = e.pop(i)
            e.insert(find(e, "request_headers"), t)
        self.bad(fn, "req trailers first")

    def test_response_headers_before_request_headers(self):
        self.bad(lambda e: move_before(e, find(e, "response_headers", 2),
                                       find(e, "request_headers", 2)),
                 "response before request")

    def test_response_body_before_response_headers(self):
        self.bad(lambda e: move_before(e, find(e, "response_body_chunk"),
                                       find(e, "response_headers", 1, nth=1)),
                 "response body before the final response head")

    def test_response_body_after_only_interim_head(self):
        def fn(e):
            i = find(e, "response_headers", 1, nth=1)
            e[i]["status"] = 103
        self.bad(fn, "only 1xx heads before the body")

    def test_response_trailers_before_response_headers(self):
        def fn(e):
            t = e.pop(find(e, "response_trailers"))
            e.insert(find(e, "response_headers", 1), t)
        self.bad(fn, "response trailers first")

    def test_event_after_exchange_completed(self):
        self.bad(lambda e: move_before(e, find(e, "exchange_completed", 1),
                                       find(e, "response_trailers")),
                 "trailers after exchange_completed")

    def test_two_exchange_completed(self):
        self.bad(lambda e: e.insert(find(e, "request_headers", 2),
                                    dict(e[find(e, "exchange_completed", 1)])),
                 "exchange_completed twice")

    def test_stream_without_exchange_completed(self):
        self.bad(lambda e: e.pop(find(e, "exchange_completed", 2)), "no exchange_completed")

    def test_two_final_responses(self):
        self.bad(lambda e: e.insert(find(e, "exchange_completed", 2),
                                    dict(e[find(e, "response_headers", 2)])),
                 "second final response_headers")

    def test_second_request_headers(self):
        self.bad(lambda e: e.insert(find(e, "request_body_chunk"),
                                    dict(e[find(e, "request_headers", 1)])),
                 "second request_headers on one stream")

    def test_exchange_completed_alone(self):
        def fn(e):
            i = find(e, "request_headers", 2)
            del e[i:i + 2]
        self.bad(fn, "exchange_completed of a stream that never had request_headers")

    def test_body_chunk_after_trailers(self):
        self.bad(lambda e: move_before(e, find(e, "request_trailers"),
                                       find(e, "request_body_chunk", nth=1)),
                 "request body chunk after request trailers")

    def test_response_body_to_head(self):
        self.bad(lambda e: e[find(e, "request_headers", 1)].update(method="HEAD"),
                 "body in a response to HEAD")

    def test_response_body_to_204(self):
        self.bad(lambda e: e[find(e, "response_headers", 1, nth=1)].update(status=204),
                 "body in a 204")

    def test_status_out_of_range(self):
        self.bad(lambda e: e[find(e, "response_headers", 2)].update(status=99), "status 99")

    def test_ws_message_before_101(self):
        g = Gen().start()
        g.req(1)
        g.ev("ws_message", stream_id=1, direction="server_to_client", opcode=1, len=2,
             data_b64="aGk=", truncated=False, protocol="websocket")
        g.resp(1, 101)
        g.done(1)
        g.close()
        with self.assertRaisesRegex(EventOrderError, 'ws_message before the final response_headers'):
            check_events(g.evs)

    # -- invariant 5
    def test_offset_not_from_zero(self):
        self.bad(lambda e: e[find(e, "request_body_chunk")].update(offset=1), "offset 1")

    def test_offset_gap(self):
        self.bad(lambda e: e[find(e, "request_body_chunk", nth=1)].update(offset=7), "gap")

    def test_offset_overlap(self):
        self.bad(lambda e: e[find(e, "request_body_chunk", nth=1)].update(offset=5), "overlap")

    def test_zero_length_chunk(self):
        def fn(e):
            i = find(e, "response_body_chunk")
            e[i].update(len=0, data_b64="")
        self.bad(fn, "len 0")

    def test_captured_more_than_len(self):
        self.bad(lambda e: e[find(e, "response_body_chunk")].update(len=1), "data > len")

    def test_capture_over_budget(self):
        self.bad(lambda e: None, "6 captured bytes in a 1-byte budget", body_capture_bytes=1)

    def test_capture_short_of_budget(self):
        def fn(e):
            i = find(e, "request_body_chunk", nth=1)
            e[i].update(data_b64=base64.b64encode(b"wor").decode(), truncated=True)
        self.bad(fn, "captured 3 of 5 bytes while the budget allows all")

    def test_truncated_without_loss(self):
        self.bad(lambda e: e[find(e, "request_body_chunk")].update(truncated=True),
                 "truncated but everything captured")

    def test_not_truncated_with_loss(self):
        g = Gen().start()
        g.req(1, "POST")
        g.chunk(1, "request", 0, b"a" * 4096, length=5000, truncated=False)
        g.resp(1)
        g.done(1, req=5000)
        g.close()
        with self.assertRaisesRegex(EventOrderError, 'truncated False but 4096 of 5000'):
            check_events(g.evs)

    def test_data_after_truncation(self):
        g = Gen().start()
        g.req(1, "POST")
        g.chunk(1, "request", 0, b"a" * 10, length=20, truncated=True)
        g.chunk(1, "request", 20, b"b", truncated=True)
        g.resp(1)
        g.done(1, req=21)
        g.close()
        with self.assertRaisesRegex(EventOrderError, 'captured 1 bytes, expected 0'):
            check_events(g.evs, body_capture_bytes=10)

    def test_request_bytes_mismatch(self):
        self.bad(lambda e: e[find(e, "exchange_completed", 1)].update(request_bytes=12),
                 "request_bytes != chunk total")

    def test_response_bytes_mismatch(self):
        self.bad(lambda e: e[find(e, "exchange_completed", 2)].update(response_bytes=1),
                 "response_bytes without chunks")

    # -- invariant 6
    def test_h1_ids_start_at_one(self):
        def fn(e):
            for x in e:
                if "stream_id" in x:
                    x["stream_id"] += 1
        self.bad(fn, "first HTTP/1 id 2")

    def test_h1_ids_skip(self):
        def fn(e):
            for x in e:
                if x.get("stream_id") == 2:
                    x["stream_id"] = 3
        self.bad(fn, "HTTP/1 ids 1, 3")

    def test_h1_ids_repeat(self):
        def fn(e):
            for x in e:
                if x.get("stream_id") == 2:
                    x["stream_id"] = 1
        self.bad(fn, "HTTP/1 id 1 twice")

    def test_stream_id_zero(self):
        g = Gen(protocol="http2").start()
        g.req(0, version="2")
        g.close()
        with self.assertRaisesRegex(EventOrderError, 'stream_id must be positive'):
            check_events(g.evs)

    def test_h2_id_reused(self):
        g = Gen(protocol="http2").start()
        g.req(1, version="2")
        g.resp(1, version="2")
        g.done(1)
        g.req(1, version="2")
        g.resp(1, version="2")
        g.done(1)
        g.close()
        with self.assertRaisesRegex(EventOrderError, 'request_headers after exchange_completed on stream 1'):
            check_events(g.evs)

    def test_h1_and_h2_mixed(self):
        self.bad(lambda e: e[find(e, "request_headers", 2)].update(http_version="2"),
                 "HTTP/2 request on an HTTP/1.1 connection")

    def test_bad_mutation_helper_keeps_good_flow_good(self):
        check_events(mutate(good_flow(), lambda e: None))


if __name__ == "__main__":
    unittest.main()
