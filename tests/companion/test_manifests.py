"""deploy/companion: the manifests an operator applies agree with the command and hold the promises (fail open,
a timeout, least privilege)."""

import argparse
from pathlib import Path

import yaml

from edgeproxy.companion import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "companion" / "companion.yaml"
DOCS = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d]


def one(kind, name="edgeproxy-companion"):
    [doc] = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def args():
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    parser = argparse.ArgumentParser()
    main.configure(parser)
    assert container["args"][0] == "companion"
    return parser.parse_args(container["args"][1:])


def test_webhook_fails_open_with_a_timeout_and_only_sees_pods_created_bound():
    [hook] = one("MutatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and 1 <= hook["timeoutSeconds"] <= 10
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert "spec.nodeName" in hook["matchConditions"][0]["expression"]
    svc = hook["clientConfig"]["service"]
    a = args()
    assert (svc["name"], svc["namespace"]) == (a.service, one("Service")["metadata"]["namespace"])
    assert a.webhook_config == one("MutatingWebhookConfiguration")["metadata"]["name"]


def test_rbac_is_least_privilege_and_matches_the_names_used():
    a = args()
    cluster = one("ClusterRole")["rules"]
    role = one("Role")["rules"]
    for rule in cluster + role:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    assert {v for r in cluster if r["resources"] == ["pods"] for v in r["verbs"]} == {"list", "watch", "patch"}
    assert {v for r in cluster if r["resources"] == ["nodes"] for v in r["verbs"]} == {"get", "list", "watch"}
    named = {(r["resources"][0], n) for r in cluster + role for n in r.get("resourceNames", ())}
    assert ("secrets", a.tls_secret) in named and ("leases", a.lease_name) in named
    assert ("mutatingwebhookconfigurations", a.webhook_config) in named
    # update/patch/get of Secrets and Leases only by name; create is namespaced (a create has no name to check)
    for r in role:
        assert "resourceNames" in r or r["verbs"] == ["create"]


def test_two_replicas_elect_a_leader():
    assert one("Deployment")["spec"]["replicas"] > 1 and args().leader_elect


def test_a_bad_kubeconfig_is_a_clear_error(tmp_path, caplog):
    parser = argparse.ArgumentParser()
    main.configure(parser)
    missing = tmp_path / "nope.kubeconfig"
    assert main.run(parser.parse_args(["--kubeconfig", str(missing)])) == 1
    assert "cannot read kubeconfig" in caplog.text
