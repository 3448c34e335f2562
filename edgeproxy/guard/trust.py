"""Who may act as the node: the one decision behind every request that carries no bearer token of its own.

Such a request goes upstream with the node's client certificate and is answered offline from the node's cache, which
holds the Secrets and ConfigMaps of every pod on the node. kube-apiserver gives that identity to whoever holds the
node's key (root only on the host); the proxy must not lend it to anyone who can open a TCP connection to loopback
(any local user, any hostNetwork pod). So (issue 14, S2):

- on the HTTPS listener, a client certificate verified against the cluster CA (`--client-ca-file`) whose subject is
  `CN=system:node:<node>` (this node's name) acts as the node: kubelet's own client certificate, the one in its
  kubeconfig, which it keeps rotating;
- on the plain-HTTP listener, nobody, unless the operator chose it with `--plain-as-node on` (YurtHub's model:
  everything on the host that can reach 127.0.0.1:10261 is trusted as the node);
- anything else with no bearer token gets 401 Unauthorized, online and offline, and reaches nothing.

A request with its own bearer token is not the node and is not decided here: upstream the API server judges the
token, offline edgeproxy.identity decides whose cache it reads.

Boundary: reads the TLS peer certificate of the connection; no Kubernetes wire, no upstream. Neighbours: proxy.py
(asks `allows()` for every token-less request), server.py (builds it from the config and the node's name).
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from edgeproxy.guard import warn

log = logging.getLogger(__name__)

NODE_PREFIX = "system:node:"


def node_name(config: Any, creds: Any) -> str | None:
    """This node's name: config.node_name (or EDGEPROXY_NODE_NAME), else the CN of the upstream kubeconfig's client
    certificate (system:node:<name>), else None."""
    configured = getattr(config, "node_name", "") or os.environ.get("EDGEPROXY_NODE_NAME", "")
    if configured:
        return configured
    pem = getattr(creds, "cert_data", None)
    if pem is None and getattr(creds, "cert_file", None):
        try:
            pem = Path(creds.cert_file).read_bytes()
        except OSError:
            return None
    if not pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        cn = str(attr.value)
        if cn.startswith(NODE_PREFIX):
            return cn[len(NODE_PREFIX):]
    return None


def peer_common_name(peercert: dict[str, Any] | None) -> str:
    """The CN of a verified peer certificate as ssl.SSLObject.getpeercert() gives it ("" when none)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class NodeTrust:
    """`allows(transport)`: may a request on this connection, with no bearer token, act as the node?"""

    __slots__ = ("_verdicts", "node", "plain_as_node")

    def __init__(self, node: str | None, *, plain_as_node: bool = False) -> None:
        self.node = node  # this node's name; None: unknown, so no certificate can match it
        self.plain_as_node = plain_as_node
        # per TLS connection (its SSLObject), the verdict: getpeercert() builds a dict on every call
        self._verdicts: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    @property
    def user(self) -> str | None:
        return NODE_PREFIX + self.node if self.node else None

    def allows(self, transport: Any) -> bool:
        if transport is None:
            return False
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return self.plain_as_node
        verdict = self._verdicts.get(ssl_object)
        if verdict is None:
            # getpeercert() is non-empty only for a certificate the handshake verified against the client CA (with
            # no client CA loaded, CERT_NONE, it is always empty: nobody acts as the node)
            cn = peer_common_name(ssl_object.getpeercert())
            verdict = bool(self.node) and cn == self.user
            self._verdicts[ssl_object] = verdict
        return verdict

    def refusal_message(self, tls: bool) -> str:
        if tls:
            how = (f"present the client certificate of {self.user} (issued by the cluster CA)" if self.node
                   else "this node's name is unknown (set --node-name), so no certificate can act as the node")
        else:
            how = ("the plain-HTTP listener does not act as the node (use the HTTPS listener with the node's "
                   "client certificate, or run edgeproxy with --plain-as-node on)")
        return f"Unauthorized: a request without a bearer token acts as the node; {how}"

    def warn(self, peer: object, tls: bool) -> None:
        """One WARNING a minute at most (guard.warn): a hostile client must not fill the log."""
        warn.client_error("node-identity-refused", "a request without credentials from %s on the %s listener got "
                          "401: %s", peer, "HTTPS" if tls else "plain-HTTP", self.refusal_message(tls))
