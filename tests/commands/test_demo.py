"""`edgeproxy demo` as a user runs it: a subprocess whose narration must show the story (list, watch events, the
offline answers, the return online), exit 0 and leave nothing behind. No timing assertions: the demo's own timings
vary with the machine."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy import sim as sim_pkg

pytest.importorskip("edgeproxy.server", reason="edgeproxy serve has not landed yet")

ROOT = Path(__file__).absolute().parents[2]
ANSI = re.compile(r"\x1b\[")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["TMPDIR"] = str(tmp)
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_demo_tells_the_online_offline_story(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "demo", "--fast", "--pods", "20"], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.splitlines()

    def line(pattern: str) -> int:
        """Index of the first line matching `pattern` (the story's order is checked with these)."""
        for i, text in enumerate(lines):
            if re.search(pattern, text):
                return i
        raise AssertionError(f"no line matches {pattern!r} in:\n{out}")

    online_list = line(r"LIST pods on node edge-1 → 200 from the API server: \d+ pods at resourceVersion \d+")
    added = line(r"watch +ADDED +edge/demo-web")
    relabelled = line(r"watch +MODIFIED +edge/demo-web .*tier=canary")
    deleted = line(r"watch +DELETED +edge/demo-web")
    recorded = line(r"cache +kubelet: view \"pods, spec.nodeName=edge-1\" → \d+ items at resourceVersion \d+, complete")
    down = line(r"simulator +down")
    offline = line(r"edgeproxy +OFFLINE")
    offline_list = line(r"LIST pods on node edge-1 → 200 from edgeproxy's cache: \d+ pods")
    assert "the same pods the client saw online" in lines[offline_list + 1]
    cached_watch = line(r"WATCH pods from resourceVersion \d+ → open, from edgeproxy's cache")
    bookmark = line(r"BOOKMARK at resourceVersion \d+ from edgeproxy's cache")
    lease = line(r"PUT its Lease → 200 from edgeproxy's cache")
    refused = line(r"POST a new pod → 503")
    online = line(r"edgeproxy +ONLINE")
    caught_up = line(r"watch +ADDED +edge/demo-late")
    assert online_list < added < relabelled < deleted < recorded < down
    assert down < min(offline, cached_watch) and max(offline, cached_watch) < offline_list
    assert down < bookmark < online and offline < lease < refused < online < caught_up
    assert any(re.search(r"LIST pods .* from the API server", t) for t in lines[caught_up:])

    # the list served offline is the list the client had: same count as online (the demo pod came and went)
    def count(i: int) -> int:
        m = re.search(r"(\d+) pods at", lines[i])
        assert m is not None
        return int(m.group(1))

    assert count(offline_list) == count(online_list)
    assert not ANSI.search(out), "colour only on a terminal"
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [], "the demo removes its temporary directory"


async def test_demo_against_a_cluster_is_read_only(tmp_path: Path) -> None:
    """--kubeconfig: edgeproxy in front of an existing API server (here a simulator), list + watch, nothing written."""
    async with sim_pkg.Simulator(pki_dir=tmp_path / "pki") as sim:
        kubeconfig = sim.kubeconfig(tmp_path / "admin.kubeconfig", user="admin")
        work = tmp_path / "work"
        work.mkdir()
        rv_before = sim.store.rv
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeproxy", "demo", "--fast", "--kubeconfig", str(kubeconfig), cwd=ROOT,
            env=_env(work), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        out: list[str] = []
        async with asyncio.timeout(60):
            async for raw in proc.stdout:
                out.append(raw.decode())
                if "WATCH pods from resourceVersion" in out[-1]:
                    break
            rv_watch = sim.store.rv
            sim.create("pods", {"metadata": {"name": "seen-by-the-demo", "namespace": "edge"},
                                "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
            rest, err = await proc.communicate()
        text = "".join(out) + rest.decode()
        assert proc.returncode == 0, text + err.decode()
        assert re.search(r"LIST pods in all namespaces → 200 from the API server: \d+ pods", text), text
        assert re.search(r"watch +ADDED +edge/seen-by-the-demo", text), text
        assert re.search(r"cache +edgeproxy-demo: view \"pods\" → \d+ items at .* complete", text), text
        assert rv_watch == rv_before, "the demo wrote nothing to the cluster"
        assert list(work.iterdir()) == []


def test_demo_help_names_the_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "demo", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=_env(Path("/tmp")))
    assert proc.returncode == 0
    for option in ("--kubeconfig", "--pods", "--keep-running", "--fast"):
        assert option in proc.stdout
