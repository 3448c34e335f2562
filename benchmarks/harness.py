"""What every benchmark scenario shares: options, rows, the table, results.json, PNG plots, and child processes.

A scenario is a module `benchmarks/<name>.py` with `run(opts: Options) -> list[dict]`; each row is
{"scenario", "metric", "value", "unit"} plus optional "variant" (what was measured: direct, edgeproxy, nginx, ...),
"baseline" (a value to compare with) and "note". Scenarios end with `if __name__ == "__main__": harness.main(run)` so
`python -m benchmarks.<name>` runs one alone. Benchmarks report figures; they never assert speed.

Processes: `Process` starts a child (simulator, edgeproxy, nginx, load generator) and waits until a port accepts;
`loadgen()` runs benchmarks/loadgen.py in its own process and returns its JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    quick: bool = False  # smaller sizes and shorter runs: a smoke run, figures not for the README
    out: Path = RESULTS
    kubeconfig: str | None = None  # measure against a real API server instead of the simulator, where supported
    duration: float = 5.0  # seconds per throughput measurement
    work: Path | None = None  # a scratch directory for the run (certificates, configs, caches)


def row(scenario: str, metric: str, value: float | None, unit: str, **extra: object) -> dict[str, object]:
    return {"scenario": scenario, "metric": metric, "value": value, "unit": unit, **extra}


# ---- output ----
def table(rows: Sequence[dict[str, object]]) -> str:
    cols = ["scenario", "metric", "variant", "value", "unit", "baseline", "note"]
    cols = [c for c in cols if any(r.get(c) not in (None, "") for r in rows)]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join((x.rjust(w) if c in ("value", "baseline") else x.ljust(w))
                        for x, c, w in zip(cell, cols, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def write_results(rows: Sequence[dict[str, object]], out: Path) -> Path:
    """Merge rows into out/results.json: rows of the scenarios just run replace theirs, others are kept."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    try:
        old = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        old = []
    ran = {r["scenario"] for r in rows}
    merged = [r for r in old if r.get("scenario") not in ran] + list(rows)
    doc = {"machine": machine(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": merged}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def machine() -> dict[str, object]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0]}


def plot(rows: Sequence[dict[str, object]], out: Path) -> list[Path]:
    """One PNG per scenario: a bar chart per metric, bars per variant (or value vs baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == scenario and isinstance(r.get("value"), int | float)]
        metrics = list(dict.fromkeys(str(r["metric"]) for r in mine))
        if not metrics:
            continue
        ncols = min(4, len(metrics))
        nrows = -(-len(metrics) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.0, 3.4 * ncols), 3.4 * nrows), squeeze=False)
        flat = [ax for line in axes for ax in line]
        for ax in flat[len(metrics):]:
            ax.set_visible(False)
        for ax, metric in zip(flat, metrics, strict=False):
            rs = [r for r in mine if r["metric"] == metric]
            labels, values = [], []
            for r in rs:
                labels.append(str(r.get("variant") or "value"))
                values.append(float(r["value"]))  # type: ignore[arg-type]
                if isinstance(r.get("baseline"), int | float):
                    labels.append("baseline")
                    values.append(float(r["baseline"]))  # type: ignore[arg-type]
            colors = ["#4c72b0" if lab.startswith("edgeproxy") else "#999999" for lab in labels]
            ax.bar(range(len(values)), values, color=colors)
            ax.set_xticks(range(len(values)), labels, rotation=20, fontsize=8)
            ax.set_title(metric, fontsize=9)
            ax.set_ylabel(str(rs[0].get("unit", "")), fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
        fig.suptitle(scenario, fontsize=10)
        fig.tight_layout()
        path = out / f"{scenario}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(rows: Sequence[dict[str, object]], opts: Options) -> None:
    print(table(rows))
    path = write_results(rows, opts.out)
    pngs = plot(rows, opts.out)
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
          + "".join(f", {p.name}" for p in pngs))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=True)
    p.add_argument("--quick", action="store_true", help="small sizes, short runs (a smoke test, not figures)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per throughput measurement")
    p.add_argument("--kubeconfig", default=None, help="a real API server, for scenarios that support one")
    return p


def options(args: argparse.Namespace) -> Options:
    return Options(quick=args.quick, out=args.out, kubeconfig=args.kubeconfig,
                   duration=1.0 if args.quick and args.duration == 5.0 else args.duration)


def main(run: Callable[[Options], list[dict[str, object]]], argv: list[str] | None = None) -> int:
    """`python -m benchmarks.<name>`: run that one scenario, print and write its results."""
    opts = options(parser().parse_args(argv))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-") as tmp:
        report(run(dataclasses.replace(opts, work=Path(tmp))), opts)
    return 0


# ---- processes ----
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def process(argv: Sequence[str], *, port: int | None = None, log: Path | None = None,
            env: dict[str, str] | None = None, cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """A child process, stopped with SIGTERM (then SIGKILL) on exit; waits for `port` to accept first."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        if port is not None:
            wait_port(port, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process `pid` and its children (nginx's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def loadgen(url: str, *, concurrency: int = 1, duration: float | None = None, requests: int | None = None,
            watch_events: int | None = None, headers: Sequence[str] = (), cert: str | None = None,
            key: str | None = None, ca: str | None = None, timeout: float = 600, user_agent: str | None = None,
            prefix: Sequence[str] = ()) -> dict[str, object]:
    """Run benchmarks/loadgen.py in its own process and return its JSON result. `prefix` runs it elsewhere (e.g.
    `ip netns exec NS`)."""
    argv = [*prefix, sys.executable, "-m", "benchmarks.loadgen", url, "--concurrency", str(concurrency)]
    if user_agent:
        argv += ["--user-agent", user_agent]
    if duration is not None:
        argv += ["--duration", str(duration)]
    if requests is not None:
        argv += ["--requests", str(requests)]
    if watch_events is not None:
        argv += ["--watch-events", str(watch_events)]
    for h in headers:
        argv += ["--header", h]
    for flag, value in (("--cert", cert), ("--key", key), ("--ca", ca)):
        if value:
            argv += [flag, value]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


# ---- the simulator as a child process ----
@contextlib.contextmanager
def simulator(work: Path, *, pods: int = 0, nodes: int = 0, services: int = 0,
              endpointslices: int = 0) -> Iterator[tuple[str, Path]]:
    """The simulator in its own process, seeded: (https URL, PKI directory with ca/admin/node certificates)."""
    port = free_port()
    pki = work / "pki"
    argv = [sys.executable, "-m", "benchmarks.harness", "sim", "--port", str(port), "--pki", str(pki),
            "--pods", str(pods), "--nodes", str(nodes), "--services", str(services),
            "--endpointslices", str(endpointslices)]
    with process(argv, port=port, log=work / "sim.log"):
        yield f"https://127.0.0.1:{port}", pki


@contextlib.contextmanager
def simulator_h2(work: Path, *, pods: int = 0, max_streams: int = 100, http1: bool = False
                 ) -> Iterator[tuple[str, str, Path]]:
    """The simulator with its HTTP/2 face (edgeproxy.sim.h2front) in one child process: (https URL of the simulator,
    https URL of the front, PKI directory). The front presents the admin certificate to the simulator; it speaks h2
    only, or with `http1` also relays HTTP/1.1 (ALPN http/1.1 or none) through the same hop."""
    port, h2_port = free_port(), free_port()
    pki = work / "pki"
    argv = [sys.executable, "-m", "benchmarks.harness", "sim", "--port", str(port), "--pki", str(pki),
            "--pods", str(pods), "--h2-port", str(h2_port), "--h2-max-streams", str(max_streams),
            *(["--h2-http1"] if http1 else [])]
    with process(argv, port=h2_port, log=work / "sim.log"):
        yield f"https://127.0.0.1:{port}", f"https://127.0.0.1:{h2_port}", pki


def _sim_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness sim")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pki", required=True)
    p.add_argument("--h2-port", type=int, default=0, help="also serve HTTP/2 here (sim.h2front); 0: no")
    p.add_argument("--h2-max-streams", type=int, default=100)
    p.add_argument("--h2-http1", action="store_true", help="the h2 front also relays HTTP/1.1")
    for name in ("pods", "nodes", "services", "endpointslices"):
        p.add_argument(f"--{name}", type=int, default=0)
    args = p.parse_args(argv)

    async def serve() -> None:
        import asyncio

        from edgeproxy.sim.simulator import Simulator

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sim = Simulator(port=args.port, pki_dir=args.pki)
        sim.seed(pods=args.pods, nodes=args.nodes, services=args.services, endpointslices=args.endpointslices)
        async with sim:
            if args.h2_port:
                from edgeproxy.sim.h2front import H2Front

                front = H2Front(sim, port=args.h2_port, max_streams=args.h2_max_streams, http1=args.h2_http1)
                await front.start()
            await stop.wait()

    import uvloop

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["sim"]:
        sys.exit(_sim_main(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.harness sim --port P --pki DIR [--pods N ...]")
