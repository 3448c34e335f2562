"""Build the plugin as one executable file: `python -m cni_plugin.build dist/edge-ipam-snapshot`.

A zipapp (PEP 441) behind a two-line shell preamble, then a zip of this package's sources and a __main__.py calling
cni_plugin.main.main(). It needs only the host's python3 (3.10+; an older one gets a CNI error, not a traceback),
which is why the package is standard library only.
The preamble runs `python3 -I -S`: isolated (no PYTHON* variables, no user site, nothing from the working directory)
and without `site` (which imports site-packages' .pth files: one host had certifi's loaded on every call). It also
imports the package straight from the file instead of through runpy, which a zipapp's __main__ costs. Together with
the package's own lean imports, this halves a CNI call (`python -m benchmarks cni`). `python3 FILE` still works.
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
# A host python3 too old for the code still answers in CNI JSON instead of a traceback.
CHECK = (b"import sys\n"
         b"if sys.version_info < (3, 10):\n"
         b"    sys.stdout.write(\"{\\\"cniVersion\\\": \\\"1.0.0\\\", \\\"code\\\": 100, \\\"msg\\\": "
         b"\\\"edge-ipam-snapshot needs python3 "
         b"3.10 or later, this host has %s\\\"}\\n\" % sys.version.split()[0])\n"
         b"    sys.exit(1)\n")
assert b"'" not in CHECK  # it goes inside the preamble's single quotes
MAIN = CHECK + b"from cni_plugin import main\nsys.exit(main.main())\n"
# sh execs python3 on this very file; the sh never reads past the exec, python reads the zip from the file's end.
# argv[0] becomes the file, as it is for a script.
SHEBANG = (b"#!/bin/sh\nexec python3 -I -S -c '" + CHECK
           + b"sys.argv.pop(0)\nsys.path.insert(0, sys.argv[0])\nfrom cni_plugin import main\nsys.exit(main.main())"
           + b"' \"$0\" \"$@\"\n")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != "build.py")


def archive() -> bytes:
    buf = io.BytesIO()
    # Stored, not deflated: zipimport would import zlib and inflate every module on every call.
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
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
