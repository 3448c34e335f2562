"""Codec throughput on one core: pod watch events/s (split + decode + metadata + selector fields) and list MB/s.

JSON is read two ways: jsonwire (the stdlib decoder; the reference) and jsonscan (msgspec; what the recorder uses).
`json_list_record_*` is what recording a list costs per MB with each decoder; `json_list_to_dicts_*` are whole-
document decoders that give no item bytes (compared only). The streams are recorded kube-apiserver pod events
(tests/fixtures/watch.pods-edge1.*) replicated to N events and fed
to the splitter in 64 KiB chunks, as a socket read hands them over; lists are the recorded 15-pod list replicated to
5,000 items. Single-threaded, pure CPU: no network, no cache; timed in process CPU seconds (median of the runs, best
alongside). Reports figures, asserts nothing.

    python -m benchmarks.codec [--events N] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from pathlib import Path

from edgeproxy.kube import jsonscan, jsonwire, protobuf, watch

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CHUNK = 64 * 1024
SCENARIO = "codec"


def _pb_frames(data: bytes) -> list[bytes]:
    sp = watch.ProtobufSplitter()
    return sp.feed(data)


def pod_streams(events: int) -> tuple[bytes, bytes, int]:
    """(protobuf stream, JSON stream, number of events): the recorded pod events (no bookmark) repeated."""
    pb_frames = [f for f in _pb_frames((FIXTURES / "watch.pods-edge1.pb.body").read_bytes())
                 if protobuf.decode_event(f).type != "BOOKMARK"]
    js_lines = [line for line in (FIXTURES / "watch.pods-edge1.json.body").read_bytes().split(b"\n")
                if line and jsonwire.decode_event(line).type != "BOOKMARK"]
    assert len(pb_frames) == len(js_lines)
    reps = max(1, events // len(pb_frames))
    pb = b"".join(struct.pack(">I", len(f)) + f for f in pb_frames) * reps
    js = b"".join(line + b"\n" for line in js_lines) * reps
    return pb, js, reps * len(pb_frames)


def consume_protobuf(stream: bytes) -> int:
    """What the recorder does per event: split, unwrap, ObjectMeta + selector fields."""
    sp = watch.ProtobufSplitter()
    n = 0
    for i in range(0, len(stream), CHUNK):
        for frame in sp.feed(stream[i : i + CHUNK]):
            ev = protobuf.decode_event(frame)
            protobuf.extract("pods", ev.raw)
            n += 1
    return n


def consume_json(stream: bytes) -> int:
    sp = watch.JsonSplitter()
    n = 0
    for i in range(0, len(stream), CHUNK):
        for line in sp.feed(stream[i : i + CHUNK]):
            ev = jsonwire.decode_event(line)
            jsonwire.extract("pods", ev.doc)
            n += 1
    return n


def consume_json_recorded(stream: bytes) -> int:
    """What the recorder does per JSON event since issue 15: msgspec finds the object's span, then its metadata."""
    sp = watch.JsonSplitter()
    n = 0
    for i in range(0, len(stream), CHUNK):
        for line in sp.feed(stream[i : i + CHUNK]):
            ev = jsonscan.decode_event(line)
            jsonscan.extract("pods", jsonwire.untyped(ev.obj))
            n += 1
    return n


def _record_stdlib(body: bytes) -> int:
    """The recorder's JSON list path before issue 15: the stdlib decoder, each item's dict read as it is decoded."""
    return len(jsonwire.parse_list(body, convert=lambda raw, doc: (jsonwire.extract("pods", doc), bytes(raw))).items)


def _record_msgspec(body: bytes) -> int:
    """Since issue 15: msgspec.Raw item spans (not decoded), then each item's metadata into typed structs."""
    return len([(jsonscan.extract("pods", bytes(r)), bytes(r)) for r in jsonscan.scan_list(body, copy=False).items])


def _dicts(loads):
    """A whole-document decoder into dicts (orjson, msgspec untyped): gives no item bytes, so it could only serve
    with a second pass to find them; timed for comparison, metadata read from the dicts."""
    def run(body: bytes) -> int:
        return len([jsonwire.extract("pods", d) for d in loads(body)["items"]])
    return run


def _timed(fn, repeat: int) -> list[float]:
    """CPU seconds of each run: the process's own CPU time, so a busy machine (other jobs on the same cores) slows
    the wall clock but not the figure; the code under test is single-threaded, so this is one core's time."""
    out = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def _row(metric: str, value: float, unit: str, **extra) -> dict:
    return {"scenario": SCENARIO, "metric": metric, "value": round(value, 1), "unit": unit, **extra}


def _opt(opts, name: str):
    """An option from an argparse.Namespace, a dict or nothing (the harness may pass any of them)."""
    if isinstance(opts, dict):
        return opts.get(name)
    return getattr(opts, name, None)


def run(opts=None) -> list[dict]:
    quick = bool(_opt(opts, "quick"))
    events = int(_opt(opts, "events") or (5_000 if quick else 20_000))
    repeat = int(_opt(opts, "repeat") or (2 if quick else 5))
    rows = []

    pb_stream, js_stream, n = pod_streams(events)
    for enc, stream, consume in (("protobuf", pb_stream, consume_protobuf), ("json", js_stream, consume_json),
                                 ("json_recorded", js_stream, consume_json_recorded)):
        assert consume(stream) == n  # warm-up and a check that every event went through
        times = _timed(lambda stream=stream, consume=consume: consume(stream), repeat)
        rows.append(_row(f"{enc}_pod_watch_events_per_s", n / statistics.median(times), "events/s",
                         best=round(n / min(times), 1), events=n, bytes_per_event=round(len(stream) / n),
                         **({"target": 50_000} if enc == "protobuf" else {})))

    # Lists: parse (take items out of a body) and build (a body from stored items), 5,000 pods.
    pb_body = (FIXTURES / "pods-edge1.list.pb.body").read_bytes()
    u = protobuf.unwrap(pb_body)
    pb_parts = protobuf.parse_list(u.raw)
    pb_items = pb_parts.items * (5_000 // len(pb_parts.items))
    big_pb = protobuf.build_list(u.api_version, u.kind, pb_parts.resource_version, pb_items)
    js_parts = jsonwire.parse_list((FIXTURES / "pods-edge1.list.json.body").read_bytes())
    js_items = [jsonwire.compact(i) for i in js_parts.items] * (5_000 // len(js_parts.items))
    big_js = jsonwire.build_list(js_parts.kind, js_parts.api_version, js_parts.resource_version, js_items)
    cases = {
        "protobuf_list_build": (lambda: protobuf.build_list(u.api_version, u.kind, "304", pb_items), len(big_pb)),
        "protobuf_list_parse": (lambda: protobuf.parse_list(protobuf.unwrap(big_pb).raw), len(big_pb)),
        "json_list_build": (lambda: jsonwire.build_list("PodList", "v1", "304", js_items), len(big_js)),
        "json_list_parse": (lambda: jsonwire.parse_list(big_js), len(big_js)),
        "json_list_record_stdlib": (lambda: _record_stdlib(big_js), len(big_js)),
        "json_list_record_msgspec": (lambda: _record_msgspec(big_js), len(big_js)),
    }
    import msgspec
    cases["json_list_to_dicts_msgspec"] = (lambda: _dicts(msgspec.json.decode)(big_js), len(big_js))
    try:
        import orjson  # not a dependency: measured when installed, for the README's comparison
        cases["json_list_to_dicts_orjson"] = (lambda: _dicts(orjson.loads)(big_js), len(big_js))
    except ImportError:
        pass
    for name, (fn, size) in cases.items():
        fn()
        times = _timed(fn, repeat)
        rows.append(_row(f"{name}_mb_per_s", size / 1e6 / statistics.median(times), "MB/s",
                         best=round(size / 1e6 / min(times), 1), items=len(pb_items), bytes=size))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codec", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, help="watch events per stream (default 20000)")
    parser.add_argument("--repeat", type=int, help="timed runs per figure; the median is reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="5000 events, 2 runs")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    opts = parser.parse_args(argv)
    rows = run(opts)
    for row in rows:
        if opts.json:
            print(json.dumps(row))
        else:
            print(f"{row['metric']:<36} {row['value']:>12,.1f} {row['unit']:<9} (best {row['best']:,.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
