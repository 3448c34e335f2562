"""What a follower takes from its pool leader: requests classified by kube.request, judged by pool.policy."""

from __future__ import annotations

import collections
import pathlib
import re

import pytest

from edgeproxy.kube import request
from edgeproxy.pool import errors, policy

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
LOG_LINE = re.compile(r'^\S+ \S+ "([A-Z]+)" "([^"]*)" \d+ "[^"]*" "([^"]*)"')
NODE = {"User-Agent": "kubelet/v1.37.2 (linux/amd64) kubernetes/abc"}
PROXY = {"User-Agent": "kube-proxy/v1.37.2 (linux/amd64) kubernetes/abc"}
POD_TOKEN = {**PROXY, "Authorization": "Bearer eyJhbGciOi.pod.token"}


DEFAULT = policy.Policy()


def judge(method: str, url: str, headers=NODE, p: policy.Policy = DEFAULT, **kw) -> policy.Decision:
    return p.decide(request.parse(method, url, "", headers), **kw)


@pytest.mark.parametrize("url", [
    "/api/v1/services?limit=500&resourceVersion=0",
    "/api/v1/services?allowWatchBookmarks=true&resourceVersion=3&timeout=7m&timeoutSeconds=420&watch=true",
    "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name",
    "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless",
    "/apis/discovery.k8s.io/v1/endpointslices?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
    "&resourceVersionMatch=NotOlderThan",
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
    "/api/v1/namespaces/default/services/kubernetes",
    "/apis/node.k8s.io/v1/runtimeclasses?watch=true",
    "/apis/storage.k8s.io/v1/csidrivers?limit=500",
])
def test_the_reads_every_node_makes_are_taken_from_the_leader(url):
    d = judge("GET", url)
    assert d.shared, d.reason


@pytest.mark.parametrize(("url", "reason"), [
    ("/api/v1/namespaces/kube-system/secrets?fieldSelector=metadata.name%3Dcoredns-token", "secrets are identity-"),
    ("/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt", "configmaps are identity-specific"),
    ("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1", "pods are identity-specific"),
    ("/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1&watch=true", "nodes are identity-specific"),
    ("/api/v1/nodes/edge-1", "nodes are identity-specific"),
    ("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1", "leases.coordination.k8s.io are"),
    ("/apis/storage.k8s.io/v1/csinodes/edge-1", "csinodes.storage.k8s.io are identity-specific"),
    ("/api/v1/namespaces/default/serviceaccounts/default", "serviceaccounts are identity-specific"),
    ("/api/v1/persistentvolumes/pv-1", "persistentvolumes are identity-specific"),
    ("/api/v1/namespaces", "namespaces are not pool-scoped"),
    ("/apis/apps/v1/deployments", "deployments.apps are not pool-scoped"),
    ("/version", "not a resource request"),
    ("/apis/discovery.k8s.io/v1", "not a resource request"),
])
def test_identity_specific_and_other_reads_go_to_the_api_server(url, reason):
    d = judge("GET", url)
    assert not d.shared
    assert reason in d.reason


def test_a_token_request_is_never_shared():
    d = judge("POST", "/api/v1/namespaces/kube-system/serviceaccounts/coredns/token")
    assert not d.shared and "serviceaccounts are identity-specific" in d.reason


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_of_pool_scoped_resources_go_to_the_api_server(method):
    url = "/api/v1/namespaces/default/services" + ("" if method == "POST" else "/web")
    d = judge(method, url)
    assert not d.shared and "is not a read" in d.reason


def test_a_subresource_is_not_shared():
    d = judge("GET", "/api/v1/namespaces/default/services/web/status")
    assert not d.shared and "status subresource" in d.reason
    d = judge("GET", "/api/v1/namespaces/default/services/web/proxy/healthz")
    assert not d.shared


def test_requests_with_their_own_credentials_are_shared_only_when_the_operator_says_so():
    d = judge("GET", "/api/v1/services?watch=true", POD_TOKEN)
    assert not d.shared and "own credentials" in d.reason
    assert judge("GET", "/api/v1/services?watch=true", POD_TOKEN, policy.Policy(tokens=True)).shared
    d = judge("GET", "/api/v1/services", NODE, impersonating=True)
    assert not d.shared and "impersonation" in d.reason


def test_a_configured_set_replaces_the_default():
    p = policy.Policy(policy.parse_resources("endpointslices.discovery.k8s.io, namespaces"))
    assert judge("GET", "/api/v1/namespaces?watch=true", p=p).shared
    assert judge("GET", "/apis/discovery.k8s.io/v1/endpointslices", p=p).shared
    assert not judge("GET", "/api/v1/services", p=p).shared


@pytest.mark.parametrize("value", ["secrets", "services,configmaps", "leases.coordination.k8s.io", "pods"])
def test_configuration_can_never_share_identity_specific_resources(value):
    with pytest.raises(errors.ConfigError, match=r"can never include .* identity-specific"):
        policy.parse_resources(value)


@pytest.mark.parametrize("value", ["", "services,", "Services", "end points", "/api/v1/services"])
def test_a_malformed_resource_list_is_refused_clearly(value):
    with pytest.raises(errors.ConfigError, match=r"is not resource\[\.group\]"):
        policy.parse_resources(value)


def test_of_a_real_nodes_traffic_only_the_pool_scoped_reads_are_shared():
    """The hollow kubelet and kube-proxy traces (tests/fixtures/traces): what the leader would serve."""
    shared, direct = collections.Counter(), collections.Counter()
    for log in sorted((FIXTURES / "traces").glob("*.log")):
        for line in log.read_text().splitlines():
            method, uri, ua = LOG_LINE.match(line).groups()
            info = request.parse(method, uri, "", {"User-Agent": ua})
            (shared if policy.Policy().decide(info).shared else direct)[(info.verb, info.resource)] += 1
    assert set(shared) == {("list", "services"), ("watch", "services"), ("list", "endpointslices"),
                           ("watch", "endpointslices"), ("list", "csidrivers"), ("watch", "csidrivers"),
                           ("list", "runtimeclasses"), ("watch", "runtimeclasses")}
    assert {r for _, r in direct} >= {"pods", "nodes", "leases", "secrets", "configmaps", "serviceaccounts", "csinodes"}
