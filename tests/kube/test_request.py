"""RequestInfo: every request real clients sent (traces, recorded fixtures) classified as the API server did."""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from edgeproxy.kube import errors, request

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KUBELET_ACCEPT = "application/vnd.kubernetes.protobuf, */*"
KUBECTL_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
                  "application/json")
METADATA_LIST_ACCEPT = ("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
                        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
METADATA_ACCEPT = METADATA_LIST_ACCEPT.replace("PartialObjectMetadataList", "PartialObjectMetadata")

# --- the traces: hollow kubelet and kube-proxy through nginx ----------------------------------------------------------

# nginx log_format k8s: time msec "method" "request_uri" status "Accept" "User-Agent" "response Content-Type" ...
LOG_LINE = re.compile(r'^\S+ \S+ "(?P<method>[A-Z]+)" "(?P<uri>[^"]*)" (?P<status>\d+) "(?P<accept>[^"]*)" '
                      r'"(?P<ua>[^"]*)" "(?P<ctype>[^"]*)"')

# Every path shape in the traces: (regex, group, resource, subresource). (?P<ns>) and (?P<name>) are what the
# request must report as namespace and name.
SHAPES = [
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/events", "", "events", ""),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/events/(?P<name>[^/]+)", "", "events", ""),
    (r"/api/v1/nodes", "", "nodes", ""),
    (r"/api/v1/nodes/(?P<name>[^/]+)", "", "nodes", ""),
    (r"/api/v1/nodes/(?P<name>[^/]+)/status", "", "nodes", "status"),
    (r"/api/v1/pods", "", "pods", ""),
    (r"/api/v1/services", "", "services", ""),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)", "", "pods", ""),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/status", "", "pods", "status"),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/configmaps", "", "configmaps", ""),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/secrets", "", "secrets", ""),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/serviceaccounts/(?P<name>[^/]+)/token", "", "serviceaccounts", "token"),
    (r"/apis/events\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/events", "events.k8s.io", "events", ""),
    (r"/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases/(?P<name>[^/]+)", "coordination.k8s.io",
     "leases", ""),
    (r"/apis/storage\.k8s\.io/v1/csinodes/(?P<name>[^/]+)", "storage.k8s.io", "csinodes", ""),
    (r"/apis/storage\.k8s\.io/v1/csidrivers", "storage.k8s.io", "csidrivers", ""),
    (r"/apis/node\.k8s\.io/v1/runtimeclasses", "node.k8s.io", "runtimeclasses", ""),
    (r"/apis/discovery\.k8s\.io/v1/endpointslices", "discovery.k8s.io", "endpointslices", ""),
]
WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def trace_lines():
    out = []
    for log in sorted((FIXTURES / "traces").glob("*.log")):
        for n, line in enumerate(log.read_text().splitlines(), 1):
            m = LOG_LINE.match(line)
            assert m, f"{log.name}:{n} is not a k8s log line"
            out.append(pytest.param(log.name, m.groupdict(), id=f"{log.stem}:{n}"))
    return out


TRACE = trace_lines()


def test_the_traces_are_all_there():
    assert len(TRACE) == 208 + 7 + 178


@pytest.mark.parametrize(("log", "line"), TRACE)
def test_every_traced_request_is_classified_as_the_server_served_it(log, line):
    path, _, query = line["uri"].partition("?")
    q = dict(urllib.parse.parse_qsl(query))
    info = request.parse(line["method"], path, query, {"Accept": line["accept"], "User-Agent": line["ua"]})

    shape = next(((m, g, r, s) for rx, g, r, s in SHAPES if (m := re.fullmatch(rx, path))), None)
    assert shape, f"unexpected path {path}"
    m, group, resource, subresource = shape
    assert info.is_resource
    assert (info.api_group, info.api_version, info.resource, info.subresource) == (group, "v1", resource, subresource)
    assert info.namespace == (m.groupdict().get("ns") or "")
    served_watch = "stream=watch" in line["ctype"]  # the server's own answer says whether it was a watch
    if line["method"] in WRITE_VERBS:
        assert info.verb == WRITE_VERBS[line["method"]]
        assert info.name == m["name"] if "name" in m.groupdict() else not info.name
    elif "name" in m.groupdict():
        assert info.verb == "get" and info.name == m["name"] and not served_watch
    else:
        assert info.verb == ("watch" if served_watch else "list")
        assert info.watch is served_watch and info.is_list_or_watch
        # a list/watch pinned to one object by metadata.name carries that name, as RequestInfoFactory sets it
        assert info.name == q.get("fieldSelector", "").removeprefix("metadata.name=") if q.get(
            "fieldSelector", "").startswith("metadata.name=") else not info.name
        assert info.label_selector == q.get("labelSelector", "") and info.field_selector == q.get("fieldSelector", "")
        assert info.fields.matches({"spec.nodeName": "edge-1", "metadata.name": info.name,
                                    "spec.clusterIP": "10.96.0.1"})  # what the traced node and services look like
        assert info.resource_version == (q.get("resourceVersion") or None)
        if served_watch:
            assert info.allow_watch_bookmarks and info.timeout_seconds == int(q["timeoutSeconds"])
            assert info.watch_list is (log == "kubelet-watchlist.log")
            assert info.send_initial_events is (True if info.watch_list else None)
            assert info.resource_version_match == ("NotOlderThan" if info.watch_list else None)
        else:
            assert info.limit == 500 and info.resource_version == "0"
    expected_component = {"hollow-kubelet": "kubelet", "hollow-proxy": "kube-proxy"}[line["ua"]]
    assert info.client == request.Client(expected_component) and info.client.key == expected_component
    # every request sent the kubelet's Accept and got protobuf back: the cache must answer the same way
    assert [str(a) for a in info.accept] == ["application/vnd.kubernetes.protobuf", "*/*"]
    rep = request.negotiate(info)
    assert rep == request.Representation("protobuf")
    assert rep.content_type(watch=info.watch) == line["ctype"]


# --- the recorded fixtures: curl with explicit Accept headers ---------------------------------------------------------

def fixture_requests():
    rows = re.findall(r"^\| `(?P<files>[^`]+)`<br>.*?\| `(?P<req>[^`]+)` \| `(?P<accept>[^`]+)` \|",
                      (FIXTURES / "INDEX.md").read_text(), re.M)
    out = []
    for body, req, accept in rows:
        stem = body.removesuffix(".body")
        headers = (FIXTURES / f"{stem}.headers").read_text()
        ctype = re.search(r"^content-type: (.*)$", headers, re.M | re.I)
        out.append(pytest.param(req.split(" ")[0], accept, ctype[1].strip() if ctype else "", id=stem))
    return out


FIXTURE_REQUESTS = fixture_requests()


def test_the_fixture_index_is_parsed():
    assert len(FIXTURE_REQUESTS) >= 35


@pytest.mark.parametrize(("uri", "accept", "ctype"), FIXTURE_REQUESTS)
def test_every_recorded_request_negotiates_what_the_server_sent(uri, accept, ctype):
    info = request.parse("GET", uri, "", {"Accept": accept, "User-Agent": "curl/8.5.0"})
    assert info.client.component == "curl"
    rep = request.negotiate(info)
    if not info.is_resource:
        assert info.verb == "get" and info.path == uri.partition("?")[0]
        assert rep.encoding == ("protobuf" if "protobuf" in accept else "json")
        return
    assert rep.content_type(info.watch) == ctype  # Table is answered as plain JSON; the server's type is bare too
    assert info.verb in ("get", "list", "watch")
    assert info.watch is ("watch=true" in uri)


# --- path classification ----------------------------------------------------------------------------------------------

# (method, path?query, verb, group, version, resource, subresource, namespace, name)
PATHS = [
    ("GET", "/api/v1/pods", "list", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/pods?watch=true", "watch", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/pods?watch=1", "watch", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/pods?watch=false", "list", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/pods?watch=0", "list", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/pods?watch=F", "list", "", "v1", "pods", "", "", ""),  # ListOptions' bool: 0, f, false
    ("GET", "/api/v1/pods?watch=", "watch", "", "v1", "pods", "", "", ""),
    ("HEAD", "/api/v1/pods", "list", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/namespaces/edge/pods", "list", "", "v1", "pods", "", "edge", ""),
    ("GET", "/api/v1/namespaces/edge/pods/p1", "get", "", "v1", "pods", "", "edge", "p1"),
    ("GET", "/api/v1/namespaces/edge/pods/p1?watch=true", "get", "", "v1", "pods", "", "edge", "p1"),
    ("GET", "/api/v1/namespaces/edge/pods/p1/log", "get", "", "v1", "pods", "log", "edge", "p1"),
    ("POST", "/api/v1/namespaces/edge/pods", "create", "", "v1", "pods", "", "edge", ""),
    ("PUT", "/api/v1/namespaces/edge/pods/p1", "update", "", "v1", "pods", "", "edge", "p1"),
    ("PATCH", "/api/v1/namespaces/edge/pods/p1/status", "patch", "", "v1", "pods", "status", "edge", "p1"),
    ("DELETE", "/api/v1/namespaces/edge/pods/p1", "delete", "", "v1", "pods", "", "edge", "p1"),
    ("DELETE", "/api/v1/namespaces/edge/pods", "deletecollection", "", "v1", "pods", "", "edge", ""),
    ("OPTIONS", "/api/v1/pods", "", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/namespaces", "list", "", "v1", "namespaces", "", "", ""),
    ("GET", "/api/v1/namespaces/edge", "get", "", "v1", "namespaces", "", "edge", "edge"),
    ("PUT", "/api/v1/namespaces/edge/finalize", "update", "", "v1", "namespaces", "finalize", "edge", "edge"),
    ("GET", "/api/v1/namespaces/edge/status", "get", "", "v1", "namespaces", "status", "edge", "edge"),
    ("GET", "/api/v1/namespaces?watch=true", "watch", "", "v1", "namespaces", "", "", ""),
    ("GET", "/api/v1/watch/pods", "watch", "", "v1", "pods", "", "", ""),
    ("GET", "/api/v1/watch/namespaces/edge/pods", "watch", "", "v1", "pods", "", "edge", ""),
    ("GET", "/api/v1/watch/namespaces/edge/pods/p1", "watch", "", "v1", "pods", "", "edge", "p1"),
    ("GET", "/apis/apps/v1/watch/deployments", "watch", "apps", "v1", "deployments", "", "", ""),
    ("POST", "/api/v1/namespaces/edge/pods/p1/exec?command=ls", "connect", "", "v1", "pods", "exec", "edge", "p1"),
    ("GET", "/api/v1/namespaces/edge/pods/p1/exec?command=ls", "connect", "", "v1", "pods", "exec", "edge", "p1"),
    ("POST", "/api/v1/namespaces/edge/pods/p1/attach", "connect", "", "v1", "pods", "attach", "edge", "p1"),
    ("POST", "/api/v1/namespaces/edge/pods/p1/portforward", "connect", "", "v1", "pods", "portforward", "edge",
     "p1"),
    ("GET", "/api/v1/namespaces/edge/pods/p1/proxy/healthz", "connect", "", "v1", "pods", "proxy", "edge", "p1"),
    ("GET", "/api/v1/nodes/n1/proxy/metrics", "connect", "", "v1", "nodes", "proxy", "", "n1"),
    ("GET", "/api/v1/proxy/namespaces/edge/services/web/x", "connect", "", "v1", "services", "proxy", "edge", "web"),
    ("GET", "/apis/apps/v1/namespaces/edge/deployments/d/scale", "get", "apps", "v1", "deployments", "scale",
     "edge", "d"),
    ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1", "get", "coordination.k8s.io",
     "v1", "leases", "", "kube-node-lease", "edge-1"),
    ("GET", "/api/v1/namespaces/edge/secrets?fieldSelector=metadata.name%3Ddb-credentials", "list", "", "v1",
     "secrets", "", "edge", "db-credentials"),
    ("GET", "/api/v1/namespaces/edge/secrets?fieldSelector=metadata.name%3D..", "list", "", "v1", "secrets", "",
     "edge", ""),
    ("GET", "/api/v1/nodes?fieldSelector=metadata.name!%3Dx", "list", "", "v1", "nodes", "", "", ""),
    # Go decodes the path before splitting it: an escaped "/" is a separator
    ("GET", "/api/v1/namespaces/a%2Fb/pods", "get", "", "v1", "b", "", "a", "pods"),
    ("GET", "/api/v1/pods/", "list", "", "v1", "pods", "", "", ""),
]


@pytest.mark.parametrize(("method", "uri", "verb", "group", "version", "resource", "sub", "ns", "name"), PATHS)
def test_resource_paths(method, uri, verb, group, version, resource, sub, ns, name):
    path, _, query = uri.partition("?")
    info = request.parse(method, path, query, {})
    assert info.is_resource
    got = (info.verb, info.api_group, info.api_version, info.resource, info.subresource, info.namespace, info.name)
    assert got == (verb, group, version, resource, sub, ns, name)


NON_RESOURCE = ["/", "", "/version", "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1",
                "/apis/coordination.k8s.io/v1", "/healthz", "/livez", "/readyz", "/readyz/etcd", "/metrics",
                "/openapi/v2", "/openapi/v3", "/openapi/v3/apis/apps/v1", "/.well-known/openid-configuration",
                "/logs/x", "/foo/bar/baz"]


@pytest.mark.parametrize("path", NON_RESOURCE)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_non_resource_paths(path, method):
    info = request.parse(method, path, "", {})
    assert not info.is_resource and info.verb == method.lower() and info.path == path
    assert not info.is_list_or_watch and not info.resource


# --- query decoding and list options ----------------------------------------------------------------------------------

def test_list_options_decoded_from_a_percent_encoded_query():
    q = ("labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name&"
         "fieldSelector=spec.clusterIP%21%3DNone&limit=500&resourceVersion=0&continue=abc%3D&timeoutSeconds=309&"
         "timeout=5m9s&allowWatchBookmarks=true&resourceVersion=999")
    info = request.parse("GET", "/api/v1/services", q, {})
    assert info.label_selector == "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
    assert info.field_selector == "spec.clusterIP!=None"
    assert info.fields.canonical() == "spec.clusterIP!=None"
    assert not info.labels.matches({"service.kubernetes.io/headless": ""})
    assert (info.limit, info.resource_version, info.continue_, info.timeout_seconds, info.timeout) == (
        500, "0", "abc=", 309, "5m9s")  # the first of repeated parameters wins, as url.Values.Get
    assert info.allow_watch_bookmarks and info.send_initial_events is None and info.resource_version_match is None
    assert info.param("timeout") == "5m9s" and info.param("nope") is None


def test_plus_is_a_space_in_the_query_but_not_in_the_path():
    info = request.parse("GET", "/api/v1/namespaces/a+b/pods", "labelSelector=a+in+(x,y)", {})
    assert info.namespace == "a+b" and info.labels.canonical() == "a in (x,y)"


def test_path_with_query_attached_is_split():
    info = request.parse("GET", "/api/v1/pods?watch=true&resourceVersion=5", "", {})
    assert info.verb == "watch" and info.resource_version == "5"


def test_empty_values_are_unset():
    info = request.parse("GET", "/api/v1/pods", "resourceVersion=&continue=&labelSelector=", {})
    assert info.resource_version is None and info.continue_ is None and info.labels.empty


def test_list_options_of_other_verbs_are_not_validated():
    info = request.parse("GET", "/api/v1/namespaces/edge/pods/p1", "limit=abc&resourceVersion=0&labelSelector=,", {})
    assert info.verb == "get" and info.limit is None and info.resource_version == "0"


_422 = 'ListOptions.meta.k8s.io "" is invalid: '
INVALID = [
    ("/api/v1/pods", "limit=abc", errors.InvalidRequest, 400, 'strconv.ParseInt: parsing "abc": invalid syntax'),
    ("/api/v1/pods", "limit=", errors.InvalidRequest, 400, 'strconv.ParseInt: parsing "": invalid syntax'),
    ("/api/v1/pods", "limit=1.5", errors.InvalidRequest, 400, 'strconv.ParseInt: parsing "1.5": invalid syntax'),
    ("/api/v1/pods", "limit=99999999999999999999", errors.InvalidRequest, 400,
     'strconv.ParseInt: parsing "99999999999999999999": value out of range'),
    ("/api/v1/pods", "watch=1&timeoutSeconds=5m", errors.InvalidRequest, 400,
     'strconv.ParseInt: parsing "5m": invalid syntax'),
    ("/api/v1/pods", "limit=x&timeoutSeconds=y", errors.InvalidRequest, 400,
     'strconv.ParseInt: parsing "y": invalid syntax'),  # timeoutSeconds converts before limit
    ("/api/v1/pods", "labelSelector=a%3Db%20c", errors.InvalidSelector, 400,
     "found 'c', expected: ',' or 'end of string'"),
    ("/api/v1/pods", "fieldSelector=spec.foo%3Dx", errors.UnsupportedField, 400,
     "field label not supported: spec.foo"),
    ("/api/v1/configmaps", "fieldSelector=data.x%3Dy", errors.UnsupportedField, 400,
     '"data.x" is not a known field selector: only "metadata.name", "metadata.namespace"'),
    ("/api/v1/pods", "labelSelector=%zz", errors.InvalidRequest, 400, 'invalid URL escape "%zz"'),
    ("/api/v1/pods", "labelSelector=a%2", errors.InvalidRequest, 400, 'invalid URL escape "%2"'),
    ("/api/v1/pods", "labelSelector=%FF", errors.InvalidRequest, 400, "invalid UTF-8 in query parameter labelSelector"),
    ("/api/v1/pods", "limit=1;watch=1", errors.InvalidRequest, 400, "invalid semicolon separator in query"),
    ("/api/v1/namespaces/%zz/pods", "", errors.InvalidRequest, 400, 'invalid URL escape "%zz"'),
    ("/api/v1/watch", "", errors.InvalidRequest, 400, "unable to determine kind and namespace from url, /api/v1/watch"),
    ("/api/v1/pods", "resourceVersionMatch=NotOlderThan", errors.InvalidOptions, 422,
     _422 + "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"),
    ("/api/v1/pods", "resourceVersion=5&resourceVersionMatch=Exact&continue=x", errors.InvalidOptions, 422,
     _422 + "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided"),
    ("/api/v1/pods", "resourceVersion=0&resourceVersionMatch=Exact", errors.InvalidOptions, 422,
     _422 + 'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"'),
    ("/api/v1/pods", "resourceVersion=1&resourceVersionMatch=Newest", errors.InvalidOptions, 422,
     _422 + 'resourceVersionMatch: Unsupported value: "Newest": supported values: "Exact", "NotOlderThan", ""'),
    ("/api/v1/pods", "resourceVersionMatch=Exact&continue=x", errors.InvalidOptions, 422,
     _422 + "[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided, "
     "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided]"),
    ("/api/v1/pods", "sendInitialEvents=true", errors.InvalidOptions, 422,
     _422 + "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"),
    ("/api/v1/pods", "watch=1&sendInitialEvents=true", errors.InvalidOptions, 422,
     _422 + "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to "
     "NotOlderThan"),
    ("/api/v1/pods", "watch=1&resourceVersionMatch=NotOlderThan", errors.InvalidOptions, 422,
     _422 + "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents "
     "is provided"),
    ("/api/v1/pods", "watch=1&sendInitialEvents=1&resourceVersionMatch=Exact", errors.InvalidOptions, 422,
     _422 + "[resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to "
     'NotOlderThan, resourceVersionMatch: Unsupported value: "Exact": supported values: "NotOlderThan"]'),
]


@pytest.mark.parametrize(("path", "query", "kind", "code", "message"), INVALID)
def test_invalid_requests_fail_as_the_server_fails_them(path, query, kind, code, message):
    with pytest.raises(kind) as e:
        request.parse("GET", path, query, {})
    assert str(e.value) == message and e.value.status == code


def test_invalid_options_carry_field_causes():
    with pytest.raises(errors.InvalidOptions) as e:
        request.parse("GET", "/api/v1/pods", "resourceVersionMatch=Exact", {})
    assert e.value.causes == [{"reason": "FieldValueForbidden", "field": "resourceVersionMatch",
                               "message": "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is "
                                          "provided"}]
    assert (e.value.kind, e.value.group, e.value.reason) == ("ListOptions", "meta.k8s.io", "Invalid")


def test_valid_option_combinations():
    ok = ["resourceVersion=304&resourceVersionMatch=Exact", "resourceVersion=0&resourceVersionMatch=NotOlderThan",
          "limit=500&resourceVersion=0", "limit=10&continue=abc",
          "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
          "watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&resourceVersion=5"]
    for q in ok:
        request.parse("GET", "/api/v1/pods", q, {})
    info = request.parse("GET", "/api/v1/pods", ok[-1], {})
    assert info.watch and info.send_initial_events is False and not info.watch_list


def test_custom_resource_field_selectors_are_parsed_not_judged():
    info = request.parse("GET", "/apis/example.com/v1/widgets", "fieldSelector=spec.color%3Dred", {})
    assert info.fields.canonical() == "spec.color=red"
    with pytest.raises(errors.UnsupportedField):  # a built-in group is judged
        request.parse("GET", "/apis/apps/v1/deployments", "fieldSelector=spec.color%3Dred", {})
    info = request.parse("GET", "/apis/apps/v1/replicasets", "fieldSelector=status.replicas%3D0", {})
    assert info.fields.canonical() == "status.replicas=0"


def test_legacy_field_alias_is_converted():
    info = request.parse("GET", "/api/v1/pods", "fieldSelector=spec.host%3Dedge-1", {})
    assert info.field_selector == "spec.host=edge-1" and info.fields.canonical() == "spec.nodeName=edge-1"


# --- Accept and negotiation -------------------------------------------------------------------------------------------

def test_accept_preference_order():
    got = request.parse_accept("text/html;q=0.5, */*;q=0.1, application/json;q=0.9, application/*, "
                               "application/vnd.kubernetes.protobuf")
    assert [str(m) for m in got] == ["application/vnd.kubernetes.protobuf", "application/*", "application/json",
                                     "text/html", "*/*"]
    assert [m.q for m in got] == [1.0, 1.0, 0.9, 0.5, 0.1]
    assert [str(m) for m in request.parse_accept("*/*, application/json")] == ["application/json", "*/*"]
    assert [str(m) for m in request.parse_accept("*")] == ["*/*"]
    assert request.parse_accept("application/json;q=x")[0].q == 0.0
    assert request.parse_accept("bogus, a/b/c") == ()


def test_accept_parameters():
    table = request.parse_accept(KUBECTL_ACCEPT)
    assert [(m.encoding, m.as_, m.group, m.version) for m in table] == [
        ("json", "Table", "meta.k8s.io", "v1"), ("json", "Table", "meta.k8s.io", "v1beta1"), ("json", "", "", "")]
    meta = request.parse_accept(METADATA_LIST_ACCEPT)
    assert [(m.encoding, m.as_) for m in meta] == [("protobuf", "PartialObjectMetadataList"),
                                                   ("json", "PartialObjectMetadataList"), ("json", "")]
    watch = request.parse_accept("application/vnd.kubernetes.protobuf;stream=watch")[0]
    assert watch.stream == "watch" and watch.encoding == "protobuf"
    assert request.parse_accept("*/*")[0].encoding is None


# (method, path?query, Accept, Representation or the 406 message)
NEGOTIATION = [
    ("GET", "/api/v1/pods", "", request.Representation("json")),
    ("GET", "/api/v1/pods", "*/*", request.Representation("json")),
    ("GET", "/api/v1/pods", "application/*", request.Representation("json")),
    ("GET", "/api/v1/pods", KUBELET_ACCEPT, request.Representation("protobuf")),
    ("GET", "/api/v1/pods", "application/vnd.kubernetes.protobuf,application/json",
     request.Representation("protobuf")),
    ("GET", "/api/v1/pods", "application/json, application/vnd.kubernetes.protobuf",
     request.Representation("json")),
    ("GET", "/api/v1/pods", "application/json;q=0.5, application/vnd.kubernetes.protobuf",
     request.Representation("protobuf")),
    ("GET", "/api/v1/pods", "application/yaml, application/json", request.Representation("json")),
    ("GET", "/api/v1/pods", KUBECTL_ACCEPT, request.Representation("json")),
    ("GET", "/api/v1/pods", "application/json;as=Table;v=v1;g=meta.k8s.io", request.Representation("json")),
    ("GET", "/api/v1/pods?watch=1", KUBECTL_ACCEPT, request.Representation("json")),
    ("GET", "/api/v1/pods", "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json",
     request.Representation("json")),  # Table has no protobuf form: the clause is skipped
    ("GET", "/api/v1/pods", METADATA_LIST_ACCEPT, request.Representation("protobuf", "PartialObjectMetadataList")),
    ("GET", "/api/v1/pods", METADATA_LIST_ACCEPT.split(",", 1)[1],
     request.Representation("json", "PartialObjectMetadataList")),
    ("GET", "/api/v1/namespaces/edge/pods/p1", METADATA_ACCEPT,
     request.Representation("protobuf", "PartialObjectMetadata")),
    ("GET", "/api/v1/pods?watch=true", METADATA_ACCEPT, request.Representation("protobuf", "PartialObjectMetadata")),
    ("GET", "/api/v1/pods", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1beta1",
     request.Representation("json", "PartialObjectMetadataList")),
    ("GET", "/api/v1/pods", "application/json;as=Foo;g=meta.k8s.io;v=v1, application/vnd.kubernetes.protobuf",
     request.Representation("protobuf")),
    ("GET", "/api/v1/pods", "application/json;as=Table;g=example.com;v=v1, application/vnd.kubernetes.protobuf",
     request.Representation("protobuf")),
    ("GET", "/api/v1/pods?watch=1", "application/vnd.kubernetes.protobuf;stream=watch",
     request.Representation("protobuf")),
    ("GET", "/api/v1/pods?watch=1", "application/json;stream=chunks, application/vnd.kubernetes.protobuf",
     request.Representation("protobuf")),
    ("GET", "/apis", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
     request.Representation("json", "APIGroupDiscoveryList")),
    ("GET", "/version", "application/json", request.Representation("json")),
    ("GET", "/api/v1/pods", "application/yaml",
     "only the following media types are accepted: application/json, application/yaml, "
     "application/vnd.kubernetes.protobuf"),
    ("GET", "/api/v1/pods", "text/html", "only the following media types are accepted: application/json, "
                                         "application/yaml, application/vnd.kubernetes.protobuf"),
    ("GET", "/api/v1/pods", METADATA_ACCEPT,
     "you requested PartialObjectMetadata, but the requested object is a list"),
    ("GET", "/api/v1/namespaces/edge/pods/p1", METADATA_LIST_ACCEPT,
     "you requested PartialObjectMetadataList, but the requested object is not a list"),
]


@pytest.mark.parametrize(("method", "uri", "accept", "expected"), NEGOTIATION)
def test_negotiation(method, uri, accept, expected):
    info = request.parse(method, uri, "", {"Accept": accept} if accept else {})
    if isinstance(expected, str):
        with pytest.raises(errors.NotAcceptable) as e:
            request.negotiate(info)
        assert str(e.value) == expected and e.value.status == 406
    else:
        assert request.negotiate(info) == expected


def test_content_types():
    assert request.Representation("protobuf").content_type(watch=True) == "application/vnd.kubernetes.protobuf;" \
                                                                         "stream=watch"
    assert request.Representation("protobuf", "PartialObjectMetadataList").content_type() == (
        "application/vnd.kubernetes.protobuf")
    assert request.Representation("json").content_type(watch=True) == "application/json"


# --- clients ----------------------------------------------------------------------------------------------------------

CLIENTS = [
    ("kubelet/v1.30.0 (linux/amd64) kubernetes/7c48c2b", "kubelet"),
    ("kube-proxy/v1.32.0 (linux/amd64) kubernetes/cd13ec4", "kube-proxy"),
    ("hollow-kubelet", "kubelet"),
    ("hollow-proxy", "kube-proxy"),
    ("coredns/v0.0.0 (linux/amd64) kubernetes/abcdef0", "coredns"),
    ("CoreDNS/1.12.1 git_commit:1234567 (linux/amd64/go1.23.4)", "coredns"),
    ("kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46", "kubectl"),
    ("OpenAPI-Generator/31.0.0/python", "openapi-generator"),
    ("curl/8.5.0", "curl"),
    ("Go-http-client/2.0", "go-http-client"),
    ("my tool", "my"),
    ("", ""),
]


@pytest.mark.parametrize(("ua", "component"), CLIENTS)
def test_component_from_user_agent(ua, component):
    assert request.client_from_headers({"User-Agent": ua}).component == component
    assert request.parse("GET", "/version", "", {"user-agent": ua}).client.component == component


def test_aliases_extend_the_defaults():
    headers = {"User-Agent": "edge-kubelet/v1.30.0 (linux/arm64) kubernetes/x"}
    assert request.client_from_headers(headers).component == "edge-kubelet"
    info = request.parse("GET", "/api/v1/pods", "", headers, aliases={"edge-kubelet": "kubelet"})
    assert info.client.component == "kubelet"
    assert request.client_from_headers({"User-Agent": "hollow-kubelet"}, {"x": "y"}).component == "kubelet"


def test_identity_is_a_hash_of_the_bearer_token():
    token = "eyJhbGciOiJSUzI1NiJ9.payload.sig"
    want = hashlib.sha256(token.encode()).hexdigest()[:16]
    client = request.client_from_headers({"User-Agent": "coredns/v0.0.0", "Authorization": f"Bearer {token}"})
    assert client == request.Client("coredns", want) and client.key == f"coredns@{want}" and len(want) == 16
    assert request.client_from_headers({"authorization": f"bearer  {token} "}).identity == want
    assert request.client_from_headers({"Authorization": "Basic dXNlcjpwdw=="}).identity == ""
    assert request.client_from_headers({"Authorization": "Bearer "}).identity == ""
    assert request.Client("kubelet").key == "kubelet"


# --- robustness -------------------------------------------------------------------------------------------------------

PATH_PIECES = hs.sampled_from(["api", "apis", "v1", "apps", "namespaces", "edge", "pods", "p1", "watch", "proxy",
                               "status", "exec", "", "%2F", "%zz", "..", "a b"])
QUERY_PIECES = hs.sampled_from(["watch", "limit", "labelSelector", "fieldSelector", "resourceVersion",
                                "resourceVersionMatch", "continue", "timeoutSeconds", "sendInitialEvents",
                                "allowWatchBookmarks", "x"])


@settings(max_examples=400, deadline=None)
@given(method=hs.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "get", "BREW"]),
       path=hs.one_of(hs.text(max_size=40), hs.lists(PATH_PIECES, max_size=8).map(lambda p: "/" + "/".join(p))),
       query=hs.one_of(hs.text(max_size=40), hs.lists(hs.tuples(QUERY_PIECES, hs.text(max_size=12)), max_size=5)
                       .map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))),
       accept=hs.text(max_size=40), ua=hs.text(max_size=20), auth=hs.text(max_size=20))
def test_arbitrary_requests_parse_or_fail_with_a_kube_error(method, path, query, accept, ua, auth):
    try:
        info = request.parse(method, path, query, {"Accept": accept, "User-Agent": ua, "Authorization": auth})
    except errors.KubeError:
        return
    try:
        rep = request.negotiate(info)
    except errors.NotAcceptable:
        return
    assert rep.encoding in ("json", "protobuf")
