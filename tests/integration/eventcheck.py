"""The one shared checker of the event ordering invariants of docs/events.md, run on every test's
events.

check_events(events) walks the events in ring order and raises EventOrderError (an
AssertionError) at the first violation of:

  schema   every event has the common fields, v == 1, a known type and protocol, the type's
           own fields with values from the vocabularies of docs/events.md; an
           exchange_completed `reason` is a non-empty string, never on a complete exchange;
  1        per flow, seq 0, 1, 2, ... in gseq order; a gap only where events were dropped,
           and the flow's stream_closed events_dropped equals the gaps;
  2        a flow starts with connect_received or connect_parse_failed (and never has a second
           one), ends with exactly one stream_closed, and nothing follows it;
  3        connect_decision (at most one) precedes every TLS and HTTP event of its flow; a
           blocked flow has no TLS or HTTP event, a tunnelled one no TLS event and, when it
           was a CONNECT (or a SOCKS5 request), no HTTP event either (its bytes pass
           untouched);
  4        per stream, request_headers (exactly once) is the stream's first event and precedes
           its request body chunks, request trailers and response_headers; the final
           (non-1xx, or 101) response_headers comes once, after any interim 1xx ones, and
           precedes response body chunks and trailers; no body chunk follows its message's
           trailers; exchange_completed is the stream's last event, exactly once, and every
           stream has one before its flow's stream_closed; streaming events (ws, sse, grpc,
           payload_parsed) of a stream lie between its heads and its exchange_completed;
  5        body chunk offsets of each message are contiguous from 0, len >= 1; the captured
           bytes (data_b64) of a message are its first min(total, body_capture_bytes) bytes:
           each chunk captures min(len, what is left of the budget), never more than
           body_capture_bytes per message, and truncated is true exactly when the message
           has bytes that were not captured so far; exchange_completed's request_bytes and
           response_bytes equal the message lengths seen in the chunks (not for 101 / CONNECT
           relays, whose relayed bytes are counted but not reported as chunks); no response
           body to HEAD, 1xx, 204 or 304;
  tls      per flow and side (client, upstream), a handshake is tls_handshake_started then
           exactly one of tls_handshake_succeeded / tls_handshake_failed, before the flow's
           stream_closed, unless the flow closed because the other side went away or the
           proxy shut down while it ran (ABANDONS), or it is a bridge flow (worker -1); never a second started, never an end
           without its start (docs/events.md); `reused` (a pooled upstream connection) only
           on an upstream tls_handshake_succeeded, a positive integer;
  quic     a flow with protocol http3 (QUIC passthrough) has no TLS or HTTP event; its
           quic_client_hello (at most one) follows connect_received and precedes
           connect_decision; its stream_closed carries datagrams_client_to_server and
           datagrams_server_to_client, which no other flow's stream_closed has;
  6        stream_id is a positive integer; on an HTTP/1.x connection the exchanges are
           numbered 1, 2, 3, ... in request order; HTTP/2 (http_version "2") ids are any
           positive ids, never reused; one connection never mixes HTTP/1.x and HTTP/2.

Checks that need every event of a flow (2-6 within a stream, dropped counts) relax once a
flow has lost events (a seq gap, reported as events_dropped) or the ring lost its beginning
(first event seen with seq > 0).
"""
import base64
import binascii
import re

COMMON = ("v", "type", "gseq", "flow_id", "seq", "ts_ns", "worker", "client_addr",
          "server_host", "server_port", "protocol")
PROTOCOLS = {"tcp", "tls", "http1", "http2", "websocket", "sse", "grpc", "http3"}
TLS_EVENTS = {"tls_handshake_started", "tls_handshake_succeeded", "tls_handshake_failed"}
# stream_closed reasons that may leave a side's handshake open: the other side went away
# (eof or reset) or the proxy shut down while the handshake ran (docs/events.md).
ABANDONS = {"upstream": {"client_eof", "relay_error", "shutdown"},
            "client": {"relay_eof", "relay_error", "shutdown"}}
HEAD_BODY_EVENTS = {"request_headers", "request_body_chunk", "request_trailers",
                    "response_headers", "response_body_chunk", "response_trailers",
                    "exchange_completed"}
STREAMING_EVENTS = {"ws_message", "ws_turn_started", "ws_turn_completed", "sse_event",
                    "grpc_message", "payload_parsed"}
STREAM_EVENTS = HEAD_BODY_EVENTS | STREAMING_EVENTS
HTTP_EVENTS = STREAM_EVENTS
TLS_HTTP = TLS_EVENTS | HTTP_EVENTS
DEFAULT_BODY_CAPTURE = 4096  # events.body_capture_bytes default (docs/config.md)

SIDES = {"client", "upstream"}
JA4_RE = re.compile(r"^[tqd][0-9sd][0-9][di][0-9]{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")
JA4S_RE = re.compile(r"^[tqd][0-9sd][0-9][0-9]{2}[0-9A-Za-z]{2}_[0-9a-f]{4}_[0-9a-f]{12}$")
DIRECTIONS = {"client_to_server", "server_to_client"}
OUTCOMES = {"complete", "client_aborted", "upstream_aborted", "reset", "timeout"}
CLOSE_REASONS = {"blocked", "parse_failed", "upstream_connect_failed", "tls_failed",
                 "client_eof", "relay_eof", "relay_error", "idle_timeout", "shutdown",
                 "upstream_proxy_failed"}
DECISIONS = {"intercept", "tunnel", "block"}
DECISION_REASONS = {"ignore_hosts", "policy_rule", "tls_learning", "default",
                    "http3_passthrough"}
TLS_FAILURES = {"unknown_ca", "cert_validation", "handshake", "timeout", "eof", "reset",
                "other"}
PROVIDERS = {"native", "mitmproxy", "hudsucker"}
FLUSH_REASONS = {"direction_change", "close", "error", "idle"}

INT, STR, OSTR, BOOL, HDRS, B64 = "int", "str", "ostr", "bool", "hdrs", "b64"
# type -> {field: kind or a set of allowed strings}
SCHEMA = {
    "connect_received": {"method": OSTR, "target": STR},
    "connect_parse_failed": {"reason_code": STR, "detail": STR},
    "connect_decision": {"decision": DECISIONS, "reason": DECISION_REASONS},
    "tls_handshake_started": {"side": SIDES, "sni": OSTR},
    "tls_handshake_succeeded": {"side": SIDES, "tls_version": STR, "cipher": STR,
                                "alpn": OSTR},
    "tls_handshake_failed": {"side": SIDES, "tls_failure_reason": TLS_FAILURES,
                             "tls_failure_source": STR, "tls_ops_provider": PROVIDERS,
                             "detail": STR, "host_failure_count": INT,
                             "global_failure_count": INT},
    "tls_learning_audit": {"decision": {"applied", "ignored"}, "reason": STR, "host": STR,
                           "signal_provider": PROVIDERS},
    "request_headers": {"stream_id": INT, "method": STR, "scheme": OSTR, "authority": OSTR,
                        "path": STR, "http_version": STR, "headers": HDRS},
    "request_body_chunk": {"stream_id": INT, "offset": INT, "len": INT, "data_b64": B64,
                           "truncated": BOOL},
    "request_trailers": {"stream_id": INT, "headers": HDRS},
    "response_headers": {"stream_id": INT, "status": INT, "http_version": STR,
                         "headers": HDRS},
    "response_body_chunk": {"stream_id": INT, "offset": INT, "len": INT, "data_b64": B64,
                            "truncated": BOOL},
    "response_trailers": {"stream_id": INT, "headers": HDRS},
    "exchange_completed": {"stream_id": INT, "outcome": OUTCOMES, "request_bytes": INT,
                           "response_bytes": INT},
    "ws_message": {"stream_id": INT, "direction": DIRECTIONS, "opcode": INT, "len": INT,
                   "data_b64": B64, "truncated": BOOL},
    "ws_turn_started": {"stream_id": INT, "turn_id": INT, "initiator": DIRECTIONS},
    "ws_turn_completed": {"stream_id": INT, "turn_id": INT, "initiator": DIRECTIONS,
                          "client_frames": INT, "server_frames": INT, "client_bytes": INT,
                          "server_bytes": INT, "started_ns": INT, "ended_ns": INT,
                          "flush_reason": FLUSH_REASONS},
    "sse_event": {"stream_id": INT, "data": STR},
    "grpc_message": {"stream_id": INT, "direction": DIRECTIONS, "compressed": BOOL,
                     "length": INT, "data_b64": B64, "truncated": BOOL},
    "payload_parsed": {"stream_id": INT, "direction": DIRECTIONS, "decoders": list,
                       "sanitized": BOOL},
    "quic_client_hello": {"quic_version": STR, "sni": OSTR, "alpn": list,
                          "initial_packets": INT},
    "budget_exceeded": {"stream_id": INT, "rule": STR, "limit": {"requests", "bytes"},
                        "window_s": INT},
    "stream_closed": {"reason_code": CLOSE_REASONS, "bytes_client_to_server": INT,
                      "bytes_server_to_client": INT, "duration_ns": INT,
                      "events_dropped": INT},
}


class EventOrderError(AssertionError):
    pass


def _fail(msg, ev):
    raise EventOrderError(f"{msg}: {ev}")


def _is_text(x):
    return isinstance(x, str) or (isinstance(x, dict) and list(x) == ["b64"]
                                  and isinstance(x["b64"], str))


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _check_schema(ev):
    for k in COMMON:
        if k not in ev:
            _fail(f"missing field {k}", ev)
    if ev["v"] != 1:
        _fail("v must be 1", ev)
    if ev["protocol"] not in PROTOCOLS:
        _fail("unknown protocol", ev)
    for k in ("gseq", "flow_id", "seq", "ts_ns", "worker", "server_port"):
        # worker -1: a flow reported over the bridge (docs/bridge.md)
        if not _is_int(ev[k]) or ev[k] < (-1 if k == "worker" else 0):
            _fail(f"{k} must be a non-negative integer", ev)
    if ev["worker"] == -1 and ev["flow_id"] >> 48 != 0x7fff:
        _fail("a bridge flow (worker -1) has a flow_id outside 0x7fff << 48 | n", ev)
    t = ev["type"]
    if t not in SCHEMA:
        _fail("unknown event type", ev)
    # identity (docs/events.md): a string on every event from connect_decision on
    if "identity" in ev and not (isinstance(ev["identity"], str) and ev["identity"]):
        _fail("identity must be a non-empty string", ev)
    if t in ("connect_decision", "budget_exceeded") and ev.get("worker") != -1 and \
            "identity" not in ev:
        _fail(f"{t} without identity", ev)
    # Fingerprints (docs/tls.md, "Fingerprints"): optional, each only on its side.
    for ft, fname, side, rx in (("tls_handshake_started", "ja4", "client", JA4_RE),
                                ("tls_handshake_succeeded", "ja4s", "upstream", JA4S_RE)):
        if t == ft and fname in ev and (ev["side"] != side or not isinstance(ev[fname], str)
                                        or not rx.match(ev[fname])):
            _fail(f"{t}.{fname} must be a fingerprint on side {side}", ev)
    # A pooled upstream connection (docs/http1.md, "Upstream connection pool"): optional,
    # upstream side only, the requests it carried before.
    if t == "tls_handshake_succeeded" and "reused" in ev and (
            ev["side"] != "upstream" or not _is_int(ev["reused"]) or ev["reused"] < 1):
        _fail(f"{t}.reused must be a positive integer on side upstream", ev)
    for name, kind in SCHEMA[t].items():
        if name not in ev:
            _fail(f"{t} lacks field {name}", ev)
        val = ev[name]
        if isinstance(kind, set):
            if val not in kind:
                _fail(f"{t}.{name} = {val!r} is not one of {sorted(kind)}", ev)
        elif kind == INT:
            if not _is_int(val) or val < 0:
                _fail(f"{t}.{name} must be a non-negative integer", ev)
        elif kind == STR:
            if not isinstance(val, str):
                _fail(f"{t}.{name} must be a string", ev)
        elif kind == OSTR:
            if val is not None and not isinstance(val, str):
                _fail(f"{t}.{name} must be a string or null", ev)
        elif kind == BOOL:
            if not isinstance(val, bool):
                _fail(f"{t}.{name} must be a boolean", ev)
        elif kind == HDRS:
            # a name or value is a string, or {"b64": ...} for bytes that are not UTF-8
            # (docs/events.md, "Bytes in JSON")
            if not isinstance(val, list) or not all(
                    isinstance(h, list) and len(h) == 2 and all(_is_text(x) for x in h)
                    for h in val):
                _fail(f"{t}.{name} must be a list of [name, value] strings", ev)
        elif kind == B64:
            if not isinstance(val, str):
                _fail(f"{t}.{name} must be base64 text", ev)
            try:
                base64.b64decode(val, validate=True)
            except (binascii.Error, ValueError):
                _fail(f"{t}.{name} is not valid base64", ev)
        elif kind is list:
            if not isinstance(val, list):
                _fail(f"{t}.{name} must be a list", ev)
    # exchange_completed `reason`: optional, a non-empty string, never on a complete exchange
    if t == "exchange_completed" and "reason" in ev:
        if not isinstance(ev["reason"], str) or not ev["reason"]:
            _fail("exchange_completed.reason must be a non-empty string", ev)
        if ev["outcome"] == "complete":
            _fail("exchange_completed.reason on a complete exchange", ev)
    # budget_exceeded of a CONNECT or a proxy request head (no stream yet) has stream_id 0
    if "stream_id" in SCHEMA[t] and ev["stream_id"] < (0 if t == "budget_exceeded" else 1):
        _fail("stream_id must be positive (invariant 6)", ev)
    if t == "response_headers" and "alt_svc_removed" in ev:
        v = ev["alt_svc_removed"]  # optional: only when Alt-Svc entries were removed
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            _fail("response_headers.alt_svc_removed must be a non-empty list of strings", ev)


def _new_stream():
    return {"req": False, "final": False, "status": None, "method": None, "done": False,
            "h2": False, "msg": {"request": _new_msg(), "response": _new_msg()}}


def _new_msg():
    return {"off": 0, "captured": 0, "trailers": False}


def _check_chunk(st, ev, key, cap):
    m = st["msg"][key]
    if ev["offset"] != m["off"]:
        _fail(f"body offset {ev['offset']} != expected {m['off']} (invariant 5)", ev)
    if ev["len"] < 1:
        _fail("body chunk with len 0", ev)
    if m["trailers"]:
        _fail(f"{key} body chunk after its trailers", ev)
    data = base64.b64decode(ev["data_b64"])
    if len(data) > ev["len"]:
        _fail(f"captured {len(data)} bytes of a {ev['len']}-byte chunk", ev)
    want = min(ev["len"], max(0, cap - m["captured"]))
    if len(data) != want:
        _fail(f"captured {len(data)} bytes, expected {want} (body_capture_bytes {cap}, "
              f"{m['captured']} captured before) (invariant 5)", ev)
    m["off"] += ev["len"]
    m["captured"] += len(data)
    if m["captured"] > cap:
        _fail(f"{m['captured']} bytes captured in one message, over body_capture_bytes {cap}",
              ev)
    if ev["truncated"] != (m["captured"] < m["off"]):
        _fail(f"truncated {ev['truncated']} but {m['captured']} of {m['off']} bytes "
              "captured so far", ev)


def _check_stream_event(fl, ev, cap):
    t = ev["type"]
    sid = ev["stream_id"]
    streams = fl["streams"]
    st = streams.get(sid)
    if st is None:
        if t != "request_headers":
            _fail(f"{t} on stream {sid} before its request_headers (invariant 4)", ev)
        st = streams[sid] = _new_stream()
        h2 = ev["http_version"] == "2"
        if fl["h2"] is None:
            fl["h2"] = h2
        elif fl["h2"] != h2:
            _fail("HTTP/1.x and HTTP/2 exchanges on one connection", ev)
        st["h2"] = h2
        if not h2:
            # Invariant 6: 1, 2, 3, ... per HTTP/1.1 connection, in request order.
            if sid != fl["last_h1_id"] + 1:
                _fail(f"HTTP/1 stream_id {sid}, expected {fl['last_h1_id'] + 1} "
                      "(invariant 6)", ev)
            fl["last_h1_id"] = sid
    elif st["done"]:
        _fail(f"{t} after exchange_completed on stream {sid} (invariant 4)", ev)
    if t == "request_headers":
        if st["req"]:
            _fail(f"second request_headers on stream {sid}", ev)
        st["req"] = True
        st["method"] = ev["method"]
    elif t == "response_headers":
        if st["final"]:
            _fail(f"response_headers after the final response on stream {sid}", ev)
        s = ev["status"]
        if not 100 <= s <= 599:
            _fail(f"status {s} out of range", ev)
        if s >= 200 or s == 101:
            st["final"] = True
            st["status"] = s
    elif t in ("request_body_chunk", "request_trailers"):
        if t == "request_trailers":
            if st["msg"]["request"]["trailers"]:
                _fail("second request_trailers", ev)
            st["msg"]["request"]["trailers"] = True
        else:
            _check_chunk(st, ev, "request", cap)
    elif t in ("response_body_chunk", "response_trailers"):
        if not st["final"]:
            _fail(f"{t} before the final response_headers (invariant 4)", ev)
        if t == "response_trailers":
            if st["msg"]["response"]["trailers"]:
                _fail("second response_trailers", ev)
            st["msg"]["response"]["trailers"] = True
        else:
            if st["method"] == "HEAD" or st["status"] in (204, 304) or st["status"] < 200:
                _fail(f"response body to {st['method']} / status {st['status']}", ev)
            _check_chunk(st, ev, "response", cap)
    elif t == "exchange_completed":
        st["done"] = True
        relay = st["status"] == 101 or st["method"] == "CONNECT"
        if not relay and not fl["relaxed"]:
            for key, field in (("request", "request_bytes"), ("response", "response_bytes")):
                if ev[field] != st["msg"][key]["off"]:
                    _fail(f"{field} {ev[field]} != {st['msg'][key]['off']} body bytes "
                          f"reported in {key}_body_chunk events (invariant 5)", ev)
    else:  # streaming events: between the heads and exchange_completed
        server_side = ev.get("direction") == "server_to_client" or t in (
            "sse_event", "ws_message", "ws_turn_started", "ws_turn_completed")
        if server_side and not st["final"]:
            _fail(f"{t} before the final response_headers", ev)


def check_events(events, require_closed=True, body_capture_bytes=DEFAULT_BODY_CAPTURE):
    """Assert the event invariants of docs/events.md (module docstring) over events in ring order.

    require_closed: every flow must have ended with stream_closed (the proxy stopped, or the
    test waited for its connections to close). body_capture_bytes: the proxy's
    events.body_capture_bytes. Returns {flow_id: flow state}.
    """
    cap = body_capture_bytes
    flows = {}
    last_gseq = None
    for ev in events:
        if ev.get("type") == "ring_overrun":
            continue
        _check_schema(ev)
        if last_gseq is not None and ev["gseq"] <= last_gseq:
            _fail("gseq not strictly increasing", ev)
        last_gseq = ev["gseq"]
        fl = flows.get(ev["flow_id"])
        if fl is None:
            fl = flows[ev["flow_id"]] = {
                "next_seq": None, "closed": False, "decided": False, "decision": None,
                "streams": {}, "first": None, "gap": 0, "partial": False, "relaxed": False,
                "h2": None, "last_h1_id": 0, "started": False, "method": None,
                "tls": {}}
        if fl["closed"]:
            _fail("event after stream_closed (invariant 2)", ev)
        t = ev["type"]
        # Invariant 1: seq 0,1,2,... (gaps only if events were dropped).
        if fl["next_seq"] is None:
            fl["first"] = t
            if ev["seq"] != 0:
                # Dropped at the start, or the ring no longer holds the flow's beginning.
                fl["partial"] = fl["relaxed"] = True
                fl["gap"] += ev["seq"]
            elif t not in ("connect_received", "connect_parse_failed"):
                _fail("flow must start with connect_received or connect_parse_failed "
                      "(invariant 2)", ev)
        elif ev["seq"] != fl["next_seq"]:
            if ev["seq"] < fl["next_seq"]:
                _fail("seq went backwards (invariant 1)", ev)
            fl["gap"] += ev["seq"] - fl["next_seq"]
            fl["relaxed"] = True
        fl["next_seq"] = ev["seq"] + 1
        if t in ("connect_received", "connect_parse_failed"):
            if ev["seq"] != 0 and not fl["relaxed"]:
                _fail(f"{t} that is not the flow's first event (invariant 2)", ev)
            if fl["started"]:
                _fail("second connect_received/connect_parse_failed (invariant 2)", ev)
            fl["started"] = True
            fl["method"] = ev.get("method")
        if t == "connect_decision":
            if fl["decided"]:
                _fail("second connect_decision", ev)
            fl["decided"] = True
            fl["decision"] = ev["decision"]
        # Invariant 3.
        if t in TLS_HTTP:
            if not fl["decided"] and not fl["partial"]:
                _fail("TLS/HTTP event before connect_decision (invariant 3)", ev)
            if fl["decision"] == "block" or (fl["decision"] == "tunnel" and (
                    t in TLS_EVENTS or fl["method"] in ("CONNECT", "SOCKS5"))):
                _fail(f"{t} in a flow with a {fl['decision']} decision", ev)
        # QUIC flows: passthrough, never decrypted (docs/http3.md).
        quic = ev["protocol"] == "http3"
        if quic and t in TLS_HTTP:
            _fail(f"{t} in a QUIC flow", ev)
        if t == "quic_client_hello":
            if not quic:
                _fail("quic_client_hello in a flow that is not http3", ev)
            if fl.get("hello") or fl["decided"]:
                _fail("quic_client_hello after another one or after connect_decision", ev)
            fl["hello"] = True
        if t == "stream_closed":
            has = ["datagrams_client_to_server" in ev, "datagrams_server_to_client" in ev]
            if has != [quic, quic]:
                _fail("datagram counts belong to the stream_closed of QUIC flows only", ev)
            if quic and not all(_is_int(ev[k]) and ev[k] >= 0 for k in (
                    "datagrams_client_to_server", "datagrams_server_to_client")):
                _fail("datagram counts must be non-negative integers", ev)
        # TLS handshakes: started, then exactly one end, per side.
        if t in TLS_EVENTS and not fl["relaxed"]:
            side, hs = ev["side"], fl["tls"].get(ev["side"])
            if t == "tls_handshake_started":
                if hs is not None:
                    _fail(f"second tls_handshake_started on side {side}", ev)
                fl["tls"][side] = "started"
            elif hs != "started":
                _fail(f"{t} on side {side} " +
                      ("without tls_handshake_started" if hs is None else "after its end"), ev)
            else:
                fl["tls"][side] = "ended"
        # Invariants 4, 5, 6, per stream.
        if t in STREAM_EVENTS and not fl["relaxed"]:
            _check_stream_event(fl, ev, cap)
        if t == "stream_closed":
            fl["closed"] = True
            if fl["partial"]:
                if ev["events_dropped"] > fl["gap"]:
                    _fail(f"events_dropped {ev['events_dropped']} > seq gaps {fl['gap']}", ev)
            elif ev["events_dropped"] != fl["gap"]:
                _fail(f"events_dropped {ev['events_dropped']} != seq gaps {fl['gap']} "
                      "(invariant 1)", ev)
            if not fl["relaxed"]:
                for side, hs in fl["tls"].items():
                    # A handshake may only stay open when the flow closed because the other
                    # side went away (or the proxy shut down) while it ran: docs/events.md.
                    # A bridged flow (worker -1) reports what its engine saw: any close may
                    # leave a handshake the engine never ended (docs/bridge.md, "Flows").
                    if (hs == "started" and ev["reason_code"] not in ABANDONS[side]
                            and ev["worker"] != -1):
                        _fail(f"TLS handshake on side {side} started but never ended", ev)
                for sid, st in fl["streams"].items():
                    if not st["done"]:
                        _fail(f"stream {sid} has no exchange_completed before stream_closed "
                              "(invariant 4)", ev)
    if require_closed:
        for fid, fl in flows.items():
            if not fl["closed"]:
                raise EventOrderError(f"flow {fid} has no stream_closed (invariant 2)")
    return flows


def by_flow(events):
    out = {}
    for ev in events:
        if ev.get("type") == "ring_overrun":
            continue
        out.setdefault(ev["flow_id"], []).append(ev)
    return out


def by_stream(flow_events):
    """{stream_id: [events]} of one flow's stream events, in order."""
    out = {}
    for ev in flow_events:
        if ev["type"] in STREAM_EVENTS:
            out.setdefault(ev["stream_id"], []).append(ev)
    return out


def body_of(stream_events, direction):
    """(captured bytes, total length) of a stream's request or response body chunks."""
    t = f"{direction}_body_chunk"
    chunks = [e for e in stream_events if e["type"] == t]
    return (b"".join(base64.b64decode(e["data_b64"]) for e in chunks),
            sum(e["len"] for e in chunks))
