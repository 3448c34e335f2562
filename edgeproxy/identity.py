"""Whose cache a token-bearing request reads and fills: the one decision from bearer token to cache partition.

A request with a bearer token is cached under the token's own hash (kube.request's Client), so nobody reads what
another identity cached. ServiceAccount tokens rotate, though (kubelet refreshes projected tokens at 80 % of their
lifetime, offline edgeproxy mints its own): keyed by the token, kube-proxy and CoreDNS would find none of their views
after a rotation or a restart. So a ServiceAccount token the proxy has reason to believe is cached under its subject,
"sa:<namespace>:<name>", shared by every token of that account:

- online, the API server accepted it: a 2xx answer to a request carrying it (`answered()`); remembered by the token's
  sha256 (never the token) until the token expires, in a small 0600 file under the cache directory;
- the token book vouches for it: edgeproxy minted it (its signature verifies) or it relayed the API server's
  TokenRequest answer that issued it (tokens.TokenBook.vouch);
- its signature verifies against the cluster's service-account keys (`/openid/v1/jwks`, kept while online) and its
  issuer and audiences are those of tokens the API server accepted.

Anything else (an opaque token, an expired one, a JWT nothing vouches for, a forged one naming another account) keeps
its hash partition: it sees nothing another identity cached. A 401 for a remembered token forgets it.

Boundary: no HTTP and no cache store; proxy.py calls `resolve()` on every request and `answered()` on every upstream
status, record.py and local.py just use `info.client.key`. Neighbours: kube.jwt (decoding), kube.request (Client),
tokens (the book that vouches for minted and relayed tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeproxy import tasks
from edgeproxy.kube import jwt
from edgeproxy.kube import request as kube_request

log = logging.getLogger(__name__)

FILE = "identities.json"
MAX_REMEMBERED = 10_000  # accepted tokens kept: a few per ServiceAccount on a node
NO_EXPIRY_KEEP = 7 * 86400  # a token without `exp` (a legacy Secret token) is believed this long after its last 2xx
MAX_MEMO = 4096


class Identities:
    """The believed tokens and the decision. One per process; `resolve`/`answered` run on the event loop."""

    __slots__ = ("_accepted", "_clock", "_dirty", "_memo", "_path", "_saving", "vouch")

    def __init__(self, directory: Path | str | None, *, vouch: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = Path(directory) / FILE if directory is not None else None
        self.vouch = vouch  # tokens.TokenBook.vouch: minted by us, or issued by the API server through us
        self._clock = clock
        # token sha256 -> (subject, believed until, until is the token's exp): tokens the API server accepted
        self._accepted: dict[str, tuple[str, float, bool]] = self._load()
        self._memo: dict[str, tuple[str, float]] = {}  # token -> (identity, decided until)
        self._dirty = False
        self._saving: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._accepted)

    # ---------------------------------------------------------------- the decision

    def identity(self, token: str) -> str:
        """The cache identity of `token`: "sa:<ns>:<name>" when believed, else its hash."""
        now = self._clock()
        hit = self._memo.get(token)
        if hit is not None and now < hit[1]:
            return hit[0]
        ident, until = self._decide(token, now)
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[token] = (ident, until)
        return ident

    def _decide(self, token: str, now: float) -> tuple[str, float]:
        hashed = jwt.hash_identity(token)
        parsed = jwt.decode(token)
        sa = jwt.service_account(parsed) if parsed is not None else None
        if parsed is None or sa is None:
            return hashed, float("inf")
        if not parsed.fresh(now):
            return hashed, now + 60.0  # expired (or not yet valid): nobody's partition but its own
        until = parsed.expires if parsed.expires is not None else now + NO_EXPIRY_KEEP
        entry = self._accepted.get(jwt.token_digest(token))
        if entry is not None and entry[0] == parsed.subject and now < entry[1]:
            return jwt.sa_identity(*sa), min(until, entry[1])
        if self.vouch is not None and self.vouch(token):
            return jwt.sa_identity(*sa), until
        # Not believed now; a 2xx later (answered) or a new book entry may change that: decide again in a while.
        return hashed, now + 30.0

    def resolve(self, info: kube_request.RequestInfo, headers: Mapping[str, str]) -> kube_request.RequestInfo:
        """`info` with its client's identity decided (unchanged when the request carries no bearer token)."""
        if not info.client.identity:
            return info
        token = kube_request.bearer_token(headers)
        if not token:
            return info
        ident = self.identity(token)
        if ident == info.client.identity:
            return info
        return dataclasses.replace(info, client=kube_request.Client(info.client.component, ident))

    def answered(self, info: kube_request.RequestInfo, headers: Mapping[str, str],
                 status: int) -> kube_request.RequestInfo:
        """What the API server's answer to a request carrying a token says about the token, and `info` with the
        identity its answer is recorded under. A 2xx means the API server authenticated the token (a bad token
        is 401 even where anonymous requests are allowed), so its ServiceAccount subject is true: remembered, and
        this very answer is recorded under the subject. A 401 forgets it."""
        token = kube_request.bearer_token(headers) if info.client.identity else ""
        if not token:
            return info
        if 200 <= status < 300:
            self.accepted(token)
        elif status == 401:
            self.forget(token)
        return self.resolve(info, headers)

    def accepted(self, token: str) -> bool:
        """Remember that the API server accepted `token`; True when it is a ServiceAccount token (now believed)."""
        now = self._clock()
        digest = jwt.token_digest(token)
        known = self._accepted.get(digest)
        if known is not None and now < known[1] - (0 if known[2] else 86400):
            return True  # the common case, every answer to a steady client: nothing to decode or write
        parsed = jwt.decode(token)
        if parsed is None or jwt.service_account(parsed) is None or not parsed.fresh(now):
            return False
        exp = parsed.expires
        until = exp if exp is not None else now + NO_EXPIRY_KEEP
        if known is None or known[0] != parsed.subject or until - known[1] > 86400:
            self._accepted[digest] = (parsed.subject, until, exp is not None)
            self._changed()
        self._memo.pop(token, None)
        return True

    def forget(self, token: str) -> None:
        if self._accepted.pop(jwt.token_digest(token), None) is not None:
            self._changed()
        self._memo.pop(token, None)

    # ---------------------------------------------------------------- the file

    def _changed(self) -> None:
        self._dirty = True
        if self._path is None or (self._saving is not None and not self._saving.done()):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        self._saving = tasks.spawn(self._save_later(), name="identities-save")

    async def _save_later(self) -> None:
        while self._dirty:
            self._dirty = False
            doc = self._doc()
            await asyncio.to_thread(self._write, doc)

    def save(self) -> None:
        """Write the remembered tokens now (close() and tests; the event loop saves in a thread)."""
        if self._path is not None:
            self._dirty = False
            self._write(self._doc())

    def close(self) -> None:
        if self._dirty:
            self.save()

    def _doc(self) -> bytes:
        now = self._clock()
        live = sorted(((d, e) for d, e in self._accepted.items() if e[1] > now), key=lambda de: -de[1][1])
        if len(live) < len(self._accepted) or len(live) > MAX_REMEMBERED:
            live = live[:MAX_REMEMBERED]  # the longest-lived kept
            self._accepted = dict(live)
        return json.dumps({"version": 1, "accepted": {d: list(e) for d, e in live}}).encode()

    def _write(self, data: bytes) -> None:
        assert self._path is not None
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".{threading.get_ident()}.tmp")  # close() may write while a save thread does
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)

    def _load(self) -> dict[str, tuple[str, float, bool]]:
        if self._path is None:
            return {}
        try:
            doc: Any = json.loads(self._path.read_bytes())
            accepted = doc["accepted"]
            now = self._clock()
            return {str(d): (str(v[0]), float(v[1]), bool(v[2])) for d, v in accepted.items() if float(v[1]) > now}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            log.warning("%s unreadable (%s): no token is believed until the API server accepts it again",
                        self._path, e)
            return {}
