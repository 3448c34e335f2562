"""benchmarks/harness.py and `python -m benchmarks`: the table, results.json merging, plots, scenario discovery.
Figures are never asserted; only that the harness reports them."""

import json
import subprocess
import sys

from benchmarks import __main__ as bench_main
from benchmarks import harness


def rows(scenario, value):
    return [harness.row(scenario, "small GET throughput", value, "req/s", variant="edgeproxy"),
            harness.row(scenario, "small GET throughput", value * 2, "req/s", variant="nginx", note="c=16"),
            harness.row(scenario, "LIST", 12.5, "MB/s", baseline=20.0)]


def test_table_has_a_column_per_field_used():
    text = harness.table(rows("s", 1234.5))
    header = text.splitlines()[0].split()
    assert header == ["scenario", "metric", "variant", "value", "unit", "baseline", "note"]
    assert "1,234.5" in text and "2,469.0" in text


def test_results_merge_by_scenario_and_plots(tmp_path):
    harness.write_results(rows("a", 1.0), tmp_path)
    harness.write_results(rows("b", 2.0), tmp_path)
    harness.write_results(rows("a", 3.0), tmp_path)  # replaces a's rows, keeps b's
    doc = json.loads((tmp_path / "results.json").read_text())
    assert sorted({r["scenario"] for r in doc["rows"]}) == ["a", "b"]
    assert next(r["value"] for r in doc["rows"] if r["scenario"] == "a") == 3.0
    assert doc["machine"]["cpus"] >= 1
    pngs = harness.plot(doc["rows"], tmp_path)
    assert sorted(p.name for p in pngs) == ["a.png", "b.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_scenarios_are_discovered_and_listed():
    assert "passthrough" in bench_main.scenarios()
    assert "harness" not in bench_main.scenarios() and "loadgen" not in bench_main.scenarios()
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], capture_output=True, text=True, timeout=60,
                         cwd=harness.ROOT)
    assert out.returncode == 0 and "passthrough" in out.stdout.split()
