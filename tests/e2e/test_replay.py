"""Replay of real client starts against a proxy restarted with the upstream down.

The recorded request sequences of a kubelet and a kube-proxy start (tests/fixtures/traces/*.log: every request, in
order, with its Accept header, User-Agent and query; kubemark's hollow nodes, v1.32) and a CoreDNS start (lists and
watches of namespaces, services and endpointslices with its own token, as traces/SUMMARY.md describes it) are played
once through edgeproxy with the simulator up (filling the cache), then again after the proxy restarted with the
simulator down. Offline: every read answered (200 where it was 200 online; never 404), every list with exactly the
items it had online (no empty, no partial list), every watch opened with its bookmark (or, for a watch-list, the
replayed objects and the initial-events-end bookmark), TokenRequests answered, writes answered as documented.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edgeproxy.kube import jsonwire, protobuf, schema, watch

pytest.importorskip("edgeproxy.server")  # the proxy's listener; until it lands these tests wait

from tests.e2e import edge as edge_mod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
PB = "application/vnd.kubernetes.protobuf"
_LINE = re.compile(r'^(\S+) (\S+) "(\w+)" "([^"]*)" (\d+) "([^"]*)" "([^"]*)" "([^"]*)" (\d+) (\S+) "([^"]*)"')
COREDNS_TOKEN = "coredns-sa-token"
COREDNS_UA = "coredns/v0.0.0 (linux/amd64) kubernetes/4c2b8a4"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: str
    accept: str
    user_agent: str
    request_content_type: str = ""
    token: str = ""

    @property
    def params(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.query, keep_blank_values=True))

    @property
    def watch(self) -> bool:
        return self.params.get("watch") == "true"

    @property
    def query_key(self) -> tuple:
        """The list a watch continues: its path and selectors."""
        p = self.params
        return self.user_agent, self.path, p.get("labelSelector", ""), p.get("fieldSelector", "")


def load_trace(name: str) -> list[Call]:
    """The requests of a trace in the order they were sent (nginx logs them when they end: sort by start)."""
    rows = []
    for line in (TRACES / name).read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        end, method, uri, accept, ua, rtime, req_ct = (float(m[2]), m[3], m[4], m[6], m[7], float(m[10]), m[11])
        path, _, query = uri.partition("?")
        rows.append((end - rtime, Call(method, path, query, accept, ua, req_ct)))
    rows.sort(key=lambda r: r[0])
    return [c for _, c in rows]


def coredns_start() -> list[Call]:
    """CoreDNS's kubernetes plugin starting: LIST then WATCH namespaces, services, endpointslices (SUMMARY.md)."""
    accept = f"{PB},application/json"
    calls = []
    for path in ("/api/v1/namespaces", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"):
        calls.append(Call("GET", path, "limit=500&resourceVersion=0", accept, COREDNS_UA, token=COREDNS_TOKEN))
    for path in ("/api/v1/namespaces", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"):
        calls.append(Call("GET", path, "allowWatchBookmarks=true&resourceVersion=0&timeout=7m1s&timeoutSeconds=421"
                          "&watch=true", accept, COREDNS_UA, token=COREDNS_TOKEN))
    return calls


# ---------------------------------------------------------------- request bodies (the traces keep none)


def _name(path: str) -> str:
    return path.rstrip("/").split("/")[-1]


# Pods of edge-1 in the recorded cluster the simulator starts with: kubelet asks tokens bound to its own pods.
EDGE1_PODS = [p["metadata"]["name"] for p in json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "pods-edge1.list.json.body").read_bytes())["items"]]


def _token_request(pod: str, uid: str) -> bytes:
    ref = b"".join(protobuf.field_bytes(n, s.encode()) for n, s in ((1, "Pod"), (2, "v1"), (3, pod), (4, uid)))
    spec = protobuf.field_bytes(3, ref) + protobuf.field_varint(4, 3607)
    return protobuf.wrap("authentication.k8s.io/v1", "TokenRequest",
                         protobuf.field_bytes(1, b"") + protobuf.field_bytes(2, spec) + protobuf.field_bytes(3, b""))


def body_for(call: Call, sim, n: int) -> tuple[bytes, str]:
    """A body of the kind the recorded client sent for this write (protobuf where it sent protobuf)."""
    p = call.path
    if call.method == "PUT" and "/leases/" in p:
        lease = sim.get("leases", _name(p), "kube-node-lease") or {}
        lease.setdefault("metadata", {}).update(name=_name(p), namespace="kube-node-lease")
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": _name(p), "leaseDurationSeconds": 40,
                         "renewTime": f"2026-11-24T16:{n % 60:02d}:00.000000Z"}
        return protobuf.wrap("coordination.k8s.io/v1", "Lease", schema.to_protobuf(lease, "Lease")), PB
    if call.method == "POST" and p == "/api/v1/nodes":
        return sim.object_bytes("nodes", "edge-1"), PB
    if call.method == "POST" and p.endswith("/token"):
        pod = EDGE1_PODS[n % len(EDGE1_PODS)]
        return _token_request(pod, (sim.get("pods", pod, "edge") or {})["metadata"]["uid"]), PB
    if call.method == "POST" and p.endswith("/events"):
        ns = p.split("/")[4]
        if "events.k8s.io" in p:
            ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": f"kp.{n}", "namespace": ns},
                  "reason": "StartKubeProxy", "action": "StartKubeProxy", "reportingController": "kube-proxy",
                  "reportingInstance": "kube-proxy-edge-1", "eventTime": "2026-11-24T16:00:00.000000Z"}
            return json.dumps(ev).encode(), "application/json"
        ev = {"metadata": {"name": f"edge-1.{n:016x}", "namespace": ns}, "reason": "Started", "message": "m",
              "involvedObject": {"kind": "Node", "name": "edge-1"}, "count": 1, "type": "Normal"}
        return protobuf.wrap("v1", "Event", schema.to_protobuf(ev, "Event")), PB
    if call.method == "PATCH" and p.endswith("/nodes/edge-1/status"):
        patch = {"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                            "conditions": [{"type": "Ready", "lastHeartbeatTime": "2026-11-24T16:00:00Z"}]}}
        return json.dumps(patch).encode(), "application/strategic-merge-patch+json"
    if call.method == "PATCH" and "/events/" in p:
        return b'{"count":2,"lastTimestamp":"2026-11-24T16:00:00Z"}', "application/strategic-merge-patch+json"
    if call.method == "PATCH":
        return b'{"status":{"conditions":[{"type":"Ready","status":"True"}]}}', "application/strategic-merge-patch+json"
    return b"", call.request_content_type or PB


def expected_offline(call: Call) -> int | None:
    """What a write gets offline (DESIGN §5); None for reads."""
    p = call.path
    if call.method == "GET":
        return None
    if call.method == "PUT" and "/kube-node-lease/leases/edge-1" in p:
        return 200
    if call.method == "PATCH" and p == "/api/v1/nodes/edge-1/status":
        return 200
    if call.method == "POST" and p == "/api/v1/nodes":
        return 409
    if p.endswith("/events"):
        return 201
    if "/events/" in p:
        return 200
    if p.endswith("/token"):
        return 201
    return 503


# ---------------------------------------------------------------- playing


@dataclass
class Answer:
    status: int
    names: list[str] | None  # a list's item names
    resource_version: str
    frames: list[str]  # a watch's first event types
    source: str


def _items(data: bytes, ct: str) -> tuple[list[str], str]:
    if ct.startswith(PB):
        u = protobuf.unwrap(data)
        parts = protobuf.parse_list(u.raw)
        metas = [protobuf.object_meta(i) for i in parts.items]
    else:
        parts = jsonwire.parse_list(data)
        metas = [jsonwire.object_meta(i) for i in parts.items]
    return [f"{m.namespace}/{m.name}" for m in metas], parts.resource_version


async def play(session: aiohttp.ClientSession, url: str, calls: list[Call], sim) -> list[Answer]:
    last_rv: dict[tuple, str] = {}
    out = []
    for n, call in enumerate(calls):
        headers = {"Accept": call.accept, "User-Agent": call.user_agent}
        if call.token:
            headers["Authorization"] = f"Bearer {call.token}"
        query = call.params
        if call.watch:
            if query.get("sendInitialEvents") != "true":
                query["resourceVersion"] = last_rv.get(call.query_key, query.get("resourceVersion", "0"))
            query["timeoutSeconds"] = "30"
            query.pop("timeout", None)
        data, ct = (b"", "") if call.method in ("GET",) else body_for(call, sim, n)
        if ct:
            headers["Content-Type"] = ct
        async with asyncio.timeout(20), session.request(call.method, url + call.path, params=query, data=data or None,
                                                        headers=headers) as r:
            source = r.headers.get("X-Edgeproxy-Source", "upstream")
            if call.watch:
                out.append(Answer(r.status, None, "", await _first_events(r, query), source))
                continue
            body = await r.read()
            names, rv = None, ""
            if call.method == "GET" and r.status == 200 and _is_list(call):
                names, rv = _items(body, r.headers.get("Content-Type", ""))
                last_rv[call.query_key] = rv
            out.append(Answer(r.status, names, rv, [], source))
    return out


def _is_list(call: Call) -> bool:
    parts = call.path.strip("/").split("/")
    core = parts[2:] if parts[0] == "api" else parts[3:]
    if core[:1] == ["namespaces"] and len(core) >= 3:
        core = core[2:]
    return len(core) == 1


async def _first_events(r: aiohttp.ClientResponse, query: dict[str, str]) -> list[str]:
    """Read a watch until its first BOOKMARK (the initial-events-end one for a watch-list), then hang up."""
    if r.status != 200:
        return []
    ct = r.headers.get("Content-Type", "")
    splitter = watch.splitter_for(ct)
    types: list[str] = []
    async with asyncio.timeout(10):
        while True:
            chunk = await r.content.readany()
            if not chunk:
                return types
            for frame in splitter.feed(chunk):
                if ct.startswith(PB):
                    ev = protobuf.decode_event(frame)
                    typ, meta = ev.type, (protobuf.object_meta(ev.raw) if ev.type == "BOOKMARK" else None)
                else:
                    jev = jsonwire.decode_event(frame)
                    typ, meta = jev.type, (jsonwire.object_meta(jev.obj) if jev.type == "BOOKMARK" else None)
                types.append(typ)
                if typ == "ERROR":
                    return types
                if typ == "BOOKMARK" and (query.get("sendInitialEvents") != "true"
                                          or meta.annotations.get("k8s.io/initial-events-end") == "true"):
                    return types


@pytest.mark.parametrize("trace", ["kubelet-startup.log", "kubelet-watchlist.log", "kube-proxy-startup.log",
                                   "coredns"])
async def test_replay_with_the_upstream_down(tmp_path, trace):
    calls = coredns_start() if trace == "coredns" else load_trace(trace)
    sim_tokens = {COREDNS_TOKEN: ("system:serviceaccount:kube-system:coredns", ("system:serviceaccounts",))}
    async with edge_mod.edge(tmp_path, bookmark_interval=0.1, tokens=sim_tokens) as e, \
            aiohttp.ClientSession() as session:
        online = await play(session, e.url, calls, e.sim)
        await e.settle()
        await e.sim.down()
        await e.stop_proxy()
        await e.start_proxy()  # restarted with the upstream down
        offline = await play(session, e.url, calls, e.sim)

    problems = []
    for call, on, off in zip(calls, online, offline, strict=True):
        what = f"{call.method} {call.path}?{call.query} [{call.user_agent}]"
        want = expected_offline(call)
        if want is not None:
            if off.status != want:
                problems.append(f"{what}: {off.status}, documented {want}")
            continue
        if off.status == 404:
            problems.append(f"{what}: 404 offline")
        elif on.status == 200 and off.status != 200:
            problems.append(f"{what}: {off.status} offline, 200 online")
        elif call.watch and off.status == 200 and (not off.frames or off.frames[-1] != "BOOKMARK"):
            problems.append(f"{what}: watch opened with {off.frames}")
        elif on.names is not None and off.names != on.names:
            problems.append(f"{what}: {len(off.names or [])} items offline, {len(on.names)} online")
    assert not problems, "\n".join(problems)
    assert sum(1 for a in offline if a.source == "cache") == len(calls)  # all answered by the cache
