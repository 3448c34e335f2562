"""`edgeproxy kubeconfig`: write the kubeconfig that points one component at the local proxy (or the proxy upstream).

Which listener a component gets follows from how client-go sends credentials: only to https:// servers.
- kubelet → the HTTPS listener (https://127.0.0.1:10268) with its own client certificate (kubelet's rotating
  /var/lib/kubelet/pki/kubelet-client-current.pem, as in its kubeadm kubeconfig) and the proxy's CA. The proxy checks
  the certificate against the cluster CA and its name against system:node:<node>, then goes upstream with the node's
  identity (guard/trust.py). `--server http://127.0.0.1:10261` writes the old, credential-less set-up for the plain
  listener, which acts as the node only with `serve --plain-as-node on` (anyone on the host is then the node).
- kube-proxy, coredns, any other in-cluster client → the HTTPS listener (https://127.0.0.1:10268) with its own
  ServiceAccount token (tokenFile, re-read by client-go as the kubelet rotates it) and the proxy's CA. Over plain
  HTTP client-go would drop the token, the request would reach the API server as the node, and the per-identity
  cache would be keyed wrongly; so these must use HTTPS.
- upstream → the kubeconfig `edgeproxy serve --kubeconfig` reads: the API server, the cluster CA and the node's
  client certificate as copied for the edgeproxy user by edgeproxy-credentials.service.

Boundary: writes files, talks to nobody. The documents are plain dicts; YAML is emitted by hand (JSON-quoted
scalars are valid YAML), so the service needs no YAML library. Neighbours: install.py writes kubelet's at install time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HTTP_SERVER = "http://127.0.0.1:10261"
HTTPS_SERVER = "https://127.0.0.1:10268"
PROXY_CA = "/etc/edgeproxy/pki/ca.crt"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
UPSTREAM_CA = "/var/lib/edgeproxy/pki/ca.crt"
UPSTREAM_CLIENT_CERT = "/var/lib/edgeproxy/pki/client.pem"
KUBELET_CLIENT_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"  # kubelet rotates it; holds the key too


def build(
    component: str,
    *,
    server: str | None = None,
    certificate_authority: str | None = None,
    embed_ca: bool = False,
    token_file: str = SA_TOKEN,
    client_certificate: str | None = None,
    client_key: str | None = None,
) -> dict[str, Any]:
    """The kubeconfig document for `component` as a dict."""
    component = component.strip()
    if not component:
        raise ValueError("component must not be empty")
    cluster: dict[str, Any] = {}
    user: dict[str, Any] = {}
    if component == "kubelet":
        cluster["server"] = server or HTTPS_SERVER
        if cluster["server"].startswith("https://"):
            _set_ca(cluster, certificate_authority or PROXY_CA, embed_ca)
            user["client-certificate"] = client_certificate or KUBELET_CLIENT_CERT
            user["client-key"] = client_key or user["client-certificate"]
    elif component == "upstream":
        if not server:
            raise ValueError("--component upstream needs --server (the API server, as in /etc/kubernetes/kubelet.conf)")
        cluster["server"] = server
        _set_ca(cluster, certificate_authority or UPSTREAM_CA, embed_ca)
        user["client-certificate"] = client_certificate or UPSTREAM_CLIENT_CERT
        user["client-key"] = client_key or user["client-certificate"]  # kubelet's pem holds both
    else:
        cluster["server"] = server or HTTPS_SERVER
        _set_ca(cluster, certificate_authority or PROXY_CA, embed_ca)
        user["tokenFile"] = token_file
    if cluster["server"].startswith("http://") and user:
        raise ValueError("client-go sends no credentials to an http:// server; use https:// for this component")
    name = "edgeproxy" if component != "upstream" else "upstream"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": component, "user": user}],
        "contexts": [{"name": component, "context": {"cluster": name, "user": component}}],
        "current-context": component,
        "preferences": {},
    }


def _set_ca(cluster: dict[str, Any], path: str, embed: bool) -> None:
    if embed:
        cluster["certificate-authority-data"] = base64.b64encode(Path(path).read_bytes()).decode()
    else:
        cluster["certificate-authority"] = path


def to_yaml(doc: Any, indent: int = 0) -> str:
    """Block-style YAML for the dict/list/str/int shapes a kubeconfig has."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, dict) and value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent + 2))
            elif isinstance(value, list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent))
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
    elif isinstance(doc, list):
        for value in doc:
            body = to_yaml(value, indent + 2) if isinstance(value, dict | list) else f"{pad}  {_scalar(value)}"
            lines.append(f"{pad}- {body.lstrip()}")
    else:
        lines.append(f"{pad}{_scalar(doc)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value))


def write(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` atomically (temp file, fsync, rename): a reader never sees half a kubeconfig."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render(component: str, **kwargs: Any) -> str:
    return f"# written by `edgeproxy kubeconfig --component {component}`\n" + to_yaml(build(component, **kwargs)) + "\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--component", required=True,
                        help="kubelet (HTTPS with its own client certificate), kube-proxy, coredns or any NAME (HTTPS "
                             "with its ServiceAccount token), or upstream (what `serve --kubeconfig` reads)")
    parser.add_argument("--server", help=f"URL to write (default {HTTPS_SERVER}; required for upstream; "
                                         f"kubelet with {HTTP_SERVER}: no credentials, for `serve --plain-as-node on`)")
    parser.add_argument("--certificate-authority", "--ca-file", dest="certificate_authority",
                        help=f"CA file to trust (default {PROXY_CA}: the proxy's own CA; for upstream {UPSTREAM_CA})")
    parser.add_argument("--embed-ca", action="store_true", help="inline the CA as certificate-authority-data")
    parser.add_argument("--token-file", default=SA_TOKEN, help="bearer token file for HTTPS components")
    parser.add_argument("--client-certificate", default=None,
                        help=f"kubelet: its client certificate (default {KUBELET_CLIENT_CERT}); upstream: the node's "
                             f"as copied for the proxy (default {UPSTREAM_CLIENT_CERT})")
    parser.add_argument("--client-key", help="its key (default: the certificate file, which holds both)")
    parser.add_argument("--out", help="file to write (atomically); default stdout")


def run(args: argparse.Namespace) -> int:
    try:
        text = render(args.component, server=args.server, certificate_authority=args.certificate_authority,
                      embed_ca=args.embed_ca, token_file=args.token_file,
                      client_certificate=args.client_certificate, client_key=args.client_key)
    except (ValueError, OSError) as e:
        print(f"edgeproxy kubeconfig: {e}", file=sys.stderr)
        return 2
    if args.out:
        write(args.out, text)
    else:
        sys.stdout.write(text)
    return 0
