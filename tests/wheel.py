"""The checkout's wheel, built as an operator builds it (`pip wheel --no-deps`), for tests that install it.

Built from a copy of the tracked tree in a temporary directory (never in the checkout: setuptools leaves build/ and
*.egg-info behind, and a stale build/ would leak deleted files into the wheel), without build isolation so no
package index is needed (setuptools and wheel come from the test venv). Used by tests/test_wheel.py and the systemd
tier (tests/systemd/).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".ruff_cache", ".hypothesis", "results")


def build(workdir: Path) -> Path:
    """Build edgeproxy's wheel into `workdir`/dist and return its path."""
    src = workdir / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE, symlinks=True)
    dist = workdir / "dist"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                             "--disable-pip-version-check", "-w", str(dist), str(src)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("edgeproxy-*.whl")
    return wheel


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip())
