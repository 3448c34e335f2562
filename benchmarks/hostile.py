"""Hostile local clients against `edgeproxy serve`: what they get, and what the proxy's memory does (issue 14).

    python -m benchmarks hostile [--quick]

Three processes: the simulator (the API server), `edgeproxy serve` (plain listener with --plain-as-node on, so every
request reaches the proxy's full path), and this one as the clients. Phases, each reporting answers by status and
the proxy's RSS (VmRSS) before and after; nothing passes or fails:
- generated: random raw requests (methods, paths, queries, header bytes, bodies of garbage or JSON nested 30,000
  deep), online then offline (the simulator's `down` fault), each with a 15 s deadline; "hung" counts the misses;
- big: 300 GETs each with a 1 MB labelSelector, a 60 KB token, a 60 KB User-Agent (the probe's 1 MB ones are now
  refused by the 64 KiB header field bound);
- slowloris: 1,500 connections that send half a request head and stop; how many the proxy has closed 40 s later,
  and whether a normal GET is answered meanwhile;
- watch churn (issue 14 D11): 9 rounds of 1,000 watches (each replaying edge-1's 15 pods, ~100 KB) opened and closed;
  RSS after each round, with glibc's default malloc arenas and with MALLOC_ARENA_MAX=2.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from benchmarks import harness

SCENARIO = "hostile"
PODS = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1"
KUBELET = {"User-Agent": "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4", "Accept": "application/json"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kubeconfig(work: Path, server: str, pki: Path) -> Path:
    path = work / "kubeconfig"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        current-context: bench
        clusters: [{{name: sim, cluster: {{server: "{server}", certificate-authority: "{pki / 'ca.crt'}"}}}}]
        users: [{{name: node, user: {{client-certificate: "{pki / 'node.crt'}", client-key: "{pki / 'node.key'}"}}}}]
        contexts: [{{name: bench, context: {{cluster: sim, user: node}}}}]
        """))
    return path


@contextlib.contextmanager
def edgeproxy(work: Path, server: str, pki: Path, name: str, env: dict[str, str] | None = None
              ) -> Iterator[tuple[str, int]]:
    port = harness.free_port()
    argv = [sys.executable, "-m", "edgeproxy", "--log-level", "warning", "serve",
            "--kubeconfig", str(kubeconfig(work, server, pki)), "--listen", f"127.0.0.1:{port}", "--ops-listen", "",
            "--cache-dir", str(work / f"{name}-cache"), "--plain-as-node", "on", "--probe-interval", "0.5",
            "--offline-after", "1", "--online-after", "1"]
    with harness.process(argv, port=port, log=work / f"{name}.log", env=env) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


# ---------------------------------------------------------------- generated requests

SEGMENTS = ["api", "apis", "v1", "namespaces", "edge", "pods", "nodes", "edge-1", "status", "serviceaccounts",
            "default", "token", "leases", "kube-node-lease", "secrets", "configmaps", "events", "watch", "..", "%ff"]
KEYS = ["watch", "labelSelector", "fieldSelector", "resourceVersion", "limit", "continue", "timeoutSeconds", "x"]
VALUES = ["true", "0", "-1", "99999999999999999999999", "a=b,c!=d", "spec.nodeName=edge-1", "in(", "%zz"]
HEADERS = [b"Accept", b"User-Agent", b"Authorization", b"Content-Type", b"Connection", b"Upgrade", b"X-Junk"]
HVALUES = [b"application/json", b"application/vnd.kubernetes.protobuf", b"text/html", b"h2c", b"Upgrade",
           b"Bearer " + b"[" * 3000, b"caf\xc3\xa9", b"\xff\xfe", b"application/json;as=Table;g=meta.k8s.io;v=v1"]


def generated(rng: random.Random) -> bytes:
    path = "/" + "/".join(rng.choice(SEGMENTS) if rng.random() < 0.8 else hex(rng.getrandbits(32))
                          for _ in range(rng.randint(0, 7)))
    if rng.random() < 0.6:
        path += "?" + "&".join(f"{rng.choice(KEYS)}={rng.choice(VALUES) if rng.random() < 0.8 else '[' * 30000}"
                               for _ in range(rng.randint(1, 4)))
    method = rng.choice([b"GET", b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"FOO"])
    head = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1"]
    for _ in range(rng.randint(0, 5)):
        value = rng.choice(HVALUES) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 40)).replace(
            b"\r", b"").replace(b"\n", b"")
        head.append(rng.choice(HEADERS) + b": " + value)
    body = rng.choice([b"", b"x", b"{}", rng.randbytes(64), b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}"])
    head += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def send_raw(url: str, data: bytes, within: float = 15.0) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return -1
    try:
        writer.write(data)
        async with asyncio.timeout(within):
            answer = await reader.read()
    except TimeoutError:
        return -2  # hung
    except OSError:
        return 0
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


async def generated_phase(url: str, n: int, seed: int) -> dict[int, int]:
    rng = random.Random(seed)
    codes: dict[int, int] = {}
    sem = asyncio.Semaphore(32)

    async def one() -> None:
        async with sem:
            code = await send_raw(url, generated(rng))
        codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    return codes


# ---------------------------------------------------------------- big heads


async def big_phase(http: aiohttp.ClientSession, url: str, n: int) -> dict[int, int]:
    codes: dict[int, int] = {}
    big = "a" * (1 << 20)
    sixty = "b" * (60 << 10)
    for i in range(n):
        for path, headers in ((f"/api/v1/namespaces/edge/configmaps?labelSelector=x{i}{big}", KUBELET),
                              ("/api/v1/namespaces", {**KUBELET, "Authorization": f"Bearer {i}{sixty}"}),
                              ("/api/v1/namespaces", {**KUBELET, "User-Agent": f"{sixty}{i}/1.0"})):
            try:
                async with http.get(url + path, headers=headers) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
            except aiohttp.ClientError:
                codes[0] = codes.get(0, 0) + 1
    return codes


# ---------------------------------------------------------------- slowloris


async def slowloris_phase(http: aiohttp.ClientSession, url: str, n: int, wait: float) -> tuple[int, int, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conns = []
    for _ in range(n):
        try:
            r, w = await asyncio.open_connection(host, int(port))
        except OSError:
            break
        w.write(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns.append((r, w))
    start = time.monotonic()
    async with http.get(url + PODS, headers=KUBELET) as resp:
        await resp.read()
        normal_ms = (time.monotonic() - start) * 1000 if resp.status == 200 else -1.0
    await asyncio.sleep(wait)  # a benchmark waits for the deadline to pass, and reports what it did

    async def closed(r: asyncio.StreamReader) -> bool:
        try:
            async with asyncio.timeout(0.05):
                return await r.read() == b"" or True
        except TimeoutError:
            return False

    closed_n = sum([await closed(r) for r, _ in conns])
    for _, w in conns:
        w.close()
    return len(conns), closed_n, normal_ms


# ---------------------------------------------------------------- watch churn


async def churn_round(http: aiohttp.ClientSession, url: str, n: int) -> int:
    sem = asyncio.Semaphore(100)
    ok = 0

    async def one() -> None:
        nonlocal ok
        async with sem, http.get(url + PODS + "&watch=true&allowWatchBookmarks=true", headers=KUBELET) as r:
            if r.status == 200:
                ok += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return ok


async def main_phases(url: str, pid: int, opts: harness.Options, scale: float, rows: list[dict[str, object]],
                      stop_upstream) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(url + PODS, headers=KUBELET) as r:
            await r.read()
        rows.append(harness.row(SCENARIO, "proxy RSS at start", rss_mib(pid), "MiB"))
        codes = await generated_phase(url, int(4000 * scale), 1)
        rows.append(harness.row(SCENARIO, "generated requests, online", sum(codes.values()), "requests",
                                note=_codes(codes)))
        rows.append(harness.row(SCENARIO, "proxy RSS after generated online", rss_mib(pid), "MiB"))
        codes = await big_phase(http, url, int(300 * scale))
        rows.append(harness.row(SCENARIO, "1 MB selectors, 60 KB tokens and User-Agents", sum(codes.values()),
                                "requests", note=_codes(codes)))
        rows.append(harness.row(SCENARIO, "proxy RSS after big heads", rss_mib(pid), "MiB"))
        held, closed_n, normal_ms = await slowloris_phase(http, url, int(1500 * scale), 8.0 if opts.quick else 40.0)
        rows.append(harness.row(SCENARIO, "slowloris connections closed by the proxy", closed_n, "connections",
                                note=f"of {held} opened; the head deadline is 32 s"))
        rows.append(harness.row(SCENARIO, "normal LIST beside them", normal_ms, "ms"))
        rows.append(harness.row(SCENARIO, "proxy RSS after slowloris", rss_mib(pid), "MiB"))
        stop_upstream()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # offline once a request is answered from the cache
            async with http.get(url + PODS, headers=KUBELET) as r:
                await r.read()
                if r.headers.get("X-Edgeproxy-Source") == "cache":
                    break
            await asyncio.sleep(0.2)
        codes = await generated_phase(url, int(4000 * scale), 2)
        rows.append(harness.row(SCENARIO, "generated requests, offline", sum(codes.values()), "requests",
                                note=_codes(codes)))
        rows.append(harness.row(SCENARIO, "proxy RSS after generated offline", rss_mib(pid), "MiB"))


async def churn(url: str, pid: int, rounds: int, n: int, variant: str, rows: list[dict[str, object]]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        rows.append(harness.row(SCENARIO, "watch churn: RSS at start", rss_mib(pid), "MiB", variant=variant))
        for i in range(rounds):
            ok = await churn_round(http, url, n)
            rows.append(harness.row(SCENARIO, f"watch churn: RSS after round {i + 1}", rss_mib(pid), "MiB",
                                    variant=variant, note=f"{ok} watches opened and closed"))


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path(".")
    scale = 0.1 if opts.quick else 1.0
    rows: list[dict[str, object]] = []
    sim = harness.simulator(work, pods=200)
    server, pki = sim.__enter__()
    try:
        with edgeproxy(work, server, pki, "edgeproxy") as (url, pid):
            asyncio.run(main_phases(url, pid, opts, scale, rows, lambda: sim.__exit__(None, None, None)))
    finally:
        sim.__exit__(None, None, None)
    (work / "churn").mkdir(exist_ok=True)
    with harness.simulator(work / "churn") as (server, pki):  # the recorded cluster: 15 pods on edge-1, ~100 KB
        for variant, env in (("glibc default arenas", None), ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"})):
            name = "churn-" + ("arena2" if env else "default")
            with edgeproxy(work, server, pki, name, env) as (url, pid):
                asyncio.run(churn(url, pid, 3 if opts.quick else 9, int(1000 * scale), variant, rows))
    return rows


def _codes(codes: dict[int, int]) -> str:
    names = {0: "closed", -1: "refused", -2: "hung"}
    return ", ".join(f"{names.get(c, c)}: {n}" for c, n in sorted(codes.items()))


if __name__ == "__main__":
    harness.main(run)
