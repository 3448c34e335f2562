"""Build the plugin as one executable file: `python -m cni_plugin.build dist/edge-ipam-snapshot`.

A zipapp (PEP 441): `#!/usr/bin/env python3`, then a zip of this package's sources and a __main__.py calling
cni_plugin.main.main(). It needs only the host's python3 (3.10+; an older one gets a CNI error, not a traceback),
which is why the package is standard library only.
Deterministic: sorted entries with a fixed timestamp, so the same sources give the same bytes (and the same hash).
Each module also ships as an unchecked-hash .pyc (PEP 552) for the building interpreter's version: zipimport cannot
cache bytecode, and compiling every module on every CNI call would double the plugin's start-up time. Another
python3 version skips those .pyc files and compiles the sources.
The build module itself and the deploy/ directory are left out. Neighbours: main.py (the entry), deploy/ (installs it).
"""

from __future__ import annotations

import argparse
import io
import os
import py_compile
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
# A host python3 too old for the code still answers in CNI JSON instead of a traceback.
MAIN = b"""import sys
if sys.version_info < (3, 10):
    sys.stdout.write('{"cniVersion": "1.0.0", "code": 100, "msg": "edge-ipam-snapshot needs python3 3.10 or later, '
                     'this host has %s"}\\n' % sys.version.split()[0])
    sys.exit(1)
from cni_plugin import main
sys.exit(main.main())
"""
_EPOCH = (1980, 1, 1, 0, 0, 0)


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != "build.py")


def archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
        add("__main__.py", MAIN)
        with tempfile.TemporaryDirectory() as tmp:
            for path in sources():
                name = f"cni_plugin/{path.name}"
                add(name, path.read_bytes())
                pyc = py_compile.compile(str(path), cfile=os.path.join(tmp, path.name + "c"), dfile=name,
                                         doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                add(name + "c", Path(pyc).read_bytes())
    return SHEBANG + buf.getvalue()


def build(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(archive())
    tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="dist/edge-ipam-snapshot")
    args = parser.parse_args(argv)
    out = build(Path(args.output))
    print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
