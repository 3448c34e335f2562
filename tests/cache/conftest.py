from __future__ import annotations

import pytest

from cache import store, writer


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


@pytest.fixture
def opened(cache_dir):
    """(store, writer) over a fresh cache; closed at the end."""
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    yield st, w
    w.close()
    st.close()


def pods_key(encoding: str, client: str = "kubelet") -> store.ViewKey:
    return store.ViewKey(client, "", "v1", "pods", "", "", "spec.nodeName=edge-1", "", encoding)
