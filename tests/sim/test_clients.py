"""Real clients against the simulator over TLS with client certificates: the `kubernetes` Python client lists and
watches pods; the `edgeproxy sim` command starts, writes kubeconfigs and serves them."""

from __future__ import annotations

import asyncio
import json
import os
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
