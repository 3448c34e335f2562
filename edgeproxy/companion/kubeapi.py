"""A small JSON client for the API server, on aiohttp: get, list, watch, create, update, patch.

The companion's only way to the cluster. Credentials come from a kubeconfig (edgeproxy.upstream reads it) or, in a
pod, from the mounted ServiceAccount (the token file is re-read when kubelet rotates it). Errors are ApiError with
the Status's code and reason; a connection that fails is status 0. No caching, no retries: the callers (informer,
controller, elector) decide. Neighbours: upstream (kubeconfig and TLS context), informer, controller, elector, certs.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from edgeproxy import upstream
from edgeproxy.companion import errors

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def in_cluster(sa_dir: Path = SA_DIR) -> upstream.Credentials:
    """Credentials of the pod's ServiceAccount (as client-go's rest.InClusterConfig)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise errors.CompanionError("not in a pod (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig")
    if ":" in host:
        host = f"[{host}]"
    return upstream.Credentials(servers=(f"https://{host}:{port}",), ca_file=str(sa_dir / "ca.crt"),
                                token_file=str(sa_dir / "token"), source="in-cluster")


class Kube:
    """One API server connection pool with one identity."""

    __slots__ = ("_creds", "_session", "_ssl", "_token", "_token_mtime", "server")

    def __init__(self, creds: upstream.Credentials) -> None:
        self._creds = creds
        self.server = creds.servers[0]
        self._ssl: ssl.SSLContext | None = upstream.ssl_context(creds) if self.server.startswith("https") else None
        self._session: aiohttp.ClientSession | None = None
        self._token = creds.token
        self._token_mtime = 0.0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "edgeproxy-companion"}
        if content_type:
            headers["Content-Type"] = content_type
        path = self._creds.token_file
        if path:
            try:
                mtime = os.stat(path).st_mtime
                if mtime != self._token_mtime:
                    self._token, self._token_mtime = Path(path).read_text().strip(), mtime
            except OSError:
                pass  # keep the last token; the API server says 401 if it expired
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=16))
        return self._session

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json", timeout: float = 30.0) -> Any:
        """The decoded JSON answer of a 2xx; ApiError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        try:
            async with self._get_session().request(
                    method, self.server + path, params=params, data=data,
                    headers=self._headers(content_type if data is not None else None),
                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise errors.ApiError(0, "Unreachable", f"{method} {path}: {e or type(e).__name__}") from e
        return _decode(status, raw, f"{method} {path}")

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def update(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Any:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def watch(self, path: str, params: Mapping[str, str], timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (`watch=1` added), until the server ends it or `timeout` seconds pass
        without a byte. ApiError when it cannot start."""
        query = dict(params)
        query["watch"] = "1"
        try:
            async with self._get_session().get(
                    self.server + path, params=query, headers=self._headers(None),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout)) as resp:
                if resp.status != 200:
                    _decode(resp.status, await resp.read(), f"WATCH {path}")
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise errors.ApiError(0, "Unreachable", f"WATCH {path}: {e or type(e).__name__}") from e


def _decode(status: int, raw: bytes, what: str) -> Any:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = None
    if 200 <= status < 300 and doc is not None:
        return doc
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        raise errors.ApiError(status, str(doc.get("reason") or ""), str(doc.get("message") or ""))
    raise errors.ApiError(status, "", f"{what}: {raw[:200]!r}")
