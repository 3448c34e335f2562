"""`python -m benchmarks [scenario ...] [--quick]`: run benchmark scenarios, print one table, write JSON and PNGs.

With no scenario named, every module in benchmarks/ that exposes `run(opts)` runs, in name order. Results go to
benchmarks/results/results.json (rows of the scenarios run replace their old rows; others are kept) and one PNG per
scenario beside it. See benchmarks/harness.py for the scenario contract.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
import tempfile
import traceback
from pathlib import Path

import benchmarks
from benchmarks import harness

NOT_SCENARIOS = {"harness", "loadgen", "h2load", "realpods", "yurthub", "__main__"}  # helpers, not scenarios


def scenarios() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name in NOT_SCENARIOS or info.name.startswith("_"):
            continue
        names.append(info.name)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser()
    p.prog = "python -m benchmarks"
    p.description = __doc__.splitlines()[0]
    p.add_argument("scenario", nargs="*", help=f"scenarios to run (default: all of {', '.join(scenarios())})")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(scenarios()))
        return 0
    names = args.scenario or scenarios()
    unknown = [n for n in names if n not in scenarios()]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(scenarios())}")
    opts = harness.options(args)
    rows: list[dict[str, object]] = []
    failed = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        if not hasattr(module, "run"):
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"edgeproxy-bench-{name}-") as tmp:
            try:
                rows += module.run(dataclasses.replace(opts, work=Path(tmp)))
            except Exception:
                traceback.print_exc()
                failed.append(name)
    if rows:
        print()
        harness.report(rows, opts)
    if failed:
        print(f"\nscenarios that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
