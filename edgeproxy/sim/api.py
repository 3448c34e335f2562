"""The simulator's HTTP side: an aiohttp application answering as kube-apiserver does in tests/fixtures.

Routes every request: non-resource paths (/version, /api, /apis, discovery, health), then resource requests
(get, list, watch, create, update, patch, delete) on sim.store, encoded as JSON or protobuf per Accept, with the
status codes, Status bodies, headers and stream framing the recordings show. Authentication is by client
certificate (CN/O) or bearer token; a Node-authorizer subset applies to system:node:<name>. Fault switches
(hang, slow, cut watches) are consulted here; down/up and the control endpoint live in sim.simulator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from edgeproxy.kube import errors as kube_errors
from edgeproxy.kube import protobuf, schema, selectors
from edgeproxy.sim import errors, patch, resources, seed, store, table, writes
from edgeproxy.sim.store import Entry

if TYPE_CHECKING:
    from edgeproxy.sim.simulator import Simulator

log = logging.getLogger(__name__)

JSON = "application/json"
PROTOBUF = protobuf.CONTENT_TYPE
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_FLOWSCHEMA = "e2037fe4-1723-4f11-831f-6d766076c971"
_PRIORITYLEVEL = "1a6ae620-490d-4652-9b02-9ed9bdf832f5"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
LIST_BLUEPRINT = "kubernetes.io/initial-events-list-blueprint"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    groups: tuple[str, ...]

    @property
    def node(self) -> str | None:
        if self.name.startswith("system:node:") and "system:nodes" in self.groups:
            return self.name.removeprefix("system:node:")
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """A resource request's path, parsed."""

    resource: resources.Resource
    namespace: str
    name: str
    subresource: str


# --- negotiation and encoding ----------------------------------------------------------------------------------


TABLE = "Table"
PARTIAL = "PartialObjectMetadata"
SHAPE = web.RequestKey("shape", str)  # the negotiated shape of the answer: "", TABLE or PARTIAL


def negotiate(accept: str) -> tuple[str, str] | None:
    """(encoding "json"|"protobuf", shape ""|"Table"|"PartialObjectMetadata") of the first media type in an Accept
    header the simulator can produce; None if none. Table is JSON only (it has no protobuf form)."""
    if not accept.strip():
        return "json", ""
    for part in accept.split(","):
        mt, *raw_params = (x.strip() for x in part.split(";"))
        params = dict(p.replace(" ", "").split("=", 1) for p in raw_params if "=" in p)
        mt = mt.lower()
        encoding = "protobuf" if mt == PROTOBUF else "json" if mt in (JSON, "application/*", "*/*") else None
        if encoding is None:
            continue
        as_ = params.get("as", "")
        if not as_:
            return encoding, ""
        if params.get("g") != "meta.k8s.io":
            continue
        if as_ == TABLE and encoding == "json" and params.get("v") in ("v1", "v1beta1"):
            return "json", TABLE
        if as_ in (PARTIAL, PARTIAL + "List") and params.get("v") == "v1":
            return encoding, PARTIAL
    return None


def _pretty(request: web.Request) -> bool:
    """kube-apiserver pretty-prints JSON for ?pretty=true and for curl/wget (handlers/negotiation isPrettyPrint)."""
    p = request.query.get("pretty")
    if p is not None:
        return p in ("true", "1")
    ua = request.headers.get("User-Agent", "")
    return ua.startswith("curl") or ua.startswith("Wget")


def _dumps(obj: Any, pretty: bool) -> bytes:
    if pretty:  # json.MarshalIndent(obj, "", "  "), no trailing newline
        s = json.dumps(obj, ensure_ascii=False, indent=2)
        for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
            s = s.replace(ch, esc)
        return s.encode()
    return schema.go_json_dumps(obj).encode() + b"\n"  # json.Encoder.Encode


def _headers(content_type: str) -> dict[str, str]:
    return {
        "Audit-Id": str(uuid.uuid4()),
        "Cache-Control": "no-cache, private",
        "Content-Type": content_type,
        "X-Kubernetes-Pf-Flowschema-Uid": _FLOWSCHEMA,
        "X-Kubernetes-Pf-Prioritylevel-Uid": _PRIORITYLEVEL,
    }


def status_response(err: errors.ApiError, encoding: str | None, pretty: bool) -> web.Response:
    if encoding == "protobuf":
        body = protobuf.wrap("v1", "Status", schema.to_protobuf(err.status, "Status"))
        ct = PROTOBUF
    else:
        body = _dumps(err.status, pretty)
        ct = JSON
    headers = _headers(ct)
    if err.code == 403:
        headers["X-Content-Type-Options"] = "nosniff"
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    return web.Response(status=err.code, body=body, headers=headers)


def _json_body(request_body: bytes, content_type: str, kind: str | None) -> Any:
    ct = content_type.split(";")[0].strip().lower()
    if ct == PROTOBUF:
        try:
            u = protobuf.unwrap(request_body)
            return schema.to_json(u.kind, u.raw, api_version=u.api_version)
        except kube_errors.KubeError as e:
            raise errors.bad_request(f"unable to decode the protobuf body: {e}") from e
    try:
        return json.loads(request_body or b"null")
    except ValueError as e:
        if ct == patch.APPLY_PATCH:
            try:
                import yaml  # PyYAML comes with the kubernetes client; only server-side apply needs it

                return yaml.safe_load(request_body)
            except Exception as ye:
                raise errors.bad_request(f"unable to decode the body: {ye}") from ye
        raise errors.bad_request(f"unable to decode the body: {e}") from e


def _partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": PARTIAL, "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


# --- continue tokens -----------------------------------------------------------------------------------------


def encode_continue(rv: int, start: str) -> str:
    """apiserver storage EncodeContinue: base64url(JSON{v, rv, start}) without padding."""
    raw = schema.go_json_dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        if doc.get("v") != "meta.k8s.io/v1":
            raise ValueError("unknown version")
        return int(doc["rv"]), str(doc["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise errors.bad_request(f"invalid continue token: {e}") from e


_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list."
)


# --- the application -----------------------------------------------------------------------------------------


class Api:
    __slots__ = ("_signing_key", "sim", "watches")

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.watches: set[Watch] = set()
        self._signing_key: rsa.RSAPrivateKey | None = None

    @property
    def store(self) -> store.Store:
        return self.sim.store

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._faults])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith("/__sim/"):
            return await handler(request)
        faults = self.sim.faults
        if faults.hang:
            await faults.unhung.wait()
        if faults.slow > 0:
            await asyncio.sleep(faults.slow)
        return await handler(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rep = negotiate(request.headers.get("Accept", ""))
        encoding = rep[0] if rep else None
        request[SHAPE] = rep[1] if rep else ""
        pretty = _pretty(request)
        try:
            return await self._route(request, encoding, pretty)
        except errors.ApiError as e:
            return status_response(e, encoding, pretty)
        except kube_errors.KubeError as e:
            return status_response(errors.ApiError(e.status, e.reason, str(e)), encoding, pretty)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a body of the wrong shape
            log.debug("request failed: %s %s", request.method, request.path_qs, exc_info=True)
            err = errors.ApiError(
                500,
                "InternalError",
                f"an error on the server ({e!r}) has prevented the request from succeeding",
                {"causes": [{"message": repr(e)}]},
            )
            return status_response(err, encoding, pretty)

    async def _route(self, request: web.Request, encoding: str | None, pretty: bool) -> web.StreamResponse:
        path = request.path
        if path.startswith("/__sim/"):
            return await self.sim.control(request)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(
                text="ok", headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
            )
        if path == "/version":
            return self._fixture_body("version.json", JSON)
        user = self._authenticate(request)
        if path == "/openid/v1/jwks":
            return self._jwks(request.headers.get("Accept", ""))
        if path.startswith("/openapi/v3"):
            gv = path.removeprefix("/openapi/v3").strip("/")
            doc = (
                resources.openapi_v3_index()
                if not gv
                else resources.openapi_v3(gv.split("/", 1)[1] if "/" in gv else gv)
            )
            if doc is None:
                raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.Response(body=_dumps(doc, False), headers=_headers(JSON))
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            raise errors.ApiError(
                404,
                "NotFound",
                "the server could not find the requested resource",
                {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]},
            )
        if parts[0] == "api":
            group, rest = "", parts[1:]
        else:
            group, rest = (parts[1] if len(parts) > 1 else None), parts[2:]
        if group is None or len(rest) < 1 or (parts[0] == "api" and len(rest) < 2 and rest == []):
            return self._discovery(request, parts, encoding)
        version = rest[0]
        rest = rest[1:]
        if not rest:
            return self._discovery(request, parts, encoding)
        if encoding is None:
            raise errors.not_acceptable(request.headers.get("Accept", ""))
        target = self._target(group, version, rest)
        verb = self._verb(request.method, target, request.query)
        self._authorize(user, verb, target, request.query)
        if verb == "watch":
            return await self._watch(request, target, encoding)
        if verb == "list":
            return await self._list(request, target, encoding, pretty)
        if verb == "get":
            entry = self._get_entry(target)
            return self._object_response(
                target.resource,
                entry,
                encoding,
                pretty,
                shape=request[SHAPE],
                include=request.query.get("includeObject", ""),
            )
        body = await request.read()
        if verb == "create" and target.subresource == "token":
            return self._token(target, _json_body(body, request.content_type, "TokenRequest"), encoding, pretty)
        if verb == "create":
            obj = _json_body(body, request.content_type, target.resource.kind)
            entry = writes.create(self.store, target.resource, target.namespace, obj)
            return self._object_response(target.resource, entry, encoding, pretty, status=201)
        if verb == "update":
            obj = _json_body(body, request.content_type, target.resource.kind)
            entry = writes.update(self.store, target.resource, target.namespace, target.name, obj, target.subresource)
            return self._object_response(target.resource, entry, encoding, pretty)
        if verb == "patch":
            obj = _json_body(body, request.content_type, None)
            entry = self._patch(target, request.content_type, obj)
            return self._object_response(target.resource, entry, encoding, pretty)
        if verb == "delete":
            return self._delete(request, target, body, encoding, pretty)
        raise errors.ApiError(
            405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({verb})"
        )

    def _patch(self, target: Target, content_type: str, obj: Any) -> Entry:
        ct = content_type.split(";")[0].strip().lower()
        key = (target.namespace if target.resource.namespaced else "", target.name)
        if ct == patch.APPLY_PATCH and self.store.get(target.resource.key, key) is None:
            if isinstance(obj, dict):
                obj.setdefault("metadata", {}).setdefault("name", target.name)
            return writes.create(self.store, target.resource, target.namespace, obj)
        return writes.patch_object(
            self.store, target.resource, target.namespace, target.name, content_type, obj, target.subresource
        )

    # --- parsing ---------------------------------------------------------------------------------------------

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in resources.BY_PATH:
            namespace = rest[1]
            rest = rest[2:]
        res = resources.BY_PATH.get((group, version, rest[0]))
        if res is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3 or (sub and sub not in res.subresources):
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if res.namespaced is False and namespace:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(res, namespace, name, sub)

    @staticmethod
    def _verb(method: str, target: Target, query: Any) -> str:
        watch = query.get("watch", "") in ("true", "1")
        if method in ("GET", "HEAD"):
            if target.name:
                return "get"
            return "watch" if watch else "list"
        if method == "POST" and (not target.name or target.subresource):
            return "create"
        if method == "PUT" and target.name:
            return "update"
        if method == "PATCH" and target.name:
            return "patch"
        if method == "DELETE":
            return "delete" if target.name else "deletecollection"
        return method.lower()

    # --- auth ------------------------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> User:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            who = self.sim.tokens.get(auth[7:].strip())
            if who is None:
                raise errors.unauthorized()
            return User(who[0], tuple(who[1]))
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if cert:
            cn, orgs = "", []
            for rdn in cert.get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        cn = v
                    elif k == "organizationName":
                        orgs.append(v)
            return User(cn, tuple(orgs))
        if self.sim.anonymous:
            return User("system:admin", ("system:masters",))
        raise errors.unauthorized()

    def _authorize(self, user: User, verb: str, target: Target, query: Any) -> None:
        node = user.node
        if node is None or "system:masters" in user.groups:
            return
        res = target.resource
        if res.name == "pods" and verb in ("list", "watch"):
            fs = selectors.parse_fields(query.get("fieldSelector", ""))
            if fs.exact("spec.nodeName") != node:
                raise errors.forbidden(
                    res, user.name, verb, target.namespace, "can only list/watch pods with spec.nodeName field selector"
                )
        if res.name in ("secrets", "configmaps") and verb in ("list", "watch"):
            fs = selectors.parse_fields(query.get("fieldSelector", ""))
            if fs.exact("metadata.name") is None:
                raise errors.forbidden(res, user.name, verb, target.namespace, "No Object name found")

    # --- reads -----------------------------------------------------------------------------------------------

    def _fixture_body(self, name: str, content_type: str, status: int = 200) -> web.Response:
        return web.Response(
            status=status, body=(seed.fixture_dir() / f"{name}.body").read_bytes(), headers=_headers(content_type)
        )

    def _discovery(self, request: web.Request, parts: list[str], encoding: str | None) -> web.Response:
        accept = request.headers.get("Accept", "")
        aggregated = "as=APIGroupDiscoveryList" in accept.replace(" ", "")
        if parts == ["api"]:
            if aggregated:
                r = web.Response(body=_dumps(resources.aggregated_core(), False), headers=_headers(AGGREGATED))
                r.headers["Vary"] = "Accept"
                return r
            if encoding == "protobuf":
                return self._fixture_body("api.pb", PROTOBUF)
            return self._fixture_body("api.json", JSON)
        if parts == ["apis"]:
            if aggregated:
                r = self._fixture_body("apis.aggregated-discovery-v2.json", AGGREGATED)
                r.headers["Vary"] = "Accept"
                return r
            return self._fixture_body("apis.json", JSON)
        gv = "/".join(parts[1:]) if parts[0] == "apis" else parts[1] if len(parts) > 1 else ""
        doc = resources.api_resource_list(gv)
        if doc is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.Response(body=_dumps(doc, _pretty(request)), headers=_headers(JSON))

    def _get_entry(self, target: Target) -> Entry:
        key = (target.namespace if target.resource.namespaced else "", target.name)
        entry = self.store.get(target.resource.key, key)
        if entry is None:
            raise errors.not_found(target.resource, target.name)
        return entry

    def _object_response(
        self,
        res: resources.Resource,
        entry: Entry,
        encoding: str,
        pretty: bool,
        status: int = 200,
        shape: str = "",
        include: str = "",
    ) -> web.Response:
        if shape == TABLE:
            doc = table.table(
                res.name, [entry.obj], {"resourceVersion": str(entry.rv)}, include, res.api_version, res.kind
            )
            return web.Response(status=status, body=_dumps(doc, pretty), headers=_headers(JSON))
        if shape == PARTIAL:
            if encoding == "protobuf":
                body = protobuf.wrap("meta.k8s.io/v1", PARTIAL, protobuf.partial_metadata(entry.pb))
                return web.Response(status=status, body=body, headers=_headers(PROTOBUF))
            return web.Response(status=status, body=_dumps(_partial(entry.obj), pretty), headers=_headers(JSON))
        if encoding == "protobuf":
            return web.Response(
                status=status, body=protobuf.wrap(res.api_version, res.kind, entry.pb), headers=_headers(PROTOBUF)
            )
        body = _dumps(entry.typed(res.api_version), True) if pretty else entry.typed_json(res.api_version) + b"\n"
        return web.Response(status=status, body=body, headers=_headers(JSON))

    def _selectors(
        self, res: resources.Resource, query: Any
    ) -> tuple[selectors.LabelSelector, selectors.FieldSelector]:
        try:
            ls = selectors.parse_labels(query.get("labelSelector", ""))
            fs = selectors.parse_fields(query.get("fieldSelector", ""), res.name, res.group)
        except kube_errors.UnsupportedField as e:
            raise errors.bad_request(
                f'Unable to find "{res.api_version}, Resource={res.name}" that match label selector '
                f'"{query.get("labelSelector", "")}", field selector "{query.get("fieldSelector", "")}": {e}'
            ) from e
        except kube_errors.KubeError as e:
            raise errors.bad_request(str(e)) from e
        return ls, fs

    @staticmethod
    def _matcher(
        res: resources.Resource, namespace: str, ls: selectors.LabelSelector, fs: selectors.FieldSelector
    ) -> Callable[[dict[str, Any]], bool]:
        fields = sorted({r.field for r in fs.requirements})

        def matches(obj: dict[str, Any]) -> bool:
            md = obj.get("metadata") or {}
            if namespace and md.get("namespace") != namespace:
                return False
            if not ls.empty and not ls.matches(md.get("labels")):
                return False
            if not fs.empty:
                return fs.matches({f: resources.field_value(res, obj, f) for f in fields})
            return True

        return matches

    async def _list(self, request: web.Request, target: Target, encoding: str, pretty: bool) -> web.Response:
        res = target.resource
        q = request.query
        ls, fs = self._selectors(res, q)
        rv_param = q.get("resourceVersion")
        rvm = q.get("resourceVersionMatch")
        cont = q.get("continue")
        limit = int(q["limit"]) if q.get("limit", "").isdigit() else 0
        if rvm and rv_param is None:
            raise errors.bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if cont and (rv_param or rvm):
            raise errors.bad_request("specifying resource version is not allowed when using continue")
        if rvm == "Exact" and rv_param == "0":
            raise errors.bad_request('resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
        if rvm not in (None, "", "Exact", "NotOlderThan"):
            raise errors.bad_request(f"unknown resourceVersionMatch {rvm!r}")
        at: int | None = None
        start = ""
        if cont:
            at, start = decode_continue(cont)
            if at < self.store.oldest:
                raise errors.gone(_CONTINUE_EXPIRED, {"continue": encode_continue(-1, start.lstrip("/"))})
        elif rv_param not in (None, "", "0"):
            try:
                want = int(rv_param)
            except ValueError as e:
                raise errors.bad_request(f"invalid resource version {rv_param!r}") from e
            if want > self.store.rv and not await self.store.wait_for_rv(want, self.sim.too_large_wait):
                raise errors.too_large(want, self.store.rv)
            if rvm == "Exact":
                if want < self.store.oldest:
                    raise errors.gone("The resourceVersion for the provided list is too old.")
                at = want
        list_rv = at if at is not None else self.store.rv
        try:
            objs = self.store.snapshot(res.key, at)
        except store.TooOld as e:
            raise errors.gone("The resourceVersion for the provided list is too old.") from e
        matches = self._matcher(res, target.namespace, ls, fs)
        rel = (lambda k: f"{k[0]}/{k[1]}") if res.namespaced and not target.namespace else (lambda k: k[1])
        keyed = sorted(((rel(k), e) for k, e in objs.items()), key=lambda x: x[0])
        skip = start.lstrip("/").removesuffix("\x00") if start else None
        selected = [(k, e) for k, e in keyed if (skip is None or k > skip) and matches(e.obj)]
        next_token = ""
        remaining = None
        if rv_param == "0" and not cont:
            limit = 0  # served from the watch cache, which ignores limit (traces/SUMMARY.md: one page)
        if limit and len(selected) > limit:
            last = selected[limit - 1][0]
            if ls.empty and fs.empty:
                remaining = len(selected) - limit
            selected = selected[:limit]
            next_token = encode_continue(list_rv, "/" + last + "\x00")
        entries = [e for _, e in selected]
        shape = request[SHAPE]
        if shape == TABLE:
            meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
            if next_token:
                meta["continue"] = next_token
            if remaining is not None:
                meta["remainingItemCount"] = remaining
            doc = table.table(
                res.name,
                [e.obj for e in entries],
                meta,
                request.query.get("includeObject", ""),
                res.api_version,
                res.kind,
            )
            return web.Response(body=_dumps(doc, pretty), headers=_headers(JSON))
        return self._list_response(res, entries, str(list_rv), next_token, remaining, encoding, pretty, shape)

    def _list_response(
        self,
        res: resources.Resource,
        entries: list[Entry],
        rv: str,
        cont: str,
        remaining: int | None,
        encoding: str,
        pretty: bool,
        shape: str = "",
    ) -> web.Response:
        api_version, list_kind = res.api_version, res.list_kind
        if shape == PARTIAL:
            api_version, list_kind = "meta.k8s.io/v1", PARTIAL + "List"
        if encoding == "protobuf":
            memo: dict[Any, Any] = {}
            items = [e.pb_shared(memo) for e in entries]
            if shape == PARTIAL:
                items = [protobuf.partial_metadata(i) for i in items]
            body = protobuf.build_list(api_version, list_kind, rv, items, cont, remaining)
            return web.Response(body=body, headers=_headers(PROTOBUF))
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        if pretty or shape == PARTIAL:
            items = [_partial(e.obj) for e in entries] if shape == PARTIAL else [e.obj for e in entries]
            doc = {"kind": list_kind, "apiVersion": api_version, "metadata": meta, "items": items}
            return web.Response(body=_dumps(doc, pretty), headers=_headers(JSON))
        head = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[' % (
            list_kind.encode(),
            api_version.encode(),
            schema.go_json_dumps(meta).encode(),
        )
        body = b"".join((head, b",".join(e.json for e in entries), b"]}\n"))
        return web.Response(body=body, headers=_headers(JSON))

    # --- writes ----------------------------------------------------------------------------------------------

    def _token(self, target: Target, req: Any, encoding: str, pretty: bool) -> web.Response:
        """POST serviceaccounts/<name>/token: a TokenRequest answered with an RS256 JWT signed by the simulator's
        service-account key (published at /openid/v1/jwks). The simulator itself authenticates bearer tokens by
        its token table, not by the signature."""
        sa = self._get_entry(target)
        req = req if isinstance(req, dict) else {}
        spec = dict(req.get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        spec["expirationSeconds"] = seconds
        spec.setdefault("audiences", ["https://kubernetes.default.svc.cluster.local"])
        now = int(time.time())
        sub = f"system:serviceaccount:{target.namespace}:{target.name}"
        claims: dict[str, Any] = {
            "aud": spec["audiences"],
            "exp": now + seconds,
            "iat": now,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": str(uuid.uuid4()),  # since 1.29 every token has one; it makes two tokens of one second differ
            "nbf": now,
            "sub": sub,
            "kubernetes.io": {
                "namespace": target.namespace,
                "serviceaccount": {"name": target.name, "uid": sa.obj["metadata"].get("uid", "")},
            },
        }
        ref = spec.get("boundObjectRef") or {}
        if ref.get("kind") == "Pod":
            claims["kubernetes.io"]["pod"] = {"name": ref.get("name", ""), "uid": ref.get("uid", "")}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        signing_input = b64(b'{"alg":"RS256","kid":"edgeproxy-sim"}') + "." + b64(
            schema.go_json_dumps(claims).encode())
        signature = self._sa_key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = signing_input + "." + b64(signature)
        self.sim.tokens[token] = (sub, ("system:serviceaccounts", f"system:serviceaccounts:{target.namespace}"))
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seconds))
        md = {k: v for k, v in (req.get("metadata") or {}).items() if k in ("name", "namespace")}
        md.setdefault("name", target.name)
        md.setdefault("namespace", target.namespace)
        md["creationTimestamp"] = None
        out = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": md,
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }
        if encoding == "protobuf":
            body = protobuf.wrap("authentication.k8s.io/v1", "TokenRequest", schema.to_protobuf(out))
            return web.Response(status=201, body=body, headers=_headers(PROTOBUF))
        return web.Response(status=201, body=_dumps(out, pretty), headers=_headers(JSON))

    def _sa_key(self) -> rsa.RSAPrivateKey:
        """The service-account signing key (kube-apiserver's --service-account-signing-key-file), made on first use."""
        if self._signing_key is None:
            self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._signing_key

    def _jwks(self, accept: str) -> web.Response:
        """GET /openid/v1/jwks: the public half of the signing key as a JWK set (ServiceAccountIssuerDiscovery).
        Only as application/jwk-set+json, as kube-apiserver (go-restful) serves it: any other Accept gets 406."""
        types = {t.split(";")[0].strip() for t in accept.split(",") if t.strip()}
        if types and not types & {"application/jwk-set+json", "application/*", "*/*"}:
            return web.Response(status=406, text="406: Not Acceptable", headers={"Content-Type": "text/plain"})
        numbers = self._sa_key().public_key().public_numbers()

        def b64(n: int) -> str:
            return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode().rstrip("=")

        doc = {"keys": [{"use": "sig", "kty": "RSA", "kid": "edgeproxy-sim", "alg": "RS256", "n": b64(numbers.n),
                         "e": b64(numbers.e)}]}
        return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(),
                            headers={"Content-Type": "application/jwk-set+json"})

    def _delete(self, request: web.Request, target: Target, body: bytes, encoding: str, pretty: bool) -> web.Response:
        opts: dict[str, Any] = {}
        if body.strip():
            parsed = _json_body(body, request.content_type, None)
            opts = parsed if isinstance(parsed, dict) else {}
        grace = opts.get("gracePeriodSeconds")
        if "gracePeriodSeconds" in request.query:
            grace = int(request.query["gracePeriodSeconds"])
        pre = opts.get("preconditions") or {}
        entry, gone = writes.delete(
            self.store,
            target.resource,
            target.namespace,
            target.name,
            None if grace is None else int(grace),
            pre.get("uid"),
            pre.get("resourceVersion"),
        )
        res = target.resource
        if not gone or res.graceful:
            return self._object_response(res, entry, encoding, pretty, status=200)
        md = entry.obj.get("metadata") or {}
        details = (
            {"name": target.name}
            | ({"group": res.group} if res.group else {})
            | {"kind": res.name, "uid": md.get("uid", "")}
        )
        st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        if encoding == "protobuf":
            return web.Response(
                body=protobuf.wrap("v1", "Status", schema.to_protobuf(st, "Status")), headers=_headers(PROTOBUF)
            )
        return web.Response(body=_dumps(st, pretty), headers=_headers(JSON))

    # --- watch -----------------------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, target: Target, encoding: str) -> web.StreamResponse:
        res = target.resource
        q = request.query
        ls, fs = self._selectors(res, q)
        rv_param = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks", "") in ("true", "1")
        initial = q.get("sendInitialEvents")
        send_initial = initial in ("true", "1")
        if initial is not None and (q.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks):
            raise errors.ApiError(
                422,
                "Invalid",
                'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: '
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to "
                "NotOlderThan and allowWatchBookmarks to true",
                {"kind": "ListOptions", "group": "meta.k8s.io"},
            )
        timeout = self.sim.watch_timeout
        if q.get("timeoutSeconds", "").isdigit():
            timeout = float(q["timeoutSeconds"])
        matches = self._matcher(res, target.namespace, ls, fs)
        watch = Watch(
            self, request, res, encoding, matches, bookmarks, request[SHAPE], request.query.get("includeObject", "")
        )
        from_rv: int | None = None
        if rv_param not in ("", "0"):
            try:
                from_rv = int(rv_param)
            except ValueError as e:
                raise errors.bad_request(f"invalid resource version {rv_param!r}") from e
        if from_rv is not None and from_rv > self.store.rv:
            await self.store.wait_for_rv(from_rv, self.sim.too_large_wait)
        await watch.prepare()
        if from_rv is not None and from_rv > self.store.rv:
            err = errors.too_large(from_rv, self.store.rv)
            await watch.write_error(err.status)
            return watch.resp
        self.store.watchers[res.key].add(watch.push)
        self.watches.add(watch)
        try:
            if from_rv is None or send_initial:
                snapshot_rv = self.store.rv
                for _key, e in sorted(self.store.snapshot(res.key).items()):
                    if matches(e.obj):
                        watch.queue.put_nowait(("ADDED", e))
                if send_initial:
                    watch.queue.put_nowait(("BOOKMARK-END", snapshot_rv))
            else:
                try:
                    backlog = self.store.changes_since(res.key, from_rv)
                except store.TooOld as e:
                    status = errors.gone(f"too old resource version: {e.requested} ({e.oldest})").status
                    await watch.write_error(status)
                    return watch.resp
                for change in backlog:
                    watch.push(change)
            try:
                await watch.run(timeout)
            except ConnectionError:
                pass  # the client went away
        finally:
            self.store.watchers[res.key].discard(watch.push)
            self.watches.discard(watch)
        return watch.resp


class Watch:
    """One open watch stream: filters changes for its selector, frames events, sends bookmarks."""

    __slots__ = (
        "api",
        "bookmarks",
        "encoding",
        "headers_sent",
        "include",
        "last_rv",
        "matches",
        "queue",
        "request",
        "res",
        "resp",
        "shape",
    )

    def __init__(
        self,
        api: Api,
        request: web.Request,
        res: resources.Resource,
        encoding: str,
        matches: Callable[[dict[str, Any]], bool],
        bookmarks: bool,
        shape: str = "",
        include: str = "",
    ) -> None:
        self.api = api
        self.shape = shape
        self.include = include
        self.headers_sent = False
        self.request = request
        self.res = res
        self.encoding = encoding
        self.matches = matches
        self.bookmarks = bookmarks
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.resp = web.StreamResponse(
            status=200, headers=_headers(protobuf.WATCH_CONTENT_TYPE if encoding == "protobuf" else JSON)
        )
        self.last_rv = 0

    async def prepare(self) -> None:
        await self.resp.prepare(self.request)

    def push(self, change: store.Change | None) -> None:
        """Called by the store for every committed change of the resource: queue what this watch should see
        (storage/cacher cache_watcher convertToWatchEvent: selector transitions become ADDED/DELETED)."""
        if change is None:
            self.queue.put_nowait(("CUT", None))
            return
        if change.type == "DELETED":
            if self.matches(change.entry.obj):
                self.queue.put_nowait(("DELETED", change.entry))
            return
        now = self.matches(change.entry.obj)
        before = change.prev is not None and self.matches(change.prev.obj)
        if now and before:
            self.queue.put_nowait(("MODIFIED", change.entry))
        elif now:
            self.queue.put_nowait(("ADDED", change.entry))
        elif before and change.prev is not None:
            self.queue.put_nowait(("DELETED", change.prev.with_rv(change.rv)))

    def _frame(self, type: str, entry: Entry) -> bytes:
        if self.shape == TABLE:
            doc = table.table(
                self.res.name,
                [entry.obj],
                {"resourceVersion": str(entry.rv)},
                self.include,
                self.res.api_version,
                self.res.kind,
                headers=not self.headers_sent,
            )
            self.headers_sent = True
            return b'{"type":"%s","object":%s}\n' % (type.encode(), schema.go_json_dumps(doc).encode())
        if self.shape == PARTIAL:
            if self.encoding == "protobuf":
                return protobuf.encode_event(type, "meta.k8s.io/v1", PARTIAL, protobuf.partial_metadata(entry.pb))
            obj = schema.go_json_dumps(_partial(entry.obj)).encode()
            return b'{"type":"%s","object":%s}\n' % (type.encode(), obj)
        if self.encoding == "protobuf":
            return protobuf.encode_event(type, self.res.api_version, self.res.kind, entry.pb)
        return b'{"type":"%s","object":%s}\n' % (type.encode(), entry.typed_json(self.res.api_version))

    def _bookmark(self, rv: int, end: bool = False) -> bytes:
        annotations: dict[str, str] = {}
        if end:
            annotations[INITIAL_EVENTS_END] = "true"
            annotations[LIST_BLUEPRINT] = base64.b64encode(self._blueprint()).decode()
        md: dict[str, Any] = {"resourceVersion": str(rv)}
        if annotations:
            md["annotations"] = annotations
        raw = schema.to_protobuf({"metadata": md}, self.res.kind)
        if self.shape == TABLE:
            doc = table.table(
                self.res.name, [], {"resourceVersion": str(rv)}, "", self.res.api_version, self.res.kind, False
            )
            return b'{"type":"BOOKMARK","object":%s}\n' % schema.go_json_dumps(doc).encode()
        if self.shape == PARTIAL:
            if self.encoding == "protobuf":
                return protobuf.encode_event("BOOKMARK", "meta.k8s.io/v1", PARTIAL, protobuf.partial_metadata(raw))
            obj = {"kind": PARTIAL, "apiVersion": "meta.k8s.io/v1", "metadata": md}
            return b'{"type":"BOOKMARK","object":%s}\n' % schema.go_json_dumps(obj).encode()
        if self.encoding == "protobuf":
            return protobuf.encode_event("BOOKMARK", self.res.api_version, self.res.kind, raw)
        obj = schema.to_json(self.res.kind, raw)
        return b'{"type":"BOOKMARK","object":%s}\n' % schema.go_json_dumps(obj).encode()

    def _blueprint(self) -> bytes:
        """An empty list of the watched kind in the stream's encoding (apiserver watch-list blueprint)."""
        if self.encoding == "protobuf":
            return protobuf.build_list(self.res.api_version, self.res.list_kind, "", [])
        doc = {"kind": self.res.list_kind, "apiVersion": self.res.api_version, "metadata": {}, "items": None}
        return schema.go_json_dumps(doc).encode() + b"\n"

    async def _write(self, data: bytes) -> None:
        faults = self.api.sim.faults
        if faults.slow > 0:
            await asyncio.sleep(faults.slow)
        await self.resp.write(data)

    async def write_error(self, status: dict[str, Any]) -> None:
        raw = schema.to_protobuf(status, "Status")
        if self.encoding == "protobuf":
            frame = protobuf.encode_event("ERROR", "v1", "Status", raw)
        else:
            frame = b'{"type":"ERROR","object":%s}\n' % schema.go_json_dumps(status).encode()
        await self._write(frame)

    async def _cut(self) -> None:
        """Send half of a frame, then drop the connection (fault: a watch cut mid-event)."""
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return  # the client already left: nothing to cut
        frame = self._bookmark(self.api.store.rv)
        try:
            await self.resp.write(frame[: max(1, len(frame) // 2)])
        except ConnectionError:
            return
        transport.abort()

    async def run(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        interval = self.api.sim.bookmark_interval
        next_bookmark = started + interval
        final_bookmark = deadline - 2 if timeout > 4 else deadline
        final_sent = False
        while True:
            now = loop.time()
            if now >= deadline:
                if self.bookmarks and not final_sent and self.queue.empty():
                    await self._write(self._bookmark(max(self.api.store.rv, self.last_rv)))
                return
            wake = deadline
            if self.bookmarks:
                wake = min(wake, next_bookmark, final_bookmark if not final_sent else deadline)
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    type, item = await self.queue.get()
            except TimeoutError:
                now = loop.time()
                if (
                    self.bookmarks
                    and self.queue.empty()
                    and (now >= next_bookmark or (not final_sent and now >= final_bookmark))
                ):
                    if now >= final_bookmark:
                        final_sent = True
                    next_bookmark = now + interval
                    await self._write(self._bookmark(max(self.api.store.rv, self.last_rv)))
                continue
            if type == "CUT":
                await self._cut()
                return
            if type == "BOOKMARK-END":
                self.last_rv = max(self.last_rv, item)
                await self._write(self._bookmark(item, end=True))
                continue
            self.last_rv = max(self.last_rv, item.rv)
            await self._write(self._frame(type, item))
