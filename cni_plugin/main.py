"""Entry point of `edge-ipam-snapshot`: a CNI plugin when CNI_COMMAND is set, an operator CLI when given arguments.

Plugin mode reads the environment and stdin, runs the command, prints the result or the spec's error JSON on stdout
(exit 1), and logs to stderr. Everything else is the neighbours': request.py (env/stdin), config.py, commands.py,
records.py; inspection.py is the CLI.
"""

from __future__ import annotations

import os
import sys

from cni_plugin import commands, config, errors, jsonio, log, records, request, result

TYPE_CHECKING = False  # typing costs start-up; annotations are strings (PEP 563), so this is enough for checkers
if TYPE_CHECKING:
    from collections.abc import Mapping

DEBUG_ENV = log.DEBUG_ENV


def plugin(env: Mapping[str, str], stdin: bytes) -> tuple[int, dict | None]:
    """(exit status, JSON to print) for one CNI invocation."""
    version = result.LATEST
    try:
        req = request.from_env(env)
        if req.command == "VERSION":
            asked = request.decode_config(stdin).get("cniVersion") if stdin.strip() else None
            version = asked if asked in result.SUPPORTED else result.LATEST
            return 0, {"cniVersion": version, "supportedVersions": list(result.SUPPORTED)}
        net = request.decode_config(stdin)
        if net.get("cniVersion") in result.SUPPORTED:
            version = net["cniVersion"]
        cfg = config.parse(net)
        store = records.Store.open(cfg.data_dir, cfg.network)
        return 0, commands.run(cfg, req, store, env)
    except errors.IpamError as e:
        log.error("%s: %s (code %d) %s", env.get("CNI_COMMAND", "?"), e.msg, e.code, e.details)
        return 1, e.as_json(version)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "CNI_COMMAND" not in os.environ and argv:
        from cni_plugin import inspection  # the operator CLI (argparse) stays off the runtime's hot path

        return inspection.main(argv)
    status, out = plugin(os.environ, sys.stdin.buffer.read())
    if out is not None:
        sys.stdout.write(jsonio.dumps(out, indent=1) + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
