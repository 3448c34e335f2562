"""The HTTP/2 client layer's own CPU, in memory: per small GET and per watch event (edgeproxy/h2/session.py).

    python -m benchmarks h2layer [--quick]
    python -m benchmarks.h2layer [--requests N] [--events N] [--instructions]

The server side is python-hyper's h2, run once beforehand to record what it sends (a small GET's response HEADERS +
DATA as an API server answers it; a watch's events, one 4 KB DATA frame each); the timed part is only the client
session replaying that tape: a request opened and its HEADERS taken, the server's bytes received, the body read and
handed back to the window, the stream forgotten. Process CPU time, best of 7 runs; "(through h2)" is the same
session with its fast paths off (every frame through python-hyper h2, as before they were written). With
`--instructions` the same replays also run under valgrind's callgrind (if installed) and report instructions per
operation (the difference of two run lengths, so set-up cost cancels): unlike time, that figure does not move with
the machine's load. Beside it the HTTP/1.1 client's head building and parsing for the same request (httpclient.py),
the figure to compare with.
Reports figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import h2.config
import h2.connection
import h2.settings

from edgeproxy.h2 import session

SCENARIO = "h2layer"

REQUEST = [(b":authority", b"10.0.0.1:6443"), (b":method", b"GET"), (b":scheme", b"https"),
           (b":path", b"/api/v1/namespaces/default/services/kubernetes"), (b"accept", b"application/json"),
           (b"user-agent", b"kubelet/v1.37.2 (linux/amd64) kubernetes/abcdef0"),
           (b"accept-encoding", b"gzip")]
BODY = b'{"kind":"Service","apiVersion":"v1","metadata":{' + b'"x":"' + b"y" * 560 + b'"}}'
EVENT = 4400  # bytes of one protobuf pod event (a 10k-pod list is 43.9 MB)


def _response(i: int) -> list[tuple[bytes, bytes]]:
    """An API server's response head: a fresh Audit-Id per request, a Date that changes each second."""
    return [(b":status", b"200"), (b"audit-id", f"5d8e0c4b-0c1b-4a9e-9a7f-{i:012d}".encode()),
            (b"cache-control", b"no-cache, private"), (b"content-type", b"application/json"),
            (b"x-kubernetes-pf-flowschema-uid", b"3e7bd5c2-1f9e-4e26-8a9c-8d2f0f3d1a11"),
            (b"x-kubernetes-pf-prioritylevel-uid", b"8c4f2f7e-6c1d-4a5b-9e0d-0b7e1f2a3c44"),
            (b"date", f"Fri, 04 Dec 2026 23:{i // 6000 % 60:02d}:{i // 100 % 60:02d} GMT".encode()),
            (b"content-length", str(len(BODY)).encode())]


def _server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 250})
    conn.initiate_connection()
    return conn


def _handshake(client: session.Session, server: h2.connection.H2Connection) -> list[bytes]:
    """Both prefaces and acknowledgements; returns the server's chunks as the client received them."""
    tape = []
    from_client = client.start()
    while True:
        if from_client:
            server.receive_data(from_client)
        chunk = server.data_to_send()
        if not chunk:
            return tape
        tape.append(chunk)
        client.receive(chunk)
        from_client = client.output()


def record_gets(n: int) -> tuple[list[bytes], list[bytes]]:
    """The server's bytes for a handshake and `n` small GETs, one chunk per GET (HEADERS + DATA END_STREAM)."""
    client, server = session.Session(), _server()
    setup = _handshake(client, server)
    tape = []
    for i in range(n):
        stream = client.open(REQUEST, end_stream=True)
        server.receive_data(client.output())
        server.send_headers(stream.id, _response(i))
        server.send_data(stream.id, BODY, end_stream=True)
        chunk = server.data_to_send()
        tape.append(chunk)
        client.receive(chunk)
        client.consumed(stream, len(stream.take()))
        client.forget(stream)
        server.receive_data(client.output())
        assert not server.data_to_send()
    return setup, tape


def replay_gets(setup: list[bytes], tape: list[bytes], fast: bool = True) -> float:
    """Process seconds for the client side of the recorded GETs (fast=False: every frame through h2)."""
    client = session.Session(fast=fast)
    client.start()
    for chunk in setup:
        client.receive(chunk)
        client.output()
    status_of = session.status_of
    t0 = time.process_time()
    for chunk in tape:
        stream = client.open(REQUEST, end_stream=True)
        client.output()
        client.receive(chunk)
        status_of(stream.head)  # type: ignore[arg-type]
        client.consumed(stream, len(stream.take()))
        client.forget(stream)
        client.output()
    return time.process_time() - t0


def record_watch(n: int, per_read: int) -> tuple[list[bytes], list[bytes]]:
    """A watch's head, then `n` events of EVENT bytes, each its own DATA frame; `per_read` frames per chunk."""
    client, server = session.Session(), _server()
    setup = _handshake(client, server)
    stream = client.open(REQUEST, end_stream=True)
    server.receive_data(client.output())
    server.send_headers(stream.id, _response(0)[:-1])
    setup.append(server.data_to_send())
    client.receive(setup[-1])
    tape = []
    event = b"e" * EVENT
    for i in range(0, n, per_read):
        for _ in range(min(per_read, n - i)):
            server.send_data(stream.id, event)
        chunk = server.data_to_send()
        tape.append(chunk)
        client.receive(chunk)
        client.consumed(stream, len(stream.take()))
        out = client.output()
        if out:
            server.receive_data(out)
            assert not server.data_to_send()
    return setup, tape


def replay_watch(setup: list[bytes], tape: list[bytes], fast: bool = True) -> float:
    client = session.Session(fast=fast)
    client.start()
    stream = client.open(REQUEST, end_stream=True)
    client.output()
    for chunk in setup:
        client.receive(chunk)
        client.output()
    t0 = time.process_time()
    for chunk in tape:
        client.receive(chunk)
        client.consumed(stream, len(stream.take()))
        client.output()
    return time.process_time() - t0


def http1_head(n: int) -> float:
    """The HTTP/1.1 client's per-request head work for the same GET (httpclient.py's own functions): the request
    head built, the response head parsed into the same headers object the h2 shell builds."""
    from edgeproxy import httpclient

    head = b"HTTP/1.1 200 OK" + b"".join(b"\r\n" + k.title() + b": " + v for k, v in _response(0)[1:])
    items = [(k.decode().title(), v.decode()) for k, v in REQUEST[4:]]
    t0 = time.process_time()
    for _ in range(n):
        httpclient.request_head("GET", "/api/v1/namespaces/default/services/kubernetes", "10.0.0.1:6443", items, None)
        httpclient._parse_head(head)
    return time.process_time() - t0


def measure(requests: int, events: int, runs: int = 7) -> dict[str, float]:
    """µs of process time per operation, best of `runs`; "(through h2)": the session with its fast paths off."""
    out: dict[str, float] = {}
    setup, tape = record_gets(requests)
    for fast, suffix in ((True, ""), (False, " (through h2)")):
        out[f"small GET{suffix}"] = min(replay_gets(setup, tape, fast) for _ in range(runs)) / requests * 1e6
    for per_read in (1, 14):
        setup, tape = record_watch(events, per_read)
        for fast, suffix in ((True, ""), (False, " (through h2)")):
            out[f"watch event ({per_read} per read){suffix}"] = min(
                replay_watch(setup, tape, fast) for _ in range(runs)) / events * 1e6
    return out


def _callgrind_ir(argv: list[str]) -> int:
    """Instructions executed by `argv` under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv], check=True,
                       capture_output=True)
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
    raise RuntimeError("no callgrind summary")


def instructions(requests: int, events: int) -> dict[str, float]:
    """Instructions per operation: (Ir of a whole replay - Ir of its first quarter) / the operations between them.
    The tapes are recorded here and only replayed under callgrind, so the server's side is not counted."""
    import pickle

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, what, n, (setup, tape) in (
                ("small GET", "get", requests, record_gets(requests)),
                ("watch event (1 per read)", "watch", events, record_watch(events, 1)),
                ("watch event (14 per read)", "watch", events, record_watch(events, 14))):
            irs = []
            for part in (len(tape) // 4, len(tape)):
                path = os.path.join(tmp, f"tape-{part}")
                with open(path, "wb") as f:
                    pickle.dump((what, setup, tape[:part]), f)
                irs.append(_callgrind_ir([sys.executable, "-m", "benchmarks.h2layer", "--replay", path]))
            ops = n - n * (len(tape) // 4) // len(tape)
            out[kind] = (irs[1] - irs[0]) / ops
    return out


def run(opts) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    from benchmarks import harness

    requests, events = (500, 2000) if opts.quick else (2000, 10000)
    rows = []
    for kind, us in measure(requests, events).items():
        rows.append(harness.row(SCENARIO, f"h2 client layer CPU per {kind}", round(us, 2), "us",
                                note="in memory, best of 7, process time"))
    h1 = min(http1_head(requests) for _ in range(7))
    rows.append(harness.row(SCENARIO, "HTTP/1.1 client head work per small GET", round(h1 / requests * 1e6, 2),
                                "us", note="request head built + response head parsed"))
    if shutil.which("valgrind"):
        for kind, ir in instructions(requests // 2, events // 5).items():
            rows.append(harness.row(SCENARIO, f"h2 client layer instructions per {kind}", round(ir), "instructions",
                                    note="callgrind, difference of two run lengths"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.h2layer", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--events", type=int, default=10000)
    p.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    p.add_argument("--replay", help=argparse.SUPPRESS)  # a recorded tape to replay (under callgrind)
    args = p.parse_args(argv)
    if args.replay:
        import pickle

        with open(args.replay, "rb") as f:
            what, setup, tape = pickle.load(f)
        (replay_gets if what == "get" else replay_watch)(setup, tape)
        return 0
    result = {f"{k} µs": round(v, 2) for k, v in measure(args.requests, args.events).items()}
    result["HTTP/1.1 head work per small GET µs"] = round(
        min(http1_head(args.requests) for _ in range(7)) / args.requests * 1e6, 2)
    if args.instructions:
        result.update({f"{k} instructions": round(v) for k, v in
                       instructions(args.requests // 2, args.events // 5).items()})
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
