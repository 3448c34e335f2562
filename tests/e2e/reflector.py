"""An informer-style client on the `kubernetes` Python client, reacting to each answer as client-go's reflector does.

Wire brief §3 (tools/cache/reflector.go): list (first `limit=500&resourceVersion=0`), then watch from the list's
resourceVersion with bookmarks; a stream that ends after >= 1 s or with an event → re-watch at once from the last
resourceVersion, no list; a stream that ends sooner with nothing → back off, relist; an ERROR event or HTTP 410 →
relist at the last resourceVersion, and if that list gets 410 or 504 TooLarge, relist with resourceVersion="";
connection refused / 429 when starting a watch → back off and re-watch, no relist. A relist replaces the store.
Runs in a thread (the client is synchronous); counts its lists and watches so tests can tell a relist storm.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes.client.rest import ApiException


class Reflector:
    def __init__(self, host: str, path: str, *, field_selector: str = "", label_selector: str = "",
                 user_agent: str = "informer/v1.0.0 (linux/amd64) kubernetes/0000000", timeout_seconds: int = 300,
                 backoff: float = 0.2) -> None:
        conf = kclient.Configuration()
        conf.host = host
        conf.retries = False
        self.api = kclient.ApiClient(conf)
        self.api.user_agent = user_agent
        self.path = path
        self.selectors = {k: v for k, v in (("fieldSelector", field_selector), ("labelSelector", label_selector))
                          if v}
        self.timeout_seconds = timeout_seconds
        self.backoff = backoff
        self.items: dict[str, dict[str, Any]] = {}
        self.last_rv = ""
        self.lists: list[str] = []  # the resourceVersion each list asked for
        self.list_errors: list[int] = []
        self.watches = 0
        self.watch_errors: list[int] = []
        self.events: list[tuple[str, str, str]] = []  # (type, namespace/name, resourceVersion)
        self.history: list[tuple[str, float, int, str]] = []  # each watch: (outcome, seconds, events, detail)
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"reflector {path}", daemon=True)

    # ---------------------------------------------------------------- control

    def start(self) -> Reflector:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for the thread: hang up the open watch (again, should one start meanwhile)."""
        self.stopping.set()
        for _ in range(20):
            resp = self._response
            sock = getattr(getattr(resp, "_connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(0.1)
            if not self._thread.is_alive():
                return
        # still waiting for a watch's headers: the thread is a daemon and ends with the test process

    def snapshot(self) -> dict[str, str]:
        """namespace/name -> resourceVersion of what the client holds."""
        with self._lock:
            return {k: v["metadata"].get("resourceVersion", "") for k, v in self.items.items()}

    # ---------------------------------------------------------------- the loop

    def _get(self, query: dict[str, str], stream: bool) -> Any:
        """The urllib3 response of a GET (body not read); ApiException for an error status."""
        method, url, headers, body, post = self.api.param_serialize(
            "GET", self.path, query_params=list({**self.selectors, **query}.items()),
            header_params={"Accept": "application/json", "User-Agent": self.api.user_agent}, auth_settings=[])
        resp = self.api.call_api(method, url, headers, body, post,
                                 _request_timeout=(5, 120) if stream else 60).response
        if resp.status >= 400:
            data = resp.data
            resp.release_conn()
            raise ApiException(status=resp.status, reason=resp.reason, body=data)
        return resp

    def _list(self, rv: str) -> bool:
        """One list; True when it replaced the store. Returns False on an error (recorded)."""
        self.lists.append(rv)
        query = {"resourceVersion": rv} if rv else {}
        if rv == "0":
            query["limit"] = "500"
        try:
            resp = self._get(query, stream=False)
            doc = json.loads(resp.data)
        except ApiException as e:
            self.list_errors.append(e.status)
            return False
        except (urllib3.exceptions.HTTPError, OSError):
            self.list_errors.append(0)
            return False
        with self._lock:
            self.items = {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o
                          for o in doc.get("items") or []}
            self.last_rv = doc["metadata"].get("resourceVersion", "")
        self.synced.set()
        return True

    def _relist(self) -> None:
        """After an ERROR/410: at the last resourceVersion, then (410 or 504 TooLarge) at ""."""
        if self._list(self.last_rv):
            return
        if self.list_errors and self.list_errors[-1] in (410, 504):
            self._list("")

    def _run(self) -> None:
        while not self.stopping.is_set() and not self._list("0"):
            time.sleep(self.backoff)
        while not self.stopping.is_set():
            started = time.monotonic()
            n = len(self.events)
            outcome, detail = self._watch()
            self.history.append((outcome, round(time.monotonic() - started, 3), len(self.events) - n, detail))
            if outcome == "rewatch":
                continue
            if outcome == "retry":
                time.sleep(self.backoff)
                continue
            if outcome == "relist":
                self._relist()
            elif outcome == "short":
                time.sleep(self.backoff)
                self._list(self.last_rv)

    def _watch(self) -> tuple[str, str]:
        """One watch: "rewatch" (ended normally), "retry" (could not start), "relist" (410/ERROR), "short"."""
        self.watches += 1
        started = time.monotonic()
        events = 0
        try:
            resp = self._get({"watch": "true", "resourceVersion": self.last_rv, "allowWatchBookmarks": "true",
                              "timeoutSeconds": str(self.timeout_seconds)}, stream=True)
        except ApiException as e:
            self.watch_errors.append(e.status)
            return ("relist" if e.status == 410 else ("retry" if e.status == 429 else "short")), f"HTTP {e.status}"
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.watch_errors.append(0)
            return "retry", repr(e)  # connection refused: back off and re-watch, no relist
        self._response = resp
        buf = b""
        try:
            for chunk in resp.stream(4096, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    events += 1
                    if self._apply(ev) == "error":
                        return "relist", "ERROR event"
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            detail = repr(e)  # the stream broke: like an EOF, judged by how long it lasted
        else:
            detail = "end"
        finally:
            self._response = None
            resp.close()  # a watch's connection is never reused (client-go's is not either once it ends)
        if time.monotonic() - started >= 1.0 or events:
            return "rewatch", detail
        return "short", detail

    def _apply(self, ev: dict[str, Any]) -> str:
        typ, obj = ev.get("type"), ev.get("object") or {}
        md = obj.get("metadata") or {}
        if typ == "ERROR":
            self.watch_errors.append(int(obj.get("code") or 500))
            return "error"
        key = f"{md.get('namespace', '')}/{md.get('name', '')}"
        rv = md.get("resourceVersion", "")
        with self._lock:
            if typ in ("ADDED", "MODIFIED"):
                self.items[key] = obj
            elif typ == "DELETED":
                self.items.pop(key, None)
            if rv:
                self.last_rv = rv
        self.events.append((typ, key, rv))
        return "ok"
