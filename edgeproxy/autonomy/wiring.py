"""Wiring of the offline side: opens the cache, the writer and the token book, and builds the proxy's two hooks.

`hooks(config, upstream)` returns (record.Recorder, local.Local) for edgeproxy.server's `cache_hooks`: the recorder
tees upstream answers into the cache, the local side answers from it and hears the upstream's online/offline
changes. The node's name (for recognising the node agent and minting tokens) comes from config.node_name when set,
else from the kubeconfig's client certificate (CN system:node:<name>). Neighbours: server (calls hooks), record,
local, tokens, cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cache import store, writer
from edgeproxy.autonomy import local, record, tokens
from edgeproxy.guard import trust

log = logging.getLogger(__name__)

def node_name(config: Any, creds: Any) -> str | None:
    """This node's name (guard.trust.node_name): config.node_name, else the client certificate's CN, else None."""
    return trust.node_name(config, creds)


def hooks(config: Any, up: Any) -> tuple[record.Recorder, local.Local]:
    """Open the cache under config.cache_dir and return (recorder, local side), wired to the upstream's state."""
    cache_dir = Path(config.cache_dir)
    st = store.Store.open(str(cache_dir), map_size=int(getattr(config, "cache_map_size", 0) or store.DEFAULT_MAP_SIZE))
    w = writer.Writer(st, max_pending_bytes=int(getattr(config, "cache_write_queue", 0) or 32 << 20)).start()
    node = node_name(config, getattr(up, "credentials", None))
    book = tokens.TokenBook(cache_dir / "tokens", node=node or "unknown")
    rec = record.Recorder(w, tokens=book, owns_writer=True,
                          max_pending_bytes=int(getattr(config, "record_queue", 0) or record.MAX_PENDING_BYTES))
    loc = local.Local(st, w, tokens=book, node=node,
                      bookmark_interval=float(getattr(config, "bookmark_interval", 0) or local.BOOKMARK_INTERVAL),
                      is_online=lambda: bool(up.online),
                      body_cache_bytes=int(getattr(config, "offline_body_cache", local.BODY_CACHE_BYTES)))
    up.on_change(loc.upstream_changed)
    log.info("offline side ready: cache %s (%d views), node %s", cache_dir, len(st.views()), node or "unknown")
    return rec, loc
