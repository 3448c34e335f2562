"""Test support for record/local: a fresh cache, and recorded API server answers fed through the Recorder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from multidict import CIMultiDict

from cache import store, writer
from edgeproxy.autonomy import local, record
from edgeproxy.kube import request

FIXTURES = Path(__file__).parent / "fixtures"
KUBELET = {"User-Agent": "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4",
           "Accept": "application/vnd.kubernetes.protobuf, */*"}
KUBECTL_JSON = {"User-Agent": "kubectl/v1.32.0 (linux/amd64) kubernetes/cd13ec4", "Accept": "application/json"}


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.body").read_bytes()


def headers(name: str) -> CIMultiDict[str]:
    """The response headers recorded with a fixture (curl -D), as aiohttp gives them to the recorder."""
    out: CIMultiDict[str] = CIMultiDict()
    for line in (FIXTURES / f"{name}.headers").read_text().splitlines()[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            out.add(k.strip(), v.strip())
    return out


def status_of(name: str) -> int:
    return int((FIXTURES / f"{name}.headers").read_text().split()[1])


def info(url: str, hdrs: dict[str, str] | None = None, method: str = "GET") -> request.RequestInfo:
    path, _, query = url.partition("?")
    return request.parse(method, path, query, hdrs if hdrs is not None else KUBELET)


@dataclass
class Cache:
    store: store.Store
    writer: writer.Writer
    recorder: record.Recorder
    local: local.Local

    def feed(self, req: request.RequestInfo, fixture: str, *, chunk: int = 4096, ok: bool = True,
             data: bytes | None = None) -> None:
        """Play a recorded answer through the recorder as the proxy would (in chunks), then wait until stored."""
        data = body(fixture) if data is None else data
        sink = self.recorder.begin(req, status_of(fixture), headers(fixture))
        assert sink is not None, f"{fixture} was not recorded"
        for i in range(0, len(data), chunk):
            sink.feed(data[i : i + chunk])
        sink.done(ok)
        self.sync()

    def sync(self) -> None:
        self.recorder.flush(10)
        assert self.writer.flush_sync(10)


@contextlib.contextmanager
def cache(path: Path, **local_kw) -> Iterator[Cache]:
    st = store.Store.open(str(path), map_size=256 << 20, durable=False)
    w = writer.Writer(st).start()
    rec = record.Recorder(w, tokens=local_kw.get("tokens"))
    loc = local.Local(st, w, **local_kw)
    try:
        yield Cache(st, w, rec, loc)
    finally:
        rec.close()
        w.close()
        st.close()
