"""h1/lane.py through a running proxy in front of the simulator: plain GETs take the lane and answer as the ordinary
path does, answers keep request order whatever arrives meanwhile, a client that goes away cancels its upstream
request, the idle bound still holds, and an unreachable API server is answered locally."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edgeproxy import config, server
from edgeproxy.guard import limits
from edgeproxy.sim.simulator import Simulator

pytestmark = pytest.mark.timeout(60)

DEFAULT = "/api/v1/namespaces/default"
KUBE_SYSTEM = "/api/v1/namespaces/kube-system"


@contextlib.asynccontextmanager
async def proxy(tmp: Path, *, cache: bool = False, lim: limits.Limits | None = None,
                header_timeout: float = 10.0) -> AsyncIterator[tuple[Simulator, server.Service]]:
    async with Simulator(pki_dir=tmp / "pki") as sim:
        kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", user="node")
        cfg = config.Config(kubeconfig=str(kubeconfig), listen="127.0.0.1:0", ops_listen="127.0.0.1:0",
                            cache_dir=str(tmp / "cache"), probe_interval=30, plain_as_node=True, cache=cache,
                            upstream_header_timeout=header_timeout,
                            # no requests of the service's own (the cache-health report, the node's pool facts)
                            # beside the tests' requests at a hung API server
                            health_report_interval=0, service_topology=False)
        async with server.running(cfg, limits=lim) as svc:
            yield sim, svc


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: x", "Accept: application/json", *extra, "", ""]).encode()


async def response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    """One response off a kept-alive connection: status, headers in order, body (Content-Length or chunked)."""
    async with asyncio.timeout(10):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
        named = {n.lower(): v for n, v in headers}
        if "content-length" in named:
            body = await reader.readexactly(int(named["content-length"]))
        else:
            assert named.get("transfer-encoding") == "chunked"
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
    return int(lines[0].split(" ")[1]), headers, body


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


def name_of(body: bytes) -> str:
    return json.loads(body)["metadata"]["name"]


async def test_a_plain_get_takes_the_lane_and_answers_as_the_ordinary_path_does(tmp_path):
    async with proxy(tmp_path) as (_, svc):
        r, w = await connect(svc.url)
        w.write(get(DEFAULT))
        lane_status, lane_headers, lane_body = await response(r)
        assert svc.proxy.lane_served == 1
        w.write(get(DEFAULT, "Connection: close"))  # a connection to close takes aiohttp's path
        status, headers, body = await response(r)
        assert svc.proxy.lane_served == 1
        w.close()
        assert (lane_status, lane_body) == (status, body) == (200, lane_body)
        assert name_of(lane_body) == "default"
        varying = {"Date", "Audit-Id", "Connection"}
        assert [h for h in lane_headers if h[0] not in varying] == [h for h in headers if h[0] not in varying]


async def test_answers_keep_request_order_whatever_arrives_meanwhile(tmp_path):
    async with proxy(tmp_path) as (sim, svc):
        r, w = await connect(svc.url)
        # pipelined in one write: lane-worthy and not, answered one by one in order
        w.write(get(DEFAULT) + get(KUBE_SYSTEM, "X-Any: 1") + get(DEFAULT))
        names = [name_of((await response(r))[2]) for _ in range(3)]
        assert names == ["default", "kube-system", "default"]
        # a request arriving while a lane request waits for the API server waits for its answer
        sim.hang()
        served = svc.proxy.lane_served
        w.write(get(KUBE_SYSTEM))
        await until(lambda: svc.proxy.lane_served == served + 1)
        w.write(get(DEFAULT))
        sim.hang(False)
        assert [name_of((await response(r))[2]) for _ in range(2)] == ["kube-system", "default"]
        assert svc.proxy.lane_served == served + 2  # the waiting one took the lane too once its turn came
        w.close()


async def test_a_client_that_goes_away_cancels_its_upstream_request(tmp_path):
    async with proxy(tmp_path) as (sim, svc):
        pool = svc.upstream._pool
        await until(lambda: svc.upstream.reached and not pool._waiting)  # the first probe is answered
        sim.hang()
        before = set(pool._waiting)
        _, w = await connect(svc.url)
        w.write(get(DEFAULT))
        await until(lambda: svc.proxy.lane_served == 1 and bool(set(pool._waiting) - before))
        mine = set(pool._waiting) - before
        w.close()
        await until(lambda: not mine & pool._waiting, within=5)  # the upstream request was dropped, not left to hang
        sim.hang(False)


async def test_an_idle_connection_is_closed_after_lane_answers(tmp_path):
    lim = limits.Limits(idle_timeout=0.5)
    async with proxy(tmp_path, lim=lim) as (_, svc):
        r, w = await connect(svc.url)
        for _ in range(2):
            w.write(get(DEFAULT))
            assert (await response(r))[0] == 200
        assert svc.proxy.lane_served == 2
        async with asyncio.timeout(10):
            assert await r.read() == b""  # closed by the proxy's idle bound
        w.close()


async def test_a_lane_request_the_api_server_does_not_answer_is_answered_from_the_cache(tmp_path):
    async with proxy(tmp_path, cache=True, header_timeout=1.0) as (sim, svc):
        r, w = await connect(svc.url)
        w.write(get(DEFAULT))
        status, _, online = await response(r)
        assert status == 200
        recorder = svc.proxy.recorder

        async def recorded() -> bool:
            return await recorder.flushed() if hasattr(recorder, "flushed") else True

        sim.hang()  # accepted and never answered: the header deadline (1 s) sends it to the local side
        served = svc.proxy.lane_served
        for _ in range(100):
            w.write(get(DEFAULT))
            status, _, body = await response(r)
            if status == 200:
                break
            assert status == 503  # not recorded yet: the recorder writes off the client's path
        assert svc.proxy.lane_served > served
        assert (status, name_of(body)) == (200, name_of(online))
        w.write(get(DEFAULT))  # the connection goes on after a local answer
        assert (await response(r))[0] == 200
        sim.hang(False)
        w.close()
