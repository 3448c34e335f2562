"""Wiring of the offline side: opens the cache, the writer and the token book, and builds the proxy's two hooks.

`hooks(config, upstream)` returns (record.Recorder, local.Local) for edgeproxy.server's `cache_hooks`: the recorder
tees upstream answers into the cache, the local side answers from it and hears the upstream's online/offline
changes. The node's name (for recognising the node agent and minting tokens) comes from config.node_name when set,
else from the kubeconfig's client certificate (CN system:node:<name>). Neighbours: server (calls hooks), record,
local, tokens, cache.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from cache import store, writer
from edgeproxy import local, record, tokens

log = logging.getLogger(__name__)

NODE_PREFIX = "system:node:"


def node_name(config: Any, creds: Any) -> str | None:
    """This node's name: config.node_name, else the CN of the kubeconfig's client certificate, else None."""
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


def hooks(config: Any, up: Any) -> tuple[record.Recorder, local.Local]:
    """Open the cache under config.cache_dir and return (recorder, local side), wired to the upstream's state."""
    cache_dir = Path(config.cache_dir)
    st = store.Store.open(str(cache_dir), map_size=int(getattr(config, "cache_map_size", 0) or store.DEFAULT_MAP_SIZE))
    w = writer.Writer(st).start()
    node = node_name(config, getattr(up, "credentials", None))
    book = tokens.TokenBook(cache_dir / "tokens", node=node or "unknown")
    rec = record.Recorder(w, tokens=book, owns_writer=True)
    loc = local.Local(st, w, tokens=book, node=node,
                      bookmark_interval=float(getattr(config, "bookmark_interval", 0) or local.BOOKMARK_INTERVAL),
                      is_online=lambda: bool(up.online))
    up.on_change(loc.upstream_changed)
    log.info("offline side ready: cache %s (%d views), node %s", cache_dir, len(st.views()), node or "unknown")
    return rec, loc
