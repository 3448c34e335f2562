"""RequestInfo from (method, path, query, headers), as kube-apiserver's RequestInfoFactory and handlers derive it.

Classifies a request (resource or non-resource; verb get/list/watch/create/update/patch/delete/deletecollection/
connect; group, version, namespace, resource, name, subresource), decodes the list options the way the API server's
parameter codec does (its 400 messages for bad integers and selectors, its 422 for forbidden resourceVersionMatch /
sendInitialEvents combinations), parses Accept into media types in preference order, negotiates the representation
a cache can serve, and names the client (component from User-Agent, identity from a bearer token hash).
Pure: strings in, values out. Does not decide how to answer (proxy does) nor read bodies.
Sources: k8s.io/apiserver pkg/endpoints/request/requestinfo.go, handlers/get.go (ListResource),
handlers/negotiation (goautoneg + acceptMediaTypeOptions), apimachinery meta/internalversion/validation.
Neighbours: selectors (parses the selectors found here), status (turns the errors raised here into bodies).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edgeproxy.kube import errors, goquote, jwt, selectors

JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
META_GROUP = "meta.k8s.io"
_META_VERSIONS = frozenset({"v1", "v1beta1"})
# What the API server lists in its 406 (the serializers of a built-in resource, in negotiation order).
SERVER_MEDIA_TYPES = (JSON, "application/yaml", PROTOBUF)

# --- clients ----------------------------------------------------------------------------------------------------------

# User-Agent basenames that are another component in disguise: kubemark's hollow nodes run the real kubelet and
# kube-proxy code under these names (tests/fixtures/traces). Extend per call with parse(..., aliases=...).
DEFAULT_ALIASES: Mapping[str, str] = MappingProxyType({"hollow-kubelet": "kubelet", "hollow-proxy": "kube-proxy"})


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking: `component` from the User-Agent, `identity` a hash prefix of the bearer token ("" if none).
    edgeproxy.identity replaces the hash by "sa:<namespace>:<name>" for a ServiceAccount token it believes, so
    rotated tokens of one account share one partition."""

    component: str
    identity: str = ""

    @property
    def key(self) -> str:
        """The cache partition: "kubelet", "coredns@<16 hex>" for a token, "coredns@sa:kube-system:coredns" for a
        believed ServiceAccount token."""
        return f"{self.component}@{self.identity}" if self.identity else self.component


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lname), None)
    return value or ""


MAX_COMPONENT = 128


def client_from_headers(headers: Mapping[str, str], aliases: Mapping[str, str] | None = None) -> Client:
    """client-go's User-Agent is "<basename(argv0)>/<version> (<os>/<arch>) kubernetes/<commit>" (rest/config.go
    DefaultKubernetesUserAgent); CoreDNS sends "CoreDNS/1.12.1 git_commit:..". The component is the part before the
    first "/" (or blank), lowercased, then mapped through the aliases."""
    ua = _header(headers, "User-Agent").strip()
    component = ua.split(None, 1)[0].split("/", 1)[0].lower() if ua else ""
    if len(component) > MAX_COMPONENT or not component.isascii() or not component.isprintable():
        # A cache partition name: printable ASCII, bounded (a User-Agent is the client's to choose: 1 MB, invalid
        # UTF-8 as surrogates, control characters).
        component = component.encode("ascii", "backslashreplace").decode()
        component = "".join(c if c.isprintable() else "?" for c in component)[:MAX_COMPONENT]
    table = {**DEFAULT_ALIASES, **(aliases or {})}
    component = table.get(component, component)
    token = bearer_token(headers)
    return Client(component, jwt.hash_identity(token) if token else "")


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), or ""."""
    scheme, _, token = _header(headers, "Authorization").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


# --- media types ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaType:
    """One clause of an Accept header, as goautoneg parses it: type, subtype, parameters (besides q), q."""

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()
    q: float = 1.0

    def param(self, name: str) -> str | None:
        found = None
        for k, v in self.params:
            if k == name:
                found = v  # a Go map: the last occurrence wins
        return found

    @property
    def encoding(self) -> str | None:
        """"json", "protobuf", or None for anything else (wildcards, yaml, cbor, ...)."""
        if self.type == "application":
            if self.subtype == "json":
                return "json"
            if self.subtype == "vnd.kubernetes.protobuf":
                return "protobuf"
        return None

    @property
    def as_(self) -> str:
        """The `as=` conversion: "", "Table", "PartialObjectMetadata", "PartialObjectMetadataList" (or another kind
        name, e.g. APIGroupDiscoveryList, which only non-resource endpoints serve)."""
        return self.param("as") or ""

    @property
    def group(self) -> str:
        return self.param("g") or ""

    @property
    def version(self) -> str:
        return self.param("v") or ""

    @property
    def stream(self) -> str:
        return self.param("stream") or ""

    def __str__(self) -> str:
        return f"{self.type}/{self.subtype}" + "".join(f";{k}={v}" for k, v in self.params)


def parse_accept(header: str) -> tuple[MediaType, ...]:
    """goautoneg.ParseAccept: comma-separated clauses, "*" alone means "*/*", parameters without "=" ignored, an
    unparsable q is 0. Sorted by q (highest first), then specific types before wildcards, keeping header order among
    equals (goautoneg's Less is not a strict order; for the headers clients send this is the order it produces)."""
    out = []
    for part in header.split(","):
        part = part.strip(" ")
        media_range, *raw_params = part.split(";")
        sp = media_range.split("/")
        typ = sp[0].strip(" ")
        if len(sp) == 1 and typ == "*":
            subtype = "*"
        elif len(sp) == 2:
            subtype = sp[1].strip(" ")
        else:
            continue
        q = 1.0
        params = []
        for p in raw_params:
            k, eq, v = p.partition("=")
            if not eq:
                continue
            k = k.strip(" ")
            if k == "q":
                q = _parse_q(v)
            else:
                params.append((k, v.strip(" ")))
        out.append(MediaType(typ, subtype, tuple(params), q))
    out.sort(key=lambda m: (-m.q, m.type == "*", m.subtype == "*"))
    return tuple(out)


def _parse_q(v: str) -> float:
    try:
        q = float(v)  # strconv.ParseFloat(v, 32); Go's error leaves 0
    except ValueError:
        return 0.0
    return q if q == q else 0.0  # NaN


@dataclass(frozen=True, slots=True)
class Representation:
    """What to answer with: an encoding and the `as=` shape ("" for the plain object or list)."""

    encoding: str  # "json" | "protobuf"
    as_: str = ""

    def content_type(self, watch: bool = False) -> str:
        """The response Content-Type: the bare media type (kube-apiserver does not echo as=/g=/v=, see
        tests/fixtures/pods-edge1.table.json.headers), ";stream=watch" for protobuf watches."""
        if self.encoding == "protobuf":
            return PROTOBUF + ";stream=watch" if watch else PROTOBUF
        return JSON


# --- the request ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A classified request. `name` is also set on a list/watch whose fieldSelector pins metadata.name (as
    RequestInfoFactory does for the Node authorizer): test `verb`, not `name`, to tell a get from a list.
    `labels`/`fields` are the parsed selectors (field labels converted for built-in resources, e.g. spec.host ->
    spec.nodeName); use their canonical() as cache keys. Optional strings are None when absent or empty."""

    is_resource: bool
    verb: str
    path: str
    method: str = "GET"
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()
    label_selector: str = ""
    field_selector: str = ""
    resource_version: str | None = None
    resource_version_match: str | None = None
    limit: int | None = None
    continue_: str | None = None
    timeout_seconds: int | None = None
    timeout: str | None = None  # the raw `timeout` duration ("5m9s") typed informers add
    allow_watch_bookmarks: bool = False
    send_initial_events: bool | None = None
    accept: tuple[MediaType, ...] = ()
    client: Client = field(default_factory=lambda: Client(""))
    params: tuple[tuple[str, str], ...] = ()  # every decoded query parameter, first value of each
    labels: selectors.LabelSelector = field(default_factory=selectors.LabelSelector)
    fields: selectors.FieldSelector = field(default_factory=selectors.FieldSelector)

    @property
    def watch(self) -> bool:
        return self.verb == "watch"

    @property
    def is_list_or_watch(self) -> bool:
        return self.verb in ("list", "watch")

    @property
    def watch_list(self) -> bool:
        """A streaming list (KEP-3157): initial ADDED events, then a BOOKMARK with k8s.io/initial-events-end."""
        return self.verb == "watch" and self.send_initial_events is True

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)


_API_PREFIXES = frozenset({"api", "apis"})
_GROUPLESS_PREFIXES = frozenset({"api"})
_SPECIAL_VERBS = frozenset({"proxy", "watch"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape(s: str, what: str, plus_is_space: bool) -> str:
    """Percent-decode once as Go's url package does; a bad escape is a 400 (Go's message), and so is invalid UTF-8
    (Go would pass the bytes on; a cache key must be text)."""
    if "%" in s and (m := _BAD_ESCAPE.search(s)):
        raise errors.InvalidRequest(f"invalid URL escape {goquote.quote(s[m.start():m.start() + 3])}")
    if plus_is_space:
        s = s.replace("+", " ")
    try:
        return urllib.parse.unquote(s, errors="strict")
    except UnicodeDecodeError:
        raise errors.InvalidRequest(f"invalid UTF-8 in {what}") from None


def parse_query(query: str) -> dict[str, str]:
    """url.ParseQuery, first value per key: pairs split on "&", key and value unescaped ("+" is a space). Go drops a
    pair with a bad escape or a ";" and goes on; here both are a 400, so a selector is never silently dropped."""
    out: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        if ";" in pair:
            raise errors.InvalidRequest("invalid semicolon separator in query")
        k, _, v = pair.partition("=")
        key = _unescape(k, "query", True)
        value = _unescape(v, f"query parameter {key}", True)
        out.setdefault(key, value)
    return out


def _parse_int(name: str, value: str | None) -> int | None:
    """runtime.Convert_Slice_string_To_int64: strconv.ParseInt(v, 10, 64) and its error text."""
    if value is None:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", value, re.ASCII):
        raise errors.InvalidRequest(f"strconv.ParseInt: parsing {goquote.quote(value)}: invalid syntax")
    n = int(value)
    if not -(1 << 63) <= n < (1 << 63):
        raise errors.InvalidRequest(f"strconv.ParseInt: parsing {goquote.quote(value)}: value out of range")
    return n


def _lenient_int(value: str | None) -> int | None:
    try:
        return _parse_int("", value)
    except errors.InvalidRequest:
        return None


def _parse_bool(value: str) -> bool:
    """runtime.Convert_Slice_string_To_bool: "0", "f" and "false" (any case) are false; anything else is true."""
    return not (value == "0" or value.lower() in ("f", "false"))


def _valid_path_segment_name(name: str) -> bool:
    """path.IsValidPathSegmentName: not "." or "..", no "/" or "%"."""
    return name not in (".", "..") and "/" not in name and "%" not in name


def _forbidden(field_name: str, detail: str) -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field_name}


def _not_supported(field_name: str, value: str, supported: tuple[str, ...]) -> dict[str, str]:
    detail = "supported values: " + ", ".join(goquote.quote(s) for s in supported)
    return {"reason": "FieldValueNotSupported", "message": f"Unsupported value: {goquote.quote(value)}: {detail}",
            "field": field_name}


def _validate_list_options(watch: bool, rv: str, rvm: str, cont: str, send_initial_events: bool | None) -> None:
    """meta/internalversion/validation.ValidateListOptions (WatchList enabled, as in 1.32 and 1.34+); the handler
    answers errors.NewInvalid(ListOptions.meta.k8s.io, "", errs): 422 Invalid with one cause per error."""
    causes = []
    if watch:
        if send_initial_events is not None and rvm != "NotOlderThan":
            causes.append(_forbidden("resourceVersionMatch",
                                     "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
        if rvm:
            if send_initial_events is None:
                causes.append(_forbidden("resourceVersionMatch",
                                         "resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
                                         "provided"))
            if rvm != "NotOlderThan":
                causes.append(_not_supported("resourceVersionMatch", rvm, ("NotOlderThan",)))
            if cont:
                causes.append(_forbidden("resourceVersionMatch",
                                         "resourceVersionMatch is forbidden when continue is provided"))
    else:
        if rvm:
            if not rv:
                causes.append(_forbidden("resourceVersionMatch",
                                         "resourceVersionMatch is forbidden unless resourceVersion is provided"))
            if cont:
                causes.append(_forbidden("resourceVersionMatch",
                                         "resourceVersionMatch is forbidden when continue is provided"))
            if rvm not in ("Exact", "NotOlderThan"):
                causes.append(_not_supported("resourceVersionMatch", rvm, ("Exact", "NotOlderThan", "")))
            if rvm == "Exact" and rv == "0":
                causes.append(_forbidden("resourceVersionMatch",
                                         'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'))
        if send_initial_events is not None:
            causes.append(_forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"))
    if causes:
        msgs: list[str] = []
        for c in causes:
            m = f"{c['field']}: {c['message']}"
            if m not in msgs:
                msgs.append(m)
        agg = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
        raise errors.InvalidOptions(f'ListOptions.meta.k8s.io "" is invalid: {agg}', causes)


def _builtin_group(group: str) -> bool:
    """Groups whose field selectors the API server checks against compiled-in conversions ("" and the *.k8s.io and
    dotless groups). Custom resources may declare selectableFields we cannot know: their selectors are only parsed."""
    return group == "" or "." not in group or group.endswith(".k8s.io")


def parse(method: str, path: str, query: str, headers: Mapping[str, str], *,
          aliases: Mapping[str, str] | None = None) -> RequestInfo:
    """Classify one request. `path` is the URL path as sent (percent-decoded here, once, as Go's URL.Path is; a
    "?query" left on it is split off when `query` is empty); `query` is the raw query string. Raises InvalidRequest
    (400) or InvalidOptions (422) where kube-apiserver would refuse the request."""
    if not query and "?" in path:
        path, _, query = path.partition("?")
    path = _unescape(path, "path", False)
    params = parse_query(query) if query else {}
    client = client_from_headers(headers, aliases)
    accept = parse_accept(_header(headers, "Accept")) if _header(headers, "Accept") else ()
    common = {"path": path, "method": method, "accept": accept, "client": client, "params": tuple(params.items()),
              "resource_version": params.get("resourceVersion") or None}
    non_resource = RequestInfo(is_resource=False, verb=method.lower(), **common)

    parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in _GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return non_resource  # /apis/GROUP/VERSION: discovery
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]

    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            raise errors.InvalidRequest(f"unable to determine kind and namespace from url, {path}")
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method, "")  # Go switches on req.Method as sent

    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]

    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb != "proxy" else ""

    watch_param = params.get("watch")
    if not name and verb == "get":
        verb = "watch" if watch_param is not None and _parse_bool(watch_param) else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    if verb == "proxy":  # the legacy /proxy/ prefix: a connect to the resource's proxy subresource
        verb, subresource = "connect", "proxy"
    elif subresource in _CONNECT_SUBRESOURCES:
        verb = "connect"

    label_selector = params.get("labelSelector", "")
    field_selector = params.get("fieldSelector", "")
    rv = params.get("resourceVersion", "")
    rvm = params.get("resourceVersionMatch", "")
    cont = params.get("continue", "")
    sie = params.get("sendInitialEvents")
    send_initial_events = None if sie is None else _parse_bool(sie)
    labels = selectors.LabelSelector()
    fields = selectors.FieldSelector()
    if verb in ("list", "watch", "deletecollection"):
        # The order of ListResource: decode (ints, then selectors; 400), validate (422), convert field labels (400).
        timeout_seconds = _parse_int("timeoutSeconds", params.get("timeoutSeconds"))
        limit = _parse_int("limit", params.get("limit"))
        labels = selectors.parse_labels(label_selector)
        fields = selectors.parse_fields(field_selector)
        _validate_list_options(watch_param is not None and _parse_bool(watch_param), rv, rvm, cont,
                               send_initial_events)
        if _builtin_group(group):
            fields = selectors.parse_fields(field_selector, resource, group)
        if not name and (exact := fields.exact("metadata.name")) is not None and _valid_path_segment_name(exact):
            name = exact  # RequestInfoFactory names a list/watch pinned to one object (the Node authorizer uses it)
    else:
        timeout_seconds = _lenient_int(params.get("timeoutSeconds"))
        limit = _lenient_int(params.get("limit"))

    return RequestInfo(
        is_resource=True, verb=verb, api_prefix=prefix, api_group=group, api_version=version, namespace=namespace,
        resource=resource, subresource=subresource, name=name, parts=tuple(parts),
        label_selector=label_selector, field_selector=field_selector, resource_version_match=rvm or None,
        limit=limit, continue_=cont or None, timeout_seconds=timeout_seconds, timeout=params.get("timeout"),
        allow_watch_bookmarks=_parse_bool(params["allowWatchBookmarks"]) if "allowWatchBookmarks" in params else False,
        send_initial_events=send_initial_events, labels=labels, fields=fields, **common)


# --- negotiation ------------------------------------------------------------------------------------------------------


def _wants_list(info: RequestInfo) -> bool:
    return info.verb in ("list", "deletecollection")


def negotiate(info: RequestInfo) -> Representation:
    """The best representation a cache can serve for this request, walking Accept in preference order as
    NegotiateMediaTypeOptions does: application/json, application/* and */* give JSON (the server's first
    serializer), application/vnd.kubernetes.protobuf gives protobuf; the kubelet's
    "application/vnd.kubernetes.protobuf, */*" therefore gets protobuf. `as=` conversions (g=meta.k8s.io,
    v=v1|v1beta1): PartialObjectMetadata[List] in either encoding; Table, which a cache cannot build, becomes the
    plain JSON object or list (kubectl prints those client-side; Table has no protobuf form so a protobuf Table
    clause is skipped, as the server skips it). No Accept is JSON. Raises NotAcceptable (406) when no clause fits,
    or when the PartialObjectMetadata shape does not fit the request (a list wants ...List, get/watch the object)."""
    if not info.accept:
        return Representation("json")
    for mt in info.accept:
        if (mt.type, mt.subtype) in (("application", "json"), ("application", "*"), ("*", "*")):
            encoding = "json"
        elif (mt.type, mt.subtype) == ("application", "vnd.kubernetes.protobuf"):
            encoding = "protobuf"
        else:
            continue
        if mt.stream and mt.stream != "watch":
            continue
        as_ = mt.param("as")
        if as_ is None:
            return Representation(encoding)
        if not info.is_resource:
            if mt.group == "apidiscovery.k8s.io":  # aggregated discovery (APIGroupDiscoveryList): a distinct blob
                return Representation(encoding, as_)
            continue
        if mt.group != META_GROUP or mt.version not in _META_VERSIONS:
            continue
        if as_ == "Table":
            if encoding == "json":
                return Representation("json")
            continue
        if as_ in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            want = "PartialObjectMetadataList" if _wants_list(info) else "PartialObjectMetadata"
            if as_ != want:
                what = "a list" if _wants_list(info) else "not a list"
                raise errors.NotAcceptable(f"you requested {as_}, but the requested object is {what}")
            return Representation(encoding, as_)
    raise errors.NotAcceptable("only the following media types are accepted: " + ", ".join(SERVER_MEDIA_TYPES))
