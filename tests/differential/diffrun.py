#!/usr/bin/python3
"""The differential runner (docs/migration.md, "Parity"): the fixture corpus (tests/corpus)
through `soth-mitm --engine soth-mitm` and `--engine mitmproxy` under one config, both event
rings read with soth-mitm-tail, normalised and compared per flow. Writes a markdown report and
exits 1 when the parity gate is not met (2 when the run itself failed).

    diffrun.py [--corpus DIR] [--intended FILE] [--report FILE] [--only NAME,...]

Environment: SOTH_BUILD_DIR (default <repo>/build) holds soth-mitm and soth-mitm-tail.
"""
import argparse
import collections
import fnmatch
import glob
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import fixtures  # noqa: E402
from harness import Proxy, by_flow  # noqa: E402

ENGINES = ("soth-mitm", "mitmproxy")
ASPECTS = ("decision", "tls", "order", "fields")
GATE = {"decision": 1.0, "tls": 1.0, "order": 0.99}
SETTLE_S = 25  # how long a fixture's flows may take to close after its client is done


# ---------------------------------------------------------------- running

def start(engine, cfg):
    if engine == "mitmproxy":
        return Proxy(workers=None, config=cfg, extra_args=["--engine", "mitmproxy"])
    return Proxy(workers=1, config=cfg)


def wait_closed(p, mark, settle_s=SETTLE_S):
    """Events after gseq `mark` once every flow they open has its stream_closed (bounded)."""
    deadline = time.time() + settle_s
    while True:
        evs = [e for e in p.events(settle=0.1) if e["gseq"] > mark]
        flows = by_flow(evs)
        if flows and all(f[-1]["type"] == "stream_closed" for f in flows.values()):
            time.sleep(0.3)  # late events of the same flows (there should be none)
            return [e for e in p.events(settle=0) if e["gseq"] > mark]
        if time.time() > deadline:
            return evs
        time.sleep(0.1)


def run_engine(engine, corpus, origins, log):
    """{fixture name: {"client": result, "events": [...], "error": text}} for one engine."""
    out = {}
    with start(engine, fixtures.config(origins)) as p:
        mark = 0
        for fx in corpus:
            t0 = time.time()
            res = {"events": [], "client": None, "error": None}
            try:
                res["client"] = fixtures.CLIENTS[fx["client"]["kind"]](p, origins, fx)
            except Exception as e:  # the client's failure is part of what is compared
                res["error"] = f"{type(e).__name__}: {e}"
                res["client"] = {"error": type(e).__name__}
            evs = wait_closed(p, mark, fx.get("settle_s", SETTLE_S))
            if evs:
                mark = max(e["gseq"] for e in evs)
            res["events"] = evs
            out[fx["name"]] = res
            log(f"  {engine:10} {fx['name']:28} {len(by_flow(evs))} flow(s) "
                f"{time.time() - t0:5.1f} s" + (f"  client: {res['error']}" if res["error"]
                                                 else ""))
    # the harness checked the whole ring (eventcheck.py) at the clean exit
    return out


# ---------------------------------------------------------------- normalising

STREAM_TYPES = {"request_headers", "request_body_chunk", "request_trailers", "response_headers",
                "response_body_chunk", "response_trailers", "exchange_completed", "ws_message",
                "ws_turn_started", "ws_turn_completed", "sse_event", "grpc_message",
                "payload_parsed"}


def normalise_flow(fl, roles):
    """One flow's events, with ids, times, addresses, ports and workers gone: a dict of the
    compared aspects (see docs/migration.md, "Reading the report")."""
    first = fl[0]
    dec = next((e for e in fl if e["type"] == "connect_decision"), None)
    closed = next((e for e in fl if e["type"] == "stream_closed"), None)
    tls = {}
    for e in fl:
        if e["type"] == "tls_handshake_succeeded":
            tls[e["side"]] = "ok"
        elif e["type"] == "tls_handshake_failed":
            tls[e["side"]] = "failed:" + e["tls_failure_reason"]
    providers = sorted({e["tls_ops_provider"] for e in fl if e["type"] == "tls_handshake_failed"})
    streams = collections.OrderedDict()
    flow_types = []
    for e in fl:
        if e["type"] in STREAM_TYPES:
            streams.setdefault(e["stream_id"], []).append(e)
            if not flow_types or flow_types[-1] != "<streams>":
                flow_types.append("<streams>")
        else:
            flow_types.append(e["type"])
    svals = []
    for i, (sid, evs) in enumerate(streams.items()):
        rq = next((e for e in evs if e["type"] == "request_headers"), None)
        rs = [e for e in evs if e["type"] == "response_headers"]
        done = next((e for e in evs if e["type"] == "exchange_completed"), None)
        svals.append({
            "types": [e["type"] + (":close" if e["type"] == "ws_message" and e["opcode"] == 8
                                   else "") for e in evs],
            "method": rq and rq["method"], "path": rq and rq["path"],
            "status": rs[-1]["status"] if rs else None,
            "request_bytes": done and done.get("request_bytes"),
            "response_bytes": done and done.get("response_bytes"),
            "outcome": done and done.get("outcome"),
            "ws": [[e["direction"], e["opcode"], e["len"]] for e in evs
                   if e["type"] == "ws_message"],
            "ws_turns": [[e["initiator"], e["client_frames"], e["server_frames"]] for e in evs
                         if e["type"] == "ws_turn_completed"],
            "sse": [[e["event"], e["id"], e["data"]] for e in evs if e["type"] == "sse_event"],
            "grpc": [[e["direction"], e["length"]] for e in evs if e["type"] == "grpc_message"],
            "payload": [e["format"] for e in evs if e["type"] == "payload_parsed"],
            "trailers": sum(1 for e in evs if e["type"].endswith("_trailers")),
        })
    # HTTP/2 streams are compared in path order (the engines number them differently)
    svals.sort(key=lambda s: (s["path"] or "", s["method"] or ""))
    return {
        "key": (first.get("target") or "", first["server_host"]),
        "origin": roles.get(first["server_port"], str(first["server_port"])),
        "decision": dec and [dec["decision"], dec["reason"], dec.get("rule")],
        "tls": tls, "tls_provider": providers,
        "order": {"flow": flow_types, "streams": [s["types"] for s in svals]},
        "fields": {"first": first["type"], "method": first.get("method"),
                   "protocol": fl[-1]["protocol"],
                   "close": closed and closed["reason_code"],
                   "streams": [{k: v for k, v in s.items() if k != "types"} for s in svals]},
    }


def normalise(res, roles):
    flows = sorted((normalise_flow(f, roles) for f in by_flow(res["events"]).values()),
                   key=lambda f: f["key"])
    return {"flows": flows, "client": res["client"]}


# ---------------------------------------------------------------- intended differences

def applies(entry, name):
    return any(fnmatch.fnmatch(name, pat) for pat in entry.get("fixtures", ["*"]))


def transform(view, entry):
    """Apply one intended difference's transform to a normalised fixture (both engines get
    the same transform, so what one engine lacks by design stops counting)."""
    t = entry["transform"]
    for fl in view["flows"]:
        drop = set(t.get("drop_types", []))
        if drop:
            fl["order"]["streams"] = [[x for x in s if x not in drop]
                                      for s in fl["order"]["streams"]]
            fl["order"]["flow"] = [x for x in fl["order"]["flow"] if x not in drop]
        if t.get("canonical_stream_order"):
            # each message whole, the request's before the response's (what an engine that
            # buffers messages reports), streaming events left where they were relative to
            # their message
            rank = {"request_headers": 0, "request_body_chunk": 1, "request_trailers": 2,
                    "response_headers": 3, "response_body_chunk": 4, "response_trailers": 5,
                    "exchange_completed": 9}
            for s in fl["order"]["streams"]:
                s.sort(key=lambda x: rank.get(x, 4))
        if t.get("merge_chunks") or t.get("canonical_stream_order"):
            for s in fl["order"]["streams"]:
                s[:] = [x for i, x in enumerate(s)
                        if not (x.endswith("_body_chunk") and i and s[i - 1] == x)]
        ops = set(t.get("drop_ws_opcodes", []))
        if ops:
            for s in fl["fields"]["streams"]:
                s["ws"] = [m for m in s["ws"] if m[1] not in ops]
        if t.get("drop_unanswered_streams"):
            # a request the engine read and ended without any response event
            keep = [i for i, s in enumerate(fl["fields"]["streams"])
                    if not (s["status"] is None and s["response_bytes"] in (0, None) and
                            s["outcome"] == t["drop_unanswered_streams"])]
            fl["fields"]["streams"] = [fl["fields"]["streams"][i] for i in keep]
            fl["order"]["streams"] = [fl["order"]["streams"][i] for i in keep]
            if not keep:
                fl["order"]["flow"] = [x for x in fl["order"]["flow"] if x != "<streams>"]
        for f in t.get("ignore_stream_fields", []):
            for s in fl["fields"]["streams"]:
                s[f] = None
        for f in t.get("ignore_flow_fields", []):
            fl["fields"][f] = None
        for f in t.get("ignore_client_fields", []):
            if isinstance(view["client"], dict):
                view["client"][f] = None
    return view


def aspect_value(view, aspect):
    if aspect == "fields":
        return {"client": view["client"], "flows": [f["fields"] for f in view["flows"]]}
    return [f[aspect] for f in view["flows"]]


def compare(name, a, b, intended):
    """{aspect: (verdict, detail, [intended ids])} for one fixture's normalised views."""
    out = {}
    # the provider names the engine that reported a TLS failure: native under soth-mitm,
    # mitmproxy under the bridge; anything else is a difference however the classes compare
    bad = [(eng, f["tls_provider"]) for eng, v, want in (("soth-mitm", a, "native"),
                                                         ("mitmproxy", b, "mitmproxy"))
           for f in v["flows"] if f["tls_provider"] not in ([], [want])]
    for aspect in ASPECTS:
        va, vb = aspect_value(a, aspect), aspect_value(b, aspect)
        if aspect == "tls" and bad:
            out[aspect] = ("differ", f"tls_ops_provider: {bad}", [])
            continue
        if va == vb:
            out[aspect] = ("agree", "", [])
            continue
        used = []
        ta, tb = json.loads(json.dumps(a)), json.loads(json.dumps(b))
        for entry in intended:
            if aspect not in entry["aspects"] or not applies(entry, name):
                continue
            if "transform" in entry:
                before = json.dumps([aspect_value(ta, aspect), aspect_value(tb, aspect)])
                ta, tb = transform(ta, entry), transform(tb, entry)
                if json.dumps([aspect_value(ta, aspect), aspect_value(tb, aspect)]) != before:
                    used.append(entry["id"])  # named only where it changed something
                if aspect_value(ta, aspect) == aspect_value(tb, aspect):
                    break
            elif "expect" in entry:
                # an exact pair: this fixture's aspect reads so under each engine, by design
                if (entry["expect"].get("soth-mitm") == aspect_value(ta, aspect) and
                        entry["expect"].get("mitmproxy") == aspect_value(tb, aspect)):
                    used.append(entry["id"])
                    ta, tb = None, None
                    break
        if ta is None or aspect_value(ta, aspect) == aspect_value(tb, aspect):
            out[aspect] = ("intended", "", used)
        else:
            out[aspect] = ("differ", diff_text(aspect_value(ta, aspect),
                                               aspect_value(tb, aspect)), used)
    return out


def diff_text(va, vb):
    return (f"soth-mitm: `{json.dumps(va, separators=(',', ':'))}`<br>"
            f"mitmproxy: `{json.dumps(vb, separators=(',', ':'))}`")


# ---------------------------------------------------------------- report

def report(corpus, views, results, intended, elapsed):
    rows, counts = [], {a: collections.Counter() for a in ASPECTS}
    used_ids = collections.Counter()
    details = []
    for fx in corpus:
        name = fx["name"]
        r = results[name]
        cells = []
        for aspect in ASPECTS:
            verdict, detail, used = r[aspect]
            counts[aspect][verdict] += 1
            for u in used:
                used_ids[u] += 1
            cells.append(verdict + (f" ({', '.join(used)})" if used and verdict == "intended"
                                    else ""))
            if verdict == "differ":
                details.append(f"- **{name}**, {aspect}:<br>{detail}")
        na, nb = (len(views[e][name]["flows"]) for e in ENGINES)
        rows.append(f"| {name} | {na}/{nb} | " + " | ".join(cells) + " |")
    n = len(corpus)
    lines = ["# Differential report: soth-mitm against mitmproxy", "",
             f"{n} fixtures (tests/corpus), both engines under one config; "
             f"run time {elapsed:.0f} s. Cells: agree, differ, or intended (the ids of "
             "tests/differential/intended.json that explain the difference).", "",
             "| fixture | flows | decision | TLS | order | fields |",
             "| --- | --- | --- | --- | --- | --- |"] + rows + ["", "## Gate", ""]
    ok = True
    for aspect in ASPECTS:
        c = counts[aspect]
        strict = c["agree"] + c["intended"]
        if aspect in ("decision", "tls"):
            # decisions and TLS classes: only a difference an engine cannot avoid (the
            # condition cannot be produced under it) may be intended, and it is counted apart
            share = strict / n
            need = GATE[aspect]
            passed = c["differ"] == 0 and share >= need
            lines.append(f"- {aspect}: {c['agree']}/{n} agree, {c['intended']} intended, "
                         f"{c['differ']} differ: {'pass' if passed else 'FAIL'} "
                         f"(gate: 100% agree or intended, 0 differ)")
        elif aspect == "order":
            share = strict / n
            passed = share >= GATE["order"]
            lines.append(f"- event order: {c['agree']}/{n} agree, {c['intended']} intended, "
                         f"{c['differ']} differ = {100 * share:.1f}%: "
                         f"{'pass' if passed else 'FAIL'} (gate: >= 99%)")
        else:
            passed = c["differ"] == 0
            lines.append(f"- fields: {c['agree']}/{n} agree, {c['intended']} intended, "
                         f"{c['differ']} differ: {'pass' if passed else 'FAIL'} "
                         "(gate: every difference intended)")
        ok = ok and passed
    lines += ["", "**Gate: " + ("PASS" if ok else "FAIL") + "**", ""]
    if details:
        lines += ["## Differences not listed as intended", ""] + details + [""]
    lines += ["## Intended differences used", "",
              "| id | cells | reason |", "| --- | --- | --- |"]
    for e in intended:
        if used_ids[e["id"]]:
            lines.append(f"| {e['id']} | {used_ids[e['id']]} | {e['reason']} |")
    unused = [e["id"] for e in intended if not used_ids[e["id"]]]
    if unused:
        lines += ["", "Listed but not needed by this run: " + ", ".join(unused) + "."]
    return "\n".join(lines) + "\n", ok


def intended_table(intended):
    """The intended differences as the markdown table docs/migration.md carries."""
    out = ["| id | aspects | fixtures | reason |", "| --- | --- | --- | --- |"]
    for e in intended:
        out.append(f"| `{e['id']}` | {', '.join(e['aspects'])} | "
                   f"{', '.join('`%s`' % f for f in e.get('fixtures', ['*']))} | "
                   f"{e['reason']} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(REPO, "tests", "corpus"))
    ap.add_argument("--intended", default=os.path.join(HERE, "intended.json"))
    ap.add_argument("--report", default="differential-report.md")
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    ap.add_argument("--dump", default="", help="write the normalised views (JSON) here")
    ap.add_argument("--views", default="",
                    help="compare the views a --dump wrote instead of running the engines")
    ap.add_argument("--list-intended", action="store_true",
                    help="print the intended differences as a markdown table and exit")
    args = ap.parse_args()

    corpus = []
    for path in sorted(glob.glob(os.path.join(args.corpus, "*.json"))):
        with open(path) as f:
            fx = json.load(f)
        if fx["name"] != os.path.basename(path)[:-5]:
            sys.exit(f"{path}: name {fx['name']!r} is not the file's name")
        if fx["client"]["kind"] not in fixtures.CLIENTS:
            sys.exit(f"{path}: unknown client kind {fx['client']['kind']!r}")
        corpus.append(fx)
    if args.only:
        want = set(args.only.split(","))
        corpus = [fx for fx in corpus if fx["name"] in want]
    with open(args.intended) as f:
        intended = json.load(f)["intended"]
    for e in intended:
        if not e.get("reason") or not e.get("id") or not set(e["aspects"]) <= set(ASPECTS):
            sys.exit(f"{args.intended}: entry {e.get('id')!r} needs an id, aspects and a reason")
        if ("transform" in e) == ("expect" in e):
            sys.exit(f"{args.intended}: entry {e['id']!r} needs a transform or an expect")
        if "transform" in e and set(e["aspects"]) & {"decision", "tls"}:
            sys.exit(f"{args.intended}: entry {e['id']!r}: decisions and TLS classes take an "
                     "exact expect only")
    if args.list_intended:
        sys.stdout.write(intended_table(intended))
        return 0

    def log(s):
        print(s, file=sys.stderr, flush=True)

    t0 = time.time()
    if args.views:
        with open(args.views) as f:
            views = json.load(f)
        corpus = [fx for fx in corpus if all(fx["name"] in views[e] for e in ENGINES)]
    else:
        origins = fixtures.Origins()
        try:
            raw = {}
            for engine in ENGINES:
                log(f"engine {engine}")
                raw[engine] = run_engine(engine, corpus, origins, log)
            roles = origins.role_of_port()
        except Exception:
            traceback.print_exc()
            return 2
        finally:
            origins.close()
        views = {e: {n: normalise(r, roles) for n, r in raw[e].items()} for e in ENGINES}
        views = json.loads(json.dumps(views))  # the same types a --views file gives
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump(views, f, indent=1)
    results = {fx["name"]: compare(fx["name"], views["soth-mitm"][fx["name"]],
                                   views["mitmproxy"][fx["name"]], intended) for fx in corpus}
    text, ok = report(corpus, views, results, intended, time.time() - t0)
    with open(args.report, "w") as f:
        f.write(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
