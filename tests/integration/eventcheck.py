"""The one shared checker of SPEC's event ordering invariants, run on every test's events."""

COMMON = ("v", "type", "gseq", "flow_id", "seq", "ts_ns", "worker", "client_addr",
          "server_host", "server_port", "protocol")
PROTOCOLS = {"tcp", "tls", "http1", "http2", "websocket", "sse", "grpc", "http3"}
TLS_HTTP = {"tls_handshake_started", "tls_handshake_succeeded", "tls_handshake_failed",
            "request_headers", "request_body_chunk", "request_trailers", "response_headers",
            "response_body_chunk", "response_trailers", "exchange_completed", "ws_message",
            "ws_turn_started", "ws_turn_completed", "sse_event", "grpc_message",
            "payload_parsed"}
STREAM_EVENTS = {"request_headers", "request_body_chunk", "request_trailers",
                 "response_headers", "response_body_chunk", "response_trailers",
                 "exchange_completed"}


class EventOrderError(AssertionError):
    pass


def _fail(msg, ev):
    raise EventOrderError(f"{msg}: {ev}")


def check_events(events, require_closed=True):
    """Assert SPEC invariants 1-6 over a list of events in ring order (skipping overruns)."""
    flows = {}
    last_gseq = None
    for ev in events:
        if ev.get("type") == "ring_overrun":
            continue
        for k in COMMON:
            if k not in ev:
                _fail(f"missing field {k}", ev)
        if ev["v"] != 1:
            _fail("v must be 1", ev)
        if ev["protocol"] not in PROTOCOLS:
            _fail("unknown protocol", ev)
        if last_gseq is not None and ev["gseq"] <= last_gseq:
            _fail("gseq not strictly increasing", ev)
        last_gseq = ev["gseq"]
        fl = flows.setdefault(ev["flow_id"], {"next_seq": None, "closed": False,
                                              "decided": False, "streams": {}, "first": None,
                                              "gap": 0})
        if fl["closed"]:
            _fail("event after stream_closed", ev)
        # Invariant 1: seq 0,1,2,... (gaps only if events were dropped).
        if fl["next_seq"] is None:
            fl["first"] = ev["type"]
            if ev["seq"] != 0:
                fl["gap"] += ev["seq"]
            # Invariant 2: the first event.
            if ev["seq"] == 0 and ev["type"] not in ("connect_received", "connect_parse_failed"):
                _fail("flow must start with connect_received or connect_parse_failed", ev)
        elif ev["seq"] != fl["next_seq"]:
            if ev["seq"] < fl["next_seq"]:
                _fail("seq went backwards", ev)
            fl["gap"] += ev["seq"] - fl["next_seq"]
        fl["next_seq"] = ev["seq"] + 1
        t = ev["type"]
        if t == "connect_decision":
            fl["decided"] = True
        # Invariant 3.
        if t in TLS_HTTP and not fl["decided"]:
            _fail("TLS/HTTP event before connect_decision", ev)
        # Invariant 4 and 5, per stream.
        if t in STREAM_EVENTS:
            st = fl["streams"].setdefault(ev["stream_id"], {"req": False, "resp": False,
                                                            "done": False, "off": {}})
            if st["done"]:
                _fail("event after exchange_completed on its stream", ev)
            if t == "request_headers":
                st["req"] = True
            elif t in ("request_body_chunk", "request_trailers", "response_headers") and \
                    not st["req"]:
                _fail(f"{t} before request_headers", ev)
            if t == "response_headers":
                st["resp"] = True
            elif t in ("response_body_chunk", "response_trailers") and not st["resp"]:
                _fail(f"{t} before response_headers", ev)
            if t.endswith("_body_chunk"):
                key = t.split("_")[0]
                exp = st["off"].get(key, 0)
                if ev["offset"] != exp:
                    _fail(f"body offset {ev['offset']} != expected {exp}", ev)
                st["off"][key] = exp + ev["len"]
            if t == "exchange_completed":
                st["done"] = True
        if t == "stream_closed":
            fl["closed"] = True
            if ev["events_dropped"] != fl["gap"]:
                _fail(f"events_dropped {ev['events_dropped']} != seq gaps {fl['gap']}", ev)
    if require_closed:
        for fid, fl in flows.items():
            if not fl["closed"]:
                raise EventOrderError(f"flow {fid} has no stream_closed")
    return flows


def by_flow(events):
    out = {}
    for ev in events:
        if ev.get("type") == "ring_overrun":
            continue
        out.setdefault(ev["flow_id"], []).append(ev)
    return out
