"""`edgeproxy cache ...`: ls, show, get (secrets redacted), stats, verify, purge, on a cache of recorded bytes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cache import store, writer
from edgeproxy import cli
from tests.cache import recorded
from tests.cache.conftest import pods_key

ROOT = Path(__file__).resolve().parents[2]
SECRETS = store.ViewKey("kubelet", "", "v1", "secrets", "edge", "", "", "", "json")


@pytest.fixture
def filled(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    for ext, enc in (("pb", "protobuf"), ("json", "json")):
        kind, av, rv, _, items = recorded.list_items(f"pods-edge1.list.{ext}.body")
        w.replace_view(pods_key(enc), store.ViewMeta(kind, av, rv, True), items)
    secret = json.loads(recorded.body("secret-db-credentials.get.json.body"))
    item = {k: v for k, v in secret.items() if k not in ("kind", "apiVersion")}
    w.replace_view(SECRETS, store.ViewMeta("SecretList", "v1", "300", True),
                   [store.Item("db-credentials", "edge", "209", {}, {}, json.dumps(item).encode())])
    w.put_object(store.ObjectKey("kubelet", "", "v1", "secrets", "edge", "db-credentials"),
                 recorded.body("secret-db-credentials.get.json.body"))
    w.put_blob("kubelet", "/version", recorded.body("version.json.body"))
    w.replace_view(pods_key("json", client="kubectl"), store.ViewMeta("PodList", "v1", "304", True), [])
    assert w.flush_sync(10)
    w.close()
    st.close()
    return cache_dir


def edgeproxy(capsys, *argv: str) -> tuple[int, str]:
    rc = cli.main(["cache", *argv])
    return rc, capsys.readouterr().out


def _id(cache_dir: str, key: store.ViewKey) -> str:
    return key.view_id().hex()[:12]


def test_ls_lists_views_objects_and_blobs(filled, capsys):
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "ls")
    assert rc == 0
    assert _id(filled, pods_key("protobuf")) in out and "spec.nodeName=edge-1" in out and "protobuf" in out
    assert "v1/secrets" in out and "/version" in out and "edge/db-credentials" in out
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "--json", "ls", "--client", "kubectl")
    doc = json.loads(out)
    assert [v["client"] for v in doc["views"]] == ["kubectl"] and doc["objects"] == [] and doc["blobs"] == []


def test_show_lists_a_views_objects(filled, capsys):
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "show", _id(filled, pods_key("protobuf"))[:6])
    assert rc == 0
    assert "PodList" in out and "304" in out and "db-0" in out and "app=db" in out
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "show", _id(filled, pods_key("json")), "--json")
    assert len(json.loads(out)["objects"]) == 15


def test_get_prints_an_object_and_redacts_secret_values(filled, capsys):
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "get", _id(filled, pods_key("json")), "edge/db-0")
    assert rc == 0 and json.loads(out)["object"]["metadata"]["name"] == "db-0"
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "get", _id(filled, SECRETS), "db-credentials")
    assert rc == 0
    doc = json.loads(out)
    assert set(doc["object"]["data"]) == {"password", "username"}
    secret = json.loads(recorded.body("secret-db-credentials.get.json.body"))
    for v in secret["data"].values():
        assert v not in out and base64.b64decode(v).decode() not in out
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "get", _id(filled, pods_key("protobuf")), "edge/nope")
    assert rc == 1


def test_stats_and_verify(filled, capsys):
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "--json", "stats")
    stats = json.loads(out)
    assert rc == 0 and stats["views"] == 4 and stats["items"] == 31 and stats["lists_replaced"] == 4
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "verify")
    assert rc == 0 and out.strip().endswith("ok")


def test_purge_one_client_then_all(filled, capsys):
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "purge", "--client", "kubectl")
    assert rc == 0 and "purged 1" in out
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "--json", "ls")
    assert {v["client"] for v in json.loads(out)["views"]} == {"kubelet"}
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "purge")
    rc, out = edgeproxy(capsys, "--cache-dir", filled, "--json", "stats")
    assert json.loads(out)["views"] == json.loads(out)["items"] == json.loads(out)["objects"] == 0


def test_no_cache_is_an_error_not_a_new_cache(tmp_path, capsys):
    rc = cli.main(["cache", "--cache-dir", str(tmp_path / "none"), "ls"])
    assert rc == 2 and not (tmp_path / "none").exists()


def test_purge_under_a_list_being_assembled_does_not_make_a_partial_view(cache_dir, capsys):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    key = pods_key("protobuf")
    kind, av, rv, _, page1 = recorded.list_items("pods-edge1.limit10.page1.pb.body")
    _, _, _, _, page2 = recorded.list_items("pods-edge1.limit10.page2.pb.body")
    asm = w.begin_list(key, kind, av)
    asm.add(page1)
    asm._ship()
    assert w.flush_sync(10)
    purge = subprocess.run([sys.executable, "-m", "edgeproxy", "cache", "--cache-dir", cache_dir, "purge"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)  # another process, meanwhile
    assert purge.returncode == 0, purge.stderr
    asm.add(page2)
    asm.commit(rv)
    assert w.flush_sync(10)
    assert st.view(key) is None and st.stats()["items"] == 0
    assert st.verify().ok
    w.close()
    st.close()
